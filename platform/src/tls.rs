//! Transport security, one way for every service: rustls with aws-lc-rs (the workspace's one
//! crypto provider), certificates read from PEM files and re-read when they change, so a
//! Kubernetes secret rotation (a symlink swap) takes effect without a restart. A reload that
//! fails keeps the previous certificate and says why; open connections carry on regardless.
//!
//! Servers accept connections themselves (plain or TLS) so every call can see its peer:
//! [`PeerInfo`] carries the remote address and the SANs of a verified client certificate.

use crate::config::TlsArgs;
use crate::error::{Error, Result};
use crate::reload::{self, Latest};
use crate::shutdown::Shutdown;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Makes aws-lc-rs the process-wide default provider, for clients that build their rustls
/// configuration on it (redis): the choice is then ours, not left to crate features. Once
/// installed, later calls change nothing.
pub fn install_default_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn bad(what: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::FailedPrecondition(format!("{what} {}: {e}", path.display()))
}

pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad("cannot read certificates from", path, e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad("malformed certificate in", path, e))?;
    if certs.is_empty() {
        return Err(bad("no certificate in", path, "empty"));
    }
    Ok(certs)
}

pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| bad("cannot read a private key from", path, e))
}

fn roots(path: &Path) -> Result<Arc<rustls::RootCertStore>> {
    let mut store = rustls::RootCertStore::empty();
    for cert in read_certs(path)? {
        store
            .add(cert)
            .map_err(|e| bad("unusable CA certificate in", path, e))?;
    }
    Ok(Arc::new(store))
}

/// Whether a server asks its clients for certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Backends: only peers with a certificate from the client CA get in (mTLS).
    Required,
    /// The gateway: users come with tokens, council systems with certificates.
    Optional,
}

#[derive(Clone, Debug)]
struct ServerFiles {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    auth: ClientAuth,
}

fn build_server(files: &ServerFiles) -> Result<rustls::ServerConfig> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(format!("TLS versions: {e}")))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider());
            let verifier = match files.auth {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            builder
                .with_client_cert_verifier(verifier.build().map_err(|e| bad("client CA", ca, e))?)
        }
        None if files.auth == ClientAuth::Required => {
            return Err(Error::FailedPrecondition(
                "mutual TLS needs a client CA (--tls-client-ca)".into(),
            ));
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(read_certs(&files.cert)?, read_key(&files.key)?)
        .map_err(|e| bad("certificate and key do not match:", &files.cert, e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// A server TLS configuration that follows its files.
#[derive(Clone)]
pub struct ServerTls {
    current: Latest<rustls::ServerConfig>,
}

impl ServerTls {
    /// `None` (plain TCP) unless a certificate and key are configured. Bad files at start are
    /// a configuration error; the caller exits with the message.
    pub fn from_args(args: &TlsArgs, auth: ClientAuth) -> Result<Option<Self>> {
        let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
            return Ok(None);
        };
        let files = ServerFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.tls_client_ca.clone(),
            auth,
        };
        let mut paths = vec![files.cert.clone(), files.key.clone()];
        paths.extend(files.client_ca.clone());
        let current = reload::watch_files("TLS certificate", paths, move || build_server(&files))?;
        Ok(Some(ServerTls { current }))
    }

    /// The acceptor for the next handshake, with the certificate as it is now.
    fn acceptor(&self) -> Option<TlsAcceptor> {
        Some(TlsAcceptor::from(Arc::clone(&self.current.borrow())))
    }
}

/// What a call knows of its connection.
#[derive(Clone, Debug, Default)]
pub struct PeerInfo {
    pub remote_addr: Option<SocketAddr>,
    /// Subject alternative names (URIs such as `spiffe://...`, then DNS names) of the client
    /// certificate the TLS handshake verified; empty without one.
    pub client_sans: Arc<Vec<String>>,
    /// The connection is this process's own in-memory pair ([`crate::inproc`]).
    pub in_process: bool,
}

impl PeerInfo {
    /// The peer of a call served by [`incoming`].
    pub fn of<T>(request: &tonic::Request<T>) -> PeerInfo {
        request
            .extensions()
            .get::<PeerInfo>()
            .cloned()
            .unwrap_or_default()
    }
}

/// The SANs of a certificate: URIs first, then DNS names.
pub fn subject_alt_names(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::prelude::*;
    let Ok((_, parsed)) = X509Certificate::from_der(cert.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    let mut uris = Vec::new();
    let mut dns = Vec::new();
    for name in &san.value.general_names {
        match name {
            GeneralName::URI(u) => uris.push(u.to_string()),
            GeneralName::DNSName(d) => dns.push(d.to_string()),
            _ => {}
        }
    }
    uris.extend(dns);
    uris
}

/// One accepted connection, plain or TLS, with what it knows of its peer.
pub enum PeerStream {
    Plain(TcpStream, PeerInfo),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>, PeerInfo),
    Memory(tokio::io::DuplexStream, PeerInfo),
}

impl tonic::transport::server::Connected for PeerStream {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        match self {
            PeerStream::Plain(_, p) | PeerStream::Tls(_, p) | PeerStream::Memory(_, p) => p.clone(),
        }
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s, _) => Pin::new(s).poll_read(cx, buf),
            PeerStream::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
            PeerStream::Memory(s, _) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Plain(s, _) => Pin::new(s).poll_write(cx, buf),
            PeerStream::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
            PeerStream::Memory(s, _) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s, _) => Pin::new(s).poll_flush(cx),
            PeerStream::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
            PeerStream::Memory(s, _) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s, _) => Pin::new(s).poll_shutdown(cx),
            PeerStream::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
            PeerStream::Memory(s, _) => Pin::new(s).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Plain(s, _) => Pin::new(s).poll_write_vectored(cx, bufs),
            PeerStream::Tls(s, _) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            PeerStream::Memory(s, _) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            PeerStream::Plain(s, _) => s.is_write_vectored(),
            PeerStream::Tls(s, _) => s.is_write_vectored(),
            PeerStream::Memory(s, _) => s.is_write_vectored(),
        }
    }
}

/// Accepts connections on `listener` until shutdown; TLS handshakes run concurrently (a slow
/// or failing client never holds up the others) and a failed one only closes its connection.
pub fn incoming(
    listener: TcpListener,
    tls: Option<ServerTls>,
    shutdown: Shutdown,
) -> ReceiverStream<io::Result<PeerStream>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = shutdown.wait() => return,
            };
            let (tcp, remote) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let base = PeerInfo {
                remote_addr: Some(remote),
                client_sans: Arc::new(Vec::new()),
                in_process: false,
            };
            let Some(acceptor) = tls.as_ref().and_then(ServerTls::acceptor) else {
                if tx.send(Ok(PeerStream::Plain(tcp, base))).await.is_err() {
                    return;
                }
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let sans = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(subject_alt_names)
                            .unwrap_or_default();
                        let peer = PeerInfo {
                            client_sans: Arc::new(sans),
                            ..base
                        };
                        let _ = tx.send(Ok(PeerStream::Tls(Box::new(stream), peer))).await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(peer = %remote, error = %e, "TLS handshake refused")
                    }
                    Err(_) => tracing::info!(peer = %remote, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The client side towards our own services: trust the internal CA, present our identity.
#[derive(Clone, Debug)]
pub struct ClientFiles {
    pub ca: PathBuf,
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// The internal client certificate as read from its files, checked: it builds a client
/// configuration for any of our services.
#[derive(Debug)]
pub struct ClientTls {
    ca: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientTls {
    /// A tonic client TLS configuration towards `domain`.
    pub fn config(&self, domain: &str) -> tonic::transport::ClientTlsConfig {
        let mut config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca))
            .domain_name(domain.to_owned());
        if let Some((cert, key)) = &self.identity {
            config = config.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        config
    }
}

impl ClientFiles {
    fn paths(&self) -> Vec<PathBuf> {
        let mut p = vec![self.ca.clone()];
        if let Some((c, k)) = &self.identity {
            p.push(c.clone());
            p.push(k.clone());
        }
        p
    }

    /// The files as they are now; a half-written one is refused here, not at a handshake.
    pub fn load(&self) -> Result<ClientTls> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| bad("cannot read", p, e));
        read_certs(&self.ca)?;
        let identity = match &self.identity {
            Some((cert, key)) => {
                read_certs(cert)?;
                read_key(key)?;
                Some((read(cert)?, read(key)?))
            }
            None => None,
        };
        Ok(ClientTls {
            ca: read(&self.ca)?,
            identity,
        })
    }

    /// The latest good [`ClientTls`], re-read when the files change.
    pub fn watch(&self) -> Result<Latest<ClientTls>> {
        let files = self.clone();
        reload::watch_files("internal client certificate", self.paths(), move || {
            files.load()
        })
    }
}
