//! One span and one measurement per gRPC call, on both sides of every hop.
//!
//! Server side ([`ObserveLayer`], the outermost layer of every server): a span named after
//! the RPC path whose parent is the caller's `traceparent`, carrying `cpis.component` (in
//! `cpis dev` four components share one process, and so one `service.name`); then
//! `cpis_rpc_*` with the final gRPC code. Client side ([`ClientTelemetry`], around the
//! gateway's backend channels): a client span whose context goes out as `traceparent`, and
//! `cpis_backend_*`.
//!
//! The final code is in the response headers for a trailers-only answer (every error from a
//! unary call), else in the trailers at the end of the body; a body dropped before its
//! trailers is a call that was cancelled. The span lasts until then, so a stream's span
//! covers the stream.

use crate::metrics::{self, metrics};
use crate::telemetry;
use opentelemetry::trace::TraceContextExt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::Code;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// `/cpis.flag.v1.FlagRegistry/GetFlags` → (`cpis.flag.v1.FlagRegistry`, `GetFlags`).
fn split(path: &str) -> (&str, &str) {
    path.trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("", path))
}

/// Health probes and reflection are measured but not traced: a probe every few seconds
/// would bury the traces that matter.
fn traced(path: &str) -> bool {
    !crate::server::is_probe(path)
}

/// OpenTelemetry's rule for server spans: only codes that mean the server failed are errors.
fn server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|v| Code::from_bytes(v.as_bytes()))
}

enum Side {
    Server {
        component: &'static str,
        service: String,
        method: String,
    },
    Client {
        backend: &'static str,
    },
}

/// What is recorded once the call's code is known (or the call is given up).
struct Outcome {
    side: Side,
    started: Instant,
    span: tracing::Span,
    done: bool,
}

impl Outcome {
    fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let elapsed = self.started.elapsed();
        self.span.record("rpc.grpc.status_code", code as i32);
        let failed = match &self.side {
            Side::Server {
                component,
                service,
                method,
            } => {
                metrics().rpc_answered(component, service, method, code, elapsed);
                // An access log line, inside the call's span (so with its trace id).
                self.span.in_scope(|| {
                    tracing::debug!(target: "cpis::rpc", code = metrics::code_name(code), elapsed_ms = elapsed.as_millis() as u64, "call answered")
                });
                server_error(code)
            }
            Side::Client { backend } => {
                metrics().backend_called(backend, code, elapsed);
                self.span.in_scope(|| {
                    tracing::trace!(target: "cpis::rpc", backend, code = metrics::code_name(code), elapsed_ms = elapsed.as_millis() as u64, "backend answered")
                });
                code != Code::Ok
            }
        };
        if failed {
            self.span.record("otel.status_code", "ERROR");
        }
    }

    /// Records now if the answer is trailers-only; else lets the body record at its end.
    fn watch<B>(mut self, response: http::Response<B>) -> http::Response<tonic::body::Body>
    where
        B: http_body::Body<Data = tonic::codegen::Bytes> + Send + Unpin + 'static,
        B::Error: Into<tonic::codegen::StdError>,
    {
        if let Some(code) = grpc_status(response.headers()) {
            self.finish(code);
            return response.map(tonic::body::Body::new);
        }
        response.map(|body| {
            tonic::body::Body::new(Watched {
                body,
                outcome: self,
            })
        })
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        // The caller went away, or the body was dropped before its trailers.
        self.finish(Code::Cancelled);
    }
}

/// A response body that records the call's outcome when its trailers pass.
struct Watched<B> {
    body: B,
    outcome: Outcome,
}

impl<B: http_body::Body + Unpin> http_body::Body for Watched<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = grpc_status(trailers).unwrap_or(Code::Unknown);
                    self.outcome.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.outcome.finish(Code::Unknown),
            Poll::Ready(None) => self.outcome.finish(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// The server side: wrap every service a server serves.
#[derive(Clone)]
pub struct ObserveLayer {
    component: &'static str,
}

impl ObserveLayer {
    /// `component` is the service's binary name (`flag-service`).
    pub fn new(component: &'static str) -> Self {
        ObserveLayer { component }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            component: self.component,
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    component: &'static str,
}

impl<S, ReqBody> Service<http::Request<ReqBody>> for Observe<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let (service, method) = split(&path);
        let span = if traced(&path) {
            let span = tracing::info_span!(
                target: "cpis::rpc",
                "rpc.server",
                otel.name = %path,
                otel.kind = "server",
                otel.status_code = Empty,
                rpc.system = "grpc",
                rpc.service = %service,
                rpc.method = %method,
                rpc.grpc.status_code = Empty,
                cpis.component = self.component,
                trace_id = Empty,
            );
            let parent = telemetry::extract(request.headers());
            if parent.span().span_context().is_valid() {
                let _ = span.set_parent(parent);
            }
            let context = span.context();
            let span_context = context.span().span_context().clone();
            if span_context.is_valid() {
                span.record("trace_id", span_context.trace_id().to_string());
            }
            span
        } else {
            tracing::Span::none()
        };
        let outcome = Outcome {
            side: Side::Server {
                component: self.component,
                service: service.to_owned(),
                method: method.to_owned(),
            },
            started: Instant::now(),
            span: span.clone(),
            done: false,
        };
        observed(&mut self.inner, request, outcome, Code::Unknown)
    }
}

/// Runs one call inside its span and records its outcome when the answer (or its body) ends;
/// a service error is counted as `on_error`.
fn observed<S, ReqBody>(
    ready: &mut S,
    request: http::Request<ReqBody>,
    outcome: Outcome,
    on_error: Code,
) -> BoxFuture<http::Response<tonic::body::Body>, S::Error>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<tonic::body::Body>> + Clone,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    // The instance poll_ready made ready serves this call.
    let mut inner = crate::server::take_ready(ready);
    let span = outcome.span.clone();
    let future = span.in_scope(|| inner.call(request));
    Box::pin(
        async move {
            let mut outcome = outcome;
            match future.await {
                Ok(response) => Ok(outcome.watch(response)),
                Err(e) => {
                    outcome.finish(on_error);
                    Err(e)
                }
            }
        }
        .instrument(span),
    )
}

/// The client side: the gateway's channel to one backend, traced and measured.
#[derive(Clone)]
pub struct ClientTelemetry<S> {
    inner: S,
    backend: &'static str,
}

impl<S> ClientTelemetry<S> {
    pub fn new(inner: S, backend: &'static str) -> Self {
        ClientTelemetry { inner, backend }
    }
}

impl<S, ReqBody> Service<http::Request<ReqBody>> for ClientTelemetry<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let (service, method) = split(&path);
        // A child of whatever the caller is doing (the gateway's server span).
        let span = tracing::info_span!(
            target: "cpis::rpc",
            "rpc.client",
            otel.name = %path,
            otel.kind = "client",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = Empty,
            peer.service = self.backend,
        );
        telemetry::inject(&span, request.headers_mut());
        let outcome = Outcome {
            side: Side::Client {
                backend: self.backend,
            },
            started: Instant::now(),
            span: span.clone(),
            done: false,
        };
        // A transport failure is what the caller sees as UNAVAILABLE.
        observed(&mut self.inner, request, outcome, Code::Unavailable)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body::Body as _;
    use std::convert::Infallible;
    use tower::ServiceExt;

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            split("/cpis.flag.v1.FlagRegistry/GetFlags"),
            ("cpis.flag.v1.FlagRegistry", "GetFlags")
        );
        assert_eq!(split("/odd"), ("", "/odd"));
    }

    #[derive(Clone)]
    struct Answer(Option<Code>);

    impl Service<http::Request<()>> for Answer {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = BoxFuture<Self::Response, Infallible>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let code = self.0;
            Box::pin(async move {
                Ok(match code {
                    // Trailers-only, as every unary error is.
                    Some(code) => tonic::Status::new(code, "no").into_http(),
                    // A body whose trailers say OK.
                    None => {
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        let body = http_body_util_like::Trailers(Some(trailers));
                        http::Response::new(tonic::body::Body::new(body))
                    }
                })
            })
        }
    }

    mod http_body_util_like {
        use super::*;
        pub struct Trailers(pub Option<http::HeaderMap>);
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
    }

    fn count(component: &str, method: &str, code: &str) -> u64 {
        metrics().rpc_requests_for_tests(component, "cpis.test.v1.T", method, code)
    }

    #[tokio::test]
    async fn the_final_code_is_counted_from_headers_or_trailers() {
        let denied = ObserveLayer::new("observe-test").layer(Answer(Some(Code::PermissionDenied)));
        let request = || {
            http::Request::builder()
                .uri("/cpis.test.v1.T/Denied")
                .body(())
                .unwrap()
        };
        let before = count("observe-test", "Denied", "PERMISSION_DENIED");
        let _ = denied.oneshot(request()).await.unwrap();
        assert_eq!(
            count("observe-test", "Denied", "PERMISSION_DENIED"),
            before + 1
        );

        let ok = ObserveLayer::new("observe-test").layer(Answer(None));
        let request = http::Request::builder()
            .uri("/cpis.test.v1.T/Fine")
            .body(())
            .unwrap();
        let response = ok.oneshot(request).await.unwrap();
        assert_eq!(
            count("observe-test", "Fine", "OK"),
            0,
            "not before the trailers"
        );
        let mut body = response.into_body();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            frame.unwrap();
        }
        assert_eq!(count("observe-test", "Fine", "OK"), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_trailers_counts_as_cancelled() {
        let ok = ObserveLayer::new("observe-test-drop").layer(Answer(None));
        let request = http::Request::builder()
            .uri("/cpis.test.v1.T/Dropped")
            .body(())
            .unwrap();
        drop(ok.oneshot(request).await.unwrap());
        assert_eq!(count("observe-test-drop", "Dropped", "CANCELLED"), 1);
    }
}
