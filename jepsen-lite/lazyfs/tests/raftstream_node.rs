//! The strongest check: a real `raftstream-node dev` keeps its RocksDB data
//! on a lazyfs mount, is killed with SIGKILL, loses every unsynced write in a
//! simulated power loss, and must still hold every message it acknowledged.
//!
//! The node binary is taken from `RAFTSTREAM_NODE_BIN`, or else from next to
//! the lazyfs binary (`cargo test --workspace` builds both; alone, run
//! `cargo build -p raftstream-node` first).
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::Lazy;

const TOKEN: &str = "rst_lazyfs-power-loss-test-0123456789abcdef";
const MESSAGES: u32 = 40;
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

/// A node process that is killed and reaped when dropped.
struct Node {
    child: Child,
    http: u16,
    log: PathBuf,
}

impl Node {
    fn start(data_dir: &std::path::Path, log: PathBuf) -> Node {
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

    /// One HTTP/1.1 request; (0, "") when the connection fails.
    fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.http)) else {
            return (0, String::new());
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
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
        (
            status,
            if chunked {
                unchunk(body)
            } else {
                body.to_string()
            },
        )
    }

    /// Publishes one message and returns the acknowledgement. A 503 means
    /// the new topic's partition has no leader yet and nothing was written,
    /// so it is retried; anything else but 200 fails the test.
    fn publish(&self, payload: &str) -> String {
        let start = Instant::now();
        loop {
            let (status, body) = self.request("POST", "/api/v1/topics/lazy/publish", payload);
            match status {
                200 => return body,
                503 if start.elapsed() < NODE_DEADLINE => thread::sleep(Duration::from_millis(100)),
                _ => panic!("publish {payload}: {status} {body}"),
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

/// The value of `"key":"..."` in a JSON text; enough for message ids.
fn string_field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let start = json.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let len = json[start..].find('"')?;
    Some(&json[start..start + len])
}

#[test]
fn a_node_keeps_every_acknowledged_message_through_kill_and_power_loss() {
    let mut lazy = Lazy::start();
    let data_dir = lazy.path("data");
    let logs = tempfile::TempDir::new().unwrap();

    let node = Node::start(&data_dir, logs.path().join("node1.log"));
    let (status, body) = node.request(
        "POST",
        "/api/event_streams/topics",
        r#"{"name": "lazy", "partitions": 1}"#,
    );
    assert_eq!(status, 200, "creating the topic: {body}");
    let mut acked = Vec::new();
    for i in 0..MESSAGES {
        let payload = format!(r#"{{"n":{i},"tag":"lazyfs-{i}"}}"#);
        let body = node.publish(&payload);
        let id = string_field(&body, "message_id").unwrap().to_string();
        acked.push((id, format!("lazyfs-{i}")));
    }
    node.kill();
    let report = lazy.power_loss();
    eprintln!("{report}");

    let node = Node::start(&data_dir, logs.path().join("node2.log"));
    let mut seen = String::new();
    let mut node = node;
    node.wait_until("serving the topic", |node| {
        let (status, body) = node.request(
            "POST",
            "/api/v1/topics/lazy/consume",
            r#"{"batch_size": 50}"#,
        );
        if status == 200 {
            seen = body;
        }
        status == 200
    });
    for (id, tag) in &acked {
        assert!(
            seen.contains(&format!("\"message_id\":\"{id}\"")) && seen.contains(tag),
            "acknowledged message {id} ({tag}) is gone after the power loss; read back: {seen}"
        );
    }
    drop(node);
    assert!(lazy.stop().success());
}
