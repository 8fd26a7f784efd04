//! The HTTP gateway: the Workato Event Streams API on axum.
//!
//! Every call becomes the matching call of the gRPC service (`ClientService`)
//! in-process, so it takes the same routing and forwarding path as a gRPC
//! client: a gateway on a follower behaves exactly like one on a leader.

mod auth;
mod consume;
mod error;
mod schema;
mod tokens;
mod topics;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::Path;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::delete;
use axum::routing::get;
use axum::routing::post;
use axum::routing::put;
use raftstream_proto::v1 as pb;
use raftstream_proto::v1::raftstream_server::Raftstream;
use serde_json::Value;
use serde_json::json;
use tonic::Request;

pub use self::error::ApiError;
use crate::api::TopicName;
use crate::api::grpc::ClientService;
use crate::node::Node;
use crate::raft::types::Scope;

/// The largest request body the gateway reads (Workato's payload limit).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The most payloads one batch publish carries.
pub const MAX_BATCH_PAYLOADS: usize = 100;

pub struct Gateway {
    service: ClientService,
    node: Arc<Node>,
    schemas: schema::SchemaCache,
    rate_limiter: Option<auth::RateLimiter>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("node", &self.node.id())
            .finish()
    }
}

type Shared = State<Arc<Gateway>>;

pub fn router(node: Arc<Node>) -> Router {
    let gateway = Arc::new(Gateway {
        service: ClientService::new(node.clone()),
        rate_limiter: auth::rate_limiter(node.config.limits.rate_limit_per_sec),
        node,
        schemas: schema::SchemaCache::default(),
    });
    let scoped =
        |scope: Scope| middleware::from_fn_with_state((gateway.clone(), scope), auth::require);
    let publish_routes = Router::new()
        .route("/api/v1/topics/{topic_id}/publish", post(publish))
        .route(
            "/api/v1/batch/topics/{topic_id}/publish",
            post(publish_batch),
        )
        .route_layer(scoped(Scope::Publish));
    let consume_routes = Router::new()
        .route("/api/v1/topics/{topic_id}/consume", post(consume::consume))
        .route_layer(scoped(Scope::Consume));
    let admin_routes = Router::new()
        .route(
            "/api/event_streams/topics",
            get(topics::list).post(topics::create),
        )
        .route(
            "/api/event_streams/topics/{topic_id}",
            get(topics::get).put(topics::update).delete(topics::delete),
        )
        .route(
            "/api/event_streams/topics/{topic_id}/purge",
            put(topics::purge),
        )
        .route("/api/tokens", get(tokens::list).post(tokens::create))
        .route("/api/tokens/{token_id}", delete(tokens::delete))
        .route_layer(scoped(Scope::Admin));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(publish_routes)
        .merge(consume_routes)
        .merge(admin_routes)
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(gateway)
}

/// The process is up and serving.
async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The node can take writes: its metadata group has a leader.
async fn readyz(State(gateway): Shared) -> Result<Json<Value>, ApiError> {
    let node = &gateway.node;
    match node.meta_group().and_then(|g| g.leader()) {
        Some((leader, _)) => Ok(Json(
            json!({"status": "ready", "node_id": node.id(), "metadata_leader": leader}),
        )),
        None => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "no metadata leader yet",
        )),
    }
}

/// Reads the body, turning axum's rejections (413 over the limit) into our
/// error shape.
fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body exceeds {MAX_BODY_BYTES} bytes"),
        ),
        _ => ApiError::bad_request(rejection.body_text()),
    })
}

fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}

fn topic_ref(topic: &pb::Topic) -> Option<pb::TopicRef> {
    Some(pb::TopicRef {
        topic: Some(pb::topic_ref::Topic::Id(topic.id)),
    })
}

impl Gateway {
    /// Resolves `{topic_id}` (an id or a name): this node's metadata first,
    /// then the metadata leader, so a topic created a moment ago is found.
    async fn topic(&self, path: &str) -> Result<pb::Topic, ApiError> {
        let name = TopicName::parse(path);
        if let Some(topic) = self.node.find_topic(&name) {
            return Ok(crate::api::grpc::topic_to_pb(&topic));
        }
        let reference = match name {
            TopicName::Id(id) => pb::topic_ref::Topic::Id(id),
            TopicName::Name(name) => pb::topic_ref::Topic::Name(name),
        };
        let request = Request::new(pb::TopicRef {
            topic: Some(reference),
        });
        Ok(self.service.get_topic(request).await?.into_inner())
    }

    /// Checks a payload: a JSON object that satisfies the topic's schema.
    fn check_payload(&self, topic: &pb::Topic, payload: &Value) -> Result<(), ApiError> {
        if !payload.is_object() {
            return Err(ApiError::bad_request("the payload must be a JSON object"));
        }
        self.schemas.validate(topic, payload)
    }
}

async fn publish(
    State(gateway): Shared,
    Path(topic_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let payload = parse_json(&body_bytes(body)?)?;
    let topic = gateway.topic(&topic_id).await?;
    gateway.check_payload(&topic, &payload)?;
    let record = pb::Record {
        value: payload.to_string().into_bytes().into(),
        ..Default::default()
    };
    let request = Request::new(pb::PublishRequest {
        topic: topic_ref(&topic),
        record: Some(record),
    });
    let ack = gateway.service.publish(request).await?.into_inner();
    Ok(Json(json!({"message_id": ack.message_id})))
}

async fn publish_batch(
    State(gateway): Shared,
    Path(topic_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = parse_json(&body_bytes(body)?)?;
    let Some(payloads) = body.get("payloads").and_then(Value::as_array) else {
        return Err(ApiError::bad_request(
            "the body must be {\"payloads\": [ ... ]}",
        ));
    };
    if payloads.is_empty() || payloads.len() > MAX_BATCH_PAYLOADS {
        return Err(ApiError::bad_request(format!(
            "payloads must hold 1 to {MAX_BATCH_PAYLOADS} items"
        )));
    }
    let topic = gateway.topic(&topic_id).await?;
    // Items that fail validation fail alone; the valid ones are published
    // together (one Raft entry per partition).
    let mut outcomes: Vec<Result<String, String>> = Vec::with_capacity(payloads.len());
    let mut valid = Vec::new();
    for (index, payload) in payloads.iter().enumerate() {
        match gateway.check_payload(&topic, payload) {
            Ok(()) => {
                valid.push(index);
                outcomes.push(Ok(String::new()));
            }
            Err(e) => outcomes.push(Err(e.message)),
        }
    }
    if !valid.is_empty() {
        let records = valid
            .iter()
            .map(|i| pb::Record {
                value: payloads[*i].to_string().into_bytes().into(),
                ..Default::default()
            })
            .collect();
        let request = Request::new(pb::PublishBatchRequest {
            topic: topic_ref(&topic),
            records,
            producer: None,
        });
        let results = gateway
            .service
            .publish_batch(request)
            .await?
            .into_inner()
            .results;
        for (index, result) in valid.into_iter().zip(results) {
            outcomes[index] = match result.result {
                Some(pb::publish_result::Result::Ok(ack)) => Ok(ack.message_id),
                Some(pb::publish_result::Result::Error(e)) => {
                    Err(format!("{}: {}", e.code, e.message))
                }
                None => Err("no result".into()),
            };
        }
    }
    let is_partial_error = outcomes.iter().any(Result::is_err);
    let message_ids: serde_json::Map<String, Value> = outcomes
        .into_iter()
        .enumerate()
        .map(|(index, outcome)| {
            let entry = match outcome {
                Ok(id) => json!({"message_id": id, "result": "success"}),
                Err(why) => json!({"message_id": null, "result": why}),
            };
            (index.to_string(), entry)
        })
        .collect();
    Ok(Json(
        json!({"is_partial_error": is_partial_error, "message_ids": message_ids}),
    ))
}
