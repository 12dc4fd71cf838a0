//! The two streaming calls of `LocalAuthority`.
//!
//! Upload: the client's stream is piped (re-batched by count and bytes, see UploadBatches) to
//! flag-service through a small bounded channel, so a
//! fast client waits for the registry (backpressure) instead of filling the gateway's memory.
//! A client stream that breaks (an error, a disconnect, this handler cancelled) must never end
//! the registry's stream cleanly, which would apply a partial upload. Dropping a gRPC call does
//! not reliably reset its request stream, so the outbound stream ends, unless the client's
//! ended cleanly, with one last message under a different `upload_id`: the registry rejects
//! such a stream whole (API.md: a changing `upload_id` is `INVALID_ARGUMENT`), applying nothing.
//!
//! Watch: the registry's stream passed through; when this gateway shuts down it ends with
//! `UNAVAILABLE` so the client resumes from its last cursor elsewhere. A watch ends with its
//! caller: the relay stops, and drops the registry's stream, as soon as the client cancels or
//! disconnects. Watches are bounded by limits of their own ([`WatchLimits`]), in all and per
//! organisation, and never hold a load-shedding permit. What a watch relays is audited: a
//! record of the cursor span delivered goes with each re-check that follows a delivery, after
//! every [`DELIVERY_RECORD_EVERY`] notifications, and when the stream ends.

use crate::core::{Core, Intent};
use crate::deadline::Deadline;
use cpis_proto::gateway as pb;
use platform::error::{Error, Result};
use platform::requests::{self, UploadStream};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status, Streaming};

/// Messages in flight between the client and the registry.
const UPLOAD_WINDOW: usize = 4;
/// Records relayed to the registry per message at most. A client may send one record per
/// message; passed on as they come, such tiny messages become tiny HTTP/2 DATA frames, and once
/// the registry (busy writing) lets a few hundred queue up, its HTTP/2 server closes the whole
/// connection as a small-frame flood (`ENHANCE_YOUR_CALM`). Relayed in batches, the frames stay
/// large.
const RELAY_BATCH: usize = 1_000;
/// Encoded records relayed per message at most, besides [`RELAY_BATCH`]: the registry decodes
/// and stages one message at a time and the relay holds [`UPLOAD_WINDOW`] of them in flight, so
/// a bound in bytes keeps both small whatever the records weigh. 1,000 records at their maxima
/// (409 bytes each on the wire) make about 400 KB; a client's message of 5,000 such records is
/// split in five.
const RELAY_BATCH_BYTES: usize = 1024 * 1024;
/// How long records may wait in a batch that is not full before they are relayed anyway. The
/// registry renews the upload's staging lease with each message it stages, so a slow client's
/// records must not wait for a batch to fill; once per interval stays far from a flood.
const RELAY_LINGER: Duration = Duration::from_secs(5);
/// An upload of 50,000 records may take a while; the caller's deadline still applies if set.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);
// The report of the largest upload always fits what the gateway decodes from the registry
// (`backends.rs` decodes up to `MAX_MESSAGE_BYTES`), so an applied upload's answer is never lost
// on this hop; it fits a stock client's 4 MiB on the next.
const _: () = assert!(requests::MAX_UPLOAD_REPORT_BYTES <= platform::server::MAX_MESSAGE_BYTES);

/// Re-batches an upload's records into the messages relayed to the registry: in order, every
/// message under the upload's id, each at most [`RELAY_BATCH`] records and
/// [`RELAY_BATCH_BYTES`] of encoded records (a single record larger than that goes alone: a
/// record cannot be split, and the client's message limit bounds it). Client messages are
/// checked by [`UploadStream`] before they reach it.
struct UploadBatches {
    upload_id: String,
    records: Vec<pb::FlagRecord>,
    bytes: usize,
    relayed_any: bool,
}

impl UploadBatches {
    fn new(upload_id: String) -> Self {
        UploadBatches {
            upload_id,
            records: Vec::new(),
            bytes: 0,
            relayed_any: false,
        }
    }

    /// Takes the next client message; returns the batches it filled, to relay now.
    fn push(&mut self, message: pb::UploadFlagsRequest) -> Vec<pb::UploadFlagsRequest> {
        let mut full = Vec::new();
        for record in message.records {
            // As it will weigh in the relayed message: tag, length, record.
            let size = requests::encoded_record_bytes(&record);
            if !self.records.is_empty()
                && (self.records.len() >= RELAY_BATCH || self.bytes + size > RELAY_BATCH_BYTES)
            {
                full.push(self.take());
            }
            self.bytes += size;
            self.records.push(record);
        }
        full
    }

    /// Whether records wait to be relayed.
    fn pending(&self) -> bool {
        !self.records.is_empty()
    }

    /// The records waiting, as one message (for [`RELAY_LINGER`]), if any.
    fn flush(&mut self) -> Option<pb::UploadFlagsRequest> {
        self.pending().then(|| self.take())
    }

    /// The client's stream ended cleanly: the last batch; or, if nothing was relayed at all,
    /// one message without records, so the registry itself refuses an upload of none.
    fn finish(mut self) -> Option<pb::UploadFlagsRequest> {
        (self.pending() || !self.relayed_any).then(|| self.take())
    }

    fn take(&mut self) -> pb::UploadFlagsRequest {
        self.relayed_any = true;
        self.bytes = 0;
        pb::UploadFlagsRequest {
            upload_id: self.upload_id.clone(),
            records: std::mem::take(&mut self.records),
        }
    }
}

/// The registry's request stream: the client's messages, then, unless the client's stream
/// ended cleanly, the poison message that makes the registry reject the upload whole.
struct UploadBody {
    rx: tokio::sync::mpsc::Receiver<pb::UploadFlagsRequest>,
    clean: Arc<AtomicBool>,
    poison: Option<pb::UploadFlagsRequest>,
}

impl tokio_stream::Stream for UploadBody {
    type Item = pb::UploadFlagsRequest;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        match self.rx.poll_recv(cx) {
            std::task::Poll::Ready(None) if !self.clean.load(Ordering::Acquire) => {
                std::task::Poll::Ready(self.poison.take())
            }
            other => other,
        }
    }
}

/// How long one re-check of a watch may take before the watch ends with its error.
const RECHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Resolves when a token with expiry `exp` (seconds since the epoch) expires; never for a
/// credential without one (a system's certificate, re-checked by each decision).
async fn token_expiry(exp: Option<u64>) {
    match exp {
        Some(exp) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            tokio::time::sleep(Duration::from_secs(exp.saturating_sub(now))).await;
        }
        None => std::future::pending().await,
    }
}

/// The ErrorInfo reason of a watch refused for want of capacity.
pub const TOO_MANY_WATCHES: &str = "TOO_MANY_WATCHES";

/// How many watches may be open through this gateway: in all, and per organisation.
pub struct WatchLimits {
    /// How often an open watch is decided again.
    pub recheck_every: Duration,
    total: Arc<tokio::sync::Semaphore>,
    per_organisation: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
    gauge: platform::metrics::IntGauge,
}

/// One open watch's share of the limits, given back when the relay ends.
pub struct WatchSlot {
    _total: tokio::sync::OwnedSemaphorePermit,
    organisation: String,
    open: Arc<Mutex<HashMap<String, usize>>>,
    gauge: platform::metrics::IntGauge,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.gauge.dec();
        if let Ok(mut open) = self.open.lock()
            && let Some(n) = open.get_mut(&self.organisation)
        {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.organisation);
            }
        }
    }
}

impl WatchLimits {
    pub fn new(total: usize, per_organisation: usize, recheck_every: Duration) -> Self {
        WatchLimits {
            recheck_every,
            total: Arc::new(tokio::sync::Semaphore::new(total)),
            per_organisation,
            open: Arc::new(Mutex::new(HashMap::new())),
            gauge: platform::metrics::metrics().open_watches(crate::NAME),
        }
    }

    /// A slot for one more watch of `organisation`, or `RESOURCE_EXHAUSTED` with reason
    /// `TOO_MANY_WATCHES`.
    pub fn admit(&self, organisation: &str) -> Result<WatchSlot> {
        let refused = |why: &str| Error::ResourceExhausted {
            reason: TOO_MANY_WATCHES,
            message: format!("{why}; close a watch or retry later"),
        };
        let mut open = self
            .open
            .lock()
            .map_err(|_| Error::internal("watch limits poisoned"))?;
        let count = open.entry(organisation.to_owned()).or_insert(0);
        if *count >= self.per_organisation {
            return Err(refused(
                "this organisation has as many watches open as it may",
            ));
        }
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| refused("this gateway relays as many watches as it may"))?;
        *count += 1;
        self.gauge.inc();
        Ok(WatchSlot {
            _total: total,
            organisation: organisation.to_owned(),
            open: self.open.clone(),
            gauge: self.gauge.clone(),
        })
    }
}

/// Notifications relayed after which the watch records them (with a re-check) without waiting
/// for the re-check interval: a busy watch's audit records stay few per notification.
pub const DELIVERY_RECORD_EVERY: u64 = 100;

/// What a watch relayed since its last delivery record.
#[derive(Debug, Default, PartialEq)]
pub struct Delivered(Option<pb::WatchDelivery>);

impl Delivered {
    /// One more notification relayed.
    pub fn note(&mut self, cursor: u64) {
        match &mut self.0 {
            None => {
                self.0 = Some(pb::WatchDelivery {
                    first_cursor: cursor,
                    last_cursor: cursor,
                    count: 1,
                })
            }
            Some(span) => {
                // A stream relays in cursor order; min and max keep the span true regardless.
                span.first_cursor = span.first_cursor.min(cursor);
                span.last_cursor = span.last_cursor.max(cursor);
                span.count += 1;
            }
        }
    }

    pub fn count(&self) -> u64 {
        self.0.as_ref().map_or(0, |span| span.count)
    }

    pub fn take(&mut self) -> Option<pb::WatchDelivery> {
        self.0.take()
    }

    /// Puts back a span whose record may not have been written, merged with what came since.
    pub fn restore(&mut self, span: pb::WatchDelivery) {
        match &mut self.0 {
            None => self.0 = Some(span),
            Some(now) => {
                now.first_cursor = now.first_cursor.min(span.first_cursor);
                now.last_cursor = now.last_cursor.max(span.last_cursor);
                now.count += span.count;
            }
        }
    }
}

/// One open watch's relay: who it is for, and what it relayed since its last record.
struct Watch {
    core: Arc<Core>,
    principal: cpis_proto::access::Principal,
    metadata: tonic::metadata::MetadataMap,
    delivered: Delivered,
}

impl Watch {
    /// Relays the registry's stream until it or its caller ends; returns the status to end
    /// the caller's stream with, if any.
    async fn relay(
        &mut self,
        mut upstream: Streaming<pb::Notification>,
        tx: &tokio::sync::mpsc::Sender<std::result::Result<pb::Notification, Status>>,
        expires_at: Option<u64>,
        flag: &crate::backends::Backend<
            cpis_proto::flag::flag_registry_client::FlagRegistryClient<crate::backends::Traced>,
        >,
    ) -> Option<Status> {
        let expiry = token_expiry(expires_at);
        tokio::pin!(expiry);
        let every = self.core.watches.recheck_every;
        let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            let item = tokio::select! {
                item = upstream.next() => item,
                // The caller cancelled or went away: end now, not at the next notification.
                _ = tx.closed() => return None,
                _ = self.core.shutdown.wait() => {
                    return Some(Status::unavailable("the gateway is shutting down; resume from your last cursor"));
                }
                _ = &mut expiry => {
                    let expired = Error::Unauthenticated(
                        "the token expired: sign in again and resume from your last cursor".into(),
                    );
                    return Some(Status::from(expired));
                }
                _ = recheck.tick() => match self.recheck().await {
                    Ok(()) => continue,
                    Err(e) => return Some(Status::from(e)),
                },
            };
            match item {
                Some(Ok(notification)) => {
                    let cursor = notification.cursor;
                    if tx.send(Ok(notification)).await.is_err() {
                        return None; // the client went away
                    }
                    self.delivered.note(cursor);
                    if self.delivered.count() >= DELIVERY_RECORD_EVERY
                        && let Err(e) = self.recheck().await
                    {
                        return Some(Status::from(e));
                    }
                }
                Some(Err(status)) => return Some(Status::from(flag.error(status))),
                None => return None,
            }
        }
    }

    /// Decides the watch again, as at its start, recording what it relayed since the last
    /// record: an organisation offboarded, a role or a system removed ends the watch (that
    /// denial is audited; an allowing re-check is not).
    async fn recheck(&mut self) -> Result<()> {
        let mut intent = Intent::new("WatchNotifications");
        intent.recheck = true;
        intent.delivered = self.delivered.take();
        let span = intent.delivered;
        let deadline = Deadline::after(RECHECK_TIMEOUT);
        let decided = self
            .core
            .decide(self.principal.clone(), intent, &self.metadata, &deadline)
            .await;
        match decided {
            Ok(_) => Ok(()),
            // A denial is an answer: access-service wrote the delivery with it.
            Err(e @ Error::PermissionDenied { .. }) => Err(e),
            Err(e) => {
                // Unknown whether the record was written: kept, to be recorded at the end
                // (at worst twice, never lost).
                if let Some(span) = span {
                    self.delivered.restore(span);
                }
                Err(e)
            }
        }
    }

    /// Records what was relayed since the last record, when the stream ends.
    async fn record_delivered(&mut self) {
        if self.delivered.count() == 0 {
            return;
        }
        if let Err(e) = self.recheck().await
            && !matches!(e, Error::PermissionDenied { .. })
        {
            tracing::warn!(error = %e, "could not record what an ended watch delivered");
        }
    }
}

type BoxStream<T> = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = std::result::Result<T, Status>> + Send + 'static>,
>;

impl Core {
    pub async fn upload_flags(
        &self,
        request: Request<Streaming<pb::UploadFlagsRequest>>,
    ) -> Result<pb::UploadFlagsResponse> {
        let (metadata, extensions, mut inbound) = request.into_parts();
        let deadline = match metadata.get("grpc-timeout") {
            Some(_) => Deadline::from_metadata(&metadata),
            None => Deadline::after(UPLOAD_TIMEOUT),
        };
        let principal = self.authenticate(&metadata, &extensions).await?;
        let first = inbound
            .message()
            .await
            .map_err(|_| {
                Error::invalid(
                    "records",
                    "the upload stream broke before its first message could be read",
                )
            })?
            .ok_or_else(|| Error::invalid("records", "an upload must carry at least one record"))?;
        let mut checked = UploadStream::default();
        checked.message(&first)?;
        let mut intent = Intent::new("UploadFlags");
        intent.upload_id = first.upload_id.clone();
        let allowed = self.decide(principal, intent, &metadata, &deadline).await?;

        let (tx, rx) = tokio::sync::mpsc::channel::<pb::UploadFlagsRequest>(UPLOAD_WINDOW);
        let clean = Arc::new(AtomicBool::new(false));
        let body = UploadBody {
            rx,
            clean: clean.clone(),
            poison: Some(pb::UploadFlagsRequest {
                upload_id: format!("{}#broken", first.upload_id),
                records: vec![],
            }),
        };
        let flag = &self.backends.flag;
        let outbound = flag.request(body, Some(&allowed.principal), Some(&deadline))?;
        let mut client = flag.client();
        let call = client.upload_flags(outbound);
        tokio::pin!(call);

        let pump = async move {
            let mut batches = UploadBatches::new(first.upload_id.clone());
            let mut ready = batches.push(first);
            let mut linger_until = None;
            loop {
                let relayed = !ready.is_empty();
                for batch in ready.drain(..) {
                    if tx.send(batch).await.is_err() {
                        return Ok(()); // the registry answered early; its answer says why
                    }
                }
                // Records left waiting start the linger clock; relaying a batch restarts it.
                linger_until = match (batches.pending(), linger_until) {
                    (false, _) => None,
                    (true, Some(at)) if !relayed => Some(at),
                    (true, _) => Some(tokio::time::Instant::now() + RELAY_LINGER),
                };
                let next = match linger_until {
                    Some(at) => match tokio::time::timeout_at(at, inbound.message()).await {
                        Ok(next) => next,
                        Err(_) => {
                            ready.extend(batches.flush());
                            continue;
                        }
                    },
                    None => inbound.message().await,
                };
                match next {
                    Ok(Some(message)) => {
                        checked.message(&message)?;
                        ready = batches.push(message);
                    }
                    Ok(None) => {
                        // HTTP/2 servers read a caller's RST_STREAM(NO_ERROR) as the body's
                        // end. Yielding once lets hyper, which checks for a reset whenever this
                        // handler is pending, drop it before the registry is told the upload is
                        // whole.
                        tokio::task::yield_now().await;
                        if let Some(last) = batches.finish()
                            && tx.send(last).await.is_err()
                        {
                            return Ok(());
                        }
                        clean.store(true, Ordering::Release);
                        return Ok::<(), Error>(());
                    }
                    Err(status) => {
                        tracing::info!(code = ?status.code(), "upload stream broke; the registry applies nothing");
                        return Err(Error::Upstream(Status::cancelled(
                            "the upload stream broke before it ended; nothing was applied",
                        )));
                    }
                }
            }
        };
        tokio::pin!(pump);

        tokio::select! {
            pumped = &mut pump => if let Err(error) = pumped {
                // The outbound stream ends with the poison message: the registry applies
                // nothing, and its answer (a refusal) is not the caller's.
                let _ = call.await;
                return Err(error);
            },
            answered = &mut call => {
                return answered.map(tonic::Response::into_inner).map_err(|s| flag.error(s));
            }
        }
        call.await
            .map(tonic::Response::into_inner)
            .map_err(|s| flag.error(s))
    }

    pub async fn watch_notifications(
        self: &Arc<Self>,
        request: Request<pb::WatchNotificationsRequest>,
    ) -> Result<BoxStream<pb::Notification>> {
        let (metadata, extensions, message) = request.into_parts();
        let deadline = Deadline::from_metadata(&metadata);
        let (principal, expires_at) = self.authenticate_until(&metadata, &extensions).await?;
        requests::watch_notifications(&message)?;
        // Before the decision: a watch refused for capacity is neither decided nor audited,
        // so an attack on the limit cannot grow the audit log either.
        let slot = self.watches.admit(&principal.ods_code)?;
        let allowed = self
            .decide(
                principal,
                Intent::new("WatchNotifications"),
                &metadata,
                &deadline,
            )
            .await?;

        let flag = self.backends.flag.clone();
        let outbound = flag.request(message, Some(&allowed.principal), None)?;
        let upstream = flag
            .client()
            .watch_notifications(outbound)
            .await
            .map_err(|s| flag.error(s))?
            .into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let core = self.clone();
        let principal = allowed.principal;
        tokio::spawn(async move {
            // Held for the relay's life: the slot and the registry's stream go together.
            let _slot = slot;
            let mut watch = Watch {
                core,
                principal,
                metadata,
                delivered: Delivered::default(),
            };
            let ending = watch.relay(upstream, &tx, expires_at, &flag).await;
            // What was relayed and not yet recorded is recorded before the stream's last word,
            // whatever ended it (the caller gone included).
            watch.record_delivered().await;
            if let Some(status) = ending {
                let _ = tokio::time::timeout(RECHECK_TIMEOUT, tx.send(Err(status))).await;
            }
        });
        let stream = ReceiverStream::new(rx);
        Ok(Box::pin(stream))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn record(i: usize, email_bytes: usize) -> pb::FlagRecord {
        pb::FlagRecord {
            nhs_number: format!("{i:010}"),
            email: "e".repeat(email_bytes),
            ..Default::default()
        }
    }

    fn message(records: Vec<pb::FlagRecord>) -> pb::UploadFlagsRequest {
        pb::UploadFlagsRequest {
            upload_id: "u".into(),
            records,
        }
    }

    /// Relays client messages of these sizes (records of `email_bytes` each): every message
    /// relayed, the last included.
    fn relayed(sizes: &[usize], email_bytes: usize) -> Vec<pb::UploadFlagsRequest> {
        let mut batches = UploadBatches::new("u".into());
        let mut out = Vec::new();
        let mut next = 0;
        for &n in sizes {
            let records = (next..next + n).map(|i| record(i, email_bytes)).collect();
            next += n;
            out.extend(batches.push(message(records)));
        }
        out.extend(batches.finish());
        out
    }

    fn records_bytes(m: &pb::UploadFlagsRequest) -> usize {
        m.records.iter().map(requests::encoded_record_bytes).sum()
    }

    /// Every record once, in the order sent, each relayed message under the upload's id.
    fn assert_in_order(out: &[pb::UploadFlagsRequest], total: usize) {
        let numbers: Vec<String> = out
            .iter()
            .flat_map(|m| m.records.iter().map(|r| r.nhs_number.clone()))
            .collect();
        let sent: Vec<String> = (0..total).map(|i| format!("{i:010}")).collect();
        assert_eq!(numbers, sent);
        assert!(out.iter().all(|m| m.upload_id == "u"));
    }

    #[test]
    fn relayed_messages_hold_at_most_relay_batch_records_and_relay_batch_bytes() {
        // Small records: the count binds. Records of about 100 KB: the bytes bind.
        for (email_bytes, sizes) in [(10, vec![5_000, 5_000, 1]), (100_000, vec![50, 7, 1])] {
            let out = relayed(&sizes, email_bytes);
            let total = sizes.iter().sum();
            assert_in_order(&out, total);
            for m in &out {
                assert!(m.records.len() <= RELAY_BATCH, "{}", m.records.len());
                assert!(
                    records_bytes(m) <= RELAY_BATCH_BYTES,
                    "{}",
                    records_bytes(m)
                );
            }
        }
    }

    #[test]
    fn a_large_client_message_is_split_and_small_ones_are_joined() {
        let out = relayed(&[5_000], 10);
        let sizes: Vec<usize> = out.iter().map(|m| m.records.len()).collect();
        assert_eq!(sizes, [1_000; 5]);
        // 5,000 records at the fields' maxima weigh about 2 MB: split by bytes as well.
        let heavy = relayed(&[5_000], 254);
        assert!(heavy.len() >= 5);
        assert!(heavy.iter().all(|m| records_bytes(m) <= RELAY_BATCH_BYTES));
        // A record a message: joined into full batches, not relayed one by one.
        let out = relayed(&[1; 2_500], 10);
        let sizes: Vec<usize> = out.iter().map(|m| m.records.len()).collect();
        assert_eq!(sizes, [1_000, 1_000, 500]);
        assert_in_order(&out, 2_500);
    }

    #[test]
    fn a_record_larger_than_the_byte_bound_travels_alone() {
        let mut batches = UploadBatches::new("u".into());
        let big = record(1, RELAY_BATCH_BYTES + 1);
        let out = batches.push(message(vec![record(0, 10), big, record(2, 10)]));
        let sizes: Vec<usize> = out.iter().map(|m| m.records.len()).collect();
        assert_eq!(sizes, [1, 1], "the small one before it, then it alone");
        assert_eq!(batches.finish().unwrap().records.len(), 1);
    }

    #[test]
    fn an_upload_of_no_records_still_reaches_the_registry_once_to_be_refused() {
        let out = relayed(&[0, 0], 10);
        assert_eq!(out.len(), 1);
        assert!(out[0].records.is_empty() && out[0].upload_id == "u");
        // Once records were relayed, the end adds no empty message.
        assert_eq!(relayed(&[1_000], 10).len(), 1);
    }

    #[test]
    fn records_waiting_in_a_batch_can_be_relayed_before_it_fills() {
        let mut batches = UploadBatches::new("u".into());
        assert!(batches.flush().is_none());
        assert!(batches.push(message(vec![record(0, 10)])).is_empty());
        assert!(batches.pending());
        assert_eq!(batches.flush().unwrap().records.len(), 1);
        assert!(!batches.pending());
        assert!(batches.finish().is_none(), "all relayed already");
    }

    fn span(first: u64, last: u64, count: u64) -> Option<pb::WatchDelivery> {
        Some(pb::WatchDelivery {
            first_cursor: first,
            last_cursor: last,
            count,
        })
    }

    #[test]
    fn a_watchs_delivered_span_covers_what_it_relayed_since_its_last_record() {
        let mut d = Delivered::default();
        assert_eq!(d.count(), 0);
        for cursor in [4, 5, 6] {
            d.note(cursor);
        }
        assert_eq!(d.count(), 3);
        let taken = d.take();
        assert_eq!(taken, span(4, 6, 3));
        assert_eq!(d.take(), None, "taken once: the next record starts afresh");
        d.note(7);
        // A record that may not have been written is put back, merged with what came since.
        d.restore(taken.unwrap());
        assert_eq!(d.take(), span(4, 7, 4));
    }
}
