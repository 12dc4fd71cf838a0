//! The obligations outbox: claimed under a lease by one claimant at a time, reclaimable once
//! the lease lapses, never handed to two concurrent claimants, completed idempotently.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use access_service::decide::AccessDecisions;
use access_service::storage::obligations::{claim, complete};
use cpis_proto::access::{ClaimObligationsRequest, CompleteObligationRequest};
use platform::domain::AccessKind;
use sea_orm::DatabaseConnection;
use std::collections::HashSet;

fn secs(seconds: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos: 0 })
}

fn request(claimant: &str, limit: u32) -> ClaimObligationsRequest {
    ClaimObligationsRequest {
        claimant: claimant.into(),
        lease: secs(60),
        limit,
        pending_for: None,
    }
}

async fn with_obligations(url: &str, n: usize) -> (DatabaseConnection, Vec<String>) {
    let conn = common::migrated(url).await;
    common::organisation(&conn, "RQX", "HEALTH", true).await;
    let decisions = AccessDecisions::spawn(conn.clone());
    let mut ids = Vec::new();
    let answers = futures::future::join_all((0..n).map(|_| {
        decisions.decide(common::lookup(
            common::user("dr.jones", "RQX", &["B0107"]),
            AccessKind::Unscheduled,
            "RQX01",
        ))
    }))
    .await;
    for a in answers {
        ids.push(a.unwrap().obligation.unwrap().lookup_id);
    }
    (conn, ids)
}

#[tokio::test]
async fn one_claimant_at_a_time_holds_an_obligation() {
    for db in platform::testing::all("one_claimant").await {
        let (conn, ids) = with_obligations(&db.url, 3).await;
        let a = claim(&conn, request("gw-a", 0)).await.unwrap().obligations;
        assert_eq!(a.len(), 3, "{}", db.label());
        assert!(a.iter().all(|o| o.attempts == 1));
        let at = |o: &cpis_proto::access::Obligation| {
            o.accessed_at.map(|t| (t.seconds, t.nanos)).unwrap()
        };
        assert!(a.windows(2).all(|w| at(&w[0]) <= at(&w[1])), "oldest first");
        let b = claim(&conn, request("gw-b", 0)).await.unwrap().obligations;
        assert!(b.is_empty(), "leased to gw-a");
        let claimed: HashSet<_> = a.iter().map(|o| o.lookup_id.clone()).collect();
        assert_eq!(claimed, ids.into_iter().collect());
    }
}

#[tokio::test]
async fn a_lapsed_lease_is_reclaimable() {
    for db in platform::testing::all("lapsed").await {
        let (conn, _) = with_obligations(&db.url, 2).await;
        claim(&conn, request("gw-a", 0)).await.unwrap();
        // The lease running out, without waiting a minute for it.
        common::execute(&conn, "UPDATE obligation SET lease_expires_at = 1").await;
        let b = claim(&conn, request("gw-b", 0)).await.unwrap().obligations;
        assert_eq!(b.len(), 2, "{}", db.label());
        assert!(b.iter().all(|o| o.attempts == 2));
    }
}

#[tokio::test]
async fn two_concurrent_claimants_never_get_the_same_obligation() {
    for db in platform::testing::all("concurrent_claims").await {
        let (conn, ids) = with_obligations(&db.url, 120).await;
        let claimant = |name: &'static str| {
            let conn = conn.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let got = claim(&conn, request(name, 7)).await.unwrap().obligations;
                    if got.is_empty() {
                        return mine;
                    }
                    mine.extend(got.into_iter().map(|o| o.lookup_id));
                }
            })
        };
        let (a, b) = tokio::join!(claimant("gw-a"), claimant("gw-b"));
        let (a, b) = (a.unwrap(), b.unwrap());
        let all: Vec<_> = a.iter().chain(&b).cloned().collect();
        let distinct: HashSet<_> = all.iter().cloned().collect();
        assert_eq!(
            all.len(),
            distinct.len(),
            "{}: an obligation claimed twice",
            db.label()
        );
        assert_eq!(distinct, ids.into_iter().collect());
    }
}

#[tokio::test]
async fn pending_for_leaves_fresh_lookups_alone_and_completed_ones_are_not_claimed() {
    for db in platform::testing::all("pending_for").await {
        let (conn, ids) = with_obligations(&db.url, 2).await;
        let mut r = request("gw-a", 0);
        r.pending_for = secs(3600);
        assert!(claim(&conn, r).await.unwrap().obligations.is_empty());
        for id in &ids {
            let done = CompleteObligationRequest {
                lookup_id: id.clone(),
                claimant: "gw-a".into(),
            };
            complete(&conn, done.clone()).await.unwrap();
            complete(&conn, done).await.unwrap(); // idempotent
        }
        assert!(
            claim(&conn, request("gw-a", 0))
                .await
                .unwrap()
                .obligations
                .is_empty()
        );
        let missing = complete(
            &conn,
            CompleteObligationRequest {
                lookup_id: "no-such-lookup".into(),
                claimant: String::new(),
            },
        )
        .await
        .unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound, "{}", db.label());
    }
}

#[tokio::test]
async fn claim_requests_are_validated() {
    let db = platform::testing::sqlite();
    let conn = common::migrated(&db.url).await;
    let bad = ClaimObligationsRequest {
        claimant: String::new(),
        lease: secs(601),
        limit: 0,
        pending_for: secs(-1),
    };
    match claim(&conn, bad).await.unwrap_err() {
        platform::Error::InvalidArgument(v) => {
            let fields: Vec<_> = v.iter().map(|f| f.field.as_str()).collect();
            assert_eq!(fields, ["claimant", "lease", "pending_for"]);
        }
        other => panic!("{other:?}"),
    }
}
