//! Carrying out what an allowed notifying lookup obliges (ARCHITECTURE.md rule 3): record the
//! attendance and store the notifications for the flags visible at the lookup's instant, each
//! idempotent by lookup id. The lookup does it inline; when that fails, the reconciler —
//! every gateway replica runs one, claims are leased — finishes it once the services are back.

use crate::core::Core;
use crate::deadline::Deadline;
use cpis_proto::access::{
    ClaimObligationsRequest, CompleteObligationRequest, Obligation, Principal,
};
use cpis_proto::attendance::RecordAttendanceRequest;
use cpis_proto::flag::{AccessRecord, GetFlagsRequest};
use platform::domain::Activity;
use platform::error::Result;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// How long the reconciler leaves an obligation to its lookup before taking it over.
const PENDING_FOR: Duration = Duration::from_secs(5);
const LEASE: Duration = Duration::from_secs(30);
const BATCH: u32 = 100;

pub async fn record_attendance(core: &Core, o: &Obligation, deadline: &Deadline) -> Result<()> {
    let message = RecordAttendanceRequest {
        lookup_id: o.lookup_id.clone(),
        nhs_number: o.nhs_number.clone(),
        attended_at: o.accessed_at,
        site_ods_code: o.site_ods_code.clone(),
        organisation_name: o.organisation_name.clone(),
        setting_type: o.setting_type,
        user_id: o.user_id.clone(),
        role_code: o.role_code.clone(),
    };
    core.backends
        .attendance
        .call(
            message,
            Some(&principal_of(o)),
            deadline,
            |mut c, r| async move { c.record_attendance(r).await },
        )
        .await
        .map(|_| ())
}

/// The principal a lookup was decided for, as its obligation stores it: forwarded with the
/// obligation's work (inline or by the reconciler), since the backends give personal data
/// only to a principal allowed to look a child up. An obligation is owed only by a notifying
/// lookup, so the activity is the notifying one.
pub fn principal_of(o: &Obligation) -> Principal {
    Principal {
        user_id: o.user_id.clone(),
        system_san: String::new(),
        ods_code: o.organisation_ods_code.clone(),
        role_code: o.role_code.clone(),
        activities: vec![Activity::NotifyingLookup.code().to_owned()],
        organisation_name: o.organisation_name.clone(),
    }
}

/// Who looked, where and when: what a notifying read of the registry stores with the LA's
/// notifications.
pub fn access_record(o: &Obligation) -> AccessRecord {
    AccessRecord {
        lookup_id: o.lookup_id.clone(),
        user_id: o.user_id.clone(),
        role_code: o.role_code.clone(),
        site_ods_code: o.site_ods_code.clone(),
        organisation_name: o.organisation_name.clone(),
        setting_type: o.setting_type,
        accessed_at: o.accessed_at,
    }
}

async fn store_notifications(core: &Core, o: &Obligation, deadline: &Deadline) -> Result<()> {
    let message = GetFlagsRequest {
        nhs_numbers: vec![o.nhs_number.clone()],
        as_of: o.accessed_at,
        notify: Some(access_record(o)),
    };
    core.backends
        .flag
        .call(
            message,
            Some(&principal_of(o)),
            deadline,
            |mut c, r| async move { c.get_flags(r).await },
        )
        .await
        .map(|_| ())
}

/// Marks an obligation done; a failure only means the reconciler will redo idempotent work.
pub async fn complete(core: &Core, lookup_id: &str, claimant: &str, deadline: &Deadline) {
    let message = CompleteObligationRequest {
        lookup_id: lookup_id.to_owned(),
        claimant: claimant.to_owned(),
    };
    let done = core
        .backends
        .access
        .call(message, None, deadline, |mut c, r| async move {
            c.complete_obligation(r).await
        })
        .await;
    if let Err(e) = done {
        tracing::warn!(error = %e, "could not mark an obligation done; the reconciler will");
    }
}

/// Both halves of one obligation, then done.
async fn carry_out(core: &Core, o: &Obligation, claimant: &str) -> Result<()> {
    let deadline = Deadline::after(Duration::from_secs(10));
    let (notified, recorded) = tokio::join!(
        store_notifications(core, o, &deadline),
        record_attendance(core, o, &deadline)
    );
    notified?;
    recorded?;
    complete(core, &o.lookup_id, claimant, &deadline).await;
    Ok(())
}

/// The reconciler: claims obligations left pending, carries them out, until shutdown.
pub async fn reconcile(core: Arc<Core>, every: Duration) {
    let claimant = format!("gateway-{}", uuid::Uuid::new_v4());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = core.shutdown.wait() => return,
        }
        if !core.readiness.is_ready() {
            continue;
        }
        // A poll every few seconds: not worth a trace unless it finds work (carry_out's own).
        let poll = tracing::info_span!("reconcile.poll");
        platform::telemetry::unsampled(&poll);
        let deadline = Deadline::after(Duration::from_secs(5));
        let message = ClaimObligationsRequest {
            claimant: claimant.clone(),
            lease: Some(prost_types::Duration {
                seconds: LEASE.as_secs() as i64,
                nanos: 0,
            }),
            limit: BATCH,
            pending_for: Some(prost_types::Duration {
                seconds: PENDING_FOR.as_secs() as i64,
                nanos: 0,
            }),
        };
        let claimed = match core
            .backends
            .access
            .call(message, None, &deadline, |mut c, r| async move {
                c.claim_obligations(r).await
            })
            .instrument(poll)
            .await
        {
            Ok(r) => r.obligations,
            Err(e) => {
                tracing::debug!(error = %e, "reconciler could not claim obligations");
                continue;
            }
        };
        if claimed.is_empty() {
            continue;
        }
        tracing::info!(
            count = claimed.len(),
            "reconciler carrying out pending obligations"
        );
        for o in &claimed {
            let span = tracing::info_span!("reconcile.obligation");
            if let Err(e) = carry_out(&core, o, &claimant).instrument(span).await {
                tracing::warn!(error = %e, "obligation still pending; its lease will lapse and it will be retried");
            }
        }
    }
}
