//! Blob storage for uploaded CSV files: the upload handler stores the file here, and the
//! import job streams it back and deletes it once it has been read. Two backends: a local
//! directory (single-node and dev setups) and S3 (several workers sharing one bucket).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
use tokio::io::AsyncRead;

/// A dead S3 endpoint should fail a request quickly rather than hang it. Only the connect
/// phase is bounded: read/operation timeouts would cut off large but healthy transfers, and
/// the SDK's stalled-stream protection (on by default) already catches transfers that stop.
const S3_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Bound on the whole startup check in [`BlobStore::s3`] (config, credentials, HeadBucket,
/// CreateBucket, retries), so a misconfigured endpoint fails at startup instead of hanging it.
const S3_STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Where uploaded files live until their import job has read them.
#[derive(Clone, Debug)]
pub enum BlobStore {
    Local {
        dir: PathBuf,
    },
    S3 {
        client: aws_sdk_s3::Client,
        bucket: String,
    },
}

impl BlobStore {
    /// A directory (created if missing).
    pub async fn local(dir: impl Into<PathBuf>) -> anyhow::Result<Self> {
        let dir = dir.into();
        tokio::fs::create_dir_all(&dir)
            .await
            .with_context(|| format!("creating blob directory {}", dir.display()))?;
        Ok(Self::Local { dir })
    }

    /// A bucket; `endpoint` overrides the AWS endpoint (an emulator). Region and credentials
    /// come from the usual AWS environment/config chain. Creates the bucket when it does not
    /// exist (so a fresh emulator or dev account works), and fails with a clear message naming
    /// the bucket and endpoint when S3 cannot be reached.
    pub async fn s3(bucket: &str, endpoint: Option<&str>) -> anyhow::Result<Self> {
        let connect = async {
            let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(S3_CONNECT_TIMEOUT)
                    .build(),
            );
            if let Some(url) = endpoint {
                loader = loader.endpoint_url(url);
            }
            let shared = loader.load().await;
            if shared.region().is_none() {
                bail!("no AWS region configured (set AWS_REGION or a profile region)");
            }
            // Emulators (moto, MinIO) serve buckets by path, not by virtual-host subdomain.
            let conf = aws_sdk_s3::config::Builder::from(&shared)
                .force_path_style(endpoint.is_some())
                .build();
            let client = Client::from_conf(conf);
            ensure_bucket(&client, bucket).await?;
            Ok(client)
        };
        let client = tokio::time::timeout(S3_STARTUP_TIMEOUT, connect)
            .await
            .unwrap_or_else(|_| Err(anyhow!("no answer within {S3_STARTUP_TIMEOUT:?}")))
            .with_context(|| {
                format!(
                    "cannot use S3 bucket {bucket} at {}",
                    endpoint.unwrap_or("the default AWS endpoint")
                )
            })?;
        Ok(Self::S3 {
            client,
            bucket: bucket.to_owned(),
        })
    }

    /// For logs and error messages: "local dir /x" or "s3://bucket".
    pub fn describe(&self) -> String {
        match self {
            Self::Local { dir } => format!("local dir {}", dir.display()),
            Self::S3 { bucket, .. } => format!("s3://{bucket}"),
        }
    }

    /// Stores the file at `path` under `key` without reading it into memory (S3:
    /// ByteStream::from_path, one PutObject, so at most 5 GiB). Returns its size in bytes.
    pub async fn put_file(&self, key: &str, path: &Path) -> anyhow::Result<u64> {
        check_key(key)?;
        let size = match self {
            Self::Local { dir } => put_local(dir, key, path).await?,
            Self::S3 { client, bucket } => {
                let size = tokio::fs::metadata(path)
                    .await
                    .with_context(|| format!("reading size of {} for blob {key}", path.display()))?
                    .len();
                let body = ByteStream::from_path(path)
                    .await
                    .with_context(|| format!("opening {} for blob {key}", path.display()))?;
                client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .body(body)
                    .send()
                    .await
                    .with_context(|| format!("uploading blob {key} to s3://{bucket}"))?;
                size
            }
        };
        tracing::debug!(key, size, store = %self.describe(), "stored blob");
        Ok(size)
    }

    /// Streams the blob back (never whole in memory). S3: the GetObject body converted to an
    /// AsyncRead (aws-sdk-s3's ByteStream::into_async_read()).
    pub async fn open(&self, key: &str) -> anyhow::Result<Box<dyn AsyncRead + Send + Unpin>> {
        check_key(key)?;
        match self {
            Self::Local { dir } => {
                let path = dir.join(key);
                match tokio::fs::File::open(&path).await {
                    Ok(file) => Ok(Box::new(file)),
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        bail!("blob {key} not found in {}", self.describe())
                    }
                    Err(e) => {
                        Err(e).with_context(|| format!("opening blob {key} at {}", path.display()))
                    }
                }
            }
            Self::S3 { client, bucket } => {
                match client.get_object().bucket(bucket).key(key).send().await {
                    Ok(out) => Ok(Box::new(out.body.into_async_read())),
                    Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                        bail!("blob {key} not found in s3://{bucket}")
                    }
                    Err(e) => {
                        Err(e).with_context(|| format!("downloading blob {key} from s3://{bucket}"))
                    }
                }
            }
        }
    }

    /// Removes the blob; a missing blob is not an error (deletes are retried after crashes).
    pub async fn delete(&self, key: &str) -> anyhow::Result<()> {
        check_key(key)?;
        match self {
            Self::Local { dir } => {
                let path = dir.join(key);
                match tokio::fs::remove_file(&path).await {
                    Err(e) if e.kind() != ErrorKind::NotFound => {
                        return Err(e)
                            .with_context(|| format!("deleting blob {key} at {}", path.display()));
                    }
                    _ => {}
                }
            }
            // S3 answers DeleteObject on a missing key with success, which is what we want.
            Self::S3 { client, bucket } => {
                client
                    .delete_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .with_context(|| format!("deleting blob {key} from s3://{bucket}"))?;
            }
        }
        tracing::debug!(key, store = %self.describe(), "deleted blob");
        Ok(())
    }
}

/// Keys come from the caller (`imports/<user id>/<ulid>.csv`), but are checked anyway so a
/// local key can never name a path outside the directory, and both backends accept the same keys.
fn check_key(key: &str) -> anyhow::Result<()> {
    let ok = !key.is_empty()
        && !key.starts_with('/')
        && !key.contains("..")
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b))
        // No "a//b", trailing '/' or "./": the local path and the S3 key would name different things.
        && key.split('/').all(|part| !part.is_empty() && part != ".");
    if !ok {
        bail!(
            "invalid blob key {key:?}: expected '/'-separated parts of [A-Za-z0-9._-], \
             with no leading '/' and no '..'"
        );
    }
    Ok(())
}

/// Copies into a temp file in the destination's directory (same filesystem, so the rename is
/// atomic), syncs it, then renames: a crash never leaves a partial file under the final name.
async fn put_local(dir: &Path, key: &str, src: &Path) -> anyhow::Result<u64> {
    let dest = dir.join(key);
    let (Some(parent), Some(name)) = (dest.parent(), dest.file_name()) else {
        bail!("blob key {key} has no file name");
    };
    tokio::fs::create_dir_all(parent)
        .await
        .with_context(|| format!("creating directory {} for blob {key}", parent.display()))?;
    let tmp = parent.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        uuid::Uuid::new_v4()
    ));
    let result = async {
        let size = tokio::fs::copy(src, &tmp).await.with_context(|| {
            format!(
                "copying {} to {} for blob {key}",
                src.display(),
                tmp.display()
            )
        })?;
        tokio::fs::OpenOptions::new()
            .write(true)
            .open(&tmp)
            .await
            .with_context(|| format!("reopening {} for blob {key}", tmp.display()))?
            .sync_all()
            .await
            .with_context(|| format!("syncing {} for blob {key}", tmp.display()))?;
        tokio::fs::rename(&tmp, &dest).await.with_context(|| {
            format!(
                "renaming {} to {} for blob {key}",
                tmp.display(),
                dest.display()
            )
        })?;
        anyhow::Ok(size)
    }
    .await;
    if result.is_err() {
        // Best effort: the original error is the one worth reporting.
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}

/// Makes a fresh emulator or dev account usable without a manual setup step.
async fn ensure_bucket(client: &Client, bucket: &str) -> anyhow::Result<()> {
    match client.head_bucket().bucket(bucket).send().await {
        Ok(_) => return Ok(()),
        Err(e) if e.as_service_error().is_some_and(|e| e.is_not_found()) => {}
        Err(e) => return Err(e).context("HeadBucket failed"),
    }
    let mut create = client.create_bucket().bucket(bucket);
    // us-east-1 is the default location and rejects being named as a constraint.
    if let Some(region) = client.config().region().map(|r| r.as_ref())
        && region != "us-east-1"
    {
        create = create.create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(region))
                .build(),
        );
    }
    match create.send().await {
        Ok(_) => {
            tracing::info!(bucket, "created S3 bucket");
            Ok(())
        }
        // Another worker created it between our HeadBucket and CreateBucket.
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_bucket_already_owned_by_you()) =>
        {
            Ok(())
        }
        Err(e) => Err(e).context("CreateBucket failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::io::AsyncReadExt;

    /// moto_server (`moto_server -H 127.0.0.1 -p 5055`). Run the tests with
    /// AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1.
    const EMULATOR: &str = "http://127.0.0.1:5055";

    /// Non-repeating-looking bytes, so a shifted, truncated or zero-filled copy cannot compare equal.
    fn pattern(len: usize) -> Vec<u8> {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn write_temp(dir: &Path, len: usize) -> (PathBuf, Vec<u8>) {
        let data = pattern(len);
        let path = dir.join("upload.csv");
        std::fs::write(&path, &data).unwrap();
        (path, data)
    }

    /// Reads in fixed-size chunks, the way an import job consumes the stream.
    async fn read_chunked(mut reader: Box<dyn AsyncRead + Send + Unpin>) -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut reads = 0;
        loop {
            let n = reader.read(&mut buf).await.unwrap();
            if n == 0 {
                return (out, reads);
            }
            reads += 1;
            out.extend_from_slice(&buf[..n]);
        }
    }

    async fn emulator_store() -> (BlobStore, String) {
        let bucket = format!("fq-test-{}", uuid::Uuid::new_v4());
        let store = BlobStore::s3(&bucket, Some(EMULATOR))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "S3 emulator unusable at {EMULATOR} (is moto_server running? are \
                     AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION set?): {e:#}"
                )
            });
        (store, bucket)
    }

    fn err_text<T>(r: anyhow::Result<T>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn key_validation() {
        for good in ["imports/42/01HZX3.csv", "a", "a-b_c.d/e"] {
            check_key(good).unwrap_or_else(|e| panic!("{good:?} refused: {e}"));
        }
        for bad in [
            "",
            "../x",
            "/etc/passwd",
            "a/../b",
            "a/..",
            "a//b",
            "a/",
            "./a",
            "a b",
            "a\\b",
            "é",
        ] {
            assert!(check_key(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[tokio::test]
    async fn local_roundtrip_5mb() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, data) = write_temp(tmp.path(), 5 * 1024 * 1024);
        let store = BlobStore::local(tmp.path().join("blobs/nested"))
            .await
            .unwrap();
        let key = "imports/7/01HZX3K9Q8.csv";

        let size = store.put_file(key, &src).await.unwrap();
        assert_eq!(size, data.len() as u64);
        let (back, _) = read_chunked(store.open(key).await.unwrap()).await;
        assert!(back == data, "local roundtrip differs");

        // Only the final file is left behind: the temp file was renamed, not copied.
        let names: Vec<_> = std::fs::read_dir(tmp.path().join("blobs/nested/imports/7"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["01HZX3K9Q8.csv"]);
        assert_eq!(
            store.describe(),
            format!("local dir {}", tmp.path().join("blobs/nested").display())
        );
    }

    #[tokio::test]
    async fn local_refuses_escaping_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, _) = write_temp(tmp.path(), 10);
        let store = BlobStore::local(tmp.path().join("blobs")).await.unwrap();
        for key in ["../x", "/etc/passwd"] {
            let msg = err_text(store.put_file(key, &src).await);
            assert!(msg.contains("invalid blob key"), "{key}: {msg}");
            assert!(err_text(store.open(key).await).contains("invalid blob key"));
            assert!(err_text(store.delete(key).await).contains("invalid blob key"));
        }
        assert!(!tmp.path().join("x").exists(), "wrote outside the blob dir");
    }

    #[tokio::test]
    async fn local_delete_then_open_is_not_found() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, _) = write_temp(tmp.path(), 100);
        let store = BlobStore::local(tmp.path().join("blobs")).await.unwrap();
        let key = "imports/1/a.csv";
        store.put_file(key, &src).await.unwrap();
        store.delete(key).await.unwrap();
        let msg = err_text(store.open(key).await);
        assert!(msg.contains("not found") && msg.contains(key), "{msg}");
        assert!(src.exists(), "put_file must not consume the source file");
    }

    #[tokio::test]
    async fn local_delete_missing_is_ok() {
        let tmp = tempfile::tempdir().unwrap();
        let store = BlobStore::local(tmp.path()).await.unwrap();
        store.delete("imports/1/never-stored.csv").await.unwrap();
    }

    #[tokio::test]
    async fn s3_creates_fresh_bucket() {
        let (store, bucket) = emulator_store().await;
        assert_eq!(store.describe(), format!("s3://{bucket}"));
        let BlobStore::S3 { client, .. } = &store else {
            panic!("expected an S3 store");
        };
        client
            .head_bucket()
            .bucket(&bucket)
            .send()
            .await
            .unwrap_or_else(|e| panic!("bucket {bucket} was not created: {e:?}"));
        // A second start finds the existing bucket instead of failing.
        BlobStore::s3(&bucket, Some(EMULATOR)).await.unwrap();
    }

    #[tokio::test]
    async fn s3_roundtrip_12mb_missing_and_delete() {
        let (store, _) = emulator_store().await;
        let tmp = tempfile::tempdir().unwrap();
        let (src, data) = write_temp(tmp.path(), 12 * 1024 * 1024);
        let key = "imports/42/01HZX3K9Q8.csv";

        let size = store.put_file(key, &src).await.unwrap();
        assert_eq!(size, data.len() as u64);
        let (back, reads) = read_chunked(store.open(key).await.unwrap()).await;
        assert!(reads > 1, "expected a chunked read, got {reads} read(s)");
        assert_eq!(back.len(), data.len());
        assert!(back == data, "S3 roundtrip differs");

        let missing = "imports/42/missing.csv";
        let msg = err_text(store.open(missing).await);
        assert!(msg.contains("not found") && msg.contains(missing), "{msg}");

        store.delete(key).await.unwrap();
        let msg = err_text(store.open(key).await);
        assert!(msg.contains("not found") && msg.contains(key), "{msg}");
        store.delete(key).await.unwrap();
    }

    #[tokio::test]
    async fn s3_unreachable_endpoint_fails_fast() {
        let endpoint = "http://127.0.0.1:1";
        let started = Instant::now();
        let result = tokio::time::timeout(
            Duration::from_secs(30),
            BlobStore::s3("fq-test-unreachable", Some(endpoint)),
        )
        .await
        .expect("s3() hung on an unreachable endpoint");
        let msg = err_text(result);
        assert!(msg.contains(endpoint), "{msg}");
        assert!(msg.contains("fq-test-unreachable"), "{msg}");
        eprintln!("failed after {:?}: {msg}", started.elapsed());
    }
}
