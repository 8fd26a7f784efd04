//! A node: its storage, its Raft groups and the tasks that keep them in step
//! with the metadata.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::BasicNode;
use openraft::SnapshotPolicy;
use openraft::async_runtime::WatchReceiver;
use parking_lot::RwLock;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::Semaphore;
use tokio::sync::watch;

use crate::api::schema::SchemaCache;
use crate::clock::ClockCheck;
use crate::config::NodeConfig;
use crate::disk::DiskSpace;
use crate::group::Group;
use crate::group::GroupStatus;
use crate::group::HostedGroups;
use crate::group::Raft;
use crate::group::write::WriteError;
use crate::group::write::WritePath;
use crate::identity::Identity;
use crate::metrics::NodeMetrics;
use crate::model::GroupId;
use crate::model::NodeId;
use crate::model::TopicId;
use crate::platform::PlatformEvents;
use crate::raft::network::NetworkFactory;
use crate::raft::network::PeerPool;
use crate::raft::quiesce::QuiesceTimings;
use crate::raft::quiesce::Quiescer;
use crate::raft::transport::TransportHost;
use crate::raft::types::Command;
use crate::raft::types::CommandResponse;
use crate::raft::types::MetaCommand;
use crate::raft::types::MetaRejection;
use crate::raft::types::MetaState;
use crate::raft::types::PartitionCommand;
use crate::raft::types::Scope;
use crate::raft::types::Topic;
use crate::rejoin::Rejoin;
use crate::state_machine::GroupData;
use crate::state_machine::GroupStateMachine;
use crate::storage::Storage;
use crate::storage::StorageConfig;
use crate::storage::SyncMode;
use crate::time::Clock;

/// Why a node cannot serve writes yet, or any more.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("this node's storage failed and it stopped serving: {0}")]
    StorageFailed(String),
    #[error("no metadata leader yet")]
    NoMetadataLeader,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("state machine of group {group}: {source}")]
    StateMachine {
        group: GroupId,
        source: std::io::Error,
    },
    #[error("raft group {group}: {reason}")]
    Raft { group: GroupId, reason: String },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    Identity(#[from] crate::identity::IdentityError),
}

/// Slots for the reads that stay open on a node: each holds a task, a
/// wake-up subscription and, for a subscription, a buffer of messages.
/// Without a bound, clients could park reads until memory runs out.
#[derive(Debug)]
pub struct ReadSlots {
    long_polls: (Arc<Semaphore>, usize),
    subscriptions: (Arc<Semaphore>, usize),
}

/// A read's slot, given back when dropped.
#[derive(Debug)]
pub struct ReadSlot {
    _permit: OwnedSemaphorePermit,
}

/// Every slot of that kind is taken.
#[derive(Debug, thiserror::Error)]
#[error("{limit} {kind} are open on this node already, its limit; retry later or on another node")]
pub struct NoReadSlot {
    kind: &'static str,
    limit: usize,
}

impl ReadSlots {
    fn new(limits: &crate::config::Limits) -> ReadSlots {
        let slots = |n: usize| (Arc::new(Semaphore::new(n)), n);
        ReadSlots {
            long_polls: slots(limits.max_long_polls),
            subscriptions: slots(limits.max_subscriptions),
        }
    }

    pub fn long_poll(&self) -> Result<ReadSlot, NoReadSlot> {
        Self::take(&self.long_polls, "long polls")
    }

    pub fn subscription(&self) -> Result<ReadSlot, NoReadSlot> {
        Self::take(&self.subscriptions, "subscriptions")
    }

    /// Long polls parked now.
    pub fn long_polls_open(&self) -> usize {
        let (slots, limit) = &self.long_polls;
        limit.saturating_sub(slots.available_permits())
    }

    fn take(
        (slots, limit): &(Arc<Semaphore>, usize),
        kind: &'static str,
    ) -> Result<ReadSlot, NoReadSlot> {
        let permit = slots.clone().try_acquire_owned().map_err(|_| NoReadSlot {
            kind,
            limit: *limit,
        })?;
        Ok(ReadSlot { _permit: permit })
    }
}

/// A partition group the metadata places on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DesiredGroup {
    /// Its replicas, and those it is moving to.
    replicas: Vec<NodeId>,
    /// This node is its preferred leader.
    preferred: bool,
    /// This node writes its first membership when it has none.
    initialize: bool,
}

/// Writes a group's first membership. Every replica initializes with the
/// same membership, which writes the same first entry everywhere, so it is
/// safe and no single replica being down can leave the group unformed. The
/// preferred leader then starts the first election.
async fn initialize_group(
    raft: &Raft,
    id: GroupId,
    replicas: &BTreeMap<NodeId, String>,
    preferred_leader: bool,
) {
    let members: BTreeMap<NodeId, BasicNode> = replicas
        .iter()
        .map(|(id, addr)| (*id, BasicNode::new(addr)))
        .collect();
    if let Err(e) = raft.initialize(members).await {
        tracing::debug!(group = id.0, error = %e, "initialize skipped");
    }
    if preferred_leader {
        let _ = raft.trigger().elect(true).await;
    }
}

/// The most entries one AppendEntries call carries: as many of the largest
/// (a publish batch at `max_batch_bytes` with its framing) as fit the peer
/// API's message limit, and at most openraft's default of 300. Without the
/// bound, a follower catching up on large batches was sent appends the
/// peer refused to encode, and never caught up.
pub fn entries_per_append(limits: &crate::config::Limits) -> u64 {
    let largest_entry = limits.max_batch_bytes + crate::config::REQUEST_FRAMING_BYTES;
    let fit = crate::config::MAX_RPC_BYTES / largest_entry.max(1);
    u64::try_from(fit).unwrap_or(u64::MAX).clamp(1, 300)
}

/// How old a peer's clock measurement may be and still count: heartbeats
/// measure it every `heartbeat_ms`, so only a peer cut off for this long
/// stops counting.
const CLOCK_SAMPLES_FRESH_FOR: Duration = Duration::from_secs(10);

/// How long an unknown token or source waits for metadata still on its way.
const METADATA_PROPAGATION_WAIT: Duration = Duration::from_millis(750);

pub struct Node {
    pub config: NodeConfig,
    pub storage: Storage,
    pub pool: PeerPool,
    /// Node id → the public gRPC address it reported last (its own from
    /// the start): `peers` names peer listeners, which clients cannot use.
    pub client_addrs: RwLock<BTreeMap<NodeId, String>>,
    /// Bounds on reads parked on this node (`Limits::max_long_polls`,
    /// `max_subscriptions`).
    pub read_slots: ReadSlots,
    /// Free space on the data directory's disk, checked every second.
    pub disk: Arc<DiskSpace>,
    /// Whether this node's clock may expire messages by age.
    pub clock: ClockCheck,
    /// Where the node reads the time for its own decisions (`time.rs`).
    pub time: Arc<dyn Clock>,
    /// Caution after an empty start: no votes until caught up.
    pub rejoin: Rejoin,
    /// Whose the data directory is (`identity.rs`).
    identity: parking_lot::Mutex<Identity>,
    /// Each peer's incarnation from its last node heartbeat.
    peer_incarnations: parking_lot::Mutex<HashMap<NodeId, u64>>,
    /// Topics' compiled JSON Schemas, shared by the gRPC service and the
    /// gateway, and the bound on validations running at once.
    pub schemas: SchemaCache,
    /// Prometheus metrics, served at `/metrics`.
    pub metrics: NodeMetrics,
    /// Where operations hand their platform events (`platform.rs`).
    pub platform: PlatformEvents,
    raft_config: Arc<openraft::Config>,
    groups: HostedGroups,
    /// Quiescence of idle groups; `None` when `quiesce_after_ms` is 0.
    quiescer: Option<Arc<Quiescer>>,
    /// How this node's groups take writes.
    writes: WritePath,
    /// What the partition groups' backfill tasks share (`backfill.rs`).
    backfills: crate::backfill::Backfills,
    /// Round-robin cursor for publishes with neither key nor partition.
    round_robin: AtomicU64,
    shutdown_tx: watch::Sender<bool>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.config.node_id)
            .finish()
    }
}

impl Node {
    /// Opens storage, starts the metadata group and every partition group
    /// the metadata places here, and the background tasks. The node reads
    /// the time from `time` (`SystemClock` outside tests).
    pub async fn start(config: NodeConfig, time: Arc<dyn Clock>) -> Result<Arc<Node>, NodeError> {
        config.validate().map_err(NodeError::Config)?;
        let own_client_addr = [(config.node_id, config.client_grpc_addr())].into();
        let read_slots = ReadSlots::new(&config.limits);
        let clock = ClockCheck::new(
            config.limits.max_clock_offset_ms,
            CLOCK_SAMPLES_FRESH_FOR,
            time.clone(),
        );
        // Measured first when its loop starts, right after the storage opens.
        let disk = Arc::new(DiskSpace::new(
            &config.data_dir,
            config.limits.min_free_disk_bytes,
        ));
        let peer_tls = config
            .peer_tls
            .as_ref()
            .map(crate::tls::peer_client)
            .transpose()?;
        let sync_mode = if config.fsync {
            SyncMode::Always
        } else {
            SyncMode::Never
        };
        let db_dir = config.data_dir.join("db");
        // RocksDB writes CURRENT when it creates a database.
        let empty_data_dir = !db_dir.join("CURRENT").exists();
        let identity = Identity::load_or_create(&config.data_dir, config.node_id, empty_data_dir)?;
        let rejoin = Rejoin::new(
            config.node_id,
            empty_data_dir || identity.rejoining,
            config.peers.len(),
        );
        let pool = PeerPool::new(peer_tls, config.node_id);
        if let Some(cluster_id) = &identity.cluster_id {
            pool.cluster().set(cluster_id);
        }
        let failpoints = config.failpoints.clone();
        let storage = Storage::open(
            &db_dir,
            StorageConfig {
                sync_mode,
                failpoints,
            },
        )?;
        let metrics = NodeMetrics::new(storage.sync_metrics())?;
        let timings = &config.raft;
        let raft_config = openraft::Config {
            cluster_name: "raftstream".into(),
            heartbeat_interval: timings.heartbeat_ms,
            election_timeout_min: timings.election_timeout_min_ms,
            election_timeout_max: timings.election_timeout_max_ms,
            // Snapshots hold no message data and are taken only by the
            // retention task, right before it purges the log it covers.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: u64::MAX,
            enable_pre_vote: Some(true),
            // Replicate an entry as soon as it is written, before the leader's own fsync
            // returns, so the leader's and the followers' fsyncs overlap instead of running one
            // after the other. Commit still needs a majority of fsyncs, the leader's included
            // only once it has synced.
            broadcast_submitted_on_append: Some(true),
            max_payload_entries: entries_per_append(&config.limits),
            ..Default::default()
        };
        let raft_config = raft_config
            .validate()
            .map_err(|e| NodeError::Config(e.to_string()))?;
        let (shutdown_tx, _) = watch::channel(false);
        let quiescer = (timings.quiesce_after_ms > 0).then(|| {
            Quiescer::new(
                config.node_id,
                QuiesceTimings {
                    round: Duration::from_millis(timings.heartbeat_ms),
                    quiesce_after: Duration::from_millis(timings.quiesce_after_ms),
                    peer_timeout: Duration::from_millis(timings.election_timeout_min_ms),
                },
                time.clone(),
            )
        });
        let writes = WritePath::new(
            disk.clone(),
            quiescer.clone(),
            Duration::from_millis(config.limits.write_timeout_ms),
        );
        let platform = PlatformEvents::new(
            config.platform_events,
            time.clone(),
            metrics.platform_events_dropped(),
        );
        let node = Arc::new(Node {
            platform,
            backfills: crate::backfill::Backfills::new(config.node_id, pool.clone()),
            quiescer,
            writes,
            config,
            storage,
            pool,
            client_addrs: RwLock::new(own_client_addr),
            read_slots,
            disk,
            clock,
            time,
            rejoin,
            identity: parking_lot::Mutex::new(identity),
            peer_incarnations: parking_lot::Mutex::default(),
            schemas: SchemaCache::default(),
            metrics,
            raft_config: Arc::new(raft_config),
            groups: HostedGroups::default(),
            round_robin: AtomicU64::new(0),
            shutdown_tx,
        });
        let voters: BTreeMap<NodeId, String> = node.config.peers.clone();
        // A joining node gets the metadata group's membership from its
        // leader once an admin adds it.
        node.start_group(GroupId::META, &voters, true, !node.config.join)
            .await?;
        tokio::spawn(node.clone().reconcile_loop());
        tokio::spawn(node.clone().retention_loop());
        tokio::spawn(node.clone().node_heartbeat_loop());
        tokio::spawn(node.clone().disk_space_loop());
        tokio::spawn(node.clone().stop_on_storage_failure());
        tokio::spawn(node.clone().bootstrap_admin_token());
        tokio::spawn(node.clone().resolve_token_topic_names());
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.config.node_id
    }

    pub fn group(&self, id: GroupId) -> Option<Arc<Group>> {
        self.groups.get(id)
    }

    /// Every group this node hosts, in id order.
    pub fn groups(&self) -> Vec<Arc<Group>> {
        self.groups.all()
    }

    /// Every metric in Prometheus' text format (`/metrics`).
    pub fn render_metrics(&self) -> String {
        self.metrics.render(self.id(), &self.group_statuses())
    }

    /// The status of every group this node hosts, partitions named by
    /// their topic.
    pub fn group_statuses(&self) -> Vec<GroupStatus> {
        let names: HashMap<GroupId, (String, u32)> = self
            .with_metadata(|meta| {
                meta.topics
                    .values()
                    .flat_map(|t| {
                        (0..t.partitions.len() as u32)
                            .map(move |p| (t.group_id(p), (t.name.clone(), p)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let quiescer = self.quiescer();
        self.groups()
            .into_iter()
            .map(|group| {
                let (topic, partition) = names.get(&group.id).cloned().unwrap_or_default();
                let quiesced = quiescer.is_some_and(|q| q.is_quiet(group.id));
                group.status(topic, partition, quiesced)
            })
            .collect()
    }

    /// The groups this node hosts, for code below the node that only
    /// needs to find them.
    pub fn hosted_groups(&self) -> &HostedGroups {
        &self.groups
    }

    pub fn meta_group(&self) -> Option<Arc<Group>> {
        self.groups.meta()
    }

    /// See [`HostedGroups::with_metadata`].
    pub fn with_metadata<T>(&self, f: impl FnOnce(&MetaState) -> T) -> Option<T> {
        self.groups.with_metadata(f)
    }

    /// A copy of this node's metadata, for work that needs all of it.
    pub fn metadata(&self) -> MetaState {
        self.meta_group()
            .and_then(|g| {
                g.state.read(|inner| match &inner.data {
                    GroupData::Meta(m) => Some(m.clone()),
                    GroupData::Partition(_) => None,
                })
            })
            .unwrap_or_default()
    }

    /// The token a secret belongs to. A token created a moment ago through
    /// another node may not have reached this node's metadata yet, so an
    /// unknown secret is looked up again as metadata arrives, briefly.
    pub async fn authenticate(&self, secret: &str) -> Option<crate::raft::types::TokenRecord> {
        self.await_metadata(|m| crate::auth::authenticate(m, secret).cloned())
            .await
    }

    /// A webhook source, waited for like a token (see `authenticate`).
    pub async fn find_source(&self, id: &str) -> Option<crate::raft::types::IngestSource> {
        self.find_source_where(id, |_| true).await
    }

    /// A webhook source that satisfies `accept` (say, a secret just
    /// rotated), waited for like a token.
    pub async fn find_source_where(
        &self,
        id: &str,
        accept: impl Fn(&crate::raft::types::IngestSource) -> bool,
    ) -> Option<crate::raft::types::IngestSource> {
        self.await_metadata(|m| m.sources.get(id).filter(|s| accept(s)).cloned())
            .await
    }

    /// Waits until this node's metadata holds topic `id` at `version` or
    /// later (`None`: until the topic is gone). Topic changes are answered
    /// by the metadata leader; waiting here means the next publish through
    /// this node already checks the new schema (read your own writes).
    /// Returns false if the change has not arrived within
    /// `METADATA_PROPAGATION_WAIT`; it still arrives later.
    pub async fn await_topic_applied(&self, id: TopicId, version: Option<u64>) -> bool {
        self.await_metadata(|m| match (m.topics.get(&id), version) {
            (Some(topic), Some(version)) => (topic.version >= version).then_some(()),
            (None, None) => Some(()),
            _ => None,
        })
        .await
        .is_some()
    }

    /// `lookup` on this node's metadata, tried again as metadata arrives
    /// until it finds something or `METADATA_PROPAGATION_WAIT` passes.
    async fn await_metadata<T>(&self, lookup: impl Fn(&MetaState) -> Option<T>) -> Option<T> {
        if let Some(found) = self.with_metadata(&lookup).flatten() {
            return Some(found);
        }
        let meta = self.meta_group()?;
        let mut changes = meta.state.subscribe();
        let deadline = tokio::time::Instant::now() + METADATA_PROPAGATION_WAIT;
        while let Ok(Ok(())) = tokio::time::timeout_at(deadline, changes.changed()).await {
            if let Some(found) = self.with_metadata(&lookup).flatten() {
                return Some(found);
            }
        }
        None
    }

    /// See [`WritePath::write`].
    pub async fn write(
        &self,
        group: &Group,
        command: Command,
    ) -> Result<CommandResponse, WriteError> {
        self.writes.write(group, command).await
    }

    /// See [`WritePath::write_partition`].
    pub async fn write_partition(
        &self,
        group: &Group,
        command: PartitionCommand,
    ) -> Result<CommandResponse, WriteError> {
        self.writes.write_partition(group, command).await
    }

    pub fn next_round_robin(&self) -> u64 {
        self.round_robin.fetch_add(1, Ordering::Relaxed)
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }

    /// Starts hosting group `id`. With `initialize`, a group with nothing
    /// stored writes its first membership, `replicas` (see
    /// `initialize_group`); without, it waits for its leader's log.
    async fn start_group(
        &self,
        id: GroupId,
        replicas: &BTreeMap<NodeId, String>,
        preferred_leader: bool,
        initialize: bool,
    ) -> Result<Arc<Group>, NodeError> {
        if let Some(group) = self.group(id) {
            return Ok(group);
        }
        let sm = GroupStateMachine::open(self.storage.clone(), id)
            .map_err(|source| NodeError::StateMachine { group: id, source })?;
        let state = sm.shared();
        let log_store = self.storage.log_store(id);
        let network = NetworkFactory::new(
            id,
            self.pool.clone(),
            Duration::from_millis(self.config.raft.election_timeout_max_ms),
        );
        let cautious = self.rejoin.on_group_started(id, replicas, preferred_leader);
        let raft = Raft::new(self.id(), self.raft_config.clone(), network, log_store, sm)
            .await
            .map_err(|e| NodeError::Raft {
                group: id,
                reason: e.to_string(),
            })?;
        if cautious {
            raft.runtime_config().elect(false);
        }
        let initialized = raft.is_initialized().await.map_err(|e| NodeError::Raft {
            group: id,
            reason: e.to_string(),
        })?;
        if !initialized && !cautious && initialize {
            initialize_group(&raft, id, replicas, preferred_leader).await;
        }
        let group = Arc::new(Group::new(id, raft, state));
        self.groups.insert(group.clone());
        // A partition replica that installs a snapshot, or had not finished
        // fetching the messages below one when it stopped, fetches them.
        self.backfills.start(&group);
        tracing::info!(group = id.0, "raft group started");
        Ok(group)
    }

    async fn stop_group(&self, id: GroupId, delete_data: bool) {
        let group = self.groups.remove(id);
        if let Some(group) = &group {
            // Ended before the data may be deleted: it writes to the log.
            group.backfill.stop().await;
        }
        if let Some(group) = group
            && let Err(e) = group.raft.shutdown().await
        {
            tracing::warn!(group = id.0, error = %e, "raft group shutdown failed");
        }
        if delete_data {
            // delete_group fsyncs: keep it off the tokio workers.
            let storage = self.storage.clone();
            match tokio::task::spawn_blocking(move || storage.delete_group(id)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(group = id.0, error = %e, "deleting a removed group's data failed")
                }
                Err(e) => {
                    tracing::error!(group = id.0, error = %e, "deleting a removed group's data panicked")
                }
            }
        }
    }

    /// The partition groups the metadata places on this node: those it is
    /// a replica of, or that are moving onto it.
    fn desired_partitions(&self, meta: &MetaState) -> BTreeMap<GroupId, DesiredGroup> {
        let mut desired = BTreeMap::new();
        for topic in meta.topics.values() {
            for (p, replicas) in topic.partitions.iter().enumerate() {
                let group = topic.group_id(p as u32);
                let target = meta.moves.get(&group);
                let replica = replicas.contains(&self.id());
                if !replica && !target.is_some_and(|t| t.contains(&self.id())) {
                    continue;
                }
                let mut members = replicas.clone();
                for node in target.into_iter().flatten() {
                    if !members.contains(node) {
                        members.push(*node);
                    }
                }
                desired.insert(
                    group,
                    DesiredGroup {
                        preferred: replicas.first() == Some(&self.id()),
                        // Only the replicas a topic was created with write
                        // a partition's first membership; everyone else
                        // joins from the leader's log.
                        initialize: replica && !meta.moved.contains(&group),
                        replicas: members,
                    },
                );
            }
        }
        desired
    }

    /// Whether this node may write group `id`'s first membership (see
    /// `DesiredGroup::initialize`; a joining node never writes the
    /// metadata group's).
    fn may_initialize(&self, id: GroupId) -> bool {
        if id == GroupId::META {
            return !self.config.join;
        }
        self.desired_partitions(&self.metadata())
            .get(&id)
            .is_some_and(|wanted| wanted.initialize)
    }

    /// Every node of the cluster → its peer address: the metadata group's
    /// members (voters and learners), or, before this node has seen a
    /// membership, the configured `peers`.
    pub fn cluster_nodes(&self) -> BTreeMap<NodeId, String> {
        if let Some(meta) = self.meta_group() {
            let nodes: BTreeMap<NodeId, String> = meta.with_metrics(|m| {
                m.membership_config
                    .membership()
                    .nodes()
                    .map(|(id, node)| (*id, node.addr.clone()))
                    .collect()
            });
            if !nodes.is_empty() {
                return nodes;
            }
        }
        self.config.peers.clone()
    }

    /// The voters new replicas may be placed on: not being removed.
    pub fn placeable_nodes(&self) -> Vec<NodeId> {
        let draining = self
            .with_metadata(|meta| meta.draining.clone())
            .unwrap_or_default();
        self.voters()
            .into_iter()
            .filter(|node| !draining.contains(node))
            .collect()
    }

    /// The metadata group's voters, sorted (before this node has seen a
    /// membership: the configured `peers`).
    pub fn voters(&self) -> Vec<NodeId> {
        if let Some(meta) = self.meta_group() {
            let voters = meta.voters();
            if !voters.is_empty() {
                return voters.into_iter().collect();
            }
        }
        self.config.peers.keys().copied().collect()
    }

    /// Starts and stops partition groups whenever the metadata changes.
    async fn reconcile_loop(self: Arc<Self>) {
        let Some(meta) = self.meta_group() else {
            return;
        };
        let mut changes = meta.state.subscribe();
        let mut shutdown = self.shutdown_signal();
        loop {
            self.reconcile().await;
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn reconcile(&self) {
        let meta = self.metadata();
        let desired = self.desired_partitions(&meta);
        let addrs = self.cluster_nodes();
        for (group_id, wanted) in &desired {
            if self.group(*group_id).is_some() {
                continue;
            }
            if crate::failpoints::hit(
                self.storage.failpoints(),
                crate::failpoints::Failpoint::GroupStart,
            )
            .await
            .is_err()
            {
                continue;
            }
            let members: BTreeMap<NodeId, String> = wanted
                .replicas
                .iter()
                .filter_map(|id| addrs.get(id).map(|addr| (*id, addr.clone())))
                .collect();
            if let Err(e) = self
                .start_group(*group_id, &members, wanted.preferred, wanted.initialize)
                .await
            {
                tracing::error!(group = group_id.0, error = %e, "starting partition group failed");
            }
        }
        let stale: Vec<GroupId> = self
            .groups
            .ids()
            .into_iter()
            .filter(|id| *id != GroupId::META && !desired.contains_key(id))
            .collect();
        for id in stale {
            tracing::info!(
                group = id.0,
                "partition removed from this node; deleting its data"
            );
            self.stop_group(id, true).await;
        }
        self.delete_orphaned_groups(&meta).await;
    }

    /// Deletes the data of partitions whose topic was deleted while this
    /// node was down: they are on disk but were never started.
    async fn delete_orphaned_groups(&self, meta: &MetaState) {
        let storage = self.storage.clone();
        let on_disk = match tokio::task::spawn_blocking(move || storage.groups_on_disk()).await {
            Ok(Ok(groups)) => groups,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "listing groups on disk failed");
                return;
            }
            Err(_) => return,
        };
        for id in on_disk {
            if self.group(id).is_none() && meta.group_topic_deleted(id) {
                tracing::info!(
                    group = id.0,
                    "deleting data of a partition whose topic was deleted"
                );
                self.stop_group(id, true).await;
            }
        }
    }

    pub fn quiescer(&self) -> Option<&Arc<Quiescer>> {
        self.quiescer.as_ref()
    }

    /// Every heartbeat interval: quiesce or wake local groups, then send
    /// each peer one node heartbeat naming the idle groups this node leads,
    /// and measure its clock from the answer (`clock.rs`). A peer whose
    /// previous heartbeat is still in flight is skipped, so a dead peer
    /// costs one pending call, not a growing pile.
    async fn node_heartbeat_loop(self: Arc<Self>) {
        let round = Duration::from_millis(self.config.raft.heartbeat_ms.max(1));
        let mut ticker = tokio::time::interval(round);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = self.shutdown_signal();
        let mut sending: HashMap<NodeId, tokio::task::JoinHandle<()>> = HashMap::new();
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => return,
            }
            self.release_caught_up_groups();
            self.note_rejoined();
            self.learn_cluster_id();
            let incarnation = self.identity.lock().incarnation;
            // Group ids go on the wire as the bare numbers they are.
            let terms_wanted: Vec<u64> = self
                .rejoin
                .groups_learning_terms()
                .into_iter()
                .map(|group| group.0)
                .collect();
            let quiesced: Vec<u64> = self
                .quiescer
                .as_ref()
                .map(|quiescer| quiescer.round(&self.groups()))
                .unwrap_or_default()
                .into_iter()
                .map(|group| group.0)
                .collect();
            for (peer, addr) in &self.cluster_nodes() {
                if *peer == self.id() || sending.get(peer).is_some_and(|h| !h.is_finished()) {
                    continue;
                }
                let beat = raftstream_proto::v1::NodeHeartbeatRequest {
                    from: self.id().0,
                    quiesced_groups: quiesced.clone(),
                    incarnation,
                    terms_wanted: terms_wanted.clone(),
                };
                let node = self.clone();
                let addr = addr.clone();
                let peer_id = *peer;
                let timeout = Duration::from_millis(self.config.raft.election_timeout_min_ms);
                sending.insert(
                    *peer,
                    tokio::spawn(async move {
                        let sent_ms = node.time.now_ms();
                        let pool = &node.pool;
                        match crate::raft::quiesce::send_heartbeat(pool, &addr, beat, timeout).await
                        {
                            Ok(reply) => {
                                node.clock.record(peer_id, sent_ms, reply.now_ms, node.time.now_ms());
                                node.rejoin.on_peer(peer_id, reply.cluster_formed);
                                node.rejoin.on_terms(
                                    peer_id,
                                    reply.group_terms.iter().map(|(group, term)| (GroupId(*group), *term)),
                                );
                            }
                            Err(e) => {
                                tracing::debug!(peer = peer_id.0, error = %e, "node heartbeat failed");
                            }
                        }
                    }),
                );
            }
        }
    }

    /// Records the cluster id in the data directory once the metadata holds
    /// the cluster secret, and shows it to peers from then on. A data
    /// directory whose metadata names another cluster than its identity
    /// was mixed up with another cluster's: the node stops.
    fn learn_cluster_id(&self) {
        let Some(secret) = self.with_metadata(|m| m.cluster_secret).flatten() else {
            return;
        };
        let learned = crate::identity::cluster_id(&secret);
        let mut identity = self.identity.lock();
        match identity.cluster_id.as_deref() {
            Some(known) if known == learned => {}
            Some(known) => {
                let reason = format!(
                    "the data directory's identity names cluster {known}, its metadata cluster \
                     {learned}"
                );
                drop(identity);
                self.storage.mark_failed(&reason);
            }
            None => {
                identity.cluster_id = Some(learned.clone());
                match identity.store(&self.config.data_dir) {
                    Ok(()) => self.pool.cluster().set(&learned),
                    Err(e) => {
                        identity.cluster_id = None;
                        drop(identity);
                        self.storage.mark_failed(&e.to_string());
                    }
                }
            }
        }
    }

    /// Clears `rejoining` in the data directory's identity once no group is
    /// held back any more, so a later restart starts normally.
    fn note_rejoined(&self) {
        let mut identity = self.identity.lock();
        if !identity.rejoining || self.rejoin.is_active() {
            return;
        }
        identity.rejoining = false;
        if let Err(e) = identity.store(&self.config.data_dir) {
            identity.rejoining = true;
            drop(identity);
            self.storage.mark_failed(&e.to_string());
        }
    }

    /// A leader whose follower lost its log finds entries it counted as
    /// replicated there gone. openraft treats that as a bug (a debug
    /// assertion) unless told once per follower that it is expected; the
    /// entries were committed by a majority without it, and the follower
    /// does not vote or count until it caught up again (`rejoin.rs`).
    /// Done before the heartbeat is answered: the wiped node takes no
    /// append until enough peers answered it (`rejoin.rs`).
    async fn allow_log_reversion_of(&self, peer: NodeId) {
        let led: Vec<Arc<Group>> = self
            .groups
            .all()
            .into_iter()
            .filter(|group| group.is_leader(self.id()))
            .collect();
        for group in led {
            // Refused when this node no longer leads or the peer is no
            // replica of the group: then there is nothing to allow.
            if let Ok(Err(e)) = group.raft.trigger().allow_next_revert(&peer, true).await {
                tracing::debug!(
                    group = group.id.0,
                    peer = peer.0,
                    "log reversion not allowed: {e}"
                );
            }
        }
    }

    /// Lets the groups that caught up after an empty start vote again.
    fn release_caught_up_groups(&self) {
        let applied = |id: GroupId| {
            let group = self.group(id)?;
            Some(group.with_metrics(|m| m.last_applied.map_or(0, |l| l.index)))
        };
        for released in self.rejoin.release_caught_up(applied) {
            let Some(group) = self.group(released.group) else {
                continue;
            };
            group.raft.runtime_config().elect(true);
            tracing::debug!(group = group.id.0, "may vote again after an empty start");
            if let Some(members) = released.initialize
                && self.may_initialize(released.group)
            {
                let raft = group.raft.clone();
                tokio::spawn(async move {
                    initialize_group(&raft, released.group, &members, released.preferred).await;
                });
            }
        }
    }

    /// Periodic upkeep of every local partition: retention (leaders advance
    /// the log start, every replica then drops the Raft log below it, see
    /// ARCHITECTURE.md) and preferred-leader balancing.
    async fn retention_loop(self: Arc<Self>) {
        let mut shutdown = self.shutdown_signal();
        let interval = Duration::from_millis(self.config.limits.retention_interval_ms.max(100));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
            let meta = self.metadata();
            for topic in meta.topics.values() {
                for (p, replicas) in topic.partitions.iter().enumerate() {
                    if let Some(group) = self.group(topic.group_id(p as u32)) {
                        self.enforce_retention(topic, &group).await;
                        self.hand_back_to_preferred_leader(replicas, &group).await;
                    }
                }
            }
        }
    }

    async fn enforce_retention(&self, topic: &Topic, group: &Group) {
        let now_ms = self.time.now_ms();
        let metrics = group.raft.metrics().borrow_watched().clone();
        let leads = metrics.current_leader == Some(self.id());
        // Only the leader proposes, and only with a clock a majority of the
        // replicas agrees with (`clock.rs`); size needs no clock.
        let retention_ms = topic.retention.retention_ms.filter(|_| {
            let replicas: Vec<NodeId> =
                metrics.membership_config.membership().voter_ids().collect();
            leads && self.clock.check(self.id(), &replicas, now_ms).is_ok()
        });
        let view = group.state.read(|inner| match &inner.data {
            GroupData::Partition(p) => Some((
                p.retention_point(now_ms, retention_ms, topic.retention.retention_bytes),
                p.log_start_offset,
                p.forgotten_log_index,
                p.purgeable_log_index,
            )),
            GroupData::Meta(_) => None,
        });
        let Some((point, log_start, forgotten, purgeable)) = view else {
            return;
        };
        if leads {
            if point > log_start {
                let command = PartitionCommand::AdvanceLogStart { offset: point };
                if let Err(e) = self.write_retention(group, command).await {
                    tracing::debug!(group = group.id.0, error = %e, "retention advance not written");
                }
            }
            // Every replica may drop the log only as far as every replica
            // has it: then no replica, whoever leads later, needs a
            // snapshot to catch up, and a snapshot (which spans entries
            // without carrying their messages) never leaves a replica
            // without live messages.
            let mut safe = forgotten;
            if let Some(replication) = &metrics.replication {
                for matched in replication.values() {
                    safe = safe.min(matched.as_ref().map_or(0, |id| id.index));
                }
            }
            if safe > purgeable {
                let command = PartitionCommand::AllowLogPurge { upto: safe };
                if let Err(e) = self.write_retention(group, command).await {
                    tracing::debug!(group = group.id.0, error = %e, "log purge allowance not written");
                }
            }
        }
        // Entries a backfill put below openraft's log are purged only here.
        crate::backfill::drop_forgotten(group);
        if purgeable == 0
            || metrics
                .purged
                .as_ref()
                .is_some_and(|p| p.index >= purgeable)
        {
            return;
        }
        // openraft purges only what a snapshot covers; the snapshot is small
        // (index and counters), so taking one per purge is cheap.
        if metrics
            .snapshot
            .as_ref()
            .is_some_and(|s| s.index >= purgeable)
        {
            let _ = group.raft.trigger().purge_log(purgeable).await;
        } else {
            let _ = group.raft.trigger().snapshot().await;
        }
    }

    async fn write_retention(
        &self,
        group: &Group,
        command: PartitionCommand,
    ) -> Result<(), String> {
        // A quiesced leader has let its lease lapse and openraft refuses
        // writes without one: without this, an idle partition, the usual
        // one to have expired messages, never advanced its log start.
        if let Some(quiescer) = self.quiescer() {
            quiescer.wake_for_write(group).await;
        }
        let write = group
            .raft
            .client_write(crate::raft::types::Command::Partition(command));
        match tokio::time::timeout(
            Duration::from_millis(self.config.limits.write_timeout_ms),
            write,
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }

    /// Leaders of a new group go to whichever replica wins the first election,
    /// and after a failover to a survivor. Like Kafka's preferred-leader
    /// election, a leader hands leadership back to the partition's first
    /// replica once that replica has every entry, so load stays spread.
    /// It does so only when two rounds of the retention loop in the same
    /// term have found the replica caught up: a hand-back right after a
    /// failover would make clients that are still catching up with the first
    /// leader change go through a second one.
    async fn hand_back_to_preferred_leader(&self, replicas: &[NodeId], group: &Group) {
        let Some(&preferred) = replicas.first() else {
            return;
        };
        if preferred == self.id() {
            return;
        }
        let Some((term, caught_up)) = group.with_metrics(|m| {
            let caught_up = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&preferred))
                .is_some_and(|matched| matched.as_ref().map(|id| id.index) == m.last_log_index);
            (m.current_leader == Some(self.id())).then_some((m.current_term, caught_up))
        }) else {
            return;
        };
        if group.preferred_caught_up_again(caught_up, term) {
            tracing::debug!(
                group = group.id.0,
                to = preferred.0,
                "handing leadership to the preferred replica"
            );
            if let Some(quiescer) = &self.quiescer {
                quiescer.hold_awake(group);
            }
            let _ = group.raft.trigger().transfer_leader(preferred).await;
        }
    }

    /// Creates the cluster's first admin token, once: the metadata leader
    /// proposes it until the metadata holds any token. A generated secret is
    /// never logged: it is written (mode 0600) to `admin-token.new` in the
    /// data directory before it is proposed, so a token nobody can read is
    /// never created, and renamed to `admin-token` once the token is in the
    /// metadata, so whoever reads `admin-token` can use it. Every retry
    /// proposes the same secret, so the file holds whichever attempt
    /// commits.
    async fn bootstrap_admin_token(self: Arc<Self>) {
        let Some(meta) = self.meta_group() else {
            return;
        };
        let configured = self.config.admin_token.clone();
        let secret = configured
            .clone()
            .unwrap_or_else(crate::auth::generate_secret);
        let token_file = self.config.data_dir.join("admin-token");
        let pending_file = self.config.data_dir.join("admin-token.new");
        let mut written = configured.is_some();
        let mut changes = meta.state.subscribe();
        let mut shutdown = self.shutdown_signal();
        while self.metadata().next_token_id == 0 || self.metadata().cluster_secret.is_none() {
            if meta.leader().is_some_and(|(leader, _)| leader == self.id())
                && self.metadata().cluster_secret.is_none()
            {
                let mut secret = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rng(), &mut secret);
                let command =
                    crate::raft::types::Command::Meta(MetaCommand::SetClusterSecret { secret });
                if let Err(e) = self.write(&meta, command).await {
                    tracing::warn!(error = %e, "setting the cluster secret failed; retrying");
                }
                continue;
            }
            if self.metadata().next_token_id == 0
                && meta.leader().is_some_and(|(leader, _)| leader == self.id())
            {
                if !written {
                    match write_secret_file(&pending_file, &secret).await {
                        Ok(()) => written = true,
                        Err(e) => tracing::error!(
                            path = %pending_file.display(),
                            error = %e,
                            "writing the bootstrap admin token failed; retrying (or set \
                             RAFTSTREAM_ADMIN_TOKEN)"
                        ),
                    }
                }
                // A secret that is not in the file yet is not proposed: the
                // loop waits and writes again.
                if written {
                    let command = MetaCommand::CreateToken {
                        name: "bootstrap-admin".into(),
                        scopes: vec![Scope::Admin],
                        topics: vec![],
                        hash: crate::auth::hash_secret(&secret),
                        now_ms: self.time.now_ms(),
                        bootstrap: true,
                    };
                    match self.write_token(command).await {
                        Ok(_) | Err(WriteError::Rejected(MetaRejection::AlreadyBootstrapped)) => {
                            continue;
                        }
                        Err(e) => tracing::warn!(
                            error = %e,
                            "creating the bootstrap admin token failed; retrying"
                        ),
                    }
                }
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.changed() => return,
            }
        }
        if written && configured.is_none() {
            // Another node may have led when the token was created (or this
            // node's attempt lost the race): its secret is in that node's
            // file, and this one's would not authenticate.
            let ours = self
                .with_metadata(|m| {
                    m.tokens
                        .values()
                        .any(|t| crate::auth::secret_matches(&secret, &t.hash))
                })
                .unwrap_or(false);
            let kept = if ours {
                tokio::fs::rename(&pending_file, &token_file).await
            } else {
                tokio::fs::remove_file(&pending_file).await
            };
            match (ours, kept) {
                (true, Ok(())) => tracing::info!(
                    path = %token_file.display(),
                    "created the bootstrap admin token; its secret is in this file"
                ),
                (true, Err(e)) => tracing::error!(
                    path = %pending_file.display(),
                    error = %e,
                    "created the bootstrap admin token, but renaming its file failed: \
                     its secret is in this file"
                ),
                (false, _) => tracing::info!(
                    "another node created the bootstrap admin token: its secret is in that \
                     node's admin-token file"
                ),
            }
        }
    }

    /// Tokens stored before tokens kept topic ids hold topic names. The
    /// metadata leader proposes `ResolveTokenTopicNames` whenever its
    /// metadata holds any, so every replica turns them into ids at one log
    /// index; converting at load instead would resolve each replica against
    /// whatever it had applied, and replicas could disagree.
    async fn resolve_token_topic_names(self: Arc<Self>) {
        let Some(meta) = self.meta_group() else {
            return;
        };
        let mut changes = meta.state.subscribe();
        let mut shutdown = self.shutdown_signal();
        loop {
            let is_leader = meta.leader().is_some_and(|(leader, _)| leader == self.id());
            if is_leader && self.with_metadata(MetaState::has_token_topic_names) == Some(true) {
                let command =
                    crate::raft::types::Command::Meta(MetaCommand::ResolveTokenTopicNames);
                if let Err(e) = self.write(&meta, command).await {
                    tracing::warn!(error = %e, "resolving token topic names failed; retrying");
                }
            }
            // Woken by every metadata change: an older log entry replayed
            // after start can still create a token with topic names.
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Why this node stopped serving on its own: its storage failed.
    pub fn failure(&self) -> Option<String> {
        self.storage.failure().borrow().clone()
    }

    /// Whether this node can serve writes: its storage has not failed and
    /// it knows a metadata leader, which it answers with. `/readyz` and the
    /// gRPC health service both report this.
    pub fn readiness(&self) -> Result<NodeId, NotReady> {
        if let Some(reason) = self.failure() {
            return Err(NotReady::StorageFailed(reason));
        }
        self.meta_group()
            .and_then(|g| g.leader())
            .map(|(leader, _)| leader)
            .ok_or(NotReady::NoMetadataLeader)
    }

    /// Returns once this node's storage has failed, with the reason.
    pub async fn failed(&self) -> String {
        let mut failure = self.storage.failure();
        let reason = failure
            .wait_for(Option::is_some)
            .await
            .map(|reason| reason.clone().unwrap_or_default());
        match reason {
            Ok(reason) => reason,
            // The storage, and so the node, is gone: it never fails now.
            Err(_) => std::future::pending().await,
        }
    }

    /// A failed write or fsync means the disk is no longer trusted: the
    /// node stops serving at once instead of staying up with frozen groups.
    /// `/readyz` answers 503 from that moment; `raftstream-node` then exits
    /// non-zero so a supervisor restarts it, and recovery replays what was
    /// fsynced.
    async fn stop_on_storage_failure(self: Arc<Self>) {
        let mut shutdown = self.shutdown_signal();
        let reason = tokio::select! {
            // A failure that stops the node is logged whoever stops it.
            biased;
            reason = self.failed() => reason,
            _ = shutdown.changed() => return,
        };
        tracing::error!(
            reason = %reason,
            "storage failed; this node stops serving (restart it once the disk is healthy)"
        );
        self.shutdown().await;
    }

    /// Measures the free disk space every second, off the async workers.
    async fn disk_space_loop(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = self.shutdown_signal();
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => return,
            }
            let node = self.clone();
            let _ = tokio::task::spawn_blocking(move || node.disk.check()).await;
        }
    }

    /// Stops the node: first hands off the leadership of every group it
    /// leads (`hand_off_leadership`), unless its storage failed, then stops
    /// every group.
    pub async fn shutdown(&self) {
        if self.failure().is_none() {
            let _ = self.hand_off_leadership(LEADERSHIP_HANDOFF_TIMEOUT).await;
        }
        self.shutdown_tx.send_replace(true);
        self.groups.close();
        for id in self.groups.ids() {
            self.stop_group(id, false).await;
        }
    }
}

impl Node {
    /// Asks every group this node leads to hand leadership to the voter with
    /// the highest matched log index, then waits, polling the groups'
    /// metrics, until none is led here any more or `timeout` passed. A
    /// stopping leader's groups then elect within one round trip instead of
    /// an election timeout. The node keeps serving meanwhile: writes that
    /// reach it after the handoff are forwarded to the new leader. Returns
    /// whether this node leads no group any more.
    pub async fn hand_off_leadership(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut handed_off = 0usize;
        for group in self.groups.all() {
            let Some(target) = self.handoff_target(&group) else {
                continue;
            };
            if let Some(quiescer) = &self.quiescer {
                quiescer.hold_awake(&group);
            }
            tracing::debug!(
                group = group.id.0,
                to = target.0,
                "handing off leadership before stopping"
            );
            if let Err(e) = group.raft.trigger().transfer_leader(target).await {
                tracing::warn!(group = group.id.0, error = %e, "leadership handoff failed");
            }
            handed_off += 1;
        }
        if handed_off == 0 {
            return self.groups_led_here() == 0;
        }
        let mut poll = tokio::time::interval(LEADERSHIP_HANDOFF_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let still_led = self.groups_led_here();
            if still_led == 0 {
                tracing::info!(groups = handed_off, "leadership handed off before stopping");
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    groups = still_led,
                    "still leading groups when the leadership handoff timed out; stopping anyway"
                );
                return false;
            }
            poll.tick().await;
        }
    }

    /// The voter, other than this node, with the highest matched log index
    /// of a group this node leads; `None` if this node does not lead it or
    /// no other voter has matched any entry yet.
    fn handoff_target(&self, group: &Group) -> Option<NodeId> {
        group.with_metrics(|m| {
            if m.current_leader != Some(self.id()) {
                return None;
            }
            let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
            m.replication
                .as_ref()?
                .iter()
                .filter(|(id, _)| **id != self.id() && voters.contains(id))
                .filter_map(|(id, matched)| matched.as_ref().map(|log_id| (log_id.index, *id)))
                .max()
                .map(|(_, id)| id)
        })
    }

    fn groups_led_here(&self) -> usize {
        self.groups
            .all()
            .iter()
            .filter(|group| group.is_leader(self.id()))
            .count()
    }
}

/// How long a stopping node waits for its groups' leadership to move.
pub const LEADERSHIP_HANDOFF_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a stopping node checks whether its leadership moved.
const LEADERSHIP_HANDOFF_POLL: Duration = Duration::from_millis(20);

impl TransportHost for Node {
    fn hosted_groups(&self) -> &HostedGroups {
        &self.groups
    }

    fn rejoin(&self) -> &Rejoin {
        &self.rejoin
    }

    fn quiescer(&self) -> Option<&Arc<Quiescer>> {
        self.quiescer.as_ref()
    }

    fn now_ms(&self) -> i64 {
        self.time.now_ms()
    }

    /// Notes the incarnation a peer's node heartbeat shows; a new one means
    /// the peer started on an empty data directory since its last heartbeat.
    async fn note_peer_incarnation(&self, peer: NodeId, incarnation: u64) {
        if incarnation == 0 {
            return;
        }
        let before = self.peer_incarnations.lock().insert(peer, incarnation);
        if before.is_some_and(|before| before != incarnation) {
            tracing::warn!(
                peer = peer.0,
                "node {peer} restarted on an empty data directory: it votes again once caught up"
            );
            self.allow_log_reversion_of(peer).await;
        }
    }
}

async fn write_secret_file(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path).await?;
    file.write_all(format!("{secret}\n").as_bytes()).await?;
    file.sync_all().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;
    use crate::config::MAX_RPC_BYTES;
    use crate::config::REQUEST_FRAMING_BYTES;

    #[test]
    fn an_append_of_the_largest_entries_fits_the_peer_message_limit() {
        for max_batch_bytes in [1 << 10, 1 << 20, 4 << 20, 8 << 20, 64 << 20, 256 << 20] {
            let limits = Limits {
                max_batch_bytes,
                ..Limits::default()
            };
            let entries = entries_per_append(&limits);
            assert!((1..=300).contains(&entries), "{entries}");
            let largest_append = entries as usize * (max_batch_bytes + REQUEST_FRAMING_BYTES);
            assert!(
                entries == 1 || largest_append <= MAX_RPC_BYTES,
                "{entries} entries of {max_batch_bytes} bytes"
            );
        }
        // Small batches keep openraft's default.
        let small = Limits {
            max_batch_bytes: 1 << 10,
            ..Limits::default()
        };
        assert_eq!(entries_per_append(&small), 300);
    }
}
