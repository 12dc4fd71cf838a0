//! The audit log resists tampering done directly in the database: each kind of damage is
//! named at the right sequence, on SQLite and PostgreSQL. Signed checkpoints catch truncation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use access_service::audit::chain::{AuditContent, record_hash};
use access_service::audit::verify::{TrustedHead, Verification, verify};
use access_service::decide::AccessDecisions;
use access_service::entities::audit_record;
use cpis_proto::gateway::{Checkpoint, ListAuditEventsRequest, VerifyAuditLogRequest};
use platform::domain::AccessKind;
use platform::testing::TestDatabase;
use sea_orm::{ActiveModelTrait, DatabaseConnection, EntityTrait, IntoActiveModel, Set};

/// A log of `n` decisions (allowed and denied) on a fresh database.
async fn log_of(db: &TestDatabase, n: usize) -> DatabaseConnection {
    let conn = common::migrated(&db.url).await;
    common::organisation(&conn, "RQX", "HEALTH", true).await;
    let decisions = AccessDecisions::spawn(conn.clone());
    let clinician = common::user("dr.jones", "RQX", &["B0107"]);
    for i in 0..n {
        let site = if i % 3 == 0 { "RQY01" } else { "RQX01" };
        decisions
            .decide(common::lookup(
                clinician.clone(),
                AccessKind::Unscheduled,
                site,
            ))
            .await
            .unwrap();
    }
    conn
}

async fn check(conn: &DatabaseConnection, cp: Option<TrustedHead>) -> Verification {
    verify(conn, cp).await.unwrap()
}

async fn head_of(conn: &DatabaseConnection, sequence: i64) -> TrustedHead {
    let row = audit_record::Entity::find_by_id(sequence)
        .one(conn)
        .await
        .unwrap()
        .unwrap();
    TrustedHead {
        sequence: sequence as u64,
        hash: row.hash,
    }
}

#[tokio::test]
async fn an_intact_log_verifies() {
    for db in platform::testing::all("intact").await {
        let conn = log_of(&db, 12).await;
        let v = check(&conn, Some(head_of(&conn, 12).await)).await;
        assert!(v.ok, "{}: {}", db.label(), v.problem);
        assert_eq!(v.records_checked, 12);
    }
}

#[tokio::test]
async fn an_edited_record_is_caught_at_its_sequence() {
    for db in platform::testing::all("edited").await {
        let conn = log_of(&db, 10).await;
        common::execute(
            &conn,
            "UPDATE audit_record SET user_id = 'someone.else' WHERE sequence = 4",
        )
        .await;
        let v = check(&conn, None).await;
        assert!(!v.ok);
        assert_eq!(v.first_bad_sequence, 4, "{}: {}", db.label(), v.problem);
    }
}

#[tokio::test]
async fn a_deleted_record_is_caught_as_a_gap() {
    for db in platform::testing::all("deleted").await {
        let conn = log_of(&db, 10).await;
        common::execute(&conn, "DELETE FROM audit_record WHERE sequence = 6").await;
        let v = check(&conn, None).await;
        assert_eq!(v.first_bad_sequence, 6, "{}: {}", db.label(), v.problem);
    }
}

#[tokio::test]
async fn swapped_records_are_caught_at_the_first_of_them() {
    for db in platform::testing::all("swapped").await {
        let conn = log_of(&db, 10).await;
        for sql in [
            "UPDATE audit_record SET sequence = -1 WHERE sequence = 5",
            "UPDATE audit_record SET sequence = 5 WHERE sequence = 6",
            "UPDATE audit_record SET sequence = 6 WHERE sequence = -1",
        ] {
            common::execute(&conn, sql).await;
        }
        let v = check(&conn, None).await;
        assert_eq!(v.first_bad_sequence, 5, "{}: {}", db.label(), v.problem);
    }
}

#[tokio::test]
async fn a_truncated_log_is_caught_against_a_checkpoint() {
    for db in platform::testing::all("truncated").await {
        let conn = log_of(&db, 10).await;
        let checkpoint = head_of(&conn, 9).await;
        common::execute(&conn, "DELETE FROM audit_record WHERE sequence > 7").await;
        // Without a checkpoint a cut at the end cannot be seen...
        assert!(check(&conn, None).await.ok);
        // ...with one, the first missing record is named.
        let v = check(&conn, Some(checkpoint)).await;
        assert!(!v.ok);
        assert_eq!(v.first_bad_sequence, 8, "{}: {}", db.label(), v.problem);
    }
}

#[tokio::test]
async fn a_rehashed_rewrite_is_caught_by_the_checkpoint_hash() {
    for db in platform::testing::all("rehashed").await {
        let conn = log_of(&db, 6).await;
        let checkpoint = head_of(&conn, 6).await;
        // A forger who recomputes the hash of the record they edit (the last one, so no later
        // link breaks) leaves an internally consistent chain.
        let row = audit_record::Entity::find_by_id(6i64)
            .one(&conn)
            .await
            .unwrap()
            .unwrap();
        let mut content = AuditContent::from_row(&row);
        content.nhs_number = "9000000009".into();
        let forged = record_hash(6, &row.prev_hash, &content);
        let mut active = row.into_active_model();
        active.nhs_number = Set(content.nhs_number.clone());
        active.hash = Set(forged.to_vec());
        active.update(&conn).await.unwrap();
        assert!(check(&conn, None).await.ok);
        let v = check(&conn, Some(checkpoint)).await;
        assert_eq!(v.first_bad_sequence, 6, "{}: {}", db.label(), v.problem);
    }
}

#[tokio::test]
async fn signed_checkpoints_verify_and_forged_ones_are_refused() {
    for db in platform::testing::all("checkpoint").await {
        let mut server = common::start(&db.url).await;
        let auditor = common::user("privacy.officer", "RQX", &["CPIS_AUDIT"]);
        let conn = common::migrated(&db.url).await;
        common::organisation(&conn, "RQX", "HEALTH", true).await;
        for site in ["RQX01", "RQY01", "RQX"] {
            server
                .client
                .decide(common::lookup(
                    common::user("dr.jones", "RQX", &["B0107"]),
                    AccessKind::Unscheduled,
                    site,
                ))
                .await
                .unwrap();
        }
        let cp: Checkpoint = server
            .client
            .get_checkpoint(common::on_behalf(&auditor, ()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(cp.sequence, 3);
        assert_eq!(cp.signature.len(), 64);
        let events = server
            .client
            .list_audit_events(common::on_behalf(
                &auditor,
                ListAuditEventsRequest::default(),
            ))
            .await
            .unwrap()
            .into_inner()
            .events;
        assert_eq!(events.last().unwrap().hash, cp.hash);

        let verify_with = |checkpoint: Checkpoint| {
            common::on_behalf(
                &auditor,
                VerifyAuditLogRequest {
                    checkpoint: Some(checkpoint),
                },
            )
        };
        let ok = server
            .client
            .verify_audit_log(verify_with(cp.clone()))
            .await
            .unwrap()
            .into_inner();
        assert!(ok.ok, "{}: {}", db.label(), ok.problem);
        assert_eq!(ok.records_checked, 3);

        // Claiming a longer log than was signed: the signature no longer verifies.
        let forged = Checkpoint {
            sequence: 2,
            ..cp.clone()
        };
        let status = server
            .client
            .verify_audit_log(verify_with(forged))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(String::from_utf8_lossy(status.details()).contains("checkpoint.signature"));
        let other_key = Checkpoint {
            key_id: "0011223344556677".into(),
            ..cp.clone()
        };
        let status = server
            .client
            .verify_audit_log(verify_with(other_key))
            .await
            .unwrap_err();
        assert!(String::from_utf8_lossy(status.details()).contains("checkpoint.key_id"));

        common::execute(&conn, "DELETE FROM audit_record WHERE sequence = 3").await;
        let truncated = server
            .client
            .verify_audit_log(verify_with(cp))
            .await
            .unwrap()
            .into_inner();
        assert!(!truncated.ok);
        assert_eq!(truncated.first_bad_sequence, 3);
    }
}
