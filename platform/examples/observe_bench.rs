//! What the per-call span and metrics cost: calls through an in-memory service answering at
//! once (an OK body with trailers, read to its end), bare, then behind `ObserveLayer` without
//! a subscriber (metrics only), then with the services' telemetry installed (OpenTelemetry
//! span per call, trace id recorded, no exporter; logs at info), and one `/metrics` render.
//!
//! `cargo run --release -p platform --example observe_bench` (figures: docs/bench-platform.md)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use http_body::Body as _;
use platform::config::{LogArgs, LogFormat};
use platform::observe::ObserveLayer;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tower::{Layer, Service, ServiceExt};

const CALLS: u32 = 200_000;

struct Trailers(Option<http::HeaderMap>);

impl http_body::Body for Trailers {
    type Data = tonic::codegen::Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Infallible>>> {
        Poll::Ready(self.0.take().map(|t| Ok(http_body::Frame::trailers(t))))
    }
}

#[derive(Clone)]
struct Answer;

impl Service<http::Request<()>> for Answer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: http::Request<()>) -> Self::Future {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        std::future::ready(Ok(http::Response::new(tonic::body::Body::new(Trailers(
            Some(trailers),
        )))))
    }
}

async fn run<S>(label: &str, service: S) -> Duration
where
    S: Service<http::Request<()>, Response = http::Response<tonic::body::Body>> + Clone,
    S::Error: std::fmt::Debug,
{
    let started = Instant::now();
    for _ in 0..CALLS {
        let request = http::Request::builder()
            .uri("/cpis.flag.v1.FlagRegistry/GetFlags")
            .body(())
            .unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        let mut body = response.into_body();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            frame.unwrap();
        }
    }
    let elapsed = started.elapsed();
    println!(
        "{label:<44} {CALLS} calls in {:>7.1} ms: {:>6.2} µs/call",
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e6 / f64::from(CALLS)
    );
    elapsed
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let bare = run("bare service", Answer).await;
    let metrics_only = run(
        "ObserveLayer, no subscriber (metrics only)",
        ObserveLayer::new("bench").layer(Answer),
    )
    .await;
    // Run without OTEL_EXPORTER_OTLP_* set: the figures are for spans made, not exported.
    let _telemetry = platform::telemetry::init(
        "bench",
        &LogArgs {
            log_format: LogFormat::Text,
            otlp_endpoint: None,
        },
    )
    .unwrap();
    let traced = run(
        "ObserveLayer + telemetry (span per call)",
        ObserveLayer::new("bench").layer(Answer),
    )
    .await;
    let per = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(CALLS);
    println!(
        "added per call: metrics {:.2} µs, metrics + span {:.2} µs",
        per(metrics_only) - per(bare),
        per(traced) - per(bare)
    );
    let started = Instant::now();
    let text = platform::metrics::metrics().render().await;
    println!(
        "one /metrics render: {:.2} ms, {} bytes",
        started.elapsed().as_secs_f64() * 1e3,
        text.len()
    );
}
