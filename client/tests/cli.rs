//! The `raftstream` CLI end to end against a real 3-node cluster on loopback.

#![allow(clippy::unwrap_used)]

#[path = "../../node/tests/it/common/mod.rs"]
mod common;

use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

use assert_cmd::Command;
use common::ADMIN_TOKEN;
use common::TestCluster;
use serde_json::Value;
use serde_json::json;

fn cli(cluster: &TestCluster) -> Command {
    let mut command = Command::cargo_bin("raftstream").unwrap();
    command
        .env("RAFTSTREAM_ADDR", cluster.addr(1).to_string())
        .env("RAFTSTREAM_TOKEN", ADMIN_TOKEN)
        .env("HOME", cluster.dir.path());
    command
}

fn stdout(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn produce_then_consume_the_same_data_and_manage_groups() {
    let cluster = TestCluster::start(3).await;
    stdout(cli(&cluster).args(["topics", "create", "orders", "--partitions", "2"]));
    cluster.wait_partition_leaders("orders").await;
    let listed: serde_json::Value =
        serde_json::from_str(&stdout(cli(&cluster).args(["--json", "topics", "list"]))).unwrap();
    assert_eq!(listed[0]["name"], "orders");

    let input: String = (0..20).map(|i| format!("{{\"n\": {i}}}\n")).collect();
    let output = cli(&cluster)
        .args(["produce", "orders", "--key", "same-key"])
        .write_stdin(input)
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("produced 20 messages"));

    // One key, one partition: the order sent is the order read.
    let read =
        stdout(cli(&cluster).args(["consume", "orders", "--from-beginning", "--output", "raw"]));
    let expected: Vec<String> = (0..20).map(|i| format!("{{\"n\": {i}}}")).collect();
    assert_eq!(read.lines().collect::<Vec<_>>(), expected);

    // A group reads part, commits, and resumes where it stopped.
    let first = stdout(cli(&cluster).args([
        "consume", "orders", "--group", "billing", "--max", "5", "--output", "raw",
    ]));
    assert_eq!(first.lines().count(), 5);
    let groups = stdout(cli(&cluster).args(["groups", "list", "orders"]));
    assert_eq!(groups.trim(), "billing");
    let offsets: serde_json::Value = serde_json::from_str(&stdout(
        cli(&cluster).args(["--json", "groups", "offsets", "orders", "billing"]),
    ))
    .unwrap();
    assert_eq!(
        offsets
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["offset"].as_u64().unwrap())
            .sum::<u64>(),
        5
    );
    let rest =
        stdout(cli(&cluster).args(["consume", "orders", "--group", "billing", "--output", "raw"]));
    assert_eq!(rest.lines().count(), 15);
    stdout(cli(&cluster).args(["groups", "reset", "orders", "billing", "--to-earliest"]));
    let again =
        stdout(cli(&cluster).args(["consume", "orders", "--group", "billing", "--output", "raw"]));
    assert_eq!(again.lines().count(), 20);

    let status = stdout(cli(&cluster).args(["cluster", "status"]));
    assert!(
        status.contains("orders") && status.contains("(metadata)"),
        "{status}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follow_mode_prints_new_messages_as_they_commit() {
    let cluster = TestCluster::start(3).await;
    stdout(cli(&cluster).args(["topics", "create", "live"]));
    cluster.wait_partition_leaders("live").await;
    let bin = assert_cmd::cargo::cargo_bin("raftstream");
    let mut follower = std::process::Command::new(bin)
        .args([
            "consume", "live", "--follow", "--max", "3", "--output", "raw",
        ])
        .env("RAFTSTREAM_ADDR", cluster.addr(2).to_string())
        .env("RAFTSTREAM_TOKEN", ADMIN_TOKEN)
        .env("HOME", cluster.dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    stdout(cli(&cluster).args(["produce", "live", "a", "b", "c"]));
    let exited = common::eventually(
        "follower exits after 3 messages",
        Duration::from_secs(30),
        || {
            let status = follower.try_wait().unwrap();
            async move { status }
        },
    )
    .await;
    assert!(exited.success());
    let mut out = String::new();
    follower
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out.lines().collect::<Vec<_>>(), vec!["a", "b", "c"]);
    cluster.shutdown().await;
}

/// Delivers a JSON body to a source through node `node`'s HTTP gateway.
async fn deliver(cluster: &TestCluster, node: u64, id: &str, secret: &str, body: Value) {
    let url = format!(
        "http://{}/api/ingest/webhook/{id}",
        cluster.configs[&node].http_addr
    );
    let response = reqwest::Client::new()
        .post(url)
        .bearer_auth(secret)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ingest_sources_are_managed_and_tail_follows_live_deliveries() {
    let cluster = TestCluster::start(3).await;
    let created: Value = serde_json::from_str(&stdout(cli(&cluster).args([
        "--json",
        "ingest",
        "create",
        "crm",
        "--type",
        "workato",
        "--topic",
        "crm-events",
    ])))
    .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let secret = created["secret"].as_str().unwrap().to_string();
    assert_eq!(created["status"], "awaiting_first_event");
    cluster.wait_partition_leaders("crm-events").await;
    // Through two different nodes, in this order.
    for (node, event) in [
        (
            2,
            json!({"event": "recipe.started", "recipe_id": 1,
            "timestamp": "2026-01-02T03:04:05Z"}),
        ),
        (
            3,
            json!({"event": "connection.error", "connection_id": 8,
            "timestamp": "2026-01-02T03:04:06Z"}),
        ),
    ] {
        deliver(&cluster, node, &id, &secret, event).await;
    }

    let rows = stdout(cli(&cluster).args(["ingest", "tail", &id]));
    assert_eq!(
        rows.lines().collect::<Vec<_>>(),
        vec![
            "2026-01-02T03:04:05Z  api.call  recipe.started → recipe:1",
            "2026-01-02T03:04:06Z  auth.action  connection.error → connection:8",
        ]
    );
    let last = stdout(cli(&cluster).args(["ingest", "tail", &id, "-n", "1", "--json"]));
    let last: Value = serde_json::from_str(last.trim()).unwrap();
    assert_eq!(last["action"], "connection.error");
    assert_eq!(last["sourceId"], id.as_str());
    // Other messages after them in the partition: tail reads further back.
    let others: Vec<String> = (0..50).map(|i| format!("{{\"other\": {i}}}")).collect();
    stdout(cli(&cluster).args(["produce", "crm-events"]).args(&others));
    let still = stdout(cli(&cluster).args(["ingest", "tail", &id]));
    assert_eq!(still, rows);

    // --follow prints the history, then each delivery as it commits.
    let bin = assert_cmd::cargo::cargo_bin("raftstream");
    let mut follower = std::process::Command::new(bin)
        .args(["ingest", "tail", &id, "--follow"])
        .env("RAFTSTREAM_ADDR", cluster.addr(1).to_string())
        .env("RAFTSTREAM_TOKEN", ADMIN_TOKEN)
        .env("HOME", cluster.dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    let output = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(output)) {
            if lines_tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let next_line = || lines.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(next_line().contains("recipe.started"));
    assert!(next_line().contains("connection.error"));
    for (i, event) in ["job.started", "job.completed"].iter().enumerate() {
        let sent = std::time::Instant::now();
        deliver(
            &cluster,
            1 + i as u64,
            &id,
            &secret,
            json!({"event": event, "recipe_id": 1}),
        )
        .await;
        let line = next_line();
        assert!(
            line.contains(&format!("api.call  {event} → recipe:1")),
            "{line}"
        );
        eprintln!(
            "tail --follow printed a delivery {:?} after it was sent",
            sent.elapsed()
        );
    }
    follower.kill().unwrap();
    follower.wait().unwrap();

    let listed = stdout(cli(&cluster).args(["ingest", "list"]));
    assert!(
        listed.contains(&id) && listed.contains("active"),
        "{listed}"
    );
    let shown: Value =
        serde_json::from_str(&stdout(cli(&cluster).args(["ingest", "get", &id]))).unwrap();
    assert_eq!(shown["event_count"], 4);
    let rotated: Value = serde_json::from_str(&stdout(
        cli(&cluster).args(["--json", "ingest", "rotate", &id]),
    ))
    .unwrap();
    let new_secret = rotated["secret"].as_str().unwrap();
    assert_ne!(new_secret, secret);
    assert_eq!(
        rotated["secret_last_four"],
        &new_secret[new_secret.len() - 4..]
    );
    stdout(cli(&cluster).args(["ingest", "delete", &id]));
    let output = cli(&cluster).args(["ingest", "get", &id]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("does not exist"));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn errors_are_one_clear_line_and_a_non_zero_exit() {
    let cluster = TestCluster::start(3).await;
    let output = cli(&cluster).args(["consume", "missing"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: not found"), "{stderr}");

    let created =
        stdout(cli(&cluster).args(["--json", "tokens", "create", "reader", "--scope", "consume"]));
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    assert!(created["token"].as_str().unwrap().starts_with("rst_"));
    let listed = stdout(cli(&cluster).args(["tokens", "list"]));
    assert!(listed.contains("reader"));
    stdout(cli(&cluster).args(["tokens", "revoke", &created["id"].to_string()]));
    assert!(!stdout(cli(&cluster).args(["tokens", "list"])).contains("reader"));

    let completions = stdout(
        Command::cargo_bin("raftstream")
            .unwrap()
            .args(["completions", "bash"]),
    );
    assert!(completions.contains("raftstream"));
    let help = stdout(Command::cargo_bin("raftstream").unwrap().args(["--help"]));
    assert!(help.contains("Examples:"));
    cluster.shutdown().await;
}

/// Against a cluster on TLS the CLI connects with `--tls-ca` (or
/// `RAFTSTREAM_TLS_CA`) and fails with a clear error without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_talks_tls_with_the_cluster_ca() {
    let cluster = TestCluster::start_tls(3).await;
    let ca = cluster.certs.as_ref().unwrap().ca.clone();
    stdout(
        cli(&cluster)
            .arg("--tls-ca")
            .arg(&ca)
            .args(["topics", "create", "secure"]),
    );
    let listed: Value = serde_json::from_str(&stdout(
        cli(&cluster)
            .env("RAFTSTREAM_TLS_CA", &ca)
            .args(["--json", "topics", "list"]),
    ))
    .unwrap();
    assert_eq!(listed[0]["name"], "secure");

    let plain = cli(&cluster).args(["topics", "list"]).output().unwrap();
    assert!(!plain.status.success(), "plain text reached a TLS listener");
    let missing = cli(&cluster)
        .args(["--tls-ca", "/no/such/ca.pem", "topics", "list"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("/no/such/ca.pem"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}
