//! Where each FlagRegistry call enters: trust and readiness first, then the request parsed
//! (public messages by `platform::requests`, the gateway's own validators; `GetFlags` by
//! `requests`), then storage, then — for writes — the cache invalidated before the answer.
//! Each trait method only converts what its inherent method returns into the answer.

use crate::cache::FlagCache;
use crate::feed::NotificationFeed;
use crate::flag::{Flag, visible};
use crate::requests;
use crate::storage::{flags, outbox, restrictions, uploads};
use aws_lc_rs::digest;
use chrono::{NaiveDate, Utc};
use cpis_proto::access::Principal;
use cpis_proto::flag::flag_registry_server::FlagRegistry;
use cpis_proto::flag::{FlagSet, GetFlagsRequest, GetFlagsResponse};
use cpis_proto::gateway::{
    AcknowledgeNotificationsRequest, AcknowledgeNotificationsResponse, ClearRestrictionRequest,
    DeleteFlagRequest, EndFlagRequest, Flag as WireFlag, ListFlagsRequest, ListFlagsResponse,
    ListNotificationsRequest, ListNotificationsResponse, MarkNhsNumberInactiveRequest,
    MarkNhsNumberInactiveResponse, Notification, Restriction, SetRestrictionRequest,
    UploadFlagsRequest, UploadFlagsResponse, WatchNotificationsRequest,
};
use platform::domain::{Activity, NhsNumber, OdsCode, england_date, to_timestamp};
use platform::error::{Error, Result};
use platform::principal;
use platform::requests::{EndFlag, NotificationsPage, Start, UploadStream};
use platform::runtime::BackendContext;
use prost::Message;
use sea_orm::DatabaseConnection;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

type Answer<T> = std::result::Result<Response<T>, Status>;

/// The gRPC handlers of the registry.
#[derive(Clone)]
pub struct Handlers {
    pub context: BackendContext,
    pub cache: FlagCache,
    pub feed: NotificationFeed,
}

/// The answer for one number: its flags visible on `today`, in wire form.
fn flag_set<'a>(
    nhs_number: &NhsNumber,
    flags: impl Iterator<Item = &'a Flag>,
    today: NaiveDate,
) -> FlagSet {
    FlagSet {
        nhs_number: nhs_number.as_str().to_owned(),
        flags: flags.map(|f| f.to_proto(today)).collect(),
    }
}

impl Handlers {
    fn db(&self) -> &DatabaseConnection {
        &self.context.db
    }

    /// The forwarded principal (from a trusted peer), once the service can answer.
    fn principal<T>(&self, request: &Request<T>) -> Result<Principal> {
        let principal = principal::from_request(request, &self.context.peer_trust)?;
        self.context.readiness.check()?;
        Ok(principal)
    }

    /// The forwarded principal and the LA it acts for.
    fn local_authority<T>(&self, request: &Request<T>) -> Result<(Principal, OdsCode)> {
        let principal = self.principal(request)?;
        let la = requests::local_authority(&principal)?;
        Ok((principal, la))
    }

    async fn read_flags(&self, request: Request<GetFlagsRequest>) -> Result<GetFlagsResponse> {
        // Personal data: only for a forwarded principal allowed to look a child up (a notifying
        // read, only with the notifying lookup activity), in every mode.
        let principal = self.principal(&request)?;
        let read = requests::flags_read(request.get_ref())?;
        let allowed: &[Activity] = if read.notify.is_some() {
            &[Activity::NotifyingLookup]
        } else {
            &[Activity::NotifyingLookup, Activity::SilentLookup]
        };
        principal::require_activity(&principal, allowed)?;
        let today = england_date(read.as_of);
        if let (Some(access), [number]) = (&read.notify, read.numbers.as_slice()) {
            let (flags, appended) =
                flags::read_and_notify(self.db(), number, read.as_of, access).await?;
            self.feed.announce(&appended.heads);
            return Ok(GetFlagsResponse {
                results: vec![flag_set(number, flags.iter(), today)],
                notifications_stored: appended.stored,
            });
        }
        let answers = self.cache.flags_on(self.db(), &read.numbers).await?;
        Ok(GetFlagsResponse {
            results: read
                .numbers
                .iter()
                .zip(answers)
                .map(|(n, flags)| flag_set(n, visible(&flags, today), today))
                .collect(),
            notifications_stored: 0,
        })
    }

    async fn upload(
        &self,
        request: Request<Streaming<UploadFlagsRequest>>,
    ) -> Result<UploadFlagsResponse> {
        let (principal, la) = self.local_authority(&request)?;
        let attempt = uuid::Uuid::new_v4().to_string();
        uploads::begin(self.db(), &attempt, la.as_str(), Utc::now()).await?;
        let staging = StagingGuard {
            db: Some(self.db().clone()),
            attempt,
        };
        let applied = self
            .stage_and_apply(&principal, &la, &staging.attempt, request.into_inner())
            .await;
        staging.settle(applied.is_ok()).await;
        let (report, touched) = match applied? {
            uploads::Applied::Fresh { report, changed } => (report, changed),
            uploads::Applied::Repeat { report } => {
                let accepted = uploads::accepted_numbers(&report);
                (report, accepted)
            }
        };
        self.cache.invalidate(&touched).await?;
        Ok(report)
    }

    /// Stages the stream as attempt `attempt`, then applies it whole.
    async fn stage_and_apply(
        &self,
        principal: &Principal,
        la: &OdsCode,
        attempt: &str,
        stream: Streaming<UploadFlagsRequest>,
    ) -> Result<uploads::Applied> {
        let (upload_id, fingerprint) = receive(self.db(), stream, attempt).await?;
        // tonic reports a client's cancel of a request stream as the stream's end, and hyper
        // drops a call whose stream was reset only when the call next waits: waiting once
        // before applying lets a cancelled upload be dropped (its staging discarded) rather
        // than the records staged so far applied as if they were the whole upload.
        tokio::task::yield_now().await;
        let upload = uploads::Upload {
            la_ods_code: la.as_str().to_owned(),
            la_name: principal.organisation_name.clone(),
            actor: requests::actor(principal),
            upload_id,
            fingerprint,
            attempt: attempt.to_owned(),
        };
        Ok(uploads::apply(self.db(), &upload, Utc::now()).await?)
    }

    async fn end(&self, request: Request<EndFlagRequest>) -> Result<WireFlag> {
        let (principal, la) = self.local_authority(&request)?;
        let EndFlag { key, end } = platform::requests::end_flag(request.get_ref())?;
        let now = Utc::now();
        let actor = requests::actor(&principal);
        let change = flags::Change {
            la: la.as_str(),
            actor: &actor,
            source: "EndFlag",
            at: now,
        };
        let row = flags::end(self.db(), &change, &key, end).await?;
        self.cache.invalidate(&[key.nhs_number]).await?;
        let flag =
            Flag::from_row(&row).ok_or_else(|| Error::internal("a stored flag does not parse"))?;
        Ok(flag.to_proto(england_date(now)))
    }

    async fn delete(&self, request: Request<DeleteFlagRequest>) -> Result<()> {
        let (principal, la) = self.local_authority(&request)?;
        let key = platform::requests::delete_flag(request.get_ref())?;
        let actor = requests::actor(&principal);
        let change = flags::Change {
            la: la.as_str(),
            actor: &actor,
            source: "DeleteFlag",
            at: Utc::now(),
        };
        let deleted = flags::delete(self.db(), &change, &key).await;
        // A retry after a delete whose invalidation failed answers NOT_FOUND: it must still
        // invalidate, or the flag could be served from the cache after that answer.
        self.cache.invalidate(&[key.nhs_number]).await?;
        Ok(deleted?)
    }

    async fn flags_page(&self, request: Request<ListFlagsRequest>) -> Result<ListFlagsResponse> {
        let (_, la) = self.local_authority(&request)?;
        let page = platform::requests::list_flags(request.get_ref())?;
        let after_id = page.after.unwrap_or(0) as i64;
        let rows = flags::page(self.db(), la.as_str(), after_id, page.limit()).await?;
        let (rows, next_page_token) = page.finish(rows, |row| row.id as u64);
        let today = england_date(Utc::now());
        Ok(ListFlagsResponse {
            flags: rows
                .iter()
                .filter_map(Flag::from_row)
                .map(|f| f.to_proto(today))
                .collect(),
            next_page_token,
        })
    }

    /// The cursor a listing or watch starts after.
    async fn resolve_start(&self, la: &OdsCode, start: Start) -> Result<u64> {
        Ok(match start {
            Start::After(cursor) => cursor,
            Start::Oldest => 0,
            Start::Acknowledged => outbox::head(self.db(), la.as_str()).await?.1,
        })
    }

    async fn notifications_page(
        &self,
        request: Request<ListNotificationsRequest>,
    ) -> Result<ListNotificationsResponse> {
        let (_, la) = self.local_authority(&request)?;
        let NotificationsPage { start, page } =
            platform::requests::list_notifications(request.get_ref())?;
        // A page token resumes after the cursor its page ended on; its binding to
        // after_cursor and from_start was checked with it.
        let after = match page.after {
            Some(cursor) => cursor,
            None => self.resolve_start(&la, start).await?,
        };
        let rows = outbox::after(self.db(), la.as_str(), after, page.limit()).await?;
        let (rows, next_page_token) = page.finish(rows, |n| n.cursor as u64);
        Ok(ListNotificationsResponse {
            notifications: rows.iter().map(outbox::to_proto).collect(),
            next_page_token,
        })
    }

    async fn watch(
        &self,
        request: Request<WatchNotificationsRequest>,
    ) -> Result<ReceiverStream<std::result::Result<Notification, Status>>> {
        let (_, la) = self.local_authority(&request)?;
        let start = platform::requests::watch_notifications(request.get_ref())?;
        let after = self.resolve_start(&la, start).await?;
        Ok(self.feed.watch(
            self.db().clone(),
            la.as_str().to_owned(),
            after,
            self.context.shutdown.clone(),
        ))
    }

    async fn acknowledge(
        &self,
        request: Request<AcknowledgeNotificationsRequest>,
    ) -> Result<AcknowledgeNotificationsResponse> {
        let (_, la) = self.local_authority(&request)?;
        let (acknowledged_cursor, backlog) =
            outbox::acknowledge(self.db(), la.as_str(), request.get_ref().up_to_cursor).await?;
        Ok(AcknowledgeNotificationsResponse {
            acknowledged_cursor,
            backlog,
        })
    }

    async fn restrict(&self, request: Request<SetRestrictionRequest>) -> Result<Restriction> {
        let principal = self.principal(&request)?;
        let (n, reason) = platform::requests::set_restriction(request.get_ref())?;
        let by = requests::administrator(&principal);
        let (stored, appended) = restrictions::set(self.db(), &n, &reason, &by, Utc::now()).await?;
        self.feed.announce(&appended.heads);
        Ok(Restriction {
            nhs_number: stored.nhs_number,
            reason: stored.reason,
            set_at: Some(to_timestamp(stored.set_at)),
            notifications_created: appended.stored,
        })
    }

    async fn lift_restriction(&self, request: Request<ClearRestrictionRequest>) -> Result<()> {
        self.principal(&request)?;
        let n = platform::requests::clear_restriction(request.get_ref())?;
        Ok(restrictions::clear(self.db(), &n).await?)
    }

    async fn mark_inactive(
        &self,
        request: Request<MarkNhsNumberInactiveRequest>,
    ) -> Result<MarkNhsNumberInactiveResponse> {
        let principal = self.principal(&request)?;
        let (n, superseded_by) = platform::requests::mark_nhs_number_inactive(request.get_ref())?;
        let by = requests::administrator(&principal);
        let appended =
            restrictions::mark_inactive(self.db(), &n, superseded_by.as_ref(), &by, Utc::now())
                .await?;
        self.feed.announce(&appended.heads);
        Ok(MarkNhsNumberInactiveResponse {
            notifications_created: appended.stored,
        })
    }
}

/// Reads the whole upload stream, checking each message by the rules the gateway applies as
/// it relays, and staging its records as it arrives. Returns the upload id and the
/// fingerprint of the records.
async fn receive(
    db: &DatabaseConnection,
    mut stream: Streaming<UploadFlagsRequest>,
    attempt: &str,
) -> Result<(String, String)> {
    let mut rules = UploadStream::default();
    let mut fingerprint = digest::Context::new(&digest::SHA256);
    while let Some(message) = stream.message().await.map_err(Error::Upstream)? {
        let first_position = rules.message(&message)?;
        for record in &message.records {
            let bytes = record.encode_to_vec();
            fingerprint.update(&(bytes.len() as u64).to_be_bytes());
            fingerprint.update(&bytes);
        }
        // Fingerprinted as sent, staged reduced to what each record's judgement needs.
        let staged: Vec<_> = message
            .records
            .into_iter()
            .map(crate::rules::for_staging)
            .collect();
        uploads::stage(db, attempt, first_position, &staged, Utc::now()).await?;
    }
    let upload_id = rules.finish()?;
    let hex = fingerprint
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((upload_id, hex))
}

/// Deletes an attempt's staged records unless the upload was applied, also when the call is
/// dropped mid-stream (the client went away), so a broken stream leaves nothing.
struct StagingGuard {
    db: Option<DatabaseConnection>,
    attempt: String,
}

impl StagingGuard {
    /// Once the upload is over: an applied one took its staging with it; any other's goes now
    /// rather than waiting for start-up to clean it.
    async fn settle(mut self, applied: bool) {
        let Some(db) = self.db.take() else { return };
        if applied {
            return;
        }
        if let Err(e) = uploads::discard(&db, &self.attempt).await {
            tracing::warn!(error = %e, "could not discard a broken upload's staging; its lease lapses and cleanup takes it");
        }
    }
}

impl Drop for StagingGuard {
    fn drop(&mut self) {
        let Some(db) = self.db.take() else { return };
        let attempt = std::mem::take(&mut self.attempt);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = uploads::discard(&db, &attempt).await {
                    tracing::warn!(error = %e, "could not discard a dropped upload's staging");
                }
            });
        }
    }
}

#[tonic::async_trait]
impl FlagRegistry for Handlers {
    async fn get_flags(&self, request: Request<GetFlagsRequest>) -> Answer<GetFlagsResponse> {
        Ok(Response::new(self.read_flags(request).await?))
    }

    async fn upload_flags(
        &self,
        request: Request<Streaming<UploadFlagsRequest>>,
    ) -> Answer<UploadFlagsResponse> {
        Ok(Response::new(self.upload(request).await?))
    }

    async fn end_flag(&self, request: Request<EndFlagRequest>) -> Answer<WireFlag> {
        Ok(Response::new(self.end(request).await?))
    }

    async fn delete_flag(&self, request: Request<DeleteFlagRequest>) -> Answer<()> {
        Ok(Response::new(self.delete(request).await?))
    }

    async fn list_flags(&self, request: Request<ListFlagsRequest>) -> Answer<ListFlagsResponse> {
        Ok(Response::new(self.flags_page(request).await?))
    }

    async fn list_notifications(
        &self,
        request: Request<ListNotificationsRequest>,
    ) -> Answer<ListNotificationsResponse> {
        Ok(Response::new(self.notifications_page(request).await?))
    }

    async fn watch_notifications(
        &self,
        request: Request<WatchNotificationsRequest>,
    ) -> Answer<BoxStream<Notification>> {
        Ok(Response::new(Box::pin(self.watch(request).await?)))
    }

    async fn acknowledge_notifications(
        &self,
        request: Request<AcknowledgeNotificationsRequest>,
    ) -> Answer<AcknowledgeNotificationsResponse> {
        Ok(Response::new(self.acknowledge(request).await?))
    }

    async fn set_restriction(
        &self,
        request: Request<SetRestrictionRequest>,
    ) -> Answer<Restriction> {
        Ok(Response::new(self.restrict(request).await?))
    }

    async fn clear_restriction(&self, request: Request<ClearRestrictionRequest>) -> Answer<()> {
        Ok(Response::new(self.lift_restriction(request).await?))
    }

    async fn mark_nhs_number_inactive(
        &self,
        request: Request<MarkNhsNumberInactiveRequest>,
    ) -> Answer<MarkNhsNumberInactiveResponse> {
        Ok(Response::new(self.mark_inactive(request).await?))
    }
}
