//! Writes to a group hosted on this node, with their three outcomes. It
//! needs the quiescer (a quiesced leader is woken before a write), so it
//! sits above Raft while the group itself sits below.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::ClientWriteError;
use openraft::raft::responder::ProgressResponder;

use crate::disk::DiskSpace;
use crate::failpoints::Failpoint;
use crate::group::Group;
use crate::raft::quiesce::Quiescer;
use crate::raft::types::Command;
use crate::raft::types::CommandResponse;
use crate::raft::types::MetaRejection;
use crate::raft::types::PartitionCommand;
use crate::state_machine::GroupData;

/// How long a producer's batch waits on the leader for the producer's
/// earlier batches to be proposed before it is proposed anyway. The batch
/// ahead is normally a request already on its way; if it never comes, the
/// state machine refuses this one as out of sequence, as it would have.
const PROPOSAL_ORDER_WAIT: Duration = Duration::from_millis(250);

/// Why a write did not succeed. `Unknown` is not a failure: the entry may
/// or may not commit, and a client that retries must be ready for either.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("this node does not lead the group")]
    NotLeader { leader_addr: Option<String> },
    #[error("outcome unknown: {0}")]
    Unknown(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Rejected(MetaRejection),
    /// The node's disk is nearly full: nothing was written.
    #[error("{0}")]
    InsufficientStorage(String),
}

/// What every write on this node goes through: the disk-space check, the
/// quiescer, and the bound on how long a write waits for its outcome.
#[derive(Debug)]
pub struct WritePath {
    disk: Arc<DiskSpace>,
    /// `None` when quiescence is off (`quiesce_after_ms` is 0).
    quiescer: Option<Arc<Quiescer>>,
    /// `Limits::write_timeout_ms`.
    timeout: Duration,
}

impl WritePath {
    pub fn new(
        disk: Arc<DiskSpace>,
        quiescer: Option<Arc<Quiescer>>,
        timeout: Duration,
    ) -> WritePath {
        WritePath {
            disk,
            quiescer,
            timeout,
        }
    }

    /// Proposes a command on a local group and waits for it to be applied,
    /// which happens only after a majority fsynced it.
    pub async fn write(
        &self,
        group: &Group,
        command: Command,
    ) -> Result<CommandResponse, WriteError> {
        self.write_then(group, command, || {}).await
    }

    /// Like [`WritePath::write`]; `queued` runs as soon as the command is in
    /// the group's Raft queue, ahead of every command proposed after that.
    async fn write_then(
        &self,
        group: &Group,
        command: Command,
        queued: impl FnOnce(),
    ) -> Result<CommandResponse, WriteError> {
        if let Command::Partition(PartitionCommand::Append { .. } | PartitionCommand::Ingest { .. }) =
            &command
            && let Some(low) = self.disk.low_on_space()
        {
            return Err(WriteError::InsufficientStorage(low));
        }
        if let Some(quiescer) = &self.quiescer {
            quiescer.wake_for_write(group).await;
        }
        let (responder, applied) = ProgressResponder::complete_only();
        let proposed = group.raft.client_write_ff(command, Some(responder)).await;
        queued();
        if let Err(e) = proposed {
            // The group had stopped: the command never reached it.
            return Err(WriteError::Unavailable(format!("the group stopped: {e}")));
        }
        match tokio::time::timeout(self.timeout, applied).await {
            Err(_) => Err(WriteError::Unknown(format!(
                "not committed within {} ms; it may still commit",
                self.timeout.as_millis()
            ))),
            // The group stopped (shutdown or a disk it no longer trusts)
            // after the entry may have reached the followers.
            Ok(Err(_)) => Err(WriteError::Unknown(
                "the group stopped before the entry was known to commit".into(),
            )),
            Ok(Ok(Ok(response))) => {
                // Committed and applied: only the reply can still be lost.
                crate::failpoints::hit(group.state.storage().failpoints(), Failpoint::WriteReply)
                    .await
                    .map_err(|lost| WriteError::Unknown(lost.to_string()))?;
                Ok(response.data)
            }
            Ok(Ok(Err(ClientWriteError::ForwardToLeader(f)))) => {
                let leader_addr = f.leader_node.map(|n| n.addr);
                Err(WriteError::NotLeader { leader_addr })
            }
            Ok(Ok(Err(ClientWriteError::LogEntryDiscarded(_)))) => Err(WriteError::Unknown(
                "the leader changed before the entry was known to commit".into(),
            )),
            Ok(Ok(Err(e))) => Err(WriteError::Unavailable(e.to_string())),
        }
    }

    /// Proposes a partition command. An idempotent producer's batch is
    /// proposed only after the producer's earlier batches (see
    /// [`crate::group::ProposalOrder`]), waiting at most
    /// `PROPOSAL_ORDER_WAIT`.
    pub async fn write_partition(
        &self,
        group: &Group,
        command: PartitionCommand,
    ) -> Result<CommandResponse, WriteError> {
        let PartitionCommand::Append {
            producer: Some((producer, base_sequence)),
            records,
            ..
        } = &command
        else {
            return self.write(group, Command::Partition(command)).await;
        };
        let (producer, base_sequence, count) = (*producer, *base_sequence, records.len() as u64);
        let applied_next = group.state.read(|inner| match &inner.data {
            GroupData::Partition(p) => p.producers.get(&producer).map_or(0, |s| s.next_sequence),
            GroupData::Meta(_) => 0,
        });
        group
            .proposal_order
            .wait_turn(producer, base_sequence, applied_next, PROPOSAL_ORDER_WAIT)
            .await;
        self.write_then(group, Command::Partition(command), || {
            group
                .proposal_order
                .proposed(producer, base_sequence, count)
        })
        .await
    }
}
