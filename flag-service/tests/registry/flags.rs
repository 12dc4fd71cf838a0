//! GetFlags visibility, EndFlag, DeleteFlag, ListFlags.

use crate::common::*;
use cpis_proto::access::Principal;
use cpis_proto::flag::GetFlagsRequest;
use cpis_proto::gateway::{DeleteFlagRequest, EndFlagRequest, FlagType, ListFlagsRequest};
use tonic::{Code, Request};

fn end(nhs: &str, start: &str, end: &str) -> EndFlagRequest {
    EndFlagRequest {
        nhs_number: nhs.into(),
        flag_type: FlagType::Cpp.into(),
        start_date: start.into(),
        end_date: end.into(),
    }
}

fn delete(nhs: &str, start: &str) -> DeleteFlagRequest {
    DeleteFlagRequest {
        nhs_number: nhs.into(),
        flag_type: FlagType::Cpp.into(),
        start_date: start.into(),
    }
}

#[tokio::test]
async fn get_flags_answers_each_number_in_request_order_from_every_la() {
    for db in databases("order").await {
        let registry = Registry::start(&db, CacheMode::Local).await;
        let n = numbers(3);
        upload(
            &registry.client,
            &la("706"),
            "a",
            vec![vec![cpp(&n[0], "2025-01-01")]],
        )
        .await
        .unwrap();
        upload(
            &registry.client,
            &la("707"),
            "b",
            vec![vec![
                record(&n[0], FlagType::Lac, "2025-02-01", "", ""),
                cpp(&n[2], "2025-01-01"),
            ]],
        )
        .await
        .unwrap();
        let asked = vec![n[2].clone(), n[1].clone(), n[0].clone()];
        let got = get_flags(&registry.client, &asked, now()).await.unwrap();
        let order: Vec<&str> = got.results.iter().map(|r| r.nhs_number.as_str()).collect();
        assert_eq!(
            order,
            [n[2].as_str(), n[1].as_str(), n[0].as_str()],
            "{}",
            db.label()
        );
        assert_eq!(got.results[0].flags.len(), 1);
        assert!(
            got.results[1].flags.is_empty(),
            "no flags is an empty answer"
        );
        let mut las: Vec<String> = got.results[2]
            .flags
            .iter()
            .map(|f| f.local_authority.as_ref().unwrap().ods_code.clone())
            .collect();
        las.sort();
        assert_eq!(las, ["706", "707"]);
        assert_eq!(got.notifications_stored, 0);
    }
}

#[tokio::test]
async fn get_flags_applies_the_date_windows_at_their_edges() {
    for db in databases("windows").await {
        for cache in [CacheMode::Off, CacheMode::Local] {
            let registry = Registry::start(&db, cache).await;
            let n = numbers(3);
            upload(
                &registry.client,
                &la("706"),
                &format!("w-{}", n[0]),
                vec![vec![
                    // CPP ended 2024-03-31: visible until 2025-03-30 (England date).
                    record(&n[0], FlagType::Cpp, "2024-01-01", "2024-03-31", ""),
                    // UCPP due 2025-06-10: visible until 2025-07-07.
                    record(&n[1], FlagType::Ucpp, "2025-01-01", "", "2025-06-10"),
                    // LAC starting 2025-11-01 (GMT).
                    record(&n[2], FlagType::Lac, "2025-11-01", "", ""),
                ]],
            )
            .await
            .unwrap();
            let visible = |at: &'static str, i: usize| {
                let client = registry.client();
                let nhs = n[i].clone();
                async move {
                    let got = get_flags(&client, &[nhs], instant(at)).await.unwrap();
                    got.results[0].flags.first().map(|f| f.active)
                }
            };
            // Day before, of and after the CPP's end + 365 days, across the BST start.
            assert_eq!(
                visible("2025-03-29T12:00:00Z", 0).await,
                Some(false),
                "{}",
                db.label()
            );
            assert_eq!(visible("2025-03-30T22:59:59Z", 0).await, Some(false));
            assert_eq!(
                visible("2025-03-30T23:00:00Z", 0).await,
                None,
                "00:00 BST on 31 March"
            );
            assert_eq!(visible("2025-04-01T12:00:00Z", 0).await, None);
            // While the plan ran it was active.
            assert_eq!(visible("2024-03-30T12:00:00Z", 0).await, Some(true));
            assert_eq!(visible("2024-03-31T12:00:00Z", 0).await, Some(false));
            // UCPP: day before, of and after due + 28 days; active throughout (no end date).
            assert_eq!(visible("2025-07-07T12:00:00Z", 1).await, Some(true));
            assert_eq!(
                visible("2025-07-07T23:30:00Z", 1).await,
                None,
                "00:30 BST on 8 July"
            );
            assert_eq!(visible("2025-07-09T12:00:00Z", 1).await, None);
            assert_eq!(
                visible("2024-12-31T12:00:00Z", 1).await,
                None,
                "before its start"
            );
            // LAC from its start date, in GMT.
            assert_eq!(visible("2025-10-31T23:59:59Z", 2).await, None);
            assert_eq!(visible("2025-11-01T00:00:00Z", 2).await, Some(true));
            registry.stop().await;
        }
    }
}

#[tokio::test]
async fn end_flag_sets_the_end_date_idempotently_and_shows_it_ended() {
    for db in databases("end").await {
        let registry = Registry::start(&db, CacheMode::Local).await;
        let n = number();
        upload(
            &registry.client,
            &la("706"),
            "u",
            vec![vec![cpp(&n, "2024-01-01")]],
        )
        .await
        .unwrap();
        // Read first so the cache holds the open flag.
        let before = get_flags(&registry.client, std::slice::from_ref(&n), now())
            .await
            .unwrap();
        assert!(before.results[0].flags[0].active);
        let ended = registry
            .client
            .clone()
            .end_flag(signed(end(&n, "2024-01-01", "2024-06-01"), &la("706")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ended.end_date, "2024-06-01");
        assert!(!ended.active);
        let again = registry
            .client
            .clone()
            .end_flag(signed(end(&n, "2024-01-01", "2024-06-01"), &la("706")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again, ended, "{}", db.label());
        let got = get_flags(
            &registry.client,
            std::slice::from_ref(&n),
            instant("2025-01-01T12:00:00Z"),
        )
        .await
        .unwrap();
        assert_eq!(got.results[0].flags[0].end_date, "2024-06-01");
        assert!(!got.results[0].flags[0].active);
    }
}

#[tokio::test]
async fn end_and_delete_reach_only_the_callers_own_flags() {
    for db in databases("own").await {
        let registry = Registry::start(&db, CacheMode::Local).await;
        let n = number();
        upload(
            &registry.client,
            &la("706"),
            "u",
            vec![vec![cpp(&n, "2024-01-01")]],
        )
        .await
        .unwrap();
        let mut client = registry.client();
        let others = client
            .end_flag(signed(end(&n, "2024-01-01", "2024-06-01"), &la("707")))
            .await
            .unwrap_err();
        let absent = client
            .end_flag(signed(end(&n, "2023-01-01", "2024-06-01"), &la("706")))
            .await
            .unwrap_err();
        assert_eq!(others.code(), Code::NotFound, "{}", db.label());
        assert_eq!(
            (others.code(), others.message()),
            (absent.code(), absent.message())
        );
        let others = client
            .delete_flag(signed(delete(&n, "2024-01-01"), &la("707")))
            .await
            .unwrap_err();
        assert_eq!(
            (others.code(), others.message()),
            (absent.code(), absent.message())
        );
        // Still there, unchanged.
        let got = get_flags(&registry.client, std::slice::from_ref(&n), now())
            .await
            .unwrap();
        assert_eq!(got.results[0].flags.len(), 1);
        assert_eq!(got.results[0].flags[0].end_date, "");
    }
}

#[tokio::test]
async fn a_deleted_flag_disappears_at_once_and_a_retry_is_not_found() {
    for db in databases("delete").await {
        let registry = Registry::start(&db, CacheMode::Local).await;
        let n = number();
        upload(
            &registry.client,
            &la("706"),
            "u",
            vec![vec![cpp(&n, "2024-01-01")]],
        )
        .await
        .unwrap();
        assert_eq!(
            get_flags(&registry.client, std::slice::from_ref(&n), now())
                .await
                .unwrap()
                .results[0]
                .flags
                .len(),
            1
        );
        let mut client = registry.client();
        client
            .delete_flag(signed(delete(&n, "2024-01-01"), &la("706")))
            .await
            .unwrap();
        let got = get_flags(&registry.client, std::slice::from_ref(&n), now())
            .await
            .unwrap();
        assert!(got.results[0].flags.is_empty(), "{}", db.label());
        let retry = client
            .delete_flag(signed(delete(&n, "2024-01-01"), &la("706")))
            .await
            .unwrap_err();
        assert_eq!(retry.code(), Code::NotFound);
        let end_deleted = client
            .end_flag(signed(end(&n, "2024-01-01", "2024-06-01"), &la("706")))
            .await
            .unwrap_err();
        assert_eq!(end_deleted.code(), Code::NotFound);
        let listed = client
            .list_flags(signed(ListFlagsRequest::default(), &la("706")))
            .await
            .unwrap()
            .into_inner();
        assert!(listed.flags.is_empty());
    }
}

#[tokio::test]
async fn list_flags_pages_through_the_las_own_flags() {
    for db in databases("list").await {
        let registry = Registry::start(&db, CacheMode::Off).await;
        let n = numbers(5);
        let records = n
            .iter()
            .map(|x| record(x, FlagType::Cpp, "2020-01-01", "2020-02-01", ""))
            .collect();
        upload(&registry.client, &la("706"), "u", vec![records])
            .await
            .unwrap();
        upload(
            &registry.client,
            &la("707"),
            "u",
            vec![vec![cpp(&number(), "2025-01-01")]],
        )
        .await
        .unwrap();
        let mut client = registry.client();
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = client
                .list_flags(signed(
                    ListFlagsRequest {
                        page_size: 2,
                        page_token: token.clone(),
                    },
                    &la("706"),
                ))
                .await
                .unwrap()
                .into_inner();
            assert!(page.flags.len() <= 2);
            seen.extend(page.flags.into_iter().map(|f| f.nhs_number));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(
            seen,
            n,
            "{}: past their window, still listed, in upload order",
            db.label()
        );
        let bad_token = client
            .list_flags(signed(
                ListFlagsRequest {
                    page_size: 2,
                    page_token: "nope".into(),
                },
                &la("706"),
            ))
            .await
            .unwrap_err();
        assert_eq!(violations(&bad_token), ["page_token"]);
        let negative = client
            .list_flags(signed(
                ListFlagsRequest {
                    page_size: -1,
                    page_token: String::new(),
                },
                &la("706"),
            ))
            .await
            .unwrap_err();
        assert_eq!(violations(&negative), ["page_size"]);
    }
}

#[tokio::test]
async fn bad_requests_are_invalid_argument_with_field_violations_and_write_nothing() {
    for db in databases("invalid").await {
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
        let mut client = registry.client();
        let err = client
            .get_flags(signed(
                GetFlagsRequest {
                    nhs_numbers: vec![],
                    as_of: None,
                    notify: None,
                },
                &clinician(),
            ))
            .await
            .unwrap_err();
        assert_eq!(violations(&err), ["nhs_numbers", "as_of"], "{}", db.label());
        let err = client
            .get_flags(signed(
                GetFlagsRequest {
                    nhs_numbers: vec!["943 476 5919".into(), "9876544321".into()],
                    as_of: Some(now()),
                    notify: Some(access("")),
                },
                &clinician(),
            ))
            .await
            .unwrap_err();
        assert_eq!(
            violations(&err),
            [
                "nhs_numbers[0]",
                "nhs_numbers[1]",
                "notify",
                "notify.lookup_id"
            ]
        );
        let err = get_flags(&registry.client, &vec![n.clone(); 1001], now())
            .await
            .unwrap_err();
        assert_eq!(violations(&err), ["nhs_numbers"]);
        let err = client
            .end_flag(signed(
                EndFlagRequest {
                    nhs_number: n.clone(),
                    flag_type: 0,
                    start_date: "2024-01-01".into(),
                    end_date: "2023-12-31".into(),
                },
                &la("706"),
            ))
            .await
            .unwrap_err();
        assert_eq!(violations(&err), ["flag_type"]);
        let err = client
            .end_flag(signed(end(&n, "2024-01-01", "2023-12-31"), &la("706")))
            .await
            .unwrap_err();
        assert_eq!(violations(&err), ["end_date"]);
        let err = client
            .delete_flag(signed(
                DeleteFlagRequest {
                    nhs_number: "12".into(),
                    flag_type: 9,
                    start_date: "2024-1-1".into(),
                },
                &la("706"),
            ))
            .await
            .unwrap_err();
        assert_eq!(violations(&err), ["nhs_number", "flag_type", "start_date"]);
        // Nothing was written by any of them.
        let got = get_flags(&registry.client, std::slice::from_ref(&n), now())
            .await
            .unwrap();
        assert_eq!(got.results[0].flags[0].end_date, "");
    }
}

#[tokio::test]
async fn calls_needing_a_principal_refuse_one_missing() {
    for db in databases("unauth").await {
        let registry = Registry::start(&db, CacheMode::Off).await;
        let mut client = registry.client();
        // Reads of personal data need a principal allowed to look a child up.
        let read = |principal: Option<Principal>| {
            let message = GetFlagsRequest {
                nhs_numbers: vec![number()],
                as_of: Some(now()),
                notify: None,
            };
            match principal {
                Some(p) => signed(message, &p),
                None => Request::new(message),
            }
        };
        let err = client.get_flags(read(None)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{}", db.label());
        let err = client.get_flags(read(Some(la("706")))).await.unwrap_err();
        assert_eq!(
            err.code(),
            Code::PermissionDenied,
            "an LA worker may not look a child up"
        );
        client.get_flags(read(Some(clinician()))).await.unwrap();
        // A notifying read needs the notifying lookup activity itself.
        let mut silent_only = clinician();
        silent_only.activities = vec!["B0170".into()];
        let notifying = signed(
            GetFlagsRequest {
                nhs_numbers: vec![number()],
                as_of: Some(now()),
                notify: Some(access("l-silent")),
            },
            &silent_only,
        );
        let err = client.get_flags(notifying).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        let err = client
            .end_flag(Request::new(end(&number(), "2024-01-01", "2024-06-01")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        let err = client
            .list_flags(Request::new(ListFlagsRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
}
