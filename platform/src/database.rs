//! One way to reach a service's own database: SQLite under the data directory by default,
//! PostgreSQL by URL; sea-orm migrations run under a lock so replicas can start together.

use crate::config::{DatabaseArgs, MigrateMode};
use crate::error::{Error, Result};
use crate::health::Readiness;
use crate::shutdown::Shutdown;
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
};
use sea_orm_migration::MigratorTrait;
use std::time::Duration;

/// The URL a service uses: the configured one, or `<data_dir>/<service>.db` in SQLite.
pub fn database_url(args: &DatabaseArgs, service: &str) -> Result<String> {
    if let Some(url) = args.url() {
        return Ok(url.to_owned());
    }
    std::fs::create_dir_all(&args.data_dir).map_err(|e| {
        Error::internal(format!(
            "cannot create data directory {}: {e}",
            args.data_dir.display()
        ))
    })?;
    let path = args.data_dir.join(format!("{service}.db"));
    Ok(format!("sqlite://{}?mode=rwc", path.display()))
}

/// The URL without its password, for log lines.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn options(url: &str, max_connections: u32) -> ConnectOptions {
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.max_connections(max_connections)
        .min_connections(0)
        .connect_timeout(Duration::from_secs(3))
        .acquire_timeout(Duration::from_secs(3))
        .idle_timeout(Duration::from_secs(300))
        .sqlx_logging(false)
        // A span per statement, never its text: literals could carry an NHS number.
        .record_stmt_in_spans(false)
        // The service must start (and say NOT_SERVING) while its database is unreachable.
        .connect_lazy(true)
        // WAL survives a process crash; NORMAL skips an fsync per commit and may lose the
        // last commits only on power loss: accepted for the embedded default (rule 3).
        .map_sqlx_sqlite_opts(|o| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
        });
    opts
}

/// A pool that connects on first use.
pub async fn connect(url: &str) -> Result<DatabaseConnection> {
    let max = if url.starts_with("sqlite:") { 8 } else { 16 };
    Database::connect(options(url, max))
        .await
        .map_err(|e| Error::internal(format!("database configuration: {e}")))
}

/// Runs pending migrations of `M` once, holding a PostgreSQL advisory lock (one migrator at a
/// time across replicas) or SQLite's own write lock.
pub async fn migrate<M: MigratorTrait>(url: &str, service: &str) -> Result<()> {
    let conn = Database::connect(options(url, 1))
        .await
        .map_err(|e| Error::internal(format!("database configuration: {e}")))?;
    let result = async {
        if conn.get_database_backend() == DbBackend::Postgres {
            let key = advisory_key(service);
            conn.execute_raw(Statement::from_string(
                DbBackend::Postgres,
                format!("SELECT pg_advisory_lock({key})"),
            ))
            .await?;
            let up = M::up(&conn, None).await;
            let unlock = conn
                .execute_raw(Statement::from_string(
                    DbBackend::Postgres,
                    format!("SELECT pg_advisory_unlock({key})"),
                ))
                .await;
            up?;
            unlock?;
        } else {
            M::up(&conn, None).await?;
        }
        Ok::<_, sea_orm::DbErr>(())
    }
    .await;
    let _ = conn.close().await;
    result.map_err(Error::from)
}

/// True when every migration of `M` has been applied (for `--migrate off`).
pub async fn migrations_applied<M: MigratorTrait>(conn: &DatabaseConnection) -> Result<bool> {
    Ok(M::get_pending_migrations(conn).await?.is_empty())
}

/// A stable 63-bit lock key per service, so services sharing one server never block each other.
fn advisory_key(service: &str) -> i64 {
    // FNV-1a: stable across builds and processes, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("cpis-migrate:{service}").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 1) as i64
}

/// Keeps `readiness` true only while the schema is migrated and the database answers: migrates
/// (or waits for the migration Job) until that succeeds, then pings. Ends at shutdown.
pub async fn keep_ready<M: MigratorTrait>(
    conn: DatabaseConnection,
    url: String,
    service: &'static str,
    mode: MigrateMode,
    readiness: Readiness,
    shutdown: Shutdown,
) {
    let mut migrated = false;
    let mut last_problem = String::new();
    loop {
        if !migrated {
            let attempt = match mode {
                MigrateMode::Auto => migrate::<M>(&url, service).await.map(|_| true),
                MigrateMode::Off => migrations_applied::<M>(&conn).await,
            };
            match attempt {
                Ok(true) => {
                    migrated = true;
                    tracing::info!(service, "database schema is current");
                }
                Ok(false) => note(
                    &mut last_problem,
                    "waiting for `migrate` to apply pending migrations",
                ),
                Err(e) => note(&mut last_problem, &format!("database not ready: {e}")),
            }
        }
        let answering = migrated && conn.ping().await.is_ok();
        if migrated && !answering {
            note(&mut last_problem, "database is not answering");
        }
        if answering && !last_problem.is_empty() {
            tracing::info!(service, "database answers again");
            last_problem.clear();
        }
        readiness.set_dependency_ready(answering).await;
        let pause = if answering {
            Duration::from_secs(2)
        } else {
            Duration::from_millis(500)
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.wait() => return,
        }
    }
}

/// Logs a problem once, not every half second.
fn note(last: &mut String, problem: &str) {
    if last != problem {
        tracing::warn!("{problem}");
        *last = problem.to_owned();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_in_urls() {
        assert_eq!(
            redact_url("postgres://cpis:s3cret@db:5432/flags"),
            "postgres://cpis:***@db:5432/flags"
        );
        assert_eq!(
            redact_url("sqlite://./x.db?mode=rwc"),
            "sqlite://./x.db?mode=rwc"
        );
    }

    #[test]
    fn advisory_keys_differ_per_service_and_are_stable() {
        assert_ne!(advisory_key("flag-service"), advisory_key("access-service"));
        assert_eq!(advisory_key("flag-service"), advisory_key("flag-service"));
        assert!(advisory_key("flag-service") >= 0);
    }
}
