//! The tower plumbing shared by the middleware around the node's services
//! (request ids, forwarding marks, authentication before decoding, link
//! faults). Each of them says only what it does around one call
//! ([`AroundCall`]); [`CallLayer`] wraps a service with it, passes readiness
//! through, and keeps the wrapped service's gRPC name, so that tonic routes
//! the wrapped service as it would the bare one.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::task::Poll;

use tonic::codegen::http;

/// A boxed answer to one wrapped call, for middleware whose future has no
/// name (an `async` block).
pub type CallFuture<R, E> = Pin<Box<dyn Future<Output = Result<http::Response<R>, E>> + Send>>;

/// A wrapped service whose calls a middleware may box: its futures and
/// errors are `Send + 'static`.
pub trait SendCall<Request>:
    tower::Service<Request, Future: Send + 'static, Error: Send + 'static>
{
}

impl<S, Request> SendCall<Request> for S where
    S: tower::Service<Request, Future: Send + 'static, Error: Send + 'static>
{
}

/// What a middleware does around one call to the wrapped service `S`.
pub trait AroundCall<S, B>
where
    S: tower::Service<http::Request<B>>,
{
    type Future: Future<Output = Result<S::Response, S::Error>>;

    /// Serves `request`. `ready` is the wrapped service, made ready for
    /// this call: the middleware calls it at most once, at once, or takes
    /// it with [`take_ready`] to call it after an await of its own.
    fn around(&self, ready: &mut S, request: http::Request<B>) -> Self::Future;
}

/// The ready service, for a call made later; a fresh clone takes its place
/// for the next call (tower's rule: the clone that was made ready serves
/// the call). Only middleware that awaits before calling needs this.
pub fn take_ready<S: Clone>(ready: &mut S) -> S {
    let clone = ready.clone();
    std::mem::replace(ready, clone)
}

/// Wraps services with the middleware `A`.
#[derive(Clone, Copy, Debug, Default)]
pub struct CallLayer<A>(pub A);

impl<S, A: Clone> tower::Layer<S> for CallLayer<A> {
    type Service = Around<S, A>;

    fn layer(&self, inner: S) -> Around<S, A> {
        Around {
            inner,
            around: self.0.clone(),
        }
    }
}

/// A service wrapped with the middleware `A`.
#[derive(Clone, Debug)]
pub struct Around<S, A> {
    inner: S,
    around: A,
}

impl<S: tonic::server::NamedService, A> tonic::server::NamedService for Around<S, A> {
    const NAME: &'static str = S::NAME;
}

impl<S, A, B> tower::Service<http::Request<B>> for Around<S, A>
where
    S: tower::Service<http::Request<B>>,
    A: AroundCall<S, B>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = A::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> A::Future {
        self.around.around(&mut self.inner, request)
    }
}
