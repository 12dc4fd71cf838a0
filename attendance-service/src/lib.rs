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

use platform::config::{DatabaseArgs, LogArgs};
use platform::runtime::{Backend, Component};
use platform::server::Running;
use platform::shutdown::Shutdown;
use std::net::SocketAddr;
use tonic::service::Routes;

pub const NAME: &str = "attendance-service";
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 50062);

pub struct AttendanceService;

impl Component for AttendanceService {
    const NAME: &'static str = NAME;
    const ABOUT: &'static str =
        "The unscheduled-care attendance log: recording and summarising attendances";
    type Args = AttendanceArgs;

    async fn start(args: AttendanceArgs, shutdown: Shutdown) -> platform::Result<Running> {
        let backend = Backend::<migration::Migrator> {
            name: NAME,
            default_listen: DEFAULT_LISTEN,
            services: vec![cpis_proto::service_names::ATTENDANCE_LOG],
            migrator: std::marker::PhantomData,
        };
        let mut context = None;
        let running = backend
            .start(&args.serve, shutdown, |ctx| {
                context = Some(ctx.clone());
                Routes::new(
                    cpis_proto::attendance::attendance_log_server::AttendanceLogServer::new(
                        Handlers::new(ctx),
                    )
                    .max_decoding_message_size(platform::server::MAX_MESSAGE_BYTES),
                )
            })
            .await?;
        // Only once serving: a start that failed leaves no purge behind.
        if let Some(ctx) = context {
            tokio::spawn(retention::run(
                storage::Attendances::new(ctx.db),
                args.retention,
                ctx.readiness,
                ctx.shutdown,
            ));
        }
        Ok(running)
    }

    async fn migrate(args: DatabaseArgs) -> platform::Result<()> {
        platform::runtime::migrate::<migration::Migrator>(NAME, &args).await
    }

    fn log_args(args: &AttendanceArgs) -> &LogArgs {
        &args.serve.log
    }
}
