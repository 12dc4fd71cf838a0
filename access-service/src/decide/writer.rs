//! The one writer task per process. Requests queue on a channel; the task takes everything
//! queued (up to [`MAX_BATCH`]) and commits it as one batch, then answers each waiter. Under
//! load a batch grows, so callers share commits instead of queueing behind one each.

use super::batch;
use super::request::{DecideInput, validate};
use crate::error::for_each_waiter;
use cpis_proto::access::{DecideRequest, Decision};
use platform::{Error, Result};
use sea_orm::DatabaseConnection;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

/// Large enough to amortise a commit, small enough to stay far below bind-parameter limits.
pub const MAX_BATCH: usize = 256;
const QUEUE: usize = 8192;

struct Pending {
    input: DecideInput,
    reply: oneshot::Sender<Result<Decision>>,
}

/// Decides and audits; cheap to clone (all clones feed the same writer task).
#[derive(Clone)]
pub struct AccessDecisions {
    queue: mpsc::Sender<Pending>,
    min_assurance_level: u8,
}

impl AccessDecisions {
    /// Starts the writer task; it ends once every clone is dropped.
    pub fn spawn(db: DatabaseConnection) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(db, rx));
        AccessDecisions {
            queue,
            min_assurance_level: super::request::DEFAULT_MIN_ASSURANCE_LEVEL,
        }
    }

    /// Lookups by users who signed in below `level` are denied `INSUFFICIENT_ASSURANCE`.
    pub fn with_min_assurance_level(mut self, level: u8) -> Self {
        self.min_assurance_level = level;
        self
    }

    /// Validates (not audited when invalid), then decides and audits.
    pub async fn decide(&self, request: DecideRequest) -> Result<Decision> {
        let mut input = validate(request)?;
        input.min_assurance_level = self.min_assurance_level;
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { input, reply })
            .await
            .map_err(|_| Error::unavailable("audit writer (stopping)"))?;
        queue_depth(&self.queue);
        answer
            .await
            .map_err(|_| Error::internal("the audit writer dropped a request"))?
    }
}

/// `cpis_audit_queue_depth`: decisions waiting for the writer (a growing queue means the
/// audit database cannot keep up, and callers will soon time out).
fn queue_depth(queue: &mpsc::Sender<Pending>) {
    platform::metrics::metrics().audit_queue_depth(queue.max_capacity() - queue.capacity());
}

async fn run(db: DatabaseConnection, mut rx: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        platform::metrics::metrics().audit_queue_depth(rx.len());
        let (inputs, replies): (Vec<_>, Vec<_>) =
            batch.drain(..).map(|p| (p.input, p.reply)).unzip();
        // One trace per commit: it serves many callers, so it belongs to none of their traces.
        let span = tracing::info_span!("audit.commit", records = inputs.len());
        match batch::commit(&db, &inputs).instrument(span).await {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    // A caller that gave up still has its decision recorded.
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, records = inputs.len(), "audit batch not committed");
                for reply in replies {
                    let _ = reply.send(Err(for_each_waiter(&e)));
                }
            }
        }
    }
}
