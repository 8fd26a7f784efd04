//! Async Rust client for Raftstream.
//!
//! - [`Client`]: connects through seed nodes, discovers the cluster and the
//!   partition leaders, routes calls to leaders and retries unavailable
//!   clusters and leader changes with bounded exponential backoff; every call
//!   has a deadline and carries the bearer token.
//! - [`Producer`]: batching, pipelined across partitions, idempotent.
//! - [`Consumer`]: reads by offset, message id or time; long polls; a stream
//!   that resumes without gaps or repeats; consumer-group offsets.
//!
//! ```no_run
//! use raftstream_client::{Client, ClientConfig, Consumer, Position, Producer, ProducerConfig, Record};
//! use std::time::Duration;
//!
//! # async fn example() -> raftstream_client::Result<()> {
//! let client = Client::connect(ClientConfig::new(["127.0.0.1:50051"]).with_token("rst_...")).await?;
//! let producer = Producer::new(&client, "orders", ProducerConfig::default()).await?;
//! let ack = producer.send_and_wait(Record::new(r#"{"id": 1}"#).with_key("customer-7")).await?;
//! println!("stored at {}", ack.message_id);
//!
//! let mut consumer = Consumer::new(&client, "orders", ack.partition, Position::Earliest).await?;
//! for message in consumer.poll(100, Duration::from_secs(5)).await? {
//!     println!("{}: {:?}", message.offset, message.value);
//! }
//! consumer.commit("billing").await?;
//! # Ok(())
//! # }
//! ```

mod client;
mod consumer;
mod error;
mod ingest;
mod producer;
mod subscriptions;

pub use raftstream_proto::v1 as pb;
pub use raftstream_proto::v1::raftstream_client::RaftstreamClient;
pub use tonic::transport::ClientTlsConfig;

pub use crate::client::Auth;
pub use crate::client::Client;
pub use crate::client::ClientConfig;
pub use crate::client::Grpc;
pub use crate::client::IngestGrpc;
pub use crate::client::SubscriptionsGrpc;
pub use crate::client::tls_from_files;
pub use crate::client::topic_ref;
pub use crate::consumer::Consumer;
pub use crate::consumer::Position;
pub use crate::error::Error;
pub use crate::error::Result;
pub use crate::ingest::IngestedEvent;
pub use crate::ingest::rfc3339;
pub use crate::producer::Ack;
pub use crate::producer::Delivery;
pub use crate::producer::Producer;
pub use crate::producer::ProducerConfig;
pub use crate::producer::Record;
pub use crate::subscriptions::CreatedSubscription;
pub use crate::subscriptions::DeliverySettings;
pub use crate::subscriptions::DeliveryStart;
pub use crate::subscriptions::FilterChange;
pub use crate::subscriptions::NewSubscription;
pub use crate::subscriptions::PayloadFilter;
pub use crate::subscriptions::SubscriptionUpdate;

/// Connects to one node (`host:port`): the raw generated gRPC client with
/// the token attached, for tools and tests that drive the API directly.
pub async fn connect(addr: &str, token: Option<&str>) -> Result<Grpc> {
    let invalid = |e: &dyn std::fmt::Display| Error::InvalidAddress {
        addr: addr.to_string(),
        reason: e.to_string(),
    };
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .map_err(|e| invalid(&e))?
        .connect()
        .await
        .map_err(|_| Error::NoNodeReachable {
            seeds: vec![addr.to_string()],
        })?;
    let auth = match token {
        Some(token) => Some(format!("Bearer {token}").parse().map_err(|_| {
            Error::Unauthenticated("the token has characters a header cannot carry".into())
        })?),
        None => None,
    };
    Ok(RaftstreamClient::with_interceptor(channel, Auth::new(auth))
        .max_decoding_message_size(256 * 1024 * 1024)
        .max_encoding_message_size(256 * 1024 * 1024))
}
