//! The Prometheus alert rules (`k8s/base/alerts/`) are valid, behave as their unit tests say
//! (`promtool check rules`, `promtool test rules`), and alert only on metrics cpis exports.
//! promtool comes with Debian's `prometheus` package, which `tests/run.sh` installs under
//! CI=true; elsewhere a missing promtool skips the promtool test, under CI=true it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

fn alerts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../k8s/base/alerts")
}

fn promtool_installed() -> bool {
    Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    if !promtool_installed() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "promtool is missing (apt-get install -y prometheus): under CI the alert \
                 rules must be tested, not skipped"
            );
        }
        eprintln!("SKIPPED: promtool is not installed (apt-get install -y prometheus)");
        return;
    }
    for args in [
        ["check", "rules", "cpis.rules.yaml"],
        ["test", "rules", "cpis.rules.test.yaml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(alerts_dir())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A renamed metric would leave an alert that never fires; promtool cannot know.
#[tokio::test]
async fn every_metric_the_alerts_use_is_one_cpis_exports() {
    let rules = std::fs::read_to_string(alerts_dir().join("cpis.rules.yaml")).unwrap();
    let exported = platform::metrics::metrics().render().await;
    let mut used = Vec::new();
    for line in rules
        .lines()
        .filter(|l| l.trim_start().starts_with("expr:"))
    {
        let mut rest = line;
        while let Some(at) = rest.find("cpis_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            used.push(name);
        }
    }
    assert!(!used.is_empty(), "no cpis metric in any alert expression");
    for name in used {
        assert!(
            exported.contains(&format!("# TYPE {name} ")),
            "the alerts use {name}, which cpis does not export"
        );
    }
}
