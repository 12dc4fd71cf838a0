//! What operators see, with the four services as separate processes: one trace per lookup
//! across all of them (collected by an in-process OTLP receiver), Prometheus counters that
//! move with the calls, and logs at trace level that never carry an NHS number, a phone
//! number or a token.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::free_port;
use common::system::{Options, System};
use cpis_proto::gateway as pb;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use pb::administration_client::AdministrationClient;
use pb::audit_client::AuditClient;
use pb::child_protection_client::ChildProtectionClient;
use pb::local_authority_client::LocalAuthorityClient;
use platform::domain::NhsNumber;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::{Request, Status};

const ADMIN_ORG: &str = "X26";
const LA: &str = "706";
const TRUST: &str = "RQX";
const SITE: &str = "RQX01";
const SERVICES: [&str; 4] = [
    "gateway",
    "access-service",
    "flag-service",
    "attendance-service",
];

fn child(n: u32) -> String {
    (n..)
        .find_map(|k| NhsNumber::from_first_nine(999_300_000 + k))
        .unwrap()
        .as_str()
        .to_owned()
}

fn kv(k: &str, v: impl Into<String>) -> (String, String) {
    (k.to_owned(), v.into())
}

fn with_token<T>(message: T, token: &str) -> Request<T> {
    cpis_tests::with_token(message, token, Duration::from_secs(10))
}

struct Tokens {
    admin: String,
    auditor: String,
    la: String,
    clinician: String,
    gp: String,
}

fn tokens(sys: &System) -> Tokens {
    Tokens {
        admin: sys.token("admin", ADMIN_ORG, "R0001", &["CPIS_ADMIN"]),
        auditor: sys.token("caldicott", ADMIN_ORG, "R5105", &["CPIS_AUDIT"]),
        la: sys.token("la.worker", LA, "R9000", &["CPIS_LA_MANAGE"]),
        clinician: sys.token("dr.jones", TRUST, "R8000", &["B0107"]),
        gp: sys.token("dr.gp", TRUST, "R8000", &["B0170"]),
    }
}

async fn onboard(sys: &System, t: &Tokens) {
    let mut admin = AdministrationClient::new(sys.channel());
    for (ods, name, kind) in [
        (LA, "Tower Hamlets", pb::OrganisationKind::LocalAuthority),
        (TRUST, "Homerton", pb::OrganisationKind::Health),
    ] {
        let request = pb::UpsertOrganisationRequest {
            ods_code: ods.into(),
            name: name.into(),
            kind: kind.into(),
            onboarded: true,
        };
        admin
            .upsert_organisation(with_token(request, &t.admin))
            .await
            .unwrap();
    }
}

fn record(nhs: &str, phone: &str) -> pb::FlagRecord {
    pb::FlagRecord {
        nhs_number: nhs.into(),
        flag_type: pb::FlagType::Cpp.into(),
        start_date: "2025-01-10".into(),
        end_date: String::new(),
        due_date: String::new(),
        emergency_phone: phone.into(),
        office_hours_phone: "020 7364 5006".into(),
        email: "mash@example.org".into(),
    }
}

async fn upload(
    sys: &System,
    token: &str,
    upload_id: &str,
    records: Vec<pb::FlagRecord>,
) -> pb::UploadFlagsResponse {
    let message = pb::UploadFlagsRequest {
        upload_id: upload_id.into(),
        records,
    };
    let mut request = Request::new(tokio_stream::iter(vec![message]));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    LocalAuthorityClient::new(sys.channel())
        .upload_flags(request)
        .await
        .unwrap_or_else(|s| panic!("upload failed: {s:?}"))
        .into_inner()
}

fn lookup_request(nhs: &str, token: &str) -> Request<pb::LookupChildRequest> {
    let message = pb::LookupChildRequest {
        nhs_number: nhs.into(),
        access_kind: pb::AccessKind::Unscheduled.into(),
        setting: Some(pb::Setting {
            ods_code: SITE.into(),
            setting_type: pb::SettingType::EmergencyDepartment.into(),
        }),
        request_id: String::new(),
    };
    with_token(message, token)
}

/// A silent read from scheduled care: audited, nobody notified, served through the cache.
fn silent_request(nhs: &str, token: &str) -> Request<pb::LookupChildRequest> {
    let mut request = lookup_request(nhs, token);
    let message = request.get_mut();
    message.access_kind = pb::AccessKind::Scheduled.into();
    message.setting = Some(pb::Setting {
        ods_code: "RQX02".into(),
        setting_type: pb::SettingType::GpPractice.into(),
    });
    request
}

async fn lookup(sys: &System, token: &str, nhs: &str) -> Result<pb::LookupChildResponse, Status> {
    ChildProtectionClient::new(sys.channel())
        .lookup_child(lookup_request(nhs, token))
        .await
        .map(|r| r.into_inner())
}

async fn audit_events(sys: &System, token: &str, nhs: &str) -> Vec<pb::AuditEvent> {
    let request = pb::ListAuditEventsRequest {
        nhs_number: nhs.into(),
        page_size: 100,
        ..Default::default()
    };
    AuditClient::new(sys.channel())
        .list_audit_events(with_token(request, token))
        .await
        .unwrap()
        .into_inner()
        .events
}

// ---------------------------------------------------------------------------------------
// Traces

/// One exported span, flattened with its process's `service.name`.
#[derive(Clone, Debug)]
struct Collected {
    service: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Collected>>>,
}

fn text(value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .map(|a| text(&a.value))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Collected {
                        service: service.clone(),
                        name: span.name.clone(),
                        kind: span.kind,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        attributes: span
                            .attributes
                            .iter()
                            .map(|a| (a.key.clone(), text(&a.value)))
                            .collect(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    async fn start(&self) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    fn in_trace(&self, trace_id: &str) -> Vec<Collected> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

fn random_hex(len: usize) -> String {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        ^ u128::from(std::process::id()) << 64;
    let mut out = format!(
        "{:032x}",
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)
    );
    out.truncate(len);
    out
}

// Multi-threaded: the receiver must keep answering while the test waits for the processes to
// exit (their last export happens then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_lookup_is_one_trace_across_the_four_services_down_to_the_database() {
    let receiver = Receiver::default();
    let collector = receiver.start().await;
    let sys = System::start_with(Options::default(), |_| {
        vec![
            kv("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}")),
            // Without Redis configured, flag-service still caches (in-process).
            kv("CPIS_FLAG_LOCAL_CACHE", "true"),
        ]
    })
    .await;
    let t = tokens(&sys);
    onboard(&sys, &t).await;
    let nhs = child(1);
    let report = upload(&sys, &t.la, "trace-1", vec![record(&nhs, "020 7364 4079")]).await;
    assert_eq!(report.accepted, 1, "{report:?}");

    // The caller's own trace: the lookup must join it.
    let trace_id = random_hex(32);
    let caller_span = random_hex(16);
    let mut request = lookup_request(&nhs, &t.clinician);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").parse().unwrap(),
    );
    let answer = ChildProtectionClient::new(sys.channel())
        .lookup_child(request)
        .await
        .unwrap()
        .into_inner();
    assert!(answer.flagged);

    let events = audit_events(&sys, &t.auditor, &nhs).await;
    let decided = events
        .iter()
        .find(|e| e.action == "LookupChild")
        .unwrap_or_else(|| panic!("no LookupChild audit event: {events:?}"));
    assert_eq!(
        decided.trace_id, trace_id,
        "the audit record names the caller's trace"
    );

    // A silent read (not notifying) goes through flag-service's cache: its own trace.
    let silent_trace = random_hex(32);
    let mut request = silent_request(&nhs, &t.gp);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{silent_trace}-{caller_span}-01")
            .parse()
            .unwrap(),
    );
    ChildProtectionClient::new(sys.channel())
        .lookup_child(request)
        .await
        .unwrap();

    // SIGTERM flushes what each exporter still holds (its batch delay is longer than this test).
    let mut sys = sys;
    for name in SERVICES {
        assert!(sys.terminate(name).success(), "{name} did not exit cleanly");
    }
    let mut spans = Vec::new();
    for _ in 0..100 {
        spans = receiver.in_trace(&trace_id);
        let services: std::collections::HashSet<_> =
            spans.iter().map(|s| s.service.as_str()).collect();
        if SERVICES.iter().all(|s| services.contains(s)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let summary: Vec<String> = spans
        .iter()
        .map(|s| {
            format!(
                "{} {} {} <- {}",
                s.service, s.name, s.span_id, s.parent_span_id
            )
        })
        .collect();
    let summary = format!(
        "{}\n({} spans received in all)\ngateway log:\n{}",
        summary.join("\n"),
        receiver.spans.lock().unwrap().len(),
        sys.log("gateway")
    );
    for service in SERVICES {
        assert!(
            spans.iter().any(|s| s.service == service),
            "no span from {service} in the trace:\n{summary}"
        );
    }

    let server = SpanKind::Server as i32;
    let client = SpanKind::Client as i32;
    let root = spans
        .iter()
        .find(|s| s.service == "gateway" && s.kind == server)
        .unwrap_or_else(|| panic!("no gateway server span:\n{summary}"));
    assert_eq!(root.name, "/cpis.gateway.v1.ChildProtection/LookupChild");
    assert_eq!(
        root.parent_span_id, caller_span,
        "the gateway's span is a child of the caller's"
    );
    assert_eq!(root.attributes["cpis.component"], "gateway");
    assert_eq!(root.attributes["rpc.method"], "LookupChild");

    let by_id: HashMap<&str, &Collected> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let gateway_clients: Vec<&Collected> = spans
        .iter()
        .filter(|s| s.service == "gateway" && s.kind == client)
        .collect();
    assert!(!gateway_clients.is_empty(), "{summary}");
    for c in &gateway_clients {
        // Each client span descends from the gateway's server span.
        let mut at = *c;
        while at.span_id != root.span_id {
            at = by_id
                .get(at.parent_span_id.as_str())
                .unwrap_or_else(|| panic!("{} is not under the lookup:\n{summary}", c.name));
        }
    }
    for backend in ["access-service", "flag-service", "attendance-service"] {
        let servers: Vec<&Collected> = spans
            .iter()
            .filter(|s| s.service == backend && s.kind == server)
            .collect();
        assert!(
            !servers.is_empty(),
            "no server span in {backend}:\n{summary}"
        );
        for s in servers {
            let parent = by_id.get(s.parent_span_id.as_str()).unwrap_or_else(|| {
                panic!(
                    "{backend} {} has no parent in the trace:\n{summary}",
                    s.name
                )
            });
            assert!(
                parent.service == "gateway" && parent.kind == client && parent.name == s.name,
                "{backend} {}'s parent is {parent:?}",
                s.name
            );
            assert_eq!(s.attributes["cpis.component"], backend);
        }
    }
    // Down to the storage: database statements in every backend, the cache in flag-service.
    for backend in ["access-service", "flag-service", "attendance-service"] {
        assert!(
            spans
                .iter()
                .any(|s| s.service == backend && s.name.starts_with("sea_orm")),
            "no database span in {backend}:\n{summary}"
        );
    }
    let all = receiver.spans.lock().unwrap().clone();
    assert!(
        all.iter()
            .all(|s| !s.attributes.contains_key("db.statement")),
        "statement text must never be recorded"
    );

    let silent = receiver.in_trace(&silent_trace);
    let by_id: HashMap<&str, &Collected> = silent.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let cache = silent
        .iter()
        .find(|s| s.service == "flag-service" && s.name == "flag_cache.lookup")
        .unwrap_or_else(|| panic!("no cache span in the silent read's trace: {silent:?}"));
    let parent = by_id[cache.parent_span_id.as_str()];
    assert_eq!(
        (parent.name.as_str(), parent.kind),
        ("/cpis.flag.v1.FlagRegistry/GetFlags", server),
        "the cache lookup is part of flag-service's GetFlags"
    );
}

// ---------------------------------------------------------------------------------------
// Metrics

use cpis_tests::metrics::{scrape, value};

#[tokio::test]
async fn the_metrics_endpoints_count_calls_codes_backend_calls_cache_hits_and_backlogs() {
    let ports: HashMap<&str, u16> = SERVICES.iter().map(|s| (*s, free_port())).collect();
    let sys = System::start_with(Options::default(), |name| {
        vec![
            kv("CPIS_METRICS_LISTEN", format!("127.0.0.1:{}", ports[name])),
            kv("CPIS_FLAG_LOCAL_CACHE", "true"),
        ]
    })
    .await;
    let addr = |name: &str| std::net::SocketAddr::from(([127, 0, 0, 1], ports[name]));
    let t = tokens(&sys);
    onboard(&sys, &t).await;
    let nhs = child(2);
    upload(
        &sys,
        &t.la,
        "metrics-1",
        vec![record(&nhs, "020 7364 4079")],
    )
    .await;

    let gateway_before = scrape(addr("gateway")).await;
    let flag_before = scrape(addr("flag-service")).await;

    lookup(&sys, &t.clinician, &nhs).await.unwrap();
    lookup(&sys, &t.clinician, &nhs).await.unwrap();
    let denied = lookup(&sys, &t.gp, &nhs).await.unwrap_err();
    // Silent reads go through the cache (notifying ones read in their transaction): the
    // second is a hit.
    for _ in 0..2 {
        let request = silent_request(&nhs, &t.gp);
        ChildProtectionClient::new(sys.channel())
            .lookup_child(request)
            .await
            .unwrap();
    }
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);

    let gateway_after = scrape(addr("gateway")).await;
    let flag_after = scrape(addr("flag-service")).await;
    let access_after = scrape(addr("access-service")).await;
    let attendance_after = scrape(addr("attendance-service")).await;

    let lookups = |scrape: &str, code: &str| {
        value(
            scrape,
            "cpis_rpc_requests_total",
            &[
                ("component", "gateway"),
                ("service", "cpis.gateway.v1.ChildProtection"),
                ("method", "LookupChild"),
                ("code", code),
            ],
        )
    };
    assert_eq!(
        lookups(&gateway_after, "OK") - lookups(&gateway_before, "OK"),
        4.0,
        "{gateway_after}"
    );
    assert_eq!(
        lookups(&gateway_after, "PERMISSION_DENIED")
            - lookups(&gateway_before, "PERMISSION_DENIED"),
        1.0,
        "{gateway_after}"
    );
    let latency = |scrape: &str| {
        value(
            scrape,
            "cpis_rpc_duration_seconds_count",
            &[
                ("component", "gateway"),
                ("service", "cpis.gateway.v1.ChildProtection"),
                ("method", "LookupChild"),
            ],
        )
    };
    assert_eq!(latency(&gateway_after) - latency(&gateway_before), 5.0);

    let backend_ok = |scrape: &str, backend: &str| {
        value(
            scrape,
            "cpis_backend_calls_total",
            &[("backend", backend), ("code", "OK")],
        )
    };
    for backend in ["access-service", "flag-service", "attendance-service"] {
        assert!(
            backend_ok(&gateway_after, backend) > backend_ok(&gateway_before, backend),
            "no call to {backend} counted:\n{gateway_after}"
        );
    }
    assert!(
        value(
            &gateway_after,
            "cpis_backend_call_duration_seconds_count",
            &[("backend", "flag-service")]
        ) > 0.0
    );

    let hits = |scrape: &str| value(scrape, "cpis_cache_lookups_total", &[("result", "hit")]);
    assert!(
        hits(&flag_after) > hits(&flag_before),
        "the second lookup of the same child is a cache hit:\n{flag_after}"
    );
    assert!(
        value(
            &flag_after,
            "cpis_rpc_requests_total",
            &[
                ("component", "flag-service"),
                ("service", "cpis.flag.v1.FlagRegistry"),
                ("method", "GetFlags"),
                ("code", "OK"),
            ]
        ) >= 2.0
    );
    // Each notifying lookup of a flagged child left the LA a notification it has not read.
    assert!(
        value(&flag_after, "cpis_notification_backlog", &[("la", LA)]) >= 2.0,
        "{flag_after}"
    );
    assert!(
        access_after.contains("cpis_audit_queue_depth"),
        "{access_after}"
    );
    // The lookups' obligations were carried out inline: nothing pending, nothing failed, read
    // from access-service's storage at the scrape.
    for gauge in [
        "cpis_obligations_pending",
        "cpis_obligations_failed",
        "cpis_obligations_oldest_pending_age_seconds",
    ] {
        assert!(
            access_after.contains(&format!("\n{gauge} 0\n")),
            "{gauge}:\n{access_after}"
        );
    }
    assert!(
        value(
            &attendance_after,
            "cpis_rpc_requests_total",
            &[
                ("component", "attendance-service"),
                ("service", "cpis.attendance.v1.AttendanceLog"),
                ("method", "RecordAttendance"),
                ("code", "OK"),
            ]
        ) >= 2.0,
        "{attendance_after}"
    );
}

// ---------------------------------------------------------------------------------------
// Logs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_nhs_number_phone_number_or_token_in_any_log_line_at_trace_level() {
    let sys = System::start_with(Options::default(), |name| {
        // Both formats: JSON lines in two processes, text in the other two.
        let format = if matches!(name, "gateway" | "flag-service") {
            "json"
        } else {
            "text"
        };
        vec![
            kv("RUST_LOG", "trace"),
            kv("CPIS_LOG_FORMAT", format),
            kv("CPIS_FLAG_LOCAL_CACHE", "true"),
        ]
    })
    .await;
    let t = tokens(&sys);
    onboard(&sys, &t).await;
    let flagged = [child(10), child(20), child(30)];
    let unflagged = child(40);
    let phones = ["020 7946 0958", "0161 496 0732", "0113 496 0201"];
    // A number that fails its check digit: rejected, and still never logged.
    let mut invalid = flagged[0].clone();
    let last = invalid.pop().unwrap();
    invalid.push(if last == '0' { '1' } else { '0' });

    let mut records: Vec<pb::FlagRecord> = flagged
        .iter()
        .zip(phones)
        .map(|(n, p)| record(n, p))
        .collect();
    records.push(record(&invalid, phones[0]));
    let report = upload(&sys, &t.la, "leak-1", records).await;
    assert_eq!(report.accepted, 3, "{report:?}");

    for n in flagged.iter().chain([&unflagged]) {
        assert!(lookup(&sys, &t.clinician, n).await.is_ok());
    }
    assert!(lookup(&sys, &t.gp, &flagged[1]).await.is_err());
    for n in [&flagged[1], &flagged[1], &unflagged] {
        let request = silent_request(n, &t.gp);
        ChildProtectionClient::new(sys.channel())
            .lookup_child(request)
            .await
            .unwrap();
    }
    assert!(lookup(&sys, &t.clinician, &invalid).await.is_err());
    let _ = LocalAuthorityClient::new(sys.channel())
        .list_flags(with_token(
            pb::ListFlagsRequest {
                page_size: 100,
                ..Default::default()
            },
            &t.la,
        ))
        .await
        .unwrap();
    audit_events(&sys, &t.auditor, &flagged[2]).await;
    // A tampered token is refused; it must not be logged either.
    let tampered = format!("{}x", t.clinician);
    assert!(lookup(&sys, &tampered, &flagged[0]).await.is_err());

    let mut sys = sys;
    for name in SERVICES {
        sys.terminate(name);
    }
    let logs: Vec<(&str, String)> = SERVICES.iter().map(|s| (*s, sys.log(s))).collect();
    // The test means something only if the calls were logged at the most verbose levels.
    for (name, log) in &logs {
        assert!(
            log.lines()
                .any(|l| l.contains("call answered") && l.contains("DEBUG")),
            "{name} logged no call at debug level:\n{}",
            &log[..log.len().min(2000)]
        );
    }
    assert!(
        logs[0]
            .1
            .lines()
            .any(|l| l.contains("backend answered") && l.contains("TRACE")),
        "the gateway logged no backend call at trace level"
    );

    let mut secrets: Vec<(String, String)> = Vec::new();
    for n in flagged.iter().chain([&unflagged, &invalid]) {
        secrets.push((format!("NHS number {n}"), n.clone()));
        let spaced = format!("{} {} {}", &n[..3], &n[3..6], &n[6..]);
        secrets.push((format!("NHS number {n} spaced"), spaced));
    }
    for p in phones.iter().chain(&["020 7364 5006"]) {
        secrets.push((format!("phone {p}"), p.to_string()));
        secrets.push((format!("phone {p} undivided"), p.replace(' ', "")));
    }
    for (who, token) in [
        ("admin", &t.admin),
        ("auditor", &t.auditor),
        ("la", &t.la),
        ("clinician", &t.clinician),
        ("gp", &t.gp),
        ("tampered", &tampered),
    ] {
        let bytes = token.as_bytes();
        for (i, chunk) in bytes.chunks(20).enumerate() {
            if chunk.len() == 20 {
                secrets.push((
                    format!("{who}'s token, characters {}..{}", i * 20, i * 20 + 20),
                    String::from_utf8(chunk.to_vec()).unwrap(),
                ));
            }
        }
    }
    let mut leaks = Vec::new();
    for (name, log) in &logs {
        for line in log.lines() {
            for (what, secret) in &secrets {
                if line.contains(secret.as_str()) {
                    leaks.push(format!("{name}: {what}: {line}"));
                }
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "{} leaks, first ones:\n{}",
        leaks.len(),
        leaks[..leaks.len().min(10)].join("\n")
    );
}
