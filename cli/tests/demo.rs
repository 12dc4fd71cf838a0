//! `cpis demo-data` and `cpis dev --demo`: a newcomer's first lookup shows something real.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_demo_loads_data_once_and_its_suggested_lookup_shows_a_flag() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_owned();
    let dev = Dev::start_with(|a| {
        a.demo = true;
        a.data_dir = dir.clone();
    })
    .await;
    let intro = dev.demo.clone().expect("--demo describes what to try");
    for who in [
        "clinician at",
        "local authority",
        "administrator",
        "auditor",
        "Flagged NHS numbers",
    ] {
        assert!(intro.contains(who), "{who}: {intro}");
    }
    // The suggested command, run as printed (with this gateway's address).
    let try_line = intro
        .lines()
        .skip_while(|l| !l.starts_with("Try:"))
        .nth(1)
        .unwrap()
        .trim()
        .to_owned();
    let args: Vec<String> = try_line
        .split_whitespace()
        .skip(1)
        .map(String::from)
        .collect();
    assert_eq!(args[0], "lookup", "{try_line}");
    assert!(
        try_line.contains(&format!("--gateway {}", dev.url)),
        "{try_line}"
    );
    let out = run(args.clone(), dir.clone()).await;
    out.ok();
    assert!(out.stdout.contains(": FLAGGED"), "{out:?}");
    assert!(out.stdout.contains("emergency duty: 01632 960"), "{out:?}");

    let admin = dev.admin();
    let orgs = dev
        .cpis(&admin, &["org", "list", "--all", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(orgs.as_array().unwrap().len(), 25);
    let auditor = dev.auditor();
    let count_lookups = async |dev: &Dev| {
        let events = dev
            .cpis(
                &auditor,
                &["audit", "list", "--all", "--page-size", "1000", "--json"],
            )
            .await
            .ok()
            .json();
        events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "LookupChild")
            .count()
    };
    let before = count_lookups(&dev).await;
    assert_eq!(
        before,
        500 + 1,
        "the demo's attendances and the lookup above"
    );
    dev.stop().await;

    // A restart on the same directory does not load the data again.
    let dev = Dev::start_with(|a| {
        a.demo = true;
        a.data_dir = dir.clone();
    })
    .await;
    assert!(
        dev.demo
            .as_deref()
            .unwrap_or_default()
            .contains("Flagged NHS numbers")
    );
    assert_eq!(count_lookups(&dev).await, before);
    dev.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_data_writes_a_deterministic_dataset_and_loads_it_through_the_api() {
    let dev = Dev::start().await;
    let out_a = dev.data_dir().join("a");
    let out_b = dev.data_dir().join("b");
    let common_args = |out: &std::path::Path| -> Vec<String> {
        [
            "demo-data",
            "--out",
            out.to_str().unwrap(),
            "--seed",
            "42",
            "--las",
            "4",
            "--trusts",
            "2",
            "--flags",
            "30",
            "--attendances",
            "20",
            "--today",
            "2026-06-01",
        ]
        .map(String::from)
        .to_vec()
    };
    let written = run(common_args(&out_b), dev.data_dir().to_owned()).await;
    written.ok();
    assert!(
        written
            .stdout
            .contains("wrote 4 local authorities, 2 trusts"),
        "{written:?}"
    );

    let mut load = common_args(&out_a);
    load.extend([
        "--load".into(),
        "--gateway".into(),
        dev.url.clone(),
        "--data-dir".into(),
        dev.data_dir().to_str().unwrap().into(),
    ]);
    let loaded = run(load, dev.data_dir().to_owned()).await;
    loaded.ok();
    assert!(
        loaded
            .stdout
            .contains("6 organisations, 30 flags accepted (0 rejected), 20 lookups"),
        "{loaded:?}"
    );

    // The same seed and day: the same files.
    for file in [
        "organisations.csv",
        "sites.csv",
        "attendances.csv",
        "flags/101.csv",
    ] {
        assert_eq!(
            std::fs::read(out_a.join(file)).unwrap(),
            std::fs::read(out_b.join(file)).unwrap(),
            "{file}"
        );
    }
    let orgs = std::fs::read_to_string(out_a.join("organisations.csv")).unwrap();
    assert_eq!(orgs.lines().next(), Some("ods_code,name,kind,onboarded"));
    assert!(orgs.contains("\n101,") && orgs.contains("\nRAA,"), "{orgs}");
    let attendances = std::fs::read_to_string(out_a.join("attendances.csv")).unwrap();
    assert_eq!(attendances.lines().count(), 21);

    // An open flag from LA 101's file is visible to a clinician at the first trust's site.
    let flags = std::fs::read(out_a.join("flags/101.csv")).unwrap();
    let records = cpis_cli::upload_csv::parse_upload_csv(&flags).unwrap();
    let open = records
        .iter()
        .find(|r| r.end_date.is_empty() && r.due_date.is_empty())
        .expect("an open CPP or LAC flag");
    let clinician = dev.token("dr.demo", "RAA", &["B0107"]);
    let lookup = dev
        .cpis(
            &clinician,
            &[
                "lookup",
                &open.nhs_number,
                "--setting",
                "RAA01",
                "--setting-type",
                "emergency-department",
            ],
        )
        .await;
    lookup.ok();
    assert!(lookup.stdout.contains(": FLAGGED"), "{lookup:?}");
    dev.stop().await;
}
