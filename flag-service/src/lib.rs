//! flag-service: the registry of which children local authorities protect.
//!
//! It holds flags (with their history), uploads and their reports, restrictions on sensitive
//! records, inactive numbers, and the per-LA notification outbox. It calls no other service:
//! the gateway decides access first and forwards the verified principal.
//!
//! A request enters in [`handlers`] and is parsed by `platform::requests` (the public
//! messages, with the validators the gateway calls too) or by [`requests`] (the internal
//! `GetFlags`, the forwarded principal), into the value types of [`flag`]; it is judged by
//! [`rules`] (dates, visibility, record codes) and stored through [`storage`]. Lookups read
//! through [`cache`]; watchers of the outbox are woken by [`feed`].

pub mod cache;
pub mod entities;
pub mod error;
pub mod feed;
pub mod flag;
pub mod handlers;
pub mod migration;
pub mod report;
pub mod requests;
pub mod rules;
pub mod storage;

use cache::FlagCache;
use feed::NotificationFeed;
use handlers::Handlers;
use platform::config::ServeArgs;
use platform::datastore::DatastoreTls;
use platform::runtime::{BackendContext, BackendService};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tonic::service::Routes;

pub const NAME: &str = "flag-service";
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 50061);

/// How often each replica looks for uploads whose lease lapsed (a fifth of the lease, so a
/// dead process's staging goes within about 6 minutes).
const STAGING_CLEANUP_EVERY: Duration = Duration::from_secs(60);

const DEFAULT_CACHE_PREFIX: &str = "cpis:flags";

/// flag-service's configuration: the common serving flags plus its cache mode.
#[derive(clap::Args, Debug, Clone)]
pub struct FlagArgs {
    #[command(flatten)]
    pub serve: ServeArgs,

    /// Cache lookups in this process. Only for a single-process deployment (`cpis dev`):
    /// replicas would not see each other's writes. Ignored when `--redis-url` is set.
    #[arg(long, env = "CPIS_FLAG_LOCAL_CACHE")]
    pub local_cache: bool,

    /// Prefix of this registry's Redis keys, for deployments sharing one Redis.
    #[arg(long, env = "CPIS_FLAG_CACHE_PREFIX", default_value = DEFAULT_CACHE_PREFIX)]
    pub cache_prefix: String,
}

impl FlagArgs {
    /// For `cpis dev` and tests: the embedded defaults, with the in-process cache.
    pub fn embedded(data_dir: PathBuf) -> Self {
        FlagArgs {
            serve: ServeArgs::embedded(data_dir),
            local_cache: true,
            cache_prefix: DEFAULT_CACHE_PREFIX.into(),
        }
    }

    /// The cache mode; a Redis URL refused by the datastore TLS settings stops the start.
    fn cache(&self) -> platform::Result<FlagCache> {
        Ok(match (self.serve.redis_url(), self.local_cache) {
            (Some(url), _) => {
                let tls = DatastoreTls::from_args(&self.serve.database.datastore_tls)?;
                FlagCache::shared(platform::cache::client(url, &tls)?, &self.cache_prefix)
            }
            (None, true) => FlagCache::local(),
            (None, false) => FlagCache::Off,
        })
    }
}

pub struct FlagService;

impl BackendService for FlagService {
    const NAME: &'static str = NAME;
    const ABOUT: &'static str = "The registry of child protection flags: uploads, visibility, restrictions, notification outbox";
    const DEFAULT_LISTEN: SocketAddr = DEFAULT_LISTEN;
    const SERVICES: &'static [&'static str] = &[cpis_proto::service_names::FLAG_REGISTRY];
    type Migrator = migration::Migrator;
    type Args = FlagArgs;

    fn serve_args(args: &FlagArgs) -> &ServeArgs {
        &args.serve
    }

    fn routes(args: &FlagArgs, context: BackendContext) -> platform::Result<Routes> {
        let feed = NotificationFeed::with_poller(context.db.clone(), context.shutdown.clone());
        Ok(Routes::new(
            cpis_proto::flag::flag_registry_server::FlagRegistryServer::new(Handlers {
                context,
                cache: args.cache()?,
                feed,
            })
            .max_decoding_message_size(platform::server::MAX_MESSAGE_BYTES),
        ))
    }

    fn serving(_: &FlagArgs, context: BackendContext) {
        tokio::spawn(clean_stale_staging(context.clone()));
        tokio::spawn(measure_backlogs(context));
    }
}

/// How often `cpis_notification_backlog` is read from storage between scrapes.
const BACKLOG_EVERY: Duration = Duration::from_secs(15);

/// Keeps `cpis_notification_backlog{la}` current: every [`BACKLOG_EVERY`], and at each scrape.
async fn measure_backlogs(context: BackendContext) {
    context
        .keep_gauges_current(BACKLOG_EVERY, |db| async move {
            match storage::outbox::backlogs(&db).await {
                Ok(backlogs) => platform::metrics::metrics().notification_backlogs(&backlogs),
                Err(e) => tracing::debug!(error = %e, "cannot read notification backlogs"),
            }
        })
        .await
}

/// Once the schema is ready, and then every [`STAGING_CLEANUP_EVERY`], removes what uploads
/// interrupted by a crash left staged: only attempts whose lease lapsed, so a live upload on
/// another replica (or this one) keeps its records however long it has been running.
async fn clean_stale_staging(context: BackendContext) {
    while !context.readiness.is_ready() {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = context.shutdown.wait() => return,
        }
    }
    loop {
        match storage::uploads::clean_lapsed(&context.db, chrono::Utc::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "removed records staged by interrupted uploads"),
            Err(e) => tracing::warn!(error = %e, "could not remove stale staged records"),
        }
        tokio::select! {
            _ = tokio::time::sleep(STAGING_CLEANUP_EVERY) => {}
            _ = context.shutdown.wait() => return,
        }
    }
}
