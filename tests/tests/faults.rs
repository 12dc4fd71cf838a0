//! The fault suite: the four services as separate processes on a PostgreSQL and a Redis of the
//! test's own (PostgreSQL behind a proxy that can cut connections), under a steady mix of
//! uploads and notifying lookups, while the test crashes and restarts each backend in turn,
//! crashes and restarts PostgreSQL, stops and restarts Redis, and cuts every database
//! connection. What must hold (ARCHITECTURE.md rules 1–3), checked through the public API:
//! no lookup says "not flagged" for a child whose upload was acknowledged before it started;
//! every acknowledged upload, every notification of an answered notifying lookup, every audit
//! record of an answered call is there afterwards, the audit chain verifies, and every answered
//! notifying lookup's attendance is recorded once the reconciler has caught up; the gateway is
//! never restarted. The counts of answers by outcome are printed per phase.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cpis_tests::with_token;

use common::infra::{CutProxy, PrivatePostgres, PrivateRedis, create_databases};
use common::system::{BACKENDS, Options, System};
use cpis_proto::gateway as pb;
use pb::administration_client::AdministrationClient;
use pb::audit_client::AuditClient;
use pb::child_protection_client::ChildProtectionClient;
use pb::local_authority_client::LocalAuthorityClient;
use platform::domain::NhsNumber;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::{Code, Status};

const ADMIN_ORG: &str = "X26";
const LA: &str = "706";
const TRUST: &str = "RQX";
const SITE: &str = "RQX01";
/// Each disruption's phase: the fault, the outage, the recovery, with load throughout.
const PHASE: Duration = Duration::from_secs(9);

fn child(n: u32) -> String {
    (n..)
        .find_map(|k| NhsNumber::from_first_nine(990_000_000 + k * 3))
        .unwrap()
        .as_str()
        .to_owned()
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Upload,
    Lookup,
}

#[derive(Default, Clone, Copy)]
struct Counts {
    ok: u32,
    /// Answered, but with `attendance.available = false` (lookups only).
    without_attendance: u32,
    unavailable: u32,
    deadline: u32,
    other: u32,
}

/// What the workers saw, for the checks afterwards.
#[derive(Default)]
struct Seen {
    /// Children whose upload was acknowledged, with the upload id.
    acknowledged: Vec<(String, String)>,
    /// Answered notifying lookups: (child, lookup id).
    answered: Vec<(String, String)>,
    /// Notifying lookups attempted per child (answered or not).
    attempted: HashMap<String, u32>,
    counts: BTreeMap<(usize, Kind), Counts>,
    /// Answers other than OK, UNAVAILABLE and DEADLINE_EXCEEDED (a few, for the report).
    others: Vec<String>,
    false_not_flagged: Vec<String>,
}

struct Load {
    phase: AtomicUsize,
    stop: AtomicBool,
    next_child: AtomicU32,
    seen: Mutex<Seen>,
    channel: Channel,
    la: String,
    clinician: String,
}

impl Load {
    fn count(&self, kind: Kind, result: &Result<(), Status>) {
        let phase = self.phase.load(Ordering::Relaxed);
        let mut seen = self.seen.lock().unwrap();
        let counts = seen.counts.entry((phase, kind)).or_default();
        match result {
            Ok(()) => counts.ok += 1,
            Err(s) if s.code() == Code::Unavailable => counts.unavailable += 1,
            Err(s) if s.code() == Code::DeadlineExceeded => counts.deadline += 1,
            Err(s) => {
                counts.other += 1;
                if seen.others.len() < 20 {
                    seen.others.push(format!(
                        "{kind:?} in phase {phase}: {:?} {}",
                        s.code(),
                        s.message()
                    ));
                }
            }
        }
    }
}

/// Uploads one new child at a time, retrying the same upload (same upload_id) on answers that
/// say "retry", until acknowledged or the load stops.
async fn uploader(load: Arc<Load>) {
    let mut client = LocalAuthorityClient::new(load.channel.clone());
    while !load.stop.load(Ordering::Relaxed) {
        let n = load.next_child.fetch_add(1, Ordering::Relaxed);
        let nhs = child(n);
        let upload_id = format!("fault-{n}");
        let message = pb::UploadFlagsRequest {
            upload_id: upload_id.clone(),
            records: vec![pb::FlagRecord {
                nhs_number: nhs.clone(),
                flag_type: pb::FlagType::Cpp.into(),
                start_date: "2025-01-10".into(),
                emergency_phone: "020 7364 4079".into(),
                ..Default::default()
            }],
        };
        while !load.stop.load(Ordering::Relaxed) {
            let request = with_token(
                tokio_stream::iter([message.clone()]),
                &load.la,
                Duration::from_secs(5),
            );
            let answer = client.upload_flags(request).await;
            load.count(
                Kind::Upload,
                &answer.as_ref().map(drop).map_err(Clone::clone),
            );
            match answer {
                Ok(report) => {
                    let report = report.into_inner();
                    assert_eq!(report.accepted, 1, "{report:?}");
                    let mut seen = load.seen.lock().unwrap();
                    seen.acknowledged.push((nhs.clone(), upload_id.clone()));
                    break;
                }
                Err(s)
                    if matches!(
                        s.code(),
                        Code::Unavailable
                            | Code::DeadlineExceeded
                            | Code::ResourceExhausted
                            | Code::Cancelled
                    ) =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(_) => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
}

/// Looks up children whose upload was acknowledged (taken before the call starts) and, one
/// time in five, a child never uploaded.
async fn looker(load: Arc<Load>, seed: u64) {
    let mut client = ChildProtectionClient::new(load.channel.clone());
    let mut rng = seed;
    while !load.stop.load(Ordering::Relaxed) {
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let pick = (rng >> 33) as usize;
        let target = {
            let seen = load.seen.lock().unwrap();
            if pick.is_multiple_of(5) || seen.acknowledged.is_empty() {
                None
            } else {
                Some(seen.acknowledged[pick % seen.acknowledged.len()].0.clone())
            }
        };
        let nhs = target
            .clone()
            .unwrap_or_else(|| child(2_000_000 + (pick % 200) as u32));
        let request = pb::LookupChildRequest {
            nhs_number: nhs.clone(),
            access_kind: pb::AccessKind::Unscheduled.into(),
            setting: Some(pb::Setting {
                ods_code: SITE.into(),
                setting_type: pb::SettingType::EmergencyDepartment.into(),
            }),
            request_id: String::new(),
        };
        let answer = client
            .lookup_child(with_token(request, &load.clinician, Duration::from_secs(3)))
            .await;
        load.count(
            Kind::Lookup,
            &answer.as_ref().map(drop).map_err(Clone::clone),
        );
        {
            let mut seen = load.seen.lock().unwrap();
            *seen.attempted.entry(nhs.clone()).or_default() += 1;
            if let Ok(answer) = answer {
                let answer = answer.into_inner();
                if !answer.attendance.as_ref().is_some_and(|a| a.available) {
                    let phase = load.phase.load(Ordering::Relaxed);
                    seen.counts
                        .entry((phase, Kind::Lookup))
                        .or_default()
                        .without_attendance += 1;
                }
                if target.is_some() && !answer.flagged {
                    let phase = load.phase.load(Ordering::Relaxed);
                    seen.false_not_flagged
                        .push(format!("{nhs} in phase {phase}: {answer:?}"));
                }
                seen.answered.push((nhs, answer.lookup_id));
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn all_pages<T, F, Fut>(mut page: F) -> Vec<T>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = (Vec<T>, String)>,
{
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let (items, next) = page(token).await;
        out.extend(items);
        if next.is_empty() {
            return out;
        }
        token = next;
    }
}

/// Retries a read until it answers (the system may still be recovering).
async fn eventually<T, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let start = Instant::now();
    loop {
        match call().await {
            Ok(v) => return v,
            Err(s) if start.elapsed() < Duration::from_secs(60) => {
                let _ = s;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(s) => panic!("{what} still failing after 60 s: {s:?}"),
        }
    }
}

const PHASES: [&str; 8] = [
    "steady",
    "kill -9 access-service",
    "kill -9 flag-service",
    "kill -9 attendance-service",
    "PostgreSQL crash and restart",
    "Redis stopped and restarted",
    "database connections cut",
    "recovery",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_crashes_and_outages_nothing_acknowledged_is_lost_and_no_lookup_is_falsely_not_flagged()
 {
    assert!(
        common::infra::can_run_private_postgres(),
        "the fault suite runs as root with PostgreSQL server binaries installed (it starts its own cluster)"
    );
    let postgres = PrivatePostgres::start();
    create_databases(&postgres.url("postgres"), &BACKENDS).await;
    let mut redis = PrivateRedis::start().await;
    let proxy = CutProxy::start(postgres.port).await;
    let mut sys = System::start(Options {
        postgres: false,
        public_tls: false,
        database_urls: BACKENDS.iter().map(|b| (*b, proxy.url(b))).collect(),
        redis_url: Some(redis.url()),
        ..Options::default()
    })
    .await;
    let gateway_pid = sys.pid("gateway");

    let admin = sys.token("admin", ADMIN_ORG, "R0001", &["CPIS_ADMIN"]);
    let auditor = sys.token("caldicott", ADMIN_ORG, "R5105", &["CPIS_AUDIT"]);
    let gp = sys.token("dr.gp", TRUST, "R8000", &["B0170"]);
    for (ods, kind) in [
        (LA, pb::OrganisationKind::LocalAuthority),
        (TRUST, pb::OrganisationKind::Health),
    ] {
        let request = pb::UpsertOrganisationRequest {
            ods_code: ods.into(),
            name: format!("Organisation {ods}"),
            kind: kind.into(),
            onboarded: true,
        };
        AdministrationClient::new(sys.channel())
            .upsert_organisation(with_token(request, &admin, Duration::from_secs(10)))
            .await
            .unwrap();
    }

    let load = Arc::new(Load {
        phase: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        next_child: AtomicU32::new(1),
        seen: Mutex::default(),
        channel: sys.channel(),
        la: sys.token("la.worker", LA, "R9000", &["CPIS_LA_MANAGE"]),
        clinician: sys.token("dr.jones", TRUST, "R8000", &["B0107"]),
    });
    let mut workers = Vec::new();
    for _ in 0..2 {
        workers.push(tokio::spawn(uploader(load.clone())));
    }
    for seed in 0..3 {
        workers.push(tokio::spawn(looker(load.clone(), seed)));
    }

    let started = Instant::now();
    for (phase, name) in PHASES.iter().enumerate() {
        load.phase.store(phase, Ordering::Relaxed);
        let phase_start = Instant::now();
        eprintln!(
            "[{:>5.1}s] phase {phase}: {name}",
            started.elapsed().as_secs_f64()
        );
        match phase {
            1..=3 => {
                let backend = ["access-service", "flag-service", "attendance-service"][phase - 1];
                tokio::time::sleep(Duration::from_secs(1)).await;
                sys.kill(backend);
                // Longer than a lookup's deadline (3 s), so that retries inside it cannot hide
                // the outage.
                tokio::time::sleep(Duration::from_secs(4)).await;
                sys.restart(backend).await;
            }
            4 => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                postgres.crash();
                tokio::time::sleep(Duration::from_secs(2)).await;
                postgres.start_server();
            }
            5 => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                redis.stop();
                tokio::time::sleep(Duration::from_secs(3)).await;
                redis.start_server().await;
            }
            6 => {
                for _ in 0..3 {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    let cut = proxy.cut();
                    eprintln!("          cut {cut} database connections");
                }
            }
            _ => {}
        }
        if let Some(left) = PHASE.checked_sub(phase_start.elapsed()) {
            tokio::time::sleep(left).await;
        }
    }
    load.stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let load_time = started.elapsed();

    let seen = std::mem::take(&mut *load.seen.lock().unwrap());
    eprintln!(
        "\nanswers by outcome ({:.0} s of load; 2 uploaders, 3 lookers):",
        load_time.as_secs_f64()
    );
    eprintln!(
        "{:<32} {:<7} {:>6} {:>20} {:>12} {:>18} {:>6}",
        "phase", "call", "ok", "(of which no attend.)", "UNAVAILABLE", "DEADLINE_EXCEEDED", "other"
    );
    for ((phase, kind), c) in &seen.counts {
        eprintln!(
            "{:<32} {:<7} {:>6} {:>20} {:>12} {:>18} {:>6}",
            PHASES[*phase],
            format!("{kind:?}"),
            c.ok,
            c.without_attendance,
            c.unavailable,
            c.deadline,
            c.other
        );
    }
    for other in &seen.others {
        eprintln!("  other: {other}");
    }
    eprintln!(
        "acknowledged uploads {}, answered notifying lookups {}",
        seen.acknowledged.len(),
        seen.answered.len()
    );

    // Rule 1.
    assert!(
        seen.false_not_flagged.is_empty(),
        "lookups answered \"not flagged\" for children whose upload was acknowledged:\n{}",
        seen.false_not_flagged.join("\n")
    );
    // Every phase saw answers: the system recovered from each fault while under load.
    for (phase, name) in PHASES.iter().enumerate() {
        let ok = seen.counts.get(&(phase, Kind::Lookup)).map_or(0, |c| c.ok);
        assert!(ok > 0, "no lookup was answered in phase {name}");
    }
    assert_eq!(sys.pid("gateway"), gateway_pid);
    assert!(
        seen.acknowledged.len() > 20 && seen.answered.len() > 100,
        "too little load to prove anything"
    );

    // Rule 3, through the public API: flags.
    let la = load.la.clone();
    let channel = sys.channel();
    let held: HashSet<String> = all_pages(|token| {
        let (channel, la) = (channel.clone(), la.clone());
        async move {
            let request = pb::ListFlagsRequest {
                page_size: 1000,
                page_token: token,
            };
            let page = eventually("ListFlags", || {
                let mut client = LocalAuthorityClient::new(channel.clone());
                let request = with_token(request.clone(), &la, Duration::from_secs(10));
                async move { client.list_flags(request).await }
            })
            .await
            .into_inner();
            (
                page.flags.into_iter().map(|f| f.nhs_number).collect(),
                page.next_page_token,
            )
        }
    })
    .await
    .into_iter()
    .collect();
    let lost: Vec<_> = seen
        .acknowledged
        .iter()
        .filter(|(nhs, _)| !held.contains(nhs))
        .collect();
    assert!(lost.is_empty(), "acknowledged uploads lost: {lost:?}");

    // Audit: every answered call has its record, and the chain verifies.
    let events = all_pages(|token| {
        let (channel, auditor) = (channel.clone(), auditor.clone());
        async move {
            let request = pb::ListAuditEventsRequest {
                page_size: 1000,
                page_token: token,
                ..Default::default()
            };
            let page = eventually("ListAuditEvents", || {
                let mut client = AuditClient::new(channel.clone());
                let request = with_token(request.clone(), &auditor, Duration::from_secs(10));
                async move { client.list_audit_events(request).await }
            })
            .await
            .into_inner();
            (page.events, page.next_page_token)
        }
    })
    .await;
    let lookup_records: HashSet<&str> = events.iter().map(|e| e.lookup_id.as_str()).collect();
    let upload_records: HashSet<&str> = events
        .iter()
        .filter(|e| e.action == "UploadFlags")
        .map(|e| e.request_id.as_str())
        .collect();
    let unaudited: Vec<_> = seen
        .answered
        .iter()
        .filter(|(_, id)| !lookup_records.contains(id.as_str()))
        .collect();
    assert!(
        unaudited.is_empty(),
        "answered lookups without an audit record: {unaudited:?}"
    );
    let unaudited: Vec<_> = seen
        .acknowledged
        .iter()
        .filter(|(_, id)| !upload_records.contains(id.as_str()))
        .collect();
    assert!(
        unaudited.is_empty(),
        "acknowledged uploads without an audit record: {unaudited:?}"
    );
    let verified = eventually("VerifyAuditLog", || {
        let mut client = AuditClient::new(channel.clone());
        let request = with_token(
            pb::VerifyAuditLogRequest::default(),
            &auditor,
            Duration::from_secs(30),
        );
        async move { client.verify_audit_log(request).await }
    })
    .await
    .into_inner();
    assert!(verified.ok, "{verified:?}");
    assert!(verified.records_checked as usize >= events.len());

    // Notifications and attendances: the reconciler finishes what a lookup could not.
    let flagged: HashSet<&str> = seen.acknowledged.iter().map(|(n, _)| n.as_str()).collect();
    let mut awaited: HashSet<&str> = seen
        .answered
        .iter()
        .filter(|(nhs, _)| flagged.contains(nhs.as_str()))
        .map(|(_, id)| id.as_str())
        .collect();
    let mut answered_per_child: HashMap<&str, u32> = HashMap::new();
    for (nhs, _) in &seen.answered {
        *answered_per_child.entry(nhs.as_str()).or_default() += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(75);
    loop {
        let notifications = all_pages(|token| {
            let (channel, la) = (channel.clone(), la.clone());
            async move {
                let request = pb::ListNotificationsRequest {
                    from_start: true,
                    page_size: 1000,
                    page_token: token,
                    ..Default::default()
                };
                let page = eventually("ListNotifications", || {
                    let mut client = LocalAuthorityClient::new(channel.clone());
                    let request = with_token(request.clone(), &la, Duration::from_secs(10));
                    async move { client.list_notifications(request).await }
                })
                .await
                .into_inner();
                (page.notifications, page.next_page_token)
            }
        })
        .await;
        for n in &notifications {
            awaited.remove(n.lookup_id.as_str());
        }
        // Attendance counts, read silently (a scheduled read records none).
        let mut short = Vec::new();
        let mut caught_up = Vec::new();
        for (nhs, answered) in &answered_per_child {
            let request = pb::LookupChildRequest {
                nhs_number: nhs.to_string(),
                access_kind: pb::AccessKind::Scheduled.into(),
                setting: Some(pb::Setting {
                    ods_code: "RQX02".into(),
                    setting_type: pb::SettingType::GpPractice.into(),
                }),
                request_id: String::new(),
            };
            let summary = eventually("a silent lookup", || {
                let mut client = ChildProtectionClient::new(channel.clone());
                let request = with_token(request.clone(), &gp, Duration::from_secs(10));
                async move { client.lookup_child(request).await }
            })
            .await
            .into_inner()
            .attendance
            .unwrap();
            let attempted = seen.attempted[*nhs];
            assert!(
                summary.last_30_days <= attempted,
                "{nhs}: {} attendances for {attempted} lookups",
                summary.last_30_days
            );
            if !summary.available || summary.last_30_days < *answered {
                short.push(format!(
                    "{nhs}: {} of {answered} (available {})",
                    summary.last_30_days, summary.available
                ));
            } else {
                caught_up.push(*nhs);
            }
        }
        for nhs in caught_up {
            answered_per_child.remove(nhs);
        }
        if awaited.is_empty() && short.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the reconciler's time: {} answered lookups without their notification \
             ({:?}...), {} children with attendances missing ({:?}...)",
            awaited.len(),
            awaited.iter().take(5).collect::<Vec<_>>(),
            short.len(),
            short.iter().take(5).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    eprintln!(
        "all checks passed {:.0} s after the load stopped",
        started.elapsed().as_secs_f64() - load_time.as_secs_f64()
    );
    drop(sys);
    drop(proxy);
    drop(redis);
    drop(postgres);
}
