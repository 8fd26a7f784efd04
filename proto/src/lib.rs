//! Protobuf types and tonic services of Raftstream (package `raftstream.v1`).
//!
//! Wire types stay at the edges: only the node's gRPC and Raft network layers
//! and the client crate use this crate.

pub mod codec;
pub mod decode_budget;
mod error_code;

pub use error_code::ErrorCode;
pub use error_code::UnknownErrorCode;

/// Response metadata a node sets on a call it forwarded to another node (the
/// group's leader): the caller's idea of the leader is out of date. Its value
/// carries no meaning.
pub const FORWARDED_HEADER: &str = "x-raftstream-forwarded";

/// Status metadata that tells apart errors sharing a gRPC code, for the HTTP
/// gateway and clients: its value is an [`ErrorCode`] string (see
/// [`ErrorCode::status`] and [`ErrorCode::of_status`]). Older nodes set it
/// only to `insufficient_storage`, on RESOURCE_EXHAUSTED.
pub const ERROR_KIND_HEADER: &str = "x-raftstream-error";

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

    /// Calls a client may cancel (reset) before the server has taken them
    /// up, at one time, before the server closes the connection.
    ///
    /// h2 allows 20: its guard against "rapid reset" floods. Raftstream's own
    /// traffic exceeds that: when 1,000 groups elect at once on a busy node,
    /// their peers time out and cancel hundreds of vote calls that still wait
    /// to be taken up. Each time the limit was hit, the connection closed with
    /// ENHANCE_YOUR_CALM and took every call on it down (appends of every
    /// group, forwarded publishes), which set off more elections. The queue
    /// stays bounded, so a flood still closes the connection.
    pub const MAX_PENDING_CANCELLED_CALLS: usize = 4096;

    /// `endpoint` (a client's or a peer's channel) with these settings.
    ///
    /// The answer to a call this side cancelled (a timeout) can arrive after
    /// h2 has forgotten the call; h2 counts each such answer as a protocol
    /// error of the server and, at 1,024 over the connection's life, closes
    /// the connection with ENHANCE_YOUR_CALM, failing every call on it. The
    /// limit guards a server against clients; the answers here come from a
    /// Raftstream node and are late, not hostile, so it is off.
    pub fn endpoint(endpoint: Endpoint) -> Endpoint {
        endpoint
            .max_frame_size(MAX_FRAME_BYTES)
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .http2_max_local_error_reset_streams(None)
    }

    /// `server` with these settings.
    pub fn server<L>(server: Server<L>) -> Server<L> {
        server
            .max_frame_size(MAX_FRAME_BYTES)
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_CANCELLED_CALLS))
    }
}

/// What a caller can tell about a call that failed: did the request leave?
///
/// tonic builds a status from a broken or missing connection itself and
/// keeps the transport error as its source; a status the server sent carries
/// none. Both a refused connection and a connection that died mid-call (an
/// HTTP/2 keep-alive timeout against a paused or cut-off node) come out as
/// UNAVAILABLE, so the code alone cannot say whether the request ran.
/// The size a record counts against the message size limit: key, value,
/// and every header's name and value. Clients check it before sending; the
/// node enforces it.
pub fn record_size<'a>(
    key: &[u8],
    value: &[u8],
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> usize {
    key.len()
        + value.len()
        + headers
            .into_iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

pub mod call_outcome {
    use tonic::Status;

    /// The call failed on the transport: the server sent no answer.
    pub fn unanswered(status: &Status) -> bool {
        std::error::Error::source(status).is_some()
    }

    /// The connection could not be made (TCP or TLS): the request never
    /// left, so it certainly did not run. tonic marks exactly these with a
    /// [`tonic::ConnectError`] in the status's source chain.
    pub fn never_sent(status: &Status) -> bool {
        let mut cause = std::error::Error::source(status);
        while let Some(error) = cause {
            if error.is::<tonic::ConnectError>() {
                return true;
            }
            cause = error.source();
        }
        false
    }

    /// The request may have left and the answer never came: whether it ran
    /// is unknown.
    pub fn cut_off(status: &Status) -> bool {
        unanswered(status) && !never_sent(status)
    }
}

/// Every message and service of `raftstream.v1`, as an encoded
/// `FileDescriptorSet`: what server reflection serves and what the decode
/// budget walks.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("raftstream.v1");
}
