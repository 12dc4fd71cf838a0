//! Where each `cpis.access.v1.AccessControl` call enters: readiness, then who may call
//! (the gateway, with the principal it forwards where the call needs one), then the module
//! that does the work. Errors become statuses in one place, `platform::error`.

use crate::audit::checkpoint::{CheckpointError, CheckpointSigner};
use crate::audit::{list, verify};
use crate::decide::AccessDecisions;
use crate::entities::audit_head;
use crate::error::AccessError;
use crate::storage::{obligations, organisations, systems};
use cpis_proto::access::access_control_server::AccessControl;
use cpis_proto::access::{
    ClaimObligationsRequest, ClaimObligationsResponse, CompleteObligationRequest, DecideRequest,
    Decision, Principal, ResolveSystemRequest, SystemIdentity,
};
use cpis_proto::gateway::{
    Checkpoint, ListAuditEventsRequest, ListAuditEventsResponse, ListOrganisationsRequest,
    ListOrganisationsResponse, ListSystemsRequest, ListSystemsResponse, Organisation,
    RegisterSystemRequest, RemoveSystemRequest, System, UpsertOrganisationRequest,
    VerifyAuditLogRequest, VerifyAuditLogResponse,
};
use platform::domain::{Activity, DenyReason};
use platform::error::Violations;
use platform::principal::{from_request, require_gateway_peer};
use platform::runtime::BackendContext;
use platform::{Error, Result};
use sea_orm::EntityTrait;
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct Handlers {
    pub context: BackendContext,
    pub decisions: AccessDecisions,
    pub signer: CheckpointSigner,
}

type Answer<T> = std::result::Result<Response<T>, Status>;

fn answer<T>(result: Result<T>) -> Answer<T> {
    result.map(Response::new).map_err(Status::from)
}

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

    async fn checkpoint(&self) -> Result<Checkpoint> {
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

    async fn verify(&self, request: VerifyAuditLogRequest) -> Result<VerifyAuditLogResponse> {
        let trusted = match request.checkpoint {
            None => None,
            Some(cp) => {
                let mut v = Violations::new();
                if cp.hash.len() != 32 {
                    v.add("checkpoint.hash", "must be 32 bytes");
                } else {
                    match self
                        .signer
                        .verify(&cp.key_id, cp.sequence, &cp.hash, &cp.signature)
                    {
                        Ok(()) => {}
                        Err(CheckpointError::UnknownKey) => {
                            v.add("checkpoint.key_id", CheckpointError::UnknownKey.to_string())
                        }
                        Err(CheckpointError::BadSignature) => v.add(
                            "checkpoint.signature",
                            CheckpointError::BadSignature.to_string(),
                        ),
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
}

#[tonic::async_trait]
impl AccessControl for Handlers {
    async fn decide(&self, request: Request<DecideRequest>) -> Answer<Decision> {
        if let Err(e) = self.called_by_gateway(&request) {
            return answer(Err(e));
        }
        answer(self.decisions.decide(request.into_inner()).await)
    }

    async fn resolve_system(
        &self,
        request: Request<ResolveSystemRequest>,
    ) -> Answer<SystemIdentity> {
        if let Err(e) = self.called_by_gateway(&request) {
            return answer(Err(e));
        }
        answer(systems::resolve(&self.context.db, &request.into_inner().san).await)
    }

    async fn upsert_organisation(
        &self,
        request: Request<UpsertOrganisationRequest>,
    ) -> Answer<Organisation> {
        if let Err(e) = self.on_behalf_of(&request, Activity::Admin) {
            return answer(Err(e));
        }
        answer(organisations::upsert(&self.context.db, request.into_inner()).await)
    }

    async fn list_organisations(
        &self,
        request: Request<ListOrganisationsRequest>,
    ) -> Answer<ListOrganisationsResponse> {
        if let Err(e) = self.on_behalf_of(&request, Activity::Admin) {
            return answer(Err(e));
        }
        answer(organisations::list(&self.context.db, request.into_inner()).await)
    }

    async fn register_system(&self, request: Request<RegisterSystemRequest>) -> Answer<System> {
        if let Err(e) = self.on_behalf_of(&request, Activity::Admin) {
            return answer(Err(e));
        }
        answer(systems::register(&self.context.db, request.into_inner()).await)
    }

    async fn list_systems(
        &self,
        request: Request<ListSystemsRequest>,
    ) -> Answer<ListSystemsResponse> {
        if let Err(e) = self.on_behalf_of(&request, Activity::Admin) {
            return answer(Err(e));
        }
        answer(systems::list(&self.context.db, request.into_inner()).await)
    }

    async fn remove_system(&self, request: Request<RemoveSystemRequest>) -> Answer<()> {
        if let Err(e) = self.on_behalf_of(&request, Activity::Admin) {
            return answer(Err(e));
        }
        answer(systems::remove(&self.context.db, &request.into_inner().san).await)
    }

    async fn list_audit_events(
        &self,
        request: Request<ListAuditEventsRequest>,
    ) -> Answer<ListAuditEventsResponse> {
        if let Err(e) = self.on_behalf_of(&request, Activity::Audit) {
            return answer(Err(e));
        }
        answer(list::list(&self.context.db, request.into_inner()).await)
    }

    async fn get_checkpoint(&self, request: Request<()>) -> Answer<Checkpoint> {
        if let Err(e) = self.on_behalf_of(&request, Activity::Audit) {
            return answer(Err(e));
        }
        answer(self.checkpoint().await)
    }

    async fn verify_audit_log(
        &self,
        request: Request<VerifyAuditLogRequest>,
    ) -> Answer<VerifyAuditLogResponse> {
        if let Err(e) = self.on_behalf_of(&request, Activity::Audit) {
            return answer(Err(e));
        }
        answer(self.verify(request.into_inner()).await)
    }

    async fn claim_obligations(
        &self,
        request: Request<ClaimObligationsRequest>,
    ) -> Answer<ClaimObligationsResponse> {
        if let Err(e) = self.called_by_gateway(&request) {
            return answer(Err(e));
        }
        answer(obligations::claim(&self.context.db, request.into_inner()).await)
    }

    async fn complete_obligation(&self, request: Request<CompleteObligationRequest>) -> Answer<()> {
        if let Err(e) = self.called_by_gateway(&request) {
            return answer(Err(e));
        }
        answer(obligations::complete(&self.context.db, request.into_inner()).await)
    }
}
