//! Live delivery of notifications to watchers. Each commit in this process announces "LA X now
//! ends at cursor N"; a watcher wakes on its LA's announcements and reads the outbox from its
//! last cursor. Commits made by other replicas are found by one poller per process (one query
//! of every LA's head per second, and only while someone watches), which announces them the
//! same way: an open watch costs no query of its own while nothing happens. The database stays
//! the only source: an announcement only says when to look.

use crate::storage::outbox;
use cpis_proto::gateway::Notification;
use platform::shutdown::Shutdown;
use sea_orm::DatabaseConnection;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// Notifications read per database query while catching up.
const PAGE: u64 = 500;
/// How often the process's poller looks for commits made by other replicas.
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
    /// A feed that also hears other replicas' commits: one poller for the whole process, until
    /// shutdown.
    pub fn with_poller(db: DatabaseConnection, shutdown: Shutdown) -> Self {
        let feed = NotificationFeed::default();
        tokio::spawn(feed.clone().poll(db, shutdown));
        feed
    }

    /// Announces every LA whose head moved since the last look; idle while nobody watches.
    async fn poll(self, db: DatabaseConnection, shutdown: Shutdown) {
        let mut seen: HashMap<String, u64> = HashMap::new();
        let mut first = true;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(OTHER_REPLICAS_CHECK) => {}
                _ = shutdown.wait() => return,
            }
            if self.announcements.receiver_count() == 0 {
                // Nobody to wake: forget, so the next watcher's first look announces all.
                seen.clear();
                first = true;
                continue;
            }
            let heads = match outbox::heads(&db).await {
                Ok(heads) => heads,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read the outbox heads");
                    continue;
                }
            };
            let moved: Vec<(String, u64)> = heads
                .into_iter()
                .filter(|(la, head)| first || seen.get(la).is_none_or(|s| head > s))
                .collect();
            for (la, head) in &moved {
                seen.insert(la.clone(), *head);
            }
            first = false;
            self.announce(&moved);
        }
    }

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
