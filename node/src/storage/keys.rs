//! Key layout of the column families.
//!
//! Every key starts with the 8-byte big-endian group id, so one group's keys are one contiguous
//! range and groups sort numerically. Big-endian log indexes make a group's entries sort in log
//! order, which is what range deletes and "seek to last" rely on.
//!
//! | column family | key                                  | value                      |
//! |---------------|--------------------------------------|----------------------------|
//! | `logs`        | group (8 BE) ‖ log index (8 BE)      | encoded `C::Entry`         |
//! | `raft_meta`   | group (8 BE) ‖ tag (1)               | encoded vote or log id     |
//! | `state`       | group (8 BE) ‖ state-machine key     | state-machine value        |
//!
//! The exclusive upper bound of a group's keys is the next group's 8-byte prefix. That bound does
//! not exist for `u64::MAX`, which is why that group id is reserved (see [`GROUP_ID_MAX`]).

use crate::model::GroupId;

/// The largest usable group id. `u64::MAX` is reserved so that every group has a finite
/// exclusive upper bound (`group + 1`) for scans and range deletes, even in the `state`
/// column family whose keys have no fixed length.
pub const GROUP_ID_MAX: GroupId = GroupId(u64::MAX - 1);

pub(super) const GROUP_PREFIX_LEN: usize = 8;
pub(super) const LOG_KEY_LEN: usize = 16;
pub(super) const META_KEY_LEN: usize = 9;

/// The kind of record stored under a group in `raft_meta`. The byte values are on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum MetaTag {
    Vote = 1,
    Committed = 2,
    LastPurged = 3,
}

pub(super) fn group_prefix(group: GroupId) -> [u8; GROUP_PREFIX_LEN] {
    group.0.to_be_bytes()
}

/// Exclusive upper bound of all keys of `group`, in every column family.
///
/// Callers must have checked `group <= GROUP_ID_MAX`; `u64::MAX` wraps to 0 here only so that
/// this function is total, and the checked entry points never let it through.
pub(super) fn group_end(group: GroupId) -> [u8; GROUP_PREFIX_LEN] {
    debug_assert!(group <= GROUP_ID_MAX);
    group.0.wrapping_add(1).to_be_bytes()
}

pub(super) fn log_key(group: GroupId, index: u64) -> [u8; LOG_KEY_LEN] {
    let mut key = [0u8; LOG_KEY_LEN];
    key[..GROUP_PREFIX_LEN].copy_from_slice(&group.0.to_be_bytes());
    key[GROUP_PREFIX_LEN..].copy_from_slice(&index.to_be_bytes());
    key
}

/// Returns `None` if `key` is not a log key (wrong length).
pub(super) fn decode_log_key(key: &[u8]) -> Option<(GroupId, u64)> {
    let key: &[u8; LOG_KEY_LEN] = key.try_into().ok()?;
    let (group, index) = key.split_at(GROUP_PREFIX_LEN);
    Some((
        GroupId(u64::from_be_bytes(group.try_into().ok()?)),
        u64::from_be_bytes(index.try_into().ok()?),
    ))
}

/// Exclusive end key of the log entries of `group` with index `< end_index`, or of all its
/// entries when `end_index` is `None`.
pub(super) fn log_range_end(group: GroupId, end_index: Option<u64>) -> Vec<u8> {
    match end_index {
        Some(index) => log_key(group, index).to_vec(),
        // An 8-byte key sorts before every 16-byte key that extends it, so the next group's
        // prefix bounds all indexes of this group, including u64::MAX.
        None => group_end(group).to_vec(),
    }
}

pub(super) fn meta_key(group: GroupId, tag: MetaTag) -> [u8; META_KEY_LEN] {
    let mut key = [0u8; META_KEY_LEN];
    key[..GROUP_PREFIX_LEN].copy_from_slice(&group.0.to_be_bytes());
    key[GROUP_PREFIX_LEN] = tag as u8;
    key
}

/// Reads the group id from the first 8 bytes of any key; `None` if the key is shorter.
pub(super) fn decode_group(key: &[u8]) -> Option<GroupId> {
    let prefix: [u8; GROUP_PREFIX_LEN] = key.get(..GROUP_PREFIX_LEN)?.try_into().ok()?;
    Some(GroupId(u64::from_be_bytes(prefix)))
}

pub(super) fn state_key(group: GroupId, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(GROUP_PREFIX_LEN + key.len());
    out.extend_from_slice(&group.0.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// The `[start, end)` key range holding exactly the state keys of `group` that start with
/// `prefix`. `end` is the shortest key greater than every key with that prefix.
pub(super) fn state_prefix_range(group: GroupId, prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let start = state_key(group, prefix);
    let end = match prefix_successor(&start) {
        Some(end) => end,
        // Only an all-0xFF key has no successor, and its first 8 bytes would be the reserved
        // group u64::MAX; group_end keeps this total for that unreachable case.
        None => group_end(group).to_vec(),
    };
    (start, end)
}

/// The smallest key greater than every key that starts with `prefix`, or `None` if `prefix`
/// is empty or all 0xFF.
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let last = prefix.iter().rposition(|&b| b != 0xFF)?;
    let mut end = prefix[..=last].to_vec();
    end[last] += 1;
    Some(end)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_group_then_index() {
        let keys = [
            log_key(GroupId(0), 0),
            log_key(GroupId(0), 1),
            log_key(GroupId(0), 255),
            log_key(GroupId(0), 256),
            log_key(GroupId(0), u64::MAX),
            log_key(GroupId(1), 0),
            log_key(GroupId(1), 7),
            log_key(GroupId(256), 0),
            log_key(GROUP_ID_MAX, u64::MAX),
        ];
        for pair in keys.windows(2) {
            assert!(
                pair[0] < pair[1],
                "{:?} must sort before {:?}",
                pair[0],
                pair[1]
            );
        }
    }

    #[test]
    fn log_key_round_trips() {
        for (group, index) in [
            (GroupId(0), 0),
            (GroupId(1), 2),
            (GROUP_ID_MAX, u64::MAX),
            (GroupId(0x0102_0304), 0xA0B0),
        ] {
            assert_eq!(decode_log_key(&log_key(group, index)), Some((group, index)));
        }
        assert_eq!(decode_log_key(&[0u8; 15]), None);
        assert_eq!(decode_log_key(&[0u8; 17]), None);
    }

    #[test]
    fn group_range_contains_all_of_its_keys_and_none_of_its_neighbours() {
        let max = GROUP_ID_MAX.0;
        for raw in [0, 1, 255, 256, max - 1, max] {
            let group = GroupId(raw);
            let start = group_prefix(group).to_vec();
            let end = group_end(group).to_vec();
            let inside = |k: &[u8]| start.as_slice() <= k && k < end.as_slice();

            assert!(inside(&log_key(group, 0)));
            assert!(inside(&log_key(group, u64::MAX)));
            assert!(inside(&meta_key(group, MetaTag::Vote)));
            assert!(inside(&state_key(group, b"")));
            assert!(inside(&state_key(group, &[0xFF; 64])));
            if raw > 0 {
                let before = GroupId(raw - 1);
                assert!(!inside(&log_key(before, u64::MAX)));
                assert!(!inside(&state_key(before, &[0xFF; 64])));
                assert!(!inside(&meta_key(before, MetaTag::LastPurged)));
            }
            if raw < max {
                let after = GroupId(raw + 1);
                assert!(!inside(&log_key(after, 0)));
                assert!(!inside(&state_key(after, b"")));
                assert!(!inside(&meta_key(after, MetaTag::Vote)));
            }
        }
    }

    #[test]
    fn log_range_end_stops_at_index_or_group_end() {
        assert_eq!(
            log_range_end(GroupId(3), Some(9)),
            log_key(GroupId(3), 9).to_vec()
        );
        let all = log_range_end(GroupId(3), None);
        assert!(log_key(GroupId(3), u64::MAX).as_slice() < all.as_slice());
        assert!(all.as_slice() <= log_key(GroupId(4), 0).as_slice());
    }

    #[test]
    fn state_prefix_range_is_exact() {
        let check = |group: GroupId, prefix: &[u8], key: &[u8], expected: bool| {
            let (start, end) = state_prefix_range(group, prefix);
            let k = state_key(group, key);
            assert_eq!(
                start <= k && k < end,
                expected,
                "group {group} prefix {prefix:?} key {key:?}"
            );
        };
        check(GroupId(5), b"ab", b"ab", true);
        check(GroupId(5), b"ab", b"abz", true);
        check(GroupId(5), b"ab", b"ac", false);
        check(GroupId(5), b"ab", b"aa\xFF", false);
        check(GroupId(5), b"", b"", true);
        check(GroupId(5), b"", &[0xFF; 32], true);
        check(GroupId(5), &[0xFF], &[0xFF, 0xFF, 0x01], true);
        check(GroupId(5), &[0xFF], &[0xFE, 0xFF], false);

        // The range never reaches into the neighbouring groups.
        for prefix in [&b""[..], &[0xFF][..], &[0xFF, 0xFF][..]] {
            let (start, end) = state_prefix_range(GroupId(5), prefix);
            assert!(state_key(GroupId(4), &[0xFF; 32]) < start);
            assert!(state_key(GroupId(6), b"") >= end);
        }
        let (_, end) = state_prefix_range(GROUP_ID_MAX, &[0xFF; 4]);
        assert_eq!(end, group_end(GROUP_ID_MAX).to_vec());
    }

    #[test]
    fn prefix_successor_skips_trailing_ff() {
        assert_eq!(prefix_successor(b""), None);
        assert_eq!(prefix_successor(&[0xFF, 0xFF]), None);
        assert_eq!(prefix_successor(&[0x01, 0xFF]).unwrap(), vec![0x02]);
        assert_eq!(prefix_successor(&[0x01, 0x02]).unwrap(), vec![0x01, 0x03]);
    }

    #[test]
    fn meta_tags_are_distinct_and_stable() {
        assert_eq!(meta_key(GroupId(7), MetaTag::Vote)[8], 1);
        assert_eq!(meta_key(GroupId(7), MetaTag::Committed)[8], 2);
        assert_eq!(meta_key(GroupId(7), MetaTag::LastPurged)[8], 3);
        assert_eq!(
            decode_group(&meta_key(GroupId(7), MetaTag::Vote)),
            Some(GroupId(7))
        );
        assert_eq!(decode_group(&[1, 2, 3]), None);
    }
}
