//! Uploads: records staged per attempt as they arrive, then applied whole in one transaction,
//! with the report stored so a resend of the same upload gets it back unchanged.

use super::flags::{Change, FlagKey, FlagState, upsert_on_identity};
use super::restrictions::restricted_among;
use super::{NUMBERS_PER_QUERY, ROWS_PER_STATEMENT, begin_write, hold_restrictions_still};
use crate::entities::{flag, flag_history, upload, upload_staging};
use crate::error::{RegistryError, Result};
use crate::rules::{RecordProblem, ValidRecord, judge_record};
use chrono::{DateTime, Utc};
use cpis_proto::gateway::{
    FlagRecord, RecordCode, RecordResult, UploadFlagsResponse, UploadStatus,
};
use platform::domain::{FlagType, NhsNumber};
use prost::Message;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction,
    EntityTrait, QueryFilter, QueryOrder,
};
use std::collections::{BTreeSet, HashMap};

/// Stages one message's records in one multi-row INSERT (one round trip).
pub async fn stage(
    db: &DatabaseConnection,
    attempt: &str,
    first_position: u64,
    records: &[FlagRecord],
    now: DateTime<Utc>,
) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let rows = records
        .iter()
        .zip(first_position..)
        .map(|(record, position)| upload_staging::ActiveModel {
            attempt_id: Set(attempt.to_owned()),
            position: Set(position as i64),
            record: Set(record.encode_to_vec()),
            staged_at: Set(now),
        });
    upload_staging::Entity::insert_many(rows)
        .exec_without_returning(db)
        .await?;
    Ok(())
}

/// Forgets an attempt's staged records (a broken stream, or a refused one).
pub async fn discard(db: &impl ConnectionTrait, attempt: &str) -> Result<()> {
    upload_staging::Entity::delete_many()
        .filter(upload_staging::Column::AttemptId.eq(attempt))
        .exec(db)
        .await?;
    Ok(())
}

/// Forgets records staged before `before` by attempts that never finished (a process that
/// died mid-upload). Returns how many rows went.
pub async fn discard_stale(db: &DatabaseConnection, before: DateTime<Utc>) -> Result<u64> {
    Ok(upload_staging::Entity::delete_many()
        .filter(upload_staging::Column::StagedAt.lt(before))
        .exec(db)
        .await?
        .rows_affected)
}

/// How many records are staged, across attempts (for tests and metrics).
pub async fn staged_count(db: &DatabaseConnection) -> Result<u64> {
    use sea_orm::PaginatorTrait;
    Ok(upload_staging::Entity::find().count(db).await?)
}

/// One upload ready to apply: the LA, who sent it, and its staged attempt.
#[derive(Clone, Debug)]
pub struct Upload {
    pub la_ods_code: String,
    pub la_name: String,
    pub actor: String,
    pub upload_id: String,
    pub fingerprint: String,
    pub attempt: String,
}

/// The outcome of applying an upload.
#[derive(Clone, Debug)]
pub enum Applied {
    /// Applied now: the report, and the numbers whose flags changed.
    Fresh {
        report: UploadFlagsResponse,
        changed: Vec<NhsNumber>,
    },
    /// The same upload completed before: its first report; nothing was applied.
    Repeat { report: UploadFlagsResponse },
}

/// The report stored for (LA, upload_id), if that upload completed.
pub async fn completed(
    db: &impl ConnectionTrait,
    la: &str,
    upload_id: &str,
) -> Result<Option<(String, UploadFlagsResponse)>> {
    let Some(row) = upload::Entity::find_by_id((la.to_owned(), upload_id.to_owned()))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    let report = UploadFlagsResponse::decode(row.report.as_slice())
        .map_err(|e| RegistryError::Corrupt(format!("stored upload report: {e}")))?;
    Ok(Some((row.fingerprint, report)))
}

/// Applies the staged attempt in one transaction: restrictions checked inside it, flags
/// upserted in upload order, history written, the report stored, the staging deleted.
pub async fn apply(db: &DatabaseConnection, up: &Upload, now: DateTime<Utc>) -> Result<Applied> {
    let txn = begin_write(db).await?;
    hold_restrictions_still(&txn).await?;
    // Claim the upload id first: a concurrent twin waits here, then finds it taken.
    let claimed = upload::Entity::insert(upload::ActiveModel {
        la_ods_code: Set(up.la_ods_code.clone()),
        upload_id: Set(up.upload_id.clone()),
        fingerprint: Set(up.fingerprint.clone()),
        status: Set(String::new()),
        accepted: Set(0),
        rejected: Set(0),
        report: Set(Vec::new()),
        uploaded_by: Set(up.actor.clone()),
        created_at: Set(now),
    })
    .on_conflict_do_nothing_on([upload::Column::LaOdsCode, upload::Column::UploadId])
    .exec_without_returning(&txn)
    .await?;
    if !matches!(claimed, sea_orm::TryInsertResult::Inserted(n) if n > 0) {
        let earlier = completed(&txn, &up.la_ods_code, &up.upload_id).await?;
        discard(&txn, &up.attempt).await?;
        txn.commit().await?;
        return match earlier {
            Some((fingerprint, report)) if fingerprint == up.fingerprint => {
                Ok(Applied::Repeat { report })
            }
            _ => Err(RegistryError::UploadIdReused),
        };
    }

    let records = staged(&txn, &up.attempt).await?;
    let judged: Vec<Result<ValidRecord, RecordProblem>> =
        records.iter().map(judge_record).collect();
    let numbers: Vec<String> = judged
        .iter()
        .filter_map(|j| j.as_ref().ok())
        .map(|v| v.nhs_number.as_str().to_owned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let restricted = restricted_among(&txn, &numbers).await?;
    let mut current = existing(&txn, &up.la_ods_code, &numbers).await?;

    let change = Change {
        la: &up.la_ods_code,
        actor: &up.actor,
        source: &format!("upload:{}", up.upload_id),
        at: now,
    };
    let mut results = Vec::with_capacity(records.len());
    let mut history = Vec::new();
    let mut dirty = BTreeSet::new();
    for (index, (record, judgement)) in records.iter().zip(judged).enumerate() {
        let judgement = judgement.and_then(|valid| {
            if restricted.contains(valid.nhs_number.as_str()) {
                Err(RecordProblem::sensitive())
            } else {
                Ok(valid)
            }
        });
        let (nhs_number, code, message) = match judgement {
            Err(problem) => (record.nhs_number.clone(), problem.code, problem.message),
            Ok(valid) => {
                let key = FlagKey {
                    nhs_number: valid.nhs_number.as_str().to_owned(),
                    flag_type: valid.dates.flag_type,
                    start: valid.dates.start,
                };
                let after = FlagState {
                    la_name: up.la_name.clone(),
                    end: valid.dates.end,
                    due: valid.dates.due,
                    emergency_phone: valid.emergency_phone,
                    office_hours_phone: valid.office_hours_phone,
                    email: valid.email,
                    deleted: false,
                };
                let before = current.get(&key);
                if before != Some(&after) {
                    let kind = if before.is_none() {
                        "created"
                    } else {
                        "updated"
                    };
                    history.push(change.history(&key, kind, before, &after));
                    current.insert(key.clone(), after);
                    dirty.insert(key.clone());
                }
                (key.nhs_number, RecordCode::Accepted, String::new())
            }
        };
        results.push(RecordResult {
            index: index as u32,
            nhs_number,
            code: code.into(),
            message,
        });
    }

    // Sorted by identity, so concurrent uploads lock rows in one order.
    let rows: Vec<flag::ActiveModel> = dirty
        .iter()
        .filter_map(|key| current.get(key).map(|state| change.row(key, state)))
        .collect();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        flag::Entity::insert_many(chunk.to_vec())
            .on_conflict(upsert_on_identity())
            .exec_without_returning(&txn)
            .await?;
    }
    for chunk in history.chunks(ROWS_PER_STATEMENT) {
        flag_history::Entity::insert_many(chunk.to_vec())
            .exec_without_returning(&txn)
            .await?;
    }

    let report = report(&up.upload_id, results);
    upload::Entity::update_many()
        .col_expr(
            upload::Column::Status,
            Expr::value(status_name(report.status())),
        )
        .col_expr(
            upload::Column::Accepted,
            Expr::value(i64::from(report.accepted)),
        )
        .col_expr(
            upload::Column::Rejected,
            Expr::value(i64::from(report.rejected)),
        )
        .col_expr(upload::Column::Report, Expr::value(report.encode_to_vec()))
        .filter(upload::Column::LaOdsCode.eq(up.la_ods_code.as_str()))
        .filter(upload::Column::UploadId.eq(up.upload_id.as_str()))
        .exec(&txn)
        .await?;
    discard(&txn, &up.attempt).await?;
    txn.commit().await?;

    let changed = dirty
        .iter()
        .map(|k| k.nhs_number.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter_map(|n| NhsNumber::parse(n).ok())
        .collect();
    Ok(Applied::Fresh { report, changed })
}

async fn staged(txn: &DatabaseTransaction, attempt: &str) -> Result<Vec<FlagRecord>> {
    upload_staging::Entity::find()
        .filter(upload_staging::Column::AttemptId.eq(attempt))
        .order_by_asc(upload_staging::Column::Position)
        .all(txn)
        .await?
        .into_iter()
        .map(|row| {
            FlagRecord::decode(row.record.as_slice())
                .map_err(|e| RegistryError::Corrupt(format!("staged record: {e}")))
        })
        .collect()
}

/// The LA's flags (deleted ones included: re-uploading one restores it) on these numbers.
async fn existing(
    txn: &DatabaseTransaction,
    la: &str,
    numbers: &[String],
) -> Result<HashMap<FlagKey, FlagState>> {
    let mut found = HashMap::new();
    for chunk in numbers.chunks(NUMBERS_PER_QUERY) {
        let rows = flag::Entity::find()
            .filter(flag::Column::LaOdsCode.eq(la))
            .filter(flag::Column::NhsNumber.is_in(chunk.iter().cloned()))
            .all(txn)
            .await?;
        for row in rows {
            let Some(flag_type) = FlagType::parse(&row.flag_type) else {
                continue;
            };
            let key = FlagKey {
                nhs_number: row.nhs_number.clone(),
                flag_type,
                start: row.start_date,
            };
            found.insert(key, FlagState::of(&row));
        }
    }
    Ok(found)
}

fn report(upload_id: &str, results: Vec<RecordResult>) -> UploadFlagsResponse {
    let accepted = results
        .iter()
        .filter(|r| r.code == i32::from(RecordCode::Accepted))
        .count() as u32;
    let rejected = results.len() as u32 - accepted;
    let status = match (accepted, rejected) {
        (_, 0) => UploadStatus::Success,
        (0, _) => UploadStatus::Failed,
        _ => UploadStatus::Partial,
    };
    UploadFlagsResponse {
        upload_id: upload_id.to_owned(),
        status: status.into(),
        results,
        accepted,
        rejected,
    }
}

fn status_name(status: UploadStatus) -> &'static str {
    match status {
        UploadStatus::Success => "SUCCESS",
        UploadStatus::Partial => "PARTIAL",
        UploadStatus::Failed => "FAILED",
        UploadStatus::Unspecified => "UNSPECIFIED",
    }
}

/// The numbers a stored report accepted: what a resend must make visible again (its first
/// attempt may have committed without its cache invalidation confirmed).
pub fn accepted_numbers(report: &UploadFlagsResponse) -> Vec<NhsNumber> {
    report
        .results
        .iter()
        .filter(|r| r.code == i32::from(RecordCode::Accepted))
        .filter_map(|r| NhsNumber::parse(&r.nhs_number).ok())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}
