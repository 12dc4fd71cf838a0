//! The four public services of `cpis.gateway.v1`. Each handler reads top to bottom in API.md's
//! order: authenticate, validate, decide (audited), then call the backend that owns the data
//! with the verified principal forwarded.

use crate::core::{Core, Intent};
use crate::deadline::Deadline;
use crate::validate;
use cpis_proto::gateway as pb;
use cpis_proto::gateway::administration_server::Administration;
use cpis_proto::gateway::audit_server::Audit;
use cpis_proto::gateway::child_protection_server::ChildProtection;
use cpis_proto::gateway::local_authority_server::LocalAuthority;
use platform::error::Error;
use std::sync::Arc;
use tonic::{Request, Response, Status};

type Answer<T> = Result<Response<T>, Status>;
type BoxStream<T> =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;

#[derive(Clone)]
pub struct PublicApi {
    pub core: Arc<Core>,
}

fn answer<T>(result: platform::Result<T>) -> Answer<T> {
    result.map(Response::new).map_err(Status::from)
}

/// Authenticate, validate with `check`, decide `intent`: the common head of every forwarded call.
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

#[tonic::async_trait]
impl ChildProtection for PublicApi {
    async fn lookup_child(
        &self,
        request: Request<pb::LookupChildRequest>,
    ) -> Answer<pb::LookupChildResponse> {
        let (metadata, extensions, message) = request.into_parts();
        answer(
            self.core
                .lookup_child(&metadata, &extensions, message)
                .await,
        )
    }
}

fn about(action: &'static str) -> impl Fn(Option<platform::domain::NhsNumber>) -> Intent {
    move |n| Intent::new(action).about(n)
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
        answer(self.core.upload_flags(request).await)
    }

    async fn end_flag(&self, request: Request<pb::EndFlagRequest>) -> Answer<pb::Flag> {
        let (m, p, d) = authorized!(self, request, validate::end_flag, about("EndFlag"));
        answer(
            self.core
                .call(
                    "flag-service",
                    self.core.backends.flag(),
                    m,
                    Some(&p),
                    &d,
                    |mut c, r| async move { c.end_flag(r).await },
                )
                .await,
        )
    }

    async fn delete_flag(&self, request: Request<pb::DeleteFlagRequest>) -> Answer<()> {
        let (m, p, d) = authorized!(self, request, validate::delete_flag, about("DeleteFlag"));
        answer(
            self.core
                .call(
                    "flag-service",
                    self.core.backends.flag(),
                    m,
                    Some(&p),
                    &d,
                    |mut c, r| async move { c.delete_flag(r).await },
                )
                .await,
        )
    }

    async fn list_flags(
        &self,
        request: Request<pb::ListFlagsRequest>,
    ) -> Answer<pb::ListFlagsResponse> {
        let (m, p, d) = authorized!(self, request, validate::list_flags, plain("ListFlags"));
        answer(
            self.core
                .call(
                    "flag-service",
                    self.core.backends.flag(),
                    m,
                    Some(&p),
                    &d,
                    |mut c, r| async move { c.list_flags(r).await },
                )
                .await,
        )
    }

    async fn list_notifications(
        &self,
        request: Request<pb::ListNotificationsRequest>,
    ) -> Answer<pb::ListNotificationsResponse> {
        let (m, p, d) = authorized!(
            self,
            request,
            validate::list_notifications,
            plain("ListNotifications")
        );
        answer(
            self.core
                .call(
                    "flag-service",
                    self.core.backends.flag(),
                    m,
                    Some(&p),
                    &d,
                    |mut c, r| async move { c.list_notifications(r).await },
                )
                .await,
        )
    }

    async fn watch_notifications(
        &self,
        request: Request<pb::WatchNotificationsRequest>,
    ) -> Answer<BoxStream<pb::Notification>> {
        answer(self.core.watch_notifications(request).await)
    }

    async fn acknowledge_notifications(
        &self,
        request: Request<pb::AcknowledgeNotificationsRequest>,
    ) -> Answer<pb::AcknowledgeNotificationsResponse> {
        let (m, p, d) = authorized!(
            self,
            request,
            |_: &_| Ok::<_, Error>(()),
            plain("AcknowledgeNotifications")
        );
        answer(
            self.core
                .call(
                    "flag-service",
                    self.core.backends.flag(),
                    m,
                    Some(&p),
                    &d,
                    |mut c, r| async move { c.acknowledge_notifications(r).await },
                )
                .await,
        )
    }
}

#[tonic::async_trait]
impl Audit for PublicApi {
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Answer<pb::ListAuditEventsResponse> {
        let (m, p, d) = authorized!(
            self,
            request,
            validate::list_audit_events,
            about("ListAuditEvents")
        );
        answer(
            self.core
                .call(
                    "access-service",
                    self.core.backends.access(),
                    m,
                    Some(&p),
                    &d,
                    |mut c, r| async move { c.list_audit_events(r).await },
                )
                .await,
        )
    }

    async fn get_checkpoint(&self, request: Request<()>) -> Answer<pb::Checkpoint> {
        let (m, p, d) = authorized!(
            self,
            request,
            |_: &_| Ok::<_, Error>(()),
            plain("GetCheckpoint")
        );
        answer(
            self.core
                .call(
                    "access-service",
                    self.core.backends.access(),
                    m,
                    Some(&p),
                    &d,
                    |mut c, r| async move { c.get_checkpoint(r).await },
                )
                .await,
        )
    }

    async fn verify_audit_log(
        &self,
        request: Request<pb::VerifyAuditLogRequest>,
    ) -> Answer<pb::VerifyAuditLogResponse> {
        let (m, p, d) = authorized!(
            self,
            request,
            validate::verify_audit_log,
            plain("VerifyAuditLog")
        );
        answer(
            self.core
                .call(
                    "access-service",
                    self.core.backends.access(),
                    m,
                    Some(&p),
                    &d,
                    |mut c, r| async move { c.verify_audit_log(r).await },
                )
                .await,
        )
    }
}

#[tonic::async_trait]
impl Administration for PublicApi {
    async fn upsert_organisation(
        &self,
        request: Request<pb::UpsertOrganisationRequest>,
    ) -> Answer<pb::Organisation> {
        let (m, p, d) = authorized!(
            self,
            request,
            validate::upsert_organisation,
            plain("UpsertOrganisation")
        );
        answer(
            self.core
                .call(
                    "access-service",
                    self.core.backends.access(),
                    m,
                    Some(&p),
                    &d,
                    |mut c, r| async move { c.upsert_organisation(r).await },
                )
                .await,
        )
    }

    async fn list_organisations(
        &self,
        request: Request<pb::ListOrganisationsRequest>,
    ) -> Answer<pb::ListOrganisationsResponse> {
        let (m, p, d) = authorized!(
            self,
            request,
            |r: &pb::ListOrganisationsRequest| validate::list_page(r.page_size, &r.page_token),
            plain("ListOrganisations")
        );
        answer(
            self.core
                .call(
                    "access-service",
                    self.core.backends.access(),
                    m,
                    Some(&p),
                    &d,
                    |mut c, r| async move { c.list_organisations(r).await },
                )
                .await,
        )
    }

    async fn register_system(
        &self,
        request: Request<pb::RegisterSystemRequest>,
    ) -> Answer<pb::System> {
        let (m, p, d) = authorized!(
            self,
            request,
            validate::register_system,
            plain("RegisterSystem")
        );
        answer(
            self.core
                .call(
                    "access-service",
                    self.core.backends.access(),
                    m,
                    Some(&p),
                    &d,
                    |mut c, r| async move { c.register_system(r).await },
                )
                .await,
        )
    }

    async fn list_systems(
        &self,
        request: Request<pb::ListSystemsRequest>,
    ) -> Answer<pb::ListSystemsResponse> {
        let (m, p, d) = authorized!(
            self,
            request,
            |r: &pb::ListSystemsRequest| validate::list_page(r.page_size, &r.page_token),
            plain("ListSystems")
        );
        answer(
            self.core
                .call(
                    "access-service",
                    self.core.backends.access(),
                    m,
                    Some(&p),
                    &d,
                    |mut c, r| async move { c.list_systems(r).await },
                )
                .await,
        )
    }

    async fn remove_system(&self, request: Request<pb::RemoveSystemRequest>) -> Answer<()> {
        let (m, p, d) = authorized!(
            self,
            request,
            validate::remove_system,
            plain("RemoveSystem")
        );
        answer(
            self.core
                .call(
                    "access-service",
                    self.core.backends.access(),
                    m,
                    Some(&p),
                    &d,
                    |mut c, r| async move { c.remove_system(r).await },
                )
                .await,
        )
    }

    async fn set_restriction(
        &self,
        request: Request<pb::SetRestrictionRequest>,
    ) -> Answer<pb::Restriction> {
        let (m, p, d) = authorized!(
            self,
            request,
            validate::set_restriction,
            about("SetRestriction")
        );
        answer(
            self.core
                .call(
                    "flag-service",
                    self.core.backends.flag(),
                    m,
                    Some(&p),
                    &d,
                    |mut c, r| async move { c.set_restriction(r).await },
                )
                .await,
        )
    }

    async fn clear_restriction(&self, request: Request<pb::ClearRestrictionRequest>) -> Answer<()> {
        let (m, p, d) = authorized!(
            self,
            request,
            validate::clear_restriction,
            about("ClearRestriction")
        );
        answer(
            self.core
                .call(
                    "flag-service",
                    self.core.backends.flag(),
                    m,
                    Some(&p),
                    &d,
                    |mut c, r| async move { c.clear_restriction(r).await },
                )
                .await,
        )
    }

    async fn mark_nhs_number_inactive(
        &self,
        request: Request<pb::MarkNhsNumberInactiveRequest>,
    ) -> Answer<pb::MarkNhsNumberInactiveResponse> {
        let (m, p, d) = authorized!(
            self,
            request,
            validate::mark_inactive,
            about("MarkNhsNumberInactive")
        );
        answer(
            self.core
                .call(
                    "flag-service",
                    self.core.backends.flag(),
                    m,
                    Some(&p),
                    &d,
                    |mut c, r| async move { c.mark_nhs_number_inactive(r).await },
                )
                .await,
        )
    }
}
