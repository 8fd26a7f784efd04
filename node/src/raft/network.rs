//! The client side of the Raft transport: one pooled tonic channel per peer
//! node, shared by every group; the group id travels on each message.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

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
use raftstream_proto::v1::RaftMessage;
use raftstream_proto::v1::raft_transport_client::RaftTransportClient;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

use crate::raft::types::GroupId;
use crate::raft::types::NodeId;
use crate::raft::types::TypeConfig;
use crate::raft::types::Vote;

/// Messages between nodes may carry a whole publish batch.
pub const MAX_RPC_BYTES: usize = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("invalid peer address {addr:?}: {reason}")]
    BadAddress { addr: String, reason: String },
}

/// One lazily connected channel per peer address. tonic reconnects a lazy
/// channel by itself, so a restarted peer needs nothing from us.
#[derive(Clone, Debug, Default)]
pub struct PeerPool {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl PeerPool {
    pub fn channel(&self, addr: &str) -> Result<Channel, PeerError> {
        let mut channels = self.channels.lock();
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| PeerError::BadAddress {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = endpoint.connect_lazy();
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

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        rpc: Rpc,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let payload = bincode::serialize(request)
            .map_err(|e| CallError::Network(TransportError(e.to_string())))?;
        let channel = self
            .pool
            .channel(&self.addr)
            .map_err(|e| CallError::Unreachable(TransportError(e.to_string())))?;
        let mut client = RaftTransportClient::new(channel)
            .max_decoding_message_size(MAX_RPC_BYTES)
            .max_encoding_message_size(MAX_RPC_BYTES);
        let mut message = tonic::Request::new(RaftMessage {
            group_id: self.group,
            payload: payload.into(),
        });
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
        let response = match tokio::time::timeout(timeout, call).await {
            Err(_) => {
                return Err(CallError::Network(TransportError(format!(
                    "rpc to node {} timed out after {timeout:?}",
                    self.target
                ))));
            }
            Ok(Err(status)) => {
                let e = TransportError(format!("node {}: {status}", self.target));
                return Err(match status.code() {
                    // The peer is down, or does not host this group yet
                    // (it creates partition groups as metadata reaches it).
                    tonic::Code::Unavailable | tonic::Code::NotFound => CallError::Unreachable(e),
                    _ => CallError::Network(e),
                });
            }
            Ok(Ok(response)) => response.into_inner(),
        };
        bincode::deserialize(&response.payload)
            .map_err(|e| CallError::Network(TransportError(e.to_string())))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerNetwork {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Rpc::Append, &rpc, self.append_timeout(&option))
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
