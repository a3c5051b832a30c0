//! Codecs for tonic: prost messages both ways, plus pre-encoded envelopes that many streams share.
//!
//! A record's `Event` is encoded once (see [`Record::grpc_envelope`](crate::record::Record::grpc_envelope))
//! and written as it is into every stream that carries it; tonic adds the
//! five-byte gRPC frame header per stream. Decoding refuses a malformed
//! message with `INVALID_ARGUMENT` and one larger than the limit with
//! `RESOURCE_EXHAUSTED`.

use std::marker::PhantomData;

use bytes::{BufMut, Bytes};
use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// Each stream's encode buffer starts this small: most streams are idle most of the time.
const BUFFER: usize = 512;
/// A stream yields to the transport once this much is encoded.
const YIELD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER, YIELD)
}

/// One message of a stream: shared bytes (a record's envelope) or a message built for this stream.
#[derive(Debug, Clone)]
pub enum Frame<M> {
    Shared(Bytes),
    Message(M),
}

/// A codec that encodes `Frame<E>` and decodes `D`, refusing requests over `limit` bytes.
#[derive(Debug)]
pub struct FrameCodec<E, D> {
    limit: usize,
    _types: PhantomData<fn(E) -> D>,
}

impl<E, D> FrameCodec<E, D> {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            _types: PhantomData,
        }
    }
}

impl<E, D> Codec for FrameCodec<E, D>
where
    E: Message + Send + 'static,
    D: Message + Default + Send + 'static,
{
    type Encode = Frame<E>;
    type Decode = D;
    type Encoder = FrameEncoder<E>;
    type Decoder = LimitedDecoder<D>;

    fn encoder(&mut self) -> Self::Encoder {
        FrameEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        LimitedDecoder {
            limit: self.limit,
            _type: PhantomData,
        }
    }
}

#[derive(Debug)]
pub struct FrameEncoder<E>(PhantomData<fn(E)>);

impl<E: Message> Encoder for FrameEncoder<E> {
    type Item = Frame<E>;
    type Error = Status;

    fn encode(&mut self, item: Frame<E>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        match item {
            Frame::Shared(bytes) => dst.put_slice(&bytes),
            Frame::Message(message) => message
                .encode(dst)
                .map_err(|e| Status::internal(format!("encoding failed: {e}")))?,
        }
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        settings()
    }
}

#[derive(Debug)]
pub struct LimitedDecoder<D> {
    limit: usize,
    _type: PhantomData<fn() -> D>,
}

impl<D: Message + Default> Decoder for LimitedDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        use bytes::Buf;
        if src.remaining() > self.limit {
            return Err(Status::resource_exhausted(format!(
                "request message of {} bytes is larger than {}",
                src.remaining(),
                self.limit
            )));
        }
        D::decode(src)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("malformed request message: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        settings()
    }
}
