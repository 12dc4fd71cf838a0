//! The national dataset: 152 local authorities and their flags, NHS trusts with their sites,
//! and an attendance log of millions of rows. Organisations and flags go in through the
//! public API (an administrator onboards, each LA uploads its file), as in production;
//! attendances by COPY into the migrated table (PostgreSQL) or batched INSERTs (SQLite).
//! A loaded database carries a label saying what it holds, so the next run reuses it.

use anyhow::{Context, Result, bail};
use attendance_service::synthetic::{self, Population, Rows};
use chrono::{DateTime, Utc};
use cpis_cli::demo;
use platform::domain::NhsNumber;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use std::collections::HashSet;
use std::time::Instant;

/// What to load.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Sizes {
    pub las: usize,
    pub trusts: usize,
    pub flags: usize,
    pub seed: u64,
}

/// Attendances are spread over this many days before the load (inside the 400-day retention,
/// with a month to spare before a reused log starts to be purged).
pub const WINDOW_DAYS: u32 = 365;

/// The 999 test range holds ~909,000 valid numbers: at 10M rows about 11 attendances per
/// child, more than real life's few, so the summaries measured are if anything heavier.
pub fn population(rows: u64) -> Population {
    Population::test_range(((rows as f64 * 0.09).round() as usize).clamp(1, 900_000))
}

/// The organisations and flags, generated (not yet loaded).
pub fn generate(sizes: Sizes) -> demo::Dataset {
    let today = platform::domain::england_date(Utc::now());
    demo::generate(
        sizes.seed,
        demo::Sizes {
            las: sizes.las,
            trusts: sizes.trusts,
            flags: sizes.flags,
            attendances: 0,
        },
        today,
    )
}

/// Who gets looked up: about `flagged_percent` of lookups are of a child with an open flag,
/// the rest of children in the attendance log who have none.
pub struct Lookups {
    pub flagged: Vec<NhsNumber>,
    pub unflagged: Vec<NhsNumber>,
}

impl Lookups {
    pub fn new(dataset: &demo::Dataset, people: &Population) -> Result<Self> {
        let any_flag: HashSet<&str> = dataset
            .local_authorities
            .iter()
            .flat_map(|la| la.flags.iter().map(|f| f.nhs_number.as_str()))
            .collect();
        let flagged = dataset
            .open_flags()
            .filter_map(|(_, f)| NhsNumber::parse(&f.nhs_number).ok())
            .collect::<Vec<_>>();
        let unflagged = people
            .children
            .iter()
            .filter(|c| !any_flag.contains(c.as_str()))
            .copied()
            .collect::<Vec<_>>();
        if flagged.is_empty() || unflagged.is_empty() {
            bail!("the dataset has no open flags or no unflagged children to look up");
        }
        Ok(Lookups { flagged, unflagged })
    }
}

async fn admin(server_url: &str) -> Result<DatabaseConnection> {
    Database::connect(server_url).await.with_context(|| {
        format!(
            "connecting to {}",
            platform::database::redact_url(server_url)
        )
    })
}

/// The label of database `name`, if it exists.
pub async fn label(server_url: &str, name: &str) -> Result<Option<Option<String>>> {
    let db = admin(server_url).await?;
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
            [name.into()],
        ))
        .await?;
    db.close().await?;
    Ok(match row {
        Some(row) => Some(row.try_get_by_index::<Option<String>>(0)?),
        None => None,
    })
}

pub async fn set_label(server_url: &str, name: &str, label: &str) -> Result<()> {
    let db = admin(server_url).await?;
    db.execute_unprepared(&format!(
        "COMMENT ON DATABASE \"{name}\" IS '{}'",
        label.replace('\'', "''")
    ))
    .await?;
    db.close().await?;
    Ok(())
}

/// Migrates `url`'s attendance log and appends the `rows` synthetic attendances of `seed`;
/// returns the seconds it took.
pub async fn attendances(url: &str, rows: u64, seed: u64, now: DateTime<Utc>) -> Result<f64> {
    platform::database::migrate::<attendance_service::migration::Migrator>(
        url,
        attendance_service::NAME,
    )
    .await?;
    let db = platform::database::connect(url).await?;
    let people = population(rows);
    let started = Instant::now();
    let postgres = db.get_database_backend() == DbBackend::Postgres;
    // A bulk load builds indexes once at the end instead of row by row; the definitions are
    // read back from the migrated schema, so the table ends exactly as migrations made it.
    let rebuild = if postgres {
        drop_secondary_indexes(&db).await?
    } else {
        drop_sqlite_indexes(&db).await?
    };
    let stored = synthetic::load(
        &db,
        Rows::new(seed, &people, now, WINDOW_DAYS).take(rows as usize),
    )
    .await?;
    if stored != rows {
        bail!("stored {stored} attendances, not {rows}");
    }
    if postgres {
        let mut sql = String::from("SET maintenance_work_mem = '1GB'; ");
        for statement in rebuild {
            sql.push_str(&statement);
            sql.push_str("; ");
        }
        db.execute_unprepared(&sql).await?;
        db.execute_unprepared("VACUUM ANALYZE attendances").await?;
    } else {
        for statement in rebuild {
            // A service starting on the same file may have run its own migration meanwhile and
            // made the index already: the rebuild only needs it to exist.
            let statement = statement
                .replacen(
                    "CREATE UNIQUE INDEX ",
                    "CREATE UNIQUE INDEX IF NOT EXISTS ",
                    1,
                )
                .replacen("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1);
            db.execute_unprepared(&statement).await?;
        }
        db.execute_unprepared("ANALYZE").await?;
    }
    db.close().await?;
    Ok(started.elapsed().as_secs_f64())
}

/// Drops the unique constraints and indexes of `attendances` other than its primary key;
/// returns the statements that put them back.
async fn drop_secondary_indexes(db: &DatabaseConnection) -> Result<Vec<String>> {
    let mut drops = Vec::new();
    let mut rebuild = Vec::new();
    let constraints = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint \
             WHERE conrelid = 'attendances'::regclass AND contype = 'u'",
        ))
        .await?;
    let mut constraint_names = HashSet::new();
    for row in constraints {
        let name: String = row.try_get_by_index(0)?;
        let definition: String = row.try_get_by_index(1)?;
        drops.push(format!(
            "ALTER TABLE attendances DROP CONSTRAINT \"{name}\""
        ));
        rebuild.push(format!(
            "ALTER TABLE attendances ADD CONSTRAINT \"{name}\" {definition}"
        ));
        constraint_names.insert(name);
    }
    let indexes = db
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT i.relname::text, pg_get_indexdef(i.oid) FROM pg_index x \
             JOIN pg_class i ON i.oid = x.indexrelid \
             WHERE x.indrelid = 'attendances'::regclass AND NOT x.indisprimary",
        ))
        .await?;
    for row in indexes {
        let name: String = row.try_get_by_index(0)?;
        let definition: String = row.try_get_by_index(1)?;
        if constraint_names.contains(&name) {
            continue;
        }
        drops.push(format!("DROP INDEX \"{name}\""));
        rebuild.push(definition);
    }
    for sql in drops {
        db.execute_unprepared(&sql).await?;
    }
    Ok(rebuild)
}

/// SQLite's form of [`drop_secondary_indexes`]: the named indexes of `attendances` (the
/// UNIQUE constraint's automatic index cannot be dropped and stays).
async fn drop_sqlite_indexes(db: &DatabaseConnection) -> Result<Vec<String>> {
    let indexes = db
        .query_all_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT name, sql FROM sqlite_master \
             WHERE type = 'index' AND tbl_name = 'attendances' AND sql IS NOT NULL",
        ))
        .await?;
    let mut rebuild = Vec::new();
    for row in indexes {
        let name: String = row.try_get_by_index(0)?;
        rebuild.push(row.try_get_by_index::<String>(1)?);
        db.execute_unprepared(&format!("DROP INDEX \"{name}\""))
            .await?;
    }
    Ok(rebuild)
}

/// Loads the organisations and flags through the gateway at `gateway` (its development
/// signing key in `data_dir`); returns the flags accepted.
pub async fn organisations_and_flags(
    dataset: &demo::Dataset,
    gateway: cpis_cli::connect::GatewayArgs,
    data_dir: &std::path::Path,
) -> Result<u32> {
    let report = demo::load(dataset, &gateway, data_dir)
        .await
        .map_err(|f| anyhow::anyhow!("loading organisations and flags: {f:?}"))?;
    if report.rejected > 0 {
        bail!("{} flags were rejected by the registry", report.rejected);
    }
    Ok(report.accepted)
}
