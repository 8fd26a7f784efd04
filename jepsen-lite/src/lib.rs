//! jepsen-lite: runs a real Raftstream cluster in network namespaces,
//! injects faults on a seeded schedule, records every client operation and
//! checks the history. The binary drives the cluster; the library holds
//! the parts that are tested without root: the history and the checker.

pub mod checker;
pub mod history;
