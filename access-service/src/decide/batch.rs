//! One batch of decisions in one transaction: lock the chain head (which serialises every
//! appender, in this process and in other replicas), read what the decisions need in a few
//! queries, decide each with the pure rules, and write every audit record, obligation and
//! idempotency key before one commit. A decision is answered only after that commit.

use super::request::{DecideInput, Identity};
use crate::audit::chain::AuditContent;
use crate::audit::list::{OUTCOME_ALLOWED, OUTCOME_DENIED, instant_of};
use crate::entities::{
    audit_head, audit_record, idempotency_key, obligation, organisation, system,
};
use crate::error::AccessError;
use crate::rules::{self, AccessDecision, Action, Caller, CallerKind, OrganisationKind};
use crate::storage::{now_micros, obligations, organisations, systems};
use cpis_proto::access::Decision;
use platform::Result;
use platform::domain::{Activity, OdsCode};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter,
    TransactionTrait,
};
use std::collections::{BTreeSet, HashMap};

/// The caller once access-service has looked a system up.
struct Resolved {
    rules: Caller,
    /// AuditEvent.user_id: the user id, or the system's SAN.
    audit_user_id: String,
    role_code: String,
    /// Idempotency scope: (user or system, organisation).
    scope: String,
}

fn resolve(identity: &Identity, systems: &HashMap<String, system::Model>) -> Resolved {
    match identity {
        Identity::User {
            user_id,
            role_code,
            ods_code,
            activities,
        } => Resolved {
            rules: Caller {
                kind: CallerKind::User,
                ods_code: ods_code.clone(),
                activities: activities.clone(),
            },
            audit_user_id: user_id.clone(),
            role_code: role_code.clone(),
            scope: format!("user:{user_id}@{ods_code}"),
        },
        Identity::System {
            san,
            claimed_ods_code,
        } => {
            let registered = systems.get(san);
            let ods_code = registered
                .and_then(|s| OdsCode::parse(&s.ods_code).ok())
                .unwrap_or_else(|| claimed_ods_code.clone());
            let activities: BTreeSet<Activity> =
                registered.map(systems::activities).unwrap_or_default();
            Resolved {
                scope: format!("system:{san}@{ods_code}"),
                rules: Caller {
                    kind: CallerKind::System,
                    ods_code,
                    activities,
                },
                audit_user_id: san.clone(),
                role_code: String::new(),
            }
        }
    }
}

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
    wanted: &[(String, String)],
) -> Result<HashMap<(String, String), idempotency_key::Model>> {
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

/// Decides and records `inputs` in one transaction. The outer error fails the whole batch
/// (nothing was written); an inner error fails one request (not audited).
pub async fn commit(
    db: &DatabaseConnection,
    inputs: &[DecideInput],
) -> Result<Vec<Result<Decision>>> {
    let txn = db.begin().await?;
    let head = lock_head(&txn).await?;

    let sans: Vec<String> = inputs
        .iter()
        .filter_map(|i| match &i.identity {
            Identity::System { san, .. } => Some(san.clone()),
            Identity::User { .. } => None,
        })
        .collect();
    let registered: HashMap<String, system::Model> = systems::find_many(&txn, sans)
        .await?
        .into_iter()
        .map(|s| (s.san.clone(), s))
        .collect();
    let callers: Vec<Resolved> = inputs
        .iter()
        .map(|i| resolve(&i.identity, &registered))
        .collect();

    let mut ods_codes: Vec<String> = callers
        .iter()
        .map(|c| c.rules.ods_code.as_str().to_owned())
        .collect();
    ods_codes.sort();
    ods_codes.dedup();
    let orgs: HashMap<String, organisation::Model> = organisations::find_many(&txn, ods_codes)
        .await?
        .into_iter()
        .map(|o| (o.ods_code.clone(), o))
        .collect();

    let wanted: Vec<(String, String)> = inputs
        .iter()
        .zip(&callers)
        .filter(|(i, _)| !i.request_id.is_empty())
        .map(|(i, c)| (c.scope.clone(), i.request_id.clone()))
        .collect();
    let mut keys = load_keys(&txn, &wanted).await?;
    let mut pending = load_pending(
        &txn,
        keys.values()
            .filter(|k| !k.lookup_id.is_empty())
            .map(|k| k.lookup_id.clone())
            .collect(),
    )
    .await?;

    // Taken under the head lock, so recorded_at follows the sequence within one clock.
    let now = now_micros();
    let mut sequence = head.sequence as u64;
    let mut prev_hash = [0u8; 32];
    if head.hash.len() != 32 {
        return Err(AccessError::Corrupt("the audit head hash is not 32 bytes".into()).into());
    }
    prev_hash.copy_from_slice(&head.hash);

    let mut records = Vec::with_capacity(inputs.len());
    let mut new_obligations = Vec::new();
    let mut new_keys = Vec::new();
    let mut results = Vec::with_capacity(inputs.len());

    for (input, caller) in inputs.iter().zip(&callers) {
        let key = (!input.request_id.is_empty())
            .then(|| (caller.scope.clone(), input.request_id.clone()));
        let earlier = key.as_ref().and_then(|k| keys.get(k)).cloned();
        if let Some(e) = &earlier
            && e.fingerprint != input.fingerprint
        {
            results.push(Err(AccessError::RequestIdReused.into()));
            continue;
        }

        let org = orgs.get(caller.rules.ods_code.as_str());
        let context = rules::Context {
            access_kind: input.lookup.as_ref().map(|l| l.access_kind),
            site_ods_code: input.lookup.as_ref().map(|l| l.site.clone()),
        };
        let verdict = rules::decide(
            &caller.rules,
            Some(input.action),
            org.and_then(organisations::standing),
            &context,
        );
        let allowed = verdict.is_allowed();
        let replay = if allowed { earlier.as_ref() } else { None };
        let decided_at = replay.map_or(now, |e| e.decided_at);
        let lookup_id = match (allowed, input.action, replay) {
            (true, Action::LookupChild, Some(e)) => e.lookup_id.clone(),
            (true, Action::LookupChild, None) => uuid::Uuid::now_v7().to_string(),
            _ => String::new(),
        };
        let org_name = org.map(|o| o.name.clone()).unwrap_or_default();

        sequence += 1;
        let content = AuditContent {
            recorded_at: now,
            user_id: caller.audit_user_id.clone(),
            role_code: caller.role_code.clone(),
            ods_code: caller.rules.ods_code.as_str().to_owned(),
            site_ods_code: input
                .lookup
                .as_ref()
                .map(|l| l.site.as_str().to_owned())
                .unwrap_or_default(),
            nhs_number: input
                .nhs_number
                .map(|n| n.as_str().to_owned())
                .unwrap_or_default(),
            action: input.action.name().to_owned(),
            access_kind: input
                .lookup
                .as_ref()
                .map(|l| l.access_kind.as_str().to_owned())
                .unwrap_or_default(),
            outcome: if allowed {
                OUTCOME_ALLOWED
            } else {
                OUTCOME_DENIED
            }
            .to_owned(),
            reason: match verdict {
                AccessDecision::Deny(r) => r.as_str().to_owned(),
                AccessDecision::Allow { .. } => String::new(),
            },
            request_id: if input.upload_id.is_empty() {
                input.request_id.clone()
            } else {
                input.upload_id.clone()
            },
            trace_id: input.trace_id.clone(),
            lookup_id: lookup_id.clone(),
        };
        let row = content.into_row(sequence, prev_hash);
        prev_hash.copy_from_slice(&row.hash);
        records.push(row);

        let owed = match (verdict, replay, &input.lookup, input.nhs_number) {
            (AccessDecision::Allow { notifies: true }, Some(_), _, _) => {
                pending.get(&lookup_id).cloned()
            }
            (AccessDecision::Allow { notifies: true }, None, Some(lookup), Some(nhs)) => {
                let o = obligation::Model {
                    lookup_id: lookup_id.clone(),
                    nhs_number: nhs.as_str().to_owned(),
                    accessed_at: decided_at,
                    user_id: caller.audit_user_id.clone(),
                    role_code: caller.role_code.clone(),
                    site_ods_code: lookup.site.as_str().to_owned(),
                    organisation_ods_code: caller.rules.ods_code.as_str().to_owned(),
                    organisation_name: org_name.clone(),
                    setting_type: lookup.setting_type.as_str().to_owned(),
                    attempts: 0,
                    lease_owner: None,
                    lease_expires_at: None,
                    completed_at: None,
                    completed_by: None,
                };
                // A repeat later in this same batch replays this one.
                pending.insert(lookup_id.clone(), o.clone());
                new_obligations.push(o.clone());
                Some(o)
            }
            _ => None,
        };

        if allowed
            && earlier.is_none()
            && let Some(k) = key
        {
            let stored = idempotency_key::Model {
                scope: k.0.clone(),
                request_id: k.1.clone(),
                fingerprint: input.fingerprint.clone(),
                lookup_id: lookup_id.clone(),
                decided_at,
                audit_sequence: sequence as i64,
            };
            keys.insert(k, stored.clone());
            new_keys.push(stored);
        }

        results.push(Ok(Decision {
            allowed,
            reason: match verdict {
                AccessDecision::Deny(r) => r.as_str().to_owned(),
                AccessDecision::Allow { .. } => String::new(),
            },
            audit_sequence: sequence,
            lookup_id,
            decided_at: Some(instant_of(decided_at)),
            replay: replay.is_some(),
            obligation: owed.as_ref().map(obligations::to_wire),
            organisation_name: org_name,
            organisation_kind: org
                .and_then(|o| OrganisationKind::parse(&o.kind))
                .map(i32::from)
                .unwrap_or_default(),
        }));
    }

    if !records.is_empty() {
        audit_record::Entity::insert_many(records.into_iter().map(audit_record::ActiveModel::from))
            .exec_without_returning(&txn)
            .await?;
        obligation::Entity::insert_many(
            new_obligations
                .into_iter()
                .map(obligation::ActiveModel::from),
        )
        .exec_without_returning(&txn)
        .await?;
        idempotency_key::Entity::insert_many(
            new_keys.into_iter().map(idempotency_key::ActiveModel::from),
        )
        .exec_without_returning(&txn)
        .await?;
        audit_head::Entity::update_many()
            .col_expr(audit_head::Column::Sequence, Expr::value(sequence as i64))
            .col_expr(audit_head::Column::Hash, Expr::value(prev_hash.to_vec()))
            .filter(audit_head::Column::Id.eq(audit_head::HEAD_ID))
            .exec(&txn)
            .await?;
    }
    txn.commit().await?;
    Ok(results)
}
