//! Keys from the identity provider: the real gateway against a real local HTTPS identity
//! provider started by each test (OpenID Connect discovery and a JWKS whose keys the test
//! rotates, stops and counts the fetches of). Tokens are signed by the development signing
//! helpers (`cpis_cli::token::sign`) with keys each test makes, so they follow the claims the
//! gateway expects.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::certs::{Ca, Pem};
use common::free_port;
use common::system::{Options, System};
use cpis_cli::devkeys::{self, DevKeys};
use cpis_proto::gateway as pb;
use pb::child_protection_client::ChildProtectionClient;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::{AbortHandle, JoinSet};
use tonic::{Code, Request};
use tonic_health::pb::health_check_response::ServingStatus;

/// What the provider serves and how often it was asked.
#[derive(Default)]
struct Served {
    issuer: Mutex<String>,
    jwks: Mutex<String>,
    discoveries: AtomicUsize,
    jwks_fetches: AtomicUsize,
}

/// A small HTTPS identity provider on loopback: `/.well-known/openid-configuration` and
/// `/jwks`, one request per connection.
struct Provider {
    port: u16,
    served: Arc<Served>,
    acceptor: tokio_rustls::TlsAcceptor,
    running: Mutex<Option<AbortHandle>>,
}

impl Provider {
    /// A provider whose certificate `ca` issued (for `localhost`), naming `issuer`, not yet
    /// started.
    fn new(ca: &Ca, dir: &Path, issuer: &str) -> Provider {
        let Pem { cert, key } = ca.server(dir, "identity-provider");
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(&key).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let served = Served::default();
        *served.issuer.lock().unwrap() = issuer.to_owned();
        Provider {
            port: free_port(),
            served: Arc::new(served),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            running: Mutex::new(None),
        }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// Serves exactly these keys from now on.
    fn serve_keys(&self, keys: &[&DevKeys]) {
        let mut all = Vec::new();
        for k in keys {
            let jwks: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&k.jwks_path).unwrap()).unwrap();
            all.extend(jwks["keys"].as_array().unwrap().iter().cloned());
        }
        *self.served.jwks.lock().unwrap() = serde_json::json!({ "keys": all }).to_string();
    }

    fn jwks_fetches(&self) -> usize {
        self.served.jwks_fetches.load(Ordering::SeqCst)
    }

    async fn start(&self) {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], self.port)))
            .await
            .unwrap();
        let (served, acceptor, url) = (self.served.clone(), self.acceptor.clone(), self.url());
        let task = tokio::spawn(async move {
            // Dropped with the task: stopping the provider ends its connections too.
            let mut connections = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (served, acceptor, url) = (served.clone(), acceptor.clone(), url.clone());
                connections.spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        answer(tls, &served, &url).await;
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        });
        *self.running.lock().unwrap() = Some(task.abort_handle());
    }

    /// Stops listening and drops every connection: the provider is down.
    async fn stop(&self) {
        if let Some(task) = self.running.lock().unwrap().take() {
            task.abort();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        if let Some(task) = self.running.lock().unwrap().take() {
            task.abort();
        }
    }
}

async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    served: &Served,
    url: &str,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or_default();
    let (status, body) = match path {
        "/.well-known/openid-configuration" => {
            served.discoveries.fetch_add(1, Ordering::SeqCst);
            let issuer = served.issuer.lock().unwrap().clone();
            let doc = serde_json::json!({"issuer": issuer, "jwks_uri": format!("{url}/jwks")});
            ("200 OK", doc.to_string())
        }
        "/jwks" => {
            served.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            ("200 OK", served.jwks.lock().unwrap().clone())
        }
        _ => ("404 Not Found", "{}".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// A signing key of the test's own, with its JWKS beside it.
fn signing_key(dir: &Path, name: &str) -> DevKeys {
    devkeys::ensure(&dir.join(name)).unwrap()
}

/// The same private key under another `kid`: a token naming a key nobody published.
fn with_kid(keys: &DevKeys, kid: &str) -> DevKeys {
    DevKeys {
        pkcs8: keys.pkcs8.clone(),
        key_id: kid.to_owned(),
        jwks_path: keys.jwks_path.clone(),
    }
}

fn token(keys: &DevKeys, user: &str) -> String {
    cpis_cli::token::sign(
        keys,
        user,
        "RQX",
        "R8000",
        &["B0107".to_owned()],
        Duration::from_secs(3600),
    )
    .unwrap()
}

fn lookup(token: &str) -> Request<pb::LookupChildRequest> {
    let mut request = Request::new(pb::LookupChildRequest {
        nhs_number: "9434765919".into(),
        access_kind: pb::AccessKind::Unscheduled.into(),
        setting: Some(pb::Setting {
            ods_code: "RQX01".into(),
            setting_type: pb::SettingType::EmergencyDepartment.into(),
        }),
        request_id: String::new(),
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request.set_timeout(Duration::from_secs(10));
    request
}

/// The code a lookup with `token` is answered with.
async fn answer_to(sys: &System, token: &str) -> Code {
    match ChildProtectionClient::new(sys.channel())
        .lookup_child(lookup(token))
        .await
    {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// The token got past authentication: whatever access-service decides for a trust that was
/// never onboarded, it is neither UNAUTHENTICATED nor the gateway's UNAVAILABLE.
fn accepted(code: Code) -> bool {
    !matches!(code, Code::Unauthenticated | Code::Unavailable)
}

fn env(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// The gateway's environment for keys from `provider` (trusted through `CPIS_OIDC_CA_FILE`),
/// with `more`.
fn through(provider: &Provider, ca_file: &Path, more: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut pairs = vec![
        ("CPIS_OIDC_ISSUER", provider.url()),
        ("CPIS_OIDC_CA_FILE", ca_file.display().to_string()),
    ];
    pairs.extend(more.iter().map(|(k, v)| (*k, v.to_string())));
    env(&pairs)
}

async fn start_system(extra: Vec<(String, String)>, wait_for_gateway: bool) -> System {
    System::start_with(
        Options {
            postgres: false,
            wait_for_gateway,
            ..Options::default()
        },
        move |name| {
            if name == "gateway" {
                extra.clone()
            } else {
                Vec::new()
            }
        },
    )
    .await
}

/// Waits until the gateway's health answers, and returns it.
async fn health_once_answering(sys: &System) -> ServingStatus {
    for _ in 0..100 {
        if let Some(status) = sys.gateway_health().await {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the gateway never answered health:\n{}", sys.log("gateway"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotated_in_at_the_provider_is_accepted_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("identity provider CA");
    let ca_file = ca.write(dir.path(), "idp-ca");
    let provider = Provider::new(&ca, dir.path(), devkeys::ISSUER);
    let (old, new) = (
        signing_key(dir.path(), "old"),
        signing_key(dir.path(), "new"),
    );
    provider.serve_keys(&[&old]);
    provider.start().await;
    let sys = start_system(
        through(
            &provider,
            &ca_file,
            &[("CPIS_JWKS_MIN_REFRESH_SECONDS", "1")],
        ),
        true,
    )
    .await;
    let pid = sys.pid("gateway");
    assert!(accepted(answer_to(&sys, &token(&old, "dr.old")).await));
    let refused = answer_to(&sys, &token(&new, "dr.new")).await;
    assert_eq!(refused, Code::Unauthenticated, "a key not yet published");

    // The provider rotates: the new key in, the old one out.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    provider.serve_keys(&[&new]);
    let code = answer_to(&sys, &token(&new, "dr.new2")).await;
    assert!(
        accepted(code),
        "the first token of the rotated-in key: {code:?}\n{}",
        sys.log("gateway")
    );
    assert_eq!(sys.pid("gateway"), pid, "no restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_keys_keep_working_while_the_provider_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("identity provider CA");
    let ca_file = ca.write(dir.path(), "idp-ca");
    let provider = Provider::new(&ca, dir.path(), devkeys::ISSUER);
    let key = signing_key(dir.path(), "key");
    provider.serve_keys(&[&key]);
    provider.start().await;
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics_listen = metrics.to_string();
    let sys = start_system(
        through(
            &provider,
            &ca_file,
            &[
                ("CPIS_JWKS_MIN_REFRESH_SECONDS", "1"),
                ("CPIS_JWKS_REFRESH_SECONDS", "1"),
                ("CPIS_METRICS_LISTEN", &metrics_listen),
            ],
        ),
        true,
    )
    .await;
    assert!(accepted(answer_to(&sys, &token(&key, "dr.before")).await));

    provider.stop().await;
    // Periodic fetches fail meanwhile (every second or two).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let code = answer_to(&sys, &token(&key, "dr.during")).await;
    assert!(
        accepted(code),
        "a known key while the provider is down: {code:?}"
    );
    let scrape = cpis_tests::metrics::scrape(metrics).await;
    let failed =
        cpis_tests::metrics::value(&scrape, "cpis_jwks_fetches_total", &[("outcome", "failed")]);
    assert!(failed >= 1.0, "no failed fetch counted:\n{scrape}");
    assert!(
        cpis_tests::metrics::value(&scrape, "cpis_jwks_last_success_timestamp_seconds", &[]) > 0.0,
        "{scrape}"
    );
    assert!(
        sys.log("gateway").contains("keeping the last good keys"),
        "no log line says the keys were kept:\n{}",
        sys.log("gateway")
    );
    // A token naming an unknown key is refused, promptly, rather than held.
    let started = Instant::now();
    let unknown = answer_to(&sys, &token(&with_kid(&key, "nobody"), "dr.x")).await;
    assert_eq!(unknown, Code::Unauthenticated);
    assert!(started.elapsed() < Duration::from_secs(8));

    // Back, with a new key: served without a restart.
    let newer = signing_key(dir.path(), "newer");
    provider.serve_keys(&[&key, &newer]);
    provider.start().await;
    let mut code = Code::Unknown;
    for _ in 0..20 {
        code = answer_to(&sys, &token(&newer, "dr.after")).await;
        if accepted(code) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(accepted(code), "after the provider came back: {code:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_fetches_at_once_and_a_flood_of_them_fetches_a_handful() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("identity provider CA");
    let ca_file = ca.write(dir.path(), "idp-ca");
    let provider = Provider::new(&ca, dir.path(), devkeys::ISSUER);
    let (first, second) = (
        signing_key(dir.path(), "first"),
        signing_key(dir.path(), "second"),
    );
    provider.serve_keys(&[&first]);
    provider.start().await;
    const MIN_INTERVAL: Duration = Duration::from_secs(2);
    let sys = start_system(
        through(
            &provider,
            &ca_file,
            &[
                ("CPIS_JWKS_MIN_REFRESH_SECONDS", "2"),
                ("CPIS_JWKS_REFRESH_SECONDS", "300"),
            ],
        ),
        true,
    )
    .await;
    assert!(accepted(answer_to(&sys, &token(&first, "dr.first")).await));

    // One new kid: fetched at once (the periodic refresh is five minutes away).
    tokio::time::sleep(MIN_INTERVAL + Duration::from_millis(200)).await;
    provider.serve_keys(&[&first, &second]);
    let before = provider.jwks_fetches();
    let started = Instant::now();
    let code = answer_to(&sys, &token(&second, "dr.second")).await;
    assert!(accepted(code), "{code:?}\n{}", sys.log("gateway"));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(provider.jwks_fetches(), before + 1, "one fetch, at once");

    // A thousand invented kids, arriving once a fetch is allowed again: the first asks for
    // one, the rest share it or are refused at once.
    tokio::time::sleep(MIN_INTERVAL + Duration::from_millis(200)).await;
    let tokens: Vec<String> = (0..1000)
        .map(|i| {
            token(
                &with_kid(&first, &format!("invented-{i}-{}", uuid_ish(i))),
                "dr.flood",
            )
        })
        .collect();
    let before = provider.jwks_fetches();
    let started = Instant::now();
    let channel = sys.channel();
    let mut calls = JoinSet::new();
    for chunk in tokens.chunks(50) {
        let (chunk, channel) = (chunk.to_vec(), channel.clone());
        calls.spawn(async move {
            let mut codes = Vec::new();
            for t in chunk {
                let answer = ChildProtectionClient::new(channel.clone())
                    .lookup_child(lookup(&t))
                    .await;
                codes.push(answer.err().map(|s| s.code()));
            }
            codes
        });
    }
    let mut codes = Vec::new();
    while let Some(done) = calls.join_next().await {
        codes.extend(done.unwrap());
    }
    let elapsed = started.elapsed();
    assert!(
        codes.iter().all(|c| *c == Some(Code::Unauthenticated)),
        "every invented kid is refused"
    );
    let fetches = provider.jwks_fetches() - before;
    let bound = 2 + (elapsed.as_secs_f64() / MIN_INTERVAL.as_secs_f64()).ceil() as usize;
    assert!(
        (1..=bound.min(5)).contains(&fetches),
        "{fetches} fetches for 1,000 unknown kids in {elapsed:?}"
    );
    // The known keys are untouched by it.
    assert!(accepted(answer_to(&sys, &token(&second, "dr.after")).await));
}

/// A distinct, unguessable-looking suffix (no randomness needed: kids only have to differ).
fn uuid_ish(i: usize) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &i.to_be_bytes());
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_is_not_serving_until_its_first_key_set_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("identity provider CA");
    let ca_file = ca.write(dir.path(), "idp-ca");
    let provider = Provider::new(&ca, dir.path(), devkeys::ISSUER);
    let key = signing_key(dir.path(), "key");
    provider.serve_keys(&[&key]);
    // The provider is not started: the gateway waits for it (a second here), then serves.
    let sys = start_system(
        through(
            &provider,
            &ca_file,
            &[
                ("CPIS_JWKS_START_WAIT_SECONDS", "1"),
                ("CPIS_JWKS_MIN_REFRESH_SECONDS", "1"),
            ],
        ),
        false,
    )
    .await;
    assert_eq!(health_once_answering(&sys).await, ServingStatus::NotServing);
    let code = answer_to(&sys, &token(&key, "dr.early")).await;
    assert_eq!(
        code,
        Code::Unavailable,
        "no keys yet is this pod unable to serve, not the user unauthenticated"
    );

    provider.start().await;
    let mut status = None;
    for _ in 0..100 {
        status = sys.gateway_health().await;
        if status == Some(ServingStatus::Serving) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status,
        Some(ServingStatus::Serving),
        "{}",
        sys.log("gateway")
    );
    assert!(accepted(answer_to(&sys, &token(&key, "dr.later")).await));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_naming_another_issuer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("identity provider CA");
    let ca_file = ca.write(dir.path(), "idp-ca");
    let provider = Provider::new(&ca, dir.path(), "https://someone-else.example");
    let key = signing_key(dir.path(), "key");
    provider.serve_keys(&[&key]);
    provider.start().await;
    let mut sys = start_system(through(&provider, &ca_file, &[]), false).await;
    let status = sys.wait_exit("gateway");
    assert!(
        !status.success(),
        "the gateway started with another issuer's keys"
    );
    let log = sys.log("gateway");
    assert!(
        log.contains("names the issuer") && log.contains("someone-else.example"),
        "{log}"
    );
    assert_eq!(
        provider.jwks_fetches(),
        0,
        "another issuer's keys were fetched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_providers_certificate_is_checked_against_the_system_roots_from_ssl_cert_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("identity provider CA");
    let ca_file = ca.write(dir.path(), "idp-ca");
    let stranger = Ca::new("a CA nobody asked for").write(dir.path(), "stranger-ca");
    let provider = Provider::new(&ca, dir.path(), devkeys::ISSUER);
    let key = signing_key(dir.path(), "key");
    provider.serve_keys(&[&key]);
    provider.start().await;
    // No CPIS_OIDC_CA_FILE: only the system's roots, which SSL_CERT_FILE names.
    let extra = env(&[
        ("CPIS_OIDC_ISSUER", provider.url()),
        ("SSL_CERT_FILE", stranger.display().to_string()),
        ("CPIS_JWKS_START_WAIT_SECONDS", "1".into()),
    ]);
    let mut sys = start_system(extra, false).await;
    assert_eq!(
        health_once_answering(&sys).await,
        ServingStatus::NotServing,
        "a provider whose CA the system does not trust"
    );
    assert!(
        sys.log("gateway").contains("UnknownIssuer"),
        "{}",
        sys.log("gateway")
    );
    assert_eq!(provider.jwks_fetches(), 0);

    sys.set_env("gateway", "SSL_CERT_FILE", &ca_file.display().to_string());
    sys.restart("gateway").await;
    assert!(accepted(answer_to(&sys, &token(&key, "dr.trusted")).await));
}
