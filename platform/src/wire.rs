//! Malformed requests on the wire answer `INVALID_ARGUMENT`, not `INTERNAL`.
//!
//! tonic (following the gRPC status-code guide) answers a request it cannot decode — bytes that
//! are not the method's protobuf message, a frame cut short, no message at all, a compressed
//! frame with no encoding — with `INTERNAL` and the decoder's own text. Those are the caller's
//! faults, and API.md promises `INVALID_ARGUMENT` for bad input and never `INTERNAL` with raw
//! error text, so this layer rewrites exactly those answers, with a fixed message. They are
//! recognised by tonic's messages: our own `INTERNAL` answers never carry them.
//!
//! tonic also decodes any body as gRPC frames whatever its content type (JSON then fails as a
//! frame with a "compression flag" of `{`); a request that is not `application/grpc` is
//! answered HTTP 415, as the gRPC-over-HTTP/2 protocol says, before it reaches any service.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::{Code, Status};
use tower::{Layer, Service};

/// The beginnings of the messages tonic gives its decode failures (tonic 0.14, tonic-prost).
const DECODE_FAILURES: [&str; 5] = [
    "failed to decode Protobuf message",
    "Missing request message",
    "Unexpected EOF decoding stream",
    "protocol error: received message with",
    "Error decompressing",
];

const ANSWER: &str = "the request is not a well-formed gRPC message of the method's request type";

#[derive(Clone, Copy, Default)]
pub struct WireErrorsLayer;

impl<S> Layer<S> for WireErrorsLayer {
    type Service = WireErrors<S>;
    fn layer(&self, inner: S) -> WireErrors<S> {
        WireErrors { inner }
    }
}

#[derive(Clone)]
pub struct WireErrors<S> {
    inner: S,
}

/// Whether an answer's headers carry one of tonic's decode failures.
fn is_decode_failure(headers: &http::HeaderMap) -> bool {
    Status::from_header_map(headers).is_some_and(|status| {
        status.code() == Code::Internal
            && DECODE_FAILURES
                .iter()
                .any(|prefix| status.message().starts_with(prefix))
    })
}

/// Replaces a decode failure (a trailers-only answer: the status is in the headers) by
/// `INVALID_ARGUMENT` with a fixed message.
fn rewrite(headers: &mut http::HeaderMap) {
    if !is_decode_failure(headers) {
        return;
    }
    headers.remove("grpc-status-details-bin");
    let replacement = Status::invalid_argument(ANSWER).into_http::<()>();
    for name in ["grpc-status", "grpc-message"] {
        match replacement.headers().get(name) {
            Some(value) => headers.insert(name, value.clone()),
            None => headers.remove(name),
        };
    }
}

fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for WireErrors<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        if !is_grpc(request.headers()) {
            let mut response = Status::invalid_argument("content-type must be application/grpc")
                .into_http::<ResBody>();
            *response.status_mut() = http::StatusCode::UNSUPPORTED_MEDIA_TYPE;
            return Box::pin(async move { Ok(response) });
        }
        let answer = self.inner.call(request);
        Box::pin(async move {
            let mut response = answer.await?;
            rewrite(response.headers_mut());
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_of(status: Status) -> http::HeaderMap {
        status.into_http::<()>().headers().clone()
    }

    #[test]
    fn a_protobuf_decode_failure_becomes_invalid_argument_without_its_text() {
        let mut headers = headers_of(Status::internal(
            "failed to decode Protobuf message: LookupChildRequest.nhs_number: invalid wire type",
        ));
        rewrite(&mut headers);
        let status = Status::from_header_map(&headers).unwrap();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), ANSWER);
    }

    #[test]
    fn every_tonic_decode_failure_is_rewritten() {
        for prefix in DECODE_FAILURES {
            let mut headers = headers_of(Status::internal(format!("{prefix} and more")));
            rewrite(&mut headers);
            assert_eq!(
                Status::from_header_map(&headers).unwrap().code(),
                Code::InvalidArgument,
                "{prefix}"
            );
        }
    }

    #[test]
    fn our_own_internal_errors_and_other_codes_pass_unchanged() {
        for status in [
            Status::internal("internal error (reference 1-2)"),
            Status::unavailable("failed to decode Protobuf message"),
            Status::ok(""),
        ] {
            let before = headers_of(status);
            let mut after = before.clone();
            rewrite(&mut after);
            assert_eq!(before, after);
        }
    }
}
