//! Our migrations and apalis's live side by side: a fresh database and one migrated by an
//! earlier release (CRM tables only) both end up with everything, data intact.

use fanqueue_jobs::{db::Db, engine::JobBackend};

use crate::helpers::{Backend, TestDb};

async fn table_exists(db: &Db, table: &str) -> bool {
    match db {
        Db::Postgres(pool) => {
            sqlx::query_as::<_, (bool,)>("SELECT to_regclass($1) IS NOT NULL")
                .bind(table)
                .fetch_one(pool)
                .await
                .unwrap()
                .0
        }
        Db::Sqlite(pool) => {
            sqlx::query_as::<_, (i64,)>(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = $1",
            )
            .bind(table)
            .fetch_one(pool)
            .await
            .unwrap()
            .0 == 1
        }
    }
}

async fn migrate_all(db: &Db) {
    db.migrate().await.expect("our migrations");
    let queue = JobBackend::connect(None, db, None, "unused").await.unwrap();
    queue.migrate().await.expect("apalis migrations");
}

async fn assert_fully_migrated(db: &Db, backend: Backend) {
    for table in [
        "fans",
        "conversations",
        "messages",
        "campaigns",
        "job_records",
    ] {
        assert!(table_exists(db, table).await, "{table} exists");
    }
    let apalis = if backend == Backend::Postgres {
        "apalis.jobs"
    } else {
        "Jobs"
    };
    assert!(table_exists(db, apalis).await, "{apalis} exists");
    if let Db::Postgres(pool) = db {
        // The job backend's start replaces apalis's SQL fetch with a PL/pgSQL one.
        let (language,): (String,) = sqlx::query_as(
            "SELECT l.lanname::text FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
             WHERE p.oid = 'apalis.get_jobs(text, text, integer)'::regprocedure",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(language, "plpgsql");
    }
}

async fn fresh_database_migrates_twice(backend: Backend) {
    let (_guard, url) = TestDb::create(backend).await;
    let db = Db::connect(&url).await.unwrap();
    migrate_all(&db).await;
    migrate_all(&db).await; // and again, as every process start does
    assert_fully_migrated(&db, backend).await;
}

async fn database_of_an_earlier_release_upgrades_and_keeps_its_rows(backend: Backend) {
    let (_guard, url) = TestDb::create(backend).await;
    let db = Db::connect(&url).await.unwrap();
    // What the first release applied: 0001 only.
    let folder = if backend == Backend::Postgres {
        "postgres"
    } else {
        "sqlite"
    };
    let old = tempfile::tempdir().unwrap();
    std::fs::copy(
        format!(
            "{}/migrations/{folder}/0001_crm.sql",
            env!("CARGO_MANIFEST_DIR")
        ),
        old.path().join("0001_crm.sql"),
    )
    .unwrap();
    let first_release = sqlx::migrate::Migrator::new(old.path()).await.unwrap();
    match &db {
        Db::Postgres(pool) => first_release.run(pool).await.unwrap(),
        Db::Sqlite(pool) => first_release.run(pool).await.unwrap(),
    }
    assert!(!table_exists(&db, "job_records").await);
    let insert = "INSERT INTO fans (user_id, platform, handle, tags, value_cents, created_at, updated_at)
                  VALUES (1, 'onlyfans', '@kept', '[]', 5, '2025-01-01T00:00:00.000000Z', '2025-01-01T00:00:00.000000Z')";
    match &db {
        Db::Postgres(pool) => sqlx::query(insert).execute(pool).await.map(|_| ()),
        Db::Sqlite(pool) => sqlx::query(insert).execute(pool).await.map(|_| ()),
    }
    .unwrap();

    migrate_all(&db).await;
    assert_fully_migrated(&db, backend).await;
    let fan = fanqueue_jobs::crm::fans::get(
        &db,
        fanqueue_jobs::domain::UserId(1),
        fanqueue_jobs::domain::FanId(1),
    )
    .await
    .unwrap();
    assert_eq!((fan.handle.as_str(), fan.value_cents), ("@kept", 5));
}

#[tokio::test]
async fn a_fresh_sqlite_database_migrates() {
    fresh_database_migrates_twice(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_fresh_postgres_database_migrates() {
    fresh_database_migrates_twice(Backend::Postgres).await;
}

#[tokio::test]
async fn an_upgraded_sqlite_database_migrates_and_keeps_its_rows() {
    database_of_an_earlier_release_upgrades_and_keeps_its_rows(Backend::Sqlite).await;
}

#[tokio::test]
async fn an_upgraded_postgres_database_migrates_and_keeps_its_rows() {
    database_of_an_earlier_release_upgrades_and_keeps_its_rows(Backend::Postgres).await;
}
