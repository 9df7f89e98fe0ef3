//! `/api/crm/campaigns`: campaigns with live metrics; campaigns to an audience (a segment, a
//! filter or fans by id), scheduled, paused, resumed and cancelled, and their runs.

use chrono::{DateTime, Utc};
use fanqueue_jobs::{
    crm::{
        campaigns::{
            self, Audience, Campaign, CampaignStatus, CampaignType, Exclude, NewCampaign,
            Recurring, recipients,
            runs::{self, Run, RunStatus},
        },
        messages,
    },
    domain::{CampaignId, FanId, MessageId, SegmentId, Timestamp},
    engine::record,
    idempotency::Effect,
    kinds::{
        bulk_send,
        campaign_feed::{self, Control},
    },
};
use poem_openapi::{
    ApiResponse, Object, OpenApi, Union,
    param::{Path, Query},
    payload::Json,
};
use serde::Deserialize;

use super::{
    body::JsonBody,
    conversations::MessageOut,
    error::ApiError,
    idempotency,
    ids::IdIn,
    messages::{media, outgoing, submit_error},
    rules::{CampaignName, In, Limit, MediaUrl, MessageText, Offset, page},
    segments::FilterIn,
    state::{ApiTags, BearerAuth, State},
    words::Word,
};

pub struct CampaignsApi {
    state: State,
}

impl CampaignsApi {
    pub fn new(state: State) -> Self {
        CampaignsApi { state }
    }
}

/// Counts of the campaign's recipients and messages, read live from them, and the platform's
/// figures.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct CampaignMetrics {
    pub total: i64,
    /// Fans the audience held when the campaign started (for a recurring campaign, over all
    /// its runs): `sent + failed + excluded + cancelled + remaining`.
    pub audience: i64,
    /// Skipped, an exclusion matching them just before their message would have been queued.
    pub excluded: i64,
    /// Excluded fans by reason (`messaged_recently`, `unread_inbound`, `excluded_segment`,
    /// `bought_campaign`, `daily_cap`).
    pub excluded_by: std::collections::BTreeMap<String, i64>,
    /// Not sent because the campaign was cancelled.
    pub cancelled: i64,
    /// Not yet final: waiting for their turn, or on their way.
    pub remaining: i64,
    /// Not yet delivered to the platform (on the outbound queue or about to be).
    pub queued: i64,
    pub sent: i64,
    pub delivered: i64,
    pub failed: i64,
    pub opened: i64,
    pub clicked: i64,
    pub revenue_cents: i64,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct CampaignOut {
    pub id: i64,
    pub name: String,
    #[oai(rename = "type")]
    pub kind: Word<CampaignType>,
    /// `completed`: every message sent or failed.
    pub status: Word<CampaignStatus>,
    /// `{content, mediaUrls, priceCents}`.
    pub template: serde_json::Value,
    /// `{recipientIds}`.
    pub target_audience: serde_json::Value,
    pub metrics: CampaignMetrics,
    pub created_at: DateTime<Utc>,
    #[oai(nullable)]
    pub started_at: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub completed_at: Option<DateTime<Utc>>,
    /// When a scheduled campaign starts; a recurring one's next tick.
    #[oai(nullable)]
    pub starts_at: Option<DateTime<Utc>>,
    /// A recurring campaign's schedule (five cron fields) and its time zone.
    #[oai(nullable)]
    pub cron: Option<String>,
    #[oai(nullable)]
    pub timezone: Option<String>,
    #[oai(nullable)]
    pub cancelled_at: Option<DateTime<Utc>>,
    /// What is re-checked just before each recipient's message is queued (campaigns to an
    /// audience; null for the others).
    #[oai(nullable)]
    pub exclude: Option<serde_json::Value>,
    /// When the last recipient should be delivered at the creator's rate, its campaign slots
    /// shared with the creator's other running campaigns; null when not running.
    #[oai(nullable)]
    pub estimated_completion_time: Option<DateTime<Utc>>,
}

#[derive(Debug, Object)]
pub struct CampaignPage {
    pub items: Vec<CampaignOut>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

#[derive(ApiResponse)]
enum ListCampaignsResponse {
    /// The caller's campaigns, newest first.
    #[oai(status = 200)]
    Ok(Json<CampaignPage>),
}

#[derive(ApiResponse)]
enum GetCampaignResponse {
    #[oai(status = 200)]
    Ok(Json<CampaignOut>),
}

async fn with_metrics(state: &State, c: Campaign) -> Result<CampaignOut, ApiError> {
    let stored = |k: &str| c.metrics.0.get(k).and_then(|v| v.as_i64()).unwrap_or(0);
    let (status, counts, audience, excluded, excluded_by, cancelled, remaining) = if c
        .has_audience()
    {
        let (r, counts) = recipients::progress(&state.db, recipients::Of::Campaign(c.id)).await?;
        let by = r
            .excluded_by
            .iter()
            .map(|(reason, n)| (reason.as_str().to_owned(), *n))
            .collect();
        let remaining = r.pending + counts.queued + counts.sending;
        (
            c.status,
            counts,
            r.audience,
            r.excluded,
            by,
            r.cancelled,
            remaining,
        )
    } else {
        let counts = campaigns::counts(&state.db, c.id).await?;
        let on_the_way = counts.queued + counts.sending;
        // Completed as soon as every message is final, even before the job refreshed the
        // row.
        let status = if c.status == CampaignStatus::Active && counts.total > 0 && on_the_way == 0 {
            CampaignStatus::Completed
        } else {
            c.status
        };
        (
            status,
            counts,
            counts.total,
            0,
            Default::default(),
            0,
            on_the_way,
        )
    };
    let on_the_way = counts.queued + counts.sending;
    let estimated_completion_time = if status == CampaignStatus::Active && remaining > 0 {
        // Campaigns running together share the creator's slots round-robin.
        let sharing = runs::active_count(&state.db, c.user_id).await?.max(1);
        let slot = 60.0 / f64::from(state.backpressure.per_minute.max(1));
        let secs = slot * (remaining * sharing) as f64;
        Some(Utc::now() + chrono::TimeDelta::milliseconds((secs * 1000.0) as i64))
    } else {
        None
    };
    Ok(CampaignOut {
        id: c.id.0,
        name: c.name.clone(),
        kind: Word(c.kind),
        status: Word(status),
        template: c.template.0.clone(),
        target_audience: c.target_audience.0.clone(),
        metrics: CampaignMetrics {
            total: counts.total,
            audience,
            excluded,
            excluded_by,
            cancelled,
            remaining,
            queued: on_the_way,
            sent: counts.sent,
            delivered: stored("delivered"),
            failed: counts.failed,
            opened: stored("opened"),
            clicked: stored("clicked"),
            revenue_cents: stored("revenueCents"),
        },
        created_at: c.created_at,
        started_at: c.started_at,
        completed_at: c.completed_at,
        starts_at: c.starts_at,
        cron: c.cron.clone(),
        timezone: c.timezone.clone(),
        cancelled_at: c.cancelled_at,
        exclude: c
            .exclude
            .as_ref()
            .map(|e| serde_json::to_value(&e.0).unwrap_or_default()),
        estimated_completion_time,
    })
}

/// Who a campaign is for: a segment, a filter, or fans by id (exactly one of the three).
#[derive(Debug, Union, Deserialize)]
#[oai(one_of)]
#[serde(untagged)]
pub enum AudienceIn {
    Segment(SegmentAudience),
    Filter(FilterAudience),
    Fans(FansAudience),
}

/// The fans of one of the caller's segments, as its filter reads when the campaign starts.
#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SegmentAudience {
    pub segment_id: IdIn,
}

/// The fans this filter matches when the campaign starts (as for segments).
#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterAudience {
    pub filter: Box<FilterIn>,
}

/// These fans (numbers, or strings of digits), all the caller's; 1 to 100,000 (duplicates
/// are removed).
#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FansAudience {
    #[oai(validator(min_items = 1, max_items = 100000))]
    pub recipient_ids: Vec<IdIn>,
}

/// Fans skipped when their turn comes (checked just before each message is queued).
#[derive(Debug, Default, Object, Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExcludeIn {
    /// Fans in this segment of the caller's, as it reads then.
    #[oai(nullable)]
    pub segment_id: Option<IdIn>,
    /// Fans the creator messaged (queued, sending or sent) within this many hours (1 to
    /// 87600).
    #[oai(nullable, validator(minimum(value = "1"), maximum(value = "87600")))]
    pub messaged_within_hours: Option<u32>,
    /// Fans with inbound messages not yet read.
    #[oai(nullable)]
    pub unread_inbound: Option<bool>,
    /// Fans who bought a message of this campaign of the caller's.
    #[oai(nullable)]
    pub bought_campaign_id: Option<IdIn>,
}

/// When a campaign starts, and whether it recurs.
#[derive(Debug, Default, Object, Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScheduleIn {
    /// Starts then (RFC 3339); a time past or null starts it now. With `cron`: its first
    /// tick at or after this time.
    #[oai(nullable)]
    pub at: Option<DateTime<Utc>>,
    /// Recurs: a cron expression of five fields (minute hour day-of-month month
    /// day-of-week, e.g. `0 9 * * 1` for Mondays at 9:00; one that does not parse is a 422).
    /// Each tick is a run of its own with its own recipients (`/runs`); a tick that comes
    /// while the previous run is still going is recorded `skipped`.
    #[oai(nullable, validator(max_length = 200))]
    pub cron: Option<String>,
    /// The IANA time zone `cron` is read in (e.g. `Europe/Paris`); default `UTC`.
    #[oai(nullable, validator(max_length = 64))]
    pub timezone: Option<String>,
}

/// A campaign to an audience.
#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateCampaignIn {
    /// One line of at most 200 characters (trimmed), no control characters.
    pub name: In<CampaignName>,
    /// The text: not blank, at most 5,000 characters, no control characters but line breaks
    /// and tabs.
    pub content: In<MessageText>,
    /// http(s) URLs of media to attach, at most 20.
    #[oai(nullable, validator(max_items = 20))]
    pub media_urls: Option<Vec<In<MediaUrl>>>,
    /// The price to unlock it, in cents (0: free).
    #[oai(
        nullable,
        validator(minimum(value = "0"), maximum(value = "100000000000"))
    )]
    pub price_cents: Option<i64>,
    /// 1 (lowest) to 10; default 5. Orders messages within the campaigns lane.
    #[oai(nullable, validator(minimum(value = "1"), maximum(value = "10")))]
    pub priority: Option<i64>,
    pub audience: AudienceIn,
    #[oai(nullable)]
    pub exclude: Option<ExcludeIn>,
    #[oai(nullable)]
    pub schedule: Option<ScheduleIn>,
}

impl CreateCampaignIn {
    fn parse(self) -> Result<NewCampaign, ApiError> {
        let audience = match self.audience {
            AudienceIn::Segment(a) => Audience::SegmentId(SegmentId(a.segment_id.0)),
            AudienceIn::Filter(a) => Audience::Filter(Box::new((*a.filter).parse()?)),
            AudienceIn::Fans(a) => {
                if a.recipient_ids.is_empty() || a.recipient_ids.len() > MAX_AUDIENCE_IDS {
                    return Err(ApiError::invalid(
                        "audience.recipientIds",
                        format!("must name 1 to {MAX_AUDIENCE_IDS} fans"),
                    ));
                }
                let mut fans: Vec<FanId> = a.recipient_ids.iter().map(|i| FanId(i.0)).collect();
                fans.sort_unstable();
                fans.dedup();
                Audience::RecipientIds(fans)
            }
        };
        let x = self.exclude.unwrap_or_default();
        if let Some(h) = x.messaged_within_hours
            && !(1..=MAX_HOURS).contains(&h)
        {
            return Err(ApiError::invalid(
                "exclude.messagedWithinHours",
                format!("must be 1 to {MAX_HOURS}"),
            ));
        }
        let exclude = Exclude {
            segment_id: x.segment_id.map(|i| SegmentId(i.0)),
            messaged_within_hours: x.messaged_within_hours,
            unread_inbound: x.unread_inbound.unwrap_or(false),
            bought_campaign_id: x.bought_campaign_id.map(|i| CampaignId(i.0)),
        };
        if let Some(p) = self.price_cents
            && !(0..=100_000_000_000).contains(&p)
        {
            return Err(ApiError::invalid("priceCents", "must be 0 to 100000000000"));
        }
        let message = outgoing(
            self.content.into_inner(),
            self.price_cents,
            media(self.media_urls)?,
            self.priority,
        )?;
        let schedule = self.schedule.unwrap_or_default();
        let recurring = match (&schedule.cron, &schedule.timezone) {
            (Some(expr), tz) => Some(
                Recurring::parse(expr, tz.as_deref())
                    .map_err(|e| ApiError::unusable("schedule.cron", e))?,
            ),
            (None, Some(_)) => {
                return Err(ApiError::unusable(
                    "schedule.timezone",
                    "is for `schedule.cron`: give both, or neither",
                ));
            }
            (None, None) => None,
        };
        Ok(NewCampaign {
            name: self.name.into_inner(),
            message,
            audience,
            exclude,
            starts_at: schedule.at.map(Timestamp),
            recurring,
        })
    }
}

/// Fans named by id in one campaign, at most.
const MAX_AUDIENCE_IDS: usize = 100_000;
const MAX_HOURS: u32 = 87_600;

#[derive(ApiResponse)]
enum CreateCampaignResponse {
    /// The campaign is stored; when it starts now, its run and first feed too.
    #[oai(status = 201)]
    Created(Json<CampaignOut>),
}

#[derive(ApiResponse)]
enum ControlResponse {
    /// The campaign as it is now.
    #[oai(status = 200)]
    Ok(Json<CampaignOut>),
}

/// One run of a campaign: a one-off campaign has one, a recurring one a run per tick.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct RunOut {
    pub id: i64,
    /// The occurrence it is for.
    pub tick: DateTime<Utc>,
    /// `active`, `paused`, `completed`, `cancelled`, or `skipped` (its tick came while the
    /// previous run was still going).
    pub status: Word<RunStatus>,
    /// Fans the audience held when it started; null until resolved.
    #[oai(nullable)]
    pub audience: Option<i64>,
    pub excluded: i64,
    pub cancelled: i64,
    /// Waiting for their turn, or on their way.
    pub remaining: i64,
    pub sent: i64,
    pub failed: i64,
    pub started_at: DateTime<Utc>,
    #[oai(nullable)]
    pub completed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Object)]
pub struct RunPage {
    pub items: Vec<RunOut>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

#[derive(ApiResponse)]
enum ListRunsResponse {
    #[oai(status = 200)]
    Ok(Json<RunPage>),
}

async fn run_out(state: &State, run: Run) -> Result<RunOut, ApiError> {
    let (r, m) = recipients::progress(&state.db, recipients::Of::Run(run.id)).await?;
    Ok(RunOut {
        id: run.id.0,
        tick: run.tick,
        status: Word(run.status),
        audience: run.audience,
        excluded: r.excluded,
        cancelled: r.cancelled,
        remaining: r.pending + m.queued + m.sending,
        sent: m.sent,
        failed: m.failed,
        started_at: run.started_at,
        completed_at: run.completed_at,
    })
}

#[OpenApi(prefix_path = "/api/crm/campaigns", tag = "ApiTags::Campaigns")]
impl CampaignsApi {
    /// List campaigns
    ///
    /// Newest first, each with live metrics.
    #[oai(path = "/", method = "get", operation_id = "listCampaigns")]
    async fn list(
        &self,
        auth: BearerAuth,
        /// Items per page, 1 to 200 (default 50).
        limit: Query<Option<Limit>>,
        /// Items to skip (default 0).
        offset: Query<Option<Offset>>,
    ) -> Result<ListCampaignsResponse, ApiError> {
        let page = page(limit.0, offset.0);
        let listed = campaigns::list(&self.state.db, auth.user(), page).await?;
        let mut items = Vec::with_capacity(listed.items.len());
        for c in listed.items {
            items.push(with_metrics(&self.state, c).await?);
        }
        Ok(ListCampaignsResponse::Ok(Json(CampaignPage {
            items,
            total: listed.total,
            limit: page.limit,
            offset: page.offset,
        })))
    }

    /// Get a campaign
    ///
    /// With live metrics: queued, sent, delivered, failed, …
    #[oai(path = "/:id", method = "get", operation_id = "getCampaign")]
    async fn get(&self, auth: BearerAuth, id: Path<i64>) -> Result<GetCampaignResponse, ApiError> {
        let c = campaigns::get(&self.state.db, auth.user(), CampaignId(id.0)).await?;
        Ok(GetCampaignResponse::Ok(Json(
            with_metrics(&self.state, c).await?,
        )))
    }

    /// List a campaign's recipients
    ///
    /// One item per recipient: the campaign's message to the fan (its status, error, sent
    /// time, …) with the fan's handle and name, in the order they were queued. `limit`
    /// defaults to 50, at most 200.
    #[oai(
        path = "/:id/recipients",
        method = "get",
        operation_id = "listCampaignRecipients"
    )]
    async fn recipients(
        &self,
        auth: BearerAuth,
        id: Path<i64>,
        /// Recipients per page, 1 to 200 (default 50).
        limit: Query<Option<Limit>>,
        /// Recipients to skip (default 0).
        offset: Query<Option<Offset>>,
    ) -> Result<ListRecipientsResponse, ApiError> {
        let page = page(limit.0, offset.0);
        let listed =
            messages::of_campaign(&self.state.db, auth.user(), CampaignId(id.0), page).await?;
        Ok(ListRecipientsResponse::Ok(Json(RecipientPage {
            items: listed
                .items
                .into_iter()
                .map(|r| RecipientOut {
                    handle: r.handle,
                    name: r.name,
                    message: r.message.into(),
                })
                .collect(),
            total: listed.total,
            limit: page.limit,
            offset: page.offset,
        })))
    }

    /// Create a campaign to an audience
    ///
    /// To a segment, a filter or fans by id, with no recipient limit beyond the creator's fans.
    /// The audience is resolved when the campaign starts (`schedule.at`, or now): a fan who
    /// joins it before then is in it. Its messages are queued a few at a time ahead of the
    /// dispatcher, each recipient's exclusions checked just before (an excluded fan is counted
    /// in `metrics.excluded` with the reason). 201 with the campaign: `scheduled` until its
    /// time, then `active`, `paused` ⇄ `active`, and `completed` or `cancelled`.
    #[oai(path = "/", method = "post", operation_id = "createCampaign")]
    async fn create(
        &self,
        auth: BearerAuth,
        body: JsonBody<CreateCampaignIn>,
        req: &poem::Request,
    ) -> Result<CreateCampaignResponse, ApiError> {
        let user = auth.user();
        if let Some(id) = idempotency::committed_as(req, Effect::campaign)? {
            let c = campaigns::get(&self.state.db, user, id).await?;
            return Ok(CreateCampaignResponse::Created(Json(
                with_metrics(&self.state, c).await?,
            )));
        }
        let new = body.0.parse()?;
        super::state::charge(&self.state, self.state.quotas.campaigns, user).await?;
        let created = campaign_feed::create(
            &self.state.db,
            &self.state.jobs,
            user,
            new,
            idempotency::guard(req).as_ref(),
        )
        .await
        .map_err(|e| match e {
            // Another creator's fans, or none: not found, as any id that is not the caller's.
            fanqueue_jobs::kinds::SubmitError::NotOwned(ids) => ApiError::not_found(&format!(
                "fans {:?} (audience.recipientIds)",
                ids.iter().map(|f| f.0).collect::<Vec<_>>()
            )),
            e => submit_error(e),
        })?;
        Ok(CreateCampaignResponse::Created(Json(
            with_metrics(&self.state, created.campaign).await?,
        )))
    }

    /// Pause a campaign
    ///
    /// No further message of it reaches the platform beyond one already out; its recipients
    /// not yet sent wait. Pausing a paused campaign changes nothing; a campaign that is not
    /// running (scheduled, completed, cancelled, or sent with `POST /api/messages/bulk`) is a
    /// 409.
    #[oai(path = "/:id/pause", method = "post", operation_id = "pauseCampaign")]
    async fn pause(&self, auth: BearerAuth, id: Path<i64>) -> Result<ControlResponse, ApiError> {
        self.control(auth, id.0, Control::Pause).await
    }

    /// Resume a paused campaign
    ///
    /// Goes on with the recipients not yet sent (each still gets the message once). Resuming a
    /// running campaign changes nothing; one that is not paused or running is a 409.
    #[oai(path = "/:id/resume", method = "post", operation_id = "resumeCampaign")]
    async fn resume(&self, auth: BearerAuth, id: Path<i64>) -> Result<ControlResponse, ApiError> {
        self.control(auth, id.0, Control::Resume).await
    }

    /// Cancel a campaign
    ///
    /// Stops it for good: the recipients not yet sent are counted `cancelled` and none of them
    /// gets the message (one already out may still arrive). A scheduled campaign never
    /// starts. Cancelling a cancelled campaign changes nothing; a completed one is a 409.
    #[oai(path = "/:id/cancel", method = "post", operation_id = "cancelCampaign")]
    async fn cancel(&self, auth: BearerAuth, id: Path<i64>) -> Result<ControlResponse, ApiError> {
        self.control(auth, id.0, Control::Cancel).await
    }

    /// List a campaign's runs
    ///
    /// Newest first, each with its own audience and counts. A one-off campaign has one run
    /// once it started.
    #[oai(path = "/:id/runs", method = "get", operation_id = "listCampaignRuns")]
    async fn runs(
        &self,
        auth: BearerAuth,
        id: Path<i64>,
        /// Items per page, 1 to 200 (default 50).
        limit: Query<Option<Limit>>,
        /// Items to skip (default 0).
        offset: Query<Option<Offset>>,
    ) -> Result<ListRunsResponse, ApiError> {
        let c = campaigns::get(&self.state.db, auth.user(), CampaignId(id.0)).await?;
        let page = page(limit.0, offset.0);
        let listed = runs::of_campaign(&self.state.db, c.id, page).await?;
        let mut items = Vec::with_capacity(listed.items.len());
        for run in listed.items {
            items.push(run_out(&self.state, run).await?);
        }
        Ok(ListRunsResponse::Ok(Json(RunPage {
            items,
            total: listed.total,
            limit: page.limit,
            offset: page.offset,
        })))
    }

    /// Retry a campaign's failed recipients
    ///
    /// Every failed message of the campaign goes back on its way once: `queued` again under
    /// one new job, the campaign `active` until they are final (202). With nothing failed,
    /// nothing is queued and `jobId` is null.
    #[oai(
        path = "/:id/retry-failed",
        method = "post",
        operation_id = "retryCampaignFailed"
    )]
    async fn retry_failed(
        &self,
        auth: BearerAuth,
        id: Path<i64>,
        req: &poem::Request,
    ) -> Result<RetryFailedResponse, ApiError> {
        let (job, ids) = match super::idempotency::committed_as(req, Effect::job)? {
            // The first attempt queued them again and died before answering: its job names them.
            Some(job) => {
                let record = record::get(&self.state.db, auth.user(), &job).await?;
                let ids: Vec<MessageId> =
                    serde_json::from_value(record.payload.0["messageIds"].clone())
                        .map_err(|e| ApiError::internal(anyhow::Error::from(e)))?;
                (Some(job), ids)
            }
            None => {
                let key = super::idempotency::guard(req);
                bulk_send::retry_failed(
                    &self.state.db,
                    &self.state.jobs,
                    auth.user(),
                    CampaignId(id.0),
                    key.as_ref(),
                )
                .await
                .map_err(submit_error)?
            }
        };
        Ok(RetryFailedResponse::Accepted(Json(RetryFailedOut {
            campaign_id: id.0,
            requeued: ids.len() as i64,
            message_ids: ids.into_iter().map(|m| m.0).collect(),
            job_id: job.map(|j| j.0),
        })))
    }
}

impl CampaignsApi {
    async fn control(
        &self,
        auth: BearerAuth,
        id: i64,
        what: Control,
    ) -> Result<ControlResponse, ApiError> {
        let c = campaign_feed::control(
            &self.state.db,
            &self.state.jobs,
            auth.user(),
            CampaignId(id),
            what,
        )
        .await?;
        Ok(ControlResponse::Ok(Json(
            with_metrics(&self.state, c).await?,
        )))
    }
}

/// What a campaign retry queued again.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct RetryFailedOut {
    pub campaign_id: i64,
    /// Failed messages now queued again.
    pub requeued: i64,
    pub message_ids: Vec<i64>,
    /// The job that puts them on the outbound queue (null when none had failed).
    #[oai(nullable)]
    pub job_id: Option<String>,
}

#[derive(ApiResponse)]
enum RetryFailedResponse {
    #[oai(status = 202)]
    Accepted(Json<RetryFailedOut>),
}

/// A campaign's recipient: the fan and the campaign's message to them.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct RecipientOut {
    pub handle: String,
    pub name: Option<String>,
    pub message: MessageOut,
}

#[derive(Debug, Object)]
pub struct RecipientPage {
    pub items: Vec<RecipientOut>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

#[derive(ApiResponse)]
enum ListRecipientsResponse {
    #[oai(status = 200)]
    Ok(Json<RecipientPage>),
}
