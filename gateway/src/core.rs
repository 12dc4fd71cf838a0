//! The steps every public call takes, in API.md's order: authenticate (`UNAUTHENTICATED`),
//! validate (`INVALID_ARGUMENT`) — neither is a decision, neither is audited — then one
//! decision by access-service, which audits it; only an allowed call reaches the registries.

use crate::auth::Authenticator;
use crate::backends::Backends;
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
    pub watches: crate::streams::WatchLimits,
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
    /// A long stream's periodic re-check of its opening decision (audited only if it denies).
    pub recheck: bool,
    /// With a re-check: what the watch relayed since its last delivery record.
    pub delivered: Option<cpis_proto::gateway::WatchDelivery>,
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
        .and_then(platform::telemetry::trace_id_of_traceparent)
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
        self.authenticate_until(metadata, extensions)
            .await
            .map(|(principal, _)| principal)
    }

    /// [`Core::authenticate`], with when the credential stops being valid: a user's token
    /// expires (`exp`, seconds since the epoch); a system's certificate is re-checked by each
    /// decision instead.
    pub async fn authenticate_until(
        &self,
        metadata: &MetadataMap,
        extensions: &http::Extensions,
    ) -> Result<(Principal, Option<u64>)> {
        self.readiness.check()?;
        if let Some(crate::auth::Admitted {
            principal,
            expires_at,
        }) = extensions.get()
        {
            return Ok((principal.clone(), Some(*expires_at)));
        }
        if metadata.get("authorization").is_some() {
            return self
                .auth
                .authenticate(metadata)
                .await
                .map(|(p, exp)| (p, Some(exp)));
        }
        let peer = extensions.get::<PeerInfo>().cloned().unwrap_or_default();
        let Some(san) = peer.client_sans.first() else {
            return self
                .auth
                .authenticate(metadata)
                .await
                .map(|(p, exp)| (p, Some(exp)));
        };
        let deadline = Deadline::after(std::time::Duration::from_secs(5));
        let resolved = self
            .backends
            .access
            .call(
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
        let principal = Principal {
            user_id: String::new(),
            system_san: resolved.san,
            ods_code: resolved.ods_code,
            role_code: String::new(),
            activities: resolved.activities,
            organisation_name: resolved.organisation_name,
            ..Principal::default()
        };
        Ok((principal, None))
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
            recheck: intent.recheck,
            delivered: intent.delivered,
        };
        let decision = self
            .backends
            .access
            .call(message, None, deadline, |mut c, r| async move {
                c.decide(r).await
            })
            .await?;
        let decision = verdict(decision)?;
        let mut principal = principal;
        principal.organisation_name = decision.organisation_name.clone();
        Ok(Allowed {
            principal,
            decision,
        })
    }
}

/// A decision as the caller sees it: a denial is `PERMISSION_DENIED` with its reason.
fn verdict(decision: Decision) -> Result<Decision> {
    if decision.allowed {
        Ok(decision)
    } else {
        let reason = DenyReason::parse(&decision.reason).unwrap_or(DenyReason::MissingActivity);
        Err(Error::denied(reason))
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
        md.insert(
            "traceparent",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert_eq!(sent_trace_id(&md), "", "W3C trace ids are lower-case hex");
    }
}
