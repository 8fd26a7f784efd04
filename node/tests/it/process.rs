//! Real `raftstream-node` processes on loopback, killed with SIGKILL: the
//! crash path (no graceful shutdown, recovery from what was fsynced).

#![allow(clippy::unwrap_used)]

use crate::common;

use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;

use crate::common::ADMIN_TOKEN;
use crate::common::Acked;
use crate::common::assert_acknowledged_in_order;
use crate::common::assert_each_acknowledged_once_in_order;
use crate::common::at_offset;
use crate::common::consume_now;
use crate::common::eventually;
use crate::common::eventually_in_status;
use crate::common::publish_request;
use crate::common::topic;
use raftstream_client::pb;

struct Cluster {
    dir: tempfile::TempDir,
    grpc: Vec<String>,
    peers: String,
    /// The certificates of a cluster on TLS (`raftstream-node certs`).
    certs: Option<std::path::PathBuf>,
    /// Nodes run under libfaketime, each reading its clock offset from
    /// `clock_file(i)`.
    faketime: bool,
    /// Per node: started with `--join` (added to the cluster by AddNode).
    joining: Vec<bool>,
    children: Vec<Option<Child>>,
}

/// A free loopback port for a node to bind, below the kernel's ephemeral
/// range. A port from bind(0) comes from that range, and once its listener
/// closes the kernel may hand it out again as the source port of an
/// outgoing connection (these nodes connect to each other) before the node
/// binds it: a node then failed to start with "Address already in use".
/// Below the range only another listener can take it, and ports handed out
/// here are never handed out twice.
fn free_port() -> u16 {
    use std::sync::Mutex;
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let ephemeral_start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let below = 10_000..ephemeral_start.max(10_001);
    let mut handed_out = HANDED_OUT.lock().unwrap();
    loop {
        let port = rand::random_range(below.clone());
        if !handed_out.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return port;
        }
    }
}

const NODE_BIN: &str = env!("CARGO_BIN_EXE_raftstream-node");
const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Starts the node binary as `command` says, its stderr (where it logs, as
/// does a panic) written to `log`.
fn spawn_logging_to(command: &mut Command, log: &std::path::Path) -> Child {
    command
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Writes a one-node config file in `dir` (`node_id = 1`, then `settings`,
/// TOML) and runs the node on it, with what `configure` adds to the
/// command. Answers the process and the path of its log.
fn run_on_config(
    dir: &std::path::Path,
    settings: &str,
    configure: impl FnOnce(&mut Command),
) -> (Child, std::path::PathBuf) {
    let config = dir.join("node.toml");
    std::fs::write(&config, format!("node_id = 1\n{settings}")).unwrap();
    let log = dir.join("node.log");
    let mut command = Command::new(NODE_BIN);
    command.args(["run", "--config"]).arg(&config);
    configure(&mut command);
    (spawn_logging_to(&mut command, &log), log)
}

/// Waits up to 30 s for a node to accept an admin's gRPC connection on
/// `grpc`.
async fn connect_as_admin(grpc: &str) -> raftstream_client::Grpc {
    eventually(
        &format!("gRPC connections on {grpc}"),
        Duration::from_secs(30),
        || async {
            raftstream_client::connect(grpc, Some(ADMIN_TOKEN))
                .await
                .ok()
        },
    )
    .await
}

impl Cluster {
    fn start(size: usize) -> Cluster {
        Cluster::start_with(size, None, false)
    }

    /// A cluster whose nodes' wall clocks the test can move
    /// (`set_clock_offset`), through libfaketime as jepsen-lite does.
    fn start_with_clocks(size: usize) -> Cluster {
        assert!(
            std::path::Path::new(FAKETIME_LIB).exists(),
            "{FAKETIME_LIB} is missing: scripts/setup.sh installs faketime"
        );
        Cluster::start_with(size, None, true)
    }

    /// A cluster on TLS: mutual TLS between nodes, TLS for clients, from
    /// certificates `raftstream-node certs` writes.
    fn start_tls(size: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let nodes = (1..=size).map(|i| i.to_string()).collect::<Vec<_>>();
        let written = Command::new(NODE_BIN)
            .args(["certs", "--nodes", &nodes.join(","), "--out"])
            .arg(&certs)
            .output()
            .unwrap();
        assert!(written.status.success(), "{written:?}");
        Cluster::start_with(size, Some((dir, certs)), false)
    }

    fn start_with(
        size: usize,
        tls: Option<(tempfile::TempDir, std::path::PathBuf)>,
        faketime: bool,
    ) -> Cluster {
        let (dir, certs) = match tls {
            Some((dir, certs)) => (dir, Some(certs)),
            None => (tempfile::tempdir().unwrap(), None),
        };
        let grpc: Vec<String> = (0..size)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let peers = (1..=size)
            .map(|id| format!("{id}=127.0.0.1:{}", free_port()))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            dir,
            grpc,
            peers,
            certs,
            faketime,
            joining: vec![false; size],
            children: (0..size).map(|_| None).collect(),
        };
        for i in 0..size {
            cluster.spawn(i);
        }
        cluster
    }

    /// Node `i`'s peer address, from `--peers`.
    fn peer_addr(&self, i: usize) -> String {
        let prefix = format!("{}=", i + 1);
        self.peers
            .split(',')
            .find_map(|p| p.strip_prefix(&prefix))
            .unwrap()
            .to_string()
    }

    /// Starts one more node, empty, with `--join`: it waits to be added
    /// (AddNode) rather than forming a cluster. Answers its index.
    fn spawn_joining(&mut self) -> usize {
        let i = self.grpc.len();
        self.grpc.push(format!("127.0.0.1:{}", free_port()));
        self.peers
            .push_str(&format!(",{}=127.0.0.1:{}", i + 1, free_port()));
        self.joining.push(true);
        self.children.push(None);
        self.spawn(i);
        i
    }

    fn spawn(&mut self, i: usize) {
        let log =
            std::fs::File::create(self.dir.path().join(format!("node-{}.log", i + 1))).unwrap();
        let mut command = Command::new(NODE_BIN);
        command
            .args([
                "run",
                "--node-id",
                &(i + 1).to_string(),
                "--peers",
                &self.peers,
            ])
            .args([
                "--grpc-addr",
                &self.grpc[i],
                "--http-addr",
                &format!("127.0.0.1:{}", free_port()),
                "--peer-addr",
                &self.peer_addr(i),
            ])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("node-{}", i + 1)));
        if self.joining[i] {
            command.arg("--join");
        }
        if let Some(certs) = &self.certs {
            let node = |ext: &str| certs.join(format!("node-{}.{ext}", i + 1));
            command
                .arg("--peer-tls-ca")
                .arg(certs.join("ca.pem"))
                .arg("--peer-tls-cert")
                .arg(node("pem"))
                .arg("--peer-tls-key")
                .arg(node("key"))
                .arg("--tls-cert")
                .arg(node("pem"))
                .arg("--tls-key")
                .arg(node("key"));
        }
        if self.faketime {
            let clock = self.clock_file(i);
            if !clock.exists() {
                self.set_clock_offset(i, "+0");
            }
            command
                .env("LD_PRELOAD", FAKETIME_LIB)
                .env("FAKETIME_TIMESTAMP_FILE", clock)
                .env("FAKETIME_CACHE_DURATION", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        // The node logs to stderr, as does a panic.
        let child = command
            .env("RUST_LOG", "warn")
            .env("RAFTSTREAM_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children[i] = Some(child);
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node-{}.log", i + 1)))
            .unwrap_or_default()
    }

    fn clock_file(&self, i: usize) -> std::path::PathBuf {
        self.dir.path().join(format!("clock-{}", i + 1))
    }

    /// Moves node `i`'s wall clock by `offset` (libfaketime's syntax, such
    /// as "+2d"); it reads the file again within a second.
    fn set_clock_offset(&self, i: usize, offset: &str) {
        std::fs::write(self.clock_file(i), offset).unwrap();
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        }
    }

    /// Stops node `i` as an operator would, with SIGTERM, and waits (up to
    /// 30 s, polling) for it to exit successfully.
    async fn stop_gracefully(&mut self, i: usize) {
        let Some(mut child) = self.children[i].take() else {
            return;
        };
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM node {}", i + 1);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if tokio::time::Instant::now() >= deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!(
                    "node {} did not stop within 30 s of SIGTERM; its log:\n{}",
                    i + 1,
                    self.log(i)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            status.success(),
            "node {} exited with {status}; its log:\n{}",
            i + 1,
            self.log(i)
        );
    }

    /// The client TLS settings of a cluster on TLS: trust its CA.
    fn client_tls(&self) -> Option<tonic::transport::ClientTlsConfig> {
        let ca = std::fs::read(self.certs.as_ref()?.join("ca.pem")).unwrap();
        Some(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
        )
    }

    async fn client(&self, i: usize) -> raftstream_client::Grpc {
        let addr = self.grpc[i].clone();
        let mut config =
            raftstream_client::ClientConfig::new([addr.clone()]).with_token(ADMIN_TOKEN);
        if let Some(tls) = self.client_tls() {
            config = config.with_tls(tls);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut last_error;
        let client = loop {
            match raftstream_client::Client::connect(config.clone()).await {
                Ok(client) => break client,
                Err(e) => last_error = e,
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {} accepts no connections within 30 s ({last_error}); its log:\n{}",
                i + 1,
                self.log(i)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        client.grpc(&addr).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}

/// Creates a topic of one partition on three replicas, retrying until the
/// cluster takes it (a retry after an unknown outcome may find it exists).
async fn create_topic(client: &raftstream_client::Grpc, name: &str) {
    create_replicated_topic(client, name, 1).await;
}

/// Creates the topic `name` of `partitions` partitions on three replicas,
/// retrying as `create_topic` does.
async fn create_replicated_topic(client: &raftstream_client::Grpc, name: &str, partitions: u32) {
    create_topic_as(
        client,
        pb::CreateTopicRequest {
            name: name.into(),
            partitions,
            replication_factor: 3,
            ..Default::default()
        },
    )
    .await;
}

/// Creates the topic `request` describes, retrying as `create_topic` does.
async fn create_topic_as(client: &raftstream_client::Grpc, request: pb::CreateTopicRequest) {
    eventually("topic created", Duration::from_secs(30), || {
        let mut client = client.clone();
        let request = request.clone();
        async move {
            match client.create_topic(request).await {
                Ok(_) => Some(()),
                Err(status) if status.code() == tonic::Code::AlreadyExists => Some(()),
                Err(_) => None,
            }
        }
    })
    .await;
}

/// One publish attempt; `None` when it failed.
async fn publish(client: &raftstream_client::Grpc, name: &str, value: String) -> Option<()> {
    let mut client = client.clone();
    client
        .publish(publish_request(name, &value))
        .await
        .ok()
        .map(|_| ())
}

/// Publishes 50 values, `{prefix}-0` on, to `name`, each retried until
/// acknowledged, and adds them to `acked` in that order.
async fn publish_each_until_acked(
    client: &raftstream_client::Grpc,
    name: &str,
    prefix: &str,
    acked: &mut Vec<String>,
) {
    for i in 0..50 {
        let value = format!("{prefix}-{i}");
        let what = format!("publish of {value}");
        eventually(&what, Duration::from_secs(30), || {
            publish(client, name, value.clone())
        })
        .await;
        acked.push(value);
    }
}

/// The leader of a topic's partition 0, once it has one.
async fn partition_leader(client: &raftstream_client::Grpc, name: &str) -> u64 {
    eventually_in_status(
        client,
        "partition leader",
        Duration::from_secs(30),
        |status| status.groups.iter().find(|g| g.topic == name)?.leader,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkilled_leader_loses_no_acknowledged_message_and_catches_up_on_restart() {
    let mut cluster = Cluster::start(3);
    let mut client = cluster.client(0).await;
    create_topic(&client, "crash").await;
    let mut acked = Vec::new();
    publish_each_until_acked(&client, "crash", "before", &mut acked).await;
    let leader = partition_leader(&client, "crash").await;
    let leader_index = (leader - 1) as usize;
    cluster.kill(leader_index);
    let survivor = (leader_index + 1) % 3;
    client = cluster.client(survivor).await;
    publish_each_until_acked(&client, "crash", "after", &mut acked).await;
    cluster.spawn(leader_index);
    // The restarted node rejoins: the leader reports it fully caught up.
    eventually_in_status(
        &client,
        "restarted replica caught up",
        Duration::from_secs(30),
        |status| {
            let group = status.groups.iter().find(|g| g.topic == "crash")?;
            let lag = group.replica_lag.get(&leader)?;
            (*lag == 0 && group.high_watermark >= 100).then_some(())
        },
    )
    .await;
    let mut reader = cluster.client(leader_index).await;
    let mut read = Vec::new();
    let mut next = 0;
    while read.len() < 100 {
        let response = reader
            .consume(pb::ConsumeRequest {
                wait_ms: 5_000,
                ..consume_now("crash", 0, at_offset(next), 1000)
            })
            .await
            .unwrap()
            .into_inner();
        next = response.next_offset;
        read.extend(
            response
                .messages
                .into_iter()
                .map(|m| String::from_utf8_lossy(&m.value).into_owned()),
        );
    }
    assert_acknowledged_in_order(&acked, &read);
}

const ROLLING_PARTITIONS: u32 = 3;

/// What the rolling-restart producer saw of one partition: its
/// acknowledged publishes, in order, and when each was acknowledged.
#[derive(Debug, Default)]
struct PartitionAcks {
    acked: Vec<Acked>,
    at: Vec<std::time::Instant>,
}

/// Publishes to `name`'s partitions in turn until `stop` turns true,
/// through the first node of `clients` that answers. Every attempt sends a
/// new value; a failed or timed-out attempt is an unknown outcome, never a
/// failure, and the next attempt goes to the next node.
async fn produce_until_stopped(
    clients: Vec<raftstream_client::Grpc>,
    name: &'static str,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<PartitionAcks> {
    let mut partitions: Vec<PartitionAcks> = (0..ROLLING_PARTITIONS)
        .map(|_| PartitionAcks::default())
        .collect();
    let mut node = 0;
    for attempt in 0u64.. {
        if *stop.borrow() {
            break;
        }
        let partition = (attempt % u64::from(ROLLING_PARTITIONS)) as u32;
        let value = format!("p{partition}-{attempt}");
        let mut request = publish_request(name, &value);
        if let Some(record) = request.record.as_mut() {
            record.partition = Some(partition);
        }
        let mut client = clients[node].clone();
        match tokio::time::timeout(Duration::from_secs(5), client.publish(request)).await {
            Ok(Ok(response)) => {
                let acks = &mut partitions[partition as usize];
                acks.acked.push(Acked {
                    offset: response.into_inner().offset,
                    value,
                });
                acks.at.push(std::time::Instant::now());
            }
            Ok(Err(_)) | Err(_) => {
                node = (node + 1) % clients.len();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    partitions
}

/// Restarts every node in turn, gracefully (SIGTERM), while a producer
/// publishes to three partitions on three replicas: nothing acknowledged
/// is lost or duplicated. It prints each partition's unavailability, the
/// longest gap between acknowledged publishes, which is measured, not
/// asserted, here (benches/compare.sh rolling reports it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_under_load_loses_and_duplicates_nothing() {
    let mut cluster = Cluster::start(3);
    let client = cluster.client(0).await;
    create_replicated_topic(&client, "rolling", ROLLING_PARTITIONS).await;
    // Caught up: every partition has a leader, and each has been seen
    // with every replica holding every entry since `seen` was cleared.
    // Seen per partition rather than all in one status: under the load
    // below one partition always has a publish in flight, so its slowest
    // replica is briefly behind in most single statuses.
    let seen = std::sync::Mutex::new(std::collections::HashSet::new());
    let caught_up = |status: pb::ClusterStatusResponse| {
        let groups: Vec<_> = status
            .groups
            .iter()
            .filter(|g| g.topic == "rolling")
            .collect();
        let mut seen = seen.lock().unwrap();
        for g in &groups {
            if g.leader.is_some()
                && (1..=3u64)
                    .all(|node| g.leader == Some(node) || g.replica_lag.get(&node) == Some(&0))
            {
                seen.insert(g.partition);
            }
        }
        (groups.len() == ROLLING_PARTITIONS as usize
            && groups.iter().all(|g| g.leader.is_some())
            && seen.len() == ROLLING_PARTITIONS as usize)
            .then_some(())
    };
    eventually_in_status(
        &client,
        "partitions replicated",
        Duration::from_secs(30),
        caught_up,
    )
    .await;
    let (stop, producer) = start_producing(&cluster, "rolling").await;
    let started = std::time::Instant::now();
    for i in 0..3 {
        cluster.stop_gracefully(i).await;
        cluster.spawn(i);
        // Ready once it answers, every partition has a leader and every
        // replica, the restarted one included, has every entry (asked of
        // the restarted node, so its own status shows it up and serving).
        let restarted = cluster.client(i).await;
        let rejoined = std::time::Instant::now();
        seen.lock().unwrap().clear();
        eventually_in_status(
            &restarted,
            "restarted node caught up",
            Duration::from_secs(60),
            caught_up,
        )
        .await;
        println!(
            "rolling restart: node {} answering and caught up {:?} after it answered",
            i + 1,
            rejoined.elapsed()
        );
    }
    // Some more publishes with every node back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send_replace(true);
    let partitions = producer.await.unwrap();
    let rolled_for = started.elapsed();

    let mut reader = cluster.client(0).await;
    assert_each_partition_read_once(&mut reader, "rolling", &partitions).await;
    for (partition, acks) in partitions.iter().enumerate() {
        let longest_gap = acks
            .at
            .windows(2)
            .map(|pair| pair[1] - pair[0])
            .max()
            .unwrap_or_default();
        println!(
            "rolling restart: partition {partition}: {} acknowledged, longest gap between \
             acknowledgements {longest_gap:?} (restarts took {rolled_for:?})",
            acks.acked.len()
        );
    }
}

/// Starts `produce_until_stopped` on `name` through a client of each of
/// the three nodes; it stops once the sender sends `true`.
async fn start_producing(
    cluster: &Cluster,
    name: &'static str,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<Vec<PartitionAcks>>,
) {
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(cluster.client(i).await);
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    (
        stop,
        tokio::spawn(produce_until_stopped(clients, name, stopped)),
    )
}

/// Checks that every partition of `name` acknowledged something and that
/// `reader` reads each acknowledged message exactly once, in order.
async fn assert_each_partition_read_once(
    reader: &mut raftstream_client::Grpc,
    name: &str,
    partitions: &[PartitionAcks],
) {
    for (partition, acks) in partitions.iter().enumerate() {
        assert!(
            !acks.acked.is_empty(),
            "nothing acknowledged on partition {partition}"
        );
        let read = read_partition(reader, name, partition as u32, acks.acked.len()).await;
        assert_each_acknowledged_once_in_order(&acks.acked, &read);
    }
}

/// Every message of a partition, from offset 0, once at least `expected`
/// are readable.
async fn read_partition(
    client: &mut raftstream_client::Grpc,
    name: &str,
    partition: u32,
    expected: usize,
) -> Vec<pb::Message> {
    let mut read = Vec::new();
    let mut next = 0;
    while read.len() < expected {
        let response = client
            .consume(pb::ConsumeRequest {
                wait_ms: 5_000,
                ..consume_now(name, partition, at_offset(next), 1000)
            })
            .await
            .unwrap()
            .into_inner();
        if response.messages.is_empty() {
            break;
        }
        next = response.next_offset;
        read.extend(response.messages);
    }
    // Anything after the last acknowledged publish too, so a duplicate
    // there shows.
    loop {
        let response = client
            .consume(consume_now(name, partition, at_offset(next), 1000))
            .await
            .unwrap()
            .into_inner();
        if response.messages.is_empty() {
            return read;
        }
        next = response.next_offset;
        read.extend(response.messages);
    }
}

/// A raw channel to `addr` over TLS trusting `ca`, presenting
/// `identity` when given.
async fn tls_channel(
    addr: &str,
    ca: &std::path::Path,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let mut tls = tonic::transport::ClientTlsConfig::new().ca_certificate(
        tonic::transport::Certificate::from_pem(std::fs::read(ca).unwrap()),
    );
    if let Some((cert, key)) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// A node heartbeat through `channel`: the cheapest call of the peer API.
async fn heartbeat(channel: tonic::transport::Channel) -> Result<(), tonic::Status> {
    let mut transport = pb::raft_transport_client::RaftTransportClient::new(channel);
    transport
        .node_heartbeat(pb::NodeHeartbeatRequest {
            from: 99,
            ..Default::default()
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_on_tls_serves_clients_and_refuses_peers_without_a_cluster_certificate() {
    let mut cluster = Cluster::start_tls(3);
    let certs = cluster.certs.clone().unwrap();
    let mut client = cluster.client(0).await;
    create_topic(&client, "tls").await;
    // Every node takes publishes: the ones that do not lead forward them
    // over mutual TLS to the leader.
    for i in 0..30 {
        let client = cluster.client(i % 3).await;
        let value = format!("m-{i}");
        eventually("publish over TLS", Duration::from_secs(30), || {
            publish(&client, "tls", value.clone())
        })
        .await;
    }
    let leader = partition_leader(&client, "tls").await;
    // Replication ran over mutual TLS: the whole cluster elects again and
    // keeps every message after the leader dies.
    cluster.kill((leader - 1) as usize);
    let survivor = leader as usize % 3;
    client = cluster.client(survivor).await;
    let read = common::read_all(&mut client, "tls", 0, 30).await;
    let values: Vec<String> = read
        .iter()
        .map(|m| String::from_utf8_lossy(&m.value).into_owned())
        .collect();
    for i in 0..30 {
        assert!(values.contains(&format!("m-{i}")), "m-{i} lost");
    }

    let peer = cluster.peer_addr(survivor);
    let ca = certs.join("ca.pem");
    // A peer that presents no certificate is refused at the handshake, or
    // at its first call when the handshake completes before the server's
    // verdict arrives.
    let anonymous = match tls_channel(&peer, &ca, None).await {
        Ok(channel) => heartbeat(channel).await.err().map(|s| s.to_string()),
        Err(e) => Some(e.to_string()),
    };
    assert!(
        anonymous.is_some(),
        "a peer without a certificate was served"
    );
    // So is one whose certificate another CA signed.
    let other = cluster.dir.path().join("other-certs");
    let written = Command::new(NODE_BIN)
        .args(["certs", "--nodes", "1", "--out"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(written.status.success(), "{written:?}");
    let forged = match tls_channel(
        &peer,
        &ca,
        Some((&other.join("node-1.pem"), &other.join("node-1.key"))),
    )
    .await
    {
        Ok(channel) => heartbeat(channel).await.err().map(|s| s.to_string()),
        Err(e) => Some(e.to_string()),
    };
    assert!(
        forged.is_some(),
        "a peer with a foreign certificate was served"
    );
    // A node's own certificate is accepted: the refusals above are about
    // the certificate, not the call.
    let node_identity = (
        certs.join(format!("node-{}.pem", survivor + 1)),
        certs.join(format!("node-{}.key", survivor + 1)),
    );
    let channel = tls_channel(&peer, &ca, Some((&node_identity.0, &node_identity.1)))
        .await
        .unwrap();
    heartbeat(channel).await.unwrap();
    // The public listener does not serve the peer API at all, even to a
    // caller holding a node certificate.
    let public = tls_channel(&cluster.grpc[survivor], &ca, None)
        .await
        .unwrap();
    let refused = heartbeat(public).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused}");
    // And it speaks only TLS.
    let plain = raftstream_client::connect(&cluster.grpc[survivor], Some(ADMIN_TOKEN)).await;
    match plain {
        Err(_) => {}
        Ok(mut plain) => {
            let answer = plain.cluster_status(pb::ClusterStatusRequest {}).await;
            assert!(answer.is_err(), "a plain-text call was served");
        }
    }
}

/// A tmpfs of a few MiB, mounted for the life of the guard: a disk that
/// really fills. Mounting needs root, as jepsen-lite does.
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(path: &std::path::Path, mib: u64) -> SmallDisk {
        std::fs::create_dir_all(path).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            mounted.status.success(),
            "mounting a tmpfs (this test needs root): {}",
            String::from_utf8_lossy(&mounted.stderr)
        );
        SmallDisk {
            path: path.to_path_buf(),
        }
    }

    fn free_bytes(&self) -> u64 {
        let stats = nix::sys::statvfs::statvfs(&self.path).unwrap();
        stats.blocks_available() * stats.fragment_size()
    }

    /// Writes zeros into `ballast` until `leave` bytes are free, or the
    /// disk is full.
    fn fill(&self, leave: u64) {
        use std::io::Write;
        let mut ballast = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path.join("ballast"))
            .unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while self.free_bytes() > leave {
            if ballast.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = ballast.sync_all();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_refuses_publishes_near_a_full_disk_and_exits_when_a_write_fails() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir.path().join("disk"), 64);
    let grpc = format!("127.0.0.1:{}", free_port());
    let peer = format!("127.0.0.1:{}", free_port());
    let settings = format!(
        r#"
        grpc_addr = "{grpc}"
        http_addr = "127.0.0.1:{http}"
        peer_addr = "{peer}"
        data_dir = "{data}"
        [peers]
        1 = "{peer}"
        [limits]
        min_free_disk_bytes = {headroom}
        "#,
        http = free_port(),
        data = disk.path.join("node").display(),
        headroom = 16 * 1024 * 1024,
    );
    let (mut child, log) = run_on_config(dir.path(), &settings, |node| {
        node.env("RUST_LOG", "warn")
            .env("RAFTSTREAM_ADMIN_TOKEN", ADMIN_TOKEN);
    });
    let client = connect_as_admin(&grpc).await;
    let create = |name: &'static str| {
        let mut client = client.clone();
        async move {
            client
                .create_topic(pb::CreateTopicRequest {
                    name: name.into(),
                    partitions: 1,
                    replication_factor: 1,
                    ..Default::default()
                })
                .await
        }
    };
    eventually("topic created", Duration::from_secs(30), || async {
        create("filling").await.ok()
    })
    .await;
    eventually("a publish", Duration::from_secs(30), || {
        publish(&client, "filling", "before".into())
    })
    .await;

    // Under the headroom: publishes are refused with a clear error, and
    // nothing is written.
    disk.fill(8 * 1024 * 1024);
    let refused = eventually("publishes refused", Duration::from_secs(10), || {
        let mut client = client.clone();
        async move {
            client
                .publish(publish_request("filling", "refused"))
                .await
                .err()
                .filter(|s| s.code() == tonic::Code::ResourceExhausted)
        }
    })
    .await;
    assert!(refused.message().contains("headroom"), "{refused:?}");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the node stopped early"
    );

    // A full disk: the next write that still goes through (a metadata
    // change) fails, and the node exits non-zero with one clear line.
    disk.fill(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the node kept running on a full disk; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let _ = tokio::time::timeout(Duration::from_secs(2), create("more")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(74), "{log}");
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("storage failed; this node stops serving"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
}

/// A leader whose wall clock jumps two days ahead must not take its
/// messages for expired: its clock disagrees with the other replicas', so
/// it stops expiring by age until they agree again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_whose_clock_jumps_ahead_expires_nothing_by_age() {
    let cluster = Cluster::start_with_clocks(3);
    let client = cluster.client(0).await;
    let request = pb::CreateTopicRequest {
        name: "kept".into(),
        partitions: 3,
        replication_factor: 3,
        retention: Some(pb::RetentionPolicy {
            retention_ms: 3_600_000,
            retention_bytes: 0,
        }),
        ..Default::default()
    };
    create_topic_as(&client, request).await;
    // Each node is the preferred leader (first replica) of one of the three
    // partitions, and leadership settles there.
    let kept = client
        .clone()
        .get_topic(topic("kept").unwrap())
        .await
        .unwrap()
        .into_inner();
    let partition = kept
        .partitions
        .iter()
        .find(|p| p.replicas.first() == Some(&1))
        .unwrap()
        .partition;
    eventually_in_status(
        &client,
        "node 1 leads its partition",
        Duration::from_secs(30),
        |status| {
            status
                .groups
                .iter()
                .any(|g| g.topic == "kept" && g.partition == partition && g.leader == Some(1))
                .then_some(())
        },
    )
    .await;
    for i in 0..5 {
        let value = format!("m-{i}");
        eventually("a publish", Duration::from_secs(30), || {
            let mut client = client.clone();
            let value = value.clone();
            async move {
                client
                    .publish(pb::PublishRequest {
                        topic: topic("kept"),
                        record: Some(pb::Record {
                            value: value.into_bytes().into(),
                            partition: Some(partition),
                            ..Default::default()
                        }),
                    })
                    .await
                    .ok()
            }
        })
        .await;
    }

    cluster.set_clock_offset(0, "+2d");
    eventually(
        "node 1 pauses retention by age",
        Duration::from_secs(30),
        || async {
            cluster
                .log(0)
                .contains("retention by age paused")
                .then_some(())
        },
    )
    .await;
    // A few more retention rounds (every 5 s): the messages stay.
    let watched_until = std::time::Instant::now() + Duration::from_secs(12);
    while std::time::Instant::now() < watched_until {
        let read = client
            .clone()
            .consume(consume_now("kept", partition, at_offset(0), 100))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(read.log_start_offset, 0, "{}", cluster.log(0));
        assert_eq!(read.messages.len(), 5);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `--log-format json` writes one JSON object per line and nothing else to
/// stderr (a log collector parses every line), with no colour codes, and
/// never the generated admin token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_logs_are_one_object_per_line_and_never_hold_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let http = format!("127.0.0.1:{}", free_port());
    let log = dir.path().join("node.log");
    let mut child = spawn_logging_to(
        Command::new(NODE_BIN)
            .args(["--log-format", "json", "dev", "--data-dir"])
            .arg(&data)
            .args(["--grpc-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--http-addr", &http])
            .args(["--peer-addr", &format!("127.0.0.1:{}", free_port())])
            .env("RUST_LOG", "info")
            .env_remove("RAFTSTREAM_ADMIN_TOKEN"),
        &log,
    );
    let token_file = data.join("admin-token");
    let secret = eventually("the admin-token file", Duration::from_secs(30), || async {
        let text = std::fs::read_to_string(&token_file).ok()?;
        (!text.trim().is_empty()).then(|| text.trim().to_string())
    })
    .await;
    // The line saying where the token is comes after the file is renamed.
    let text = eventually("the token's log line", Duration::from_secs(10), || async {
        let text = std::fs::read_to_string(&log).ok()?;
        text.contains("bootstrap admin token").then_some(text)
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!text.contains(&secret), "the secret is in the log:\n{text}");
    assert!(!text.contains('\u{1b}'), "colour codes in the log:\n{text}");
    let mut lines = 0;
    for line in text.lines() {
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            object["level"].is_string() && object["message"].is_string(),
            "no level or message: {line}"
        );
        lines += 1;
    }
    assert!(lines >= 2, "{text}");
}

/// The binary merges its settings from the file, the environment and the
/// flags, in that order of precedence, and tells clients the advertised
/// address.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_merges_the_config_file_environment_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let (file_grpc, env_grpc, http, peer) = (free_port(), free_port(), free_port(), free_port());
    let settings = format!(
        r#"
        grpc_addr = "127.0.0.1:{file_grpc}"
        http_addr = "127.0.0.1:{file_grpc}"
        peer_addr = "127.0.0.1:{peer}"
        data_dir = "{data}"
        "#,
        data = dir.path().join("data").display(),
    );
    let (mut child, log) = run_on_config(dir.path(), &settings, |node| {
        node.args(["--http-addr", &format!("127.0.0.1:{http}")])
            .args(["--advertise-grpc", &format!("node-1.example:{env_grpc}")])
            .args(["--set", "limits.write_timeout_ms=4000"])
            .env("RAFTSTREAM_GRPC_ADDR", format!("127.0.0.1:{env_grpc}"))
            .env("RAFTSTREAM_ADMIN_TOKEN", ADMIN_TOKEN)
            // The CLI's own variable in the same shell does not stop the node.
            .env("RAFTSTREAM_TOKEN", "rst_not-a-node-setting");
    });
    // Served on the environment's address.
    let mut client = connect_as_admin(&format!("127.0.0.1:{env_grpc}")).await;
    let healthz = reqwest::get(format!("http://127.0.0.1:{http}/healthz")).await;
    let status = client
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    child.kill().unwrap();
    child.wait().unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(healthz.is_ok_and(|r| r.status().is_success()), "{log}");
    assert_eq!(status.nodes.len(), 1);
    assert_eq!(
        status.nodes[0].grpc_addr,
        format!("node-1.example:{env_grpc}")
    );
}

/// A fourth node process joins a cluster of three under load and takes its
/// share of the replicas; then node 1 is removed once its replicas moved
/// away, and exits cleanly. Nothing acknowledged is lost or stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_joins_and_another_leaves_a_cluster_of_processes_under_load() {
    use crate::membership::add_until_done;
    let mut cluster = Cluster::start(3);
    let client = cluster.client(0).await;
    create_replicated_topic(&client, "members", ROLLING_PARTITIONS).await;
    eventually_in_status(&client, "partitions led", Duration::from_secs(30), |s| {
        let led = s
            .groups
            .iter()
            .filter(|g| g.topic == "members" && g.leader.is_some())
            .count();
        (led == ROLLING_PARTITIONS as usize).then_some(())
    })
    .await;
    let (stop, producer) = start_producing(&cluster, "members").await;

    let four = cluster.spawn_joining();
    let peer_addr = cluster.peer_addr(four);
    add_until_done("add node 4", &client, 4, &peer_addr).await;
    // 9 replicas on 4 nodes: 2 or 3 each once the balancer is done.
    let spread = eventually_in_status(
        &client,
        "replicas balanced onto node 4",
        Duration::from_secs(90),
        |s| {
            let counts: Vec<u32> = s.nodes.iter().map(|n| n.replicas).collect();
            let four = s.nodes.iter().find(|n| n.id == 4)?;
            (s.moves.is_empty()
                && four.voter
                && four.replicas >= 2
                && counts.len() == 4
                && counts.iter().max()? - counts.iter().min()? <= 1)
                .then_some(counts)
        },
    )
    .await;
    println!("membership: replicas per node after node 4 joined: {spread:?}");

    let via_two = cluster.client(1).await;
    crate::membership::remove_until_done(&via_two, 1).await;
    let status = eventually_in_status(&via_two, "node 1 out", Duration::from_secs(30), |s| {
        let one_holds = s.nodes.iter().find(|n| n.id == 1).map_or(0, |n| n.replicas);
        let leaders = s
            .groups
            .iter()
            .filter(|g| g.topic == "members" && g.leader.is_some_and(|l| l != 1))
            .count();
        (one_holds == 0 && leaders == ROLLING_PARTITIONS as usize).then_some(s)
    })
    .await;
    assert!(
        !status.nodes.iter().any(|n| n.id == 1 && n.voter),
        "{:?}",
        status.nodes
    );
    // Some more publishes without node 1, then it stops as an operator
    // would stop a removed node.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send_replace(true);
    let partitions = producer.await.unwrap();
    cluster.stop_gracefully(0).await;

    let mut reader = cluster.client(1).await;
    assert_each_partition_read_once(&mut reader, "members", &partitions).await;
}
