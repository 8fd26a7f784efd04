//! Authentication before work: the public `Raftstream` service checks the
//! caller's bearer token from the request headers before tonic reads and
//! decodes the body. An unauthenticated caller then costs a header lookup,
//! not the decoding of a request of up to `max_request_bytes`. The handler
//! still authorizes the call (scopes, topics) as before.
//!
//! Webhook deliveries (`Ingest`) carry their source's secret in the message
//! itself, so that service is not wrapped.

use std::sync::Arc;

use tonic::codegen::http;

use crate::call_layer::AroundCall;
use crate::call_layer::CallFuture;
use crate::call_layer::CallLayer;
use crate::call_layer::SendCall;
use crate::call_layer::take_ready;
use crate::node::Node;
use crate::raft::types::TokenRecord;

/// Proves a forwarded request comes from a node of this cluster: the
/// cluster secret held in the replicated metadata, which no API returns.
pub(crate) const NODE_AUTH_HEADER: &str = "x-raftstream-node-auth";

/// Checks the bearer token before the wrapped service decodes the body.
#[derive(Clone, Debug)]
pub struct AuthenticateFirst {
    node: Arc<Node>,
}

pub type AuthenticateFirstLayer = CallLayer<AuthenticateFirst>;

impl AuthenticateFirstLayer {
    pub fn new(node: Arc<Node>) -> Self {
        CallLayer(AuthenticateFirst { node })
    }
}

/// The token this layer found valid, handed to the handler in the request's
/// extensions (which only this process can set) so that it does not hash
/// and look the secret up a second time.
#[derive(Debug, Clone)]
pub struct AuthenticatedToken(pub TokenRecord);

/// What the headers alone decide about a call.
enum Verdict {
    Refused(&'static str),
    Authenticated(TokenRecord),
    /// Left to the handler: the node is stopping, and without metadata
    /// nothing can be checked (the handler answers UNAVAILABLE).
    Undecided,
}

async fn verdict(node: &Node, headers: &http::HeaderMap) -> Verdict {
    if headers.contains_key(NODE_AUTH_HEADER) {
        return Verdict::Refused("node credentials are accepted only on the peer listener");
    }
    if node.meta_group().is_none() {
        return Verdict::Undecided;
    }
    let secret = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::auth::bearer_credentials);
    let Some(secret) = secret else {
        return Verdict::Refused("missing authorization: Bearer <token>");
    };
    match node.authenticate(secret).await {
        Some(token) => Verdict::Authenticated(token),
        None => Verdict::Refused("unknown or revoked token"),
    }
}

impl<S, B, R> AroundCall<S, B> for AuthenticateFirst
where
    S: SendCall<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Future = CallFuture<R, S::Error>;

    fn around(&self, ready: &mut S, mut request: http::Request<B>) -> Self::Future {
        let node = self.node.clone();
        // The token is looked up before the call is made.
        let mut ready = take_ready(ready);
        Box::pin(async move {
            match verdict(&node, request.headers()).await {
                Verdict::Refused(why) => return Ok(tonic::Status::unauthenticated(why).into_http()),
                Verdict::Authenticated(token) => {
                    request.extensions_mut().insert(AuthenticatedToken(token));
                }
                Verdict::Undecided => {}
            }
            ready.call(request).await
        })
    }
}
