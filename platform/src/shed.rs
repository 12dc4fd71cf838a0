//! Load shedding: past a fixed number of calls in flight, a new call is refused at once with
//! `RESOURCE_EXHAUSTED` instead of queueing until every caller times out. Health and
//! reflection are never shed, so probes keep seeing the truth under load. Notification watches
//! do not draw on this capacity either: a watch lasts hours, and the gateway bounds watches
//! with limits of their own (in all and per organisation), so open watches can never take
//! the permits lookups need. The permits in use are the gauge `cpis_calls_in_flight`.

use crate::error::Error;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

/// The ErrorInfo reason of a call shed because the server is at capacity.
pub const OVERLOADED: &str = "OVERLOADED";

#[derive(Clone)]
pub struct ShedLayer {
    permits: Arc<Semaphore>,
    in_flight: crate::metrics::IntGauge,
}

impl ShedLayer {
    pub fn new(component: &str, max_in_flight: usize) -> Self {
        ShedLayer {
            permits: Arc::new(Semaphore::new(max_in_flight)),
            in_flight: crate::metrics::metrics().calls_in_flight(component),
        }
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;
    fn layer(&self, inner: S) -> Shed<S> {
        Shed {
            inner,
            permits: self.permits.clone(),
            in_flight: self.in_flight.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Shed<S> {
    inner: S,
    permits: Arc<Semaphore>,
    in_flight: crate::metrics::IntGauge,
}

fn exempt(path: &str) -> bool {
    crate::server::is_probe(path) || path.ends_with("/WatchNotifications")
}

/// A permit, counted in `cpis_calls_in_flight` while it is held.
struct Permit {
    _permit: OwnedSemaphorePermit,
    in_flight: crate::metrics::IntGauge,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.in_flight.dec();
    }
}

/// Keeps the permit until the response body is done, so streams count while they stream.
pub struct Held<B> {
    body: B,
    _permit: Option<Permit>,
}

impl<B: http_body::Body + Unpin> http_body::Body for Held<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl<S, ReqBody> Service<http::Request<ReqBody>> for Shed<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let permit = if exempt(request.uri().path()) {
            None
        } else {
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    self.in_flight.inc();
                    Some(Permit {
                        _permit: permit,
                        in_flight: self.in_flight.clone(),
                    })
                }
                Err(_) => {
                    let status = tonic::Status::from(Error::ResourceExhausted {
                        reason: OVERLOADED,
                        message: "the server is at capacity; retry with backoff".into(),
                    });
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            }
        };
        let mut inner = crate::server::take_ready(&mut self.inner);
        Box::pin(async move {
            let response = inner.call(request).await?;
            Ok(response.map(|body| {
                tonic::body::Body::new(Held {
                    body,
                    _permit: permit,
                })
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::ServiceExt;

    #[derive(Clone)]
    struct Slow(Arc<tokio::sync::Notify>);

    impl Service<http::Request<()>> for Slow {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
        >;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let gate = self.0.clone();
            Box::pin(async move {
                gate.notified().await;
                Ok(http::Response::new(tonic::body::Body::empty()))
            })
        }
    }

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    fn grpc_status(response: &http::Response<tonic::body::Body>) -> Option<String> {
        response
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned())
    }

    #[tokio::test]
    async fn calls_beyond_the_limit_are_refused_at_once_with_resource_exhausted() {
        let gate = Arc::new(tokio::sync::Notify::new());
        let service = ShedLayer::new("test", 1).layer(Slow(gate.clone()));
        let first = tokio::spawn(
            service
                .clone()
                .oneshot(request("/cpis.gateway.v1.ChildProtection/LookupChild")),
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;

        let shed = service
            .clone()
            .oneshot(request("/cpis.gateway.v1.ChildProtection/LookupChild"))
            .await
            .unwrap();
        assert_eq!(
            grpc_status(&shed).as_deref(),
            Some("8"),
            "RESOURCE_EXHAUSTED is code 8"
        );

        // Health is never shed: probes must keep seeing the truth under load. (It waits on
        // the same slow service here, so only check it was admitted.)
        let health = tokio::spawn(
            service
                .clone()
                .oneshot(request("/grpc.health.v1.Health/Check")),
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(
            !health.is_finished(),
            "health was refused instead of admitted"
        );

        gate.notify_waiters();
        let first = first.await.unwrap().unwrap();
        assert_eq!(grpc_status(&first), None);
        // The permit is held until the response body is dropped; then calls are admitted again.
        drop(first);
        let again =
            tokio::spawn(service.oneshot(request("/cpis.gateway.v1.ChildProtection/LookupChild")));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(
            !again.is_finished(),
            "a call was shed after capacity came back"
        );
        gate.notify_waiters();
        let _ = health.await;
        assert_eq!(grpc_status(&again.await.unwrap().unwrap()), None);
    }
}
