//! The developer API: topic management in Workato's shapes.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::Path;
use axum::extract::Query;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use raftstream_proto::v1 as pb;
use raftstream_proto::v1::raftstream_server::Raftstream;
use serde_json::Map;
use serde_json::Value;
use serde_json::json;
use tonic::Request;

use super::ApiError;
use super::Shared;
use super::body_bytes;
use super::parse_json;
use super::schema;
use super::topic_ref;

const MS_PER_HOUR: u64 = 3_600_000;

pub fn rfc3339(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn topic_json(topic: &pb::Topic, include_schema: bool) -> Value {
    let retention = topic.retention.unwrap_or_default();
    let hours = match retention.retention_ms {
        0 => Value::Null,
        ms if ms % MS_PER_HOUR == 0 => json!(ms / MS_PER_HOUR),
        ms => json!(ms as f64 / MS_PER_HOUR as f64),
    };
    let mut object = json!({
        "id": topic.id,
        "name": topic.name,
        "description": topic.description,
        "partitions": topic.partitions.len(),
        "replication_factor": topic.replication_factor,
        "retention_hours": hours,
        "retention_bytes": if retention.retention_bytes == 0 { Value::Null } else { json!(retention.retention_bytes) },
        "created_at": rfc3339(topic.created_at_ms),
        "updated_at": rfc3339(topic.updated_at_ms),
    });
    if include_schema && let Value::Object(map) = &mut object {
        let schema = topic
            .schema
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(Value::Null);
        map.insert("schema".into(), schema);
    }
    object
}

/// Reads an optional non-negative integer field.
fn uint(body: &Map<String, Value>, field: &str) -> Result<Option<u64>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            ApiError::bad_request(format!("{field} must be a non-negative integer"))
        }),
    }
}

fn string(body: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad_request(format!("{field} must be a string"))),
    }
}

/// The schema field: a JSON Schema document (object or boolean), or a
/// string holding one. It must compile. `Ok(None)` when absent or null.
fn schema_field(body: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    let document = match body.get("schema") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(text)) => text.clone(),
        Some(v @ (Value::Object(_) | Value::Bool(_))) => v.to_string(),
        Some(_) => return Err(ApiError::bad_request("schema must be a JSON Schema object")),
    };
    schema::compile(&document)
        .map_err(|e| ApiError::new(axum::http::StatusCode::BAD_REQUEST, "invalid_schema", e))?;
    Ok(Some(document))
}

fn object(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Value>, ApiError> {
    match parse_json(&body_bytes(body)?)? {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::bad_request("the body must be a JSON object")),
    }
}

fn u32_field(body: &Map<String, Value>, field: &str) -> Result<u32, ApiError> {
    let value = uint(body, field)?.unwrap_or(0);
    u32::try_from(value).map_err(|_| ApiError::bad_request(format!("{field} is too large")))
}

fn retention(hours: Option<u64>, bytes: Option<u64>) -> Result<pb::RetentionPolicy, ApiError> {
    let retention_ms = hours
        .unwrap_or(0)
        .checked_mul(MS_PER_HOUR)
        .ok_or_else(|| ApiError::bad_request("retention_hours is too large"))?;
    Ok(pb::RetentionPolicy {
        retention_ms,
        retention_bytes: bytes.unwrap_or(0),
    })
}

pub async fn list(
    State(gateway): Shared,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let include_schema = match query.get("include_schema").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "include_schema must be true or false, not {other:?}"
            )));
        }
    };
    let request = Request::new(pb::ListTopicsRequest {
        name: query.get("name").cloned(),
    });
    let topics = gateway
        .service
        .list_topics(request)
        .await?
        .into_inner()
        .topics;
    let data: Vec<Value> = topics
        .iter()
        .map(|t| topic_json(t, include_schema))
        .collect();
    Ok(Json(json!({ "data": data })))
}

pub async fn create(
    State(gateway): Shared,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = object(body)?;
    let name = string(&body, "name")?.ok_or_else(|| ApiError::bad_request("name is required"))?;
    let request = pb::CreateTopicRequest {
        name,
        description: string(&body, "description")?.unwrap_or_default(),
        partitions: u32_field(&body, "partitions")?.max(1),
        replication_factor: u32_field(&body, "replication_factor")?,
        schema: schema_field(&body)?,
        retention: Some(retention(
            uint(&body, "retention_hours")?,
            uint(&body, "retention_bytes")?,
        )?),
    };
    let topic = gateway
        .service
        .create_topic(Request::new(request))
        .await?
        .into_inner();
    Ok(Json(topic_json(&topic, true)))
}

pub async fn get(
    State(gateway): Shared,
    Path(topic_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let topic = gateway.topic(&topic_id).await?;
    Ok(Json(topic_json(&topic, true)))
}

pub async fn update(
    State(gateway): Shared,
    Path(topic_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = object(body)?;
    let topic = gateway.topic(&topic_id).await?;
    let current = topic.retention.unwrap_or_default();
    let hours = uint(&body, "retention_hours")?;
    let bytes = uint(&body, "retention_bytes")?;
    let retention = (body.contains_key("retention_hours") || body.contains_key("retention_bytes"))
        .then(|| pb::RetentionPolicy {
            retention_ms: if body.contains_key("retention_hours") {
                hours.unwrap_or(0).saturating_mul(MS_PER_HOUR)
            } else {
                current.retention_ms
            },
            retention_bytes: if body.contains_key("retention_bytes") {
                bytes.unwrap_or(0)
            } else {
                current.retention_bytes
            },
        });
    let schema = match body.get("schema") {
        None => None,
        Some(Value::Null) => Some(String::new()),
        Some(_) => schema_field(&body)?,
    };
    let request = pb::UpdateTopicRequest {
        topic: topic_ref(&topic),
        name: string(&body, "name")?,
        description: string(&body, "description")?,
        schema,
        retention,
    };
    let topic = gateway
        .service
        .update_topic(Request::new(request))
        .await?
        .into_inner();
    Ok(Json(topic_json(&topic, true)))
}

pub async fn delete(
    State(gateway): Shared,
    Path(topic_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let topic = gateway.topic(&topic_id).await?;
    let reference = pb::TopicRef {
        topic: Some(pb::topic_ref::Topic::Id(topic.id)),
    };
    gateway
        .service
        .delete_topic(Request::new(reference))
        .await?;
    Ok(Json(json!({"result": "success"})))
}

pub async fn purge(
    State(gateway): Shared,
    Path(topic_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let topic = gateway.topic(&topic_id).await?;
    let request = pb::PurgeTopicRequest {
        topic: topic_ref(&topic),
        partition: None,
    };
    gateway.service.purge_topic(Request::new(request)).await?;
    Ok(Json(json!({"result": "success"})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_format_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_500), "1970-01-01T00:00:01.5Z");
    }
}
