//! Faults on the links between nodes, for clusters that tests run in one
//! process: a link from one node to another can be cut (a partition), lose
//! a seeded fraction of its messages, or be delayed.
//!
//! Every call on the peer listener names its sender ([`FROM_NODE_HEADER`]);
//! [`LinkFaultLayer`] holds a call whose link is cut or loses it, and
//! delays it by its link's delay, and does the same to the answer on the
//! way back. A held message is never answered: the caller sees what a
//! black-holed packet gives, its own timeout, so an interrupted write stays
//! an unknown outcome as it would on a real network. Nodes started without
//! faults (every production node) pass every call through unchanged.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::Either;
use parking_lot::Mutex;
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tonic::codegen::http;

use crate::call_layer::AroundCall;
use crate::call_layer::CallFuture;
use crate::call_layer::CallLayer;
use crate::call_layer::SendCall;
use crate::model::NodeId;

/// The node a peer call comes from.
pub const FROM_NODE_HEADER: &str = "x-raftstream-from-node";

/// The faults of every link of one test cluster, shared by its nodes.
#[derive(Debug)]
pub struct LinkFaults {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    cut: BTreeSet<(NodeId, NodeId)>,
    loss: BTreeMap<(NodeId, NodeId), f64>,
    delay: BTreeMap<(NodeId, NodeId), Duration>,
    /// Which messages a lossy link loses: the same seed loses the same
    /// draws, so a failing run can be replayed.
    rng: StdRng,
}

/// What happens to one message on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Deliver { after: Duration },
    Lose,
}

impl LinkFaults {
    pub fn new(seed: u64) -> Arc<LinkFaults> {
        Arc::new(LinkFaults {
            state: Mutex::new(State {
                cut: BTreeSet::new(),
                loss: BTreeMap::new(),
                delay: BTreeMap::new(),
                rng: StdRng::seed_from_u64(seed),
            }),
        })
    }

    /// Cuts every link between a node of `one` and a node of `other`, both
    /// ways.
    pub fn partition(&self, one: &[NodeId], other: &[NodeId]) {
        let mut state = self.state.lock();
        for a in one {
            for b in other {
                state.cut.insert((*a, *b));
                state.cut.insert((*b, *a));
            }
        }
    }

    /// Cuts the link from `from` to `to` only.
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.state.lock().cut.insert((from, to));
    }

    /// Makes the link from `from` to `to` lose `fraction` of its messages.
    pub fn lose(&self, from: NodeId, to: NodeId, fraction: f64) {
        self.state.lock().loss.insert((from, to), fraction);
    }

    /// Delays every message from `from` to `to` by `by`.
    pub fn delay(&self, from: NodeId, to: NodeId, by: Duration) {
        self.state.lock().delay.insert((from, to), by);
    }

    /// Restores every link.
    pub fn heal(&self) {
        let mut state = self.state.lock();
        state.cut.clear();
        state.loss.clear();
        state.delay.clear();
    }

    /// What happens to the next message from `from` to `to`.
    pub fn verdict(&self, from: NodeId, to: NodeId) -> Verdict {
        let mut state = self.state.lock();
        let link = (from, to);
        if state.cut.contains(&link) {
            return Verdict::Lose;
        }
        if let Some(fraction) = state.loss.get(&link).copied()
            && state.rng.random_bool(fraction.clamp(0.0, 1.0))
        {
            return Verdict::Lose;
        }
        Verdict::Deliver {
            after: state.delay.get(&link).copied().unwrap_or_default(),
        }
    }
}

/// Applies a cluster's [`LinkFaults`] to the calls a node's peer listener
/// takes; without faults, calls pass through unchanged.
#[derive(Debug, Clone)]
pub struct ApplyLinkFaults {
    node: NodeId,
    faults: Option<Arc<LinkFaults>>,
}

pub type LinkFaultLayer = CallLayer<ApplyLinkFaults>;

impl LinkFaultLayer {
    pub fn new(node: NodeId, faults: Option<Arc<LinkFaults>>) -> LinkFaultLayer {
        CallLayer(ApplyLinkFaults { node, faults })
    }
}

/// Holds a message as its link's verdict says: for ever when it is lost
/// (the caller's timeout ends the call), else for the link's delay.
async fn cross(faults: &LinkFaults, from: NodeId, to: NodeId) {
    match faults.verdict(from, to) {
        Verdict::Lose => std::future::pending().await,
        Verdict::Deliver { after } if after > Duration::ZERO => tokio::time::sleep(after).await,
        Verdict::Deliver { .. } => {}
    }
}

impl<S, B, R: Send + 'static> AroundCall<S, B> for ApplyLinkFaults
where
    S: SendCall<http::Request<B>, Response = http::Response<R>>,
{
    /// Without faults (every production node) the call passes through
    /// unboxed.
    type Future = Either<S::Future, CallFuture<R, S::Error>>;

    fn around(&self, ready: &mut S, request: http::Request<B>) -> Self::Future {
        let from = request
            .headers()
            .get(FROM_NODE_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<NodeId>().ok());
        let (Some(faults), Some(from)) = (&self.faults, from) else {
            return Either::Left(ready.call(request));
        };
        let faults = Arc::clone(faults);
        let to = self.node;
        // A gRPC service's call does its work when its future is polled,
        // which happens only once the request has crossed its link.
        let call = ready.call(request);
        Either::Right(Box::pin(async move {
            cross(&faults, from, to).await;
            let response = call.await?;
            cross(&faults, to, from).await;
            Ok(response)
        }))
    }
}
