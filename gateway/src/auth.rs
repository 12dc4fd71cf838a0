//! Who is calling: a bearer JWT carrying NHS CIS2's claims (a CIS2 ID token, or a token an NHS
//! token exchange issued with the same claims), verified against a JSON Web Key Set: a file
//! re-read when it changes (`platform::reload`), or the identity provider's, fetched over HTTPS
//! ([`crate::keys`]). A token naming a key the provider's set lacks waits briefly for the fetch
//! it asks for, so the first token of a key rotated in is accepted.
//!
//! Asymmetric algorithms only, each key pinned to the one algorithm its JWK declares (or that
//! its key type implies), so `alg=none`, HMAC-with-the-public-key and algorithm-switching
//! tokens are refused. `iss`, `aud`, `exp` and `sub` are required.
//!
//! The caller is the selected role profile: `selected_roleid` names one of the user's
//! `nhsid_nrbac_roles`, and its organisation, job role and activities are the caller's; the
//! user's other profiles grant nothing (a clinician who is also a privacy officer elsewhere
//! acts as one or the other, never both). See `principal_of`.

use crate::keys;
use cpis_proto::access::Principal;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use platform::admit::Verdict;
use platform::domain::OdsCode;
use platform::error::{Error, Result};
use platform::reload::{self, Latest};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tonic::metadata::MetadataMap;

/// Algorithms a key may be used with: asymmetric, current.
const ALLOWED: [Algorithm; 5] = [
    Algorithm::EdDSA,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::PS256,
];

/// Verified tokens are remembered until they expire (at most this many), so a busy client is
/// not re-verified on every call; a JWKS change forgets them all. They are known by their
/// SHA-256, so the cache holds no credential and each entry is small.
const CACHE_LIMIT: usize = 10_000;

/// How long a token naming an unknown key waits for the key set being fetched.
const UNKNOWN_KEY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The claims a CIS2 token carries that the gateway reads (CIS2's own names).
#[derive(Deserialize, Debug, Clone)]
struct Claims {
    sub: String,
    /// CIS2's user id (the same as `sub`).
    #[serde(default)]
    nhsid_useruid: Option<String>,
    /// The display name.
    #[serde(default)]
    name: Option<String>,
    /// Every role profile the user holds.
    #[serde(default)]
    nhsid_nrbac_roles: Vec<RoleProfile>,
    /// The `person_roleid` of the profile chosen at sign-in.
    #[serde(default)]
    selected_roleid: Option<String>,
    /// CIS2 writes it as a string (`"3"`); a number is taken too.
    #[serde(default)]
    authentication_assurance_level: Option<Level>,
    /// OIDC's authentication context, such as `AAL3_ANY`: the level when the claim above is
    /// absent.
    #[serde(default)]
    acr: Option<String>,
    exp: u64,
}

/// One of a user's national RBAC role profiles.
#[derive(Deserialize, Debug, Clone)]
struct RoleProfile {
    person_roleid: String,
    #[serde(default)]
    org_code: String,
    /// `S…:G…:R…` (CIS2), or a bare job role `R…`.
    #[serde(default)]
    role_code: String,
    #[serde(default)]
    activity_codes: Vec<String>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
enum Level {
    Number(u64),
    Text(String),
}

/// The ErrorInfo reasons of a verified token that names no caller (UNAUTHENTICATED).
pub mod reasons {
    pub const NO_SELECTED_ROLE: &str = "NO_SELECTED_ROLE";
    pub const SELECTED_ROLE_NOT_FOUND: &str = "SELECTED_ROLE_NOT_FOUND";
    pub const ROLE_PROFILE_INVALID: &str = "ROLE_PROFILE_INVALID";
    pub const SUBJECT_MISMATCH: &str = "SUBJECT_MISMATCH";
}

fn refused(reason: &'static str, message: &str) -> Error {
    Error::IdentityRefused {
        reason,
        message: format!("invalid token: {message}"),
    }
}

/// The job role of a CIS2 role code: the `R…` part of `S…:G…:R…`, or a bare `R…`.
fn job_role(role_code: &str) -> Option<&str> {
    let role = role_code.trim().rsplit(':').next()?;
    let well_formed = (2..=16).contains(&role.len())
        && role.starts_with('R')
        && role[1..].bytes().all(|b| b.is_ascii_alphanumeric());
    well_formed.then_some(role)
}

/// CIS2's authentication assurance level: the claim, else the level `acr` names
/// (`AAL3_ANY` is 3); 0 when neither says.
fn assurance_level(claim: Option<&Level>, acr: Option<&str>) -> u32 {
    let from_claim = match claim {
        Some(Level::Number(n)) => u32::try_from(*n).ok(),
        Some(Level::Text(t)) => t.trim().parse().ok(),
        None => None,
    };
    let from_acr = || {
        let rest = acr?.trim().strip_prefix("AAL")?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    from_claim.or_else(from_acr).unwrap_or(0).min(9)
}

/// The caller a verified token's claims name: the selected role profile, alone.
fn principal_of(claims: Claims) -> Result<Principal> {
    let refuse = |why: &str| Error::Unauthenticated(format!("invalid token: {why}"));
    let sub = claims.sub.trim();
    if sub.is_empty() {
        return Err(refuse("empty subject"));
    }
    if let Some(uid) = claims.nhsid_useruid.as_deref().map(str::trim)
        && !uid.is_empty()
        && uid != sub
    {
        return Err(refused(
            reasons::SUBJECT_MISMATCH,
            "sub and nhsid_useruid name different users",
        ));
    }
    let selected = claims
        .selected_roleid
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            refused(
                reasons::NO_SELECTED_ROLE,
                "no selected role profile (selected_roleid): sign in with the selectedrole scope",
            )
        })?;
    let profile = claims
        .nhsid_nrbac_roles
        .iter()
        .find(|r| r.person_roleid.trim() == selected)
        .ok_or_else(|| {
            refused(
                reasons::SELECTED_ROLE_NOT_FOUND,
                "the selected role profile (selected_roleid) is not among nhsid_nrbac_roles",
            )
        })?;
    let name = claims.name.as_deref().unwrap_or_default().trim();
    // Claims are stored with every decision and shown to privacy officers: a control
    // character (NUL, ESC) in one is refused here, before it reaches anything; a name people
    // read carries no bidirectional or invisible formatting either.
    let poisoned = [sub, selected, &profile.org_code, &profile.role_code]
        .into_iter()
        .chain(profile.activity_codes.iter().map(String::as_str))
        .any(|c| c.chars().any(char::is_control))
        || name
            .chars()
            .any(|c| c.is_control() || platform::error::is_invisible_format(c));
    if poisoned {
        return Err(refuse("a claim holds control characters"));
    }
    let org = OdsCode::parse(&profile.org_code).map_err(|_| {
        refused(
            reasons::ROLE_PROFILE_INVALID,
            "the selected role profile's org_code is not an ODS code",
        )
    })?;
    let role = job_role(&profile.role_code).ok_or_else(|| {
        refused(
            reasons::ROLE_PROFILE_INVALID,
            "the selected role profile's role_code names no job role (R…)",
        )
    })?;
    Ok(Principal {
        user_id: sub.to_owned(),
        system_san: String::new(),
        ods_code: org.as_str().to_owned(),
        role_code: role.to_owned(),
        activities: profile.activity_codes.clone(),
        organisation_name: String::new(),
        user_name: name.to_owned(),
        role_profile_id: selected.to_owned(),
        assurance_level: assurance_level(
            claims.authentication_assurance_level.as_ref(),
            claims.acr.as_deref(),
        ),
    })
}

/// The user a call's token named, verified at admission, and when the token expires.
#[derive(Clone, Debug)]
pub struct Admitted {
    pub principal: Principal,
    pub expires_at: u64,
}

fn missing_token() -> Error {
    Error::Unauthenticated("a bearer token is required (authorization: Bearer <token>)".into())
}

/// The token of `authorization: Bearer <token>`.
fn bearer(headers: &http::HeaderMap) -> Result<&str> {
    let header = headers.get("authorization").ok_or_else(missing_token)?;
    let value = header
        .to_str()
        .map_err(|_| Error::Unauthenticated("malformed authorization header".into()))?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Error::Unauthenticated("the authorization header must be `Bearer <token>`".into())
        })
}

struct VerificationKey {
    key: DecodingKey,
    algorithm: Algorithm,
}

#[derive(Default)]
struct KeySet {
    by_id: HashMap<String, Arc<VerificationKey>>,
    /// Keys without a `kid`: used only for tokens without one.
    anonymous: Vec<Arc<VerificationKey>>,
    /// Which load this is: a token verified under another key set is verified again.
    generation: u64,
}

/// A token verified under the key set of `generation`, valid until `exp`.
#[derive(Clone)]
struct Verified {
    principal: Principal,
    exp: u64,
    generation: u64,
}

/// Why a token did not verify.
enum Unverified {
    /// It names a key the set lacks (or there is no set yet): a fetch may bring it.
    UnknownKey,
    Refused(Error),
}

impl From<Error> for Unverified {
    fn from(e: Error) -> Self {
        Unverified::Refused(e)
    }
}

type TokenHash = [u8; 32];

fn token_hash(token: &str) -> TokenHash {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut hash = [0; 32];
    hash.copy_from_slice(digest.as_ref());
    hash
}

struct Inner {
    keys: Latest<KeySet>,
    /// Set when the keys come from the identity provider: asks it for a fetch.
    refresher: Option<Arc<keys::Refresher>>,
    cache: RwLock<HashMap<TokenHash, Verified>>,
    issuer: String,
    audience: String,
}

#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

fn algorithm_of(jwk: &Jwk) -> Option<Algorithm> {
    let declared = jwk
        .common
        .key_algorithm
        .and_then(|a| Algorithm::try_from(a).ok());
    let implied = match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
        _ => None,
    };
    declared.or(implied).filter(|a| ALLOWED.contains(a))
}

fn parse_jwks(text: &str) -> std::result::Result<KeySet, String> {
    static LOADS: AtomicU64 = AtomicU64::new(1);
    let set: JwkSet =
        serde_json::from_str(text).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
    let mut keys = KeySet {
        generation: LOADS.fetch_add(1, Ordering::Relaxed),
        ..KeySet::default()
    };
    for jwk in &set.keys {
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
            continue; // symmetric keys can never verify a user token here
        }
        let Some(algorithm) = algorithm_of(jwk) else {
            continue;
        };
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        let key = Arc::new(VerificationKey { key, algorithm });
        match &jwk.common.key_id {
            Some(kid) => {
                keys.by_id.insert(kid.clone(), key);
            }
            None => keys.anonymous.push(key),
        }
    }
    if keys.by_id.is_empty() && keys.anonymous.is_empty() {
        return Err("no usable asymmetric key (EdDSA, ES256, ES384, RS256, PS256)".into());
    }
    Ok(keys)
}

impl Authenticator {
    /// Reads the key set now (a bad file at start is a configuration error) and re-reads it
    /// whenever its contents change; a bad file later keeps the previous keys.
    pub fn from_file(path: PathBuf, issuer: String, audience: String) -> Result<Self> {
        let file = path.clone();
        let keys = reload::watch_files("JWKS", vec![path], move || {
            let text = std::fs::read_to_string(&file).map_err(|e| {
                Error::FailedPrecondition(format!("cannot read JWKS {}: {e}", file.display()))
            })?;
            parse_jwks(&text)
                .map_err(|e| Error::FailedPrecondition(format!("JWKS {}: {e}", file.display())))
        })?;
        Ok(Self::with_keys(keys, issuer, audience))
    }

    /// The identity provider's keys ([`crate::keys`]): waits up to the settings' start wait
    /// for the first set; without one by then, tokens are answered `UNAVAILABLE` (not
    /// refused) until it arrives.
    pub async fn from_provider(
        settings: keys::Settings,
        issuer: String,
        audience: String,
    ) -> Result<Self> {
        let (keys, refresher) = keys::start(settings, KeySet::default(), parse_jwks).await?;
        let mut auth = Self::with_keys(keys, issuer, audience);
        if let Some(inner) = Arc::get_mut(&mut auth.inner) {
            inner.refresher = Some(refresher);
        }
        Ok(auth)
    }

    fn has_keys(&self) -> bool {
        self.inner.keys.borrow().generation != 0
    }

    /// Whether the keys come from the identity provider and none has arrived yet.
    pub fn awaiting_keys(&self) -> bool {
        self.inner.refresher.is_some() && !self.has_keys()
    }

    /// Returns once a key set is loaded.
    pub async fn keys_loaded(&self) {
        let mut keys = self.inner.keys.clone();
        let _ = keys.wait_for(|k| k.generation != 0).await;
    }

    /// No key set configured: every user token is refused.
    pub fn without_keys(issuer: String, audience: String) -> Self {
        let (_, keys) = tokio::sync::watch::channel(Arc::new(KeySet::default()));
        Self::with_keys(keys, issuer, audience)
    }

    fn with_keys(keys: Latest<KeySet>, issuer: String, audience: String) -> Self {
        Authenticator {
            inner: Arc::new(Inner {
                keys,
                refresher: None,
                cache: RwLock::new(HashMap::new()),
                issuer,
                audience,
            }),
        }
    }

    /// The principal of a call carrying `authorization: Bearer <token>`.
    pub async fn authenticate(&self, metadata: &MetadataMap) -> Result<(Principal, u64)> {
        let token = bearer(metadata.as_ref())?;
        match self.check(token) {
            Err(Unverified::UnknownKey) => {
                if let Some(mut fetched) = self.ask_for_keys() {
                    let _ = tokio::time::timeout(UNKNOWN_KEY_WAIT, fetched.changed()).await;
                }
                self.verify_until(token)
            }
            decided => decided.map_err(|u| self.refusal(u)),
        }
    }

    /// A fetch of the provider's keys, to wait for (`None`: no provider, or fetched too
    /// recently to fetch again).
    fn ask_for_keys(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.refresher.as_ref().and_then(|r| r.ask())
    }

    fn refusal(&self, why: Unverified) -> Error {
        match why {
            Unverified::Refused(e) => e,
            Unverified::UnknownKey if self.awaiting_keys() => {
                Error::unavailable("the identity provider's keys (not fetched yet)")
            }
            Unverified::UnknownKey => {
                Error::Unauthenticated("invalid token: signed by an unknown key".into())
            }
        }
    }

    /// Admission, from the headers alone: a call with a bearer token is admitted only if the
    /// token verifies (its principal is left in the extensions for the handler, so it is
    /// verified once); one without, only if its connection presented a verified client
    /// certificate (a council system, which access-service then resolves). Anything else is
    /// refused before it takes a permit or has its body read.
    pub fn admission(&self) -> platform::admit::Admit {
        let auth = self.clone();
        Arc::new(move |headers, extensions| {
            if headers.contains_key("authorization") {
                return auth.admit_token(headers, extensions);
            }
            let has_certificate = extensions
                .get::<platform::tls::PeerInfo>()
                .is_some_and(|p| !p.client_sans.is_empty());
            Verdict::Now(if has_certificate {
                Ok(())
            } else {
                Err(missing_token())
            })
        })
    }

    /// A token that verifies is admitted at once; one naming an unknown key waits (off the
    /// permits, its body unread) for the fetch it asked for, or shares one in flight.
    fn admit_token(&self, headers: &http::HeaderMap, extensions: &mut http::Extensions) -> Verdict {
        let admitted = |(principal, expires_at)| Admitted {
            principal,
            expires_at,
        };
        let token = match bearer(headers) {
            Ok(token) => token,
            Err(e) => return Verdict::Now(Err(e)),
        };
        match self.check(token) {
            Ok(verified) => {
                extensions.insert(admitted(verified));
                Verdict::Now(Ok(()))
            }
            Err(Unverified::UnknownKey) => match self.ask_for_keys() {
                Some(mut fetched) => {
                    let auth = self.clone();
                    let token = token.to_owned();
                    Verdict::Later(Box::pin(async move {
                        let _ = tokio::time::timeout(UNKNOWN_KEY_WAIT, fetched.changed()).await;
                        let mut extensions = http::Extensions::new();
                        extensions.insert(admitted(auth.verify_until(&token)?));
                        Ok(extensions)
                    }))
                }
                // Fetched too recently to fetch again: judged with the keys there are (a
                // fetch may have just finished).
                None => Verdict::Now(self.verify_until(token).map(|verified| {
                    extensions.insert(admitted(verified));
                })),
            },
            Err(refused) => Verdict::Now(Err(self.refusal(refused))),
        }
    }

    pub fn verify(&self, token: &str) -> Result<Principal> {
        self.verify_until(token).map(|(principal, _)| principal)
    }

    /// The token's principal and its expiry (`exp`, seconds since the epoch): a long stream
    /// opened with it ends then.
    pub fn verify_until(&self, token: &str) -> Result<(Principal, u64)> {
        self.check(token).map_err(|why| self.refusal(why))
    }

    fn check(&self, token: &str) -> std::result::Result<(Principal, u64), Unverified> {
        let now = jsonwebtoken::get_current_timestamp();
        let keys = Arc::clone(&self.inner.keys.borrow());
        let hash = token_hash(token);
        if let Some(hit) = self
            .inner
            .cache
            .read()
            .ok()
            .and_then(|c| c.get(&hash).cloned())
            && hit.exp > now
            && hit.generation == keys.generation
        {
            return Ok((hit.principal, hit.exp));
        }
        let (principal, exp) = self.verify_uncached(token, &keys)?;
        if let Ok(mut cache) = self.inner.cache.write() {
            if cache.len() >= CACHE_LIMIT {
                cache.retain(|_, v| v.exp > now && v.generation == keys.generation);
                if cache.len() >= CACHE_LIMIT {
                    cache.clear();
                }
            }
            let verified = Verified {
                principal: principal.clone(),
                exp,
                generation: keys.generation,
            };
            cache.insert(hash, verified);
        }
        Ok((principal, exp))
    }

    fn verify_uncached(
        &self,
        token: &str,
        keys: &KeySet,
    ) -> std::result::Result<(Principal, u64), Unverified> {
        let refuse = |why: &str| Error::Unauthenticated(format!("invalid token: {why}"));
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| refuse("malformed or unsupported header"))?;
        let key = match &header.kid {
            Some(kid) => keys.by_id.get(kid).cloned(),
            None => keys.anonymous.first().cloned(),
        }
        .ok_or(Unverified::UnknownKey)?;
        if header.alg != key.algorithm {
            return Err(refuse("algorithm not allowed for its key").into());
        }
        let mut validation = Validation::new(key.algorithm);
        validation.algorithms = vec![key.algorithm];
        validation.leeway = 30;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.inner.issuer]);
        validation.set_audience(&[&self.inner.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => refuse("expired"),
                ErrorKind::ImmatureSignature => refuse("not yet valid"),
                ErrorKind::InvalidIssuer => refuse("wrong issuer"),
                ErrorKind::InvalidAudience => refuse("wrong audience"),
                ErrorKind::InvalidSignature => refuse("bad signature"),
                _ => refuse("rejected"),
            }
        })?;
        let exp = data.claims.exp;
        Ok((principal_of(data.claims)?, exp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{EncodingKey, Header};
    use std::time::Duration;

    struct Signer {
        pkcs8: Vec<u8>,
        public: Vec<u8>,
    }

    fn signer() -> Signer {
        let doc = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
        Signer {
            pkcs8: doc.as_ref().to_vec(),
            public: pair.public_key().as_ref().to_vec(),
        }
    }

    fn jwks(s: &Signer, kid: &str) -> String {
        serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": kid, "x": URL_SAFE_NO_PAD.encode(&s.public)}]})
            .to_string()
    }

    /// A CIS2-shaped token's claims: Dr Jones, a clinician of RQX (selected) who is also a
    /// privacy officer at RQY (not selected), signed in by smartcard.
    fn claims(exp_offset: i64, iss: &str, aud: &str) -> serde_json::Value {
        let now = jsonwebtoken::get_current_timestamp() as i64;
        serde_json::json!({
            "sub": "555000000101", "nhsid_useruid": "555000000101", "name": "Dr Alex Jones",
            "nhsid_nrbac_roles": [
                {"person_orgid": "555000000201", "person_roleid": "555000000301", "org_code": "rqx",
                 "role_name": "\"Clinical\":\"Clinical Provision\":\"Clinical Practitioner Access Role\"",
                 "role_code": "S8000:G8000:R8000", "activity_codes": ["B0107"]},
                {"person_orgid": "555000000202", "person_roleid": "555000000302", "org_code": "RQY",
                 "role_name": "\"Admin\":\"Privacy\":\"Privacy Officer\"",
                 "role_code": "S0001:G0001:R0001", "activity_codes": ["CPIS_AUDIT", "B0170"]}
            ],
            "selected_roleid": "555000000301",
            "authentication_assurance_level": "3", "acr": "AAL3_ANY",
            "iss": iss, "aud": aud, "iat": now, "exp": now + exp_offset})
    }

    fn sign(s: &Signer, kid: &str, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&s.pkcs8)).unwrap()
    }

    fn authenticator(s: &Signer) -> Authenticator {
        let (_, keys) = tokio::sync::watch::channel(Arc::new(parse_jwks(&jwks(s, "k1")).unwrap()));
        Authenticator::with_keys(keys, "cpis-dev".into(), "cpis".into())
    }

    fn refused(auth: &Authenticator, token: &str) -> bool {
        matches!(
            auth.verify(token),
            Err(Error::Unauthenticated(_) | Error::IdentityRefused { .. })
        )
    }

    /// The ErrorInfo reason a token is refused with, if any.
    fn reason_of(auth: &Authenticator, token: &str) -> Option<&'static str> {
        match auth.verify(token) {
            Err(Error::IdentityRefused { reason, .. }) => Some(reason),
            _ => None,
        }
    }

    #[test]
    fn a_valid_token_yields_the_principal_with_a_normalised_organisation() {
        let s = signer();
        let auth = authenticator(&s);
        let p = auth
            .verify(&sign(&s, "k1", &claims(600, "cpis-dev", "cpis")))
            .unwrap();
        assert_eq!(p.user_id, "555000000101");
        assert_eq!(p.ods_code, "RQX");
        assert_eq!(p.activities, ["B0107"]);
        assert!(p.system_san.is_empty());
    }

    #[test]
    fn the_selected_role_profile_alone_names_the_caller() {
        let s = signer();
        let auth = authenticator(&s);
        let p = auth
            .verify(&sign(&s, "k1", &claims(600, "cpis-dev", "cpis")))
            .unwrap();
        // Organisation, job role (the R… of S…:G…:R…) and activities of the selected profile.
        assert_eq!(
            (p.ods_code.as_str(), p.role_code.as_str()),
            ("RQX", "R8000")
        );
        assert_eq!(p.role_profile_id, "555000000301");
        assert_eq!(p.user_name, "Dr Alex Jones");
        assert_eq!(p.assurance_level, 3);
        // The privacy officer profile at RQY grants nothing while RQX's is selected.
        assert!(
            !p.activities
                .iter()
                .any(|a| a == "CPIS_AUDIT" || a == "B0170")
        );

        // Selecting the other profile makes the same user that profile's caller.
        let mut c = claims(600, "cpis-dev", "cpis");
        c["selected_roleid"] = serde_json::json!("555000000302");
        let p = auth.verify(&sign(&s, "k1", &c)).unwrap();
        assert_eq!(
            (p.ods_code.as_str(), p.role_code.as_str()),
            ("RQY", "R0001")
        );
        assert_eq!(p.activities, ["CPIS_AUDIT", "B0170"]);
    }

    #[test]
    fn a_token_whose_selected_role_is_missing_or_unknown_is_refused_with_its_reason() {
        let s = signer();
        let auth = authenticator(&s);
        let with = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut c = claims(600, "cpis-dev", "cpis");
            edit(&mut c);
            sign(&s, "k1", &c)
        };
        let none = with(&|c| {
            c.as_object_mut().unwrap().remove("selected_roleid");
        });
        assert_eq!(reason_of(&auth, &none), Some(reasons::NO_SELECTED_ROLE));
        let empty = with(&|c| c["selected_roleid"] = serde_json::json!(" "));
        assert_eq!(reason_of(&auth, &empty), Some(reasons::NO_SELECTED_ROLE));
        let unknown = with(&|c| c["selected_roleid"] = serde_json::json!("555000000399"));
        assert_eq!(
            reason_of(&auth, &unknown),
            Some(reasons::SELECTED_ROLE_NOT_FOUND)
        );
        let no_roles = with(&|c| c["nhsid_nrbac_roles"] = serde_json::json!([]));
        assert_eq!(
            reason_of(&auth, &no_roles),
            Some(reasons::SELECTED_ROLE_NOT_FOUND)
        );
        let bad_org = with(&|c| c["nhsid_nrbac_roles"][0]["org_code"] = serde_json::json!("R Q X"));
        assert_eq!(
            reason_of(&auth, &bad_org),
            Some(reasons::ROLE_PROFILE_INVALID)
        );
        let bad_role =
            with(&|c| c["nhsid_nrbac_roles"][0]["role_code"] = serde_json::json!("S8000:G8000"));
        assert_eq!(
            reason_of(&auth, &bad_role),
            Some(reasons::ROLE_PROFILE_INVALID)
        );
        let other_user = with(&|c| c["nhsid_useruid"] = serde_json::json!("555000000999"));
        assert_eq!(
            reason_of(&auth, &other_user),
            Some(reasons::SUBJECT_MISMATCH)
        );
        // The reason reaches the caller as ErrorInfo on UNAUTHENTICATED.
        let status = tonic::Status::from(auth.verify(&none).unwrap_err());
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        use tonic_types::StatusExt;
        assert_eq!(
            status.get_details_error_info().unwrap().reason,
            reasons::NO_SELECTED_ROLE
        );
    }

    #[test]
    fn assurance_comes_from_its_claim_else_from_acr_else_none() {
        let level = |n: serde_json::Value, acr: Option<&str>| {
            let claim: Option<Level> = serde_json::from_value(n).unwrap();
            assurance_level(claim.as_ref(), acr)
        };
        assert_eq!(level(serde_json::json!("3"), None), 3);
        assert_eq!(level(serde_json::json!(2), Some("AAL3_ANY")), 2);
        assert_eq!(level(serde_json::json!(null), Some("AAL3_ANY")), 3);
        assert_eq!(level(serde_json::json!(null), Some("AAL1_USERPASS")), 1);
        assert_eq!(level(serde_json::json!(null), Some("urn:other")), 0);
        assert_eq!(level(serde_json::json!(null), None), 0);
        assert_eq!(level(serde_json::json!("three"), None), 0);
    }

    #[test]
    fn job_roles_come_from_cis2_role_codes() {
        assert_eq!(job_role("S8000:G8000:R8001"), Some("R8001"));
        assert_eq!(job_role("R8000"), Some("R8000"));
        assert_eq!(job_role(" R0001 "), Some("R0001"));
        for bad in ["", "S8000:G8000", "R", "8000", "S8000:G8000:R80 01", "R-1"] {
            assert_eq!(job_role(bad), None, "{bad:?}");
        }
    }

    proptest::proptest! {
        /// Whatever role profiles a token carries, the caller is the selected one's, or the
        /// token is refused with a reason; activities of other profiles never leak in.
        #[test]
        fn any_role_profiles_name_the_selected_one_or_a_reason(
            profiles in proptest::collection::vec((
                proptest::sample::select(vec!["1", "2", "3"]),
                proptest::sample::select(vec!["RQX", "rqy", "706", "", "R Q"]),
                proptest::sample::select(vec!["S1:G1:R8000", "R0001", "G1", ""]),
                proptest::collection::vec(proptest::sample::select(vec!["B0107", "B0170", "CPIS_AUDIT", "CPIS_ADMIN"]), 0..3),
            ), 0..4),
            selected in proptest::option::of(proptest::sample::select(vec!["1", "2", "3", ""])),
        ) {
            let roles: Vec<serde_json::Value> = profiles.iter().map(|(id, org, role, acts)| serde_json::json!({
                "person_roleid": id, "org_code": org, "role_code": role, "activity_codes": acts,
            })).collect();
            let mut c = serde_json::json!({"sub": "u1", "nhsid_nrbac_roles": roles, "exp": 1});
            if let Some(s) = selected {
                c["selected_roleid"] = serde_json::json!(s);
            }
            let claims: Claims = serde_json::from_value(c).unwrap();
            let chosen = selected
                .filter(|s| !s.is_empty())
                .and_then(|s| profiles.iter().find(|p| p.0 == s));
            match (principal_of(claims), selected.filter(|s| !s.is_empty()), chosen) {
                (Ok(p), _, Some((_, org, _, acts))) => {
                    proptest::prop_assert_eq!(p.ods_code, org.to_ascii_uppercase());
                    proptest::prop_assert_eq!(&p.activities, acts);
                }
                (Err(Error::IdentityRefused { reason, .. }), None, _) => {
                    proptest::prop_assert_eq!(reason, reasons::NO_SELECTED_ROLE);
                }
                (Err(Error::IdentityRefused { reason, .. }), Some(_), None) => {
                    proptest::prop_assert_eq!(reason, reasons::SELECTED_ROLE_NOT_FOUND);
                }
                (Err(Error::IdentityRefused { reason, .. }), Some(_), Some((_, org, role, _))) => {
                    proptest::prop_assert_eq!(reason, reasons::ROLE_PROFILE_INVALID);
                    proptest::prop_assert!(OdsCode::parse(org).is_err() || job_role(role).is_none());
                }
                (other, _, _) => proptest::prop_assert!(false, "unexpected {:?}", other.map(|p| p.ods_code)),
            }
        }
    }

    #[test]
    fn expired_tokens_wrong_issuer_and_wrong_audience_are_refused() {
        let s = signer();
        let auth = authenticator(&s);
        assert!(refused(
            &auth,
            &sign(&s, "k1", &claims(-120, "cpis-dev", "cpis"))
        ));
        assert!(refused(
            &auth,
            &sign(&s, "k1", &claims(600, "someone-else", "cpis"))
        ));
        assert!(refused(
            &auth,
            &sign(&s, "k1", &claims(600, "cpis-dev", "other"))
        ));
    }

    #[test]
    fn forged_and_unknown_key_tokens_are_refused() {
        let s = signer();
        let auth = authenticator(&s);
        let other = signer();
        assert!(
            refused(&auth, &sign(&other, "k1", &claims(600, "cpis-dev", "cpis"))),
            "signed by another key"
        );
        assert!(
            refused(&auth, &sign(&s, "k2", &claims(600, "cpis-dev", "cpis"))),
            "unknown kid"
        );
        let good = sign(&s, "k1", &claims(600, "cpis-dev", "cpis"));
        let mut parts: Vec<&str> = good.split('.').collect();
        let tampered = URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&claims(600_000, "cpis-dev", "cpis")).unwrap());
        parts[1] = &tampered;
        assert!(
            refused(&auth, &parts.join(".")),
            "payload changed after signing"
        );
    }

    #[test]
    fn alg_none_and_hmac_tokens_are_refused() {
        let s = signer();
        let auth = authenticator(&s);
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
        let payload =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(600, "cpis-dev", "cpis")).unwrap());
        assert!(refused(&auth, &format!("{header}.{payload}.")));
        // HS256 keyed with the public key: the classic algorithm confusion.
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        let confused = jsonwebtoken::encode(
            &h,
            &claims(600, "cpis-dev", "cpis"),
            &EncodingKey::from_secret(&s.public),
        )
        .unwrap();
        assert!(refused(&auth, &confused));
    }

    #[tokio::test]
    async fn missing_or_malformed_authorization_is_unauthenticated() {
        let s = signer();
        let auth = authenticator(&s);
        let mut md = MetadataMap::new();
        assert!(matches!(
            auth.authenticate(&md).await,
            Err(Error::Unauthenticated(_))
        ));
        md.insert("authorization", "Basic abc".parse().unwrap());
        assert!(matches!(
            auth.authenticate(&md).await,
            Err(Error::Unauthenticated(_))
        ));
        md.insert(
            "authorization",
            format!(
                "Bearer {}",
                sign(&s, "k1", &claims(600, "cpis-dev", "cpis"))
            )
            .parse()
            .unwrap(),
        );
        assert!(auth.authenticate(&md).await.is_ok());
    }

    #[test]
    fn claims_with_control_characters_are_refused() {
        let s = signer();
        let auth = authenticator(&s);
        let mut c = claims(600, "cpis-dev", "cpis");
        c["sub"] = serde_json::json!("dr.jones\u{0}");
        assert!(refused(&auth, &sign(&s, "k1", &c)));
        let mut c = claims(600, "cpis-dev", "cpis");
        c["nhsid_nrbac_roles"][0]["activity_codes"] = serde_json::json!(["B0107\u{1b}[0m"]);
        assert!(refused(&auth, &sign(&s, "k1", &c)));
        let mut c = claims(600, "cpis-dev", "cpis");
        c["name"] = serde_json::json!("Dr \u{202e}senoJ");
        assert!(
            refused(&auth, &sign(&s, "k1", &c)),
            "a bidi override in a name"
        );
    }

    #[test]
    fn a_jwks_with_only_symmetric_keys_is_rejected() {
        let text = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","alg":"HS256","kid":"x"}]}"#;
        assert!(parse_jwks(text).is_err());
    }

    #[tokio::test]
    async fn the_jwks_file_is_reloaded_when_it_changes_and_a_bad_file_keeps_the_old_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        let first = signer();
        let second = signer();
        std::fs::write(&path, jwks(&first, "k1")).unwrap();
        let auth =
            Authenticator::from_file(path.clone(), "cpis-dev".into(), "cpis".into()).unwrap();
        let token_1 = sign(&first, "k1", &claims(600, "cpis-dev", "cpis"));
        let token_2 = sign(&second, "k2", &claims(600, "cpis-dev", "cpis"));
        assert!(auth.verify(&token_1).is_ok());
        assert!(auth.verify(&token_2).is_err());

        // Rotate: the new key replaces the old one.
        std::fs::write(&path, jwks(&second, "k2")).unwrap();
        let mut rotated = false;
        for _ in 0..50 {
            if auth.verify(&token_2).is_ok() {
                rotated = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(rotated, "the new key was never loaded");
        assert!(
            auth.verify(&token_1).is_err(),
            "the removed key (and its cached tokens) must stop working"
        );

        std::fs::write(&path, "not json").unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            auth.verify(&token_2).is_ok(),
            "a bad file keeps the previous keys"
        );
    }
}
