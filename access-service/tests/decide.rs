//! Decide through gRPC: obligations written with the decision, idempotent replays, and
//! malformed input refused without an audit record.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cpis_proto::access::{ClaimObligationsRequest, CompleteObligationRequest, DecideRequest};
use platform::domain::AccessKind;

fn with_key(mut r: DecideRequest, id: &str, fingerprint: u8) -> DecideRequest {
    r.request_id = id.into();
    r.request_fingerprint = vec![fingerprint; 32];
    r
}

fn clinician() -> cpis_proto::access::Principal {
    common::user("dr.jones", "RQX", &["B0107", "B0170"])
}

#[tokio::test]
async fn an_allowed_notifying_lookup_writes_its_obligation_with_its_audit_record() {
    for db in platform::testing::all("obligation_written").await {
        let mut s = common::start(&db.url).await;
        let conn = common::migrated(&db.url).await;
        common::organisation(&conn, "RQX", "HEALTH", true).await;
        let d = s
            .client
            .decide(common::lookup(
                clinician(),
                AccessKind::Unscheduled,
                "RQX01",
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(d.allowed);
        assert_eq!(d.organisation_name, "Organisation RQX");
        let o = d.obligation.expect("an obligation");
        assert_eq!(o.lookup_id, d.lookup_id);
        assert_eq!(o.nhs_number, "9434765919");
        assert_eq!(o.site_ods_code, "RQX01");
        assert_eq!(o.organisation_ods_code, "RQX");
        assert_eq!(o.accessed_at, d.decided_at);
        let claimed = s
            .client
            .claim_obligations(ClaimObligationsRequest {
                claimant: "gw-1".into(),
                lease: Some(prost_types::Duration {
                    seconds: 30,
                    nanos: 0,
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .obligations;
        assert_eq!(claimed.len(), 1, "{}", db.label());
        assert_eq!(claimed[0].lookup_id, d.lookup_id);

        // A silent lookup owes nothing.
        let silent = s
            .client
            .decide(common::lookup(clinician(), AccessKind::Scheduled, "RQX01"))
            .await
            .unwrap()
            .into_inner();
        assert!(silent.allowed && silent.obligation.is_none() && !silent.lookup_id.is_empty());
    }
}

#[tokio::test]
async fn a_repeated_request_id_replays_the_first_answer_and_is_audited_again() {
    for db in platform::testing::all("replay").await {
        let mut s = common::start(&db.url).await;
        let conn = common::migrated(&db.url).await;
        common::organisation(&conn, "RQX", "HEALTH", true).await;
        let request = with_key(
            common::lookup(clinician(), AccessKind::Unscheduled, "RQX01"),
            "req-1",
            7,
        );
        let first = s.client.decide(request.clone()).await.unwrap().into_inner();
        assert!(!first.replay);
        let again = s.client.decide(request.clone()).await.unwrap().into_inner();
        assert!(again.replay, "{}", db.label());
        assert_eq!(again.lookup_id, first.lookup_id);
        assert_eq!(again.decided_at, first.decided_at);
        assert_eq!(
            again.audit_sequence,
            first.audit_sequence + 1,
            "audited again"
        );
        assert_eq!(
            again.obligation.as_ref().map(|o| &o.lookup_id),
            Some(&first.lookup_id),
            "the pending obligation is handed out again"
        );
        s.client
            .complete_obligation(CompleteObligationRequest {
                lookup_id: first.lookup_id.clone(),
                claimant: "gw-1".into(),
            })
            .await
            .unwrap();
        let third = s.client.decide(request.clone()).await.unwrap().into_inner();
        assert!(third.replay && third.obligation.is_none());

        // The same key for another user is another key.
        let mut other = request.clone();
        other.principal = Some(common::user("dr.smith", "RQX", &["B0107"]));
        let theirs = s.client.decide(other).await.unwrap().into_inner();
        assert!(!theirs.replay);
        assert_ne!(theirs.lookup_id, first.lookup_id);

        // Access withdrawn meanwhile: decided again, denied, no replay.
        common::organisation(&conn, "RQX", "HEALTH", false).await;
        let denied = s.client.decide(request).await.unwrap().into_inner();
        assert!(!denied.allowed && !denied.replay && denied.lookup_id.is_empty());
    }
}

#[tokio::test]
async fn a_request_id_reused_for_another_request_is_invalid_and_not_audited() {
    for db in platform::testing::all("reused").await {
        let mut s = common::start(&db.url).await;
        let conn = common::migrated(&db.url).await;
        common::organisation(&conn, "RQX", "HEALTH", true).await;
        let request = common::lookup(clinician(), AccessKind::Unscheduled, "RQX01");
        s.client
            .decide(with_key(request.clone(), "req-9", 1))
            .await
            .unwrap();
        let before = common::head(&conn).await;
        let status = s
            .client
            .decide(with_key(request, "req-9", 2))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{}",
            db.label()
        );
        assert!(String::from_utf8_lossy(status.details()).contains("request_id"));
        assert_eq!(common::head(&conn).await, before);
    }
}

#[tokio::test]
async fn concurrent_repeats_of_one_request_id_share_one_lookup() {
    for db in platform::testing::all("concurrent_replay").await {
        let s = common::start(&db.url).await;
        let conn = common::migrated(&db.url).await;
        common::organisation(&conn, "RQX", "HEALTH", true).await;
        let request = with_key(
            common::lookup(clinician(), AccessKind::Unscheduled, "RQX01"),
            "req-c",
            3,
        );
        let answers = futures::future::join_all((0..20).map(|_| {
            let mut client = s.client.clone();
            let r = request.clone();
            async move { client.decide(r).await.unwrap().into_inner() }
        }))
        .await;
        let ids: std::collections::HashSet<_> = answers.iter().map(|a| &a.lookup_id).collect();
        assert_eq!(ids.len(), 1, "{}", db.label());
        assert_eq!(answers.iter().filter(|a| !a.replay).count(), 1);
    }
}

#[tokio::test]
async fn malformed_decide_requests_are_invalid_and_not_audited() {
    for db in platform::testing::all("malformed").await {
        let mut s = common::start(&db.url).await;
        let conn = common::migrated(&db.url).await;
        let mut mixed = common::lookup(clinician(), AccessKind::Unscheduled, "RQX01");
        mixed.access_kind = AccessKind::Scheduled.into();
        let mut bad_number = common::lookup(clinician(), AccessKind::Unscheduled, "RQX01");
        bad_number.nhs_number = "9876544321".into();
        for (request, field) in [
            (mixed, "setting.setting_type"),
            (bad_number, "nhs_number"),
            (common::action(clinician(), "Teleport"), "action"),
            (
                DecideRequest {
                    action: "ListFlags".into(),
                    ..Default::default()
                },
                "principal",
            ),
        ] {
            let status = s.client.decide(request).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(
                String::from_utf8_lossy(status.details()).contains(field),
                "{field}"
            );
        }
        assert_eq!(common::head(&conn).await, 0, "{}", db.label());
    }
}
