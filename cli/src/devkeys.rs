//! The development signing key `cpis dev` creates in its data directory, and the JSON Web
//! Key Set the gateway verifies tokens against. Ed25519 (`EdDSA`), generated with aws-lc-rs,
//! the workspace's one crypto provider.

use anyhow::{Context, Result};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use std::path::{Path, PathBuf};

pub const ISSUER: &str = "cpis-dev";
pub const AUDIENCE: &str = "cpis";
const KEY_FILE: &str = "dev-signing-key.pem";
const JWKS_FILE: &str = "jwks.json";

pub struct DevKeys {
    pub pkcs8: Vec<u8>,
    pub key_id: String,
    pub jwks_path: PathBuf,
}

pub fn jwks_path(data_dir: &Path) -> PathBuf {
    data_dir.join(JWKS_FILE)
}

/// Loads the key from `data_dir`, creating it (and the JWKS beside it) on first use.
pub fn ensure(data_dir: &Path) -> Result<DevKeys> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let key_path = data_dir.join(KEY_FILE);
    if !key_path.exists() {
        let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("cannot generate an Ed25519 key"))?;
        write_private(&key_path, &pem_encode(document.as_ref()))?;
    }
    let keys = load(data_dir)?;
    let pair = Ed25519KeyPair::from_pkcs8(&keys.pkcs8)
        .map_err(|_| anyhow::anyhow!("{} is not an Ed25519 key", key_path.display()))?;
    let jwks = serde_json::json!({
        "keys": [{
            "kty": "OKP",
            "crv": "Ed25519",
            "alg": "EdDSA",
            "use": "sig",
            "kid": keys.key_id,
            "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
        }]
    });
    std::fs::write(&keys.jwks_path, serde_json::to_vec_pretty(&jwks)?)
        .with_context(|| format!("writing {}", keys.jwks_path.display()))?;
    Ok(keys)
}

/// Loads an existing key (for `cpis token`); says how to create one if it is missing.
pub fn load(data_dir: &Path) -> Result<DevKeys> {
    let key_path = data_dir.join(KEY_FILE);
    let pem = std::fs::read_to_string(&key_path).with_context(|| {
        format!(
            "no development key at {} (run `cpis dev --data-dir {}` once to create it)",
            key_path.display(),
            data_dir.display()
        )
    })?;
    let pkcs8 = pem_decode(&pem)
        .with_context(|| format!("{} is not a PEM private key", key_path.display()))?;
    let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
        .map_err(|_| anyhow::anyhow!("{} is not an Ed25519 key", key_path.display()))?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, pair.public_key().as_ref());
    let key_id = format!(
        "dev-{}",
        digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    Ok(DevKeys {
        pkcs8,
        key_id,
        jwks_path: jwks_path(data_dir),
    })
}

fn pem_encode(der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    )
}

fn pem_decode(pem: &str) -> Result<Vec<u8>> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    Ok(STANDARD.decode(body.trim())?)
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_and_reloads_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure(dir.path()).unwrap();
        let again = ensure(dir.path()).unwrap();
        assert_eq!(first.pkcs8, again.pkcs8);
        assert_eq!(first.key_id, again.key_id);
        let jwks: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&first.jwks_path).unwrap()).unwrap();
        assert_eq!(jwks["keys"][0]["kid"], first.key_id.as_str());
    }
}
