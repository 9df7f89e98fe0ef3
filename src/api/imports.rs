//! `POST /api/onlyfans/import/csv`: upload a fan export; it becomes an `import_csv` job.

use std::time::Duration;

use fanqueue_jobs::{
    domain::UserId,
    engine::{JobId, JobStatus, record},
    idempotency::Effect,
    kinds::import_csv::{self, ImportPayload},
};
use poem::{FromRequest, Request, RequestBody, web::Multipart};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ApiResponse, ExtractParamOptions, Multipart as MultipartForm,
    Object, OpenApi,
    param::Query,
    payload::{Json, Payload},
    registry::{MetaMediaType, MetaRequest, Registry},
    types::multipart::Upload,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    error::ApiError,
    idempotency,
    jobs::ImportSummary,
    state::{ApiTags, BearerAuth, State},
    words::Word,
};

pub struct ImportsApi {
    state: State,
}

impl ImportsApi {
    pub fn new(state: State) -> Self {
        ImportsApi { state }
    }
}

/// The form, for the OpenAPI document only: the route reads it with [`CsvUpload`].
#[derive(MultipartForm)]
#[allow(dead_code)]
struct CsvUploadForm {
    /// The fan export, a `.csv` file of at most 10 MB.
    file: Upload,
}

/// The uploaded file, spooled to a temporary file while its size is counted, so nothing is
/// held in memory and an oversized upload is refused as soon as it crosses the limit.
pub struct CsvUpload {
    pub file_name: String,
    pub spool: tempfile::NamedTempFile,
    pub size: u64,
}

/// Multipart framing around the file: a request may exceed the file limit by this much.
const FORM_OVERHEAD: u64 = 64 * 1024;

/// After refusing an upload early, at most this much of the rest is read and discarded, so
/// that the client (still sending) sees the answer instead of a reset connection.
const DRAIN_LIMIT: u64 = 12 * 1024 * 1024;

impl CsvUpload {
    async fn read(req: &Request, body: &mut RequestBody, max: u64) -> Result<CsvUpload, ApiError> {
        // Refused from the headers: the client should not send the body at all.
        if req
            .header("content-length")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > max + FORM_OVERHEAD)
        {
            return Err(ApiError::too_large(max));
        }
        let mut form = <Multipart as FromRequest>::from_request(req, body)
            .await
            .map_err(|e| {
                ApiError::bad_request(
                    "invalid_body",
                    format!("expected a multipart form with a `file` field: {e}"),
                )
            })?;
        let result = Self::read_form(&mut form, max).await;
        if result.is_err() {
            drain(&mut form).await;
        }
        result
    }

    async fn read_form(form: &mut Multipart, max: u64) -> Result<CsvUpload, ApiError> {
        let field = form
            .next_field()
            .await
            .map_err(|e| {
                ApiError::bad_request("invalid_body", format!("unreadable multipart form: {e}"))
            })?
            .ok_or_else(|| {
                ApiError::invalid("file", "is required (a multipart field named `file`)")
            })?;
        // Like the JSON bodies, the form refuses what it does not read.
        match field.name() {
            Some("file") => {}
            other => {
                return Err(ApiError::invalid(
                    other.unwrap_or_default(),
                    "is not a field of this form (it has only `file`)",
                ));
            }
        }
        let file_name = field.file_name().unwrap_or_default().to_owned();
        if !file_name.to_ascii_lowercase().ends_with(".csv") {
            return Err(ApiError::unsupported_media_type(format!(
                "only .csv files are imported (got {:?})",
                file_name
            )));
        }
        let spool = tempfile::NamedTempFile::new().map_err(|e| {
            ApiError::internal(anyhow::Error::new(e).context("creating the upload spool file"))
        })?;
        let mut out =
            tokio::fs::File::from_std(spool.reopen().map_err(|e| ApiError::internal(e.into()))?);
        let mut input = std::pin::pin!(field.into_async_read());
        let mut buf = vec![0u8; 64 * 1024];
        let mut size = 0u64;
        let mut head = Vec::with_capacity(8192);
        loop {
            let n = input.read(&mut buf).await.map_err(|e| {
                ApiError::bad_request("invalid_body", format!("the upload broke off: {e}"))
            })?;
            if n == 0 {
                break;
            }
            size += n as u64;
            if size > max {
                return Err(ApiError::too_large(max));
            }
            if head.len() < 8192 {
                head.extend_from_slice(&buf[..n.min(8192 - head.len())]);
            }
            out.write_all(&buf[..n]).await.map_err(|e| {
                ApiError::internal(anyhow::Error::new(e).context("spooling the upload"))
            })?;
        }
        out.flush()
            .await
            .map_err(|e| ApiError::internal(e.into()))?;
        if size == 0 {
            return Err(ApiError::invalid("file", "is empty"));
        }
        if head.contains(&0) {
            return Err(ApiError::invalid(
                "file",
                "is not a text CSV file (it holds binary data)",
            ));
        }
        Ok(CsvUpload {
            file_name,
            spool,
            size,
        })
    }
}

/// Reads and discards what is left of a refused form, up to [`DRAIN_LIMIT`].
async fn drain(form: &mut Multipart) {
    let mut left = DRAIN_LIMIT;
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(Some(field)) = form.next_field().await {
        let mut input = std::pin::pin!(field.into_async_read());
        while let Ok(n) = input.read(&mut buf).await {
            if n == 0 {
                break;
            }
            left = left.saturating_sub(n as u64);
            if left == 0 {
                return;
            }
        }
    }
}

impl<'a> ApiExtractor<'a> for CsvUpload {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        <CsvUploadForm as Payload>::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType {
                content_type: "multipart/form-data",
                schema: <CsvUploadForm as Payload>::schema_ref(),
            }],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let state = request
            .data::<State>()
            .expect("the app registers its state");
        Ok(CsvUpload::read(request, body, state.import_max_bytes).await?)
    }
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ImportAccepted {
    pub job_id: String,
    /// Poll this for progress and the summary.
    pub status_url: String,
    /// queued, or the job's status when `wait` saw it finish.
    pub status: Word<JobStatus>,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ImportFinished {
    pub job_id: String,
    pub status_url: String,
    pub status: Word<JobStatus>,
    pub summary: ImportSummary,
}

#[derive(ApiResponse)]
enum ImportResponse {
    /// With `wait`: the import finished in time; here is its summary.
    #[oai(status = 200)]
    Finished(Json<ImportFinished>),
    /// The file is stored and its import job queued; poll `statusUrl`.
    #[oai(status = 202)]
    Accepted(Json<ImportAccepted>),
}

/// Longest `wait` honoured, in seconds.
const MAX_WAIT: u64 = 60;

#[OpenApi(prefix_path = "/api/onlyfans/import", tag = "ApiTags::Imports")]
impl ImportsApi {
    /// Import fans from a CSV export
    ///
    /// Multipart field `file`, a `.csv` of at most 10 MB (413 above, 415 for another
    /// extension). Stores the file and queues an `import_csv` job: 202 with its id. With
    /// `wait=N` (at most 60) the call waits up to N seconds and answers 200 with the summary
    /// when the import finished by then (a file that cannot be imported then answers 400).
    /// 10 imports per hour per user.
    #[oai(path = "/csv", method = "post", operation_id = "importCsv")]
    async fn import_csv(
        &self,
        auth: BearerAuth,
        /// Seconds to wait for the import to finish before answering, at most 60.
        #[oai(validator(minimum(value = "0"), maximum(value = "60")))]
        wait: Query<Option<u64>>,
        upload: CsvUpload,
        req: &Request,
    ) -> Result<ImportResponse, ApiError> {
        let user = auth.user();
        let wait = wait.0.unwrap_or(0);
        if wait > MAX_WAIT {
            return Err(ApiError::invalid(
                "wait",
                format!("must be at most {MAX_WAIT} seconds"),
            ));
        }
        let (id, mut status) = match idempotency::committed_as(req, Effect::job)? {
            // The first attempt stored its job and died before answering: answer for it.
            Some(id) => {
                let job = record::get(&self.state.db, user, &id).await?;
                (id, job.status)
            }
            None => (self.store(req, user, upload).await?, JobStatus::Queued),
        };
        let status_url = format!("/api/jobs/{id}");
        if wait > 0 {
            let job =
                record::wait_final(&self.state.db, user, &id, Duration::from_secs(wait)).await?;
            match (job.status, job.result) {
                (JobStatus::Failed, _) => {
                    return Err(ApiError::bad_request(
                        "import_failed",
                        job.error.unwrap_or_else(|| "the import failed".into()),
                    ));
                }
                (status, Some(result)) if status.is_final() => {
                    return Ok(ImportResponse::Finished(Json(ImportFinished {
                        job_id: id.0,
                        status_url,
                        status: Word(status),
                        summary: super::jobs::import_summary(result.0)?,
                    })));
                }
                (other, _) => status = other,
            }
        }
        Ok(ImportResponse::Accepted(Json(ImportAccepted {
            job_id: id.0,
            status_url,
            status: Word(status),
        })))
    }
}

impl ImportsApi {
    /// Stores the upload and its `import_csv` job (recorded on the request's key, if any);
    /// returns the job's id. Counts against the user's import quota.
    async fn store(
        &self,
        req: &Request,
        user: UserId,
        upload: CsvUpload,
    ) -> Result<JobId, ApiError> {
        super::state::charge(&self.state, self.state.quotas.imports, user).await?;
        let id = JobId::generate();
        let key = import_csv::blob_key(user, &id);
        self.state
            .blobs
            .put_file(&key, upload.spool.path())
            .await
            .map_err(|e| ApiError::internal(e.context("storing the uploaded file")))?;
        let payload = ImportPayload {
            blob_key: key.clone(),
            file_name: upload.file_name,
            size_bytes: upload.size,
        };
        if let Err(e) = import_csv::submit(
            &self.state.db,
            &self.state.jobs,
            id.clone(),
            user,
            &payload,
            idempotency::guard(req).as_ref(),
        )
        .await
        {
            let _ = self.state.blobs.delete(&key).await;
            return Err(super::messages::submit_error(e));
        }
        tracing::info!(job_id = %id, bytes = payload.size_bytes, "import accepted");
        Ok(id)
    }
}
