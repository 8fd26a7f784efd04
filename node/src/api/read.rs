//! Committed reads from a local replica. Only applied entries are indexed,
//! and only committed entries are applied, so nothing here can return an
//! uncommitted message.

use std::time::Duration;

use bytes::Bytes;
use openraft::EntryPayload;

use crate::group::Group;
use crate::model::Offset;
use crate::raft::batch::BatchError;
use crate::raft::types::Command;
use crate::raft::types::Entry;
use crate::raft::types::PartitionCommand;
use crate::raft::types::TypeConfig;
use crate::state_machine::GroupData;
use crate::state_machine::partition::PartitionState;

/// Where a read starts, before it is resolved to an offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAt {
    Offset(Offset),
    /// The offset after this one; it must name a committed message.
    After(Offset),
    Timestamp(i64),
    Earliest,
    Latest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadMessage {
    pub offset: Offset,
    pub timestamp_ms: i64,
    /// Key and value share the stored entry's buffer.
    pub key: Bytes,
    pub value: Bytes,
    pub headers: Vec<(String, String)>,
}

impl ReadMessage {
    /// What the message counts against size limits: key, value, headers.
    pub fn size(&self) -> usize {
        let headers = self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        raftstream_proto::record_size(&self.key, &self.value, headers)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadBatch {
    pub messages: Vec<ReadMessage>,
    pub next_offset: Offset,
    pub high_watermark: Offset,
    pub log_start_offset: Offset,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadError {
    #[error("message {offset} does not exist in this partition (high watermark {high_watermark})")]
    NoSuchMessage {
        offset: Offset,
        high_watermark: Offset,
    },
    /// This replica installed a snapshot past these messages; another
    /// replica has them.
    #[error("offset {offset} is not stored on this replica")]
    NotLocal { offset: Offset },
    #[error("storage: {0}")]
    Storage(String),
}

fn partition_view<T>(group: &Group, f: impl FnOnce(&PartitionState, u64) -> T) -> Option<T> {
    group.state.read(|inner| match &inner.data {
        GroupData::Partition(p) => Some(f(p, inner.local_first_log_index)),
        GroupData::Meta(_) => None,
    })
}

/// Resolves a start position to an offset against the committed state.
pub fn resolve(group: &Group, start: &StartAt) -> Result<Offset, ReadError> {
    partition_view(group, |p, _| match start {
        StartAt::Offset(o) => Ok(*o),
        StartAt::After(o) if *o < p.next_offset => Ok(o.plus(1)),
        StartAt::After(o) => Err(ReadError::NoSuchMessage {
            offset: *o,
            high_watermark: p.next_offset,
        }),
        StartAt::Timestamp(ts) => Ok(p.offset_for_timestamp(*ts)),
        StartAt::Earliest => Ok(p.log_start_offset),
        StartAt::Latest => Ok(p.next_offset),
    })
    .unwrap_or(Ok(Offset(0)))
}

/// How much of a read's byte budget a message takes: its key, value and
/// headers, the bytes a response carries for it.
fn message_bytes(message: &ReadMessage) -> usize {
    let headers: usize = message
        .headers
        .iter()
        .map(|(name, value)| name.len() + value.len())
        .sum();
    message.key.len() + message.value.len() + headers
}

/// Reads up to `max` committed messages from `from` on this replica, and
/// stops before the message that would take them over `max_bytes` (though
/// never before the first, so a message larger than the budget is still
/// read, as Kafka's fetch does).
pub fn read_committed(
    group: &Group,
    from: Offset,
    max: usize,
    max_bytes: usize,
) -> Result<ReadBatch, ReadError> {
    let Some((slices, local_first, hw, log_start)) = partition_view(group, |p, local_first| {
        (
            p.locate(from, max),
            local_first,
            p.next_offset,
            p.log_start_offset,
        )
    }) else {
        return Ok(ReadBatch {
            messages: vec![],
            next_offset: from,
            high_watermark: Offset(0),
            log_start_offset: Offset(0),
        });
    };
    let mut messages = Vec::new();
    let mut next_offset = from.max(log_start);
    let mut budget_left = max_bytes;
    'slices: for slice in slices {
        if slice.batch.log_index < local_first {
            if messages.is_empty() {
                return Err(ReadError::NotLocal {
                    offset: next_offset,
                });
            }
            break;
        }
        let entry: Option<Entry> = group
            .state
            .storage()
            .read_entry::<TypeConfig>(group.id, slice.batch.log_index)
            .map_err(|e| ReadError::Storage(e.to_string()))?;
        // Retention may purge an entry between locating and reading it; the
        // reader then simply sees the newer log start on its next call.
        let Some(entry) = entry else { break };
        let records = match entry.payload {
            EntryPayload::Normal(Command::Partition(
                PartitionCommand::Append { records, .. }
                | PartitionCommand::Ingest {
                    record: records, ..
                },
            )) => records,
            _ => {
                return Err(ReadError::Storage(format!(
                    "log entry {} is not the publish batch the index names",
                    slice.batch.log_index
                )));
            }
        };
        let malformed =
            |e: BatchError| ReadError::Storage(format!("log entry {}: {e}", slice.batch.log_index));
        let wanted = records
            .iter()
            .enumerate()
            .skip(slice.skip as usize)
            .take(slice.take as usize);
        for (i, record) in wanted {
            let record = record.map_err(malformed)?;
            let message = ReadMessage {
                offset: slice.batch.base_offset.plus(i as u64),
                timestamp_ms: slice.batch.timestamp_ms,
                key: records.share(record.key),
                value: records.share(record.value),
                headers: record.headers().map_err(malformed)?,
            };
            let size = message_bytes(&message);
            if size > budget_left && !messages.is_empty() {
                break 'slices;
            }
            budget_left = budget_left.saturating_sub(size);
            next_offset = message.offset.plus(1);
            messages.push(message);
        }
    }
    Ok(ReadBatch {
        messages,
        next_offset,
        high_watermark: hw,
        log_start_offset: log_start,
    })
}

/// Reads like [`read_committed`], but when nothing is there yet waits up to
/// `wait` and returns as soon as something commits.
/// A node shutting down (`stop` turning true) ends the wait at once.
pub async fn read_or_wait(
    group: &Group,
    start: &StartAt,
    max: usize,
    max_bytes: usize,
    wait: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<ReadBatch, ReadError> {
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribe before the first read so a commit between the read and the
    // wait still wakes us.
    let mut applied = group.state.subscribe();
    let from = resolve(group, start)?;
    loop {
        applied.borrow_and_update();
        let batch = read_from(group, start, from, max, max_bytes)?;
        if !batch.messages.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(batch);
        }
        if *stop.borrow_and_update() {
            return Ok(batch);
        }
        let woken = tokio::select! {
            changed = tokio::time::timeout_at(deadline, applied.changed()) => matches!(changed, Ok(Ok(()))),
            _ = stop.changed() => false,
        };
        if !woken {
            // Timed out, or the group or the node is shutting down: answer
            // with what there is.
            return read_from(group, start, from, max, max_bytes);
        }
    }
}

/// One read for [`read_or_wait`] from `from`, the offset `start` resolved to
/// when the wait began. A time resolves to the end of what this replica has
/// applied when nothing it holds is that new; a replica behind the commit
/// index (restarted, or serving because the leader is unreachable) may then
/// apply older messages after it. So a time is resolved again on each read,
/// and messages stamped before it are left out.
fn read_from(
    group: &Group,
    start: &StartAt,
    from: Offset,
    max: usize,
    max_bytes: usize,
) -> Result<ReadBatch, ReadError> {
    let StartAt::Timestamp(since) = start else {
        return read_committed(group, from, max, max_bytes);
    };
    let from = resolve(group, start)?;
    let mut batch = read_committed(group, from, max, max_bytes)?;
    // Applied between resolving and reading: older than `since`, though
    // nothing newer was there a moment ago.
    batch.messages.retain(|m| m.timestamp_ms >= *since);
    Ok(batch)
}
