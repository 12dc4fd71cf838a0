//! Instants on the wire (`google.protobuf.Timestamp`); calendar dates are in `cpis_domain`.

use chrono::{DateTime, Utc};

pub fn to_timestamp(instant: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: instant.timestamp(),
        nanos: instant.timestamp_subsec_nanos() as i32,
    }
}

/// `None` for a timestamp outside chrono's range or with out-of-range nanoseconds.
pub fn from_timestamp(ts: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(ts.nanos).ok()?;
    DateTime::from_timestamp(ts.seconds, nanos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn timestamps_round_trip() {
        let t = Utc.with_ymd_and_hms(2025, 3, 30, 1, 0, 0).unwrap();
        assert_eq!(from_timestamp(&to_timestamp(t)), Some(t));
        assert_eq!(
            from_timestamp(&prost_types::Timestamp {
                seconds: 0,
                nanos: -1
            }),
            None
        );
    }
}
