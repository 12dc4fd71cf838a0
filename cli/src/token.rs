//! `cpis token`: mints a development user token shaped like an NHS CIS2 token (API.md claims),
//! signed with the key `cpis dev` created.

use crate::devkeys;
use anyhow::{Context, Result, bail};
use clap::Args;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// The user id (`sub` and `nhsid_useruid`).
    #[arg(long)]
    pub user: String,
    /// The display name (`name`); the user id when not given.
    #[arg(long)]
    pub name: Option<String>,
    /// The ODS code of the selected role profile's organisation (its `org_code`).
    #[arg(long)]
    pub org: String,
    /// The selected role profile's job role (`role_code`), such as R8000 or CIS2's
    /// S8000:G8000:R8000; recorded, not decided on.
    #[arg(long)]
    pub role: String,
    /// An activity the selected role profile carries (B0107, B0170, CPIS_LA_MANAGE,
    /// CPIS_AUDIT, CPIS_ADMIN); repeat for several; none is allowed.
    #[arg(long = "activity")]
    pub activities: Vec<String>,
    /// Another role profile the user holds but did not select, as ODS:ROLE or
    /// ODS:ROLE=ACTIVITY,ACTIVITY (its activities grant nothing while it is not selected);
    /// repeat for several.
    #[arg(long = "extra-role", value_parser = parse_role_profile)]
    pub extra_roles: Vec<RoleProfile>,
    /// The authentication assurance level (`authentication_assurance_level`): 3 is
    /// smartcard-class sign-in, what lookups need by default.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(0..=4))]
    pub aal: u8,
    /// Lifetime: a number with s, m, h or d.
    #[arg(long, default_value = "12h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// The directory `cpis dev` keeps its key in.
    #[arg(long, env = "CPIS_DATA_DIR", default_value = "./cpis-data")]
    pub data_dir: PathBuf,
}

/// One of a user's national RBAC role profiles, as CIS2 lists them in `nhsid_nrbac_roles`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleProfile {
    pub org: String,
    pub role: String,
    pub activities: Vec<String>,
}

/// `ODS:ROLE` or `ODS:ROLE=ACTIVITY,ACTIVITY` (the role may be CIS2's `S…:G…:R…`).
pub fn parse_role_profile(input: &str) -> Result<RoleProfile, String> {
    let (profile, activities) = input.split_once('=').unwrap_or((input, ""));
    let (org, role) = profile
        .split_once(':')
        .ok_or_else(|| format!("{input:?}: expected ODS:ROLE or ODS:ROLE=ACTIVITY,..."))?;
    if org.trim().is_empty() || role.trim().is_empty() {
        return Err(format!(
            "{input:?}: the ODS code and the role must not be empty"
        ));
    }
    Ok(RoleProfile {
        org: org.trim().to_owned(),
        role: role.trim().to_owned(),
        activities: activities
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// Who a token names: the user, the role profile they selected, and any others they hold.
#[derive(Clone, Debug)]
pub struct Identity {
    pub user: String,
    pub name: String,
    pub selected: RoleProfile,
    pub others: Vec<RoleProfile>,
    pub assurance_level: u8,
}

/// A role profile in `nhsid_nrbac_roles` (CIS2's field names).
#[derive(Serialize)]
struct RoleClaim<'a> {
    person_orgid: String,
    person_roleid: String,
    org_code: String,
    role_code: &'a str,
    role_name: String,
    activity_codes: &'a [String],
}

/// The claims of a CIS2 ID token requested with `openid profile nationalrbacaccess
/// selectedrole`, as the gateway reads them.
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    nhsid_useruid: &'a str,
    name: &'a str,
    nhsid_nrbac_roles: Vec<RoleClaim<'a>>,
    selected_roleid: String,
    /// CIS2 writes the level as a string.
    authentication_assurance_level: String,
    acr: String,
    iat: i64,
    nbf: i64,
    exp: i64,
}

pub fn parse_ttl(input: &str) -> Result<Duration, String> {
    let input = input.trim();
    let split = input.len().saturating_sub(1);
    let (number, unit) = input.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{input:?}: expected a number followed by s, m, h or d"))?;
    let seconds = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{input:?}: the unit must be s, m, h or d")),
    };
    if seconds == 0 {
        return Err("the lifetime must be positive".into());
    }
    Ok(Duration::from_secs(seconds))
}

pub fn mint(args: &TokenArgs) -> Result<String> {
    if args.user.trim().is_empty() || args.org.trim().is_empty() || args.role.trim().is_empty() {
        bail!("--user, --org and --role must not be empty");
    }
    let keys = devkeys::load(&args.data_dir)?;
    let identity = Identity {
        user: args.user.trim().to_owned(),
        name: args
            .name
            .clone()
            .unwrap_or_else(|| args.user.trim().to_owned()),
        selected: RoleProfile {
            org: args.org.clone(),
            role: args.role.clone(),
            activities: args.activities.clone(),
        },
        others: args.extra_roles.clone(),
        assurance_level: args.aal,
    };
    sign_identity(&keys, &identity, args.ttl)
}

/// Signs a token for one user with one (selected) role profile, signed in by smartcard, with a
/// development key already loaded (also used by the demo loader and the benchmark).
pub fn sign(
    keys: &devkeys::DevKeys,
    user: &str,
    org: &str,
    role: &str,
    activities: &[String],
    ttl: Duration,
) -> Result<String> {
    let identity = Identity {
        user: user.trim().to_owned(),
        name: user.trim().to_owned(),
        selected: RoleProfile {
            org: org.to_owned(),
            role: role.to_owned(),
            activities: activities.to_vec(),
        },
        others: Vec::new(),
        assurance_level: 3,
    };
    sign_identity(keys, &identity, ttl)
}

/// Signs a CIS2-shaped token naming `identity`. Role profile ids are numbered in order, the
/// selected profile first, as CIS2's `person_roleid` values are opaque numbers.
pub fn sign_identity(
    keys: &devkeys::DevKeys,
    identity: &Identity,
    ttl: Duration,
) -> Result<String> {
    let now = chrono::Utc::now().timestamp();
    let ttl = i64::try_from(ttl.as_secs()).context("--ttl is too long")?;
    let roles: Vec<RoleClaim> = std::iter::once(&identity.selected)
        .chain(&identity.others)
        .enumerate()
        .map(|(i, profile)| RoleClaim {
            person_orgid: format!("{}", 555_000_000_100u64 + i as u64),
            person_roleid: format!("{}", 555_000_000_300u64 + i as u64),
            org_code: profile.org.trim().to_ascii_uppercase(),
            role_code: profile.role.trim(),
            role_name: format!("\"Development\":\"cpis dev\":\"{}\"", profile.role.trim()),
            activity_codes: &profile.activities,
        })
        .collect();
    let selected_roleid = roles[0].person_roleid.clone();
    let claims = Claims {
        iss: devkeys::ISSUER,
        aud: devkeys::AUDIENCE,
        sub: &identity.user,
        nhsid_useruid: &identity.user,
        name: identity.name.trim(),
        nhsid_nrbac_roles: roles,
        selected_roleid,
        authentication_assurance_level: identity.assurance_level.to_string(),
        acr: format!("AAL{}_ANY", identity.assurance_level),
        iat: now,
        nbf: now,
        exp: now + ttl,
    };
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(keys.key_id.clone());
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(&keys.pkcs8))
        .context("signing the token")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lifetimes() {
        assert_eq!(parse_ttl("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1_800)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("12").is_err());
        assert!(parse_ttl("h").is_err());
        assert!(parse_ttl("").is_err());
    }

    #[test]
    fn minted_tokens_verify_against_the_dev_jwks() {
        let dir = tempfile::tempdir().unwrap();
        let keys = devkeys::ensure(dir.path()).unwrap();
        let args = TokenArgs {
            user: "u1".into(),
            name: Some("Dr One".into()),
            org: "rqx".into(),
            role: "S8000:G8000:R8000".into(),
            activities: vec!["B0107".into()],
            extra_roles: vec![parse_role_profile("RQY:R0001=CPIS_AUDIT,B0170").unwrap()],
            aal: 3,
            ttl: Duration::from_secs(60),
            data_dir: dir.path().to_owned(),
        };
        let token = mint(&args).unwrap();
        let jwks: jsonwebtoken::jwk::JwkSet =
            serde_json::from_slice(&std::fs::read(keys.jwks_path).unwrap()).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[devkeys::ISSUER]);
        validation.set_audience(&[devkeys::AUDIENCE]);
        let data = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation).unwrap();
        let c = &data.claims;
        assert_eq!(
            (&c["sub"], &c["nhsid_useruid"], &c["name"]),
            (&"u1".into(), &"u1".into(), &"Dr One".into())
        );
        // The selected profile first, then the extra one, CIS2's field names throughout.
        let roles = c["nhsid_nrbac_roles"].as_array().unwrap();
        assert_eq!(roles.len(), 2);
        assert_eq!(c["selected_roleid"], roles[0]["person_roleid"]);
        assert_eq!(roles[0]["org_code"], "RQX");
        assert_eq!(roles[0]["role_code"], "S8000:G8000:R8000");
        assert_eq!(roles[0]["activity_codes"], serde_json::json!(["B0107"]));
        assert_eq!(roles[1]["org_code"], "RQY");
        assert_eq!(
            roles[1]["activity_codes"],
            serde_json::json!(["CPIS_AUDIT", "B0170"])
        );
        assert_eq!(c["authentication_assurance_level"], "3");
        assert_eq!(c["acr"], "AAL3_ANY");
        assert_eq!(data.header.kid.as_deref(), Some(keys.key_id.as_str()));
    }

    #[test]
    fn extra_role_profiles_parse_with_or_without_activities() {
        assert_eq!(
            parse_role_profile("RQY:S0001:G0001:R0001=CPIS_AUDIT, B0170").unwrap(),
            RoleProfile {
                org: "RQY".into(),
                role: "S0001:G0001:R0001".into(),
                activities: vec!["CPIS_AUDIT".into(), "B0170".into()],
            }
        );
        assert!(
            parse_role_profile("706:R9000")
                .unwrap()
                .activities
                .is_empty()
        );
        assert!(parse_role_profile("R9000").is_err());
        assert!(parse_role_profile(":R9000").is_err());
    }
}
