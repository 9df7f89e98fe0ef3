//! The monitoring route and readiness while PostgreSQL (a server of the test's own) is
//! stopped and started again, without restarting fanqueue.

use std::{path::PathBuf, process::Command, time::Duration};

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{AppProcess, JWT_SECRET, eventually};

/// A PostgreSQL server of the test's own, on a free port, in a temp directory.
struct OwnPostgres {
    dir: tempfile::TempDir,
    port: u16,
    bin: PathBuf,
}

fn as_postgres(bin: &std::path::Path, args: &[&str]) -> std::process::Output {
    let root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    let out = if root {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin)
            .args(args)
            .output()
    } else {
        Command::new(bin).args(args).output()
    }
    .expect("a PostgreSQL binary runs");
    assert!(
        out.status.success(),
        "{} {args:?}: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl OwnPostgres {
    fn start() -> OwnPostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's binaries in /usr/lib/postgresql (scripts/test installs them)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("an initdb");
        let dir = tempfile::tempdir().unwrap();
        let _ = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(dir.path())
            .status();
        let port = crate::helpers::free_port();
        let data = dir.path().join("data");
        as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
            ],
        );
        let pg = OwnPostgres { dir, port, bin };
        pg.up();
        pg
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn up(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", &self.data(), "-o", &opts, "-l", &log, "-w", "start"],
        );
    }

    fn down(&self) {
        as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .output();
    }
}

async fn get(client: &reqwest::Client, url: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut req = client.get(url).timeout(Duration::from_secs(10));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("the API answers");
    let status = resp.status();
    (status, resp.json().await.expect("a JSON body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_is_unhealthy_with_503_while_postgres_is_down_and_healthy_again_after() {
    let pg = OwnPostgres::start();
    let dir = tempfile::tempdir().unwrap();
    let url = pg.url();
    let api = AppProcess::spawn(
        &["serve"],
        &[("DATABASE_URL", &url), ("JWT_SECRET", JWT_SECRET)],
        dir.path(),
    );
    let keys = fanqueue::auth::JwtKeys::new(&secrecy::SecretString::from(JWT_SECRET));
    let op = keys.issue_as(
        fanqueue_jobs::domain::UserId(1),
        fanqueue::auth::Role::Operator,
        Duration::from_secs(600),
    );
    let creator = keys.issue(fanqueue_jobs::domain::UserId(1), Duration::from_secs(600));
    let client = reqwest::Client::new();
    let monitoring = format!("{}/api/monitoring/onlyfans", api.address);

    let (status, body) = get(&client, &monitoring, Some(&op)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "healthy", "{body}");
    assert_eq!(body["components"]["database"]["status"], "healthy");
    assert!(
        body["components"]["database"]["latencyMs"]
            .as_f64()
            .unwrap()
            >= 0.0
    );
    assert_eq!(body["components"]["sqs"]["dlqCount"], 0);
    assert_eq!(body["components"]["rateLimiter"]["enabled"], true);
    let (status, _) = get(&client, &monitoring, Some(&creator)).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a creator's token does not see the system"
    );
    let (status, _) = get(&client, &format!("{}/readyz", api.address), None).await;
    assert_eq!(status, StatusCode::OK);

    pg.down();
    let (status, body) = get(&client, &monitoring, Some(&op)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "unhealthy", "{body}");
    assert_eq!(body["components"]["database"]["status"], "unhealthy");
    let (status, body) = get(&client, &format!("{}/readyz", api.address), None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (status, _) = get(&client, &format!("{}/healthz", api.address), None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "liveness does not depend on the database"
    );
    // The API's own routes say the database is unavailable (nothing done; retry), not 500.
    let resp = client
        .get(format!("{}/api/crm/fans", api.address))
        .bearer_auth(&creator)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");

    pg.up();
    let (within, every) = (Duration::from_secs(30), Duration::from_millis(300));
    eventually(
        "healthy after PostgreSQL came back",
        within,
        every,
        || async {
            let (status, body) = get(&client, &monitoring, Some(&op)).await;
            if status == StatusCode::OK && body["status"] == "healthy" {
                Ok(())
            } else {
                Err(format!("{status}: {body}"))
            }
        },
    )
    .await;
    let (status, _) = get(&client, &format!("{}/readyz", api.address), None).await;
    assert_eq!(status, StatusCode::OK);
}
