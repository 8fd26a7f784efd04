//! The developer API: topic management in Workato's shapes.

use axum::Json;
use axum::extract::State;
use raftstream_proto::ErrorCode;
use serde::Deserialize;
use serde::Deserializer;
use serde::Serialize;
use serde_json::Map;
use serde_json::Value;
use utoipa::IntoParams;
use utoipa::ToSchema;

use super::ApiError;
use super::ErrorBody;
use super::Shared;
use super::error::AuthErrors;
use super::error::BodyErrors;
use super::error::ClusterErrors;
use super::error::NoSuchTopic;
use super::error::PathErrors;
use super::error::WriteErrors;
use super::extract::ApiPath;
use super::extract::ApiQuery;
use super::extract::JsonBody;
use super::extract::TopicPath;
use crate::api::schema::SchemaCache;
use crate::api::service::Caller;
use crate::api::service::Hops;
use crate::model::MAX_PARTITIONS;
use crate::model::TopicName;
use crate::model::rfc3339;
use crate::raft::types;
use crate::raft::types::RetentionPolicy;
use crate::raft::types::TopicSpec;
use crate::raft::types::TopicUpdate;

const MS_PER_HOUR: u64 = 3_600_000;

pub use crate::raft::types::MAX_TOPIC_PARTITIONS;

// The documented maximum of `CreateTopic::partitions` (an attribute takes
// only a literal).
const _: () = assert!(MAX_TOPIC_PARTITIONS == 256 && MAX_TOPIC_PARTITIONS <= MAX_PARTITIONS);

/// A topic's JSON Schema (drafts 2020-12 and 7): a schema document (an
/// object or a boolean), or a string holding one, of at most 64 KiB of JSON
/// text. Published payloads must satisfy it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum SchemaDocument {
    Object(Map<String, Value>),
    Boolean(bool),
    Text(String),
}

impl<'de> Deserialize<'de> for SchemaDocument {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match Value::deserialize(deserializer)? {
            Value::Object(map) => Ok(Self::Object(map)),
            Value::Bool(b) => Ok(Self::Boolean(b)),
            Value::String(text) => Ok(Self::Text(text)),
            _ => Err(serde::de::Error::custom(
                "schema must be a JSON Schema object, a boolean, or a string holding one",
            )),
        }
    }
}

impl SchemaDocument {
    /// The document's text, once it is within the size limit and compiles.
    async fn compiled_text(self, schemas: &SchemaCache) -> Result<String, ApiError> {
        let text = match self {
            Self::Object(map) => Value::Object(map).to_string(),
            Self::Boolean(b) => b.to_string(),
            Self::Text(text) => text,
        };
        schemas
            .check_document(&text)
            .await
            .map_err(|e| ApiError::new(ErrorCode::InvalidSchema, e.to_string()))?;
        Ok(text)
    }
}

/// A topic.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Topic {
    pub id: u64,
    pub name: String,
    pub description: String,
    /// The topic's JSON Schema, null when it has none. Lists carry it only
    /// with `include_schema=true`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    #[schema(value_type = Option<Value>)]
    pub schema: Option<Option<Value>>,
    pub partitions: u32,
    pub replication_factor: u32,
    /// Messages older than this are deleted; null keeps them by age.
    #[schema(value_type = Option<f64>)]
    pub retention_hours: Option<serde_json::Number>,
    /// The oldest messages are deleted past this size per partition; null
    /// keeps them by size.
    pub retention_bytes: Option<u64>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

impl Topic {
    fn of(topic: &types::Topic, include_schema: bool) -> Topic {
        let hours = match topic.retention.retention_ms {
            None => None,
            Some(ms) if ms % MS_PER_HOUR == 0 => Some((ms / MS_PER_HOUR).into()),
            Some(ms) => serde_json::Number::from_f64(ms as f64 / MS_PER_HOUR as f64),
        };
        let schema = include_schema.then(|| {
            topic
                .schema
                .as_deref()
                .and_then(|s| serde_json::from_str(s).ok())
        });
        Topic {
            id: topic.id.0,
            name: topic.name.clone(),
            description: topic.description.clone(),
            schema,
            partitions: u32::try_from(topic.partitions.len()).unwrap_or(u32::MAX),
            replication_factor: topic.replication_factor,
            retention_hours: hours,
            retention_bytes: topic.retention.retention_bytes,
            created_at: rfc3339(topic.created_at_ms),
            updated_at: rfc3339(topic.updated_at_ms),
        }
    }
}

/// A list of topics.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TopicList {
    pub data: Vec<Topic>,
}

/// The answer to a delete or a purge.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Done {
    /// Always `success`.
    pub result: String,
}

impl Done {
    pub fn success() -> Json<Done> {
        Json(Done {
            result: "success".into(),
        })
    }
}

/// Reads a field that may be absent, null or set as
/// `None`, `Some(None)` or `Some(Some(value))`.
pub(super) fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// A new topic.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreateTopic {
    /// Unique; not a number (numbers name topics by id), not blank, at
    /// most 255 characters, no control characters.
    // The pattern is the metadata group's check (`validate_topic_name`) as
    // a regular expression: no control characters, and some character that
    // is neither a digit, `+` nor white space. It is a little stricter
    // (it refuses `1+`); a unit test below holds the two together.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x1f\x7f-\x9f0-9+\s][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    pub description: Option<String>,
    pub schema: Option<SchemaDocument>,
    /// 1 to 256; 1 by default.
    #[schema(minimum = 1, maximum = 256)]
    pub partitions: Option<u32>,
    /// Replicas of each partition, at most the cluster size; the default
    /// is min(3, cluster size).
    pub replication_factor: Option<u32>,
    /// Delete messages older than this; unlimited by default.
    pub retention_hours: Option<u64>,
    /// Delete the oldest messages past this size per partition; unlimited
    /// by default.
    pub retention_bytes: Option<u64>,
}

/// Changes to a topic; absent fields stay as they are.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UpdateTopic {
    /// A new unique name (see `CreateTopic`).
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x1f\x7f-\x9f0-9+\s][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: Option<String>,
    pub description: Option<String>,
    /// A new schema; null removes the schema.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<SchemaDocument>)]
    pub schema: Option<Option<SchemaDocument>>,
    /// A new age limit; null removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>)]
    pub retention_hours: Option<Option<u64>>,
    /// A new size limit; null removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>)]
    pub retention_bytes: Option<Option<u64>>,
}

/// The page size of the topic list when `per_page` is absent, and the
/// largest it may ask for.
pub const TOPICS_PER_PAGE: u32 = 100;

/// Filters and page of the topic list. Topics come in id order.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListTopicsQuery {
    /// Only topics whose name contains this text (case-sensitive).
    pub name: Option<String>,
    /// Add each topic's schema (default false); without it, topics carry
    /// no `schema` field.
    pub include_schema: Option<bool>,
    /// The page to answer, from 1 (the default).
    #[param(minimum = 1)]
    pub page: Option<u32>,
    /// Topics per page, 1 to 100; 100 by default.
    #[param(minimum = 1, maximum = 100)]
    pub per_page: Option<u32>,
}

impl ListTopicsQuery {
    /// The topics of the page asked for: those after `(page - 1) *
    /// per_page` matching ones.
    fn page_of<'a>(
        &self,
        topics: &'a [types::Topic],
    ) -> Result<impl Iterator<Item = &'a types::Topic>, ApiError> {
        let page = self.page.unwrap_or(1);
        let per_page = self.per_page.unwrap_or(TOPICS_PER_PAGE);
        if page == 0 {
            return Err(ApiError::bad_request("page starts at 1"));
        }
        if per_page == 0 || per_page > TOPICS_PER_PAGE {
            return Err(ApiError::bad_request(format!(
                "per_page must be between 1 and {TOPICS_PER_PAGE}"
            )));
        }
        let skip = (page as usize - 1).saturating_mul(per_page as usize);
        let name = self.name.as_deref().unwrap_or_default();
        Ok(topics
            .iter()
            .filter(move |t| t.name.contains(name))
            .skip(skip)
            .take(per_page as usize))
    }
}

fn hours_to_ms(hours: u64) -> Result<u64, ApiError> {
    hours
        .checked_mul(MS_PER_HOUR)
        .ok_or_else(|| ApiError::bad_request("retention_hours is too large"))
}

/// Lists topics.
#[utoipa::path(
    get,
    path = "/api/event_streams/topics",
    tag = "topics",
    operation_id = "list_topics",
    params(ListTopicsQuery),
    responses(
        (status = 200, description = "The topics.", body = TopicList),
        (status = 400, description = "`invalid_request`: a malformed query parameter, \
            `page` 0, or `per_page` outside 1 to 100.", body = ErrorBody),
        AuthErrors,
        ClusterErrors,
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(gateway): Shared,
    ApiQuery(query): ApiQuery<ListTopicsQuery>,
) -> Result<Json<TopicList>, ApiError> {
    let include_schema = query.include_schema.unwrap_or(false);
    // Every topic, filtered here: the core's `name` is an exact match (the
    // gRPC API's), Workato's a substring.
    let mut topics = gateway.core.list_topics(None, Hops::default()).await?;
    topics.sort_by_key(|t| t.id);
    let data = query
        .page_of(&topics)?
        .map(|t| Topic::of(t, include_schema))
        .collect();
    Ok(Json(TopicList { data }))
}

/// Creates a topic.
#[utoipa::path(
    post,
    path = "/api/event_streams/topics",
    tag = "topics",
    operation_id = "create_topic",
    request_body(content = CreateTopic, content_type = "application/json"),
    responses(
        (status = 200, description = "The new topic.", body = Topic),
        (status = 400, description = "`invalid_request`: malformed JSON, a missing or invalid \
            field; `invalid_schema`: the schema does not compile.", body = ErrorBody),
        (status = 409, description = "`conflict`: a topic with this name exists.",
            body = ErrorBody),
        BodyErrors,
        AuthErrors,
        ClusterErrors,
        WriteErrors,
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(gateway): Shared,
    JsonBody(body): JsonBody<CreateTopic>,
) -> Result<Json<Topic>, ApiError> {
    if body.partitions.is_some_and(|n| n > MAX_TOPIC_PARTITIONS) {
        return Err(ApiError::bad_request(format!(
            "partitions must be between 1 and {MAX_TOPIC_PARTITIONS}"
        )));
    }
    let schema = match body.schema {
        Some(document) => Some(document.compiled_text(&gateway.node.schemas).await?),
        None => None,
    };
    let spec = TopicSpec {
        name: body.name,
        description: body.description.unwrap_or_default(),
        partitions: body.partitions.unwrap_or(0).max(1),
        replication_factor: body.replication_factor.unwrap_or(0),
        schema,
        retention: RetentionPolicy {
            retention_ms: body
                .retention_hours
                .map(hours_to_ms)
                .transpose()?
                .filter(|ms| *ms > 0),
            retention_bytes: body.retention_bytes.filter(|bytes| *bytes > 0),
        },
    };
    let topic = gateway
        .core
        .create_topic(&Caller::Node, spec, Hops::default())
        .await?;
    Ok(Json(Topic::of(&topic, true)))
}

/// One topic, with its schema.
#[utoipa::path(
    get,
    path = "/api/event_streams/topics/{topic_id}",
    tag = "topics",
    operation_id = "get_topic",
    params(TopicPath),
    responses(
        (status = 200, description = "The topic.", body = Topic),
        PathErrors,
        NoSuchTopic,
        AuthErrors,
        ClusterErrors,
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(gateway): Shared,
    ApiPath(TopicPath { topic_id }): ApiPath<TopicPath>,
) -> Result<Json<Topic>, ApiError> {
    let topic = gateway.current_topic(&topic_id).await?;
    Ok(Json(Topic::of(&topic, true)))
}

/// Updates a topic: name, description, schema, retention.
#[utoipa::path(
    put,
    path = "/api/event_streams/topics/{topic_id}",
    tag = "topics",
    operation_id = "update_topic",
    params(TopicPath),
    request_body(content = UpdateTopic, content_type = "application/json"),
    responses(
        (status = 200, description = "The updated topic.", body = Topic),
        (status = 400, description = "`invalid_request`: malformed JSON or an invalid field; \
            `invalid_schema`: the schema does not compile.", body = ErrorBody),
        NoSuchTopic,
        (status = 409, description = "`conflict`: another topic has the new name.",
            body = ErrorBody),
        BodyErrors,
        AuthErrors,
        ClusterErrors,
        WriteErrors,
    ),
    security(("bearer" = []))
)]
pub async fn update(
    State(gateway): Shared,
    ApiPath(TopicPath { topic_id }): ApiPath<TopicPath>,
    JsonBody(body): JsonBody<UpdateTopic>,
) -> Result<Json<Topic>, ApiError> {
    let topic = gateway.current_topic(&topic_id).await?;
    let current = &topic.retention;
    let retention = (body.retention_hours.is_some() || body.retention_bytes.is_some()).then(|| {
        RetentionPolicy {
            retention_ms: match body.retention_hours {
                Some(hours) => hours
                    .map(|hours| hours.saturating_mul(MS_PER_HOUR))
                    .filter(|ms| *ms > 0),
                None => current.retention_ms,
            },
            retention_bytes: match body.retention_bytes {
                Some(bytes) => bytes.filter(|bytes| *bytes > 0),
                None => current.retention_bytes,
            },
        }
    });
    let schema = match body.schema {
        None => None,
        Some(None) => Some(None),
        Some(Some(document)) => Some(Some(document.compiled_text(&gateway.node.schemas).await?)),
    };
    let update = TopicUpdate {
        name: body.name,
        description: body.description,
        schema,
        retention,
    };
    let topic = gateway
        .core
        .update_topic(
            &Caller::Node,
            &TopicName::Id(topic.id),
            update,
            Hops::default(),
        )
        .await?;
    Ok(Json(Topic::of(&topic, true)))
}

/// Deletes a topic and its messages.
#[utoipa::path(
    delete,
    path = "/api/event_streams/topics/{topic_id}",
    tag = "topics",
    operation_id = "delete_topic",
    params(TopicPath),
    responses(
        (status = 200, description = "Deleted.", body = Done),
        PathErrors,
        NoSuchTopic,
        AuthErrors,
        ClusterErrors,
        WriteErrors,
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    State(gateway): Shared,
    ApiPath(TopicPath { topic_id }): ApiPath<TopicPath>,
) -> Result<Json<Done>, ApiError> {
    let topic = gateway.current_topic(&topic_id).await?;
    gateway
        .core
        .delete_topic(&Caller::Node, &TopicName::Id(topic.id), Hops::default())
        .await?;
    Ok(Done::success())
}

/// Deletes every message of a topic and keeps the topic.
#[utoipa::path(
    put,
    path = "/api/event_streams/topics/{topic_id}/purge",
    tag = "topics",
    operation_id = "purge_topic",
    params(TopicPath),
    responses(
        (status = 200, description = "Purged.", body = Done),
        PathErrors,
        NoSuchTopic,
        AuthErrors,
        ClusterErrors,
        WriteErrors,
    ),
    security(("bearer" = []))
)]
pub async fn purge(
    State(gateway): Shared,
    ApiPath(TopicPath { topic_id }): ApiPath<TopicPath>,
) -> Result<Json<Done>, ApiError> {
    let topic = gateway.current_topic(&topic_id).await?;
    gateway
        .core
        .purge_topic(
            &Caller::Node,
            &TopicName::Id(topic.id),
            None,
            Hops::default(),
        )
        .await?;
    Ok(Done::success())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn name_schema<T: ToSchema>() -> Value {
        let schema = serde_json::to_value(T::schema()).unwrap();
        let mut name = schema["properties"]["name"].clone();
        // An optional field is documented as `["string", "null"]`.
        name["type"] = "string".into();
        name
    }

    #[test]
    fn documented_topic_names_are_the_ones_the_metadata_group_accepts() {
        for schema in [name_schema::<CreateTopic>(), name_schema::<UpdateTopic>()] {
            let documented = jsonschema::validator_for(&schema).unwrap();
            let long = "x".repeat(256);
            for name in [
                "orders", "a1", "1a", "-1", "é", " x ", "x y", "1.5", "", " ", "\t", "12", "+3",
                "a\u{7}b", "\u{85}", &long,
            ] {
                let accepted = crate::state_machine::meta::validate_topic_name(name).is_ok();
                assert_eq!(documented.is_valid(&json!(name)), accepted, "{name:?}");
            }
            // The one documented difference: stricter than the check.
            assert!(!documented.is_valid(&json!("1+")));
        }
    }

    #[test]
    fn update_tells_an_absent_field_from_null() {
        let update: UpdateTopic =
            serde_json::from_str(r#"{"schema": null, "retention_bytes": 5}"#).unwrap();
        assert!(matches!(update.schema, Some(None)));
        assert_eq!(update.retention_bytes, Some(Some(5)));
        assert_eq!(update.retention_hours, None);
        let update: UpdateTopic = serde_json::from_str("{}").unwrap();
        assert!(update.schema.is_none());
    }
}
