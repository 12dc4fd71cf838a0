//! What one call may send: a message-size limit per RPC, derived from its fields' maxima, and
//! time limits on the request body, so a caller can hold neither memory nor a permit by
//! sending slowly. Checked as the body streams in, frame by frame, before anything is
//! buffered for decoding:
//! - a message larger than its RPC allows is `RESOURCE_EXHAUSTED` with ErrorInfo reason
//!   `MESSAGE_TOO_LARGE` and no RetryInfo (as gRPC itself answers it), never library text;
//! - a unary request's body must be complete within `CPIS_BODY_TIMEOUT` (10 s);
//! - a client stream (UploadFlags) may pause at most `CPIS_STREAM_MESSAGE_GAP` (30 s) between
//!   messages.
//!
//! A body that breaks a limit ends with that status as its error, which tonic hands to the
//! handler (or answers with) unchanged.

use crate::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tonic::codegen::Bytes;
use tower::{Layer, Service};

/// The ErrorInfo reason of a message over its RPC's limit.
pub const MESSAGE_TOO_LARGE: &str = "MESSAGE_TOO_LARGE";

/// What one RPC may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallLimits {
    /// Largest encoded message.
    pub max_message_bytes: usize,
    /// A client stream (paced per message) rather than one unary message (paced in all).
    pub client_streaming: bool,
}

/// The limits of the RPC at a path (`/cpis.gateway.v1.ChildProtection/LookupChild`).
pub type LimitsFor = Arc<dyn Fn(&str) -> CallLimits + Send + Sync>;

/// How long a body may take (`crate::config::ConnectionArgs::pace`).
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// A unary request's whole body arrives within this.
    pub unary: Duration,
    /// A client stream's next message arrives within this of the last.
    pub gap: Duration,
}

impl Default for Pace {
    fn default() -> Self {
        crate::config::ConnectionArgs::DEFAULT.pace()
    }
}

#[derive(Clone)]
pub struct LimitsLayer {
    limits: Option<LimitsFor>,
    pace: Pace,
}

impl LimitsLayer {
    /// `None`: calls pass unchecked (backends, whose only callers are gateways).
    pub fn new(limits: Option<LimitsFor>, pace: Pace) -> Self {
        LimitsLayer { limits, pace }
    }
}

impl<S> Layer<S> for LimitsLayer {
    type Service = Limited<S>;
    fn layer(&self, inner: S) -> Limited<S> {
        Limited {
            inner,
            limits: self.limits.clone(),
            pace: self.pace,
        }
    }
}

#[derive(Clone)]
pub struct Limited<S> {
    inner: S,
    limits: Option<LimitsFor>,
    pace: Pace,
}

impl<S, B> Service<http::Request<B>> for Limited<S>
where
    S: Service<http::Request<tonic::body::Body>>,
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let limits = self
            .limits
            .as_ref()
            .filter(|_| !crate::server::is_probe(path))
            .map(|limits| limits(path));
        let pace = self.pace;
        self.inner
            .call(request.map(|body| tonic::body::Body::new(LimitedBody::new(body, limits, pace))))
    }
}

/// A request body checked against its call's limits as it streams.
pub struct LimitedBody<B> {
    inner: B,
    limits: Option<CallLimits>,
    pace: Pace,
    /// Bytes of the current message's 5-byte gRPC prefix seen so far.
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the current message's payload still to come.
    remaining: usize,
    timer: Pin<Box<Sleep>>,
    failed: bool,
    /// The bytes are not gRPC framing (the flag byte is neither 0 nor 1): left to the decoder,
    /// which answers them as malformed input.
    unframed: bool,
}

impl<B> LimitedBody<B> {
    fn new(inner: B, limits: Option<CallLimits>, pace: Pace) -> Self {
        let first = match limits {
            Some(l) if l.client_streaming => pace.gap,
            _ => pace.unary,
        };
        LimitedBody {
            inner,
            limits,
            pace,
            prefix: [0; 5],
            prefix_len: 0,
            remaining: 0,
            timer: Box::pin(tokio::time::sleep(first)),
            failed: false,
            unframed: false,
        }
    }

    /// Follows the gRPC framing through `data`; the status to end with if a message is over
    /// the limit.
    fn inspect(&mut self, mut data: &[u8], max: usize) -> Result<(), tonic::Status> {
        while !data.is_empty() && !self.unframed {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len());
                self.remaining -= n;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&data[..n]);
            self.prefix_len += n;
            data = &data[n..];
            if self.prefix_len >= 1 && self.prefix[0] > 1 {
                self.unframed = true;
                return Ok(());
            }
            if self.prefix_len == 5 {
                let length = u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]) as usize;
                self.prefix_len = 0;
                if length > max {
                    return Err(tonic::Status::from(Error::ResourceExhausted {
                        reason: MESSAGE_TOO_LARGE,
                        message: format!(
                            "a message of {length} bytes is larger than this call allows ({max} bytes)"
                        ),
                    }));
                }
                self.remaining = length;
            }
        }
        Ok(())
    }
}

fn boxed(status: tonic::Status) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(status)
}

impl<B> http_body::Body for LimitedBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        let Some(limits) = this.limits else {
            return Pin::new(&mut this.inner).poll_frame(cx).map_err(Into::into);
        };
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Err(status) = this.inspect(data, limits.max_message_bytes) {
                        this.failed = true;
                        return Poll::Ready(Some(Err(boxed(status))));
                    }
                    if limits.client_streaming {
                        // Paced per message: each one's arrival restarts the clock.
                        let next = Instant::now() + this.pace.gap;
                        this.timer.as_mut().reset(next);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.failed = true;
                    let why = if limits.client_streaming {
                        "the stream's next message did not arrive in time"
                    } else {
                        "the request did not arrive in time"
                    };
                    Poll::Ready(Some(Err(boxed(tonic::Status::deadline_exceeded(why)))))
                }
                Poll::Pending => Poll::Pending,
            },
            other => other.map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::BodyExt;
    use tonic_types::StatusExt;

    fn framed(len: usize) -> Bytes {
        let mut v = vec![0u8];
        v.extend_from_slice(&(len as u32).to_be_bytes());
        v.extend(std::iter::repeat_n(7u8, len));
        v.into()
    }

    fn limits(max: usize, client_streaming: bool) -> Option<CallLimits> {
        Some(CallLimits {
            max_message_bytes: max,
            client_streaming,
        })
    }

    #[tokio::test]
    async fn a_message_over_its_calls_limit_is_message_too_large() {
        let body = http_body_util::Full::new(framed(100));
        let limited = LimitedBody::new(body, limits(64, false), Pace::default());
        let e = limited.collect().await.err().unwrap();
        let status = e.downcast::<tonic::Status>().unwrap();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.get_details_error_info().unwrap().reason,
            MESSAGE_TOO_LARGE
        );
        assert!(status.get_details_retry_info().is_none());
    }

    #[tokio::test]
    async fn bytes_that_are_no_grpc_frame_are_left_to_the_decoder() {
        let body = http_body_util::Full::new(Bytes::from_static(b"{\"nhs_number\": 1}"));
        let limited = LimitedBody::new(body, limits(4, false), Pace::default());
        assert!(limited.collect().await.is_ok());
    }

    #[tokio::test]
    async fn messages_within_the_limit_pass_whatever_their_chunking() {
        let mut all = framed(10).to_vec();
        all.extend_from_slice(&framed(64));
        let chunks: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = all
            .chunks(3)
            .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let body = http_body_util::StreamBody::new(tokio_stream::iter(chunks));
        let limited = LimitedBody::new(body, limits(64, true), Pace::default());
        let got = limited.collect().await.unwrap().to_bytes();
        assert_eq!(got.len(), all.len());
    }

    #[tokio::test]
    async fn a_body_that_never_completes_ends_in_time() {
        let (_tx, rx) = tokio::sync::mpsc::channel::<
            Result<http_body::Frame<Bytes>, std::convert::Infallible>,
        >(1);
        let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let quick = Pace {
            unary: Duration::from_millis(50),
            gap: Duration::from_millis(50),
        };
        let limited = LimitedBody::new(body, limits(64, false), quick);
        let e = limited.collect().await.err().unwrap();
        let status = e.downcast::<tonic::Status>().unwrap();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    }
}
