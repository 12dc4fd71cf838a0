//! One way to reach a service's own database: SQLite under the data directory by default,
//! PostgreSQL by URL; sea-orm migrations run under a lock so replicas can start together.
//! Services connect with [`connect_with`] and [`migrate_with`], which apply the datastore TLS
//! settings ([`crate::datastore`]): the CA file for `sslmode=verify-full`, and the refusal of
//! plaintext URLs when TLS is required. [`connect`] and [`migrate`] are the same without them,
//! for tests and tools.

use crate::config::{DatabaseArgs, MigrateMode};
use crate::datastore::DatastoreTls;
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

fn options(url: &str, max_connections: u32, tls: &DatastoreTls) -> ConnectOptions {
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
    if let Some(ca) = tls.ca_pem() {
        // Trusted besides sqlx's webpki roots; `sslmode` (verify-full) says to verify.
        let ca = ca.to_vec();
        opts.map_sqlx_postgres_opts(move |o| o.ssl_root_cert_from_pem(ca.clone()));
    }
    opts
}

/// A pool that connects on first use, without datastore TLS settings (tests and tools).
pub async fn connect(url: &str) -> Result<DatabaseConnection> {
    connect_with(url, &DatastoreTls::default()).await
}

/// A pool that connects on first use, verifying PostgreSQL's certificate against the CA file
/// if one is set; refused at once if TLS is required and the URL could go without it.
pub async fn connect_with(url: &str, tls: &DatastoreTls) -> Result<DatabaseConnection> {
    tls.check_database_url(url)?;
    let max = if url.starts_with("sqlite:") { 8 } else { 16 };
    Database::connect(options(url, max, tls))
        .await
        .map_err(|e| Error::internal(format!("database configuration: {e}")))
}

/// [`migrate_with`] without datastore TLS settings (tests and tools).
pub async fn migrate<M: MigratorTrait>(url: &str, service: &str) -> Result<()> {
    migrate_with::<M>(url, service, &DatastoreTls::default()).await
}

/// Runs pending migrations of `M` once, holding a PostgreSQL advisory lock (one migrator at a
/// time across replicas) or SQLite's own write lock.
pub async fn migrate_with<M: MigratorTrait>(
    url: &str,
    service: &str,
    tls: &DatastoreTls,
) -> Result<()> {
    tls.check_database_url(url)?;
    let conn = Database::connect(options(url, 1, tls))
        .await
        .map_err(|e| Error::internal(format!("database configuration: {e}")))?;
    let result = async {
        // Nothing to do, and no DDL, when the schema is current or newer (a rolled-back
        // release's Job): sea-orm's own `up` would fail on migrations it does not know.
        if let Ok(state) = schema_state::<M>(&conn).await
            && state.serves()
        {
            return Ok(());
        }
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

/// How the database's schema stands against the migrations this binary knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SchemaState {
    /// Every migration of the binary is applied, and no other.
    Current,
    /// Every migration of the binary is applied, and the database holds newer ones this
    /// binary does not know: a rolled-back or not-yet-updated pod, which serves (migrations
    /// only ever add what older code ignores).
    Newer(Vec<String>),
    /// Migrations of the binary still to apply.
    Behind(Vec<String>),
}

impl SchemaState {
    /// Whether a pod of this binary may serve on this schema.
    pub fn serves(&self) -> bool {
        !matches!(self, SchemaState::Behind(_))
    }
}

/// Compares the migrations applied (as recorded) with those this binary knows.
pub fn compare(known: &[String], applied: &[String]) -> SchemaState {
    let pending: Vec<String> = known
        .iter()
        .filter(|k| !applied.contains(k))
        .cloned()
        .collect();
    if !pending.is_empty() {
        return SchemaState::Behind(pending);
    }
    let newer: Vec<String> = applied
        .iter()
        .filter(|a| !known.contains(a))
        .cloned()
        .collect();
    if newer.is_empty() {
        SchemaState::Current
    } else {
        SchemaState::Newer(newer)
    }
}

/// Reads how the schema stands, with SELECTs only: a serving pod needs no DDL right, and unlike
/// sea-orm's own listing this neither creates the migrations table nor fails on migrations
/// the binary does not know.
pub async fn schema_state<M: MigratorTrait>(conn: &DatabaseConnection) -> Result<SchemaState> {
    let known: Vec<String> = M::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    let table = M::migration_table_name().to_string();
    let backend = conn.get_database_backend();
    let exists = match backend {
        DbBackend::Sqlite => {
            format!("SELECT name FROM sqlite_master WHERE type = 'table' AND name = '{table}'")
        }
        _ => format!("SELECT to_regclass('{table}')::text AS name"),
    };
    let found = conn
        .query_one_raw(Statement::from_string(backend, exists))
        .await?
        .and_then(|row| row.try_get::<Option<String>>("", "name").ok().flatten());
    let applied: Vec<String> = match found {
        None => Vec::new(),
        Some(_) => conn
            .query_all_raw(Statement::from_string(
                backend,
                format!("SELECT version FROM {table}"),
            ))
            .await?
            .into_iter()
            .filter_map(|row| row.try_get::<String>("", "version").ok())
            .collect(),
    };
    Ok(compare(&known, &applied))
}

/// True when every migration of `M` has been applied, newer ones tolerated (for
/// `--migrate off`).
pub async fn migrations_applied<M: MigratorTrait>(conn: &DatabaseConnection) -> Result<bool> {
    Ok(schema_state::<M>(conn).await?.serves())
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

/// Makes `readiness` true once this pod can serve its own calls: its migrations are present
/// (applied here in `auto` mode, awaited from the migration Job in `off` mode; newer ones in
/// the database tolerated, so a rolled-back pod still starts). From then on the database's
/// health goes to the `cpis_dependency_up` gauge and the logs, never to readiness: a database
/// blip must not empty the load balancer, and each call already answers `UNAVAILABLE` with
/// RetryInfo while the database is away. Ends at shutdown.
pub async fn keep_ready<M: MigratorTrait>(
    conn: DatabaseConnection,
    url: String,
    tls: DatastoreTls,
    service: &'static str,
    mode: MigrateMode,
    readiness: Readiness,
    shutdown: Shutdown,
) {
    let up = crate::metrics::metrics().dependency_up(service, "database");
    let mut schema_ok = false;
    let mut last_problem = String::new();
    loop {
        if !schema_ok {
            match schema_ready::<M>(&conn, &url, &tls, service, mode).await {
                Ok(true) => {
                    schema_ok = true;
                    readiness.set_dependency_ready(true).await;
                }
                Ok(false) => note(
                    &mut last_problem,
                    "waiting for `migrate` to apply pending migrations",
                ),
                Err(e) => note(&mut last_problem, &format!("database not ready: {e}")),
            }
        }
        let answering = conn.ping().await.is_ok();
        up.set(i64::from(answering));
        if schema_ok && !answering {
            note(
                &mut last_problem,
                "database is not answering; calls get UNAVAILABLE until it does",
            );
        }
        if schema_ok && answering && !last_problem.is_empty() {
            tracing::info!(service, "database answers again");
            last_problem.clear();
        }
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

/// Whether the schema lets this pod serve, migrating first in `auto` mode when it is behind.
async fn schema_ready<M: MigratorTrait>(
    conn: &DatabaseConnection,
    url: &str,
    tls: &DatastoreTls,
    service: &'static str,
    mode: MigrateMode,
) -> Result<bool> {
    match schema_state::<M>(conn).await? {
        SchemaState::Current => {
            tracing::info!(service, "database schema is current");
            Ok(true)
        }
        SchemaState::Newer(newer) => {
            tracing::info!(
                service,
                newer = ?newer,
                "the database holds migrations newer than this binary (a rollback, or a rollout under way): serving on the schema it knows"
            );
            Ok(true)
        }
        SchemaState::Behind(_) if mode == MigrateMode::Auto => {
            migrate_with::<M>(url, service, tls).await?;
            tracing::info!(service, "database schema migrated and current");
            Ok(true)
        }
        SchemaState::Behind(_) => Ok(false),
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

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_schema_newer_than_the_binary_serves_and_an_older_one_waits() {
        let known = names(&["m1", "m2"]);
        assert_eq!(compare(&known, &names(&["m1", "m2"])), SchemaState::Current);
        let newer = compare(&known, &names(&["m1", "m2", "m3"]));
        assert_eq!(newer, SchemaState::Newer(names(&["m3"])));
        assert!(
            newer.serves(),
            "a rolled-back binary serves on a newer schema"
        );
        let behind = compare(&known, &names(&["m1"]));
        assert_eq!(behind, SchemaState::Behind(names(&["m2"])));
        assert!(!behind.serves());
        assert!(!compare(&known, &[]).serves());
    }

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
