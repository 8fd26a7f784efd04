//! Micro-benchmarks of the publish and read hot paths:
//! `cargo bench -p raftstream-benches --bench hot_paths`.
//!
//! - `encode`: a publish batch as the client puts it on the wire (protobuf)
//!   and as a Raft entry is stored and replicated (bincode);
//! - `apply`: the partition state machine applying one idempotent batch;
//! - `storage`: appending one entry to a group's log, with and without
//!   waiting for the WAL fsync (group commit), and concurrent appends of
//!   many groups sharing fsyncs;
//! - `read`: locating offsets and times in a partition's batch index and
//!   reading the entry that holds them;
//! - `schema`: validating a JSON payload against a topic's schema.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::BatchSize;
use criterion::Criterion;
use criterion::Throughput;
use criterion::criterion_group;
use criterion::criterion_main;
use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::type_config::TypeConfigExt;
use openraft::type_config::alias::LeaderIdOf;
use openraft::type_config::alias::LogIdOf;
use openraft::vote::RaftLeaderIdExt;
use prost::Message;
use raftstream_client::pb;
use raftstream_node::api::schema as json_schema;
use raftstream_node::model::GroupId;
use raftstream_node::model::NodeId;
use raftstream_node::model::Offset;
use raftstream_node::raft::batch::RecordBatch;
use raftstream_node::raft::types::Command;
use raftstream_node::raft::types::Entry;
use raftstream_node::raft::types::PartitionCommand;
use raftstream_node::raft::types::TypeConfig;
use raftstream_node::state_machine::partition::PartitionState;
use raftstream_node::storage::Storage;
use raftstream_node::storage::StorageConfig;
use raftstream_node::storage::SyncMode;

const RECORDS: usize = 1000;
const VALUE_BYTES: usize = 1024;

fn records(n: usize, size: usize) -> RecordBatch {
    let mut builder = RecordBatch::builder();
    for i in 0..n {
        builder.push(&[], &vec![(i % 251) as u8; size], []).unwrap();
    }
    builder.finish()
}

fn append_command(n: usize, size: usize, sequence: u64) -> Command {
    Command::Partition(PartitionCommand::Append {
        timestamp_ms: 1_700_000_000_000,
        records: records(n, size),
        producer: Some((42, sequence)),
    })
}

fn log_id(index: u64) -> LogIdOf<TypeConfig> {
    LogIdOf::<TypeConfig>::new(LeaderIdOf::<TypeConfig>::new_committed(1, NodeId(1)), index)
}

fn entry(index: u64, command: Command) -> Entry {
    Entry::new_normal(log_id(index), command)
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(RECORDS as u64));
    let request = pb::PublishBatchRequest {
        topic: None,
        records: (0..RECORDS)
            .map(|i| pb::Record {
                key: Vec::new().into(),
                value: vec![(i % 251) as u8; VALUE_BYTES].into(),
                headers: Default::default(),
                partition: Some(0),
            })
            .collect(),
        producer: Some(pb::ProducerBatch {
            producer_id: 42,
            base_sequence: 0,
        }),
    };
    g.bench_function("protobuf_publish_batch_1000x1KiB", |b| {
        b.iter(|| black_box(&request).encode_to_vec())
    });
    let bytes = request.encode_to_vec();
    g.bench_function("protobuf_decode_publish_batch_1000x1KiB", |b| {
        b.iter(|| pb::PublishBatchRequest::decode(black_box(bytes.as_slice())).unwrap())
    });
    let entry = entry(1, append_command(RECORDS, VALUE_BYTES, 0));
    g.bench_function("bincode_raft_entry_1000x1KiB", |b| {
        b.iter(|| bincode::serialize(black_box(&entry)).unwrap())
    });
    g.finish();
}

fn apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("apply");
    g.throughput(Throughput::Elements(RECORDS as u64));
    let commands: Vec<PartitionCommand> = (0..64u64)
        .map(
            |i| match append_command(RECORDS, VALUE_BYTES, i * RECORDS as u64) {
                Command::Partition(p) => p,
                Command::Meta(_) => unreachable!(),
            },
        )
        .collect();
    g.bench_function("idempotent_batch_1000x1KiB", |b| {
        b.iter_batched(
            PartitionState::default,
            |mut state| {
                let mut changes = Vec::new();
                for (i, command) in commands.iter().enumerate() {
                    changes.clear();
                    black_box(state.apply(command, i as u64 + 1, &mut changes));
                }
                state
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// Storage in a fresh temporary directory, which lives as long as the
/// returned guard.
fn temp_storage(sync_mode: SyncMode) -> (tempfile::TempDir, Storage) {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(
        dir.path(),
        StorageConfig {
            sync_mode,
            ..StorageConfig::default()
        },
    )
    .unwrap();
    (dir, storage)
}

fn storage(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("storage");
    g.measurement_time(Duration::from_secs(5));
    for (name, mode) in [("fsync", SyncMode::Always), ("no_fsync", SyncMode::Never)] {
        let (_dir, storage) = temp_storage(mode);
        let mut store = storage.log_store::<TypeConfig>(GroupId(1));
        let command = append_command(RECORDS, VALUE_BYTES, 0);
        let mut index = 0u64;
        g.throughput(Throughput::Elements(RECORDS as u64));
        g.bench_function(format!("append_1000x1KiB_{name}"), |b| {
            b.iter(|| {
                index += 1;
                let batch = vec![entry(index, command.clone())];
                runtime.block_on(async {
                    let (tx, rx) = TypeConfig::oneshot();
                    store.append(batch, IOFlushed::signal(tx)).await.unwrap();
                    rx.await.unwrap().unwrap();
                })
            })
        });
    }
    // Group commit: 16 groups append at once and wait; one fsync should
    // cover most of them, so this costs far less than 16 sequential appends.
    let (_dir, storage) = temp_storage(SyncMode::Always);
    let mut stores: Vec<_> = (1..=16u64)
        .map(|g| storage.log_store::<TypeConfig>(GroupId(g)))
        .collect();
    let command = append_command(10, 100, 0);
    let mut index = 0u64;
    g.throughput(Throughput::Elements(16));
    g.bench_function("16_groups_concurrent_append_fsync", |b| {
        b.iter(|| {
            index += 1;
            runtime.block_on(async {
                let mut waits = Vec::new();
                for store in &mut stores {
                    let (tx, rx) = TypeConfig::oneshot();
                    store
                        .append(vec![entry(index, command.clone())], IOFlushed::signal(tx))
                        .await
                        .unwrap();
                    waits.push(rx);
                }
                for w in waits {
                    w.await.unwrap().unwrap();
                }
            })
        })
    });
    g.finish();
}

fn read(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_dir, storage) = temp_storage(SyncMode::Never);
    let mut store = storage.log_store::<TypeConfig>(GroupId(1));
    let mut state = PartitionState::default();
    let mut changes = Vec::new();
    // 1,000 batches of 100 records of 1 KiB, one millisecond apart: 100 MB.
    let batches = 1_000u64;
    runtime.block_on(async {
        for i in 1..=batches {
            let command = PartitionCommand::Append {
                timestamp_ms: 1_700_000_000_000 + i as i64,
                records: records(100, VALUE_BYTES),
                producer: None,
            };
            state.apply(&command, i, &mut changes);
            let (tx, rx) = TypeConfig::oneshot();
            store
                .append(
                    vec![entry(i, Command::Partition(command))],
                    IOFlushed::signal(tx),
                )
                .await
                .unwrap();
            rx.await.unwrap().unwrap();
        }
    });
    let mut g = c.benchmark_group("read");
    g.throughput(Throughput::Elements(1000));
    let mut n = 0u64;
    g.bench_function("by_offset_1000_records", |b| {
        b.iter(|| {
            n = (n + 7919) % (batches * 100 - 1000);
            read_records(&storage, &state, Offset(n), 1000)
        })
    });
    g.bench_function("by_time_1000_records", |b| {
        b.iter(|| {
            n = (n + 7919) % (batches - 10);
            let from = state.offset_for_timestamp(1_700_000_000_000 + n as i64);
            read_records(&storage, &state, from, 1000)
        })
    });
    g.finish();
}

/// What a consume does: locate the batches, read their entries, slice them.
fn read_records(storage: &Storage, state: &PartitionState, from: Offset, max: usize) -> usize {
    let mut read = 0;
    for slice in state.locate(from, max) {
        let entry = storage
            .read_entry::<TypeConfig>(GroupId(1), slice.batch.log_index)
            .unwrap()
            .unwrap();
        if let openraft::EntryPayload::Normal(Command::Partition(PartitionCommand::Append {
            records,
            ..
        })) = &entry.payload
        {
            for r in records
                .iter()
                .skip(slice.skip as usize)
                .take(slice.take as usize)
            {
                black_box(records.share(r.unwrap().value));
                read += 1;
            }
        }
    }
    assert_eq!(read, max);
    read
}

fn schema(c: &mut Criterion) {
    // The work a blocking thread does per value once the topic's schema is
    // compiled (`SchemaCache` compiles it once per topic version).
    let validator = json_schema::compile(
        r#"{"type": "object", "required": ["id", "items"],
            "properties": {"id": {"type": "integer"}, "customer": {"type": "string"},
              "items": {"type": "array", "items": {"type": "object",
                "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}}}}}}"#,
    )
    .unwrap();
    let valid: serde_json::Value = serde_json::json!({
        "id": 7, "customer": "c-42",
        "items": [{"sku": "book", "qty": 1}, {"sku": "pen", "qty": 3}]
    });
    let invalid: serde_json::Value = serde_json::json!({"id": "seven", "items": [{"qty": 0}]});
    let mut g = c.benchmark_group("schema");
    g.throughput(Throughput::Elements(1));
    g.bench_function("validate_valid_payload", |b| {
        b.iter(|| assert!(json_schema::failures(&validator, black_box(&valid)).is_none()))
    });
    g.bench_function("validate_invalid_payload", |b| {
        b.iter(|| json_schema::failures(&validator, black_box(&invalid)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, encode, apply, storage, read, schema);
criterion_main!(benches);
