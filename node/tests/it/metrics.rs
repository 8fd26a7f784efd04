//! `/metrics` on a 3-node cluster: the counters add up to what the test
//! did, exactly once across the nodes, and the partition gauges agree on
//! one leader.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use crate::common;
use crate::common::TestCluster;
use crate::http::Http;

/// Every sample of a node's `/metrics`, by series (`name{labels}`).
async fn scrape(http: &Http) -> BTreeMap<String, f64> {
    let response = http
        .request(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            (series.to_string(), value.parse().unwrap())
        })
        .collect()
}

fn sum(samples: &[BTreeMap<String, f64>], series: &str) -> f64 {
    samples.iter().filter_map(|s| s.get(series)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counters_add_up_across_nodes_and_one_node_leads_each_partition() {
    let cluster = TestCluster::start_with_topic(3, "metered", 2, 3).await;
    cluster.wait_partition_leaders("metered").await;
    let http = Http::new(&cluster, 1);
    for i in 0..5 {
        let (status, body) = http
            .post("/api/v1/topics/metered/publish", json!({ "n": i }))
            .await;
        assert!(status.is_success(), "{body}");
    }
    let (status, body) = http
        .post(
            "/api/v1/batch/topics/metered/publish",
            json!({ "payloads": [{ "n": 5 }, { "n": 6 }] }),
        )
        .await;
    assert!(status.is_success(), "{body}");
    let read = crate::http::consume_all(&http, "metered", 50).await;
    assert_eq!(read.len(), 7);

    let nodes: Vec<Http> = (1..=3).map(|id| Http::new(&cluster, id)).collect();
    let samples = common::eventually("the cluster's metrics", Duration::from_secs(20), || {
        let nodes = &nodes;
        async move {
            let mut samples = Vec::new();
            for node in nodes {
                samples.push(scrape(node).await);
            }
            // Every replica has applied all seven once high watermarks
            // add up to 7 on each node.
            let applied = samples.iter().all(|s| {
                (0..2)
                    .map(|p| {
                        s.get(&format!(
                            "raftstream_partition_high_watermark{{partition=\"{p}\",topic=\"metered\"}}"
                        ))
                        .copied()
                        .unwrap_or(0.0)
                    })
                    .sum::<f64>()
                    == 7.0
            });
            applied.then_some(samples)
        }
    })
    .await;
    // Each message is counted once, by the partition's leader.
    assert_eq!(
        sum(
            &samples,
            "raftstream_publish_messages_total{topic=\"metered\"}"
        ),
        7.0
    );
    assert!(
        sum(
            &samples,
            "raftstream_publish_bytes_total{topic=\"metered\"}"
        ) >= 7.0 * 7.0
    );
    assert!(
        sum(
            &samples,
            "raftstream_consume_messages_total{topic=\"metered\"}"
        ) >= 7.0
    );
    for p in 0..2 {
        let series =
            format!("raftstream_partition_is_leader{{partition=\"{p}\",topic=\"metered\"}}");
        assert_eq!(sum(&samples, &series), 1.0, "{series}");
        let leader = format!("raftstream_partition_leader{{partition=\"{p}\",topic=\"metered\"}}");
        let seen: Vec<f64> = samples.iter().map(|s| s[&leader]).collect();
        assert!(
            seen.iter().all(|l| *l == seen[0] && *l > 0.0),
            "{leader}: {seen:?}"
        );
    }
    // Group commit ran on every node, and the gateway counted the routes
    // by template, not by path.
    for s in &samples {
        assert!(s["raftstream_fsync_duration_seconds_count"] > 0.0);
        assert!(s["raftstream_group_commit_batch_entries_count"] > 0.0);
    }
    assert_eq!(
        samples[0]["raftstream_http_requests_total{route=\"/api/v1/topics/{topic_id}/publish\",status=\"200\"}"],
        5.0
    );
    assert!(
        samples[0]
            .keys()
            .all(|k| !k.contains("route=\"/api/v1/topics/metered"))
    );
    cluster.shutdown().await;
}
