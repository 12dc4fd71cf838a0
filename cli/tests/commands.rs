//! Every `cpis` subcommand, run as the real binary against an in-process `cpis dev`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_prints_a_summary_a_clinician_reads_and_json_for_scripts() {
    let dev = Dev::start().await;
    dev.onboard().await;
    let nhs = child(1);
    let file = write(
        dev.data_dir(),
        "flags.csv",
        format!(
            "{HEADER}\n{}\n{}\n",
            good_row(&nhs, "cpp"),
            good_row(&nhs, "ucpp")
        ),
    );
    dev.cpis(&dev.la(), &["upload", &file]).await.ok();

    let clinician = dev.clinician();
    let lookup = [
        "lookup",
        &nhs,
        "--setting",
        SITE,
        "--setting-type",
        "emergency-department",
    ];
    let text = dev.cpis(&clinician, &lookup).await;
    text.ok();
    let out = &text.stdout;
    assert!(
        out.contains(": FLAGGED - 2 child protection flags"),
        "{text:?}"
    );
    assert!(out.contains("Child Protection Plan - ACTIVE"), "{text:?}");
    assert!(
        out.contains("Unborn Child Protection Plan - ACTIVE"),
        "{text:?}"
    );
    assert!(out.contains("baby due 2099-01-01"), "{text:?}");
    assert!(out.contains("Tower Hamlets (706)"), "{text:?}");
    assert!(
        out.find("emergency duty: 020 7946 0001").unwrap()
            < out.find("office hours:   020 7946 0002").unwrap()
    );
    assert!(out.contains("0 in the last 30 days"), "{text:?}");

    // The second lookup counts the first as an attendance; --json is parsed by a script.
    let mut with_json = lookup.to_vec();
    with_json.push("--json");
    let answer = dev.cpis(&clinician, &with_json).await.ok().json();
    assert_eq!(answer["flagged"], true);
    assert_eq!(answer["nhs_number"], nhs.as_str());
    assert_eq!(answer["flags"].as_array().unwrap().len(), 2);
    assert_eq!(answer["flags"][0]["local_authority"]["ods_code"], "706");
    assert_eq!(answer["attendance"]["available"], true);
    assert_eq!(answer["attendance"]["last_30_days"], 1);
    assert_eq!(
        answer["attendance"]["recent"][0]["setting_type"],
        "SETTING_TYPE_EMERGENCY_DEPARTMENT"
    );

    // Not flagged is said in words; --silent is a scheduled read that needs B0170.
    let gp = dev.token("dr.gp", TRUST, &["B0170"]);
    let silent = dev
        .cpis(
            &gp,
            &[
                "lookup",
                &child(50),
                "--setting",
                SITE,
                "--setting-type",
                "GP_PRACTICE",
                "--silent",
            ],
        )
        .await;
    silent.ok();
    assert!(silent.stdout.contains(": not flagged"), "{silent:?}");
    dev.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_are_refused_in_words_with_their_exit_status() {
    let dev = Dev::start().await;
    dev.onboard().await;
    let clinician = dev.clinician();

    // A bad NHS number is judged by the server: its field violation is printed.
    let bad = dev
        .cpis(
            &clinician,
            &[
                "lookup",
                "123",
                "--setting",
                SITE,
                "--setting-type",
                "emergency-department",
            ],
        )
        .await;
    bad.code(1);
    assert!(bad.stderr.contains("the request is invalid"), "{bad:?}");
    assert!(
        bad.stderr.contains("\n  nhs_number: must be 10 digits"),
        "{bad:?}"
    );

    // An unknown setting type never leaves the terminal.
    let unknown = dev
        .cpis(
            &clinician,
            &[
                "lookup",
                &child(1),
                "--setting",
                SITE,
                "--setting-type",
                "spa",
            ],
        )
        .await;
    unknown.code(2);
    assert!(
        unknown.stderr.contains("unknown setting type"),
        "{unknown:?}"
    );
    assert!(
        unknown.stderr.contains("emergency-department"),
        "{unknown:?}"
    );

    // No token: said before anything is sent.
    let url = dev.url.clone();
    let no_token = run(
        [
            "lookup",
            &child(1),
            "--setting",
            SITE,
            "--setting-type",
            "emergency-department",
            "--gateway",
            &url,
        ]
        .map(String::from)
        .to_vec(),
        dev.data_dir().to_owned(),
    )
    .await;
    no_token.code(2);
    let no_token = run(
        [
            "lookup",
            &child(1),
            "--setting",
            SITE,
            "--setting-type",
            "maternity",
            "--gateway",
            &url,
        ]
        .map(String::from)
        .to_vec(),
        dev.data_dir().to_owned(),
    )
    .await;
    no_token.code(2);
    assert!(no_token.stderr.contains("no token"), "{no_token:?}");

    // A token without the lookup's activity: which activity, and whom to ask.
    let la = dev.la();
    let denied = dev
        .cpis(
            &la,
            &[
                "lookup",
                &child(1),
                "--setting",
                SITE,
                "--setting-type",
                "maternity",
            ],
        )
        .await;
    denied.code(1);
    assert!(denied.stderr.contains("permission denied"), "{denied:?}");
    assert!(
        denied
            .stderr
            .contains("your role lacks activity B0107: ask your RA manager"),
        "{denied:?}"
    );

    // A site outside the caller's organisation.
    let elsewhere = dev
        .cpis(
            &clinician,
            &[
                "lookup",
                &child(1),
                "--setting",
                "RYY01",
                "--setting-type",
                "nhs-111",
            ],
        )
        .await;
    elsewhere.code(1);
    assert!(
        elsewhere.stderr.contains("SETTING_NOT_IN_ORGANISATION"),
        "{elsewhere:?}"
    );

    // An organisation not onboarded.
    let stranger = dev.token("dr.x", "RZZ", &["B0107"]);
    let outside = dev
        .cpis(
            &stranger,
            &[
                "lookup",
                &child(1),
                "--setting",
                "RZZ",
                "--setting-type",
                "ambulance",
            ],
        )
        .await;
    outside.code(1);
    assert!(
        outside.stderr.contains("ORGANISATION_NOT_ONBOARDED"),
        "{outside:?}"
    );
    assert!(outside.stderr.contains("onboard"), "{outside:?}");

    // An invalid token.
    let invalid = dev.cpis("not.a.token", &["flags", "list"]).await;
    invalid.code(1);
    assert!(invalid.stderr.contains("not authenticated"), "{invalid:?}");
    dev.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_gateway_exits_3() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        [
            "org",
            "list",
            "--token",
            "t",
            "--gateway",
            &format!("http://127.0.0.1:{port}"),
            "--deadline",
            "5s",
        ]
        .map(String::from)
        .to_vec(),
        dir.path().to_owned(),
    )
    .await;
    out.code(3);
    assert!(out.stderr.contains("the service is unavailable"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_csv_files_are_reported_with_line_numbers_and_nothing_is_sent() {
    let dev = Dev::start().await;
    dev.onboard().await;
    let la = dev.la();
    let good = good_row(&child(1), "cpp");
    let garbage: Vec<u8> = (0..=255u8).rev().cycle().take(3000).collect();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "wrong-header.csv",
            format!("nhs,type,start\n{good}\n").into_bytes(),
            "line 1: the header must be exactly",
        ),
        (
            "columns.csv",
            format!("{HEADER}\n{good}\n{good},extra\n{good}\n9434765919,cpp\n").into_bytes(),
            "line 3: has 9 columns",
        ),
        (
            "quoting.csv",
            format!("{HEADER}\n{good}\n{good}\n9434765919,\"cpp,2024-01-01,,,1,,\n").into_bytes(),
            "line 4: a quoted field opened on this line is never closed",
        ),
        (
            "stray-quote.csv",
            format!("{HEADER}\n{good}\n94347\"65919,cpp,2024-01-01,,,1,,\n").into_bytes(),
            "line 3: a quote inside an unquoted field",
        ),
        ("empty.csv", Vec::new(), "line 1: the file is empty"),
        ("garbage.bin", garbage, "line 1: the header must be exactly"),
    ];
    for (name, contents, expected) in cases {
        let file = write(dev.data_dir(), name, contents);
        let out = dev.cpis(&la, &["upload", &file]).await;
        out.code(2);
        assert!(out.stderr.contains("nothing was sent"), "{name}: {out:?}");
        assert!(out.stderr.contains(expected), "{name}: {out:?}");
        assert!(!out.stderr.contains("panicked"), "{name}: {out:?}");
    }
    // The columns case reports every bad line, not just the first.
    let file = dev.data_dir().join("columns.csv");
    let out = dev.cpis(&la, &["upload", file.to_str().unwrap()]).await;
    assert!(out.stderr.contains("line 5: has 2 columns"), "{out:?}");

    let flags = dev
        .cpis(&la, &["flags", "list", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(
        flags,
        serde_json::json!([]),
        "nothing may have been uploaded"
    );
    let auditor = dev.auditor();
    let uploads = dev
        .cpis(&auditor, &["audit", "list", "--all", "--json"])
        .await
        .ok()
        .json();
    assert!(
        uploads
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["action"] != "UploadFlags"),
        "no upload reached the server: {uploads}"
    );
    dev.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_prints_each_rejected_record_with_its_line_and_writes_the_report() {
    let dev = Dev::start().await;
    dev.onboard().await;
    let la = dev.la();
    let rows = [
        good_row(&child(1), "cpp"),
        good_row("1234567890", "lac"),
        good_row(&child(2), "nonsense"),
        good_row(&child(3), "LAC"),
        good_row(&child(4), "FLAG_TYPE_UCPP"),
    ];
    let file = write(
        dev.data_dir(),
        "daily.csv",
        format!("{HEADER}\n{}\n", rows.join("\n")),
    );
    let report = dev.data_dir().join("report.csv");
    let out = dev
        .cpis(
            &la,
            &[
                "upload",
                &file,
                "--batch-size",
                "2",
                "--report",
                report.to_str().unwrap(),
            ],
        )
        .await;
    out.code(4);
    assert!(
        out.stdout
            .contains("UPLOAD_STATUS_PARTIAL: 3 accepted, 2 rejected"),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains("line 3: 1234567890  RECORD_CODE_INVALID_NHS_NUMBER"),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains(&format!("line 4: {}  RECORD_CODE_INVALID_FIELD", child(2))),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("2 of 5 records were rejected"),
        "{out:?}"
    );
    let written = std::fs::read_to_string(&report).unwrap();
    let lines: Vec<&str> = written.lines().collect();
    assert_eq!(lines[0], "line,index,nhs_number,code,message");
    assert_eq!(lines.len(), 6, "{written}");
    assert!(lines[1].starts_with(&format!("2,0,{},RECORD_CODE_ACCEPTED", child(1))));

    // The default upload id is the file's hash: the same file again is the same upload.
    let again = dev.cpis(&la, &["upload", &file, "--json"]).await;
    again.code(4);
    let first_id = out
        .stdout
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(':');
    let answer = again.json();
    assert_eq!(answer["upload_id"], first_id);
    assert_eq!(answer["accepted"], 3);
    assert_eq!(answer["results"][1]["line"], 3);

    // A clean file exits 0.
    let clean = write(
        dev.data_dir(),
        "clean.csv",
        format!("{HEADER}\n{}\n", good_row(&child(5), "cpp")),
    );
    let ok = dev.cpis(&la, &["upload", &clean]).await;
    ok.ok();
    assert!(
        ok.stdout
            .contains("UPLOAD_STATUS_SUCCESS: 1 accepted, 0 rejected"),
        "{ok:?}"
    );
    dev.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_list_end_and_delete_act_on_the_las_own_flags() {
    let dev = Dev::start().await;
    dev.onboard().await;
    let la = dev.la();
    let rows: Vec<String> = (1..=3).map(|n| good_row(&child(n), "cpp")).collect();
    let file = write(
        dev.data_dir(),
        "f.csv",
        format!("{HEADER}\n{}\n", rows.join("\n")),
    );
    dev.cpis(&la, &["upload", &file]).await.ok();

    let all = dev
        .cpis(
            &la,
            &["flags", "list", "--page-size", "1", "--all", "--json"],
        )
        .await;
    assert_eq!(all.ok().json().as_array().unwrap().len(), 3);
    let limited = dev
        .cpis(&la, &["flags", "list", "--page-size", "1", "--limit", "2"])
        .await;
    assert_eq!(limited.ok().stdout.lines().count(), 2, "{limited:?}");
    assert!(limited.stderr.contains("more on the server"), "{limited:?}");

    let one = child(1);
    let ended = dev
        .cpis(
            &la,
            &[
                "flags",
                "end",
                &one,
                "--type",
                "cpp",
                "--start",
                "2024-01-02",
                "--end",
                "2025-01-01",
                "--json",
            ],
        )
        .await;
    let flag = ended.ok().json();
    assert_eq!(flag["end_date"], "2025-01-01");
    assert_eq!(flag["flag_type"], "FLAG_TYPE_CPP");

    let delete = [
        "flags",
        "delete",
        &one,
        "--type",
        "CPP",
        "--start",
        "2024-01-02",
    ];
    dev.cpis(&la, &delete).await.ok();
    let again = dev.cpis(&la, &delete).await;
    again.code(1);
    assert!(again.stderr.contains("not found"), "{again:?}");

    // Another LA does not see them.
    let other = dev.token("other", OTHER_LA, &["CPIS_LA_MANAGE"]);
    let theirs = dev
        .cpis(&other, &["flags", "list", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(theirs, serde_json::json!([]));
    let bad_type = dev
        .cpis(
            &la,
            &[
                "flags",
                "delete",
                &one,
                "--type",
                "xyz",
                "--start",
                "2024-01-02",
            ],
        )
        .await;
    bad_type.code(2);
    dev.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_watch_resumes_from_its_cursor_file_and_ack_uses_it() {
    let dev = Dev::start().await;
    dev.onboard().await;
    let la = dev.la();
    let nhs = child(7);
    let file = write(
        dev.data_dir(),
        "f.csv",
        format!("{HEADER}\n{}\n", good_row(&nhs, "lac")),
    );
    dev.cpis(&la, &["upload", &file]).await.ok();
    let clinician = dev.clinician();
    for _ in 0..3 {
        dev.cpis(
            &clinician,
            &[
                "lookup",
                &nhs,
                "--setting",
                SITE,
                "--setting-type",
                "walk-in-centre",
            ],
        )
        .await
        .ok();
    }

    let listed = dev
        .cpis(&la, &["notifications", "list", "--json"])
        .await
        .ok()
        .json();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0]["kind"], "NOTIFICATION_KIND_ACCESS");
    assert_eq!(listed[0]["ods_code"], SITE);
    let text = dev.cpis(&la, &["notifications", "list"]).await;
    assert!(
        text.ok()
            .stdout
            .contains("(Looked After Child) was looked up at Homerton"),
        "{text:?}"
    );

    let cursor = dev.data_dir().join("la-cursor");
    let cursor_arg = cursor.to_str().unwrap();
    let first = dev
        .cpis(
            &la,
            &[
                "notifications",
                "watch",
                "--cursor-file",
                cursor_arg,
                "--count",
                "2",
                "--json",
            ],
        )
        .await;
    first.ok();
    let cursors: Vec<u64> = first
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["cursor"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(cursors, [1, 2]);
    assert_eq!(std::fs::read_to_string(&cursor).unwrap().trim(), "2");

    // A restarted watcher resumes after the stored cursor.
    let second = dev
        .cpis(
            &la,
            &[
                "notifications",
                "watch",
                "--cursor-file",
                cursor_arg,
                "--count",
                "1",
            ],
        )
        .await;
    second.ok();
    assert!(second.stdout.starts_with("#3 "), "{second:?}");
    assert_eq!(std::fs::read_to_string(&cursor).unwrap().trim(), "3");

    let ack = dev
        .cpis(&la, &["notifications", "ack", "--cursor-file", cursor_arg])
        .await;
    ack.ok();
    assert!(
        ack.stdout
            .contains("acknowledged up to cursor 3; 0 still to process"),
        "{ack:?}"
    );
    let after = dev
        .cpis(&la, &["notifications", "list", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(after, serde_json::json!([]));
    let from_start = dev
        .cpis(&la, &["notifications", "list", "--from-start", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(from_start.as_array().unwrap().len(), 3);
    let too_far = dev.cpis(&la, &["notifications", "ack", "99"]).await;
    too_far.code(1);
    assert!(too_far.stderr.contains("up_to_cursor"), "{too_far:?}");
    dev.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_watch_reconnects_while_the_gateway_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let data = tempfile::tempdir().unwrap();
    // The key must exist to mint the token before the gateway starts.
    cpis_cli::devkeys::ensure(data.path()).unwrap();
    let keys = cpis_cli::devkeys::load(data.path()).unwrap();
    let la = cpis_cli::token::sign(
        &keys,
        "la.worker",
        LA,
        "R9000",
        &["CPIS_LA_MANAGE".into()],
        std::time::Duration::from_secs(600),
    )
    .unwrap();
    // The LA onboarded first (the gateway answers at once once it listens, so a watch that
    // got in before onboarding would be refused for that, not for the gateway's absence),
    // then the system stopped.
    let dir = data.path().to_owned();
    let first = Dev::start_with(move |args| {
        args.listen = listen;
        args.data_dir = dir;
    })
    .await;
    first.onboard().await;
    first.stop().await;

    let cursor = data.path().join("cursor");
    let watch = tokio::spawn(run(
        [
            "notifications",
            "watch",
            "--from-start",
            "--count",
            "1",
            "--cursor-file",
            cursor.to_str().unwrap(),
            "--gateway",
            &format!("http://{listen}"),
            "--token",
            &la,
        ]
        .map(String::from)
        .to_vec(),
        data.path().to_owned(),
    ));

    // Start the system again on that port once the watcher has been refused at least once.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let dir = data.path().to_owned();
    let dev = Dev::start_with(move |args| {
        args.listen = listen;
        args.data_dir = dir;
    })
    .await;
    let nhs = child(9);
    let file = write(
        dev.data_dir(),
        "f.csv",
        format!("{HEADER}\n{}\n", good_row(&nhs, "cpp")),
    );
    dev.cpis(&la, &["upload", &file]).await.ok();
    dev.cpis(
        &dev.clinician(),
        &[
            "lookup",
            &nhs,
            "--setting",
            SITE,
            "--setting-type",
            "emergency-department",
        ],
    )
    .await
    .ok();
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), watch)
        .await
        .expect("the watcher never reconnected")
        .unwrap();
    out.ok();
    assert!(out.stdout.starts_with("#1 "), "{out:?}");
    assert!(out.stderr.contains("reconnecting in"), "{out:?}");
    assert_eq!(std::fs::read_to_string(&cursor).unwrap().trim(), "1");
    dev.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_list_checkpoint_and_verify() {
    let dev = Dev::start().await;
    dev.onboard().await;
    let nhs = child(11);
    dev.cpis(
        &dev.clinician(),
        &[
            "lookup",
            &nhs,
            "--setting",
            SITE,
            "--setting-type",
            "emergency-department",
        ],
    )
    .await
    .ok();
    let auditor = dev.auditor();
    let events = dev
        .cpis(&auditor, &["audit", "list", "--nhs-number", &nhs, "--json"])
        .await
        .ok()
        .json();
    // The listing itself is audited under the same NHS number, after the lookup.
    let events = events.as_array().unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1]["action"], "ListAuditEvents");
    assert_eq!(events[0]["action"], "LookupChild");
    assert_eq!(events[0]["outcome"], "AUDIT_OUTCOME_ALLOWED");
    assert_eq!(events[0]["site_ods_code"], SITE);
    let since = dev
        .cpis(
            &auditor,
            &[
                "audit",
                "list",
                "--user",
                "dr.jones",
                "--since",
                "2000-01-01",
            ],
        )
        .await;
    assert!(
        since
            .ok()
            .stdout
            .contains("LookupChild allowed by dr.jones"),
        "{since:?}"
    );

    let checkpoint = dev.data_dir().join("checkpoint.json");
    let printed = dev
        .cpis(
            &auditor,
            &["audit", "checkpoint", "--out", checkpoint.to_str().unwrap()],
        )
        .await
        .ok()
        .json();
    assert!(printed["sequence"].as_u64().unwrap() >= 4);
    let verify = dev
        .cpis(
            &auditor,
            &[
                "audit",
                "verify",
                "--checkpoint",
                checkpoint.to_str().unwrap(),
            ],
        )
        .await;
    assert!(
        verify.ok().stdout.contains("the audit log verifies"),
        "{verify:?}"
    );
    let json = dev
        .cpis(&auditor, &["audit", "verify", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(json["ok"], true);

    // A tampered checkpoint is refused by the server, in words.
    let mut forged: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&checkpoint).unwrap()).unwrap();
    forged["sequence"] = serde_json::json!(1);
    let forged_path = write(dev.data_dir(), "forged.json", forged.to_string());
    let refused = dev
        .cpis(&auditor, &["audit", "verify", "--checkpoint", &forged_path])
        .await;
    refused.code(1);
    assert!(
        refused.stderr.contains("checkpoint.signature"),
        "{refused:?}"
    );
    let not_json = write(dev.data_dir(), "nonsense.json", "{");
    dev.cpis(&auditor, &["audit", "verify", "--checkpoint", &not_json])
        .await
        .code(2);

    let la = dev.la();
    let denied = dev.cpis(&la, &["audit", "list"]).await;
    denied.code(1);
    assert!(
        denied
            .stderr
            .contains("your role lacks activity CPIS_AUDIT"),
        "{denied:?}"
    );
    dev.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn administration_commands_manage_organisations_systems_restrictions_and_inactive_numbers() {
    let dev = Dev::start().await;
    let admin = dev.admin();
    let upsert = dev
        .cpis(
            &admin,
            &[
                "org",
                "upsert",
                "706",
                "--name",
                "Tower Hamlets",
                "--kind",
                "la",
                "--json",
            ],
        )
        .await
        .ok()
        .json();
    assert_eq!(upsert["kind"], "ORGANISATION_KIND_LOCAL_AUTHORITY");
    assert_eq!(upsert["onboarded"], true);
    dev.cpis(
        &admin,
        &[
            "org",
            "upsert",
            "RQX",
            "--name",
            "Homerton",
            "--kind",
            "HEALTH",
            "--not-onboarded",
        ],
    )
    .await
    .ok();
    let listed = dev
        .cpis(
            &admin,
            &["org", "list", "--page-size", "1", "--all", "--json"],
        )
        .await;
    let listed = listed.ok().json();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert_eq!(listed[1]["onboarded"], false);
    let bad = dev
        .cpis(
            &admin,
            &["org", "upsert", "!!", "--name", "", "--kind", "la"],
        )
        .await;
    bad.code(1);
    assert!(
        bad.stderr.contains("ods_code:") && bad.stderr.contains("name:"),
        "{bad:?}"
    );
    dev.cpis(
        &admin,
        &["org", "upsert", "x", "--name", "n", "--kind", "hospital"],
    )
    .await
    .code(2);

    let san = "spiffe://council.example/case-management";
    let registered = dev
        .cpis(
            &admin,
            &["system", "register", san, "--ods", "706", "--json"],
        )
        .await
        .ok()
        .json();
    assert_eq!(
        registered["activities"],
        serde_json::json!(["CPIS_LA_MANAGE"])
    );
    let systems = dev.cpis(&admin, &["system", "list"]).await;
    assert!(systems.ok().stdout.contains(san), "{systems:?}");
    dev.cpis(&admin, &["system", "remove", san]).await.ok();
    let gone = dev.cpis(&admin, &["system", "remove", san]).await;
    gone.code(1);
    assert!(gone.stderr.contains("not found"), "{gone:?}");

    // Restriction: an upload for the number is refused per record; the LA was notified.
    let la = dev.la();
    let nhs = child(21);
    let file = write(
        dev.data_dir(),
        "a.csv",
        format!("{HEADER}\n{}\n", good_row(&nhs, "cpp")),
    );
    dev.cpis(&la, &["upload", &file]).await.ok();
    let set = dev
        .cpis(
            &admin,
            &["restrict", "set", &nhs, "--reason", "court order"],
        )
        .await;
    assert!(
        set.ok()
            .stdout
            .contains("1 local authority notification sent"),
        "{set:?}"
    );
    let file = write(
        dev.data_dir(),
        "b.csv",
        format!("{HEADER}\n{}\n", good_row(&nhs, "lac")),
    );
    let refused = dev.cpis(&la, &["upload", &file]).await;
    refused.code(4);
    assert!(
        refused.stdout.contains("RECORD_CODE_SENSITIVE_RECORD"),
        "{refused:?}"
    );
    dev.cpis(&admin, &["restrict", "clear", &nhs]).await.ok();
    dev.cpis(&admin, &["restrict", "clear", &nhs]).await.code(1);

    let replacement = child(40);
    let inactive = dev
        .cpis(
            &admin,
            &[
                "nhs-number",
                "inactive",
                &nhs,
                "--superseded-by",
                &replacement,
            ],
        )
        .await;
    assert!(
        inactive
            .ok()
            .stdout
            .contains("1 local authority notification sent"),
        "{inactive:?}"
    );
    let notes = dev
        .cpis(&la, &["notifications", "list", "--json"])
        .await
        .ok()
        .json();
    let kinds: Vec<&str> = notes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "NOTIFICATION_KIND_RESTRICTED",
            "NOTIFICATION_KIND_NHS_NUMBER_INACTIVE"
        ]
    );
    assert_eq!(notes[1]["superseded_by"], replacement.as_str());
    let text = dev.cpis(&la, &["notifications", "list"]).await;
    assert!(
        text.ok()
            .stdout
            .contains(&format!("replaced by {replacement}")),
        "{text:?}"
    );

    let denied = dev.cpis(&la, &["org", "list"]).await;
    assert!(
        denied
            .stderr
            .contains("your role lacks activity CPIS_ADMIN"),
        "{denied:?}"
    );
    dev.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_obligations_list_and_retry_are_administration_through_the_gateway() {
    let dev = Dev::start().await;
    dev.onboard().await;
    let admin = dev.admin();
    let none = dev.cpis(&admin, &["admin", "obligations", "list"]).await;
    assert!(
        none.ok().stderr.contains("no failed obligations"),
        "{none:?}"
    );
    let json = dev
        .cpis(&admin, &["admin", "obligations", "list", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(json, serde_json::json!([]));

    // A lookup whose obligation was carried out inline: nothing to retry.
    let answer = dev
        .cpis(
            &dev.clinician(),
            &[
                "lookup",
                &child(60),
                "--setting",
                SITE,
                "--setting-type",
                "emergency-department",
                "--json",
            ],
        )
        .await
        .ok()
        .json();
    let lookup_id = answer["lookup_id"].as_str().unwrap().to_owned();
    let done = dev
        .cpis(&admin, &["admin", "obligations", "retry", &lookup_id])
        .await;
    done.code(1);
    assert!(done.stderr.contains("already carried out"), "{done:?}");
    let missing = dev
        .cpis(&admin, &["admin", "obligations", "retry", "no-such-lookup"])
        .await;
    missing.code(1);
    assert!(missing.stderr.contains("not found"), "{missing:?}");

    let denied = dev
        .cpis(&dev.auditor(), &["admin", "obligations", "list"])
        .await;
    assert!(
        denied
            .stderr
            .contains("your role lacks activity CPIS_ADMIN"),
        "{denied:?}"
    );
    dev.stop().await;
}
