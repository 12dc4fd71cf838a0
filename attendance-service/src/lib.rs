//! attendance-service: the log of unscheduled-care attendances.
//!
//! Every notifying lookup is an attendance: the child was seen at a setting. This service
//! records them idempotently by lookup id and summarises them (rolling 30/90/365-day counts
//! and the 25 most recent) as of an instant, so answers are reproducible.

pub mod migration;

use platform::config::{DatabaseArgs, LogArgs, ServeArgs};
use platform::runtime::{Backend, BackendContext, Component};
use platform::server::Running;
use platform::shutdown::Shutdown;
use std::net::SocketAddr;
use tonic::service::Routes;

pub const NAME: &str = "attendance-service";
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 50062);

/// The gRPC handlers; each answers `UNIMPLEMENTED` until written.
#[derive(Clone)]
pub struct Handlers {
    #[allow(dead_code)]
    context: BackendContext,
}

impl cpis_proto::attendance::attendance_log_server::AttendanceLog for Handlers {}

pub struct AttendanceService;

impl Component for AttendanceService {
    const NAME: &'static str = NAME;
    const ABOUT: &'static str =
        "The unscheduled-care attendance log: recording and summarising attendances";
    type Args = ServeArgs;

    async fn start(args: ServeArgs, shutdown: Shutdown) -> platform::Result<Running> {
        let backend = Backend::<migration::Migrator> {
            name: NAME,
            default_listen: DEFAULT_LISTEN,
            services: vec![cpis_proto::service_names::ATTENDANCE_LOG],
            migrator: std::marker::PhantomData,
        };
        backend
            .start(&args, shutdown, |context| {
                Routes::new(
                    cpis_proto::attendance::attendance_log_server::AttendanceLogServer::new(
                        Handlers { context },
                    ),
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
