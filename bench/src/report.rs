//! The results, written three ways: JSON (everything), a Markdown section of
//! `benchmarks.md` (the table, the targets, the machine, the commit and the command) and an
//! SVG chart of throughput and p99 by concurrency. Prose outside the generated section of an
//! existing `benchmarks.md` is kept.

use crate::load::Measured;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Load {
    /// `concurrency` callers, each calling again as soon as answered.
    Closed { concurrency: usize },
    /// Calls at a fixed rate a second.
    Open { rate: f64 },
}

impl Load {
    pub fn label(&self) -> String {
        match self {
            Load::Closed { concurrency } => format!("c={concurrency}"),
            Load::Open { rate } => format!("{rate:.0}/s"),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub target: &'static str,
    pub workload: &'static str,
    /// Rows in the attendance log (lookups only).
    pub attendances: Option<u64>,
    pub load: Load,
    #[serde(flatten)]
    pub measured: Measured,
    /// Throughput divided by the plaintext echo's at the same concurrency.
    pub ratio_to_echo: Option<f64>,
    /// CPU milliseconds per call in the timed window, by process.
    pub cpu_ms_per_call: BTreeMap<String, f64>,
    /// PostgreSQL WAL written per call in the timed window (production only).
    pub wal_bytes_per_call: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub target: String,
    pub measured: String,
    pub met: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub generated_at: String,
    pub machine: String,
    pub commit: String,
    pub command: String,
    pub postgres: String,
    pub settings: String,
    pub dataset: serde_json::Value,
    pub rows: Vec<Row>,
    pub checks: Vec<Check>,
    pub measured_seconds: f64,
}

pub const ECHO: &str = "echo";
pub const PRODUCTION: &str = "production";
pub const DEV: &str = "cpis dev";

impl Report {
    /// Each row's ratio to the plaintext echo at its concurrency.
    pub fn fill_ratios(&mut self) {
        let echo: Vec<(Load, f64)> = self
            .rows
            .iter()
            .filter(|r| r.target == ECHO)
            .map(|r| (r.load, r.measured.throughput))
            .collect();
        for row in &mut self.rows {
            if let Load::Closed { .. } = row.load
                && let Some((_, base)) = echo.iter().find(|(l, _)| *l == row.load)
                && *base > 0.0
            {
                row.ratio_to_echo = Some(row.measured.throughput / base);
            }
        }
    }

    fn find(
        &self,
        target: &str,
        workload: &str,
        attendances: Option<u64>,
        load: Load,
    ) -> Option<&Row> {
        self.rows.iter().find(|r| {
            r.target == target
                && r.workload == workload
                && r.load == load
                && (attendances.is_none() || r.attendances == attendances)
        })
    }

    /// The issue's targets, judged on the production configuration at the large log.
    pub fn judge(&mut self, large: u64, small: u64, rate: f64) {
        let mut checks = Vec::new();
        let c64 = Load::Closed { concurrency: 64 };
        for (workload, share) in [("silent", 0.20), ("notifying", 0.10)] {
            if let Some(r) = self.find(PRODUCTION, workload, Some(large), c64)
                && let Some(ratio) = r.ratio_to_echo
            {
                checks.push(Check {
                    target: format!(
                        "{workload} reads at c=64 at least {:.0}% of the echo's throughput",
                        share * 100.0
                    ),
                    measured: format!(
                        "{:.1}% ({:.0}/s against {:.0}/s)",
                        ratio * 100.0,
                        r.measured.throughput,
                        r.measured.throughput / ratio
                    ),
                    met: ratio >= share,
                });
            }
        }
        let open = Load::Open { rate };
        for workload in ["silent", "notifying"] {
            if let Some(r) = self.find(PRODUCTION, workload, Some(large), open) {
                let clean = r.measured.errors.is_empty();
                checks.push(Check {
                    target: format!("{workload} reads: p99 under 10 ms at {rate:.0} requests/s"),
                    measured: format!(
                        "p99 {:.2} ms ({} calls, {} errors)",
                        r.measured.p99_ms,
                        r.measured.calls,
                        r.measured.calls - r.measured.ok
                    ),
                    met: r.measured.p99_ms < 10.0 && clean,
                });
            }
        }
        // Latency with nothing queued (c=1) shows what the log's size costs a lookup;
        // throughput at c=64 what it costs the machine.
        let c1 = Load::Closed { concurrency: 1 };
        for workload in ["silent", "notifying"] {
            let pair = |load| {
                self.find(PRODUCTION, workload, Some(large), load)
                    .zip(self.find(PRODUCTION, workload, Some(small), load))
            };
            if let (Some((big, little)), Some((big64, little64))) = (pair(c1), pair(c64)) {
                let p50 = big.measured.p50_ms / little.measured.p50_ms.max(0.001);
                let p99 = big.measured.p99_ms / little.measured.p99_ms.max(0.001);
                let slower = little64.measured.throughput / big64.measured.throughput.max(0.001);
                checks.push(Check {
                    target: format!(
                        "{workload} reads at {large} attendances within 1.5x of at {small}"
                    ),
                    measured: format!(
                        "c=1: p50 {p50:.2}x, p99 {p99:.2}x; c=64 throughput {slower:.2}x lower"
                    ),
                    met: p50 <= 1.5 && p99 <= 1.5 && slower <= 1.5,
                });
            }
        }
        self.checks = checks;
    }

    pub fn write(&self, dir: &Path, svg_name: &str) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("benchmarks.json"),
            serde_json::to_string_pretty(self)? + "\n",
        )?;
        std::fs::write(dir.join(svg_name), self.svg())?;
        let path = dir.join("benchmarks.md");
        let section = self.markdown(svg_name);
        let existing = std::fs::read_to_string(&path).unwrap_or_default();
        let text = match (existing.find(BEGIN), existing.find(END)) {
            (Some(a), Some(b)) if a < b => {
                format!(
                    "{}{}{}",
                    &existing[..a],
                    section,
                    &existing[b + END.len()..]
                )
            }
            _ => format!("# Benchmarks\n\n{section}\n"),
        };
        std::fs::write(path, text)?;
        Ok(())
    }

    fn markdown(&self, svg_name: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{BEGIN}");
        let _ = writeln!(
            s,
            "_Generated by `cpis-bench` on {}; do not edit between these markers._\n",
            self.generated_at
        );
        let _ = writeln!(s, "- Command: `{}`", self.command);
        let _ = writeln!(s, "- Commit: `{}`", self.commit);
        let _ = writeln!(s, "- Machine: {}", self.machine);
        let _ = writeln!(s, "- PostgreSQL: {}", self.postgres);
        let _ = writeln!(s, "- Settings: {}", self.settings);
        let _ = writeln!(s, "- Dataset: `{}`", self.dataset);
        let _ = writeln!(
            s,
            "- Measured part (warm-ups and timed windows, not loading): {:.0} s\n",
            self.measured_seconds
        );
        let _ = writeln!(s, "### Targets\n");
        let _ = writeln!(s, "| target | measured | met |");
        let _ = writeln!(s, "|---|---|---|");
        for c in &self.checks {
            let _ = writeln!(
                s,
                "| {} | {} | {} |",
                c.target,
                c.measured,
                if c.met { "yes" } else { "**no**" }
            );
        }
        let _ = writeln!(s, "\n### Results\n");
        let _ = writeln!(
            s,
            "| target | workload | attendances | load | calls/s | p50 ms | p90 ms | p99 ms | max ms | errors | vs echo |"
        );
        let _ = writeln!(s, "|---|---|---:|---|---:|---:|---:|---:|---:|---|---:|");
        for r in &self.rows {
            let m = &r.measured;
            let errors = if m.errors.is_empty() {
                "none".to_owned()
            } else {
                m.errors
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {} |",
                r.target,
                r.workload,
                r.attendances.map(|a| a.to_string()).unwrap_or_default(),
                r.load.label(),
                m.throughput,
                m.p50_ms,
                m.p90_ms,
                m.p99_ms,
                m.max_ms,
                errors,
                r.ratio_to_echo
                    .map(|x| format!("{:.1}%", x * 100.0))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(
            s,
            "\n![Throughput and p99 latency by concurrency]({svg_name})\n"
        );
        self.cpu_table(&mut s);
        let _ = writeln!(s, "{END}");
        s
    }

    /// CPU per call by process, and WAL per call: the per-request costs capacity.md uses.
    fn cpu_table(&self, s: &mut String) {
        let mut processes: Vec<&str> = Vec::new();
        for r in &self.rows {
            for p in r.cpu_ms_per_call.keys() {
                if !processes.contains(&p.as_str()) {
                    processes.push(p);
                }
            }
        }
        if processes.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "### CPU per call (ms, user + system, timed window) and WAL per call\n"
        );
        let _ = writeln!(
            s,
            "| target | workload | attendances | load | {} | total | WAL bytes |",
            processes.join(" | ")
        );
        let _ = writeln!(
            s,
            "|---|---|---:|---|{}---:|---:|",
            "---:|".repeat(processes.len())
        );
        for r in self.rows.iter().filter(|r| !r.cpu_ms_per_call.is_empty()) {
            let cells: Vec<String> = processes
                .iter()
                .map(|p| {
                    r.cpu_ms_per_call
                        .get(*p)
                        .map(|v| format!("{v:.3}"))
                        .unwrap_or_default()
                })
                .collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {:.3} | {} |",
                r.target,
                r.workload,
                r.attendances.map(|a| a.to_string()).unwrap_or_default(),
                r.load.label(),
                cells.join(" | "),
                r.cpu_ms_per_call.values().sum::<f64>(),
                r.wal_bytes_per_call
                    .map(|w| format!("{w:.0}"))
                    .unwrap_or_default()
            );
        }
        s.push('\n');
    }

    /// Two panels, both on log scales: throughput and p99 by concurrency, one line per
    /// target and workload (closed-loop rows at the large log only).
    fn svg(&self) -> String {
        // (name, [(concurrency, calls/s, p99 ms)])
        type Series = (String, Vec<(usize, f64, f64)>);
        let mut series: Vec<Series> = Vec::new();
        for r in &self.rows {
            let Load::Closed { concurrency } = r.load else {
                continue;
            };
            let name = format!("{} {}", r.target, r.workload);
            if r.target != ECHO
                && r.attendances.is_some()
                && self
                    .rows
                    .iter()
                    .any(|o| o.target == r.target && o.attendances > r.attendances)
            {
                continue;
            }
            let point = (concurrency, r.measured.throughput, r.measured.p99_ms);
            match series.iter_mut().find(|(n, _)| *n == name) {
                Some((_, points)) => points.push(point),
                None => series.push((name, vec![point])),
            }
        }
        let mut levels: Vec<usize> = series
            .iter()
            .flat_map(|(_, p)| p.iter().map(|x| x.0))
            .collect();
        levels.sort_unstable();
        levels.dedup();
        const COLOURS: [&str; 6] = [
            "#222222", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e",
        ];
        let (w, h, pad) = (460.0, 300.0, 55.0);
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="11">"#,
            2.0 * w + 20.0,
            h + 30.0 + 16.0 * series.len() as f64
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        for (panel, (title, pick)) in [
            ("calls/s (log scale)", 1usize),
            ("p99 latency, ms (log scale)", 2usize),
        ]
        .into_iter()
        .enumerate()
        {
            let x0 = panel as f64 * (w + 20.0);
            let values: Vec<f64> = series
                .iter()
                .flat_map(|(_, p)| p.iter().map(|x| if pick == 1 { x.1 } else { x.2 }))
                .filter(|v| *v > 0.0)
                .collect();
            let lo = values.iter().cloned().fold(f64::MAX, f64::min).max(0.001);
            let hi = values.iter().cloned().fold(0.0, f64::max).max(lo * 10.0);
            let (lo, hi) = (lo.log10().floor(), hi.log10().ceil());
            let y = |v: f64| {
                let f = (v.max(10f64.powf(lo)).log10() - lo) / (hi - lo).max(1.0);
                h - pad - f * (h - 2.0 * pad)
            };
            let x = |c: usize| {
                let i = levels.iter().position(|l| *l == c).unwrap_or(0);
                x0 + pad + i as f64 * (w - 1.5 * pad) / (levels.len().max(2) - 1) as f64
            };
            let _ = writeln!(
                s,
                r#"<text x="{}" y="18" font-size="13" font-weight="bold">{title}</text>"#,
                x0 + pad
            );
            let mut e = lo as i32;
            while e <= hi as i32 {
                let v = 10f64.powi(e);
                let _ = writeln!(
                    s,
                    r##"<line x1="{}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#dddddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                    x0 + pad,
                    x0 + w - pad / 2.0,
                    x0 + pad - 4.0,
                    y(v) + 4.0,
                    if v >= 1.0 {
                        format!("{v:.0}")
                    } else {
                        format!("{v}")
                    },
                    y = y(v)
                );
                e += 1;
            }
            for c in &levels {
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{}" text-anchor="middle">c={c}</text>"#,
                    x(*c),
                    h - pad + 16.0
                );
            }
            for (i, (_, points)) in series.iter().enumerate() {
                let path: Vec<String> = points
                    .iter()
                    .map(|p| format!("{:.1},{:.1}", x(p.0), y(if pick == 1 { p.1 } else { p.2 })))
                    .collect();
                let _ = writeln!(
                    s,
                    r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
                    COLOURS[i % COLOURS.len()],
                    path.join(" ")
                );
            }
        }
        for (i, (name, _)) in series.iter().enumerate() {
            let yy = h + 10.0 + 16.0 * i as f64;
            let _ = writeln!(
                s,
                r#"<line x1="{pad}" x2="{}" y1="{yy}" y2="{yy}" stroke="{}" stroke-width="3"/><text x="{}" y="{}">{name}</text>"#,
                pad + 24.0,
                COLOURS[i % COLOURS.len()],
                pad + 30.0,
                yy + 4.0
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

const BEGIN: &str = "<!-- cpis-bench:begin -->";
const END: &str = "<!-- cpis-bench:end -->";

#[cfg(test)]
mod tests {
    use super::*;

    fn row(target: &'static str, workload: &'static str, c: usize, throughput: f64) -> Row {
        Row {
            target,
            workload,
            attendances: (target != ECHO).then_some(100),
            load: Load::Closed { concurrency: c },
            measured: Measured {
                calls: 10,
                ok: 10,
                errors: BTreeMap::new(),
                seconds: 1.0,
                throughput,
                p50_ms: 1.0,
                p90_ms: 2.0,
                p99_ms: 3.0,
                max_ms: 4.0,
            },
            ratio_to_echo: None,
            cpu_ms_per_call: BTreeMap::from([("gateway".to_owned(), 0.25)]),
            wal_bytes_per_call: None,
        }
    }

    #[test]
    fn ratios_and_targets_come_from_the_echo_at_the_same_concurrency() {
        let mut report = Report {
            generated_at: "now".into(),
            machine: "m".into(),
            commit: "c".into(),
            command: "cmd".into(),
            postgres: "pg".into(),
            settings: "s".into(),
            dataset: serde_json::json!({}),
            rows: vec![
                row(ECHO, "echo", 64, 10_000.0),
                row(ECHO, "echo", 1, 1_000.0),
                row(PRODUCTION, "silent", 64, 2_500.0),
                row(PRODUCTION, "notifying", 64, 900.0),
            ],
            checks: Vec::new(),
            measured_seconds: 1.0,
        };
        report.fill_ratios();
        report.judge(100, 10, 1000.0);
        assert_eq!(report.rows[2].ratio_to_echo, Some(0.25));
        assert!(report.checks[0].met, "{:?}", report.checks);
        assert!(
            !report.checks[1].met,
            "9% is under 10%: {:?}",
            report.checks
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("benchmarks.md"),
            format!("# B\n\nprose before\n\n{BEGIN}\nold\n{END}\n\nprose after\n"),
        )
        .unwrap();
        report.write(dir.path(), "chart.svg").unwrap();
        let md = std::fs::read_to_string(dir.path().join("benchmarks.md")).unwrap();
        assert!(md.contains("prose before") && md.contains("prose after"));
        assert!(!md.contains("\nold\n"));
        assert!(md.contains("| production | silent | 100 | c=64 | 2500 |"));
        assert!(
            md.contains("| production | silent | 100 | c=64 | 0.250 | 0.250 |  |"),
            "{md}"
        );
        let svg = std::fs::read_to_string(dir.path().join("chart.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("polyline"));
    }
}
