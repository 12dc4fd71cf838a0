//! Uploads: records staged per attempt as they arrive, under a lease that keeps any replica's
//! cleanup off a live upload; then applied whole in one transaction, chunk by chunk (memory
//! holds one chunk and the report, whatever the upload's size), with the report stored so a
//! resend of the same upload gets it back unchanged.

use super::flags::{Change, FlagState, upsert_on_identity};
use super::restrictions::restricted_among;
use super::{NUMBERS_PER_QUERY, ROWS_PER_STATEMENT, begin_write, hold_restrictions_still};
use crate::entities::{flag, flag_history, upload, upload_attempt, upload_staging};
use crate::error::{RegistryError, Result};
use crate::flag::FlagKey;
use crate::report;
use crate::rules::{RecordProblem, ValidRecord, judge_record};
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use cpis_proto::gateway::{
    FlagRecord, RecordCode, RecordResult, UploadFlagsResponse, UploadStatus,
};
use platform::domain::{FlagType, NhsNumber};
use prost::Message;
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction,
    DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Statement,
};
use std::collections::{BTreeSet, HashMap, HashSet};

/// How long an attempt's staging is safe from cleanup after its last renewal. Every staged
/// message renews it, and the gateway relays records within its stream gap
/// (`CPIS_STREAM_MESSAGE_GAP`, 30 s) plus its relay's linger (5 s), or ends the stream: the
/// lease outlives a live stream's pauses several times over, and a dead process's staging goes
/// within minutes. A stream that stalls past it loses its staging and answers UNAVAILABLE,
/// applying nothing.
pub const STAGING_LEASE: TimeDelta = TimeDelta::minutes(5);

/// Staged records older than this under no attempt row were staged by a version without
/// leases (before this schema, or an older replica during a rolling upgrade). No upload lives
/// that long (the gateway allows one 10 minutes unless its caller asks for more), so they are
/// an interrupted upload's leftovers.
pub const UNLEASED_STAGING_AGE: TimeDelta = TimeDelta::hours(1);

/// Attempts removed per cleanup transaction: each takes its staged records (up to 50,000 rows)
/// with it, so a transaction stays short whatever was left behind.
pub const CLEANUP_BATCH: u64 = 8;

/// Cleanup transactions per call at most, so one call ends even if attempts keep lapsing.
const CLEANUP_ROUNDS: usize = 1_000;

/// Staged records read, judged, planned and written per step of [`apply`].
pub const APPLY_CHUNK: u64 = 1_000;

/// Starts an attempt: its leased row, before any of its records is staged.
pub async fn begin(
    db: &DatabaseConnection,
    attempt: &str,
    la: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    upload_attempt::Entity::insert(upload_attempt::ActiveModel {
        attempt_id: Set(attempt.to_owned()),
        la_ods_code: Set(la.to_owned()),
        started_at: Set(now),
        lease_until: Set(now + STAGING_LEASE),
    })
    .exec_without_returning(db)
    .await?;
    Ok(())
}

/// Renews the attempt's lease. Inside a transaction this also holds the attempt's row until
/// it ends, so a cleanup on any replica waits for it and then sees the new lease, rather than
/// deleting records being staged or applied. `StagingLapsed` when a cleanup took the attempt.
async fn renew(db: &impl ConnectionTrait, attempt: &str, now: DateTime<Utc>) -> Result<()> {
    let renewed = upload_attempt::Entity::update_many()
        .col_expr(
            upload_attempt::Column::LeaseUntil,
            Expr::value(now + STAGING_LEASE),
        )
        .filter(upload_attempt::Column::AttemptId.eq(attempt))
        .exec(db)
        .await?;
    if renewed.rows_affected == 0 {
        return Err(RegistryError::StagingLapsed);
    }
    Ok(())
}

/// Stages one message's records in one multi-row INSERT, renewing the attempt's lease in the
/// same transaction (a message without records renews it too).
pub async fn stage(
    db: &DatabaseConnection,
    attempt: &str,
    first_position: u64,
    records: &[FlagRecord],
    now: DateTime<Utc>,
) -> Result<()> {
    let txn = begin_write(db).await?;
    renew(&txn, attempt, now).await?;
    if !records.is_empty() {
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
            .exec_without_returning(&txn)
            .await?;
    }
    txn.commit().await?;
    Ok(())
}

/// Forgets an attempt: its staged records, then its lease (a crash between the two leaves a
/// lease that lapses, and cleanup finishes the job).
pub async fn discard(db: &impl ConnectionTrait, attempt: &str) -> Result<()> {
    upload_staging::Entity::delete_many()
        .filter(upload_staging::Column::AttemptId.eq(attempt))
        .exec(db)
        .await?;
    upload_attempt::Entity::delete_many()
        .filter(upload_attempt::Column::AttemptId.eq(attempt))
        .exec(db)
        .await?;
    Ok(())
}

/// Removes what interrupted uploads left: attempts whose lease lapsed before `now`, with their
/// records, and records staged long ago under no attempt at all (see
/// [`UNLEASED_STAGING_AGE`]); in transactions of at most [`CLEANUP_BATCH`] attempts. A live
/// attempt, however old, keeps its records. Returns how many staged records went.
pub async fn clean_lapsed(db: &DatabaseConnection, now: DateTime<Utc>) -> Result<u64> {
    let mut removed = 0;
    for _ in 0..CLEANUP_ROUNDS {
        let (rows, full) = clean_lapsed_batch(db, now).await?;
        removed += rows;
        if !full {
            break;
        }
    }
    for _ in 0..CLEANUP_ROUNDS {
        let (rows, full) = clean_unleased_batch(db, now - UNLEASED_STAGING_AGE).await?;
        removed += rows;
        if !full {
            break;
        }
    }
    Ok(removed)
}

/// One batch of lapsed attempts: (records removed, whether the batch was full).
async fn clean_lapsed_batch(db: &DatabaseConnection, now: DateTime<Utc>) -> Result<(u64, bool)> {
    let txn = begin_write(db).await?;
    let candidates: Vec<String> = upload_attempt::Entity::find()
        .select_only()
        .column(upload_attempt::Column::AttemptId)
        .filter(upload_attempt::Column::LeaseUntil.lt(now))
        .order_by_asc(upload_attempt::Column::LeaseUntil)
        .limit(CLEANUP_BATCH)
        .into_tuple()
        .all(&txn)
        .await?;
    if candidates.is_empty() {
        txn.commit().await?;
        return Ok((0, false));
    }
    let full = candidates.len() as u64 == CLEANUP_BATCH;
    // The lease is tested again on the row being deleted: PostgreSQL re-reads a row another
    // transaction held (a staging or an apply renewing it) once that one ends, so a renewed
    // attempt stays, and one applied and gone is skipped.
    let gone: Vec<String> = upload_attempt::Entity::delete_many()
        .filter(upload_attempt::Column::AttemptId.is_in(candidates))
        .filter(upload_attempt::Column::LeaseUntil.lt(now))
        .exec_with_returning(&txn)
        .await?
        .into_iter()
        .map(|attempt| attempt.attempt_id)
        .collect();
    let rows = if gone.is_empty() {
        0
    } else {
        upload_staging::Entity::delete_many()
            .filter(upload_staging::Column::AttemptId.is_in(gone))
            .exec(&txn)
            .await?
            .rows_affected
    };
    txn.commit().await?;
    Ok((rows, full))
}

/// One batch of attempts staged before `before` with no lease row: (records removed, whether
/// the batch was full).
async fn clean_unleased_batch(
    db: &DatabaseConnection,
    before: DateTime<Utc>,
) -> Result<(u64, bool)> {
    let leased = || {
        Query::select()
            .column(upload_attempt::Column::AttemptId)
            .from(upload_attempt::Entity)
            .to_owned()
    };
    let txn = begin_write(db).await?;
    let candidates: Vec<String> = upload_staging::Entity::find()
        .select_only()
        .column(upload_staging::Column::AttemptId)
        .distinct()
        .filter(upload_staging::Column::StagedAt.lt(before))
        .filter(upload_staging::Column::AttemptId.not_in_subquery(leased()))
        .limit(CLEANUP_BATCH)
        .into_tuple()
        .all(&txn)
        .await?;
    if candidates.is_empty() {
        txn.commit().await?;
        return Ok((0, false));
    }
    let full = candidates.len() as u64 == CLEANUP_BATCH;
    let rows = upload_staging::Entity::delete_many()
        .filter(upload_staging::Column::AttemptId.is_in(candidates))
        .filter(upload_staging::Column::AttemptId.not_in_subquery(leased()))
        .exec(&txn)
        .await?
        .rows_affected;
    txn.commit().await?;
    Ok((rows, full))
}

/// How many records are staged, across attempts (for tests and metrics).
pub async fn staged_count(db: &DatabaseConnection) -> Result<u64> {
    use sea_orm::PaginatorTrait;
    Ok(upload_staging::Entity::find().count(db).await?)
}

/// How many attempts hold a lease row (for tests).
pub async fn attempt_count(db: &DatabaseConnection) -> Result<u64> {
    use sea_orm::PaginatorTrait;
    Ok(upload_attempt::Entity::find().count(db).await?)
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

/// The report stored for (LA, upload_id), if that upload completed; capped as new reports
/// are ([`report::bounded`]), so a report stored before the caps can still be delivered.
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
    Ok(Some((row.fingerprint, report::bounded(report))))
}

/// Applies the staged attempt in one transaction: the attempt's lease renewed and held (no
/// cleanup can take its records meanwhile), restrictions held still, the LA's other uploads
/// waited for, the upload id claimed; then chunk by chunk the staged records read in order,
/// judged, the restrictions and the LA's flags on their numbers read (inside the transaction,
/// so earlier chunks' writes are seen), planned and written; last the report stored and the
/// staging deleted.
pub async fn apply(db: &DatabaseConnection, up: &Upload, now: DateTime<Utc>) -> Result<Applied> {
    let txn = begin_write(db).await?;
    renew(&txn, &up.attempt, now).await?;
    hold_restrictions_still(&txn).await?;
    one_upload_of_the_la_at_a_time(&txn, &up.la_ods_code).await?;
    plan_each_statement_afresh(&txn).await?;
    if !claim(&txn, up, now).await? {
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
    let today = platform::domain::england_date(now);
    let mut results = Vec::new();
    let mut changed = BTreeSet::new();
    loop {
        let chunk = staged_chunk(&txn, &up.attempt, results.len() as i64).await?;
        if chunk.is_empty() {
            break;
        }
        let judged = Judged::new(chunk);
        let numbers = judged.numbers();
        let restricted = restricted_among(&txn, &numbers).await?;
        let current = existing(&txn, &up.la_ods_code, &numbers).await?;
        let first = results.len() as u32;
        let planned = plan_chunk(up, first, judged, &restricted, current, today);
        write(&txn, up, now, &planned.upserts, &planned.history).await?;
        results.extend(planned.results);
        changed.extend(planned.changed);
    }
    let report = report::report(&up.upload_id, results);
    store_report(&txn, up, &report).await?;
    discard(&txn, &up.attempt).await?;
    txn.commit().await?;
    Ok(Applied::Fresh {
        report,
        changed: changed.into_iter().collect(),
    })
}

/// Two 32-bit keys (the form `pg_advisory_xact_lock` takes as a pair never meets the one-key
/// form the migration lock uses): this class, and the LA.
const UPLOAD_LOCK_CLASS: i32 = 0x7570_6c64; // "upld"

/// Serialises the uploads of one LA on PostgreSQL, until the transaction ends. Chunk by chunk
/// an upload's flags are written in identity order within each chunk only, so two uploads of
/// one LA touching the same flags could otherwise take their row locks in opposite orders and
/// deadlock; one after the other, each also plans on the other's committed flags (episode
/// counts included). Different LAs never write the same flags and never wait for each other
/// here. (SQLite serialises every write transaction already.)
async fn one_upload_of_the_la_at_a_time(txn: &DatabaseTransaction, la: &str) -> Result<()> {
    if txn.get_database_backend() == DbBackend::Postgres {
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1, $2)",
            [UPLOAD_LOCK_CLASS.into(), la_lock_key(la).into()],
        ))
        .await?;
    }
    Ok(())
}

/// Makes PostgreSQL plan each statement of the upload for its own values and the table as it
/// stands, until the transaction ends. The apply runs the same statements once per chunk; after
/// five runs PostgreSQL may switch to one generic plan, made while the flags table was still
/// small (a new deployment's first uploads, before any statistics), that scans every flag of
/// the LA per chunk and compares each with the chunk's thousand numbers: measured, a
/// 50,000-record upload then took minutes instead of seconds.
async fn plan_each_statement_afresh(txn: &DatabaseTransaction) -> Result<()> {
    if txn.get_database_backend() == DbBackend::Postgres {
        txn.execute_unprepared("SET LOCAL plan_cache_mode = force_custom_plan")
            .await?;
    }
    Ok(())
}

/// A stable 32-bit key per LA (FNV-1a: the same in every process and build).
fn la_lock_key(la: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in la.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h as i32
}

/// Claims (LA, upload_id) for this upload, first: a concurrent twin waits here, then finds
/// it taken. `false` when it was taken already.
async fn claim(txn: &DatabaseTransaction, up: &Upload, now: DateTime<Utc>) -> Result<bool> {
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
    .exec_without_returning(txn)
    .await?;
    Ok(matches!(claimed, sea_orm::TryInsertResult::Inserted(n) if n > 0))
}

/// Staged records in upload order, each judged on its own (the rules needing no database).
#[derive(Clone, Debug)]
pub struct Judged(Vec<(FlagRecord, Result<ValidRecord, RecordProblem>)>);

impl Judged {
    pub fn new(records: Vec<FlagRecord>) -> Judged {
        Judged(
            records
                .into_iter()
                .map(|record| {
                    let judgement = judge_record(&record);
                    (record, judgement)
                })
                .collect(),
        )
    }

    /// The numbers of the records that passed, once each and sorted: those whose restrictions
    /// and flags the plan needs.
    pub fn numbers(&self) -> Vec<NhsNumber> {
        self.0
            .iter()
            .filter_map(|(_, judgement)| judgement.as_ref().ok())
            .map(|valid| valid.nhs_number)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }
}

/// A flag's change, for its history row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Historic {
    pub key: FlagKey,
    pub change: &'static str,
    pub before: Option<FlagState>,
    pub after: FlagState,
}

/// What applying an upload writes, decided without I/O.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The report: each record's code, in upload order.
    pub report: UploadFlagsResponse,
    /// The flags to upsert, in their final state, sorted by identity so that concurrent
    /// writers lock rows in one order.
    pub upserts: Vec<(FlagKey, FlagState)>,
    /// One entry per record that changed a flag, in upload order.
    pub history: Vec<Historic>,
    /// The numbers whose flags changed, sorted, once each: the cache entries to invalidate.
    pub changed: Vec<NhsNumber>,
}

/// What one chunk of an upload writes: as [`Plan`], with the chunk's results in place of the
/// whole report.
#[derive(Clone, Debug, PartialEq)]
pub struct ChunkPlan {
    /// One result per record of the chunk, in order, indexed from the chunk's first record.
    pub results: Vec<RecordResult>,
    pub upserts: Vec<(FlagKey, FlagState)>,
    pub history: Vec<Historic>,
    pub changed: Vec<NhsNumber>,
}

/// Episodes of one flag type one LA may hold on one NHS number that are visible or still to
/// become visible: beyond it a record is RECORD_CODE_TOO_MANY_EPISODES.
pub const MAX_EPISODES: usize = 10;

/// Whether a flag is one of its LA's live episodes: not deleted, and not yet hidden by its
/// dates (visible now, or to become visible).
fn live(key: &FlagKey, state: &FlagState, today: NaiveDate) -> bool {
    let dates = crate::rules::FlagDates {
        flag_type: key.flag_type,
        start: key.start,
        end: state.end,
        due: state.due,
    };
    !state.deleted && dates.hidden_from().is_none_or(|hidden| today < hidden)
}

/// The LA's live episodes per (number, type), kept as the plan changes `current`.
fn live_episodes(
    current: &HashMap<FlagKey, FlagState>,
    today: NaiveDate,
) -> HashMap<(NhsNumber, FlagType), usize> {
    let mut counts = HashMap::new();
    for (key, state) in current {
        if live(key, state, today) {
            *counts.entry((key.nhs_number, key.flag_type)).or_insert(0) += 1;
        }
    }
    counts
}

/// Decides a whole upload at once: [`plan_chunk`] of every record, with the report.
pub fn plan(
    up: &Upload,
    judged: Judged,
    restricted: &HashSet<String>,
    current: HashMap<FlagKey, FlagState>,
    today: NaiveDate,
) -> Plan {
    let chunk = plan_chunk(up, 0, judged, restricted, current, today);
    Plan {
        report: report::report(&up.upload_id, chunk.results),
        upserts: chunk.upserts,
        history: chunk.history,
        changed: chunk.changed,
    }
}

/// Decides one chunk of an upload, whose first record is the upload's `first_index`: a record
/// refused by its own rules keeps its code; a record on a `restricted` number is
/// SENSITIVE_RECORD; any other is accepted and, where it differs from the LA's flag as it
/// stands (`current`: every flag of the LA on the chunk's numbers as loaded, so after earlier
/// chunks' writes, then as earlier records of this chunk left it), creates or updates that
/// flag. Episode counts come from `current` too, so they carry over from earlier chunks
/// through what those wrote.
pub fn plan_chunk(
    up: &Upload,
    first_index: u32,
    judged: Judged,
    restricted: &HashSet<String>,
    mut current: HashMap<FlagKey, FlagState>,
    today: NaiveDate,
) -> ChunkPlan {
    let mut results = Vec::with_capacity(judged.0.len());
    let mut live_counts = live_episodes(&current, today);
    let mut history = Vec::new();
    let mut dirty = BTreeSet::new();
    for (index, (record, judgement)) in (first_index..).zip(judged.0) {
        let judgement = judgement.and_then(|valid| {
            if restricted.contains(valid.nhs_number.as_str()) {
                Err(RecordProblem::sensitive())
            } else {
                Ok(valid)
            }
        });
        let valid = match judgement {
            Err(problem) => {
                // A refused number is echoed as sent (capped by the report).
                results.push(report::result(
                    index,
                    &record.nhs_number,
                    problem.code,
                    problem.message,
                ));
                continue;
            }
            Ok(valid) => valid,
        };
        let id = FlagKey {
            nhs_number: valid.nhs_number,
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
        let before = current.get(&id);
        let was_live = before.is_some_and(|b| live(&id, b, today));
        let is_live = live(&id, &after, today);
        let count = live_counts
            .entry((id.nhs_number, id.flag_type))
            .or_insert(0);
        if is_live && !was_live && *count >= MAX_EPISODES {
            let problem = RecordProblem::too_many_episodes();
            results.push(report::result(
                index,
                valid.nhs_number.as_str(),
                problem.code,
                problem.message,
            ));
            continue;
        }
        match (was_live, is_live) {
            (false, true) => *count += 1,
            (true, false) => *count -= 1,
            _ => {}
        }
        if before != Some(&after) {
            history.push(Historic {
                key: id,
                change: if before.is_none() {
                    "created"
                } else {
                    "updated"
                },
                before: before.cloned(),
                after: after.clone(),
            });
            current.insert(id, after);
            dirty.insert(id);
        }
        results.push(report::result(
            index,
            valid.nhs_number.as_str(),
            RecordCode::Accepted,
            "",
        ));
    }
    let upserts = dirty
        .iter()
        .filter_map(|id| current.remove(id).map(|state| (*id, state)))
        .collect();
    let changed = dirty
        .iter()
        .map(|key| key.nhs_number)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    ChunkPlan {
        results,
        upserts,
        history,
        changed,
    }
}

/// Writes one chunk's flags and history inside the upload's transaction.
async fn write(
    txn: &DatabaseTransaction,
    up: &Upload,
    now: DateTime<Utc>,
    upserts: &[(FlagKey, FlagState)],
    history: &[Historic],
) -> Result<()> {
    let change = Change {
        la: &up.la_ods_code,
        actor: &up.actor,
        source: &format!("upload:{}", up.upload_id),
        at: now,
    };
    let rows: Vec<flag::ActiveModel> = upserts
        .iter()
        .map(|(key, state)| change.row(key, state))
        .collect();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        flag::Entity::insert_many(chunk.to_vec())
            .on_conflict(upsert_on_identity())
            .exec_without_returning(txn)
            .await?;
    }
    let history: Vec<flag_history::ActiveModel> = history
        .iter()
        .map(|h| change.history(&h.key, h.change, h.before.as_ref(), &h.after))
        .collect();
    for chunk in history.chunks(ROWS_PER_STATEMENT) {
        flag_history::Entity::insert_many(chunk.to_vec())
            .exec_without_returning(txn)
            .await?;
    }
    Ok(())
}

/// Stores the report on the upload's claimed row, for resends.
async fn store_report(
    txn: &DatabaseTransaction,
    up: &Upload,
    report: &UploadFlagsResponse,
) -> Result<()> {
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
        .exec(txn)
        .await?;
    Ok(())
}

/// The next [`APPLY_CHUNK`] staged records from position `from`, in order. Positions run from
/// 0 without gaps (each message's first record follows the last one's), so the chunk after
/// `n` results starts at position `n`.
async fn staged_chunk(
    txn: &DatabaseTransaction,
    attempt: &str,
    from: i64,
) -> Result<Vec<FlagRecord>> {
    upload_staging::Entity::find()
        .filter(upload_staging::Column::AttemptId.eq(attempt))
        .filter(upload_staging::Column::Position.gte(from))
        .order_by_asc(upload_staging::Column::Position)
        .limit(APPLY_CHUNK)
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
    numbers: &[NhsNumber],
) -> Result<HashMap<FlagKey, FlagState>> {
    let mut found = HashMap::new();
    for chunk in numbers.chunks(NUMBERS_PER_QUERY) {
        let rows = flag::Entity::find()
            .filter(flag::Column::LaOdsCode.eq(la))
            .filter(flag::Column::NhsNumber.is_in(chunk.iter().map(|n| n.as_str())))
            .all(txn)
            .await?;
        for row in rows {
            // A type or number this service never writes cannot match an uploaded record.
            let (Some(flag_type), Ok(nhs_number)) = (
                FlagType::parse(&row.flag_type),
                NhsNumber::parse(&row.nhs_number),
            ) else {
                continue;
            };
            let key = FlagKey {
                nhs_number,
                flag_type,
                start: row.start_date,
            };
            found.insert(key, FlagState::of(&row));
        }
    }
    Ok(found)
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use platform::domain::parse_date;

    const CHILD: &str = "9434765919";
    const SIBLING: &str = "4857773457";

    fn n(s: &str) -> NhsNumber {
        NhsNumber::parse(s).unwrap()
    }

    fn up() -> Upload {
        Upload {
            la_ods_code: "706".into(),
            la_name: "Example Council".into(),
            actor: "u1".into(),
            upload_id: "u".into(),
            fingerprint: String::new(),
            attempt: "a".into(),
        }
    }

    fn cpp(nhs_number: &str, start: &str, end: &str) -> FlagRecord {
        FlagRecord {
            nhs_number: nhs_number.into(),
            flag_type: FlagType::Cpp.into(),
            start_date: start.into(),
            end_date: end.into(),
            due_date: String::new(),
            emergency_phone: "0161 234 5678".into(),
            office_hours_phone: String::new(),
            email: String::new(),
        }
    }

    fn id(nhs_number: &str, start: &str) -> FlagKey {
        FlagKey {
            nhs_number: n(nhs_number),
            flag_type: FlagType::Cpp,
            start: parse_date(start).unwrap(),
        }
    }

    fn state(end: &str) -> FlagState {
        FlagState {
            la_name: "Example Council".into(),
            end: (!end.is_empty()).then(|| parse_date(end).unwrap()),
            due: None,
            emergency_phone: "0161 234 5678".into(),
            office_hours_phone: String::new(),
            email: String::new(),
            deleted: false,
        }
    }

    fn codes(plan: &Plan) -> Vec<RecordCode> {
        plan.report.results.iter().map(|r| r.code()).collect()
    }

    fn plan_of(
        records: Vec<FlagRecord>,
        restricted: &[&str],
        current: HashMap<FlagKey, FlagState>,
    ) -> Plan {
        let restricted = restricted.iter().map(|s| s.to_string()).collect();
        plan(
            &up(),
            Judged::new(records),
            &restricted,
            current,
            parse_date("2025-06-01").unwrap(),
        )
    }

    #[test]
    fn an_la_holds_at_most_ten_live_episodes_of_a_type_on_a_number() {
        // One episode long ended (hidden by its dates) and nine live ones already stored.
        let mut current = HashMap::from([(id(CHILD, "2020-01-01"), state("2020-02-01"))]);
        for month in 1..=9 {
            current.insert(id(CHILD, &format!("2024-{month:02}-01")), state(""));
        }
        let records = vec![
            cpp(CHILD, "2025-01-01", ""),   // the tenth live episode
            cpp(CHILD, "2025-02-01", ""),   // an eleventh: refused
            cpp(CHILD, "2024-01-01", ""),   // an update of a live one: no new episode
            cpp(SIBLING, "2025-02-01", ""), // another number has its own ten
        ];
        let plan = plan_of(records, &[], current);
        assert_eq!(
            codes(&plan),
            [
                RecordCode::Accepted,
                RecordCode::TooManyEpisodes,
                RecordCode::Accepted,
                RecordCode::Accepted
            ]
        );
        assert!(
            plan.upserts
                .iter()
                .all(|(k, _)| *k != id(CHILD, "2025-02-01")),
            "a refused record is not applied"
        );
    }

    #[test]
    fn the_numbers_loaded_are_those_of_records_that_passed_once_each() {
        let judged = Judged::new(vec![
            cpp(SIBLING, "2025-01-01", ""),
            cpp("943 476 5919", "2025-01-01", ""),
            cpp(CHILD, "2025-02-01", ""),
            cpp("123", "2025-01-01", ""),
        ]);
        assert_eq!(judged.numbers(), [n(SIBLING), n(CHILD)]);
    }

    #[test]
    fn a_new_flag_is_created_and_an_unchanged_one_is_left_alone() {
        let current = HashMap::from([(id(SIBLING, "2025-01-01"), state(""))]);
        let plan = plan_of(
            vec![cpp(CHILD, "2025-01-01", ""), cpp(SIBLING, "2025-01-01", "")],
            &[],
            current,
        );
        assert_eq!(codes(&plan), [RecordCode::Accepted, RecordCode::Accepted]);
        assert_eq!(plan.report.status(), UploadStatus::Success);
        assert_eq!(
            plan.history,
            [Historic {
                key: id(CHILD, "2025-01-01"),
                change: "created",
                before: None,
                after: state(""),
            }]
        );
        assert_eq!(plan.upserts, [(id(CHILD, "2025-01-01"), state(""))]);
        assert_eq!(plan.changed, [n(CHILD)]);
    }

    #[test]
    fn records_with_one_identity_update_it_in_upload_order() {
        let current = HashMap::from([(id(CHILD, "2025-01-01"), state(""))]);
        let plan = plan_of(
            vec![
                cpp(CHILD, "2025-01-01", "2025-06-01"),
                cpp(CHILD, "2025-01-01", "2025-07-01"),
            ],
            &[],
            current,
        );
        let changes: Vec<_> = plan
            .history
            .iter()
            .map(|h| (h.change, h.before.clone(), h.after.clone()))
            .collect();
        assert_eq!(
            changes,
            [
                ("updated", Some(state("")), state("2025-06-01")),
                ("updated", Some(state("2025-06-01")), state("2025-07-01")),
            ]
        );
        assert_eq!(
            plan.upserts,
            [(id(CHILD, "2025-01-01"), state("2025-07-01"))],
            "one row, in its last state"
        );
    }

    #[test]
    fn refused_records_keep_their_code_and_write_nothing() {
        let plan = plan_of(
            vec![
                cpp(CHILD, "2025-01-01", ""),
                cpp("123", "2025-01-01", ""),
                cpp(SIBLING, "2025-01-01", ""),
            ],
            &[SIBLING],
            HashMap::new(),
        );
        assert_eq!(
            codes(&plan),
            [
                RecordCode::Accepted,
                RecordCode::InvalidNhsNumber,
                RecordCode::SensitiveRecord
            ]
        );
        let numbers: Vec<_> = plan.report.results.iter().map(|r| &r.nhs_number).collect();
        assert_eq!(numbers, [CHILD, "123", SIBLING], "as sent when refused");
        assert_eq!((plan.report.accepted, plan.report.rejected), (1, 2));
        assert_eq!(plan.report.status(), UploadStatus::Partial);
        assert_eq!(plan.changed, [n(CHILD)]);
        let failed = plan_of(vec![cpp("123", "2025-01-01", "")], &[], HashMap::new());
        assert_eq!(failed.report.status(), UploadStatus::Failed);
        assert!(failed.upserts.is_empty() && failed.history.is_empty());
    }

    /// The LA's flags as the database holds them, for planning chunk by chunk the way
    /// [`apply`] does: each chunk loads the flags on its numbers as earlier chunks left them.
    struct Stored(HashMap<FlagKey, FlagState>);

    impl Stored {
        fn on(&self, numbers: &[NhsNumber]) -> HashMap<FlagKey, FlagState> {
            self.0
                .iter()
                .filter(|(k, _)| numbers.contains(&k.nhs_number))
                .map(|(k, v)| (*k, v.clone()))
                .collect()
        }
    }

    /// Plans `records` in chunks of `size` over `stored`, writing each chunk's upserts before
    /// the next is loaded: (results, history, changed, the flags after).
    fn plan_in_chunks(
        records: Vec<FlagRecord>,
        size: usize,
        restricted: &HashSet<String>,
        stored: HashMap<FlagKey, FlagState>,
    ) -> (
        Vec<RecordResult>,
        Vec<Historic>,
        BTreeSet<NhsNumber>,
        HashMap<FlagKey, FlagState>,
    ) {
        let mut stored = Stored(stored);
        let (mut results, mut history, mut changed) = (Vec::new(), Vec::new(), BTreeSet::new());
        for chunk in records.chunks(size) {
            let judged = Judged::new(chunk.to_vec());
            let current = stored.on(&judged.numbers());
            let first = results.len() as u32;
            let today = parse_date("2025-06-01").unwrap();
            let planned = plan_chunk(&up(), first, judged, restricted, current, today);
            stored.0.extend(planned.upserts);
            results.extend(planned.results);
            history.extend(planned.history);
            changed.extend(planned.changed);
        }
        (results, history, changed, stored.0)
    }

    /// The whole upload planned at once, its upserts written over `stored`.
    fn plan_whole(
        records: Vec<FlagRecord>,
        restricted: &HashSet<String>,
        stored: HashMap<FlagKey, FlagState>,
    ) -> (
        Vec<RecordResult>,
        Vec<Historic>,
        BTreeSet<NhsNumber>,
        HashMap<FlagKey, FlagState>,
    ) {
        let numbers = Judged::new(records.clone()).numbers();
        let current = Stored(stored.clone()).on(&numbers);
        let today = parse_date("2025-06-01").unwrap();
        let whole = plan(&up(), Judged::new(records), restricted, current, today);
        let mut after = stored;
        after.extend(whole.upserts);
        (
            whole.report.results,
            whole.history,
            whole.changed.into_iter().collect(),
            after,
        )
    }

    #[test]
    fn chunks_touching_one_number_count_its_episodes_and_see_its_flags_across_them() {
        // Eight live episodes stored; the upload adds four more across a chunk boundary (two
        // fit), updates in the second chunk a flag the first chunk created, and its records
        // keep their upload-wide index.
        let mut stored = HashMap::new();
        for month in 1..=8 {
            stored.insert(id(CHILD, &format!("2024-{month:02}-01")), state(""));
        }
        let records = vec![
            cpp(CHILD, "2025-01-01", ""),           // 9th
            cpp(SIBLING, "2025-01-01", ""),         // another number
            cpp(CHILD, "2025-02-01", ""),           // 10th
            cpp(CHILD, "2025-03-01", ""),           // chunk 2: an 11th, refused
            cpp(CHILD, "2025-01-01", "2025-05-01"), // chunk 2: updates chunk 1's flag
            cpp(CHILD, "2025-04-01", ""),           // refused still: ended flags stay live
        ];
        let restricted = HashSet::new();
        let (results, history, changed, after) =
            plan_in_chunks(records.clone(), 3, &restricted, stored.clone());
        let codes: Vec<RecordCode> = results.iter().map(|r| r.code()).collect();
        assert_eq!(
            codes,
            [
                RecordCode::Accepted,
                RecordCode::Accepted,
                RecordCode::Accepted,
                RecordCode::TooManyEpisodes,
                RecordCode::Accepted,
                RecordCode::TooManyEpisodes,
            ]
        );
        let indexes: Vec<u32> = results.iter().map(|r| r.index).collect();
        assert_eq!(indexes, [0, 1, 2, 3, 4, 5]);
        let update = history
            .iter()
            .find(|h| h.change == "updated")
            .expect("the second chunk's update");
        assert_eq!(
            update.before,
            Some(state("")),
            "it saw the first chunk's write"
        );
        assert_eq!(after[&id(CHILD, "2025-01-01")], state("2025-05-01"));
        assert!(!after.contains_key(&id(CHILD, "2025-03-01")));
        assert_eq!(
            changed.into_iter().collect::<Vec<_>>(),
            [n(SIBLING), n(CHILD)]
        );
        // The same as planning the whole upload at once.
        assert_eq!(
            plan_in_chunks(records.clone(), 3, &restricted, stored.clone()),
            plan_whole(records, &restricted, stored)
        );
    }

    proptest::proptest! {
        /// Whatever the records and the chunk size, planning chunk by chunk over what earlier
        /// chunks wrote decides, reports and writes what planning the whole upload would.
        #[test]
        fn planning_chunk_by_chunk_matches_planning_the_whole_upload(
            picks in proptest::collection::vec((0usize..3, 0u32..14, 0u8..3, 0u8..4), 0..60),
            size in 1usize..8,
            stored_months in proptest::collection::vec(0u32..14, 0..12),
        ) {
            let numbers = [CHILD, SIBLING, "123"];
            let date = |m: u32| format!("{}-{:02}-01", 2024 + m / 12, 1 + m % 12);
            let ends = ["", "2025-05-31", "2024-01-01", "2023-01-01"];
            let records: Vec<FlagRecord> = picks
                .iter()
                .map(|&(who, month, kind, end)| {
                    let mut r = cpp(numbers[who], &date(month), ends[end as usize]);
                    r.flag_type = [FlagType::Cpp, FlagType::Lac, FlagType::Cpp][kind as usize].into();
                    if kind == 2 {
                        r.email = "duty@council.example".into();
                    }
                    r
                })
                .collect();
            let stored: HashMap<FlagKey, FlagState> = stored_months
                .iter()
                .map(|&m| (id(CHILD, &date(m)), state("")))
                .collect();
            let restricted: HashSet<String> = [SIBLING.to_string()].into();
            proptest::prop_assert_eq!(
                plan_in_chunks(records.clone(), size, &restricted, stored.clone()),
                plan_whole(records, &restricted, stored)
            );
        }
    }

    #[test]
    fn upserts_are_in_identity_order_whatever_the_upload_order() {
        let plan = plan_of(
            vec![
                cpp(CHILD, "2025-02-01", ""),
                cpp(SIBLING, "2025-01-01", ""),
                cpp(CHILD, "2025-01-01", ""),
            ],
            &[],
            HashMap::new(),
        );
        let order: Vec<FlagKey> = plan.upserts.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            order,
            [
                id(SIBLING, "2025-01-01"),
                id(CHILD, "2025-01-01"),
                id(CHILD, "2025-02-01")
            ]
        );
        assert_eq!(plan.changed, [n(SIBLING), n(CHILD)]);
    }
}
