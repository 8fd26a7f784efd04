//! Quiescing idle partition groups, so that a node's idle cost does not grow
//! with its partition count.
//!
//! Every openraft group ticks about every `heartbeat × 13/64` ms and its
//! leader sends a heartbeat per follower every `heartbeat` ms, busy or not:
//! with 1,000 groups that is tens of thousands of wake-ups a second for
//! nothing. Like TiKV's hibernated regions, an idle group stops ticking on
//! every replica, and one heartbeat per peer node stands in for all of them:
//!
//! - a leader whose log has not grown for `quiesce_after` and whose followers
//!   all hold its last entry disables its tick (so it sends no heartbeats);
//! - every `heartbeat` ms each node sends each peer one node heartbeat
//!   naming the groups it leads and has quiesced;
//! - a follower disables its tick while a fresh node heartbeat of its leader's
//!   node names the group, and enables it again as soon as one does not, or
//!   when that node's heartbeats stop for `election_timeout_min` (then the
//!   group elects a new leader as usual);
//! - a write to a quiesced leader is appended and replicated at once (that
//!   needs no tick); the leader's log grows, so it ticks again from the next
//!   round, and its next node heartbeat wakes the followers.
//!
//! Only timers are switched: votes, appends and commits follow Raft as
//! always, so safety does not depend on any of this; a wrong decision only
//! costs an election. The metadata group never quiesces.

use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use openraft::Instant as _;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use parking_lot::Mutex;
use raftstream_proto::v1::NodeHeartbeatReply;
use raftstream_proto::v1::NodeHeartbeatRequest;

use crate::group::Group;
use crate::group::RaftMetrics;
use crate::model::GroupId;
use crate::model::NodeId;
use crate::raft::network::PeerPool;
use crate::time::Clock;

/// Timings of quiescence, from the node's Raft timings.
#[derive(Debug, Clone, Copy)]
pub struct QuiesceTimings {
    /// How often groups are checked and node heartbeats sent.
    pub round: Duration,
    /// How long a leader's log must stay unchanged before it quiesces.
    pub quiesce_after: Duration,
    /// A peer whose last node heartbeat is older than this is presumed down.
    pub peer_timeout: Duration,
}

#[derive(Debug, Default)]
struct PeerBeat {
    at: Option<Instant>,
    quiesced: HashSet<GroupId>,
}

#[derive(Debug)]
struct Activity {
    last_log_index: u64,
    changed_at: Instant,
}

#[derive(Debug, Default)]
struct State {
    peers: HashMap<NodeId, PeerBeat>,
    activity: HashMap<GroupId, Activity>,
    /// Groups whose tick this node has disabled (as leader or follower).
    quiet: HashSet<GroupId>,
    /// Of those, the ones this node leads: named in its node heartbeats.
    leading_quiet: HashSet<GroupId>,
}

/// One node's view of quiescence: its own groups and its peers' heartbeats.
#[derive(Debug)]
pub struct Quiescer {
    node_id: NodeId,
    timings: QuiesceTimings,
    /// The node's clock: when peers were heard from and groups last grew.
    time: Arc<dyn Clock>,
    state: Mutex<State>,
}

/// What a round decided for one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Quiet,
    Tick,
}

impl Quiescer {
    pub fn new(node_id: NodeId, timings: QuiesceTimings, time: Arc<dyn Clock>) -> Arc<Quiescer> {
        Arc::new(Quiescer {
            node_id,
            timings,
            time,
            state: Mutex::new(State::default()),
        })
    }

    /// A node heartbeat from a peer.
    pub fn on_heartbeat(&self, beat: &NodeHeartbeatRequest) {
        let mut state = self.state.lock();
        let peer = state.peers.entry(NodeId(beat.from)).or_default();
        peer.at = Some(self.time.now());
        peer.quiesced = beat.quiesced_groups.iter().copied().map(GroupId).collect();
    }

    /// Wakes `group` if it is quiesced and keeps it awake for another
    /// `quiesce_after`: for work that needs the group's timers, such as a
    /// leadership transfer (the outgoing leader hands over on heartbeats).
    pub fn hold_awake(&self, group: &Group) {
        let last = group.with_metrics(|m| m.last_log_index.unwrap_or(0));
        let mut state = self.state.lock();
        state.activity.insert(
            group.id,
            Activity {
                last_log_index: last,
                changed_at: self.time.now(),
            },
        );
        state.leading_quiet.remove(&group.id);
        if state.quiet.remove(&group.id) {
            group.raft.runtime_config().tick(true);
        }
    }

    /// Called before a write to a local group: a quiesced leader has let its
    /// lease lapse (it sent no heartbeats), and openraft refuses writes
    /// without a lease. So wake it, send a heartbeat round at once and wait
    /// (bounded) until a quorum has answered it. A group that is awake costs
    /// one lock and one lookup.
    pub async fn wake_for_write(&self, group: &Group) {
        let was_quiet = self.state.lock().quiet.contains(&group.id);
        self.hold_awake(group);
        if !was_quiet {
            return;
        }
        // Compared with openraft's `last_quorum_acked`, which openraft stamps
        // from its runtime's clock: so the real clock, not `self.time`.
        let started = Instant::now();
        let _ = group.raft.trigger().heartbeat().await;
        let mut metrics = group.raft.metrics();
        let fresh = |m: &openraft::RaftMetrics<crate::raft::types::TypeConfig>| {
            m.state != ServerState::Leader || quorum_acked_since(m, started)
        };
        let wait = async {
            loop {
                if fresh(&metrics.borrow_watched()) {
                    return;
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(self.timings.peer_timeout, wait).await;
    }

    /// How many of this node's groups are quiesced now (for tests and status).
    pub fn quiesced_count(&self) -> usize {
        self.state.lock().quiet.len()
    }

    /// Whether this node has stopped `group`'s timers.
    pub fn is_quiet(&self, group: GroupId) -> bool {
        self.state.lock().quiet.contains(&group)
    }

    /// Checks every group once, switches ticks, and returns the groups this
    /// node leads that are quiesced (for its next node heartbeat).
    pub fn round(&self, groups: &[Arc<Group>]) -> Vec<GroupId> {
        let now = self.time.now();
        let mut state = self.state.lock();
        for group in groups {
            if group.id == GroupId::META {
                continue;
            }
            let decision = group.with_metrics(|m| self.decide(&mut state, group.id, m, now));
            let was_quiet = state.quiet.contains(&group.id);
            match decision {
                Decision::Quiet if !was_quiet => {
                    group.raft.runtime_config().tick(false);
                    state.quiet.insert(group.id);
                }
                Decision::Tick if was_quiet => {
                    group.raft.runtime_config().tick(true);
                    state.quiet.remove(&group.id);
                    state.leading_quiet.remove(&group.id);
                }
                _ => {}
            }
        }
        // Every hosted group has its activity now, so more activities than
        // groups means some group left this node: forget it everywhere.
        // (The quiet sets only name groups with an activity.)
        let partition_groups = groups.iter().filter(|g| g.id != GroupId::META).count();
        if state.activity.len() > partition_groups {
            let live: HashSet<GroupId> = groups.iter().map(|g| g.id).collect();
            state.activity.retain(|g, _| live.contains(g));
            state.quiet.retain(|g| live.contains(g));
            state.leading_quiet.retain(|g| live.contains(g));
        }
        let mut leading: Vec<GroupId> = state.leading_quiet.iter().copied().collect();
        leading.sort_unstable();
        leading
    }

    fn decide(&self, state: &mut State, group: GroupId, m: &RaftMetrics, now: Instant) -> Decision {
        let last = m.last_log_index.unwrap_or(0);
        let activity = state.activity.entry(group).or_insert(Activity {
            last_log_index: last,
            changed_at: now,
        });
        let grew = activity.last_log_index != last;
        if grew {
            activity.last_log_index = last;
            activity.changed_at = now;
        }
        let idle = now.duration_since(activity.changed_at) >= self.timings.quiesce_after;
        match m.state {
            ServerState::Leader if m.current_leader == Some(self.node_id) => {
                // A quiet leader whose log has not grown stays quiet: every
                // follower held its last entry, committed, when it quiesced,
                // and neither moves back. So its replication map (a walk
                // over cold memory for each of a thousand groups, ten times
                // a second) is read only when the log grew.
                let stays_quiet = !grew && state.leading_quiet.contains(&group);
                let caught_up = || {
                    let committed =
                        m.cluster_committed.as_ref().map(|l| l.index) == m.last_log_index;
                    committed
                        && m.replication.as_ref().is_some_and(|r| {
                            r.values().all(|matched| {
                                matched.as_ref().map(|l| l.index) == m.last_log_index
                            })
                        })
                };
                if stays_quiet || (idle && caught_up()) {
                    state.leading_quiet.insert(group);
                    Decision::Quiet
                } else {
                    state.leading_quiet.remove(&group);
                    Decision::Tick
                }
            }
            ServerState::Follower => {
                state.leading_quiet.remove(&group);
                let Some(leader) = m.current_leader.filter(|l| *l != self.node_id) else {
                    return Decision::Tick;
                };
                let fresh_and_quiet = state.peers.get(&leader).is_some_and(|p| {
                    p.at.is_some_and(|at| now.duration_since(at) < self.timings.peer_timeout)
                        && p.quiesced.contains(&group)
                });
                if fresh_and_quiet {
                    Decision::Quiet
                } else {
                    Decision::Tick
                }
            }
            _ => {
                state.leading_quiet.remove(&group);
                Decision::Tick
            }
        }
    }
}

/// Whether a quorum acknowledged this leader after `since`. openraft refuses
/// writes (ForwardToLeader without a leader) until it has: a leader that was
/// just elected, or that let its lease lapse while quiesced, must first hear
/// from a quorum.
pub fn quorum_acked_since(
    metrics: &openraft::RaftMetrics<crate::raft::types::TypeConfig>,
    since: Instant,
) -> bool {
    metrics
        .last_quorum_acked
        .as_ref()
        .is_some_and(|at| at.elapsed() < since.elapsed())
}

/// Sends one node heartbeat to a peer, bounded by `timeout`, and returns
/// its answer (the peer's wall clock, whether it holds a formed cluster). A failure is only logged: the
/// peer then sees this node's heartbeats stop, which is exactly what it
/// should conclude.
pub async fn send_heartbeat(
    pool: &PeerPool,
    addr: &str,
    beat: NodeHeartbeatRequest,
    timeout: Duration,
) -> Result<NodeHeartbeatReply, String> {
    let mut client = pool.transport(addr).map_err(|e| e.to_string())?;
    let mut request = tonic::Request::new(beat);
    request.set_timeout(timeout);
    match tokio::time::timeout(timeout, client.node_heartbeat(request)).await {
        Ok(Ok(reply)) => Ok(reply.into_inner()),
        Ok(Err(status)) => Err(status.to_string()),
        Err(_) => Err(format!("timed out after {timeout:?}")),
    }
}
