//! Reading whole messages off a byte stream with a streaming sans-IO decoder.

use bytes::{Buf, BytesMut};
use periwire_wire::usbip::WireError;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a valid message.
    #[error("protocol violation: {0}")]
    Protocol(#[from] WireError),
    /// The stream ended inside a message.
    #[error("connection closed in the middle of a message")]
    Truncated,
}

/// Reads one message with `decode`, growing `buf` as needed. Bytes after the message stay in
/// `buf` for the next call. Returns `None` on a clean end of stream between messages.
///
/// The decoders refuse oversized lengths from a message's header, so `buf` never grows past
/// one maximal message plus one read.
pub async fn read_message<T>(
    rd: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    decode: impl FnMut(&[u8]) -> Result<Option<(T, usize)>, WireError>,
) -> Result<Option<T>, FrameError> {
    read_message_in_chunks(rd, buf, 64 * 1024, decode).await
}

/// [`read_message`] reading at most `chunk` bytes at a time, so that a short message (an
/// operation request) costs a few bytes of buffer, not a full read's worth.
pub async fn read_message_in_chunks<T>(
    rd: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    chunk: usize,
    mut decode: impl FnMut(&[u8]) -> Result<Option<(T, usize)>, WireError>,
) -> Result<Option<T>, FrameError> {
    loop {
        if let Some((msg, n)) = decode(buf)? {
            buf.advance(n);
            return Ok(Some(msg));
        }
        buf.reserve(chunk);
        if rd.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
    }
}
