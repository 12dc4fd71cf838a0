//! Proof, in the test run's own output, that storage tests reach PostgreSQL and Redis: under
//! `CI=true` both must be configured and answer; elsewhere the test says what it skipped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};

#[tokio::test]
async fn storage_tests_run_on_postgresql_and_redis_when_configured() {
    match platform::testing::postgres_server_url() {
        Some(url) => {
            let db = Database::connect(&url)
                .await
                .expect("CPIS_TEST_POSTGRES_URL must answer");
            let row = db
                .query_one_raw(Statement::from_string(
                    DbBackend::Postgres,
                    "SELECT version()",
                ))
                .await
                .unwrap()
                .unwrap();
            let version: String = row.try_get("", "version").unwrap();
            assert!(version.starts_with("PostgreSQL"), "{version}");
            eprintln!("storage tests run on {version}");
        }
        None => eprintln!("CPIS_TEST_POSTGRES_URL is not set: storage tests ran on SQLite only"),
    }
    match platform::testing::redis_url() {
        Some(url) => {
            let client = platform::cache::client(&url, &Default::default()).unwrap();
            let mut cache = platform::cache::connect(client)
                .await
                .expect("CPIS_TEST_REDIS_URL must answer");
            let pong: String = redis::cmd("PING").query_async(&mut cache).await.unwrap();
            assert_eq!(pong, "PONG");
        }
        None => eprintln!("CPIS_TEST_REDIS_URL is not set: cache tests ran in-process only"),
    }
}
