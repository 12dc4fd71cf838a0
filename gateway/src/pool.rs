//! Balancing over a backend's endpoints, each judged on its own. A call goes to the next
//! eligible endpoint in turn; an endpoint is eligible while its own health says `SERVING` (a
//! draining pod stops getting new calls before it goes) and no call to it has failed at the
//! transport since its last good probe. A call that fails at the transport ejects its endpoint
//! before the failure is returned, so the gateway's retry goes to another one, never back to
//! the one that just failed; a prober checks every endpoint each second and takes an ejected
//! one back once it answers `SERVING`. tonic's own balanced channel cannot do this: its lazy
//! endpoints report ready while holding their connection error, so a dead pod kept getting
//! calls, and retries went back through the same choice.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::transport::Channel;
use tower::Service;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How often every endpoint's health is checked.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the pool knows of one endpoint's health.
#[derive(Debug)]
pub struct Health {
    /// Its last probe said SERVING (or none has run yet).
    serving: AtomicBool,
    /// A call to it failed at the transport since its last good probe.
    ejected: AtomicBool,
}

impl Health {
    fn new() -> Arc<Health> {
        Arc::new(Health {
            serving: AtomicBool::new(true),
            ejected: AtomicBool::new(false),
        })
    }

    pub fn eligible(&self) -> bool {
        self.serving.load(Ordering::Acquire) && !self.ejected.load(Ordering::Acquire)
    }

    fn eject(&self) {
        self.ejected.store(true, Ordering::Release);
    }

    fn probed(&self, serving: bool) {
        self.serving.store(serving, Ordering::Release);
        if serving {
            self.ejected.store(false, Ordering::Release);
        }
    }
}

/// One endpoint (a pod's address): its connections and its health.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// A few connections: HTTP/2 multiplexes calls over one, but several spread the load
    /// over the backend's cores and survive one connection's reset.
    channels: Vec<Channel>,
    next: Arc<AtomicUsize>,
    health: Arc<Health>,
}

impl Endpoint {
    pub fn new(addr: SocketAddr, channels: Vec<Channel>) -> Self {
        Endpoint {
            addr,
            channels,
            next: Arc::new(AtomicUsize::new(0)),
            health: Health::new(),
        }
    }

    /// The same endpoint over new connections (a rotated certificate), keeping its health.
    pub fn reconnected(&self, channels: Vec<Channel>) -> Self {
        Endpoint {
            channels,
            ..self.clone()
        }
    }

    fn channel(&self) -> Option<Channel> {
        if self.channels.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        self.channels.get(i).cloned()
    }
}

/// The endpoints of one backend, as a tower service tonic clients call through.
#[derive(Clone)]
pub struct Pool {
    name: &'static str,
    endpoints: Arc<RwLock<Arc<Vec<Endpoint>>>>,
    next: Arc<AtomicUsize>,
}

impl Pool {
    /// An empty pool, filled by [`Pool::set`], whose prober runs until the pool is dropped.
    pub fn new(name: &'static str) -> Self {
        let pool = Pool {
            name,
            endpoints: Arc::new(RwLock::new(Arc::new(Vec::new()))),
            next: Arc::new(AtomicUsize::new(0)),
        };
        tokio::spawn(probe(Arc::downgrade(&pool.endpoints)));
        pool
    }

    /// A pool of one endpoint over `channel` (an in-process pair).
    pub fn single(name: &'static str, channel: Channel) -> Self {
        let pool = Pool::new(name);
        pool.set(vec![Endpoint::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            vec![channel],
        )]);
        pool
    }

    /// Replaces the endpoints (the resolver's latest answer).
    pub fn set(&self, endpoints: Vec<Endpoint>) {
        if let Ok(mut current) = self.endpoints.write() {
            *current = Arc::new(endpoints);
        }
    }

    /// The endpoints as they stand.
    pub fn endpoints(&self) -> Arc<Vec<Endpoint>> {
        self.endpoints.read().map(|e| e.clone()).unwrap_or_default()
    }

    /// Whether some endpoint is eligible for calls.
    pub fn up(&self) -> bool {
        self.endpoints().iter().any(|e| e.health.eligible())
    }

    /// The next eligible endpoint in turn; when none is, the next one anyway, so a call fails
    /// fast with its error instead of waiting for an endpoint.
    fn pick(&self) -> Option<(Channel, Arc<Health>)> {
        let endpoints = self.endpoints();
        let n = endpoints.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let chosen = (0..n)
            .map(|i| &endpoints[(start + i) % n])
            .find(|e| e.health.eligible())
            .unwrap_or(&endpoints[start % n]);
        chosen.channel().map(|c| (c, chosen.health.clone()))
    }
}

impl Service<http::Request<tonic::body::Body>> for Pool {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each call waits for its own endpoint's connection.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let picked = self.pick();
        let name = self.name;
        Box::pin(async move {
            let Some((mut channel, health)) = picked else {
                return Err(format!("no address of {name} is known yet").into());
            };
            let answer = async {
                std::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
                channel.call(request).await
            }
            .await;
            answer.map_err(|e| {
                // Before the error is returned: the retry must pick another endpoint.
                health.eject();
                BoxError::from(e)
            })
        })
    }
}

/// Checks every endpoint's health each second while the pool lives.
async fn probe(endpoints: std::sync::Weak<RwLock<Arc<Vec<Endpoint>>>>) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let Some(current) = endpoints.upgrade() else {
            return;
        };
        let snapshot = current.read().map(|e| e.clone()).unwrap_or_default();
        drop(current);
        let mut checks = tokio::task::JoinSet::new();
        for endpoint in snapshot.iter().cloned() {
            checks.spawn(async move {
                let Some(channel) = endpoint.channel() else {
                    return;
                };
                let mut request = tonic::Request::new(HealthCheckRequest::default());
                request.set_timeout(PROBE_TIMEOUT);
                let answer =
                    tokio::time::timeout(PROBE_TIMEOUT, HealthClient::new(channel).check(request))
                        .await;
                let serving = matches!(
                    answer,
                    Ok(Ok(r)) if r.get_ref().status() == ServingStatus::Serving
                );
                endpoint.health.probed(serving);
            });
        }
        while checks.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lazy(port: u16) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .map(|e| e.connect_lazy())
            .unwrap_or_else(|_| unreachable!())
    }

    #[tokio::test]
    async fn calls_go_round_the_eligible_endpoints_and_skip_an_ejected_one() {
        let pool = Pool::new("test");
        let a = Endpoint::new(SocketAddr::from(([127, 0, 0, 1], 1)), vec![lazy(1)]);
        let b = Endpoint::new(SocketAddr::from(([127, 0, 0, 1], 2)), vec![lazy(2)]);
        pool.set(vec![a.clone(), b.clone()]);
        let picks: Vec<bool> = (0..4)
            .map(|_| Arc::ptr_eq(&pool.pick().unwrap().1, &a.health))
            .collect();
        assert_eq!(picks, [true, false, true, false], "in turn");
        a.health.eject();
        assert!(
            (0..4).all(|_| Arc::ptr_eq(&pool.pick().unwrap().1, &b.health)),
            "an ejected endpoint gets no call"
        );
        a.health.probed(true);
        b.health.probed(false);
        assert!(
            (0..4).all(|_| Arc::ptr_eq(&pool.pick().unwrap().1, &a.health)),
            "a good probe takes it back; a NOT_SERVING one (draining) gets no call"
        );
        a.health.eject();
        assert!(
            pool.pick().is_some(),
            "with none eligible, one is still tried"
        );
        assert!(!pool.up());
    }
}
