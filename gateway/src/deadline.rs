//! The caller's deadline, carried down to every backend call: each gets the time that is
//! left, less a margin to compose and answer, so the gateway answers before its caller gives
//! up instead of after.

use platform::error::{Error, Result};
use std::time::{Duration, Instant};
use tonic::metadata::MetadataMap;

/// Used when the caller sets none: long enough for a lookup under load, short enough that a
/// stuck backend does not hold a request forever.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
pub struct Deadline(Instant);

/// `grpc-timeout`: an integer of at most 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl Deadline {
    pub fn from_metadata(metadata: &MetadataMap) -> Self {
        let timeout = metadata
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .unwrap_or(DEFAULT_TIMEOUT);
        Deadline(Instant::now() + timeout)
    }

    pub fn after(timeout: Duration) -> Self {
        Deadline(Instant::now() + timeout)
    }

    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// The timeout for one backend call: what is left less 10% (at least 5 ms) to compose
    /// the answer; `DEADLINE_EXCEEDED` when nothing useful is left.
    pub fn for_backend(&self) -> Result<Duration> {
        let left = self.remaining();
        let margin = (left / 10).max(Duration::from_millis(5));
        match left.checked_sub(margin) {
            Some(t) if t >= Duration::from_millis(1) => Ok(t),
            _ => Err(Error::DeadlineExceeded),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("999999999S"), None);
        assert_eq!(parse_grpc_timeout("5"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("-5S"), None);
    }

    #[test]
    fn a_backend_gets_less_than_what_is_left() {
        let d = Deadline::after(Duration::from_secs(1));
        let t = d.for_backend().unwrap();
        assert!(
            t < Duration::from_secs(1) && t > Duration::from_millis(800),
            "{t:?}"
        );
        assert!(matches!(
            Deadline::after(Duration::from_millis(3)).for_backend(),
            Err(Error::DeadlineExceeded)
        ));
    }
}
