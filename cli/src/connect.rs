//! How a command reaches a gateway: the address, the bearer token, TLS (a CA to trust and, for
//! a council system, a client certificate) and a deadline on every call.

use crate::failure::{CliResult, Failure};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;
use tonic::Request;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

#[derive(Args, Debug, Clone)]
pub struct GatewayArgs {
    /// The gateway's URL (`https://` needs --ca-cert).
    #[arg(
        long,
        env = "CPIS_GATEWAY",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub gateway: String,
    /// A user token (mint one for `cpis dev` with `cpis token`); not needed by a system
    /// identity (--client-cert).
    #[arg(long, env = "CPIS_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// The CA certificate (PEM) the gateway's certificate is checked against.
    #[arg(long, global = true)]
    pub ca_cert: Option<PathBuf>,
    /// A council system's client certificate (PEM), registered with `cpis system register`...
    #[arg(long, requires = "client_key", global = true)]
    pub client_cert: Option<PathBuf>,
    /// ...and its private key (PEM).
    #[arg(long, requires = "client_cert", global = true)]
    pub client_key: Option<PathBuf>,
    /// How long one call may take: a number with s, m or h.
    #[arg(long, default_value = "30s", value_parser = crate::token::parse_ttl, global = true)]
    pub deadline: Duration,
}

/// A connection to a gateway, and the credentials every request carries.
#[derive(Clone)]
pub struct Gateway {
    pub channel: Channel,
    token: Option<String>,
    deadline: Duration,
}

impl Gateway {
    /// Prepares the channel; nothing is dialled until the first call, so an unreachable
    /// gateway surfaces as that call's UNAVAILABLE.
    pub fn connect(args: &GatewayArgs) -> CliResult<Gateway> {
        let token = args
            .token
            .as_ref()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());
        if token.is_none() && args.client_cert.is_none() {
            return Err(Failure::usage(
                "no token: pass --token or set CPIS_TOKEN (for `cpis dev`, mint one with \
                 `cpis token`), or use --client-cert/--client-key for a system identity",
            ));
        }
        let mut endpoint = Endpoint::from_shared(args.gateway.clone())
            .map_err(|e| Failure::usage(format!("--gateway {}: {e}", args.gateway)))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        let https = args.gateway.starts_with("https://");
        if https {
            endpoint = endpoint
                .tls_config(tls_config(args)?)
                .map_err(|e| Failure::usage(format!("TLS configuration: {e}")))?;
        } else if args.ca_cert.is_some() || args.client_cert.is_some() {
            return Err(Failure::usage(
                "--ca-cert and --client-cert need an https:// --gateway",
            ));
        }
        Ok(Gateway {
            channel: endpoint.connect_lazy(),
            token,
            deadline: args.deadline,
        })
    }

    /// A unary request: the token and the deadline attached.
    pub fn request<T>(&self, message: T) -> CliResult<Request<T>> {
        let mut request = self.streaming(message)?;
        request.set_timeout(self.deadline);
        Ok(request)
    }

    /// A request without a deadline, for streams that last (watch, large uploads).
    pub fn streaming<T>(&self, message: T) -> CliResult<Request<T>> {
        let mut request = Request::new(message);
        if let Some(token) = &self.token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| Failure::usage("the token contains characters a header cannot"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

fn tls_config(args: &GatewayArgs) -> CliResult<ClientTlsConfig> {
    let read = |path: &PathBuf, what: &str| {
        std::fs::read(path)
            .map_err(|e| Failure::usage(format!("reading {what} {}: {e}", path.display())))
    };
    let Some(ca) = &args.ca_cert else {
        return Err(Failure::usage(
            "an https:// gateway needs --ca-cert (the CA certificate that signed its \
             certificate)",
        ));
    };
    let mut config =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca, "--ca-cert")?));
    if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
        config = config.identity(Identity::from_pem(
            read(cert, "--client-cert")?,
            read(key, "--client-key")?,
        ));
    }
    Ok(config)
}
