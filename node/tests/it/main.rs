//! The node's integration tests, one binary so that the test suite builds
//! and links the node once instead of once per file.

mod common;
#[path = "common/http.rs"]
mod http;
#[path = "common/receiver.rs"]
mod receiver;

mod backfill;
mod cluster;
mod disk;
mod failpoints;
mod gateway;
mod health;
mod http_fidelity;
mod ingest;
mod layering;
mod limits;
mod links;
mod membership;
mod metrics;
mod platform;
mod process;
mod push;
mod quiesce;
mod rejoin;
mod request_ids;
mod schema;
mod shutdown;
mod storage_suite;
mod subscriptions_http;
mod tokens;
