//! UploadFlags under its bounds: stored reports capped on resend.

use crate::common::*;
use cpis_proto::gateway::{RecordCode, UploadFlagsResponse};
use flag_service::entities::upload;
use prost::Message;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

fn codes(report: &UploadFlagsResponse) -> Vec<RecordCode> {
    report.results.iter().map(|r| r.code()).collect()
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
