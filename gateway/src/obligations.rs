//! Carrying out what an allowed notifying lookup obliges (ARCHITECTURE.md rule 3): record the
//! attendance and store the notifications for the flags visible at the lookup's instant, each
//! idempotent by lookup id. The lookup does it inline; when that fails, the reconciler —
//! every gateway replica runs one, claims are leased — finishes it once the services are back.
//! A try that fails is released back to access-service, which schedules the next one with
//! backoff: a backend that is unavailable (or does not answer in time) never counts against
//! the obligation; any other failure does, and once that has gone on for a day access-service
//! moves the obligation to failed, for an operator to retry (`ReleaseObligation` in
//! access.proto).

use crate::core::Core;
use crate::deadline::Deadline;
use cpis_proto::access::{
    ClaimObligationsRequest, CompleteObligationRequest, Obligation, Principal,
    ReleaseObligationRequest,
};
use cpis_proto::attendance::RecordAttendanceRequest;
use cpis_proto::flag::{AccessRecord, GetFlagsRequest};
use platform::domain::Activity;
use platform::error::{Error, Result};
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
        // Only access-service decides on assurance, and it decided this lookup already.
        ..Principal::default()
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

/// Why a try failed, as the outbox counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    /// A backend could not take the call: the try does not count, and the rest of the batch
    /// would only meet the same outage.
    unavailable: bool,
    /// The step, the gRPC code and the message: what an operator needs, never request data.
    error: String,
}

/// Whether `e` means "a backend could not take the call now" rather than "it refused this
/// work": UNAVAILABLE (the gateway maps transport failures, UNKNOWN, CANCELLED and ABORTED
/// to it, `calls::backend_error`) and DEADLINE_EXCEEDED (a backend with no reachable address
/// times out rather than refuses). Everything else, RESOURCE_EXHAUSTED included (a message
/// too large for this obligation would never pass), counts.
fn backend_unavailable(e: &Error) -> bool {
    matches!(
        e.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
    )
}

fn failure(step: &str, e: &Error) -> Failure {
    Failure {
        unavailable: backend_unavailable(e),
        error: format!("{step}: {}: {e}", platform::metrics::code_name(e.code())),
    }
}

/// Both halves of one obligation, then done. When both halves fail, a half refused for a
/// reason of its own is the one reported: it is what keeps the obligation from being done.
async fn carry_out(
    core: &Core,
    o: &Obligation,
    claimant: &str,
) -> std::result::Result<(), Failure> {
    let deadline = Deadline::after(Duration::from_secs(10));
    let (notified, recorded) = tokio::join!(
        store_notifications(core, o, &deadline),
        record_attendance(core, o, &deadline)
    );
    let failures = [
        notified.err().map(|e| failure("notifications", &e)),
        recorded.err().map(|e| failure("attendance", &e)),
    ];
    let mut failures = failures.into_iter().flatten();
    let first = failures.next();
    if let Some(first) = first {
        let reported = match failures.next() {
            Some(second) if first.unavailable && !second.unavailable => second,
            _ => first,
        };
        return Err(reported);
    }
    complete(core, &o.lookup_id, claimant, &deadline).await;
    Ok(())
}

/// Gives a claimed obligation back to access-service to schedule its next try. A failure
/// only means the lease lapses instead, and the obligation is retried after it (30 s).
async fn release(core: &Core, o: &Obligation, claimant: &str, failure: &Failure) {
    let deadline = Deadline::after(Duration::from_secs(5));
    let message = ReleaseObligationRequest {
        lookup_id: o.lookup_id.clone(),
        claimant: claimant.to_owned(),
        unavailable: failure.unavailable,
        error: failure.error.clone(),
    };
    let released = core
        .backends
        .access
        .call(message, None, &deadline, |mut c, r| async move {
            c.release_obligation(r).await
        })
        .await;
    match released {
        Ok(r) if r.failed => tracing::warn!(
            lookup_id = %o.lookup_id,
            error = %failure.error,
            "an obligation failed for good: it waits for an operator (cpis admin obligations)"
        ),
        Ok(_) => {}
        Err(e) => {
            tracing::debug!(error = %e, "could not release an obligation; its lease will lapse")
        }
    }
}

/// Carries out `claimed` in order, releasing each that fails. After a try that found a
/// backend unavailable, the rest are released untried (and uncounted): each would wait for the
/// same outage, up to its whole deadline, while its lease ran out.
async fn carry_out_all(core: &Core, claimed: &[Obligation], claimant: &str) {
    let mut outage: Option<Failure> = None;
    for o in claimed {
        if let Some(down) = &outage {
            let untried = Failure {
                unavailable: true,
                error: format!("not tried: {}", down.error),
            };
            release(core, o, claimant, &untried).await;
            continue;
        }
        let span = tracing::info_span!("reconcile.obligation");
        if let Err(failed) = carry_out(core, o, claimant).instrument(span).await {
            tracing::warn!(
                error = %failed.error,
                unavailable = failed.unavailable,
                "obligation still pending; released for a later try"
            );
            release(core, o, claimant, &failed).await;
            if failed.unavailable {
                outage = Some(failed);
            }
        }
    }
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
        carry_out_all(&core, &claimed, &claimant).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cpis_proto::access::access_control_server::{AccessControl, AccessControlServer};
    use cpis_proto::access::{ClaimObligationsResponse, ReleaseObligationResponse};
    use cpis_proto::attendance::RecordAttendanceResponse;
    use cpis_proto::attendance::attendance_log_server::{AttendanceLog, AttendanceLogServer};
    use cpis_proto::flag::GetFlagsResponse;
    use cpis_proto::flag::flag_registry_server::{FlagRegistry, FlagRegistryServer};
    use platform::health::Readiness;
    use platform::shutdown::Shutdown;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::mpsc;
    use tonic::{Code, Request, Response, Status};

    /// What the fake access-service saw the reconciler do.
    enum Seen {
        Released(ReleaseObligationRequest),
        Completed(String),
    }

    /// access-service as the reconciler uses it: hands out `pending` on the first claim, then
    /// nothing, and reports releases and completions.
    struct FakeAccess {
        pending: Mutex<Vec<Obligation>>,
        seen: mpsc::UnboundedSender<Seen>,
    }

    #[tonic::async_trait]
    impl AccessControl for FakeAccess {
        async fn claim_obligations(
            &self,
            _: Request<ClaimObligationsRequest>,
        ) -> std::result::Result<Response<ClaimObligationsResponse>, Status> {
            let obligations = std::mem::take(&mut *self.pending.lock().unwrap());
            Ok(Response::new(ClaimObligationsResponse { obligations }))
        }

        async fn release_obligation(
            &self,
            request: Request<ReleaseObligationRequest>,
        ) -> std::result::Result<Response<ReleaseObligationResponse>, Status> {
            let _ = self.seen.send(Seen::Released(request.into_inner()));
            Ok(Response::new(ReleaseObligationResponse {
                released: true,
                ..Default::default()
            }))
        }

        async fn complete_obligation(
            &self,
            request: Request<CompleteObligationRequest>,
        ) -> std::result::Result<Response<()>, Status> {
            let _ = self
                .seen
                .send(Seen::Completed(request.into_inner().lookup_id));
            Ok(Response::new(()))
        }
    }

    /// A registry answering every GetFlags with `refuse` (OK when `None`), counting calls.
    struct FakeFlags {
        refuse: Option<Code>,
        calls: Arc<AtomicUsize>,
    }

    #[tonic::async_trait]
    impl FlagRegistry for FakeFlags {
        async fn get_flags(
            &self,
            _: Request<GetFlagsRequest>,
        ) -> std::result::Result<Response<GetFlagsResponse>, Status> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match self.refuse {
                Some(code) => Err(Status::new(code, "as_of is required")),
                None => Ok(Response::new(GetFlagsResponse::default())),
            }
        }
    }

    struct FakeAttendance {
        refuse: Option<Code>,
    }

    #[tonic::async_trait]
    impl AttendanceLog for FakeAttendance {
        async fn record_attendance(
            &self,
            _: Request<RecordAttendanceRequest>,
        ) -> std::result::Result<Response<RecordAttendanceResponse>, Status> {
            match self.refuse {
                Some(code) => Err(Status::new(code, "attendance-service is down")),
                None => Ok(Response::new(RecordAttendanceResponse::default())),
            }
        }
    }

    async fn serve(router: tonic::transport::server::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            router.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        format!("http://{addr}")
    }

    fn obligation(lookup_id: &str) -> Obligation {
        Obligation {
            lookup_id: lookup_id.into(),
            nhs_number: "9434765919".into(),
            accessed_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            user_id: "dr.jones".into(),
            organisation_ods_code: "RQX".into(),
            site_ods_code: "RQX01".into(),
            setting_type: 1,
            attempts: 1,
            ..Default::default()
        }
    }

    /// A registry and an attendance log answering as told; their URLs, and the registry's
    /// count of GetFlags calls.
    async fn fake_backends(
        flags: Option<Code>,
        attendance: Option<Code>,
    ) -> (String, String, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let flag = serve(
            tonic::transport::Server::builder().add_service(FlagRegistryServer::new(FakeFlags {
                refuse: flags,
                calls: calls.clone(),
            })),
        )
        .await;
        let attendance = serve(tonic::transport::Server::builder().add_service(
            AttendanceLogServer::new(FakeAttendance { refuse: attendance }),
        ))
        .await;
        (flag, attendance, calls)
    }

    /// The reconciler, polling every 20 ms, against the backends at these URLs; stopped by
    /// the trigger.
    async fn start_reconciler(
        flag: &str,
        attendance: &str,
        access: &str,
    ) -> (
        platform::shutdown::ShutdownTrigger,
        tokio::task::JoinHandle<()>,
    ) {
        let (trigger, shutdown) = Shutdown::new();
        let readiness = Readiness::new(tonic_health::server::HealthReporter::new(), &[]).await;
        readiness.set_dependency_ready(true).await;
        let core = Arc::new(Core {
            backends: crate::Backends::connect(flag, attendance, access, None).unwrap(),
            auth: crate::Authenticator::without_keys("cpis-dev".into(), "cpis".into()),
            readiness,
            shutdown,
            watches: crate::streams::WatchLimits::new(1, 1, Duration::from_secs(30)),
        });
        (
            trigger,
            tokio::spawn(reconcile(core, Duration::from_millis(20))),
        )
    }

    /// Runs the reconciler against fakes until it has dealt with every obligation in
    /// `claimed`; what it did, and how many GetFlags calls the registry saw.
    async fn reconcile_against(
        flags: Option<Code>,
        attendance: Option<Code>,
        claimed: Vec<Obligation>,
    ) -> (Vec<Seen>, usize) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let expected = claimed.len();
        let access = serve(tonic::transport::Server::builder().add_service(
            AccessControlServer::new(FakeAccess {
                pending: Mutex::new(claimed),
                seen: tx,
            }),
        ))
        .await;
        let (flag, attendance, calls) = fake_backends(flags, attendance).await;
        let (trigger, reconciler) = start_reconciler(&flag, &attendance, &access).await;
        let mut seen = Vec::new();
        while seen.len() < expected {
            let next = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await;
            seen.push(next.expect("the reconciler did nothing").unwrap());
        }
        trigger.fire();
        reconciler.await.unwrap();
        (seen, calls.load(Ordering::SeqCst))
    }

    /// The whole loop against the real access-service: a refused try is released, and
    /// access-service schedules the next one 30 s later (the first backoff step), so the
    /// reconciler does not take it again meanwhile.
    #[tokio::test]
    async fn the_reconciler_releases_a_refused_obligation_which_access_service_backs_off() {
        use access_service::entities::obligation as row;
        use access_service::{AccessArgs, AccessService};
        use platform::runtime::Component;
        use sea_orm::{ConnectionTrait, EntityTrait};

        let db = platform::testing::sqlite();
        let conn = {
            platform::database::migrate::<access_service::migration::Migrator>(
                &db.url,
                access_service::NAME,
            )
            .await
            .unwrap();
            platform::database::connect(&db.url).await.unwrap()
        };
        let trust = platform::requests::upsert_organisation(
            &cpis_proto::gateway::UpsertOrganisationRequest {
                ods_code: "RQX".into(),
                name: "Royal Trust".into(),
                kind: cpis_proto::gateway::OrganisationKind::Health.into(),
                onboarded: true,
            },
        )
        .unwrap();
        access_service::storage::organisations::upsert(&conn, &trust, true)
            .await
            .unwrap();
        let decided = access_service::decide::AccessDecisions::spawn(conn.clone())
            .decide(cpis_proto::access::DecideRequest {
                principal: Some(Principal {
                    assurance_level: 3,
                    ..principal_of(&obligation("unused"))
                }),
                action: "LookupChild".into(),
                nhs_number: "9434765919".into(),
                access_kind: cpis_proto::gateway::AccessKind::Unscheduled.into(),
                setting: Some(cpis_proto::gateway::Setting {
                    ods_code: "RQX01".into(),
                    setting_type: cpis_proto::gateway::SettingType::EmergencyDepartment.into(),
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        let lookup_id = decided.obligation.unwrap().lookup_id;
        // The lookup's own attempt failed a minute ago: past the reconciler's PENDING_FOR.
        conn.execute_unprepared("UPDATE obligation SET accessed_at = accessed_at - 60000000")
            .await
            .unwrap();

        let dir = tempfile::tempdir().unwrap();
        let mut args = AccessArgs::embedded(dir.path().to_path_buf());
        args.serve.database.database_url = Some(db.url.clone());
        let (stop_access, access_shutdown) = Shutdown::new();
        let access = AccessService::start(args, access_shutdown).await.unwrap();
        let (flag, attendance, _) = fake_backends(Some(Code::InvalidArgument), None).await;
        let before = chrono::Utc::now().timestamp_micros();
        let (trigger, reconciler) =
            start_reconciler(&flag, &attendance, &format!("http://{}", access.addr)).await;
        let mut released = None;
        for _ in 0..400 {
            let r = row::Entity::find_by_id(lookup_id.clone())
                .one(&conn)
                .await
                .unwrap()
                .unwrap();
            if r.failures > 0 {
                released = Some((r, chrono::Utc::now().timestamp_micros()));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (r, after) = released.expect("the reconciler never released the obligation");
        assert_eq!((r.failures, r.attempts), (1, 1));
        assert_eq!(r.lease_owner, None, "released, not left to lapse");
        assert!(r.completed_at.is_none() && r.failed_at.is_none());
        let backoff = 30_000_000;
        assert!(
            (before + backoff..=after + backoff).contains(&r.next_attempt_at),
            "next try {} µs after the release window",
            r.next_attempt_at - before
        );
        assert!(
            r.last_error
                .as_deref()
                .is_some_and(|e| e.starts_with("notifications: INVALID_ARGUMENT")),
            "{:?}",
            r.last_error
        );
        // Polled every 20 ms, it still does not take the obligation again during its backoff.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let again = row::Entity::find_by_id(lookup_id)
            .one(&conn)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(again.attempts, 1);
        trigger.fire();
        reconciler.await.unwrap();
        stop_access.fire();
    }

    #[tokio::test]
    async fn the_reconciler_releases_a_refused_try_to_count_with_its_error() {
        let (seen, _) = reconcile_against(
            Some(Code::InvalidArgument),
            None,
            vec![obligation("lookup-1")],
        )
        .await;
        let [Seen::Released(r)] = &seen[..] else {
            panic!("expected one release and no completion");
        };
        assert_eq!(r.lookup_id, "lookup-1");
        assert!(r.claimant.starts_with("gateway-"));
        assert!(!r.unavailable, "a refusal counts against the obligation");
        assert!(
            r.error.starts_with("notifications: INVALID_ARGUMENT: "),
            "{}",
            r.error
        );
        assert!(r.error.contains("as_of is required"), "{}", r.error);
    }

    #[tokio::test]
    async fn the_reconciler_releases_unavailable_tries_uncounted_and_leaves_the_rest_of_the_batch_untried()
     {
        let (seen, flag_calls) = reconcile_against(
            None,
            Some(Code::Unavailable),
            vec![obligation("lookup-1"), obligation("lookup-2")],
        )
        .await;
        let [Seen::Released(first), Seen::Released(second)] = &seen[..] else {
            panic!("expected two releases");
        };
        assert_eq!(
            (first.lookup_id.as_str(), second.lookup_id.as_str()),
            ("lookup-1", "lookup-2")
        );
        assert!(first.unavailable && second.unavailable);
        assert!(
            first.error.starts_with("attendance: UNAVAILABLE"),
            "{}",
            first.error
        );
        assert!(second.error.starts_with("not tried: "), "{}", second.error);
        assert_eq!(flag_calls, 1, "the second obligation was not tried");
    }

    #[tokio::test]
    async fn a_try_refused_by_one_backend_counts_even_when_the_other_is_unavailable() {
        let (seen, _) = reconcile_against(
            Some(Code::NotFound),
            Some(Code::Unavailable),
            vec![obligation("lookup-1")],
        )
        .await;
        let [Seen::Released(r)] = &seen[..] else {
            panic!("expected one release");
        };
        assert!(!r.unavailable);
        assert!(
            r.error.starts_with("notifications: NOT_FOUND"),
            "{}",
            r.error
        );
    }

    #[tokio::test]
    async fn work_done_is_completed_not_released() {
        let (seen, _) = reconcile_against(None, None, vec![obligation("lookup-1")]).await;
        assert!(matches!(&seen[..], [Seen::Completed(id)] if id == "lookup-1"));
    }

    #[test]
    fn only_a_backend_that_could_not_take_the_call_is_uncounted() {
        for (e, unavailable) in [
            (Error::unavailable("flag-service"), true),
            (Error::DeadlineExceeded, true),
            (Error::Upstream(Status::unavailable("down")), true),
            (Error::Upstream(Status::invalid_argument("bad")), false),
            (Error::Upstream(Status::not_found("gone")), false),
            (Error::Upstream(Status::internal("bug")), false),
            (
                Error::ResourceExhausted {
                    reason: "MESSAGE_TOO_LARGE",
                    message: "too large".into(),
                },
                false,
            ),
        ] {
            assert_eq!(backend_unavailable(&e), unavailable, "{e:?}");
        }
    }
}
