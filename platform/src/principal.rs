//! The verified caller, as the gateway forwards it to the backends: a serialized
//! `cpis.access.v1.Principal` in the binary metadata entry `cpis-principal-bin`.
//!
//! A backend believes that entry only from a peer it trusts to be the gateway: with mTLS, a
//! peer whose verified client certificate carries the gateway's SAN; without it, a loopback
//! peer under `--insecure-internal` (development only).

use crate::domain::{Activity, DenyReason};
use crate::error::{Error, Result};
use cpis_proto::access::Principal;
use prost::Message;
use tonic::Request;
use tonic::metadata::{BinaryMetadataValue, MetadataMap};

pub const METADATA_KEY: &str = "cpis-principal-bin";

/// Which peers may forward a principal.
#[derive(Clone, Debug)]
pub enum PeerTrust {
    /// `--insecure-internal`: loopback peers are trusted, nothing else.
    Loopback,
    /// `cpis dev`: only calls over this process's own in-memory pair ([`crate::inproc`]).
    InProcess,
    /// mTLS: a peer whose verified client certificate carries one of these SANs.
    Gateway { sans: Vec<String> },
}

/// Attaches the principal to an outgoing backend call.
pub fn attach(metadata: &mut MetadataMap, principal: &Principal) {
    metadata.insert_bin(
        METADATA_KEY,
        BinaryMetadataValue::from_bytes(&principal.encode_to_vec()),
    );
}

/// `Ok` only when the peer is one this backend trusts to be the gateway. Every internal call
/// passes here, those that carry no principal (the gateway on its own behalf) included.
pub fn require_gateway_peer<T>(request: &Request<T>, trust: &PeerTrust) -> Result<()> {
    let peer = crate::tls::PeerInfo::of(request);
    let trusted = match trust {
        PeerTrust::Loopback => peer
            .remote_addr
            .or_else(|| request.remote_addr())
            .is_some_and(|a| a.ip().is_loopback()),
        PeerTrust::InProcess => peer.in_process,
        PeerTrust::Gateway { sans } => peer.client_sans.iter().any(|s| sans.contains(s)),
    };
    if trusted {
        Ok(())
    } else {
        Err(Error::Unauthenticated(
            "only the gateway may call this service".into(),
        ))
    }
}

/// Defence in depth behind the gateway's decision, for a call that returns personal data: the
/// forwarded principal must hold one of `any_of`, or the call is `PERMISSION_DENIED`.
pub fn require_activity(principal: &Principal, any_of: &[Activity]) -> Result<()> {
    let holds = principal
        .activities
        .iter()
        .any(|a| any_of.iter().any(|w| w.code() == a));
    if holds {
        Ok(())
    } else {
        Err(Error::denied(DenyReason::MissingActivity))
    }
}

/// The forwarded principal of an incoming call, if its peer may forward one.
pub fn from_request<T>(request: &Request<T>, trust: &PeerTrust) -> Result<Principal> {
    require_gateway_peer(request, trust)?;
    let value = request
        .metadata()
        .get_bin(METADATA_KEY)
        .ok_or_else(|| Error::Unauthenticated("no forwarded principal".into()))?;
    let bytes = value
        .to_bytes()
        .map_err(|_| Error::Unauthenticated("malformed forwarded principal".into()))?;
    let principal = Principal::decode(bytes.as_ref())
        .map_err(|_| Error::Unauthenticated("malformed forwarded principal".into()))?;
    if principal.user_id.is_empty() == principal.system_san.is_empty() {
        return Err(Error::Unauthenticated(
            "a principal is either a user or a system".into(),
        ));
    }
    Ok(principal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn user() -> Principal {
        Principal {
            user_id: "u1".into(),
            ods_code: "RQX".into(),
            role_code: "R8000".into(),
            activities: vec!["B0107".into()],
            ..Default::default()
        }
    }

    #[test]
    fn round_trips_through_metadata() {
        let mut request = Request::new(());
        attach(request.metadata_mut(), &user());
        let md = request.metadata().clone();
        // A request built by hand has no peer address: not trusted.
        let untrusted = from_request(&request, &PeerTrust::Loopback);
        assert!(untrusted.is_err());
        let bytes = md.get_bin(METADATA_KEY).unwrap().to_bytes().unwrap();
        assert_eq!(Principal::decode(bytes.as_ref()).unwrap(), user());
    }

    #[test]
    fn loopback_trust_needs_a_loopback_peer() {
        let _ = SocketAddr::from(([127, 0, 0, 1], 1));
        let request = Request::new(());
        assert!(matches!(
            from_request(&request, &PeerTrust::Loopback),
            Err(Error::Unauthenticated(_))
        ));
    }
}
