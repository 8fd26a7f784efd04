//! Request ids across forwarding hops. Every call a node serves, on the
//! HTTP gateway, the public gRPC listener or the peer listener, runs in a
//! `request` tracing span carrying its `x-request-id` (taken from the
//! request, or generated when absent), and in a task-local scope from
//! which [`current`] reads it: a call forwarded to another node carries
//! the id in its metadata (`api/grpc/peers.rs`), so one request's logs on
//! every node it crossed share the id. Responses carry it back.

use tonic::codegen::http;
use tracing::Instrument;

use crate::call_layer::AroundCall;
use crate::call_layer::CallFuture;
use crate::call_layer::CallLayer;
use crate::call_layer::SendCall;

/// The header (gRPC metadata key) that carries a request's id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The longest request id taken from a caller; a longer one is replaced,
/// so a caller cannot make every log line of its request huge.
const MAX_REQUEST_ID_LEN: usize = 128;

tokio::task_local! {
    static REQUEST_ID: http::HeaderValue;
}

/// The id of the request being served, outside a [`RequestIdLayer`] scope
/// (background work) `None`.
pub fn current() -> Option<http::HeaderValue> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// A fresh request id.
pub fn generate() -> http::HeaderValue {
    // A UUID's text is always a valid header value.
    http::HeaderValue::from_str(&uuid::Uuid::now_v7().to_string())
        .unwrap_or_else(|_| http::HeaderValue::from_static("unknown"))
}

/// The request's own id when it has a usable one, else a fresh one.
fn id_of<B>(request: &http::Request<B>) -> http::HeaderValue {
    request
        .headers()
        .get(REQUEST_ID_HEADER)
        .filter(|value| {
            !value.is_empty()
                && value.len() <= MAX_REQUEST_ID_LEN
                && value.to_str().is_ok_and(|s| {
                    s.bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
                })
        })
        .cloned()
        .unwrap_or_else(generate)
}

/// Serves each call in a `request` span and a [`current`] scope holding its
/// id, and returns the id on the response. `node` names the serving node in
/// the span, so logs from one process hosting several nodes (tests) tell
/// them apart.
#[derive(Clone, Copy, Debug)]
pub struct RequestIds {
    node: u64,
}

pub type RequestIdLayer = CallLayer<RequestIds>;

impl RequestIdLayer {
    pub fn new(node: crate::model::NodeId) -> RequestIdLayer {
        CallLayer(RequestIds { node: node.0 })
    }
}

impl<S, B, R: Send + 'static> AroundCall<S, B> for RequestIds
where
    S: SendCall<http::Request<B>, Response = http::Response<R>>,
{
    type Future = CallFuture<R, S::Error>;

    fn around(&self, ready: &mut S, mut request: http::Request<B>) -> Self::Future {
        let id = id_of(&request);
        request.headers_mut().insert(REQUEST_ID_HEADER, id.clone());
        let span = tracing::info_span!(
            "request",
            request_id = id.to_str().unwrap_or_default(),
            node = self.node
        );
        let path = request.uri().path().to_owned();
        // The handler runs when this future is polled, inside the scope.
        let call = ready.call(request);
        Box::pin(
            REQUEST_ID
                .scope(id.clone(), async move {
                    tracing::debug!(path, "serving a request");
                    let mut response = call.await?;
                    response.headers_mut().insert(REQUEST_ID_HEADER, id);
                    Ok(response)
                })
                .instrument(span),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::convert::Infallible;

    use tower::Layer;
    use tower::ServiceExt;

    use super::*;
    use crate::model::NodeId;

    /// A handler that answers with the id it sees through [`current`].
    fn echo_current() -> impl tower::Service<
        http::Request<()>,
        Response = http::Response<String>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone {
        tower::service_fn(|_request: http::Request<()>| async {
            tokio::task::yield_now().await;
            let seen = current()
                .and_then(|v| v.to_str().ok().map(str::to_owned))
                .unwrap_or_default();
            Ok::<_, Infallible>(http::Response::new(seen))
        })
    }

    #[tokio::test]
    async fn a_given_id_is_seen_by_the_handler_and_returned() {
        let request = http::Request::builder()
            .header(REQUEST_ID_HEADER, "trace-me-42")
            .body(())
            .unwrap();
        let response = RequestIdLayer::new(NodeId(1))
            .layer(echo_current())
            .oneshot(request)
            .await
            .unwrap();
        assert_eq!(response.headers()[REQUEST_ID_HEADER], "trace-me-42");
        assert_eq!(response.body(), "trace-me-42");
    }

    #[tokio::test]
    async fn a_missing_or_unusable_id_is_replaced_by_a_fresh_one() {
        for given in [None, Some("has space"), Some("")] {
            let mut request = http::Request::builder();
            if let Some(given) = given {
                request = request.header(REQUEST_ID_HEADER, given);
            }
            let response = RequestIdLayer::new(NodeId(1))
                .layer(echo_current())
                .oneshot(request.body(()).unwrap())
                .await
                .unwrap();
            let returned = response.headers()[REQUEST_ID_HEADER].to_str().unwrap();
            assert_eq!(returned.len(), 36, "{given:?} gave {returned}");
            assert_eq!(response.body(), returned);
        }
        assert!(current().is_none(), "no id outside a request");
    }
}
