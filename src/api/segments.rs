//! `/api/crm/segments`: saved audiences (a name and a filter over the creator's fans), their
//! live preview, and the preview of a filter not saved.

use chrono::{DateTime, Utc};
use fanqueue_jobs::{
    crm::segments::{self, Filter, Preview, Segment, SpentInLastDays},
    domain::{CampaignId, Cents, MessageId, SegmentId, Tags},
    idempotency::Effect,
};
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
};
use serde::Deserialize;

use super::{
    body::JsonBody,
    error::ApiError,
    fans::{self, FanOut},
    idempotency,
    rules::{FanTag, In, Limit, Offset, PlatformName, SegmentName, page},
    state::{ApiTags, BearerAuth, State},
};

pub struct SegmentsApi {
    state: State,
}

impl SegmentsApi {
    pub fn new(state: State) -> Self {
        SegmentsApi { state }
    }
}

/// Spend in a window.
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpentIn {
    /// At least this many cents…
    #[oai(validator(minimum(value = "1"), maximum(value = "100000000000")))]
    pub cents: i64,
    /// …in the last this many days (1 to 3650).
    #[oai(validator(minimum(value = "1"), maximum(value = "3650")))]
    pub days: u32,
}

/// Which fans: every field given (not null) must hold; `{}` is every fan. Fields about time are read
/// when the filter is (a preview, a list, a campaign's start), not when it was saved.
#[derive(Debug, Clone, Default, Object, Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterIn {
    /// Fans with at least one of these tags (compared without case; at most 50).
    #[oai(nullable, validator(max_items = 50))]
    pub tags_any: Option<Vec<In<FanTag>>>,
    /// Fans with every one of these tags.
    #[oai(nullable, validator(max_items = 50))]
    pub tags_all: Option<Vec<In<FanTag>>>,
    /// Fans with none of these tags.
    #[oai(nullable, validator(max_items = 50))]
    pub tags_none: Option<Vec<In<FanTag>>>,
    #[oai(nullable)]
    pub platform: Option<In<PlatformName>>,
    /// Lifetime value at least this many cents.
    #[oai(
        nullable,
        validator(minimum(value = "0"), maximum(value = "100000000000"))
    )]
    pub min_value_cents: Option<i64>,
    /// Lifetime value at most this many cents.
    #[oai(
        nullable,
        validator(minimum(value = "0"), maximum(value = "100000000000"))
    )]
    pub max_value_cents: Option<i64>,
    /// Spent at least `cents` in the last `days` days: paid unlocks, tips and subscriptions
    /// reported by `POST /api/onlyfans/events` (imports set a lifetime value, not dated spend).
    #[oai(nullable)]
    pub spent_cents_in_last_days: Option<SpentIn>,
    /// Last seen before this time (a fan never seen does not match).
    #[oai(nullable)]
    pub last_seen_before: Option<DateTime<Utc>>,
    /// Last seen at or after this time.
    #[oai(nullable)]
    pub last_seen_after: Option<DateTime<Utc>>,
    /// Not seen for this many days (1 to 3650); a fan never seen counts as inactive.
    #[oai(nullable, validator(minimum(value = "1"), maximum(value = "3650")))]
    pub inactive_days: Option<u32>,
    /// Subscribed (the latest subscription event was `subscription` or
    /// `subscription_renewal_off`) or not (`subscription_expired`, or no such event).
    #[oai(nullable)]
    pub subscribed: Option<bool>,
    /// Wrote to the creator within this many hours (1 to 87600).
    #[oai(nullable, validator(minimum(value = "1"), maximum(value = "87600")))]
    pub last_inbound_within_hours: Option<u32>,
    /// Was messaged by the creator (queued, sending or sent) within this many hours.
    #[oai(nullable, validator(minimum(value = "1"), maximum(value = "87600")))]
    pub last_outbound_within_hours: Option<u32>,
    /// Has unread inbound messages (true) or none (false).
    #[oai(nullable)]
    pub unread_inbound: Option<bool>,
    /// Unlocked this paid message of the caller's.
    #[oai(nullable, validator(minimum(value = "1")))]
    pub bought_message_id: Option<i64>,
    /// Unlocked a message of this campaign of the caller's.
    #[oai(nullable, validator(minimum(value = "1")))]
    pub bought_campaign_id: Option<i64>,
    /// Unlocked no message of this campaign (including fans it never reached).
    #[oai(nullable, validator(minimum(value = "1")))]
    pub not_bought_campaign_id: Option<i64>,
}

/// A filter as stored, every field it holds.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct FilterOut {
    #[oai(skip_serializing_if_is_none)]
    pub tags_any: Option<Vec<String>>,
    #[oai(skip_serializing_if_is_none)]
    pub tags_all: Option<Vec<String>>,
    #[oai(skip_serializing_if_is_none)]
    pub tags_none: Option<Vec<String>>,
    #[oai(skip_serializing_if_is_none)]
    pub platform: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub min_value_cents: Option<i64>,
    #[oai(skip_serializing_if_is_none)]
    pub max_value_cents: Option<i64>,
    #[oai(skip_serializing_if_is_none)]
    pub spent_cents_in_last_days: Option<SpentOut>,
    #[oai(skip_serializing_if_is_none)]
    pub last_seen_before: Option<DateTime<Utc>>,
    #[oai(skip_serializing_if_is_none)]
    pub last_seen_after: Option<DateTime<Utc>>,
    #[oai(skip_serializing_if_is_none)]
    pub inactive_days: Option<u32>,
    #[oai(skip_serializing_if_is_none)]
    pub subscribed: Option<bool>,
    #[oai(skip_serializing_if_is_none)]
    pub last_inbound_within_hours: Option<u32>,
    #[oai(skip_serializing_if_is_none)]
    pub last_outbound_within_hours: Option<u32>,
    #[oai(skip_serializing_if_is_none)]
    pub unread_inbound: Option<bool>,
    #[oai(skip_serializing_if_is_none)]
    pub bought_message_id: Option<i64>,
    #[oai(skip_serializing_if_is_none)]
    pub bought_campaign_id: Option<i64>,
    #[oai(skip_serializing_if_is_none)]
    pub not_bought_campaign_id: Option<i64>,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct SpentOut {
    pub cents: i64,
    pub days: u32,
}

/// A filter's list of tags: the document's bound of 50 holds for the list as sent, before
/// duplicates are dropped.
fn tags(name: &str, raw: Option<Vec<In<FanTag>>>) -> Result<Tags, ApiError> {
    let raw = raw.unwrap_or_default();
    if raw.len() > Tags::MAX_COUNT {
        return Err(ApiError::invalid(
            name,
            format!("must hold at most {} tags", Tags::MAX_COUNT),
        ));
    }
    fans::tags(name, raw)
}

fn cents(name: &str, raw: Option<i64>) -> Result<Option<Cents>, ApiError> {
    raw.map(|c| Cents::new(c).map_err(|e| ApiError::invalid(name, e)))
        .transpose()
}

/// An id a filter names: positive (one that is not the caller's simply matches nothing).
fn id(name: &str, raw: Option<i64>) -> Result<Option<i64>, ApiError> {
    match raw {
        Some(n) if n < 1 => Err(ApiError::invalid(name, "must be a positive id")),
        _ => Ok(raw),
    }
}

impl FilterIn {
    /// The typed filter, or a 400 naming the field.
    pub(super) fn parse(self) -> Result<Filter, ApiError> {
        let filter = Filter {
            tags_any: tags("filter.tagsAny", self.tags_any)?,
            tags_all: tags("filter.tagsAll", self.tags_all)?,
            tags_none: tags("filter.tagsNone", self.tags_none)?,
            platform: self.platform.map(In::into_inner),
            min_value_cents: cents("filter.minValueCents", self.min_value_cents)?,
            max_value_cents: cents("filter.maxValueCents", self.max_value_cents)?,
            spent_cents_in_last_days: match self.spent_cents_in_last_days {
                Some(s) => Some(SpentInLastDays {
                    cents: Cents::new(s.cents)
                        .map_err(|e| ApiError::invalid("filter.spentCentsInLastDays.cents", e))?,
                    days: s.days,
                }),
                None => None,
            },
            last_seen_before: self.last_seen_before,
            last_seen_after: self.last_seen_after,
            inactive_days: self.inactive_days,
            subscribed: self.subscribed,
            last_inbound_within_hours: self.last_inbound_within_hours,
            last_outbound_within_hours: self.last_outbound_within_hours,
            unread_inbound: self.unread_inbound,
            bought_message_id: id("filter.boughtMessageId", self.bought_message_id)?.map(MessageId),
            bought_campaign_id: id("filter.boughtCampaignId", self.bought_campaign_id)?
                .map(CampaignId),
            not_bought_campaign_id: id("filter.notBoughtCampaignId", self.not_bought_campaign_id)?
                .map(CampaignId),
        };
        filter
            .validate()
            .map_err(|e| ApiError::invalid("filter", e))?;
        Ok(filter)
    }
}

fn listed(tags: &Tags) -> Option<Vec<String>> {
    (!tags.is_empty()).then(|| tags.as_slice().to_vec())
}

impl From<&Filter> for FilterOut {
    fn from(f: &Filter) -> Self {
        FilterOut {
            tags_any: listed(&f.tags_any),
            tags_all: listed(&f.tags_all),
            tags_none: listed(&f.tags_none),
            platform: f.platform.map(|p| p.as_str().to_owned()),
            min_value_cents: f.min_value_cents.map(Cents::get),
            max_value_cents: f.max_value_cents.map(Cents::get),
            spent_cents_in_last_days: f.spent_cents_in_last_days.map(|s| SpentOut {
                cents: s.cents.get(),
                days: s.days,
            }),
            last_seen_before: f.last_seen_before,
            last_seen_after: f.last_seen_after,
            inactive_days: f.inactive_days,
            subscribed: f.subscribed,
            last_inbound_within_hours: f.last_inbound_within_hours,
            last_outbound_within_hours: f.last_outbound_within_hours,
            unread_inbound: f.unread_inbound,
            bought_message_id: f.bought_message_id.map(|m| m.0),
            bought_campaign_id: f.bought_campaign_id.map(|c| c.0),
            not_bought_campaign_id: f.not_bought_campaign_id.map(|c| c.0),
        }
    }
}

/// A segment as the API shows it.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct SegmentOut {
    pub id: i64,
    pub name: String,
    pub filter: FilterOut,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<Segment> for SegmentOut {
    fn from(s: Segment) -> Self {
        SegmentOut {
            id: s.id.0,
            name: s.name,
            filter: FilterOut::from(&s.filter.0),
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct SegmentPage {
    pub items: Vec<SegmentOut>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

/// A new segment.
#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateSegment {
    /// One line of at most 200 characters (trimmed).
    pub name: In<SegmentName>,
    /// Absent: every fan.
    #[oai(nullable)]
    pub filter: Option<FilterIn>,
}

/// Changes to a segment: an absent or null field stays as it is.
#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateSegment {
    #[oai(nullable)]
    pub name: Option<In<SegmentName>>,
    /// Replaces the whole filter.
    #[oai(nullable)]
    pub filter: Option<FilterIn>,
}

/// A filter to preview without saving it.
#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreviewFilter {
    pub filter: FilterIn,
}

/// How many fans match now, and some of them.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct PreviewOut {
    pub count: i64,
    /// The newest matching fans, at most 20.
    pub sample: Vec<FanOut>,
}

impl From<Preview> for PreviewOut {
    fn from(p: Preview) -> Self {
        PreviewOut {
            count: p.count,
            sample: p.sample.into_iter().map(FanOut::from).collect(),
        }
    }
}

#[derive(ApiResponse)]
enum ListResponse {
    /// One page of the caller's segments, newest first.
    #[oai(status = 200)]
    Ok(Json<SegmentPage>),
}

#[derive(ApiResponse)]
enum CreateResponse {
    /// The segment was saved.
    #[oai(status = 201)]
    Created(Json<SegmentOut>),
}

#[derive(ApiResponse)]
enum GetResponse {
    #[oai(status = 200)]
    Ok(Json<SegmentOut>),
}

#[derive(ApiResponse)]
enum DeleteResponse {
    /// The segment is gone (its fans are untouched).
    #[oai(status = 204)]
    Deleted,
}

#[derive(ApiResponse)]
enum PreviewResponse {
    #[oai(status = 200)]
    Ok(Json<PreviewOut>),
}

#[OpenApi(prefix_path = "/api/crm/segments", tag = "ApiTags::Segments")]
impl SegmentsApi {
    /// List segments
    ///
    /// The caller's segments, newest first. `limit` defaults to 50, at most 200.
    #[oai(path = "/", method = "get", operation_id = "listSegments")]
    async fn list(
        &self,
        auth: BearerAuth,
        /// Segments per page, 1 to 200 (default 50).
        limit: Query<Option<Limit>>,
        /// Segments to skip (default 0).
        offset: Query<Option<Offset>>,
    ) -> Result<ListResponse, ApiError> {
        let page = page(limit.0, offset.0);
        let listed = segments::list(&self.state.db, auth.user(), page).await?;
        Ok(ListResponse::Ok(Json(SegmentPage {
            items: listed.items.into_iter().map(SegmentOut::from).collect(),
            total: listed.total,
            limit: page.limit,
            offset: page.offset,
        })))
    }

    /// Create a segment
    ///
    /// A name and a filter; the fans it holds are read whenever it is used.
    #[oai(path = "/", method = "post", operation_id = "createSegment")]
    async fn create(
        &self,
        auth: BearerAuth,
        body: JsonBody<CreateSegment>,
        req: &poem::Request,
    ) -> Result<CreateResponse, ApiError> {
        let body = body.0;
        let filter = body.filter.unwrap_or_default().parse()?;
        let db = &self.state.db;
        let segment = match idempotency::committed_as(req, Effect::segment)? {
            Some(id) => segments::get(db, auth.user(), id).await?,
            None => {
                let key = idempotency::guard(req);
                let name = body.name.into_inner();
                segments::create(db, auth.user(), name, filter, key.as_ref()).await?
            }
        };
        Ok(CreateResponse::Created(Json(segment.into())))
    }

    /// Preview a filter
    ///
    /// How many of the caller's fans a filter matches now, and the newest 20 of them, without
    /// saving it.
    #[oai(path = "/preview", method = "post", operation_id = "previewFilter")]
    async fn preview_filter(
        &self,
        auth: BearerAuth,
        body: JsonBody<PreviewFilter>,
    ) -> Result<PreviewResponse, ApiError> {
        let filter = body.0.filter.parse()?;
        let preview = segments::preview(&self.state.db, auth.user(), &filter).await?;
        Ok(PreviewResponse::Ok(Json(preview.into())))
    }

    /// Get a segment
    #[oai(path = "/:id", method = "get", operation_id = "getSegment")]
    async fn get(&self, auth: BearerAuth, id: Path<i64>) -> Result<GetResponse, ApiError> {
        let segment = segments::get(&self.state.db, auth.user(), SegmentId(id.0)).await?;
        Ok(GetResponse::Ok(Json(segment.into())))
    }

    /// Preview a segment
    ///
    /// How many of the caller's fans the segment holds now, and the newest 20 of them.
    #[oai(path = "/:id/preview", method = "get", operation_id = "previewSegment")]
    async fn preview(&self, auth: BearerAuth, id: Path<i64>) -> Result<PreviewResponse, ApiError> {
        let db = &self.state.db;
        let segment = segments::get(db, auth.user(), SegmentId(id.0)).await?;
        let preview = segments::preview(db, auth.user(), &segment.filter.0).await?;
        Ok(PreviewResponse::Ok(Json(preview.into())))
    }

    /// Update a segment
    ///
    /// Renames it and/or replaces its filter.
    #[oai(path = "/:id", method = "put", operation_id = "updateSegment")]
    async fn update(
        &self,
        auth: BearerAuth,
        id: Path<i64>,
        body: JsonBody<UpdateSegment>,
    ) -> Result<GetResponse, ApiError> {
        let body = body.0;
        let filter = body.filter.map(FilterIn::parse).transpose()?;
        let name = body.name.map(In::into_inner);
        let segment =
            segments::update(&self.state.db, auth.user(), SegmentId(id.0), name, filter).await?;
        Ok(GetResponse::Ok(Json(segment.into())))
    }

    /// Delete a segment
    #[oai(path = "/:id", method = "delete", operation_id = "deleteSegment")]
    async fn delete(&self, auth: BearerAuth, id: Path<i64>) -> Result<DeleteResponse, ApiError> {
        segments::delete(&self.state.db, auth.user(), SegmentId(id.0)).await?;
        Ok(DeleteResponse::Deleted)
    }
}
