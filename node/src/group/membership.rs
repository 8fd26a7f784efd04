//! Changing a group's voters, on its leader: every new voter first joins as
//! a learner and catches up, then one joint-consensus change (openraft's
//! `change_membership`: a joint configuration, then the new one) makes the
//! target set the voters. Until the joint configuration commits the old
//! voters decide alone, and from then on both sets must agree, so no
//! majority is lost while replicas move.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::Duration;

use openraft::BasicNode;
use openraft::ChangeMembers;
use openraft::error::ClientWriteError;
use openraft::error::RaftError;

use crate::group::Group;
use crate::group::write::WriteError;
use crate::model::NodeId;
use crate::raft::types::TypeConfig;

/// Makes `target` the voters of `group`, which this node leads. `addrs`
/// gives the peer address of every new voter. Returns once the new
/// configuration is committed; a timeout is an unknown outcome (the change
/// may still finish: calling again with the same target is safe).
pub async fn change_voters(
    group: &Group,
    target: &BTreeSet<NodeId>,
    addrs: &BTreeMap<NodeId, String>,
    catch_up_timeout: Duration,
) -> Result<(), WriteError> {
    if target.is_empty() {
        return Err(WriteError::Unavailable("a group needs a voter".into()));
    }
    let members = group.members();
    for node in target.iter().filter(|node| !members.contains(node)) {
        let addr = addrs.get(node).ok_or_else(|| {
            WriteError::Unavailable(format!("node {node} has no known peer address"))
        })?;
        let add = group.raft.add_learner(*node, BasicNode::new(addr), true);
        let late = format!("node {node} did not catch up");
        step_within(catch_up_timeout, &late, add).await?;
    }
    if group.voters() == *target {
        return Ok(());
    }
    // A learner added by an earlier call that timed out may never have
    // caught up (or may not exist at all): making it a voter could leave
    // the group without a reachable majority. Promote only learners that
    // hold every entry the leader had when this call looked.
    let voters = group.voters();
    for node in target.iter().filter(|node| !voters.contains(node)) {
        await_learner_caught_up(group, *node, catch_up_timeout).await?;
    }
    let change = group
        .raft
        .change_membership(ChangeMembers::ReplaceAllVoters(target.clone()), false);
    let late = "the membership change did not commit";
    step_within(catch_up_timeout, late, change)
        .await
        .map(|_| ())
}

/// Waits at most `timeout` for a membership `step`. Running out leaves its
/// outcome unknown (it may still complete), which `late` says.
async fn step_within<T>(
    timeout: Duration,
    late: &str,
    step: impl Future<Output = Result<T, RaftError<TypeConfig, ClientWriteError<TypeConfig>>>>,
) -> Result<T, WriteError> {
    match tokio::time::timeout(timeout, step).await {
        Ok(done) => done.map_err(raft_write_error),
        Err(_) => Err(WriteError::Unknown(format!(
            "{late} within {} ms",
            timeout.as_millis()
        ))),
    }
}

/// Waits until learner `node` has matched the leader's last log index as
/// it is now, up to `timeout`.
async fn await_learner_caught_up(
    group: &Group,
    node: NodeId,
    timeout: Duration,
) -> Result<(), WriteError> {
    use openraft::async_runtime::WatchReceiver;
    let mut metrics = group.raft.metrics();
    let wanted = metrics.borrow_watched().last_log_index.unwrap_or(0);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let matched = metrics
            .borrow_watched()
            .replication
            .as_ref()
            .and_then(|r| r.get(&node).cloned())
            .flatten()
            .map_or(0, |log_id| log_id.index);
        if matched >= wanted {
            return Ok(());
        }
        let changed = tokio::time::timeout_at(deadline, metrics.changed()).await;
        if !matches!(changed, Ok(Ok(()))) {
            return Err(WriteError::Unavailable(format!(
                "node {node} has not caught up as a learner (at {matched} of {wanted}); it \
                 becomes a voter once it has"
            )));
        }
    }
}

fn raft_write_error(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> WriteError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => WriteError::NotLeader {
            leader_addr: f.leader_node.map(|n| n.addr),
        },
        RaftError::APIError(e) => WriteError::Unavailable(e.to_string()),
        RaftError::Fatal(e) => WriteError::Unknown(format!("the group stopped: {e}")),
    }
}
