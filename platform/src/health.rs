//! Health as kubelet and load balancers see it: `NOT_SERVING` until the service can answer
//! safely (migrations ran and the database answers; for the gateway, its backends answer),
//! and `NOT_SERVING` again from the moment shutdown begins.
//!
//! tonic-health starts every service `SERVING`; [`Readiness::new`] overrides that at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The health service name kubelet's liveness probe asks for: `SERVING` for as long as the
/// process runs, whatever its dependencies say (readiness asks for `""`).
pub const LIVENESS: &str = "liveness";

#[derive(Clone)]
pub struct Readiness {
    reporter: HealthReporter,
    services: Arc<Vec<String>>,
    ready: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
}

impl Readiness {
    /// Every named service (and the server as a whole, `""`) starts `NOT_SERVING`.
    pub async fn new(reporter: HealthReporter, services: &[&str]) -> Self {
        let readiness = Readiness {
            reporter,
            services: Arc::new(services.iter().map(|s| s.to_string()).collect()),
            ready: Arc::new(AtomicBool::new(false)),
            stopping: Arc::new(AtomicBool::new(false)),
        };
        readiness.publish(ServingStatus::NotServing).await;
        // Liveness is not readiness: a process waiting for its database is alive, and
        // restarting it would not bring the database back.
        readiness
            .reporter
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;
        readiness
    }

    /// The reporter behind the `grpc.health.v1` service.
    pub fn reporter(&self) -> HealthReporter {
        self.reporter.clone()
    }

    /// Whether requests can be served now; handlers answer `UNAVAILABLE` otherwise.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.stopping.load(Ordering::Acquire)
    }

    /// Called by the watcher of whatever the service depends on.
    pub async fn set_dependency_ready(&self, ready: bool) {
        let was = self.ready.swap(ready, Ordering::AcqRel);
        if was != ready && !self.stopping.load(Ordering::Acquire) {
            let status = if ready {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            self.publish(status).await;
        }
    }

    /// From now on `NOT_SERVING`, whatever the dependencies say.
    pub async fn stopping(&self) {
        self.stopping.store(true, Ordering::Release);
        self.publish(ServingStatus::NotServing).await;
    }

    async fn publish(&self, status: ServingStatus) {
        self.reporter.set_service_status("", status).await;
        for s in self.services.iter() {
            self.reporter.set_service_status(s, status).await;
        }
    }

    /// `UNAVAILABLE` (with RetryInfo) when not ready.
    pub fn check(&self) -> crate::error::Result<()> {
        if self.is_ready() {
            Ok(())
        } else {
            Err(crate::error::Error::unavailable(
                "this service (starting or stopping)",
            ))
        }
    }
}
