//! Live delivery of notifications to watchers. Each commit in this process announces "LA X now
//! ends at cursor N"; a watcher wakes on its LA's announcements and reads the outbox from its
//! last cursor. A slow periodic check catches commits made by other replicas. The database
//! stays the only source: an announcement only says when to look.

use crate::storage::outbox;
use cpis_proto::gateway::Notification;
use platform::shutdown::Shutdown;
use sea_orm::DatabaseConnection;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// Notifications read per database query while catching up.
const PAGE: u64 = 500;
/// How often a watcher looks for commits made by other replicas.
const OTHER_REPLICAS_CHECK: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct NotificationFeed {
    announcements: broadcast::Sender<(String, u64)>,
}

impl Default for NotificationFeed {
    fn default() -> Self {
        NotificationFeed {
            announcements: broadcast::channel(1024).0,
        }
    }
}

impl NotificationFeed {
    /// After a commit: wakes the watchers of these LAs.
    pub fn announce(&self, heads: &[(String, u64)]) {
        for head in heads {
            // No receiver means no watcher: nothing to wake.
            let _ = self.announcements.send(head.clone());
        }
    }

    /// The LA's notifications after `after`, then each new one as it commits, until the
    /// client goes away or the service shuts down (then UNAVAILABLE, to resume elsewhere).
    pub fn watch(
        &self,
        db: DatabaseConnection,
        la: String,
        after: u64,
        shutdown: Shutdown,
    ) -> ReceiverStream<Result<Notification, Status>> {
        let (tx, rx) = mpsc::channel(64);
        // Subscribed before the first read, so no commit falls between the read and the wait.
        let mut announcements = self.announcements.subscribe();
        tokio::spawn(async move {
            let mut last = after;
            let mut check = tokio::time::interval(OTHER_REPLICAS_CHECK);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let batch = tokio::select! {
                    batch = outbox::after(&db, &la, last, PAGE) => batch,
                    _ = shutdown.wait() => return stopping(&tx).await,
                };
                let batch = match batch {
                    Ok(batch) => batch,
                    Err(e) => {
                        let status: Status = platform::Error::from(e).into();
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                let full = batch.len() as u64 == PAGE;
                for n in &batch {
                    last = n.cursor as u64;
                    if tx.send(Ok(outbox::to_proto(n))).await.is_err() {
                        return;
                    }
                }
                if full {
                    continue;
                }
                // Wait for something newer than `last`, for this LA.
                loop {
                    tokio::select! {
                        _ = shutdown.wait() => return stopping(&tx).await,
                        _ = tx.closed() => return,
                        _ = check.tick() => break,
                        announced = announcements.recv() => match announced {
                            Ok((announced_la, head)) if announced_la == la && head > last => break,
                            Ok(_) => {}
                            Err(broadcast::error::RecvError::Lagged(_)) => break,
                            Err(broadcast::error::RecvError::Closed) => return,
                        },
                    }
                }
            }
        });
        ReceiverStream::new(rx)
    }
}

async fn stopping(tx: &mpsc::Sender<Result<Notification, Status>>) {
    let status: Status = platform::Error::unavailable("flag-service (shutting down)").into();
    let _ = tx.send(Err(status)).await;
}
