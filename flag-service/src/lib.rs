//! flag-service: the registry of which children local authorities protect.
//!
//! It holds flags (with their history), uploads and their reports, restrictions on sensitive
//! records, and the per-LA notification outbox. It calls no other service: the gateway
//! decides access first and forwards the verified principal.

pub mod migration;

use platform::config::{DatabaseArgs, LogArgs, ServeArgs};
use platform::runtime::{Backend, BackendContext, Component};
use platform::server::Running;
use platform::shutdown::Shutdown;
use std::net::SocketAddr;
use tonic::service::Routes;

pub const NAME: &str = "flag-service";
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 50061);

/// The gRPC handlers; each answers `UNIMPLEMENTED` until written.
#[derive(Clone)]
pub struct Handlers {
    #[allow(dead_code)]
    context: BackendContext,
}

impl cpis_proto::flag::flag_registry_server::FlagRegistry for Handlers {}

pub struct FlagService;

impl Component for FlagService {
    const NAME: &'static str = NAME;
    const ABOUT: &'static str = "The registry of child protection flags: uploads, visibility, restrictions, notification outbox";
    type Args = ServeArgs;

    async fn start(args: ServeArgs, shutdown: Shutdown) -> platform::Result<Running> {
        let backend = Backend::<migration::Migrator> {
            name: NAME,
            default_listen: DEFAULT_LISTEN,
            services: vec![cpis_proto::service_names::FLAG_REGISTRY],
            migrator: std::marker::PhantomData,
        };
        backend
            .start(&args, shutdown, |context| {
                Routes::new(
                    cpis_proto::flag::flag_registry_server::FlagRegistryServer::new(Handlers {
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
