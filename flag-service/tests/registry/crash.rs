//! The real binary, killed with SIGKILL between writes: every acknowledged write survives.

use crate::common::*;
use cpis_proto::flag::flag_registry_client::FlagRegistryClient;
use cpis_proto::gateway::{AcknowledgeNotificationsRequest, ListFlagsRequest, UploadFlagsRequest};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tonic::transport::Channel;

struct Process {
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn launch(database_url: &str, data_dir: &std::path::Path, port: u16) -> (Process, Client) {
    let child = Command::new(env!("CARGO_BIN_EXE_flag-service"))
        .arg("--insecure-internal")
        .env("CPIS_LISTEN", format!("127.0.0.1:{port}"))
        .env("CPIS_DATA_DIR", data_dir)
        .env("CPIS_DATABASE_URL", database_url)
        .env_remove("CPIS_REDIS_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let process = Process { child };
    let endpoint = Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let channel = loop {
        if let Ok(channel) = endpoint.connect().await {
            break channel;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the binary never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    wait_until_serving(channel.clone()).await;
    (process, FlagRegistryClient::new(channel))
}

#[tokio::test]
async fn acknowledged_uploads_and_notifications_survive_sigkill() {
    for db in databases("crash").await {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let children = numbers(20);
        let (mut process, client) = launch(&db.url, dir.path(), port).await;
        let mut reports = Vec::new();
        for (i, chunk) in children.chunks(5).enumerate() {
            let records = chunk.iter().map(|c| cpp(c, "2024-01-01")).collect();
            reports.push(
                upload(&client, &la("706"), &format!("day-{i}"), vec![records])
                    .await
                    .unwrap(),
            );
        }
        let mut stored = 0;
        for (i, child) in children.iter().enumerate() {
            stored += notifying_read(&client, child, &format!("crash-lookup-{i}"))
                .await
                .unwrap()
                .notifications_stored;
        }
        assert_eq!(stored, 20);
        client
            .clone()
            .acknowledge_notifications(signed(
                AcknowledgeNotificationsRequest { up_to_cursor: 7 },
                &la("706"),
            ))
            .await
            .unwrap();
        // An upload in flight when the process dies: its stream never ends cleanly.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tx.send(UploadFlagsRequest {
            upload_id: "in-flight".into(),
            records: vec![cpp(&number(), "2024-01-01")],
        })
        .await
        .unwrap();
        let in_flight = {
            let client = client.clone();
            tokio::spawn(async move {
                let request = signed(tokio_stream::wrappers::ReceiverStream::new(rx), &la("706"));
                client.clone().upload_flags(request).await
            })
        };
        // Killed once its first message is staged, mid-stream.
        let conn = sea_orm::Database::connect(&db.url).await.unwrap();
        eventually(Duration::from_secs(10), || {
            let conn = conn.clone();
            async move {
                flag_service::storage::uploads::staged_count(&conn)
                    .await
                    .unwrap()
                    == 1
            }
        })
        .await;

        process.child.kill().unwrap(); // SIGKILL
        process.child.wait().unwrap();
        assert!(in_flight.await.unwrap().is_err());
        drop(tx);
        drop(process);

        let (_process, client) = launch(&db.url, dir.path(), port).await;
        let listed = client
            .clone()
            .list_flags(signed(
                ListFlagsRequest {
                    page_size: 1000,
                    page_token: String::new(),
                },
                &la("706"),
            ))
            .await
            .unwrap()
            .into_inner();
        let mut listed: Vec<String> = listed.flags.into_iter().map(|f| f.nhs_number).collect();
        listed.sort();
        let mut expected = children.clone();
        expected.sort();
        assert_eq!(
            listed,
            expected,
            "{}: every acknowledged upload, nothing of the broken one",
            db.label()
        );
        let notes = crate::restrictions::all_notifications(&client, "706").await;
        assert_eq!(
            notes.iter().map(|n| n.cursor).collect::<Vec<_>>(),
            (1..=20).collect::<Vec<u64>>()
        );
        let state = client
            .clone()
            .acknowledge_notifications(signed(
                AcknowledgeNotificationsRequest { up_to_cursor: 0 },
                &la("706"),
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((state.acknowledged_cursor, state.backlog), (7, 13));
        // A resend after the restart returns the first report.
        let records = children[..5].iter().map(|c| cpp(c, "2024-01-01")).collect();
        let again = upload(&client, &la("706"), "day-0", vec![records])
            .await
            .unwrap();
        assert_eq!(again, reports[0]);
        // Notifying reads stay idempotent across the restart.
        let repeat = notifying_read(&client, &children[0], "crash-lookup-0")
            .await
            .unwrap();
        assert_eq!(repeat.notifications_stored, 0);
    }
}
