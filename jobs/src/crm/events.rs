//! Platform events: what a platform sync reports about the creator's fans and our messages
//! (delivered, opened, a paid message unlocked, a tip, a subscription). The only module that
//! writes `platform_events`, the record that makes each event apply once; what an event
//! changes is written through the owners of those tables (fans, messages, campaigns).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use super::{
    automations::triggers::{self, Fire, Fired},
    campaigns,
    fans::{self, FanRef, Subscription, value_history::ValueSource},
    messages::{self, OutboundRef},
};
use crate::{
    db::{Db, StoreError, StoreResult, Tx},
    domain::{CampaignId, Cents, FanId, MessageId, Platform, Timestamp, UserId},
    on_tx, text_enum,
};

/// At most this many events a batch.
pub const MAX_BATCH: usize = 500;
/// Bounds of an event's id and of a platform's message id.
pub const ID_MAX: usize = 200;

text_enum! {
    pub enum EventKind as "event type" {
        /// The message reached the fan.
        Delivered = "delivered",
        /// The fan read the message (it was delivered, too).
        Opened = "opened",
        /// The fan unlocked a paid message (`amountCents`).
        Purchased = "purchased",
        /// The fan tipped (`amountCents`).
        Tip = "tip",
        /// The fan subscribed or renewed (`amountCents`).
        Subscription = "subscription",
        /// The fan's subscription ended.
        SubscriptionExpired = "subscription_expired",
        /// The fan turned renewal off (still subscribed until the period ends).
        SubscriptionRenewalOff = "subscription_renewal_off",
    }
}

impl EventKind {
    /// Whether the event is about one of our messages (which it must name).
    pub fn needs_message(self) -> bool {
        matches!(self, EventKind::Delivered | EventKind::Opened)
    }

    /// Whether the event carries money (which it must give).
    pub fn carries_amount(self) -> bool {
        self.value_source().is_some()
    }

    fn value_source(self) -> Option<ValueSource> {
        match self {
            EventKind::Purchased => Some(ValueSource::Purchased),
            EventKind::Tip => Some(ValueSource::Tip),
            EventKind::Subscription => Some(ValueSource::Subscription),
            _ => None,
        }
    }

    /// The fan's subscription after the event, for the events that say.
    fn subscription(self) -> Option<Subscription> {
        match self {
            EventKind::Subscription => Some(Subscription::Active),
            EventKind::SubscriptionRenewalOff => Some(Subscription::RenewalOff),
            EventKind::SubscriptionExpired => Some(Subscription::Expired),
            _ => None,
        }
    }
}

/// One of our outbound messages, as the platform names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MessageRef {
    Ours(MessageId),
    /// The platform's id, which its answer to the delivery gave us.
    Platform(String),
}

/// An event, already parsed: kinds that need a message have one, kinds that carry money have
/// an amount.
#[derive(Debug, Clone)]
pub struct PlatformEvent {
    /// The platform's id of the event: a repeat of it changes nothing.
    pub id: String,
    pub kind: EventKind,
    pub at: DateTime<Utc>,
    pub fan: FanRef,
    pub message: Option<MessageRef>,
    pub amount: Option<Cents>,
    /// When the subscription period a subscription event reports ends (it renews or expires
    /// then): what `subscription_expiring` triggers count from.
    pub ends_at: Option<DateTime<Utc>>,
}

/// What became of one event of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// Its id was applied before (or earlier in the batch): nothing changed.
    Duplicate,
    /// It names no fan or message of the creator, or one that does not fit: nothing changed,
    /// and the same event may be sent again once it can apply.
    Rejected(String),
}

/// Applies `events` of `user` in one transaction and says what became of each, in order.
/// Events are applied fan by fan in id order, so concurrent batches touching the same fans
/// take their rows in the same order; a deadlock with another writer (an import locks fans
/// in its own order) is retried.
pub async fn apply(db: &Db, user: UserId, events: &[PlatformEvent]) -> StoreResult<Vec<Outcome>> {
    let mut tries = 0;
    loop {
        match apply_once(db, user, events).await {
            Err(StoreError::Sql(e)) if tries < 3 && is_deadlock(&e) => tries += 1,
            done => return done,
        }
    }
}

fn is_deadlock(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("40P01"))
}

async fn apply_once(db: &Db, user: UserId, events: &[PlatformEvent]) -> StoreResult<Vec<Outcome>> {
    let mut tx = db.begin().await?;
    let refs: Vec<FanRef> = events.iter().map(|e| e.fan.clone()).collect();
    let fans: HashMap<FanRef, FanId> = fans::resolve(&mut tx, user, Platform::Onlyfans, &refs)
        .await?
        .into_iter()
        .collect();
    let ours: Vec<MessageId> = events
        .iter()
        .filter_map(|e| match &e.message {
            Some(MessageRef::Ours(id)) => Some(*id),
            _ => None,
        })
        .collect();
    let theirs: Vec<&str> = events
        .iter()
        .filter_map(|e| match &e.message {
            Some(MessageRef::Platform(id)) => Some(id.as_str()),
            _ => None,
        })
        .collect();
    let named = messages::outbound_named(&mut tx, user, &ours, &theirs).await?;
    let message = |r: &MessageRef| -> Option<&OutboundRef> {
        named.iter().find(|m| match r {
            MessageRef::Ours(id) => m.id == *id,
            MessageRef::Platform(p) => m.external_id.as_deref() == Some(p.as_str()),
        })
    };

    let mut outcomes = vec![Outcome::Applied; events.len()];
    let mut order = vec![];
    for (i, e) in events.iter().enumerate() {
        let Some(&fan) = fans.get(&e.fan) else {
            outcomes[i] = Outcome::Rejected("no such fan".into());
            continue;
        };
        let msg = match &e.message {
            None => None,
            Some(r) => match message(r) {
                None => {
                    outcomes[i] = Outcome::Rejected("no such outbound message".into());
                    continue;
                }
                Some(m) if m.fan_id != fan => {
                    outcomes[i] = Outcome::Rejected("the message was sent to another fan".into());
                    continue;
                }
                Some(m) => Some(m),
            },
        };
        order.push((fan, i, msg));
    }
    // The first of several events with one id is the one that may apply.
    let mut first: HashMap<&str, usize> = HashMap::new();
    order.retain(|(_, i, _)| match first.entry(events[*i].id.as_str()) {
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(*i);
            true
        }
        std::collections::hash_map::Entry::Occupied(_) => {
            outcomes[*i] = Outcome::Duplicate;
            false
        }
    });
    let to_record: Vec<&PlatformEvent> = order.iter().map(|(_, i, _)| &events[*i]).collect();
    let new = record(&mut tx, user, &to_record).await?;
    order.sort_by_key(|(fan, i, _)| (*fan, *i));

    let mut touched: Vec<CampaignId> = vec![];
    let mut fired: Vec<Fired> = vec![];
    for (fan, i, msg) in order {
        let e = &events[i];
        if !new.contains(e.id.as_str()) {
            outcomes[i] = Outcome::Duplicate;
            continue;
        }
        let at = Timestamp(e.at);
        if let Some(m) = msg {
            let revenue = e.amount.filter(|_| e.kind.carries_amount());
            let (delivered, opened) = match e.kind {
                EventKind::Delivered => (Some(at), None),
                EventKind::Opened => (Some(at), Some(at)),
                _ => (None, None),
            };
            let purchased = (e.kind == EventKind::Purchased).then_some(at);
            let report = messages::Report {
                delivered_at: delivered,
                opened_at: opened,
                purchased_at: purchased,
                revenue: revenue.unwrap_or_default(),
            };
            messages::reported(&mut tx, m.id, report).await?;
            touched.extend(m.campaign_id);
        }
        match (e.kind.value_source(), e.amount) {
            (Some(source), Some(amount)) => fans::credit(&mut tx, fan, amount, source, at).await?,
            // Reading a message is the fan being there; its arrival is not.
            _ if e.kind == EventKind::Opened => fans::seen(&mut tx, fan, at).await?,
            _ => {}
        }
        let what = match (e.kind, e.kind.subscription()) {
            (_, Some(state)) => {
                let ends = e.ends_at.map(Timestamp);
                match (
                    e.kind,
                    fans::subscribed(&mut tx, fan, state, at, ends).await?,
                ) {
                    (EventKind::Subscription, Some(None)) => Some(Fire::Subscription),
                    (EventKind::Subscription, Some(Some(Subscription::Expired))) => {
                        Some(Fire::Resubscription)
                    }
                    (EventKind::SubscriptionExpired, Some(before))
                        if before != Some(Subscription::Expired) =>
                    {
                        Some(Fire::SubscriptionExpired)
                    }
                    _ => None,
                }
            }
            (EventKind::Purchased, _) => Some(Fire::Purchased {
                message: msg.map(|m| m.id),
                campaign: msg.and_then(|m| m.campaign_id),
            }),
            (EventKind::Tip, _) => Some(Fire::Tip),
            _ => None,
        };
        if let Some(what) = what {
            fired.push(Fired {
                fan,
                what,
                key: e.id.clone(),
            });
        }
    }
    triggers::fire(&mut tx, user, &fired, Timestamp::now()).await?;
    campaigns::refresh_engagement(&mut tx, &touched).await?;
    tx.commit().await?;
    Ok(outcomes)
}

/// Records `events` (distinct ids) as applied; returns the ids that were not already. One
/// statement, rows in id order: concurrent batches of overlapping events take the ids' locks
/// in the same order, so they wait for each other instead of deadlocking.
async fn record(
    tx: &mut Tx,
    user: UserId,
    events: &[&PlatformEvent],
) -> sqlx::Result<HashSet<String>> {
    if events.is_empty() {
        return Ok(HashSet::new());
    }
    let mut sorted = events.to_vec();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let now = Timestamp::now();
    let ids: Vec<(String,)> = on_tx!(tx, conn => {
        let mut q = sqlx::QueryBuilder::new(
            "INSERT INTO platform_events (user_id, event_id, type, at, applied_at) ",
        );
        q.push_values(&sorted, |mut row, e| {
            row.push_bind(user)
                .push_bind(e.id.as_str())
                .push_bind(e.kind)
                .push_bind(Timestamp(e.at))
                .push_bind(now);
        });
        q.push(" ON CONFLICT (user_id, event_id) DO NOTHING RETURNING event_id");
        q.build_query_as().fetch_all(&mut **conn).await?
    });
    Ok(ids.into_iter().map(|(id,)| id).collect())
}
