//! The attendance log in its database: recording idempotently, summarising in one statement,
//! and deleting expired rows a bounded batch at a time.

use crate::attendance::Attendance;
use crate::entities::attendance::{ActiveModel, Column, Entity};
use crate::error::AttendanceError;
use crate::summary::{RECENT_LIMIT, RecentAttendance, Summary, Windows};
use chrono::{DateTime, Utc};
use platform::domain::{NhsNumber, SettingType};
use sea_orm::sea_query::{OnConflict, Query};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, DatabaseConnection, DbBackend, EntityTrait, FromQueryResult, QueryFilter,
    Statement, Value,
};
use std::collections::HashMap;

type Result<T> = std::result::Result<T, AttendanceError>;

/// The `attendances` table.
#[derive(Clone, Debug)]
pub struct Attendances {
    db: DatabaseConnection,
}

impl Attendances {
    pub fn new(db: DatabaseConnection) -> Self {
        Attendances { db }
    }

    /// Stores `attendance` unless its lookup id is already stored; true when this call stored
    /// it. The unique lookup id and `ON CONFLICT DO NOTHING` make concurrent retries meet in
    /// the database: exactly one of them inserts. A retry with other content keeps the first.
    pub async fn record(
        &self,
        attendance: &Attendance,
        recorded_at: DateTime<Utc>,
    ) -> Result<bool> {
        let row = ActiveModel {
            id: NotSet,
            lookup_id: Set(attendance.lookup_id.clone()),
            nhs_number: Set(attendance.nhs_number.as_str().to_owned()),
            attended_at: Set(attendance.attended_at),
            site_ods_code: Set(attendance.site_ods_code.as_str().to_owned()),
            organisation_name: Set(attendance.organisation_name.clone()),
            setting_type: Set(attendance.setting_type.as_str().to_owned()),
            user_id: Set(attendance.user_id.clone()),
            role_code: Set(attendance.role_code.clone()),
            recorded_at: Set(recorded_at),
        };
        let inserted = Entity::insert(row)
            .on_conflict(OnConflict::column(Column::LookupId).do_nothing().to_owned())
            .exec_without_returning(&self.db)
            .await?;
        Ok(inserted == 1)
    }

    /// One summary per number, in the order given (repeats answered again), as of
    /// `as_of`, leaving out `exclude_lookup_id`. One statement whatever the count: one round
    /// trip and one snapshot, so counts and `recent` always agree.
    pub async fn summarize(
        &self,
        numbers: &[NhsNumber],
        as_of: DateTime<Utc>,
        exclude_lookup_id: &str,
    ) -> Result<Vec<Summary>> {
        let mut distinct: Vec<&str> = numbers.iter().map(NhsNumber::as_str).collect();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.is_empty() {
            return Ok(Vec::new());
        }
        let statement = summary_statement(
            self.db.get_database_backend(),
            &distinct,
            as_of,
            exclude_lookup_id,
        );
        let rows = SummaryRow::find_by_statement(statement)
            .all(&self.db)
            .await?;
        let mut found: HashMap<String, Summary> = HashMap::new();
        for row in rows {
            let summary = found.entry(row.nhs_number.clone()).or_default();
            // Every row of a person carries the same window counts.
            summary.last_30_days = count(row.last_30_days);
            summary.last_90_days = count(row.last_90_days);
            summary.last_365_days = count(row.last_365_days);
            let setting_type = SettingType::parse(&row.setting_type).ok_or_else(|| {
                AttendanceError::UnknownSettingType {
                    id: row.lookup_id.clone(),
                }
            })?;
            summary.recent.push(RecentAttendance {
                attended_at: row.attended_at,
                ods_code: row.site_ods_code,
                organisation_name: row.organisation_name,
                setting_type,
                role_code: row.role_code,
            });
        }
        Ok(numbers
            .iter()
            .map(|n| found.get(n.as_str()).cloned().unwrap_or_default())
            .collect())
    }

    /// Deletes at most `batch` attendances older than `cutoff` in one short statement, and
    /// says how many went. Retention calls it until fewer than `batch` go.
    pub async fn purge_batch(&self, cutoff: DateTime<Utc>, batch: u64) -> Result<u64> {
        let expired = Query::select()
            .column(Column::Id)
            .from(Entity)
            .and_where(Column::AttendedAt.lt(cutoff))
            .limit(batch)
            .to_owned();
        let deleted = Entity::delete_many()
            .filter(Column::Id.in_subquery(expired))
            .exec(&self.db)
            .await?;
        Ok(deleted.rows_affected)
    }
}

fn count(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[derive(Debug, FromQueryResult)]
struct SummaryRow {
    nhs_number: String,
    lookup_id: String,
    attended_at: DateTime<Utc>,
    site_ods_code: String,
    organisation_name: String,
    setting_type: String,
    role_code: String,
    last_30_days: i64,
    last_90_days: i64,
    last_365_days: i64,
}

/// The summary query for distinct `numbers`: each person's attendances at or before `as_of`
/// (through the `(nhs_number, attended_at DESC)` index), ranked newest first, with the window
/// counts computed over the same rows; only the newest [`RECENT_LIMIT`] come back. Public so
/// the benchmark can EXPLAIN exactly what the service runs.
pub fn summary_statement(
    backend: DbBackend,
    numbers: &[&str],
    as_of: DateTime<Utc>,
    exclude_lookup_id: &str,
) -> Statement {
    let windows = Windows::ending_at(as_of);
    let mut values = Values::new(backend);
    let [after_30, after_90, after_365] = windows.after.map(|t| values.push(t));
    let list = numbers
        .iter()
        .map(|n| values.push(*n))
        .collect::<Vec<_>>()
        .join(", ");
    let as_of = values.push(as_of);
    let exclude = values.push(exclude_lookup_id);
    let sql = format!(
        "SELECT nhs_number, lookup_id, attended_at, site_ods_code, organisation_name, \
                setting_type, role_code, last_30_days, last_90_days, last_365_days \
         FROM ( \
           SELECT nhs_number, lookup_id, attended_at, site_ods_code, organisation_name, \
                  setting_type, role_code, \
                  ROW_NUMBER() OVER (PARTITION BY nhs_number \
                                     ORDER BY attended_at DESC, id DESC) AS position, \
                  COUNT(CASE WHEN attended_at > {after_30} THEN 1 END) \
                      OVER (PARTITION BY nhs_number) AS last_30_days, \
                  COUNT(CASE WHEN attended_at > {after_90} THEN 1 END) \
                      OVER (PARTITION BY nhs_number) AS last_90_days, \
                  COUNT(CASE WHEN attended_at > {after_365} THEN 1 END) \
                      OVER (PARTITION BY nhs_number) AS last_365_days \
           FROM attendances \
           WHERE nhs_number IN ({list}) AND attended_at <= {as_of} AND lookup_id <> {exclude} \
         ) AS ranked \
         WHERE position <= {RECENT_LIMIT} \
         ORDER BY nhs_number, position"
    );
    Statement::from_sql_and_values(backend, sql, values.values)
}

/// Positional parameters in the backend's own spelling (`$1` or `?`).
struct Values {
    backend: DbBackend,
    values: Vec<Value>,
}

impl Values {
    fn new(backend: DbBackend) -> Self {
        Values {
            backend,
            values: Vec::new(),
        }
    }

    fn push(&mut self, value: impl Into<Value>) -> String {
        self.values.push(value.into());
        match self.backend {
            DbBackend::Postgres => format!("${}", self.values.len()),
            _ => "?".to_owned(),
        }
    }
}
