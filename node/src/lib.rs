//! Raftstream node: multi-raft partition logs on openraft and RocksDB,
//! served over gRPC (client API and Raft transport) and HTTP.
//! ARCHITECTURE.md at the repository root has the codemap.

pub mod api;
pub mod auth;
pub mod backfill;
pub mod call_layer;
pub mod clock;
pub mod config;
pub mod disk;
pub mod failpoints;
pub mod gateway;
pub mod group;
pub mod health;
pub mod identity;
pub mod ingest;
pub mod link_faults;
pub mod metrics;
pub mod model;
pub mod node;
pub mod platform;
pub mod push;
pub mod raft;
pub mod rejoin;
pub mod server;
pub mod state_machine;
pub mod storage;
pub mod time;
pub mod tls;
