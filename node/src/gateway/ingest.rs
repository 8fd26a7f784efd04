//! Webhook ingestion over HTTP: source management under /api/ingest/sources
//! (admin scope), the receiver POST /api/ingest/webhook/{source_id} and flow
//! webhooks at /webhook/flow/{flow_id}, both authenticated by the source's
//! own secret. Each maps onto the gRPC `Ingest` service.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::Request;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::Method;
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::header::HOST;
use raftstream_proto::ErrorCode;
use serde::Deserialize;
use serde::Serialize;
use utoipa::ToSchema;

use super::ApiError;
use super::ErrorBody;
use super::Shared;
use super::error::AuthErrors;
use super::error::BodyErrors;
use super::error::ClusterErrors;
use super::error::FlowErrors;
use super::error::NoSuchSource;
use super::error::PathErrors;
use super::error::WriteErrors;
use super::extract::ApiPath;
use super::extract::ApiQuery;
use super::extract::JsonBody;
use super::extract::SourcePath;
use super::extract::read_body;
use super::topics::Done;
use crate::api::service;
use crate::api::service::Caller;
use crate::api::service::Delivery;
use crate::api::service::Hops;
use crate::api::service::NewSource;
use crate::api::service::SchemaCheck;
use crate::api::service::SourceView;
use crate::auth::bearer_credentials;
use crate::ingest::envelope::FlowRequest;
use crate::model::TopicName;
use crate::model::rfc3339;
use crate::raft::types::SourceKind;

/// What kind of system delivers to a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SourceType {
    /// Workato job, recipe and connection webhooks, normalised.
    Workato,
    /// Any JSON, kept verbatim in `rawPayload` (a string) and as JSON in
    /// `payload`.
    Generic,
    /// An integration flow's webhook (`/webhook/flow/{flow_id}`): the
    /// request itself is published, as `{method, headers, query, body}`.
    Flow,
}

impl From<SourceType> for SourceKind {
    fn from(kind: SourceType) -> SourceKind {
        match kind {
            SourceType::Workato => SourceKind::Workato,
            SourceType::Generic => SourceKind::Generic,
            SourceType::Flow => SourceKind::Flow,
        }
    }
}

impl From<SourceKind> for SourceType {
    fn from(kind: SourceKind) -> SourceType {
        match kind {
            SourceKind::Workato => SourceType::Workato,
            SourceKind::Generic => SourceType::Generic,
            SourceKind::Flow => SourceType::Flow,
        }
    }
}

/// A new ingestion source.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreateSource {
    /// Not blank, at most 255 characters.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    pub name: String,
    pub source_type: SourceType,
    /// An existing topic's integer id or name; a name no topic has yet
    /// creates a topic of one partition for the source.
    #[schema(min_length = 1)]
    pub topic: String,
    /// When set, every delivery must be signed: `X-Workato-Signature` is
    /// the hex HMAC-SHA256 of `"{timestamp}.{raw body}"` under this secret,
    /// the timestamp (Unix seconds, within 5 minutes of the node's clock)
    /// in `X-Workato-Timestamp` or as `t=` in the signature. At least 16
    /// bytes.
    #[schema(min_length = 16)]
    pub hmac_secret: Option<String>,
    /// Copied into every event's `tenantId`; `default` when absent.
    pub tenant_id: Option<String>,
}

/// An ingestion source, without its secret.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Source {
    pub id: String,
    pub name: String,
    pub source_type: SourceType,
    /// `awaiting_first_event` until the first accepted delivery, then
    /// `active`; `unknown` when the partition's counters could not be read.
    pub status: String,
    /// Where the source's deliveries go.
    pub webhook_url: String,
    pub topic: String,
    pub topic_id: u64,
    /// The partition every delivery of this source is appended to.
    pub partition: u32,
    /// The last four characters of the current secret.
    pub secret_last_four: String,
    /// Whether deliveries must be signed.
    pub hmac: bool,
    pub tenant_id: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub last_event_at: Option<String>,
    pub event_count: u64,
}

/// A source with its secret, shown this once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SourceWithSecret {
    #[serde(flatten)]
    pub source: Source,
    /// The bearer secret (`rsi_…`) deliveries must present. Only its hash
    /// is stored.
    pub secret: String,
}

/// A list of sources.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SourceList {
    pub data: Vec<Source>,
}

/// A delivery was stored on a majority of its partition's replicas.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    /// Always `true`.
    pub accepted: bool,
    /// The body's length.
    pub bytes: u64,
    /// The event's id; a repeat of an `Idempotency-Key` answers the first
    /// delivery's.
    pub event_id: String,
}

/// Where a source takes deliveries, as seen through the Host the caller
/// used to reach this node.
fn webhook_url(headers: &HeaderMap, source: &SourceView) -> String {
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let scheme = match headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
    {
        Some("https") => "https",
        _ => "http",
    };
    match source.kind {
        SourceKind::Flow => format!("{scheme}://{host}/webhook/flow/{}", source.id),
        SourceKind::Workato | SourceKind::Generic => {
            format!("{scheme}://{host}/api/ingest/webhook/{}", source.id)
        }
    }
}

fn source_of(headers: &HeaderMap, source: &SourceView) -> Source {
    Source {
        id: source.id.clone(),
        name: source.name.clone(),
        source_type: source.kind.into(),
        status: source.status.as_str().to_string(),
        webhook_url: webhook_url(headers, source),
        topic: source.topic_name.clone(),
        topic_id: source.topic_id.0,
        partition: source.partition,
        secret_last_four: source.secret_last_four.clone(),
        hmac: source.hmac,
        tenant_id: source.tenant_id.clone(),
        created_at: rfc3339(source.created_at_ms),
        last_event_at: source.last_event_ms.map(rfc3339),
        event_count: source.event_count,
    }
}

fn with_secret(headers: &HeaderMap, created: service::SourceWithSecret) -> SourceWithSecret {
    SourceWithSecret {
        source: source_of(headers, &created.source),
        secret: created.secret,
    }
}

/// Creates an ingestion source.
#[utoipa::path(
    post,
    path = "/api/ingest/sources",
    tag = "ingest",
    operation_id = "create_source",
    request_body(content = CreateSource, content_type = "application/json"),
    responses(
        (status = 201, description = "The source and its secret, shown this once.",
            body = SourceWithSecret),
        (status = 400, description = "`invalid_request`: malformed JSON or an invalid field, \
            such as an `hmac_secret` shorter than 16 bytes.", body = ErrorBody),
        (status = 404, description = "`not_found`: no topic has this id.", body = ErrorBody),
        BodyErrors,
        AuthErrors,
        ClusterErrors,
        WriteErrors,
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(gateway): Shared,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateSource>,
) -> Result<(StatusCode, Json<SourceWithSecret>), ApiError> {
    let new = NewSource {
        name: body.name,
        kind: body.source_type.into(),
        topic: TopicName::parse(&body.topic),
        hmac_secret: body.hmac_secret,
        tenant_id: body.tenant_id.unwrap_or_default(),
    };
    let created = gateway
        .core
        .create_source(&Caller::Node, new, Hops::default())
        .await?;
    Ok((StatusCode::CREATED, Json(with_secret(&headers, created))))
}

/// Lists ingestion sources, without their secrets.
#[utoipa::path(
    get,
    path = "/api/ingest/sources",
    tag = "ingest",
    operation_id = "list_sources",
    responses(
        (status = 200, description = "The sources.", body = SourceList),
        AuthErrors,
        ClusterErrors,
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(gateway): Shared,
    headers: HeaderMap,
) -> Result<Json<SourceList>, ApiError> {
    let sources = gateway
        .core
        .list_sources(&Caller::Node, Hops::default())
        .await?;
    Ok(Json(SourceList {
        data: sources.iter().map(|s| source_of(&headers, s)).collect(),
    }))
}

/// Shows one ingestion source: status, counters and its secret's last four.
#[utoipa::path(
    get,
    path = "/api/ingest/sources/{source_id}",
    tag = "ingest",
    operation_id = "get_source",
    params(SourcePath),
    responses(
        (status = 200, description = "The source.", body = Source),
        PathErrors,
        NoSuchSource,
        AuthErrors,
        ClusterErrors,
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(gateway): Shared,
    headers: HeaderMap,
    ApiPath(SourcePath { source_id: id }): ApiPath<SourcePath>,
) -> Result<Json<Source>, ApiError> {
    let source = gateway
        .core
        .get_source(&Caller::Node, &id, Hops::default())
        .await?;
    Ok(Json(source_of(&headers, &source)))
}

/// Deletes an ingestion source; its events stay in the topic.
#[utoipa::path(
    delete,
    path = "/api/ingest/sources/{source_id}",
    tag = "ingest",
    operation_id = "delete_source",
    params(SourcePath),
    responses(
        (status = 200, description = "Deleted.", body = Done),
        PathErrors,
        NoSuchSource,
        AuthErrors,
        ClusterErrors,
        WriteErrors,
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    State(gateway): Shared,
    ApiPath(SourcePath { source_id: id }): ApiPath<SourcePath>,
) -> Result<Json<Done>, ApiError> {
    gateway
        .core
        .delete_source(&Caller::Node, &id, Hops::default())
        .await?;
    Ok(Done::success())
}

/// Gives a source a new secret; the old one stops working at once.
#[utoipa::path(
    post,
    path = "/api/ingest/sources/{source_id}/rotate-secret",
    tag = "ingest",
    operation_id = "rotate_source_secret",
    params(SourcePath),
    responses(
        (status = 200, description = "The source and its new secret, shown this once.",
            body = SourceWithSecret),
        PathErrors,
        NoSuchSource,
        AuthErrors,
        ClusterErrors,
        WriteErrors,
    ),
    security(("bearer" = []))
)]
pub async fn rotate_secret(
    State(gateway): Shared,
    headers: HeaderMap,
    ApiPath(SourcePath { source_id: id }): ApiPath<SourcePath>,
) -> Result<Json<SourceWithSecret>, ApiError> {
    let rotated = gateway
        .core
        .rotate_source_secret(&Caller::Node, &id, Hops::default())
        .await?;
    Ok(Json(with_secret(&headers, rotated)))
}

/// The bearer secret a delivery presents.
fn source_secret(headers: &HeaderMap) -> Result<String, ApiError> {
    let unauthorized = |message: &str| ApiError::new(ErrorCode::Unauthorized, message);
    headers
        .get(AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing Authorization: Bearer <source secret>"))?
        .to_str()
        .ok()
        .and_then(bearer_credentials)
        .map(str::to_string)
        .ok_or_else(|| unauthorized("the Authorization header must be Bearer <source secret>"))
}

fn text_header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Hands one delivery to the `Ingest` service; answers 202 once its event
/// is stored on a majority of the partition's replicas.
async fn deliver(
    gateway: &super::Gateway,
    source_id: String,
    headers: &HeaderMap,
    body: Bytes,
    flow: Option<FlowRequest>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    // The request has one signature field, which also reaches the
    // partition's leader when the delivery is forwarded.
    let signature = crate::ingest::signature::fold_timestamp_header(
        text_header(headers, "x-workato-signature").as_deref(),
        text_header(headers, "x-workato-timestamp").as_deref(),
    );
    let delivery = Delivery {
        source_id,
        secret: source_secret(headers)?,
        signature,
        idempotency_key: text_header(headers, "idempotency-key"),
        body,
        flow,
    };
    let bytes = delivery.body.len() as u64;
    let delivered = gateway
        .core
        .deliver(delivery, SchemaCheck::Here, Hops::default())
        .await?;
    let accepted = Accepted {
        accepted: true,
        bytes,
        event_id: delivered.event_id,
    };
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// Receives one webhook delivery for a `workato` or `generic` source.
#[utoipa::path(
    post,
    path = "/api/ingest/webhook/{source_id}",
    tag = "webhooks",
    operation_id = "ingest_webhook",
    params(
        SourcePath,
        ("X-Workato-Signature" = Option<String>, Header,
            description = "Required when the source has an HMAC secret: the hex HMAC-SHA256 \
                of `\"{timestamp}.{raw body}\"` under it, either as `t=<timestamp>,v1=<hex>` \
                or as the hex alone (a `sha256=` prefix is accepted) with \
                `X-Workato-Timestamp`."),
        ("X-Workato-Timestamp" = Option<String>, Header,
            description = "The Unix time in seconds the delivery was signed at, unless the \
                signature carries it as `t=`. It must be within 300 s of the node's clock, \
                either way, so a captured delivery cannot be replayed later."),
        ("Idempotency-Key" = Option<String>, Header,
            description = "A repeated delivery with the same key stores nothing new and \
                answers the first delivery's event id."),
    ),
    request_body(content = serde_json::Value, content_type = "application/json",
        description = "Any JSON document, at most 1 MiB."),
    responses(
        (status = 202, description = "Stored on a majority of the partition's replicas.",
            body = Accepted),
        (status = 400, description = "`invalid_request`: the body is not JSON, or the \
            Idempotency-Key is malformed.", body = ErrorBody),
        (status = 401, description = "`unauthorized`: a missing or wrong source secret; a \
            missing, malformed or wrong signature; a missing timestamp, or one more than 300 s \
            from the node's clock (a possible replay).", body = ErrorBody),
        NoSuchSource,
        (status = 409, description = "`conflict`: the source's topic was deleted.",
            body = ErrorBody),
        BodyErrors,
        ClusterErrors,
        WriteErrors,
    ),
    security(("source_secret" = []))
)]
pub async fn receive(
    State(gateway): Shared,
    ApiPath(SourcePath { source_id }): ApiPath<SourcePath>,
    headers: HeaderMap,
    request: Request,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let body = read_body(request, &()).await?;
    deliver(&gateway, source_id, &headers, body, None).await
}

/// Headers a flow never publishes: credentials and signatures.
fn is_credential(name: &str) -> bool {
    const EXACT: [&str; 5] = [
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
    ];
    EXACT.contains(&name)
        || ["signature", "secret", "token"]
            .iter()
            .any(|w| name.contains(w))
}

/// Receives a request for an integration flow and publishes it as
/// `{method, headers, query, body}` (credentials removed) to the flow's
/// topic, where the flow consumes it.
#[utoipa::path(
    post,
    path = "/webhook/flow/{flow_id}",
    tag = "webhooks",
    operation_id = "flow_webhook_post",
    params(
        ("flow_id" = String, Path, description = "The flow's source id."),
        ("Idempotency-Key" = Option<String>, Header,
            description = "A repeated request with the same key stores nothing new."),
    ),
    request_body(content = serde_json::Value, content_type = "application/json",
        description = "JSON, or any UTF-8 text; at most 1 MiB."),
    responses(
        (status = 202, description = "Stored on a majority of the partition's replicas.",
            body = Accepted),
        (status = 400, description = "`invalid_request`: the body is neither JSON nor UTF-8, \
            or the source is not a flow.", body = ErrorBody),
        FlowErrors,
        BodyErrors,
        ClusterErrors,
        WriteErrors,
    ),
    security(("source_secret" = []))
)]
pub async fn flow_post(
    state: Shared,
    path: ApiPath<String>,
    query: ApiQuery<BTreeMap<String, String>>,
    method: Method,
    headers: HeaderMap,
    request: Request,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    flow(state, path, query, method, headers, request).await
}

/// Receives a GET for an integration flow; published like a POST, with a
/// null body.
#[utoipa::path(
    get,
    path = "/webhook/flow/{flow_id}",
    tag = "webhooks",
    operation_id = "flow_webhook_get",
    params(("flow_id" = String, Path, description = "The flow's source id.")),
    responses(
        (status = 202, description = "Stored on a majority of the partition's replicas.",
            body = Accepted),
        (status = 400, description = "`invalid_request`: the source is not a flow.",
            body = ErrorBody),
        FlowErrors,
        ClusterErrors,
        WriteErrors,
    ),
    security(("source_secret" = []))
)]
pub async fn flow_get(
    state: Shared,
    path: ApiPath<String>,
    query: ApiQuery<BTreeMap<String, String>>,
    method: Method,
    headers: HeaderMap,
    request: Request,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    flow(state, path, query, method, headers, request).await
}

async fn flow(
    State(gateway): Shared,
    ApiPath(flow_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<BTreeMap<String, String>>,
    method: Method,
    headers: HeaderMap,
    request: Request,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let body = read_body(request, &()).await?;
    let published_headers = headers
        .iter()
        .filter(|(name, _)| !is_credential(name.as_str()))
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
        .collect();
    let flow = FlowRequest {
        method: method.to_string(),
        headers: published_headers,
        query,
    };
    deliver(&gateway, flow_id, &headers, body, Some(flow)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_never_published() {
        for name in [
            "authorization",
            "cookie",
            "x-workato-signature",
            "x-hub-signature-256",
            "x-api-key",
            "x-auth-token",
            "x-webhook-secret",
        ] {
            assert!(is_credential(name), "{name}");
        }
        for name in [
            "content-type",
            "user-agent",
            "x-request-id",
            "idempotency-key",
        ] {
            assert!(!is_credential(name), "{name}");
        }
    }
}
