//! The wire frames on a libp2p stream, for `request_response`: a 4-byte little-endian length,
//! then a [`crate::wire`] frame. The length is checked against the bound before anything is
//! read or allocated.
//!
//! A bad response fails the stream with `InvalidData`, which reaches the requester as an
//! outbound failure. A bad *request* is delivered as [`Checked::Refused`] instead of an error,
//! because libp2p's request-response drops inbound read errors without telling the behaviour,
//! and the node must see them to drop the sender.

use std::io;
use std::marker::PhantomData;

use async_trait::async_trait;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::request_response::Codec;
use libp2p::StreamProtocol;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::wire::{self, Bounded, MAX_FRAME_BYTES};

/// A request as read off a stream: the message, or why its bytes were refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Checked<T> {
    Valid(T),
    Refused(wire::WireError),
}

/// A request-response codec for one pair of wire message types.
pub struct FrameCodec<Req, Resp>(PhantomData<fn() -> (Req, Resp)>);

impl<Req, Resp> Default for FrameCodec<Req, Resp> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<Req, Resp> Clone for FrameCodec<Req, Resp> {
    fn clone(&self) -> Self {
        Self::default()
    }
}

async fn read_frame<T, M>(io: &mut T) -> io::Result<M>
where
    T: AsyncRead + Unpin + Send,
    M: DeserializeOwned + Bounded,
{
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(io::Error::new(io::ErrorKind::InvalidData, wire::WireError::TooLarge(len)));
    }
    let mut frame = vec![0u8; len];
    io.read_exact(&mut frame).await?;
    wire::decode(&frame).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Encodes before the first await, so the future holds bytes, not the message.
fn write_frame<'a, T, M>(io: &'a mut T, msg: &M) -> impl std::future::Future<Output = io::Result<()>> + Send + 'a
where
    T: AsyncWrite + Unpin + Send,
    M: Serialize,
{
    write_bytes(io, wire::encode(msg))
}

async fn write_bytes<T: AsyncWrite + Unpin + Send>(io: &mut T, frame: Vec<u8>) -> io::Result<()> {
    if frame.len() > MAX_FRAME_BYTES {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, wire::WireError::TooLarge(frame.len())));
    }
    io.write_all(&(frame.len() as u32).to_le_bytes()).await?;
    io.write_all(&frame).await?;
    io.close().await
}

#[async_trait]
impl<Req, Resp> Codec for FrameCodec<Req, Resp>
where
    Req: Serialize + DeserializeOwned + Bounded + Send + 'static,
    Resp: Serialize + DeserializeOwned + Bounded + Send + 'static,
{
    type Protocol = StreamProtocol;
    type Request = Checked<Req>;
    type Response = Resp;

    async fn read_request<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Checked<Req>> {
        match read_frame(io).await {
            Ok(req) => Ok(Checked::Valid(req)),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let why = e
                    .into_inner()
                    .and_then(|inner| inner.downcast::<wire::WireError>().ok())
                    .map_or_else(|| wire::WireError::Malformed("unreadable frame".into()), |b| *b);
                Ok(Checked::Refused(why))
            }
            Err(e) => Err(e),
        }
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp> {
        read_frame(io).await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Checked<Req>,
    ) -> io::Result<()> {
        match req {
            Checked::Valid(req) => write_frame(io, &req).await,
            Checked::Refused(why) => Err(io::Error::new(io::ErrorKind::InvalidInput, why)),
        }
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        resp: Resp,
    ) -> io::Result<()> {
        write_frame(io, &resp).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{DraftOutcome, DraftReply};
    use futures::executor::block_on;
    use futures::io::Cursor;

    #[test]
    fn frames_round_trip_and_bounds_hold() {
        let reply = DraftReply { job_id: 5, outcome: DraftOutcome::Drafted { tokens: vec![1, 2], probs: None } };
        let mut buf = Cursor::new(Vec::new());
        block_on(write_frame(&mut buf, &reply)).unwrap();
        let bytes = buf.into_inner();
        let got: DraftReply = block_on(read_frame(&mut Cursor::new(bytes.clone()))).unwrap();
        assert_eq!(got, reply);
        // A length prefix over the bound fails before reading the body.
        let mut huge = (MAX_FRAME_BYTES as u32 + 1).to_le_bytes().to_vec();
        huge.extend(&bytes[4..]);
        let err = block_on(read_frame::<_, DraftReply>(&mut Cursor::new(huge))).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // A truncated body is an error, not a hang or a panic.
        let err = block_on(read_frame::<_, DraftReply>(&mut Cursor::new(bytes[..bytes.len() - 1].to_vec()))).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
