//! The phases of a run around the workload: bringing the cluster up (every
//! node ready, the topic created with a leader for every partition) and the
//! final reads once every node has been restarted.

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use jepsen_lite::history::Kind;
use jepsen_lite::history::Outcome;
use parking_lot::Mutex;
use raftstream_client::Client;
use raftstream_client::ClientConfig;
use raftstream_client::pb;

use crate::TOKEN;
use crate::cluster::Cluster;
use crate::cluster::grpc_addr;
use crate::cluster::http_addr;
use crate::workload;
use crate::workload::Recorder;

/// Polls until `check` is true or `limit` passes.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) async fn wait_ready(cluster: &Arc<Mutex<Cluster>>, nodes: u64) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    for node in 1..=nodes {
        eventually(
            &format!("node {node} ready (GET /readyz)"),
            Duration::from_secs(90),
            || {
                let http = http.clone();
                async move {
                    http.get(format!("http://{}/readyz", http_addr(node)))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success())
                }
            },
        )
        .await
        .with_context(|| {
            let crashed = cluster.lock().exited();
            format!("crashed nodes: {crashed:?}")
        })?;
    }
    Ok(())
}

pub(crate) async fn setup_topic(nodes: u64) -> anyhow::Result<()> {
    let seeds: Vec<String> = (1..=nodes).map(grpc_addr).collect();
    let client = Client::connect(ClientConfig::new(seeds).with_token(TOKEN)).await?;
    eventually("topic created", Duration::from_secs(60), || {
        let client = client.clone();
        async move {
            let request = pb::CreateTopicRequest {
                name: workload::TOPIC.into(),
                partitions: workload::PARTITIONS,
                replication_factor: nodes.min(3) as u32,
                ..Default::default()
            };
            matches!(
                client.create_topic(request).await,
                Ok(_) | Err(raftstream_client::Error::AlreadyExists(_))
            )
        }
    })
    .await?;
    eventually(
        "every partition has a leader",
        Duration::from_secs(60),
        || {
            let client = client.clone();
            async move {
                client.cluster_status().await.is_ok_and(|s| {
                    s.groups
                        .iter()
                        .filter(|g| g.topic == workload::TOPIC && g.leader.is_some())
                        .count()
                        == workload::PARTITIONS as usize
                })
            }
        },
    )
    .await
}

/// Restarts every node, waits until all replicas of every partition agree
/// on its end, then reads every partition from offset 0 on every node.
/// Exits until now were noted by the nemesis.
pub(crate) async fn final_reads(
    nodes: u64,
    cluster: &Arc<Mutex<Cluster>>,
    recorder: &Recorder,
) -> anyhow::Result<()> {
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut cluster = c.lock();
        for node in 1..=nodes {
            cluster.stop(node, Duration::from_secs(10))?;
        }
        for node in 1..=nodes {
            cluster.start(node)?;
        }
        Ok(())
    })
    .await??;
    eprintln!("all nodes restarted; final reads");
    let ready = wait_ready(cluster, nodes).await;
    let mut clients = Vec::new();
    for node in 1..=nodes {
        clients.push(workload::grpc_to(node, TOKEN)?);
    }
    // Each partition is read on the nodes that hold a replica of it.
    let all: Vec<u64> = (1..=nodes).collect();
    let mut replicas: Vec<Vec<u64>> = vec![all.clone(); workload::PARTITIONS as usize];
    if ready.is_ok() {
        let seeds: Vec<String> = (1..=nodes).map(grpc_addr).collect();
        let topic = async {
            let client = Client::connect(ClientConfig::new(seeds).with_token(TOKEN)).await?;
            client.topic(workload::TOPIC).await
        };
        match tokio::time::timeout(Duration::from_secs(30), topic).await {
            Ok(Ok(topic)) => {
                for p in &topic.partitions {
                    if let Some(r) = replicas.get_mut(p.partition as usize) {
                        *r = p.replicas.clone();
                    }
                }
            }
            other => eprintln!("final reads: no topic metadata ({other:?}); reading every node"),
        }
    }
    let replicas = Arc::new(replicas);
    // Replicas catch up after the restart: wait (bounded) until every copy
    // of a partition reports the same end.
    let converged = if ready.is_ok() {
        eventually("replicas converge", Duration::from_secs(45), || {
            let clients = clients.clone();
            let replicas = replicas.clone();
            async move {
                for partition in 0..workload::PARTITIONS {
                    let mut ends = std::collections::BTreeSet::new();
                    for node in &replicas[partition as usize] {
                        let Some(mut grpc) = clients.get((*node - 1) as usize).cloned() else {
                            return false;
                        };
                        match workload::read_local(&mut grpc, partition).await {
                            Ok((messages, _)) => {
                                ends.insert(messages.last().map_or(0, |m| m.offset + 1));
                            }
                            Err(_) => return false,
                        }
                    }
                    if ends.len() != 1 {
                        return false;
                    }
                }
                true
            }
        })
        .await
    } else {
        ready
    };
    if let Err(e) = &converged {
        eprintln!("final reads: {e:#}");
    }
    for partition in 0..workload::PARTITIONS {
        for node in replicas[partition as usize].iter().copied() {
            let Some(mut grpc) = clients.get((node - 1) as usize).cloned() else {
                continue;
            };
            let start = recorder.now_us();
            let mut last_error = None;
            let mut result = None;
            for _ in 0..5 {
                match workload::read_local(&mut grpc, partition).await {
                    Ok((messages, _)) => {
                        result = Some(messages);
                        break;
                    }
                    Err(e) => {
                        last_error = Some(e.to_string());
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            }
            let (outcome, messages) = match result {
                Some(m) => (Outcome::Ok, m),
                None => (Outcome::Info, Vec::new()),
            };
            recorder.ended_now(
                "final",
                start,
                outcome,
                last_error.filter(|_| outcome != Outcome::Ok).or_else(|| {
                    converged
                        .as_ref()
                        .err()
                        .map(|e| format!("replicas had not converged: {e:#}"))
                }),
                Kind::FinalRead {
                    node,
                    partition,
                    messages,
                },
            );
        }
    }
    Ok(())
}
