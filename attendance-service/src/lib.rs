//! attendance-service: the log of unscheduled-care attendances.
//!
//! Every notifying lookup is an attendance: the child was seen at a setting. This service
//! records them idempotently by lookup id and summarises them (rolling 30/90/365-day counts
//! and the 25 most recent) as of an instant, so answers are reproducible. Expired attendances
//! are purged in the background. A call enters in [`handlers`], is validated by
//! [`attendance`] or [`summary`], and is stored by [`storage`] in the table of [`entities`].

pub mod attendance;
pub mod config;
pub mod entities;
pub mod error;
pub mod handlers;
pub mod migration;
pub mod retention;
pub mod storage;
pub mod summary;
pub mod synthetic;

pub use config::{AttendanceArgs, RetentionArgs};
pub use handlers::Handlers;

use platform::config::ServeArgs;
use platform::runtime::{BackendContext, BackendService};
use std::net::SocketAddr;
use tonic::service::Routes;

pub const NAME: &str = "attendance-service";
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 50062);

pub struct AttendanceService;

impl BackendService for AttendanceService {
    const NAME: &'static str = NAME;
    const ABOUT: &'static str =
        "The unscheduled-care attendance log: recording and summarising attendances";
    const DEFAULT_LISTEN: SocketAddr = DEFAULT_LISTEN;
    const SERVICES: &'static [&'static str] = &[cpis_proto::service_names::ATTENDANCE_LOG];
    type Migrator = migration::Migrator;
    type Args = AttendanceArgs;

    fn serve_args(args: &AttendanceArgs) -> &ServeArgs {
        &args.serve
    }

    fn routes(_: &AttendanceArgs, context: BackendContext) -> platform::Result<Routes> {
        Ok(Routes::new(
            cpis_proto::attendance::attendance_log_server::AttendanceLogServer::new(Handlers::new(
                context,
            ))
            .max_decoding_message_size(platform::server::MAX_MESSAGE_BYTES),
        ))
    }

    fn serving(args: &AttendanceArgs, context: BackendContext) {
        tokio::spawn(retention::run(
            storage::Attendances::new(context.db),
            args.retention,
            context.readiness,
            context.shutdown,
        ));
    }
}
