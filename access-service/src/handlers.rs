//! Where each `cpis.access.v1.AccessControl` call enters: readiness, then who may call
//! (the gateway, with the principal it forwards where the call needs one), then the request
//! checked by the same validator the gateway used (`platform::requests`), then the module that
//! does the work. Each trait method only turns its inherent method's `platform::Result` into
//! the answer; errors become statuses in one place, `platform::error`.

use crate::audit::checkpoint::{CheckpointError, CheckpointSigner};
use crate::audit::{list, verify};
use crate::decide::AccessDecisions;
use crate::entities::audit_head;
use crate::error::AccessError;
use crate::storage::obligations::RetryPolicy;
use crate::storage::{now_micros, obligations, organisations, systems};
use cpis_proto::access::access_control_server::AccessControl;
use cpis_proto::access::{
    ClaimObligationsRequest, ClaimObligationsResponse, CompleteObligationRequest, DecideRequest,
    Decision, Principal, ReleaseObligationRequest, ReleaseObligationResponse, ResolveSystemRequest,
    SystemIdentity,
};
use cpis_proto::gateway::{
    Checkpoint, ListAuditEventsRequest, ListAuditEventsResponse, ListFailedObligationsRequest,
    ListFailedObligationsResponse, ListOrganisationsRequest, ListOrganisationsResponse,
    ListSystemsRequest, ListSystemsResponse, Organisation, RegisterSystemRequest,
    RemoveSystemRequest, RetryObligationRequest, System, UpsertOrganisationRequest,
    VerifyAuditLogRequest, VerifyAuditLogResponse,
};
use platform::domain::{Activity, DenyReason};
use platform::error::Violations;
use platform::principal::{from_request, require_gateway_peer};
use platform::requests;
use platform::runtime::BackendContext;
use platform::{Error, Result};
use sea_orm::EntityTrait;
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct Handlers {
    pub context: BackendContext,
    pub decisions: AccessDecisions,
    pub signer: CheckpointSigner,
    pub retries: RetryPolicy,
}

type Answer<T> = std::result::Result<Response<T>, Status>;

/// Defence in depth behind the gateway's Decide: the forwarded principal must hold the
/// activity. A system never holds CPIS_ADMIN or CPIS_AUDIT.
fn require_activity(principal: &Principal, activity: Activity) -> Result<()> {
    let holds = principal.system_san.is_empty()
        && principal.activities.iter().any(|a| a == activity.code());
    if holds {
        Ok(())
    } else {
        Err(Error::denied(DenyReason::MissingActivity))
    }
}

impl Handlers {
    /// Ready, and called by the gateway on behalf of a principal holding `activity`.
    fn on_behalf_of<T>(&self, request: &Request<T>, activity: Activity) -> Result<()> {
        self.context.readiness.check()?;
        let principal = from_request(request, &self.context.peer_trust)?;
        require_activity(&principal, activity)
    }

    /// Ready, and called by the gateway acting on its own behalf.
    fn called_by_gateway<T>(&self, request: &Request<T>) -> Result<()> {
        self.context.readiness.check()?;
        require_gateway_peer(request, &self.context.peer_trust)
    }

    async fn decision(&self, request: Request<DecideRequest>) -> Result<Decision> {
        self.called_by_gateway(&request)?;
        self.decisions.decide(request.into_inner()).await
    }

    async fn system_identity(
        &self,
        request: Request<ResolveSystemRequest>,
    ) -> Result<SystemIdentity> {
        self.called_by_gateway(&request)?;
        systems::resolve(&self.context.db, &request.get_ref().san).await
    }

    async fn upsert(&self, request: Request<UpsertOrganisationRequest>) -> Result<Organisation> {
        self.on_behalf_of(&request, Activity::Admin)?;
        let organisation = requests::upsert_organisation(request.get_ref())?;
        organisations::upsert(&self.context.db, &organisation, request.get_ref().onboarded).await
    }

    async fn organisations(
        &self,
        request: Request<ListOrganisationsRequest>,
    ) -> Result<ListOrganisationsResponse> {
        self.on_behalf_of(&request, Activity::Admin)?;
        let page = requests::list_organisations(request.get_ref())?;
        organisations::list(&self.context.db, &page).await
    }

    async fn register(&self, request: Request<RegisterSystemRequest>) -> Result<System> {
        self.on_behalf_of(&request, Activity::Admin)?;
        let system = requests::register_system(request.get_ref())?;
        systems::register(&self.context.db, &system).await
    }

    async fn systems(&self, request: Request<ListSystemsRequest>) -> Result<ListSystemsResponse> {
        self.on_behalf_of(&request, Activity::Admin)?;
        let page = requests::list_systems(request.get_ref())?;
        systems::list(&self.context.db, &page).await
    }

    async fn remove(&self, request: Request<RemoveSystemRequest>) -> Result<()> {
        self.on_behalf_of(&request, Activity::Admin)?;
        let san = requests::remove_system(request.get_ref())?;
        systems::remove(&self.context.db, &san).await
    }

    async fn audit_events(
        &self,
        request: Request<ListAuditEventsRequest>,
    ) -> Result<ListAuditEventsResponse> {
        self.on_behalf_of(&request, Activity::Audit)?;
        let page = requests::list_audit_events(request.get_ref())?;
        list::list(&self.context.db, &page).await
    }

    async fn checkpoint(&self, request: Request<()>) -> Result<Checkpoint> {
        self.on_behalf_of(&request, Activity::Audit)?;
        let head = audit_head::Entity::find_by_id(audit_head::HEAD_ID)
            .one(&self.context.db)
            .await?
            .ok_or_else(|| AccessError::Corrupt("the audit head row is missing".into()))?;
        let sequence = head.sequence as u64;
        Ok(Checkpoint {
            sequence,
            signature: self.signer.sign(sequence, &head.hash),
            hash: head.hash,
            key_id: self.signer.key_id().to_owned(),
        })
    }

    /// The checkpoint's shape is checked by `platform::requests` (as the gateway does); its
    /// signature only here, where the key is.
    async fn verify(
        &self,
        request: Request<VerifyAuditLogRequest>,
    ) -> Result<VerifyAuditLogResponse> {
        self.on_behalf_of(&request, Activity::Audit)?;
        requests::verify_audit_log(request.get_ref())?;
        let trusted = match request.into_inner().checkpoint {
            None => None,
            Some(cp) => {
                let mut v = Violations::new();
                match self
                    .signer
                    .verify(&cp.key_id, cp.sequence, &cp.hash, &cp.signature)
                {
                    Ok(()) => {}
                    Err(e @ CheckpointError::UnknownKey) => {
                        v.add("checkpoint.key_id", e.to_string())
                    }
                    Err(e @ CheckpointError::BadSignature) => {
                        v.add("checkpoint.signature", e.to_string())
                    }
                }
                v.finish()?;
                Some(verify::TrustedHead {
                    sequence: cp.sequence,
                    hash: cp.hash,
                })
            }
        };
        let outcome = verify::verify(&self.context.db, trusted).await?;
        Ok(VerifyAuditLogResponse {
            ok: outcome.ok,
            records_checked: outcome.records_checked,
            first_bad_sequence: outcome.first_bad_sequence,
            problem: outcome.problem,
        })
    }

    async fn claim(
        &self,
        request: Request<ClaimObligationsRequest>,
    ) -> Result<ClaimObligationsResponse> {
        self.called_by_gateway(&request)?;
        obligations::claim(&self.context.db, request.into_inner()).await
    }

    async fn complete(&self, request: Request<CompleteObligationRequest>) -> Result<()> {
        self.called_by_gateway(&request)?;
        obligations::complete(&self.context.db, request.into_inner()).await
    }

    async fn release(
        &self,
        request: Request<ReleaseObligationRequest>,
    ) -> Result<ReleaseObligationResponse> {
        self.called_by_gateway(&request)?;
        obligations::release(
            &self.context.db,
            &self.retries,
            request.into_inner(),
            now_micros(),
        )
        .await
    }

    async fn failed_obligations(
        &self,
        request: Request<ListFailedObligationsRequest>,
    ) -> Result<ListFailedObligationsResponse> {
        self.on_behalf_of(&request, Activity::Admin)?;
        let page = requests::list_failed_obligations(request.get_ref())?;
        obligations::list_failed(&self.context.db, &page).await
    }

    async fn retry(&self, request: Request<RetryObligationRequest>) -> Result<()> {
        self.on_behalf_of(&request, Activity::Admin)?;
        let lookup_id = requests::retry_obligation(request.get_ref())?;
        obligations::retry(&self.context.db, &lookup_id, now_micros()).await
    }
}

#[tonic::async_trait]
impl AccessControl for Handlers {
    async fn decide(&self, request: Request<DecideRequest>) -> Answer<Decision> {
        Ok(Response::new(self.decision(request).await?))
    }

    async fn resolve_system(
        &self,
        request: Request<ResolveSystemRequest>,
    ) -> Answer<SystemIdentity> {
        Ok(Response::new(self.system_identity(request).await?))
    }

    async fn upsert_organisation(
        &self,
        request: Request<UpsertOrganisationRequest>,
    ) -> Answer<Organisation> {
        Ok(Response::new(self.upsert(request).await?))
    }

    async fn list_organisations(
        &self,
        request: Request<ListOrganisationsRequest>,
    ) -> Answer<ListOrganisationsResponse> {
        Ok(Response::new(self.organisations(request).await?))
    }

    async fn register_system(&self, request: Request<RegisterSystemRequest>) -> Answer<System> {
        Ok(Response::new(self.register(request).await?))
    }

    async fn list_systems(
        &self,
        request: Request<ListSystemsRequest>,
    ) -> Answer<ListSystemsResponse> {
        Ok(Response::new(self.systems(request).await?))
    }

    async fn remove_system(&self, request: Request<RemoveSystemRequest>) -> Answer<()> {
        Ok(Response::new(self.remove(request).await?))
    }

    async fn list_audit_events(
        &self,
        request: Request<ListAuditEventsRequest>,
    ) -> Answer<ListAuditEventsResponse> {
        Ok(Response::new(self.audit_events(request).await?))
    }

    async fn get_checkpoint(&self, request: Request<()>) -> Answer<Checkpoint> {
        Ok(Response::new(self.checkpoint(request).await?))
    }

    async fn verify_audit_log(
        &self,
        request: Request<VerifyAuditLogRequest>,
    ) -> Answer<VerifyAuditLogResponse> {
        Ok(Response::new(self.verify(request).await?))
    }

    async fn claim_obligations(
        &self,
        request: Request<ClaimObligationsRequest>,
    ) -> Answer<ClaimObligationsResponse> {
        Ok(Response::new(self.claim(request).await?))
    }

    async fn complete_obligation(&self, request: Request<CompleteObligationRequest>) -> Answer<()> {
        Ok(Response::new(self.complete(request).await?))
    }

    async fn release_obligation(
        &self,
        request: Request<ReleaseObligationRequest>,
    ) -> Answer<ReleaseObligationResponse> {
        Ok(Response::new(self.release(request).await?))
    }

    async fn list_failed_obligations(
        &self,
        request: Request<ListFailedObligationsRequest>,
    ) -> Answer<ListFailedObligationsResponse> {
        Ok(Response::new(self.failed_obligations(request).await?))
    }

    async fn retry_obligation(&self, request: Request<RetryObligationRequest>) -> Answer<()> {
        Ok(Response::new(self.retry(request).await?))
    }
}
