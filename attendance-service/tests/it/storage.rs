//! The attendance log in its database, on SQLite and PostgreSQL: window edges with the clock
//! given, exclusion, `recent`, idempotency under concurrent retries, and the batch form.

use crate::support::{as_of, attendance, child, nhs, stores};
use attendance_service::summary::Summary;
use chrono::{DateTime, Duration, Utc};
use std::collections::HashSet;

fn micros(n: i64) -> Duration {
    Duration::microseconds(n)
}

fn days(n: i64) -> Duration {
    Duration::hours(24 * n)
}

async fn summary_of(store: &crate::support::Store, at: DateTime<Utc>, exclude: &str) -> Summary {
    store
        .attendances
        .summarize(&[child()], at, exclude)
        .await
        .unwrap()
        .remove(0)
}

#[tokio::test]
async fn thirty_days_exactly_before_as_of_is_not_counted_and_one_microsecond_later_is() {
    for store in stores("window30").await {
        let edge = as_of() - days(30);
        let a = &store.attendances;
        assert!(
            a.record(&attendance("on-edge", child(), edge), as_of())
                .await
                .unwrap()
        );
        let s = summary_of(&store, as_of(), "").await;
        assert_eq!(
            s.last_30_days,
            0,
            "{}: the edge itself is outside",
            store.db.label()
        );
        assert_eq!(s.last_90_days, 1, "{}", store.db.label());

        a.record(
            &attendance("just-inside", child(), edge + micros(1)),
            as_of(),
        )
        .await
        .unwrap();
        // 30 days of 24 h, not 30 calendar days in England: across the clock change these
        // differ by an hour, and the contract says 24 h.
        a.record(
            &attendance("half-hour-in", child(), edge + Duration::minutes(30)),
            as_of(),
        )
        .await
        .unwrap();
        let s = summary_of(&store, as_of(), "").await;
        assert_eq!(s.last_30_days, 2, "{}", store.db.label());
        assert_eq!(s.last_90_days, 3, "{}", store.db.label());
        assert_eq!(s.last_365_days, 3, "{}", store.db.label());
    }
}

#[tokio::test]
async fn ninety_and_365_day_windows_have_the_same_exclusive_edges() {
    for store in stores("window90").await {
        let a = &store.attendances;
        for (lookup, at) in [
            ("edge-90", as_of() - days(90)),
            ("in-90", as_of() - days(90) + micros(1)),
            ("edge-365", as_of() - days(365)),
            ("in-365", as_of() - days(365) + micros(1)),
        ] {
            a.record(&attendance(lookup, child(), at), as_of())
                .await
                .unwrap();
        }
        let s = summary_of(&store, as_of(), "").await;
        let label = store.db.label();
        assert_eq!(s.last_30_days, 0, "{label}");
        assert_eq!(s.last_90_days, 1, "{label}");
        assert_eq!(s.last_365_days, 3, "{label}");
        // `recent` lists all four, whatever their age.
        assert_eq!(s.recent.len(), 4, "{label}");
    }
}

#[tokio::test]
async fn as_of_itself_is_counted_and_anything_later_is_not() {
    for store in stores("asof").await {
        let a = &store.attendances;
        a.record(&attendance("at-as-of", child(), as_of()), as_of())
            .await
            .unwrap();
        a.record(&attendance("after", child(), as_of() + micros(1)), as_of())
            .await
            .unwrap();
        let s = summary_of(&store, as_of(), "").await;
        let label = store.db.label();
        assert_eq!(
            (s.last_30_days, s.last_90_days, s.last_365_days),
            (1, 1, 1),
            "{label}"
        );
        assert_eq!(s.recent.len(), 1, "{label}");
        assert_eq!(s.recent[0].attended_at, as_of(), "{label}");
        // Reproducible: an earlier as_of sees neither.
        let earlier = summary_of(&store, as_of() - micros(1), "").await;
        assert_eq!(earlier, Summary::default(), "{label}");
    }
}

#[tokio::test]
async fn nanoseconds_are_dropped_alike_on_every_backend() {
    for store in stores("nanos").await {
        // 999 ns past the microsecond: stored and compared as that microsecond.
        let mut v = platform::error::Violations::new();
        let ts = platform::domain::to_timestamp(as_of() - days(30) + micros(1));
        let with_nanos = prost_types::Timestamp {
            nanos: ts.nanos + 999,
            ..ts
        };
        let at = attendance_service::attendance::instant(&mut v, "t", Some(&with_nanos)).unwrap();
        store
            .attendances
            .record(&attendance("nanos", child(), at), as_of())
            .await
            .unwrap();
        let s = summary_of(&store, as_of(), "").await;
        assert_eq!(s.last_30_days, 1, "{}", store.db.label());
        assert_eq!(s.recent[0].attended_at, as_of() - days(30) + micros(1));
    }
}

#[tokio::test]
async fn summaries_exclude_the_current_lookup() {
    for store in stores("exclude").await {
        let a = &store.attendances;
        a.record(&attendance("earlier", child(), as_of() - days(3)), as_of())
            .await
            .unwrap();
        a.record(&attendance("current", child(), as_of()), as_of())
            .await
            .unwrap();
        let s = summary_of(&store, as_of(), "current").await;
        let label = store.db.label();
        assert_eq!(
            (s.last_30_days, s.last_90_days, s.last_365_days),
            (1, 1, 1),
            "{label}"
        );
        assert_eq!(s.recent.len(), 1, "{label}");
        assert_eq!(s.recent[0].attended_at, as_of() - days(3), "{label}");
        // Without the exclusion both count.
        assert_eq!(
            summary_of(&store, as_of(), "").await.last_30_days,
            2,
            "{label}"
        );
    }
}

#[tokio::test]
async fn recent_is_newest_first_and_holds_at_most_25() {
    for store in stores("recent").await {
        let a = &store.attendances;
        // 30 attendances, one every 20 days: some older than a year, recorded out of order.
        let mut order: Vec<i64> = (0..30).collect();
        order.reverse();
        order.swap(3, 17);
        for i in order {
            let mut visit = attendance(&format!("l{i}"), child(), as_of() - days(20 * i));
            visit.site_ods_code = platform::domain::OdsCode::parse(&format!("S{i:02}")).unwrap();
            a.record(&visit, as_of()).await.unwrap();
        }
        let s = summary_of(&store, as_of(), "").await;
        let label = store.db.label();
        assert_eq!(s.recent.len(), 25, "{label}");
        let sites: Vec<_> = s.recent.iter().map(|r| r.ods_code.clone()).collect();
        let expected: Vec<_> = (0..25).map(|i| format!("S{i:02}")).collect();
        assert_eq!(sites, expected, "{label}: newest first");
        // The counts are not capped by `recent`: 0,20 days in 30; ...; 0..=18 in 365.
        assert_eq!(
            (s.last_30_days, s.last_90_days, s.last_365_days),
            (2, 5, 19),
            "{label}"
        );
        let r = &s.recent[0];
        assert_eq!(r.organisation_name, "Homerton Healthcare");
        assert_eq!(r.role_code, "R8000");
        assert_eq!(
            r.setting_type,
            platform::domain::SettingType::EmergencyDepartment
        );
    }
}

#[tokio::test]
async fn concurrent_retries_of_one_lookup_store_one_row_and_report_one_creation() {
    for store in stores("concurrent").await {
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let a = store.attendances.clone();
                tokio::spawn(async move {
                    // Retries may even differ in content: the first stored wins.
                    let mut visit = attendance("same-lookup", child(), as_of() - days(1));
                    visit.user_id = format!("retry-{i}");
                    a.record(&visit, as_of()).await
                })
            })
            .collect();
        let mut created = 0;
        for t in futures::future::join_all(tasks).await {
            if t.unwrap().unwrap() {
                created += 1;
            }
        }
        let label = store.db.label();
        assert_eq!(created, 1, "{label}: exactly one creation");
        let s = summary_of(&store, as_of(), "").await;
        assert_eq!(s.last_30_days, 1, "{label}: one row");
        assert_eq!(s.recent.len(), 1, "{label}");
    }
}

#[tokio::test]
async fn a_retry_with_other_content_keeps_the_first_and_reports_no_creation() {
    for store in stores("retry").await {
        let a = &store.attendances;
        let first = attendance("lookup-x", child(), as_of() - days(2));
        assert!(a.record(&first, as_of()).await.unwrap());
        let mut other = attendance("lookup-x", nhs(123_456_782), as_of() - days(1));
        other.role_code = "R8001".into();
        assert!(!a.record(&other, as_of()).await.unwrap());
        assert!(!a.record(&first, as_of()).await.unwrap());
        let s = summary_of(&store, as_of(), "").await;
        let label = store.db.label();
        assert_eq!(s.recent.len(), 1, "{label}");
        assert_eq!(s.recent[0].attended_at, as_of() - days(2), "{label}");
        assert_eq!(s.recent[0].role_code, "R8000", "{label}");
        let moved = a.summarize(&[nhs(123_456_782)], as_of(), "").await.unwrap();
        assert_eq!(moved, vec![Summary::default()], "{label}");
    }
}

#[tokio::test]
async fn batch_summaries_follow_the_requested_order_and_unknown_numbers_are_zero() {
    for store in stores("batch").await {
        let a = &store.attendances;
        // Person k has k attendances within the last 30 days.
        let people: Vec<_> = (1..=5).map(|k| nhs(100_000_000 + 1000 * k)).collect();
        for (k, who) in people.iter().enumerate() {
            for j in 0..=k {
                let lookup = format!("p{k}-{j}");
                a.record(
                    &attendance(&lookup, *who, as_of() - days(j as i64 + 1)),
                    as_of(),
                )
                .await
                .unwrap();
            }
        }
        let unknown = nhs(555_555_555);
        let asked = vec![people[4], unknown, people[0], people[2], people[4]];
        let got = a.summarize(&asked, as_of(), "").await.unwrap();
        let label = store.db.label();
        let counts: Vec<_> = got.iter().map(|s| s.last_30_days).collect();
        assert_eq!(counts, [5, 0, 1, 3, 5], "{label}");
        assert_eq!(got[1], Summary::default(), "{label}");
        assert_eq!(got[0], got[4], "{label}: a repeat answers the same");
        // Every recent entry belongs to its person: their lookups only.
        let distinct: HashSet<_> = got[3].recent.iter().map(|r| r.attended_at).collect();
        assert_eq!(distinct.len(), 3, "{label}");
    }
}

#[tokio::test]
async fn a_thousand_numbers_are_summarised_in_one_call() {
    for store in stores("thousand").await {
        let a = &store.attendances;
        let mut people = Vec::new();
        let mut first_nine = 200_000_000;
        while people.len() < 1000 {
            if let Some(n) = platform::domain::NhsNumber::from_first_nine(first_nine) {
                people.push(n);
            }
            first_nine += 1;
        }
        for (i, who) in people.iter().enumerate().step_by(100) {
            a.record(
                &attendance(&format!("k{i}"), *who, as_of() - days(1)),
                as_of(),
            )
            .await
            .unwrap();
        }
        let got = a.summarize(&people, as_of(), "").await.unwrap();
        assert_eq!(got.len(), 1000);
        let seen: Vec<_> = got.iter().map(|s| s.last_30_days).collect();
        for (i, c) in seen.iter().enumerate() {
            assert_eq!(*c, u32::from(i % 100 == 0), "{} #{i}", store.db.label());
        }
    }
}
