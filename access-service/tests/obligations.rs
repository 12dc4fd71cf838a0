//! The obligations outbox: claimed under a lease by one claimant at a time, reclaimable once
//! the lease lapses, never handed to two concurrent claimants, completed idempotently; a
//! failed try released with backoff, unavailable backends never counted, work failing for a
//! day moved to failed (not claimed, counted, listed), and an operator's retry reviving it.
//! The clock is driven (`claim_at`, `release`, `retry` take `now`), never slept on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use access_service::decide::AccessDecisions;
use access_service::entities::obligation;
use access_service::storage::now_micros;
use access_service::storage::obligations::{
    RetryPolicy, backlog, claim, claim_at, complete, list_failed, release, retry,
};
use cpis_proto::access::{
    ClaimObligationsRequest, CompleteObligationRequest, Obligation, ReleaseObligationRequest,
};
use cpis_proto::gateway::{ListFailedObligationsRequest, RetryObligationRequest};
use platform::domain::AccessKind;
use platform::pagination::Page;
use sea_orm::{DatabaseConnection, EntityTrait};
use std::collections::HashSet;
use std::time::Duration;

const SECOND: i64 = 1_000_000;
const HOUR: i64 = 3600 * SECOND;

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

fn micros(ts: Option<prost_types::Timestamp>) -> i64 {
    let ts = ts.expect("a timestamp");
    ts.seconds * SECOND + i64::from(ts.nanos) / 1000
}

/// One claim at `now`, by `claimant`, of whatever is due.
async fn claim_now(conn: &DatabaseConnection, claimant: &str, now: i64) -> Vec<Obligation> {
    claim_at(conn, request(claimant, 0), now)
        .await
        .unwrap()
        .obligations
}

fn failed_try(lookup_id: &str, claimant: &str, error: &str) -> ReleaseObligationRequest {
    ReleaseObligationRequest {
        lookup_id: lookup_id.into(),
        claimant: claimant.into(),
        unavailable: false,
        error: error.into(),
    }
}

fn unavailable_try(lookup_id: &str, claimant: &str) -> ReleaseObligationRequest {
    ReleaseObligationRequest {
        unavailable: true,
        ..failed_try(
            lookup_id,
            claimant,
            "attendance: UNAVAILABLE: attendance-service unavailable",
        )
    }
}

async fn row(conn: &DatabaseConnection, lookup_id: &str) -> obligation::Model {
    obligation::Entity::find_by_id(lookup_id.to_owned())
        .one(conn)
        .await
        .unwrap()
        .unwrap()
}

const REFUSED: &str = "notifications: INVALID_ARGUMENT: invalid request: as_of is required";

/// Claims at `now` and releases with a counted failure; the next try's instant.
async fn fail_once(conn: &DatabaseConnection, id: &str, now: i64) -> Option<i64> {
    let got = claim_now(conn, "gw-a", now).await;
    assert_eq!(got.len(), 1, "due at {now}");
    let r = release(
        conn,
        &RetryPolicy::default(),
        failed_try(id, "gw-a", REFUSED),
        now,
    )
    .await
    .unwrap();
    assert!(r.released);
    (!r.failed).then(|| micros(r.next_attempt_at))
}

#[tokio::test]
async fn a_failed_try_is_retried_with_doubling_backoff_capped_at_an_hour() {
    for db in platform::testing::all("backoff").await {
        let (conn, ids) = with_obligations(&db.url, 1).await;
        let id = &ids[0];
        let mut now = now_micros();
        for (n, wait) in [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
            .into_iter()
            .enumerate()
        {
            let got = claim_now(&conn, "gw-a", now).await;
            assert_eq!(got.len(), 1, "{}: try {n}", db.label());
            assert_eq!(got[0].failures, n as u32);
            let r = release(
                &conn,
                &RetryPolicy::default(),
                failed_try(id, "gw-a", REFUSED),
                now,
            )
            .await
            .unwrap();
            assert!(r.released && !r.failed, "{}: try {n}", db.label());
            let next = micros(r.next_attempt_at);
            assert_eq!(
                next - now,
                wait * SECOND,
                "{}: wait after try {n}",
                db.label()
            );
            assert!(
                claim_now(&conn, "gw-a", next - 1).await.is_empty(),
                "claimed before its backoff ran out"
            );
            now = next;
        }
        let stored = row(&conn, id).await;
        assert_eq!(stored.failures, 9);
        assert_eq!(stored.last_error.as_deref(), Some(REFUSED));
        assert_eq!(stored.lease_owner, None, "the release clears the lease");
    }
}

#[tokio::test]
async fn unavailable_tries_never_count_and_are_retried_soon() {
    for db in platform::testing::all("unavailable").await {
        let (conn, ids) = with_obligations(&db.url, 1).await;
        let id = &ids[0];
        let policy = RetryPolicy::default();
        let start = now_micros();
        let mut now = start;
        // Two days of a backend down: tried every few seconds to a minute, never failed.
        let mut waits = Vec::new();
        while now < start + 48 * HOUR {
            assert_eq!(
                claim_now(&conn, "gw-a", now).await.len(),
                1,
                "{}",
                db.label()
            );
            let r = release(&conn, &policy, unavailable_try(id, "gw-a"), now)
                .await
                .unwrap();
            assert!(
                r.released && !r.failed,
                "{}: an outage failed it",
                db.label()
            );
            let next = micros(r.next_attempt_at);
            waits.push((next - now) / SECOND);
            now = next;
        }
        assert_eq!(waits[..6], [5, 10, 20, 40, 60, 60], "{}", db.label());
        assert!(waits.iter().all(|w| *w <= 60));
        let stored = row(&conn, id).await;
        assert_eq!((stored.failures, stored.failing_since), (0, None));

        // A counted failure starts the day; an outage after it neither adds to it nor moves
        // its start, and the unavailable schedule starts short again.
        let counted_at = now;
        now = fail_once(&conn, id, now).await.unwrap();
        assert_eq!(claim_now(&conn, "gw-a", now).await.len(), 1);
        let r = release(&conn, &policy, unavailable_try(id, "gw-a"), now)
            .await
            .unwrap();
        assert_eq!(micros(r.next_attempt_at) - now, 5 * SECOND);
        let stored = row(&conn, id).await;
        assert_eq!(stored.failures, 1, "{}", db.label());
        assert_eq!(stored.failing_since, Some(counted_at));
        assert_eq!(
            stored.last_error.as_deref(),
            Some(REFUSED),
            "the counted error is kept"
        );
    }
}

#[tokio::test]
async fn work_failing_for_a_day_moves_to_failed_and_is_no_longer_claimed() {
    for db in platform::testing::all("fails_after_a_day").await {
        let (conn, ids) = with_obligations(&db.url, 2).await;
        let (id, other) = (&ids[0], &ids[1]);
        let t0 = now_micros();
        // Only `id` is tried; `other` waits in a long backoff, still pending.
        common::execute(
            &conn,
            &format!(
                "UPDATE obligation SET next_attempt_at = {} WHERE lookup_id = '{other}'",
                t0 + 100 * HOUR
            ),
        )
        .await;
        let next = fail_once(&conn, id, t0).await.unwrap();
        assert!(next < t0 + HOUR);
        // Still failing a second short of a day: retried.
        assert!(
            fail_once(&conn, id, t0 + 24 * HOUR - SECOND)
                .await
                .is_some()
        );
        // Over a day after the first failure (when that try's minute of backoff ran out):
        // failed, no next try.
        let failed_at = t0 + 24 * HOUR + 59 * SECOND;
        assert_eq!(
            fail_once(&conn, id, failed_at).await,
            None,
            "{}",
            db.label()
        );
        for later in [failed_at, t0 + 1000 * HOUR] {
            let got = claim_now(&conn, "gw-b", later).await;
            assert!(
                got.iter().all(|o| &o.lookup_id != id),
                "{}: a failed obligation was claimed",
                db.label()
            );
        }
        let stored = row(&conn, id).await;
        assert_eq!(stored.failed_at, Some(failed_at));
        assert_eq!(stored.failing_since, Some(t0));
        assert_eq!(stored.failures, 3);

        // `other` is still pending (leased to gw-b since +1000 h); `id` is failed.
        let b = backlog(&conn).await.unwrap();
        assert_eq!((b.pending, b.failed), (1, 1), "{}", db.label());

        let mut v = platform::error::Violations::new();
        let page: Page<String> = Page::parse(&mut v, 0, "", "failed-obligations");
        let listed = list_failed(&conn, &page).await.unwrap().obligations;
        assert_eq!(listed.len(), 1);
        let f = &listed[0];
        assert_eq!(&f.lookup_id, id);
        assert_eq!(f.ods_code, "RQX");
        assert_eq!((f.attempts, f.failures), (3, 3));
        assert_eq!(f.last_error, REFUSED);
        assert_eq!(micros(f.failing_since), t0);
        assert_eq!(micros(f.failed_at), failed_at);
    }
}

#[tokio::test]
async fn the_day_before_failing_is_a_setting() {
    let db = platform::testing::sqlite();
    let (conn, ids) = with_obligations(&db.url, 1).await;
    let policy = RetryPolicy::failing_after(Duration::from_secs(60));
    let t0 = now_micros();
    for (at, fails) in [
        (t0, false),
        (t0 + 59 * SECOND, false),
        (t0 + 60 * SECOND, true),
    ] {
        common::execute(&conn, "UPDATE obligation SET next_attempt_at = 0").await;
        assert_eq!(claim_now(&conn, "gw-a", at).await.len(), 1);
        let r = release(&conn, &policy, failed_try(&ids[0], "gw-a", REFUSED), at)
            .await
            .unwrap();
        assert_eq!(r.failed, fails, "at +{} s", (at - t0) / SECOND);
    }
}

#[tokio::test]
async fn an_operators_retry_revives_a_failed_obligation() {
    for db in platform::testing::all("retry_revives").await {
        let (conn, ids) = with_obligations(&db.url, 1).await;
        let id = &ids[0];
        let t0 = now_micros();
        fail_once(&conn, id, t0).await;
        assert_eq!(fail_once(&conn, id, t0 + 25 * HOUR).await, None);
        assert!(claim_now(&conn, "gw-a", t0 + 26 * HOUR).await.is_empty());

        let t1 = t0 + 30 * HOUR;
        retry(&conn, id, t1).await.unwrap();
        let b = backlog(&conn).await.unwrap();
        assert_eq!((b.pending, b.failed), (1, 0), "{}", db.label());
        let got = claim_now(&conn, "gw-a", t1).await;
        assert_eq!(
            got.len(),
            1,
            "{}: the retried obligation is due at once",
            db.label()
        );
        assert_eq!(got[0].failures, 0);
        // Its day starts afresh: a failure now is a first one, not a failed obligation.
        let r = release(
            &conn,
            &RetryPolicy::default(),
            failed_try(id, "gw-a", REFUSED),
            t1,
        )
        .await
        .unwrap();
        assert!(!r.failed);
        assert_eq!(micros(r.next_attempt_at) - t1, 30 * SECOND);
        assert_eq!(row(&conn, id).await.failing_since, Some(t1));

        // A retry of a pending one cuts its backoff short; of a done one, or none, is refused.
        retry(&conn, id, t1 + SECOND).await.unwrap();
        assert_eq!(claim_now(&conn, "gw-a", t1 + SECOND).await.len(), 1);
        complete(
            &conn,
            CompleteObligationRequest {
                lookup_id: id.clone(),
                claimant: "gw-a".into(),
            },
        )
        .await
        .unwrap();
        let done = retry(&conn, id, t1 + 2 * SECOND).await.unwrap_err();
        assert_eq!(
            done.code(),
            tonic::Code::FailedPrecondition,
            "{}",
            db.label()
        );
        let missing = retry(&conn, "no-such-lookup", t1).await.unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);
    }
}

#[tokio::test]
async fn a_release_by_a_claimant_whose_lease_was_taken_over_changes_nothing() {
    for db in platform::testing::all("stale_release").await {
        let (conn, ids) = with_obligations(&db.url, 1).await;
        let id = &ids[0];
        let t0 = now_micros();
        assert_eq!(claim_now(&conn, "gw-a", t0).await.len(), 1);
        // gw-a's 60 s lease lapses and gw-b takes the obligation over.
        assert_eq!(claim_now(&conn, "gw-b", t0 + 61 * SECOND).await.len(), 1);
        let r = release(
            &conn,
            &RetryPolicy::default(),
            failed_try(id, "gw-a", REFUSED),
            t0 + 62 * SECOND,
        )
        .await
        .unwrap();
        assert!(!r.released, "{}", db.label());
        let stored = row(&conn, id).await;
        assert_eq!(stored.lease_owner.as_deref(), Some("gw-b"));
        assert_eq!(stored.failures, 0);

        let missing = release(
            &conn,
            &RetryPolicy::default(),
            failed_try("nope", "gw-a", ""),
            t0,
        )
        .await
        .unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);
        match release(&conn, &RetryPolicy::default(), failed_try("", "", ""), t0)
            .await
            .unwrap_err()
        {
            platform::Error::InvalidArgument(v) => {
                let fields: Vec<_> = v.iter().map(|f| f.field.as_str()).collect();
                assert_eq!(fields, ["lookup_id", "claimant"]);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn the_backlog_counts_pending_and_failed_obligations_and_the_oldest_pending() {
    for db in platform::testing::all("backlog").await {
        let conn = common::migrated(&db.url).await;
        assert_eq!(backlog(&conn).await.unwrap(), Default::default());
        let (conn, ids) = with_obligations(&db.url, 3).await;
        let accessed: Vec<i64> = {
            let mut a = Vec::new();
            for id in &ids {
                a.push(row(&conn, id).await.accessed_at);
            }
            a
        };
        let t0 = now_micros();
        common::execute(
            &conn,
            &format!(
                "UPDATE obligation SET failed_at = {t0} WHERE lookup_id = '{}'",
                ids[0]
            ),
        )
        .await;
        complete(
            &conn,
            CompleteObligationRequest {
                lookup_id: ids[1].clone(),
                claimant: String::new(),
            },
        )
        .await
        .unwrap();
        let b = backlog(&conn).await.unwrap();
        assert_eq!((b.pending, b.failed), (1, 1), "{}", db.label());
        assert_eq!(b.oldest_pending_at, Some(accessed[2]));
    }
}

/// The schema of m0001 with an obligation in it, then the rest of the migrations: what an
/// upgrade meets.
#[tokio::test]
async fn obligations_pending_at_the_upgrade_stay_claimable() {
    use sea_orm_migration::MigratorTrait;
    for db in platform::testing::all("upgrade").await {
        let conn = platform::database::connect(&db.url).await.unwrap();
        access_service::migration::Migrator::up(&conn, Some(1))
            .await
            .unwrap();
        common::execute(
            &conn,
            "INSERT INTO obligation (lookup_id, nhs_number, accessed_at, user_id, role_code, \
             site_ods_code, organisation_ods_code, organisation_name, setting_type, attempts) \
             VALUES ('old', '9434765919', 1, 'dr.jones', 'R8000', 'RQX01', 'RQX', 'Trust', \
             'EMERGENCY_DEPARTMENT', 0)",
        )
        .await;
        access_service::migration::Migrator::up(&conn, None)
            .await
            .unwrap();
        let got = claim(&conn, request("gw-a", 0)).await.unwrap().obligations;
        assert_eq!(got.len(), 1, "{}", db.label());
        assert_eq!((got[0].lookup_id.as_str(), got[0].failures), ("old", 0));
    }
}

#[tokio::test]
async fn failed_obligations_are_listed_in_pages_and_retried_by_administrators_only() {
    for db in platform::testing::all("failed_admin").await {
        let (conn, ids) = with_obligations(&db.url, 3).await;
        let t0 = now_micros();
        for id in &ids {
            common::execute(
                &conn,
                &format!(
                    "UPDATE obligation SET failed_at = {t0}, failing_since = {}, failures = 40, \
                     last_error = 'attendance: INTERNAL: internal error' WHERE lookup_id = '{id}'",
                    t0 - 24 * HOUR
                ),
            )
            .await;
        }
        let mut s = common::start(&db.url).await;
        let admin = common::admin();
        let mut listed = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = s
                .client
                .list_failed_obligations(common::on_behalf(
                    &admin,
                    ListFailedObligationsRequest {
                        page_size: 2,
                        page_token,
                    },
                ))
                .await
                .unwrap()
                .into_inner();
            assert!(page.obligations.len() <= 2);
            listed.extend(page.obligations);
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        let mut sorted = ids.clone();
        sorted.sort();
        let got: Vec<_> = listed.iter().map(|o| o.lookup_id.clone()).collect();
        assert_eq!(
            got,
            sorted,
            "{}: every failed one, in lookup_id order",
            db.label()
        );
        assert!(
            listed
                .iter()
                .all(|o| o.failures == 40 && o.last_error.contains("INTERNAL"))
        );

        // Only CPIS_ADMIN, forwarded by the gateway.
        let clinician = common::user("dr.jones", "RQX", &["B0107", "CPIS_AUDIT"]);
        let denied = s
            .client
            .list_failed_obligations(common::on_behalf(&clinician, Default::default()))
            .await
            .unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        let anonymous = s
            .client
            .retry_obligation(RetryObligationRequest {
                lookup_id: ids[0].clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);
        let bad = s
            .client
            .retry_obligation(common::on_behalf(
                &admin,
                RetryObligationRequest {
                    lookup_id: "a\nb".into(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);

        s.client
            .retry_obligation(common::on_behalf(
                &admin,
                RetryObligationRequest {
                    lookup_id: ids[0].clone(),
                },
            ))
            .await
            .unwrap();
        let left = s
            .client
            .list_failed_obligations(common::on_behalf(&admin, Default::default()))
            .await
            .unwrap()
            .into_inner()
            .obligations;
        assert_eq!(left.len(), 2, "{}", db.label());
        let claimed = claim(&conn, request("gw-a", 0)).await.unwrap().obligations;
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].lookup_id, ids[0]);
        let missing = s
            .client
            .retry_obligation(common::on_behalf(
                &admin,
                RetryObligationRequest {
                    lookup_id: "no-such-lookup".into(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);
    }
}

#[tokio::test]
async fn a_release_over_grpc_schedules_the_next_try_and_stops_early_claims() {
    let db = platform::testing::sqlite();
    let (conn, ids) = with_obligations(&db.url, 1).await;
    let mut s = common::start(&db.url).await;
    let claimed = s
        .client
        .claim_obligations(request("gw-a", 0))
        .await
        .unwrap()
        .into_inner()
        .obligations;
    assert_eq!(claimed.len(), 1);
    let before = now_micros();
    let r = s
        .client
        .release_obligation(failed_try(&ids[0], "gw-a", REFUSED))
        .await
        .unwrap()
        .into_inner();
    assert!(r.released && !r.failed);
    let wait = micros(r.next_attempt_at) - before;
    assert!((30 * SECOND..31 * SECOND).contains(&wait), "{wait}");
    assert_eq!(row(&conn, &ids[0]).await.failures, 1);
    assert!(
        s.client
            .claim_obligations(request("gw-a", 0))
            .await
            .unwrap()
            .into_inner()
            .obligations
            .is_empty(),
        "claimed again before its backoff"
    );
}
