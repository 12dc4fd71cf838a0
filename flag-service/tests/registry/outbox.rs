//! Notifying reads and the per-LA outbox: list, watch, acknowledge, backlog.

use crate::common::*;
use crate::restrictions::all_notifications;
use cpis_proto::gateway::{
    AcknowledgeNotificationsRequest, FlagType, ListNotificationsRequest, NotificationKind,
    SettingType, WatchNotificationsRequest,
};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::Code;

async fn acknowledge(client: &Client, ods: &str, up_to: u64) -> Result<(u64, u64), tonic::Status> {
    client
        .clone()
        .acknowledge_notifications(signed(
            AcknowledgeNotificationsRequest {
                up_to_cursor: up_to,
            },
            &la(ods),
        ))
        .await
        .map(|r| {
            let r = r.into_inner();
            (r.acknowledged_cursor, r.backlog)
        })
}

#[tokio::test]
async fn a_notifying_read_stores_one_access_notification_per_visible_flag_once() {
    for db in databases("access").await {
        let registry = Registry::start(&db, CacheMode::Local).await;
        let n = number();
        upload(
            &registry.client,
            &la("706"),
            "a",
            vec![vec![cpp(&n, "2024-01-01")]],
        )
        .await
        .unwrap();
        upload(
            &registry.client,
            &la("707"),
            "b",
            vec![vec![
                record(&n, FlagType::Lac, "2024-01-01", "", ""),
                record(&n, FlagType::Cpp, "2018-01-01", "2018-06-01", ""),
            ]],
        )
        .await
        .unwrap();
        let got = notifying_read(&registry.client, &n, "lookup-1")
            .await
            .unwrap();
        assert_eq!(got.results[0].flags.len(), 2, "{}", db.label());
        assert_eq!(got.notifications_stored, 2);
        let repeat = notifying_read(&registry.client, &n, "lookup-1")
            .await
            .unwrap();
        assert_eq!(
            repeat.notifications_stored, 0,
            "idempotent by (lookup, flag)"
        );
        assert_eq!(repeat.results, got.results);
        let notes = all_notifications(&registry.client, "707").await;
        assert_eq!(notes.len(), 1);
        let note = &notes[0];
        assert_eq!(note.cursor, 1);
        assert_eq!(note.kind(), NotificationKind::Access);
        assert_eq!(note.flag_type(), FlagType::Lac);
        assert_eq!(note.lookup_id, "lookup-1");
        assert_eq!(note.user_id, "dr-jones");
        assert_eq!(note.role_code, "R8000");
        assert_eq!(note.ods_code, "RQX01");
        assert_eq!(note.organisation_name, "Example Hospital");
        assert_eq!(note.setting_type(), SettingType::EmergencyDepartment);
        assert!(note.accessed_at.is_some());
        // A new lookup notifies again.
        let other = notifying_read(&registry.client, &n, "lookup-2")
            .await
            .unwrap();
        assert_eq!(other.notifications_stored, 2);
        // A child with no flag: an empty answer, nothing stored.
        let none = notifying_read(&registry.client, &number(), "lookup-3")
            .await
            .unwrap();
        assert!(none.results[0].flags.is_empty());
        assert_eq!(none.notifications_stored, 0);
    }
}

#[tokio::test]
async fn cursors_follow_commit_order_with_no_gaps_under_concurrent_writers() {
    for db in databases("cursors").await {
        let registry = Registry::start(&db, CacheMode::Off).await;
        let n = numbers(4);
        for (i, ods) in ["706", "707"].iter().enumerate() {
            let records = n
                .iter()
                .map(|x| record(x, FlagType::Cpp, &format!("2024-0{}-01", i + 1), "", ""))
                .collect();
            upload(&registry.client, &la(ods), "u", vec![records])
                .await
                .unwrap();
        }
        let reads: Vec<_> = (0..40)
            .map(|i| {
                let client = registry.client();
                let nhs = n[i % n.len()].clone();
                tokio::spawn(async move { notifying_read(&client, &nhs, &format!("lk-{i}")).await })
            })
            .collect();
        let mut stored = 0;
        for r in reads {
            stored += r.await.unwrap().unwrap().notifications_stored;
        }
        assert_eq!(stored, 80, "{}", db.label());
        for ods in ["706", "707"] {
            let cursors: Vec<u64> = all_notifications(&registry.client, ods)
                .await
                .iter()
                .map(|x| x.cursor)
                .collect();
            assert_eq!(cursors, (1..=40).collect::<Vec<u64>>(), "{ods}");
        }
    }
}

#[tokio::test]
async fn listing_starts_after_the_acknowledged_cursor_and_pages() {
    for db in databases("list").await {
        let registry = Registry::start(&db, CacheMode::Off).await;
        let n = number();
        upload(
            &registry.client,
            &la("706"),
            "u",
            vec![vec![cpp(&n, "2024-01-01")]],
        )
        .await
        .unwrap();
        for i in 0..5 {
            notifying_read(&registry.client, &n, &format!("l{i}"))
                .await
                .unwrap();
        }
        assert_eq!(
            acknowledge(&registry.client, "706", 2).await.unwrap(),
            (2, 3),
            "{}",
            db.label()
        );
        let list = |after_cursor: u64, from_start: bool, page_size: i32, page_token: String| {
            let client = registry.client();
            async move {
                client
                    .clone()
                    .list_notifications(signed(
                        ListNotificationsRequest {
                            after_cursor,
                            from_start,
                            page_size,
                            page_token,
                        },
                        &la("706"),
                    ))
                    .await
            }
        };
        let cursors = |r: &cpis_proto::gateway::ListNotificationsResponse| -> Vec<u64> {
            r.notifications.iter().map(|x| x.cursor).collect()
        };
        let unacked = list(0, false, 0, String::new()).await.unwrap().into_inner();
        assert_eq!(cursors(&unacked), [3, 4, 5]);
        assert!(unacked.next_page_token.is_empty());
        let first = list(0, true, 2, String::new()).await.unwrap().into_inner();
        assert_eq!(cursors(&first), [1, 2]);
        let second = list(0, true, 2, first.next_page_token.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(cursors(&second), [3, 4]);
        let third = list(0, true, 2, second.next_page_token.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(cursors(&third), [5]);
        assert!(third.next_page_token.is_empty());
        let after = list(3, false, 0, String::new()).await.unwrap().into_inner();
        assert_eq!(cursors(&after), [4, 5]);
        let err = list(3, true, 0, String::new()).await.unwrap_err();
        assert_eq!(violations(&err), ["from_start"]);
        let err = list(1, false, 2, first.next_page_token.clone())
            .await
            .unwrap_err();
        assert_eq!(
            violations(&err),
            ["page_token"],
            "a token belongs to its parameters"
        );
        // Another LA sees none of them.
        assert!(all_notifications(&registry.client, "707").await.is_empty());
    }
}

#[tokio::test]
async fn acknowledgement_never_moves_back_and_backlogs_count_what_lies_beyond() {
    for db in databases("ack").await {
        let registry = Registry::start(&db, CacheMode::Off).await;
        let n = number();
        upload(
            &registry.client,
            &la("706"),
            "u",
            vec![vec![cpp(&n, "2024-01-01")]],
        )
        .await
        .unwrap();
        upload(
            &registry.client,
            &la("705"),
            "u",
            vec![vec![cpp(&n, "2024-02-01")]],
        )
        .await
        .unwrap();
        for i in 0..3 {
            notifying_read(&registry.client, &n, &format!("l{i}"))
                .await
                .unwrap();
        }
        assert_eq!(
            acknowledge(&registry.client, "706", 0).await.unwrap(),
            (0, 3)
        );
        assert_eq!(
            acknowledge(&registry.client, "706", 2).await.unwrap(),
            (2, 1),
            "{}",
            db.label()
        );
        assert_eq!(
            acknowledge(&registry.client, "706", 1).await.unwrap(),
            (2, 1),
            "never back"
        );
        let err = acknowledge(&registry.client, "706", 4).await.unwrap_err();
        assert_eq!(violations(&err), ["up_to_cursor"]);
        let err = acknowledge(&registry.client, "999", 1).await.unwrap_err();
        assert_eq!(violations(&err), ["up_to_cursor"]);
        // What `cpis_notification_backlog{la}` is set from.
        let by_la: BTreeMap<String, u64> = flag_service::storage::outbox::backlogs(&registry.db)
            .await
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(
            by_la,
            BTreeMap::from([("705".into(), 3), ("706".into(), 1)])
        );
    }
}

#[tokio::test]
async fn a_watch_delivers_the_backlog_then_each_new_notification_without_skipping() {
    for db in databases("watch").await {
        let registry = Registry::start(&db, CacheMode::Off).await;
        let n = numbers(3);
        let records = n.iter().map(|x| cpp(x, "2024-01-01")).collect();
        upload(&registry.client, &la("706"), "u", vec![records])
            .await
            .unwrap();
        notifying_read(&registry.client, &n[0], "before-1")
            .await
            .unwrap();
        notifying_read(&registry.client, &n[1], "before-2")
            .await
            .unwrap();
        acknowledge(&registry.client, "706", 1).await.unwrap();
        let mut stream = registry
            .client()
            .watch_notifications(signed(WatchNotificationsRequest::default(), &la("706")))
            .await
            .unwrap()
            .into_inner();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(
            first.cursor,
            2,
            "after the acknowledged cursor; {}",
            db.label()
        );
        // Concurrent commits while watching: every cursor arrives, in order.
        let writers: Vec<_> = (0..30)
            .map(|i| {
                let client = registry.client();
                let nhs = n[i % 3].clone();
                tokio::spawn(
                    async move { notifying_read(&client, &nhs, &format!("live-{i}")).await },
                )
            })
            .collect();
        let mut cursors = Vec::new();
        while cursors.len() < 30 {
            let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("a live notification within 10 s")
                .unwrap()
                .unwrap();
            cursors.push(next.cursor);
        }
        assert_eq!(cursors, (3..=32).collect::<Vec<u64>>());
        for w in writers {
            w.await.unwrap().unwrap();
        }
        // Resuming after a cursor, and from the start.
        let mut resumed = registry
            .client()
            .watch_notifications(signed(
                WatchNotificationsRequest {
                    after_cursor: 31,
                    from_start: false,
                },
                &la("706"),
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resumed.next().await.unwrap().unwrap().cursor, 32);
        let mut oldest = registry
            .client()
            .watch_notifications(signed(
                WatchNotificationsRequest {
                    after_cursor: 0,
                    from_start: true,
                },
                &la("706"),
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(oldest.next().await.unwrap().unwrap().cursor, 1);
        let err = registry
            .client()
            .watch_notifications(signed(
                WatchNotificationsRequest {
                    after_cursor: 3,
                    from_start: true,
                },
                &la("706"),
            ))
            .await
            .unwrap_err();
        assert_eq!(violations(&err), ["from_start"]);
    }
}

#[tokio::test]
async fn a_watch_ends_with_unavailable_when_the_service_shuts_down() {
    for db in databases("watchstop").await {
        let registry = Registry::start(&db, CacheMode::Off).await;
        let mut stream = registry
            .client()
            .watch_notifications(signed(WatchNotificationsRequest::default(), &la("706")))
            .await
            .unwrap()
            .into_inner();
        registry.fire_shutdown();
        let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the stream ends promptly");
        let status = end.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{}", db.label());
    }
}

#[tokio::test]
async fn a_watch_on_one_replica_hears_what_another_replica_commits() {
    for db in databases("replicas").await {
        let watched = Registry::start(&db, CacheMode::Off).await;
        let other = Registry::start(&db, CacheMode::Off).await;
        let n = numbers(1);
        upload(
            &other.client,
            &la("706"),
            "u",
            vec![vec![cpp(&n[0], "2024-01-01")]],
        )
        .await
        .unwrap();
        let mut stream = watched
            .client()
            .watch_notifications(signed(
                WatchNotificationsRequest {
                    after_cursor: 0,
                    from_start: true,
                },
                &la("706"),
            ))
            .await
            .unwrap()
            .into_inner();
        // Committed by the other replica: this one hears of it through its poller only.
        for i in 0..3 {
            notifying_read(&other.client, &n[0], &format!("elsewhere-{i}"))
                .await
                .unwrap();
            let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("another replica's commit reaches the watch within 10 s")
                .unwrap()
                .unwrap();
            assert_eq!(next.cursor, i + 1, "{}", db.label());
        }
    }
}
