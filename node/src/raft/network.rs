//! The client side of the Raft transport: one pooled tonic channel per peer
//! node, shared by every group; the group id travels on each message.
//!
//! Appends without entries (heartbeats, commit updates, probes) are the bulk
//! of the calls when many groups are busy: every leader sends one per
//! follower every heartbeat interval. They go to a peer through one
//! [`EmptyAppends`] queue, which sends whatever has gathered as one
//! `AppendEntriesBatch` call, with a few such calls in flight at a time.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::BasicNode;
use openraft::OptionalSend;
use openraft::alias::SnapshotOf;
use openraft::error::NetworkError;
use openraft::error::RPCError;
use openraft::error::ReplicationClosed;
use openraft::error::StreamingError;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::network::RaftNetworkFactory;
use openraft::network::v2::RaftNetworkV2;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use parking_lot::Mutex;
use raftstream_proto::http2;
use raftstream_proto::v1::RaftBatch;
use raftstream_proto::v1::RaftMessage;
use raftstream_proto::v1::raft_batch_result;
use raftstream_proto::v1::raft_transport_client::RaftTransportClient;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::transport::ClientTlsConfig;
use tonic::transport::Endpoint;

use crate::config::MAX_RPC_BYTES;
use crate::model::GroupId;
use crate::model::NodeId;
use crate::raft::types::TypeConfig;
use crate::raft::types::Vote;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("invalid peer address {addr:?}: {reason}")]
    BadAddress { addr: String, reason: String },
}

/// Batched calls in flight to one peer: while they are, appends gather for
/// the next.
const BATCHES_IN_FLIGHT: usize = 4;
/// Messages in one batched call at most.
const MAX_BATCH: usize = 2048;
/// Appends without entries waiting for a batched call to one peer, at
/// most. Each group's leader has about one outstanding per follower, so this
/// is far above any cluster's need; past it the peer is not keeping up, and
/// a refused heartbeat (openraft sends the next one) costs less than a
/// queue that grows without bound.
const APPENDS_QUEUED_MAX: usize = 16 * 1024;
/// A call's own deadline travels to the peer (`grpc-timeout`), which then
/// answers DEADLINE_EXCEEDED itself. The local timer only guards against a
/// peer that cannot answer at all, so it fires this much later: a call
/// dropped locally resets its HTTP/2 stream, and h2 closes a connection on
/// which too many streams were reset.
const LOCAL_TIMEOUT_MARGIN: Duration = Duration::from_millis(500);

/// One lazily connected channel per peer address (a peer listener). tonic
/// reconnects a lazy channel by itself, so a restarted peer needs nothing
/// from us.
#[derive(Clone, Debug)]
pub struct PeerPool {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    empty_appends: Arc<Mutex<HashMap<String, EmptyAppends>>>,
    /// Mutual TLS with every peer; plain HTTP/2 when absent.
    tls: Option<ClientTlsConfig>,
    /// This node's cluster id and node id, shown on every Raft transport
    /// call.
    cluster: ClusterStamp,
}

/// Puts this node's cluster id, once known, on a Raft transport call (the
/// peer refuses calls from another cluster, see `identity.rs`), and this
/// node's id (`link_faults.rs`).
#[derive(Clone, Debug)]
pub struct ClusterStamp {
    cluster: Arc<std::sync::OnceLock<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>>,
    node: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl ClusterStamp {
    pub fn new(node: NodeId) -> ClusterStamp {
        ClusterStamp {
            cluster: Arc::default(),
            node: tonic::metadata::MetadataValue::from(node.0),
        }
    }

    /// Sets the cluster id; it never changes once set.
    pub fn set(&self, cluster_id: &str) {
        if let Ok(value) = cluster_id.parse() {
            let _ = self.cluster.set(value);
        }
    }

    pub fn get(&self) -> Option<&str> {
        self.cluster.get().and_then(|value| value.to_str().ok())
    }
}

impl tonic::service::Interceptor for ClusterStamp {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = self.cluster.get() {
            request
                .metadata_mut()
                .insert(crate::identity::CLUSTER_ID_HEADER, value.clone());
        }
        request
            .metadata_mut()
            .insert(crate::link_faults::FROM_NODE_HEADER, self.node.clone());
        Ok(request)
    }
}

/// A Raft transport client that shows this node's cluster id.
pub type TransportClient = RaftTransportClient<InterceptedService<Channel, ClusterStamp>>;

/// An append without entries waiting for its batched call.
struct QueuedAppend {
    message: RaftMessage,
    timeout: Duration,
    reply: oneshot::Sender<Result<Bytes, CallError>>,
}

/// The queue of appends without entries to one peer.
#[derive(Clone, Debug)]
struct EmptyAppends {
    queue: mpsc::Sender<QueuedAppend>,
}

impl EmptyAppends {
    /// Starts the task that drains the queue into batched calls. It ends
    /// when the pool, and so the queue's sender, is dropped.
    fn start(channel: Channel, cluster: ClusterStamp, target: String) -> EmptyAppends {
        let (queue, mut queued) = mpsc::channel::<QueuedAppend>(APPENDS_QUEUED_MAX);
        tokio::spawn(async move {
            let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
            while let Some(first) = queued.recv().await {
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    return;
                };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH
                    && let Ok(next) = queued.try_recv()
                {
                    batch.push(next);
                }
                // Callers that gave up are not sent for.
                batch.retain(|queued| !queued.reply.is_closed());
                if batch.is_empty() {
                    continue;
                }
                let client = transport_client(channel.clone(), cluster.clone());
                let target = target.clone();
                tokio::spawn(async move {
                    send_batch(client, &target, batch).await;
                    drop(permit);
                });
            }
        });
        EmptyAppends { queue }
    }
}

async fn send_batch(mut client: TransportClient, target: &str, batch: Vec<QueuedAppend>) {
    let timeout = batch
        .iter()
        .map(|queued| queued.timeout)
        .max()
        .unwrap_or_default();
    let (messages, replies): (Vec<RaftMessage>, Vec<_>) = batch
        .into_iter()
        .map(|queued| (queued.message, queued.reply))
        .unzip();
    let mut request = tonic::Request::new(RaftBatch { messages });
    request.set_timeout(timeout);
    let outcome = tokio::time::timeout(
        timeout + LOCAL_TIMEOUT_MARGIN,
        client.append_entries_batch(request),
    )
    .await;
    let results = match outcome {
        Ok(Ok(response)) => response.into_inner().results,
        Ok(Err(status)) => {
            for reply in replies {
                let _ = reply.send(Err(call_error(target, &status)));
            }
            return;
        }
        Err(_) => {
            for reply in replies {
                let _ = reply.send(Err(timed_out(target, timeout)));
            }
            return;
        }
    };
    let mut results = results.into_iter();
    for reply in replies {
        let answer = match results.next().and_then(|r| r.result) {
            Some(raft_batch_result::Result::Payload(payload)) => Ok(payload),
            Some(raft_batch_result::Result::NotHosted(why)) => Err(CallError::Unreachable(
                TransportError(format!("node {target}: {why}")),
            )),
            Some(raft_batch_result::Result::Error(why)) => Err(CallError::Network(TransportError(
                format!("node {target}: {why}"),
            ))),
            None => Err(CallError::Network(TransportError(format!(
                "node {target} answered fewer messages than it was sent"
            )))),
        };
        let _ = reply.send(answer);
    }
}

/// How a failed call is reported to openraft.
fn call_error(target: &str, status: &tonic::Status) -> CallError {
    let e = TransportError(format!("node {target}: {status}"));
    match status.code() {
        // The peer is down, or does not host this group yet (it creates
        // partition groups as metadata reaches it).
        tonic::Code::Unavailable | tonic::Code::NotFound => CallError::Unreachable(e),
        _ => CallError::Network(e),
    }
}

fn timed_out(target: &str, timeout: Duration) -> CallError {
    CallError::Network(TransportError(format!(
        "rpc to node {target} timed out after {timeout:?}"
    )))
}

impl PeerPool {
    pub fn new(tls: Option<ClientTlsConfig>, node: NodeId) -> PeerPool {
        PeerPool {
            channels: Arc::default(),
            empty_appends: Arc::default(),
            tls,
            cluster: ClusterStamp::new(node),
        }
    }

    /// This node's cluster id as peers are shown it.
    pub fn cluster(&self) -> &ClusterStamp {
        &self.cluster
    }

    /// A Raft transport client for the peer at `addr`.
    pub fn transport(&self, addr: &str) -> Result<TransportClient, PeerError> {
        Ok(transport_client(self.channel(addr)?, self.cluster.clone()))
    }

    /// The queue of appends without entries to `addr`.
    fn empty_appends(&self, addr: &str) -> Result<EmptyAppends, PeerError> {
        if let Some(queue) = self.empty_appends.lock().get(addr) {
            return Ok(queue.clone());
        }
        let channel = self.channel(addr)?;
        let mut queues = self.empty_appends.lock();
        Ok(queues
            .entry(addr.to_string())
            .or_insert_with(|| EmptyAppends::start(channel, self.cluster.clone(), addr.to_string()))
            .clone())
    }

    pub fn channel(&self, addr: &str) -> Result<Channel, PeerError> {
        let mut channels = self.channels.lock();
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let bad_address = |e: &dyn std::fmt::Display| PeerError::BadAddress {
            addr: addr.to_string(),
            reason: e.to_string(),
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| bad_address(&e))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| bad_address(&e))?;
        }
        let channel = http2::endpoint(endpoint).connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }
}

pub struct NetworkFactory {
    group: GroupId,
    pool: PeerPool,
    min_append_timeout: Duration,
}

impl NetworkFactory {
    /// `min_append_timeout` bounds how short an append (or heartbeat, or
    /// leadership transfer) call may be given: see `PeerNetwork::append_timeout`.
    pub fn new(group: GroupId, pool: PeerPool, min_append_timeout: Duration) -> Self {
        Self {
            group,
            pool,
            min_append_timeout,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerNetwork {
        PeerNetwork {
            group: self.group,
            target,
            addr: node.addr.clone(),
            pool: self.pool.clone(),
            min_append_timeout: self.min_append_timeout,
        }
    }
}

pub struct PeerNetwork {
    group: GroupId,
    target: NodeId,
    addr: String,
    pool: PeerPool,
    min_append_timeout: Duration,
}

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    PreVote,
    Snapshot,
    TransferLeader,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

enum CallError {
    Unreachable(TransportError),
    Network(TransportError),
}

impl CallError {
    fn into_rpc(self) -> RPCError<TypeConfig> {
        match self {
            CallError::Unreachable(e) => RPCError::Unreachable(Unreachable::new(&e)),
            CallError::Network(e) => RPCError::Network(NetworkError::new(&e)),
        }
    }

    fn into_streaming(self) -> StreamingError<TypeConfig> {
        match self {
            CallError::Unreachable(e) => StreamingError::Unreachable(Unreachable::new(&e)),
            CallError::Network(e) => StreamingError::Network(NetworkError::new(&e)),
        }
    }
}

impl PeerNetwork {
    /// openraft gives an append 3/4 of the heartbeat interval (75 ms by
    /// default). A link with a longer round trip, or a follower busy with a
    /// large batch and its fsync, would then never answer in time: the
    /// leader resends, never sees a majority, and commits nothing while every
    /// follower keeps receiving (jepsen-lite's latency nemesis showed it).
    /// Appends get at least the maximal election timeout instead.
    fn append_timeout(&self, option: &RPCOption) -> Duration {
        option.soft_ttl().max(self.min_append_timeout)
    }

    /// `request` encoded for this group.
    fn message<Req: Serialize>(&self, request: &Req) -> Result<RaftMessage, CallError> {
        let payload = bincode::serialize(request)
            .map_err(|e| CallError::Network(TransportError(e.to_string())))?;
        Ok(RaftMessage {
            group_id: self.group.0,
            payload: payload.into(),
        })
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        rpc: Rpc,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let message = self.message(request)?;
        let channel = self
            .pool
            .channel(&self.addr)
            .map_err(|e| CallError::Unreachable(TransportError(e.to_string())))?;
        let mut client = transport_client(channel, self.pool.cluster.clone());
        let mut message = tonic::Request::new(message);
        message.set_timeout(timeout);
        let call = async {
            match rpc {
                Rpc::Append => client.append_entries(message).await,
                Rpc::Vote => client.vote(message).await,
                Rpc::PreVote => client.pre_vote(message).await,
                Rpc::Snapshot => client.install_snapshot(message).await,
                Rpc::TransferLeader => client.transfer_leader(message).await,
            }
        };
        let response = match tokio::time::timeout(timeout + LOCAL_TIMEOUT_MARGIN, call).await {
            Err(_) => return Err(timed_out(&self.target.to_string(), timeout)),
            Ok(Err(status)) => return Err(call_error(&self.target.to_string(), &status)),
            Ok(Ok(response)) => response.into_inner(),
        };
        decode(&response.payload)
    }

    /// An append without entries, through the peer's batching queue.
    async fn call_batched(
        &self,
        request: &AppendEntriesRequest<TypeConfig>,
        timeout: Duration,
    ) -> Result<AppendEntriesResponse<TypeConfig>, CallError> {
        let message = self.message(request)?;
        let queue = self
            .pool
            .empty_appends(&self.addr)
            .map_err(|e| CallError::Unreachable(TransportError(e.to_string())))?;
        let (reply, answer) = oneshot::channel();
        let queued = QueuedAppend {
            message,
            timeout,
            reply,
        };
        let target = self.target.to_string();
        queue.queue.try_send(queued).map_err(|refused| {
            let why = match refused {
                mpsc::error::TrySendError::Full(_) => "is full: the peer is not keeping up",
                mpsc::error::TrySendError::Closed(_) => "has stopped",
            };
            CallError::Network(TransportError(format!(
                "the append queue to node {target} {why}"
            )))
        })?;
        let payload = match tokio::time::timeout(timeout + LOCAL_TIMEOUT_MARGIN, answer).await {
            Err(_) => return Err(timed_out(&target, timeout)),
            Ok(Err(_)) => {
                return Err(CallError::Network(TransportError(format!(
                    "the append queue to node {target} dropped a message"
                ))));
            }
            Ok(Ok(answer)) => answer?,
        };
        decode(&payload)
    }
}

pub fn transport_client(channel: Channel, cluster: ClusterStamp) -> TransportClient {
    RaftTransportClient::with_interceptor(channel, cluster)
        .max_decoding_message_size(MAX_RPC_BYTES)
        .max_encoding_message_size(MAX_RPC_BYTES)
}

fn decode<Resp: DeserializeOwned>(payload: &[u8]) -> Result<Resp, CallError> {
    bincode::deserialize(payload).map_err(|e| CallError::Network(TransportError(e.to_string())))
}

impl RaftNetworkV2<TypeConfig> for PeerNetwork {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let timeout = self.append_timeout(&option);
        if rpc.entries.is_empty() {
            return self
                .call_batched(&rpc, timeout)
                .await
                .map_err(CallError::into_rpc);
        }
        self.call(Rpc::Append, &rpc, timeout)
            .await
            .map_err(CallError::into_rpc)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::Vote, &rpc, option.soft_ttl())
            .await
            .map_err(CallError::into_rpc)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::PreVote, &rpc, option.soft_ttl())
            .await
            .map_err(CallError::into_rpc)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: SnapshotOf<TypeConfig, Vec<u8>>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let request = (vote, snapshot.meta, snapshot.snapshot);
        self.call(Rpc::Snapshot, &request, option.hard_ttl())
            .await
            .map_err(CallError::into_streaming)
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::TransferLeader, &req, self.append_timeout(&option))
            .await
            .map_err(CallError::into_rpc)
    }
}
