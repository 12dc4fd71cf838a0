//! TLS to the gateway: `--ca-cert` for `https://`, and a council system calling with its
//! client certificate (`--client-cert`/`--client-key`) and no token.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use std::path::Path;

struct Pki {
    ca: String,
    server: (String, String),
    system: (String, String),
    stranger: (String, String),
}

const SYSTEM_SAN: &str = "spiffe://council.example/case-management";

fn pki(dir: &Path) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let issue = |name: &str, sans: Vec<SanType>| {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        (
            write(dir, &format!("{name}.crt"), cert.pem()),
            write(dir, &format!("{name}.key"), key.serialize_pem()),
        )
    };
    Pki {
        ca: write(dir, "ca.pem", ca_cert.pem()),
        server: issue(
            "server",
            vec![SanType::IpAddress("127.0.0.1".parse().unwrap())],
        ),
        system: issue("system", vec![SanType::URI(SYSTEM_SAN.try_into().unwrap())]),
        stranger: issue(
            "stranger",
            vec![SanType::URI(
                "spiffe://elsewhere.example/x".try_into().unwrap(),
            )],
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_ca_cert_and_a_council_system_by_client_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let pki = pki(certs.path());
    let (cert, key, ca) = (pki.server.0.clone(), pki.server.1.clone(), pki.ca.clone());
    let dev = Dev::start_with(|a| {
        a.tls_cert = Some(cert.into());
        a.tls_key = Some(key.into());
        a.tls_client_ca = Some(ca.into());
    })
    .await;
    assert!(dev.url.starts_with("https://"));
    let admin = dev.admin();
    let tls = ["--ca-cert", pki.ca.as_str()];

    // The gateway may still be starting: wait for its first answer other than UNAVAILABLE.
    let mut first = None;
    for _ in 0..100 {
        let out = dev
            .cpis(
                &admin,
                &[
                    "org",
                    "upsert",
                    LA,
                    "--name",
                    "Tower Hamlets",
                    "--kind",
                    "la",
                    tls[0],
                    tls[1],
                ],
            )
            .await;
        if out.status != Some(3) {
            first = Some(out);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    first.expect("the gateway never answered").ok();
    dev.cpis(
        &admin,
        &[
            "system", "register", SYSTEM_SAN, "--ods", LA, tls[0], tls[1],
        ],
    )
    .await
    .ok();

    // Without --ca-cert an https gateway is a usage error: nothing is sent.
    let no_ca = dev.cpis(&admin, &["org", "list"]).await;
    no_ca.code(2);
    assert!(no_ca.stderr.contains("--ca-cert"), "{no_ca:?}");

    // The council system: its certificate, no token.
    let as_system = |client: &(String, String)| {
        [
            "flags",
            "list",
            "--json",
            "--gateway",
            dev.url.as_str(),
            "--ca-cert",
            pki.ca.as_str(),
            "--client-cert",
            client.0.as_str(),
            "--client-key",
            client.1.as_str(),
        ]
        .map(String::from)
        .to_vec()
    };
    let listed = run(as_system(&pki.system), dev.data_dir().to_owned()).await;
    assert_eq!(listed.ok().json(), serde_json::json!([]));
    let stranger = run(as_system(&pki.stranger), dev.data_dir().to_owned()).await;
    stranger.code(1);
    assert!(
        stranger.stderr.contains("not authenticated"),
        "{stranger:?}"
    );
    dev.stop().await;
}
