//! The in-process transport of `cpis dev`: tonic over an in-memory duplex, so that when the
//! four services run in one process their internal hops never open a port or a socket that
//! another process could reach (ARCHITECTURE.md: backends trust only the gateway). A backend
//! served this way trusts exactly the calls that arrive over its in-process pair.

use crate::tls::{PeerInfo, PeerStream};
use std::sync::{Arc, Mutex};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// Bytes buffered in each direction of one in-process connection.
const DUPLEX_BUFFER: usize = 256 * 1024;
/// Connections waiting to be accepted.
const BACKLOG: usize = 16;

/// The client side: connects to the server holding the matching [`Accept`].
#[derive(Clone, Debug)]
pub struct Connect {
    tx: mpsc::Sender<DuplexStream>,
}

/// The server side, handed to the backend's serving arguments; taken once, when it starts.
#[derive(Clone, Debug, Default)]
pub struct Accept {
    rx: Arc<Mutex<Option<mpsc::Receiver<DuplexStream>>>>,
}

/// A connected pair: give [`Accept`] to a backend, [`Connect`] to the gateway.
pub fn pair() -> (Connect, Accept) {
    let (tx, rx) = mpsc::channel(BACKLOG);
    (
        Connect { tx },
        Accept {
            rx: Arc::new(Mutex::new(Some(rx))),
        },
    )
}

impl Connect {
    /// A lazily connected channel over the in-process pair.
    pub fn channel(&self) -> Channel {
        let tx = self.tx.clone();
        let connector = tower::service_fn(move |_: http::Uri| {
            let tx = tx.clone();
            async move {
                let (client, server) = tokio::io::duplex(DUPLEX_BUFFER);
                tx.send(server).await.map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        "the in-process server has stopped",
                    )
                })?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(client))
            }
        });
        Endpoint::from_static("http://in-process.invalid").connect_with_connector_lazy(connector)
    }
}

impl Accept {
    /// The connections as a server accepts them, each known to be in-process; `None` if
    /// another server already took them.
    pub fn incoming(&self) -> Option<ReceiverStream<std::io::Result<PeerStream>>> {
        let mut rx = self.rx.lock().ok()?.take()?;
        let (tx, out) = mpsc::channel(BACKLOG);
        tokio::spawn(async move {
            while let Some(stream) = rx.recv().await {
                let peer = PeerInfo {
                    in_process: true,
                    ..PeerInfo::default()
                };
                if tx.send(Ok(PeerStream::Memory(stream, peer))).await.is_err() {
                    return;
                }
            }
        });
        Some(ReceiverStream::new(out))
    }
}
