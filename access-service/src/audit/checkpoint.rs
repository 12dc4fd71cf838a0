//! Signed checkpoints of the chain head: Ed25519 over the 8-byte big-endian sequence followed
//! by the 32-byte hash. The key comes from `--audit-signing-key-file` (PKCS#8 PEM) or, for
//! development, is created once under the data directory.

use crate::error::AccessError;
use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The development key's file name under the data directory.
pub const DEV_KEY_FILE: &str = "audit-signing-key.pem";

/// Why a checkpoint handed back cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("is not a key this service signs with")]
    UnknownKey,
    #[error("does not verify")]
    BadSignature,
}

#[derive(Clone)]
pub struct CheckpointSigner {
    pair: Arc<Ed25519KeyPair>,
    key_id: String,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CheckpointSigner({})", self.key_id)
    }
}

/// What is signed: sequence (8 bytes, big-endian) then hash (32 bytes).
pub fn signed_bytes(sequence: u64, hash: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(40);
    message.extend_from_slice(&sequence.to_be_bytes());
    message.extend_from_slice(hash);
    message
}

impl CheckpointSigner {
    /// The configured key file, or the development key under `data_dir` (created on first
    /// start, readable by the owner only).
    pub fn load_or_create(file: Option<&Path>, data_dir: &Path) -> Result<Self, AccessError> {
        let path: PathBuf = match file {
            Some(f) => f.to_path_buf(),
            None => {
                let path = data_dir.join(DEV_KEY_FILE);
                if !path.exists() {
                    create_dev_key(&path)?;
                    tracing::warn!(path = %path.display(), "created a development audit signing key");
                }
                path
            }
        };
        let pem = std::fs::read_to_string(&path)
            .map_err(|e| AccessError::SigningKey(format!("cannot read {}: {e}", path.display())))?;
        let der = pem_decode(&pem).ok_or_else(|| {
            AccessError::SigningKey(format!("{} is not a PEM private key", path.display()))
        })?;
        Self::from_pkcs8(&der).map_err(|_| {
            AccessError::SigningKey(format!("{} is not an Ed25519 PKCS#8 key", path.display()))
        })
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<Self, AccessError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| AccessError::SigningKey(e.to_string()))?;
        let key_id = key_id(pair.public_key().as_ref());
        Ok(CheckpointSigner {
            pair: Arc::new(pair),
            key_id,
        })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    pub fn sign(&self, sequence: u64, hash: &[u8]) -> Vec<u8> {
        self.pair
            .sign(&signed_bytes(sequence, hash))
            .as_ref()
            .to_vec()
    }

    pub fn verify(
        &self,
        key_id: &str,
        sequence: u64,
        hash: &[u8],
        signature: &[u8],
    ) -> Result<(), CheckpointError> {
        if key_id != self.key_id {
            return Err(CheckpointError::UnknownKey);
        }
        UnparsedPublicKey::new(&ED25519, self.pair.public_key().as_ref())
            .verify(&signed_bytes(sequence, hash), signature)
            .map_err(|_| CheckpointError::BadSignature)
    }
}

/// Hex of the first 8 bytes of SHA-256 of the raw public key.
pub fn key_id(public_key: &[u8]) -> String {
    digest(&SHA256, public_key).as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Creates the key file whole or not at all: written under a private temporary name, then
/// hard-linked into place, which fails rather than overwrite. Replicas starting together on
/// one data directory thus agree on one key (the loser of the race reads the winner's).
fn create_dev_key(path: &Path) -> Result<(), AccessError> {
    let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| AccessError::SigningKey("cannot generate an Ed25519 key".into()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| AccessError::SigningKey(format!("cannot create {}: {e}", dir.display())))?;
    let temporary = dir.join(format!(".{DEV_KEY_FILE}.{}", uuid::Uuid::new_v4()));
    let written =
        write_private(&temporary, pem_encode(document.as_ref()).as_bytes()).and_then(|()| {
            match std::fs::hard_link(&temporary, path) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                other => other,
            }
        });
    let _ = std::fs::remove_file(&temporary);
    written.map_err(|e| AccessError::SigningKey(format!("cannot write {}: {e}", path.display())))
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

fn pem_encode(der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

fn pem_decode(pem: &str) -> Option<Vec<u8>> {
    let start = pem.find("-----BEGIN PRIVATE KEY-----")?;
    let end = pem.find("-----END PRIVATE KEY-----")?;
    let body: String = pem[start + "-----BEGIN PRIVATE KEY-----".len()..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    STANDARD.decode(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_development_key_is_created_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = CheckpointSigner::load_or_create(None, dir.path()).unwrap();
        let second = CheckpointSigner::load_or_create(None, dir.path()).unwrap();
        assert_eq!(first.key_id(), second.key_id());
        assert_eq!(first.key_id().len(), 16);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(DEV_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn replicas_starting_together_on_one_directory_agree_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| CheckpointSigner::load_or_create(None, dir.path()).unwrap()))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap().key_id().to_owned())
                .collect()
        });
        assert!(ids.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn signatures_verify_only_for_the_signed_head() {
        let dir = tempfile::tempdir().unwrap();
        let signer = CheckpointSigner::load_or_create(None, dir.path()).unwrap();
        let hash = [7u8; 32];
        let sig = signer.sign(42, &hash);
        assert_eq!(sig.len(), 64);
        assert_eq!(signer.verify(signer.key_id(), 42, &hash, &sig), Ok(()));
        assert_eq!(
            signer.verify(signer.key_id(), 43, &hash, &sig),
            Err(CheckpointError::BadSignature)
        );
        assert_eq!(
            signer.verify("0000000000000000", 42, &hash, &sig),
            Err(CheckpointError::UnknownKey)
        );
    }

    #[test]
    fn a_configured_key_file_that_is_not_a_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        std::fs::write(&path, "not a key").unwrap();
        assert!(matches!(
            CheckpointSigner::load_or_create(Some(&path), dir.path()),
            Err(AccessError::SigningKey(_))
        ));
    }
}
