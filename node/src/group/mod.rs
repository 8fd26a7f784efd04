//! One Raft group hosted on this node, and the registry of them.
//!
//! A group is its openraft instance, the state readers see, and what its
//! leader keeps between requests. This module names nothing above the state
//! machines, so Raft's transport and quiescence can find groups without
//! reaching for the node; the write path (`write.rs`) wakes quiesced
//! leaders, and so sits above Raft.

pub mod membership;
pub mod proposal_order;
pub mod write;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use parking_lot::Mutex;
use parking_lot::RwLock;
pub use proposal_order::ProposalOrder;
use tokio::sync::watch;

use crate::model::GroupId;
use crate::model::NodeId;
use crate::model::Offset;
use crate::raft::types::MetaState;
use crate::raft::types::TypeConfig;
use crate::state_machine::GroupData;
use crate::state_machine::GroupShared;
use crate::state_machine::GroupStateMachine;

/// The Raft of one group: every group, metadata or partition, runs the
/// same state machine type (it holds either kind of state).
pub type Raft = openraft::Raft<TypeConfig, GroupStateMachine>;

/// A group's Raft metrics as openraft publishes them.
pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;
type Metrics = openraft::alias::WatchReceiverOf<TypeConfig, RaftMetrics>;

/// One hosted group's state as this node sees it: what `ClusterStatus`
/// answers and the metrics report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    pub group_id: GroupId,
    /// Empty for the metadata group.
    pub topic: String,
    pub partition: u32,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_log_index: u64,
    pub replicas: Vec<NodeId>,
    /// Per replica, how many entries it is behind this node (when it leads).
    pub replica_lag: BTreeMap<NodeId, u64>,
    pub high_watermark: Offset,
    pub log_start_offset: Offset,
    /// This node has stopped the group's timers because it is idle.
    pub quiesced: bool,
}

impl Group {
    /// This group's status; `topic` and `partition` name it, `quiesced`
    /// says whether this node quiesced it.
    pub fn status(&self, topic: String, partition: u32, quiesced: bool) -> GroupStatus {
        let (high_watermark, log_start_offset) = self.state.read(|inner| match &inner.data {
            GroupData::Partition(p) => (p.next_offset, p.log_start_offset),
            GroupData::Meta(_) => (Offset(0), Offset(0)),
        });
        self.with_metrics(|m| {
            let last_log_index = m.last_log_index.unwrap_or(0);
            let replica_lag = m
                .replication
                .as_ref()
                .map(|r| {
                    r.iter()
                        .map(|(id, matched)| {
                            let matched = matched.as_ref().map_or(0, |l| l.index);
                            (*id, last_log_index.saturating_sub(matched))
                        })
                        .collect()
                })
                .unwrap_or_default();
            GroupStatus {
                group_id: self.id,
                topic,
                partition,
                leader: m.current_leader,
                term: m.current_term,
                commit_index: m.local_committed.as_ref().map_or(0, |l| l.index),
                applied_index: m.last_applied.as_ref().map_or(0, |l| l.index),
                last_log_index,
                replicas: m.membership_config.membership().voter_ids().collect(),
                replica_lag,
                high_watermark,
                log_start_offset,
                quiesced,
            }
        })
    }
}

/// One Raft group hosted on this node.
pub struct Group {
    pub id: GroupId,
    pub raft: Raft,
    /// The group's Raft metrics, subscribed to once: `Raft::metrics` hands
    /// out a new receiver per call (two shared counters up and down again),
    /// and every idle round reads every group's (`with_metrics`).
    metrics: Metrics,
    pub state: Arc<GroupShared>,
    /// The term in which this node, leading for another preferred replica,
    /// last saw that replica caught up (see `hand_back_to_preferred_leader`).
    hand_back_seen_in_term: Mutex<Option<u64>>,
    /// Orders idempotent producers' batches before they are proposed.
    pub proposal_order: ProposalOrder,
    /// Stops the group's backfill task (`backfill.rs`).
    pub backfill: BackfillStop,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Group {
    pub fn new(id: GroupId, raft: Raft, state: Arc<GroupShared>) -> Group {
        Group {
            id,
            metrics: raft.metrics(),
            raft,
            state,
            hand_back_seen_in_term: Mutex::new(None),
            proposal_order: ProposalOrder::default(),
            backfill: BackfillStop::default(),
        }
    }

    /// Reads the group's current Raft metrics in place, without cloning
    /// them (membership and replication maps included).
    pub fn with_metrics<T>(&self, read: impl FnOnce(&RaftMetrics) -> T) -> T {
        read(&self.metrics.borrow_watched())
    }

    /// The group's voters in its latest membership (joint: both sets).
    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.with_metrics(|m| m.membership_config.membership().voter_ids().collect())
    }

    /// Every node in the group's latest membership, learners included.
    pub fn members(&self) -> BTreeSet<NodeId> {
        self.with_metrics(|m| {
            m.membership_config
                .membership()
                .nodes()
                .map(|(id, _)| *id)
                .collect()
        })
    }

    /// Whether this node leads the group now.
    pub fn is_leader(&self, me: NodeId) -> bool {
        self.leading_term(me).is_some()
    }

    /// The term in which this node leads the group, if it leads it now.
    pub fn leading_term(&self, me: NodeId) -> Option<u64> {
        self.with_metrics(|m| (m.current_leader == Some(me)).then_some(m.current_term))
    }

    /// The leader this node believes in, with its gRPC address, waiting up
    /// to `timeout` while none is known. A follower of a new group can hear
    /// from its leader before it has the membership that names the
    /// leader's address: that is waited for too, or the leader stays
    /// unknown to [`Group::leader`].
    pub async fn await_leader(&self, timeout: Duration) -> Option<(NodeId, String)> {
        if let Some(leader) = self.leader() {
            return Some(leader);
        }
        let _ = self
            .raft
            .wait(Some(timeout))
            .metrics(
                |m| {
                    m.current_leader.is_some_and(|leader| {
                        m.membership_config.membership().get_node(&leader).is_some()
                    })
                },
                "a leader with a known address",
            )
            .await;
        self.leader()
    }

    /// The leader this node currently believes in, with its gRPC address.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        self.with_metrics(|m| {
            let leader = m.current_leader?;
            let addr = m
                .membership_config
                .membership()
                .get_node(&leader)?
                .addr
                .clone();
            Some((leader, addr))
        })
    }

    /// Records whether this node, leading in `term`, saw the preferred
    /// replica caught up; true on the second sighting in one term, when
    /// leadership may be handed back (see `hand_back_to_preferred_leader`).
    pub fn preferred_caught_up_again(&self, caught_up: bool, term: u64) -> bool {
        let mut seen_in_term = self.hand_back_seen_in_term.lock();
        let second_sighting = caught_up && *seen_in_term == Some(term);
        *seen_in_term = (caught_up && !second_sighting).then_some(term);
        second_sighting
    }
}

/// Stops a group's backfill task; held by the group.
#[derive(Debug)]
pub struct BackfillStop {
    tx: watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Default for BackfillStop {
    fn default() -> Self {
        BackfillStop {
            tx: watch::Sender::new(false),
            task: Mutex::new(None),
        }
    }
}

impl BackfillStop {
    /// Starts the backfill task with the signal to stop on, and keeps the
    /// task so that `stop` can wait for it.
    pub fn start(&self, start: impl FnOnce(watch::Receiver<bool>) -> tokio::task::JoinHandle<()>) {
        let task = start(self.tx.subscribe());
        *self.task.lock() = Some(task);
    }

    /// Stops the task and waits until it has ended, so that it writes
    /// nothing into a group whose data is deleted next.
    pub async fn stop(&self) {
        self.tx.send_replace(true);
        let task = self.task.lock().take();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            tracing::warn!(error = %e, "backfill task ended abnormally");
        }
    }
}

/// The groups this node hosts, by id: the metadata group and the partition
/// groups the metadata places here.
#[derive(Debug)]
pub struct HostedGroups {
    groups: RwLock<HashMap<GroupId, Arc<Group>>>,
    /// Bumped whenever a group starts or stops being hosted, so a request
    /// for a group the metadata has just placed here can wait for it.
    changes: watch::Sender<u64>,
    /// The node is stopping: no group starts here any more.
    closed: AtomicBool,
}

impl Default for HostedGroups {
    fn default() -> HostedGroups {
        HostedGroups {
            groups: RwLock::default(),
            changes: watch::channel(0).0,
            closed: AtomicBool::new(false),
        }
    }
}

impl HostedGroups {
    pub fn get(&self, id: GroupId) -> Option<Arc<Group>> {
        self.groups.read().get(&id).cloned()
    }

    /// Every hosted group, in id order.
    pub fn all(&self) -> Vec<Arc<Group>> {
        let mut groups: Vec<_> = self.groups.read().values().cloned().collect();
        groups.sort_by_key(|g| g.id);
        groups
    }

    pub fn ids(&self) -> Vec<GroupId> {
        self.groups.read().keys().copied().collect()
    }

    pub fn insert(&self, group: Arc<Group>) {
        self.groups.write().insert(group.id, group);
        self.changes.send_modify(|generation| *generation += 1);
    }

    /// Marks the node as stopping, before its groups are removed: a request
    /// still being served that looks for one of them then goes on to another
    /// replica at once instead of waiting for a start that never comes
    /// (which held a stopping node's last requests, and its exit, for the
    /// whole wait).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.changes.send_modify(|generation| *generation += 1);
    }

    pub fn remove(&self, id: GroupId) -> Option<Arc<Group>> {
        let removed = self.groups.write().remove(&id);
        self.changes.send_modify(|generation| *generation += 1);
        removed
    }

    /// Group `id` once this node hosts it, waiting up to `timeout` for it
    /// to start: the metadata can place a group here (a topic created a
    /// moment ago) a little before reconciliation has started it. Once the
    /// registry is closed nothing starts, so nothing is waited for.
    pub async fn wait_for(&self, id: GroupId, timeout: Duration) -> Option<Arc<Group>> {
        // Subscribed before looking, so a start between the look and the
        // wait is not missed.
        let mut changes = self.changes.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(group) = self.get(id) {
                return Some(group);
            }
            if self.closed.load(Ordering::Acquire) {
                return None;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                _ => return self.get(id),
            }
        }
    }

    pub fn meta(&self) -> Option<Arc<Group>> {
        self.get(GroupId::META)
    }

    /// This node's copy of the metadata: committed, possibly a little stale.
    /// Reads this node's metadata in place: request paths use this to look
    /// one thing up without copying every topic and token.
    pub fn with_metadata<T>(&self, f: impl FnOnce(&MetaState) -> T) -> Option<T> {
        self.meta()?.state.read(|inner| match &inner.data {
            GroupData::Meta(m) => Some(f(m)),
            GroupData::Partition(_) => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Longer than any test runs: a waiter that returns has not timed out.
    const FOREVER: Duration = Duration::from_secs(3600);
    /// How long a waiter that should return at once gets before the test
    /// calls it stuck.
    const STUCK: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn closing_ends_waits_for_groups_that_will_not_start() {
        let groups = HostedGroups::default();
        // The waiter is polled first, so it is waiting when the registry
        // closes.
        let (waited, ()) = tokio::join!(
            tokio::time::timeout(STUCK, groups.wait_for(GroupId(7), FOREVER)),
            async {
                tokio::task::yield_now().await;
                groups.close();
            }
        );
        assert!(matches!(waited, Ok(None)), "a waiter outlived the close");

        let after = tokio::time::timeout(STUCK, groups.wait_for(GroupId(8), FOREVER)).await;
        assert!(
            matches!(after, Ok(None)),
            "a closed registry made a new waiter wait"
        );
    }
}
