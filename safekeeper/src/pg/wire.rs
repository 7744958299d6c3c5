//! Message framing over the transport (TCP, unix socket or TLS) and decoding of the backend
//! message bodies this client needs.
//!
//! Invariants: `rbuf` holds only bytes received but not yet returned as a [`Frame`]; a frame is
//! split off `rbuf` only once complete, so a cancelled or not-ready read loses nothing. Frame
//! bodies are `Bytes` views of the read buffer (no copy). Outgoing messages are encoded into
//! `wbuf` and leave it only as the transport accepts them ([`Wire::flush`]), so an interrupted
//! write is resumed, never repeated.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;

use super::PgError;
use super::error::server_error;

/// Largest backend message accepted. The largest expected ones are XLogData (128 KiB of WAL)
/// and timeline history files; the limit only stops a broken peer from making us allocate
/// without bound.
const MAX_MESSAGE_LEN: usize = 64 << 20;
/// Free space kept in the read buffer before each read: one full XLogData message (128 KiB of
/// WAL plus headers) fits without a second read.
const READ_RESERVE: usize = 128 * 1024 + 64;

/// The byte transport under the protocol.
pub(crate) enum PgStream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for PgStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PgStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            PgStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            PgStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PgStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PgStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            PgStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            PgStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PgStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            PgStream::Unix(s) => Pin::new(s).poll_flush(cx),
            PgStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PgStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            PgStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            PgStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One backend message: type byte and body (without the length word).
#[derive(Debug)]
pub(crate) struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

/// A framed connection.
pub(crate) struct Wire {
    stream: PgStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Bytes were written to the transport since its last flush (TLS may buffer them).
    unflushed: bool,
    /// `host:port` or socket path, for error messages.
    pub peer: String,
}

impl Wire {
    pub(crate) fn new(stream: PgStream, peer: String) -> Self {
        Wire {
            stream,
            rbuf: BytesMut::with_capacity(READ_RESERVE),
            wbuf: BytesMut::with_capacity(1024),
            unflushed: false,
            peer,
        }
    }

    /// The outgoing buffer for `postgres_protocol::message::frontend` encoders.
    pub(crate) fn wbuf(&mut self) -> &mut BytesMut {
        &mut self.wbuf
    }

    /// Writes and flushes everything encoded into the outgoing buffer. Cancel-safe: bytes are
    /// removed from the buffer only once written, so a later call continues where a cancelled
    /// one stopped.
    pub(crate) async fn flush(&mut self) -> Result<(), PgError> {
        let result = async {
            while !self.wbuf.is_empty() {
                self.unflushed = true;
                let n = self.stream.write(&self.wbuf).await?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                self.wbuf.advance(n);
            }
            if self.unflushed {
                self.stream.flush().await?;
                self.unflushed = false;
            }
            Ok(())
        }
        .await;
        result.map_err(|e| PgError::io(format!("writing to {}", self.peer), e))
    }

    /// Awaits the next complete message. Cancel-safe.
    pub(crate) async fn read_frame(&mut self) -> Result<Frame, PgError> {
        loop {
            if let Some(frame) = self.decode()? {
                return Ok(frame);
            }
            let n = self.stream.read_buf(&mut self.rbuf).await;
            self.check_read(n)?;
        }
    }

    /// Returns a message that is complete in the buffer or can be completed from bytes the
    /// transport has ready now, without waiting.
    pub(crate) fn try_read_frame(&mut self) -> Result<Option<Frame>, PgError> {
        loop {
            if let Some(frame) = self.decode()? {
                return Ok(Some(frame));
            }
            // `read_buf` only appends to `rbuf` when it completes, so dropping the pending
            // future (what `now_or_never` does) loses no data.
            match self.stream.read_buf(&mut self.rbuf).now_or_never() {
                None => return Ok(None),
                Some(n) => self.check_read(n)?,
            }
        }
    }

    fn check_read(&self, n: io::Result<usize>) -> Result<(), PgError> {
        match n {
            Ok(0) if self.rbuf.is_empty() => Err(PgError::Closed(format!(
                "{} closed the connection",
                self.peer
            ))),
            Ok(0) => Err(PgError::Closed(format!(
                "{} closed the connection in the middle of a message",
                self.peer
            ))),
            Ok(_) => Ok(()),
            Err(e) => Err(PgError::io(format!("reading from {}", self.peer), e)),
        }
    }

    /// Splits one complete message off the read buffer, reserving room for the rest otherwise.
    fn decode(&mut self) -> Result<Option<Frame>, PgError> {
        if self.rbuf.len() >= 5 {
            let len = u32::from_be_bytes(self.rbuf[1..5].try_into().expect("4 bytes")) as usize;
            if !(4..=MAX_MESSAGE_LEN).contains(&len) {
                return Err(PgError::Protocol(format!(
                    "invalid message length {len} for message type {:?}",
                    char::from(self.rbuf[0])
                )));
            }
            if self.rbuf.len() > len {
                let mut msg = self.rbuf.split_to(len + 1);
                let tag = msg[0];
                msg.advance(5);
                return Ok(Some(Frame {
                    tag,
                    body: msg.freeze(),
                }));
            }
            self.rbuf
                .reserve((len + 1 - self.rbuf.len()).max(READ_RESERVE));
        } else {
            self.rbuf.reserve(READ_RESERVE);
        }
        Ok(None)
    }

    /// Reads exactly one byte directly from the transport (the SSLRequest answer). Must only be
    /// used while the read buffer is empty, so nothing sent before TLS starts can be mistaken
    /// for encrypted data.
    pub(crate) async fn read_byte_unbuffered(&mut self) -> Result<u8, PgError> {
        debug_assert!(self.rbuf.is_empty());
        self.stream
            .read_u8()
            .await
            .map_err(|e| PgError::io(format!("reading from {}", self.peer), e))
    }

    pub(crate) fn into_stream(self) -> PgStream {
        self.stream
    }
}

/// A cursor over a message body.
pub(crate) struct Body<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Body<'a> {
    pub(super) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Body { buf, what }
    }

    fn short(&self) -> PgError {
        PgError::Protocol(format!("{} message is truncated", self.what))
    }

    pub(super) fn bytes(&mut self, n: usize) -> Result<&'a [u8], PgError> {
        if self.buf.len() < n {
            return Err(self.short());
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(super) fn u8(&mut self) -> Result<u8, PgError> {
        Ok(self.bytes(1)?[0])
    }

    pub(super) fn i16(&mut self) -> Result<i16, PgError> {
        Ok(i16::from_be_bytes(
            self.bytes(2)?.try_into().expect("2 bytes"),
        ))
    }

    pub(super) fn i32(&mut self) -> Result<i32, PgError> {
        Ok(i32::from_be_bytes(
            self.bytes(4)?.try_into().expect("4 bytes"),
        ))
    }

    pub(super) fn u64(&mut self) -> Result<u64, PgError> {
        Ok(u64::from_be_bytes(
            self.bytes(8)?.try_into().expect("8 bytes"),
        ))
    }

    /// A NUL-terminated string (lossily decoded: server messages may be in any encoding).
    pub(super) fn cstr(&mut self) -> Result<String, PgError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.short())?;
        let s = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    pub(super) fn rest(&self) -> &'a [u8] {
        self.buf
    }
}

/// Decodes an ErrorResponse body into [`PgError::Server`].
pub(crate) fn decode_error(body: &[u8]) -> PgError {
    let fields = notice_fields(body);
    server_error(fields.iter().map(|(t, v)| (*t, v.as_str())))
}

/// `(type, value)` pairs of an ErrorResponse or NoticeResponse body.
pub(crate) fn notice_fields(body: &[u8]) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    let mut b = Body::new(body, "ErrorResponse");
    while let Ok(ty) = b.u8() {
        if ty == 0 {
            break;
        }
        match b.cstr() {
            Ok(v) => out.push((ty, v)),
            Err(_) => break,
        }
    }
    out
}

/// Logs a NoticeResponse.
pub(crate) fn log_notice(body: &[u8]) {
    let fields = notice_fields(body);
    let get = |t: u8| {
        fields
            .iter()
            .find(|(ty, _)| *ty == t)
            .map(|(_, v)| v.as_str())
    };
    tracing::info!(
        "server notice: {} {}: {}",
        get(b'V').or(get(b'S')).unwrap_or("NOTICE"),
        get(b'C').unwrap_or(""),
        get(b'M').unwrap_or("")
    );
}

/// Columns of a DataRow as zero-copy slices of `body`.
pub(crate) fn decode_data_row(body: &Bytes) -> Result<Vec<Option<Bytes>>, PgError> {
    let mut b = Body::new(body, "DataRow");
    let n = b.i16()?;
    let mut cols = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let len = b.i32()?;
        if len < 0 {
            cols.push(None);
        } else {
            let start = body.len() - b.rest().len();
            b.bytes(len as usize)?;
            cols.push(Some(body.slice(start..start + len as usize)));
        }
    }
    Ok(cols)
}

/// Name and value of a ParameterStatus message.
pub(crate) fn decode_parameter_status(body: &[u8]) -> Result<(String, String), PgError> {
    let mut b = Body::new(body, "ParameterStatus");
    Ok((b.cstr()?, b.cstr()?))
}

/// A printable name for a message type in error messages.
pub(crate) fn tag_name(tag: u8) -> String {
    let name = match tag {
        b'R' => "Authentication",
        b'K' => "BackendKeyData",
        b'C' => "CommandComplete",
        b'd' => "CopyData",
        b'c' => "CopyDone",
        b'G' => "CopyInResponse",
        b'H' => "CopyOutResponse",
        b'W' => "CopyBothResponse",
        b'D' => "DataRow",
        b'I' => "EmptyQueryResponse",
        b'E' => "ErrorResponse",
        b'N' => "NoticeResponse",
        b'S' => "ParameterStatus",
        b'Z' => "ReadyForQuery",
        b'T' => "RowDescription",
        b'v' => "NegotiateProtocolVersion",
        _ => "",
    };
    format!("{name}({:?})", char::from(tag))
}
