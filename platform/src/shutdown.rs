//! Process lifecycle: one shutdown signal every task can wait on.
//!
//! The first SIGTERM or Ctrl-C starts a graceful stop (health `NOT_SERVING`, streams ended,
//! unary calls given the grace period); a second one exits at once.

use tokio::sync::watch;

/// Fires once; cheap to clone into every task that must stop.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

/// Fires the [`Shutdown`] it was created with.
#[derive(Clone, Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

impl Shutdown {
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger(tx), Shutdown(rx))
    }

    /// A shutdown that fires on the first SIGTERM or SIGINT; the second exits the process.
    pub fn on_signals() -> Shutdown {
        let (trigger, shutdown) = Shutdown::new();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested; draining (a second signal exits at once)");
            trigger.fire();
            wait_for_signal().await;
            tracing::warn!("second signal: exiting now");
            std::process::exit(130);
        });
        shutdown
    }

    pub fn is_fired(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the shutdown has fired (at once if it already has).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        // An error means every trigger is gone: nothing can fire any more, so wait forever
        // would hang; treat it as fired, since the owner has gone away.
        let _ = rx.wait_for(|fired| *fired).await;
    }
}

impl ShutdownTrigger {
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_shutdown() {
        let (trigger, shutdown) = Shutdown::new();
        let other = shutdown.clone();
        assert!(!other.is_fired());
        let waiter = tokio::spawn(async move { other.wait().await });
        trigger.fire();
        waiter.await.unwrap();
        assert!(shutdown.is_fired());
        shutdown.wait().await;
    }
}
