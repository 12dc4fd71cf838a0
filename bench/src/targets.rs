//! What is measured, started as separate processes: the echo server, the production
//! configuration (the cpis-tests harness: three backends with mTLS on PostgreSQL, flag-service
//! on Redis, the gateway serving TLS) and `cpis dev`; and the calls the load generator makes
//! to them.

use crate::load::Outcome;
use anyhow::{Context, Result, bail};
use cpis_proto::gateway::child_protection_client::ChildProtectionClient;
use cpis_proto::gateway::{AccessKind, LookupChildRequest, Setting, SettingType};
use platform::domain::NhsNumber;
use platform::synthetic::SplitMix64;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// `connections` HTTP/2 connections to `addr`, TLS when `ca_pem` is given (the server's name
/// is `localhost`). Every target is called through the same settings.
pub fn channels(
    addr: SocketAddr,
    ca_pem: Option<&str>,
    connections: usize,
) -> Result<Vec<Channel>> {
    (0..connections.max(1))
        .map(|_| {
            let endpoint = match ca_pem {
                Some(pem) => Endpoint::from_shared(format!("https://localhost:{}", addr.port()))?
                    .tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(pem))
                        .domain_name("localhost"),
                )?,
                None => Endpoint::from_shared(format!("http://{addr}"))?,
            };
            Ok(endpoint
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(5))
                .connect_lazy())
        })
        .collect()
}

/// A child process killed when dropped.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        for _ in 0..100 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `program args` with its output in `log`.
pub fn spawn(program: &Path, args: &[String], log: &Path) -> Result<Process> {
    let log = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let child = Command::new(program)
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    Ok(Process(child))
}

/// Waits until `addr` answers gRPC health with SERVING, and a gateway's backends too (any
/// status for a server without the health service, such as the echo: it answers
/// UNIMPLEMENTED).
pub async fn wait_serving(addr: SocketAddr, ca_pem: Option<&str>) -> Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let channel = channels(addr, ca_pem, 1)?.remove(0);
    // A gateway is ready at once; its "backends" entry says when its backends answer too
    // (other servers know no such entry: NOT_FOUND).
    for service in ["", "backends"] {
        let mut serving = false;
        for _ in 0..600 {
            let mut client = HealthClient::new(channel.clone());
            let request = HealthCheckRequest {
                service: service.into(),
            };
            match client.check(request).await {
                Ok(r) if r.get_ref().status() == ServingStatus::Serving => serving = true,
                Err(s)
                    if matches!(s.code(), tonic::Code::Unimplemented | tonic::Code::NotFound) =>
                {
                    serving = true
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            if serving {
                break;
            }
        }
        if !serving {
            bail!("{addr} never became SERVING ({service:?})");
        }
    }
    Ok(())
}

/// One workload of lookups: clinicians with tokens, at their trusts' sites, looking up a
/// child who is flagged `flagged_percent` of the time; every answer is checked.
pub struct Lookup {
    clients: Vec<ChildProtectionClient<Channel>>,
    clinicians: Vec<(MetadataValue<Ascii>, String)>,
    access_kind: AccessKind,
    setting_type: SettingType,
    lookups: Arc<crate::dataset::Lookups>,
    flagged_per_million: u64,
}

/// The access kind and the setting a lookup of that kind comes from.
pub fn workload(notifying: bool) -> (AccessKind, SettingType, &'static str) {
    if notifying {
        (
            AccessKind::Unscheduled,
            SettingType::EmergencyDepartment,
            "B0107",
        )
    } else {
        (
            AccessKind::Scheduled,
            SettingType::CommunityPaediatrics,
            "B0170",
        )
    }
}

impl Lookup {
    pub fn new(
        channels: &[Channel],
        clinicians: Vec<(String, String)>,
        notifying: bool,
        lookups: Arc<crate::dataset::Lookups>,
        flagged_percent: f64,
    ) -> Result<Arc<Lookup>> {
        let (access_kind, setting_type, _) = workload(notifying);
        let clinicians = clinicians
            .into_iter()
            .map(|(token, site)| Ok((format!("Bearer {token}").parse()?, site)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(Lookup {
            clients: channels
                .iter()
                .map(|c| ChildProtectionClient::new(c.clone()))
                .collect(),
            clinicians,
            access_kind,
            setting_type,
            lookups,
            flagged_per_million: (flagged_percent * 10_000.0) as u64,
        }))
    }

    fn child(&self, caller: usize, n: u64) -> (NhsNumber, bool) {
        let mut rng = SplitMix64(((caller as u64) << 40) ^ n ^ 0x5EED);
        let flagged = rng.below(1_000_000) < self.flagged_per_million;
        let pool = if flagged {
            &self.lookups.flagged
        } else {
            &self.lookups.unflagged
        };
        (pool[rng.below(pool.len() as u64) as usize], flagged)
    }

    /// Caller `caller`'s `n`-th lookup; a wrong answer counts as an error of its own.
    pub fn call(
        self: Arc<Self>,
        caller: usize,
        n: u64,
    ) -> impl Future<Output = Outcome> + Send + 'static {
        let this = self;
        async move {
            let (child, flagged) = this.child(caller, n);
            let (token, site) = &this.clinicians[caller % this.clinicians.len()];
            let mut request = tonic::Request::new(LookupChildRequest {
                nhs_number: child.as_str().to_owned(),
                access_kind: this.access_kind.into(),
                setting: Some(Setting {
                    ods_code: site.clone(),
                    setting_type: this.setting_type.into(),
                }),
                request_id: uuid::Uuid::new_v4().to_string(),
            });
            request
                .metadata_mut()
                .insert("authorization", token.clone());
            request.set_timeout(Duration::from_secs(10));
            let mut client = this.clients[caller % this.clients.len()].clone();
            match client.lookup_child(request).await {
                Ok(response) => {
                    let answer = response.into_inner();
                    if answer.flagged != flagged {
                        Err("WrongAnswer".to_owned())
                    } else if !answer.attendance.is_some_and(|a| a.available) {
                        Err("AttendanceUnavailable".to_owned())
                    } else {
                        Ok(())
                    }
                }
                Err(status) => Err(format!("{:?}", status.code())),
            }
        }
    }
}

/// Echo calls of [`crate::echo::PAYLOAD_BYTES`].
pub fn echo_call(
    clients: Arc<Vec<Channel>>,
) -> impl Fn(usize, u64) -> std::pin::Pin<Box<dyn Future<Output = Outcome> + Send>> + Send + Sync + 'static
{
    use crate::echo::pb::{EchoRequest, echo_client::EchoClient};
    move |caller, _| {
        let mut client = EchoClient::new(clients[caller % clients.len()].clone());
        Box::pin(async move {
            let mut request = tonic::Request::new(EchoRequest {
                payload: vec![7u8; crate::echo::PAYLOAD_BYTES],
            });
            request.set_timeout(Duration::from_secs(10));
            client
                .echo(request)
                .await
                .map(|_| ())
                .map_err(|s| format!("{:?}", s.code()))
        })
    }
}
