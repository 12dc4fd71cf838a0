//! Serving, one way for every service: its own gRPC services plus health and reflection (v1
//! and v1alpha), optional TLS, an optional plaintext health port for kubelet probes, and a
//! graceful stop bounded by the grace period.

use crate::error::{Error, Result};
use crate::health::Readiness;
use crate::shutdown::Shutdown;
use crate::tls::ServerTls;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::HealthService;

/// What one process serves.
#[derive(Clone)]
pub struct ServeConfig {
    /// The binary's name, for logs (`flag-service`).
    pub name: &'static str,
    /// Fully qualified gRPC service names: health reports them, reflection lists them.
    pub services: Vec<&'static str>,
    pub grace: Duration,
    pub tls: Option<ServerTls>,
    pub health_listen: Option<SocketAddr>,
    /// Calls in flight past which new ones are shed with `RESOURCE_EXHAUSTED`.
    pub max_in_flight: usize,
    /// Who may cost this server anything, checked from the headers before a permit is taken
    /// or the body read ([`crate::admit`]); `None` admits every call.
    pub admit: Option<crate::admit::Admit>,
    /// Per-RPC message sizes and body pace ([`crate::limits`]); `None` leaves calls to the
    /// decode limit alone.
    pub limits: Option<crate::limits::LimitsFor>,
    pub connections: crate::config::ConnectionArgs,
}

/// Largest header block a call may send: tokens and trace context fit many times over.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// Health checks and reflection: always admitted, never shed, limited or traced, so probes
/// and tooling keep seeing the truth under load.
pub fn is_probe(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
}

/// The instance of a tower service that `poll_ready` made ready, leaving a fresh clone in its
/// place for the next call (a clone is not ready until polled itself).
pub(crate) fn take_ready<S: Clone>(ready: &mut S) -> S {
    let clone = ready.clone();
    std::mem::replace(ready, clone)
}

/// Largest message a server accepts: a full upload batch of 5,000 records fits with room.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// A server running in the background.
pub struct Running {
    pub addr: SocketAddr,
    pub task: JoinHandle<Result<()>>,
}

impl Running {
    /// Waits for the server to stop (after its shutdown fired and the drain ended).
    pub async fn wait(self) -> Result<()> {
        self.task
            .await
            .map_err(|e| Error::internal(format!("server task: {e}")))?
    }
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::internal(format!("cannot listen on {addr}: {e}")))
}

/// The descriptors of the files that declare `services`, and of the files they import, so
/// reflection describes what this process serves and nothing else: the public gateway never
/// reveals the internal services or their messages (`cpis.access.v1.Principal`).
pub fn descriptors_for(services: &[&str]) -> Result<Vec<u8>> {
    use prost::Message;
    use std::collections::{BTreeSet, HashMap};
    let all = prost_types::FileDescriptorSet::decode(cpis_proto::FILE_DESCRIPTOR_SET)
        .map_err(|e| Error::internal(format!("descriptor set: {e}")))?;
    let by_name: HashMap<&str, &prost_types::FileDescriptorProto> =
        all.file.iter().map(|f| (f.name(), f)).collect();
    let declares = |f: &prost_types::FileDescriptorProto| {
        f.service
            .iter()
            .any(|s| services.contains(&format!("{}.{}", f.package(), s.name()).as_str()))
    };
    let mut wanted: BTreeSet<&str> = all
        .file
        .iter()
        .filter(|f| declares(f))
        .map(|f| f.name())
        .collect();
    let mut pending: Vec<&str> = wanted.iter().copied().collect();
    while let Some(name) = pending.pop() {
        for dependency in by_name
            .get(name)
            .map(|f| f.dependency.as_slice())
            .unwrap_or(&[])
        {
            if by_name.contains_key(dependency.as_str()) && wanted.insert(dependency) {
                pending.push(dependency);
            }
        }
    }
    let kept = prost_types::FileDescriptorSet {
        file: all
            .file
            .iter()
            .filter(|f| wanted.contains(f.name()))
            .cloned()
            .collect(),
    };
    Ok(kept.encode_to_vec())
}

/// Adds reflection (v1 and v1alpha), listing only what this process serves.
fn with_reflection(routes: Routes, services: &[&'static str]) -> Result<Routes> {
    let descriptors = descriptors_for(services)?;
    let configure = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(&descriptors)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for s in services {
            builder = builder.with_service_name(*s);
        }
        builder
    };
    let v1 = configure()
        .build_v1()
        .map_err(|e| Error::internal(format!("reflection: {e}")))?;
    let v1alpha = configure()
        .build_v1alpha()
        .map_err(|e| Error::internal(format!("reflection: {e}")))?;
    Ok(routes.add_service(v1).add_service(v1alpha))
}

/// Where a server takes its connections from.
pub enum Listen {
    Tcp(TcpListener),
    /// `cpis dev`'s in-memory pair: no port, no socket.
    InProcess(crate::inproc::Accept),
}

/// Where a server with no network address reports it listens.
pub const IN_PROCESS_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// Starts serving `routes` (plus health and reflection) on `listener` until `shutdown` fires;
/// then reports `NOT_SERVING`, stops accepting, lets calls in flight finish for the grace
/// period and drops whatever is left.
pub async fn spawn(
    config: ServeConfig,
    listener: Listen,
    routes: Routes,
    readiness: Readiness,
    shutdown: Shutdown,
) -> Result<Running> {
    let addr = match &listener {
        Listen::Tcp(l) => l
            .local_addr()
            .map_err(|e| Error::internal(format!("listener address: {e}")))?,
        Listen::InProcess(_) => IN_PROCESS_ADDR,
    };
    let health = HealthServer::new(HealthService::from_health_reporter(readiness.reporter()));
    let all = with_reflection(routes.add_service(health.clone()), &config.services)?;

    let connections = config.connections;
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        // A peer that stops answering pings is gone: its connection is closed.
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .max_concurrent_streams(connections.max_streams_per_connection)
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .max_connection_age(Duration::from_secs(connections.max_connection_age))
        .max_connection_age_grace(config.grace)
        // Outermost: refused and shed calls are traced and counted too; a caller is admitted
        // before it may take a permit; innermost, undecodable requests become
        // INVALID_ARGUMENT before anything else sees them.
        .layer(crate::observe::ObserveLayer::new(config.name))
        .layer(crate::admit::AdmitLayer::new(config.admit.clone()))
        .layer(crate::shed::ShedLayer::new(
            config.name,
            config.max_in_flight,
        ))
        .layer(crate::limits::LimitsLayer::new(
            config.limits.clone(),
            connections.pace(),
        ))
        .layer(crate::wire::WireErrorsLayer);
    let router = builder.add_routes(all);

    if let Some(health_addr) = config.health_listen {
        let health_listener = bind(health_addr).await?;
        let health_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let served = Server::builder()
                .add_service(health)
                .serve_with_incoming_shutdown(
                    TcpListenerStream::new(health_listener),
                    health_shutdown.wait(),
                )
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "health listener stopped");
            }
        });
    }

    tracing::info!(service = config.name, %addr, tls = config.tls.is_some(), "serving");
    let name = config.name;
    let grace = config.grace;
    let incoming = match listener {
        Listen::Tcp(l) => crate::tls::incoming(l, config.tls, shutdown.clone()),
        Listen::InProcess(accept) => accept.incoming().ok_or_else(|| {
            Error::internal("the in-process connections were already taken by another server")
        })?,
    };
    let task = tokio::spawn(async move {
        let stop_accepting = {
            let shutdown = shutdown.clone();
            let readiness = readiness.clone();
            async move {
                shutdown.wait().await;
                readiness.stopping().await;
                tracing::info!(service = name, "not serving; draining calls in flight");
            }
        };
        let serve = router.serve_with_incoming_shutdown(incoming, stop_accepting);
        tokio::pin!(serve);
        tokio::select! {
            result = &mut serve => result.map_err(|e| Error::internal(format!("server: {e}"))),
            _ = async { shutdown.wait().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(service = name, "grace period over; closing the connections left");
                Ok(())
            }
        }
    });
    Ok(Running { addr, task })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use prost::Message;

    #[test]
    fn the_public_descriptors_hold_the_public_api_and_nothing_internal() {
        let bytes = descriptors_for(&[cpis_proto::service_names::CHILD_PROTECTION]).unwrap();
        let set = prost_types::FileDescriptorSet::decode(bytes.as_slice()).unwrap();
        let packages: Vec<&str> = set.file.iter().map(|f| f.package()).collect();
        assert!(packages.contains(&"cpis.gateway.v1"));
        assert!(
            packages.iter().all(|p| !p.starts_with("cpis.access")
                && !p.starts_with("cpis.flag")
                && !p.starts_with("cpis.attendance")),
            "{packages:?}"
        );
    }
}
