//! Admission: who may cost this server anything. A server that authenticates its callers
//! checks them here, from the headers alone, before a load-shedding permit is taken and
//! before a byte of the body is read: a caller without a valid credential is refused at once
//! and costs nothing (ARCHITECTURE.md rule 6). Health and reflection are always admitted, so
//! probes and tooling keep working.

use crate::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// Decides from a call's headers and connection (its extensions carry
/// [`crate::tls::PeerInfo`]); may leave what it verified in the extensions for the handler.
pub type Admit = Arc<dyn Fn(&http::HeaderMap, &mut http::Extensions) -> Verdict + Send + Sync>;

/// What admission decided.
pub enum Verdict {
    /// Decided from the headers alone (almost every call).
    Now(Result<(), Error>),
    /// Decided once something the decision needs has arrived (the gateway waiting, briefly,
    /// for the identity provider's keys when a token names a key it has not seen). Meanwhile
    /// the body waits unread and no load-shedding permit is held; the extensions the future
    /// yields are added to the call's.
    Later(Pin<Box<dyn Future<Output = Result<http::Extensions, Error>> + Send>>),
}

impl From<Result<(), Error>> for Verdict {
    fn from(decided: Result<(), Error>) -> Self {
        Verdict::Now(decided)
    }
}

#[derive(Clone)]
pub struct AdmitLayer {
    admit: Option<Admit>,
}

impl AdmitLayer {
    /// `None` admits every call (backends: their peers are authenticated by mTLS).
    pub fn new(admit: Option<Admit>) -> Self {
        AdmitLayer { admit }
    }
}

impl<S> Layer<S> for AdmitLayer {
    type Service = Admission<S>;
    fn layer(&self, inner: S) -> Admission<S> {
        Admission {
            inner,
            admit: self.admit.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    admit: Option<Admit>,
}

impl<S, ReqBody> Service<http::Request<ReqBody>> for Admission<S>
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

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let refuse = |e: Error, body: ReqBody| {
            // The body is dropped unread: nothing buffered, nothing reserved.
            drop(body);
            tonic::Status::from(e).into_http()
        };
        if let Some(admit) = &self.admit
            && !crate::server::is_probe(request.uri().path())
        {
            let (mut parts, body) = request.into_parts();
            match admit(&parts.headers, &mut parts.extensions) {
                Verdict::Now(Ok(())) => request = http::Request::from_parts(parts, body),
                Verdict::Now(Err(e)) => {
                    let refused = refuse(e, body);
                    return Box::pin(async move { Ok(refused) });
                }
                Verdict::Later(decision) => {
                    // The inner service is called (and takes its permit) only once admitted.
                    let mut inner = crate::server::take_ready(&mut self.inner);
                    return Box::pin(async move {
                        match decision.await {
                            Ok(extensions) => {
                                parts.extensions.extend(extensions);
                                inner.call(http::Request::from_parts(parts, body)).await
                            }
                            Err(e) => Ok(refuse(e, body)),
                        }
                    });
                }
            }
        }
        Box::pin(crate::server::take_ready(&mut self.inner).call(request))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::ServiceExt;

    #[derive(Clone)]
    struct Counting(Arc<AtomicUsize>);

    impl Service<http::Request<()>> for Counting {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            self.0.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok(http::Response::new(tonic::body::Body::empty())))
        }
    }

    #[tokio::test]
    async fn a_refused_call_never_reaches_the_service_and_probes_always_do() {
        let reached = Arc::new(AtomicUsize::new(0));
        let admit: Admit = Arc::new(|headers, _| {
            if headers.contains_key("authorization") {
                Verdict::Now(Ok(()))
            } else {
                Verdict::Now(Err(Error::Unauthenticated("no token".into())))
            }
        });
        let service = AdmitLayer::new(Some(admit)).layer(Counting(reached.clone()));
        let call = |path: &str, token: bool| {
            let mut b = http::Request::builder().uri(path);
            if token {
                b = b.header("authorization", "Bearer x");
            }
            service.clone().oneshot(b.body(()).unwrap())
        };
        let refused = call("/cpis.gateway.v1.ChildProtection/LookupChild", false)
            .await
            .unwrap();
        assert_eq!(
            refused.headers().get("grpc-status").unwrap(),
            "16",
            "UNAUTHENTICATED"
        );
        assert_eq!(reached.load(Ordering::SeqCst), 0);
        call("/grpc.health.v1.Health/Check", false).await.unwrap();
        call("/cpis.gateway.v1.ChildProtection/LookupChild", true)
            .await
            .unwrap();
        assert_eq!(reached.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_later_verdict_reaches_the_service_only_if_it_admits() {
        let reached = Arc::new(AtomicUsize::new(0));
        let admit: Admit = Arc::new(|headers, _| {
            let token = headers.contains_key("authorization");
            Verdict::Later(Box::pin(async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                if token {
                    Ok(http::Extensions::new())
                } else {
                    Err(Error::Unauthenticated("no token".into()))
                }
            }))
        });
        let service = AdmitLayer::new(Some(admit)).layer(Counting(reached.clone()));
        let call = |token: bool| {
            let mut b =
                http::Request::builder().uri("/cpis.gateway.v1.ChildProtection/LookupChild");
            if token {
                b = b.header("authorization", "Bearer x");
            }
            service.clone().oneshot(b.body(()).unwrap())
        };
        let refused = call(false).await.unwrap();
        assert_eq!(refused.headers().get("grpc-status").unwrap(), "16");
        assert_eq!(reached.load(Ordering::SeqCst), 0);
        call(true).await.unwrap();
        assert_eq!(reached.load(Ordering::SeqCst), 1);
    }
}
