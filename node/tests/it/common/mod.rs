//! A real cluster on loopback for integration tests: in-process nodes,
//! ephemeral ports, temp dirs, real tonic networking between them.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use raftstream_client::pb;
use raftstream_node::config::ClientTls;
use raftstream_node::config::Limits;
use raftstream_node::config::NodeConfig;
use raftstream_node::config::PeerTls;
use raftstream_node::config::RaftTimings;
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
                .publish(pb::PublishRequest {
                    topic: topic(name),
                    record: record(value),
                })
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
        node_id: id,
        grpc_addr: listeners.grpc.local_addr().unwrap(),
        http_addr: listeners.http.local_addr().unwrap(),
        peer_addr,
        data_dir: dir.join(format!("node-{id}")),
        peers: [(id, peer_addr.to_string())].into(),
        raft: RaftTimings::default(),
        limits: Limits::default(),
        fsync: true,
        admin_token: Some(ADMIN_TOKEN.into()),
        peer_tls: None,
        insecure_peers: false,
        client_tls: None,
    }
}

impl TestCluster {
    pub async fn start(size: u64) -> TestCluster {
        TestCluster::start_with_limits(size, TestCluster::limits()).await
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
        TestCluster::start_with(size, limits, false).await
    }

    /// A cluster on TLS: mutual TLS between nodes, and TLS on the public
    /// gRPC and HTTP listeners, from `raftstream-node certs`' certificates.
    pub async fn start_tls(size: u64) -> TestCluster {
        TestCluster::start_with(size, TestCluster::limits(), true).await
    }

    async fn start_with(size: u64, limits: Limits, tls: bool) -> TestCluster {
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
        let peers: BTreeMap<u64, String> = listeners
            .iter()
            .map(|(id, l)| (*id, l.peer.local_addr().unwrap().to_string()))
            .collect();
        let mut configs = BTreeMap::new();
        let mut nodes = BTreeMap::new();
        for (id, listeners) in listeners {
            let mut config = node_config(id, &listeners, dir.path());
            config.peers = peers.clone();
            config.limits = limits.clone();
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
        };
        cluster.wait_ready().await;
        cluster
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

    /// Stops a node (its listeners, Raft groups and storage).
    pub async fn stop(&mut self, id: u64) {
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
        let mut client = self.client(self.running_ids()[0]).await;
        let created = client
            .create_topic(pb::CreateTopicRequest {
                name: name.into(),
                partitions,
                replication_factor,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        self.wait_partition_leaders(name).await;
        created
    }

    pub async fn wait_partition_leaders(&self, name: &str) {
        let first = self.running_ids()[0];
        eventually("partition leaders", Duration::from_secs(20), || async {
            let mut client = self.client(first).await;
            let status = client
                .cluster_status(pb::ClusterStatusRequest {})
                .await
                .ok()?
                .into_inner();
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
            let status = client
                .cluster_status(pb::ClusterStatusRequest {})
                .await
                .ok()?
                .into_inner();
            status
                .groups
                .iter()
                .find(|g| g.topic == name && g.partition == partition)
                .and_then(|g| g.leader)
                .filter(|l| self.nodes.contains_key(l))
        })
        .await
    }

    /// Moves the leadership of a topic partition to node `to` (which must be
    /// caught up) and waits until the cluster reports it there.
    pub async fn transfer_partition_leader(&self, name: &str, partition: u32, to: u64) {
        let from = self.partition_leader(name, partition).await;
        let status = self
            .client(from)
            .await
            .cluster_status(pb::ClusterStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        let group_id = status
            .groups
            .iter()
            .find(|g| g.topic == name && g.partition == partition)
            .unwrap()
            .group_id;
        let group = self.nodes[&from].node.group(group_id).unwrap();
        group.raft.trigger().transfer_leader(to).await.unwrap();
        eventually("leadership moved", Duration::from_secs(20), || async {
            (self.partition_leader(name, partition).await == to).then_some(())
        })
        .await;
    }

    pub async fn shutdown(self) {
        for (_, node) in self.nodes {
            node.shutdown().await;
        }
    }
}

/// Reads a whole partition from `offset` through `client`, until `expected`
/// messages have been read.
/// The values of `messages`, as text.
pub fn values(messages: &[pb::Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.value).into_owned())
        .collect()
}

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
                    .consume(pb::ConsumeRequest {
                        topic: topic(name),
                        partition,
                        position: at_offset(next),
                        max_messages: 1000,
                        wait_ms: 0,
                        max_bytes: 0,
                    })
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
