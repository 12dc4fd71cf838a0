//! `cpis dev`: the four services in one process, seen from outside as a stock gRPC client
//! sees them (health and reflection).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cpis_cli::dev::{self, DevArgs};
use platform::shutdown::Shutdown;
use std::collections::BTreeSet;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const PUBLIC_SERVICES: [&str; 4] = [
    "cpis.gateway.v1.ChildProtection",
    "cpis.gateway.v1.LocalAuthority",
    "cpis.gateway.v1.Audit",
    "cpis.gateway.v1.Administration",
];

async fn listed_services(addr: std::net::SocketAddr) -> BTreeSet<String> {
    let mut client = ServerReflectionClient::new(common::channel(addr).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer: {other:?}"),
    }
}

/// Whether reflection describes `symbol` (a fully qualified message or service name).
async fn describes(addr: std::net::SocketAddr, symbol: &str) -> bool {
    let mut client = ServerReflectionClient::new(common::channel(addr).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(symbol.into())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    // An unknown symbol is an error response, or an error status, depending on the server.
    match stream.message().await {
        Ok(Some(response)) => matches!(
            response.message_response,
            Some(MessageResponse::FileDescriptorResponse(_))
        ),
        _ => false,
    }
}

fn args(dir: &std::path::Path) -> DevArgs {
    DevArgs {
        data_dir: dir.to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        demo: false,
        tls_cert: None,
        tls_key: None,
        tls_client_ca: None,
    }
}

#[tokio::test]
async fn cpis_dev_serves_health_and_every_public_service_by_reflection() {
    let dir = tempfile::tempdir().unwrap();
    let (trigger, shutdown) = Shutdown::new();
    let system = dev::start(&args(dir.path()), shutdown).await.unwrap();
    let addr = system.gateway_addr;

    common::wait_for_health(addr, "", ServingStatus::Serving).await;
    common::wait_for_health(addr, "backends", ServingStatus::Serving).await;
    for service in PUBLIC_SERVICES {
        common::wait_for_health(addr, service, ServingStatus::Serving).await;
    }
    let listed = listed_services(addr).await;
    for service in PUBLIC_SERVICES.iter().chain(&[
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ]) {
        assert!(
            listed.contains(*service),
            "reflection does not list {service}: {listed:?}"
        );
    }
    assert!(
        !listed
            .iter()
            .any(|s| s.starts_with("cpis.flag.") || s.starts_with("cpis.access.")),
        "the gateway must not advertise internal APIs: {listed:?}"
    );
    assert!(describes(addr, "cpis.gateway.v1.LookupChildRequest").await);
    for internal in ["cpis.access.v1.Principal", "cpis.flag.v1.FlagRegistry"] {
        assert!(
            !describes(addr, internal).await,
            "the public gateway's reflection describes {internal}"
        );
    }

    // The development key and its JWKS are created in the data directory.
    assert!(dir.path().join("jwks.json").exists());
    assert!(dir.path().join("dev-signing-key.pem").exists());

    trigger.fire();
    for (name, running) in system.components {
        running
            .wait()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[tokio::test]
async fn a_lookup_without_a_valid_token_is_unauthenticated() {
    use cpis_proto::gateway::child_protection_client::ChildProtectionClient;
    let dir = tempfile::tempdir().unwrap();
    let (trigger, shutdown) = Shutdown::new();
    let system = dev::start(&args(dir.path()), shutdown).await.unwrap();
    common::wait_for_health(system.gateway_addr, "", ServingStatus::Serving).await;
    common::wait_for_health(system.gateway_addr, "backends", ServingStatus::Serving).await;
    let mut client = ChildProtectionClient::new(common::channel(system.gateway_addr).await);
    let status = client
        .lookup_child(cpis_proto::gateway::LookupChildRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    let mut request = tonic::Request::new(cpis_proto::gateway::LookupChildRequest::default());
    request
        .metadata_mut()
        .insert("authorization", "Bearer not.a.token".parse().unwrap());
    let status = client.lookup_child(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    trigger.fire();
    for (_, running) in system.components {
        running.wait().await.unwrap();
    }
}

/// The TCP sockets this process listens on, by port (from `/proc`: sockets this process owns
/// that the kernel lists in state LISTEN).
fn listening_ports() -> Vec<u16> {
    let owned: std::collections::HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address, state (0A = LISTEN), inode
            if cols.len() > 9 && cols[3] == "0A" && owned.contains(cols[9]) {
                let port = cols[1].rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

#[tokio::test]
async fn cpis_dev_internal_hops_open_no_port_another_process_could_reach() {
    let dir = tempfile::tempdir().unwrap();
    let (trigger, shutdown) = Shutdown::new();
    let system = dev::start(&args(dir.path()), shutdown).await.unwrap();
    common::wait_for_health(system.gateway_addr, "", ServingStatus::Serving).await;
    common::wait_for_health(system.gateway_addr, "backends", ServingStatus::Serving).await;
    // A lookup goes through all three backends.
    let mut client = cpis_proto::gateway::child_protection_client::ChildProtectionClient::new(
        common::channel(system.gateway_addr).await,
    );
    let _ = client
        .lookup_child(cpis_proto::gateway::LookupChildRequest::default())
        .await;
    assert_eq!(
        listening_ports(),
        [system.gateway_addr.port()],
        "only the gateway listens"
    );
    for (name, running) in &system.components {
        if *name != "gateway" {
            assert_eq!(running.addr, platform::server::IN_PROCESS_ADDR, "{name}");
        }
    }
    trigger.fire();
    for (name, running) in system.components {
        running
            .wait()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
