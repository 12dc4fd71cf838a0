//! Connections to the three backends, and the watcher that keeps the gateway's readiness
//! honest: it serves only while access-service and flag-service answer, since without them
//! no lookup can be answered safely (rule 1).

use cpis_proto::access::access_control_client::AccessControlClient;
use cpis_proto::attendance::attendance_log_client::AttendanceLogClient;
use cpis_proto::flag::flag_registry_client::FlagRegistryClient;
use platform::error::{Error, Result};
use platform::health::Readiness;
use platform::shutdown::Shutdown;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

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
/// are followed; HTTP/2 would otherwise pin all calls to one pod.
fn channel(name: &'static str, url: &str) -> Result<Channel> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| Error::FailedPrecondition(format!("{name} URL {url:?}: {e}")))?;
    let scheme = uri.scheme_str().unwrap_or("http").to_owned();
    let host = uri
        .host()
        .ok_or_else(|| Error::FailedPrecondition(format!("{name} URL {url:?} has no host")))?
        .to_owned();
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    endpoint(name, url)?; // the URL itself must be valid
    let (channel, changes) = Channel::balance_channel::<(SocketAddr, usize)>(64);
    tokio::spawn(async move {
        let mut current: HashSet<SocketAddr> = HashSet::new();
        loop {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            match tokio::net::lookup_host((host, port)).await {
                Ok(found) => {
                    let found: HashSet<SocketAddr> = found.collect();
                    for gone in current.difference(&found) {
                        for i in 0..CONNECTIONS_PER_ADDRESS {
                            let _ = changes.send(Change::Remove((*gone, i))).await;
                        }
                    }
                    for new in found.difference(&current) {
                        let Ok(ep) = endpoint(name, &format!("{scheme}://{new}")) else {
                            continue;
                        };
                        for i in 0..CONNECTIONS_PER_ADDRESS {
                            if changes
                                .send(Change::Insert((*new, i), ep.clone()))
                                .await
                                .is_err()
                            {
                                return; // the channel is gone
                            }
                        }
                    }
                    if found != current {
                        tracing::info!(
                            backend = name,
                            addresses = found.len(),
                            "backend addresses changed"
                        );
                    }
                    current = found;
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
    pub fn connect(flag_url: &str, attendance_url: &str, access_url: &str) -> Result<Self> {
        Ok(Backends {
            flag: channel("flag-service", flag_url)?,
            attendance: channel("attendance-service", attendance_url)?,
            access: channel("access-service", access_url)?,
        })
    }

    pub fn flag(&self) -> FlagRegistryClient<Channel> {
        FlagRegistryClient::new(self.flag.clone())
    }

    pub fn attendance(&self) -> AttendanceLogClient<Channel> {
        AttendanceLogClient::new(self.attendance.clone())
    }

    pub fn access(&self) -> AccessControlClient<Channel> {
        AccessControlClient::new(self.access.clone())
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
