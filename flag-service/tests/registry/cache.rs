//! The cache's generation protocol: once a write has returned, no reader anywhere gets the old
//! answer; with Redis broken, reads stay correct and writes answer UNAVAILABLE until it is back.

use crate::common::*;
use cpis_proto::gateway::FlagRecord;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tonic::Code;

/// Version `v` of a child's flag: carried in its emergency phone number.
fn versioned(nhs: &str, v: u64) -> FlagRecord {
    let mut r = cpp(nhs, "2024-01-01");
    r.emergency_phone = format!("0161 000 {v:04}");
    r
}

fn version_of(phone: &str) -> u64 {
    phone.rsplit(' ').next().unwrap().parse().unwrap()
}

async fn write_version(client: &Client, children: &[String], v: u64) -> Result<(), tonic::Status> {
    let records = children.iter().map(|c| versioned(c, v)).collect();
    upload(
        client,
        &la("706"),
        &format!("v{v}-{}", children[0]),
        vec![records],
    )
    .await
    .map(|_| ())
}

/// Readers hammering `children` until `stop`: every read that starts after write `v` returned
/// must show version `v` or later. Returns how many reads were checked.
fn spawn_readers(
    clients: Vec<Client>,
    children: Arc<Vec<String>>,
    acknowledged: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..8)
        .map(|i| {
            let client = clients[i % clients.len()].clone();
            let children = children.clone();
            let acknowledged = acknowledged.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut reads = 0;
                while !stop.load(Ordering::SeqCst) {
                    let floor = acknowledged.load(Ordering::SeqCst);
                    let Ok(got) = get_flags(&client, &children, now()).await else {
                        continue;
                    };
                    for set in &got.results {
                        assert_eq!(set.flags.len(), 1, "never a false 'not flagged'");
                        let contact = set.flags[0].local_authority.as_ref().unwrap();
                        let seen = version_of(&contact.emergency_phone);
                        assert!(
                            seen >= floor,
                            "read version {seen} after write {floor} returned"
                        );
                    }
                    reads += 1;
                }
                reads
            })
        })
        .collect()
}

async fn hammer(writer: &Client, readers: Vec<Client>, label: &str) {
    let children = Arc::new(numbers(4));
    write_version(writer, &children, 0).await.unwrap();
    let acknowledged = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = spawn_readers(
        readers,
        children.clone(),
        acknowledged.clone(),
        stop.clone(),
    );
    for v in 1..=30 {
        write_version(writer, &children, v).await.unwrap();
        acknowledged.store(v, Ordering::SeqCst);
    }
    stop.store(true, Ordering::SeqCst);
    let mut reads = 0;
    for t in tasks {
        reads += t.await.unwrap();
    }
    assert!(reads > 30, "{label}: readers ran ({reads} reads)");
}

fn unique_prefix() -> String {
    format!("cpis-test:{}", uuid::Uuid::new_v4())
}

#[tokio::test]
async fn once_a_write_returned_no_reader_gets_the_old_answer() {
    for db in databases("readyourwrites").await {
        let single = Registry::start(&db, CacheMode::Local).await;
        hammer(&single.client, vec![single.client()], "in-process").await;
        single.stop().await;
        if let Some(url) = platform::testing::redis_url() {
            // Two replicas sharing the database and Redis: written on one, read on both.
            let prefix = unique_prefix();
            let a = Registry::start(&db, CacheMode::Redis(url.clone(), prefix.clone())).await;
            let b = Registry::start(&db, CacheMode::Redis(url, prefix)).await;
            hammer(&a.client, vec![a.client(), b.client()], db.label()).await;
        }
    }
}

/// A Redis of the test's own, on a free port, that it may kill and restart.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start_on(port: u16) -> PrivateRedis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        PrivateRedis {
            port,
            child: Some(child),
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn wait_until_answering(&self) {
        let url = self.url();
        eventually(Duration::from_secs(10), || {
            let url = url.clone();
            async move {
                let Ok(client) = redis::Client::open(url) else {
                    return false;
                };
                let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                    return false;
                };
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            }
        })
        .await;
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn with_redis_broken_reads_stay_correct_and_writes_wait_for_it() {
    for db in databases("redisdown").await {
        let mut redis = PrivateRedis::start_on(free_port());
        redis.wait_until_answering().await;
        let registry = Registry::start(&db, CacheMode::Redis(redis.url(), unique_prefix())).await;
        let children = Arc::new(numbers(3));
        let writer = registry.client();
        eventually(Duration::from_secs(10), || {
            let writer = writer.clone();
            let children = children.clone();
            async move { write_version(&writer, &children, 1).await.is_ok() }
        })
        .await;
        let acknowledged = Arc::new(AtomicU64::new(1));
        let stop = Arc::new(AtomicBool::new(false));
        let readers = spawn_readers(
            vec![registry.client()],
            children.clone(),
            acknowledged.clone(),
            stop.clone(),
        );
        // Let the readers fill the cache with version 1.
        let got = get_flags(&writer, &children, now()).await.unwrap();
        assert_eq!(
            version_of(
                &got.results[0].flags[0]
                    .local_authority
                    .as_ref()
                    .unwrap()
                    .emergency_phone
            ),
            1
        );

        redis.kill();
        // The write commits but cannot be confirmed everywhere: UNAVAILABLE, retry later.
        let err = write_version(&writer, &children, 2).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{}", db.label());
        // Reads go to the database meanwhile, and see it.
        let got = get_flags(&writer, &children, now()).await.unwrap();
        for set in &got.results {
            assert_eq!(
                version_of(
                    &set.flags[0]
                        .local_authority
                        .as_ref()
                        .unwrap()
                        .emergency_phone
                ),
                2
            );
        }

        let port = redis.port;
        redis = PrivateRedis::start_on(port);
        redis.wait_until_answering().await;
        // The idempotent retry completes the write once Redis is back.
        eventually(Duration::from_secs(20), || {
            let writer = writer.clone();
            let children = children.clone();
            async move { write_version(&writer, &children, 2).await.is_ok() }
        })
        .await;
        acknowledged.store(2, Ordering::SeqCst);
        write_version(&writer, &children, 3).await.unwrap();
        acknowledged.store(3, Ordering::SeqCst);
        for _ in 0..3 {
            let got = get_flags(&writer, &children, now()).await.unwrap();
            for set in &got.results {
                assert_eq!(
                    version_of(
                        &set.flags[0]
                            .local_authority
                            .as_ref()
                            .unwrap()
                            .emergency_phone
                    ),
                    3
                );
            }
        }
        stop.store(true, Ordering::SeqCst);
        for r in readers {
            r.await.unwrap();
        }
        drop(redis);
    }
}
