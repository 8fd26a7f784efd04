//! Real `raftstream-node` processes on loopback, killed with SIGKILL: the
//! crash path (no graceful shutdown, recovery from what was fsynced).

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;

use common::ADMIN_TOKEN;
use common::eventually;
use common::record;
use common::topic;
use raftstream_client::pb;

struct Cluster {
    dir: tempfile::TempDir,
    grpc: Vec<String>,
    peers: String,
    children: Vec<Option<Child>>,
}

/// An ephemeral port chosen by the kernel. The listener is closed before the
/// node binds it, so another process could take the port in between; the
/// kernel hands out ephemeral ports in rotation, which makes that unlikely,
/// and the node's log in the temp dir would show the bind error.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    fn start(size: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let grpc: Vec<String> = (0..size)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let peers = grpc
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            dir,
            grpc,
            peers,
            children: (0..size).map(|_| None).collect(),
        };
        for i in 0..size {
            cluster.spawn(i);
        }
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let log =
            std::fs::File::create(self.dir.path().join(format!("node-{}.log", i + 1))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_raftstream-node"))
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
            ])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("node-{}", i + 1)))
            .env("RUST_LOG", "warn")
            .env("RAFTSTREAM_ADMIN_TOKEN", ADMIN_TOKEN)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children[i] = Some(child);
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        }
    }

    async fn client(&self, i: usize) -> raftstream_client::Grpc {
        let addr = self.grpc[i].clone();
        eventually("node accepts connections", Duration::from_secs(30), || {
            let addr = addr.clone();
            async move {
                raftstream_client::connect(&addr, Some(ADMIN_TOKEN))
                    .await
                    .ok()
            }
        })
        .await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}

async fn status(client: &mut raftstream_client::Grpc) -> Option<pb::ClusterStatusResponse> {
    Some(
        client
            .cluster_status(pb::ClusterStatusRequest {})
            .await
            .ok()?
            .into_inner(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkilled_leader_loses_no_acknowledged_message_and_catches_up_on_restart() {
    let mut cluster = Cluster::start(3);
    let mut client = cluster.client(0).await;
    eventually("topic created", Duration::from_secs(30), || {
        let mut client = client.clone();
        async move {
            let request = pb::CreateTopicRequest {
                name: "crash".into(),
                partitions: 1,
                replication_factor: 3,
                ..Default::default()
            };
            match client.create_topic(request).await {
                Ok(_) => Some(()),
                Err(status) if status.code() == tonic::Code::AlreadyExists => Some(()),
                Err(_) => None,
            }
        }
    })
    .await;
    let publish = |client: &raftstream_client::Grpc, value: String| {
        let mut client = client.clone();
        async move {
            client
                .publish(pb::PublishRequest {
                    topic: topic("crash"),
                    record: record(&value),
                })
                .await
                .ok()
        }
    };
    let mut acked = Vec::new();
    for i in 0..50 {
        let value = format!("before-{i}");
        eventually("publish", Duration::from_secs(30), || {
            publish(&client, value.clone())
        })
        .await;
        acked.push(value);
    }
    let leader = eventually("partition leader", Duration::from_secs(30), || {
        let mut client = client.clone();
        async move {
            status(&mut client)
                .await?
                .groups
                .iter()
                .find(|g| g.topic == "crash")?
                .leader
        }
    })
    .await;
    let leader_index = (leader - 1) as usize;
    cluster.kill(leader_index);
    let survivor = (leader_index + 1) % 3;
    client = cluster.client(survivor).await;
    for i in 0..50 {
        let value = format!("after-{i}");
        eventually("publish after the crash", Duration::from_secs(30), || {
            publish(&client, value.clone())
        })
        .await;
        acked.push(value);
    }
    cluster.spawn(leader_index);
    // The restarted node rejoins: the leader reports it fully caught up.
    eventually(
        "restarted replica caught up",
        Duration::from_secs(30),
        || {
            let mut client = client.clone();
            async move {
                let status = status(&mut client).await?;
                let group = status.groups.iter().find(|g| g.topic == "crash")?;
                let lag = group.replica_lag.get(&leader)?;
                (*lag == 0 && group.high_watermark >= 100).then_some(())
            }
        },
    )
    .await;
    let mut reader = cluster.client(leader_index).await;
    let mut read = Vec::new();
    let mut next = 0;
    while read.len() < 100 {
        let response = reader
            .consume(pb::ConsumeRequest {
                topic: topic("crash"),
                partition: 0,
                position: Some(pb::Position {
                    position: Some(pb::position::Position::Offset(next)),
                }),
                max_messages: 1000,
                wait_ms: 5_000,
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
    // Every acknowledged message, in acknowledgement order; a publish whose
    // first attempt had an unknown outcome may appear an extra time.
    let mut cursor = read.iter();
    for value in &acked {
        assert!(
            cursor.any(|r| r == value),
            "acknowledged {value} lost or reordered"
        );
    }
}
