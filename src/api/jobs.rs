//! `/api/jobs`: every accepted heavy write is a job the client polls.

use chrono::{DateTime, Utc};
use fanqueue_jobs::{
    engine::{
        JobFilter, JobId, JobRecord, JobStatus,
        record::{self, CancelError, Readers},
    },
    runtime::Kind,
};
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
};

use super::{ApiError, ApiTags, BearerAuth, State, page};

pub struct JobsApi {
    state: State,
}

impl JobsApi {
    pub fn new(state: State) -> Self {
        JobsApi { state }
    }
}

#[derive(Debug, Object)]
pub struct Progress {
    /// Units done (for imports: data rows accounted for).
    pub done: i64,
    /// Units in all, once known.
    #[oai(nullable)]
    pub total: Option<i64>,
}

/// A job as the API shows it.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct JobOut {
    pub id: String,
    /// import_csv, …
    pub kind: String,
    /// queued, running, succeeded, failed or cancelled.
    pub status: String,
    /// Runs started so far, including one cut short by a crash.
    pub attempts: i64,
    pub progress: Progress,
    /// The job's result once it has one (for imports: `{"summary": …}`).
    #[oai(nullable)]
    pub result: Option<serde_json::Value>,
    /// Why it failed, or why its last run failed when it will be retried.
    #[oai(nullable)]
    pub error: Option<String>,
    /// A cancel was asked for; a running job stops after its current batch.
    pub cancel_requested: bool,
    pub created_at: DateTime<Utc>,
    #[oai(nullable)]
    pub started_at: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<JobRecord> for JobOut {
    fn from(j: JobRecord) -> Self {
        JobOut {
            id: j.id.0,
            kind: j.kind,
            status: j.status.to_string(),
            attempts: j.attempts,
            progress: Progress {
                done: j.progress_done,
                total: j.progress_total,
            },
            result: j.result.map(|r| r.0),
            error: j.error,
            cancel_requested: j.cancel_requested,
            created_at: j.created_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
        }
    }
}

#[derive(Debug, Object)]
pub struct JobPage {
    pub items: Vec<JobOut>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

#[derive(ApiResponse)]
enum GetJobResponse {
    #[oai(status = 200)]
    Ok(Json<JobOut>),
}

#[derive(ApiResponse)]
enum ListJobsResponse {
    /// The caller's jobs, newest first.
    #[oai(status = 200)]
    Ok(Json<JobPage>),
}

#[derive(ApiResponse)]
enum CancelJobResponse {
    /// A queued job is now cancelled; a running one stops after its current batch (poll it).
    #[oai(status = 202)]
    Accepted(Json<JobOut>),
}

/// A job id from the path: anything but a ULID is a malformed id.
pub fn job_id(raw: &str) -> Result<JobId, ApiError> {
    JobId::parse(raw).ok_or_else(|| ApiError::invalid("id", "must be a job id (a ULID)"))
}

#[OpenApi(prefix_path = "/api/jobs", tag = "ApiTags::Jobs")]
impl JobsApi {
    /// Get a job
    ///
    /// Status, attempts, progress and, once final, the result or the error.
    #[oai(path = "/:id", method = "get", operation_id = "getJob")]
    async fn get(
        &self,
        auth: BearerAuth,
        /// The job's id, a ULID.
        #[oai(validator(pattern = r"^[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{26}$"))]
        id: Path<String>,
    ) -> Result<GetJobResponse, ApiError> {
        let job = record::get(&self.state.db, readers(&auth), &job_id(&id.0)?).await?;
        Ok(GetJobResponse::Ok(Json(job.into())))
    }

    /// List jobs
    ///
    /// The caller's jobs, newest first, optionally of one `kind` and one `status`.
    #[oai(path = "/", method = "get", operation_id = "listJobs")]
    async fn list(
        &self,
        auth: BearerAuth,
        /// import_csv, send_message, bulk_send or sweep.
        #[oai(validator(pattern = r"^(?:import_csv|send_message|bulk_send|sweep)$"))]
        kind: Query<Option<String>>,
        /// queued, running, succeeded, failed or cancelled.
        #[oai(validator(pattern = r"^(?:queued|running|succeeded|failed|cancelled)$"))]
        status: Query<Option<String>>,
        /// Items per page, 1 to 200 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "200")))]
        limit: Query<Option<i64>>,
        /// Items to skip (default 0).
        #[oai(validator(minimum(value = "0")))]
        offset: Query<Option<i64>>,
    ) -> Result<ListJobsResponse, ApiError> {
        let page = page(limit.0, offset.0)?;
        let filter = JobFilter {
            kind: kind
                .0
                .map(|k| {
                    Kind::parse(&k)
                        .map(Kind::name)
                        .map_err(|_| ApiError::invalid("kind", "is not a job kind"))
                })
                .transpose()?,
            status: status
                .0
                .map(|s| {
                    JobStatus::parse(&s).map_err(|_| {
                        ApiError::invalid(
                            "status",
                            "must be queued, running, succeeded, failed or cancelled",
                        )
                    })
                })
                .transpose()?,
        };
        let listed = record::list(&self.state.db, readers(&auth), &filter, page).await?;
        Ok(ListJobsResponse::Ok(Json(JobPage {
            items: listed.items.into_iter().map(Into::into).collect(),
            total: listed.total,
            limit: page.limit,
            offset: page.offset,
        })))
    }

    /// Cancel a job
    ///
    /// A queued job is cancelled at once. A running import stops after the batch in
    /// progress: rows already committed stay, and its summary says where it stopped.
    /// A finished job answers 409.
    #[oai(path = "/:id", method = "delete", operation_id = "cancelJob")]
    async fn cancel(
        &self,
        auth: BearerAuth,
        /// The job's id, a ULID.
        #[oai(validator(pattern = r"^[0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{26}$"))]
        id: Path<String>,
    ) -> Result<CancelJobResponse, ApiError> {
        match record::cancel(&self.state.db, auth.user(), &job_id(&id.0)?).await {
            Ok(job) => Ok(CancelJobResponse::Accepted(Json(job.into()))),
            Err(CancelError::Finished(status)) => Err(ApiError::conflict(format!(
                "the job has already finished ({status}); nothing to cancel"
            ))),
            Err(CancelError::Store(e)) => Err(e.into()),
        }
    }
}

/// An operator also sees fanqueue's own jobs (the sweeps).
fn readers(auth: &BearerAuth) -> Readers {
    Readers {
        user: auth.user(),
        system: auth.is_operator(),
    }
}
