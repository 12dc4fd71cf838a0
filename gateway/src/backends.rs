//! Connections to the three backends, and the watcher that keeps the gateway's readiness
//! honest: it serves only while access-service and flag-service answer, since without them
//! no lookup can be answered safely (rule 1).

use cpis_proto::access::access_control_client::AccessControlClient;
use cpis_proto::attendance::attendance_log_client::AttendanceLogClient;
use cpis_proto::flag::flag_registry_client::FlagRegistryClient;
use platform::error::{Error, Result};
use platform::health::Readiness;
use platform::shutdown::Shutdown;
use platform::tls::ClientFiles;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A backend channel whose every call is a client span (its context sent as `traceparent`)
/// and a `cpis_backend_*` measurement. The readiness watcher uses the bare channels: its
/// health checks every few seconds are neither traced nor counted.
pub type Traced = platform::observe::ClientTelemetry<Channel>;

#[derive(Clone)]
pub struct Backends {
    pub flag: Channel,
    pub attendance: Channel,
    pub access: Channel,
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

/// A channel that spreads calls over every address `url`'s host resolves to (a headless
/// Kubernetes Service lists each pod), re-resolved every few seconds so pods that come and go
/// are followed; HTTP/2 would otherwise pin all calls to one pod. With `tls`, each connection
/// is mTLS with the current internal certificate: when the files change, new connections
/// replace the old ones (calls in flight finish on theirs).
fn channel(name: &'static str, url: &str, tls: Option<ClientFiles>) -> Result<Channel> {
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
    if (scheme == "https") != tls.is_some() {
        return Err(Error::FailedPrecondition(format!(
            "{name} URL {url:?}: use https:// with --tls-internal-ca (mTLS), http:// without"
        )));
    }
    let tls_files = tls.clone();
    let make = {
        let host = host.clone();
        move |addr: SocketAddr| -> Result<Endpoint> {
            let ep = endpoint(name, &format!("{scheme}://{addr}"))?;
            match &tls {
                Some(files) => ep
                    .tls_config(files.client_config(&host)?)
                    .map_err(|e| Error::FailedPrecondition(format!("{name} TLS: {e}"))),
                None => Ok(ep),
            }
        }
    };
    let (channel, changes) = Channel::balance_channel::<(SocketAddr, usize, u64)>(64);
    tokio::spawn(async move {
        let mut current: HashSet<SocketAddr> = HashSet::new();
        let mut generation = 0u64;
        let mut certs = tls_files.as_ref().map(ClientFiles::fingerprint);
        loop {
            let now_certs = tls_files.as_ref().map(ClientFiles::fingerprint);
            let rotated = now_certs != certs;
            match tokio::net::lookup_host((host.as_str(), port)).await {
                Ok(found) => {
                    let found: HashSet<SocketAddr> = found.collect();
                    let next_generation = if rotated { generation + 1 } else { generation };
                    // Build the new endpoints first: a half-written certificate keeps the old ones.
                    let mut inserts = Vec::new();
                    let mut ok = true;
                    for addr in found.iter().filter(|a| rotated || !current.contains(a)) {
                        match make(*addr) {
                            Ok(ep) => inserts.push((*addr, ep)),
                            Err(e) => {
                                tracing::warn!(backend = name, error = %e, "cannot build a backend connection; keeping the old ones");
                                ok = false;
                                break;
                            }
                        }
                    }
                    if ok {
                        for (addr, ep) in inserts {
                            for i in 0..CONNECTIONS_PER_ADDRESS {
                                if changes
                                    .send(Change::Insert((addr, i, next_generation), ep.clone()))
                                    .await
                                    .is_err()
                                {
                                    return; // the channel is gone
                                }
                            }
                        }
                        for addr in current.iter().filter(|a| rotated || !found.contains(a)) {
                            for i in 0..CONNECTIONS_PER_ADDRESS {
                                let _ = changes.send(Change::Remove((*addr, i, generation))).await;
                            }
                        }
                        if rotated {
                            tracing::info!(
                                backend = name,
                                "internal certificate changed: new connections use it"
                            );
                            certs = now_certs;
                        }
                        if found != current {
                            tracing::info!(
                                backend = name,
                                addresses = found.len(),
                                "backend addresses changed"
                            );
                        }
                        generation = next_generation;
                        current = found;
                    }
                }
                Err(e) => {
                    tracing::warn!(backend = name, error = %e, "cannot resolve backend; keeping the addresses known")
                }
            }
            let pause = if current.is_empty() {
                Duration::from_millis(500)
            } else {
                RESOLVE_EVERY
            };
            tokio::time::sleep(pause).await;
        }
    });
    Ok(channel)
}

impl Backends {
    /// Lazy connections: the gateway starts (NOT_SERVING) while its backends are still down.
    pub fn connect(
        flag_url: &str,
        attendance_url: &str,
        access_url: &str,
        tls: Option<ClientFiles>,
    ) -> Result<Self> {
        Ok(Backends {
            flag: channel("flag-service", flag_url, tls.clone())?,
            attendance: channel("attendance-service", attendance_url, tls.clone())?,
            access: channel("access-service", access_url, tls)?,
        })
    }

    pub fn flag(&self) -> FlagRegistryClient<Traced> {
        FlagRegistryClient::new(Traced::new(self.flag.clone(), "flag-service"))
    }

    pub fn attendance(&self) -> AttendanceLogClient<Traced> {
        AttendanceLogClient::new(Traced::new(self.attendance.clone(), "attendance-service"))
    }

    pub fn access(&self) -> AccessControlClient<Traced> {
        AccessControlClient::new(Traced::new(self.access.clone(), "access-service"))
    }
}

async fn serving(channel: &Channel) -> bool {
    let mut client = HealthClient::new(channel.clone());
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request.set_timeout(Duration::from_secs(1));
    matches!(
        client.check(request).await.map(|r| r.into_inner().status()),
        Ok(ServingStatus::Serving)
    )
}

/// Keeps the gateway `SERVING` exactly while access-service and flag-service are.
pub async fn watch(backends: Backends, readiness: Readiness, shutdown: Shutdown) {
    let mut was = None;
    loop {
        let (access, flag) = tokio::join!(serving(&backends.access), serving(&backends.flag));
        let ready = access && flag;
        if was != Some(ready) {
            if ready {
                tracing::info!("access-service and flag-service answer: serving");
            } else {
                tracing::warn!(
                    access,
                    flag,
                    "a required backend is not serving: NOT_SERVING"
                );
            }
            was = Some(ready);
        }
        readiness.set_dependency_ready(ready).await;
        let pause = if ready {
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
