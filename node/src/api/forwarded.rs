//! Tells a gRPC caller when a node forwarded its call. A client sends a
//! group's calls to the leader it learnt; when leadership later moves (a
//! hand-back to the preferred replica, a transfer) while the old leader stays
//! up, that node forwards every call, correct but one hop longer, and the
//! client would never find out. The response's [`FORWARDED_HEADER`]
//! metadata is its cue to learn the leaders again.
//!
//! The decision to forward is taken deep inside a handler (`route`), often
//! for one of several partitions of a call, so the flag lives in a task-local
//! that the layer around the gRPC server scopes to each call, rather than
//! being threaded through every handler's return value.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::task::Poll;

use raftstream_proto::FORWARDED_HEADER;
use tonic::codegen::http;

tokio::task_local! {
    static FORWARDED: Cell<bool>;
}

/// Notes that the call being served forwards work to another node. Outside a
/// call served through [`MarkForwardedLayer`] (the HTTP gateway calls the
/// service in-process) there is nobody to tell, and nothing happens.
pub fn note_forwarded() {
    let _ = FORWARDED.try_with(|forwarded| forwarded.set(true));
}

/// Serves each call in its own [`note_forwarded`] scope and sets
/// [`FORWARDED_HEADER`] on the response of a call that forwarded any work.
#[derive(Clone, Copy, Debug, Default)]
pub struct MarkForwardedLayer;

impl<S> tower::Layer<S> for MarkForwardedLayer {
    type Service = MarkForwarded<S>;

    fn layer(&self, inner: S) -> MarkForwarded<S> {
        MarkForwarded(inner)
    }
}

#[derive(Clone, Debug)]
pub struct MarkForwarded<S>(S);

/// Keeps the wrapped service's gRPC name, so that only the client-facing
/// services need the wrapper: Raft traffic between nodes never forwards.
impl<S: tonic::server::NamedService> tonic::server::NamedService for MarkForwarded<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, Request, Body> tower::Service<Request> for MarkForwarded<S>
where
    S: tower::Service<Request, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    Body: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The handler runs when this future is polled, inside the scope.
        let call = self.0.call(request);
        Box::pin(FORWARDED.scope(Cell::new(false), async move {
            let mut response = call.await?;
            if FORWARDED.with(Cell::get) {
                response
                    .headers_mut()
                    .insert(FORWARDED_HEADER, http::HeaderValue::from_static("1"));
            }
            Ok(response)
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::Layer;
    use tower::Service;
    use tower::ServiceExt;

    use super::*;

    /// A service that forwards when asked to.
    fn service(
        forward: bool,
    ) -> impl Service<(), Response = http::Response<()>, Error = Infallible, Future: Send + 'static>
    {
        tower::service_fn(move |()| async move {
            // As a handler does: the decision comes after an await.
            tokio::task::yield_now().await;
            if forward {
                note_forwarded();
            }
            Ok::<_, Infallible>(http::Response::new(()))
        })
    }

    #[tokio::test]
    async fn only_a_call_that_forwarded_is_marked() {
        let forwarded = MarkForwardedLayer
            .layer(service(true))
            .oneshot(())
            .await
            .unwrap();
        assert!(forwarded.headers().contains_key(FORWARDED_HEADER));
        let local = MarkForwardedLayer
            .layer(service(false))
            .oneshot(())
            .await
            .unwrap();
        assert!(!local.headers().contains_key(FORWARDED_HEADER));
    }

    #[tokio::test]
    async fn noting_outside_a_call_does_nothing() {
        note_forwarded();
        let response = service(true).oneshot(()).await.unwrap();
        assert!(!response.headers().contains_key(FORWARDED_HEADER));
    }
}
