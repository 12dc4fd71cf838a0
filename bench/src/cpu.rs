//! Where the CPU goes: each process's user + system time from `/proc/<pid>/stat`, sampled at
//! the start and the end of a timed window, divided by the calls made in it. This is the
//! per-request cost `docs/capacity.md` sizes replicas and PostgreSQL from.

use std::collections::BTreeMap;
use std::time::Duration;

/// A process to watch: one pid, or every process with this command name (PostgreSQL's
/// backends, Redis).
#[derive(Debug, Clone)]
pub enum Who {
    Pid(u32),
    Command(&'static str),
}

/// Clock ticks a second (`getconf CLK_TCK`; 100 on Linux when it cannot be asked).
fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// (command name, utime + stime) of a `/proc/<pid>/stat` line.
fn parse_stat(line: &str) -> Option<(&str, u64)> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let name = &line[open + 1..close];
    let fields: Vec<&str> = line[close + 1..].split_whitespace().collect();
    // After the name: state is field 3 of the line; utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

fn ticks_of(pid: &str) -> Option<(String, u64)> {
    let line = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&line).map(|(n, t)| (n.to_owned(), t))
}

/// Ticks used so far by each watched process (summed per name).
pub fn sample(watch: &[(String, Who)]) -> BTreeMap<String, u64> {
    let mut by_command: Option<Vec<(String, u64)>> = None;
    let mut out = BTreeMap::new();
    for (name, who) in watch {
        let ticks = match who {
            Who::Pid(pid) => ticks_of(&pid.to_string()).map(|(_, t)| t).unwrap_or(0),
            Who::Command(command) => {
                let all = by_command.get_or_insert_with(|| {
                    std::fs::read_dir("/proc")
                        .into_iter()
                        .flatten()
                        .flatten()
                        .filter_map(|e| ticks_of(&e.file_name().to_string_lossy()))
                        .collect()
                });
                all.iter()
                    .filter(|(n, _)| n == command)
                    .map(|(_, t)| t)
                    .sum()
            }
        };
        *out.entry(name.clone()).or_default() += ticks;
    }
    out
}

/// Samples at `warmup` and at `warmup + duration` (in a task of its own); the difference.
pub async fn window(
    watch: Vec<(String, Who)>,
    warmup: Duration,
    duration: Duration,
) -> BTreeMap<String, f64> {
    tokio::time::sleep(warmup).await;
    let before = sample(&watch);
    tokio::time::sleep(duration).await;
    let after = sample(&watch);
    let per_tick = 1000.0 / ticks_per_second();
    after
        .into_iter()
        .map(|(name, t)| {
            let used = t.saturating_sub(before.get(&name).copied().unwrap_or(0));
            (name, used as f64 * per_tick)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_spaces_in_the_name_parse() {
        let line = "1234 (tokio runtime) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0";
        assert_eq!(parse_stat(line), Some(("tokio runtime", 325)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_seen_using_cpu() {
        let me = vec![("me".to_owned(), Who::Pid(std::process::id()))];
        let before = sample(&me)["me"];
        let mut x = 0u64;
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(sample(&me)["me"] > before);
    }
}
