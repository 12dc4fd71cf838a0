//! Prometheus metrics, one registry per process, scraped as `GET /metrics` on a port of its
//! own (`CPIS_METRICS_LISTEN`), so the scrape never competes with calls and the network
//! policy can open it to monitoring alone.
//!
//! What is measured, and where:
//! - every RPC a server answers: `cpis_rpc_requests_total{component,service,method,code}`
//!   and `cpis_rpc_duration_seconds{component,service,method}` ([`crate::observe`]);
//! - every call the gateway makes to a backend: `cpis_backend_calls_total{backend,code}` and
//!   `cpis_backend_call_duration_seconds{backend}` (each attempt, retries included);
//! - flag-service's cache: `cpis_cache_lookups_total{result="hit"|"miss"}` per number looked
//!   up (hit ratio = hits / (hits + misses));
//! - access-service's audit writer: `cpis_audit_queue_depth`, decisions waiting to commit;
//! - access-service's obligations outbox: `cpis_obligations_pending` (not yet carried out,
//!   not failed), `cpis_obligations_failed` (given up on, waiting for an operator) and
//!   `cpis_obligations_oldest_pending_age_seconds` (refreshed from storage periodically and
//!   at each scrape);
//! - flag-service's outbox: `cpis_notification_backlog{la}`, notifications beyond each LA's
//!   acknowledged cursor (refreshed from storage periodically and at each scrape);
//! - the gateway's keys from the identity provider: `cpis_jwks_fetches_total{outcome}`
//!   (`ok`, `failed`: a failed fetch keeps the last good keys) and
//!   `cpis_jwks_last_success_timestamp_seconds` (alert on its age);
//! - capacity: `cpis_calls_in_flight{component}`, load-shedding permits in use
//!   ([`crate::shed`]), and `cpis_open_watches{component}`, notification watches the gateway
//!   is relaying, so an attack's state and its return to baseline can be seen.
//!
//! Labels hold names and codes only, never a value from a request.

use crate::error::{Error, Result};
use crate::shutdown::Shutdown;
/// What the gauge accessors hand out, for a caller to move as its state changes.
pub use prometheus::IntGauge;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Latency buckets, in seconds: from a cache hit to a slow upload batch.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// A refresh at scrape time that takes longer than this is left for the next scrape.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(2);

type Refresh = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

pub struct Metrics {
    registry: Registry,
    rpc_requests: IntCounterVec,
    rpc_duration: HistogramVec,
    backend_calls: IntCounterVec,
    backend_duration: HistogramVec,
    cache_lookups: IntCounterVec,
    audit_queue_depth: IntGauge,
    obligations_pending: IntGauge,
    obligations_failed: IntGauge,
    obligations_oldest_pending: IntGauge,
    notification_backlog: IntGaugeVec,
    calls_in_flight: IntGaugeVec,
    open_watches: IntGaugeVec,
    dependency_up: IntGaugeVec,
    jwks_fetches: IntCounterVec,
    jwks_last_success: IntGauge,
    refreshes: Mutex<Vec<Refresh>>,
}

fn build() -> prometheus::Result<Metrics> {
    let registry = Registry::new();
    let rpc_requests = IntCounterVec::new(
        Opts::new(
            "cpis_rpc_requests_total",
            "RPCs answered, by component, gRPC service, method and final gRPC code",
        ),
        &["component", "service", "method", "code"],
    )?;
    let rpc_duration = HistogramVec::new(
        HistogramOpts::new(
            "cpis_rpc_duration_seconds",
            "Time from a call's arrival to its last response byte (a stream's whole life)",
        )
        .buckets(BUCKETS.to_vec()),
        &["component", "service", "method"],
    )?;
    let backend_calls = IntCounterVec::new(
        Opts::new(
            "cpis_backend_calls_total",
            "Calls (attempts) from the gateway to a backend, by final gRPC code",
        ),
        &["backend", "code"],
    )?;
    let backend_duration = HistogramVec::new(
        HistogramOpts::new(
            "cpis_backend_call_duration_seconds",
            "Time of one call from the gateway to a backend",
        )
        .buckets(BUCKETS.to_vec()),
        &["backend"],
    )?;
    let cache_lookups = IntCounterVec::new(
        Opts::new(
            "cpis_cache_lookups_total",
            "NHS numbers looked up in flag-service's cache, by result (hit or miss)",
        ),
        &["result"],
    )?;
    let audit_queue_depth = IntGauge::new(
        "cpis_audit_queue_depth",
        "Access decisions queued for the audit writer, not yet committed",
    )?;
    let obligations_pending = IntGauge::new(
        "cpis_obligations_pending",
        "Obligations of notifying lookups not yet carried out and not failed (retrying or not)",
    )?;
    let obligations_failed = IntGauge::new(
        "cpis_obligations_failed",
        "Obligations whose work kept failing and that wait for an operator's RetryObligation",
    )?;
    let obligations_oldest_pending = IntGauge::new(
        "cpis_obligations_oldest_pending_age_seconds",
        "Age of the oldest obligation not yet carried out and not failed (0 when none)",
    )?;
    let notification_backlog = IntGaugeVec::new(
        Opts::new(
            "cpis_notification_backlog",
            "Notifications stored for a local authority beyond its acknowledged cursor",
        ),
        &["la"],
    )?;
    let calls_in_flight = IntGaugeVec::new(
        Opts::new(
            "cpis_calls_in_flight",
            "Calls holding one of the server's load-shedding permits (streams while they stream)",
        ),
        &["component"],
    )?;
    let open_watches = IntGaugeVec::new(
        Opts::new(
            "cpis_open_watches",
            "WatchNotifications streams open through this gateway",
        ),
        &["component"],
    )?;
    // Dependency health is reported here, never through readiness: a database or backend blip
    // must not take pods out of the load balancer (callers get UNAVAILABLE with RetryInfo).
    let dependency_up = IntGaugeVec::new(
        Opts::new(
            "cpis_dependency_up",
            "1 while a dependency (the database, or each backend as the gateway sees it) answers, 0 otherwise",
        ),
        &["component", "dependency"],
    )?;
    let jwks_fetches = IntCounterVec::new(
        Opts::new(
            "cpis_jwks_fetches_total",
            "Fetches of the identity provider's keys (discovery and JWKS), by outcome (ok or failed)",
        ),
        &["outcome"],
    )?;
    let jwks_last_success = IntGauge::new(
        "cpis_jwks_last_success_timestamp_seconds",
        "When the identity provider's keys were last fetched successfully (seconds since the epoch)",
    )?;
    registry.register(Box::new(jwks_fetches.clone()))?;
    registry.register(Box::new(jwks_last_success.clone()))?;
    registry.register(Box::new(dependency_up.clone()))?;
    registry.register(Box::new(calls_in_flight.clone()))?;
    registry.register(Box::new(open_watches.clone()))?;
    registry.register(Box::new(rpc_requests.clone()))?;
    registry.register(Box::new(rpc_duration.clone()))?;
    registry.register(Box::new(backend_calls.clone()))?;
    registry.register(Box::new(backend_duration.clone()))?;
    registry.register(Box::new(cache_lookups.clone()))?;
    registry.register(Box::new(audit_queue_depth.clone()))?;
    registry.register(Box::new(obligations_pending.clone()))?;
    registry.register(Box::new(obligations_failed.clone()))?;
    registry.register(Box::new(obligations_oldest_pending.clone()))?;
    registry.register(Box::new(notification_backlog.clone()))?;
    Ok(Metrics {
        registry,
        rpc_requests,
        rpc_duration,
        backend_calls,
        backend_duration,
        cache_lookups,
        audit_queue_depth,
        obligations_pending,
        obligations_failed,
        obligations_oldest_pending,
        notification_backlog,
        calls_in_flight,
        open_watches,
        dependency_up,
        jwks_fetches,
        jwks_last_success,
        refreshes: Mutex::new(Vec::new()),
    })
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        // Names, help texts and labels are constants, checked by this module's tests: this
        // cannot fail at run time.
        #[allow(clippy::expect_used)]
        build().expect("metric definitions are valid")
    })
}

/// The canonical name of a gRPC status code (`PERMISSION_DENIED`), for the `code` label.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

impl Metrics {
    pub fn rpc_answered(
        &self,
        component: &str,
        service: &str,
        method: &str,
        code: tonic::Code,
        elapsed: Duration,
    ) {
        self.rpc_requests
            .with_label_values(&[component, service, method, code_name(code)])
            .inc();
        self.rpc_duration
            .with_label_values(&[component, service, method])
            .observe(elapsed.as_secs_f64());
    }

    pub fn backend_called(&self, backend: &str, code: tonic::Code, elapsed: Duration) {
        self.backend_calls
            .with_label_values(&[backend, code_name(code)])
            .inc();
        self.backend_duration
            .with_label_values(&[backend])
            .observe(elapsed.as_secs_f64());
    }

    pub fn cache_looked_up(&self, hits: usize, misses: usize) {
        self.cache_lookups
            .with_label_values(&["hit"])
            .inc_by(hits as u64);
        self.cache_lookups
            .with_label_values(&["miss"])
            .inc_by(misses as u64);
    }

    pub fn audit_queue_depth(&self, depth: usize) {
        self.audit_queue_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// The obligations outbox as last read from storage.
    pub fn obligations(&self, pending: u64, failed: u64, oldest_pending_age: Duration) {
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.obligations_pending.set(gauge(pending));
        self.obligations_failed.set(gauge(failed));
        self.obligations_oldest_pending
            .set(gauge(oldest_pending_age.as_secs()));
    }

    /// The gauge of `component`'s load-shedding permits in use.
    pub fn calls_in_flight(&self, component: &str) -> IntGauge {
        self.calls_in_flight.with_label_values(&[component])
    }

    /// The gauge of whether `component`'s `dependency` answers.
    pub fn dependency_up(&self, component: &str, dependency: &str) -> IntGauge {
        self.dependency_up
            .with_label_values(&[component, dependency])
    }

    /// The gauge of the watches `component` relays.
    pub fn open_watches(&self, component: &str) -> IntGauge {
        self.open_watches.with_label_values(&[component])
    }

    /// One fetch of the identity provider's keys ended: `ok` (the time is recorded) or
    /// `failed`.
    pub fn jwks_fetched(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.jwks_fetches.with_label_values(&[outcome]).inc();
        if ok {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default();
            self.jwks_last_success
                .set(i64::try_from(now).unwrap_or(i64::MAX));
        }
    }

    /// Replaces the whole backlog gauge: an LA gone from `backlogs` stops being reported.
    pub fn notification_backlogs(&self, backlogs: &[(String, u64)]) {
        self.notification_backlog.reset();
        for (la, backlog) in backlogs {
            self.notification_backlog
                .with_label_values(&[la.as_str()])
                .set(i64::try_from(*backlog).unwrap_or(i64::MAX));
        }
    }

    #[cfg(test)]
    pub(crate) fn rpc_requests_for_tests(
        &self,
        component: &str,
        service: &str,
        method: &str,
        code: &str,
    ) -> u64 {
        self.rpc_requests
            .with_label_values(&[component, service, method, code])
            .get()
    }

    /// Runs `refresh` before each scrape (bounded by a short timeout), for gauges read from
    /// storage.
    pub fn on_scrape<F, Fut>(&self, refresh: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let refresh: Refresh = Arc::new(move || Box::pin(refresh()));
        self.refreshes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(refresh);
    }

    /// The text exposition format, after the scrape-time refreshes.
    pub async fn render(&self) -> String {
        let refreshes: Vec<Refresh> = self
            .refreshes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let all = futures_join_all(refreshes.iter().map(|r| r()));
        let _ = tokio::time::timeout(REFRESH_TIMEOUT, all).await;
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "metrics: cannot encode");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

async fn futures_join_all(futures: impl Iterator<Item = Pin<Box<dyn Future<Output = ()> + Send>>>) {
    let mut set = tokio::task::JoinSet::new();
    for f in futures {
        set.spawn(f);
    }
    while set.join_next().await.is_some() {}
}

/// Serves `GET /metrics` on `addr` until `shutdown` fires. A tiny HTTP/1.0-style responder:
/// one request per connection, which is all a Prometheus scrape needs.
pub async fn serve(addr: SocketAddr, shutdown: Shutdown) -> Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::internal(format!("cannot listen for metrics on {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::internal(format!("metrics listener address: {e}")))?;
    tracing::info!(addr = %bound, "serving metrics on /metrics");
    let task = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = shutdown.wait() => return,
            };
            match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(answer(stream));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    Ok((bound, task))
}

async fn answer(mut stream: TcpStream) {
    let mut request = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read_head = async {
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        true
    };
    if !matches!(
        tokio::time::timeout(Duration::from_secs(5), read_head).await,
        Ok(true)
    ) {
        return;
    }
    let line = request.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, path) = (parts.next(), parts.next());
    let path = path.map(|p| p.split(|b| *b == b'?').next().unwrap_or_default());
    let (status, content_type, body) = match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics().render().await,
        ),
        _ => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: GET /metrics\n".to_owned(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_metric_is_defined_and_exposed() {
        build().unwrap();
        let m = metrics();
        m.rpc_answered(
            "test",
            "cpis.test.v1.T",
            "Call",
            tonic::Code::PermissionDenied,
            Duration::from_millis(3),
        );
        m.backend_called("flag-service", tonic::Code::Ok, Duration::from_millis(1));
        m.cache_looked_up(2, 1);
        m.audit_queue_depth(4);
        m.obligations(2, 1, Duration::from_secs(90));
        m.notification_backlogs(&[("706".into(), 3)]);
        m.jwks_fetched(false);
        let text = futures_block_on(m.render());
        for wanted in [
            r#"cpis_rpc_requests_total{code="PERMISSION_DENIED",component="test",method="Call",service="cpis.test.v1.T"} 1"#,
            r#"cpis_backend_calls_total{backend="flag-service",code="OK"} 1"#,
            r#"cpis_cache_lookups_total{result="hit"} 2"#,
            "cpis_audit_queue_depth 4",
            "cpis_obligations_pending 2",
            "cpis_obligations_failed 1",
            "cpis_obligations_oldest_pending_age_seconds 90",
            r#"cpis_notification_backlog{la="706"} 3"#,
            r#"cpis_jwks_fetches_total{outcome="failed"} 1"#,
            "cpis_jwks_last_success_timestamp_seconds 0",
            "cpis_rpc_duration_seconds_bucket",
        ] {
            assert!(text.contains(wanted), "{wanted} missing from:\n{text}");
        }
    }

    fn futures_block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[tokio::test]
    async fn the_scrape_endpoint_answers_get_metrics_and_stops_at_shutdown() {
        let (trigger, shutdown) = Shutdown::new();
        let (addr, task) = serve(SocketAddr::from(([127, 0, 0, 1], 0)), shutdown)
            .await
            .unwrap();
        metrics().audit_queue_depth(0);
        let get = |path: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("cpis_audit_queue_depth"), "{ok}");
        assert!(get("/other").await.starts_with("HTTP/1.1 404"));
        trigger.fire();
        task.await.unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "still listening");
    }
}
