//! Publish and batch publish.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use bytes::Bytes;
use raftstream_proto::ErrorCode;
use serde::Deserialize;
use serde::Deserializer;
use serde::Serialize;
use serde_json::Map;
use serde_json::Value;
use utoipa::ToSchema;

use super::ApiError;
use super::ErrorBody;
use super::MAX_BATCH_PAYLOADS;
use super::Shared;
use super::error::AuthErrors;
use super::error::BodyErrors;
use super::error::ClusterErrors;
use super::error::NoSuchTopic;
use super::error::WriteErrors;
use super::extract::ApiPath;
use super::extract::JsonBody;
use super::extract::TopicPath;

/// A message payload: any JSON object. When the topic has a JSON Schema,
/// the payload must satisfy it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(value_type = Object)]
pub struct Payload(pub Map<String, Value>);

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::Object(map) => Ok(Payload(map)),
            _ => Err(serde::de::Error::custom(
                "the payload must be a JSON object",
            )),
        }
    }
}

/// The answer to a publish.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PublishResponse {
    /// The stored message's id, `"<partition>-<offset>"`.
    pub message_id: String,
}

/// A batch publish: 1 to 100 payloads. A payload that is not an object or
/// fails the topic's schema fails alone; the others are stored.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PublishBatchRequest {
    // Items are read as any JSON so that a bad item fails alone, with its
    // error, instead of failing the whole request.
    #[schema(value_type = Vec<Payload>, min_items = 1, max_items = 100)]
    pub payloads: Vec<Value>,
}

/// The outcome of one batch item.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchItemResult {
    /// The stored message's id; null when the item failed.
    pub message_id: Option<String>,
    /// `success`, or why the item failed.
    pub result: String,
}

/// The answer to a batch publish.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PublishBatchResponse {
    /// Some item failed.
    pub is_partial_error: bool,
    /// Every item's outcome, keyed by its index in `payloads` as a string.
    pub message_ids: BTreeMap<String, BatchItemResult>,
}

/// Publishes one message.
#[utoipa::path(
    post,
    path = "/api/v1/topics/{topic_id}/publish",
    tag = "publish",
    operation_id = "publish",
    params(TopicPath),
    request_body(content = Payload, content_type = "application/json",
        description = "The message payload: a JSON object, at most 1 MiB."),
    responses(
        (status = 200, description = "Stored on a majority of the partition's replicas.",
            body = PublishResponse),
        (status = 400, description = "`invalid_request`: malformed JSON or not an object; \
            `schema_mismatch`: the payload fails the topic's schema.", body = ErrorBody),
        NoSuchTopic,
        BodyErrors,
        AuthErrors,
        ClusterErrors,
        WriteErrors,
    ),
    security(("bearer" = []))
)]
pub async fn publish(
    State(gateway): Shared,
    ApiPath(TopicPath { topic_id }): ApiPath<TopicPath>,
    JsonBody(payload): JsonBody<Payload>,
) -> Result<Json<PublishResponse>, ApiError> {
    let topic = gateway.topic(&topic_id).await?;
    let payload = gateway
        .check_payload(&topic, Value::Object(payload.0))
        .await?;
    let outcome = gateway
        .publish_checked(&topic, vec![json_bytes(&payload)])
        .await?
        .pop()
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "publish produced no result"))?;
    match outcome {
        Ok(stored) => Ok(Json(PublishResponse {
            message_id: stored.message_id(),
        })),
        Err(e) => Err(e.of_single_publish().into()),
    }
}

/// A payload as the bytes stored.
fn json_bytes(payload: &Value) -> Bytes {
    Bytes::from(payload.to_string())
}

/// Publishes up to 100 messages; each item succeeds or fails on its own.
#[utoipa::path(
    post,
    path = "/api/v1/batch/topics/{topic_id}/publish",
    tag = "publish",
    operation_id = "publish_batch",
    params(TopicPath),
    request_body(content = PublishBatchRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Every item's outcome; the valid items are stored.",
            body = PublishBatchResponse),
        (status = 400, description = "`invalid_request`: malformed JSON, or not 1 to 100 payloads.",
            body = ErrorBody),
        NoSuchTopic,
        BodyErrors,
        AuthErrors,
        ClusterErrors,
        WriteErrors,
    ),
    security(("bearer" = []))
)]
pub async fn publish_batch(
    State(gateway): Shared,
    ApiPath(TopicPath { topic_id }): ApiPath<TopicPath>,
    JsonBody(body): JsonBody<PublishBatchRequest>,
) -> Result<Json<PublishBatchResponse>, ApiError> {
    let payloads = body.payloads;
    if payloads.is_empty() || payloads.len() > MAX_BATCH_PAYLOADS {
        return Err(ApiError::bad_request(format!(
            "payloads must hold 1 to {MAX_BATCH_PAYLOADS} items"
        )));
    }
    let topic = gateway.topic(&topic_id).await?;
    // Items that fail validation fail alone; the valid ones are published
    // together (one Raft entry per partition).
    let (payloads, checks) = gateway.check_payloads(&topic, payloads).await?;
    let mut outcomes: Vec<Result<String, String>> = Vec::with_capacity(payloads.len());
    let mut valid = Vec::new();
    for (index, check) in checks.into_iter().enumerate() {
        match check {
            Ok(()) => {
                valid.push(index);
                outcomes.push(Ok(String::new()));
            }
            Err(e) => outcomes.push(Err(e.message)),
        }
    }
    if !valid.is_empty() {
        let checked = valid.iter().map(|i| json_bytes(&payloads[*i])).collect();
        let results = gateway.publish_checked(&topic, checked).await?;
        for (index, result) in valid.into_iter().zip(results) {
            outcomes[index] = match result {
                Ok(stored) => Ok(stored.message_id()),
                Err(e) => Err(e.to_string()),
            };
        }
    }
    let is_partial_error = outcomes.iter().any(Result::is_err);
    let message_ids = outcomes
        .into_iter()
        .enumerate()
        .map(|(index, outcome)| {
            let item = match outcome {
                Ok(id) => BatchItemResult {
                    message_id: Some(id),
                    result: "success".into(),
                },
                Err(why) => BatchItemResult {
                    message_id: None,
                    result: why,
                },
            };
            (index.to_string(), item)
        })
        .collect();
    Ok(Json(PublishBatchResponse {
        is_partial_error,
        message_ids,
    }))
}
