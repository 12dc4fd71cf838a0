//! Two access-service processes (the real binary) appending concurrently to one PostgreSQL
//! database produce one gap-free chain that verifies. Needs CPIS_TEST_POSTGRES_URL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use access_service::audit::verify::verify;
use cpis_proto::access::access_control_client::AccessControlClient;
use platform::domain::AccessKind;
use std::process::{Child, Command, Stdio};
use tonic::transport::Channel;

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(url: &str, dir: &std::path::Path, port: u16) -> Process {
    Process(
        Command::new(env!("CARGO_BIN_EXE_access-service"))
            .arg("--insecure-internal")
            .env("CPIS_DATABASE_URL", url)
            .env("CPIS_LISTEN", format!("127.0.0.1:{port}"))
            .env("CPIS_DATA_DIR", dir)
            .env_remove("CPIS_AUDIT_SIGNING_KEY_FILE")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start access-service"),
    )
}

/// Connects once the process listens; the port opening is the condition awaited.
async fn connect(port: u16) -> Channel {
    let endpoint = Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
    for _ in 0..200 {
        if let Ok(channel) = endpoint.connect().await {
            return channel;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("access-service did not listen on {port}");
}

#[tokio::test]
async fn two_processes_append_to_one_gap_free_chain() {
    let Some(db) = platform::testing::postgres("two_processes").await else {
        eprintln!("CPIS_TEST_POSTGRES_URL not set: skipped");
        return;
    };
    let conn = common::migrated(&db.url).await;
    common::organisation(&conn, "RQX", "HEALTH", true).await;
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let _a = spawn(&db.url, dir.path(), pa);
    let _b = spawn(&db.url, dir.path(), pb);
    let mut clients = Vec::new();
    for port in [pa, pb] {
        let channel = connect(port).await;
        common::until_serving(channel.clone()).await;
        clients.push(AccessControlClient::new(channel));
    }

    const PER_PROCESS: usize = 300;
    let mut tasks = Vec::new();
    for (p, client) in clients.iter().enumerate() {
        for worker in 0..8 {
            let mut client = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut sequences = Vec::new();
                for i in 0..PER_PROCESS / 8 + 1 {
                    if worker + i * 8 >= PER_PROCESS {
                        break;
                    }
                    let site = if i % 4 == 0 { "RQY01" } else { "RQX01" };
                    let user = common::user(&format!("p{p}w{worker}"), "RQX", &["B0107"]);
                    let d = client
                        .decide(common::lookup(user, AccessKind::Unscheduled, site))
                        .await
                        .unwrap()
                        .into_inner();
                    sequences.push(d.audit_sequence);
                }
                (p, sequences)
            }));
        }
    }
    let mut all = Vec::new();
    let mut per_process = [0usize; 2];
    for t in tasks {
        let (p, s) = t.await.unwrap();
        per_process[p] += s.len();
        all.extend(s);
    }
    assert_eq!(per_process, [PER_PROCESS, PER_PROCESS]);
    all.sort_unstable();
    let expected: Vec<u64> = (1..=(2 * PER_PROCESS) as u64).collect();
    assert_eq!(all, expected, "one gap-free sequence across both processes");

    let v = verify(&conn, None).await.unwrap();
    assert!(v.ok, "{}", v.problem);
    assert_eq!(v.records_checked, (2 * PER_PROCESS) as u64);
}
