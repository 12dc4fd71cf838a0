//! Where calls enter: the `cpis.attendance.v1.AttendanceLog` handlers. Each admits only the
//! gateway with a forwarded principal allowed to look a child up, answers UNAVAILABLE until
//! ready, validates everything, then asks storage.

use crate::attendance::Attendance;
use crate::storage::Attendances;
use crate::summary::SummaryRequest;
use chrono::Utc;
use cpis_proto::attendance::attendance_log_server::AttendanceLog;
use cpis_proto::attendance::{
    RecordAttendanceRequest, RecordAttendanceResponse, SummarizeAttendancesRequest,
    SummarizeAttendancesResponse,
};
use platform::domain::Activity;
use platform::principal::{from_request, require_activity};
use platform::runtime::BackendContext;
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct Handlers {
    context: BackendContext,
    attendances: Attendances,
}

impl Handlers {
    pub fn new(context: BackendContext) -> Self {
        let attendances = Attendances::new(context.db.clone());
        Handlers {
            context,
            attendances,
        }
    }

    /// Attendances are personal data: only the gateway may call, forwarding the principal the
    /// lookup was decided for (its reconciler forwards the one stored in the obligation), and
    /// that principal must hold one of `any_of`. A second line of defence behind the decision.
    fn admit<T>(&self, request: &Request<T>, any_of: &[Activity]) -> platform::Result<()> {
        let principal = from_request(request, &self.context.peer_trust)?;
        self.context.readiness.check()?;
        require_activity(&principal, any_of)
    }

    async fn record(&self, request: Request<RecordAttendanceRequest>) -> platform::Result<bool> {
        // Recording is what a notifying lookup does.
        self.admit(&request, &[Activity::NotifyingLookup])?;
        let attendance = Attendance::from_request(request.get_ref())?;
        let created = self.attendances.record(&attendance, Utc::now()).await?;
        tracing::debug!(created, "attendance recorded");
        Ok(created)
    }

    async fn summarize(
        &self,
        request: Request<SummarizeAttendancesRequest>,
    ) -> platform::Result<SummarizeAttendancesResponse> {
        self.admit(
            &request,
            &[Activity::NotifyingLookup, Activity::SilentLookup],
        )?;
        let wanted = SummaryRequest::from_request(request.get_ref())?;
        let numbers: Vec<_> = wanted.people.iter().map(|(_, n)| *n).collect();
        let summaries = self
            .attendances
            .summarize(&numbers, wanted.as_of, &wanted.exclude_lookup_id)
            .await?;
        let results = wanted
            .people
            .into_iter()
            .zip(summaries)
            .map(|((requested, _), summary)| summary.to_proto(requested))
            .collect();
        Ok(SummarizeAttendancesResponse { results })
    }
}

#[tonic::async_trait]
impl AttendanceLog for Handlers {
    async fn record_attendance(
        &self,
        request: Request<RecordAttendanceRequest>,
    ) -> Result<Response<RecordAttendanceResponse>, Status> {
        let created = self.record(request).await?;
        Ok(Response::new(RecordAttendanceResponse { created }))
    }

    async fn summarize_attendances(
        &self,
        request: Request<SummarizeAttendancesRequest>,
    ) -> Result<Response<SummarizeAttendancesResponse>, Status> {
        Ok(Response::new(self.summarize(request).await?))
    }
}
