//! Keys from the identity provider: the JSON Web Key Set fetched over HTTPS, from a JWKS URL
//! or through OpenID Connect discovery (`<issuer>/.well-known/openid-configuration`, whose
//! `jwks_uri` is fetched), so the keys of NHS CIS2 reach the gateway without a file copied by
//! hand at every rotation.
//!
//! Why it is shaped this way:
//! - the keys are published the way the file source publishes them (a [`Latest`]), so
//!   verification neither knows nor cares where they came from;
//! - a token naming a `kid` not in the set asks for a fetch at once (a key just rotated in at
//!   the provider), but fetches start at most once per `min_interval` and every asker shares
//!   the fetch in flight: a flood of invented kids costs the provider one fetch per interval;
//! - a failed fetch keeps the last good keys, with a warning and
//!   `cpis_jwks_fetches_total{outcome="failed"}`: the provider being away must not turn every
//!   user away while the keys it last served are still good;
//! - the discovery document must name the issuer the gateway expects (`--token-issuer`): keys
//!   of another issuer are never trusted; at start-up that is a configuration error;
//! - HTTPS only, trusting the system's roots (`SSL_CERT_FILE` and `SSL_CERT_DIR` honoured)
//!   plus an optional CA file, on rustls with aws-lc-rs (the workspace's one provider); each
//!   answer is bounded in size and in time;
//! - one HTTP/1.1 connection per fetch: fetches are minutes apart, and a pool would only keep
//!   connections the provider has long since closed.

use http::Uri;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use platform::error::{Error, Result};
use platform::reload::Latest;
use rustls::pki_types::ServerName;
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// The largest discovery document or key set accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// A fetch (connect, TLS, request, whole answer) that takes longer has failed.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait between fetches while they fail.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Where the keys come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// An OpenID Connect issuer: its discovery document names the key set.
    Issuer(String),
    /// The key set's own URL.
    JwksUrl(String),
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub source: Source,
    /// The issuer discovery must name (`--token-issuer`, the `iss` of every token).
    pub expected_issuer: String,
    /// CA certificates trusted besides the system's (PEM).
    pub ca_file: Option<PathBuf>,
    /// How often the keys are fetched when nothing asks sooner.
    pub refresh_every: Duration,
    /// The least time between two fetches, whatever asks.
    pub min_interval: Duration,
    /// How long start-up waits for the first key set.
    pub start_wait: Duration,
}

/// An `https://` URL with a host.
pub fn https_url(text: &str) -> std::result::Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("{text:?}: only https:// URLs are accepted"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{text:?}: no host"));
    }
    Ok(uri)
}

/// The discovery document's URL for `issuer`.
pub fn discovery_url(issuer: &str) -> std::result::Result<Uri, String> {
    https_url(&format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    ))
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

enum Failure {
    /// The provider is away, slow or answered badly: try again later.
    Transient(String),
    /// The provider names another issuer: a configuration error.
    Misconfigured(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Transient(e) | Failure::Misconfigured(e) => f.write_str(e),
        }
    }
}

struct Fetcher {
    /// The discovery document's URL, or the key set's.
    url: Uri,
    discover: bool,
    expected_issuer: String,
    tls: tokio_rustls::TlsConnector,
}

/// Aborts a spawned task when dropped (a fetch given up on leaves no connection behind).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn client_tls(ca_file: Option<&PathBuf>) -> Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "a system trust root could not be read");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        for cert in platform::tls::read_certs(path)? {
            roots.add(cert).map_err(|e| {
                Error::FailedPrecondition(format!("{}: not a CA certificate: {e}", path.display()))
            })?;
        }
    }
    if roots.is_empty() {
        return Err(Error::FailedPrecondition(
            "no trust roots for the identity provider: none in the system's store and no --oidc-ca-file".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(format!("TLS to the identity provider: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

impl Fetcher {
    fn new(settings: &Settings) -> Result<Self> {
        let (url, discover) = match &settings.source {
            Source::Issuer(issuer) => (discovery_url(issuer), true),
            Source::JwksUrl(url) => (https_url(url), false),
        };
        let url = url.map_err(|e| Error::FailedPrecondition(format!("identity provider: {e}")))?;
        Ok(Fetcher {
            url,
            discover,
            expected_issuer: settings.expected_issuer.clone(),
            tls: client_tls(settings.ca_file.as_ref())?,
        })
    }

    /// The key set's text, through discovery when configured.
    async fn fetch(&self) -> std::result::Result<String, Failure> {
        let jwks = if self.discover {
            let body = self.get(&self.url).await.map_err(Failure::Transient)?;
            let doc: Discovery = serde_json::from_slice(&body).map_err(|e| {
                Failure::Transient(format!("{}: not a discovery document: {e}", self.url))
            })?;
            if doc.issuer != self.expected_issuer {
                return Err(Failure::Misconfigured(format!(
                    "discovery at {} names the issuer {:?}, not {:?} (--token-issuer): its keys are not trusted",
                    self.url, doc.issuer, self.expected_issuer
                )));
            }
            https_url(&doc.jwks_uri)
                .map_err(|e| Failure::Misconfigured(format!("{}: jwks_uri {e}", self.url)))?
        } else {
            self.url.clone()
        };
        let body = self.get(&jwks).await.map_err(Failure::Transient)?;
        String::from_utf8(body)
            .map_err(|_| Failure::Transient(format!("{jwks}: the key set is not UTF-8")))
    }

    async fn get(&self, url: &Uri) -> std::result::Result<Vec<u8>, String> {
        match tokio::time::timeout(FETCH_TIMEOUT, self.get_unbounded(url)).await {
            Ok(answer) => answer.map_err(|e| format!("{url}: {e}")),
            Err(_) => Err(format!(
                "{url}: no whole answer within {}s",
                FETCH_TIMEOUT.as_secs()
            )),
        }
    }

    async fn get_unbounded(&self, url: &Uri) -> std::result::Result<Vec<u8>, String> {
        let host = url.host().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = url.port_u16().unwrap_or(443);
        let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("host: {e}"))?;
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let _connection = AbortOnDrop(tokio::spawn(connection));
        let authority = url.authority().map(|a| a.as_str()).unwrap_or(host);
        let path = url.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let request = http::Request::get(path)
            .header(http::header::HOST, authority)
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        if response.status() != http::StatusCode::OK {
            return Err(format!("answered HTTP {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the answer (at most {MAX_BODY_BYTES} bytes): {e}"))?;
        Ok(body.to_bytes().to_vec())
    }
}

#[derive(Default)]
struct Schedule {
    /// A fetch is running.
    in_flight: bool,
    /// A fetch was asked for and has not started yet.
    requested: bool,
    /// When the last fetch started.
    last_start: Option<Instant>,
}

/// How a verifier asks for the keys to be fetched now: one fetch at a time, at most one per
/// `min_interval`, shared by everyone asking meanwhile.
pub struct Refresher {
    schedule: Mutex<Schedule>,
    wake: Notify,
    /// Counts finished fetches (good or bad), for askers to wait on.
    done: watch::Sender<u64>,
    min_interval: Duration,
}

impl Refresher {
    fn schedule(&self) -> MutexGuard<'_, Schedule> {
        self.schedule
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// For a token naming a key the set lacks: asks for a fetch unless one ran within
    /// `min_interval`. The receiver changes when the fetch in flight (or asked for) ends;
    /// `None` when the keys are too fresh to fetch again, so the token is judged now.
    pub fn ask(&self) -> Option<watch::Receiver<u64>> {
        let mut schedule = self.schedule();
        let done = self.done.subscribe();
        if schedule.in_flight || schedule.requested {
            return Some(done);
        }
        if schedule
            .last_start
            .is_some_and(|t| t.elapsed() < self.min_interval)
        {
            return None;
        }
        schedule.requested = true;
        self.wake.notify_one();
        Some(done)
    }

    fn started(&self) {
        let mut schedule = self.schedule();
        schedule.requested = false;
        schedule.in_flight = true;
        schedule.last_start = Some(Instant::now());
    }

    fn finished(&self) {
        self.schedule().in_flight = false;
        self.done.send_modify(|n| *n = n.wrapping_add(1));
    }
}

type Parse<T> = Arc<dyn Fn(&str) -> std::result::Result<T, String> + Send + Sync>;

/// One fetch, parsed, with the digest of the text (an unchanged set is not republished).
async fn load<T>(
    fetcher: &Fetcher,
    parse: &Parse<T>,
) -> std::result::Result<(Vec<u8>, T), Failure> {
    let text = fetcher.fetch().await?;
    let value = parse(&text).map_err(|e| Failure::Transient(format!("the key set: {e}")))?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    Ok((digest.as_ref().to_vec(), value))
}

/// Fetches the keys now, waiting up to `start_wait` for a first good set (`empty` is
/// published until then), and keeps them fresh in the background. A provider naming another
/// issuer is an error here; one that cannot be reached is not (the caller starts not ready).
pub async fn start<T, P>(
    settings: Settings,
    empty: T,
    parse: P,
) -> Result<(Latest<T>, Arc<Refresher>)>
where
    T: Send + Sync + 'static,
    P: Fn(&str) -> std::result::Result<T, String> + Send + Sync + 'static,
{
    let fetcher = Fetcher::new(&settings)?;
    let parse: Parse<T> = Arc::new(parse);
    let refresher = Arc::new(Refresher {
        schedule: Mutex::new(Schedule::default()),
        wake: Notify::new(),
        done: watch::channel(0).0,
        min_interval: settings.min_interval,
    });
    let deadline = Instant::now() + settings.start_wait;
    let mut retry = Duration::from_millis(250);
    let first = loop {
        refresher.started();
        let loaded = load(&fetcher, &parse).await;
        refresher.finished();
        platform::metrics::metrics().jwks_fetched(loaded.is_ok());
        match loaded {
            Ok(loaded) => break Some(loaded),
            Err(Failure::Misconfigured(e)) => return Err(Error::FailedPrecondition(e)),
            Err(Failure::Transient(e)) => {
                tracing::warn!(error = %e, "the identity provider's keys: not fetched yet");
                if Instant::now() + retry >= deadline {
                    break None;
                }
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(settings.min_interval.max(Duration::from_millis(250)));
            }
        }
    };
    let (seen, value) = match first {
        Some((digest, value)) => {
            tracing::info!(url = %fetcher.url, "the identity provider's keys fetched");
            (Some(digest), value)
        }
        None => (None, empty),
    };
    let (tx, rx) = watch::channel(Arc::new(value));
    tokio::spawn(keep_fresh(
        fetcher,
        parse,
        tx,
        refresher.clone(),
        settings,
        seen,
    ));
    Ok((rx, refresher))
}

async fn keep_fresh<T: Send + Sync + 'static>(
    fetcher: Fetcher,
    parse: Parse<T>,
    tx: watch::Sender<Arc<T>>,
    refresher: Arc<Refresher>,
    settings: Settings,
    mut seen: Option<Vec<u8>>,
) {
    let min_interval = settings.min_interval;
    let mut backoff = min_interval;
    let mut next = Instant::now()
        + if seen.is_some() {
            settings.refresh_every
        } else {
            backoff
        };
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = refresher.wake.notified() => {
                if !refresher.schedule().requested {
                    continue; // a wake-up left from an ask a periodic fetch already served
                }
            }
            _ = tx.closed() => return,
        }
        // At most one fetch per interval, whatever asked for it.
        let last_start = refresher.schedule().last_start;
        if let Some(since) = last_start.map(|t| t.elapsed())
            && since < min_interval
        {
            tokio::time::sleep(min_interval - since).await;
        }
        refresher.started();
        let loaded = load(&fetcher, &parse).await;
        let ok = loaded.is_ok();
        platform::metrics::metrics().jwks_fetched(ok);
        match loaded {
            Ok((digest, value)) => {
                if seen.as_ref() != Some(&digest) {
                    tx.send_replace(Arc::new(value));
                    tracing::info!(url = %fetcher.url, "the identity provider's keys fetched: a new key set");
                    seen = Some(digest);
                }
                backoff = min_interval;
            }
            Err(e) => {
                if seen.is_some() {
                    tracing::warn!(error = %e, "fetching the identity provider's keys failed; keeping the last good keys");
                } else {
                    tracing::warn!(error = %e, "fetching the identity provider's keys failed; still none, user tokens cannot be verified");
                }
                // While the provider is away: retried sooner than the periodic refresh.
                backoff =
                    (backoff * 2).min(MAX_BACKOFF.min(settings.refresh_every).max(min_interval));
            }
        }
        refresher.finished();
        next = Instant::now() + if ok { settings.refresh_every } else { backoff };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_urls_with_a_host_are_accepted() {
        assert!(https_url("https://login.example/jwks").is_ok());
        assert!(https_url("http://login.example/jwks").is_err());
        assert!(https_url("login.example/jwks").is_err());
        assert!(https_url("file:///etc/jwks.json").is_err());
        assert_eq!(
            discovery_url("https://login.example/realm/").unwrap(),
            "https://login.example/realm/.well-known/openid-configuration"
        );
    }

    #[tokio::test]
    async fn askers_share_one_fetch_and_none_is_asked_for_within_the_interval() {
        let refresher = Refresher {
            schedule: Mutex::new(Schedule::default()),
            wake: Notify::new(),
            done: watch::channel(0).0,
            min_interval: Duration::from_secs(10),
        };
        assert!(refresher.ask().is_some(), "nothing fetched yet: ask");
        assert!(refresher.ask().is_some(), "asked already: share it");
        refresher.started();
        let waiting = refresher.ask().expect("in flight: wait for it");
        refresher.finished();
        assert!(waiting.has_changed().unwrap());
        assert!(refresher.ask().is_none(), "fetched just now: no new fetch");
    }
}
