//! `BASE_BACKUP` (PostgreSQL 15+ option syntax) on a physical replication session: the start
//! position, the tablespace list, then the CopyOut stream of archives and the backup manifest,
//! then the end position.
//!
//! Invariants: messages are returned in the order the server sent them, archive data as
//! zero-copy slices of the read buffer; [`BaseBackupStream::next`] returns `Ok(None)` only after
//! the end position was read and the session reached ReadyForQuery, so a backup whose stream
//! ended early is always an error, never a short archive that looks complete.

use bytes::Bytes;
use postgres_protocol::message::frontend;

use super::connection::ReplicationConnection;
use super::wire::{Body, decode_data_row, decode_error, log_notice, tag_name};
use super::{PgError, parse_lsn};

/// What to ask the server for.
#[derive(Debug, Clone)]
pub struct BaseBackupOptions {
    /// Shown in `pg_stat_progress_basebackup` and written to `backup_label`.
    pub label: String,
    /// Request an immediate checkpoint instead of waiting for a spread one.
    pub fast_checkpoint: bool,
    /// Ask the server to estimate the total size first (`PROGRESS`), for a progress bar.
    pub progress: bool,
}

/// A position reported at the start or the end of the backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupPosition {
    pub lsn: u64,
    pub timeline: u32,
}

/// A tablespace of the backup (`None` oid: the main data directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tablespace {
    pub oid: Option<u32>,
    pub location: Option<String>,
    /// Estimated size in bytes (only with `progress`).
    pub size: Option<u64>,
}

/// One message of the CopyOut phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseBackupMessage {
    /// A new archive starts (`base.tar`, or `<oid>.tar` for a tablespace).
    NewArchive { name: String, location: String },
    /// Bytes of the current archive (or of the manifest after [`Self::ManifestStart`]).
    Data(Bytes),
    /// Bytes of the current archive sent so far (with `progress`).
    Progress(u64),
    /// The backup manifest follows; its bytes come as [`Self::Data`].
    ManifestStart,
}

/// The running backup: call [`Self::next`] until it returns `Ok(None)`, then [`Self::end`].
#[derive(Debug)]
pub struct BaseBackupStream {
    conn: ReplicationConnection,
    pub start: BackupPosition,
    pub tablespaces: Vec<Tablespace>,
    end: Option<BackupPosition>,
    done: bool,
}

impl ReplicationConnection {
    /// Sends `BASE_BACKUP` and reads up to the start of the archive stream.
    pub async fn base_backup(
        mut self,
        opts: &BaseBackupOptions,
    ) -> Result<BaseBackupStream, PgError> {
        let sql = base_backup_command(opts);
        frontend::query(&sql, self.wire.wbuf())
            .map_err(|e| PgError::Config(format!("invalid BASE_BACKUP label: {e}")))?;
        self.wire.flush().await?;
        let mut rows: Vec<Vec<Vec<Option<Bytes>>>> = vec![Vec::new()];
        loop {
            let frame = self.wire.read_frame().await?;
            match frame.tag {
                b'T' => {}
                b'D' => {
                    let row = decode_data_row(&frame.body)?;
                    rows.last_mut().expect("one set").push(row);
                }
                b'C' => rows.push(Vec::new()),
                b'N' => log_notice(&frame.body),
                b'H' => break,
                b'E' => {
                    let err = decode_error(&frame.body);
                    self.read_until_ready().await?;
                    return Err(err);
                }
                tag => {
                    return Err(PgError::Protocol(format!(
                        "unexpected {} in response to BASE_BACKUP",
                        tag_name(tag)
                    )));
                }
            }
        }
        let start_row = rows.first().and_then(|r| r.first()).ok_or_else(|| {
            PgError::Protocol("BASE_BACKUP: no start position before the archives".into())
        })?;
        let start = position(start_row, "start")?;
        let tablespaces = rows
            .get(1)
            .map(|set| {
                set.iter()
                    .map(|r| tablespace(r))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();
        Ok(BaseBackupStream {
            conn: self,
            start,
            tablespaces,
            end: None,
            done: false,
        })
    }
}

impl BaseBackupStream {
    /// The next message, or `None` once the backup ended and the end position was read.
    pub async fn next(&mut self) -> Result<Option<BaseBackupMessage>, PgError> {
        if self.done {
            return Ok(None);
        }
        let wire = &mut self.conn.wire;
        loop {
            let frame = wire.read_frame().await?;
            match frame.tag {
                b'd' => return decode_copy_data(frame.body).map(Some),
                b'N' => log_notice(&frame.body),
                b'c' => break,
                b'E' => return Err(decode_error(&frame.body)),
                tag => {
                    return Err(PgError::Protocol(format!(
                        "unexpected {} in the BASE_BACKUP stream",
                        tag_name(tag)
                    )));
                }
            }
        }
        // After CopyDone: the end position result set, CommandComplete(s), ReadyForQuery.
        loop {
            let frame = wire.read_frame().await?;
            match frame.tag {
                b'T' | b'C' => {}
                b'D' => {
                    let row = decode_data_row(&frame.body)?;
                    self.end = Some(position(&row, "end")?);
                }
                b'N' => log_notice(&frame.body),
                b'E' => return Err(decode_error(&frame.body)),
                b'Z' => break,
                tag => {
                    return Err(PgError::Protocol(format!(
                        "unexpected {} after the BASE_BACKUP stream",
                        tag_name(tag)
                    )));
                }
            }
        }
        if self.end.is_none() {
            return Err(PgError::Protocol(
                "BASE_BACKUP ended without an end position".into(),
            ));
        }
        self.done = true;
        Ok(None)
    }

    /// The end position, once [`Self::next`] returned `None`.
    pub fn end(&self) -> Option<BackupPosition> {
        self.end
    }

    /// Closes the session.
    pub async fn close(self) {
        self.conn.close().await;
    }
}

/// The command text. The label is the only free text; quotes in it are doubled.
fn base_backup_command(opts: &BaseBackupOptions) -> String {
    let label = opts.label.replace('\'', "''");
    let mut sql = format!(
        "BASE_BACKUP (LABEL '{label}', CHECKPOINT '{}', MANIFEST 'yes', \
         MANIFEST_CHECKSUMS 'CRC32C', WAL false, WAIT false",
        if opts.fast_checkpoint {
            "fast"
        } else {
            "spread"
        }
    );
    if opts.progress {
        sql.push_str(", PROGRESS true");
    }
    sql.push(')');
    sql
}

fn decode_copy_data(body: Bytes) -> Result<BaseBackupMessage, PgError> {
    let Some(&kind) = body.first() else {
        return Err(PgError::Protocol("empty CopyData in BASE_BACKUP".into()));
    };
    let mut b = Body::new(&body[1..], "BASE_BACKUP CopyData");
    Ok(match kind {
        b'n' => BaseBackupMessage::NewArchive {
            name: b.cstr()?,
            location: b.cstr()?,
        },
        b'd' => BaseBackupMessage::Data(body.slice(1..)),
        b'p' => BaseBackupMessage::Progress(b.u64()?),
        b'm' => BaseBackupMessage::ManifestStart,
        other => {
            return Err(PgError::Protocol(format!(
                "unknown BASE_BACKUP message type {:?}",
                other as char
            )));
        }
    })
}

fn text(row: &[Option<Bytes>], i: usize) -> Option<String> {
    row.get(i)
        .cloned()
        .flatten()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn position(row: &[Option<Bytes>], what: &str) -> Result<BackupPosition, PgError> {
    let bad = || PgError::Protocol(format!("BASE_BACKUP: bad {what} position row"));
    let lsn = parse_lsn(&text(row, 0).ok_or_else(bad)?)?;
    let timeline = text(row, 1).and_then(|t| t.parse().ok()).ok_or_else(bad)?;
    Ok(BackupPosition { lsn, timeline })
}

fn tablespace(row: &[Option<Bytes>]) -> Result<Tablespace, PgError> {
    let oid = match text(row, 0) {
        Some(t) => Some(
            t.parse()
                .map_err(|_| PgError::Protocol(format!("BASE_BACKUP: bad tablespace oid {t:?}")))?,
        ),
        None => None,
    };
    Ok(Tablespace {
        oid,
        location: text(row, 1),
        // The server reports kilobytes.
        size: text(row, 2)
            .and_then(|t| t.parse::<u64>().ok())
            .map(|k| k * 1024),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_quotes_the_label() {
        let sql = base_backup_command(&BaseBackupOptions {
            label: "it's".into(),
            fast_checkpoint: true,
            progress: false,
        });
        assert!(sql.starts_with("BASE_BACKUP (LABEL 'it''s', CHECKPOINT 'fast'"));
        assert!(sql.contains("MANIFEST 'yes'"));
    }

    #[test]
    fn copy_data_kinds() {
        let mut n = b"nbase.tar\0\0".to_vec();
        assert_eq!(
            decode_copy_data(Bytes::from(n.clone())).unwrap(),
            BaseBackupMessage::NewArchive {
                name: "base.tar".into(),
                location: String::new()
            }
        );
        n[0] = b'm';
        assert_eq!(
            decode_copy_data(Bytes::from_static(b"m")).unwrap(),
            BaseBackupMessage::ManifestStart
        );
        assert_eq!(
            decode_copy_data(Bytes::from_static(b"dxyz")).unwrap(),
            BaseBackupMessage::Data(Bytes::from_static(b"xyz"))
        );
        let mut p = vec![b'p'];
        p.extend(4096u64.to_be_bytes());
        assert_eq!(
            decode_copy_data(Bytes::from(p)).unwrap(),
            BaseBackupMessage::Progress(4096)
        );
        assert!(decode_copy_data(Bytes::from_static(b"?")).is_err());
    }
}
