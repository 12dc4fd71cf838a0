//! One batch of decisions in one transaction, in three steps: [`load`] locks the chain head
//! (which serialises every appender, in this process and in other replicas) and reads what
//! the decisions need in a few queries; the pure [`plan`](super::plan) decides each with the
//! rules and builds every audit record, obligation and idempotency key; [`write`] inserts them
//! before one commit. A decision is answered only after that commit.

use super::plan::{self, Head, KeyId, Known, OrganisationEntry, Plan, Writes, resolve};
use super::request::{DecideInput, Identity};
use crate::entities::{audit_head, idempotency_key, obligation, system};
use crate::error::AccessError;
use crate::storage::{now_micros, organisations, systems};
use cpis_proto::access::Decision;
use platform::Result;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait, ModelTrait,
    QueryFilter, TransactionTrait,
};
use std::collections::HashMap;

/// Takes the chain head's row lock before anything else. A no-op UPDATE does it on both
/// backends: PostgreSQL locks the row until commit; SQLite takes its write lock now rather
/// than failing to upgrade a read transaction later.
async fn lock_head<C: ConnectionTrait>(txn: &C) -> Result<audit_head::Model> {
    audit_head::Entity::update_many()
        .col_expr(
            audit_head::Column::Sequence,
            Expr::col(audit_head::Column::Sequence),
        )
        .filter(audit_head::Column::Id.eq(audit_head::HEAD_ID))
        .exec(txn)
        .await?;
    audit_head::Entity::find_by_id(audit_head::HEAD_ID)
        .one(txn)
        .await?
        .ok_or_else(|| AccessError::Corrupt("the audit head row is missing".into()).into())
}

async fn load_keys<C: ConnectionTrait>(
    txn: &C,
    wanted: &[KeyId],
) -> Result<HashMap<KeyId, idempotency_key::Model>> {
    if wanted.is_empty() {
        return Ok(HashMap::new());
    }
    let mut any = Condition::any();
    for (scope, request_id) in wanted {
        any = any.add(
            Condition::all()
                .add(idempotency_key::Column::Scope.eq(scope.as_str()))
                .add(idempotency_key::Column::RequestId.eq(request_id.as_str())),
        );
    }
    Ok(idempotency_key::Entity::find()
        .filter(any)
        .all(txn)
        .await?
        .into_iter()
        .map(|k| ((k.scope.clone(), k.request_id.clone()), k))
        .collect())
}

async fn load_pending<C: ConnectionTrait>(
    txn: &C,
    lookup_ids: Vec<String>,
) -> Result<HashMap<String, obligation::Model>> {
    if lookup_ids.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(obligation::Entity::find()
        .filter(obligation::Column::LookupId.is_in(lookup_ids))
        .filter(obligation::Column::CompletedAt.is_null())
        .all(txn)
        .await?
        .into_iter()
        .map(|o| (o.lookup_id.clone(), o))
        .collect())
}

/// Locks the head, then reads the registered systems of the batch's callers, their
/// organisations, the keys stored for its request ids and those keys' pending obligations.
async fn load<C: ConnectionTrait>(txn: &C, inputs: &[DecideInput]) -> Result<Known> {
    let head = lock_head(txn).await?;

    let sans: Vec<String> = inputs
        .iter()
        .filter_map(|i| match &i.identity {
            Identity::System { san, .. } => Some(san.clone()),
            Identity::User { .. } => None,
        })
        .collect();
    let registered: HashMap<String, system::Model> = systems::find_many(txn, sans)
        .await?
        .into_iter()
        .map(|s| (s.san.clone(), s))
        .collect();
    let callers: Vec<_> = inputs
        .iter()
        .map(|i| resolve(&i.identity, &registered))
        .collect();

    let mut ods_codes: Vec<String> = callers
        .iter()
        .map(|c| c.rules.ods_code.as_str().to_owned())
        .collect();
    ods_codes.sort();
    ods_codes.dedup();
    let organisations: HashMap<String, OrganisationEntry> =
        organisations::find_many(txn, ods_codes)
            .await?
            .into_iter()
            .map(|o| {
                let entry = OrganisationEntry {
                    standing: organisations::standing(&o),
                    name: o.name,
                };
                (o.ods_code, entry)
            })
            .collect();

    let wanted: Vec<KeyId> = inputs
        .iter()
        .zip(&callers)
        .filter_map(|(i, c)| c.key(i))
        .collect();
    let keys = load_keys(txn, &wanted).await?;
    let pending = load_pending(
        txn,
        keys.values()
            .filter(|k| !k.lookup_id.is_empty())
            .map(|k| k.lookup_id.clone())
            .collect(),
    )
    .await?;

    let hash = <[u8; 32]>::try_from(head.hash.as_slice())
        .map_err(|_| AccessError::Corrupt("the audit head hash is not 32 bytes".into()))?;
    Ok(Known {
        head: Head {
            sequence: head.sequence as u64,
            hash,
        },
        callers,
        organisations,
        keys,
        pending,
    })
}

/// Inserts rows of one table in one statement; with no rows, sends nothing.
async fn insert_all<M, C>(txn: &C, rows: Vec<M>) -> Result<()>
where
    M: ModelTrait,
    <M::Entity as EntityTrait>::ActiveModel: From<M>,
    C: ConnectionTrait,
{
    <M::Entity as EntityTrait>::insert_many(
        rows.into_iter()
            .map(<M::Entity as EntityTrait>::ActiveModel::from),
    )
    .exec_without_returning(txn)
    .await?;
    Ok(())
}

/// Inserts what the plan built and moves the head to its last record.
async fn write<C: ConnectionTrait>(txn: &C, writes: Writes) -> Result<()> {
    // Every request reused a request_id: nothing was decided, the head stays.
    if writes.records.is_empty() {
        return Ok(());
    }
    insert_all(txn, writes.records).await?;
    insert_all(txn, writes.obligations).await?;
    insert_all(txn, writes.keys).await?;
    audit_head::Entity::update_many()
        .col_expr(
            audit_head::Column::Sequence,
            Expr::value(writes.head.sequence as i64),
        )
        .col_expr(
            audit_head::Column::Hash,
            Expr::value(writes.head.hash.to_vec()),
        )
        .filter(audit_head::Column::Id.eq(audit_head::HEAD_ID))
        .exec(txn)
        .await?;
    Ok(())
}

/// Decides and records `inputs` in one transaction. The outer error fails the whole batch
/// (nothing was written); an inner error fails one request (not audited).
pub async fn commit(
    db: &DatabaseConnection,
    inputs: &[DecideInput],
) -> Result<Vec<Result<Decision>>> {
    let txn = db.begin().await?;
    let known = load(&txn, inputs).await?;
    // Taken under the head lock, so recorded_at follows the sequence within one clock.
    let now = now_micros();
    let Plan { results, writes } =
        plan::plan(inputs, known, now, || uuid::Uuid::now_v7().to_string());
    write(&txn, writes).await?;
    txn.commit().await?;
    Ok(results)
}
