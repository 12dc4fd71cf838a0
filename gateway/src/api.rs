//! The four public services of `cpis.gateway.v1`. Each handler reads top to bottom in API.md's
//! order: authenticate, validate, decide (audited), then call the backend that owns the data
//! with the verified principal forwarded.

use crate::core::{Core, Intent};
use crate::deadline::Deadline;
use cpis_proto::gateway as pb;
use cpis_proto::gateway::administration_server::Administration;
use cpis_proto::gateway::audit_server::Audit;
use cpis_proto::gateway::child_protection_server::ChildProtection;
use cpis_proto::gateway::local_authority_server::LocalAuthority;
use platform::domain::NhsNumber;
use platform::error::Error;
use platform::requests;
use std::sync::Arc;
use tonic::{Request, Response, Status};

type Answer<T> = Result<Response<T>, Status>;
type BoxStream<T> =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;

#[derive(Clone)]
pub struct PublicApi {
    pub core: Arc<Core>,
}

/// Authenticate, validate with `check` (platform's validator for the message, the same one the
/// owning backend calls), decide `intent`: the common head of every forwarded call.
macro_rules! authorized {
    ($self:ident, $request:ident, $check:expr, $intent:expr) => {{
        let (metadata, extensions, message) = $request.into_parts();
        let deadline = Deadline::from_metadata(&metadata);
        let principal = $self.core.authenticate(&metadata, &extensions).await?;
        let about = $check(&message)?;
        let intent: Intent = $intent(about);
        let allowed = $self
            .core
            .decide(principal, intent, &metadata, &deadline)
            .await?;
        (message, allowed.principal, deadline)
    }};
}

/// A forwarded call whole: authorize as above, then call `$method` on the backend that owns
/// the data (`flag` or `access`), with the verified principal and the caller's deadline.
macro_rules! forward {
    ($self:ident, $request:ident, $check:expr, $intent:expr, $backend:ident . $method:ident) => {{
        let (message, principal, deadline) = authorized!($self, $request, $check, $intent);
        let answer = $self
            .core
            .backends
            .$backend
            .call(
                message,
                Some(&principal),
                &deadline,
                |mut client, request| async move { client.$method(request).await },
            )
            .await?;
        Ok(Response::new(answer))
    }};
}

#[tonic::async_trait]
impl ChildProtection for PublicApi {
    async fn lookup_child(
        &self,
        request: Request<pb::LookupChildRequest>,
    ) -> Answer<pb::LookupChildResponse> {
        let (metadata, extensions, message) = request.into_parts();
        let answer = self
            .core
            .lookup_child(&metadata, &extensions, message)
            .await?;
        Ok(Response::new(answer))
    }
}

fn about(action: &'static str) -> impl Fn(Option<NhsNumber>) -> Intent {
    move |n| Intent::new(action).about(n)
}

/// A check for a call whose decision names no child: the validator's value is not needed.
fn only<T, V>(validator: fn(&T) -> platform::Result<V>) -> impl Fn(&T) -> platform::Result<()> {
    move |r| validator(r).map(drop)
}

fn plain(action: &'static str) -> impl Fn(()) -> Intent {
    move |()| Intent::new(action)
}

#[tonic::async_trait]
impl LocalAuthority for PublicApi {
    async fn upload_flags(
        &self,
        request: Request<tonic::Streaming<pb::UploadFlagsRequest>>,
    ) -> Answer<pb::UploadFlagsResponse> {
        Ok(Response::new(self.core.upload_flags(request).await?))
    }

    async fn end_flag(&self, request: Request<pb::EndFlagRequest>) -> Answer<pb::Flag> {
        forward!(
            self,
            request,
            |r: &_| requests::end_flag(r).map(|e| Some(e.key.nhs_number)),
            about("EndFlag"),
            flag.end_flag
        )
    }

    async fn delete_flag(&self, request: Request<pb::DeleteFlagRequest>) -> Answer<()> {
        forward!(
            self,
            request,
            |r: &_| requests::delete_flag(r).map(|k| Some(k.nhs_number)),
            about("DeleteFlag"),
            flag.delete_flag
        )
    }

    async fn list_flags(
        &self,
        request: Request<pb::ListFlagsRequest>,
    ) -> Answer<pb::ListFlagsResponse> {
        forward!(
            self,
            request,
            only(requests::list_flags),
            plain("ListFlags"),
            flag.list_flags
        )
    }

    async fn list_notifications(
        &self,
        request: Request<pb::ListNotificationsRequest>,
    ) -> Answer<pb::ListNotificationsResponse> {
        forward!(
            self,
            request,
            only(requests::list_notifications),
            plain("ListNotifications"),
            flag.list_notifications
        )
    }

    async fn watch_notifications(
        &self,
        request: Request<pb::WatchNotificationsRequest>,
    ) -> Answer<BoxStream<pb::Notification>> {
        Ok(Response::new(self.core.watch_notifications(request).await?))
    }

    async fn acknowledge_notifications(
        &self,
        request: Request<pb::AcknowledgeNotificationsRequest>,
    ) -> Answer<pb::AcknowledgeNotificationsResponse> {
        forward!(
            self,
            request,
            |_: &_| Ok::<_, Error>(()),
            plain("AcknowledgeNotifications"),
            flag.acknowledge_notifications
        )
    }
}

#[tonic::async_trait]
impl Audit for PublicApi {
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Answer<pb::ListAuditEventsResponse> {
        forward!(
            self,
            request,
            |r: &_| requests::list_audit_events(r).map(|p| p.filters.nhs_number),
            about("ListAuditEvents"),
            access.list_audit_events
        )
    }

    async fn get_checkpoint(&self, request: Request<()>) -> Answer<pb::Checkpoint> {
        forward!(
            self,
            request,
            |_: &_| Ok::<_, Error>(()),
            plain("GetCheckpoint"),
            access.get_checkpoint
        )
    }

    async fn verify_audit_log(
        &self,
        request: Request<pb::VerifyAuditLogRequest>,
    ) -> Answer<pb::VerifyAuditLogResponse> {
        forward!(
            self,
            request,
            requests::verify_audit_log,
            plain("VerifyAuditLog"),
            access.verify_audit_log
        )
    }
}

#[tonic::async_trait]
impl Administration for PublicApi {
    async fn upsert_organisation(
        &self,
        request: Request<pb::UpsertOrganisationRequest>,
    ) -> Answer<pb::Organisation> {
        forward!(
            self,
            request,
            only(requests::upsert_organisation),
            plain("UpsertOrganisation"),
            access.upsert_organisation
        )
    }

    async fn list_organisations(
        &self,
        request: Request<pb::ListOrganisationsRequest>,
    ) -> Answer<pb::ListOrganisationsResponse> {
        forward!(
            self,
            request,
            only(requests::list_organisations),
            plain("ListOrganisations"),
            access.list_organisations
        )
    }

    async fn register_system(
        &self,
        request: Request<pb::RegisterSystemRequest>,
    ) -> Answer<pb::System> {
        forward!(
            self,
            request,
            only(requests::register_system),
            plain("RegisterSystem"),
            access.register_system
        )
    }

    async fn list_systems(
        &self,
        request: Request<pb::ListSystemsRequest>,
    ) -> Answer<pb::ListSystemsResponse> {
        forward!(
            self,
            request,
            only(requests::list_systems),
            plain("ListSystems"),
            access.list_systems
        )
    }

    async fn remove_system(&self, request: Request<pb::RemoveSystemRequest>) -> Answer<()> {
        forward!(
            self,
            request,
            only(requests::remove_system),
            plain("RemoveSystem"),
            access.remove_system
        )
    }

    async fn set_restriction(
        &self,
        request: Request<pb::SetRestrictionRequest>,
    ) -> Answer<pb::Restriction> {
        forward!(
            self,
            request,
            |r: &_| requests::set_restriction(r).map(|(n, _)| Some(n)),
            about("SetRestriction"),
            flag.set_restriction
        )
    }

    async fn clear_restriction(&self, request: Request<pb::ClearRestrictionRequest>) -> Answer<()> {
        forward!(
            self,
            request,
            |r: &_| requests::clear_restriction(r).map(Some),
            about("ClearRestriction"),
            flag.clear_restriction
        )
    }

    async fn mark_nhs_number_inactive(
        &self,
        request: Request<pb::MarkNhsNumberInactiveRequest>,
    ) -> Answer<pb::MarkNhsNumberInactiveResponse> {
        forward!(
            self,
            request,
            |r: &_| requests::mark_nhs_number_inactive(r).map(|(n, _)| Some(n)),
            about("MarkNhsNumberInactive"),
            flag.mark_nhs_number_inactive
        )
    }

    async fn list_failed_obligations(
        &self,
        request: Request<pb::ListFailedObligationsRequest>,
    ) -> Answer<pb::ListFailedObligationsResponse> {
        forward!(
            self,
            request,
            only(requests::list_failed_obligations),
            plain("ListFailedObligations"),
            access.list_failed_obligations
        )
    }

    async fn retry_obligation(&self, request: Request<pb::RetryObligationRequest>) -> Answer<()> {
        forward!(
            self,
            request,
            only(requests::retry_obligation),
            plain("RetryObligation"),
            access.retry_obligation
        )
    }
}
