//! `fanqueue import FILE`: upload a CSV export to a running server, follow its job with a
//! progress bar, print the summary.

use std::{path::Path, time::Duration};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::{Body, StatusCode, multipart};
use serde_json::Value;

pub async fn import(server: &str, token: &str, file: &Path) -> anyhow::Result<Value> {
    let server = server.trim_end_matches('/');
    let client = reqwest::Client::new();
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .context("the file needs a name ending in .csv")?
        .to_owned();
    let handle = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("opening {}", file.display()))?;
    let size = handle.metadata().await?.len();
    // Streamed from disk: a large export is never read into memory here either.
    let part = multipart::Part::stream_with_length(Body::from(handle), size)
        .file_name(name)
        .mime_str("text/csv")?;
    let resp = client
        .post(format!("{server}/api/onlyfans/import/csv"))
        .bearer_auth(token)
        .multipart(multipart::Form::new().part("file", part))
        .send()
        .await
        .with_context(|| format!("uploading to {server}"))?;
    let status = resp.status();
    let body: Value = resp.json().await.context("reading the server's answer")?;
    if status != StatusCode::ACCEPTED {
        bail!(
            "upload refused ({status}): {}",
            body["error"]["message"]
                .as_str()
                .unwrap_or("no reason given")
        );
    }
    let job_url = format!(
        "{server}{}",
        body["statusUrl"]
            .as_str()
            .context("no statusUrl in the answer")?
    );

    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:>10} [{bar:40}] {pos}/{len} rows ({per_sec}, eta {eta})",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    loop {
        let job: Value = client
            .get(&job_url)
            .bearer_auth(token)
            .send()
            .await
            .context("polling the job")?
            .error_for_status()
            .context("polling the job")?
            .json()
            .await?;
        if let Some(total) = job["progress"]["total"].as_u64() {
            bar.set_length(total);
        }
        bar.set_position(job["progress"]["done"].as_u64().unwrap_or(0));
        let status = job["status"].as_str().unwrap_or("unknown").to_owned();
        bar.set_message(status.clone());
        match status.as_str() {
            "succeeded" | "cancelled" => {
                bar.finish();
                return Ok(job["result"].clone());
            }
            "failed" => {
                bar.abandon();
                bail!(
                    "the import failed: {}",
                    job["error"].as_str().unwrap_or("no reason given")
                );
            }
            _ => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}
