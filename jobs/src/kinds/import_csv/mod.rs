//! CSV fan imports: an uploaded export becomes an `import_csv` job whose result is the summary.
//!
//! The job reads the file twice, streaming both times. Pass 1 counts the records (the
//! progress total) and remembers the last row of each handle, so that duplicates are decided
//! before anything is written: the last row wins, earlier ones are skipped. Pass 2 writes in
//! batches, one transaction each, and each transaction also commits the checkpoint (last row
//! done, counters, errors). A run that dies mid-file resumes after the last committed batch
//! and ends with the summary an uninterrupted run would have given.

mod dates;
mod money;
pub mod parse;
mod text;

use std::{
    collections::HashMap,
    hash::{BuildHasher, BuildHasherDefault, DefaultHasher},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Deps, SubmitError};
use crate::{
    blobs::BlobStore,
    crm::{
        automations,
        fans::{self, import::FanRow},
    },
    db::{self, Db},
    domain::{Timestamp, UserId},
    engine::{
        EnqueueError, JobBackend, JobError, JobId, JobKind, JobRecord, NewJob, Outcome,
        RetryPolicy, RunContext, record,
    },
    idempotency::{self, Effect, Guard},
    telemetry,
};
use parse::{FanCsvReader, FileError};

/// The `import_csv` job kind.
#[derive(Clone)]
pub struct ImportCsv {
    db: Db,
    blobs: BlobStore,
    /// Rows per batch transaction: bigger is faster, smaller loses less work to a crash.
    batch_rows: usize,
}

impl ImportCsv {
    pub fn new(deps: &Deps) -> Self {
        // On PostgreSQL, a connection per import this process runs at once, for its batches
        // (db::batch_pool says why).
        let db = match &deps.db {
            Db::Postgres(pool) => Db::Postgres(db::batch_pool(pool, Self::CONCURRENCY as u32)),
            sqlite => sqlite.clone(),
        };
        ImportCsv {
            db,
            blobs: deps.blobs.clone(),
            batch_rows: deps.import_batch_rows.max(1),
        }
    }
}

impl JobKind for ImportCsv {
    /// Also the name of its queue.
    const NAME: &'static str = "import_csv";
    /// Imports retry storage and database hiccups; a file that cannot be read as a fan
    /// export fails at once.
    const RETRY: RetryPolicy = RetryPolicy {
        max_attempts: 4,
        first_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(30),
    };
    /// Imports are long and database-heavy: two at a time per worker process.
    const CONCURRENCY: usize = 2;

    async fn run(&self, job: &JobRecord, ctx: &RunContext) -> Result<Outcome, JobError> {
        self.import(job, ctx).await
    }

    /// Deletes the uploaded file once its job is final.
    async fn after_final(&self, job: &JobRecord) {
        let Ok(payload) = serde_json::from_value::<ImportPayload>(job.payload.0.clone()) else {
            return;
        };
        if let Err(e) = self.blobs.delete(&payload.blob_key).await {
            tracing::warn!(key = %payload.blob_key, error = format!("{e:#}"), "could not delete the uploaded file");
        }
    }
}

/// At most this many bad rows are listed in a summary; the rest are counted.
pub const MAX_LISTED_ERRORS: usize = 1_000;

/// What the `import_csv` job is given.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportPayload {
    pub blob_key: String,
    pub file_name: String,
    pub size_bytes: u64,
}

/// A bad row: its spreadsheet row number (the header is row 1) and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RowError {
    pub row: u64,
    pub error: String,
}

/// The job's result, under `{"summary": …}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Data records in the file.
    pub total_rows: u64,
    /// Fans that did not exist and now do.
    pub successful_inserts: u64,
    /// Fans that existed and that the file changed.
    pub updated: u64,
    /// Fans that existed and that the file matched without changing anything (a file
    /// imported again). A checkpoint written before this count existed reads it as 0.
    #[serde(default)]
    pub unchanged: u64,
    /// Rows superseded by a later row of the same handle.
    pub skipped: u64,
    /// Bad rows, at most [`MAX_LISTED_ERRORS`].
    pub errors: Vec<RowError>,
    /// All bad rows, listed or not.
    pub error_count: u64,
    /// Bad rows not listed.
    pub errors_omitted: u64,
    /// The skipped rows and why ("duplicate of row N"), at most [`MAX_LISTED_ERRORS`].
    pub skipped_rows: Vec<RowError>,
    pub cancelled: bool,
    /// When cancelled: the last row whose batch committed (later rows were not read).
    pub stopped_at_row: Option<u64>,
}

impl Summary {
    fn error(&mut self, row: u64, error: String) {
        self.error_count += 1;
        if self.errors.len() < MAX_LISTED_ERRORS {
            self.errors.push(RowError { row, error });
        } else {
            self.errors_omitted += 1;
        }
    }

    fn skip(&mut self, row: u64, reason: String) {
        self.skipped += 1;
        if self.skipped_rows.len() < MAX_LISTED_ERRORS {
            self.skipped_rows.push(RowError { row, error: reason });
        }
    }
}

/// Resume state, committed with each batch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Checkpoint {
    /// Spreadsheet row number of the last record accounted for (1: none yet).
    last_row: u64,
    /// Records accounted for: the progress `done`.
    records_done: u64,
    summary: Summary,
}

/// Stores the import job for an uploaded blob (its record and task in one transaction).
pub async fn submit(
    db: &Db,
    backend: &JobBackend,
    id: JobId,
    user: UserId,
    payload: &ImportPayload,
    key: Option<&Guard>,
) -> Result<JobId, SubmitError> {
    let job = NewJob::of::<ImportCsv>(
        id,
        user,
        serde_json::to_value(payload).expect("the payload serializes"),
    );
    let mut tx = db.begin().await?;
    backend.enqueue(&mut tx, &job).await?;
    if let Some(key) = key {
        idempotency::record(&mut tx, key, &Effect::Job(job.id.clone())).await?;
    }
    tx.commit().await.map_err(EnqueueError::Sql)?;
    backend.after_commit(db, &job).await;
    Ok(job.id)
}

/// The blob key of an upload: per user, named after its job.
pub fn blob_key(user: UserId, job: &JobId) -> String {
    format!("imports/{user}/{job}.csv")
}

fn file_error(e: FileError) -> JobError {
    match e {
        FileError::Io(e) => {
            JobError::Transient(anyhow::Error::new(e).context("reading the uploaded file"))
        }
        other => JobError::Permanent(other.to_string()),
    }
}

/// Hashes of handles to the row of their last occurrence. 12 bytes a handle instead of the
/// handle itself keeps a million-row file within a few tens of MB; two handles colliding on
/// 64 bits is a risk of about 1 in 10^7 for a million distinct handles.
type LastRows = HashMap<u64, u32>;

fn handle_hash(handle: &str) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(handle)
}

impl ImportCsv {
    /// Pass 1: counts the records and finds each handle's last row.
    async fn scan(&self, key: &str) -> Result<(u64, LastRows), JobError> {
        let blob = self.blobs.open(key).await.map_err(JobError::Transient)?;
        let mut reader = FanCsvReader::open(blob).await.map_err(file_error)?;
        let mut total = 0u64;
        let mut last = LastRows::new();
        while let Some(item) = reader.next_row().await.map_err(file_error)? {
            total += 1;
            if let Ok(row) = item {
                last.insert(handle_hash(row.handle.as_str()), row.row as u32);
            }
        }
        Ok((total, last))
    }

    /// Runs (or resumes) an import job.
    async fn import(&self, job: &JobRecord, ctx: &RunContext) -> Result<Outcome, JobError> {
        let payload: ImportPayload = serde_json::from_value(job.payload.0.clone())
            .map_err(|e| JobError::Permanent(format!("unreadable job payload: {e}")))?;
        let mut cp: Checkpoint = match &job.checkpoint {
            Some(c) => serde_json::from_value(c.0.clone())
                .map_err(|e| JobError::Permanent(format!("unreadable checkpoint: {e}")))?,
            None => Checkpoint {
                last_row: 1,
                ..Checkpoint::default()
            },
        };
        if cp.last_row > 1 {
            tracing::info!(
                resume_after_row = cp.last_row,
                "resuming import from its checkpoint"
            );
        }

        let (total, last_rows) = self.scan(&payload.blob_key).await?;
        cp.summary.total_rows = total;
        record::set_total(&self.db, &job.id, total as i64).await?;
        tracing::info!(total_rows = total, file = %payload.file_name, "import scanned");

        let mut reader = FanCsvReader::open(
            self.blobs
                .open(&payload.blob_key)
                .await
                .map_err(JobError::Transient)?,
        )
        .await
        .map_err(file_error)?;
        let mut writing = None;
        let result = self
            .write_pass(job, ctx, &mut reader, &last_rows, cp, &mut writing)
            .await;
        // A run that failed must not leave a batch committing behind it: the retry would read
        // the checkpoint before that commit and count the batch twice.
        if let Some(write) = writing {
            let _ = write.await;
        }
        result
    }

    /// Pass 2. One batch is written while the next is parsed. Checkpoints stay in file order:
    /// a batch's write starts only after the previous one committed, and carries the counters
    /// through that previous batch plus what parsing saw up to its own last row. A shutdown
    /// stops the pass after a committed batch.
    async fn write_pass<R: tokio::io::AsyncRead + Unpin + Send>(
        &self,
        job: &JobRecord,
        ctx: &RunContext,
        reader: &mut FanCsvReader<R>,
        last_rows: &LastRows,
        mut cp: Checkpoint,
        writing: &mut Option<BatchWrite>,
    ) -> Result<Outcome, JobError> {
        let mut batch = Vec::with_capacity(self.batch_rows);
        let mut pending = 0usize;
        // Whether the next batch looks its rows up before upserting (see `upsert_batch`): at
        // first when the creator has fans, then after a batch that met fans already there.
        let mut look_first = fans::import::any_fans(&self.db, job.user_id).await?;
        let mut existing = cp.summary.updated + cp.summary.unchanged;
        loop {
            let item = reader.next_row().await.map_err(file_error)?;
            if let Some(item) = item {
                let row = match &item {
                    Ok(r) => r.row,
                    Err(e) => e.row,
                };
                if row <= cp.last_row {
                    continue;
                }
                match item {
                    Err(e) => cp.summary.error(e.row, e.error),
                    Ok(fan) => match last_rows.get(&handle_hash(fan.handle.as_str())).copied() {
                        Some(last) if u64::from(last) != fan.row => {
                            cp.summary.skip(fan.row, format!("duplicate of row {last}"));
                        }
                        _ => batch.push(fan),
                    },
                }
                cp.last_row = row;
                cp.records_done += 1;
                pending += 1;
                if pending < self.batch_rows {
                    continue;
                }
            } else if pending == 0 {
                break;
            }
            if let Some(previous) = writing.take() {
                let (written, cancel) = join(previous).await?;
                if cancel {
                    return Ok(cancelled(written));
                }
                ctx.check_shutdown()?;
                let met = written.summary.updated + written.summary.unchanged;
                look_first = met > existing;
                existing = met;
                cp.summary.successful_inserts = written.summary.successful_inserts;
                cp.summary.updated = written.summary.updated;
                cp.summary.unchanged = written.summary.unchanged;
            }
            let rows = std::mem::replace(&mut batch, Vec::with_capacity(self.batch_rows));
            *writing = Some(tokio::spawn(commit_batch(
                self.db.clone(),
                job.user_id,
                job.id.clone(),
                rows,
                cp.clone(),
                look_first,
            )));
            pending = 0;
        }
        if let Some(last) = writing.take() {
            let (written, cancel) = join(last).await?;
            if cancel {
                return Ok(cancelled(written));
            }
            cp = written;
        }
        count_unwritten(&cp.summary);
        Ok(Outcome::Succeeded(json!({ "summary": cp.summary })))
    }
}

type BatchWrite = tokio::task::JoinHandle<Result<(Checkpoint, bool), JobError>>;

/// Writes `rows` and the checkpoint `cp` (to which it adds the batch's counts) in one
/// transaction. Returns that checkpoint and whether the client asked to cancel, read in the
/// same transaction.
async fn commit_batch(
    db: Db,
    user: UserId,
    job: JobId,
    rows: Vec<FanRow>,
    mut cp: Checkpoint,
    look_first: bool,
) -> Result<(Checkpoint, bool), JobError> {
    let mut tx = db.begin().await?;
    let done = fans::import::upsert_batch(&mut tx, user, &rows, look_first).await?;
    // The new fans enroll in the creator's `fan_created` automations with the batch.
    automations::triggers::created(&mut tx, user, &done.new, Timestamp::now()).await?;
    cp.summary.successful_inserts += done.inserted;
    cp.summary.updated += done.updated;
    cp.summary.unchanged += done.unchanged;
    let cancel = record::save_checkpoint(&mut tx, &job, cp.records_done as i64, &cp).await?;
    tx.commit().await?;
    telemetry::rows_imported("created", done.inserted);
    telemetry::rows_imported("updated", done.updated);
    telemetry::rows_imported("unchanged", done.unchanged);
    Ok((cp, cancel))
}

async fn join(write: BatchWrite) -> Result<(Checkpoint, bool), JobError> {
    write
        .await
        .map_err(|e| JobError::Transient(anyhow::anyhow!("a batch write died: {e}")))?
}

/// Counts the rows an import refused or skipped, once, when it ends (the written ones are
/// counted as each batch commits).
fn count_unwritten(summary: &Summary) {
    telemetry::rows_imported("refused", summary.error_count);
    telemetry::rows_imported("skipped", summary.skipped);
}

fn cancelled(mut cp: Checkpoint) -> Outcome {
    count_unwritten(&cp.summary);
    cp.summary.cancelled = true;
    cp.summary.stopped_at_row = Some(cp.last_row);
    tracing::info!(stopped_at_row = cp.last_row, "import cancelled on request");
    Outcome::Cancelled(json!({ "summary": cp.summary }))
}
