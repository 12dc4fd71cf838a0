//! Retention on SQLite and PostgreSQL: expired attendances go in bounded batches while
//! writers keep writing, and the served service purges on its own.

use crate::support::{as_clinician, attendance, child, clinician, nhs, serve, stores};
use attendance_service::RetentionArgs;
use attendance_service::entities::attendance as row;
use attendance_service::retention::purge_expired;
use chrono::{Duration, Utc};
use cpis_proto::attendance::SummarizeAttendancesRequest;
use platform::domain::to_timestamp;
use platform::shutdown::Shutdown;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};

fn old_row(i: usize, now: chrono::DateTime<Utc>) -> row::ActiveModel {
    row::ActiveModel {
        lookup_id: Set(format!("old-{i}")),
        nhs_number: Set(nhs(300_000_000 + (i as u32 % 50) * 100).as_str().to_owned()),
        // 401 to ~500 days ago: all past the 400-day retention.
        attended_at: Set(now - Duration::days(401) - Duration::minutes(i as i64 * 47)),
        site_ods_code: Set("RQX01".into()),
        organisation_name: Set("Homerton".into()),
        setting_type: Set("EMERGENCY_DEPARTMENT".into()),
        user_id: Set("u".into()),
        role_code: Set("R8000".into()),
        recorded_at: Set(now),
        ..Default::default()
    }
}

#[tokio::test]
async fn purge_while_writes_go_on_removes_every_old_attendance_and_keeps_every_new_one() {
    const OLD: usize = 3000;
    const NEW: usize = 200;
    for store in stores("purge").await {
        let now = Utc::now();
        let rows: Vec<_> = (0..OLD).map(|i| old_row(i, now)).collect();
        for chunk in rows.chunks(500) {
            row::Entity::insert_many(chunk.to_vec())
                .exec_without_returning(&store.conn)
                .await
                .unwrap();
        }
        // Small batches, so the purge takes many statements interleaved with the writer.
        let policy = RetentionArgs {
            purge_batch_size: 100,
            ..RetentionArgs::default()
        };
        let writer = {
            let a = store.attendances.clone();
            tokio::spawn(async move {
                for i in 0..NEW {
                    let visit = attendance(&format!("new-{i}"), child(), Utc::now());
                    assert!(
                        a.record(&visit, Utc::now())
                            .await
                            .expect("write during purge")
                    );
                    tokio::task::yield_now().await;
                }
            })
        };
        let (_trigger, shutdown) = Shutdown::new();
        let purged = purge_expired(&store.attendances, now, &policy, &shutdown)
            .await
            .expect("purge during writes");
        writer.await.expect("writer finished without errors");

        let label = store.db.label();
        assert_eq!(purged, OLD as u64, "{label}");
        let cutoff = now - Duration::days(400);
        let old_left = row::Entity::find()
            .filter(row::Column::AttendedAt.lt(cutoff))
            .count(&store.conn)
            .await
            .unwrap();
        assert_eq!(old_left, 0, "{label}: every old attendance gone");
        let total = row::Entity::find().count(&store.conn).await.unwrap();
        assert_eq!(total, NEW as u64, "{label}: every new attendance kept");
    }
}

#[tokio::test]
async fn each_purge_statement_deletes_at_most_one_batch() {
    for store in stores("batch").await {
        let now = Utc::now();
        let rows: Vec<_> = (0..250).map(|i| old_row(i, now)).collect();
        row::Entity::insert_many(rows)
            .exec_without_returning(&store.conn)
            .await
            .unwrap();
        // One just inside retention stays.
        store
            .attendances
            .record(
                &attendance(
                    "kept",
                    child(),
                    now - Duration::days(400) + Duration::seconds(1),
                ),
                now,
            )
            .await
            .unwrap();
        let cutoff = now - Duration::days(400);
        let a = &store.attendances;
        let label = store.db.label();
        assert_eq!(a.purge_batch(cutoff, 100).await.unwrap(), 100, "{label}");
        assert_eq!(a.purge_batch(cutoff, 100).await.unwrap(), 100, "{label}");
        assert_eq!(a.purge_batch(cutoff, 100).await.unwrap(), 50, "{label}");
        assert_eq!(a.purge_batch(cutoff, 100).await.unwrap(), 0, "{label}");
        assert_eq!(
            row::Entity::find().count(&store.conn).await.unwrap(),
            1,
            "{label}"
        );
    }
}

#[tokio::test]
async fn a_fired_shutdown_stops_the_purge_between_batches() {
    for store in stores("stop").await {
        let now = Utc::now();
        let rows: Vec<_> = (0..50).map(|i| old_row(i, now)).collect();
        row::Entity::insert_many(rows)
            .exec_without_returning(&store.conn)
            .await
            .unwrap();
        let (trigger, shutdown) = Shutdown::new();
        trigger.fire();
        let purged = purge_expired(
            &store.attendances,
            now,
            &RetentionArgs::default(),
            &shutdown,
        )
        .await
        .unwrap();
        assert_eq!(purged, 0, "{}", store.db.label());
    }
}

#[tokio::test]
async fn the_served_service_purges_expired_attendances_in_the_background() {
    for db in platform::testing::all("served_purge").await {
        let served = serve(&db, |args| args.retention.purge_interval_seconds = 1).await;
        let mut client = served.client.clone();
        let old = Utc::now() - Duration::days(450);
        let mut request = tonic::Request::new(cpis_proto::attendance::RecordAttendanceRequest {
            lookup_id: "ancient".into(),
            nhs_number: child().as_str().into(),
            attended_at: Some(to_timestamp(old)),
            site_ods_code: "RQX01".into(),
            organisation_name: "Homerton".into(),
            setting_type: cpis_proto::gateway::SettingType::Nhs111 as i32,
            user_id: "u".into(),
            role_code: "R8000".into(),
        });
        request.set_timeout(std::time::Duration::from_secs(5));
        platform::principal::attach(request.metadata_mut(), &clinician());
        assert!(
            client
                .record_attendance(request)
                .await
                .unwrap()
                .into_inner()
                .created
        );

        // Awaits the condition (the row gone), bounded; no fixed sleep stands in for it.
        let gone = async {
            loop {
                let summary = client
                    .summarize_attendances(as_clinician(SummarizeAttendancesRequest {
                        nhs_numbers: vec![child().as_str().into()],
                        as_of: Some(to_timestamp(Utc::now())),
                        exclude_lookup_id: String::new(),
                    }))
                    .await
                    .unwrap()
                    .into_inner();
                if summary.results[0]
                    .summary
                    .as_ref()
                    .unwrap()
                    .recent
                    .is_empty()
                {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(20), gone)
            .await
            .unwrap_or_else(|_| panic!("{}: not purged within 20 s", db.label()));
        served.trigger.fire();
        served.running.wait().await.unwrap();
    }
}
