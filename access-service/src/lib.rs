//! access-service: who may see what, and a tamper-evident record of every decision.
//!
//! It holds organisations and system identities, decides each call in API.md's order of
//! checks (deny by default), appends every decision to a hash-chained audit log, and keeps the
//! obligations outbox the gateway's reconciler drains.

pub mod migration;

use platform::config::{DatabaseArgs, LogArgs, ServeArgs};
use platform::runtime::{Backend, BackendContext, Component};
use platform::server::Running;
use platform::shutdown::Shutdown;
use std::net::SocketAddr;
use tonic::service::Routes;

pub const NAME: &str = "access-service";
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 50063);

/// The gRPC handlers; each answers `UNIMPLEMENTED` until written.
#[derive(Clone)]
pub struct Handlers {
    #[allow(dead_code)]
    context: BackendContext,
}

impl cpis_proto::access::access_control_server::AccessControl for Handlers {}

pub struct AccessService;

impl Component for AccessService {
    const NAME: &'static str = NAME;
    const ABOUT: &'static str = "Access decisions, organisations, systems, the obligations outbox and the hash-chained audit log";
    type Args = ServeArgs;

    async fn start(args: ServeArgs, shutdown: Shutdown) -> platform::Result<Running> {
        let backend = Backend::<migration::Migrator> {
            name: NAME,
            default_listen: DEFAULT_LISTEN,
            services: vec![cpis_proto::service_names::ACCESS_CONTROL],
            migrator: std::marker::PhantomData,
        };
        backend
            .start(&args, shutdown, |context| {
                Routes::new(
                    cpis_proto::access::access_control_server::AccessControlServer::new(Handlers {
                        context,
                    }),
                )
            })
            .await
    }

    async fn migrate(args: DatabaseArgs) -> platform::Result<()> {
        platform::runtime::migrate::<migration::Migrator>(NAME, &args).await
    }

    fn log_args(args: &ServeArgs) -> &LogArgs {
        &args.log
    }
}
