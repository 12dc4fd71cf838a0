//! An in-process `cpis dev` on a free loopback port with a temporary data directory, and the
//! real `cpis` binary run against it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use cpis_cli::dev::{self, DevArgs};
use cpis_cli::{devkeys, token};
use platform::domain::NhsNumber;
use platform::shutdown::{Shutdown, ShutdownTrigger};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const ADMIN_ORG: &str = "X26";
pub const LA: &str = "706";
pub const OTHER_LA: &str = "709";
pub const TRUST: &str = "RQX";
pub const SITE: &str = "RQX01";

pub struct Dev {
    _dir: tempfile::TempDir,
    data: PathBuf,
    pub url: String,
    pub demo: Option<String>,
    trigger: Option<ShutdownTrigger>,
    system: Option<dev::DevSystem>,
}

impl Dev {
    pub async fn start() -> Dev {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut DevArgs)) -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let mut args = DevArgs {
            data_dir: dir.path().to_owned(),
            listen: "127.0.0.1:0".parse().unwrap(),
            demo: false,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        };
        adjust(&mut args);
        let (trigger, shutdown) = Shutdown::new();
        let system = dev::start(&args, shutdown).await.unwrap();
        if args.tls_cert.is_none() {
            wait_until_serving(system.gateway_addr).await;
        }
        let scheme = if args.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        Dev {
            url: format!("{scheme}://{}", system.gateway_addr),
            demo: system.demo.clone(),
            data: args.data_dir.clone(),
            _dir: dir,
            trigger: Some(trigger),
            system: Some(system),
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    pub fn token(&self, user: &str, org: &str, activities: &[&str]) -> String {
        let keys = devkeys::load(&self.data).unwrap();
        let activities: Vec<String> = activities.iter().map(|a| a.to_string()).collect();
        token::sign(
            &keys,
            user,
            org,
            "R8000",
            &activities,
            Duration::from_secs(600),
        )
        .unwrap()
    }

    pub fn admin(&self) -> String {
        self.token("admin", ADMIN_ORG, &["CPIS_ADMIN"])
    }
    pub fn auditor(&self) -> String {
        self.token("caldicott", ADMIN_ORG, &["CPIS_AUDIT"])
    }
    pub fn la(&self) -> String {
        self.token("la.worker", LA, &["CPIS_LA_MANAGE"])
    }
    pub fn clinician(&self) -> String {
        self.token("dr.jones", TRUST, &["B0107"])
    }

    /// Runs `cpis ARGS --gateway URL --token TOKEN`.
    pub async fn cpis(&self, token: &str, args: &[&str]) -> Output {
        let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        all.extend([
            "--gateway".into(),
            self.url.clone(),
            "--token".into(),
            token.into(),
        ]);
        run(all, self.data.clone()).await
    }

    /// Onboards two LAs and a trust through the CLI, as an administrator would.
    pub async fn onboard(&self) {
        let admin = self.admin();
        for (ods, name, kind) in [
            (LA, "Tower Hamlets", "local-authority"),
            (OTHER_LA, "Lancashire", "la"),
            (TRUST, "Homerton University Hospital", "health"),
        ] {
            self.cpis(
                &admin,
                &["org", "upsert", ods, "--name", name, "--kind", kind],
            )
            .await
            .ok();
        }
    }

    pub async fn stop(mut self) {
        if let Some(t) = self.trigger.take() {
            t.fire();
        }
        if let Some(system) = self.system.take() {
            for (name, running) in system.components {
                running
                    .wait()
                    .await
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
        }
    }
}

pub struct Output {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> &Self {
        assert_eq!(self.status, Some(0), "{self:?}");
        self
    }

    pub fn code(&self, want: i32) -> &Self {
        assert_eq!(self.status, Some(want), "{self:?}");
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cpis"))
}

/// How long one run of the binary may take before the test gives up on it.
const RUN_LIMIT: Duration = Duration::from_secs(90);

/// Runs the binary as a child process; it is killed if the test stops waiting for it.
pub async fn run(args: Vec<String>, cwd: PathBuf) -> Output {
    let child = tokio::process::Command::new(binary())
        .args(&args)
        .current_dir(cwd)
        .env_remove("CPIS_TOKEN")
        .env_remove("CPIS_GATEWAY")
        .env_remove("CPIS_DATA_DIR")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(RUN_LIMIT, child)
        .await
        .unwrap_or_else(|_| panic!("cpis {args:?} did not finish within {RUN_LIMIT:?}"))
        .unwrap();
    Output {
        status: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Waits until the gateway reports SERVING (its backends are ready).
pub async fn wait_until_serving(addr: std::net::SocketAddr) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let mut client = HealthClient::new(channel);
    let mut interval = tokio::time::interval(Duration::from_millis(50));
    // The gateway is ready at once; its `backends` entry says when its backends answer too.
    for service in ["", "backends"] {
        let mut serving = false;
        for _ in 0..600 {
            interval.tick().await;
            let status = client
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await;
            if status.is_ok_and(|s| s.into_inner().status() == ServingStatus::Serving) {
                serving = true;
                break;
            }
        }
        assert!(
            serving,
            "the gateway on {addr} never became ready ({service:?})"
        );
    }
}

/// The n-th valid NHS number of a 999 test-range block.
pub fn child(n: u32) -> String {
    (n..)
        .find_map(|k| NhsNumber::from_first_nine(999_200_000 + k))
        .unwrap()
        .as_str()
        .to_owned()
}

pub const HEADER: &str =
    "nhs_number,flag_type,start_date,end_date,due_date,emergency_phone,office_hours_phone,email";

pub fn good_row(nhs: &str, flag_type: &str) -> String {
    let due = if flag_type.to_ascii_lowercase().ends_with("ucpp") {
        "2099-01-01"
    } else {
        ""
    };
    format!("{nhs},{flag_type},2024-01-02,,{due},020 7946 0001,020 7946 0002,mash@example.org")
}

pub fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.to_string_lossy().into_owned()
}
