//! UploadFlags under its bounds: the apply chunk by chunk, uploads of one LA one after the
//! other, and stored reports capped on resend.

use crate::common::*;
use cpis_proto::gateway::{FlagRecord, ListFlagsRequest, RecordCode, UploadFlagsResponse};
use flag_service::entities::upload;
use flag_service::storage::{flags as stored_flags, uploads};
use prost::Message;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

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
