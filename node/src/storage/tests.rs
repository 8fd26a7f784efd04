#![allow(clippy::unwrap_used)]

use std::io;
use std::path::Path;

use openraft::RaftLogReader;
use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::type_config::TypeConfigExt;
use openraft::type_config::alias::EntryOf;
use openraft::type_config::alias::LeaderIdOf;
use openraft::type_config::alias::LogIdOf;
use openraft::type_config::alias::VoteOf;
use openraft::vote::RaftLeaderIdExt;
use tokio::sync::oneshot;

use super::*;

openraft::declare_raft_types!(pub TestConfig: D = String, R = String);

type Store = LogStore<TestConfig>;
type Flushed = oneshot::Receiver<Result<(), io::Error>>;

fn open(dir: &Path) -> Storage {
    Storage::open(dir, StorageConfig::default()).unwrap()
}

/// A storage in a fresh temporary directory, which lives as long as the
/// first element, and the log store of group 1 in it.
fn open_group_one() -> (tempfile::TempDir, Storage, Store) {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let store = storage.log_store(GroupId(1));
    (dir, storage, store)
}

fn log_id(term: u64, index: u64) -> LogIdOf<TestConfig> {
    LogIdOf::<TestConfig>::new(LeaderIdOf::<TestConfig>::new_committed(term, 1), index)
}

fn entry(term: u64, index: u64) -> EntryOf<TestConfig> {
    EntryOf::<TestConfig>::new_normal(log_id(term, index), format!("payload {index}"))
}

fn entries(term: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<EntryOf<TestConfig>> {
    indexes.map(|i| entry(term, i)).collect()
}

fn vote(term: u64, node: u64) -> VoteOf<TestConfig> {
    VoteOf::<TestConfig>::new(term, node)
}

/// Starts an append and returns the receiver of its IOFlushed callback.
async fn start_append(store: &mut Store, batch: Vec<EntryOf<TestConfig>>) -> Flushed {
    let (tx, rx) = TestConfig::oneshot();
    store.append(batch, IOFlushed::signal(tx)).await.unwrap();
    rx
}

/// Appends and waits until the entries are durable.
async fn append(store: &mut Store, batch: Vec<EntryOf<TestConfig>>) {
    start_append(store, batch).await.await.unwrap().unwrap();
}

async fn indexes(
    store: &mut Store,
    range: impl std::ops::RangeBounds<u64> + Clone + std::fmt::Debug + Send,
) -> Vec<u64> {
    store
        .try_get_log_entries(range)
        .await
        .unwrap()
        .iter()
        .map(|e| e.index())
        .collect()
}

async fn log_state(store: &mut Store) -> (Option<u64>, Option<u64>) {
    let state = store.get_log_state().await.unwrap();
    (
        state.last_purged_log_id.map(|l| l.index),
        state.last_log_id.map(|l| l.index),
    )
}

#[tokio::test]
async fn appended_entries_read_back_in_order() {
    let (_dir, storage, mut store) = open_group_one();
    assert_eq!(log_state(&mut store).await, (None, None));
    assert_eq!(store.read_vote().await.unwrap(), None);

    append(&mut store, entries(1, 1..=5)).await;
    append(&mut store, entries(2, 6..=10)).await;

    let read = store.try_get_log_entries(1..=10).await.unwrap();
    assert_eq!(read, [entries(1, 1..=5), entries(2, 6..=10)].concat());
    assert_eq!(indexes(&mut store, 3..7).await, vec![3, 4, 5, 6]);
    assert_eq!(indexes(&mut store, 8..).await, vec![8, 9, 10]);
    assert_eq!(
        indexes(&mut store, 0..100).await,
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(indexes(&mut store, 4..4).await, Vec::<u64>::new());
    assert_eq!(indexes(&mut store, 11..).await, Vec::<u64>::new());
    assert_eq!(log_state(&mut store).await, (None, Some(10)));
    assert_eq!(
        store.get_log_state().await.unwrap().last_log_id,
        Some(log_id(2, 10))
    );

    assert_eq!(
        storage.read_entry::<TestConfig>(GroupId(1), 7).unwrap(),
        Some(entry(2, 7))
    );
    assert_eq!(
        storage.read_entry::<TestConfig>(GroupId(1), 11).unwrap(),
        None
    );
    assert_eq!(
        storage.read_entry::<TestConfig>(GroupId(2), 7).unwrap(),
        None
    );

    let mut reader = store.get_log_reader().await;
    assert_eq!(
        reader.limited_get_log_entries(2, 4).await.unwrap(),
        entries(1, 2..=3)
    );
}

#[tokio::test]
async fn append_callback_fires_only_after_the_wal_fsync() {
    let (_dir, storage, mut store) = open_group_one();

    let hold = storage.syncer().hold();
    let syncs_before = storage.syncer().sync_count();
    let mut flushed = start_append(&mut store, entries(1, 1..=3)).await;

    // Readable as soon as append returns, acknowledged only after the fsync.
    assert_eq!(indexes(&mut store, 1..).await, vec![1, 2, 3]);
    assert!(matches!(
        flushed.try_recv(),
        Err(oneshot::error::TryRecvError::Empty)
    ));
    assert_eq!(storage.syncer().sync_count(), syncs_before);

    drop(hold);
    flushed.await.unwrap().unwrap();
    assert_eq!(storage.syncer().sync_count(), syncs_before + 1);
}

#[tokio::test]
async fn concurrent_appends_of_many_groups_share_one_fsync() {
    const GROUPS: u64 = 8;
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());

    let hold = storage.syncer().hold();
    let syncs_before = storage.syncer().sync_count();
    let mut pending = Vec::new();
    for group in 0..GROUPS {
        let mut store: Store = storage.log_store(GroupId(group));
        pending.push(start_append(&mut store, entries(1, 1..=2)).await);
    }
    for flushed in &mut pending {
        assert!(matches!(
            flushed.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
    }

    drop(hold);
    for flushed in pending {
        flushed.await.unwrap().unwrap();
    }
    // Everything was queued before the syncer could take it, so one fsync covered all.
    assert_eq!(storage.syncer().sync_count() - syncs_before, 1);
}

#[tokio::test]
async fn save_vote_returns_after_an_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let mut store: Store = storage.log_store(GroupId(3));

    let syncs_before = storage.syncer().sync_count();
    store.save_vote(&vote(4, 2)).await.unwrap();
    assert_eq!(storage.syncer().sync_count(), syncs_before + 1);
    assert_eq!(store.read_vote().await.unwrap(), Some(vote(4, 2)));

    // While the syncer is held, save_vote cannot complete.
    let hold = storage.syncer().hold();
    let mut save = Box::pin({
        let mut store = store.clone();
        async move { store.save_vote(&vote(5, 3)).await }
    });
    assert!(futures::poll!(&mut save).is_pending());
    drop(hold);
    save.await.unwrap();
    assert_eq!(store.read_vote().await.unwrap(), Some(vote(5, 3)));
}

#[tokio::test]
async fn sync_mode_never_acknowledges_without_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(
        dir.path(),
        StorageConfig {
            sync_mode: SyncMode::Never,
            ..StorageConfig::default()
        },
    )
    .unwrap();
    let mut store: Store = storage.log_store(GroupId(1));

    let _hold = storage.syncer().hold();
    let syncs_before = storage.syncer().sync_count();
    let mut flushed = start_append(&mut store, entries(1, 1..=3)).await;
    flushed.try_recv().unwrap().unwrap();
    assert_eq!(storage.syncer().sync_count(), syncs_before);
    assert_eq!(indexes(&mut store, ..).await, vec![1, 2, 3]);
}

#[tokio::test]
async fn failed_fsync_fails_every_waiter_and_every_later_sync() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let mut one: Store = storage.log_store(GroupId(1));
    let mut two: Store = storage.log_store(GroupId(2));

    let failure = storage.failure();
    assert_eq!(*failure.borrow(), None);
    storage.syncer().fail_next_sync();
    let hold = storage.syncer().hold();
    let flushed_one = start_append(&mut one, entries(1, 1..=2)).await;
    let flushed_two = start_append(&mut two, entries(1, 1..=2)).await;
    drop(hold);
    assert!(flushed_one.await.unwrap().is_err());
    assert!(flushed_two.await.unwrap().is_err());
    // The node learns of it (and stops serving, see Node::stop_on_storage_failure).
    let reason = failure.borrow().clone().unwrap();
    assert!(reason.contains("WAL fsync failed"), "{reason}");

    // The disk is no longer trusted: later syncs fail too, without a new fsync.
    let syncs = storage.syncer().sync_count();
    let err = start_append(&mut one, entries(1, 3..=3))
        .await
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("injected fsync failure"), "{err}");
    let err = one.save_vote(&vote(2, 1)).await.unwrap_err();
    assert!(err.to_string().contains("fsync failed"), "{err}");
    assert_eq!(storage.syncer().sync_count(), syncs);
}

#[tokio::test]
async fn everything_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = open(dir.path());
        let mut one: Store = storage.log_store(GroupId(1));
        let mut two: Store = storage.log_store(GroupId(2));
        one.save_vote(&vote(3, 1)).await.unwrap();
        two.save_vote(&vote(7, 2)).await.unwrap();
        append(&mut one, entries(1, 1..=10)).await;
        append(&mut two, entries(2, 1..=10)).await;
        one.purge(log_id(1, 4)).await.unwrap();
        two.truncate_after(Some(log_id(2, 6))).await.unwrap();
        one.save_committed(Some(log_id(1, 8))).await.unwrap();
        two.save_committed(Some(log_id(2, 5))).await.unwrap();
        let mut batch = StateBatch::new();
        batch.put("applied", "8");
        storage.state_write(GroupId(1), batch).unwrap();
        // Make the unsynced writes above durable the way production does: by a later fsync.
        append(&mut one, entries(1, 11..=11)).await;
    }

    let storage = open(dir.path());
    let mut one: Store = storage.log_store(GroupId(1));
    let mut two: Store = storage.log_store(GroupId(2));
    assert_eq!(one.read_vote().await.unwrap(), Some(vote(3, 1)));
    assert_eq!(two.read_vote().await.unwrap(), Some(vote(7, 2)));
    assert_eq!(one.read_committed().await.unwrap(), Some(log_id(1, 8)));
    assert_eq!(two.read_committed().await.unwrap(), Some(log_id(2, 5)));
    assert_eq!(log_state(&mut one).await, (Some(4), Some(11)));
    assert_eq!(log_state(&mut two).await, (None, Some(6)));
    assert_eq!(
        one.get_log_state().await.unwrap().last_purged_log_id,
        Some(log_id(1, 4))
    );
    assert_eq!(
        one.try_get_log_entries(..).await.unwrap(),
        entries(1, 5..=11)
    );
    assert_eq!(
        two.try_get_log_entries(..).await.unwrap(),
        entries(2, 1..=6)
    );
    assert_eq!(
        storage.state_get(GroupId(1), b"applied").unwrap(),
        Some(b"8".to_vec())
    );
    assert_eq!(
        storage.groups_on_disk().unwrap(),
        vec![GroupId(1), GroupId(2)]
    );
}

#[tokio::test]
async fn purge_and_truncate_keep_the_log_gapless_and_the_neighbours_intact() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let mut below: Store = storage.log_store(GroupId(1));
    let mut store: Store = storage.log_store(GroupId(2));
    let mut above: Store = storage.log_store(GroupId(3));
    append(&mut below, entries(1, 0..=20)).await;
    append(&mut store, entries(1, 0..=10)).await;
    append(&mut above, entries(1, 0..=20)).await;

    store.purge(log_id(1, 0)).await.unwrap();
    assert_eq!(log_state(&mut store).await, (Some(0), Some(10)));
    assert_eq!(indexes(&mut store, ..).await, (1..=10).collect::<Vec<_>>());

    store.purge(log_id(1, 3)).await.unwrap();
    assert_eq!(log_state(&mut store).await, (Some(3), Some(10)));
    assert_eq!(
        indexes(&mut store, 0..100).await,
        (4..=10).collect::<Vec<_>>()
    );

    store.truncate_after(Some(log_id(1, 11))).await.unwrap();
    assert_eq!(log_state(&mut store).await, (Some(3), Some(10)));

    store.truncate_after(Some(log_id(1, 7))).await.unwrap();
    assert_eq!(log_state(&mut store).await, (Some(3), Some(7)));
    assert_eq!(indexes(&mut store, ..).await, vec![4, 5, 6, 7]);

    // A new leader's entries replace the truncated ones.
    append(&mut store, entries(2, 8..=9)).await;
    assert_eq!(
        store.try_get_log_entries(7..).await.unwrap(),
        vec![entry(1, 7), entry(2, 8), entry(2, 9)]
    );

    // With no entries left, the last log id is the last purged one.
    store.truncate_after(Some(log_id(1, 3))).await.unwrap();
    assert_eq!(log_state(&mut store).await, (Some(3), Some(3)));
    append(&mut store, entries(3, 4..=6)).await;
    store.purge(log_id(3, 20)).await.unwrap();
    assert_eq!(log_state(&mut store).await, (Some(20), Some(20)));
    assert_eq!(indexes(&mut store, ..).await, Vec::<u64>::new());

    append(&mut store, entries(3, 21..=22)).await;
    store.truncate_after(None).await.unwrap();
    assert_eq!(log_state(&mut store).await, (Some(20), Some(20)));

    // Nothing of the adjacent groups was touched, at either end of their index range.
    assert_eq!(indexes(&mut below, ..).await, (0..=20).collect::<Vec<_>>());
    assert_eq!(indexes(&mut above, ..).await, (0..=20).collect::<Vec<_>>());
    assert_eq!(log_state(&mut below).await, (None, Some(20)));
    assert_eq!(log_state(&mut above).await, (None, Some(20)));
}

#[tokio::test]
async fn a_hole_in_the_log_is_an_error() {
    let (_dir, _storage, mut store) = open_group_one();
    append(&mut store, entries(1, 1..=2)).await;
    append(&mut store, entries(1, 4..=5)).await;

    let err = store.try_get_log_entries(1..6).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(
        err.to_string().contains("expected index 3, found 4"),
        "{err}"
    );
    // Missing entries at either end are not a hole.
    assert_eq!(indexes(&mut store, 4..10).await, vec![4, 5]);
}

#[tokio::test]
async fn undecodable_entries_are_errors_not_panics() {
    let (_dir, storage, mut store) = open_group_one();
    append(&mut store, entries(1, 1..=3)).await;

    let inner = &*storage.inner;
    let logs = inner.cf(CF_LOGS).unwrap();
    inner
        .db
        .put_cf(logs, keys::log_key(GroupId(1), 2), b"\x01garbage")
        .unwrap();
    inner
        .db
        .put_cf(
            logs,
            keys::log_key(GroupId(1), 3),
            codec::encode(&entry(1, 9)).unwrap(),
        )
        .unwrap();

    let err = storage.read_entry::<TestConfig>(GroupId(1), 2).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::Decode {
                group: GroupId(1),
                ..
            }
        ),
        "{err}"
    );
    let err = storage.read_entry::<TestConfig>(GroupId(1), 3).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::Corrupt {
                group: GroupId(1),
                ..
            }
        ),
        "{err}"
    );
    let err = store.try_get_log_entries(1..=3).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    let err = store.get_log_state().await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);

    let meta = inner.cf(CF_META).unwrap();
    inner
        .db
        .put_cf(meta, keys::meta_key(GroupId(1), MetaTag::Vote), b"")
        .unwrap();
    let err = store.read_vote().await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

/// Indexes of the entries of `group` that are stored at all, openraft's or not.
fn stored_indexes(
    storage: &Storage,
    group: GroupId,
    range: std::ops::RangeInclusive<u64>,
) -> Vec<u64> {
    range
        .filter(|index| {
            storage
                .read_entry::<TestConfig>(group, *index)
                .unwrap()
                .is_some()
        })
        .collect()
}

#[tokio::test]
async fn entries_written_below_the_last_purged_id_are_invisible_to_openraft() {
    let (dir, storage, mut store) = open_group_one();
    // A replica that installed a snapshot at 6: openraft purged up to it.
    append(&mut store, entries(1, 7..=10)).await;
    store.purge(log_id(1, 6)).await.unwrap();

    let written = store
        .write_below_purged(entries(1, 3..=6), |purged| {
            assert_eq!(purged, Some(&log_id(1, 6)));
            Some(0)
        })
        .unwrap();
    assert_eq!(written, Some(3));
    store.sync().await.unwrap();
    assert_eq!(
        stored_indexes(&storage, GroupId(1), 0..=10),
        (3..=10).collect::<Vec<_>>()
    );

    // openraft's log is unchanged: its state, its reads and its truncation.
    assert_eq!(log_state(&mut store).await, (Some(6), Some(10)));
    assert_eq!(indexes(&mut store, ..).await, (7..=10).collect::<Vec<_>>());
    assert_eq!(indexes(&mut store, 0..=5).await, Vec::<u64>::new());
    assert_eq!(store.limited_get_log_entries(0, 9).await.unwrap().len(), 2);
    store.truncate_after(Some(log_id(1, 8))).await.unwrap();
    assert_eq!(log_state(&mut store).await, (Some(6), Some(8)));
    // Truncated to nothing above the purge point, the log is empty for
    // openraft even though entries below it are stored.
    store.truncate_after(None).await.unwrap();
    assert_eq!(log_state(&mut store).await, (Some(6), Some(6)));
    assert_eq!(indexes(&mut store, ..).await, Vec::<u64>::new());
    assert_eq!(
        stored_indexes(&storage, GroupId(1), 0..=10),
        (3..=6).collect::<Vec<_>>()
    );

    // And after a reopen.
    drop(store);
    drop(storage);
    let storage = open(dir.path());
    let mut store: Store = storage.log_store(GroupId(1));
    assert_eq!(log_state(&mut store).await, (Some(6), Some(6)));
    append(&mut store, entries(2, 7..=8)).await;
    assert_eq!(indexes(&mut store, ..).await, vec![7, 8]);
    assert_eq!(
        stored_indexes(&storage, GroupId(1), 0..=10),
        (3..=8).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_purge_deletes_entries_written_below_the_purge_point_too() {
    let (_dir, storage, mut store) = open_group_one();
    append(&mut store, entries(1, 7..=10)).await;
    store.purge(log_id(1, 6)).await.unwrap();
    store
        .write_below_purged(entries(1, 2..=6), |_| Some(0))
        .unwrap();
    store.purge(log_id(1, 8)).await.unwrap();
    assert_eq!(stored_indexes(&storage, GroupId(1), 0..=10), vec![9, 10]);
    assert_eq!(log_state(&mut store).await, (Some(8), Some(10)));
}

#[tokio::test]
async fn writes_below_the_purge_point_stay_below_it_and_are_admitted_under_the_purge_lock() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let store: Store = storage.log_store(GroupId(1));
    // Nothing purged: there is nothing below the purge point to write.
    let err = store
        .write_below_purged(entries(1, 1..=2), |_| Some(0))
        .unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::NotBelowPurged {
                group: GroupId(1),
                ..
            }
        ),
        "{err}"
    );

    let mut store = store;
    append(&mut store, entries(1, 7..=8)).await;
    store.purge(log_id(1, 6)).await.unwrap();
    // Reaching into openraft's log is refused, and so is a run with a gap.
    let err = store
        .write_below_purged(entries(1, 5..=7), |_| Some(0))
        .unwrap_err();
    assert!(matches!(err, StorageError::NotBelowPurged { .. }), "{err}");
    let gapped = vec![entry(1, 3), entry(1, 5)];
    let err = store.write_below_purged(gapped, |_| Some(0)).unwrap_err();
    assert!(matches!(err, StorageError::NotBelowPurged { .. }), "{err}");
    // `admit` may refuse the write, or leave out its head.
    assert_eq!(
        store
            .write_below_purged(entries(1, 3..=6), |_| None)
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .write_below_purged(entries(1, 3..=6), |_| Some(5))
            .unwrap(),
        Some(5)
    );
    assert_eq!(
        store
            .write_below_purged(entries(1, 3..=6), |_| Some(7))
            .unwrap(),
        None
    );
    assert_eq!(
        stored_indexes(&storage, GroupId(1), 0..=10),
        vec![5, 6, 7, 8]
    );
}

#[tokio::test]
async fn deleting_below_the_purge_point_spares_openraft_and_writes_only_when_needed() {
    let (_dir, storage, mut store) = open_group_one();
    let mut neighbour: Store = storage.log_store(GroupId(2));
    append(&mut store, entries(1, 7..=10)).await;
    append(&mut neighbour, entries(1, 0..=3)).await;
    store.purge(log_id(1, 6)).await.unwrap();
    store
        .write_below_purged(entries(1, 2..=6), |_| Some(0))
        .unwrap();

    assert_eq!(store.delete_below_purged(3).unwrap(), Some(3));
    assert_eq!(
        stored_indexes(&storage, GroupId(1), 0..=10),
        vec![4, 5, 6, 7, 8, 9, 10]
    );
    // Nothing left at or below 3: nothing written.
    assert_eq!(store.delete_below_purged(3).unwrap(), None);
    // Never past the last purged id, into openraft's log.
    assert_eq!(store.delete_below_purged(100).unwrap(), Some(6));
    assert_eq!(
        stored_indexes(&storage, GroupId(1), 0..=10),
        vec![7, 8, 9, 10]
    );
    assert_eq!(log_state(&mut store).await, (Some(6), Some(10)));
    assert_eq!(indexes(&mut neighbour, ..).await, vec![0, 1, 2, 3]);
    // A group that purged nothing has nothing below its purge point.
    assert_eq!(neighbour.delete_below_purged(100).unwrap(), None);
    assert_eq!(indexes(&mut neighbour, ..).await, vec![0, 1, 2, 3]);
}

#[tokio::test]
async fn read_tail_reads_newest_first_and_says_where_it_stopped() {
    let (_dir, _storage, mut store) = open_group_one();
    append(&mut store, entries(1, 1..=10)).await;
    store.purge(log_id(1, 3)).await.unwrap();
    let decode = |tail: &RawTail, first: u64| -> Vec<EntryOf<TestConfig>> {
        (first..)
            .zip(&tail.entries)
            .map(|(index, bytes)| store.decode_entry(index, bytes).unwrap())
            .collect()
    };

    let tail = store.read_tail(5, 8, usize::MAX).unwrap();
    assert_eq!(tail.end, TailEnd::ReachedFirst);
    assert_eq!(decode(&tail, 5), entries(1, 5..=8));

    // The budget keeps the newest entries, and at least one.
    let newest_two: usize = store
        .read_tail(9, 10, usize::MAX)
        .unwrap()
        .entries
        .iter()
        .map(Vec::len)
        .sum();
    let tail = store.read_tail(1, 10, newest_two).unwrap();
    assert_eq!(tail.end, TailEnd::Budget);
    assert_eq!(decode(&tail, 9), entries(1, 9..=10));
    let tail = store.read_tail(1, 10, 1).unwrap();
    assert_eq!(tail.end, TailEnd::Budget);
    assert_eq!(decode(&tail, 10), entries(1, 10..=10));

    // Purged entries end the run.
    let tail = store.read_tail(1, 6, usize::MAX).unwrap();
    assert_eq!(tail.end, TailEnd::Missing(3));
    assert_eq!(decode(&tail, 4), entries(1, 4..=6));
    let tail = store.read_tail(1, 12, usize::MAX).unwrap();
    assert_eq!(tail.end, TailEnd::Missing(12));
    assert!(tail.entries.is_empty());

    // An entry stored under the wrong index does not decode as that index.
    let bytes = store.read_tail(7, 7, usize::MAX).unwrap().entries.remove(0);
    assert!(store.decode_entry(7, &bytes).is_ok());
    assert!(matches!(
        store.decode_entry(8, &bytes),
        Err(StorageError::Corrupt { .. })
    ));
    assert!(matches!(
        store.decode_entry(7, b"\x01garbage"),
        Err(StorageError::Decode { .. })
    ));
}

#[tokio::test]
async fn committed_is_saved_and_cleared() {
    let (_dir, storage, mut store) = open_group_one();
    assert_eq!(store.read_committed().await.unwrap(), None);
    store.save_committed(Some(log_id(2, 9))).await.unwrap();
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id(2, 9)));
    assert_eq!(
        storage
            .log_store::<TestConfig>(GroupId(2))
            .read_committed()
            .await
            .unwrap(),
        None
    );
    store.save_committed(None).await.unwrap();
    assert_eq!(store.read_committed().await.unwrap(), None);
}

#[test]
fn state_keys_are_isolated_per_group_and_returned_without_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    for group in [1, 2, 3].map(GroupId) {
        let mut batch = StateBatch::new();
        batch.put("a", format!("a{group}"));
        batch.put("b/1", format!("b1-{group}"));
        batch.put("b/2", format!("b2-{group}"));
        batch.put(b"\xFF\xFF", format!("ff{group}"));
        storage.state_write(group, batch).unwrap();
    }

    assert_eq!(
        storage.state_get(GroupId(2), b"a").unwrap(),
        Some(b"a2".to_vec())
    );
    assert_eq!(storage.state_get(GroupId(4), b"a").unwrap(), None);
    assert_eq!(
        storage.state_scan(GroupId(2), b"b/").unwrap(),
        vec![
            (b"b/1".to_vec(), b"b1-2".to_vec()),
            (b"b/2".to_vec(), b"b2-2".to_vec())
        ]
    );
    let keys_of = |group| -> Vec<Vec<u8>> {
        storage
            .state_scan(group, b"")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    };
    let all = vec![
        b"a".to_vec(),
        b"b/1".to_vec(),
        b"b/2".to_vec(),
        b"\xFF\xFF".to_vec(),
    ];
    assert_eq!(keys_of(GroupId(2)), all);
    assert_eq!(
        storage.state_scan(GroupId(2), b"\xFF").unwrap(),
        vec![(b"\xFF\xFF".to_vec(), b"ff2".to_vec())]
    );

    // Range deletes stay inside the group, even for an all-0xFF prefix.
    let mut batch = StateBatch::new();
    batch.delete_prefix(b"\xFF");
    batch.delete("a");
    storage.state_write(GroupId(2), batch).unwrap();
    assert_eq!(keys_of(GroupId(2)), vec![b"b/1".to_vec(), b"b/2".to_vec()]);
    assert_eq!(keys_of(GroupId(1)), all);
    assert_eq!(keys_of(GroupId(3)), all);

    let mut batch = StateBatch::new();
    batch.delete_prefix("");
    batch.put("c", "kept");
    assert_eq!(batch.len(), 2);
    storage.state_write(GroupId(2), batch).unwrap();
    assert_eq!(
        storage.state_scan(GroupId(2), b"").unwrap(),
        vec![(b"c".to_vec(), b"kept".to_vec())]
    );
    assert_eq!(keys_of(GroupId(1)), all);
    assert_eq!(keys_of(GroupId(3)), all);
}

#[tokio::test]
async fn delete_group_removes_one_group_entirely() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    for group in [0, 1, 2].map(GroupId) {
        let mut store: Store = storage.log_store(group);
        store.save_vote(&vote(1, 1)).await.unwrap();
        append(&mut store, entries(1, 1..=3)).await;
        store.purge(log_id(1, 1)).await.unwrap();
        store.save_committed(Some(log_id(1, 3))).await.unwrap();
        let mut batch = StateBatch::new();
        batch.put("k", "v");
        storage.state_write(group, batch).unwrap();
    }
    // A group with only state and no Raft data does not count as on disk.
    storage
        .state_write(GroupId(9), {
            let mut b = StateBatch::new();
            b.put("k", "v");
            b
        })
        .unwrap();
    assert_eq!(storage.groups_on_disk().unwrap(), [0, 1, 2].map(GroupId));

    storage.delete_group(GroupId(1)).unwrap();
    assert_eq!(storage.groups_on_disk().unwrap(), [0, 2].map(GroupId));
    let mut deleted: Store = storage.log_store(GroupId(1));
    assert_eq!(log_state(&mut deleted).await, (None, None));
    assert_eq!(deleted.read_vote().await.unwrap(), None);
    assert_eq!(deleted.read_committed().await.unwrap(), None);
    assert_eq!(storage.state_get(GroupId(1), b"k").unwrap(), None);

    for group in [0, 2].map(GroupId) {
        let mut store: Store = storage.log_store(group);
        assert_eq!(log_state(&mut store).await, (Some(1), Some(3)));
        assert_eq!(store.read_vote().await.unwrap(), Some(vote(1, 1)));
        assert_eq!(storage.state_get(group, b"k").unwrap(), Some(b"v".to_vec()));
    }
}

#[test]
fn the_reserved_group_id_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let err = storage.state_get(GroupId(u64::MAX), b"k").unwrap_err();
    assert!(matches!(
        err,
        StorageError::ReservedGroup {
            group: GroupId(u64::MAX)
        }
    ));
    assert!(storage.delete_group(GroupId(u64::MAX)).is_err());
    assert!(
        storage
            .read_entry::<TestConfig>(GroupId(u64::MAX), 1)
            .is_err()
    );
    assert_eq!(io::Error::from(err).kind(), io::ErrorKind::InvalidInput);
    // The largest usable id works, including its range deletes.
    storage
        .state_write(GROUP_ID_MAX, {
            let mut b = StateBatch::new();
            b.put(b"\xFF", "v");
            b
        })
        .unwrap();
    storage.delete_group(GROUP_ID_MAX).unwrap();
    assert_eq!(storage.state_get(GROUP_ID_MAX, b"\xFF").unwrap(), None);
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_syncer_and_closes_the_database() {
    let (dir, storage, mut store) = open_group_one();
    let reader = store.get_log_reader().await;
    append(&mut store, entries(1, 1..=1)).await;

    drop(storage);
    drop(store);
    // The reader still holds the storage, so the database is still open and locked.
    assert!(Storage::open(dir.path(), StorageConfig::default()).is_err());
    drop(reader);
    // The syncer thread owned a database handle; reopening succeeds only once it has exited.
    let storage = open(dir.path());
    assert_eq!(
        storage.read_entry::<TestConfig>(GroupId(1), 1).unwrap(),
        Some(entry(1, 1))
    );
}

#[test]
fn syncer_completes_waiters_in_queue_order() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path());
    let (tx, rx) = std::sync::mpsc::channel();

    let hold = storage.syncer().hold();
    for id in 0..5 {
        let tx = tx.clone();
        storage.syncer().enqueue(Box::new(move |result| {
            tx.send((id, result.is_ok())).unwrap();
        }));
    }
    drop(hold);

    let completed: Vec<_> = (0..5).map(|_| rx.recv().unwrap()).collect();
    assert_eq!(completed, (0..5).map(|id| (id, true)).collect::<Vec<_>>());
}

/// Flips one bit in the last byte of the stored value of entry `index` of group 1, in the
/// bincode body (the payload), where only the checksum can tell.
fn flip_stored_bit(storage: &Storage, index: u64) {
    let inner = &*storage.inner;
    let logs = inner.cf(CF_LOGS).unwrap();
    let key = keys::log_key(GroupId(1), index);
    let mut bytes = inner.db.get_cf(logs, key).unwrap().unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    inner.db.put_cf(logs, key, bytes).unwrap();
}

fn assert_checksum_error(err: &StorageError, index: u64) {
    assert!(
        matches!(err, StorageError::Checksum { group: GroupId(1), what: "log entry", key, .. }
            if *key == format!("index {index}")),
        "{err}"
    );
}

#[tokio::test]
async fn a_flipped_bit_in_a_stored_entry_is_never_returned_and_fails_the_storage() {
    let (_dir, storage, mut store) = open_group_one();
    append(&mut store, entries(1, 1..=3)).await;
    // The payload differs only in its last byte ("payload 3" and "payload 2"), so a decode
    // without the checksum would return a plausible entry.
    flip_stored_bit(&storage, 3);
    assert_eq!(storage.failure().borrow().clone(), None);

    assert_checksum_error(
        &storage.read_entry::<TestConfig>(GroupId(1), 3).unwrap_err(),
        3,
    );
    let reason = storage.failure().borrow().clone().unwrap();
    assert!(
        reason.contains("log entry at index 3 fails its checksum"),
        "{reason}"
    );

    // Every read that could serve or replicate it refuses it, openraft's included.
    let err = store.try_get_log_entries(1..=3).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("fails its checksum"), "{err}");
    let err = store.limited_get_log_entries(3, 4).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    let err = store.get_log_state().await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert_checksum_error(&store.read_tail(1, 3, usize::MAX).unwrap_err(), 3);
    // The entries before it are sound.
    assert_eq!(indexes(&mut store, 1..=2).await, vec![1, 2]);
    let tail = store.read_tail(1, 2, usize::MAX).unwrap();
    assert_eq!(tail.entries.len(), 2);
}

#[tokio::test]
async fn a_corrupt_entry_from_a_peer_is_refused_without_failing_this_storage() {
    let (_dir, storage, mut store) = open_group_one();
    append(&mut store, entries(1, 1..=1)).await;
    let mut bytes = store.read_tail(1, 1, usize::MAX).unwrap().entries.remove(0);
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;

    assert_checksum_error(&store.decode_entry(1, &bytes).unwrap_err(), 1);
    assert_eq!(storage.failure().borrow().clone(), None);
}

#[tokio::test]
async fn entries_and_metadata_written_before_checksums_still_read() {
    let (_dir, storage, mut store) = open_group_one();
    let inner = &*storage.inner;
    let logs = inner.cf(CF_LOGS).unwrap();
    let meta = inner.cf(CF_META).unwrap();
    for old in entries(1, 1..=3) {
        let key = keys::log_key(GroupId(1), old.index());
        inner
            .db
            .put_cf(logs, key, codec::encode_v1(&old).unwrap())
            .unwrap();
    }
    inner
        .db
        .put_cf(
            meta,
            keys::meta_key(GroupId(1), MetaTag::Vote),
            codec::encode_v1(&vote(4, 2)).unwrap(),
        )
        .unwrap();
    // A new binary appends after them in the new format.
    append(&mut store, entries(1, 4..=5)).await;

    assert_eq!(
        store.try_get_log_entries(1..=5).await.unwrap(),
        entries(1, 1..=5)
    );
    assert_eq!(
        storage.read_entry::<TestConfig>(GroupId(1), 2).unwrap(),
        Some(entry(1, 2))
    );
    assert_eq!(store.read_vote().await.unwrap(), Some(vote(4, 2)));
    let tail = store.read_tail(1, 5, usize::MAX).unwrap();
    let read: Vec<_> = (1..)
        .zip(&tail.entries)
        .map(|(index, bytes)| store.decode_entry(index, bytes).unwrap())
        .collect();
    assert_eq!(read, entries(1, 1..=5));
    assert_eq!(storage.failure().borrow().clone(), None);
}
