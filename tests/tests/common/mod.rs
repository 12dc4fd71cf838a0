//! Shared by the cross-service tests: finding the service binaries, free ports, waiting for
//! health.

#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

pub mod infra;

pub use cpis_tests::{binary, certs, free_port, system};

use std::net::SocketAddr;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

pub async fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy()
}

pub async fn health(addr: SocketAddr, service: &str) -> Option<ServingStatus> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect()
        .await
        .ok()?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .ok()?;
    Some(response.into_inner().status())
}

/// Waits (up to 20 s) until `service` on `addr` reports `want`.
pub async fn wait_for_health(addr: SocketAddr, service: &str, want: ServingStatus) {
    for _ in 0..200 {
        if health(addr, service).await == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{addr} never reported {want:?} for {service:?}");
}
