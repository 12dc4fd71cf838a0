//! The gateway's policy for backend calls, used by [`crate::backends::Backend`]: the one
//! mapping of a backend's failure to what the caller sees, and retries of `UNAVAILABLE` only,
//! with backoff, within the deadline, and within a budget so retries cannot multiply an outage.

use crate::deadline::Deadline;
use platform::error::Error;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tonic::{Code, Status};

/// What the caller sees when `backend` failed: `UNAVAILABLE` (with RetryInfo) for anything
/// that means "could not answer", our own services' shaped statuses unchanged otherwise.
pub fn backend_error(backend: &str, status: Status) -> Error {
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Aborted => {
            tracing::warn!(backend, code = ?status.code(), message = status.message(), "backend could not answer");
            Error::unavailable(backend)
        }
        Code::DeadlineExceeded => Error::DeadlineExceeded,
        Code::Internal => {
            tracing::warn!(backend, "backend internal error");
            Error::Upstream(status)
        }
        _ => Error::Upstream(status),
    }
}

/// Retries are allowed while they stay under a fifth of first attempts (plus a small floor),
/// counted over the process's life in a decaying way: a simple token bucket.
pub struct RetryBudget {
    tokens: AtomicU64,
}

const TOKEN: u64 = 10;
const MAX_TOKENS: u64 = 1_000;

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            tokens: AtomicU64::new(MAX_TOKENS / 2),
        }
    }
}

impl RetryBudget {
    /// Each first attempt earns a fifth of a retry.
    fn deposit(&self) {
        let _ = self
            .tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some((t + TOKEN / 5).min(MAX_TOKENS))
            });
    }

    fn withdraw(&self) -> bool {
        self.tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                t.checked_sub(TOKEN)
            })
            .is_ok()
    }
}

/// Calls `attempt` and retries it on `UNAVAILABLE` (the backend did not process the call)
/// up to twice, 25 then 100 ms apart, while the deadline and the budget allow.
pub async fn with_retry<T, F, Fut>(
    budget: &RetryBudget,
    deadline: &Deadline,
    mut attempt: F,
) -> std::result::Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, Status>>,
{
    budget.deposit();
    let mut backoff = [Duration::from_millis(25), Duration::from_millis(100)].into_iter();
    loop {
        match attempt().await {
            Err(status) if status.code() == Code::Unavailable => {
                let Some(pause) = backoff.next() else {
                    return Err(status);
                };
                if deadline.remaining() <= pause * 2 || !budget.withdraw() {
                    return Err(status);
                }
                tokio::time::sleep(pause).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[tokio::test]
    async fn retries_unavailable_only() {
        let budget = RetryBudget::default();
        let deadline = Deadline::after(Duration::from_secs(5));
        let calls = AtomicU32::new(0);
        let result: std::result::Result<(), Status> = with_retry(&budget, &deadline, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Status::unavailable("down"))
        })
        .await;
        assert_eq!(result.unwrap_err().code(), Code::Unavailable);
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let calls = AtomicU32::new(0);
        let _ = with_retry::<(), _, _>(&budget, &deadline, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Status::invalid_argument("bad"))
        })
        .await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "only UNAVAILABLE is retried"
        );
    }

    #[tokio::test]
    async fn the_budget_stops_retry_storms() {
        let budget = RetryBudget {
            tokens: AtomicU64::new(0),
        };
        let deadline = Deadline::after(Duration::from_secs(5));
        let calls = AtomicU32::new(0);
        let _ = with_retry::<(), _, _>(&budget, &deadline, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Status::unavailable("down"))
        })
        .await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "an empty budget allows no retry"
        );
    }

    #[test]
    fn backend_failures_become_unavailable_with_retry_info() {
        let e = backend_error("flag-service", Status::unavailable("connection refused"));
        assert!(matches!(e, Error::Unavailable { .. }));
        let e = backend_error("flag-service", Status::not_found("no such flag"));
        assert!(matches!(e, Error::Upstream(ref s) if s.code() == Code::NotFound));
    }
}
