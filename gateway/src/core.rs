//! The steps every public call takes, in API.md's order: authenticate (`UNAUTHENTICATED`),
//! validate (`INVALID_ARGUMENT`) — neither is a decision, neither is audited — then one
//! decision by access-service, which audits it; only an allowed call reaches the registries.

use crate::auth::Authenticator;
use crate::backends::Backends;
use crate::calls::{self, RetryBudget};
use crate::deadline::Deadline;
use cpis_proto::access::{DecideRequest, Decision, Principal, ResolveSystemRequest};
use cpis_proto::gateway::Setting;
use platform::domain::{AccessKind, DenyReason, NhsNumber};
use platform::error::{Error, Result};
use platform::health::Readiness;
use platform::shutdown::Shutdown;
use platform::tls::PeerInfo;
use tonic::metadata::MetadataMap;

pub struct Core {
    pub backends: Backends,
    pub auth: Authenticator,
    pub readiness: Readiness,
    pub shutdown: Shutdown,
    pub retries: RetryBudget,
}

/// What the caller asks to do, as access-service decides it.
#[derive(Default)]
pub struct Intent {
    pub action: &'static str,
    pub nhs_number: Option<NhsNumber>,
    pub access_kind: Option<AccessKind>,
    pub setting: Option<Setting>,
    pub request_id: String,
    pub fingerprint: Vec<u8>,
    pub upload_id: String,
}

impl Intent {
    pub fn new(action: &'static str) -> Self {
        Intent {
            action,
            ..Default::default()
        }
    }

    pub fn about(mut self, nhs_number: Option<NhsNumber>) -> Self {
        self.nhs_number = nhs_number;
        self
    }
}

/// An allowed call: who, with the organisation's name filled in from the registry, and the
/// decision (lookup id, instant, obligation).
pub struct Allowed {
    pub principal: Principal,
    pub decision: Decision,
}

/// The trace this call belongs to, for the audit record: the current span's (the caller's
/// trace when it sent a `traceparent`, else the one this call started), or, where no tracing
/// is installed (a library test), the caller's `traceparent` as sent.
fn trace_id(metadata: &MetadataMap) -> String {
    platform::telemetry::current_trace_id().unwrap_or_else(|| sent_trace_id(metadata))
}

fn sent_trace_id(metadata: &MetadataMap) -> String {
    metadata
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split('-').nth(1))
        .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned)
        .unwrap_or_default()
}

impl Core {
    /// The verified identity of the caller; no identity, no data. A user presents a bearer
    /// token; a council system without one is known by its client certificate's SAN, which
    /// access-service maps to its organisation and activities.
    pub async fn authenticate(
        &self,
        metadata: &MetadataMap,
        extensions: &http::Extensions,
    ) -> Result<Principal> {
        self.readiness.check()?;
        if metadata.get("authorization").is_some() {
            return self.auth.authenticate(metadata);
        }
        let peer = extensions.get::<PeerInfo>().cloned().unwrap_or_default();
        let Some(san) = peer.client_sans.first() else {
            return self.auth.authenticate(metadata);
        };
        let deadline = Deadline::after(std::time::Duration::from_secs(5));
        let resolved = self
            .call(
                "access-service",
                self.backends.access(),
                ResolveSystemRequest { san: san.clone() },
                None,
                &deadline,
                |mut c, r| async move { c.resolve_system(r).await },
            )
            .await
            .map_err(|e| match e {
                Error::Upstream(s) if s.code() == tonic::Code::NotFound => Error::Unauthenticated(
                    "this client certificate is not registered as a system".into(),
                ),
                other => other,
            })?;
        Ok(Principal {
            user_id: String::new(),
            system_san: resolved.san,
            ods_code: resolved.ods_code,
            role_code: String::new(),
            activities: resolved.activities,
            organisation_name: resolved.organisation_name,
        })
    }

    /// One decision by access-service. Unreachable → `UNAVAILABLE`, never a guess (fail closed).
    pub async fn decide(
        &self,
        principal: Principal,
        intent: Intent,
        metadata: &MetadataMap,
        deadline: &Deadline,
    ) -> Result<Allowed> {
        let message = DecideRequest {
            principal: Some(principal.clone()),
            action: intent.action.to_owned(),
            nhs_number: intent
                .nhs_number
                .map(|n| n.as_str().to_owned())
                .unwrap_or_default(),
            access_kind: intent.access_kind.map(i32::from).unwrap_or_default(),
            setting: intent.setting,
            request_id: intent.request_id,
            request_fingerprint: intent.fingerprint,
            trace_id: trace_id(metadata),
            upload_id: intent.upload_id,
        };
        let client = self.backends.access();
        let decision = calls::with_retry(&self.retries, deadline, || {
            let message = message.clone();
            let mut client = client.clone();
            async move {
                let request =
                    calls::request(message, deadline, None).map_err(tonic::Status::from)?;
                client.decide(request).await
            }
        })
        .await
        .map_err(|s| calls::backend_error("access-service", s))?
        .into_inner();
        if !decision.allowed {
            let reason = DenyReason::parse(&decision.reason).unwrap_or(DenyReason::MissingActivity);
            return Err(Error::denied(reason));
        }
        let mut principal = principal;
        principal.organisation_name = decision.organisation_name.clone();
        Ok(Allowed {
            principal,
            decision,
        })
    }
}

/// SHA-256 over length-prefixed parts: the canonical request AIP-155 compares.
pub fn fingerprint(parts: &[&[u8]]) -> Vec<u8> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in parts {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    ctx.finish().as_ref().to_vec()
}

impl Core {
    /// One backend call with the deadline, the principal and retries of `UNAVAILABLE`; its
    /// failure mapped once, by [`calls::backend_error`].
    pub async fn call<C, Req, Resp, F, Fut>(
        &self,
        backend: &'static str,
        client: C,
        message: Req,
        principal: Option<&Principal>,
        deadline: &Deadline,
        f: F,
    ) -> Result<Resp>
    where
        C: Clone,
        Req: Clone,
        F: Fn(C, tonic::Request<Req>) -> Fut,
        Fut:
            std::future::Future<Output = std::result::Result<tonic::Response<Resp>, tonic::Status>>,
    {
        calls::with_retry(&self.retries, deadline, || {
            let request = calls::request(message.clone(), deadline, principal);
            let client = client.clone();
            let f = &f;
            async move {
                let request = request.map_err(tonic::Status::from)?;
                let budget = request
                    .metadata()
                    .get("grpc-timeout")
                    .and_then(|v| v.to_str().ok())
                    .and_then(crate::deadline::parse_grpc_timeout)
                    .unwrap_or(crate::deadline::DEFAULT_TIMEOUT);
                // A backend with no reachable address would otherwise hold the call forever.
                match tokio::time::timeout(budget, f(client, request)).await {
                    Ok(answer) => answer,
                    Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                        "{backend} did not answer in time"
                    ))),
                }
            }
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| calls::backend_error(backend, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_unambiguous() {
        assert_ne!(fingerprint(&[b"ab", b"c"]), fingerprint(&[b"a", b"bc"]));
        assert_eq!(fingerprint(&[b"ab", b"c"]), fingerprint(&[b"ab", b"c"]));
    }

    #[test]
    fn extracts_the_w3c_trace_id() {
        let mut md = MetadataMap::new();
        md.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert_eq!(sent_trace_id(&md), "4bf92f3577b34da6a3ce929d0e0e4736");
        md.insert("traceparent", "garbage".parse().unwrap());
        assert_eq!(sent_trace_id(&md), "");
    }
}
