//! The pure middle of a batch: from what the store held when the batch took the chain head
//! ([`Known`]), decide every request with [`rules`] and build what the transaction writes
//! (audit records chained from the head, obligations, idempotency keys) and what each caller
//! is answered. No I/O and no clock: the batch passes in the instant and the source of lookup
//! ids, so chaining, replays and reused request ids are tested here without a database.

use super::request::{DecideInput, Identity};
use crate::audit::chain::AuditContent;
use crate::audit::list::{OUTCOME_ALLOWED, OUTCOME_DELIVERED, OUTCOME_DENIED, instant_of};
use crate::entities::{audit_record, idempotency_key, obligation, system};
use crate::error::AccessError;
use crate::rules::{self, AccessDecision, Action, Caller, CallerKind, OrganisationStanding};
use crate::storage::{obligations, systems};
use cpis_proto::access::Decision;
use platform::Result;
use platform::domain::{Activity, OdsCode};
use std::collections::{BTreeSet, HashMap};

/// An idempotency key's identity: (scope, request_id).
pub type KeyId = (String, String);

/// The caller once access-service has looked a system up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub rules: Caller,
    /// AuditEvent.user_id: the user id, or the system's SAN.
    pub audit_user_id: String,
    /// AuditEvent.user_name: the user's display name; empty for a system.
    pub audit_user_name: String,
    pub role_code: String,
    /// Idempotency scope: (user or system, organisation).
    pub scope: String,
}

impl Resolved {
    /// The key `input`'s decision is stored under, when it carries a request_id.
    pub fn key(&self, input: &DecideInput) -> Option<KeyId> {
        (!input.request_id.is_empty()).then(|| (self.scope.clone(), input.request_id.clone()))
    }
}

/// A user is who the gateway says; a system is what access-service registered for its SAN
/// (an unregistered one holds nothing, in the organisation it claims).
pub fn resolve(identity: &Identity, systems: &HashMap<String, system::Model>) -> Resolved {
    match identity {
        Identity::User {
            user_id,
            role_code,
            ods_code,
            activities,
            assurance_level,
            user_name,
        } => Resolved {
            rules: Caller {
                kind: CallerKind::User,
                ods_code: ods_code.clone(),
                activities: activities.clone(),
                assurance_level: *assurance_level,
            },
            audit_user_id: user_id.clone(),
            audit_user_name: user_name.clone(),
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
                    assurance_level: 0,
                },
                audit_user_id: san.clone(),
                audit_user_name: String::new(),
                role_code: String::new(),
            }
        }
    }
}

/// A caller's organisation as the registry holds it, its kind read once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrganisationEntry {
    pub name: String,
    /// `None` when the stored kind is unknown: such a row stands for nothing.
    pub standing: Option<OrganisationStanding>,
}

/// The chain's newest record: where the next one links.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub sequence: u64,
    pub hash: [u8; 32],
}

/// What a batch's decisions depend on, read under the head lock.
#[derive(Clone, Debug)]
pub struct Known {
    pub head: Head,
    /// One per input, in the inputs' order.
    pub callers: Vec<Resolved>,
    /// The callers' organisations, by ODS code.
    pub organisations: HashMap<String, OrganisationEntry>,
    /// The keys already stored for the batch's request ids.
    pub keys: HashMap<KeyId, idempotency_key::Model>,
    /// The still pending obligations of those keys' lookups, by lookup_id.
    pub pending: HashMap<String, obligation::Model>,
}

/// What the batch's transaction writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Writes {
    /// In sequence order, each linked to the one before it (the first to the old head).
    pub records: Vec<audit_record::Model>,
    pub obligations: Vec<obligation::Model>,
    pub keys: Vec<idempotency_key::Model>,
    /// The head after the last record; the old head when there is none.
    pub head: Head,
}

/// A batch decided: each request's answer, and what must be committed before any is sent.
#[derive(Debug)]
pub struct Plan {
    /// One per input, in order: its decision, or why the request failed (then not audited).
    pub results: Vec<Result<Decision>>,
    pub writes: Writes,
}

/// Decides `inputs` in order against `known`, at `now`; `new_lookup_id` names each new
/// allowed lookup. A repeat of a request_id later in the same batch replays the earlier one,
/// exactly as if they had come in two batches.
pub fn plan(
    inputs: &[DecideInput],
    known: Known,
    now: i64,
    mut new_lookup_id: impl FnMut() -> String,
) -> Plan {
    let Known {
        head,
        callers,
        organisations,
        keys,
        pending,
    } = known;
    let mut batch = Batch {
        now,
        keys,
        pending,
        writes: Writes {
            records: Vec::with_capacity(inputs.len()),
            obligations: Vec::new(),
            keys: Vec::new(),
            head,
        },
    };
    let results = inputs
        .iter()
        .zip(&callers)
        .map(|(input, caller)| {
            let organisation = organisations.get(caller.rules.ods_code.as_str());
            batch.decide(input, caller, organisation, &mut new_lookup_id)
        })
        .collect();
    Plan {
        results,
        writes: batch.writes,
    }
}

/// The batch so far: what it has written, and the keys and obligations a later request in it
/// may replay.
struct Batch {
    now: i64,
    keys: HashMap<KeyId, idempotency_key::Model>,
    pending: HashMap<String, obligation::Model>,
    writes: Writes,
}

impl Batch {
    fn decide(
        &mut self,
        input: &DecideInput,
        caller: &Resolved,
        organisation: Option<&OrganisationEntry>,
        new_lookup_id: &mut impl FnMut() -> String,
    ) -> Result<Decision> {
        let key = caller.key(input);
        let earlier = key.as_ref().and_then(|k| self.keys.get(k)).cloned();
        if earlier
            .as_ref()
            .is_some_and(|e| e.fingerprint != input.fingerprint)
        {
            return Err(AccessError::RequestIdReused.into());
        }

        let standing = organisation.and_then(|o| o.standing);
        let context = rules::Context {
            access_kind: input.lookup.as_ref().map(|l| l.access_kind),
            site_ods_code: input.lookup.as_ref().map(|l| l.site.clone()),
            min_assurance_level: input.min_assurance_level,
        };
        let (allowed, notifies, reason) =
            match rules::decide(&caller.rules, Some(input.action), standing, &context) {
                AccessDecision::Allow { notifies } => (true, notifies, ""),
                AccessDecision::Deny(r) => (false, false, r.as_str()),
            };
        // Only an allowed decision is replayed: a request denied before is decided afresh.
        let replay = if allowed { earlier.as_ref() } else { None };
        let decided_at = replay.map_or(self.now, |e| e.decided_at);
        let lookup_id = match (allowed, input.action, replay) {
            (true, Action::LookupChild, Some(e)) => e.lookup_id.clone(),
            (true, Action::LookupChild, None) => new_lookup_id(),
            _ => String::new(),
        };
        let organisation_name = organisation.map(|o| o.name.clone()).unwrap_or_default();

        // What a watch relayed is recorded whatever its re-check decides, before the
        // re-check's own record (a denial): the log says what left before the stream ended.
        if let Some(delivery) = input.delivered {
            self.append(AuditContent {
                recorded_at: self.now,
                user_id: caller.audit_user_id.clone(),
                user_name: caller.audit_user_name.clone(),
                role_code: caller.role_code.clone(),
                ods_code: caller.rules.ods_code.as_str().to_owned(),
                action: input.action.name().to_owned(),
                outcome: OUTCOME_DELIVERED.to_owned(),
                trace_id: input.trace_id.clone(),
                delivery: Some(delivery),
                ..AuditContent::default()
            });
        }
        // Every decision is audited, a replay too; a stream's re-check only when it denies.
        let audited = !(input.recheck && allowed);
        let sequence = if !audited {
            0
        } else {
            self.append(AuditContent {
                recorded_at: self.now,
                user_id: caller.audit_user_id.clone(),
                user_name: caller.audit_user_name.clone(),
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
                reason: reason.to_owned(),
                request_id: if input.upload_id.is_empty() {
                    input.request_id.clone()
                } else {
                    input.upload_id.clone()
                },
                trace_id: input.trace_id.clone(),
                lookup_id: lookup_id.clone(),
                delivery: None,
            })
        };

        let owed = match (notifies, replay, &input.lookup, input.nhs_number) {
            // A replay answers the obligation its first decision owed, while still pending.
            (true, Some(_), _, _) => self.pending.get(&lookup_id).cloned(),
            (true, None, Some(lookup), Some(nhs)) => {
                let o = obligation::Model {
                    lookup_id: lookup_id.clone(),
                    nhs_number: nhs.as_str().to_owned(),
                    accessed_at: decided_at,
                    user_id: caller.audit_user_id.clone(),
                    role_code: caller.role_code.clone(),
                    site_ods_code: lookup.site.as_str().to_owned(),
                    organisation_ods_code: caller.rules.ods_code.as_str().to_owned(),
                    organisation_name: organisation_name.clone(),
                    setting_type: lookup.setting_type.as_str().to_owned(),
                    attempts: 0,
                    lease_owner: None,
                    lease_expires_at: None,
                    completed_at: None,
                    completed_by: None,
                    // Due at once: the reconciler's `pending_for` leaves it to the lookup.
                    next_attempt_at: decided_at,
                    failures: 0,
                    deferrals: 0,
                    failing_since: None,
                    last_error: None,
                    failed_at: None,
                };
                // A repeat later in this same batch replays this one.
                self.pending.insert(lookup_id.clone(), o.clone());
                self.writes.obligations.push(o.clone());
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
            self.keys.insert(k, stored.clone());
            self.writes.keys.push(stored);
        }

        Ok(Decision {
            allowed,
            reason: reason.to_owned(),
            audit_sequence: sequence,
            lookup_id,
            decided_at: Some(instant_of(decided_at)),
            replay: replay.is_some(),
            obligation: owed.as_ref().map(obligations::to_wire),
            organisation_name,
            organisation_kind: standing.map(|s| i32::from(s.kind)).unwrap_or_default(),
        })
    }

    /// Chains `content` after the head; returns its sequence.
    fn append(&mut self, content: AuditContent) -> u64 {
        let head = &mut self.writes.head;
        head.sequence += 1;
        let row = content.into_row(head.sequence, head.hash);
        // `into_row` stores the 32-byte digest it computed.
        head.hash.copy_from_slice(&row.hash);
        self.writes.records.push(row);
        head.sequence
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::record_hash;
    use crate::decide::request::validate;
    use crate::rules::OrganisationKind;
    use cpis_proto::access::{DecideRequest, Principal};
    use cpis_proto::gateway::Setting;
    use platform::domain::{AccessKind, SettingType};

    const NOW: i64 = 1_750_000_000_000_000;
    const HEAD: Head = Head {
        sequence: 41,
        hash: [7; 32],
    };

    fn request(activities: &[&str], request_id: &str, fingerprint: u8) -> DecideRequest {
        DecideRequest {
            principal: Some(Principal {
                user_id: "dr.jones".into(),
                ods_code: "RQX".into(),
                role_code: "R8000".into(),
                activities: activities.iter().map(|a| a.to_string()).collect(),
                assurance_level: 3,
                ..Default::default()
            }),
            action: "LookupChild".into(),
            nhs_number: "9434765919".into(),
            access_kind: AccessKind::Unscheduled.into(),
            setting: Some(Setting {
                ods_code: "RQX01".into(),
                setting_type: SettingType::EmergencyDepartment.into(),
            }),
            request_id: request_id.into(),
            request_fingerprint: if request_id.is_empty() {
                Vec::new()
            } else {
                vec![fingerprint; 32]
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_watchs_allowing_recheck_is_not_audited_and_a_denying_one_is() {
        let watch = |activities: &[&str]| {
            let mut r = request(activities, "", 0);
            r.action = "WatchNotifications".into();
            r.nhs_number.clear();
            r.access_kind = 0;
            r.setting = None;
            r.recheck = true;
            validate(r).unwrap()
        };
        let allowed = watch(&["CPIS_LA_MANAGE"]);
        let denied = watch(&[]);
        let inputs = [allowed, denied];
        let mut ids = 0..;
        // The caller's organisation as a local authority (watches are an LA's).
        let mut k = known(&inputs);
        if let Some(e) = k.organisations.get_mut("RQX") {
            e.standing = Some(OrganisationStanding {
                kind: OrganisationKind::LocalAuthority,
                onboarded: true,
            });
        }
        let plan = plan(&inputs, k, 1, || format!("l{}", ids.next().unwrap()));
        assert!(plan.results[0].as_ref().unwrap().allowed);
        assert!(!plan.results[1].as_ref().unwrap().allowed);
        assert_eq!(plan.writes.records.len(), 1, "only the denial is audited");
        assert_eq!(plan.writes.records[0].outcome, OUTCOME_DENIED);
    }

    #[test]
    fn what_a_watch_delivered_is_recorded_whatever_its_recheck_decides() {
        let watch = |activities: &[&str], first: u64, last: u64| {
            let mut r = request(activities, "", 0);
            r.action = "WatchNotifications".into();
            r.nhs_number.clear();
            r.access_kind = 0;
            r.setting = None;
            r.recheck = true;
            r.delivered = Some(cpis_proto::gateway::WatchDelivery {
                first_cursor: first,
                last_cursor: last,
                count: last - first + 1,
            });
            validate(r).unwrap()
        };
        let inputs = [watch(&["CPIS_LA_MANAGE"], 3, 9), watch(&[], 10, 10)];
        let mut k = known(&inputs);
        if let Some(e) = k.organisations.get_mut("RQX") {
            e.standing = Some(OrganisationStanding {
                kind: OrganisationKind::LocalAuthority,
                onboarded: true,
            });
        }
        let mut ids = 0..;
        let plan = plan(&inputs, k, 1, || format!("l{}", ids.next().unwrap()));
        let records: Vec<_> = plan
            .writes
            .records
            .iter()
            .map(|r| {
                (
                    r.outcome.as_str(),
                    r.delivered_first,
                    r.delivered_last,
                    r.delivered_count,
                )
            })
            .collect();
        assert_eq!(
            records,
            [
                (OUTCOME_DELIVERED, 3, 9, 7),
                (OUTCOME_DELIVERED, 10, 10, 1),
                (OUTCOME_DENIED, 0, 0, 0),
            ],
            "the allowed re-check records only its delivery; the denied one its delivery, then its denial"
        );
        assert!(plan.results[0].as_ref().unwrap().allowed);
    }

    #[test]
    fn a_delivery_is_only_a_watchs_and_names_a_real_span() {
        let with = |recheck: bool, first: u64, last: u64, count: u64| {
            let mut r = request(&["CPIS_LA_MANAGE"], "", 0);
            r.action = "WatchNotifications".into();
            r.nhs_number.clear();
            r.access_kind = 0;
            r.setting = None;
            r.recheck = recheck;
            r.delivered = Some(cpis_proto::gateway::WatchDelivery {
                first_cursor: first,
                last_cursor: last,
                count,
            });
            validate(r)
        };
        assert!(with(true, 1, 1, 1).is_ok());
        assert!(with(false, 1, 1, 1).is_err(), "only with a re-check");
        assert!(with(true, 0, 1, 1).is_err(), "cursors start at 1");
        assert!(with(true, 5, 4, 1).is_err(), "first after last");
        assert!(with(true, 1, 3, 4).is_err(), "more than the span holds");
        assert!(
            with(true, 1, 3, 0).is_err(),
            "nothing delivered is no record"
        );
    }

    /// A notifying lookup by a clinician of the onboarded trust RQX.
    fn lookup(request_id: &str, fingerprint: u8) -> DecideInput {
        validate(request(&["B0107"], request_id, fingerprint)).unwrap()
    }

    fn known(inputs: &[DecideInput]) -> Known {
        let standing = OrganisationStanding {
            kind: OrganisationKind::Health,
            onboarded: true,
        };
        Known {
            head: HEAD,
            callers: inputs
                .iter()
                .map(|i| resolve(&i.identity, &HashMap::new()))
                .collect(),
            organisations: HashMap::from([(
                "RQX".to_owned(),
                OrganisationEntry {
                    name: "Royal Trust".into(),
                    standing: Some(standing),
                },
            )]),
            keys: HashMap::new(),
            pending: HashMap::new(),
        }
    }

    /// Lookup ids `lookup-1`, `lookup-2`, ... in the order they are asked for.
    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("lookup-{n}")
        }
    }

    fn decisions(planned: &Plan) -> Vec<&Decision> {
        planned
            .results
            .iter()
            .map(|r| r.as_ref().unwrap())
            .collect()
    }

    /// The earlier batch's key and pending obligation for `dr.jones`'s `request_id`.
    fn stored(known: &mut Known, request_id: &str, fingerprint: u8) {
        let scope = "user:dr.jones@RQX".to_owned();
        known.keys.insert(
            (scope.clone(), request_id.to_owned()),
            idempotency_key::Model {
                scope,
                request_id: request_id.into(),
                fingerprint: vec![fingerprint; 32],
                lookup_id: "earlier".into(),
                decided_at: 5,
                audit_sequence: 3,
            },
        );
        known.pending.insert(
            "earlier".into(),
            obligation::Model {
                lookup_id: "earlier".into(),
                nhs_number: "9434765919".into(),
                accessed_at: 5,
                user_id: "dr.jones".into(),
                role_code: "R8000".into(),
                site_ods_code: "RQX01".into(),
                organisation_ods_code: "RQX".into(),
                organisation_name: "Royal Trust".into(),
                setting_type: "EMERGENCY_DEPARTMENT".into(),
                attempts: 1,
                lease_owner: None,
                lease_expires_at: None,
                completed_at: None,
                completed_by: None,
                next_attempt_at: 5,
                failures: 0,
                deferrals: 0,
                failing_since: None,
                last_error: None,
                failed_at: None,
            },
        );
    }

    #[test]
    fn an_allowed_notifying_lookup_is_chained_owes_an_obligation_and_keeps_its_key() {
        let inputs = [lookup("r1", 1)];
        let planned = plan(&inputs, known(&inputs), NOW, ids());
        let d = decisions(&planned)[0];
        assert!(d.allowed && !d.replay);
        assert_eq!(d.reason, "");
        assert_eq!(d.audit_sequence, 42);
        assert_eq!(d.lookup_id, "lookup-1");
        assert_eq!(d.decided_at, Some(instant_of(NOW)));
        assert_eq!(d.organisation_name, "Royal Trust");
        assert_eq!(d.organisation_kind, i32::from(OrganisationKind::Health));
        assert_eq!(d.obligation.as_ref().unwrap().lookup_id, "lookup-1");

        let w = &planned.writes;
        let record = &w.records[0];
        assert_eq!(
            (record.sequence, record.prev_hash.as_slice()),
            (42, &[7; 32][..])
        );
        assert_eq!(
            record.hash,
            record_hash(42, &[7; 32], &AuditContent::from_row(record))
        );
        assert_eq!(
            (record.outcome.as_str(), record.action.as_str()),
            ("ALLOWED", "LookupChild")
        );
        assert_eq!(
            (record.lookup_id.as_str(), record.recorded_at),
            ("lookup-1", NOW)
        );
        assert_eq!(w.head.sequence, 42);
        assert_eq!(w.head.hash.as_slice(), record.hash.as_slice());
        assert_eq!(w.obligations.len(), 1);
        assert_eq!(w.obligations[0].accessed_at, NOW);
        assert_eq!(w.keys.len(), 1);
        let key = &w.keys[0];
        assert_eq!(
            (key.scope.as_str(), key.request_id.as_str()),
            ("user:dr.jones@RQX", "r1")
        );
        assert_eq!(
            (key.audit_sequence, key.lookup_id.as_str()),
            (42, "lookup-1")
        );
    }

    #[test]
    fn a_repeat_in_the_same_batch_replays_the_first_and_is_audited_too() {
        let inputs = [lookup("r1", 1), lookup("r1", 1)];
        let planned = plan(&inputs, known(&inputs), NOW, ids());
        let [first, again] = decisions(&planned)[..] else {
            panic!("two decisions")
        };
        assert!(!first.replay && again.replay);
        assert_eq!(again.lookup_id, first.lookup_id);
        assert_eq!(again.decided_at, first.decided_at);
        assert_eq!(again.obligation, first.obligation);
        assert_eq!((first.audit_sequence, again.audit_sequence), (42, 43));
        let w = &planned.writes;
        assert_eq!(w.records.len(), 2);
        assert_eq!(w.records[1].prev_hash, w.records[0].hash);
        assert_eq!(w.records[1].lookup_id, "lookup-1");
        assert_eq!((w.obligations.len(), w.keys.len()), (1, 1));
    }

    #[test]
    fn a_request_id_stored_by_an_earlier_batch_replays_its_decision() {
        let inputs = [lookup("r1", 1)];
        let mut known = known(&inputs);
        stored(&mut known, "r1", 1);
        let planned = plan(&inputs, known, NOW, ids());
        let d = decisions(&planned)[0];
        assert!(d.allowed && d.replay);
        assert_eq!(d.lookup_id, "earlier");
        assert_eq!(d.decided_at, Some(instant_of(5)));
        assert_eq!(d.obligation.as_ref().unwrap().attempts, 1);
        assert_eq!(d.audit_sequence, 42);
        let w = &planned.writes;
        assert_eq!(w.records.len(), 1);
        assert_eq!(
            (w.records[0].recorded_at, w.records[0].lookup_id.as_str()),
            (NOW, "earlier")
        );
        assert!(w.obligations.is_empty() && w.keys.is_empty());
    }

    #[test]
    fn a_request_id_reused_for_another_request_fails_alone_and_is_not_audited() {
        let inputs = [lookup("r1", 1), lookup("r1", 2), lookup("", 0)];
        let planned = plan(&inputs, known(&inputs), NOW, ids());
        match &planned.results[1] {
            Err(platform::Error::InvalidArgument(v)) => assert_eq!(v[0].field, "request_id"),
            other => panic!("expected request_id to be invalid, got {other:?}"),
        }
        let sequences: Vec<u64> = [&planned.results[0], &planned.results[2]]
            .iter()
            .map(|r| r.as_ref().unwrap().audit_sequence)
            .collect();
        assert_eq!(sequences, [42, 43]);
        assert_eq!(planned.writes.records.len(), 2);
        assert_eq!(planned.writes.head.sequence, 43);

        let alone = [lookup("r1", 2)];
        let mut earlier = known(&alone);
        stored(&mut earlier, "r1", 1);
        let planned = plan(&alone, earlier, NOW, ids());
        assert!(planned.results[0].is_err());
        assert!(planned.writes.records.is_empty());
        assert_eq!(
            planned.writes.head, HEAD,
            "nothing decided, nothing chained"
        );
    }

    #[test]
    fn a_denial_is_audited_with_its_reason_never_replayed_and_keeps_no_key() {
        // Allowed once under r1, repeated after the activity was withdrawn.
        let inputs = [validate(request(&[], "r1", 1)).unwrap()];
        let mut known = known(&inputs);
        stored(&mut known, "r1", 1);
        let planned = plan(&inputs, known, NOW, ids());
        let d = decisions(&planned)[0];
        assert!(!d.allowed && !d.replay);
        assert_eq!(d.reason, "MISSING_ACTIVITY");
        assert_eq!(d.lookup_id, "");
        assert_eq!(d.decided_at, Some(instant_of(NOW)));
        assert!(d.obligation.is_none());
        let w = &planned.writes;
        assert_eq!(
            (w.records[0].outcome.as_str(), w.records[0].reason.as_str()),
            ("DENIED", "MISSING_ACTIVITY")
        );
        assert!(w.obligations.is_empty() && w.keys.is_empty());
    }

    #[test]
    fn a_system_is_judged_by_its_registration_not_its_claims() {
        let input = validate(DecideRequest {
            principal: Some(Principal {
                system_san: "spiffe://council/cms".into(),
                ods_code: "RQX".into(),
                activities: vec!["CPIS_LA_MANAGE".into()],
                ..Default::default()
            }),
            action: "ListFlags".into(),
            ..Default::default()
        })
        .unwrap();
        let unregistered = resolve(&input.identity, &HashMap::new());
        assert!(unregistered.rules.activities.is_empty());
        assert_eq!(unregistered.rules.ods_code.as_str(), "RQX");
        let registered = HashMap::from([(
            "spiffe://council/cms".to_owned(),
            system::Model {
                san: "spiffe://council/cms".into(),
                ods_code: "706".into(),
                activities: "CPIS_LA_MANAGE".into(),
                created_at: 0,
            },
        )]);
        let resolved = resolve(&input.identity, &registered);
        assert_eq!(resolved.rules.ods_code.as_str(), "706");
        assert_eq!(resolved.scope, "system:spiffe://council/cms@706");
        assert_eq!(resolved.audit_user_id, "spiffe://council/cms");
    }
}
