//! The seam with apalis, held by tests. The engine copies or leans on parts of the pinned
//! apalis crates (README, "Where the engine leans on apalis"); each test here fails when an
//! upgrade changes what one of those parts assumes, and says which file to re-read.
//!
//! - The schemas apalis's own migrations build (PostgreSQL and SQLite), compared with the
//!   snapshot our SQL was written against (`seam/apalis_*.txt`), and the columns our hand-written
//!   insert names checked against the table.
//! - The upstream source files our Rust copies or relies on, by SHA-256.

use std::{collections::BTreeMap, path::PathBuf, process::Command};

use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection, Row, SqliteConnection};

/// What a changed snapshot means, and what to re-read.
const POSTGRES_READERS: &str = "jobs/src/engine/backend.rs (enqueue_sql: INSERT INTO apalis.jobs), \
    jobs/src/engine/get_jobs.sql (apalis.get_jobs), jobs/src/engine/notify_new_jobs.sql (the \
    insert trigger), jobs/src/engine/backend.rs (HELD_TASKS_INDEX drops idx_apalis_jobs_lock_by \
    and lidx; prune_finished reads status and done_at)";

fn postgres_admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

/// Compares `actual` with the snapshot `file` (under `jobs/tests/seam/`).
fn same_as_snapshot(file: &str, actual: &str, readers: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/seam")
        .join(file);
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    let only_in = |a: &str, b: &str| -> String {
        a.lines()
            .filter(|l| !b.lines().any(|m| m == *l))
            .map(|l| format!("  {l}\n"))
            .collect()
    };
    assert!(
        expected == actual,
        "the pinned apalis builds a schema other than the one our SQL was written against.\n\
         Gone or changed:\n{}New or changed:\n{}\
         Re-read {readers}; then write the whole schema below into {}.\n{actual}",
        only_in(&expected, actual),
        only_in(actual, &expected),
        path.display()
    );
}

#[tokio::test]
async fn apalis_postgres_builds_the_schema_our_sql_was_written_against() {
    let admin = postgres_admin_url();
    let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
        panic!("PostgreSQL must be reachable at {admin} (scripts/test starts it): {e}")
    });
    let name = format!("fq_seam_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
    let schema = async {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        // apalis's migrations alone: what an upgrade would change.
        apalis_postgres::PostgresStorage::<()>::migrations()
            .run(&pool)
            .await
            .unwrap();
        let schema = postgres_schema(&pool).await;
        let columns: Vec<String> = sqlx::query_scalar(
            "SELECT column_name::text FROM information_schema.columns
             WHERE table_schema = 'apalis' AND table_name = 'jobs'",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        pool.close().await;
        (schema, columns)
    }
    .await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let (schema, columns) = schema;

    let ours = fanqueue_jobs::engine::JobBackend::enqueue_sql("a_kind", "new_jobs", "$1");
    let start = ours
        .find("INSERT INTO apalis.jobs (")
        .expect("enqueue_sql inserts apalis tasks")
        + "INSERT INTO apalis.jobs (".len();
    let end = start + ours[start..].find(')').unwrap();
    for column in ours[start..end].split(',').map(str::trim) {
        assert!(
            columns.iter().any(|c| c == column),
            "JobBackend::enqueue_sql inserts apalis.jobs.{column}, which the pinned apalis-postgres \
             no longer has (it has {columns:?})"
        );
    }
    same_as_snapshot("apalis_postgres.txt", &schema, POSTGRES_READERS);
}

/// Schema `apalis` as text: tables and their columns, indexes, functions and triggers.
async fn postgres_schema(pool: &sqlx::PgPool) -> String {
    let mut out = String::new();
    let rows = sqlx::query(
        "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text,
                COALESCE(column_default::text, '')
         FROM information_schema.columns
         WHERE table_schema = 'apalis' AND table_name <> '_sqlx_migrations'
         ORDER BY table_name, ordinal_position",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for r in rows {
        let (t, c, ty, null, default): (String, String, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        out += &format!("column {t}.{c} {ty} nullable={null} default={default}\n");
    }
    let indexes: Vec<(String,)> = sqlx::query_as(
        "SELECT indexdef::text FROM pg_indexes
         WHERE schemaname = 'apalis' AND tablename <> '_sqlx_migrations' ORDER BY indexname",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for (def,) in indexes {
        out += &format!("index {def}\n");
    }
    let functions: Vec<(String,)> = sqlx::query_as(
        "SELECT p.oid::regprocedure::text || ' returns ' || pg_get_function_result(p.oid)
         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'apalis' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for (f,) in functions {
        out += &format!("function {f}\n");
    }
    let triggers: Vec<(String,)> = sqlx::query_as(
        "SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t
         JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'apalis' AND NOT t.tgisinternal ORDER BY t.tgname",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for (t,) in triggers {
        out += &format!("trigger {t}\n");
    }
    out
}

#[tokio::test]
async fn apalis_sqlite_builds_the_schema_our_sql_was_written_against() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("seam.db").display());
    let mut conn = SqliteConnection::connect(&url).await.unwrap();
    apalis_sqlite::SqliteStorage::<()>::migrations()
        .run(&mut conn)
        .await
        .unwrap();
    let mut out = String::new();
    let objects: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT type, name, COALESCE(sql, '') FROM sqlite_master
         WHERE name NOT LIKE 'sqlite_%' AND name <> '_sqlx_migrations' ORDER BY type, name",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    for (kind, name, sql) in objects {
        let sql = sql.split_whitespace().collect::<Vec<_>>().join(" ");
        out += &format!("{kind} {name}: {sql}\n");
    }
    same_as_snapshot(
        "apalis_sqlite.txt",
        &out,
        "jobs/src/engine/backend.rs (prune_finished deletes from Jobs by status and done_at)",
    );
}

/// The upstream files our Rust copies or whose behaviour it relies on, with the SHA-256 of
/// the version it was written against.
const UPSTREAM: &[(&str, &str, &str, &str)] = &[
    (
        "jobs/src/engine/paced.rs copies its SqlxPersistence",
        "apalis-postgres",
        "src/persistence.rs",
        "397165e942cb7a185754a21bd954a31a8ed54f18b572c836247801a599542a89",
    ),
    (
        "jobs/src/engine/paced.rs drives Persisted's state machine (a fetch on every poll \
         in Ready); jobs/src/engine/closing.rs runs its poll_close",
        "apalis-core",
        "src/backend/persistence/mod.rs",
        "515ff5b07bd5723283b301842ddeac407a1e35e7788d2852fa8fde1fa0780346",
    ),
    (
        "jobs/src/engine/wake.rs: PollWith polls the strategy only to register its wakers \
         and ignores its answer",
        "apalis-core",
        "src/backend/ext/poll_strategy/poll_with.rs",
        "fe66bd51f5ae893bc502f0704ae7d28ea1bdeed30f380b6eb5337f539bd9a06c",
    ),
    (
        "jobs/src/engine/closing.rs: a shutting-down worker stops polling its backend's \
         stream until its tasks end",
        "apalis-core",
        "src/worker/call_all.rs",
        "c09d8825051d99dbd5d4e4c6e12860d28dcc9c6aae7aa15d93fcc51f845e790c",
    ),
];

/// Where cargo keeps each package's source, by name (the versions this build locked).
fn package_dirs() -> BTreeMap<String, PathBuf> {
    // This machine's packages only: the others' were never downloaded.
    let rustc = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("running rustc -vV");
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc names its host");
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &host])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo metadata");
    assert!(out.status.success(), "cargo metadata: {out:?}");
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let manifest = PathBuf::from(p["manifest_path"].as_str().unwrap());
            (
                p["name"].as_str().unwrap().to_owned(),
                manifest.parent().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn the_upstream_files_our_copies_follow_are_the_ones_they_were_written_against() {
    let dirs = package_dirs();
    let mut changed = vec![];
    for (what, package, file, expected) in UPSTREAM {
        let dir = dirs
            .get(*package)
            .unwrap_or_else(|| panic!("{package} is a dependency"));
        let bytes = std::fs::read(dir.join(file))
            .unwrap_or_else(|e| panic!("{package} has {file} ({what}): {e}"));
        let actual: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if actual != *expected {
            changed.push(format!(
                "{package} {file} is now {actual}: re-read it for {what}"
            ));
        }
    }
    assert!(
        changed.is_empty(),
        "the pinned apalis changed files our code follows; once our copies are brought in \
         line, put the new hashes in jobs/tests/seam.rs:\n{}",
        changed.join("\n")
    );
}
