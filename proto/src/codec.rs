//! The gRPC codec of every Raftstream service: prost, with each message's output buffer
//! reserved once at its encoded size.
//!
//! tonic's prost codec lets prost grow the buffer as it writes, doubling from 8 KiB. A
//! 1 MiB publish batch, a replicated entry or a 10 MB consume response was then copied
//! about seven times on its way out, each time into freshly faulted memory; profiles of
//! publish and catch-up showed those copies on both the client and the node.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic_prost::ProstDecoder;

/// [`tonic_prost::ProstCodec`] with [`PresizedEncoder`].
#[derive(Debug, Clone)]
pub struct PresizedCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for PresizedCodec<T, U> {
    fn default() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for PresizedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = PresizedEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        PresizedEncoder {
            _message: PhantomData,
        }
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::default()
    }
}

/// Encodes a prost message after reserving its whole encoded length.
#[derive(Debug, Clone)]
pub struct PresizedEncoder<T> {
    _message: PhantomData<T>,
}

impl<T: Message> Encoder for PresizedEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        item.encode(buf)
            .map_err(|e| Status::internal(format!("encoding a message: {e}")))
    }
}
