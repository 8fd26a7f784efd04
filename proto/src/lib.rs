//! Protobuf types and tonic services of Raftstream (package `raftstream.v1`).
//!
//! Wire types stay at the edges: only the node's gRPC and Raft network layers
//! and the client crate use this crate.

pub mod codec;

/// Response metadata a node sets on a call it forwarded to another node (the
/// group's leader): the caller's idea of the leader is out of date. Its value
/// carries no meaning.
pub const FORWARDED_HEADER: &str = "x-raftstream-forwarded";

/// HTTP/2 settings of every Raftstream connection, client and server side.
///
/// h2's defaults (16 KiB frames; hyper's 1 MiB windows on a server) cut a 1 MiB publish
/// batch or a 10 MB consume response into hundreds of frames and stall a busy connection,
/// which carries every request between two processes, on window updates.
pub mod http2 {
    use tonic::transport::{Endpoint, Server};

    /// The largest frame this side accepts.
    const MAX_FRAME_BYTES: u32 = 1 << 20;
    /// Flow-control window of one stream.
    const STREAM_WINDOW_BYTES: u32 = 8 << 20;
    /// Flow-control window of a whole connection.
    const CONNECTION_WINDOW_BYTES: u32 = 32 << 20;

    /// `endpoint` (a client's or a peer's channel) with these settings.
    pub fn endpoint(endpoint: Endpoint) -> Endpoint {
        endpoint
            .max_frame_size(MAX_FRAME_BYTES)
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
    }

    /// `server` with these settings.
    pub fn server<L>(server: Server<L>) -> Server<L> {
        server
            .max_frame_size(MAX_FRAME_BYTES)
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
    }
}

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("raftstream.v1");
}
