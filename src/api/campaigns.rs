//! `/api/crm/campaigns`: bulk campaigns with live metrics.

use chrono::{DateTime, Utc};
use fanqueue_jobs::{
    crm::{
        campaigns::{self, Campaign, CampaignStatus, CampaignType},
        messages,
    },
    domain::{CampaignId, MessageId},
    engine::record,
    idempotency::Effect,
    kinds::bulk_send,
};
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
};

use super::{
    conversations::MessageOut,
    error::ApiError,
    messages::submit_error,
    rules::{Limit, Offset, page},
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

/// Counts of the campaign's messages, read live from them, and the platform's figures.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct CampaignMetrics {
    pub total: i64,
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
    let counts = campaigns::counts(&state.db, c.id).await?;
    let stored = |k: &str| c.metrics.0.get(k).and_then(|v| v.as_i64()).unwrap_or(0);
    // Completed as soon as every message is final, even before the job refreshed the row.
    let status = if c.status == CampaignStatus::Active
        && counts.total > 0
        && counts.queued == 0
        && counts.sending == 0
    {
        CampaignStatus::Completed
    } else {
        c.status
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
            queued: counts.queued + counts.sending,
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
