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

/// The answer to one wrapped call.
pub type CallFuture<R, E> = Pin<Box<dyn Future<Output = Result<http::Response<R>, E>> + Send>>;

/// The wrapped service's handling of one call: the service that was made
/// ready, so a middleware may call it after an await of its own.
pub type Next<B, R, E> = Box<dyn FnOnce(http::Request<B>) -> CallFuture<R, E> + Send>;

/// What a middleware does around one call whose request has a body of
/// type `B`, whose response has a body of type `R`, and which fails with
/// `E`.
pub trait AroundCall<B, R, E> {
    /// Serves `request`, passing it on to `next` at most once.
    fn around(&self, request: http::Request<B>, next: Next<B, R, E>) -> CallFuture<R, E>;
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

impl<S, A, B, R> tower::Service<http::Request<B>> for Around<S, A>
where
    A: AroundCall<B, R, S::Error>,
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = CallFuture<R, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The clone that was made ready serves this call (tower's rule); a
        // fresh clone takes its place for the next one.
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let next: Next<B, R, S::Error> = Box::new(move |request| Box::pin(ready.call(request)));
        self.around.around(request, next)
    }
}
