//! The gRPC codec of every Raftstream service: prost, with each message's output buffer
//! reserved once at its encoded size.
//!
//! tonic's prost codec lets prost grow the buffer as it writes, doubling from 8 KiB. A
//! 1 MiB publish batch, a replicated entry or a 10 MB consume response was then copied
//! about seven times on its way out, each time into freshly faulted memory; profiles of
//! publish and catch-up showed those copies on both the client and the node.
//!
//! Decoding first counts what the message would allocate (see
//! [`crate::decode_budget`]) and refuses one that holds too much.

use std::marker::PhantomData;

use prost::bytes::Buf;
use prost::{Message, Name};
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic_prost::ProstDecoder;

use crate::decode_budget;

/// [`tonic_prost::ProstCodec`] with [`PresizedEncoder`] and [`BudgetedDecoder`].
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
    U: Message + Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = PresizedEncoder<T>;
    type Decoder = BudgetedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        PresizedEncoder {
            _message: PhantomData,
        }
    }

    fn decoder(&mut self) -> Self::Decoder {
        BudgetedDecoder {
            inner: ProstDecoder::default(),
        }
    }
}

/// Decodes a prost message once its elements are counted within
/// [`decode_budget::MAX_DECODED_ELEMENTS`]; a message over it is refused
/// with RESOURCE_EXHAUSTED before anything is allocated.
#[derive(Debug, Clone)]
pub struct BudgetedDecoder<U> {
    inner: ProstDecoder<U>,
}

impl<U: Message + Name + Default> Decoder for BudgetedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // tonic hands over each message as one contiguous buffer.
        let bytes = buf.chunk();
        if bytes.len() == buf.remaining() {
            let limit = decode_budget::MAX_DECODED_ELEMENTS;
            decode_budget::check(&U::full_name(), bytes, limit).map_err(|_| {
                Status::resource_exhausted(format!(
                    "the {} holds more than {limit} records, headers, strings and \
                     nested messages; split it",
                    U::NAME
                ))
            })?;
        }
        self.inner.decode(buf)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
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
