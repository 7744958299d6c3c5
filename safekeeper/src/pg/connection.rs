//! A logged-in session and the commands the safekeeper runs on it before streaming.
//!
//! Invariants: every public method either leaves the session at ReadyForQuery (the server's
//! answer was read in full, even when it was an error) or returns an error after which the
//! session must be dropped (I/O, protocol). `start_replication` consumes the session because the
//! protocol switches to CopyBoth; [`ReplicationStream::into_connection`] gives it back.
//!
//! In a physical replication session (`replication=true`) the server accepts only replication
//! commands and `SHOW`; plain SQL needs a [`SessionKind::Regular`] session.

use std::collections::HashMap;

use bytes::Bytes;
use postgres_protocol::message::frontend;

use super::connect::establish;
use super::stream::{ReplicationStream, read_after_copy};
use super::text::{parse_segment_size, parse_server_version};
use super::wire::{
    Wire, decode_data_row, decode_error, decode_parameter_status, log_notice, tag_name,
};
use super::{ConnInfo, PgError, TargetSessionAttrs, format_lsn, parse_lsn};

/// Which kind of backend session to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// `replication=true`: a walsender accepting replication commands and `SHOW`.
    PhysicalReplication,
    /// An ordinary SQL session (no `replication` parameter).
    Regular,
}

/// Result of `IDENTIFY_SYSTEM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifySystem {
    pub system_identifier: u64,
    pub timeline: u32,
    /// Current WAL flush position (on a standby: replay position).
    pub xlogpos: u64,
    /// `None` for physical replication sessions.
    pub dbname: Option<String>,
}

/// Result of `READ_REPLICATION_SLOT` for an existing slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationSlotInfo {
    /// `physical` or `logical`.
    pub slot_type: String,
    /// `None` if the slot reserves no WAL yet.
    pub restart_lsn: Option<u64>,
    pub restart_tli: Option<u32>,
}

/// An established session at ReadyForQuery.
pub struct ReplicationConnection {
    pub(crate) wire: Wire,
    params: HashMap<String, String>,
    backend_pid: i32,
    tls: bool,
}

impl std::fmt::Debug for ReplicationConnection {
    /// The socket and the server's parameters stay out of logs; the backend PID identifies it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConnection")
            .field("backend_pid", &self.backend_pid)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl ReplicationConnection {
    /// Opens a physical replication session to `info.hosts[host_index]`.
    pub async fn connect(info: &ConnInfo, host_index: usize) -> Result<Self, PgError> {
        Self::connect_with(info, host_index, SessionKind::PhysicalReplication).await
    }

    /// Opens a session of the given kind to `info.hosts[host_index]`.
    pub async fn connect_with(
        info: &ConnInfo,
        host_index: usize,
        kind: SessionKind,
    ) -> Result<Self, PgError> {
        let e = establish(info, host_index, kind).await?;
        Ok(ReplicationConnection {
            wire: e.wire,
            params: e.params,
            backend_pid: e.backend_pid,
            tls: e.tls,
        })
    }

    /// Tries the hosts in order (like libpq) and returns the first physical replication session
    /// satisfying `info.target_session_attrs`, with its host index. Without a match the error is
    /// the last connection failure, or [`PgError::Closed`] (transient) if every server was
    /// reachable but in the wrong role.
    pub async fn connect_any(info: &ConnInfo) -> Result<(Self, usize), PgError> {
        use TargetSessionAttrs as T;
        let passes: &[Option<bool>] = match info.target_session_attrs {
            T::Any => &[None],
            T::ReadWrite | T::Primary => &[Some(false)],
            T::ReadOnly | T::Standby => &[Some(true)],
            T::PreferStandby => &[Some(true), None],
        };
        let mut last_err = None;
        for want_recovery in passes {
            for i in 0..info.hosts.len() {
                let mut conn = match Self::connect(info, i).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::info!("connecting to {:?} failed: {e}", info.hosts[i]);
                        last_err = Some(e);
                        continue;
                    }
                };
                match want_recovery {
                    None => return Ok((conn, i)),
                    Some(want) => match conn.is_in_recovery().await {
                        Ok(r) if r == *want => return Ok((conn, i)),
                        Ok(_) => {}
                        Err(e) => last_err = Some(e),
                    },
                }
                conn.close().await;
            }
        }
        Err(last_err.unwrap_or_else(|| {
            PgError::Closed(format!(
                "no server matches target_session_attrs {:?}",
                info.target_session_attrs
            ))
        }))
    }

    /// A parameter the server reported (ParameterStatus), e.g. `server_version`.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// Process id of the backend (walsender) serving this session.
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// Whether the session is encrypted.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// `host:port` or the unix socket path of the server.
    pub fn peer(&self) -> &str {
        &self.wire.peer
    }

    /// Runs `sql` with the simple query protocol and returns every data row as text columns
    /// (`None` for NULL). The first server error is returned after the response was read in
    /// full, so the session stays usable.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PgError> {
        let rows = self.query_raw(sql).await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|c| c.map(|b| String::from_utf8_lossy(&b).into_owned()))
                    .collect()
            })
            .collect())
    }

    async fn query_raw(&mut self, sql: &str) -> Result<Vec<Vec<Option<Bytes>>>, PgError> {
        frontend::query(sql, self.wire.wbuf())
            .map_err(|e| PgError::Config(format!("invalid query text: {e}")))?;
        self.wire.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let frame = self.wire.read_frame().await?;
            match frame.tag {
                b'T' | b'C' | b'I' | b'n' | b'H' | b'd' | b'c' => {}
                b'D' => rows.push(decode_data_row(&frame.body)?),
                b'E' => error = error.or(Some(decode_error(&frame.body))),
                b'N' => log_notice(&frame.body),
                b'S' => {
                    let (name, value) = decode_parameter_status(&frame.body)?;
                    self.params.insert(name, value);
                }
                b'G' => {
                    frontend::copy_fail("COPY FROM STDIN is not supported", self.wire.wbuf())
                        .expect("no NUL in message");
                    self.wire.flush().await?;
                }
                b'Z' => return error.map_or(Ok(rows), Err),
                tag => {
                    return Err(PgError::Protocol(format!(
                        "unexpected {} in response to a simple query",
                        tag_name(tag)
                    )));
                }
            }
        }
    }

    /// Runs a query that must return exactly one row and returns it.
    async fn query_one_row(&mut self, sql: &str) -> Result<Vec<Option<Bytes>>, PgError> {
        let mut rows = self.query_raw(sql).await?;
        if rows.len() != 1 {
            return Err(PgError::Protocol(format!(
                "{sql}: expected 1 row, got {}",
                rows.len()
            )));
        }
        Ok(rows.pop().expect("one row"))
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<IdentifySystem, PgError> {
        let row = self.query_one_row("IDENTIFY_SYSTEM").await?;
        let col = |i: usize| -> Result<String, PgError> {
            let v = row.get(i).cloned().flatten().ok_or_else(|| {
                PgError::Protocol(format!("IDENTIFY_SYSTEM: column {i} missing or NULL"))
            })?;
            Ok(String::from_utf8_lossy(&v).into_owned())
        };
        let bad =
            |what: &str, v: &str| PgError::Protocol(format!("IDENTIFY_SYSTEM: bad {what} {v:?}"));
        let sysid = col(0)?;
        let tli = col(1)?;
        Ok(IdentifySystem {
            system_identifier: sysid.parse().map_err(|_| bad("systemid", &sysid))?,
            timeline: tli.parse().map_err(|_| bad("timeline", &tli))?,
            xlogpos: parse_lsn(&col(2)?)?,
            dbname: col(3).ok(),
        })
    }

    /// `SHOW name`: the current value of a setting as text.
    pub async fn show(&mut self, name: &str) -> Result<String, PgError> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            return Err(PgError::Config(format!("invalid setting name {name:?}")));
        }
        let row = self.query_one_row(&format!("SHOW {name}")).await?;
        match row.into_iter().next().flatten() {
            Some(v) => Ok(String::from_utf8_lossy(&v).into_owned()),
            None => Err(PgError::Protocol(format!("SHOW {name} returned NULL"))),
        }
    }

    /// The server's WAL segment size in bytes (`SHOW wal_segment_size`, e.g. `16MB`).
    pub async fn wal_segment_size(&mut self) -> Result<u32, PgError> {
        let text = self.show("wal_segment_size").await?;
        parse_segment_size(&text)
    }

    /// The server version as `server_version_num` (e.g. 150018 for 15.18), from the startup
    /// parameter report, else `SHOW server_version_num`. Major version: `n / 10000`.
    pub async fn server_version_num(&mut self) -> Result<u32, PgError> {
        if let Some(n) = self
            .parameter("server_version")
            .and_then(parse_server_version)
        {
            return Ok(n);
        }
        let text = self.show("server_version_num").await?;
        text.trim()
            .parse()
            .map_err(|_| PgError::Protocol(format!("bad server_version_num {text:?}")))
    }

    /// Whether the server is a standby. Physical replication sessions cannot run
    /// `pg_is_in_recovery()`, so this uses `SHOW in_hot_standby` (PostgreSQL 14+, exact), and
    /// on older servers `SHOW transaction_read_only` (also true on a primary with
    /// `default_transaction_read_only = on`).
    pub async fn is_in_recovery(&mut self) -> Result<bool, PgError> {
        let value = if self.server_version_num().await? >= 140000 {
            self.show("in_hot_standby").await?
        } else {
            self.show("transaction_read_only").await?
        };
        Ok(value == "on")
    }

    /// `TIMELINE_HISTORY tli`: the history file's name and exact content.
    pub async fn timeline_history(&mut self, tli: u32) -> Result<(String, Bytes), PgError> {
        let row = self
            .query_one_row(&format!("TIMELINE_HISTORY {tli}"))
            .await?;
        match <[Option<Bytes>; 2]>::try_from(row) {
            Ok([Some(name), Some(content)]) => {
                Ok((String::from_utf8_lossy(&name).into_owned(), content))
            }
            _ => Err(PgError::Protocol(
                "TIMELINE_HISTORY: expected two non-NULL columns".into(),
            )),
        }
    }

    /// Creates a physical slot that reserves WAL immediately. Returns `false` if a slot of that
    /// name already exists (SQLSTATE 42710), whatever its type.
    pub async fn create_physical_slot_if_missing(&mut self, name: &str) -> Result<bool, PgError> {
        check_slot_name(name)?;
        let sql = format!("CREATE_REPLICATION_SLOT {name} PHYSICAL RESERVE_WAL");
        match self.query_raw(&sql).await {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("42710") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `READ_REPLICATION_SLOT` (PostgreSQL 15+): `None` if the slot does not exist.
    pub async fn read_replication_slot(
        &mut self,
        name: &str,
    ) -> Result<Option<ReplicationSlotInfo>, PgError> {
        check_slot_name(name)?;
        let row = self
            .query_one_row(&format!("READ_REPLICATION_SLOT {name}"))
            .await?;
        let text = |i: usize| {
            row.get(i)
                .cloned()
                .flatten()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        };
        let Some(slot_type) = text(0) else {
            return Ok(None);
        };
        let restart_tli = match text(2) {
            Some(t) => Some(t.parse().map_err(|_| {
                PgError::Protocol(format!("READ_REPLICATION_SLOT: bad restart_tli {t:?}"))
            })?),
            None => None,
        };
        Ok(Some(ReplicationSlotInfo {
            slot_type,
            restart_lsn: text(1).as_deref().map(parse_lsn).transpose()?,
            restart_tli,
        }))
    }

    /// `DROP_REPLICATION_SLOT name WAIT` (waits if the slot is active).
    pub async fn drop_replication_slot(&mut self, name: &str) -> Result<(), PgError> {
        check_slot_name(name)?;
        self.query_raw(&format!("DROP_REPLICATION_SLOT {name} WAIT"))
            .await
            .map(drop)
    }

    /// `START_REPLICATION [SLOT s] PHYSICAL X/Y [TIMELINE t]` (timeline 0: the server's current).
    /// Streaming from the exact end of a historic timeline makes the server skip COPY mode: the
    /// stream then yields [`super::ReplicationMessage::EndOfTimeline`] at once.
    pub async fn start_replication(
        mut self,
        slot: Option<&str>,
        start_lsn: u64,
        timeline: u32,
    ) -> Result<ReplicationStream, PgError> {
        let mut sql = String::from("START_REPLICATION ");
        if let Some(slot) = slot {
            check_slot_name(slot)?;
            sql.push_str(&format!("SLOT {slot} "));
        }
        sql.push_str(&format!("PHYSICAL {}", format_lsn(start_lsn)));
        if timeline != 0 {
            sql.push_str(&format!(" TIMELINE {timeline}"));
        }
        frontend::query(&sql, self.wire.wbuf()).expect("no NUL in command");
        self.wire.flush().await?;
        loop {
            let frame = self.wire.read_frame().await?;
            match frame.tag {
                b'W' => return Ok(ReplicationStream::new(self)),
                b'N' => log_notice(&frame.body),
                b'E' => {
                    let err = decode_error(&frame.body);
                    self.read_until_ready().await?;
                    return Err(err);
                }
                b'T' => {
                    // The start point is the exact end of a historic timeline: no COPY mode,
                    // just the next-timeline row.
                    return match read_after_copy(&mut self.wire).await? {
                        Some(end) => Ok(ReplicationStream::ended(self, end)),
                        None => Err(PgError::Protocol(
                            "START_REPLICATION returned a result without a next timeline".into(),
                        )),
                    };
                }
                tag => {
                    return Err(PgError::Protocol(format!(
                        "unexpected {} in response to START_REPLICATION",
                        tag_name(tag)
                    )));
                }
            }
        }
    }

    /// Consumes messages up to and including ReadyForQuery.
    pub(crate) async fn read_until_ready(&mut self) -> Result<(), PgError> {
        loop {
            let frame = self.wire.read_frame().await?;
            match frame.tag {
                b'Z' => return Ok(()),
                b'N' => log_notice(&frame.body),
                _ => {}
            }
        }
    }

    /// Sends Terminate and closes the connection (errors are irrelevant at this point).
    pub async fn close(mut self) {
        frontend::terminate(self.wire.wbuf());
        let _ = self.wire.flush().await;
    }
}

/// Slot names are restricted by PostgreSQL to `[a-z0-9_]{1,63}`; checking here also makes
/// them safe to splice into replication commands.
fn check_slot_name(name: &str) -> Result<(), PgError> {
    if name.is_empty()
        || name.len() > 63
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(PgError::Config(format!(
            "invalid replication slot name {name:?}: use 1-63 lower case letters, digits and underscores"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names() {
        assert!(check_slot_name("sk_1").is_ok());
        for bad in ["", "Upper", "a-b", "a b", "x;DROP", &"a".repeat(64)] {
            assert!(check_slot_name(bad).is_err(), "{bad:?}");
        }
    }
}
