//! Transport security between processes: a backend started with mTLS accepts only clients
//! with a certificate from our CA, refuses the rest at the handshake, and believes forwarded
//! identities only from the gateway's certificate.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::certs::{Ca, GATEWAY_SAN, Pem};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

struct Service {
    child: Child,
    port: u16,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_backend(name: &str, data: &Path, server: &Pem, ca: &Path) -> Service {
    let port = common::free_port();
    let child = Command::new(common::binary(name))
        .env("CPIS_DATA_DIR", data)
        .env("CPIS_LISTEN", format!("127.0.0.1:{port}"))
        .env("CPIS_TLS_CERT", &server.cert)
        .env("CPIS_TLS_KEY", &server.key)
        .env("CPIS_TLS_CLIENT_CA", ca)
        .env("CPIS_GATEWAY_SAN", GATEWAY_SAN)
        .env_remove("CPIS_INSECURE_INTERNAL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Service { child, port }
}

fn tls(ca_pem: &str, identity: Option<&Pem>) -> ClientTlsConfig {
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some(p) = identity {
        config = config.identity(Identity::from_pem(
            std::fs::read(&p.cert).unwrap(),
            std::fs::read(&p.key).unwrap(),
        ));
    }
    config
}

async fn connect(port: u16, config: ClientTlsConfig) -> Result<Channel, String> {
    Endpoint::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(config)
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

/// Health over the TLS connection: Ok when the handshake and the call succeed.
async fn health(port: u16, config: ClientTlsConfig) -> Result<ServingStatus, String> {
    let channel = connect(port, config).await?;
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request.set_timeout(Duration::from_secs(2));
    HealthClient::new(channel)
        .check(request)
        .await
        .map(|r| r.into_inner().status())
        .map_err(|s| format!("{s:?}"))
}

async fn wait_serving(port: u16, config: &ClientTlsConfig) {
    for _ in 0..200 {
        if health(port, config.clone()).await == Ok(ServingStatus::Serving) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never SERVING over mTLS");
}

#[tokio::test]
async fn a_backend_with_mtls_refuses_clients_without_a_certificate_from_our_ca_or_expired() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("cpis internal CA");
    let ca_path = ca.write(dir.path(), "ca");
    let server = ca.server(dir.path(), "flag-service");
    let gateway = ca.gateway(dir.path());
    let service = start_backend("flag-service", dir.path(), &server, &ca_path);

    // The gateway's certificate gets in.
    wait_serving(service.port, &tls(&ca.pem, Some(&gateway))).await;

    // No certificate: refused at the handshake.
    assert!(
        health(service.port, tls(&ca.pem, None)).await.is_err(),
        "a client without a certificate got in"
    );

    // A certificate from another CA: refused.
    let rogue_ca = Ca::new("rogue CA");
    let rogue = rogue_ca.client(dir.path(), "rogue", GATEWAY_SAN);
    assert!(
        health(service.port, tls(&ca.pem, Some(&rogue)))
            .await
            .is_err(),
        "a certificate from another CA got in"
    );

    // An expired certificate from our own CA: refused.
    let expired = ca.expired_client(dir.path(), "expired", GATEWAY_SAN);
    assert!(
        health(service.port, tls(&ca.pem, Some(&expired)))
            .await
            .is_err(),
        "an expired certificate got in"
    );

    // Plain TCP: no answer.
    let plain = Endpoint::from_shared(format!("http://127.0.0.1:{}", service.port))
        .unwrap()
        .connect_timeout(Duration::from_secs(2));
    if let Ok(channel) = plain.connect().await {
        let mut request = tonic::Request::new(HealthCheckRequest {
            service: String::new(),
        });
        request.set_timeout(Duration::from_secs(2));
        assert!(
            HealthClient::new(channel).check(request).await.is_err(),
            "plaintext got an answer"
        );
    }
}

#[tokio::test]
async fn a_rotated_server_certificate_is_served_without_a_restart_and_no_call_fails() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = Ca::new("old CA");
    let new_ca = Ca::new("new CA");
    // Clients trust both CAs during the rotation, as a real rotation would be staged.
    let both = format!("{}{}", old_ca.pem, new_ca.pem);
    let ca_path = dir.path().join("client-ca.pem");
    std::fs::write(&ca_path, &both).unwrap();
    let gateway = old_ca.gateway(dir.path());
    let server = old_ca.server(dir.path(), "attendance-service");
    let service = start_backend("attendance-service", dir.path(), &server, &ca_path);
    wait_serving(service.port, &tls(&both, Some(&gateway))).await;

    // A steady load of new connections while the certificate files are swapped.
    let port = service.port;
    let trust = both.clone();
    let gw = gateway.clone();
    let load = tokio::spawn(async move {
        let mut ok = 0;
        let mut failed = Vec::new();
        for _ in 0..60 {
            match health(port, tls(&trust, Some(&gw))).await {
                Ok(ServingStatus::Serving) => ok += 1,
                other => failed.push(other),
            }
            tokio::time::sleep(Duration::from_millis(80)).await;
        }
        (ok, failed)
    });

    // A connection opened before the rotation carries on after it.
    let open_before = connect(port, tls(&both, Some(&gateway))).await.unwrap();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Kubernetes writes new files then swaps: write beside, then rename over the old ones.
    let rotated = new_ca.server(dir.path(), "attendance-service-new");
    std::fs::rename(&rotated.key, &server.key).unwrap();
    std::fs::rename(&rotated.cert, &server.cert).unwrap();

    let (ok, failed) = load.await.unwrap();
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request.set_timeout(Duration::from_secs(2));
    let still = HealthClient::new(open_before).check(request).await;
    assert!(
        still.is_ok(),
        "a connection opened before the rotation was dropped: {still:?}"
    );
    assert!(
        failed.is_empty(),
        "calls failed during rotation: {failed:?}"
    );
    assert_eq!(ok, 60);

    // Only the new CA is needed now: the new certificate is being served.
    let mut served_new = false;
    for _ in 0..50 {
        if health(port, tls(&new_ca.pem, Some(&gateway))).await == Ok(ServingStatus::Serving) {
            served_new = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(served_new, "the rotated certificate was never served");

    // A broken file keeps the current certificate.
    std::fs::write(
        &server.cert,
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        health(port, tls(&new_ca.pem, Some(&gateway))).await,
        Ok(ServingStatus::Serving)
    );
}

fn call<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// The gateway's own client identity rotates too: once its certificate files change, new
/// connections to the backends present the new certificate, without a restart.
#[tokio::test]
async fn the_gateways_internal_certificate_is_rotated_without_a_restart() {
    use common::system::{Options, System};
    use cpis_proto::gateway as pb;
    let mut sys = System::start(Options {
        postgres: false,
        ..Options::default()
    })
    .await;
    let admin = sys.token("admin", "X26", "R0001", &["CPIS_ADMIN"]);
    let org = pb::UpsertOrganisationRequest {
        ods_code: "RQX".into(),
        name: "Homerton".into(),
        kind: pb::OrganisationKind::Health.into(),
        onboarded: true,
    };
    pb::administration_client::AdministrationClient::new(sys.channel())
        .upsert_organisation(call(&admin, org))
        .await
        .unwrap();
    let lookup = pb::LookupChildRequest {
        nhs_number: "9434765919".into(),
        access_kind: pb::AccessKind::Scheduled.into(),
        setting: Some(pb::Setting {
            ods_code: "RQX01".into(),
            setting_type: pb::SettingType::GpPractice.into(),
        }),
        request_id: String::new(),
    };
    let silent = sys.token("dr.gp", "RQX", "R8000", &["B0170"]);
    let mut client = pb::child_protection_client::ChildProtectionClient::new(sys.channel());
    client
        .lookup_child(call(&silent, lookup.clone()))
        .await
        .unwrap();

    // A new CA, staged as a real rotation is: first every service trusts both CAs (the files
    // are re-read), then the gateway's identity is reissued by the new one.
    let next_ca = Ca::new("next internal CA");
    let dir = sys.data_dir();
    let both = format!("{}{}", sys.ca.pem, next_ca.pem);
    std::fs::write(dir.join("internal-ca.pem"), both).unwrap();
    for backend in ["access-service", "flag-service", "attendance-service"] {
        let mut reloaded = false;
        for _ in 0..100 {
            if sys.log(backend).contains("TLS certificate reloaded") {
                reloaded = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            reloaded,
            "{backend} never re-read its client CA:\n{}",
            sys.log(backend)
        );
    }
    let staging = dir.join("next");
    std::fs::create_dir_all(&staging).unwrap();
    let reissued = next_ca.gateway(&staging);
    std::fs::rename(&reissued.key, dir.join("gateway.key")).unwrap();
    std::fs::rename(&reissued.cert, dir.join("gateway.crt")).unwrap();
    let mut rotated = false;
    for _ in 0..100 {
        if sys.log("gateway").contains("internal certificate changed") {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        rotated,
        "the gateway never noticed its new certificate:\n{}",
        sys.log("gateway")
    );

    // flag-service now trusts only the new CA for its clients, and restarts: only a gateway
    // presenting the new certificate can reach it.
    let only_next = dir.join("flag-client-ca.pem");
    std::fs::write(&only_next, &next_ca.pem).unwrap();
    sys.set_env(
        "flag-service",
        "CPIS_TLS_CLIENT_CA",
        &only_next.display().to_string(),
    );
    sys.restart("flag-service").await;
    let mut client = pb::child_protection_client::ChildProtectionClient::new(sys.channel());
    let answer = client.lookup_child(call(&silent, lookup)).await;
    assert!(
        answer.is_ok(),
        "the gateway did not present its rotated certificate: {answer:?}"
    );
}
