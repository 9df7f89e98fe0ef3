//! Fans: the creator's subscribers, unique per (user, platform, handle). The only module that
//! writes `fans`; [`import`] holds the batched upsert of the CSV import, and [`blocks`] the
//! list's page index, kept with every fan added or removed.

pub mod blocks;
pub mod import;
pub mod value_history;

use chrono::{DateTime, Utc};
use sqlx::types::Json;

use self::value_history::ValueSource;
use crate::{
    db::{Db, Listed, Page, StoreError, StoreResult, Tx, is_unique_violation},
    domain::{Cents, Email, FanId, Handle, HttpUrl, Line, Platform, Tags, Text, Timestamp, UserId},
    idempotency::{self, Effect, Guard},
    on_db, on_tx, text_enum,
};

/// Bounds of a fan's free-form fields.
pub const NAME_MAX: usize = 200;
pub const NOTES_MAX: usize = 10_000;
/// The longest text the fan list's search looks for.
pub const SEARCH_MAX: usize = 100;

/// A fan as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Fan {
    pub id: FanId,
    pub user_id: UserId,
    pub platform: Platform,
    pub handle: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub avatar_url: Option<String>,
    pub tags: Json<Vec<String>>,
    pub notes: Option<String>,
    pub value_cents: i64,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A fan to create, every field already parsed.
#[derive(Debug, Clone)]
pub struct NewFan {
    pub platform: Platform,
    pub handle: Handle,
    pub name: Option<Line>,
    pub email: Option<Email>,
    pub avatar_url: Option<HttpUrl>,
    pub tags: Tags,
    pub notes: Option<Text>,
    pub value_cents: Cents,
    pub last_seen_at: Option<DateTime<Utc>>,
}

/// A partial update: `None` leaves a field as it is; `Some(None)` clears a nullable one.
#[derive(Debug, Clone, Default)]
pub struct FanPatch {
    pub name: Option<Option<Line>>,
    pub email: Option<Option<Email>>,
    pub avatar_url: Option<Option<HttpUrl>>,
    pub tags: Option<Tags>,
    pub notes: Option<Option<Text>>,
    pub value_cents: Option<Cents>,
    pub last_seen_at: Option<Option<DateTime<Utc>>>,
}

/// Filters of the fan list.
#[derive(Debug, Clone, Default)]
pub struct FanFilter {
    /// Only fans carrying this tag (compared without case).
    pub tag: Option<String>,
    /// Only fans whose lifetime value is at least this.
    pub min_value: Option<Cents>,
    /// Only fans whose handle or name holds this text (compared without case).
    pub search: Option<String>,
}

/// `text` as a LIKE pattern matching any value that holds it, lower case (`\` escapes).
pub(crate) fn holding(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// Creates one of `user`'s fans; a keyed request records it on its key in the same
/// transaction.
pub async fn create(db: &Db, user: UserId, fan: NewFan, key: Option<&Guard>) -> StoreResult<Fan> {
    let mut tx = db.begin().await?;
    let created = create_in(&mut tx, user, fan, key).await?;
    tx.commit().await?;
    Ok(created)
}

/// [`create`] in `tx` (`crm::automations::triggers::new_fan` adds what a new fan sets off).
pub async fn create_in(
    tx: &mut Tx,
    user: UserId,
    fan: NewFan,
    key: Option<&Guard>,
) -> StoreResult<Fan> {
    let now = Timestamp::now();
    let handle = fan.handle.as_str().to_owned();
    let platform = fan.platform;
    let res = on_tx!(tx, conn => sqlx::query_as::<_, Fan>(
        "INSERT INTO fans (user_id, platform, handle, name, email, avatar_url, tags, notes,
                           value_cents, last_seen_at, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)
         RETURNING *",
    )
    .bind(user)
    .bind(platform)
    .bind(&handle)
    .bind(fan.name.as_ref().map(Line::as_str))
    .bind(fan.email.as_ref().map(Email::as_str))
    .bind(fan.avatar_url.as_ref().map(HttpUrl::as_str))
    .bind(Json(fan.tags.as_slice()))
    .bind(fan.notes.as_ref().map(Text::as_str))
    .bind(fan.value_cents.get())
    .bind(fan.last_seen_at.map(Timestamp))
    .bind(now)
    .fetch_one(&mut **conn)
    .await);
    let created = res.map_err(|e| {
        if is_unique_violation(&e) {
            StoreError::Conflict(format!(
                "a fan with handle {handle} already exists on {}",
                platform.as_str()
            ))
        } else {
            e.into()
        }
    })?;
    blocks::add(tx, user, &[created.id]).await?;
    if let Some(key) = key {
        idempotency::record(tx, key, &Effect::Fan(created.id)).await?;
    }
    Ok(created)
}

pub async fn get(db: &Db, user: UserId, id: FanId) -> StoreResult<Fan> {
    on_db!(db, pool => sqlx::query_as::<_, Fan>("SELECT * FROM fans WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(user)
        .fetch_optional(pool)
        .await)?
    .ok_or(StoreError::NotFound("fan"))
}

macro_rules! pg_tag_clause {
    () => {
        "($3::text IS NULL OR EXISTS (SELECT 1 FROM jsonb_array_elements_text(fans.tags) t
                                      WHERE lower(t) = lower($3::text)))
         AND ($4::text IS NULL OR handle LIKE $4::text ESCAPE '\\'
              OR lower(name) LIKE $4::text ESCAPE '\\')"
    };
}
macro_rules! sqlite_tag_clause {
    () => {
        "($3 IS NULL OR EXISTS (SELECT 1 FROM json_each(fans.tags) t
                                WHERE lower(t.value) = lower($3)))
         AND ($4 IS NULL OR handle LIKE $4 ESCAPE '\\' OR lower(name) LIKE $4 ESCAPE '\\')"
    };
}
/// The fan list's select or count for one dialect's tag clause (static text for sqlx): `$3`
/// the tag, `$4` the search pattern.
macro_rules! fan_list_sql {
    (select, $tag:ident) => {
        concat!(
            "SELECT * FROM fans WHERE user_id = $1 AND value_cents >= $2 AND ",
            fan_list_sql!(@clause $tag),
            " ORDER BY id DESC LIMIT $5 OFFSET $6"
        )
    };
    (count, $tag:ident) => {
        concat!(
            "SELECT COUNT(*) FROM fans WHERE user_id = $1 AND value_cents >= $2 AND ",
            fan_list_sql!(@clause $tag)
        )
    };
    (@clause PG_TAG_CLAUSE) => { pg_tag_clause!() };
    (@clause SQLITE_TAG_CLAUSE) => { sqlite_tag_clause!() };
}

/// One page of `user`'s fans, newest first, and how many match. Without filters the page
/// index finds the page and the total without reading the fans before it, and the page is
/// read on `pages` ([`Db::generic_plans`]): for a creator with half of all fans, PostgreSQL's
/// plan for those values walked the whole table's newest ids backwards, every other creator's
/// fans included, hoping to meet 50 of theirs soon (slow whenever their fans were not the
/// newest); the generic plan always reads the creator's own `(user_id, id)` index
/// (BENCHMARKS.md, the fans list).
pub async fn list(
    db: &Db,
    pages: &Db,
    user: UserId,
    filter: &FanFilter,
    page: Page,
) -> StoreResult<Listed<Fan>> {
    if filter.tag.is_none() && filter.min_value.is_none() && filter.search.is_none() {
        let start = blocks::start(db, user, page.offset).await?;
        let items = on_db!(pages, pool => sqlx::query_as::<_, Fan>(
            "SELECT * FROM fans WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3 OFFSET $4",
        )
        .bind(user)
        .bind(start.before.unwrap_or(i64::MAX))
        .bind(page.limit)
        .bind(start.skip)
        .fetch_all(pool)
        .await)?;
        return Ok(Listed {
            items,
            total: start.total,
        });
    }
    let min = filter.min_value.unwrap_or_default().get();
    let tag = filter.tag.as_deref();
    let search = filter.search.as_deref().map(holding);
    // The tag test is the one place the dialects differ: JSONB functions vs json_each.
    let (rows_sql, count_sql) = match db {
        Db::Postgres(_) => (
            fan_list_sql!(select, PG_TAG_CLAUSE),
            fan_list_sql!(count, PG_TAG_CLAUSE),
        ),
        Db::Sqlite(_) => (
            fan_list_sql!(select, SQLITE_TAG_CLAUSE),
            fan_list_sql!(count, SQLITE_TAG_CLAUSE),
        ),
    };
    on_db!(db, pool => {
        let items = sqlx::query_as::<_, Fan>(rows_sql)
            .bind(user)
            .bind(min)
            .bind(tag)
            .bind(search.as_deref())
            .bind(page.limit)
            .bind(page.offset)
            .fetch_all(pool)
            .await?;
        let (total,): (i64,) = sqlx::query_as(count_sql)
            .bind(user)
            .bind(min)
            .bind(tag)
            .bind(search.as_deref())
            .fetch_one(pool)
            .await?;
        Ok(Listed { items, total })
    })
}

pub async fn update(db: &Db, user: UserId, id: FanId, patch: FanPatch) -> StoreResult<Fan> {
    // One statement: each column takes the new value when its flag is set, so two concurrent
    // patches of different fields both land.
    const SQL: &str = "UPDATE fans SET
            name         = CASE WHEN $3  THEN $4  ELSE name END,
            email        = CASE WHEN $5  THEN $6  ELSE email END,
            avatar_url   = CASE WHEN $7  THEN $8  ELSE avatar_url END,
            tags         = CASE WHEN $9  THEN $10 ELSE tags END,
            notes        = CASE WHEN $11 THEN $12 ELSE notes END,
            value_cents  = CASE WHEN $13 THEN $14 ELSE value_cents END,
            value_source = CASE WHEN $13 THEN 'edit' ELSE value_source END,
            value_at     = CASE WHEN $13 THEN $17 ELSE value_at END,
            last_seen_at = CASE WHEN $15 THEN $16 ELSE last_seen_at END,
            updated_at   = $17
        WHERE id = $1 AND user_id = $2
        RETURNING *";
    let now = Timestamp::now();
    let name = patch.name.as_ref().map(|v| v.as_ref().map(Line::as_str));
    let email = patch.email.as_ref().map(|v| v.as_ref().map(Email::as_str));
    let avatar = patch
        .avatar_url
        .as_ref()
        .map(|v| v.as_ref().map(HttpUrl::as_str));
    let tags = patch.tags.as_ref().map(|t| Json(t.as_slice()));
    let notes = patch.notes.as_ref().map(|v| v.as_ref().map(Text::as_str));
    let value = patch.value_cents.map(Cents::get);
    let seen = patch.last_seen_at.map(|v| v.map(Timestamp));
    on_db!(db, pool => sqlx::query_as::<_, Fan>(SQL)
        .bind(id)
        .bind(user)
        .bind(name.is_some())
        .bind(name.flatten())
        .bind(email.is_some())
        .bind(email.flatten())
        .bind(avatar.is_some())
        .bind(avatar.flatten())
        .bind(tags.is_some())
        .bind(tags.unwrap_or(Json(&[])))
        .bind(notes.is_some())
        .bind(notes.flatten())
        .bind(value.is_some())
        .bind(value.unwrap_or(0))
        .bind(seen.is_some())
        .bind(seen.flatten())
        .bind(now)
        .fetch_optional(pool)
        .await)?
    .ok_or(StoreError::NotFound("fan"))
}

pub async fn delete(db: &Db, user: UserId, id: FanId) -> StoreResult<()> {
    let mut tx = db.begin().await?;
    let done = on_tx!(&mut tx, conn => sqlx::query("DELETE FROM fans WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(user)
        .execute(&mut **conn)
        .await
        .map(|r| r.rows_affected()))?;
    if done == 0 {
        return Err(StoreError::NotFound("fan"));
    }
    blocks::remove(&mut tx, user, id).await?;
    tx.commit().await?;
    Ok(())
}

/// Of `ids`, those that are not fans of `user`, read in `tx` (so that what is created next
/// sees the same fans).
pub async fn not_owned(tx: &mut Tx, user: UserId, ids: &[FanId]) -> sqlx::Result<Vec<FanId>> {
    if ids.is_empty() {
        return Ok(vec![]);
    }
    let owned: Vec<FanId> = on_tx!(tx, conn => {
        let mut q = sqlx::QueryBuilder::new("SELECT id FROM fans WHERE user_id = ");
        q.push_bind(user).push(" AND id IN (");
        crate::db::push_binds(&mut q, ids.iter().copied());
        q.push(")");
        q.build_query_as::<(FanId,)>()
            .fetch_all(&mut **conn)
            .await?
            .into_iter()
            .map(|(id,)| id)
            .collect()
    });
    Ok(ids
        .iter()
        .copied()
        .filter(|id| !owned.contains(id))
        .collect())
}

/// A fan as a platform names it: by our id or by its handle.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FanRef {
    Id(FanId),
    Handle(Handle),
}

/// The fans of `user` that `refs` name (handles on `platform`), as `(ref, id)`; a ref naming
/// no fan of `user` is absent. Read in `tx`.
pub async fn resolve(
    tx: &mut Tx,
    user: UserId,
    platform: Platform,
    refs: &[FanRef],
) -> sqlx::Result<Vec<(FanRef, FanId)>> {
    if refs.is_empty() {
        return Ok(vec![]);
    }
    let ids: Vec<i64> = refs
        .iter()
        .filter_map(|r| match r {
            FanRef::Id(id) => Some(id.0),
            FanRef::Handle(_) => None,
        })
        .collect();
    let handles: Vec<&str> = refs
        .iter()
        .filter_map(|r| match r {
            FanRef::Handle(h) => Some(h.as_str()),
            FanRef::Id(_) => None,
        })
        .collect();
    let rows: Vec<(FanId, Platform, String)> = on_tx!(tx, conn => {
        let mut q = sqlx::QueryBuilder::new("SELECT id, platform, handle FROM fans WHERE user_id = ");
        q.push_bind(user).push(" AND (id IN (");
        crate::db::push_binds(&mut q, ids.iter().copied().chain([0]));
        q.push(") OR handle IN (");
        crate::db::push_binds(&mut q, handles.iter().copied().chain([""]));
        q.push("))");
        q.build_query_as().fetch_all(&mut **conn).await?
    });
    let mut found = vec![];
    for (id, on, handle) in rows {
        if ids.contains(&id.0) {
            found.push((FanRef::Id(id), id));
        }
        if on == platform
            && let Ok(h) = Handle::parse(&handle)
            && handles.contains(&h.as_str())
        {
            found.push((FanRef::Handle(h), id));
        }
    }
    Ok(found)
}

/// Adds `amount` to `fan`'s lifetime value for `source` at `at` (its value history records it
/// at that time), and moves the fan's last-seen time forward to `at`.
pub async fn credit(
    tx: &mut Tx,
    fan: FanId,
    amount: Cents,
    source: ValueSource,
    at: Timestamp,
) -> sqlx::Result<()> {
    on_tx!(tx, conn => sqlx::query(
        "UPDATE fans SET value_cents = value_cents + $2, value_source = $3, value_at = $4,
             last_seen_at = CASE WHEN last_seen_at IS NULL OR last_seen_at < $4 THEN $4
                                 ELSE last_seen_at END,
             updated_at = $5
         WHERE id = $1",
    )
    .bind(fan)
    .bind(amount.get())
    .bind(source)
    .bind(at)
    .bind(Timestamp::now())
    .execute(&mut **conn)
    .await
    .map(|_| ()))
}

text_enum! {
    /// A fan's subscription as the platform's events last reported it.
    pub enum Subscription as "subscription" {
        /// Subscribed or renewed.
        Active = "active",
        /// Still subscribed, not renewing.
        RenewalOff = "renewal_off",
        Expired = "expired",
    }
}

/// Records `fan`'s subscription as an event at `at` reports it (with the end of the period it
/// gives, when it does); an event older than the last one applied changes nothing. Returns
/// the subscription on record before, `None` when the event was older (not applied):
/// `subscription` and `resubscription` triggers tell a new subscriber from a returning one.
pub async fn subscribed(
    tx: &mut Tx,
    fan: FanId,
    state: Subscription,
    at: Timestamp,
    ends_at: Option<Timestamp>,
) -> sqlx::Result<Option<Option<Subscription>>> {
    let read = match tx {
        Tx::Postgres(_) => {
            "SELECT subscription, subscription_at FROM fans WHERE id = $1 FOR NO KEY UPDATE"
        }
        Tx::Sqlite(_) => "SELECT subscription, subscription_at FROM fans WHERE id = $1",
    };
    let before: Option<(Option<Subscription>, Option<DateTime<Utc>>)> = on_tx!(tx, conn => sqlx::query_as(read)
            .bind(fan)
            .fetch_optional(&mut **conn)
            .await)?;
    let Some((previous, last)) = before else {
        return Ok(None);
    };
    if last.is_some_and(|last| last > at.0) {
        return Ok(None);
    }
    on_tx!(tx, conn => sqlx::query(
        "UPDATE fans SET subscription = $2, subscription_at = $3, updated_at = $4,
             subscription_ends_at = CASE WHEN $2 = 'expired' THEN NULL
                                         ELSE COALESCE($5, subscription_ends_at) END
         WHERE id = $1",
    )
    .bind(fan)
    .bind(state)
    .bind(at)
    .bind(Timestamp::now())
    .bind(ends_at)
    .execute(&mut **conn)
    .await
    .map(|_| ()))?;
    Ok(Some(previous))
}

/// Moves `fan`'s last-seen time forward to `at` (never back).
pub async fn seen(tx: &mut Tx, fan: FanId, at: Timestamp) -> sqlx::Result<()> {
    on_tx!(tx, conn => sqlx::query(
        "UPDATE fans SET last_seen_at = $2, updated_at = $3
         WHERE id = $1 AND (last_seen_at IS NULL OR last_seen_at < $2)",
    )
    .bind(fan)
    .bind(at)
    .bind(Timestamp::now())
    .execute(&mut **conn)
    .await
    .map(|_| ()))
}
