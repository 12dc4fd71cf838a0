//! Files re-read when they change, one way for every consumer (TLS certificates, the internal
//! client certificate, the JSON Web Key Set): the value built from the files is published
//! through a `tokio::sync::watch` channel and every consumer reads the latest. A change is
//! noticed by the files' contents, not their modification times, so a Kubernetes secret
//! rotation (a symlink swap that keeps old mtimes) is seen too. A value that fails to build
//! (a half-written file, a bad key) keeps the previous one and says why.

use crate::error::Result;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often watched files are compared with what was last loaded.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// The latest value built from some files.
pub type Latest<T> = watch::Receiver<Arc<T>>;

/// A digest of the files' contents (a missing file reads as empty), to notice a change.
pub fn fingerprint(paths: &[PathBuf]) -> Vec<u8> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in paths {
        let bytes = std::fs::read(p).unwrap_or_default();
        ctx.update(&(bytes.len() as u64).to_be_bytes());
        ctx.update(&bytes);
    }
    ctx.finish().as_ref().to_vec()
}

/// Builds the value from `paths` now (a failure is the caller's start-up error) and rebuilds
/// it whenever their contents change, until every receiver is gone. `what` names the value in
/// the log lines.
pub fn watch_files<T, F>(what: &'static str, paths: Vec<PathBuf>, load: F) -> Result<Latest<T>>
where
    T: Send + Sync + 'static,
    F: Fn() -> Result<T> + Send + 'static,
{
    watch_files_every(what, paths, RELOAD_EVERY, load)
}

/// [`watch_files`] checking every `every` (tests use a short interval).
pub fn watch_files_every<T, F>(
    what: &'static str,
    paths: Vec<PathBuf>,
    every: Duration,
    load: F,
) -> Result<Latest<T>>
where
    T: Send + Sync + 'static,
    F: Fn() -> Result<T> + Send + 'static,
{
    let mut seen = fingerprint(&paths);
    let (tx, rx) = watch::channel(Arc::new(load()?));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = tx.closed() => return,
            }
            let now = fingerprint(&paths);
            if now == seen {
                continue;
            }
            seen = now;
            match load() {
                Ok(value) => {
                    tx.send_replace(Arc::new(value));
                    tracing::info!(files = %names(&paths), "{what} reloaded");
                }
                Err(e) => {
                    tracing::warn!(files = %names(&paths), error = %e, "{what} reload failed; keeping the previous one")
                }
            }
        }
    });
    Ok(rx)
}

fn names(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::error::Error;
    use std::path::Path;

    fn parse(path: &Path) -> Result<u32> {
        std::fs::read_to_string(path)
            .map_err(Error::internal)?
            .trim()
            .parse()
            .map_err(Error::internal)
    }

    async fn until(rx: &Latest<u32>, want: u32) {
        for _ in 0..200 {
            if **rx.borrow() == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never became {want}, still {}", **rx.borrow());
    }

    #[tokio::test]
    async fn a_changed_file_is_published_and_a_bad_one_keeps_the_last_good_value() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("n");
        std::fs::write(&file, "1").unwrap();
        let f = file.clone();
        let rx = watch_files_every(
            "n",
            vec![file.clone()],
            Duration::from_millis(20),
            move || parse(&f),
        )
        .unwrap();
        assert_eq!(**rx.borrow(), 1);

        std::fs::write(&file, "2").unwrap();
        until(&rx, 2).await;

        std::fs::write(&file, "not a number").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(**rx.borrow(), 2, "a bad file replaced the good value");

        std::fs::write(&file, "3").unwrap();
        until(&rx, 3).await;
    }

    #[tokio::test]
    async fn a_bad_file_at_start_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("n");
        std::fs::write(&file, "x").unwrap();
        let f = file.clone();
        assert!(watch_files("n", vec![file], move || parse(&f)).is_err());
    }

    #[test]
    fn the_fingerprint_follows_contents() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("n");
        std::fs::write(&file, "a").unwrap();
        let a = fingerprint(std::slice::from_ref(&file));
        std::fs::write(&file, "b").unwrap();
        assert_ne!(a, fingerprint(std::slice::from_ref(&file)));
    }
}
