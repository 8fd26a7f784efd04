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

use raftstream_proto::FORWARDED_HEADER;
use tonic::codegen::http;

use crate::call_layer::AroundCall;
use crate::call_layer::CallFuture;
use crate::call_layer::CallLayer;
use crate::call_layer::SendCall;

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
/// Wraps only the client-facing services: Raft traffic between nodes never
/// forwards.
#[derive(Clone, Copy, Debug, Default)]
pub struct MarkForwarded;

pub type MarkForwardedLayer = CallLayer<MarkForwarded>;

impl<S, B, R: Send + 'static> AroundCall<S, B> for MarkForwarded
where
    S: SendCall<http::Request<B>, Response = http::Response<R>>,
{
    type Future = CallFuture<R, S::Error>;

    fn around(&self, ready: &mut S, request: http::Request<B>) -> Self::Future {
        // The handler runs when this future is polled, inside the scope.
        let call = ready.call(request);
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
    ) -> impl Service<
        http::Request<()>,
        Response = http::Response<()>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static {
        tower::service_fn(move |_request: http::Request<()>| async move {
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
        let forwarded = MarkForwardedLayer::default()
            .layer(service(true))
            .oneshot(http::Request::new(()))
            .await
            .unwrap();
        assert!(forwarded.headers().contains_key(FORWARDED_HEADER));
        let local = MarkForwardedLayer::default()
            .layer(service(false))
            .oneshot(http::Request::new(()))
            .await
            .unwrap();
        assert!(!local.headers().contains_key(FORWARDED_HEADER));
    }

    #[tokio::test]
    async fn noting_outside_a_call_does_nothing() {
        note_forwarded();
        let response = service(true).oneshot(http::Request::new(())).await.unwrap();
        assert!(!response.headers().contains_key(FORWARDED_HEADER));
    }
}
