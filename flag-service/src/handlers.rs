//! Where each FlagRegistry call enters: trust and readiness first, then the request parsed
//! (`requests`), then storage, then — for writes — the cache invalidated before the answer.

use crate::cache::FlagCache;
use crate::feed::NotificationFeed;
use crate::requests::{self, Start};
use crate::storage::{flags, outbox, restrictions, uploads};
use aws_lc_rs::digest;
use chrono::Utc;
use cpis_proto::access::Principal;
use cpis_proto::flag::flag_registry_server::FlagRegistry;
use cpis_proto::flag::{FlagSet, GetFlagsRequest, GetFlagsResponse};
use cpis_proto::gateway::{
    AcknowledgeNotificationsRequest, AcknowledgeNotificationsResponse, ClearRestrictionRequest,
    DeleteFlagRequest, EndFlagRequest, Flag as WireFlag, ListFlagsRequest, ListFlagsResponse,
    ListNotificationsRequest, ListNotificationsResponse, MarkNhsNumberInactiveRequest,
    MarkNhsNumberInactiveResponse, Notification, Restriction, SetRestrictionRequest,
    UploadFlagsRequest, UploadFlagsResponse,
};
use platform::domain::{england_date, to_timestamp};
use platform::error::{Error, Result, Violations};
use platform::principal;
use platform::runtime::BackendContext;
use prost::Message;
use sea_orm::DatabaseConnection;
use std::pin::Pin;
use tonic::{Request, Response, Status, Streaming};

type Answer<T> = std::result::Result<Response<T>, Status>;

/// The gRPC handlers of the registry.
#[derive(Clone)]
pub struct Handlers {
    pub context: BackendContext,
    pub cache: FlagCache,
    pub feed: NotificationFeed,
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

    fn gateway_only<T>(&self, request: &Request<T>) -> Result<()> {
        principal::require_gateway_peer(request, &self.context.peer_trust)?;
        self.context.readiness.check()
    }

    async fn read_flags(&self, request: Request<GetFlagsRequest>) -> Result<GetFlagsResponse> {
        self.gateway_only(&request)?;
        let read = requests::flags_read(request.get_ref())?;
        let today = england_date(read.as_of);
        let visible = |flags: &[crate::flag::Flag]| -> Vec<WireFlag> {
            flags
                .iter()
                .filter(|f| f.dates.is_visible(today))
                .map(|f| f.to_proto(today))
                .collect()
        };
        if let (Some(access), [number]) = (&read.notify, read.numbers.as_slice()) {
            let (flags, appended) =
                flags::read_and_notify(self.db(), number.as_str(), read.as_of, access).await?;
            self.feed.announce(&appended.heads);
            return Ok(GetFlagsResponse {
                results: vec![FlagSet {
                    nhs_number: number.as_str().to_owned(),
                    flags: visible(&flags),
                }],
                notifications_stored: appended.stored,
            });
        }
        let answers = self.cache.flags_on(self.db(), &read.numbers).await?;
        Ok(GetFlagsResponse {
            results: read
                .numbers
                .iter()
                .zip(answers)
                .map(|(n, flags)| FlagSet {
                    nhs_number: n.as_str().to_owned(),
                    flags: visible(&flags),
                })
                .collect(),
            notifications_stored: 0,
        })
    }

    async fn upload(
        &self,
        request: Request<Streaming<UploadFlagsRequest>>,
    ) -> Result<UploadFlagsResponse> {
        let principal = self.principal(&request)?;
        let la = requests::local_authority(&principal)?;
        let attempt = uuid::Uuid::new_v4().to_string();
        let mut staging = StagingGuard {
            db: Some(self.db().clone()),
            attempt: attempt.clone(),
        };
        let received = receive(self.db(), request.into_inner(), &attempt).await;
        let (upload_id, fingerprint) = match received {
            Ok(received) => received,
            Err(e) => {
                staging.discard_now().await;
                return Err(e);
            }
        };
        let upload = uploads::Upload {
            la_ods_code: la.as_str().to_owned(),
            la_name: principal.organisation_name.clone(),
            actor: requests::actor(&principal),
            upload_id,
            fingerprint,
            attempt,
        };
        let applied = match uploads::apply(self.db(), &upload, Utc::now()).await {
            Ok(applied) => applied,
            Err(e) => {
                staging.discard_now().await;
                return Err(e.into());
            }
        };
        staging.disarm();
        let (report, touched) = match applied {
            uploads::Applied::Fresh { report, changed } => (report, changed),
            uploads::Applied::Repeat { report } => {
                let accepted = uploads::accepted_numbers(&report);
                (report, accepted)
            }
        };
        self.cache.invalidate(&touched).await?;
        Ok(report)
    }

    async fn end(&self, request: Request<EndFlagRequest>) -> Result<WireFlag> {
        let principal = self.principal(&request)?;
        let la = requests::local_authority(&principal)?;
        let (key, end) = requests::end_flag(request.get_ref())?;
        let now = Utc::now();
        let actor = requests::actor(&principal);
        let change = flags::Change {
            la: la.as_str(),
            actor: &actor,
            source: "EndFlag",
            at: now,
        };
        let row = flags::end(self.db(), &change, &key, end).await?;
        self.invalidate_number(&key.nhs_number).await?;
        let flag = crate::flag::Flag::from_row(&row)
            .ok_or_else(|| Error::internal("a stored flag has an unknown type"))?;
        Ok(flag.to_proto(england_date(now)))
    }

    async fn delete(&self, request: Request<DeleteFlagRequest>) -> Result<()> {
        let principal = self.principal(&request)?;
        let la = requests::local_authority(&principal)?;
        let key = requests::delete_flag(request.get_ref())?;
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
        self.invalidate_number(&key.nhs_number).await?;
        Ok(deleted?)
    }

    async fn invalidate_number(&self, nhs_number: &str) -> Result<()> {
        let n = platform::domain::NhsNumber::parse(nhs_number)
            .map_err(|_| Error::internal("a stored NHS number does not parse"))?;
        Ok(self.cache.invalidate(&[n]).await?)
    }

    async fn flags_page(&self, request: Request<ListFlagsRequest>) -> Result<ListFlagsResponse> {
        let principal = self.principal(&request)?;
        let la = requests::local_authority(&principal)?;
        let req = request.get_ref();
        let mut v = Violations::new();
        let limit = requests::page_size(&mut v, req.page_size);
        let after_id = if req.page_token.is_empty() {
            0
        } else {
            match requests::read_page_token(&req.page_token, "flags", 1) {
                Some(parts) => parts[0],
                None => {
                    v.add("page_token", "is not a token this listing gave");
                    0
                }
            }
        };
        v.finish()?;
        let mut rows = flags::page(self.db(), la.as_str(), after_id as i64, limit + 1).await?;
        let more = rows.len() as u64 > limit;
        rows.truncate(limit as usize);
        let next_page_token = match rows.last() {
            Some(last) if more => requests::page_token("flags", &[last.id as u64]),
            _ => String::new(),
        };
        let today = england_date(Utc::now());
        Ok(ListFlagsResponse {
            flags: rows
                .iter()
                .filter_map(crate::flag::Flag::from_row)
                .map(|f| f.to_proto(today))
                .collect(),
            next_page_token,
        })
    }

    /// The cursor a listing or watch starts after.
    async fn resolve_start(&self, la: &str, start: Start) -> Result<u64> {
        Ok(match start {
            Start::After(cursor) => cursor,
            Start::Oldest => 0,
            Start::Acknowledged => outbox::head(self.db(), la).await?.1,
        })
    }

    async fn notifications_page(
        &self,
        request: Request<ListNotificationsRequest>,
    ) -> Result<ListNotificationsResponse> {
        let principal = self.principal(&request)?;
        let la = requests::local_authority(&principal)?;
        let req = request.get_ref();
        let mut v = Violations::new();
        let limit = requests::page_size(&mut v, req.page_size);
        let start = requests::start(&mut v, req.after_cursor, req.from_start);
        let from_start = u64::from(req.from_start);
        let resume = if req.page_token.is_empty() {
            None
        } else {
            match requests::read_page_token(&req.page_token, "notifications", 3) {
                Some(p) if p[0] == req.after_cursor && p[1] == from_start => Some(p[2]),
                _ => {
                    v.add(
                        "page_token",
                        "is not a token this listing gave for these parameters",
                    );
                    None
                }
            }
        };
        v.finish()?;
        let after = match resume {
            Some(cursor) => cursor,
            None => self.resolve_start(la.as_str(), start).await?,
        };
        let mut page = outbox::after(self.db(), la.as_str(), after, limit + 1).await?;
        let more = page.len() as u64 > limit;
        page.truncate(limit as usize);
        let next_page_token = match page.last() {
            Some(last) if more => requests::page_token(
                "notifications",
                &[req.after_cursor, from_start, last.cursor as u64],
            ),
            _ => String::new(),
        };
        Ok(ListNotificationsResponse {
            notifications: page.iter().map(outbox::to_proto).collect(),
            next_page_token,
        })
    }

    async fn acknowledge(
        &self,
        request: Request<AcknowledgeNotificationsRequest>,
    ) -> Result<AcknowledgeNotificationsResponse> {
        let principal = self.principal(&request)?;
        let la = requests::local_authority(&principal)?;
        let (acknowledged_cursor, backlog) =
            outbox::acknowledge(self.db(), la.as_str(), request.get_ref().up_to_cursor).await?;
        Ok(AcknowledgeNotificationsResponse {
            acknowledged_cursor,
            backlog,
        })
    }

    async fn restrict(&self, request: Request<SetRestrictionRequest>) -> Result<Restriction> {
        let principal = self.principal(&request)?;
        let (n, reason) = requests::restriction(request.get_ref())?;
        let by = requests::administrator(&principal);
        let (stored, appended) =
            restrictions::set(self.db(), n.as_str(), &reason, &by, Utc::now()).await?;
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
        let n = requests::nhs_number_only(&request.get_ref().nhs_number)?;
        Ok(restrictions::clear(self.db(), n.as_str()).await?)
    }

    async fn mark_inactive(
        &self,
        request: Request<MarkNhsNumberInactiveRequest>,
    ) -> Result<MarkNhsNumberInactiveResponse> {
        let principal = self.principal(&request)?;
        let (n, superseded_by) = requests::inactive(request.get_ref())?;
        let by = requests::administrator(&principal);
        let superseded_by = superseded_by
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default();
        let appended =
            restrictions::mark_inactive(self.db(), n.as_str(), &superseded_by, &by, Utc::now())
                .await?;
        self.feed.announce(&appended.heads);
        Ok(MarkNhsNumberInactiveResponse {
            notifications_created: appended.stored,
        })
    }
}

/// Reads the whole upload stream, checking it and staging each message's records as it
/// arrives. Returns the upload id and the fingerprint of the records.
async fn receive(
    db: &DatabaseConnection,
    mut stream: Streaming<UploadFlagsRequest>,
    attempt: &str,
) -> Result<(String, String)> {
    let mut upload_id: Option<String> = None;
    let mut total: u64 = 0;
    let mut fingerprint = digest::Context::new(&digest::SHA256);
    while let Some(message) = stream.message().await.map_err(Error::Upstream)? {
        match &upload_id {
            None => {
                let chars = message.upload_id.chars().count();
                if chars == 0 || chars > requests::MAX_UPLOAD_ID_CHARS {
                    return Err(Error::invalid("upload_id", "must be 1 to 128 characters"));
                }
                upload_id = Some(message.upload_id.clone());
            }
            Some(first) if *first != message.upload_id => {
                return Err(Error::invalid(
                    "upload_id",
                    "must be the same in every message of an upload",
                ));
            }
            Some(_) => {}
        }
        if message.records.len() > requests::MAX_RECORDS_PER_MESSAGE {
            return Err(Error::invalid(
                "records",
                "at most 5,000 records per message",
            ));
        }
        let first_position = total;
        total += message.records.len() as u64;
        if total > requests::MAX_RECORDS_PER_UPLOAD {
            return Err(Error::invalid(
                "records",
                "at most 50,000 records per upload",
            ));
        }
        for record in &message.records {
            let bytes = record.encode_to_vec();
            fingerprint.update(&(bytes.len() as u64).to_be_bytes());
            fingerprint.update(&bytes);
        }
        uploads::stage(db, attempt, first_position, &message.records, Utc::now()).await?;
    }
    let Some(upload_id) = upload_id else {
        return Err(Error::invalid("records", "the upload sent no message"));
    };
    if total == 0 {
        return Err(Error::invalid("records", "the upload carries no record"));
    }
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
    fn disarm(&mut self) {
        self.db = None;
    }

    async fn discard_now(&mut self) {
        if let Some(db) = self.db.take()
            && let Err(e) = uploads::discard(&db, &self.attempt).await
        {
            tracing::warn!(error = %e, "could not discard a broken upload's staging; start-up cleans it");
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

fn answer<T>(result: Result<T>) -> Answer<T> {
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl FlagRegistry for Handlers {
    async fn get_flags(&self, request: Request<GetFlagsRequest>) -> Answer<GetFlagsResponse> {
        answer(self.read_flags(request).await)
    }

    async fn upload_flags(
        &self,
        request: Request<Streaming<UploadFlagsRequest>>,
    ) -> Answer<UploadFlagsResponse> {
        answer(self.upload(request).await)
    }

    async fn end_flag(&self, request: Request<EndFlagRequest>) -> Answer<WireFlag> {
        answer(self.end(request).await)
    }

    async fn delete_flag(&self, request: Request<DeleteFlagRequest>) -> Answer<()> {
        answer(self.delete(request).await)
    }

    async fn list_flags(&self, request: Request<ListFlagsRequest>) -> Answer<ListFlagsResponse> {
        answer(self.flags_page(request).await)
    }

    async fn list_notifications(
        &self,
        request: Request<ListNotificationsRequest>,
    ) -> Answer<ListNotificationsResponse> {
        answer(self.notifications_page(request).await)
    }

    async fn watch_notifications(
        &self,
        request: Request<cpis_proto::gateway::WatchNotificationsRequest>,
    ) -> Answer<
        Pin<Box<dyn futures::Stream<Item = std::result::Result<Notification, Status>> + Send>>,
    > {
        let started = async {
            let principal = self.principal(&request)?;
            let la = requests::local_authority(&principal)?;
            let req = request.get_ref();
            let mut v = Violations::new();
            let start = requests::start(&mut v, req.after_cursor, req.from_start);
            v.finish()?;
            let after = self.resolve_start(la.as_str(), start).await?;
            Ok(self.feed.watch(
                self.db().clone(),
                la.as_str().to_owned(),
                after,
                self.context.shutdown.clone(),
            ))
        };
        let stream: Result<_> = started.await;
        answer(stream.map(|s| {
            Box::pin(s)
                as Pin<
                    Box<
                        dyn futures::Stream<Item = std::result::Result<Notification, Status>>
                            + Send,
                    >,
                >
        }))
    }

    async fn acknowledge_notifications(
        &self,
        request: Request<AcknowledgeNotificationsRequest>,
    ) -> Answer<AcknowledgeNotificationsResponse> {
        answer(self.acknowledge(request).await)
    }

    async fn set_restriction(
        &self,
        request: Request<SetRestrictionRequest>,
    ) -> Answer<Restriction> {
        answer(self.restrict(request).await)
    }

    async fn clear_restriction(&self, request: Request<ClearRestrictionRequest>) -> Answer<()> {
        answer(self.lift_restriction(request).await)
    }

    async fn mark_nhs_number_inactive(
        &self,
        request: Request<MarkNhsNumberInactiveRequest>,
    ) -> Answer<MarkNhsNumberInactiveResponse> {
        answer(self.mark_inactive(request).await)
    }
}
