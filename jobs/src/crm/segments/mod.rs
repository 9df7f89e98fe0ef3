//! Segments: a creator's saved audiences, each a name and a [`Filter`]. The only module that
//! writes `segments`; it also reads the fans a filter matches (a count, a sample, a page of
//! the fan list), through the one condition [`Filter::to_sql`] writes.

pub mod filter;

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, types::Json};

pub use self::filter::{Condition, Dialect, Filter, Param, SpentInLastDays};
use super::fans::{self, Fan, FanFilter};
use crate::{
    db::{Db, Listed, Page, StoreError, StoreResult, Tx},
    domain::{FanId, Line, SegmentId, Timestamp, UserId},
    idempotency::{self, Effect, Guard},
    on_db, on_tx,
};

pub const NAME_MAX: usize = 200;
/// The fans a preview shows.
pub const SAMPLE: i64 = 20;

/// A segment as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Segment {
    pub id: SegmentId,
    pub user_id: UserId,
    pub name: String,
    pub filter: Json<Filter>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// How many fans a filter matches now, and some of them (newest first).
#[derive(Debug, Clone)]
pub struct Preview {
    pub count: i64,
    pub sample: Vec<Fan>,
}

/// Saves a segment of `user`; a keyed request records it on its key in the same transaction.
pub async fn create(
    db: &Db,
    user: UserId,
    name: Line,
    filter: Filter,
    key: Option<&Guard>,
) -> StoreResult<Segment> {
    let now = Timestamp::now();
    let mut tx = db.begin().await?;
    let segment = on_tx!(&mut tx, conn => sqlx::query_as::<_, Segment>(
        "INSERT INTO segments (user_id, name, filter, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $4) RETURNING *",
    )
    .bind(user)
    .bind(name.as_str())
    .bind(Json(&filter))
    .bind(now)
    .fetch_one(&mut **conn)
    .await)?;
    if let Some(key) = key {
        idempotency::record(&mut tx, key, &Effect::Segment(segment.id)).await?;
    }
    tx.commit().await?;
    Ok(segment)
}

pub async fn get(db: &Db, user: UserId, id: SegmentId) -> StoreResult<Segment> {
    on_db!(db, pool => sqlx::query_as::<_, Segment>(
        "SELECT * FROM segments WHERE id = $1 AND user_id = $2",
    )
    .bind(id)
    .bind(user)
    .fetch_optional(pool)
    .await)?
    .ok_or(StoreError::NotFound("segment"))
}

/// One page of `user`'s segments, newest first.
pub async fn list(db: &Db, user: UserId, page: Page) -> StoreResult<Listed<Segment>> {
    on_db!(db, pool => {
        let items = sqlx::query_as::<_, Segment>(
            "SELECT * FROM segments WHERE user_id = $1 ORDER BY id DESC LIMIT $2 OFFSET $3",
        )
        .bind(user)
        .bind(page.limit)
        .bind(page.offset)
        .fetch_all(pool)
        .await?;
        let (total,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM segments WHERE user_id = $1")
            .bind(user)
            .fetch_one(pool)
            .await?;
        Ok(Listed { items, total })
    })
}

/// Renames a segment and/or replaces its filter (`None` leaves each as it is).
pub async fn update(
    db: &Db,
    user: UserId,
    id: SegmentId,
    name: Option<Line>,
    filter: Option<Filter>,
) -> StoreResult<Segment> {
    on_db!(db, pool => sqlx::query_as::<_, Segment>(
        "UPDATE segments SET name = COALESCE($3, name), filter = COALESCE($4, filter),
             updated_at = $5
         WHERE id = $1 AND user_id = $2 RETURNING *",
    )
    .bind(id)
    .bind(user)
    .bind(name.as_ref().map(Line::as_str))
    .bind(filter.as_ref().map(Json))
    .bind(Timestamp::now())
    .fetch_optional(pool)
    .await)?
    .ok_or(StoreError::NotFound("segment"))
}

pub async fn delete(db: &Db, user: UserId, id: SegmentId) -> StoreResult<()> {
    let deleted = on_db!(db, pool => sqlx::query("DELETE FROM segments WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(user)
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))?;
    if deleted == 0 {
        return Err(StoreError::NotFound("segment"));
    }
    Ok(())
}

/// The dialect a filter's SQL is written in for `db`.
pub fn dialect(db: &Db) -> Dialect {
    match db {
        Db::Postgres(_) => Dialect::Postgres,
        Db::Sqlite(_) => Dialect::Sqlite,
    }
}

/// The dialect a filter's SQL is written in for `tx`'s database.
pub fn tx_dialect(tx: &Tx) -> Dialect {
    match tx {
        Tx::Postgres(_) => Dialect::Postgres,
        Tx::Sqlite(_) => Dialect::Sqlite,
    }
}

/// Binds `$1` (the user) and then the condition's parameters, in order. (The SQL these bind
/// to is [`Filter::to_sql`]'s fixed fragments: input only ever reaches it as a parameter.)
macro_rules! bind_condition {
    ($query:expr, $user:expr, $params:expr) => {{
        let mut q = $query.bind($user);
        for p in $params {
            q = match p {
                $crate::crm::segments::Param::Int(v) => q.bind(*v),
                $crate::crm::segments::Param::Text(v) => q.bind(v.as_str()),
                $crate::crm::segments::Param::At(v) => q.bind(*v),
            };
        }
        q
    }};
}
pub(crate) use bind_condition;

/// How many of `user`'s fans `filter` matches now, and the newest [`SAMPLE`] of them: the
/// first page of [`fans`].
pub async fn preview(db: &Db, user: UserId, filter: &Filter) -> StoreResult<Preview> {
    let first = Page {
        limit: SAMPLE,
        offset: 0,
    };
    let page = fans(db, user, filter, &FanFilter::default(), first).await?;
    Ok(Preview {
        count: page.total,
        sample: page.items,
    })
}

/// One page of the fans `filter` matches now and the fan list's own filters (`also`) too,
/// newest first, and how many match.
pub async fn fans(
    db: &Db,
    user: UserId,
    filter: &Filter,
    also: &FanFilter,
    page: Page,
) -> StoreResult<Listed<Fan>> {
    let mut filter = filter.clone();
    if let Some(min) = also.min_value {
        filter.min_value_cents = Some(filter.min_value_cents.map_or(min, |m| m.max(min)));
    }
    let mut condition = filter.to_sql(dialect(db), Utc::now());
    if let Some(tag) = &also.tag {
        condition.and_tag(dialect(db), tag);
    }
    if let Some(search) = &also.search {
        condition.and_like(fans::holding(search));
    }
    let Condition { sql, params } = condition;
    let count_sql = format!("SELECT COUNT(*) FROM fans f WHERE f.user_id = $1 AND {sql}");
    let n = params.len() + 1;
    let page_sql = format!(
        "SELECT f.* FROM fans f WHERE f.user_id = $1 AND {sql} ORDER BY f.id DESC
         LIMIT ${} OFFSET ${}",
        n + 1,
        n + 2
    );
    // On PostgreSQL the page and the count run at once, on two of the pool's connections: a
    // filter that aggregates (spend in a window) costs each of them the same scan, and the
    // preview waits for the slower one instead of both (p95 97 -> 60 ms in the bench). SQLite's
    // pool has two connections and writers need one: there they run one after the other.
    macro_rules! page_query {
        () => {
            bind_condition!(
                sqlx::query_as::<_, Fan>(AssertSqlSafe(page_sql.clone())),
                user,
                &params
            )
            .bind(page.limit)
            .bind(page.offset)
        };
    }
    macro_rules! count_query {
        () => {
            bind_condition!(
                sqlx::query_as::<_, (i64,)>(AssertSqlSafe(count_sql.clone())),
                user,
                &params
            )
        };
    }
    let (items, (total,)) = match db {
        Db::Postgres(pool) => tokio::try_join!(
            page_query!().fetch_all(pool),
            count_query!().fetch_one(pool)
        )?,
        Db::Sqlite(pool) => (
            page_query!().fetch_all(pool).await?,
            count_query!().fetch_one(pool).await?,
        ),
    };
    Ok(Listed { items, total })
}

/// The filter of `user`'s segment `id` (in `tx`); `None` when there is no such segment.
pub async fn filter_in(tx: &mut Tx, user: UserId, id: SegmentId) -> StoreResult<Option<Filter>> {
    let found: Option<(Json<Filter>,)> = on_tx!(tx, conn => sqlx::query_as(
        "SELECT filter FROM segments WHERE id = $1 AND user_id = $2",
    )
    .bind(id)
    .bind(user)
    .fetch_optional(&mut **conn)
    .await)?;
    Ok(found.map(|(f,)| f.0))
}

/// Whether `filter` holds for `user`'s fan `fan` now (in `tx`): an automation's condition.
pub async fn matches(
    tx: &mut Tx,
    user: UserId,
    fan: FanId,
    filter: &Filter,
    now: Timestamp,
) -> StoreResult<bool> {
    let dialect = tx_dialect(tx);
    let mut only = Condition::everyone();
    let id = only.bind(Param::Int(fan.0));
    only.and(&format!("f.id = {id}"));
    let Condition { sql, params } = filter.and_to(only, dialect, now.0);
    let query = format!("SELECT COUNT(*) FROM fans f WHERE f.user_id = $1 AND {sql}");
    let (n,): (i64,) = on_tx!(tx, conn => bind_condition!(
        sqlx::query_as(AssertSqlSafe(query)),
        user,
        &params
    )
    .fetch_one(&mut **conn)
    .await)?;
    Ok(n > 0)
}
