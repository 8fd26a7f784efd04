//! Protobuf types and tonic services of Raftstream (package `raftstream.v1`).
//!
//! Wire types stay at the edges: only the node's gRPC and Raft network layers
//! and the client crate use this crate.

pub mod codec;

/// HTTP/2 settings of every Raftstream connection, client and server side.
///
/// h2's defaults (16 KiB frames; hyper's 1 MiB windows on a server) cut a 1 MiB publish
/// batch or a 10 MB consume response into hundreds of frames and stall a busy connection,
/// which carries every request between two processes, on window updates.
pub mod http2 {
    /// The largest frame this side accepts.
    pub const MAX_FRAME_BYTES: u32 = 1 << 20;
    /// Flow-control window of one stream.
    pub const STREAM_WINDOW_BYTES: u32 = 8 << 20;
    /// Flow-control window of a whole connection.
    pub const CONNECTION_WINDOW_BYTES: u32 = 32 << 20;
}

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("raftstream.v1");
}
