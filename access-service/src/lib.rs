//! access-service: who may see what, and a tamper-evident record of every decision.
//!
//! It holds organisations and system identities, decides each call in API.md's order of
//! checks (deny by default), appends every decision to a hash-chained audit log, and keeps the
//! obligations outbox the gateway's reconciler drains.
//!
//! Where things are: a call enters in [`handlers`], which checks a public request with the
//! gateway's own validator (`platform::requests`); `Decide` is validated and batched by
//! [`decide`] (each batch loaded, decided by a pure plan, written) and judged by the pure
//! [`rules`]; the log is hashed, listed, verified and signed in [`audit`]; organisations,
//! systems and obligations live in [`storage`].

pub mod args;
pub mod audit;
pub mod decide;
pub mod entities;
pub mod error;
pub mod handlers;
pub mod migration;
pub mod rules;
pub mod storage;

pub use args::AccessArgs;
pub use handlers::Handlers;

use audit::checkpoint::CheckpointSigner;
use decide::AccessDecisions;
use platform::config::ServeArgs;
use platform::runtime::{BackendContext, BackendService};
use std::net::SocketAddr;
use std::time::Duration;
use tonic::service::Routes;

pub const NAME: &str = "access-service";
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 50063);

pub struct AccessService;

impl BackendService for AccessService {
    const NAME: &'static str = NAME;
    const ABOUT: &'static str = "Access decisions, organisations, systems, the obligations outbox and the hash-chained audit log";
    const DEFAULT_LISTEN: SocketAddr = DEFAULT_LISTEN;
    const SERVICES: &'static [&'static str] = &[cpis_proto::service_names::ACCESS_CONTROL];
    type Migrator = migration::Migrator;
    type Args = AccessArgs;

    fn serve_args(args: &AccessArgs) -> &ServeArgs {
        &args.serve
    }

    fn routes(args: &AccessArgs, context: BackendContext) -> platform::Result<Routes> {
        // A bad key file stops the start at once, with the path in the message.
        let signer = CheckpointSigner::load_or_create(
            args.audit_signing_key_file.as_deref(),
            &args.serve.database.data_dir,
        )?;
        let decisions =
            AccessDecisions::spawn(context.db.clone()).with_min_assurance_level(args.min_aal);
        Ok(Routes::new(
            cpis_proto::access::access_control_server::AccessControlServer::new(Handlers {
                context,
                decisions,
                signer,
                retries: args.retry_policy(),
            })
            .max_decoding_message_size(platform::server::MAX_MESSAGE_BYTES),
        ))
    }

    fn serving(_: &AccessArgs, context: BackendContext) {
        tokio::spawn(measure_obligations(context));
    }
}

/// How often the obligation gauges are read from storage between scrapes.
const OBLIGATIONS_EVERY: Duration = Duration::from_secs(15);

/// Keeps `cpis_obligations_pending`, `cpis_obligations_failed` and
/// `cpis_obligations_oldest_pending_age_seconds` current: every [`OBLIGATIONS_EVERY`], and at
/// each scrape. Every replica reports the same table, so alerts take the `max` over them.
async fn measure_obligations(context: BackendContext) {
    context
        .keep_gauges_current(OBLIGATIONS_EVERY, |db| async move {
            match storage::obligations::backlog(&db).await {
                Ok(b) => {
                    let age = b.oldest_pending_at.map_or(Duration::ZERO, |at| {
                        let micros = storage::now_micros().saturating_sub(at).max(0);
                        Duration::from_micros(u64::try_from(micros).unwrap_or(0))
                    });
                    platform::metrics::metrics().obligations(b.pending, b.failed, age);
                }
                Err(e) => tracing::debug!(error = %e, "cannot read the obligations backlog"),
            }
        })
        .await
}
