//! Test support shared by every crate (feature `testing`): throwaway databases on SQLite
//! always, and on PostgreSQL when `CPIS_TEST_POSTGRES_URL` names a server (each test gets a
//! database of its own, dropped afterwards). Under `CI=true` a missing PostgreSQL URL fails
//! the test instead of silently testing less.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};
use std::sync::atomic::{AtomicU64, Ordering};

/// One database for one test.
pub struct TestDatabase {
    pub url: String,
    pub backend: DbBackend,
    cleanup: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    pub fn label(&self) -> &'static str {
        match self.backend {
            DbBackend::Postgres => "postgres",
            DbBackend::Sqlite => "sqlite",
            _ => "other",
        }
    }
}

/// `CPIS_TEST_POSTGRES_URL`, or `None`; panics under CI when it is missing.
pub fn postgres_server_url() -> Option<String> {
    match std::env::var("CPIS_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but CPIS_TEST_POSTGRES_URL is not set: PostgreSQL tests would not run")
        }
        _ => None,
    }
}

/// `CPIS_TEST_REDIS_URL`, or `None`; panics under CI when it is missing.
pub fn redis_url() -> Option<String> {
    match std::env::var("CPIS_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but CPIS_TEST_REDIS_URL is not set: Redis tests would not run")
        }
        _ => None,
    }
}

fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let clean: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "cpis_t_{}_{}_{}_{}",
        clean,
        std::process::id(),
        nanos % 1_000_000_000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh SQLite file database.
pub fn sqlite() -> TestDatabase {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
    TestDatabase {
        url,
        backend: DbBackend::Sqlite,
        cleanup: None,
        _dir: Some(dir),
    }
}

/// A fresh PostgreSQL database on the test server, if one is configured.
pub async fn postgres(prefix: &str) -> Option<TestDatabase> {
    let server = postgres_server_url()?;
    let name = unique_name(prefix);
    recreate_database(&server, &name)
        .await
        .expect("create a test database on CPIS_TEST_POSTGRES_URL");
    let url = with_database(&server, &name);
    Some(TestDatabase {
        url,
        backend: DbBackend::Postgres,
        cleanup: Some((server, name)),
        _dir: None,
    })
}

/// SQLite, plus PostgreSQL when configured: run a storage test once per backend.
pub async fn all(prefix: &str) -> Vec<TestDatabase> {
    let mut dbs = vec![sqlite()];
    dbs.extend(postgres(prefix).await);
    dbs
}

/// Runs `statements` on the PostgreSQL server of `server_url`, outside any transaction
/// (CREATE and DROP DATABASE cannot run in one).
async fn administer(server_url: &str, statements: &[String]) -> Result<(), sea_orm::DbErr> {
    let admin = Database::connect(server_url).await?;
    for sql in statements {
        admin
            .execute_raw(Statement::from_string(DbBackend::Postgres, sql.clone()))
            .await?;
    }
    admin.close().await
}

/// Creates database `name` on the server of `server_url`, dropping it first if it exists.
pub async fn recreate_database(server_url: &str, name: &str) -> Result<(), sea_orm::DbErr> {
    administer(
        server_url,
        &[
            format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
            format!("CREATE DATABASE \"{name}\""),
        ],
    )
    .await
}

/// Drops database `name` (if it exists) on the server of `server_url`.
pub async fn drop_database(server_url: &str, name: &str) -> Result<(), sea_orm::DbErr> {
    administer(
        server_url,
        &[format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")],
    )
    .await
}

/// Replaces the database name of a server URL (`postgres://u@h:5432/test` → `.../name`).
pub fn with_database(server: &str, name: &str) -> String {
    let (base, query) = match server.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (server, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((server, name)) = self.cleanup.take() else {
            return;
        };
        // Drop runs outside any runtime guarantee: use a private one on its own thread.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let _ = drop_database(&server, &name).await;
            });
        })
        .join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_in_a_server_url() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://h/test?sslmode=disable", "x"),
            "postgres://h/x?sslmode=disable"
        );
    }
}
