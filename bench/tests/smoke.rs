//! The benchmark's smoke run (CI): the whole measurement on a tiny dataset with short
//! windows, against the test PostgreSQL and Redis. It proves the command works end to end —
//! every target started, every row measured with every answer checked, the report written —
//! not how fast anything is (figures belong to `docs/benchmarks.md`, from a release build).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

/// `cpis-bench <args> --smoke` against the test servers, its databases named from `prefix`,
/// its work in `dir` and its output at `out`: its stdout, or `None` (skipped) without the
/// servers outside CI.
fn smoke(args: &[&str], prefix: &str, dir: &Path, out: &Path) -> Option<String> {
    // Under CI=true a missing server fails here rather than skipping.
    let (Some(postgres), Some(redis)) = (
        platform::testing::postgres_server_url(),
        platform::testing::redis_url(),
    ) else {
        eprintln!("skipped: CPIS_TEST_POSTGRES_URL and CPIS_TEST_REDIS_URL are not set");
        return None;
    };
    let output = Command::new(cpis_tests::binary("cpis-bench"))
        .args(args)
        .args(["--smoke", "--postgres", &postgres, "--redis", &redis])
        .args(["--db-prefix", &format!("{prefix}_{}", std::process::id())])
        .arg("--work-dir")
        .arg(dir.join("work"))
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "cpis-bench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(stdout)
}

#[test]
fn the_smoke_run_measures_every_target_and_every_answer_is_right() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("docs");
    let Some(stdout) = smoke(&["run", "--drop-after"], "cpis_smoke", dir.path(), &out) else {
        return;
    };

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("benchmarks.json")).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap();
    for (target, workload) in [
        ("echo", "echo"),
        ("echo over TLS", "echo"),
        ("production", "silent"),
        ("production", "notifying"),
        ("cpis dev", "silent"),
        ("cpis dev", "notifying"),
    ] {
        let mine: Vec<_> = rows
            .iter()
            .filter(|r| r["target"] == target && r["workload"] == workload)
            .collect();
        assert!(!mine.is_empty(), "no {target} {workload} rows:\n{stdout}");
        for r in mine {
            assert!(r["ok"].as_u64().unwrap() > 0, "{r}");
            assert_eq!(
                r["errors"],
                serde_json::json!({}),
                "wrong answers or failed calls: {r}"
            );
        }
    }
    // Both log sizes, closed and open loops, and a ratio to the echo on every closed row.
    assert!(rows.iter().any(|r| r["attendances"] == 2000));
    assert!(rows.iter().any(|r| r["load"]["mode"] == "open"));
    assert!(
        rows.iter()
            .filter(|r| r["load"]["mode"] == "closed")
            .all(|r| r["ratio_to_echo"].as_f64().is_some())
    );
    assert_eq!(report["checks"].as_array().unwrap().len(), 6);
    let markdown = std::fs::read_to_string(out.join("benchmarks.md")).unwrap();
    assert!(
        markdown.contains("| production | notifying |"),
        "{markdown}"
    );
    assert!(
        std::fs::read_to_string(out.join("benchmarks.svg"))
            .unwrap()
            .contains("<polyline")
    );
}

#[test]
fn the_abuse_smoke_run_reaches_each_attacks_state_and_writes_its_figures() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("figures.md");
    if smoke(&["abuse"], "cpis_abuse_smoke", dir.path(), &out).is_none() {
        return;
    }
    let figures = std::fs::read_to_string(&out).unwrap();
    for expected in [
        "200 watches opened and abandoned",
        "back to 0 and calls in flight to 0",
        "200 answered UNAUTHENTICATED at once, 0 otherwise",
        "| all accepted |",
        "2000 accepted",
        "2000 rejected",
    ] {
        assert!(
            figures.contains(expected),
            "{expected:?} missing:\n{figures}"
        );
    }
    // A lookup's failures would show as a map of codes in an errors cell.
    assert!(!figures.contains("{\""), "a lookup failed:\n{figures}");
}
