//! The load generator, the same for every target: `concurrency` callers spread over a few
//! HTTP/2 connections, each making its next call as soon as the last one answered (closed
//! loop), untimed for the warm-up and then timed for a fixed duration. A second form issues
//! calls at a fixed rate (open loop) and measures each from when it was due, so a slow
//! answer cannot hide the calls that should have been sent meanwhile.

use serde::Serialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One call's outcome: `Ok`, or why not (a gRPC code's name, or a wrong answer's).
pub type Outcome = Result<(), String>;

/// How a measurement runs.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub warmup: Duration,
    pub duration: Duration,
}

/// What one measurement saw, after the warm-up.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    /// Calls started in the timed window.
    pub calls: u64,
    pub ok: u64,
    /// Failed calls by gRPC code name.
    pub errors: BTreeMap<String, u64>,
    pub seconds: f64,
    /// Successful calls per second.
    pub throughput: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    ok: u64,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn add(&mut self, latency: Duration, outcome: Outcome) {
        self.latencies_us
            .push(latency.as_micros().min(u128::from(u32::MAX)) as u32);
        match outcome {
            Ok(()) => self.ok += 1,
            Err(why) => *self.errors.entry(why).or_default() += 1,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.ok += other.ok;
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
    }

    fn finish(mut self, seconds: f64) -> Measured {
        self.latencies_us.sort_unstable();
        let ms = |p: f64| percentile(&self.latencies_us, p) as f64 / 1000.0;
        Measured {
            calls: self.latencies_us.len() as u64,
            ok: self.ok,
            errors: self.errors,
            seconds,
            throughput: self.ok as f64 / seconds,
            p50_ms: ms(50.0),
            p90_ms: ms(90.0),
            p99_ms: ms(99.0),
            max_ms: ms(100.0),
        }
    }
}

/// The nearest-rank percentile of sorted values (0 when there are none).
pub fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Closed loop: `concurrency` callers; `call(caller, n)` makes caller's n-th call.
pub async fn closed<F, Fut>(spec: Spec, concurrency: usize, call: F) -> Measured
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let call = Arc::new(call);
    let started = Instant::now();
    let timed_from = started + spec.warmup;
    let end = timed_from + spec.duration;
    let mut callers = Vec::with_capacity(concurrency);
    for caller in 0..concurrency {
        let call = call.clone();
        callers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut n = 0u64;
            loop {
                let at = Instant::now();
                if at >= end {
                    break;
                }
                let outcome = call(caller, n).await;
                n += 1;
                if at >= timed_from {
                    tally.add(at.elapsed(), outcome);
                }
            }
            tally
        }));
    }
    let mut all = Tally::default();
    for caller in callers {
        if let Ok(tally) = caller.await {
            all.merge(tally);
        }
    }
    all.finish(spec.duration.as_secs_f64())
}

/// Open loop: `rate` calls a second, each timed from when it was due; at most `limit`
/// outstanding (a call due beyond that counts as RESOURCE_EXHAUSTED on the client's side).
pub async fn open<F, Fut>(spec: Spec, rate: f64, limit: usize, call: F) -> Measured
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let call = Arc::new(call);
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let started = Instant::now();
    let timed_from = started + spec.warmup;
    let end = timed_from + spec.duration;
    let outstanding = Arc::new(tokio::sync::Semaphore::new(limit));
    let (results, mut receive) = tokio::sync::mpsc::unbounded_channel();
    let mut n = 0u64;
    loop {
        let due = started + interval.mul_f64(n as f64);
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let timed = due >= timed_from;
        match outstanding.clone().try_acquire_owned() {
            Ok(permit) => {
                let call = call.clone();
                let results = results.clone();
                tokio::spawn(async move {
                    let outcome = call((n % 1024) as usize, n).await;
                    drop(permit);
                    if timed {
                        let _ = results.send((due.elapsed(), outcome));
                    }
                });
            }
            Err(_) if timed => {
                let _ = results.send((Duration::ZERO, Err("ClientBacklogFull".to_owned())));
            }
            Err(_) => {}
        }
        n += 1;
    }
    drop(results);
    let mut tally = Tally::default();
    while let Some((latency, outcome)) = receive.recv().await {
        tally.add(latency, outcome);
    }
    tally.finish(spec.duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[], 99.0), 0);
    }

    #[tokio::test]
    async fn a_closed_loop_counts_only_the_timed_window_and_errors_by_code() {
        let spec = Spec {
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(300),
        };
        let m = closed(spec, 4, |caller, n| async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if caller == 0 && n % 2 == 0 {
                Err("Unavailable".to_owned())
            } else {
                Ok(())
            }
        })
        .await;
        // 4 callers, 10 ms a call, 300 ms timed: about 120 calls, never the warm-up's 40 too.
        assert!((80..=130).contains(&m.calls), "{m:?}");
        assert_eq!(m.ok + m.errors["Unavailable"], m.calls);
        assert!(m.p50_ms >= 10.0, "{m:?}");
    }

    #[tokio::test]
    async fn an_open_loop_times_calls_from_when_they_were_due() {
        let spec = Spec {
            warmup: Duration::from_millis(50),
            duration: Duration::from_millis(400),
        };
        // A server that stalls every call for 40 ms at 100/s: each call waits its own 40 ms.
        let m = open(spec, 100.0, 64, |_, _| async {
            tokio::time::sleep(Duration::from_millis(40)).await;
            Ok(())
        })
        .await;
        assert!((35..=45).contains(&m.calls), "{m:?}");
        assert!(m.p50_ms >= 40.0, "{m:?}");
    }
}
