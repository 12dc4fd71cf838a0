//! UploadFlags: staging, all-or-nothing application, record codes, idempotency, history.

use crate::common::*;
use cpis_proto::gateway::{
    EndFlagRequest, FlagType, ListFlagsRequest, RecordCode, UploadFlagsRequest, UploadStatus,
};
use flag_service::storage::{flags as stored_flags, uploads as staging};
use std::time::Duration;
use tonic::Code;

async fn listed(client: &Client, ods: &str) -> usize {
    client
        .clone()
        .list_flags(signed(
            ListFlagsRequest {
                page_size: 1000,
                page_token: String::new(),
            },
            &la(ods),
        ))
        .await
        .unwrap()
        .into_inner()
        .flags
        .len()
}

#[tokio::test]
async fn one_bad_record_never_sinks_the_rest_and_each_gets_its_code() {
    for db in databases("codes").await {
        let registry = Registry::start(&db, CacheMode::Local).await;
        let n = numbers(6);
        let spaced = format!("{} {} {}", &n[0][..3], &n[0][3..6], &n[0][6..]);
        let mut no_phone = cpp(&n[4], "2025-01-01");
        no_phone.emergency_phone.clear();
        let records = vec![
            cpp(&spaced, "2025-01-01"),
            cpp("9876544321", "2025-01-01"),
            record(&n[2], FlagType::Ucpp, "2025-01-01", "", ""),
            record(&n[3], FlagType::Lac, "2025-01-01", "2024-12-31", ""),
            no_phone,
            record(&n[5], FlagType::Ucpp, "2025-01-01", "", "2025-06-01"),
        ];
        let report = upload(&registry.client, &la("706"), "daily-1", vec![records])
            .await
            .unwrap();
        let codes: Vec<RecordCode> = report.results.iter().map(|r| r.code()).collect();
        assert_eq!(
            codes,
            [
                RecordCode::Accepted,
                RecordCode::InvalidNhsNumber,
                RecordCode::InvalidDates,
                RecordCode::InvalidDates,
                RecordCode::InvalidField,
                RecordCode::Accepted,
            ],
            "{}",
            db.label()
        );
        assert_eq!(report.status(), UploadStatus::Partial);
        assert_eq!((report.accepted, report.rejected), (2, 4));
        assert_eq!(report.upload_id, "daily-1");
        for (i, r) in report.results.iter().enumerate() {
            assert_eq!(r.index as usize, i);
            assert_eq!(r.message.is_empty(), r.code() == RecordCode::Accepted);
        }
        // Accepted numbers come back normalised; rejected ones as sent.
        assert_eq!(report.results[0].nhs_number, n[0]);
        assert_eq!(report.results[1].nhs_number, "9876544321");
        assert!(report.results[4].message.starts_with("emergency_phone"));
        let got = get_flags(
            &registry.client,
            &[n[0].clone(), n[5].clone()],
            instant("2025-03-01T12:00:00Z"),
        )
        .await
        .unwrap();
        assert_eq!(got.results[0].flags.len(), 1);
        assert_eq!(got.results[1].flags.len(), 1);
        let flag = &got.results[0].flags[0];
        let contact = flag.local_authority.as_ref().unwrap();
        assert_eq!(contact.ods_code, "706");
        assert_eq!(contact.name, "Council 706");
        assert_eq!(contact.emergency_phone, "0161 234 5678");
    }
}

#[tokio::test]
async fn an_upload_with_no_accepted_record_is_failed_and_applies_nothing() {
    for db in databases("failed").await {
        let registry = Registry::start(&db, CacheMode::Off).await;
        let report = upload(
            &registry.client,
            &la("706"),
            "bad-file",
            vec![vec![cpp("123", "2025-01-01"), cpp(&number(), "not a date")]],
        )
        .await
        .unwrap();
        assert_eq!(report.status(), UploadStatus::Failed);
        assert_eq!((report.accepted, report.rejected), (0, 2));
        assert_eq!(listed(&registry.client, "706").await, 0);
    }
}

#[tokio::test]
async fn records_with_one_identity_update_the_flag_in_upload_order() {
    for db in databases("order").await {
        let registry = Registry::start(&db, CacheMode::Local).await;
        let n = number();
        let mut second = cpp(&n, "2025-01-01");
        second.end_date = "2025-03-01".into();
        let mut third = cpp(&n, "2025-01-01");
        third.end_date = "2025-04-01".into();
        let report = upload(
            &registry.client,
            &la("706"),
            "u1",
            vec![vec![cpp(&n, "2025-01-01"), second], vec![third]],
        )
        .await
        .unwrap();
        assert_eq!(report.status(), UploadStatus::Success);
        let got = get_flags(
            &registry.client,
            std::slice::from_ref(&n),
            instant("2025-05-01T12:00:00Z"),
        )
        .await
        .unwrap();
        assert_eq!(got.results[0].flags.len(), 1, "{}", db.label());
        assert_eq!(got.results[0].flags[0].end_date, "2025-04-01");
        // A new start date is a new episode: a second flag.
        upload(
            &registry.client,
            &la("706"),
            "u2",
            vec![vec![cpp(&n, "2025-06-01")]],
        )
        .await
        .unwrap();
        let got = get_flags(
            &registry.client,
            std::slice::from_ref(&n),
            instant("2025-07-01T12:00:00Z"),
        )
        .await
        .unwrap();
        assert_eq!(got.results[0].flags.len(), 2);
    }
}

#[tokio::test]
async fn a_resent_upload_changes_nothing_and_returns_the_first_report() {
    for db in databases("resend").await {
        let registry = Registry::start(&db, CacheMode::Local).await;
        let n = numbers(2);
        let records = vec![
            cpp(&n[0], "2025-01-01"),
            cpp("bad", "2025-01-01"),
            cpp(&n[1], "2025-01-01"),
        ];
        let first = upload(
            &registry.client,
            &la("706"),
            "file-hash",
            vec![records.clone()],
        )
        .await
        .unwrap();
        // Changed since: the resend must not undo this.
        registry
            .client
            .clone()
            .end_flag(signed(
                EndFlagRequest {
                    nhs_number: n[0].clone(),
                    flag_type: FlagType::Cpp.into(),
                    start_date: "2025-01-01".into(),
                    end_date: "2025-02-01".into(),
                },
                &la("706"),
            ))
            .await
            .unwrap();
        let again = upload(
            &registry.client,
            &la("706"),
            "file-hash",
            vec![records[..2].to_vec(), records[2..].to_vec()],
        )
        .await
        .unwrap();
        assert_eq!(again, first, "{}", db.label());
        let got = get_flags(&registry.client, &n[..1], instant("2025-03-01T12:00:00Z"))
            .await
            .unwrap();
        assert_eq!(got.results[0].flags[0].end_date, "2025-02-01");
        let history = stored_flags::history_of(&registry.db, "706", &n[0])
            .await
            .unwrap();
        assert_eq!(history.len(), 2, "created once, ended once");
        // The same upload_id is another LA's own: no clash.
        let other = upload(
            &registry.client,
            &la("707"),
            "file-hash",
            vec![records.clone()],
        )
        .await
        .unwrap();
        assert_eq!(other.accepted, 2);
    }
}

#[tokio::test]
async fn an_upload_id_reused_for_other_records_is_invalid_argument() {
    for db in databases("reuse").await {
        let registry = Registry::start(&db, CacheMode::Off).await;
        let n = numbers(2);
        upload(
            &registry.client,
            &la("706"),
            "u",
            vec![vec![cpp(&n[0], "2025-01-01")]],
        )
        .await
        .unwrap();
        let err = upload(
            &registry.client,
            &la("706"),
            "u",
            vec![vec![cpp(&n[1], "2025-01-01")]],
        )
        .await
        .unwrap_err();
        assert_eq!(violations(&err), ["upload_id"]);
        let got = get_flags(&registry.client, &n[1..], now()).await.unwrap();
        assert!(got.results[0].flags.is_empty());
        assert_eq!(staging::staged_count(&registry.db).await.unwrap(), 0);
    }
}

#[tokio::test]
async fn a_bad_stream_is_invalid_argument_and_writes_nothing() {
    for db in databases("stream").await {
        let registry = Registry::start(&db, CacheMode::Off).await;
        let n = number();
        let one = || vec![cpp(&n, "2025-01-01")];
        let too_many: Vec<_> = numbers(5_001)
            .iter()
            .map(|x| cpp(x, "2025-01-01"))
            .collect();
        let cases: Vec<(&str, Vec<UploadFlagsRequest>, &str)> = vec![
            ("no message", vec![], "records"),
            (
                "no record",
                vec![UploadFlagsRequest {
                    upload_id: "a".into(),
                    records: vec![],
                }],
                "records",
            ),
            (
                "empty upload_id",
                vec![UploadFlagsRequest {
                    upload_id: String::new(),
                    records: one(),
                }],
                "upload_id",
            ),
            (
                "long upload_id",
                vec![UploadFlagsRequest {
                    upload_id: "x".repeat(129),
                    records: one(),
                }],
                "upload_id",
            ),
            (
                "changing upload_id",
                vec![
                    UploadFlagsRequest {
                        upload_id: "a".into(),
                        records: one(),
                    },
                    UploadFlagsRequest {
                        upload_id: "b".into(),
                        records: one(),
                    },
                ],
                "upload_id",
            ),
            (
                "5,001 in one message",
                vec![UploadFlagsRequest {
                    upload_id: "a".into(),
                    records: too_many,
                }],
                "records",
            ),
        ];
        for (case, messages, field) in cases {
            let request = signed(tokio_stream::iter(messages), &la("706"));
            let err = registry
                .client
                .clone()
                .upload_flags(request)
                .await
                .unwrap_err();
            assert_eq!(violations(&err), [field], "{case} on {}", db.label());
            assert_eq!(listed(&registry.client, "706").await, 0, "{case}");
            assert_eq!(
                staging::staged_count(&registry.db).await.unwrap(),
                0,
                "{case}"
            );
        }
        // 128 characters is allowed, and so are 5,000 records in one message.
        let exactly: Vec<_> = numbers(5_000)
            .iter()
            .map(|x| cpp(x, "2025-01-01"))
            .collect();
        let report = upload(
            &registry.client,
            &la("706"),
            &"y".repeat(128),
            vec![exactly],
        )
        .await
        .unwrap();
        assert_eq!(report.accepted, 5_000);
    }
}

#[tokio::test]
async fn more_than_50000_records_in_one_upload_is_invalid_argument() {
    for db in databases("limit").await {
        let registry = Registry::start(&db, CacheMode::Off).await;
        let batch: Vec<_> = numbers(5_000)
            .iter()
            .map(|x| cpp(x, "2025-01-01"))
            .collect();
        let mut batches = vec![batch; 10];
        batches.push(vec![cpp(&number(), "2025-01-01")]);
        let err = upload(&registry.client, &la("706"), "big", batches)
            .await
            .unwrap_err();
        assert_eq!(violations(&err), ["records"], "{}", db.label());
        assert_eq!(listed(&registry.client, "706").await, 0);
        assert_eq!(staging::staged_count(&registry.db).await.unwrap(), 0);
    }
}

#[tokio::test]
async fn a_broken_stream_leaves_nothing_and_its_retry_starts_over() {
    for db in databases("broken").await {
        let registry = Registry::start(&db, CacheMode::Local).await;
        let n = numbers(2);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(UploadFlagsRequest {
            upload_id: "daily".into(),
            records: vec![cpp(&n[0], "2025-01-01")],
        })
        .await
        .unwrap();
        let client = registry.client();
        let call = tokio::spawn(async move {
            let request = signed(tokio_stream::wrappers::ReceiverStream::new(rx), &la("706"));
            client.clone().upload_flags(request).await
        });
        let db_conn = registry.db.clone();
        eventually(Duration::from_secs(10), || {
            let db_conn = db_conn.clone();
            async move { staging::staged_count(&db_conn).await.unwrap() == 1 }
        })
        .await;
        // The client goes away mid-stream.
        call.abort();
        drop(tx);
        eventually(Duration::from_secs(10), || {
            let db_conn = db_conn.clone();
            async move { staging::staged_count(&db_conn).await.unwrap() == 0 }
        })
        .await;
        assert_eq!(listed(&registry.client, "706").await, 0, "{}", db.label());
        let report = upload(
            &registry.client,
            &la("706"),
            "daily",
            vec![vec![cpp(&n[0], "2025-01-01"), cpp(&n[1], "2025-01-01")]],
        )
        .await
        .unwrap();
        assert_eq!(report.accepted, 2);
    }
}

#[tokio::test]
async fn every_change_is_kept_as_history_with_who_when_and_what() {
    for db in databases("history").await {
        let registry = Registry::start(&db, CacheMode::Off).await;
        let n = number();
        upload(
            &registry.client,
            &la("706"),
            "u1",
            vec![vec![cpp(&n, "2025-01-01")]],
        )
        .await
        .unwrap();
        // Unchanged record: no history row.
        upload(
            &registry.client,
            &la("706"),
            "u2",
            vec![vec![cpp(&n, "2025-01-01")]],
        )
        .await
        .unwrap();
        let mut changed = cpp(&n, "2025-01-01");
        changed.email = "new@council.example".into();
        upload(&registry.client, &la("706"), "u3", vec![vec![changed]])
            .await
            .unwrap();
        let history = stored_flags::history_of(&registry.db, "706", &n)
            .await
            .unwrap();
        let kinds: Vec<&str> = history.iter().map(|h| h.change.as_str()).collect();
        assert_eq!(kinds, ["created", "updated"], "{}", db.label());
        assert_eq!(history[0].actor, "case-worker-706");
        assert_eq!(history[0].source, "upload:u1");
        assert!(history[0].before.is_none());
        assert!(
            history[1]
                .before
                .as_deref()
                .unwrap()
                .contains("duty@council.example")
        );
        assert!(
            history[1]
                .after
                .as_deref()
                .unwrap()
                .contains("new@council.example")
        );
    }
}

#[tokio::test]
async fn uploads_need_a_forwarded_principal() {
    for db in databases("principal").await {
        let registry = Registry::start(&db, CacheMode::Off).await;
        let request = tonic::Request::new(tokio_stream::iter(vec![UploadFlagsRequest {
            upload_id: "u".into(),
            records: vec![cpp(&number(), "2025-01-01")],
        }]));
        let err = registry
            .client
            .clone()
            .upload_flags(request)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
}
