//! Cluster membership and placement: adding and removing nodes, partition
//! moves, and the task that carries moves out and balances the cluster.
//!
//! The metadata records what should be (`MetaState::moves`, `draining`,
//! `balancing`); Raft groups change their voters only on their leaders. So
//! every node runs [`Service::placement_loop`]: for each move of a group it
//! leads it changes the group's voters (`group::membership`) and then
//! reports the move complete to the metadata leader, and the metadata
//! leader plans moves (`state_machine::balance`). Each step can be redone:
//! a leader that fails half-way is followed by one that starts again.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::Caller;
use super::Hops;
use super::LeaderOf;
use super::Service;
use super::ServiceError;
use crate::group::Group;
use crate::group::GroupStatus;
use crate::group::membership::change_voters;
use crate::group::write::WriteError;
use crate::model::GroupId;
use crate::model::NodeId;
use crate::model::TopicName;
use crate::platform::PlatformEvent;
use crate::raft::types::MetaCommand;
use crate::raft::types::MetaRejection;
use crate::raft::types::MetaState;
use crate::state_machine::balance::plan_moves;
use raftstream_proto::ErrorCode;

/// How often the placement task looks again without a metadata change
/// (a move that failed is retried then).
const PLACEMENT_ROUND: Duration = Duration::from_secs(1);

/// Moves under way at once, cluster-wide: each copies a partition's log to
/// a new replica, so a few at a time keep the cluster serving.
const CONCURRENT_MOVES: usize = 4;

/// A partition move under way, for cluster status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveStatus {
    pub group: GroupId,
    pub topic: String,
    pub partition: u32,
    pub from: Vec<NodeId>,
    pub to: Vec<NodeId>,
}

/// The moves under way in `meta`.
pub fn moves_of(meta: &MetaState) -> Vec<MoveStatus> {
    meta.moves
        .iter()
        .filter_map(|(group, to)| {
            let topic = meta.topics.get(&group.topic())?;
            Some(MoveStatus {
                group: *group,
                topic: topic.name.clone(),
                partition: group.partition_index(),
                from: topic
                    .partitions
                    .get(group.partition_index() as usize)?
                    .clone(),
                to: to.clone(),
            })
        })
        .collect()
}

/// One node of the cluster, as cluster status reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: NodeId,
    /// Where clients reach it (its public gRPC listener).
    pub client_addr: String,
    /// It answered this status request.
    pub reachable: bool,
    /// Partition replicas placed on it, and how many of them it is the
    /// preferred leader of.
    pub replicas: u32,
    pub preferred_leaders: u32,
    /// Partitions it leads now.
    pub leaders: u32,
    /// A voter of the metadata group (else a learner still catching up).
    pub voter: bool,
    /// Being removed: its replicas are moving away.
    pub draining: bool,
}

/// The cluster as one node sees it: its nodes, every group (as the group's
/// leader reports it), and the partition moves under way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node_id: NodeId,
    pub nodes: Vec<NodeStatus>,
    pub groups: Vec<GroupStatus>,
    pub moves: Vec<MoveStatus>,
}

/// How evenly the cluster is spread: the most minus the fewest per node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spread {
    pub replicas: u32,
    pub leaders: u32,
}

impl ClusterStatus {
    /// The spread over the nodes the balancer fills: voters not draining. A
    /// joining node (not a voter yet) or one being removed would make any
    /// cluster look uneven.
    pub fn spread(&self) -> Spread {
        let balanced: Vec<&NodeStatus> = self
            .nodes
            .iter()
            .filter(|n| n.voter && !n.draining)
            .collect();
        let range = |count: fn(&NodeStatus) -> u32| {
            let counts = balanced.iter().map(|n| count(n));
            counts.clone().max().unwrap_or(0) - counts.min().unwrap_or(0)
        };
        Spread {
            replicas: range(|n| n.replicas),
            leaders: range(|n| n.leaders),
        }
    }
}

/// How long cluster status waits for each other node's own status: a node
/// that does not answer within it is reported unreachable.
const PEER_STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Per node: the partition replicas placed on it, and how many of those it
/// is the preferred leader of.
pub fn replica_spread(meta: &MetaState) -> BTreeMap<NodeId, (u32, u32)> {
    let mut spread: BTreeMap<NodeId, (u32, u32)> = BTreeMap::new();
    for replicas in meta.topics.values().flat_map(|t| t.partitions.iter()) {
        for (position, node) in replicas.iter().enumerate() {
            let counts = spread.entry(*node).or_default();
            counts.0 += 1;
            if position == 0 {
                counts.1 += 1;
            }
        }
    }
    spread
}

impl Service {
    /// This node's own status: the groups it hosts, and itself as the only
    /// node (what another node's cluster status asks it for).
    pub fn local_status(&self) -> ClusterStatus {
        let id = self.node.id();
        ClusterStatus {
            node_id: id,
            nodes: vec![NodeStatus {
                id,
                client_addr: self.node.config.client_grpc_addr(),
                reachable: true,
                replicas: 0,
                preferred_leaders: 0,
                leaders: 0,
                voter: false,
                draining: false,
            }],
            groups: self.node.group_statuses(),
            moves: Vec::new(),
        }
    }

    /// The cluster's status: every other node is asked for its own groups,
    /// and each group is reported as its leader sees it (or any replica
    /// while it has none). With `hops.local_only`, this node's own status.
    pub async fn cluster_status(&self, hops: Hops) -> ClusterStatus {
        let local = self.local_status();
        if hops.local_only {
            return local;
        }
        let own_id = self.node.id();
        let cluster_nodes = self.node.cluster_nodes();
        let asks =
            cluster_nodes
                .iter()
                .filter(|(id, _)| **id != own_id)
                .map(|(id, addr)| async move {
                    let answer = self
                        .peers
                        .local_status(addr, PEER_STATUS_TIMEOUT)
                        .await
                        .ok();
                    (*id, answer)
                });
        let answers = futures::future::join_all(asks).await;
        let mut groups: BTreeMap<GroupId, (bool, GroupStatus)> = BTreeMap::new();
        let mut merge = |reporter: NodeId, reported: Vec<GroupStatus>| {
            for group in reported {
                let from_leader = group.leader == Some(reporter);
                let keep = match groups.get(&group.group_id) {
                    None => true,
                    Some((had_leader, _)) => from_leader && !had_leader,
                };
                if keep {
                    groups.insert(group.group_id, (from_leader, group));
                }
            }
        };
        merge(own_id, local.groups);
        let mut reachable: HashMap<NodeId, bool> = HashMap::from([(own_id, true)]);
        for (id, answer) in answers {
            reachable.insert(id, answer.is_some());
            if let Some(status) = answer {
                if let Some(own) = status.nodes.iter().find(|n| n.id == id) {
                    self.node
                        .client_addrs
                        .write()
                        .insert(id, own.client_addr.clone());
                }
                merge(id, status.groups);
            }
        }
        let groups: Vec<GroupStatus> = groups.into_values().map(|(_, g)| g).collect();
        // A node never reached since this one started has no known public
        // address; clients cannot use it until it answers.
        let client_addrs = self.node.client_addrs.read().clone();
        let meta = self.node.metadata();
        let spread = replica_spread(&meta);
        let voters = self.node.voters();
        let nodes = cluster_nodes
            .keys()
            .filter_map(|id| {
                let (replicas, preferred_leaders) = spread.get(id).copied().unwrap_or_default();
                let leaders = groups
                    .iter()
                    .filter(|g| !g.topic.is_empty() && g.leader == Some(*id))
                    .count();
                Some(NodeStatus {
                    id: *id,
                    client_addr: client_addrs.get(id)?.clone(),
                    reachable: reachable.get(id).copied().unwrap_or(false),
                    replicas,
                    preferred_leaders,
                    leaders: u32::try_from(leaders).unwrap_or(u32::MAX),
                    voter: voters.contains(id),
                    draining: meta.draining.contains(id),
                })
            })
            .collect();
        ClusterStatus {
            node_id: own_id,
            nodes,
            groups,
            moves: moves_of(&meta),
        }
    }

    /// How long one membership step may take on a leader: a forwarded
    /// call must be answered within the forward timeout.
    fn membership_step_timeout(&self) -> Duration {
        Duration::from_millis(self.node.config.limits.write_timeout_ms)
    }

    /// Adds node `node`, reachable at `peer_addr`, as a voter of the
    /// metadata group, then asks the balancer to give it replicas. Calling
    /// it again for a voter only asks the balancer again; for a voter that
    /// is draining (a removal under way) it cancels the removal, as
    /// re-adding a broker that is being decommissioned does elsewhere.
    pub async fn add_node(
        &self,
        caller: &Caller,
        node: NodeId,
        peer_addr: &str,
        hops: Hops,
    ) -> Result<(), ServiceError> {
        caller.check_unrestricted()?;
        check_peer_addr(peer_addr)?;
        let local = |meta: Arc<Group>| async move {
            let known = self.node.cluster_nodes();
            if let Some(addr) = known.get(&node)
                && addr != peer_addr
            {
                return Err(WriteError::Rejected(MetaRejection::Conflict(format!(
                    "node {node} is in the cluster at {addr}, not {peer_addr}"
                ))));
            }
            let mut voters = meta.voters();
            voters.insert(node);
            let addrs = BTreeMap::from([(node, peer_addr.to_string())]);
            change_voters(&meta, &voters, &addrs, self.membership_step_timeout()).await?;
            tracing::info!(node = node.0, peer_addr, "node added to the cluster");
            self.set_draining(node, false).await?;
            self.node
                .write_meta_ack(MetaCommand::SetBalancing { on: true })
                .await
        };
        let forward =
            |addr: String| async move { self.peers.add_node(&addr, node, peer_addr, hops).await };
        self.on_leader(LeaderOf::Meta, hops, local, forward).await?;
        self.platform_event(hops, PlatformEvent::node_joined(node, peer_addr));
        Ok(())
    }

    /// Marks `node` draining or not, unless it already is; whether that
    /// changed anything.
    async fn set_draining(&self, node: NodeId, draining: bool) -> Result<bool, WriteError> {
        let already = self
            .node
            .with_metadata(|m| m.draining.contains(&node) == draining)
            .unwrap_or(!draining);
        if already {
            return Ok(false);
        }
        self.node
            .write_meta_ack(MetaCommand::SetNodeDraining { node, draining })
            .await?;
        Ok(true)
    }

    /// Removes node `node`: marks it draining, waits (bounded) until the
    /// balancer moved every replica off it, then removes it from the
    /// metadata group's voters. While replicas are still moving it answers
    /// UNAVAILABLE; calling again carries on.
    pub async fn remove_node(
        &self,
        caller: &Caller,
        node: NodeId,
        hops: Hops,
    ) -> Result<(), ServiceError> {
        caller.check_unrestricted()?;
        let local = |meta: Arc<Group>| async move {
            let voters = meta.voters();
            if !voters.contains(&node) {
                return if meta.members().contains(&node) {
                    Err(WriteError::Rejected(MetaRejection::Conflict(format!(
                        "node {node} is still joining; add it first, then remove it"
                    ))))
                } else {
                    Err(WriteError::Rejected(MetaRejection::Invalid(format!(
                        "node {node} is not in the cluster"
                    ))))
                };
            }
            let remaining: BTreeSet<NodeId> =
                voters.iter().copied().filter(|n| *n != node).collect();
            let needed = self
                .node
                .with_metadata(|m| {
                    m.topics
                        .values()
                        .map(|t| t.replication_factor as usize)
                        .max()
                })
                .flatten()
                .unwrap_or(1);
            if remaining.len() < needed {
                return Err(WriteError::Rejected(MetaRejection::Invalid(format!(
                    "without node {node} the cluster has {} nodes; a topic needs {needed} \
                     replicas",
                    remaining.len()
                ))));
            }
            if self.set_draining(node, true).await? {
                self.node
                    .write_meta_ack(MetaCommand::SetBalancing { on: true })
                    .await?;
            }
            let holds = |m: &MetaState| replicas_on(m, node);
            let deadline = tokio::time::Instant::now() + self.membership_step_timeout();
            let mut changes = meta.state.subscribe();
            let emptied = loop {
                if self.node.with_metadata(holds) == Some(0) {
                    break true;
                }
                match tokio::time::timeout_at(deadline, changes.changed()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) | Err(_) => break false,
                }
            };
            if !emptied {
                let left = self.node.with_metadata(holds).unwrap_or(0);
                return Err(WriteError::Unavailable(format!(
                    "node {node} still holds {left} partition replicas; they are moving \
                     away: call again to carry on"
                )));
            }
            change_voters(
                &meta,
                &remaining,
                &BTreeMap::new(),
                self.membership_step_timeout(),
            )
            .await?;
            tracing::info!(node = node.0, "node removed from the cluster");
            Ok(())
        };
        let forward = |addr: String| async move { self.peers.remove_node(&addr, node, hops).await };
        self.on_leader(LeaderOf::Meta, hops, local, forward).await?;
        self.platform_event(hops, PlatformEvent::node_left(node));
        Ok(())
    }

    /// Starts moving a partition to `replicas` (preferred leader first).
    pub async fn move_partition(
        &self,
        caller: &Caller,
        topic: &TopicName,
        partition: u32,
        replicas: Vec<NodeId>,
        hops: Hops,
    ) -> Result<(), ServiceError> {
        caller.check_unrestricted()?;
        let topic = self.topic(topic).await?;
        if partition as usize >= topic.partitions.len() {
            return Err(ServiceError::new(
                ErrorCode::UnknownPartition,
                format!("topic {:?} has no partition {partition}", topic.name),
            ));
        }
        let group = topic.group_id(partition);
        self.propose_move(group, replicas, false, hops).await
    }

    /// Proposes, on the metadata leader, that `group` starts moving to
    /// `replicas`, or, with `complete`, that its move there is done.
    async fn propose_move(
        &self,
        group: GroupId,
        replicas: Vec<NodeId>,
        complete: bool,
        hops: Hops,
    ) -> Result<(), ServiceError> {
        let replicas = &replicas;
        let local = |_: Arc<Group>| async move {
            let replicas = replicas.clone();
            let command = if complete {
                MetaCommand::CompletePartitionMove { group, replicas }
            } else {
                MetaCommand::MovePartition { group, replicas }
            };
            self.node.write_meta_ack(command).await
        };
        let forward = |addr: String| async move {
            if complete {
                self.peers
                    .complete_partition_move(&addr, group, replicas, hops)
                    .await
            } else {
                self.peers
                    .move_partition(&addr, group, replicas, hops)
                    .await
            }
        };
        self.on_leader(LeaderOf::Meta, hops, local, forward).await
    }

    /// Records that `group`'s voters are `replicas` now. Only nodes call it
    /// (the group's leader, after changing them).
    pub async fn complete_partition_move(
        &self,
        caller: &Caller,
        group: GroupId,
        replicas: Vec<NodeId>,
        hops: Hops,
    ) -> Result<(), ServiceError> {
        if !matches!(caller, Caller::Node) {
            return Err(ServiceError::new(
                ErrorCode::Forbidden,
                "only cluster nodes complete partition moves",
            ));
        }
        self.propose_move(group, replicas, true, hops).await
    }

    /// Runs until the node shuts down: carries out the moves of groups this
    /// node leads and, on the metadata leader, plans moves.
    pub async fn placement_loop(self: Arc<Self>) {
        let Some(meta) = self.node.meta_group() else {
            return;
        };
        let mut changes = meta.state.subscribe();
        let mut shutdown = self.node.shutdown_signal();
        let mut running: HashMap<GroupId, tokio::task::JoinHandle<()>> = HashMap::new();
        loop {
            running.retain(|_, task| !task.is_finished());
            let state = self.node.metadata();
            for (group_id, target) in &state.moves {
                let Some(group) = self.node.group(*group_id) else {
                    continue;
                };
                if running.contains_key(group_id) || !group.is_leader(self.node.id()) {
                    continue;
                }
                let service = self.clone();
                let target = target.clone();
                running.insert(
                    *group_id,
                    tokio::spawn(async move { service.carry_out_move(&group, target).await }),
                );
            }
            if meta.is_leader(self.node.id()) {
                self.balance(&state).await;
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep(PLACEMENT_ROUND) => {}
                _ = shutdown.changed() => break,
            }
        }
        for task in running.into_values() {
            task.abort();
        }
    }

    /// On `group`'s leader: makes `target` its voters, then reports the
    /// move complete. A failure is logged; the next round tries again.
    async fn carry_out_move(&self, group: &Group, target: Vec<NodeId>) {
        let voters: BTreeSet<NodeId> = target.iter().copied().collect();
        let addrs = self.node.cluster_nodes();
        let changed = change_voters(group, &voters, &addrs, self.membership_step_timeout()).await;
        if let Err(e) = changed {
            tracing::info!(group = group.id.0, ?target, error = %e, "partition move not done yet");
            return;
        }
        match self
            .complete_partition_move(&Caller::Node, group.id, target.clone(), Hops::default())
            .await
        {
            Ok(()) => tracing::info!(group = group.id.0, ?target, "partition moved"),
            Err(e) => {
                tracing::info!(group = group.id.0, ?target, error = %e, "completing a partition move failed")
            }
        }
    }

    /// On the metadata leader: proposes the balancer's moves, and turns
    /// balancing off once there is nothing left to move.
    async fn balance(&self, state: &MetaState) {
        let voters = self.node.voters();
        let room = CONCURRENT_MOVES.saturating_sub(state.moves.len());
        let planned = plan_moves(state, &voters, room);
        if planned.is_empty() {
            if state.balancing && state.moves.is_empty() && state.draining.is_empty() {
                let _ = self
                    .node
                    .write_meta_ack(MetaCommand::SetBalancing { on: false })
                    .await;
            }
            return;
        }
        for (group, replicas) in planned {
            let command = MetaCommand::MovePartition {
                group,
                replicas: replicas.clone(),
            };
            match self.node.write_meta_ack(command).await {
                Ok(()) => tracing::info!(group = group.0, ?replicas, "balancer moves a partition"),
                Err(e) => {
                    tracing::info!(group = group.0, error = %e, "balancer move not proposed");
                    return;
                }
            }
        }
    }
}

/// How many partition replicas `node` holds or is about to.
fn replicas_on(meta: &MetaState, node: NodeId) -> usize {
    let placed = meta
        .topics
        .values()
        .flat_map(|topic| topic.partitions.iter())
        .filter(|replicas| replicas.contains(&node))
        .count();
    let moving_in = meta
        .moves
        .values()
        .filter(|replicas| replicas.contains(&node))
        .count();
    placed + moving_in
}

fn check_peer_addr(addr: &str) -> Result<(), ServiceError> {
    let valid = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if valid {
        Ok(())
    } else {
        Err(ServiceError::invalid(format!(
            "peer address {addr:?} is not host:port"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, replicas: u32, leaders: u32, voter: bool, draining: bool) -> NodeStatus {
        NodeStatus {
            id: NodeId(id),
            client_addr: String::new(),
            reachable: true,
            replicas,
            preferred_leaders: 0,
            leaders,
            voter,
            draining,
        }
    }

    #[test]
    fn the_spread_counts_only_voters_that_are_not_draining() {
        let status = |nodes| ClusterStatus {
            node_id: NodeId(1),
            nodes,
            groups: Vec::new(),
            moves: Vec::new(),
        };
        let cluster = status(vec![
            node(1, 4, 2, true, false),
            node(2, 2, 1, true, false),
            node(3, 3, 0, true, false),
            // Joining and leaving nodes would make any cluster uneven.
            node(4, 0, 0, false, false),
            node(5, 9, 5, true, true),
        ]);
        assert_eq!(
            cluster.spread(),
            Spread {
                replicas: 2,
                leaders: 2
            }
        );
        assert_eq!(status(Vec::new()).spread(), Spread::default());
    }
}
