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
    /// The user id (`sub`).
    #[arg(long)]
    pub user: String,
    /// The ODS code of the user's organisation (`org`).
    #[arg(long)]
    pub org: String,
    /// The job role code (`role`), such as R8000; recorded, not decided on.
    #[arg(long)]
    pub role: String,
    /// An activity the role profile carries (B0107, B0170, CPIS_LA_MANAGE, CPIS_AUDIT,
    /// CPIS_ADMIN); repeat for several; none is allowed.
    #[arg(long = "activity")]
    pub activities: Vec<String>,
    /// Lifetime: a number with s, m, h or d.
    #[arg(long, default_value = "12h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// The directory `cpis dev` keeps its key in.
    #[arg(long, env = "CPIS_DATA_DIR", default_value = "./cpis-data")]
    pub data_dir: PathBuf,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    org: &'a str,
    role: &'a str,
    activities: &'a [String],
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
    sign(
        &keys,
        &args.user,
        &args.org,
        &args.role,
        &args.activities,
        args.ttl,
    )
}

/// Signs a token with a development key already loaded (also used by the demo loader).
pub fn sign(
    keys: &devkeys::DevKeys,
    user: &str,
    org: &str,
    role: &str,
    activities: &[String],
    ttl: Duration,
) -> Result<String> {
    let now = chrono::Utc::now().timestamp();
    let ttl = i64::try_from(ttl.as_secs()).context("--ttl is too long")?;
    let claims = Claims {
        iss: devkeys::ISSUER,
        aud: devkeys::AUDIENCE,
        sub: user.trim(),
        org: &org.trim().to_ascii_uppercase(),
        role: role.trim(),
        activities,
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
            org: "rqx".into(),
            role: "R8000".into(),
            activities: vec!["B0107".into()],
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
        assert_eq!(data.claims["org"], "RQX");
        assert_eq!(data.claims["activities"][0], "B0107");
        assert_eq!(data.header.kid.as_deref(), Some(keys.key_id.as_str()));
    }
}
