//! openraft's own storage conformance suite, run against our RocksDB log
//! store and our state machine.

#![allow(clippy::unwrap_used)]

use openraft::StorageError;
use openraft::testing::log::StoreBuilder;
use openraft::testing::log::Suite;
use raftstream_node::model::GroupId;
use raftstream_node::raft::types::TypeConfig;
use raftstream_node::state_machine::GroupStateMachine;
use raftstream_node::storage::LogStore;
use raftstream_node::storage::Storage;
use raftstream_node::storage::StorageConfig;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore<TypeConfig>, GroupStateMachine, tempfile::TempDir>
    for RocksBuilder
{
    async fn build(
        &self,
    ) -> Result<
        (tempfile::TempDir, LogStore<TypeConfig>, GroupStateMachine),
        StorageError<TypeConfig>,
    > {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), StorageConfig::default()).unwrap();
        // A partition group: the suite applies blank and membership entries.
        let group = GroupId(7);
        let sm = GroupStateMachine::open(storage.clone(), group).unwrap();
        Ok((dir, storage.log_store(group), sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes_on_rocksdb_store() {
    Suite::test_all(RocksBuilder).await.unwrap();
}
