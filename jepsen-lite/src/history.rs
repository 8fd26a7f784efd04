//! The recorded history: every operation with its start and end time and its
//! outcome, plus the fault windows the nemesis opened. One JSON object per
//! line in `history.jsonl`.

use std::io::BufRead;
use std::io::Write;
use std::path::Path;

use serde::Deserialize;
use serde::Serialize;

/// What a client learned about an operation. A timeout or a broken
/// connection is `Info` (indeterminate), never `Fail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Fail,
    Info,
}

/// The path a send took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// The client library's idempotent, batching producer.
    Idempotent,
    /// A raw gRPC publish, retried only when the node said it did not run it.
    Grpc,
    /// The HTTP gateway's publish.
    Http,
}

/// Where a poll asked to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Start {
    Offset(u64),
    /// After the message at this offset (a message id).
    After(u64),
    /// The first message stamped at or after this time (ms since the epoch).
    Timestamp(i64),
}

/// One message as a read returned it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Msg {
    pub offset: u64,
    pub value: String,
    pub timestamp_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum Kind {
    Send {
        value: String,
        via: Via,
        /// The node the request went to first (0: the client library chose).
        node: u64,
        /// Set on success.
        partition: Option<u32>,
        offset: Option<u64>,
        timestamp_ms: Option<i64>,
    },
    Poll {
        /// A consumer session reads one partition sequentially.
        session: u64,
        node: u64,
        partition: u32,
        start: Start,
        messages: Vec<Msg>,
        next_offset: Option<u64>,
    },
    Commit {
        group: String,
        partition: u32,
        offset: u64,
    },
    FetchCommitted {
        group: String,
        partition: u32,
        /// None: the group has no committed offset on this partition.
        offset: Option<u64>,
    },
    /// After healing: one node's whole copy of one partition, read locally.
    FinalRead {
        node: u64,
        partition: u32,
        messages: Vec<Msg>,
    },
    /// A fault window: from the fault's start to its heal.
    Fault { name: String, detail: String },
    /// A node exited although nobody killed it.
    Crash { node: u64 },
    /// A node stopped itself (exit 74) after a disk fault the nemesis
    /// injected on it failed one of its writes or fsyncs, as it should; the
    /// nemesis restarts it once the fault is healed. Not an anomaly.
    StorageExit { node: u64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    pub id: u64,
    /// The worker that ran it (a producer, a consumer, `nemesis`, `final`).
    pub process: String,
    /// Microseconds since the run started.
    pub start_us: u64,
    pub end_us: u64,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(flatten)]
    pub kind: Kind,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {source}")]
    Parse {
        path: String,
        line: usize,
        source: serde_json::Error,
    },
}

pub fn write(path: &Path, ops: &[Op]) -> Result<(), HistoryError> {
    let io = |source| HistoryError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::create(path).map_err(io)?;
    let mut out = std::io::BufWriter::new(file);
    for op in ops {
        let line = serde_json::to_string(op).map_err(|e| HistoryError::Parse {
            path: path.display().to_string(),
            line: 0,
            source: e,
        })?;
        writeln!(out, "{line}").map_err(io)?;
    }
    out.flush().map_err(io)
}

pub fn read(path: &Path) -> Result<Vec<Op>, HistoryError> {
    let io = |source| HistoryError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut ops = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        ops.push(
            serde_json::from_str(&line).map_err(|e| HistoryError::Parse {
                path: path.display().to_string(),
                line: i + 1,
                source: e,
            })?,
        );
    }
    Ok(ops)
}
