//! Logs and traces for every service, one way.
//!
//! - Logs: a `RUST_LOG`-style filter (default `info`), text or JSON lines; each line inside a
//!   call carries the call's span, and with it the trace id.
//! - Traces: `tracing` spans become OpenTelemetry spans (always, so every call has a trace id
//!   for its logs and its audit record), exported over OTLP only when an endpoint is
//!   configured: `--otlp-endpoint`, or the standard `OTEL_EXPORTER_OTLP_ENDPOINT` /
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`. `OTEL_EXPORTER_OTLP_PROTOCOL` (or its `_TRACES_`
//!   form) picks `grpc` (the default) or `http/protobuf`. `service.name` is the service's
//!   name unless `OTEL_SERVICE_NAME` says otherwise. W3C TraceContext is the propagator.
//! - Traces do not follow `RUST_LOG`: spans are kept at `info` whatever the log level, so
//!   quieting the logs never breaks a trace.
//!
//! Hard caps, whatever `RUST_LOG` says (even `trace`): the transport and driver crates that
//! could print headers (a bearer token), frames or statements (an NHS number, a phone number)
//! never log below the level in [`CAPS`]. Our own code logs no such value at any level:
//! `NhsNumber` redacts itself, and requests are never logged whole.

use crate::config::LogArgs;
use crate::config::LogFormat;
use crate::error::{Error, Result};
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{
    SpanContext, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, Sampler, SamplingDecision, SamplingResult, SdkTracerProvider,
    ShouldSample,
};
use std::sync::OnceLock;
use tracing::Level;
use tracing::level_filters::LevelFilter;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, filter::filter_fn, fmt, prelude::*};

/// Crates that may never log more than this, whatever `RUST_LOG` says: transports (headers,
/// frames), TLS, database drivers (statements), the cache client (keys hold NHS numbers).
pub const CAPS: &[(&str, Level)] = &[
    ("h2", Level::INFO),
    ("hyper", Level::INFO),
    ("hyper_util", Level::INFO),
    ("tonic", Level::INFO),
    ("tower", Level::INFO),
    ("tower_http", Level::INFO),
    ("rustls", Level::INFO),
    ("tokio_rustls", Level::INFO),
    ("redis", Level::INFO),
    ("sqlx", Level::WARN),
    ("sea_orm", Level::INFO),
    ("sea_orm_migration", Level::INFO),
    ("sea_query", Level::WARN),
    ("opentelemetry", Level::WARN),
    ("opentelemetry_sdk", Level::WARN),
    ("opentelemetry_otlp", Level::WARN),
    ("opentelemetry_http", Level::WARN),
];

/// Whether a span or event from `target` at `level` is allowed past the caps.
pub fn within_caps(target: &str, level: &Level) -> bool {
    for (prefix, cap) in CAPS {
        let matches = target == *prefix
            || target
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with("::"));
        if matches {
            // Levels order from ERROR (smallest) to TRACE (largest).
            return level <= cap;
        }
    }
    true
}

/// What must happen at exit: the last spans exported.
#[must_use = "call shutdown() once the servers stopped, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is buffered and stops the exporter (bounded by the SDK's own timeout).
    pub async fn shutdown(mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        // The SDK blocks while the exporter, a task on this runtime, drains: not on a worker.
        let stopped = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = stopped {
            eprintln!("telemetry: the last spans may be lost: {e}");
        }
    }
}

impl Drop for Telemetry {
    /// For a holder that cannot await [`Telemetry::shutdown`] (`cpis dev`'s guard): the same,
    /// blocking, where the runtime can spare the thread.
    fn drop(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            let _ = tokio::task::block_in_place(|| provider.shutdown());
        }
    }
}

static INSTALLED: OnceLock<()> = OnceLock::new();

/// Installs the global subscriber, propagator and tracer provider for `service`. Only the
/// first call in a process installs anything (`cpis dev` runs four components in one
/// process: it calls this once, and each server span names its component). Must run inside
/// the Tokio runtime: the exporter's connection lives on it.
pub fn init(service: &str, args: &LogArgs) -> Result<Telemetry> {
    if INSTALLED.set(()).is_err() {
        return Ok(Telemetry { provider: None });
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let exporter = span_exporter(args.otlp_endpoint.as_deref())?;
    let exporting = exporter.is_some();
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none_or(|v| v.is_empty()) {
        resource = resource.with_service_name(service.to_owned());
    }
    let mut builder = SdkTracerProvider::builder()
        .with_resource(resource.build())
        // A caller that decided not to sample is obeyed; new traces are kept (see Roots).
        .with_sampler(Sampler::ParentBased(Box::new(Roots)));
    if let Some(exporter) = exporter {
        let processor =
            opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
                exporter,
                opentelemetry_sdk::runtime::Tokio,
            )
            .build();
        builder = builder.with_span_processor(processor);
    }
    let provider = builder.build();
    let tracer = provider.tracer("cpis");

    let caps = filter_fn(|meta| within_caps(meta.target(), meta.level()));
    let logs_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs on stderr: stdout stays free for what a command prints as its result.
    let logs = match args.log_format {
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_target(true)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            // The call's span (with its trace id) on every line logged inside the call.
            .with_current_span(false)
            .with_span_list(true)
            .boxed(),
    };
    let traces = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(LevelFilter::INFO);
    let installed = tracing_subscriber::registry()
        .with(caps)
        .with(logs.with_filter(logs_filter))
        .with(traces)
        .try_init();
    if let Err(e) = installed {
        // Someone else (a test harness) owns the subscriber: keep going without ours.
        eprintln!("telemetry: a global subscriber is already installed: {e}");
    }
    if exporting {
        tracing::info!(service, "exporting traces over OTLP");
    }
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// Which new traces are kept: all but those that would start at a storage statement.
/// Background work (readiness pings, gauges read every few seconds, purges) would otherwise
/// export a one-span trace per statement; background work worth seeing opens a span of its own.
#[derive(Clone, Debug)]
struct Roots;

impl ShouldSample for Roots {
    fn should_sample(
        &self,
        _parent: Option<&opentelemetry::Context>,
        _trace_id: TraceId,
        name: &str,
        _kind: &opentelemetry::trace::SpanKind,
        _attributes: &[opentelemetry::KeyValue],
        _links: &[opentelemetry::trace::Link],
    ) -> SamplingResult {
        let storage = name.starts_with("sea_orm.") || name.starts_with("redis ");
        SamplingResult {
            decision: if storage {
                SamplingDecision::Drop
            } else {
                SamplingDecision::RecordAndSample
            },
            attributes: Vec::new(),
            trace_state: TraceState::default(),
        }
    }
}

/// The OTLP exporter when an endpoint is configured, else none.
fn span_exporter(flag: Option<&str>) -> Result<Option<opentelemetry_otlp::SpanExporter>> {
    use opentelemetry_otlp::{SpanExporter, WithExportConfig};
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let flag = flag.map(str::trim).filter(|f| !f.is_empty());
    if flag.is_none()
        && !set("OTEL_EXPORTER_OTLP_ENDPOINT")
        && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    {
        return Ok(None);
    }
    let protocol = [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .iter()
    .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    .unwrap_or_else(|| "grpc".to_owned());
    let built = match protocol.trim() {
        "grpc" => {
            let mut b = SpanExporter::builder().with_tonic();
            if let Some(endpoint) = flag {
                b = b.with_endpoint(endpoint);
            }
            b.build()
        }
        "http/protobuf" => {
            let mut b = SpanExporter::builder().with_http();
            if let Some(endpoint) = flag {
                // A base URL, like OTEL_EXPORTER_OTLP_ENDPOINT: the signal's path is added.
                let endpoint = endpoint.trim_end_matches('/');
                b = b.with_endpoint(if endpoint.ends_with("/v1/traces") {
                    endpoint.to_owned()
                } else {
                    format!("{endpoint}/v1/traces")
                });
            }
            b.build()
        }
        other => {
            return Err(Error::FailedPrecondition(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL {other:?}: use grpc or http/protobuf"
            )));
        }
    };
    built
        .map(Some)
        .map_err(|e| Error::FailedPrecondition(format!("OTLP trace exporter: {e}")))
}

/// The W3C trace id of the current span (32 hex digits), if it has one.
pub fn current_trace_id() -> Option<String> {
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// The trace context the caller sent in `headers` (`traceparent`), if any.
pub fn extract(headers: &http::HeaderMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderCarrier(headers)))
}

/// Writes `span`'s context into outgoing `headers` (`traceparent`).
pub fn inject(span: &tracing::Span, headers: &mut http::HeaderMap) {
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&context, &mut HeaderCarrierMut(headers))
    });
}

/// Makes `span` the root of a trace that is not sampled: its children are neither exported
/// here nor, through the propagated flags, by the services it calls. For background polls
/// that would otherwise export a trace every few seconds.
pub fn unsampled(span: &tracing::Span) {
    let ids = RandomIdGenerator::default();
    let parent = SpanContext::new(
        ids.new_trace_id(),
        ids.new_span_id(),
        TraceFlags::default(),
        true,
        TraceState::default(),
    );
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
}

/// Whether `id` is a W3C Trace Context trace id of a real trace: 32 lower-case hex digits,
/// not all zero. The one rule for every trace id cpis reads or stores.
pub fn is_trace_id(id: &str) -> bool {
    id.len() == 32
        && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && id.bytes().any(|b| b != b'0')
}

/// The trace id inside a W3C `traceparent` header value (`00-<trace id>-<span id>-<flags>`),
/// if it holds a valid one.
pub fn trace_id_of_traceparent(traceparent: &str) -> Option<&str> {
    traceparent.split('-').nth(1).filter(|id| is_trace_id(id))
}

struct HeaderCarrier<'a>(&'a http::HeaderMap);

impl Extractor for HeaderCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderCarrierMut<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderCarrierMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_and_driver_crates_are_capped_whatever_rust_log_says() {
        assert!(!within_caps("h2::codec::framed_read", &Level::TRACE));
        assert!(!within_caps("hyper_util::client", &Level::DEBUG));
        assert!(!within_caps("sqlx::query", &Level::INFO));
        assert!(!within_caps("tonic::transport::server", &Level::DEBUG));
        assert!(within_caps("h2", &Level::INFO));
        assert!(within_caps(
            "sea_orm::database::db_connection",
            &Level::INFO
        ));
        // Prefixes match whole path segments only.
        assert!(within_caps("h2x", &Level::TRACE));
        assert!(within_caps("gateway::core", &Level::TRACE));
    }

    #[test]
    fn background_statements_start_no_trace_but_calls_do() {
        let decide = |name: &str| {
            Roots
                .should_sample(
                    None,
                    TraceId::from(1u128),
                    name,
                    &opentelemetry::trace::SpanKind::Internal,
                    &[],
                    &[],
                )
                .decision
        };
        assert_eq!(decide("sea_orm.query_one"), SamplingDecision::Drop);
        assert_eq!(decide("redis MGET"), SamplingDecision::Drop);
        assert_eq!(
            decide("/cpis.flag.v1.FlagRegistry/GetFlags"),
            SamplingDecision::RecordAndSample
        );
        assert_eq!(decide("audit.commit"), SamplingDecision::RecordAndSample);
    }

    #[test]
    fn trace_ids_are_32_hex_digits_and_not_zero() {
        assert!(is_trace_id("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert!(!is_trace_id("00000000000000000000000000000000"));
        assert!(!is_trace_id("4bf92f35"));
        assert!(!is_trace_id("garbage"));
        assert!(
            !is_trace_id("4BF92F3577B34DA6A3CE929D0E0E4736"),
            "W3C Trace Context allows lower-case hex only"
        );
        assert_eq!(
            trace_id_of_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            trace_id_of_traceparent("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id_of_traceparent("nonsense"), None);
    }
}
