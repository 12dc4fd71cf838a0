//! Benchmark of the attendance summary on PostgreSQL at several table sizes: bulk-load
//! throughput (COPY), single-record throughput (`record`), and the latency of
//! `Attendances::summarize` (the exact statement the service runs) for random children.
//!
//! ```text
//! CPIS_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!   cargo run --release -p attendance-service --example summary_bench -- --rows 10000,10000000
//! ```
//! Each size gets a database of its own (`cpis_bench_attendance_<rows>`, dropped afterwards
//! unless `--keep`); queries to the sizes run interleaved. A smoke run:
//! `--rows 2000 --queries 200 --warmup 20`.

use anyhow::{Context, Result, bail};
use attendance_service::attendance::Attendance;
use attendance_service::migration::Migrator;
use attendance_service::storage::{Attendances, summary_statement};
use attendance_service::synthetic::{self, Population, Rows, lookup_id};
use chrono::{DateTime, Utc};
use clap::Parser;
use platform::domain::{OdsCode, SettingType};
use platform::synthetic::SplitMix64;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use std::time::Instant;

#[derive(Parser, Debug)]
struct Args {
    /// Table sizes to measure, smallest first; ratios are against the first.
    #[arg(long, value_delimiter = ',', default_value = "10000,10000000")]
    rows: Vec<u64>,
    /// Distinct children per attendance row (10M rows -> ~1.5M children).
    #[arg(long, default_value_t = 0.15)]
    children_per_row: f64,
    /// Timed single-number summaries per size, after the warm-up.
    #[arg(long, default_value_t = 5000)]
    queries: usize,
    /// Untimed summaries first.
    #[arg(long, default_value_t = 1000)]
    warmup: usize,
    /// Timed summaries of 100 numbers at once per size.
    #[arg(long, default_value_t = 300)]
    batch_queries: usize,
    /// Sequential `record` calls timed per size.
    #[arg(long, default_value_t = 2000)]
    records: usize,
    /// Keep the databases afterwards.
    #[arg(long)]
    keep: bool,
}

/// One loaded database.
struct Loaded {
    rows: u64,
    name: String,
    db: sea_orm::DatabaseConnection,
    people: Population,
    now: DateTime<Utc>,
    load_rows_per_s: f64,
    latencies: Vec<f64>,
    batch_latencies: Vec<f64>,
    answered: u64,
    record_per_s: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Creates, migrates and bulk-loads one database of `rows` attendances.
async fn load(server: &str, rows: u64, args: &Args) -> Result<Loaded> {
    let name = format!("cpis_bench_attendance_{rows}");
    platform::testing::recreate_database(server, &name).await?;
    let url = platform::testing::with_database(server, &name);
    platform::database::migrate::<Migrator>(&url, attendance_service::NAME).await?;
    let db = platform::database::connect(&url).await?;
    let now = Utc::now();
    let people = Population::new(
        400_000_000,
        ((rows as f64) * args.children_per_row).round() as usize,
    );

    // COPY into the migrated table, indexes in place, as a bulk import would run.
    let started = Instant::now();
    let copied =
        synthetic::load(&db, Rows::new(rows, &people, now, 400).take(rows as usize)).await?;
    let load_secs = started.elapsed().as_secs_f64();
    if copied != rows {
        bail!("COPY stored {copied} rows, not {rows}");
    }
    db.execute_unprepared("VACUUM ANALYZE attendances").await?;
    let size: i64 = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT pg_total_relation_size('attendances')",
        ))
        .await?
        .context("size")?
        .try_get_by_index(0)?;
    println!(
        "loaded rows={rows} children={} in {load_secs:.1}s: {:.0} rows/s (COPY, primary key + 3 indexes in place); table+indexes {} MB",
        people.children.len(),
        rows as f64 / load_secs,
        size / 1_000_000
    );
    Ok(Loaded {
        rows,
        name,
        db,
        people,
        now,
        load_rows_per_s: rows as f64 / load_secs,
        latencies: Vec::new(),
        batch_latencies: Vec::new(),
        answered: 0,
        record_per_s: 0.0,
    })
}

/// Single-number summaries as the gateway makes them at lookup time: one random child, the
/// current lookup's id (not stored yet) excluded.
async fn summaries(
    loaded: &mut Loaded,
    rng: &mut SplitMix64,
    count: usize,
    timed: bool,
) -> Result<()> {
    let attendances = Attendances::new(loaded.db.clone());
    for q in 0..count {
        let child = loaded.people.pick_any(rng);
        let exclude = lookup_id(rng, u64::MAX - q as u64);
        let t = Instant::now();
        let summary = attendances
            .summarize(&[child], loaded.now, &exclude)
            .await?;
        if timed {
            loaded.latencies.push(t.elapsed().as_secs_f64() * 1000.0);
            loaded.answered += u64::from(summary[0].last_365_days);
        }
    }
    Ok(())
}

async fn batch_summaries(loaded: &mut Loaded, rng: &mut SplitMix64, count: usize) -> Result<()> {
    let attendances = Attendances::new(loaded.db.clone());
    for _ in 0..count {
        let batch: Vec<_> = (0..100).map(|_| loaded.people.pick_any(rng)).collect();
        let t = Instant::now();
        attendances.summarize(&batch, loaded.now, "").await?;
        loaded
            .batch_latencies
            .push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(())
}

/// The plan PostgreSQL picks for a frequent attender (the most rows per child).
async fn explain(loaded: &Loaded) -> Result<()> {
    let heavy = loaded.people.children[0];
    let statement = summary_statement(DbBackend::Postgres, &[heavy.as_str()], loaded.now, "");
    let plan = loaded
        .db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!("EXPLAIN (ANALYZE, BUFFERS) {}", statement.sql),
            statement.values.map(|v| v.0).unwrap_or_default(),
        ))
        .await?;
    println!(
        "EXPLAIN (ANALYZE, BUFFERS) at {} rows, one frequent attender:",
        loaded.rows
    );
    for line in plan {
        let text: String = line.try_get_by_index(0)?;
        println!("    {text}");
    }
    Ok(())
}

/// Sequential single records, the service's write path (one committed INSERT each).
async fn records(loaded: &mut Loaded, rng: &mut SplitMix64, count: usize) -> Result<()> {
    let attendances = Attendances::new(loaded.db.clone());
    let started = Instant::now();
    for i in 0..count {
        let attendance = Attendance {
            lookup_id: lookup_id(rng, u64::MAX / 2 - i as u64),
            nhs_number: loaded.people.pick_for_attendance(rng),
            attended_at: loaded.now,
            site_ods_code: OdsCode::parse("RQX01")?,
            organisation_name: "Homerton Healthcare".into(),
            setting_type: SettingType::EmergencyDepartment,
            user_id: "user-1".into(),
            role_code: "R8000".into(),
        };
        attendances.record(&attendance, loaded.now).await?;
    }
    loaded.record_per_s = count as f64 / started.elapsed().as_secs_f64();
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let server = std::env::var("CPIS_BENCH_POSTGRES_URL")
        .context("set CPIS_BENCH_POSTGRES_URL to a PostgreSQL server URL")?;
    let mut sizes = Vec::new();
    for &rows in &args.rows {
        sizes.push(load(&server, rows, &args).await?);
    }

    // Queries run in interleaved rounds, so the sizes share whatever else this machine is
    // doing at the time and the ratio compares like with like.
    let mut rng = SplitMix64(0xC0FFEE);
    for loaded in sizes.iter_mut() {
        summaries(loaded, &mut rng, args.warmup, false).await?;
    }
    const ROUNDS: usize = 10;
    for _ in 0..ROUNDS {
        for loaded in sizes.iter_mut() {
            summaries(loaded, &mut rng, args.queries / ROUNDS, true).await?;
            batch_summaries(loaded, &mut rng, args.batch_queries / ROUNDS).await?;
        }
    }
    for loaded in sizes.iter_mut() {
        explain(loaded).await?;
        records(loaded, &mut rng, args.records).await?;
        loaded.latencies.sort_by(f64::total_cmp);
        loaded.batch_latencies.sort_by(f64::total_cmp);
    }

    println!();
    println!(
        "| rows | children | COPY rows/s | record/s (sequential) | p50 ms | p99 ms | mean ms | 100-number p50 ms | 100-number p99 ms |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for m in &sizes {
        let mean = m.latencies.iter().sum::<f64>() / m.latencies.len().max(1) as f64;
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} |",
            m.rows,
            m.people.children.len(),
            m.load_rows_per_s,
            m.record_per_s,
            percentile(&m.latencies, 50.0),
            percentile(&m.latencies, 99.0),
            mean,
            percentile(&m.batch_latencies, 50.0),
            percentile(&m.batch_latencies, 99.0),
        );
    }
    for m in &sizes {
        println!(
            "rows={}: {} single-number summaries, on average {:.1} attendances in 365 days per child asked",
            m.rows,
            m.latencies.len(),
            m.answered as f64 / m.latencies.len().max(1) as f64
        );
    }
    if let (Some(first), Some(last)) = (sizes.first(), sizes.last()) {
        let ratio = |p| percentile(&last.latencies, p) / percentile(&first.latencies, p);
        println!(
            "ratio {} rows / {} rows: p50 {:.2}x, p99 {:.2}x (target: within 1.5x)",
            last.rows,
            first.rows,
            ratio(50.0),
            ratio(99.0)
        );
    }
    for loaded in sizes {
        loaded.db.close().await?;
        if !args.keep {
            platform::testing::drop_database(&server, &loaded.name).await?;
        }
    }
    Ok(())
}
