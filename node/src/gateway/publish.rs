//! Publish and batch publish.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use bytes::Bytes;
use raftstream_proto::ErrorCode;
use serde::Deserialize;
use serde::Serialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::ApiError;
use super::ErrorBody;
use super::MAX_BATCH_PAYLOADS;
use super::Shared;
use super::error::AuthErrors;
use super::error::BodyErrors;
use super::error::ClusterErrors;
use super::error::MediaTypeErrors;
use super::error::NoSuchTopic;
use super::error::WriteErrors;
use super::extract::ApiPath;
use super::extract::JsonBytes;
use super::extract::TopicPath;
use super::extract::parse_json;

/// A message payload: any JSON object, stored and returned byte for byte as
/// sent (key order, number formatting, big integers). When the topic has a
/// JSON Schema, the payload must satisfy it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub struct Payload(pub Box<RawValue>);

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
    // Items are read as any JSON, kept as sent, so that a bad item fails
    // alone, with its error, instead of failing the whole request.
    #[schema(value_type = Vec<Payload>, min_items = 1, max_items = 100)]
    pub payloads: Vec<Box<RawValue>>,
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
        MediaTypeErrors,
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
    JsonBytes(body): JsonBytes,
) -> Result<Json<PublishResponse>, ApiError> {
    let payload: &RawValue = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    let topic = gateway.topic(&topic_id).await?;
    gateway
        .check_payloads(&topic, &[payload])
        .await?
        .pop()
        .unwrap_or_else(|| {
            Err(ApiError::new(
                ErrorCode::Internal,
                "the payload's check gave no outcome",
            ))
        })?;
    let outcome = gateway
        .publish_checked(&topic, vec![stored_bytes(payload)])
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

/// The bytes stored for a payload: exactly the JSON text sent (less any
/// whitespace around it).
fn stored_bytes(payload: &RawValue) -> Bytes {
    Bytes::copy_from_slice(payload.get().as_bytes())
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
        (status = 413, description = "`payload_too_large`: the body exceeds the batch limit, \
            `max_http_batch_bytes` (101 MiB by default); a payload over 1 MiB fails alone.",
            body = ErrorBody),
        MediaTypeErrors,
        NoSuchTopic,
        AuthErrors,
        ClusterErrors,
        WriteErrors,
    ),
    security(("bearer" = []))
)]
pub async fn publish_batch(
    State(gateway): Shared,
    ApiPath(TopicPath { topic_id }): ApiPath<TopicPath>,
    JsonBytes(body): JsonBytes,
) -> Result<Json<PublishBatchResponse>, ApiError> {
    let payloads = parse_json::<PublishBatchRequest>(&body)?.payloads;
    if payloads.is_empty() || payloads.len() > MAX_BATCH_PAYLOADS {
        return Err(ApiError::bad_request(format!(
            "payloads must hold 1 to {MAX_BATCH_PAYLOADS} items"
        )));
    }
    let topic = gateway.topic(&topic_id).await?;
    // Items that fail validation fail alone; the valid ones are published
    // together (one Raft entry per partition).
    let payloads: Vec<&RawValue> = payloads.iter().map(AsRef::as_ref).collect();
    let checks = gateway.check_payloads(&topic, &payloads).await?;
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
        let checked = valid.iter().map(|i| stored_bytes(payloads[*i])).collect();
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
