//! The binary as a user runs it: no settings at all, then `token`, then a request.

use std::process::Command;

use reqwest::StatusCode;

use crate::helpers::{AppProcess, run_fanqueue};

/// Runs `fanqueue args…` in `dir` with only `env` set; asserts success, returns stdout.
fn fanqueue(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = run_fanqueue(dir, args, env);
    assert!(
        out.status.success(),
        "fanqueue {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[tokio::test]
async fn with_nothing_configured_the_binary_serves_sqlite_and_its_token_works() {
    let dir = tempfile::tempdir().unwrap();
    let server = AppProcess::spawn(&["all"], &[], dir.path());
    assert!(
        dir.path().join("data/fanqueue.db").exists(),
        "the SQLite file lives in ./data"
    );
    assert!(
        dir.path().join("data/jwt_secret").exists(),
        "the generated secret is kept in ./data"
    );

    let token = fanqueue(dir.path(), &["token", "--user-id", "1"], &[])
        .trim()
        .to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");

    let resp = reqwest::Client::new()
        .get(format!("{}/api/crm/fans", server.address))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let page: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(page["items"], serde_json::json!([]));

    // `fanqueue import` uploads the SPEC's sample, follows the job and prints the summary;
    // the same file again adds no fan and changes none (its rows count as unchanged).
    let fixture = format!(
        "{}/tests/fixtures/onlyfans_export.csv",
        env!("CARGO_MANIFEST_DIR")
    );
    for (inserted, updated, unchanged) in [(2, 0, 0), (0, 0, 2)] {
        let out = fanqueue(
            dir.path(),
            &["import", &fixture],
            &[
                ("FANQUEUE_URL", &server.address),
                ("FANQUEUE_TOKEN", &token),
            ],
        );
        let result: serde_json::Value = serde_json::from_str(&out).expect("the summary as JSON");
        let s = &result["summary"];
        assert_eq!(s["totalRows"], 2);
        assert_eq!(
            (
                s["successfulInserts"].as_u64(),
                s["updated"].as_u64(),
                s["unchanged"].as_u64()
            ),
            (Some(inserted), Some(updated), Some(unchanged))
        );
    }
    let page: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/crm/fans", server.address))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["total"], 2);
}

#[test]
fn migrate_applies_once_and_again_without_harm() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let out = fanqueue(dir.path(), &["migrate"], &[]);
        assert_eq!(out.trim(), "migrations applied (sqlite, jobs on sqlite)");
    }
}

#[test]
fn help_lists_every_setting() {
    let out = Command::new(env!("CARGO_BIN_EXE_fanqueue"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for var in [
        "DATABASE_URL",
        "LISTEN_ADDR",
        "JWT_SECRET",
        "REDIS_URL",
        "SQS_QUEUE_URL",
        "SQS_DLQ_URL",
        "AWS_ENDPOINT_URL",
        "S3_BUCKET",
        "JOB_BACKEND",
        "IMPORT_MAX_BYTES",
        "IMPORTS_PER_HOUR",
        "FANQUEUE_TOKEN",
        "PLATFORM_API_URL",
        "RATE_LIMITER_ENABLED",
        "DELIVERY_RATE_PER_MINUTE",
        "PLATFORM_TIMEOUT_MS",
        "DELIVERY_MAX_ATTEMPTS",
        "DISPATCH_CONCURRENCY",
    ] {
        assert!(help.contains(var), "--help does not mention {var}");
    }
    for cmd in [
        "serve",
        "worker",
        "dispatch",
        "all",
        "migrate",
        "token",
        "import",
        "platform-sim",
    ] {
        assert!(help.contains(cmd), "--help does not list {cmd}");
    }
}
