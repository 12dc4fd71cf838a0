//! UploadFlags under its bounds: staging leases (cleanup takes only lapsed attempts), the apply
//! chunk by chunk, uploads of one LA one after the other, and stored reports capped on resend.

use crate::common::*;
use chrono::{TimeDelta, Utc};
use cpis_proto::gateway::{
    FlagRecord, ListFlagsRequest, RecordCode, UploadFlagsRequest, UploadFlagsResponse,
};
use flag_service::entities::{upload, upload_attempt, upload_staging};
use flag_service::storage::{flags as stored_flags, uploads};
use prost::Message;
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use std::time::Duration;
use tonic::Code;

async fn listed(client: &Client, ods: &str) -> Vec<cpis_proto::gateway::Flag> {
    let mut flags = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .clone()
            .list_flags(signed(
                ListFlagsRequest {
                    page_size: 1000,
                    page_token,
                },
                &la(ods),
            ))
            .await
            .unwrap()
            .into_inner();
        flags.extend(page.flags);
        if page.next_page_token.is_empty() {
            return flags;
        }
        page_token = page.next_page_token;
    }
}

fn codes(report: &UploadFlagsResponse) -> Vec<RecordCode> {
    report.results.iter().map(|r| r.code()).collect()
}

#[tokio::test]
async fn a_live_upload_older_than_the_old_cutoff_keeps_its_staging_and_a_lapsed_one_goes() {
    for db in databases("leases").await {
        let registry = Registry::start(&db, CacheMode::Off).await;
        let conn = &registry.db;
        let now = Utc::now();
        let long_ago = now - TimeDelta::minutes(20);
        let records = || vec![cpp(&number(), "2025-01-01"), cpp(&number(), "2025-01-01")];
        // Both started and staged 20 minutes ago, past the 15 minutes start-up used to allow.
        // The lapsed one has not been heard of since; the live one's stream has just delivered
        // another message, renewing its lease.
        // (Staged now and dated back, so the registry's own cleanup cannot take them early.)
        for attempt in ["lapsed", "live"] {
            uploads::begin(conn, attempt, "706", now).await.unwrap();
            uploads::stage(conn, attempt, 0, &records(), now)
                .await
                .unwrap();
            upload_staging::Entity::update_many()
                .col_expr(upload_staging::Column::StagedAt, Expr::value(long_ago))
                .filter(upload_staging::Column::AttemptId.eq(attempt))
                .exec(conn)
                .await
                .unwrap();
            upload_attempt::Entity::update_many()
                .col_expr(upload_attempt::Column::StartedAt, Expr::value(long_ago))
                .col_expr(
                    upload_attempt::Column::LeaseUntil,
                    Expr::value(long_ago + uploads::STAGING_LEASE),
                )
                .filter(upload_attempt::Column::AttemptId.eq(attempt))
                .exec(conn)
                .await
                .unwrap();
        }
        uploads::stage(conn, "live", 2, &[], now).await.unwrap();
        // Records a version without leases staged, under no attempt: two hours ago (an
        // interrupted upload's) and ten minutes ago (an older replica's upload, maybe live).
        for (attempt, age) in [("unleased-old", 120), ("unleased-recent", 10)] {
            let row = upload_staging::ActiveModel {
                attempt_id: Set(attempt.into()),
                position: Set(0),
                record: Set(cpp(&number(), "2025-01-01").encode_to_vec()),
                staged_at: Set(now - TimeDelta::minutes(age)),
            };
            upload_staging::Entity::insert(row)
                .exec_without_returning(conn)
                .await
                .unwrap();
        }

        let removed = uploads::clean_lapsed(conn, Utc::now()).await.unwrap();
        let left: Vec<String> = upload_staging::Entity::find()
            .all(conn)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.attempt_id)
            .collect();
        // (The registry's own cleanup, every minute, may have taken some first.)
        assert!(removed <= 3, "{}", db.label());
        assert_eq!(
            left.iter().filter(|a| *a == "live").count(),
            2,
            "{}",
            db.label()
        );
        assert_eq!(left.iter().filter(|a| *a == "lapsed").count(), 0);
        assert_eq!(left.iter().filter(|a| *a == "unleased-old").count(), 0);
        assert_eq!(left.iter().filter(|a| *a == "unleased-recent").count(), 1);
        assert_eq!(
            uploads::attempt_count(conn).await.unwrap(),
            1,
            "the live one"
        );

        // The live one goes too once its lease lapses.
        let later = Utc::now() + uploads::STAGING_LEASE + TimeDelta::seconds(1);
        uploads::clean_lapsed(conn, later).await.unwrap();
        assert_eq!(uploads::attempt_count(conn).await.unwrap(), 0);
        let left = upload_staging::Entity::find()
            .filter(upload_staging::Column::AttemptId.eq("live"))
            .all(conn)
            .await
            .unwrap();
        assert!(left.is_empty());
    }
}

#[tokio::test]
async fn cleanup_takes_many_lapsed_attempts_in_bounded_batches() {
    for db in databases("cleanup-batches").await {
        let registry = Registry::start(&db, CacheMode::Off).await;
        let conn = &registry.db;
        let now = Utc::now();
        let attempts = uploads::CLEANUP_BATCH as usize * 3 + 1;
        for i in 0..attempts {
            let attempt = format!("dead-{i}");
            uploads::begin(conn, &attempt, "706", now).await.unwrap();
            uploads::stage(conn, &attempt, 0, &[cpp(&number(), "2025-01-01")], now)
                .await
                .unwrap();
        }
        // Their processes died: every lease lapses.
        let later = now + uploads::STAGING_LEASE + TimeDelta::seconds(1);
        uploads::clean_lapsed(conn, later).await.unwrap();
        assert_eq!(
            uploads::attempt_count(conn).await.unwrap(),
            0,
            "{}",
            db.label()
        );
        assert_eq!(uploads::staged_count(conn).await.unwrap(), 0);
    }
}

#[tokio::test]
async fn an_upload_leaves_no_lease_behind_whatever_its_outcome() {
    for db in databases("no-lease-left").await {
        let registry = Registry::start(&db, CacheMode::Off).await;
        let n = numbers(2);
        let records = vec![cpp(&n[0], "2025-01-01")];
        // Applied, repeated, refused as a reused id, refused as a bad stream.
        upload(&registry.client, &la("706"), "u", vec![records.clone()])
            .await
            .unwrap();
        upload(&registry.client, &la("706"), "u", vec![records])
            .await
            .unwrap();
        let reused = upload(
            &registry.client,
            &la("706"),
            "u",
            vec![vec![cpp(&n[1], "2025-01-01")]],
        )
        .await
        .unwrap_err();
        assert_eq!(violations(&reused), ["upload_id"]);
        let empty = upload(&registry.client, &la("706"), "v", vec![vec![]])
            .await
            .unwrap_err();
        assert_eq!(violations(&empty), ["records"]);
        let conn = registry.db.clone();
        eventually(Duration::from_secs(10), || {
            let conn = conn.clone();
            async move {
                uploads::attempt_count(&conn).await.unwrap() == 0
                    && uploads::staged_count(&conn).await.unwrap() == 0
            }
        })
        .await;
    }
}

#[tokio::test]
async fn a_stream_whose_lease_lapsed_applies_nothing_and_answers_unavailable() {
    for db in databases("lapsed-stream").await {
        let registry = Registry::start(&db, CacheMode::Off).await;
        let n = numbers(2);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(UploadFlagsRequest {
            upload_id: "stalled".into(),
            records: vec![cpp(&n[0], "2025-01-01")],
        })
        .await
        .unwrap();
        let client = registry.client();
        let call = tokio::spawn(async move {
            let request = signed(tokio_stream::wrappers::ReceiverStream::new(rx), &la("706"));
            client.clone().upload_flags(request).await
        });
        let conn = registry.db.clone();
        eventually(Duration::from_secs(10), || {
            let conn = conn.clone();
            async move { uploads::staged_count(&conn).await.unwrap() == 1 }
        })
        .await;
        // The stream stalls past its lease: a cleanup (on any replica) takes its staging.
        let later = Utc::now() + uploads::STAGING_LEASE + TimeDelta::seconds(1);
        uploads::clean_lapsed(&conn, later).await.unwrap();
        assert_eq!(uploads::staged_count(&conn).await.unwrap(), 0);
        // Then it ends cleanly: what it staged is gone, so nothing may be applied.
        tx.send(UploadFlagsRequest {
            upload_id: "stalled".into(),
            records: vec![cpp(&n[1], "2025-01-01")],
        })
        .await
        .unwrap();
        drop(tx);
        let status = call.await.unwrap().unwrap_err();
        assert_eq!(
            status.code(),
            Code::Unavailable,
            "{}: {status:?}",
            db.label()
        );
        assert!(listed(&registry.client, "706").await.is_empty());
        assert_eq!(uploads::staged_count(&conn).await.unwrap(), 0);
        // Its retry starts over and applies whole.
        let report = upload(
            &registry.client,
            &la("706"),
            "stalled",
            vec![vec![cpp(&n[0], "2025-01-01"), cpp(&n[1], "2025-01-01")]],
        )
        .await
        .unwrap();
        assert_eq!(report.accepted, 2);
    }
}

#[tokio::test]
async fn an_upload_applied_in_several_chunks_counts_episodes_and_sees_its_own_writes_across_them() {
    for db in databases("chunks").await {
        let registry = Registry::start(&db, CacheMode::Off).await;
        let child = number();
        let total = 2 * uploads::APPLY_CHUNK as usize + 500;
        let fillers = numbers(total);
        let mut records: Vec<FlagRecord> = fillers.iter().map(|n| cpp(n, "2025-01-01")).collect();
        // Nine open episodes in the first chunk, two more in the second (the 10th is taken, an
        // 11th refused), and in the third an update of the first chunk's first episode.
        for (month, record) in records.iter_mut().enumerate().take(10).skip(1) {
            *record = cpp(&child, &format!("2024-{month:02}-01"));
        }
        let second = uploads::APPLY_CHUNK as usize + 10;
        records[second] = cpp(&child, "2024-10-01");
        records[second + 1] = cpp(&child, "2024-11-01");
        let mut ended = cpp(&child, "2024-01-01");
        ended.end_date = "2025-06-01".into();
        let third = 2 * uploads::APPLY_CHUNK as usize + 5;
        records[third] = ended;
        let report = upload(
            &registry.client,
            &la("706"),
            "chunks",
            records.chunks(5_000).map(<[FlagRecord]>::to_vec).collect(),
        )
        .await
        .unwrap();
        assert_eq!(report.results.len(), total, "{}", db.label());
        assert!(
            report
                .results
                .iter()
                .enumerate()
                .all(|(i, r)| r.index as usize == i)
        );
        assert_eq!(report.results[second].code(), RecordCode::Accepted);
        assert_eq!(
            report.results[second + 1].code(),
            RecordCode::TooManyEpisodes
        );
        assert_eq!(report.results[third].code(), RecordCode::Accepted);
        assert_eq!((report.accepted as usize, report.rejected), (total - 1, 1));
        let history = stored_flags::history_of(&registry.db, "706", &child)
            .await
            .unwrap();
        let first_episode: Vec<(&str, bool)> = history
            .iter()
            .filter(|h| h.start_date.to_string() == "2024-01-01")
            .map(|h| (h.change.as_str(), h.before.is_some()))
            .collect();
        assert_eq!(
            first_episode,
            [("created", false), ("updated", true)],
            "the third chunk updated what the first created"
        );
        let flags = listed(&registry.client, "706").await;
        // The fillers the child's 12 records replaced are not there; the child has 10 episodes.
        assert_eq!(flags.len(), total - 12 + 10, "{}", db.label());
    }
}

#[tokio::test]
async fn concurrent_uploads_of_one_la_over_the_same_flags_in_opposite_orders_both_apply() {
    for db in databases("one-la-at-a-time").await {
        let registry = Registry::start(&db, CacheMode::Off).await;
        // Three chunks each, over the same numbers, one upload in reverse: chunk by chunk
        // they would take their row locks in opposite orders.
        let n = numbers(3 * uploads::APPLY_CHUNK as usize);
        let forward: Vec<FlagRecord> = n.iter().map(|x| cpp(x, "2025-01-01")).collect();
        let mut backward = forward.clone();
        backward.reverse();
        for r in &mut backward {
            r.end_date = "2025-12-31".into();
        }
        let send = |id: &'static str, records: Vec<FlagRecord>| {
            let client = registry.client();
            tokio::spawn(async move { upload(&client, &la("706"), id, vec![records]).await })
        };
        let (a, b) = tokio::join!(send("forward", forward), send("backward", backward));
        let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
        assert_eq!(a.accepted as usize, n.len(), "{}", db.label());
        assert_eq!(b.accepted as usize, n.len());
        assert_eq!(listed(&registry.client, "706").await.len(), n.len());
    }
}

#[tokio::test]
async fn a_stored_report_too_large_for_a_stock_client_is_capped_when_resent() {
    for db in databases("old-report").await {
        let registry = Registry::start(&db, CacheMode::Off).await;
        let records = vec![cpp("123", "2025-01-01"), cpp(&number(), "2025-01-01")];
        let first = upload(&registry.client, &la("706"), "old", vec![records.clone()])
            .await
            .unwrap();
        // As a version before the caps stored it: the whole refused number, a long message.
        let mut old = first.clone();
        old.results[0].nhs_number = "1".repeat(100_000);
        old.results[0].message = format!("nhs_number: {}", "is not a valid NHS number ".repeat(9));
        upload::Entity::update_many()
            .col_expr(upload::Column::Report, Expr::value(old.encode_to_vec()))
            .filter(upload::Column::LaOdsCode.eq("706"))
            .filter(upload::Column::UploadId.eq("old"))
            .exec(&registry.db)
            .await
            .unwrap();
        let again = upload(&registry.client, &la("706"), "old", vec![records])
            .await
            .unwrap();
        assert_eq!(
            again.results[0].nhs_number,
            "1".repeat(16),
            "{}",
            db.label()
        );
        assert!(again.results[0].message.len() <= 48);
        assert!(again.results[0].message.starts_with("nhs_number: is not"));
        assert_eq!(again.results[1], first.results[1]);
        assert_eq!(codes(&again), codes(&first));
    }
}
