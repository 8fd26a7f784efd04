//! Async Rust client for Raftstream's gRPC API.
//!
//! Today this is the generated tonic client plus a connect helper; the
//! batching idempotent producer and consumer groups build on it.

pub use raftstream_proto::v1 as pb;
pub use raftstream_proto::v1::raftstream_client::RaftstreamClient;
use tonic::transport::Channel;

/// Messages may be up to the server's batch limit.
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid address {addr:?}: {reason}")]
    InvalidAddress { addr: String, reason: String },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: tonic::transport::Error,
    },
}

/// Connects to one node (`host:port`); any node serves every request.
pub async fn connect(addr: &str) -> Result<RaftstreamClient<Channel>, ConnectError> {
    let endpoint = Channel::from_shared(format!("http://{addr}")).map_err(|e| {
        ConnectError::InvalidAddress {
            addr: addr.to_string(),
            reason: e.to_string(),
        }
    })?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|source| ConnectError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    Ok(RaftstreamClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}
