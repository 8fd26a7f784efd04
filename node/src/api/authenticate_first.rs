//! Authentication before work: the public `Raftstream` service checks the
//! caller's bearer token from the request headers before tonic reads and
//! decodes the body. An unauthenticated caller then costs a header lookup,
//! not the decoding of a request of up to `max_request_bytes`. The handler
//! still authorizes the call (scopes, topics) as before.
//!
//! Webhook deliveries (`Ingest`) carry their source's secret in the message
//! itself, so that service is not wrapped.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;
use std::task::Poll;

use tonic::codegen::http;

use crate::node::Node;
use crate::raft::types::TokenRecord;

/// Proves a forwarded request comes from a node of this cluster: the
/// cluster secret held in the replicated metadata, which no API returns.
pub(crate) const NODE_AUTH_HEADER: &str = "x-raftstream-node-auth";

#[derive(Clone, Debug)]
pub struct AuthenticateFirstLayer {
    node: Arc<Node>,
}

impl AuthenticateFirstLayer {
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }
}

impl<S> tower::Layer<S> for AuthenticateFirstLayer {
    type Service = AuthenticateFirst<S>;

    fn layer(&self, inner: S) -> AuthenticateFirst<S> {
        AuthenticateFirst {
            inner,
            node: self.node.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct AuthenticateFirst<S> {
    inner: S,
    node: Arc<Node>,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for AuthenticateFirst<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

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

impl<S, B, ResBody> tower::Service<http::Request<B>> for AuthenticateFirst<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<ResBody>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone that was made ready serves this call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let node = self.node.clone();
        Box::pin(async move {
            match verdict(&node, request.headers()).await {
                Verdict::Refused(why) => return Ok(tonic::Status::unauthenticated(why).into_http()),
                Verdict::Authenticated(token) => {
                    request.extensions_mut().insert(AuthenticatedToken(token));
                }
                Verdict::Undecided => {}
            }
            inner.call(request).await
        })
    }
}
