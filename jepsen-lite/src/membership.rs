//! The membership nemeses' side of the admin API: a partition moved to
//! other replicas, and a node removed (its replicas drained away) and then
//! added back. Calls go to any running node; the cluster forwards them to
//! the metadata leader. An answer the cluster gives (a refusal, a move
//! already under way) is part of what the run records, not a harness
//! error; only a cluster that nobody answers for is.

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use parking_lot::Mutex;
use raftstream_client::pb;
use tonic::Code;

use crate::cluster::grpc_addr;

/// How long one admin call may take: removing a node waits, bounded by the
/// node's write timeout, for its replicas to move away.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a removal's heal lets the removal finish before it re-adds the
/// node (cancelling the removal if it is still draining).
pub const REMOVAL_GRACE: Duration = Duration::from_secs(20);
/// How long a heal waits for partition moves to finish, and a re-add to be
/// accepted.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(20);

/// Admin calls to a cluster whose running nodes can change under them.
#[derive(Clone)]
pub struct Admin {
    pub token: String,
    /// The nodes running now (asked before each call).
    pub running: Arc<dyn Fn() -> Vec<u64> + Send + Sync>,
}

/// What the cluster answered: `Ok`, or a status the cluster gave.
type Answer<T> = Result<T, tonic::Status>;

impl Admin {
    /// Makes one call on the first running node that answers it; a node
    /// that cannot be reached or answers too late is skipped. Errors only
    /// when no node answered.
    async fn call<T, F, Fut>(&self, what: &str, mut call: F) -> anyhow::Result<Answer<T>>
    where
        F: FnMut(raftstream_client::Grpc) -> Fut,
        Fut: Future<Output = Answer<T>>,
    {
        for node in (self.running)() {
            let Ok(Ok(grpc)) = tokio::time::timeout(
                Duration::from_secs(2),
                raftstream_client::connect(&grpc_addr(node), Some(&self.token)),
            )
            .await
            else {
                continue;
            };
            match tokio::time::timeout(CALL_TIMEOUT, call(grpc)).await {
                // The node could not reach the metadata leader in time:
                // another node may.
                Ok(Err(status))
                    if status.code() == Code::Unavailable && is_unreachable(&status) => {}
                Ok(answer) => return Ok(answer),
                Err(_) => {}
            }
        }
        anyhow::bail!("no running node answered {what}")
    }

    /// Asks for `partition` of `topic` to move to `replicas` (preferred
    /// leader first).
    pub async fn move_partition(
        &self,
        topic: &str,
        partition: u32,
        replicas: &[u64],
    ) -> anyhow::Result<Answer<()>> {
        self.call("MovePartition", |mut grpc| {
            let request = pb::MovePartitionRequest {
                topic: Some(pb::TopicRef {
                    topic: Some(pb::topic_ref::Topic::Name(topic.to_string())),
                }),
                partition,
                replicas: replicas.to_vec(),
            };
            async move { grpc.move_partition(request).await.map(|_| ()) }
        })
        .await
    }

    /// One RemoveNode call: `Ok` once the node is out, UNAVAILABLE while
    /// its replicas are still moving away.
    async fn remove_node_once(&self, node: u64) -> anyhow::Result<Answer<()>> {
        self.call("RemoveNode", |mut grpc| async move {
            grpc.remove_node(pb::RemoveNodeRequest { node_id: node })
                .await
                .map(|_| ())
        })
        .await
    }

    /// Adds `node` (back), reachable at `peer_addr`; repeats while the
    /// cluster answers UNAVAILABLE, up to [`SETTLE_LIMIT`].
    pub async fn add_node(&self, node: u64, peer_addr: &str) -> anyhow::Result<Answer<()>> {
        let deadline = Instant::now() + SETTLE_LIMIT;
        loop {
            let answer = self
                .call("AddNode", |mut grpc| {
                    let request = pb::AddNodeRequest {
                        node_id: node,
                        peer_addr: peer_addr.to_string(),
                    };
                    async move { grpc.add_node(request).await.map(|_| ()) }
                })
                .await;
            match answer {
                Ok(Err(status))
                    if status.code() == Code::Unavailable && Instant::now() < deadline => {}
                Err(_) if Instant::now() < deadline => {}
                other => return other,
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The partition moves under way, as the first node that answers sees
    /// them.
    pub async fn moves(&self) -> anyhow::Result<Vec<pb::PartitionMove>> {
        let answer = self
            .call("ClusterStatus", |mut grpc| async move {
                grpc.cluster_status(pb::ClusterStatusRequest {})
                    .await
                    .map(|r| r.into_inner().moves)
            })
            .await?;
        answer.map_err(|status| anyhow::anyhow!("ClusterStatus: {status}"))
    }

    /// Waits (up to [`SETTLE_LIMIT`]) until no partition move is under
    /// way; says how it ended.
    pub async fn settle_moves(&self) -> String {
        let started = Instant::now();
        loop {
            match self.moves().await {
                Ok(moves) if moves.is_empty() => {
                    return format!("moves settled in {:.1} s", started.elapsed().as_secs_f64());
                }
                Ok(moves) if started.elapsed() >= SETTLE_LIMIT => {
                    return format!(
                        "{} moves still under way after {} s",
                        moves.len(),
                        SETTLE_LIMIT.as_secs()
                    );
                }
                Err(e) if started.elapsed() >= SETTLE_LIMIT => return format!("{e:#}"),
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
}

/// How a removal the cluster refused is described.
const REFUSED: &str = "refused";

/// A node removal under way in the background: RemoveNode called again
/// while the cluster answers UNAVAILABLE (replicas still moving away).
pub struct Removal {
    pub node: u64,
    outcome: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
    started: Instant,
}

impl Removal {
    pub fn start(admin: Admin, node: u64) -> Removal {
        let outcome = Arc::new(Mutex::new(None));
        let recorded = outcome.clone();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let ended = loop {
                match admin.remove_node_once(node).await {
                    Ok(Ok(())) => {
                        break format!("removed in {:.1} s", started.elapsed().as_secs_f64());
                    }
                    Ok(Err(status)) if status.code() == Code::Unavailable => {}
                    Ok(Err(status)) => {
                        break format!("{REFUSED}: {:?} {}", status.code(), status.message());
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            };
            *recorded.lock() = Some(ended);
        });
        Removal {
            node,
            outcome,
            task,
            started,
        }
    }

    /// Waits up to `grace` for the removal to end, then stops calling;
    /// says how it ended, and whether the cluster refused it (so there is
    /// nothing to undo).
    pub async fn finish(self, grace: Duration) -> (String, bool) {
        let deadline = self.started + grace;
        while !self.task.is_finished() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.task.abort();
        let outcome = self.outcome.lock().clone();
        match outcome {
            Some(ended) => {
                let refused = ended.starts_with(REFUSED);
                (ended, refused)
            }
            None => (
                format!(
                    "still draining after {:.1} s",
                    self.started.elapsed().as_secs_f64()
                ),
                false,
            ),
        }
    }
}

/// Whether an UNAVAILABLE answer says the node could not reach the
/// metadata leader (worth asking another node) rather than that a removal
/// is still under way.
fn is_unreachable(status: &tonic::Status) -> bool {
    !status.message().contains("moving away")
}
