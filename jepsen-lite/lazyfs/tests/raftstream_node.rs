//! The strongest check: a real `raftstream-node dev` keeps its RocksDB data
//! on a lazyfs mount, is killed with SIGKILL in the middle of publishes,
//! loses every unsynced write in a simulated power loss, and must still hold
//! every message it acknowledged, round after round.
//!
//! The node binary is taken from `RAFTSTREAM_NODE_BIN`, or else from next to
//! the lazyfs binary (`cargo test --workspace` builds both; alone, run
//! `cargo build -p raftstream-node` first).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::thread;
use std::time::{Duration, Instant};

use common::Lazy;

const TOKEN: &str = "rst_lazyfs-power-loss-test-0123456789abcdef";
/// Kill-and-power-loss cycles, each with this many acknowledged publishes
/// before the kill.
const ROUNDS: u32 = 3;
const ACKED_PER_ROUND: usize = 30;
const NODE_DEADLINE: Duration = Duration::from_secs(90);

fn node_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("RAFTSTREAM_NODE_BIN") {
        return PathBuf::from(path);
    }
    let next_to_lazyfs =
        PathBuf::from(env!("CARGO_BIN_EXE_lazyfs")).with_file_name("raftstream-node");
    assert!(
        next_to_lazyfs.exists(),
        "no raftstream-node binary at {}: run `cargo build -p raftstream-node` \
         or set RAFTSTREAM_NODE_BIN",
        next_to_lazyfs.display()
    );
    next_to_lazyfs
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request to 127.0.0.1:`port`; (0, "") when the connection
/// fails, which for a publish means its outcome is unknown.
fn request(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    if stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .is_err()
    {
        return (0, String::new());
    }
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut response = Vec::new();
    if stream.read_to_end(&mut response).is_err() {
        return (0, String::new());
    }
    let response = String::from_utf8_lossy(&response).into_owned();
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        return (0, String::new());
    };
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        unchunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// A node process that is killed and reaped when dropped.
struct Node {
    child: Child,
    http: u16,
    log: PathBuf,
}

/// A thread publishing `{"n": ...}` until the node stops answering.
struct Publisher {
    /// (message id, n) of every acknowledged publish.
    acks: Receiver<(String, u64)>,
    /// Returns the first `n` it did not get an answer for.
    handle: thread::JoinHandle<u64>,
}

impl Node {
    fn start(data_dir: &Path, log: PathBuf) -> Node {
        let http = free_port();
        let grpc = free_port();
        let child = Command::new(node_binary())
            .arg("dev")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--grpc-addr")
            .arg(format!("127.0.0.1:{grpc}"))
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{http}"))
            .env("RAFTSTREAM_ADMIN_TOKEN", TOKEN)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(File::create(&log).unwrap())
            .stderr(File::create(log.with_extension("err")).unwrap())
            .spawn()
            .unwrap();
        let mut node = Node { child, http, log };
        node.wait_until("ready", |node| node.request("GET", "/readyz", "").0 == 200);
        node
    }

    fn logs(&self) -> String {
        let out = std::fs::read_to_string(&self.log).unwrap_or_default();
        let err = std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default();
        format!("{out}{err}")
    }

    fn wait_until(&mut self, what: &str, mut done: impl FnMut(&Node) -> bool) {
        let start = Instant::now();
        while !done(self) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the node exited with {status} waiting for {what}:\n{}",
                    self.logs()
                );
            }
            assert!(
                start.elapsed() < NODE_DEADLINE,
                "the node was not {what} in time:\n{}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        request(self.http, method, path, body)
    }

    /// Publishes `{"n": next_n}`, `{"n": next_n + 1}`, ... from a thread
    /// until the node stops answering. A 503 means the partition has no
    /// leader yet and nothing was written, so that `n` is retried.
    fn publisher(&self, next_n: u64) -> Publisher {
        let port = self.http;
        let (tx, acks) = channel();
        let handle = thread::spawn(move || {
            let mut n = next_n;
            loop {
                let payload = format!(r#"{{"n": {n}}}"#);
                match request(port, "POST", "/api/v1/topics/lazy/publish", &payload) {
                    (200, body) => {
                        let ack: serde_json::Value = serde_json::from_str(&body).unwrap();
                        let id = ack["message_id"].as_str().unwrap().to_string();
                        if tx.send((id, n)).is_err() {
                            return n + 1;
                        }
                        n += 1;
                    }
                    (503, _) => thread::sleep(Duration::from_millis(50)),
                    // The node is gone; this publish's outcome is unknown.
                    (0, _) => return n + 1,
                    (status, body) => panic!("publish {payload}: {status} {body}"),
                }
            }
        });
        Publisher { acks, handle }
    }

    /// Reads the whole topic back, page by page, as message id to `n`.
    fn read_all(&mut self) -> HashMap<String, u64> {
        let mut seen = HashMap::new();
        let mut after: Option<String> = None;
        loop {
            let query = match &after {
                Some(id) => format!(r#"{{"after_message_id": "{id}", "batch_size": 50}}"#),
                None => r#"{"batch_size": 50}"#.to_string(),
            };
            let mut page = String::new();
            // Right after a restart the partition may not have a leader yet.
            self.wait_until("serving the topic", |node| {
                let (status, body) = node.request("POST", "/api/v1/topics/lazy/consume", &query);
                page = body;
                status == 200
            });
            let page: serde_json::Value = serde_json::from_str(&page).unwrap();
            let messages = page["messages"].as_array().unwrap();
            if messages.is_empty() {
                return seen;
            }
            for message in messages {
                let id = message["message_id"].as_str().unwrap().to_string();
                seen.insert(id.clone(), message["payload"]["n"].as_u64().unwrap());
                after = Some(id);
            }
        }
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        // Reaped means every request it had in flight on the mount has been
        // answered or withdrawn, so nothing of it lands after the power loss.
        self.child.wait().unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_node_keeps_every_acknowledged_message_through_kills_and_power_losses() {
    let mut lazy = Lazy::start();
    let data_dir = lazy.path("data");
    let logs = tempfile::TempDir::new().unwrap();
    // (message id, n) of every publish the node acknowledged.
    let mut acked: Vec<(String, u64)> = Vec::new();
    let mut next_n = 0u64;

    for round in 0..=ROUNDS {
        let mut node = Node::start(&data_dir, logs.path().join(format!("node{round}.log")));
        if round == 0 {
            let (status, body) = node.request(
                "POST",
                "/api/event_streams/topics",
                r#"{"name": "lazy", "partitions": 1}"#,
            );
            assert_eq!(status, 200, "creating the topic: {body}");
        }
        let seen = node.read_all();
        let kept = acked.iter().filter(|(id, _)| seen.contains_key(id)).count();
        for (id, n) in &acked {
            assert_eq!(
                seen.get(id),
                Some(n),
                "acknowledged message {id} (n = {n}) is not there after {round} power \
                 losses; {kept} of {} acknowledged messages read back",
                acked.len()
            );
        }
        if round == ROUNDS {
            break;
        }

        // The kill lands in the middle of publishes. A publish without an
        // answer is indeterminate and not checked; every acknowledged one is.
        let publisher = node.publisher(next_n);
        for _ in 0..ACKED_PER_ROUND {
            match publisher.acks.recv_timeout(NODE_DEADLINE) {
                Ok(ack) => acked.push(ack),
                Err(e) => panic!("round {round}: no acknowledgement ({e}):\n{}", node.logs()),
            }
        }
        node.kill();
        next_n = publisher.handle.join().unwrap();
        acked.extend(publisher.acks.try_iter());
        let report = lazy.power_loss();
        eprintln!(
            "round {round}: {} acknowledged in all; {report}",
            acked.len()
        );
    }
    assert!(lazy.stop().success());
}
