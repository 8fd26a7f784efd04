//! Protobuf types and tonic services of Raftstream (package `raftstream.v1`).
//!
//! Wire types stay at the edges: only the node's gRPC and Raft network layers
//! and the client crate use this crate.

pub mod codec;

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("raftstream.v1");
}
