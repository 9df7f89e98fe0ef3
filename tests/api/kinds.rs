//! The recipe for a job kind holds: the one list (`job_kinds![…]`) decides which role runs a
//! kind and what `GET /api/jobs` filters on. Every kind runs in exactly one role (`worker` for
//! the kinds clients store, `sweep` for the scheduled ones), can be filtered on, and the API
//! document names exactly those kinds.

use fanqueue_jobs::runtime::Kind;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{AppProcess, Backend, JWT_SECRET, TestDb, json_of};

/// The kinds a process says it runs, from its "workers running" line.
async fn kinds_run_by(process: &AppProcess) -> Vec<String> {
    let line = process
        .wait_for_log("workers running", std::time::Duration::from_secs(10))
        .await;
    let kinds = line["fields"]["kinds"]
        .as_str()
        .unwrap_or_else(|| panic!("the line names its kinds: {line:?}"));
    kinds
        .trim_matches(|c| c == '[' || c == ']')
        .split(", ")
        .map(|k| k.trim_matches('"').to_owned())
        .filter(|k| !k.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listed_kind_runs_in_one_role_and_is_filterable_on_the_jobs_route() {
    let (_db, url) = TestDb::create(Backend::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("JWT_SECRET", JWT_SECRET),
        ("DATA_DIR", data.as_str()),
    ];
    let api = AppProcess::spawn(&["serve"], &env, dir.path());
    let worker = AppProcess::spawn_until(&["worker"], &env, dir.path(), "workers running");
    let sweep = AppProcess::spawn_until(&["sweep"], &env, dir.path(), "workers running");
    let (by_worker, by_sweep) = (kinds_run_by(&worker).await, kinds_run_by(&sweep).await);
    assert!(!by_worker.is_empty() && !by_sweep.is_empty());

    let client = reqwest::Client::new();
    let token = fanqueue::auth::JwtKeys::new(&secrecy::SecretString::from(JWT_SECRET)).issue(
        fanqueue_jobs::domain::UserId(1),
        std::time::Duration::from_secs(600),
    );
    for kind in Kind::ALL {
        let name = kind.name().to_owned();
        assert!(
            by_worker.contains(&name) != by_sweep.contains(&name),
            "{name} runs in exactly one role (worker: {by_worker:?}, sweep: {by_sweep:?})"
        );
        let resp = client
            .get(format!("{}/api/jobs?kind={name}", api.address))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let page = json_of(resp, StatusCode::OK).await;
        assert!(page["items"].is_array(), "{name}: {page}");
    }
    let every: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
    let mut run: Vec<&str> = by_worker
        .iter()
        .chain(&by_sweep)
        .map(String::as_str)
        .collect();
    run.sort();
    let mut listed = every.clone();
    listed.sort();
    assert_eq!(run, listed, "the roles run every kind and no other");

    let doc: Value = client
        .get(format!("{}/openapi.json", api.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kind_enum = &doc["components"]["schemas"]["JobKind"]["enum"];
    assert_eq!(
        kind_enum,
        &serde_json::json!(every),
        "the document's kinds: {kind_enum}"
    );
}
