//! A real cluster on loopback for integration tests: in-process nodes,
//! ephemeral ports, temp dirs, real tonic networking between them.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use raftstream_client::pb;
use raftstream_node::config::ClientTls;
use raftstream_node::config::Limits;
use raftstream_node::config::NodeConfig;
use raftstream_node::config::PeerTls;
use raftstream_node::config::RaftTimings;
use raftstream_node::failpoints::Failpoints;
use raftstream_node::link_faults::LinkFaults;
use raftstream_node::model::GroupId;
use raftstream_node::model::NodeId;
use raftstream_node::server::Listeners;
use raftstream_node::server::RunningNode;
use raftstream_node::tls::DevCerts;
use raftstream_node::tls::write_dev_certs;
use tokio::net::TcpListener;

/// The bootstrap admin token of every test cluster.
pub const ADMIN_TOKEN: &str = "rst_test-admin-token";

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub configs: BTreeMap<u64, NodeConfig>,
    pub nodes: BTreeMap<u64, RunningNode>,
    /// The certificates of a cluster on TLS (`start_tls`).
    pub certs: Option<DevCerts>,
    /// The links between the nodes: a test cuts, delays or makes them lose
    /// messages here. Seeded by `RAFTSTREAM_TEST_SEED` (default 0), which a
    /// failure prints, so a lossy run can be replayed.
    pub links: Arc<LinkFaults>,
    /// Each node's own failpoints (`failpoints.rs`), kept across its
    /// restarts; seeded from `RAFTSTREAM_TEST_SEED` and the node id.
    pub failpoints: BTreeMap<u64, Arc<Failpoints>>,
}

/// The seed of every test cluster's lossy links.
pub fn test_seed() -> u64 {
    std::env::var("RAFTSTREAM_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Polls `check` until it returns `Some`, failing the test with `what`
/// after `timeout`. Tests wait for conditions, never for time.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn topic(name: &str) -> Option<pb::TopicRef> {
    Some(pb::TopicRef {
        topic: Some(pb::topic_ref::Topic::Name(name.into())),
    })
}

pub fn record(value: &str) -> Option<pb::Record> {
    Some(pb::Record {
        value: value.as_bytes().to_vec().into(),
        ..Default::default()
    })
}

/// A publish of the text `value` to topic `name`, the partition left to
/// the node.
pub fn publish_request(name: &str, value: &str) -> pb::PublishRequest {
    pb::PublishRequest {
        topic: topic(name),
        record: record(value),
    }
}

/// The cluster status as the node behind `client` reports it; `None` while
/// it cannot answer.
pub async fn cluster_status(
    client: &mut raftstream_client::Grpc,
) -> Option<pb::ClusterStatusResponse> {
    Some(
        client
            .cluster_status(pb::ClusterStatusRequest {})
            .await
            .ok()?
            .into_inner(),
    )
}

/// Polls the cluster status through `client` until `check` finds in it
/// what it waits for, failing the test with `what` after `timeout`.
pub async fn eventually_in_status<T>(
    client: &raftstream_client::Grpc,
    what: &str,
    timeout: Duration,
    check: impl Fn(pb::ClusterStatusResponse) -> Option<T>,
) -> T {
    eventually(what, timeout, || {
        let mut client = client.clone();
        let check = &check;
        async move { check(cluster_status(&mut client).await?) }
    })
    .await
}

/// Reads with `request` through `client` until `check` finds in the answer
/// what it waits for, failing the test with `what` after `timeout`.
pub async fn eventually_read<T>(
    client: &raftstream_client::Grpc,
    what: &str,
    timeout: Duration,
    request: pb::ConsumeRequest,
    check: impl Fn(pb::ConsumeResponse) -> Option<T>,
) -> T {
    eventually(what, timeout, || {
        let mut client = client.clone();
        let (request, check) = (request.clone(), &check);
        async move { check(client.consume(request).await.ok()?.into_inner()) }
    })
    .await
}

/// A figure of the partition group `group_id` as `node` holds it (0 for a
/// group that is not a partition); `None` while the node does not host it.
pub fn partition_figure(
    node: &raftstream_node::node::Node,
    group_id: GroupId,
    figure: impl Fn(&raftstream_node::state_machine::partition::PartitionState) -> u64,
) -> Option<u64> {
    let group = node.group(group_id)?;
    Some(group.state.read(|inner| match &inner.data {
        raftstream_node::state_machine::GroupData::Partition(p) => figure(p),
        _ => 0,
    }))
}

/// Publishes a batch and returns each record's result, in order.
pub async fn publish_batch(
    client: &mut raftstream_client::Grpc,
    batch: pb::PublishBatchRequest,
) -> Vec<pb::PublishResult> {
    client
        .publish_batch(batch)
        .await
        .unwrap()
        .into_inner()
        .results
}

/// Publishes `value` until a node acknowledges it, for a publish that may
/// meet an election; an attempt that failed was never acknowledged.
pub async fn publish_until_acked(
    client: &raftstream_client::Grpc,
    name: &str,
    value: &str,
    timeout: Duration,
) -> pb::PublishResponse {
    eventually("an acknowledged publish", timeout, || {
        let mut client = client.clone();
        async move {
            client
                .publish(publish_request(name, value))
                .await
                .ok()
                .map(tonic::Response::into_inner)
        }
    })
    .await
}

pub fn at_offset(offset: u64) -> Option<pb::Position> {
    Some(pb::Position {
        position: Some(pb::position::Position::Offset(offset)),
    })
}

/// A read of up to `max_messages` from one partition that answers at once
/// with what is there: no long poll, no byte budget.
pub fn consume_now(
    name: &str,
    partition: u32,
    position: Option<pb::Position>,
    max_messages: u32,
) -> pb::ConsumeRequest {
    pb::ConsumeRequest {
        topic: topic(name),
        partition,
        position,
        max_messages,
        wait_ms: 0,
        max_bytes: 0,
    }
}

/// Checks that a gRPC call was refused with `code` and a message that names
/// `named` (the limit, field or reason the caller is told of).
#[track_caller]
pub fn assert_refused(refused: &tonic::Status, code: tonic::Code, named: &str) {
    assert_eq!(refused.code(), code, "{refused:?}");
    assert!(refused.message().contains(named), "{refused:?}");
}

/// Asserts that a publish was not acknowledged because its outcome is
/// unknown (a timeout) or no leader could take it: never a plain failure.
#[track_caller]
pub fn assert_not_acknowledged(refused: &tonic::Status) {
    assert!(
        matches!(
            refused.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Unavailable
        ),
        "{refused:?}"
    );
}

/// The sum of a per-node figure (`replicas`, `leaders`, ...) of a cluster
/// shown as JSON (`GET /api/cluster`, `raftstream cluster status --json`).
pub fn node_total(shown: &serde_json::Value, figure: &str) -> u64 {
    shown["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n[figure].as_u64().unwrap())
        .sum()
}

/// Checks a cluster shown as JSON: `voters` nodes, every one a voter and
/// none draining, `replicas` replicas in all, spread as `spread` says, and
/// no moves under way.
#[track_caller]
pub fn assert_shown_settled(shown: &serde_json::Value, voters: usize, replicas: u64, spread: u64) {
    let nodes = shown["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), voters, "{shown}");
    assert!(
        nodes
            .iter()
            .all(|n| n["voter"] == true && n["draining"] == false),
        "{shown}"
    );
    assert_eq!(node_total(shown, "replicas"), replicas, "{shown}");
    assert_eq!(shown["spread"]["replicas"], spread, "{shown}");
    assert_eq!(shown["moves"], serde_json::json!([]), "{shown}");
}

/// Checks that a cluster shown as JSON lists node `id` as a voter.
#[track_caller]
pub fn assert_shown_voter(shown: &serde_json::Value, id: u64) {
    let node = shown["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == id);
    assert!(node.is_some_and(|n| n["voter"] == true), "{shown}");
}

/// A node's three listeners on loopback, on ports the kernel picks.
pub async fn loopback_listeners() -> Listeners {
    let bind = || async { TcpListener::bind("127.0.0.1:0").await.unwrap() };
    Listeners {
        grpc: bind().await,
        http: bind().await,
        peer: bind().await,
    }
}

/// The configuration of node `id` serving on `listeners`, with its data
/// under `dir`: a cluster of one until `peers` is set, with the test admin
/// token, default timings and limits, and no TLS.
pub fn node_config(id: u64, listeners: &Listeners, dir: &std::path::Path) -> NodeConfig {
    let peer_addr = listeners.peer.local_addr().unwrap();
    NodeConfig {
        node_id: NodeId(id),
        grpc_addr: listeners.grpc.local_addr().unwrap(),
        http_addr: listeners.http.local_addr().unwrap(),
        peer_addr,
        advertise_grpc_addr: None,
        advertise_http_addr: None,
        data_dir: dir.join(format!("node-{id}")),
        peers: [(NodeId(id), peer_addr.to_string())].into(),
        join: false,
        raft: RaftTimings::default(),
        limits: Limits::default(),
        fsync: true,
        admin_token: Some(ADMIN_TOKEN.into()),
        peer_tls: None,
        insecure_peers: false,
        client_tls: None,
        // Off unless a test asks for them: they would add traffic (and
        // topics) every other test would have to look past.
        platform_events: false,
        link_faults: None,
        failpoints: None,
    }
}

impl TestCluster {
    pub async fn start(size: u64) -> TestCluster {
        TestCluster::start_with_limits(size, TestCluster::limits()).await
    }

    /// Starts a cluster of `size` nodes with the topic `name`, each of its
    /// partitions led.
    pub async fn start_with_topic(
        size: u64,
        name: &str,
        partitions: u32,
        replication_factor: u32,
    ) -> TestCluster {
        let cluster = TestCluster::start(size).await;
        cluster
            .create_topic(name, partitions, replication_factor)
            .await;
        cluster
    }

    /// The limits `start` gives every node: a short upkeep interval, so
    /// retention and the hand-back to preferred leaders happen quickly.
    pub fn limits() -> Limits {
        Limits {
            write_timeout_ms: 5_000,
            retention_interval_ms: 200,
            ..Limits::default()
        }
    }

    pub async fn start_with_limits(size: u64, limits: Limits) -> TestCluster {
        TestCluster::start_with(size, limits, false, false).await
    }

    /// A cluster on TLS: mutual TLS between nodes, and TLS on the public
    /// gRPC and HTTP listeners, from `raftstream-node certs`' certificates.
    pub async fn start_tls(size: u64) -> TestCluster {
        TestCluster::start_with(size, TestCluster::limits(), true, false).await
    }

    /// A cluster whose nodes publish platform events (`platform.*`).
    pub async fn start_with_platform_events(size: u64) -> TestCluster {
        TestCluster::start_with(size, TestCluster::limits(), false, true).await
    }

    async fn start_with(
        size: u64,
        limits: Limits,
        tls: bool,
        platform_events: bool,
    ) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<u64> = (1..=size).collect();
        let certs = tls.then(|| {
            let hosts = ["localhost".to_string(), "127.0.0.1".to_string()];
            write_dev_certs(&dir.path().join("certs"), &ids, &hosts).unwrap()
        });
        let mut listeners = BTreeMap::new();
        for id in 1..=size {
            listeners.insert(id, loopback_listeners().await);
        }
        let peers: BTreeMap<NodeId, String> = listeners
            .iter()
            .map(|(id, l)| (NodeId(*id), l.peer.local_addr().unwrap().to_string()))
            .collect();
        let mut configs = BTreeMap::new();
        let mut nodes = BTreeMap::new();
        let links = LinkFaults::new(test_seed());
        let mut failpoints = BTreeMap::new();
        for (id, listeners) in listeners {
            let mut config = node_config(id, &listeners, dir.path());
            config.peers = peers.clone();
            config.limits = limits.clone();
            config.platform_events = platform_events;
            config.link_faults = Some(links.clone());
            let node_failpoints = Failpoints::new(test_seed().wrapping_add(id));
            config.failpoints = Some(node_failpoints.clone());
            failpoints.insert(id, node_failpoints);
            if let Some(certs) = &certs {
                let (_, cert, key) = certs.nodes.iter().find(|(n, _, _)| *n == id).unwrap();
                config.peer_tls = Some(PeerTls {
                    ca: certs.ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                    server_name: None,
                });
                config.client_tls = Some(ClientTls {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: None,
                });
            }
            let node = RunningNode::start_on(config.clone(), listeners)
                .await
                .unwrap();
            configs.insert(id, config);
            nodes.insert(id, node);
        }
        let cluster = TestCluster {
            dir,
            configs,
            nodes,
            certs,
            links,
            failpoints,
        };
        cluster.wait_ready().await;
        // A node that learned of the new cluster only once the others had
        // formed it starts as one that lost its data: its groups stay
        // cautious until the metadata caught up. A partition created before
        // that, on that node and one other replica only, elects nobody (the
        // cautious replica neither votes nor campaigns, and no leader
        // appends to release it), a known rejoin limitation; so tests start
        // from a fully formed cluster.
        for node in cluster.nodes.values() {
            eventually(
                "empty-start caution over",
                Duration::from_secs(20),
                || async { (!node.node.rejoin.is_active()).then_some(()) },
            )
            .await;
        }
        cluster
    }

    /// Starts node `id`, new and empty, in `--join` mode: it knows node
    /// `seed` and waits to be added (`AddNode`). Returns its peer address.
    pub async fn start_joining_node(&mut self, id: u64, seed: u64) -> String {
        let listeners = loopback_listeners().await;
        let mut config = node_config(id, &listeners, self.dir.path());
        let peer_addr = config.peer_addr.to_string();
        config.peers = [
            (NodeId(id), peer_addr.clone()),
            (NodeId(seed), self.configs[&seed].peer_addr.to_string()),
        ]
        .into();
        config.join = true;
        config.limits = self.configs[&seed].limits.clone();
        config.link_faults = Some(self.links.clone());
        let node_failpoints = Failpoints::new(test_seed().wrapping_add(id));
        config.failpoints = Some(node_failpoints.clone());
        self.failpoints.insert(id, node_failpoints);
        let node = RunningNode::start_on(config.clone(), listeners)
            .await
            .unwrap();
        self.configs.insert(id, config);
        self.nodes.insert(id, node);
        peer_addr
    }

    /// Every running node knows a metadata leader.
    pub async fn wait_ready(&self) {
        for node in self.nodes.values() {
            eventually("metadata leader", Duration::from_secs(20), || async {
                node.node.meta_group().and_then(|g| g.leader()).map(|_| ())
            })
            .await;
            eventually("bootstrap admin token", Duration::from_secs(20), || async {
                (node.node.metadata().next_token_id > 0).then_some(())
            })
            .await;
        }
    }

    pub fn addr(&self, id: u64) -> SocketAddr {
        self.configs[&id].grpc_addr
    }

    pub async fn client(&self, id: u64) -> raftstream_client::Grpc {
        let addr = self.addr(id).to_string();
        let Some(certs) = &self.certs else {
            return raftstream_client::connect(&addr, Some(ADMIN_TOKEN))
                .await
                .unwrap();
        };
        let tls = raftstream_client::tls_from_files(&certs.ca, None).unwrap();
        let config = raftstream_client::ClientConfig::new([addr.clone()])
            .with_token(ADMIN_TOKEN)
            .with_tls(tls);
        raftstream_client::Client::connect(config)
            .await
            .unwrap()
            .grpc(&addr)
            .unwrap()
    }

    pub fn running_ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// The first running node other than `id`.
    pub fn running_node_other_than(&self, id: u64) -> u64 {
        self.running_ids().into_iter().find(|n| *n != id).unwrap()
    }

    /// Cuts the links between node `id` and every other running node, both
    /// ways; answers the ids of the others.
    pub fn isolate(&self, id: u64) -> Vec<u64> {
        let others: Vec<u64> = self
            .running_ids()
            .into_iter()
            .filter(|other| *other != id)
            .collect();
        let other_ids: Vec<NodeId> = others.iter().copied().map(NodeId).collect();
        self.links.partition(&[NodeId(id)], &other_ids);
        others
    }

    /// Stops the node leading a topic partition; returns a client of a
    /// node still running.
    pub async fn stop_partition_leader(
        &mut self,
        name: &str,
        partition: u32,
    ) -> raftstream_client::Grpc {
        let leader = self.partition_leader(name, partition).await;
        self.stop(leader).await;
        let survivor = self.running_ids()[0];
        self.client(survivor).await
    }

    /// The failpoints of node `id`.
    pub fn failpoints(&self, id: u64) -> &Arc<Failpoints> {
        &self.failpoints[&id]
    }

    /// Stops a node (its listeners, Raft groups and storage). Its
    /// failpoints are released first: a paused WAL syncer would keep its
    /// storage from closing.
    pub async fn stop(&mut self, id: u64) {
        if let Some(failpoints) = self.failpoints.get(&id) {
            failpoints.release_all();
        }
        if let Some(node) = self.nodes.remove(&id) {
            node.shutdown().await;
        }
    }

    /// Restarts a stopped node on its old ports and data directory.
    pub async fn restart(&mut self, id: u64) {
        let config = self.configs[&id].clone();
        // The old process's RocksDB lock and listening sockets are released
        // as its last tasks finish: retry until they are.
        let node = eventually("node restart", Duration::from_secs(20), || {
            let config = config.clone();
            async move { RunningNode::start(config).await.ok() }
        })
        .await;
        self.nodes.insert(id, node);
    }

    /// Creates a topic and waits until every partition has a leader.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
    ) -> pb::Topic {
        self.create_topic_from(pb::CreateTopicRequest {
            name: name.into(),
            partitions,
            replication_factor,
            ..Default::default()
        })
        .await
    }

    /// Creates the topic `request` describes and waits until every
    /// partition has a leader.
    pub async fn create_topic_from(&self, request: pb::CreateTopicRequest) -> pb::Topic {
        let name = request.name.clone();
        let mut client = self.client(self.running_ids()[0]).await;
        let created = client.create_topic(request).await.unwrap().into_inner();
        self.wait_partition_leaders(&name).await;
        created
    }

    pub async fn wait_partition_leaders(&self, name: &str) {
        let first = self.running_ids()[0];
        eventually("partition leaders", Duration::from_secs(20), || async {
            let mut client = self.client(first).await;
            let status = cluster_status(&mut client).await?;
            let groups: Vec<_> = status.groups.iter().filter(|g| g.topic == name).collect();
            let topic = client
                .get_topic(topic(name).unwrap())
                .await
                .ok()?
                .into_inner();
            (groups.len() == topic.partitions.len() && groups.iter().all(|g| g.leader.is_some()))
                .then_some(())
        })
        .await;
    }

    /// The node leading a topic partition, by cluster status.
    pub async fn partition_leader(&self, name: &str, partition: u32) -> u64 {
        let first = self.running_ids()[0];
        eventually("partition leader", Duration::from_secs(20), || async {
            let mut client = self.client(first).await;
            cluster_status(&mut client)
                .await?
                .groups
                .iter()
                .find(|g| g.topic == name && g.partition == partition)
                .and_then(|g| g.leader)
                .filter(|l| self.nodes.contains_key(l))
        })
        .await
    }

    /// Moves the leadership of a topic partition to node `to` (which must be
    /// caught up) and waits until the cluster reports it there. The transfer
    /// is asked of whichever node leads the group by its own Raft state, and
    /// asked again while leadership has not arrived: a status answer can
    /// name a leader that has already lost an election (right after a topic
    /// is created, several replicas campaign at once), and openraft ignores
    /// a transfer asked of a node that is not the leader.
    pub async fn transfer_partition_leader(&self, name: &str, partition: u32, to: u64) {
        const ASK_AGAIN_AFTER: Duration = Duration::from_millis(500);
        let first = self.partition_leader(name, partition).await;
        let status = cluster_status(&mut self.client(first).await).await.unwrap();
        let group_id = GroupId(
            status
                .groups
                .iter()
                .find(|g| g.topic == name && g.partition == partition)
                .unwrap()
                .group_id,
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut last_asked: Option<tokio::time::Instant> = None;
        loop {
            let leading = self.running_ids().into_iter().find(|&id| {
                self.nodes[&id]
                    .node
                    .group(group_id)
                    .is_some_and(|group| group.is_leader(NodeId(id)))
            });
            if leading == Some(to) && self.partition_leader(name, partition).await == to {
                return;
            }
            if let Some(leader) = leading
                && leader != to
                && last_asked.is_none_or(|at| at.elapsed() >= ASK_AGAIN_AFTER)
            {
                if let Some(group) = self.nodes[&leader].node.group(group_id) {
                    let _ = group.raft.trigger().transfer_leader(NodeId(to)).await;
                }
                last_asked = Some(tokio::time::Instant::now());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for leadership of {name}/{partition} to move to node {to}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn shutdown(self) {
        for failpoints in self.failpoints.values() {
            failpoints.release_all();
        }
        for (_, node) in self.nodes {
            node.shutdown().await;
        }
    }
}

/// Every acknowledged value appears in `read`, in acknowledgement order.
/// A publish retried after an unknown outcome may appear an extra time,
/// which this allows.
pub fn assert_acknowledged_in_order(acked: &[String], read: &[String]) {
    let mut cursor = read.iter();
    for value in acked {
        assert!(
            cursor.any(|r| r == value),
            "acknowledged {value} lost or reordered; read {read:?}"
        );
    }
}

/// The values of `messages`, as text.
pub fn values(messages: &[pb::Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.value).into_owned())
        .collect()
}

/// Reads a whole partition from offset 0 through `client`, until `expected`
/// messages have been read.
pub async fn read_all(
    client: &mut raftstream_client::Grpc,
    name: &str,
    partition: u32,
    expected: usize,
) -> Vec<pb::Message> {
    eventually("all messages readable", Duration::from_secs(20), || {
        let mut client = client.clone();
        async move {
            let mut messages = Vec::new();
            let mut next = 0;
            loop {
                let response = client
                    .consume(consume_now(name, partition, at_offset(next), 1000))
                    .await
                    .ok()?
                    .into_inner();
                if response.messages.is_empty() {
                    break;
                }
                next = response.next_offset;
                messages.extend(response.messages);
            }
            (messages.len() >= expected).then_some(messages)
        }
    })
    .await
}

/// An acknowledged publish: the value sent and the offset it got.
#[derive(Debug, Clone, PartialEq)]
pub struct Acked {
    pub offset: u64,
    pub value: String,
}

/// Each acknowledged value (of one partition) is at its acknowledged
/// offset and appears once, and the acknowledged offsets grow in
/// acknowledgement order. Every attempt must have sent a new value.
pub fn assert_each_acknowledged_once_in_order(acked: &[Acked], read: &[pb::Message]) {
    for pair in acked.windows(2) {
        assert!(
            pair[0].offset < pair[1].offset,
            "acknowledged offsets out of order: {pair:?}"
        );
    }
    let mut copies: std::collections::HashMap<&[u8], usize> = std::collections::HashMap::new();
    for message in read {
        *copies.entry(&message.value[..]).or_default() += 1;
    }
    for ack in acked {
        let at_offset: Vec<&pb::Message> = read.iter().filter(|m| m.offset == ack.offset).collect();
        assert_eq!(
            at_offset.len(),
            1,
            "offset {} read {} times",
            ack.offset,
            at_offset.len()
        );
        assert_eq!(
            String::from_utf8_lossy(&at_offset[0].value),
            ack.value,
            "offset {} holds another value",
            ack.offset
        );
        let count = copies.get(ack.value.as_bytes()).copied().unwrap_or(0);
        assert_eq!(count, 1, "{} read {count} times", ack.value);
    }
}
