//! A synthetic attendance log for benchmarks, reproducible from a seed and written in the
//! service's own stored forms: COPY on PostgreSQL (the fastest honest bulk route), multi-row
//! INSERTs inside transactions on SQLite. Nothing here runs in the service itself.

use crate::entities::attendance::{ActiveModel, Entity};
use chrono::{DateTime, Duration, Utc};
use platform::domain::NhsNumber;
use platform::synthetic::SplitMix64;
use sea_orm::sqlx::postgres::PgPoolCopyExt;
use sea_orm::{
    ActiveValue::{NotSet, Set},
    DatabaseConnection, DbBackend, DbErr, EntityTrait, TransactionTrait,
};

/// Unscheduled settings weighted roughly as children attend them.
const UNSCHEDULED: [(&str, u64); 9] = [
    ("EMERGENCY_DEPARTMENT", 45),
    ("URGENT_TREATMENT_CENTRE", 15),
    ("MINOR_INJURY_UNIT", 10),
    ("WALK_IN_CENTRE", 8),
    ("NHS_111", 8),
    ("OUT_OF_HOURS_GP", 6),
    ("AMBULANCE", 4),
    ("PAEDIATRIC_WARD", 3),
    ("MATERNITY", 1),
];

/// The synthetic population: `count` valid NHS numbers from a starting nine digits; the
/// first 5% are frequent attenders who get 25% of all attendances (the rest spread evenly),
/// so most children have a handful of attendances and a few have dozens.
#[derive(Debug, Clone)]
pub struct Population {
    pub children: Vec<NhsNumber>,
}

impl Population {
    pub fn new(first_nine: u32, count: usize) -> Self {
        let children = (first_nine..)
            .filter_map(NhsNumber::from_first_nine)
            .take(count.max(1))
            .collect();
        Population { children }
    }

    /// Children from the 999 test range, which is never issued (at most ~909,000 of them).
    pub fn test_range(count: usize) -> Self {
        Self::new(999_000_000, count)
    }

    fn frequent(&self) -> usize {
        (self.children.len() / 20).max(1)
    }

    pub fn pick_for_attendance(&self, rng: &mut SplitMix64) -> NhsNumber {
        let n = if rng.unit() < 0.25 {
            rng.below(self.frequent() as u64)
        } else {
            rng.below(self.children.len() as u64)
        };
        self.children[n as usize]
    }

    pub fn pick_any(&self, rng: &mut SplitMix64) -> NhsNumber {
        self.children[rng.below(self.children.len() as u64) as usize]
    }
}

/// A lookup id in the UUID text form the gateway issues, unique by `i`.
pub fn lookup_id(rng: &mut SplitMix64, i: u64) -> String {
    let a = rng.next_u64();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        rng.next_u64() & 0xffff,
        i
    )
}

/// One synthetic row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub lookup_id: String,
    pub nhs_number: NhsNumber,
    pub attended_at: DateTime<Utc>,
    pub site_ods_code: String,
    pub organisation_name: String,
    pub setting_type: &'static str,
    pub user_id: String,
    pub role_code: &'static str,
    pub recorded_at: DateTime<Utc>,
}

/// Rows `0..` of a log whose attendances fall within `window_days` before `now`.
pub struct Rows<'a> {
    rng: SplitMix64,
    people: &'a Population,
    now: DateTime<Utc>,
    window_micros: u64,
    next: u64,
}

impl<'a> Rows<'a> {
    pub fn new(seed: u64, people: &'a Population, now: DateTime<Utc>, window_days: u32) -> Self {
        Rows {
            rng: SplitMix64(seed),
            people,
            now,
            window_micros: u64::from(window_days) * 86_400_000_000,
            next: 0,
        }
    }
}

impl Iterator for Rows<'_> {
    type Item = Row;

    fn next(&mut self) -> Option<Row> {
        let rng = &mut self.rng;
        let i = self.next;
        self.next += 1;
        let attended_at = self.now - Duration::microseconds(rng.below(self.window_micros) as i64);
        let recorded_at = attended_at + Duration::milliseconds(rng.below(2000) as i64);
        let site = rng.below(1200);
        let mut roll = rng.below(100);
        let mut setting_type = "EMERGENCY_DEPARTMENT";
        for (name, weight) in UNSCHEDULED {
            if roll < weight {
                setting_type = name;
                break;
            }
            roll -= weight;
        }
        Some(Row {
            lookup_id: lookup_id(rng, i),
            nhs_number: self.people.pick_for_attendance(rng),
            attended_at,
            site_ods_code: format!("R{:02}{:03}", site / 40, site),
            organisation_name: format!("Organisation {}", site / 8),
            setting_type,
            user_id: format!("user-{}", rng.below(50_000)),
            role_code: ["R8000", "R8001", "R8003", "R8004"][rng.below(4) as usize],
            recorded_at,
        })
    }
}

impl Row {
    /// The row as one line of COPY's text format.
    fn copy_line(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            self.lookup_id,
            self.nhs_number.as_str(),
            self.attended_at.format("%Y-%m-%d %H:%M:%S%.6f+00"),
            self.site_ods_code,
            self.organisation_name,
            self.setting_type,
            self.user_id,
            self.role_code,
            self.recorded_at.format("%Y-%m-%d %H:%M:%S%.6f+00"),
        );
    }

    fn active_model(self) -> ActiveModel {
        ActiveModel {
            id: NotSet,
            lookup_id: Set(self.lookup_id),
            nhs_number: Set(self.nhs_number.as_str().to_owned()),
            attended_at: Set(self.attended_at),
            site_ods_code: Set(self.site_ods_code),
            organisation_name: Set(self.organisation_name),
            setting_type: Set(self.setting_type.to_owned()),
            user_id: Set(self.user_id),
            role_code: Set(self.role_code.to_owned()),
            recorded_at: Set(self.recorded_at),
        }
    }
}

/// Appends `rows` to the migrated `attendances` table of `db`; returns how many were stored.
pub async fn load(db: &DatabaseConnection, rows: impl Iterator<Item = Row>) -> Result<u64, DbErr> {
    match db.get_database_backend() {
        DbBackend::Postgres => {
            let sqlx = |e: sea_orm::sqlx::Error| DbErr::Custom(e.to_string());
            let mut copy = db
                .get_postgres_connection_pool()
                .copy_in_raw(
                    "COPY attendances (lookup_id, nhs_number, attended_at, site_ods_code, \
                     organisation_name, setting_type, user_id, role_code, recorded_at) FROM STDIN",
                )
                .await
                .map_err(sqlx)?;
            let mut chunk = String::with_capacity(1 << 21);
            for row in rows {
                row.copy_line(&mut chunk);
                if chunk.len() > (1 << 20) {
                    copy.send(chunk.as_bytes()).await.map_err(sqlx)?;
                    chunk.clear();
                }
            }
            copy.send(chunk.as_bytes()).await.map_err(sqlx)?;
            copy.finish().await.map_err(sqlx)
        }
        _ => {
            // SQLite binds at most 32,766 values per statement: 10 columns, 2,000 rows.
            let mut stored = 0;
            let mut rows = rows.peekable();
            while rows.peek().is_some() {
                let txn = db.begin().await?;
                for _ in 0..50 {
                    let batch: Vec<ActiveModel> =
                        rows.by_ref().take(2000).map(Row::active_model).collect();
                    if batch.is_empty() {
                        break;
                    }
                    stored += batch.len() as u64;
                    Entity::insert_many(batch)
                        .exec_without_returning(&txn)
                        .await?;
                }
                txn.commit().await?;
            }
            Ok(stored)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_rows_within_the_window() {
        let people = Population::test_range(100);
        let now = Utc::now();
        let a: Vec<Row> = Rows::new(7, &people, now, 365).take(50).collect();
        let b: Vec<Row> = Rows::new(7, &people, now, 365).take(50).collect();
        assert_eq!(a, b);
        assert!(
            a.iter()
                .all(|r| r.attended_at <= now && r.attended_at > now - Duration::days(365))
        );
        assert!(
            people
                .children
                .iter()
                .all(|c| c.as_str().starts_with("999"))
        );
    }

    #[tokio::test]
    async fn rows_load_into_sqlite_and_are_summarised() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
        platform::database::migrate::<crate::migration::Migrator>(&url, crate::NAME)
            .await
            .unwrap();
        let db = platform::database::connect(&url).await.unwrap();
        let people = Population::test_range(3);
        let now = Utc::now();
        let stored = load(&db, Rows::new(1, &people, now, 365).take(4500))
            .await
            .unwrap();
        assert_eq!(stored, 4500);
        let summaries = crate::storage::Attendances::new(db)
            .summarize(&people.children, now, "")
            .await
            .unwrap();
        let total: u32 = summaries.iter().map(|s| s.last_365_days).sum();
        assert_eq!(total, 4500);
    }
}
