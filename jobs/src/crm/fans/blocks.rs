//! The fan list's page index (`fan_blocks`): each creator's fans, in id order, fall into
//! blocks of consecutive ids with their counts. A page at offset N is found by summing counts
//! from the newest block down (a hundred rows for 100,000 fans) and skipping fewer than a
//! block's fans, instead of walking the N fans before it; the total is the sum. Kept in the
//! transaction that adds or removes fans, so the counts are exact.
//!
//! A block holds the creator's fans from its `first_id` up to the next block's. New fans
//! (the highest ids) fill the newest block to [`BLOCK`], then start another; a fan removed
//! leaves its block one smaller. Ids committed out of order (a transaction that took its ids
//! before another's and committed after it) are counted in the block whose range holds them.

use sqlx::QueryBuilder;

use crate::{
    db::{Db, Tx},
    domain::{FanId, UserId},
    on_db, on_tx,
};

/// Fans a block is filled to before a new one starts: a page skips at most this many.
pub const BLOCK: i64 = 1000;

/// Where a page of the list starts: below `before` (the bound of the block above), after
/// skipping `skip` fans; and the creator's total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    pub before: Option<i64>,
    pub skip: i64,
    pub total: i64,
}

/// Serialises the block changes of one creator: on PostgreSQL an advisory lock held until
/// the transaction ends (two imports and a create for one creator cannot both start the
/// newest block); SQLite's write transaction holds the database already.
async fn lock(tx: &mut Tx, user: UserId) -> sqlx::Result<()> {
    if let Tx::Postgres(conn) = tx {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('fan_blocks'), $1::int4)")
            .bind(user.0 as i32)
            .execute(&mut **conn)
            .await?;
    }
    Ok(())
}

/// The creator's blocks, oldest first: `(first_id, fans)`.
async fn all(tx: &mut Tx, user: UserId) -> sqlx::Result<Vec<(i64, i64)>> {
    on_tx!(tx, conn => sqlx::query_as(
        "SELECT first_id, fans FROM fan_blocks WHERE user_id = $1 ORDER BY first_id",
    )
    .bind(user)
    .fetch_all(&mut **conn)
    .await)
}

/// Counts `user`'s new fans `ids` (any order) into their blocks, in `tx`.
pub async fn add(tx: &mut Tx, user: UserId, ids: &[FanId]) -> sqlx::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    lock(tx, user).await?;
    let mut ids: Vec<i64> = ids.iter().map(|f| f.0).collect();
    ids.sort_unstable();
    let newest: Option<(i64, i64)> = on_tx!(tx, conn => sqlx::query_as(
        "SELECT first_id, fans FROM fan_blocks WHERE user_id = $1 ORDER BY first_id DESC LIMIT 1",
    )
    .bind(user)
    .fetch_optional(&mut **conn)
    .await)?;
    // Counts to add to existing blocks, by first_id; then the ids that start new blocks.
    let mut grown: Vec<(i64, i64)> = vec![];
    let mut fresh: &[i64] = &ids;
    if let Some((first, fans)) = newest {
        let older = ids.partition_point(|&id| id < first);
        if older > 0 {
            grown.extend(place_older(tx, user, &ids[..older]).await?);
        }
        let room = (BLOCK - fans).max(0) as usize;
        let into_newest = (ids.len() - older).min(room);
        if into_newest > 0 {
            grown.push((first, into_newest as i64));
        }
        fresh = &ids[older + into_newest..];
    }
    for (first, n) in grown {
        on_tx!(tx, conn => sqlx::query(
            "UPDATE fan_blocks SET fans = fans + $3 WHERE user_id = $1 AND first_id = $2",
        )
        .bind(user)
        .bind(first)
        .bind(n)
        .execute(&mut **conn)
        .await
        .map(|_| ()))?;
    }
    if !fresh.is_empty() {
        let blocks: Vec<(i64, i64)> = fresh
            .chunks(BLOCK as usize)
            .map(|c| (c[0], c.len() as i64))
            .collect();
        on_tx!(tx, conn => {
            let mut q = QueryBuilder::new("INSERT INTO fan_blocks (user_id, first_id, fans) ");
            q.push_values(&blocks, |mut row, (first, n)| {
                row.push_bind(user).push_bind(*first).push_bind(*n);
            });
            q.build().execute(&mut **conn).await.map(|_| ())
        })?;
    }
    Ok(())
}

/// Where ids older than the newest block's start go (sorted): each into the block whose
/// range holds it; ids below every block make the oldest block start lower. Returns the counts
/// to add by first_id.
async fn place_older(tx: &mut Tx, user: UserId, ids: &[i64]) -> sqlx::Result<Vec<(i64, i64)>> {
    let mut blocks = all(tx, user).await?;
    if let (Some(&lowest), Some(oldest)) = (ids.first(), blocks.first_mut())
        && lowest < oldest.0
    {
        on_tx!(tx, conn => sqlx::query(
            "UPDATE fan_blocks SET first_id = $3 WHERE user_id = $1 AND first_id = $2",
        )
        .bind(user)
        .bind(oldest.0)
        .bind(lowest)
        .execute(&mut **conn)
        .await
        .map(|_| ()))?;
        oldest.0 = lowest;
    }
    let mut counts: Vec<(i64, i64)> = vec![];
    for &id in ids {
        let holder = blocks.partition_point(|(first, _)| *first <= id);
        let Some(&(first, _)) = blocks.get(holder.wrapping_sub(1)) else {
            continue;
        };
        match counts.last_mut() {
            Some((f, n)) if *f == first => *n += 1,
            _ => counts.push((first, 1)),
        }
    }
    Ok(counts)
}

/// Takes fan `id` of `user` out of its block, in `tx` (call it when the fan was deleted).
pub async fn remove(tx: &mut Tx, user: UserId, id: FanId) -> sqlx::Result<()> {
    lock(tx, user).await?;
    on_tx!(tx, conn => sqlx::query(
        "UPDATE fan_blocks SET fans = fans - 1
         WHERE user_id = $1 AND first_id = (
             SELECT MAX(first_id) FROM fan_blocks WHERE user_id = $1 AND first_id <= $2)",
    )
    .bind(user)
    .bind(id)
    .execute(&mut **conn)
    .await
    .map(|_| ()))
}

/// Where the page at `offset` of `user`'s fans (newest first) starts, and the total.
pub async fn start(db: &Db, user: UserId, offset: i64) -> sqlx::Result<Start> {
    let blocks: Vec<(i64, i64)> = on_db!(db, pool => sqlx::query_as(
        "SELECT first_id, fans FROM fan_blocks WHERE user_id = $1 ORDER BY first_id DESC",
    )
    .bind(user)
    .fetch_all(pool)
    .await)?;
    Ok(locate(&blocks, offset))
}

/// [`start`] over blocks newest first.
fn locate(blocks: &[(i64, i64)], offset: i64) -> Start {
    let total = blocks.iter().map(|(_, n)| n).sum();
    let mut before = None;
    let mut skip = offset;
    for &(first, fans) in blocks {
        if skip < fans {
            break;
        }
        skip -= fans;
        before = Some(first);
    }
    Start {
        before,
        skip,
        total,
    }
}

/// Builds every creator's blocks again from the fans themselves (after fans were written
/// around this module: a bulk load, a restore). Not needed in normal operation.
pub async fn rebuild(db: &Db) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    on_tx!(&mut tx, conn => {
        sqlx::query("DELETE FROM fan_blocks").execute(&mut **conn).await?;
        sqlx::query(
            "INSERT INTO fan_blocks (user_id, first_id, fans)
             SELECT user_id, MIN(id), COUNT(*)
             FROM (SELECT user_id, id,
                          (ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY id) - 1) / $1 AS block
                   FROM fans) numbered
             GROUP BY user_id, block",
        )
        .bind(BLOCK)
        .execute(&mut **conn)
        .await?;
        Ok::<_, sqlx::Error>(())
    })?;
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_starts_below_the_blocks_it_skips_whole() {
        // Newest first: 1,000 fans from id 5000, 1,000 from 3000, 400 from 1.
        let blocks = [(5000, 1000), (3000, 1000), (1, 400)];
        let at = |offset| locate(&blocks, offset);
        assert_eq!(
            at(0),
            Start {
                before: None,
                skip: 0,
                total: 2400
            }
        );
        assert_eq!(at(999).before, None);
        assert_eq!(at(999).skip, 999);
        assert_eq!((at(1000).before, at(1000).skip), (Some(5000), 0));
        assert_eq!((at(2350).before, at(2350).skip), (Some(3000), 350));
        // Past the end: the page is empty, the total still right.
        assert_eq!(
            (at(2400).before, at(2400).skip, at(2400).total),
            (Some(1), 0, 2400)
        );
    }
}
