//! The CopyBoth phase of `START_REPLICATION`: WAL and keepalives in, status updates out.
//!
//! Invariants:
//! - Messages are returned in the order the server sent them; `recv` and `try_recv` share one
//!   buffer, so they can be mixed freely, and `recv` is cancel-safe.
//! - XLogData payloads are zero-copy slices of the read buffer.
//! - When the server ends a historic timeline (CopyDone), `recv` answers with CopyDone and reads
//!   the next-timeline row up to ReadyForQuery before reporting
//!   [`ReplicationMessage::EndOfTimeline`]; the session is then reusable via
//!   [`ReplicationStream::into_connection`]. Status updates remain possible until `recv` has
//!   answered (so the last WAL of the timeline can be acknowledged), not after.
//! - A clean server shutdown ends the stream with CommandComplete and no CopyDone, after the
//!   walsender has waited for our reported flush position (write, if flush is 0) to reach what
//!   it sent: keep acknowledging while the server shuts down. It surfaces as
//!   [`PgError::Closed`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes};
use postgres_protocol::message::frontend;

use super::connection::ReplicationConnection;
use super::wire::{Body, Frame, Wire, decode_data_row, decode_error, log_notice, tag_name};
use super::{PgError, parse_lsn};

/// Seconds from the Unix epoch to the PostgreSQL epoch (2000-01-01 00:00:00 UTC).
const PG_EPOCH_OFFSET: Duration = Duration::from_secs(946_684_800);

/// One message from the replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// WAL bytes `[wal_start, wal_start + data.len())`. `wal_end` is the server's current end
    /// of WAL; `send_time` is µs since 2000-01-01 UTC on the server clock.
    XLogData {
        wal_start: u64,
        wal_end: u64,
        send_time: i64,
        data: Bytes,
    },
    /// A heartbeat; when `reply_requested`, send a status update at once (the server drops
    /// the connection after `wal_sender_timeout` without one).
    Keepalive {
        wal_end: u64,
        send_time: i64,
        reply_requested: bool,
    },
    /// The streamed timeline ended (the server switched to `next_timeline` at
    /// `next_timeline_start`). The stream is finished; call `into_connection`.
    EndOfTimeline {
        next_timeline: u32,
        next_timeline_start: u64,
    },
}

#[derive(Debug)]
enum State {
    Streaming,
    /// The server sent CopyDone and ours is queued; reading the result up to ReadyForQuery.
    Draining {
        next: Option<(u32, u64)>,
    },
    /// The timeline ended; the message has not been returned yet. Session at ReadyForQuery.
    EndPending(u32, u64),
    /// Out of COPY mode, session at ReadyForQuery.
    Finished,
}

/// A physical replication stream. Owns the session.
#[derive(Debug)]
pub struct ReplicationStream {
    conn: ReplicationConnection,
    state: State,
    /// The server's CopyDone, seen by `try_recv`, which cannot answer it without waiting.
    pending_copy_done: bool,
}

impl ReplicationStream {
    pub(crate) fn new(conn: ReplicationConnection) -> Self {
        ReplicationStream {
            conn,
            state: State::Streaming,
            pending_copy_done: false,
        }
    }

    /// A stream the server declined to start because the start point is the exact end of the
    /// requested (historic) timeline.
    pub(crate) fn ended(conn: ReplicationConnection, (tli, lsn): (u32, u64)) -> Self {
        ReplicationStream {
            conn,
            state: State::EndPending(tli, lsn),
            pending_copy_done: false,
        }
    }

    /// Awaits the next message. Cancel-safe: every await is either a write that resumes where
    /// it stopped or a read of one whole message, processed without further awaits.
    pub async fn recv(&mut self) -> Result<ReplicationMessage, PgError> {
        loop {
            match self.state {
                State::Streaming | State::Draining { .. } => {}
                State::EndPending(next_timeline, next_timeline_start) => {
                    self.state = State::Finished;
                    return Ok(ReplicationMessage::EndOfTimeline {
                        next_timeline,
                        next_timeline_start,
                    });
                }
                State::Finished => return Err(finished()),
            }
            if std::mem::take(&mut self.pending_copy_done) {
                self.server_copy_done();
            }
            // Sends our CopyDone if one is queued (or the rest of an interrupted write).
            self.conn.wire.flush().await?;
            if matches!(self.state, State::Streaming) {
                let frame = self.conn.wire.read_frame().await?;
                if frame.tag == b'c' {
                    self.server_copy_done();
                } else if let Some(msg) = decode_stream_frame(&frame)? {
                    return Ok(msg);
                }
            } else if let Some(next) = self.drain_step().await? {
                self.state = State::Finished;
                return match next {
                    Some((next_timeline, next_timeline_start)) => {
                        Ok(ReplicationMessage::EndOfTimeline {
                            next_timeline,
                            next_timeline_start,
                        })
                    }
                    None => Err(PgError::Closed(
                        "server ended the replication stream without a timeline switch".into(),
                    )),
                };
            }
        }
    }

    /// Returns a message that is available without waiting: already buffered, or readable
    /// from the socket right now. `Ok(None)` means nothing is ready (or the next message needs
    /// [`recv`](Self::recv), e.g. the end of a timeline).
    pub fn try_recv(&mut self) -> Result<Option<ReplicationMessage>, PgError> {
        match self.state {
            State::Streaming => {}
            State::Draining { .. } | State::EndPending(..) => return Ok(None),
            State::Finished => return Err(finished()),
        }
        if self.pending_copy_done {
            return Ok(None);
        }
        while let Some(frame) = self.conn.wire.try_read_frame()? {
            if frame.tag == b'c' {
                // Answered by the next `recv`; until then status updates remain possible.
                self.pending_copy_done = true;
                return Ok(None);
            }
            if let Some(msg) = decode_stream_frame(&frame)? {
                return Ok(Some(msg));
            }
        }
        Ok(None)
    }

    /// True while the server streams; false once it ended the stream (the end of a timeline,
    /// possibly right at START_REPLICATION), after which no status update is accepted.
    pub fn is_streaming(&self) -> bool {
        matches!(self.state, State::Streaming) && !self.pending_copy_done
    }

    /// Sends a standby status update (`r`) and flushes the socket. Positions are byte LSNs;
    /// pass `apply = 0` (invalid) unless WAL is really applied. `reply_requested` asks the
    /// server to answer with a keepalive at once.
    pub async fn send_status_update(
        &mut self,
        write: u64,
        flush: u64,
        apply: u64,
        reply_requested: bool,
    ) -> Result<(), PgError> {
        if !matches!(self.state, State::Streaming) {
            return Err(finished());
        }
        let buf = self.conn.wire.wbuf();
        buf.put_u8(b'd');
        buf.put_u32(4 + 34);
        buf.put_u8(b'r');
        buf.put_u64(write);
        buf.put_u64(flush);
        buf.put_u64(apply);
        buf.put_i64(pg_timestamp_now());
        buf.put_u8(u8::from(reply_requested));
        self.conn.wire.flush().await
    }

    /// Gives the session back at ReadyForQuery. While still streaming this ends the stream
    /// from the client side (CopyDone) and discards any WAL still in flight.
    pub async fn into_connection(mut self) -> Result<ReplicationConnection, PgError> {
        if matches!(self.state, State::Streaming) {
            let server_done = std::mem::take(&mut self.pending_copy_done);
            frontend::copy_done(self.conn.wire.wbuf());
            self.conn.wire.flush().await?;
            if !server_done {
                loop {
                    let frame = self.conn.wire.read_frame().await?;
                    match frame.tag {
                        b'd' | b'S' => {}
                        b'c' => break,
                        b'N' => log_notice(&frame.body),
                        b'E' => return Err(decode_error(&frame.body)),
                        tag => {
                            return Err(PgError::Protocol(format!(
                                "unexpected {} while ending the replication stream",
                                tag_name(tag)
                            )));
                        }
                    }
                }
            }
            self.state = State::Draining { next: None };
        }
        if matches!(self.state, State::Draining { .. }) {
            self.conn.wire.flush().await?;
            while self.drain_step().await?.is_none() {}
        }
        Ok(self.conn)
    }

    /// The underlying session's `host:port` or socket path.
    pub fn peer(&self) -> &str {
        self.conn.peer()
    }

    /// The server ended COPY mode: queue our CopyDone and start reading the result.
    fn server_copy_done(&mut self) {
        frontend::copy_done(self.conn.wire.wbuf());
        self.state = State::Draining { next: None };
    }

    /// Processes one message after the CopyDone exchange. Returns `Some(next timeline)` at
    /// ReadyForQuery, `None` while more is to come.
    async fn drain_step(&mut self) -> Result<Option<Option<(u32, u64)>>, PgError> {
        let frame = self.conn.wire.read_frame().await?;
        let State::Draining { next } = &mut self.state else {
            unreachable!("drain_step outside Draining");
        };
        let done = after_copy_frame(&frame, next)?;
        Ok(done.then_some(*next))
    }
}

fn finished() -> PgError {
    PgError::Protocol("the replication stream has ended; use into_connection()".into())
}

/// Decodes one frame of the CopyBoth phase; `None` for frames that carry nothing for the caller.
fn decode_stream_frame(frame: &Frame) -> Result<Option<ReplicationMessage>, PgError> {
    match frame.tag {
        b'd' => decode_copy_data(&frame.body).map(Some),
        b'N' => {
            log_notice(&frame.body);
            Ok(None)
        }
        b'S' => Ok(None),
        b'E' => Err(decode_error(&frame.body)),
        // walsender ends with CommandComplete, without CopyDone, when it shuts down.
        b'C' => Err(PgError::Closed(
            "server ended the replication stream (shutting down?)".into(),
        )),
        tag => Err(PgError::Protocol(format!(
            "unexpected {} in replication stream",
            tag_name(tag)
        ))),
    }
}

fn decode_copy_data(payload: &Bytes) -> Result<ReplicationMessage, PgError> {
    match payload.first() {
        Some(b'w') => {
            let mut b = Body::new(&payload[1..], "XLogData");
            let wal_start = b.u64()?;
            let wal_end = b.u64()?;
            let send_time = b.u64()? as i64;
            Ok(ReplicationMessage::XLogData {
                wal_start,
                wal_end,
                send_time,
                data: payload.slice(25..),
            })
        }
        Some(b'k') => {
            let mut b = Body::new(&payload[1..], "primary keepalive");
            let wal_end = b.u64()?;
            let send_time = b.u64()? as i64;
            let reply_requested = b.u8()? != 0;
            Ok(ReplicationMessage::Keepalive {
                wal_end,
                send_time,
                reply_requested,
            })
        }
        other => Err(PgError::Protocol(format!(
            "unknown CopyData message type {:?} in replication stream",
            other.map(|&b| char::from(b))
        ))),
    }
}

/// Handles one message of what follows the CopyDone exchange: an optional one-row result
/// `(next_tli, next_tli_startpos)` and CommandComplete messages. Returns `true` at
/// ReadyForQuery.
fn after_copy_frame(frame: &Frame, next: &mut Option<(u32, u64)>) -> Result<bool, PgError> {
    match frame.tag {
        b'T' | b'C' | b'S' => {}
        b'D' => {
            let row = decode_data_row(&frame.body)?;
            let text = |i: usize| {
                row.get(i)
                    .cloned()
                    .flatten()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .ok_or_else(|| PgError::Protocol("next-timeline row: NULL column".into()))
            };
            let tli = text(0)?;
            let tli = tli.parse().map_err(|_| {
                PgError::Protocol(format!("next-timeline row: bad timeline {tli:?}"))
            })?;
            *next = Some((tli, parse_lsn(&text(1)?)?));
        }
        b'N' => log_notice(&frame.body),
        b'E' => return Err(decode_error(&frame.body)),
        b'Z' => return Ok(true),
        tag => {
            return Err(PgError::Protocol(format!(
                "unexpected {} after the replication stream ended",
                tag_name(tag)
            )));
        }
    }
    Ok(false)
}

/// Reads up to ReadyForQuery after COPY mode ended (or was skipped) and returns the next
/// timeline row, if any.
pub(crate) async fn read_after_copy(wire: &mut Wire) -> Result<Option<(u32, u64)>, PgError> {
    let mut next = None;
    while !after_copy_frame(&wire.read_frame().await?, &mut next)? {}
    Ok(next)
}

/// The current time as PostgreSQL's `TimestampTz`: µs since 2000-01-01 00:00:00 UTC.
pub fn pg_timestamp_now() -> i64 {
    let since_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    since_unix
        .checked_sub(PG_EPOCH_OFFSET)
        .map_or(0, |d| d.as_micros() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_copy_data() {
        let mut p = vec![b'w'];
        p.extend(0x1_0000_0000u64.to_be_bytes());
        p.extend(0x1_0000_0100u64.to_be_bytes());
        p.extend(42i64.to_be_bytes());
        p.extend(b"wal!");
        let msg = decode_copy_data(&Bytes::from(p)).unwrap();
        assert_eq!(
            msg,
            ReplicationMessage::XLogData {
                wal_start: 0x1_0000_0000,
                wal_end: 0x1_0000_0100,
                send_time: 42,
                data: Bytes::from_static(b"wal!"),
            }
        );
        let mut k = vec![b'k'];
        k.extend(7u64.to_be_bytes());
        k.extend((-1i64).to_be_bytes());
        k.push(1);
        assert_eq!(
            decode_copy_data(&Bytes::from(k)).unwrap(),
            ReplicationMessage::Keepalive {
                wal_end: 7,
                send_time: -1,
                reply_requested: true
            }
        );
        assert!(decode_copy_data(&Bytes::from_static(b"k\0\0")).is_err());
        assert!(decode_copy_data(&Bytes::from_static(b"z")).is_err());
        assert!(decode_copy_data(&Bytes::new()).is_err());
    }

    #[test]
    fn timestamp_epoch() {
        let now = pg_timestamp_now();
        // 2024-01-01 is 757_382_400 s after the PostgreSQL epoch.
        assert!(now > 757_382_400_000_000, "{now}");
    }
}
