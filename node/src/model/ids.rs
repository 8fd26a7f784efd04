//! The ids every layer passes around, each its own type so that a topic id
//! is never taken for a group id or an offset.
//!
//! Each encodes exactly as the bare `u64` it wraps (`#[serde(transparent)]`,
//! and `Display` and `Debug` print the number): log entries, snapshots, RocksDB keys,
//! `identity.json` and the wire were written with bare `u64`s and must read
//! the same. Protobuf messages keep `u64`; the adapters convert.

use serde::Deserialize;
use serde::Serialize;

/// Prints each id as the bare number, with `{}` and `{:?}` alike: log
/// lines and error messages read as they did when ids were `u64`s.
macro_rules! formats_as_bare_number {
    ($($id:ty),*) => {$(
        impl std::fmt::Display for $id {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::fmt::Debug for $id {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}

formats_as_bare_number!(TopicId, GroupId, NodeId, Offset);

/// A topic's id. Topic ids start at 1, only grow and are never reused.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TopicId(pub u64);

impl TopicId {
    /// The first topic's id: no topic has id 0, so 0 can stand for no
    /// topic.
    pub const FIRST: TopicId = TopicId(1);

    /// The id the next topic after this one gets.
    pub fn next(self) -> TopicId {
        TopicId(self.0 + 1)
    }
}

/// Partition group ids pack the topic id above the partition index so they
/// never collide and are never reused (topic ids only grow).
pub const PARTITION_BITS: u32 = 20;
pub const MAX_PARTITIONS: u32 = 1 << PARTITION_BITS;

/// A Raft group's id: the metadata group's, or one topic partition's.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GroupId(pub u64);

impl GroupId {
    /// The metadata group: cluster topics and partition placement.
    pub const META: GroupId = GroupId(0);

    /// The group of partition `partition` of topic `topic`.
    pub fn partition(topic: TopicId, partition: u32) -> GroupId {
        GroupId((topic.0 << PARTITION_BITS) | u64::from(partition))
    }

    /// The topic of a partition group (`TopicId(0)` for the metadata
    /// group).
    pub fn topic(self) -> TopicId {
        TopicId(self.0 >> PARTITION_BITS)
    }

    /// The partition number of a partition group.
    pub fn partition_index(self) -> u32 {
        (self.0 & u64::from(MAX_PARTITIONS - 1)) as u32
    }
}

/// A node's id in its cluster; also openraft's node id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u64);

/// openraft's storage conformance suite makes its node ids from numbers.
impl From<u64> for NodeId {
    fn from(id: u64) -> NodeId {
        NodeId(id)
    }
}

/// Node ids are written as their number in configuration and peer lists.
impl std::str::FromStr for NodeId {
    type Err = std::num::ParseIntError;

    fn from_str(text: &str) -> Result<NodeId, Self::Err> {
        text.parse().map(NodeId)
    }
}

/// A message's place in its partition. Offsets start at 0, are dense and
/// are never reused: the next message gets the next offset.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Offset(pub u64);

impl Offset {
    /// The offset `count` messages after this one.
    pub fn plus(self, count: u64) -> Offset {
        Offset(self.0 + count)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use super::*;

    /// Whether `id` encodes, in bincode (log entries, snapshots) and in
    /// JSON (HTTP, `identity.json`), exactly as the bare `u64`, reads back
    /// from it, and prints as it with `{}` and `{:?}`.
    fn encodes_and_prints_as_bare_u64<T>(id: T, bare: u64)
    where
        T: Serialize + serde::de::DeserializeOwned + Ord + std::fmt::Debug + std::fmt::Display,
    {
        assert_eq!(id.to_string(), bare.to_string());
        assert_eq!(format!("{id:?}"), format!("{bare:?}"));
        assert_eq!(
            bincode::serialize(&id).unwrap(),
            bincode::serialize(&bare).unwrap()
        );
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            serde_json::to_string(&bare).unwrap()
        );
        assert_eq!(
            serde_json::to_string(&BTreeMap::from([(&id, 0)])).unwrap(),
            serde_json::to_string(&BTreeMap::from([(bare, 0)])).unwrap(),
            "as a map key"
        );
        assert_eq!(
            bincode::deserialize::<T>(&bincode::serialize(&bare).unwrap()).unwrap(),
            id
        );
        assert_eq!(
            serde_json::from_str::<T>(&serde_json::to_string(&bare).unwrap()).unwrap(),
            id
        );
    }

    #[test]
    fn topic_ids_encode_and_print_as_the_bare_number() {
        for n in [0, 1, 300, u64::MAX] {
            encodes_and_prints_as_bare_u64(TopicId(n), n);
        }
    }

    #[test]
    fn group_ids_encode_and_print_as_the_bare_number() {
        for n in [0, 1, 1 << PARTITION_BITS, u64::MAX] {
            encodes_and_prints_as_bare_u64(GroupId(n), n);
        }
    }

    #[test]
    fn partition_groups_pack_the_topic_above_the_partition() {
        assert_eq!(GroupId::partition(TopicId(1), 0), GroupId(1 << 20));
        assert_eq!(GroupId::partition(TopicId(3), 7), GroupId((3 << 20) | 7));
        let last = GroupId::partition(TopicId(2), MAX_PARTITIONS - 1);
        assert_eq!(last.topic(), TopicId(2));
        assert!(last < GroupId::partition(TopicId(3), 0));
        assert_eq!(GroupId::META.topic(), TopicId(0));
    }

    #[test]
    fn node_ids_encode_and_print_as_the_bare_number() {
        for n in [0, 1, 5, u64::MAX] {
            encodes_and_prints_as_bare_u64(NodeId(n), n);
        }
    }

    #[test]
    fn offsets_encode_and_print_as_the_bare_number() {
        for n in [0, 1, 4096, u64::MAX] {
            encodes_and_prints_as_bare_u64(Offset(n), n);
        }
    }
}
