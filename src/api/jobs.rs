//! `/api/jobs`: every accepted heavy write is a job the client polls.

use chrono::{DateTime, Utc};
use fanqueue_jobs::{
    engine::{
        JobFilter, JobId, JobRecord, JobStatus,
        record::{self, CancelError, Readers},
    },
    kinds::{
        campaign_feed::FeedResult,
        import_csv::{RowError, Summary},
        outbound_batches::SendResult,
        sweep::SweepReport,
    },
    runtime::Kind,
};
use poem_openapi::{
    ApiResponse, Object, OpenApi, Union,
    param::{Path, Query},
    payload::Json,
};
use serde::Deserialize;

use super::{
    error::ApiError,
    rules::{Limit, Offset, page},
    state::{ApiTags, BearerAuth, State},
    words::Word,
};

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
    pub kind: Word<Kind>,
    pub status: Word<JobStatus>,
    /// Runs started so far, including one cut short by a crash.
    pub attempts: i64,
    pub progress: Progress,
    /// The job's result once it has one: its shape follows `kind`.
    #[oai(nullable)]
    pub result: Option<JobResult>,
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

/// What a job ended with, by its kind: `import_csv` an `ImportResult`, `send_message` and
/// `bulk_send` a `SendResultOut`, `campaign_feed` a `FeedResultOut`, `sweep` a
/// `SweepResultOut`. The four have no required field in common, so a value matches exactly
/// one of them.
#[derive(Debug, Union)]
#[oai(one_of)]
pub enum JobResult {
    Import(ImportResult),
    Send(SendResultOut),
    Feed(FeedResultOut),
    Sweep(SweepResultOut),
}

/// What one feed of a campaign to an audience did.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct FeedResultOut {
    /// Recipients whose message it stored (then put on the outbound queue by a `bulk_send`
    /// job).
    pub recipients_queued: i64,
    /// Recipients it skipped, an exclusion matching them.
    pub recipients_excluded: i64,
    /// The audience's size, when this feed resolved it (the campaign's first).
    #[oai(skip_serializing_if_is_none)]
    pub audience_resolved: Option<i64>,
}

impl From<FeedResult> for FeedResultOut {
    fn from(r: FeedResult) -> Self {
        FeedResultOut {
            recipients_queued: r.recipients_queued,
            recipients_excluded: r.recipients_excluded,
            audience_resolved: r.audience_resolved,
        }
    }
}

/// An import's result: `{"summary": …}`.
#[derive(Debug, Object)]
pub struct ImportResult {
    pub summary: ImportSummary,
}

/// A bad or skipped row: its spreadsheet row number (the header is row 1) and why.
#[derive(Debug, Object)]
pub struct RowErrorOut {
    pub row: u64,
    pub error: String,
}

/// What an import did with each data row; every row is counted once:
/// `successfulInserts + updated + unchanged + skipped + errorCount = totalRows`.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ImportSummary {
    /// Data records in the file.
    pub total_rows: u64,
    /// Fans that did not exist and now do.
    pub successful_inserts: u64,
    /// Fans that existed and that the file changed.
    pub updated: u64,
    /// Fans that existed and that the file left as they were (a file imported again).
    pub unchanged: u64,
    /// Rows superseded by a later row of the same handle.
    pub skipped: u64,
    /// Bad rows, at most 1,000.
    pub errors: Vec<RowErrorOut>,
    /// All bad rows, listed or not.
    pub error_count: u64,
    /// Bad rows not listed.
    pub errors_omitted: u64,
    /// The skipped rows and why (`duplicate of row N`), at most 1,000.
    pub skipped_rows: Vec<RowErrorOut>,
    /// The import was cancelled: rows after `stoppedAtRow` were not read.
    pub cancelled: bool,
    /// When cancelled: the last row whose batch committed.
    #[oai(nullable)]
    pub stopped_at_row: Option<u64>,
}

/// A send's or a campaign's result: its messages as they stood when the job had put the last
/// of them on the outbound queue.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct SendResultOut {
    /// On the outbound queue (or being delivered).
    pub queued: i64,
    /// Already delivered.
    pub sent: i64,
    /// Failed.
    pub failed: i64,
    /// Entries the queue refused during the job's last run.
    pub refused_this_run: u64,
    /// `SendMessageBatch` calls the job's last run made.
    pub send_message_batch_calls: u32,
}

/// What one sweep did.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct SweepResultOut {
    /// DLQ copies read.
    pub dlq_read: u64,
    /// Messages recorded `failed` (or given their reason) from the DLQ.
    pub dlq_recorded: u64,
    /// DLQ copies of messages already final, deleted.
    pub dlq_already_final: u64,
    /// DLQ copies put back on the queue.
    pub dlq_redriven: u64,
    /// DLQ copies that are not a message of ours, left for an operator.
    pub dlq_unreadable: u64,
    /// Messages stuck on the queue, sent to it again.
    pub stuck_requeued: u64,
    /// Messages stuck on the queue past their re-drives, failed.
    pub stuck_failed: u64,
    /// `sending` messages whose lease ran out long ago, back in their schedule.
    pub leases_reclaimed: u64,
    pub pruned_jobs: u64,
    pub pruned_tasks: u64,
    pub pruned_attempts: u64,
    pub pruned_processes: u64,
    /// Idempotency keys past their 24 hours.
    pub pruned_idempotency_keys: u64,
    /// Active campaign runs that had no feed and needed one, given one.
    pub campaign_feeds_restored: u64,
}

impl From<RowError> for RowErrorOut {
    fn from(RowError { row, error }: RowError) -> Self {
        RowErrorOut { row, error }
    }
}

impl From<Summary> for ImportSummary {
    fn from(s: Summary) -> Self {
        // Destructured whole: a field added to the engine's summary must be added here.
        let Summary {
            total_rows,
            successful_inserts,
            updated,
            unchanged,
            skipped,
            errors,
            error_count,
            errors_omitted,
            skipped_rows,
            cancelled,
            stopped_at_row,
        } = s;
        ImportSummary {
            total_rows,
            successful_inserts,
            updated,
            unchanged,
            skipped,
            errors: errors.into_iter().map(Into::into).collect(),
            error_count,
            errors_omitted,
            skipped_rows: skipped_rows.into_iter().map(Into::into).collect(),
            cancelled,
            stopped_at_row,
        }
    }
}

impl From<SendResult> for SendResultOut {
    fn from(r: SendResult) -> Self {
        let SendResult {
            queued,
            sent,
            failed,
            refused_this_run,
            send_message_batch_calls,
        } = r;
        SendResultOut {
            queued,
            sent,
            failed,
            refused_this_run,
            send_message_batch_calls,
        }
    }
}

impl From<SweepReport> for SweepResultOut {
    fn from(r: SweepReport) -> Self {
        let SweepReport {
            dlq_read,
            dlq_recorded,
            dlq_already_final,
            dlq_redriven,
            dlq_unreadable,
            stuck_requeued,
            stuck_failed,
            leases_reclaimed,
            pruned_jobs,
            pruned_tasks,
            pruned_attempts,
            pruned_processes,
            pruned_idempotency_keys,
            campaign_feeds_restored,
        } = r;
        SweepResultOut {
            dlq_read,
            dlq_recorded,
            dlq_already_final,
            dlq_redriven,
            dlq_unreadable,
            stuck_requeued,
            stuck_failed,
            leases_reclaimed,
            pruned_jobs,
            pruned_tasks,
            pruned_attempts,
            pruned_processes,
            pruned_idempotency_keys,
            campaign_feeds_restored,
        }
    }
}

/// The engine's form of an import's result.
#[derive(Deserialize)]
struct StoredImport {
    summary: Summary,
}

/// An import's summary as stored in its result (`{"summary": …}`).
pub fn import_summary(result: serde_json::Value) -> Result<ImportSummary, ApiError> {
    serde_json::from_value::<StoredImport>(result)
        .map(|r| r.summary.into())
        .map_err(|e| {
            ApiError::internal(anyhow::Error::new(e).context("reading an import's summary"))
        })
}

impl JobResult {
    /// Reads a stored result by the job's kind. Every result is written by its kind from the
    /// types read here, so a result that does not read is a bug worth a 500, not a guess.
    fn of(kind: Kind, result: serde_json::Value) -> Result<JobResult, ApiError> {
        let unreadable = |e: serde_json::Error| {
            ApiError::internal(
                anyhow::Error::new(e).context(format!("reading a {kind} job's result")),
            )
        };
        Ok(match kind {
            Kind::ImportCsv => JobResult::Import(ImportResult {
                summary: import_summary(result)?,
            }),
            Kind::SendMessage | Kind::BulkSend => JobResult::Send(
                serde_json::from_value::<SendResult>(result)
                    .map_err(unreadable)?
                    .into(),
            ),
            Kind::CampaignFeed => JobResult::Feed(
                serde_json::from_value::<FeedResult>(result)
                    .map_err(unreadable)?
                    .into(),
            ),
            Kind::Sweep => JobResult::Sweep(
                serde_json::from_value::<SweepReport>(result)
                    .map_err(unreadable)?
                    .into(),
            ),
        })
    }
}

impl TryFrom<JobRecord> for JobOut {
    type Error = ApiError;

    fn try_from(j: JobRecord) -> Result<Self, ApiError> {
        let kind = Kind::parse(&j.kind).map_err(|e| ApiError::internal(e.into()))?;
        Ok(JobOut {
            id: j.id.0,
            kind: Word(kind),
            status: Word(j.status),
            attempts: j.attempts,
            progress: Progress {
                done: j.progress_done,
                total: j.progress_total,
            },
            result: j.result.map(|r| JobResult::of(kind, r.0)).transpose()?,
            error: j.error,
            cancel_requested: j.cancel_requested,
            created_at: j.created_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
        })
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
        Ok(GetJobResponse::Ok(Json(job.try_into()?)))
    }

    /// List jobs
    ///
    /// The caller's jobs, newest first, optionally of one `kind` and one `status`.
    #[oai(path = "/", method = "get", operation_id = "listJobs")]
    async fn list(
        &self,
        auth: BearerAuth,
        /// Only jobs of this kind.
        kind: Query<Option<Word<Kind>>>,
        /// Only jobs in this status.
        status: Query<Option<Word<JobStatus>>>,
        /// Items per page, 1 to 200 (default 50).
        limit: Query<Option<Limit>>,
        /// Items to skip (default 0).
        offset: Query<Option<Offset>>,
    ) -> Result<ListJobsResponse, ApiError> {
        let page = page(limit.0, offset.0);
        let filter = JobFilter {
            kind: kind.0.map(|k| k.0.name()),
            status: status.0.map(|s| s.0),
        };
        let listed = record::list(&self.state.db, readers(&auth), &filter, page).await?;
        Ok(ListJobsResponse::Ok(Json(JobPage {
            items: listed
                .items
                .into_iter()
                .map(JobOut::try_from)
                .collect::<Result<_, _>>()?,
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
            Ok(job) => Ok(CancelJobResponse::Accepted(Json(job.try_into()?))),
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
