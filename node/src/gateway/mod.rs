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
mod platform;
mod publish;
mod subscriptions;
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
use serde_json::value::RawValue;
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
use crate::api::service::RecordOutcome;
use crate::api::service::Service;
use crate::model::TopicName;
use crate::node::Node;
use crate::node::NotReady;
use crate::platform::PlatformEvent;
use crate::raft::types::Scope;
use crate::raft::types::Topic;

/// The largest request body the gateway reads (Workato's payload limit),
/// but for a batch publish's (`Limits::max_http_batch_bytes`).
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
    // A batch carries up to 100 payloads of up to 1 MiB: its body has its
    // own, larger limit, which the 413 names.
    let batch_limit = gateway.node.config.limits.max_http_batch_bytes;
    let batch_route = OpenApiRouter::default()
        .routes(routes!(publish::publish_batch))
        .layer(DefaultBodyLimit::max(batch_limit))
        .layer(axum::Extension(extract::BodyLimit(batch_limit)));
    let publish_routes = OpenApiRouter::default()
        .routes(routes!(publish::publish))
        .merge(batch_route)
        .route_layer(scoped(Scope::Publish));
    let consume_routes = OpenApiRouter::default()
        .routes(routes!(consume::consume))
        .routes(routes!(platform::flow_executions))
        .routes(routes!(platform::flow_errors))
        .routes(routes!(platform::workspace_activity))
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
        .routes(routes!(subscriptions::list, subscriptions::create))
        .routes(routes!(
            subscriptions::get,
            subscriptions::update,
            subscriptions::delete
        ))
        .routes(routes!(subscriptions::pause))
        .routes(routes!(subscriptions::resume))
        .routes(routes!(subscriptions::replay))
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
    /// schema itself, item by item: each one's outcome, in order. Values
    /// are sent in order, in pieces of at most `max_batch_bytes` (one Raft
    /// entry per partition each), so an HTTP batch larger than that is
    /// stored whole and in order.
    async fn publish_checked(
        &self,
        topic: &Topic,
        values: Vec<Bytes>,
    ) -> Result<Vec<RecordOutcome>, ApiError> {
        let max_batch_bytes = self.node.config.limits.max_batch_bytes;
        let total = values.len();
        let mut outcomes: Vec<RecordOutcome> = Vec::with_capacity(total);
        for piece in pieces(values, max_batch_bytes) {
            let call = Publish::checked_values(piece);
            match self
                .core
                .publish_to(&Caller::Node, topic, call, Hops::default())
                .await
            {
                Ok(piece_outcomes) => outcomes.extend(piece_outcomes),
                // Nothing was stored: the whole call fails.
                Err(e) if outcomes.is_empty() => return Err(e.into()),
                // Earlier pieces were stored: this piece's items, and the
                // ones after it, fail alone with the error, so the caller
                // knows which ones to send again.
                Err(e) => {
                    outcomes.resize(total, Err(e));
                    break;
                }
            }
        }
        Ok(outcomes)
    }

    /// Checks payloads one by one: each must be a JSON object that
    /// satisfies the topic's schema. Returns each one's outcome; an error
    /// only when they could not be checked at all. The payloads are parsed
    /// into values only to be checked: what is stored stays the raw bytes.
    async fn check_payloads(
        &self,
        topic: &Topic,
        payloads: &[&RawValue],
    ) -> Result<Vec<Result<(), ApiError>>, ApiError> {
        let mut outcomes: Vec<Result<(), ApiError>> = payloads
            .iter()
            .map(|payload| {
                if is_object(payload) {
                    Ok(())
                } else {
                    Err(ApiError::bad_request("the payload must be a JSON object"))
                }
            })
            .collect();
        let Some(schema) = TopicSchema::of(topic) else {
            return Ok(outcomes);
        };
        let mut checked = Vec::new();
        let mut values = Vec::new();
        for (index, payload) in payloads.iter().enumerate() {
            if outcomes[index].is_err() {
                continue;
            }
            match serde_json::from_str::<Value>(payload.get()) {
                Ok(value) => {
                    checked.push(index);
                    values.push(value);
                }
                Err(e) => {
                    outcomes[index] = Err(ApiError::bad_request(format!(
                        "the payload cannot be checked against the topic's schema: {e}"
                    )))
                }
            }
        }
        let (_, mismatches) = self
            .node
            .schemas
            .check_each(schema, values)
            .await
            .map_err(unchecked)?;
        let mut first_failure = None;
        let mut rejected = 0;
        for (index, mismatch) in checked.into_iter().zip(mismatches) {
            if let Some(failures) = mismatch {
                rejected += 1;
                first_failure.get_or_insert_with(|| failures.to_string());
                outcomes[index] = Err(ApiError::new(
                    ErrorCode::SchemaMismatch,
                    format!("the payload does not match the topic's schema: {failures}"),
                ));
            }
        }
        // The service reports its own refusals; these payloads never reach
        // it, so the gateway reports them in the same shape.
        if let Some(reason) = first_failure {
            self.node.platform.emit(PlatformEvent::schema_rejected(
                &topic.name,
                rejected,
                &reason,
            ));
        }
        Ok(outcomes)
    }
}

/// Whether a raw JSON value (valid JSON without surrounding whitespace, as
/// serde_json makes every `RawValue`) is an object.
fn is_object(payload: &RawValue) -> bool {
    payload.get().starts_with('{')
}

/// Splits values, in order, into pieces whose records add up to at most
/// `max_bytes` (a value larger than that goes alone, for the service to
/// refuse it on its own).
fn pieces(values: Vec<Bytes>, max_bytes: usize) -> Vec<Vec<Bytes>> {
    let mut pieces: Vec<Vec<Bytes>> = Vec::new();
    let mut current: Vec<Bytes> = Vec::new();
    let mut current_bytes = 0usize;
    for value in values {
        let size = raftstream_proto::record_size(&[], &value, std::iter::empty());
        if !current.is_empty() && current_bytes.saturating_add(size) > max_bytes {
            pieces.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current_bytes = current_bytes.saturating_add(size);
        current.push(value);
    }
    if !current.is_empty() {
        pieces.push(current);
    }
    pieces
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

    #[test]
    fn pieces_keep_the_order_and_stay_within_the_budget() {
        let value = |n: usize, fill: u8| Bytes::from(vec![fill; n]);
        let values = vec![
            value(4, b'a'),
            value(4, b'b'),
            value(3, b'c'),
            value(20, b'd'),
            value(1, b'e'),
        ];
        let split = pieces(values.clone(), 10);
        let sizes: Vec<Vec<usize>> = split
            .iter()
            .map(|piece| piece.iter().map(Bytes::len).collect())
            .collect();
        // The value over the budget goes alone, for the service to refuse.
        assert_eq!(sizes, vec![vec![4, 4], vec![3], vec![20], vec![1]]);
        assert_eq!(split.concat(), values);
        assert!(pieces(Vec::new(), 10).is_empty());
    }
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
