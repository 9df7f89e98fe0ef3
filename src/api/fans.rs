//! `/api/crm/fans`: the creator's fans.

use chrono::{DateTime, Utc};
use fanqueue_jobs::{
    crm::{
        automations::triggers,
        fans::{
            self, Fan, FanFilter, FanPatch, NewFan,
            value_history::{self, ValueChange, ValueSource},
        },
        segments,
    },
    domain::{Cents, Email, FanId, Line, ParseError, Platform, SegmentId, Tags},
    idempotency::Effect,
};
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
    types::MaybeUndefined,
};
use serde::{Deserialize, Serialize};

use super::{
    body::{JsonBody, JsonOut, rfc3339},
    error::ApiError,
    formats::EmailIn,
    idempotency,
    rules::{
        FanHandle, FanName, FanNotes, FanSearch, FanTag, In, Limit, MediaUrl, Offset, PlatformName,
        Rule, page,
    },
    state::{ApiTags, BearerAuth, State},
    words::Word,
};

pub struct FansApi {
    state: State,
}

impl FansApi {
    pub fn new(state: State) -> Self {
        FansApi { state }
    }
}

/// A fan as the API shows it.
#[derive(Debug, Object, Serialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct FanOut {
    pub id: i64,
    pub platform: Word<Platform>,
    /// `@` + the platform username, lower case.
    pub handle: String,
    #[oai(nullable)]
    pub name: Option<String>,
    #[oai(nullable)]
    pub email: Option<String>,
    #[oai(nullable)]
    pub avatar_url: Option<String>,
    pub tags: Vec<String>,
    #[oai(nullable)]
    pub notes: Option<String>,
    /// Lifetime spend in cents.
    pub value_cents: i64,
    #[serde(with = "rfc3339::option")]
    #[oai(nullable)]
    pub last_seen_at: Option<DateTime<Utc>>,
    #[serde(with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "rfc3339")]
    pub updated_at: DateTime<Utc>,
}

impl From<Fan> for FanOut {
    fn from(f: Fan) -> Self {
        FanOut {
            id: f.id.0,
            platform: Word(f.platform),
            handle: f.handle,
            name: f.name,
            email: f.email,
            avatar_url: f.avatar_url,
            tags: f.tags.0,
            notes: f.notes,
            value_cents: f.value_cents,
            last_seen_at: f.last_seen_at,
            created_at: f.created_at,
            updated_at: f.updated_at,
        }
    }
}

#[derive(Debug, Object, Serialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct FanPage {
    pub items: Vec<FanOut>,
    /// Fans matching the filters, over all pages.
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

/// A new fan. Only `handle` is required.
#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateFan {
    /// onlyfans (default), fansly or other; case and surrounding spaces do not matter.
    #[oai(nullable)]
    pub platform: Option<In<PlatformName>>,
    /// Platform username, with or without `@` (1 to 64 letters, digits, `_`, `.` or `-`);
    /// matched without case.
    pub handle: In<FanHandle>,
    /// Display name: one line of at most 200 characters (trimmed), no control characters.
    #[oai(nullable)]
    pub name: Option<In<FanName>>,
    #[oai(nullable)]
    pub email: Option<EmailIn>,
    /// An absolute http(s) URL with a host, no spaces, at most 2048 bytes.
    #[oai(nullable)]
    pub avatar_url: Option<In<MediaUrl>>,
    /// At most 50 distinct tags (duplicates, compared without case, are dropped), each one
    /// line of at most 50 characters.
    #[oai(nullable)]
    pub tags: Option<Vec<In<FanTag>>>,
    /// Free text: not blank, at most 10,000 characters, no control characters but line breaks
    /// and tabs.
    #[oai(nullable)]
    pub notes: Option<In<FanNotes>>,
    /// Lifetime spend in cents, not negative.
    #[oai(
        nullable,
        validator(minimum(value = "0"), maximum(value = "100000000000"))
    )]
    pub value_cents: Option<i64>,
    #[oai(nullable)]
    pub last_seen_at: Option<DateTime<Utc>>,
}

/// Changes to a fan: absent fields stay as they are, `null` clears a nullable field.
#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateFan {
    /// As for a new fan.
    #[serde(default)]
    #[oai(nullable)]
    pub name: MaybeUndefined<In<FanName>>,
    #[serde(default)]
    #[oai(nullable)]
    pub email: MaybeUndefined<EmailIn>,
    #[serde(default)]
    #[oai(nullable)]
    pub avatar_url: MaybeUndefined<In<MediaUrl>>,
    /// Replaces the fan's tags (as for a new fan); null leaves them.
    #[oai(nullable)]
    pub tags: Option<Vec<In<FanTag>>>,
    #[serde(default)]
    #[oai(nullable)]
    pub notes: MaybeUndefined<In<FanNotes>>,
    /// Null leaves the value as it is.
    #[oai(
        nullable,
        validator(minimum(value = "0"), maximum(value = "100000000000"))
    )]
    pub value_cents: Option<i64>,
    #[serde(default)]
    #[oai(nullable)]
    pub last_seen_at: MaybeUndefined<DateTime<Utc>>,
}

#[derive(ApiResponse)]
enum ListFansResponse {
    /// One page of the caller's fans, newest first.
    #[oai(status = 200)]
    Ok(JsonOut<FanPage>),
}

#[derive(ApiResponse)]
enum CreateFanResponse {
    /// The fan was created.
    #[oai(status = 201)]
    Created(JsonOut<FanOut>),
}

/// One change of a fan's lifetime value.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ValueChangeOut {
    pub at: DateTime<Utc>,
    /// The value after the change, in cents.
    pub value_cents: i64,
    /// How much it moved (negative when lowered by an edit or an import).
    pub delta_cents: i64,
    /// What moved it.
    pub source: Word<ValueSource>,
}

impl From<ValueChange> for ValueChangeOut {
    fn from(c: ValueChange) -> Self {
        ValueChangeOut {
            at: c.at,
            value_cents: c.value_cents,
            delta_cents: c.delta_cents,
            source: Word(c.source),
        }
    }
}

/// A fan with its recent value history.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct FanDetailOut {
    #[oai(flatten)]
    pub fan: FanOut,
    /// The latest changes of `valueCents`, newest first (at most 10; all of them under
    /// `/api/crm/fans/{id}/value-history`).
    pub value_history: Vec<ValueChangeOut>,
}

#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ValueHistoryPage {
    pub items: Vec<ValueChangeOut>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

#[derive(ApiResponse)]
enum GetFanResponse {
    #[oai(status = 200)]
    Ok(Json<FanDetailOut>),
}

#[derive(ApiResponse)]
enum ValueHistoryResponse {
    /// One page of the fan's value changes, newest first.
    #[oai(status = 200)]
    Ok(Json<ValueHistoryPage>),
}

#[derive(ApiResponse)]
enum UpdateFanResponse {
    /// The fan after the change.
    #[oai(status = 200)]
    Ok(JsonOut<FanOut>),
}

#[derive(ApiResponse)]
enum DeleteFanResponse {
    /// The fan, its conversation and its messages are gone.
    #[oai(status = 204)]
    Deleted,
}

/// Parses one field, naming it in the 400 when it is refused.
fn field<T>(name: &str, parsed: Result<T, ParseError>) -> Result<T, ApiError> {
    parsed.map_err(|e| ApiError::invalid(name, e))
}

fn optional<T>(
    name: &str,
    raw: Option<&str>,
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
) -> Result<Option<T>, ApiError> {
    raw.map(|v| field(name, parse(v))).transpose()
}

/// For a patch: undefined leaves the field, null clears it, a value is parsed.
fn patch<T, S: std::ops::Deref<Target = str>>(
    name: &str,
    raw: &MaybeUndefined<S>,
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
) -> Result<Option<Option<T>>, ApiError> {
    Ok(match raw {
        MaybeUndefined::Undefined => None,
        MaybeUndefined::Null => Some(None),
        MaybeUndefined::Value(v) => Some(Some(field(name, parse(v))?)),
    })
}

/// For a patch of a field under a rule: undefined leaves it, null clears it.
fn set<R: Rule>(raw: MaybeUndefined<In<R>>) -> Option<Option<R::Value>> {
    match raw {
        MaybeUndefined::Undefined => None,
        MaybeUndefined::Null => Some(None),
        MaybeUndefined::Value(v) => Some(Some(v.into_inner())),
    }
}

/// Tags from their parsed lines (the field `name`): at most 50, duplicates (without case)
/// dropped.
pub(super) fn tags(name: &str, lines: Vec<In<FanTag>>) -> Result<Tags, ApiError> {
    let lines: Vec<Line> = lines.into_iter().map(In::into_inner).collect();
    field(
        name,
        Tags::parse(&lines.iter().map(Line::as_str).collect::<Vec<_>>()),
    )
}

impl CreateFan {
    fn parse(self) -> Result<NewFan, ApiError> {
        Ok(NewFan {
            platform: self.platform.map_or(Platform::Onlyfans, In::into_inner),
            handle: self.handle.into_inner(),
            name: self.name.map(In::into_inner),
            email: optional("email", self.email.as_deref(), Email::parse)?,
            avatar_url: self.avatar_url.map(In::into_inner),
            tags: tags("tags", self.tags.unwrap_or_default())?,
            notes: self.notes.map(In::into_inner),
            value_cents: field("valueCents", Cents::new(self.value_cents.unwrap_or(0)))?,
            last_seen_at: self.last_seen_at,
        })
    }
}

impl UpdateFan {
    fn parse(self) -> Result<FanPatch, ApiError> {
        Ok(FanPatch {
            name: set(self.name),
            email: patch("email", &self.email, Email::parse)?,
            avatar_url: set(self.avatar_url),
            tags: self.tags.map(|t| tags("tags", t)).transpose()?,
            notes: set(self.notes),
            value_cents: self
                .value_cents
                .map(|v| field("valueCents", Cents::new(v)))
                .transpose()?,
            last_seen_at: match self.last_seen_at {
                MaybeUndefined::Undefined => None,
                MaybeUndefined::Null => Some(None),
                MaybeUndefined::Value(t) => Some(Some(t)),
            },
        })
    }
}

#[OpenApi(prefix_path = "/api/crm/fans", tag = "ApiTags::Fans")]
impl FansApi {
    /// List fans
    ///
    /// The caller's fans, newest first, optionally only those carrying `tag`, worth at least
    /// `minValueCents`, whose handle or name holds `q`, or in the segment `segmentId` as it is
    /// now. `limit` defaults to 50, at most 200.
    #[oai(path = "/", method = "get", operation_id = "listFans")]
    #[allow(clippy::too_many_arguments)] // poem-openapi takes each query parameter as one
    async fn list(
        &self,
        auth: BearerAuth,
        /// Only fans with this tag (compared without case).
        tag: Query<Option<In<FanTag>>>,
        /// Only fans whose handle or name holds this text (1 to 100 characters, compared
        /// without case).
        q: Query<Option<In<FanSearch>>>,
        /// Only fans whose lifetime spend is at least this many cents.
        #[oai(
            name = "minValueCents",
            validator(minimum(value = "0"), maximum(value = "100000000000"))
        )]
        min_value_cents: Query<Option<i64>>,
        /// Only the fans of this segment of the caller's, as it is now (with the filters
        /// above, if given, too).
        #[oai(name = "segmentId", validator(minimum(value = "1")))]
        segment_id: Query<Option<i64>>,
        /// Fans per page, 1 to 200 (default 50).
        limit: Query<Option<Limit>>,
        /// Fans to skip (default 0).
        offset: Query<Option<Offset>>,
    ) -> Result<ListFansResponse, ApiError> {
        let page = page(limit.0, offset.0);
        let db = &self.state.db;
        let filter = FanFilter {
            tag: tag.0.map(|t| t.into_inner().as_str().to_owned()),
            search: q.0.map(|q| q.into_inner().as_str().to_owned()),
            min_value: min_value_cents
                .0
                .map(|v| field("minValueCents", Cents::new(v)))
                .transpose()?,
        };
        let listed = match segment_id.0 {
            Some(id) => {
                let segment = segments::get(db, auth.user(), SegmentId(id)).await?;
                segments::fans(db, auth.user(), &segment.filter.0, &filter, page).await?
            }
            None => fans::list(db, &self.state.fan_pages, auth.user(), &filter, page).await?,
        };
        Ok(ListFansResponse::Ok(JsonOut(FanPage {
            items: listed.items.into_iter().map(FanOut::from).collect(),
            total: listed.total,
            limit: page.limit,
            offset: page.offset,
        })))
    }

    /// Create a fan
    ///
    /// 409 when the caller already has a fan with this handle on this platform.
    #[oai(path = "/", method = "post", operation_id = "createFan")]
    async fn create(
        &self,
        auth: BearerAuth,
        body: JsonBody<CreateFan>,
        req: &poem::Request,
    ) -> Result<CreateFanResponse, ApiError> {
        let new = body.0.parse()?;
        let fan = match idempotency::committed_as(req, Effect::fan)? {
            // The first attempt created it and died before answering.
            Some(id) => fans::get(&self.state.db, auth.user(), id).await?,
            None => {
                let key = idempotency::guard(req);
                triggers::new_fan(&self.state.db, auth.user(), new, key.as_ref()).await?
            }
        };
        Ok(CreateFanResponse::Created(JsonOut(fan.into())))
    }

    /// Get a fan
    ///
    /// With the latest changes of its value (`valueHistory`).
    #[oai(path = "/:id", method = "get", operation_id = "getFan")]
    async fn get(&self, auth: BearerAuth, id: Path<i64>) -> Result<GetFanResponse, ApiError> {
        let fan = fans::get(&self.state.db, auth.user(), FanId(id.0)).await?;
        let history = value_history::recent(&self.state.db, fan.id).await?;
        Ok(GetFanResponse::Ok(Json(FanDetailOut {
            fan: fan.into(),
            value_history: history.into_iter().map(ValueChangeOut::from).collect(),
        })))
    }

    /// A fan's value history
    ///
    /// Every change of the fan's lifetime value (edits, imports, platform events), newest
    /// first. `limit` defaults to 50, at most 200.
    #[oai(
        path = "/:id/value-history",
        method = "get",
        operation_id = "listFanValueHistory"
    )]
    async fn value_history(
        &self,
        auth: BearerAuth,
        id: Path<i64>,
        /// Changes per page, 1 to 200 (default 50).
        limit: Query<Option<Limit>>,
        /// Changes to skip (default 0).
        offset: Query<Option<Offset>>,
    ) -> Result<ValueHistoryResponse, ApiError> {
        let page = page(limit.0, offset.0);
        let listed = value_history::list(&self.state.db, auth.user(), FanId(id.0), page).await?;
        Ok(ValueHistoryResponse::Ok(Json(ValueHistoryPage {
            items: listed.items.into_iter().map(ValueChangeOut::from).collect(),
            total: listed.total,
            limit: page.limit,
            offset: page.offset,
        })))
    }

    /// Update a fan
    ///
    /// Changes name, email, avatar, tags, notes, value or last-seen time; the handle and
    /// platform are the fan's identity and stay.
    #[oai(path = "/:id", method = "put", operation_id = "updateFan")]
    async fn update(
        &self,
        auth: BearerAuth,
        id: Path<i64>,
        body: JsonBody<UpdateFan>,
    ) -> Result<UpdateFanResponse, ApiError> {
        let fan = fans::update(&self.state.db, auth.user(), FanId(id.0), body.0.parse()?).await?;
        Ok(UpdateFanResponse::Ok(JsonOut(fan.into())))
    }

    /// Delete a fan
    ///
    /// Also deletes the fan's conversation and messages.
    #[oai(path = "/:id", method = "delete", operation_id = "deleteFan")]
    async fn delete(&self, auth: BearerAuth, id: Path<i64>) -> Result<DeleteFanResponse, ApiError> {
        fans::delete(&self.state.db, auth.user(), FanId(id.0)).await?;
        Ok(DeleteFanResponse::Deleted)
    }
}
