//! The practical limit: a bare tonic server answering a unary call with what it was sent,
//! run as a process of its own (`cpis-bench echo-server`) like every service measured.

pub mod pb {
    tonic::include_proto!("cpis.bench.v1");
}

use pb::echo_server::{Echo, EchoServer};
use pb::{EchoRequest, EchoResponse};
use std::net::SocketAddr;
use tonic::{Request, Response, Status};

/// Bytes in each echo: about a LookupChild request's size on the wire.
pub const PAYLOAD_BYTES: usize = 96;

struct Echoer;

#[tonic::async_trait]
impl Echo for Echoer {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        Ok(Response::new(EchoResponse {
            payload: request.into_inner().payload,
        }))
    }
}

/// Serves the echo on `listen` (plaintext, or TLS with `tls` = (certificate, key) PEM) until
/// the process is stopped.
pub async fn serve(listen: SocketAddr, tls: Option<(String, String)>) -> anyhow::Result<()> {
    let mut builder = tonic::transport::Server::builder();
    if let Some((cert, key)) = tls {
        builder = builder.tls_config(
            tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(cert, key)),
        )?;
    }
    builder
        .add_service(EchoServer::new(Echoer))
        .serve(listen)
        .await?;
    Ok(())
}
