//! Connections to the three backends, and the monitor that reports how they answer. Their
//! health is never the gateway's readiness: a backend blip must not take gateways out of the
//! load balancer, since each call already answers `UNAVAILABLE` with RetryInfo (fail closed,
//! rule 1) while a backend is away; it goes to the `cpis_dependency_up` gauge, the logs and
//! the informational health entry [`BACKENDS_HEALTH`].

use crate::calls::{self, RetryBudget};
use crate::deadline::Deadline;
use crate::pool::{Endpoint as PoolEndpoint, Pool};
use cpis_proto::access::Principal;
use cpis_proto::access::access_control_client::AccessControlClient;
use cpis_proto::attendance::attendance_log_client::AttendanceLogClient;
use cpis_proto::flag::flag_registry_client::FlagRegistryClient;
use platform::error::{Error, Result};
use platform::shutdown::Shutdown;
use platform::tls::ClientFiles;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

/// A backend channel whose every call is a client span (its context sent as `traceparent`)
/// and a `cpis_backend_*` measurement. The readiness watcher uses the bare channels: its
/// health checks every few seconds are neither traced nor counted.
pub type Traced = platform::observe::ClientTelemetry<Pool>;

/// One backend as the gateway calls it: its name (for errors, logs and metrics), its client,
/// its share of each caller's deadline and its retry budget (one budget shared by the three
/// backends, as before, so retries stay a fraction of all calls). Every call to a backend (lookups,
/// streams, obligations, the reconciler) goes through [`Backend::call`] or, for streams,
/// [`Backend::request`] and [`Backend::error`], so each failure is mapped once.
#[derive(Clone)]
pub struct Backend<C> {
    name: &'static str,
    client: C,
    /// The endpoints, judged one by one (what the monitor reports).
    channel: Pool,
    retries: Arc<RetryBudget>,
}

impl<C: Clone> Backend<C> {
    fn new(
        name: &'static str,
        channel: Pool,
        client: impl FnOnce(Traced) -> C,
        retries: &Arc<RetryBudget>,
    ) -> Self {
        Backend {
            name,
            client: client(Traced::new(channel.clone(), name)),
            channel,
            retries: retries.clone(),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// A request bounded by the caller's deadline (less the margin to answer), carrying the
    /// principal if any. A stream without a deadline runs until either side ends it.
    pub fn request<T>(
        &self,
        message: T,
        principal: Option<&Principal>,
        deadline: Option<&Deadline>,
    ) -> Result<Request<T>> {
        let mut request = Request::new(message);
        if let Some(deadline) = deadline {
            request.set_timeout(deadline.for_backend()?);
        }
        if let Some(p) = principal {
            platform::principal::attach(request.metadata_mut(), p);
        }
        Ok(request)
    }

    /// The client, for a streaming call built with [`Backend::request`].
    pub fn client(&self) -> C {
        self.client.clone()
    }

    /// What the caller sees when this backend failed.
    pub fn error(&self, status: Status) -> Error {
        calls::backend_error(self.name, status)
    }

    /// One unary call: the deadline (sent as `grpc-timeout` and enforced here too, since a
    /// backend with no reachable address would otherwise hold the call forever), the
    /// principal, and retries of `UNAVAILABLE` within the deadline and the retry budget.
    pub async fn call<Req, Resp, F, Fut>(
        &self,
        message: Req,
        principal: Option<&Principal>,
        deadline: &Deadline,
        f: F,
    ) -> Result<Resp>
    where
        Req: Clone,
        F: Fn(C, Request<Req>) -> Fut,
        Fut: Future<Output = std::result::Result<Response<Resp>, Status>>,
    {
        calls::with_retry(&self.retries, deadline, || {
            let attempt = deadline.for_backend().map(|budget| {
                let mut request = Request::new(message.clone());
                request.set_timeout(budget);
                if let Some(p) = principal {
                    platform::principal::attach(request.metadata_mut(), p);
                }
                (budget, f(self.client.clone(), request))
            });
            let name = self.name;
            async move {
                let (budget, call) = attempt.map_err(Status::from)?;
                match tokio::time::timeout(budget, call).await {
                    Ok(answer) => answer,
                    Err(_) => Err(Status::deadline_exceeded(format!(
                        "{name} did not answer in time"
                    ))),
                }
            }
        })
        .await
        .map(Response::into_inner)
        .map_err(|s| self.error(s))
    }
}

const FLAG: &str = "flag-service";
const ATTENDANCE: &str = "attendance-service";
const ACCESS: &str = "access-service";

/// The largest answer a backend may send the gateway: a GetFlags answer for one number holds
/// at most 10 episodes of each of 3 types from each LA (about 1 MB for all 152), an
/// attendance summary 25 attendances; both fit many times over.
const MAX_INTERNAL_ANSWER_BYTES: usize = platform::server::MAX_MESSAGE_BYTES;

fn flag_client(t: Traced) -> FlagRegistryClient<Traced> {
    FlagRegistryClient::new(t).max_decoding_message_size(MAX_INTERNAL_ANSWER_BYTES)
}

fn attendance_client(t: Traced) -> AttendanceLogClient<Traced> {
    AttendanceLogClient::new(t).max_decoding_message_size(MAX_INTERNAL_ANSWER_BYTES)
}

fn access_client(t: Traced) -> AccessControlClient<Traced> {
    AccessControlClient::new(t).max_decoding_message_size(MAX_INTERNAL_ANSWER_BYTES)
}

/// The three backends.
#[derive(Clone)]
pub struct Backends {
    pub flag: Backend<FlagRegistryClient<Traced>>,
    pub attendance: Backend<AttendanceLogClient<Traced>>,
    pub access: Backend<AccessControlClient<Traced>>,
}

/// Connections kept to each backend address: HTTP/2 multiplexes calls over one, but a few
/// spread the load over the backend's cores and survive one connection's reset.
const CONNECTIONS_PER_ADDRESS: usize = 2;
const RESOLVE_EVERY: Duration = Duration::from_secs(5);

fn endpoint(name: &str, url: &str) -> Result<Endpoint> {
    Ok(Endpoint::from_shared(url.to_owned())
        .map_err(|e| Error::FailedPrecondition(format!("{name} URL {url:?}: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_while_idle(true))
}

/// One configured backend URL: how to reach it.
struct Target {
    scheme: String,
    host: String,
    port: u16,
}

fn target(name: &str, url: &str, tls: bool) -> Result<Target> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| Error::FailedPrecondition(format!("{name} URL {url:?}: {e}")))?;
    let scheme = uri.scheme_str().unwrap_or("http").to_owned();
    let host = uri
        .host()
        .ok_or_else(|| Error::FailedPrecondition(format!("{name} URL {url:?} has no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    if (scheme == "https") != tls {
        return Err(Error::FailedPrecondition(format!(
            "{name} URL {url:?}: use https:// with --tls-internal-ca (mTLS), http:// without"
        )));
    }
    Ok(Target { scheme, host, port })
}

/// A pool over every address the backend's URLs resolve to (a headless Kubernetes Service
/// lists each pod; several comma-separated URLs name static endpoints), re-resolved every few
/// seconds so pods that come and go are followed, each address judged on its own
/// ([`crate::pool`]). With `tls`, each connection is mTLS with the current internal
/// certificate: when the files change, new connections replace the old ones (calls in flight
/// finish on theirs).
fn channel(name: &'static str, urls: &str, tls: Option<ClientFiles>) -> Result<Pool> {
    let targets = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| target(name, u, tls.is_some()))
        .collect::<Result<Vec<_>>>()?;
    if targets.is_empty() {
        return Err(Error::FailedPrecondition(format!("{name} URL is empty")));
    }
    // The internal certificate as last read (a bad one at start stops the gateway).
    let mut certs = tls.as_ref().map(ClientFiles::watch).transpose()?;
    let make = move |target: &Target,
                     addr: SocketAddr,
                     tls: Option<&platform::tls::ClientTls>|
          -> Result<Vec<Channel>> {
        let ep = endpoint(name, &format!("{}://{addr}", target.scheme))?;
        let ep = match tls {
            Some(tls) => ep
                .tls_config(tls.config(&target.host))
                .map_err(|e| Error::FailedPrecondition(format!("{name} TLS: {e}")))?,
            None => ep,
        };
        Ok((0..CONNECTIONS_PER_ADDRESS)
            .map(|_| ep.connect_lazy())
            .collect())
    };
    let pool = Pool::new(name);
    let resolved = pool.clone();
    tokio::spawn(async move {
        let pool = resolved;
        loop {
            let rotated = certs
                .as_mut()
                .is_some_and(|c| c.has_changed().unwrap_or(false));
            let tls = certs.as_ref().map(|c| c.borrow().clone());
            let mut found: Vec<(usize, SocketAddr)> = Vec::new();
            let mut resolved_all = true;
            for (i, t) in targets.iter().enumerate() {
                match tokio::net::lookup_host((t.host.as_str(), t.port)).await {
                    Ok(addrs) => found.extend(addrs.map(|a| (i, a))),
                    Err(e) => {
                        resolved_all = false;
                        tracing::warn!(backend = name, error = %e, "cannot resolve backend; keeping the addresses known");
                    }
                }
            }
            found.sort();
            found.dedup_by_key(|(_, a)| *a);
            let current = pool.endpoints();
            let known: Vec<SocketAddr> = current.iter().map(|e| e.addr).collect();
            let wanted: Vec<SocketAddr> = found.iter().map(|(_, a)| *a).collect();
            let changed = resolved_all && known != wanted;
            if changed || rotated {
                // Build the new endpoints first: a half-written certificate keeps the old ones.
                let next: Result<Vec<PoolEndpoint>> = found
                    .iter()
                    .map(|(i, addr)| {
                        let old = current.iter().find(|e| e.addr == *addr);
                        match old {
                            Some(old) if !rotated => Ok(old.clone()),
                            Some(old) => {
                                Ok(old.reconnected(make(&targets[*i], *addr, tls.as_deref())?))
                            }
                            None => Ok(PoolEndpoint::new(
                                *addr,
                                make(&targets[*i], *addr, tls.as_deref())?,
                            )),
                        }
                    })
                    .collect();
                match next {
                    Ok(next) => {
                        if changed {
                            tracing::info!(
                                backend = name,
                                addresses = next.len(),
                                "backend addresses changed"
                            );
                        }
                        if rotated {
                            tracing::info!(
                                backend = name,
                                "internal certificate changed: new connections use it"
                            );
                            if let Some(c) = certs.as_mut() {
                                c.mark_unchanged();
                            }
                        }
                        pool.set(next);
                    }
                    Err(e) => {
                        tracing::warn!(backend = name, error = %e, "cannot build a backend connection; keeping the old ones");
                    }
                }
            }
            let pause = if pool.endpoints().is_empty() {
                Duration::from_millis(500)
            } else {
                RESOLVE_EVERY
            };
            tokio::time::sleep(pause).await;
        }
    });
    Ok(pool)
}

impl Backends {
    /// Backends in this process, over in-process pairs (`cpis dev`).
    pub fn in_process(pairs: &crate::InProcessBackends) -> Self {
        let retries = Arc::new(RetryBudget::default());
        Backends {
            flag: Backend::new(
                FLAG,
                Pool::single(FLAG, pairs.flag.channel()),
                flag_client,
                &retries,
            ),
            attendance: Backend::new(
                ATTENDANCE,
                Pool::single(ATTENDANCE, pairs.attendance.channel()),
                attendance_client,
                &retries,
            ),
            access: Backend::new(
                ACCESS,
                Pool::single(ACCESS, pairs.access.channel()),
                access_client,
                &retries,
            ),
        }
    }

    /// Lazy connections: the gateway starts (NOT_SERVING) while its backends are still down.
    pub fn connect(
        flag_url: &str,
        attendance_url: &str,
        access_url: &str,
        tls: Option<ClientFiles>,
    ) -> Result<Self> {
        let retries = Arc::new(RetryBudget::default());
        Ok(Backends {
            flag: Backend::new(
                FLAG,
                channel(FLAG, flag_url, tls.clone())?,
                flag_client,
                &retries,
            ),
            attendance: Backend::new(
                ATTENDANCE,
                channel(ATTENDANCE, attendance_url, tls.clone())?,
                attendance_client,
                &retries,
            ),
            access: Backend::new(
                ACCESS,
                channel(ACCESS, access_url, tls)?,
                access_client,
                &retries,
            ),
        })
    }
}

/// A health entry (not a gRPC service) that says `SERVING` while access-service and
/// flag-service answer the gateway: for operators and tests, never for readiness probes,
/// which ask for `""`.
pub const BACKENDS_HEALTH: &str = "backends";

/// Reports, every few seconds, whether each backend answers: the `cpis_dependency_up` gauges,
/// a log line at each change, and [`BACKENDS_HEALTH`]. Ends at shutdown.
pub async fn monitor(
    backends: Backends,
    reporter: tonic_health::server::HealthReporter,
    shutdown: Shutdown,
) {
    let metrics = platform::metrics::metrics();
    let gauges = [ACCESS, FLAG, ATTENDANCE].map(|b| metrics.dependency_up(crate::NAME, b));
    let mut was = None;
    loop {
        // Each endpoint is probed by its pool; a backend answers while one of them is eligible.
        let (access, flag, attendance) = (
            backends.access.channel.up(),
            backends.flag.channel.up(),
            backends.attendance.channel.up(),
        );
        for (gauge, up) in gauges.iter().zip([access, flag, attendance]) {
            gauge.set(i64::from(up));
        }
        let now = (access, flag, attendance);
        if was != Some(now) {
            if access && flag {
                tracing::info!(attendance, "access-service and flag-service answer");
            } else {
                tracing::warn!(
                    access,
                    flag,
                    attendance,
                    "a required backend does not answer: lookups get UNAVAILABLE until it does"
                );
            }
            let status = if access && flag {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            reporter.set_service_status(BACKENDS_HEALTH, status).await;
            was = Some(now);
        }
        let pause = if access && flag {
            Duration::from_secs(2)
        } else {
            Duration::from_millis(300)
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.wait() => return,
        }
    }
}
