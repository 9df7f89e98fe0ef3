//! The fans of an import batch, upserted in the caller's transaction (the import commits its
//! checkpoint in the same one).
//!
//! An existing fan keeps what the file leaves empty (an empty email cell does not erase a
//! known address), gains the file's tier as a tag, and is not rewritten at all when nothing
//! differs, so importing a file twice changes nothing, not even `updated_at`.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, QueryBuilder, Sqlite, SqliteConnection};

use super::blocks;
use crate::{
    db::{Db, Tx},
    domain::{Cents, Email, FanId, Handle, Line, Timestamp, UserId},
    on_db,
};

/// One fan as an export row gives it. `row` is the spreadsheet row number: the header is row
/// 1, the first data record row 2.
#[derive(Debug, Clone, PartialEq)]
pub struct FanRow {
    pub row: u64,
    pub handle: Handle,
    pub name: Option<Line>,
    pub email: Option<Email>,
    pub tier: Option<Line>,
    pub value_cents: Option<Cents>,
    pub last_seen_at: Option<DateTime<Utc>>,
}

/// The fan's tags after the import, with `$new` the row bringing the file's tags (`EXCLUDED`
/// in an upsert): the tier is added when not already there (without case).
macro_rules! merged_tags {
    (pg, $new:ident) => {
        concat!(
            "CASE WHEN ", stringify!($new), ".tags = '[]'::jsonb OR EXISTS (
                 SELECT 1 FROM jsonb_array_elements_text(f.tags) t WHERE lower(t) = lower(",
            stringify!($new), ".tags->>0))
             THEN f.tags ELSE f.tags || ", stringify!($new), ".tags END"
        )
    };
    (sqlite) => {
        "CASE WHEN excluded.tags = '[]' OR EXISTS (
             SELECT 1 FROM json_each(f.tags) t WHERE lower(t.value) = lower(json_extract(excluded.tags, '$[0]')))
         THEN f.tags ELSE json_insert(f.tags, '$[#]', json_extract(excluded.tags, '$[0]')) END"
    };
}

/// What an existing fan `f` becomes when row `$new` of the file matches it, with `$value`
/// its new `value_cents` (the file's, or the fan's own when the file has no amount for it).
macro_rules! pg_merged {
    ($new:ident, $value:literal) => {
        concat!(
            "(COALESCE(",
            stringify!($new),
            ".name, f.name), COALESCE(",
            stringify!($new),
            ".email, f.email), ",
            merged_tags!(pg, $new),
            ", ",
            $value,
            ", COALESCE(",
            stringify!($new),
            ".last_seen_at, f.last_seen_at))"
        )
    };
}

/// The rows of a PostgreSQL batch, as `u`, from the statement's arrays.
macro_rules! pg_rows {
    () => {
        "u AS (
             SELECT handle, name, email, last_seen_at, value_cents,
                    CASE WHEN tier IS NULL THEN '[]'::jsonb ELSE jsonb_build_array(tier) END AS tags
             FROM UNNEST($3::text[], $4::text[], $5::text[], $6::text[], $7::int8[], $8::timestamptz[])
                  AS u(handle, name, email, tier, value_cents, last_seen_at)
         )"
    };
}

/// The PostgreSQL upsert of the rows of `$from`, with `$value` the new `value_cents` of a
/// matched fan (the file's, or the fan's own when the file has no amount for it). Its `WHERE`
/// leaves a fan as it was when nothing differs.
macro_rules! pg_upsert {
    ($from:literal, $value:literal) => {
        concat!(
            "INSERT INTO fans AS f (user_id, platform, handle, name, email, tags, value_cents,
                                    value_source, value_at, last_seen_at, created_at, updated_at)
             SELECT $1, 'onlyfans', handle, name, email, tags, value_cents, 'import', $2,
                    last_seen_at, $2, $2
             FROM ", $from, "
             ON CONFLICT (user_id, platform, handle) DO UPDATE SET
                 name = COALESCE(EXCLUDED.name, f.name),
                 email = COALESCE(EXCLUDED.email, f.email),
                 tags = ", merged_tags!(pg, EXCLUDED), ",
                 value_cents = ", $value, ",
                 value_source = 'import',
                 value_at = EXCLUDED.value_at,
                 last_seen_at = COALESCE(EXCLUDED.last_seen_at, f.last_seen_at),
                 updated_at = EXCLUDED.updated_at
             WHERE (f.name, f.email, f.tags, f.value_cents, f.last_seen_at) IS DISTINCT FROM ",
            pg_merged!(EXCLUDED, $value), "
             RETURNING id, (xmax = 0) AS inserted"
        )
    };
}

/// A batch's upsert that first leaves out the rows that would change nothing, with
/// `$file_value` the new value as the file's row `u` gives it: a fan the file matches without
/// a difference is not even locked (the upsert alone locks it), so importing a file again
/// writes nothing. Each row looks its fan up by the unique key (the `LIMIT 1` keeps the
/// planner from hashing all of the creator's fans for every batch).
macro_rules! pg_upsert_changed {
    ($value:literal, $file_value:literal) => {
        concat!(
            "WITH ", pg_rows!(), ", todo AS (
                 SELECT u.* FROM u
                 LEFT JOIN LATERAL (
                     SELECT * FROM fans f
                     WHERE f.user_id = $1 AND f.platform = 'onlyfans' AND f.handle = u.handle LIMIT 1
                 ) f ON true
                 WHERE f.id IS NULL OR (f.name, f.email, f.tags, f.value_cents, f.last_seen_at)
                       IS DISTINCT FROM ", pg_merged!(u, $file_value), "
             ) ",
            pg_upsert!("todo", $value)
        )
    };
}

/// A batch's upsert of every row of the file (the upsert's `WHERE` still leaves unchanged
/// fans as they were, but locks them).
macro_rules! pg_upsert_all {
    ($value:literal) => {
        concat!("WITH ", pg_rows!(), " ", pg_upsert!("u", $value))
    };
}

macro_rules! sqlite_upsert_tail {
    ($value:literal) => {
        concat!(
            " ON CONFLICT (user_id, platform, handle) DO UPDATE SET
                 name = COALESCE(excluded.name, f.name),
                 email = COALESCE(excluded.email, f.email),
                 tags = ",
            merged_tags!(sqlite),
            ",
                 value_cents = ",
            $value,
            ",
                 value_source = 'import',
                 value_at = excluded.value_at,
                 last_seen_at = COALESCE(excluded.last_seen_at, f.last_seen_at),
                 updated_at = excluded.updated_at
             WHERE (f.name, f.email, f.tags, f.value_cents, f.last_seen_at) IS NOT
                   (COALESCE(excluded.name, f.name), COALESCE(excluded.email, f.email), ",
            merged_tags!(sqlite),
            ", ",
            $value,
            ", COALESCE(excluded.last_seen_at, f.last_seen_at))"
        )
    };
}

/// SQLite allows 32,766 bound values a statement; 10 a row keeps well below.
const SQLITE_ROWS_PER_STATEMENT: usize = 2_000;

/// What a batch's upsert did to its rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Upserted {
    /// Fans that did not exist.
    pub inserted: u64,
    /// Their ids (the batch's `fan_created` triggers enroll them).
    pub new: Vec<FanId>,
    /// Existing fans the file changed.
    pub updated: u64,
    /// Existing fans the file matched and left as they were.
    pub unchanged: u64,
}

/// Upserts `rows` (one handle each) for `user` in `tx` and counts the new fans into the list's
/// page index; says which rows were new, changed or left alone (a row whose upsert's `WHERE`
/// found nothing different writes nothing, and the database reports no change for it). On
/// SQLite `tx` must hold the write lock ([`Db::begin`](crate::db::Db::begin) takes it), so that
/// the existence count and the upsert see the same fans.
///
/// `look_first`: on PostgreSQL, match the rows with existing fans before the upsert, so that
/// unchanged fans are not locked either. It costs a lookup a row (about a fifth of a batch
/// of new fans), so an import asks for it only while its file meets fans that exist.
pub async fn upsert_batch(
    tx: &mut Tx,
    user: UserId,
    rows: &[FanRow],
    look_first: bool,
) -> sqlx::Result<Upserted> {
    let now = Timestamp::now();
    let (new, written) = match tx {
        Tx::Postgres(conn) => upsert_pg(conn, user, rows, now, look_first).await?,
        Tx::Sqlite(conn) => {
            // One writer at a time, and ids only grow: the new fans are those above the
            // highest id before the batch.
            let (highest,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(id), 0) FROM fans")
                .fetch_one(&mut **conn)
                .await?;
            let mut written = 0;
            for chunk in rows.chunks(SQLITE_ROWS_PER_STATEMENT) {
                written += upsert_sqlite(conn, user, chunk, now).await?;
            }
            if written > 0 {
                record_values_sqlite(conn, user, rows).await?;
            }
            let new =
                sqlx::query_as::<_, (FanId,)>("SELECT id FROM fans WHERE user_id = $1 AND id > $2")
                    .bind(user)
                    .bind(highest)
                    .fetch_all(&mut **conn)
                    .await?
                    .into_iter()
                    .map(|(id,)| id)
                    .collect::<Vec<_>>();
            (new, written)
        }
    };
    blocks::add(tx, user, &new).await?;
    let inserted = new.len() as u64;
    let updated = written.saturating_sub(inserted);
    Ok(Upserted {
        inserted,
        new,
        updated,
        unchanged: (rows.len() as u64).saturating_sub(inserted + updated),
    })
}

/// Upserts with one statement per kind of row (with or without an amount); returns the new
/// fans' ids and how many rows were written (inserted or changed: `RETURNING` gives no row for
/// a fan left as it was).
async fn upsert_pg(
    tx: &mut PgConnection,
    user: UserId,
    rows: &[FanRow],
    now: Timestamp,
    look_first: bool,
) -> sqlx::Result<(Vec<FanId>, u64)> {
    let mut inserted = vec![];
    let mut written = 0;
    for with_value in [true, false] {
        let part: Vec<&FanRow> = rows
            .iter()
            .filter(|r| r.value_cents.is_some() == with_value)
            .collect();
        if part.is_empty() {
            continue;
        }
        let flags = run_pg(tx, pg_sql(with_value, look_first), user, now, &part).await?;
        written += flags.len() as u64;
        inserted.extend(flags.into_iter().filter(|(_, new)| *new).map(|(id, _)| id));
    }
    Ok((inserted, written))
}

/// The statement of a PostgreSQL batch: rows with or without an amount, looked up first or not.
fn pg_sql(with_value: bool, look_first: bool) -> &'static str {
    match (with_value, look_first) {
        (true, true) => pg_upsert_changed!("EXCLUDED.value_cents", "u.value_cents"),
        (false, true) => pg_upsert_changed!("f.value_cents", "f.value_cents"),
        (true, false) => pg_upsert_all!("EXCLUDED.value_cents"),
        (false, false) => pg_upsert_all!("f.value_cents"),
    }
}

/// Runs a batch statement on `part`: each written fan's id and whether it is new.
async fn run_pg(
    tx: &mut PgConnection,
    sql: &'static str,
    user: UserId,
    now: Timestamp,
    part: &[&FanRow],
) -> sqlx::Result<Vec<(FanId, bool)>> {
    sqlx::query_as(sql)
        .bind(user)
        .bind(now)
        .bind(part.iter().map(|r| r.handle.as_str()).collect::<Vec<_>>())
        .bind(
            part.iter()
                .map(|r| r.name.as_ref().map(Line::as_str))
                .collect::<Vec<_>>(),
        )
        .bind(
            part.iter()
                .map(|r| r.email.as_ref().map(|e| e.as_str()))
                .collect::<Vec<_>>(),
        )
        .bind(
            part.iter()
                .map(|r| r.tier.as_ref().map(Line::as_str))
                .collect::<Vec<_>>(),
        )
        .bind(
            part.iter()
                .map(|r| r.value_cents.map_or(0, |c| c.get()))
                .collect::<Vec<_>>(),
        )
        .bind(part.iter().map(|r| r.last_seen_at).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await
}

/// Whether `user` has any fan: an import for a creator with none need not look its first
/// rows up (and the lookup's plan, made while the table looked empty, cost more than the
/// upsert alone on a first batch: BENCHMARKS.md, the import).
pub async fn any_fans(db: &Db, user: UserId) -> sqlx::Result<bool> {
    let (any,): (bool,) = on_db!(db, pool => sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM fans WHERE user_id = $1)",
    )
    .bind(user)
    .fetch_one(pool)
    .await)?;
    Ok(any)
}

/// Writes the value history and the revenue rollup of a batch just upserted on SQLite, where
/// the row triggers leave the import's rows out (migration 0011): one statement for the history
/// rows, one upsert per `(creator, day)`. A fan of the batch changed value when its value
/// differs from its last recorded one: every other writer's changes are recorded as they are
/// made, so the history's last value is the value before this batch (0 with no history).
async fn record_values_sqlite(
    tx: &mut SqliteConnection,
    user: UserId,
    rows: &[FanRow],
) -> sqlx::Result<()> {
    let (before,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(id), 0) FROM fan_value_changes")
        .fetch_one(&mut *tx)
        .await?;
    let handles =
        serde_json::Value::from(rows.iter().map(|r| r.handle.as_str()).collect::<Vec<_>>());
    sqlx::query(
        "INSERT INTO fan_value_changes (user_id, fan_id, at, value_cents, delta_cents, source)
         SELECT user_id, id, at, value_cents, delta, 'import' FROM (
             SELECT f.user_id, f.id, COALESCE(f.value_at, f.updated_at) AS at, f.value_cents,
                    f.value_cents - COALESCE((SELECT h.value_cents FROM fan_value_changes h
                                              WHERE h.fan_id = f.id ORDER BY h.id DESC LIMIT 1), 0)
                        AS delta
             FROM json_each($2) j
             CROSS JOIN fans f ON f.user_id = $1 AND f.platform = 'onlyfans' AND f.handle = j.value
             WHERE f.value_source = 'import')
         WHERE delta <> 0
         ORDER BY id",
    )
    .bind(user)
    .bind(handles.to_string())
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO revenue_days (user_id, day, revenue_cents)
         SELECT user_id, date(at), SUM(delta_cents) FROM fan_value_changes WHERE id > $1
         GROUP BY 1, 2 ORDER BY 1, 2
         ON CONFLICT (user_id, day) DO UPDATE SET revenue_cents = revenue_cents + excluded.revenue_cents",
    )
    .bind(before)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Returns how many rows were written (inserted or changed): SQLite counts no change for an
/// upsert whose `WHERE` kept the row as it was.
async fn upsert_sqlite(
    tx: &mut SqliteConnection,
    user: UserId,
    rows: &[FanRow],
    now: Timestamp,
) -> sqlx::Result<u64> {
    let mut written = 0;
    for with_value in [true, false] {
        let part: Vec<&FanRow> = rows
            .iter()
            .filter(|r| r.value_cents.is_some() == with_value)
            .collect();
        if part.is_empty() {
            continue;
        }
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO fans AS f (user_id, platform, handle, name, email, tags, value_cents,
                                    value_source, value_at, last_seen_at, created_at, updated_at) ",
        );
        q.push_values(part, |mut b, r| {
            let tags = match &r.tier {
                Some(t) => serde_json::json!([t.as_str()]).to_string(),
                None => "[]".to_owned(),
            };
            b.push_bind(user)
                .push("'onlyfans'")
                .push_bind(r.handle.as_str().to_owned())
                .push_bind(r.name.as_ref().map(|n| n.as_str().to_owned()))
                .push_bind(r.email.as_ref().map(|e| e.as_str().to_owned()))
                .push_bind(tags)
                .push_bind(r.value_cents.map_or(0, |c| c.get()))
                .push("'import'")
                .push_bind(now)
                .push_bind(r.last_seen_at.map(Timestamp))
                .push_bind(now)
                .push_bind(now);
        });
        q.push(if with_value {
            sqlite_upsert_tail!("excluded.value_cents")
        } else {
            sqlite_upsert_tail!("f.value_cents")
        });
        written += q.build().execute(&mut *tx).await?.rows_affected();
    }
    Ok(written)
}
