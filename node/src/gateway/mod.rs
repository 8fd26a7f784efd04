//! The HTTP gateway: the Workato Event Streams API on axum.
//!
//! Every call becomes a call of the client API's core (`api::service`) with
//! its own types, the same core the gRPC service adapts: a call takes the
//! same routing and forwarding path as a gRPC client's, and a gateway on a
//! follower behaves exactly like one on a leader.
//!
//! Routes are registered through utoipa-axum's `OpenApiRouter`: each handler
//! carries its `#[utoipa::path]`, and the bodies it reads and writes are the
//! `ToSchema` types the document names, so `/openapi.json` (and the AsyncAPI
//! document built from it) describes exactly what is served.

mod auth;
mod cluster;
mod consume;
mod docs;
mod error;
mod extract;
mod ingest;
mod publish;
mod tokens;
mod topics;

use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::middleware;
use axum::response::IntoResponse;
use bytes::Bytes;
use raftstream_proto::ErrorCode;
use serde::Deserialize;
use serde::Serialize;
use serde_json::Value;
use utoipa::OpenApi;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use self::error::ApiError;
pub use self::error::ErrorBody;
use crate::api::schema::SchemaError;
use crate::api::schema::TopicSchema;
use crate::api::service::Caller;
use crate::api::service::Hops;
use crate::api::service::Publish;
use crate::api::service::Record;
use crate::api::service::RecordOutcome;
use crate::api::service::SchemaCheck;
use crate::api::service::Service;
use crate::model::TopicName;
use crate::node::Node;
use crate::node::NotReady;
use crate::raft::types::Scope;
use crate::raft::types::Topic;

/// The largest request body the gateway reads (Workato's payload limit).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The most payloads one batch publish carries.
pub const MAX_BATCH_PAYLOADS: usize = 100;

pub struct Gateway {
    core: Service,
    node: Arc<Node>,
    rate_limiter: Option<auth::RateLimiter>,
    /// The API documents, serialized once when the router is built.
    documents: OnceLock<docs::Documents>,
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
        core: crate::api::grpc::service(node.clone()),
        rate_limiter: auth::rate_limiter(node.config.limits.rate_limit_per_sec),
        node,
        documents: OnceLock::new(),
    });
    let scoped =
        |scope: Scope| middleware::from_fn_with_state((gateway.clone(), scope), auth::require);
    let publish_routes = OpenApiRouter::default()
        .routes(routes!(publish::publish))
        .routes(routes!(publish::publish_batch))
        .route_layer(scoped(Scope::Publish));
    let consume_routes = OpenApiRouter::default()
        .routes(routes!(consume::consume))
        .route_layer(scoped(Scope::Consume));
    let admin_routes = OpenApiRouter::default()
        .routes(routes!(topics::list, topics::create))
        .routes(routes!(topics::get, topics::update, topics::delete))
        .routes(routes!(topics::purge))
        .routes(routes!(tokens::list, tokens::create))
        .routes(routes!(tokens::delete))
        .routes(routes!(ingest::list, ingest::create))
        .routes(routes!(ingest::get, ingest::delete))
        .routes(routes!(ingest::rotate_secret))
        .routes(routes!(cluster::status))
        .routes(routes!(cluster::add_node))
        .routes(routes!(cluster::remove_node))
        .routes(routes!(cluster::move_partition))
        .route_layer(scoped(Scope::Admin));
    // Webhook receivers authenticate with the source's own secret.
    let webhook_routes = OpenApiRouter::default()
        .routes(routes!(ingest::receive))
        .routes(routes!(ingest::flow_get, ingest::flow_post));
    let (router, openapi) = OpenApiRouter::with_openapi(docs::ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(docs::openapi_json))
        .routes(routes!(docs::asyncapi_yaml))
        .merge(publish_routes)
        .merge(consume_routes)
        .merge(admin_routes)
        .merge(webhook_routes)
        .split_for_parts();
    let documents = docs::Documents::build(openapi, &gateway.node.config);
    // The gateway was created above and nothing else has set its documents.
    let _ = gateway.documents.set(documents);
    router
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "this route does not take this method",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            Duration::from_millis(gateway.node.config.limits.request_timeout_ms),
            within_request_timeout,
        ))
        .layer(middleware::from_fn_with_state(
            gateway.node.clone(),
            count_request,
        ))
        // Outermost: every request gets an `x-request-id` (the caller's, or
        // a new one), returns it, and is served in its span and scope, from
        // which forwarded calls take it (`api/request_id.rs`).
        .layer(crate::api::request_id::RequestIdLayer::new(
            gateway.node.id(),
        ))
        .layer(tower_http::request_id::PropagateRequestIdLayer::x_request_id())
        .layer(tower_http::request_id::SetRequestIdLayer::x_request_id(
            tower_http::request_id::MakeRequestUuid,
        ))
        .with_state(gateway)
}

/// Counts and times every request by its route's template (never the raw
/// path: ids in paths would make a series per id) and its status,
/// rejections and timeouts included.
async fn count_request(
    State(node): State<Arc<Node>>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    node.metrics
        .http_request(&route, response.status().as_u16(), started.elapsed());
    response
}

/// Bounds a whole request, body included, by `request_timeout_ms` (longer
/// than any long poll plus a write's own timeout): a client that sends its
/// body slowly, or a call stuck behind a fault, does not hold a connection
/// and its buffers forever. Whether a write ran is then unknown: 504.
async fn within_request_timeout(
    State(limit): State<Duration>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            ErrorCode::OutcomeUnknown,
            format!(
                "no answer within {} ms; a write may still take effect",
                limit.as_millis()
            ),
        )
        .into_response(),
    }
}

/// The answer of /healthz.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// The answer of /readyz.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Ready {
    /// Always `ready`.
    pub status: String,
    pub node_id: u64,
    /// The node that leads the metadata group.
    pub metadata_leader: u64,
}

/// The process is up and serving.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "The node is up.", body = Health))
)]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// This node's metrics in Prometheus' text format (see the README for
/// each one). Needs no token, like the health routes.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4.",
        body = String, content_type = "text/plain"))
)]
async fn metrics(State(gateway): Shared) -> axum::response::Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        gateway.node.render_metrics(),
    )
        .into_response()
}

/// The node can take writes: its metadata group has a leader.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "The node can take writes.", body = Ready),
        (status = 503, description = "`not_ready`: no metadata leader yet; `storage_failed`: a \
            write or fsync failed and the node stopped serving.", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    )
)]
async fn readyz(State(gateway): Shared) -> Result<Json<Ready>, ApiError> {
    let node = &gateway.node;
    match node.readiness() {
        Ok(leader) => Ok(Json(Ready {
            status: "ready".into(),
            node_id: node.id().0,
            metadata_leader: leader.0,
        })),
        Err(why @ NotReady::StorageFailed(_)) => {
            Err(ApiError::new(ErrorCode::StorageFailed, why.to_string()))
        }
        Err(why @ NotReady::NoMetadataLeader) => {
            Err(ApiError::new(ErrorCode::NotReady, why.to_string()))
        }
    }
}

impl Gateway {
    /// Resolves `{topic_id}` (an id or a name) for publish and consume:
    /// this node's metadata first, then the metadata leader, so a topic
    /// created a moment ago is found.
    async fn topic(&self, path: &str) -> Result<Topic, ApiError> {
        Ok(self.core.topic(&TopicName::parse(path)).await?)
    }

    /// Resolves `{topic_id}` on the metadata leader, which has applied
    /// every topic change it acknowledged: topic management reads there, so
    /// a topic deleted or changed through another node is never seen as it
    /// was.
    async fn current_topic(&self, path: &str) -> Result<Topic, ApiError> {
        let name = TopicName::parse(path);
        Ok(self.core.current_topic(&name, Hops::default()).await?)
    }

    /// Publishes values the gateway has checked against the topic's
    /// schema itself, item by item: each one's outcome, in order.
    async fn publish_checked(
        &self,
        topic: &Topic,
        values: Vec<Bytes>,
    ) -> Result<Vec<RecordOutcome>, ApiError> {
        let records = values
            .into_iter()
            .map(|value| Record {
                value,
                ..Record::default()
            })
            .collect();
        let call = Publish {
            records,
            producer: None,
            schema_check: SchemaCheck::Done,
        };
        Ok(self
            .core
            .publish_to(&Caller::Node, topic, call, Hops::default())
            .await?)
    }

    /// Checks one payload, as `check_payloads` does, and returns it.
    async fn check_payload(&self, topic: &Topic, payload: Value) -> Result<Value, ApiError> {
        let (payloads, outcomes) = self.check_payloads(topic, vec![payload]).await?;
        match (payloads.into_iter().next(), outcomes.into_iter().next()) {
            (Some(payload), Some(Ok(()))) => Ok(payload),
            (_, Some(Err(e))) => Err(e),
            _ => Err(ApiError::new(
                ErrorCode::Internal,
                "the payload's check gave no outcome",
            )),
        }
    }

    /// Checks payloads one by one: each must be a JSON object that
    /// satisfies the topic's schema. Returns the payloads back with each
    /// one's outcome; an error only when they could not be checked at all.
    async fn check_payloads(
        &self,
        topic: &Topic,
        payloads: Vec<Value>,
    ) -> Result<(Vec<Value>, Vec<Result<(), ApiError>>), ApiError> {
        let (payloads, mismatches) = match TopicSchema::of(topic) {
            None => {
                let mismatches = vec![None; payloads.len()];
                (payloads, mismatches)
            }
            Some(schema) => self
                .node
                .schemas
                .check_each(schema, payloads)
                .await
                .map_err(unchecked)?,
        };
        let outcomes = payloads
            .iter()
            .zip(mismatches)
            .map(|(payload, mismatch)| payload_outcome(payload, mismatch))
            .collect();
        Ok((payloads, outcomes))
    }
}

/// One payload's outcome, given what it fails of the topic's schema.
fn payload_outcome(payload: &Value, mismatch: Option<String>) -> Result<(), ApiError> {
    if !payload.is_object() {
        return Err(ApiError::bad_request("the payload must be a JSON object"));
    }
    match mismatch {
        Some(failures) => Err(ApiError::new(
            ErrorCode::SchemaMismatch,
            format!("the payload does not match the topic's schema: {failures}"),
        )),
        None => Ok(()),
    }
}

/// Payloads could not be checked at all.
fn unchecked(e: SchemaError) -> ApiError {
    let code = match e {
        SchemaError::StoredSchema { .. } => ErrorCode::InvalidTopicSchema,
        _ => ErrorCode::Internal,
    };
    ApiError::new(code, e.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::post;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn a_request_whose_body_never_ends_gets_504_at_the_request_timeout() {
        let app = Router::new()
            .route("/", post(|body: String| async move { body }))
            .layer(middleware::from_fn_with_state(
                Duration::from_millis(200),
                within_request_timeout,
            ));
        // A body that sends one chunk and then nothing, like a slow client.
        let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
        let _ = sender.send(Ok(b"{\"payload\":".to_vec())).await;
        let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(receiver));
        let request = axum::extract::Request::post("/").body(body).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), app.oneshot(request))
            .await
            .expect("the middleware answers at its timeout")
            .unwrap();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let error: ErrorBody = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(error.code, "outcome_unknown", "{error:?}");
        drop(sender);
    }
}
