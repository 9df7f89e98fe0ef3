//! The PostgreSQL send path (one statement built from its tables' owners' parts) and the
//! portable path (the owners' functions in one transaction) make the same rows: the same
//! messages, conversations, job records, apalis task and idempotency records, and the same
//! answers. The same sends run three ways, each on a database of its own: PostgreSQL in one
//! statement, PostgreSQL through the portable path, and SQLite.

use std::{collections::HashMap, time::Duration};

use serde_json::Value;
use sqlx::{Connection, FromRow, PgConnection, Row};

use super::{NewSend, Recipient, Stored, one_statement, store_all, with_estimates};
use crate::{
    crm::{
        conversations, fans,
        messages::{Message, NewAttachment, Outgoing},
    },
    db::Db,
    domain::{Cents, Handle, HttpUrl, Platform, Tags, Text, UserId},
    engine::{JobBackend, backend::JobTask},
    idempotency::{self, Claim},
    kinds::{Backpressure, SubmitError},
    on_db,
};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Path {
    OneStatement,
    Portable,
}

/// A database of its own: a PostgreSQL database dropped at the end, or a SQLite file.
struct Scratch {
    db: Db,
    backend: JobBackend,
    drop_pg: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

/// A PostgreSQL database goes with its test, failed or not (from a thread of its own: `drop`
/// runs inside the test's runtime).
impl Drop for Scratch {
    fn drop(&mut self) {
        let Some((admin, name)) = self.drop_pg.take() else {
            return;
        };
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the cleanup");
            rt.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

impl Scratch {
    async fn new(postgres: bool) -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let (url, drop_pg) = if postgres {
            let admin = std::env::var("TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into());
            let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
                panic!("PostgreSQL must be reachable at {admin} (scripts/test starts it): {e}")
            });
            let name = format!("fq_paths_{}", uuid::Uuid::new_v4().simple());
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut conn)
                .await
                .unwrap();
            let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
            (url, Some((admin, name)))
        } else {
            (Db::embedded_url(dir.path()), None)
        };
        let db = Db::connect(&url).await.unwrap();
        db.migrate().await.unwrap();
        let backend = JobBackend::connect(None, &db, None, "unused")
            .await
            .unwrap();
        backend.migrate().await.unwrap();
        Scratch {
            db,
            backend,
            drop_pg,
            _dir: dir,
        }
    }

    /// Stores `sends` as one group, by `path`.
    async fn store(
        &self,
        path: Path,
        limit: Option<Backpressure>,
        sends: &[NewSend],
    ) -> Vec<Result<Stored, SubmitError>> {
        match (path, &self.db) {
            (Path::OneStatement, Db::Postgres(pool)) => {
                one_statement::store(&self.db, pool, &self.backend, limit, sends)
                    .await
                    .unwrap()
            }
            (Path::OneStatement, Db::Sqlite(_)) => unreachable!("SQLite has the portable path"),
            (Path::Portable, _) => {
                let stored = store_all(&self.db, &self.backend, limit, sends)
                    .await
                    .unwrap();
                with_estimates(&self.db, stored).await
            }
        }
    }
}

fn out(text: &str, priority: i64, attachment: Option<&str>) -> Outgoing {
    Outgoing {
        text: Text::parse(text, 5_000).unwrap(),
        price_cents: Cents::new(priority * 100).unwrap(),
        attachments: attachment
            .map(|url| NewAttachment {
                kind: "image".into(),
                url: HttpUrl::parse(url).unwrap(),
            })
            .into_iter()
            .collect(),
        priority,
    }
}

fn send(user: UserId, to: Recipient, out: Outgoing) -> NewSend {
    NewSend {
        user,
        to,
        out,
        key: None,
    }
}

/// What a path did, with ids of jobs named by order of appearance and times by whether set.
#[derive(Debug, PartialEq)]
struct Effects {
    answers: Vec<String>,
    messages: Vec<String>,
    conversations: Vec<String>,
    records: Vec<String>,
    tasks: Vec<String>,
    keys: Vec<String>,
}

#[derive(FromRow)]
struct RecordRow {
    id: String,
    user_id: i64,
    kind: String,
    status: String,
    payload: String,
    progress_total: Option<i64>,
    progress_done: i64,
    dispatched: bool,
    created: bool,
}

#[derive(FromRow)]
struct TaskRow {
    id: String,
    job_type: String,
    job: Vec<u8>,
    status: String,
    attempts: i64,
    max_attempts: i64,
    priority: i64,
    idempotency_key: Option<String>,
}

/// The scenario: creator 1 has fans a, b, c and a conversation with a, and one message queued
/// to b; creator 2 has fan d and a conversation with it. Then one group of sends: to a fan, a
/// reply, to another creator's fan, into another creator's conversation, a keyed send of
/// creator 2, and one past creator 1's backlog limit.
async fn effects(scratch: &Scratch, path: Path) -> Effects {
    let (one, two) = (UserId(1), UserId(2));
    let db = &scratch.db;
    let mut fan = HashMap::new();
    for (user, handle) in [(one, "a"), (one, "b"), (one, "c"), (two, "d")] {
        let new = fans::NewFan {
            platform: Platform::Onlyfans,
            handle: Handle::parse(handle).unwrap(),
            name: None,
            email: None,
            avatar_url: None,
            tags: Tags::parse::<&str>(&[]).unwrap(),
            notes: None,
            value_cents: Cents::new(0).unwrap(),
            last_seen_at: None,
        };
        fan.insert(handle, fans::create(db, user, new, None).await.unwrap().id);
    }
    let (with_a, _) = conversations::open_for_fan(db, one, fan["a"])
        .await
        .unwrap();
    let (with_d, _) = conversations::open_for_fan(db, two, fan["d"])
        .await
        .unwrap();
    let earlier = scratch
        .store(
            path,
            None,
            &[send(one, Recipient::Fan(fan["b"]), out("earlier", 5, None))],
        )
        .await;
    assert!(earlier[0].is_ok(), "{:?}", earlier[0]);

    let Claim::Run(guard) =
        idempotency::claim(db, two, "k-1", "POST /send", Duration::from_secs(60))
            .await
            .unwrap()
    else {
        panic!("a new key is the request's to run")
    };
    let mut keyed = send(two, Recipient::Fan(fan["d"]), out("keyed", 3, None));
    keyed.key = Some(guard);
    let group = [
        send(one, Recipient::Fan(fan["a"]), out("to a", 5, None)),
        send(
            one,
            Recipient::Conversation(with_a.id),
            out("reply to a", 9, Some("https://cdn.example.com/a.png")),
        ),
        send(one, Recipient::Fan(fan["d"]), out("not mine", 5, None)),
        send(
            one,
            Recipient::Conversation(with_d.id),
            out("not mine", 5, None),
        ),
        keyed,
        send(
            one,
            Recipient::Fan(fan["c"]),
            out("past the limit", 5, None),
        ),
    ];
    let limit = Backpressure {
        max_backlog: 5,
        per_minute: 10,
    };
    let answers = scratch.store(path, Some(limit), &group).await;

    let messages: Vec<(Message, Option<String>)> = on_db!(db, pool => {
        let rows = sqlx::query("SELECT * FROM messages ORDER BY id").fetch_all(pool).await.unwrap();
        rows.iter()
            .map(|r| (Message::from_row(r).unwrap(), r.try_get("job_id").unwrap()))
            .collect()
    });
    // Jobs are named by their message's order.
    let mut job_name: HashMap<String, String> = HashMap::new();
    for (m, job) in &messages {
        job_name.insert(job.clone().unwrap(), format!("job of message {}", m.id.0));
    }
    let name = |job: &str| {
        job_name
            .get(job)
            .cloned()
            .unwrap_or_else(|| format!("unknown {job}"))
    };
    let created: Vec<_> = messages.iter().map(|(m, _)| m.created_at).collect();
    assert_eq!(
        created[1], created[2],
        "a group's messages share their time"
    );

    let conversations: Vec<String> = on_db!(db, pool => {
        let rows: Vec<(i64, i64, i64, String, i64, bool)> = sqlx::query_as(
            "SELECT id, user_id, fan_id, platform, unread_count,
                    last_message_at = (SELECT MAX(created_at) FROM messages m
                                       WHERE m.conversation_id = c.id)
             FROM conversations c ORDER BY id",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        rows.into_iter().map(|r| format!("{r:?}")).collect()
    });
    let records: Vec<String> = on_db!(db, pool => {
        let rows: Vec<RecordRow> = sqlx::query_as(
            "SELECT id, user_id, kind, status, CAST(payload AS TEXT) AS payload, progress_total,
                    progress_done, dispatched_at IS NOT NULL AS dispatched,
                    created_at IS NOT NULL AS created
             FROM job_records",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        rows.into_iter()
            .map(|r| {
                let payload: Value = serde_json::from_str(&r.payload).unwrap();
                format!(
                    "{} {} {} {} {payload} {:?} {} {} {}",
                    name(&r.id), r.user_id, r.kind, r.status, r.progress_total, r.progress_done,
                    r.dispatched, r.created
                )
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    });
    let tasks: Vec<TaskRow> = match db {
        Db::Postgres(pool) => sqlx::query_as(
            "SELECT id, job_type, job, status, attempts::bigint AS attempts,
                    max_attempts::bigint AS max_attempts, priority::bigint AS priority,
                    idempotency_key
             FROM apalis.jobs ORDER BY id",
        )
        .fetch_all(pool)
        .await
        .unwrap(),
        Db::Sqlite(pool) => sqlx::query_as(
            "SELECT id, job_type, job, status, attempts, max_attempts, priority, idempotency_key
             FROM Jobs ORDER BY id",
        )
        .fetch_all(pool)
        .await
        .unwrap(),
    };
    let tasks = tasks
        .into_iter()
        .map(|t| {
            let TaskRow {
                id,
                job_type: kind,
                job,
                status,
                attempts,
                max_attempts: max,
                priority,
                idempotency_key: key,
            } = t;
            let task: JobTask = serde_json::from_slice(&job).unwrap();
            assert_eq!(
                key.as_deref(),
                Some(id.as_str()),
                "a task is keyed by its id"
            );
            let jobs: Vec<String> = task.jobs().iter().map(|j| name(&j.0)).collect();
            format!(
                "{} {kind} {jobs:?} {status} {attempts}/{max} {priority}",
                name(&id)
            )
        })
        .collect();
    let keys: Vec<String> = on_db!(db, pool => {
        let rows: Vec<(i64, String, Option<String>)> =
            sqlx::query_as("SELECT user_id, key, effect FROM idempotency_keys ORDER BY key")
                .fetch_all(pool)
                .await
                .unwrap();
        rows.into_iter().map(|r| format!("{r:?}")).collect()
    });
    Effects {
        answers: answers
            .iter()
            .map(|a| match a {
                Ok(s) => format!(
                    "stored message {} {} ahead, last delivery {:?}",
                    s.message.id.0, s.ahead, s.last_started
                ),
                Err(e) => format!("{e:?}"),
            })
            .collect(),
        messages: messages
            .iter()
            .map(|(m, job)| {
                format!(
                    "{} user {} conversation {} fan {} {} {:?} {} {:?} {} {:?} {} {:?} {:?} {} {}",
                    m.id.0,
                    m.user_id.0,
                    m.conversation_id.0,
                    m.fan_id.0,
                    m.direction.as_str(),
                    m.text,
                    m.price_cents,
                    m.attachments.0,
                    m.status.as_str(),
                    m.error,
                    m.attempts,
                    m.campaign_id.map(|c| c.0),
                    m.sent_at,
                    m.priority,
                    name(job.as_deref().unwrap()),
                )
            })
            .collect(),
        conversations,
        records,
        tasks,
        keys,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_statement_and_the_portable_path_make_the_same_rows_on_both_backends() {
    let mut seen = vec![];
    for (postgres, path) in [
        (true, Path::OneStatement),
        (true, Path::Portable),
        (false, Path::Portable),
    ] {
        let scratch = Scratch::new(postgres).await;
        seen.push(((postgres, path), effects(&scratch, path).await));
    }
    let (_, first) = &seen[0];
    assert_eq!(
        first.answers,
        [
            "stored message 2 2 ahead, last delivery None",
            "stored message 3 0 ahead, last delivery None",
            "NotFound(\"fan\")",
            "NotFound(\"conversation\")",
            "stored message 4 0 ahead, last delivery None",
            "BacklogFull { backlog: 5, max: 5, retry_after: 6s }",
        ],
        "the group's answers, in its order"
    );
    assert_eq!(first.messages.len(), 4, "{:#?}", first.messages);
    assert_eq!(first.tasks.len(), 2, "a task per group: {:#?}", first.tasks);
    assert_eq!(first.keys.len(), 1, "{:#?}", first.keys);
    assert!(first.keys[0].contains("message:4"), "{:?}", first.keys);
    for (how, effects) in &seen[1..] {
        assert_eq!(
            &effects, &first,
            "{how:?} against PostgreSQL in one statement"
        );
    }
}
