//! The `raftstream` CLI end to end against a real 3-node cluster on loopback.

#![allow(clippy::unwrap_used)]

#[path = "../../node/tests/it/common/mod.rs"]
mod common;

use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use assert_cmd::Command;
use common::ADMIN_TOKEN;
use common::TestCluster;
use raftstream_client::Client;
use raftstream_client::ClientConfig;
use serde_json::Value;
use serde_json::json;

/// Every variable the CLI reads: the tests set what they mean to, and
/// nothing leaks in from the environment they run in.
const CLI_VARIABLES: [&str; 6] = [
    "RAFTSTREAM_ADDR",
    "RAFTSTREAM_TOKEN",
    "RAFTSTREAM_PROFILE",
    "RAFTSTREAM_TLS_CA",
    "RAFTSTREAM_TLS_CERT",
    "RAFTSTREAM_TLS_KEY",
];

/// The CLI with no connection settings, and HOME and XDG_CONFIG_HOME in
/// `home`, so that it never reads or writes the real profiles.
fn bare_cli(home: &Path) -> Command {
    let mut command = Command::cargo_bin("raftstream").unwrap();
    for variable in CLI_VARIABLES {
        command.env_remove(variable);
    }
    command
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("xdg"));
    command
}

/// The CLI as node 1's admin.
fn cli(cluster: &TestCluster) -> Command {
    let mut command = bare_cli(cluster.dir.path());
    command
        .env("RAFTSTREAM_ADDR", cluster.addr(1).to_string())
        .env("RAFTSTREAM_TOKEN", ADMIN_TOKEN);
    command
}

/// `cli` as a child process, for commands that keep running.
fn spawn_cli(cluster: &TestCluster, node: u64, args: &[&str]) -> std::process::Child {
    let home = cluster.dir.path();
    let mut command = std::process::Command::new(assert_cmd::cargo::cargo_bin("raftstream"));
    for variable in CLI_VARIABLES {
        command.env_remove(variable);
    }
    command
        .args(args)
        .env("RAFTSTREAM_ADDR", cluster.addr(node).to_string())
        .env("RAFTSTREAM_TOKEN", ADMIN_TOKEN)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("xdg"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The exit status and stderr of a command that must fail.
fn failure(command: &mut Command) -> (i32, String) {
    let output = command.output().unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(!output.status.success(), "succeeded: {stderr}");
    (output.status.code().unwrap(), stderr)
}

/// stdout as one JSON document.
fn json_out(command: &mut Command) -> Value {
    let out = stdout(command);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not one JSON document ({e}): {out}"))
}

/// stdout as one JSON object per line.
fn json_lines(command: &mut Command) -> Vec<Value> {
    stdout(command)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
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

/// Creates a topic with `raftstream topics create <args>` (the name first)
/// and waits until each of its partitions has a leader.
async fn create_topic(cluster: &TestCluster, args: &[&str]) {
    stdout(cli(cluster).args(["topics", "create"]).args(args));
    cluster.wait_partition_leaders(args[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn produce_then_consume_the_same_data_and_manage_groups() {
    let cluster = TestCluster::start(3).await;
    create_topic(&cluster, &["orders", "--partitions", "2"]).await;
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
    assert!(
        status.contains("spread (most minus fewest per node): "),
        "{status}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follow_mode_prints_new_messages_as_they_commit() {
    let cluster = TestCluster::start(3).await;
    create_topic(&cluster, &["live"]).await;
    let mut follower = spawn_cli(
        &cluster,
        2,
        &[
            "consume", "live", "--follow", "--max", "3", "--output", "raw",
        ],
    );
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
    let mut follower = spawn_cli(&cluster, 1, &["ingest", "tail", &id, "--follow"]);
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

/// Without a token, or with one the cluster does not know, the CLI says so
/// and where the token came from, with exit status 3, even when another
/// seed is unreachable; only when no node answers is it "no node
/// reachable" (exit 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_or_refused_token_says_so_not_no_node_reachable() {
    let cluster = TestCluster::start(1).await;
    let addr = cluster.addr(1).to_string();
    // Port 1 on loopback refuses connections: a seed that is down.
    let with_a_dead_seed = format!("127.0.0.1:1,{addr}");
    // (case, environment, flags, how stderr starts)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str], &'a str);
    let cases: [Case; 4] = [
        (
            "no token",
            &[],
            &[],
            "error: authentication failed: no token given; set RAFTSTREAM_TOKEN",
        ),
        (
            "an unknown token in the environment",
            &[("RAFTSTREAM_TOKEN", "rst_wrong")],
            &[],
            "error: authentication failed: the token from RAFTSTREAM_TOKEN was refused \
             (unknown or revoked token)",
        ),
        (
            "an unknown token as a flag, over a good one in the environment",
            &[("RAFTSTREAM_TOKEN", ADMIN_TOKEN)],
            &["--token", "rst_wrong"],
            "error: authentication failed: the token from --token was refused",
        ),
        (
            "an unknown token, with a seed down",
            &[("RAFTSTREAM_TOKEN", "rst_wrong")],
            &["--addr", &with_a_dead_seed],
            "error: authentication failed: the token from RAFTSTREAM_TOKEN was refused",
        ),
    ];
    for (case, env, flags, expected) in cases {
        let mut command = bare_cli(cluster.dir.path());
        command
            .env("RAFTSTREAM_ADDR", &addr)
            .envs(env.iter().copied());
        let (status, stderr) = failure(command.args(flags).args(["topics", "list"]));
        assert!(stderr.starts_with(expected), "{case}: {stderr}");
        assert_eq!(status, 3, "{case}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{case}: {stderr}");
    }

    // A token without the scope: refused too, and named.
    let reader: Value = json_out(
        cli(&cluster).args(["--json", "tokens", "create", "reader", "--scope", "consume"]),
    );
    let (status, stderr) = failure(
        cli(&cluster)
            .env("RAFTSTREAM_TOKEN", reader["token"].as_str().unwrap())
            .args(["topics", "create", "denied"]),
    );
    assert_eq!(status, 3, "{stderr}");
    assert!(
        stderr.starts_with("error: permission denied: ")
            && stderr.contains("the token from RAFTSTREAM_TOKEN lacks the scope or topic"),
        "{stderr}"
    );

    let (status, stderr) = failure(
        cli(&cluster)
            .env("RAFTSTREAM_ADDR", "127.0.0.1:1")
            .args(["topics", "list"]),
    );
    assert_eq!(status, 4, "{stderr}");
    assert!(stderr.starts_with("error: no node reachable"), "{stderr}");

    // The library's own error, for programs that match on it.
    let refused = Client::connect(ClientConfig::new([&addr, "127.0.0.1:1"])).await;
    assert!(
        matches!(refused, Err(raftstream_client::Error::Unauthenticated(_))),
        "{refused:?}"
    );
    cluster.shutdown().await;
}

/// Every command's --json output is one JSON document (messages: one
/// object per line), and it carries what the command did.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_output_parses_for_every_command() {
    let cluster = TestCluster::start(1).await;
    let created =
        json_out(cli(&cluster).args(["--json", "topics", "create", "j", "--partitions", "2"]));
    assert_eq!(created["name"], "j");
    assert_eq!(created["partitions"].as_array().unwrap().len(), 2);
    cluster.wait_partition_leaders("j").await;
    let described = json_out(cli(&cluster).args(["topics", "describe", "j", "--json"]));
    assert_eq!(described["id"], created["id"]);
    let updated =
        json_out(cli(&cluster).args(["--json", "topics", "update", "j", "--description", "d"]));
    assert_eq!(updated["description"], "d");

    let produced =
        json_out(cli(&cluster).args(["--json", "produce", "j", "--partition", "1", "a", "b", "c"]));
    assert_eq!(produced["produced"], 3);
    assert_eq!(produced["last_message_id"], "1-2");
    let read = json_lines(cli(&cluster).args(["--json", "consume", "j", "--partition", "1"]));
    let values: Vec<&str> = read.iter().map(|m| m["value"].as_str().unwrap()).collect();
    assert_eq!(values, ["a", "b", "c"]);
    assert_eq!(read[2]["message_id"], "1-2");
    // --json is --output json; a different --output is a contradiction.
    let (_, stderr) = failure(cli(&cluster).args(["--json", "consume", "j", "--output", "raw"]));
    assert!(stderr.contains("--json and --output"), "{stderr}");

    stdout(cli(&cluster).args(["consume", "j", "--group", "g", "--max", "2"]));
    assert_eq!(
        json_out(cli(&cluster).args(["--json", "groups", "list", "j"])),
        json!(["g"])
    );
    let offsets = json_out(cli(&cluster).args(["--json", "groups", "offsets", "j", "g"]));
    // Partition 0 is empty: nothing read there, nothing committed.
    assert_eq!(offsets, json!([{"partition": 1, "offset": 2, "lag": 1}]));
    let reset = json_out(cli(&cluster).args([
        "--json",
        "groups",
        "reset",
        "j",
        "g",
        "--to-latest",
        "--partition",
        "1",
    ]));
    assert_eq!(reset, json!([{"partition": 1, "offset": 3}]));

    let status = json_out(cli(&cluster).args(["--json", "cluster", "status"]));
    assert_eq!(status["nodes"].as_array().unwrap().len(), 1);
    // One node holds every replica and leads every partition: nothing to
    // spread.
    assert_eq!(status["spread"], json!({"replicas": 0, "leaders": 0}));
    let token =
        json_out(cli(&cluster).args(["--json", "tokens", "create", "t", "--scope", "publish"]));
    let listed = json_out(cli(&cluster).args(["--json", "tokens", "list"]));
    assert!(
        listed.as_array().unwrap().iter().any(|t| t["name"] == "t"),
        "{listed}"
    );
    let revoked =
        json_out(cli(&cluster).args(["--json", "tokens", "revoke", &token["id"].to_string()]));
    assert_eq!(revoked, json!({"revoked": token["id"]}));

    let source = json_out(cli(&cluster).args(["--json", "ingest", "create", "s", "--topic", "j"]));
    let id = source["id"].as_str().unwrap();
    let sources = json_out(cli(&cluster).args(["--json", "ingest", "list"]));
    assert_eq!(sources[0]["id"], id);
    assert_eq!(
        json_out(cli(&cluster).args(["--json", "ingest", "get", id]))["id"],
        id
    );
    assert!(stdout(cli(&cluster).args(["--json", "ingest", "tail", id])).is_empty());
    let deleted = json_out(cli(&cluster).args(["--json", "ingest", "delete", id]));
    assert_eq!(deleted, json!({"deleted": id}));

    let purged = json_out(cli(&cluster).args(["--json", "topics", "purge", "j"]));
    assert_eq!(purged, json!({"purged": "j", "partition": null}));
    assert!(stdout(cli(&cluster).args(["--json", "consume", "j"])).is_empty());
    let deleted = json_out(cli(&cluster).args(["--json", "topics", "delete", "j"]));
    assert_eq!(deleted, json!({"deleted": "j"}));
    assert_eq!(
        json_out(cli(&cluster).args(["--json", "topics", "list"])),
        json!([])
    );
    cluster.shutdown().await;
}

/// `consume --since` starts at the first message at or after a time: a
/// duration before now, or an RFC 3339 time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consume_since_starts_at_a_time() {
    let cluster = TestCluster::start(1).await;
    create_topic(&cluster, &["timed"]).await;
    stdout(cli(&cluster).args(["produce", "timed", "before"]));
    // The node stamps messages with this machine's clock.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let between = time::OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stdout(cli(&cluster).args(["produce", "timed", "after"]));

    let values = |since: &str| -> Vec<String> {
        let read = json_lines(cli(&cluster).args(["consume", "timed", "--json", "--since", since]));
        read.iter()
            .map(|m| m["value"].as_str().unwrap().to_string())
            .collect()
    };
    let between = between
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    assert_eq!(values(&between), ["after"]);
    assert_eq!(values("1h"), ["before", "after"]);
    // A millisecond before the command ran: after both.
    assert!(values("1ms").is_empty());

    let (status, stderr) = failure(cli(&cluster).args(["consume", "timed", "--since", "an hour"]));
    assert_eq!(status, 1);
    assert!(stderr.contains("not a duration"), "{stderr}");
    cluster.shutdown().await;
}

/// `produce --header` puts headers on every message; `consume --json`
/// shows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn produced_headers_come_back_with_the_messages() {
    let cluster = TestCluster::start(1).await;
    create_topic(&cluster, &["headed"]).await;
    stdout(cli(&cluster).args([
        "produce",
        "headed",
        "one",
        "two",
        "--header",
        "trace-id=abc=1",
        "--header",
        "source=cli",
    ]));
    stdout(cli(&cluster).args(["produce", "headed", "bare"]));
    let read = json_lines(cli(&cluster).args(["consume", "headed", "--json"]));
    let headers: Vec<&Value> = read.iter().map(|m| &m["headers"]).collect();
    let both = json!({"trace-id": "abc=1", "source": "cli"});
    assert_eq!(headers, [&both, &both, &json!({})]);
    let pretty = stdout(cli(&cluster).args(["consume", "headed", "--max", "1"]));
    assert!(
        pretty.contains(" source=cli trace-id=abc=1  one"),
        "{pretty}"
    );

    let (status, stderr) = failure(cli(&cluster).args([
        "produce", "headed", "x", "--header", "a=1", "--header", "a=2",
    ]));
    assert_eq!(status, 1);
    assert!(stderr.contains("--header a is given twice"), "{stderr}");
    let (status, _) =
        failure(cli(&cluster).args(["produce", "headed", "x", "--header", "novalue"]));
    assert_eq!(status, 2);
    cluster.shutdown().await;
}

/// Profiles live under XDG_CONFIG_HOME, owner-only; the current one (or
/// --profile) connects, and the environment and flags win over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn profiles_connect_and_flags_and_the_environment_win_over_them() {
    let cluster = TestCluster::start(1).await;
    let home = cluster.dir.path();
    let addr = cluster.addr(1).to_string();
    let profile_cli = || bare_cli(home);

    let created = json_out(profile_cli().args([
        "--json",
        "profile",
        "create",
        "good",
        "--addr",
        &addr,
        "--token",
        ADMIN_TOKEN,
    ]));
    assert_eq!(
        created["current"], true,
        "the first profile is the current one"
    );
    let path = home.join("xdg/raftstream/config.toml");
    assert_eq!(created["path"], path.to_str().unwrap());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(
        !home.join(".config").exists(),
        "XDG_CONFIG_HOME is not where they went"
    );
    let created = json_out(profile_cli().args([
        "profile",
        "create",
        "bad",
        "--json",
        "--addr",
        &addr,
        "--token",
        "rst_wrong",
    ]));
    assert_eq!(created["current"], false);
    let (_, stderr) = failure(profile_cli().args(["profile", "create", "good", "--addr", &addr]));
    assert!(stderr.contains("exists; --force"), "{stderr}");
    // Variables are not saved: only what this command line says.
    let (_, stderr) = failure(
        profile_cli()
            .env("RAFTSTREAM_TOKEN", ADMIN_TOKEN)
            .args(["profile", "create", "from-env"]),
    );
    assert!(stderr.contains("nothing to save"), "{stderr}");

    let listed = stdout(profile_cli().args(["profile", "list", "--json"]));
    assert!(
        !listed.contains(ADMIN_TOKEN) && !listed.contains("rst_wrong"),
        "{listed}"
    );
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(
        listed,
        json!([
            {"name": "bad", "current": false, "addr": addr, "token_set": true,
             "tls_ca": null, "tls_cert": null, "tls_key": null},
            {"name": "good", "current": true, "addr": addr, "token_set": true,
             "tls_ca": null, "tls_cert": null, "tls_key": null},
        ])
    );

    let topics_list = || {
        let mut command = profile_cli();
        command.args(["--json", "topics", "list"]);
        command
    };
    // The current profile connects.
    assert_eq!(json_out(&mut topics_list()), json!([]));
    // --profile (or RAFTSTREAM_PROFILE) picks another.
    let (status, stderr) = failure(topics_list().args(["--profile", "bad"]));
    assert_eq!(status, 3);
    assert!(
        stderr.contains("the token from profile \"bad\" was refused"),
        "{stderr}"
    );
    let (status, _) = failure(topics_list().env("RAFTSTREAM_PROFILE", "bad"));
    assert_eq!(status, 3);
    let (_, stderr) = failure(topics_list().args(["--profile", "nope"]));
    assert!(stderr.contains("no profile \"nope\""), "{stderr}");

    assert_eq!(
        json_out(profile_cli().args(["--json", "profile", "use", "bad"])),
        json!({"current": "bad"})
    );
    let (status, _) = failure(&mut topics_list());
    assert_eq!(status, 3);
    // The environment wins over the profile, and a flag over both.
    assert_eq!(
        json_out(topics_list().env("RAFTSTREAM_TOKEN", ADMIN_TOKEN)),
        json!([])
    );
    assert_eq!(
        json_out(
            topics_list()
                .env("RAFTSTREAM_TOKEN", "rst_wrong_too")
                .args(["--token", ADMIN_TOKEN])
        ),
        json!([])
    );
    let (status, _) = failure(
        topics_list()
            .env("RAFTSTREAM_ADDR", "127.0.0.1:1")
            .env("RAFTSTREAM_TOKEN", ADMIN_TOKEN),
    );
    assert_eq!(status, 4, "RAFTSTREAM_ADDR wins over the profile's address");
    assert_eq!(
        json_out(
            topics_list()
                .env("RAFTSTREAM_ADDR", "127.0.0.1:1")
                .env("RAFTSTREAM_TOKEN", ADMIN_TOKEN)
                .args(["--addr", &addr])
        ),
        json!([])
    );

    // Deleting the current profile leaves none current.
    assert_eq!(
        json_out(profile_cli().args(["--json", "profile", "delete", "bad"])),
        json!({"deleted": "bad"})
    );
    let listed = json_out(profile_cli().args(["--json", "profile", "list"]));
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["current"], false);
    let table = stdout(profile_cli().args(["profile", "list"]));
    assert!(table.contains("good") && !table.contains("bad"), "{table}");
    cluster.shutdown().await;
}

/// `topics move` moves a partition, `cluster status --json` shows the
/// placement and the move, `cluster remove-node` drains a node and takes it
/// out, `cluster add-node` adds a joining one, and bad arguments fail
/// before anything changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn topics_move_and_remove_node_change_the_placement_status_shows() {
    let mut cluster = TestCluster::start(3).await;
    // Two replicas on three nodes: a move has somewhere to go.
    json_out(cli(&cluster).args([
        "--json",
        "topics",
        "create",
        "m",
        "--replication-factor",
        "2",
    ]));
    cluster.wait_partition_leaders("m").await;
    let status = json_out(cli(&cluster).args(["--json", "cluster", "status"]));
    // Replicas 1, 1 and 0.
    common::assert_shown_settled(&status, 3, 2, 1);
    let leaders = common::node_total(&status, "leaders");
    let preferred = common::node_total(&status, "preferred_leaders");
    assert_eq!((leaders, preferred), (1, 1), "{status}");

    let described = json_out(cli(&cluster).args(["--json", "topics", "describe", "m"]));
    let before: Vec<u64> =
        serde_json::from_value(described["partitions"][0]["replicas"].clone()).unwrap();
    let newcomer = (1..=3).find(|n| !before.contains(n)).unwrap();
    let target = vec![newcomer, before[0]];
    let to = format!("{},{}", target[0], target[1]);

    // Usage errors (exit 2) and refusals (exit 1) change nothing.
    for (args, exit, says) in [
        (vec!["topics", "move", "m", "0"], 2, "--to"),
        (
            vec!["topics", "move", "m", "0", "--to", "a,b"],
            2,
            "invalid",
        ),
        (vec!["topics", "move", "m", "x", "--to", &to], 2, "invalid"),
        (
            vec!["topics", "move", "m", "0", "--to", "1"],
            1,
            "invalid request",
        ),
        (
            vec!["topics", "move", "missing", "0", "--to", &to],
            1,
            "not found",
        ),
        (
            vec!["cluster", "remove-node", "3", "--timeout", "soon"],
            2,
            "invalid",
        ),
        (vec!["cluster", "add-node", "4"], 2, "ADDR"),
        (
            vec!["cluster", "add-node", "4", "nowhere"],
            1,
            "invalid request",
        ),
    ] {
        let (code, stderr) = failure(cli(&cluster).args(&args));
        assert_eq!(code, exit, "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert_eq!(
        json_out(cli(&cluster).args(["--json", "topics", "describe", "m"]))["partitions"],
        described["partitions"]
    );

    let moved = json_out(cli(&cluster).args(["--json", "topics", "move", "m", "0", "--to", &to]));
    assert_eq!(
        moved,
        json!({"topic": "m", "partition": 0, "from": before, "to": target})
    );
    common::eventually("the move is done", Duration::from_secs(60), || async {
        let status = json_out(cli(&cluster).args(["--json", "cluster", "status"]));
        let on_newcomer = status["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["id"] == newcomer)?["replicas"]
            .clone();
        (status["moves"] == json!([]) && on_newcomer == 1).then_some(())
    })
    .await;

    // Node 3 leaves: its replica (if it has one) moves to the other two.
    let removed =
        json_out(cli(&cluster).args(["--json", "cluster", "remove-node", "3", "--timeout", "90s"]));
    assert_eq!(removed, json!({"removed": 3}));
    let status = json_out(cli(&cluster).args(["--json", "cluster", "status"]));
    let ids: Vec<u64> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2], "{status}");

    // A new node joins through node 1.
    let peer_addr = cluster.start_joining_node(4, 1).await;
    let added = common::eventually("node 4 added", Duration::from_secs(60), || async {
        let output = cli(&cluster)
            .args(["--json", "cluster", "add-node", "4", &peer_addr])
            .output()
            .unwrap();
        // Until it caught up, the cluster may answer unavailable.
        output
            .status
            .success()
            .then(|| serde_json::from_slice::<Value>(&output.stdout).unwrap())
    })
    .await;
    assert_eq!(added, json!({"added": 4, "peer_addr": peer_addr}));
    let status = json_out(cli(&cluster).args(["--json", "cluster", "status"]));
    common::assert_shown_voter(&status, 4);
    cluster.shutdown().await;
}

/// `raftstream subscriptions ...` through a whole subscription's life, as
/// JSON and as text, and the mistakes it refuses before sending anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscriptions_are_managed_from_the_cli() {
    let cluster = TestCluster::start(1).await;
    create_topic(&cluster, &["orders", "--partitions", "2"]).await;
    // Nothing listens there: these subscriptions are managed, not delivered.
    let endpoint = "http://127.0.0.1:9/hook";
    let created = json_out(cli(&cluster).args([
        "--json",
        "subscriptions",
        "create",
        "billing",
        "--topic",
        "orders",
        "--endpoint",
        endpoint,
        "--filter",
        "/type=paid",
        "--batch-size",
        "10",
        "--from-beginning",
    ]));
    let id = created["id"].as_str().unwrap().to_string();
    let secret = created["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"), "{created}");
    assert_eq!(created["secret_last_four"], &secret[secret.len() - 4..]);
    assert_eq!(
        created["filter"],
        json!({"pointer": "/type", "equals": "paid"})
    );
    assert_eq!(created["settings"]["batch_size"], 10);
    assert_eq!(created["settings"]["max_attempts"], 5, "the default");
    assert_eq!(created["dead_letter_topic"], "orders.dead-letter");
    assert_eq!(created["positions"].as_array().unwrap().len(), 2);

    let listed = json_out(cli(&cluster).args(["--json", "subscriptions", "list"]));
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    assert!(listed[0].get("secret").is_none(), "{listed}");
    let table = stdout(cli(&cluster).args(["subscriptions", "list"]));
    assert!(table.contains(&id) && table.contains("active"), "{table}");
    let shown = json_out(cli(&cluster).args(["subscriptions", "get", &id]));
    assert_eq!(shown["name"], "billing");
    assert!(!shown.to_string().contains(secret));

    let updated = json_out(cli(&cluster).args([
        "--json",
        "subscriptions",
        "update",
        &id,
        "--name",
        "billing v2",
        "--no-filter",
        "--max-attempts",
        "9",
    ]));
    assert_eq!(updated["name"], "billing v2");
    assert!(updated["filter"].is_null(), "{updated}");
    assert_eq!(updated["settings"]["max_attempts"], 9);
    assert_eq!(updated["settings"]["batch_size"], 10, "unchanged");

    let paused = stdout(cli(&cluster).args(["subscriptions", "pause", &id]));
    assert_eq!(paused.trim(), format!("paused subscription {id} (paused)"));
    let resumed = json_out(cli(&cluster).args(["--json", "subscriptions", "resume", &id]));
    assert_eq!(resumed["paused"], false);
    for (generation, from) in [
        (1, vec!["--from-offset", "0"]),
        (2, vec!["--since", "1h"]),
        (3, vec!["--since", "2026-01-02T03:04:05Z"]),
        (4, vec!["--latest"]),
    ] {
        let replayed = json_out(
            cli(&cluster)
                .args(["--json", "subscriptions", "replay", &id])
                .args(&from),
        );
        assert_eq!(replayed["generation"], generation, "{from:?}");
    }

    // Refused before anything is sent: no start, two starts, a zero
    // setting, a filter without a value.
    let (status, stderr) = failure(cli(&cluster).args(["subscriptions", "replay", &id]));
    assert_eq!(status, 1);
    assert!(stderr.contains("--from-beginning"), "{stderr}");
    let (status, _) = failure(cli(&cluster).args([
        "subscriptions",
        "replay",
        &id,
        "--latest",
        "--from-beginning",
    ]));
    assert_eq!(status, 2, "a usage error");
    let (_, stderr) =
        failure(cli(&cluster).args(["subscriptions", "update", &id, "--timeout-ms", "0"]));
    assert!(stderr.contains("timeout_ms"), "{stderr}");
    let (status, _) =
        failure(cli(&cluster).args(["subscriptions", "update", &id, "--filter", "/type"]));
    assert_eq!(status, 2);
    // Refused by the cluster, in one line.
    let (_, stderr) = failure(cli(&cluster).args([
        "subscriptions",
        "create",
        "x",
        "--topic",
        "orders",
        "--endpoint",
        "ftp://nowhere/",
    ]));
    assert!(stderr.starts_with("error: invalid request"), "{stderr}");
    assert!(stderr.contains("endpoint"), "{stderr}");

    let deleted = json_out(cli(&cluster).args(["--json", "subscriptions", "delete", &id]));
    assert_eq!(deleted, json!({"deleted": id}));
    let (_, stderr) = failure(cli(&cluster).args(["subscriptions", "get", &id]));
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert_eq!(
        json_out(cli(&cluster).args(["--json", "subscriptions", "list"])),
        json!([])
    );
    cluster.shutdown().await;
}
