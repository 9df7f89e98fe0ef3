//! What sets automations off, in the transaction that records it: platform events (through
//! `crm::events`), inbound messages and new fans enroll fans; an inbound message also ends the
//! enrollments that stop on a reply, withdrawing their messages not yet tried.

use super::{
    Trigger, armed,
    enrollments::{self, exit},
    version,
};
use crate::{
    crm::{
        conversations,
        fans::{self, Fan, NewFan},
        messages::{self, Inbound, Message},
        segments::Condition,
    },
    db::{Db, StoreResult, Tx},
    domain::{CampaignId, ConversationId, FanId, MessageId, Timestamp, UserId},
    idempotency::Guard,
};

/// Something that happened to a fan, which triggers of its kind may answer.
#[derive(Debug, Clone)]
pub enum Fire<'a> {
    Subscription,
    Resubscription,
    SubscriptionExpired,
    Purchased {
        message: Option<MessageId>,
        campaign: Option<CampaignId>,
    },
    Tip,
    Inbound {
        text: &'a str,
    },
    FanCreated,
}

impl Fire<'_> {
    fn word(&self) -> &'static str {
        match self {
            Fire::Subscription => "subscription",
            Fire::Resubscription => "resubscription",
            Fire::SubscriptionExpired => "subscription_expired",
            Fire::Purchased { .. } => "purchased",
            Fire::Tip => "tip",
            Fire::Inbound { .. } => "inbound",
            Fire::FanCreated => "fan_created",
        }
    }

    /// Whether `trigger` (of the same word) answers it: a purchase of the message or campaign
    /// it names, an inbound message containing its keyword (without case).
    fn answers(&self, trigger: &Trigger) -> bool {
        match (self, trigger) {
            (
                Fire::Purchased { message, campaign },
                Trigger::Purchased {
                    message_id,
                    campaign_id,
                },
            ) => {
                message_id.is_none_or(|m| Some(m) == *message)
                    && campaign_id.is_none_or(|c| Some(c) == *campaign)
            }
            (Fire::Inbound { text }, Trigger::Inbound { keyword: Some(k) }) => {
                text.to_lowercase().contains(&k.to_lowercase())
            }
            _ => trigger.word() == self.word(),
        }
    }
}

/// One firing: what happened to which fan, under the key that makes it enroll once (the
/// event's id).
#[derive(Debug, Clone)]
pub struct Fired<'a> {
    pub fan: FanId,
    pub what: Fire<'a>,
    pub key: String,
}

/// Enrolls the fans `fired` names into `user`'s active automations that answer them. Returns
/// how many enrollments began.
pub async fn fire(
    tx: &mut Tx,
    user: UserId,
    fired: &[Fired<'_>],
    now: Timestamp,
) -> StoreResult<usize> {
    let mut words: Vec<&str> = fired.iter().map(|f| f.what.word()).collect();
    words.sort_unstable();
    words.dedup();
    let mut began = 0;
    for word in words {
        for a in armed(tx, user, word).await? {
            let trigger = &a.definition.0.trigger;
            for f in fired
                .iter()
                .filter(|f| f.what.word() == word && f.what.answers(trigger))
            {
                let key = format!("{word}:{}", f.key);
                let only = Condition::everyone();
                began += enrollments::enroll(tx, &a, Some(&[f.fan]), only, |_| key.clone(), now)
                    .await?
                    .len();
            }
        }
    }
    if began > 0 {
        tracing::info!(
            user_id = user.0,
            enrolled = began,
            "automations enrolled fans"
        );
    }
    Ok(began)
}

/// The fan wrote in: its enrollments that stop on a reply end (`exited: replied`), and their
/// messages not yet tried are withdrawn. Returns the withdrawn messages.
pub async fn replied(tx: &mut Tx, fan: FanId, now: Timestamp) -> StoreResult<Vec<MessageId>> {
    let mut stopped = vec![];
    for e in enrollments::active_of_fan(tx, fan).await? {
        let stops = version(tx, e.automation_id, e.version)
            .await?
            .is_some_and(|d| d.stop_on_reply);
        if stops {
            enrollments::finish(tx, e.id, e.step, Some(exit::REPLIED), now).await?;
            stopped.push(e.id);
        }
    }
    if stopped.is_empty() {
        return Ok(vec![]);
    }
    let sent = enrollments::messages_of(tx, &stopped).await?;
    let withdrawn = messages::withdraw_untried(tx, &sent).await?;
    enrollments::withdrawn(tx, &withdrawn).await?;
    tracing::info!(
        fan_id = fan.0,
        stopped = stopped.len(),
        withdrawn = withdrawn.len(),
        "the fan replied: enrollments that stop on a reply ended"
    );
    Ok(withdrawn)
}

/// Records an inbound message (see `messages::record_inbound`) and, when it is new, ends the
/// enrollments that stop on a reply and fires the inbound triggers, all in one transaction.
pub async fn inbound(
    db: &Db,
    user: UserId,
    conversation: ConversationId,
    msg: Inbound,
    key: Option<&Guard>,
) -> StoreResult<(Message, bool)> {
    let mut tx = db.begin().await?;
    // The fan's enrollments are locked before the conversation is written, the order the
    // automation clock takes them in (enrollments, then the conversation of a send).
    if let Some(fan) = conversations::fan_of(&mut tx, user, conversation).await? {
        enrollments::active_of_fan(&mut tx, fan).await?;
    }
    let (message, new) = messages::record_inbound(&mut tx, user, conversation, msg, key).await?;
    if new {
        let now = Timestamp::now();
        replied(&mut tx, message.fan_id, now).await?;
        let fired = Fired {
            fan: message.fan_id,
            what: Fire::Inbound {
                text: message.text.as_str(),
            },
            key: message.id.0.to_string(),
        };
        fire(&mut tx, user, &[fired], now).await?;
    }
    tx.commit().await?;
    Ok((message, new))
}

/// Creates a fan (see `fans::create`) and fires the `fan_created` triggers, in one
/// transaction.
pub async fn new_fan(db: &Db, user: UserId, fan: NewFan, key: Option<&Guard>) -> StoreResult<Fan> {
    let mut tx = db.begin().await?;
    let created = fans::create_in(&mut tx, user, fan, key).await?;
    self::created(&mut tx, user, &[created.id], Timestamp::now()).await?;
    tx.commit().await?;
    Ok(created)
}

/// Fires the `fan_created` triggers for `fans`, just created in `tx` (by the API, or an
/// import's batch): one enrollment statement per automation, not one per fan.
/// Each fan enrolls once per automation (its key is its id). Returns how many enrollments began.
pub async fn created(
    tx: &mut Tx,
    user: UserId,
    fans: &[FanId],
    now: Timestamp,
) -> StoreResult<usize> {
    if fans.is_empty() {
        return Ok(0);
    }
    let word = Fire::FanCreated.word();
    let mut began = 0;
    for a in armed(tx, user, word).await? {
        let key = |c: &enrollments::Candidate| format!("{word}:{}", c.id.0);
        began += enrollments::enroll(tx, &a, Some(fans), Condition::everyone(), key, now)
            .await?
            .len();
    }
    if began > 0 {
        tracing::info!(
            user_id = user.0,
            enrolled = began,
            "automations enrolled new fans"
        );
    }
    Ok(began)
}
