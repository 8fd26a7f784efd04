//! Request ids cross forwarding hops: a request's logs on the node that took
//! it and on the leader it was forwarded to share its `x-request-id`.

#![allow(clippy::unwrap_used)]

use std::sync::Mutex;
use std::sync::OnceLock;

use serde_json::json;

use crate::common::*;
use crate::http::Http;

/// What the request-id layer logged, from every node of this test binary.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogBuffer;

impl std::io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures the request-id layer's log lines (and nothing else, so the
/// other tests of this binary add little) for the whole test binary.
fn capture_request_logs() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        use tracing_subscriber::Layer;
        use tracing_subscriber::layer::SubscriberExt;
        let only_request_ids = tracing_subscriber::filter::Targets::new()
            .with_target("raftstream_node::api::request_id", tracing::Level::DEBUG);
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(|| LogBuffer)
                .with_filter(only_request_ids),
        );
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
}

fn logged_lines_with(needle: &str) -> Vec<String> {
    String::from_utf8_lossy(&LOGS.lock().unwrap())
        .lines()
        .filter(|line| line.contains(needle))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_id_given_to_a_follower_reaches_the_leader_and_comes_back() {
    capture_request_logs();
    let cluster = TestCluster::start_with_topic(3, "traced", 1, 3).await;
    let leader = cluster.partition_leader("traced", 0).await;
    let follower = cluster.running_node_other_than(leader);
    let request_id = format!("trace-{}-{}", std::process::id(), test_seed());

    let http = Http::new(&cluster, follower);
    let response = http
        .request(reqwest::Method::POST, "/api/v1/topics/traced/publish")
        .header("x-request-id", &request_id)
        .json(&json!({"n": 1}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(response.headers()["x-request-id"], request_id.as_str());

    let seen = logged_lines_with(&format!("request_id=\"{request_id}\""));
    for node in [follower, leader] {
        assert!(
            seen.iter()
                .any(|line| line.contains(&format!("node={node}}}"))),
            "no log of {request_id} on node {node}: {seen:#?}"
        );
    }

    // Without a given id, the gateway makes one and returns it.
    let response = http
        .request(reqwest::Method::POST, "/api/v1/topics/traced/publish")
        .json(&json!({"n": 2}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let generated = response.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(generated.len(), 36, "{generated}");
    cluster.shutdown().await;
}
