//! Restrictions (sensitive records) and inactive numbers.

use crate::common::*;
use cpis_proto::gateway::{
    ClearRestrictionRequest, FlagType, ListNotificationsRequest, MarkNhsNumberInactiveRequest,
    Notification, NotificationKind, RecordCode, SetRestrictionRequest,
};
use tonic::Code;

fn restrict(nhs: &str, reason: &str) -> SetRestrictionRequest {
    SetRestrictionRequest {
        nhs_number: nhs.into(),
        reason: reason.into(),
    }
}

pub async fn all_notifications(client: &Client, ods: &str) -> Vec<Notification> {
    client
        .clone()
        .list_notifications(signed(
            ListNotificationsRequest {
                from_start: true,
                page_size: 1000,
                ..Default::default()
            },
            &la(ods),
        ))
        .await
        .unwrap()
        .into_inner()
        .notifications
}

#[tokio::test]
async fn a_restriction_refuses_later_uploads_keeps_flags_visible_and_notifies_holders() {
    for db in databases("restrict").await {
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
                record(&n, FlagType::Lac, "2024-02-01", "", ""),
                // Past its window: not notified.
                record(&n, FlagType::Cpp, "2019-01-01", "2019-02-01", ""),
            ]],
        )
        .await
        .unwrap();
        let mut client = registry.client();
        let restriction = client
            .set_restriction(signed(
                restrict(&format!("{} {}", &n[..3], &n[3..]), "S-flag"),
                &admin(),
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(restriction.nhs_number, n);
        assert_eq!(restriction.notifications_created, 2, "{}", db.label());
        let first_set_at = restriction.set_at;
        for ods in ["706", "707"] {
            let notes = all_notifications(&registry.client, ods).await;
            assert_eq!(notes.len(), 1, "{ods}");
            let note = &notes[0];
            assert_eq!(note.kind(), NotificationKind::Restricted);
            assert_eq!(note.nhs_number, n);
            assert_eq!(note.user_id, "admin-1");
            assert_eq!(note.ods_code, "X26");
            assert_eq!(note.organisation_name, "NHS England");
            assert!(note.lookup_id.is_empty());
        }
        // Flags already held stay visible.
        let got = get_flags(&registry.client, std::slice::from_ref(&n), now())
            .await
            .unwrap();
        assert_eq!(got.results[0].flags.len(), 2);
        // New uploads for the number are refused, record by record.
        let report = upload(
            &registry.client,
            &la("706"),
            "c",
            vec![vec![cpp(&n, "2025-01-01"), cpp(&number(), "2025-01-01")]],
        )
        .await
        .unwrap();
        assert_eq!(report.results[0].code(), RecordCode::SensitiveRecord);
        assert_eq!(report.results[1].code(), RecordCode::Accepted);
        // Restricting again updates the reason only.
        let again = client
            .set_restriction(signed(restrict(&n, "court order"), &admin()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again.notifications_created, 0);
        assert_eq!(again.reason, "court order");
        assert_eq!(again.set_at, first_set_at);
        assert_eq!(all_notifications(&registry.client, "706").await.len(), 1);
        // Lifted: uploads accept it again; a second lift is NOT_FOUND.
        client
            .clear_restriction(signed(
                ClearRestrictionRequest {
                    nhs_number: n.clone(),
                },
                &admin(),
            ))
            .await
            .unwrap();
        let report = upload(
            &registry.client,
            &la("706"),
            "d",
            vec![vec![cpp(&n, "2025-01-01")]],
        )
        .await
        .unwrap();
        assert_eq!(report.results[0].code(), RecordCode::Accepted);
        let err = client
            .clear_restriction(signed(
                ClearRestrictionRequest {
                    nhs_number: n.clone(),
                },
                &admin(),
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
}

#[tokio::test]
async fn once_set_restriction_has_returned_no_upload_stores_the_number() {
    for db in databases("race").await {
        let registry = Registry::start(&db, CacheMode::Off).await;
        let n = number();
        let uploads: Vec<_> = (0..12)
            .map(|i| {
                let client = registry.client();
                let n = n.clone();
                tokio::spawn(async move {
                    let start = format!("2024-01-{:02}", i + 1);
                    upload(
                        &client,
                        &la("706"),
                        &format!("race-{i}"),
                        vec![vec![cpp(&n, &start)]],
                    )
                    .await
                })
            })
            .collect();
        let restriction = registry
            .client()
            .set_restriction(signed(restrict(&n, "race"), &admin()))
            .await
            .unwrap()
            .into_inner();
        let after = upload(
            &registry.client,
            &la("706"),
            "late",
            vec![vec![cpp(&n, "2024-02-01")]],
        )
        .await
        .unwrap();
        assert_eq!(
            after.results[0].code(),
            RecordCode::SensitiveRecord,
            "{}",
            db.label()
        );
        let mut stored = 0;
        for u in uploads {
            if u.await.unwrap().unwrap().results[0].code() == RecordCode::Accepted {
                stored += 1;
            }
        }
        // Every flag stored got in before the restriction, so its holder was notified of it.
        let got = get_flags(&registry.client, std::slice::from_ref(&n), now())
            .await
            .unwrap();
        assert_eq!(got.results[0].flags.len(), stored);
        assert_eq!(restriction.notifications_created as usize, stored);
    }
}

#[tokio::test]
async fn marking_a_number_inactive_notifies_each_holder_once_with_its_successor() {
    for db in databases("inactive").await {
        let registry = Registry::start(&db, CacheMode::Off).await;
        let n = numbers(2);
        upload(
            &registry.client,
            &la("706"),
            "a",
            vec![vec![cpp(&n[0], "2024-01-01")]],
        )
        .await
        .unwrap();
        let mut client = registry.client();
        let request = MarkNhsNumberInactiveRequest {
            nhs_number: n[0].clone(),
            superseded_by: n[1].clone(),
        };
        let first = client
            .mark_nhs_number_inactive(signed(request.clone(), &admin()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(first.notifications_created, 1, "{}", db.label());
        let notes = all_notifications(&registry.client, "706").await;
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].kind(), NotificationKind::NhsNumberInactive);
        assert_eq!(notes[0].superseded_by, n[1]);
        assert_eq!(notes[0].flag_type(), FlagType::Cpp);
        let second = client
            .mark_nhs_number_inactive(signed(request, &admin()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(second.notifications_created, 0);
        // Flags on the number stay visible.
        let got = get_flags(&registry.client, &n[..1], now()).await.unwrap();
        assert_eq!(got.results[0].flags.len(), 1);
        let err = client
            .mark_nhs_number_inactive(signed(
                MarkNhsNumberInactiveRequest {
                    nhs_number: n[0].clone(),
                    superseded_by: n[0].clone(),
                },
                &admin(),
            ))
            .await
            .unwrap_err();
        assert_eq!(violations(&err), ["superseded_by"]);
        let err = client
            .set_restriction(signed(restrict("123", &"x".repeat(501)), &admin()))
            .await
            .unwrap_err();
        assert_eq!(violations(&err), ["nhs_number", "reason"]);
    }
}
