//! WAL streaming tests: byte identity with pg_wal, slots, status updates, keepalives, a
//! timeline switch after promoting a standby, and a clean server shutdown mid-stream.
//!
//! Owns these tests and the helpers each is told in (one helper per stage, the test body only
//! sequencing them). Invariants: every wait is bounded (a message within 20 s, polls within
//! 3 to 15 s), so a broken server fails a test instead of hanging it; every check of a stage
//! stays in its helper, so a stage is verified wherever it is used; the shared primary is left
//! as found (the slot is dropped, the promoted standby is the test's own server).

use std::time::{Duration, Instant};

use safekeeper::pg::{
    ConnInfo, PgError, ReplicationConnection, ReplicationMessage, ReplicationStream, format_lsn,
    parse_lsn,
};

use super::harness::PgServer;
use super::{primary, sql_one};

fn segment_name(tli: u32, lsn: u64, seg_size: u32) -> String {
    let segno = lsn / u64::from(seg_size);
    let per_id = 0x1_0000_0000 / u64::from(seg_size);
    format!("{tli:08X}{:08X}{:08X}", segno / per_id, segno % per_id)
}

async fn recv_timeout(stream: &mut ReplicationStream) -> ReplicationMessage {
    tokio::time::timeout(Duration::from_secs(20), stream.recv())
        .await
        .expect("no replication message within 20 s")
        .expect("replication stream failed")
}

#[tokio::test]
async fn stream_wal_identical_to_pg_wal() {
    let Some(p) = primary("stream_wal_identical_to_pg_wal").await else {
        return;
    };
    let info = p.pg.conninfo("application_name=sk_stream_test");
    let mut c = ReplicationConnection::connect(&info, 0).await.unwrap();
    let id = c.identify_system().await.unwrap();
    let seg_size = c.wal_segment_size().await.unwrap();
    let seg_start = id.xlogpos - id.xlogpos % u64::from(seg_size);
    let seg_end = seg_start + u64::from(seg_size);

    create_slot_once(&mut c, "sk_stream", id.xlogpos).await;
    let walsender_pid = c.backend_pid();
    let mut stream = c
        .start_replication(Some("sk_stream"), seg_start, id.timeline)
        .await
        .unwrap();

    // Fill the rest of the segment: some records, then a switch. (Concurrent tests may have
    // switched already; either way the segment is complete afterwards.)
    let switch = sql_one(
        &p.pg,
        "CREATE TABLE IF NOT EXISTS t AS SELECT generate_series(1, 10000) AS x;\
         SELECT pg_switch_wal()::text",
    )
    .await
    .unwrap();
    assert!(parse_lsn(&switch).unwrap() >= seg_start);

    let (received, next) = receive_segment(&mut stream, seg_start, seg_end).await;
    let on_disk =
        p.pg.read_wal_segment(&segment_name(id.timeline, seg_start, seg_size));
    assert_eq!(on_disk.len(), received.len());
    assert!(on_disk == received, "streamed WAL differs from pg_wal");

    // The server records the positions we report.
    stream
        .send_status_update(seg_end, seg_end, 0, false)
        .await
        .unwrap();
    wait_for_reported_flush(&p.pg, walsender_pid, seg_end).await;
    let restart = sql_one(
        &p.pg,
        "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = 'sk_stream'",
    )
    .await
    .unwrap();
    assert_eq!(parse_lsn(&restart).unwrap(), seg_end);

    answer_two_keepalives(&mut stream, next, seg_end).await;

    // End the stream from our side; the session is usable again.
    let mut c = stream.into_connection().await.unwrap();
    assert_eq!(c.identify_system().await.unwrap().timeline, id.timeline);
    c.drop_replication_slot("sk_stream").await.unwrap();
    assert_eq!(c.read_replication_slot("sk_stream").await.unwrap(), None);
}

/// Creates the physical slot `slot` (a second create is a no-op) and checks what the server
/// reports for it: physical, reserved no later than `xlogpos`.
async fn create_slot_once(c: &mut ReplicationConnection, slot: &str, xlogpos: u64) {
    assert!(c.create_physical_slot_if_missing(slot).await.unwrap());
    assert!(!c.create_physical_slot_if_missing(slot).await.unwrap());
    let info = c.read_replication_slot(slot).await.unwrap().unwrap();
    assert_eq!(info.slot_type, "physical");
    assert!(info.restart_lsn.unwrap() <= xlogpos);
}

/// Receives the segment `[seg_start, seg_end)` through `recv` and `try_recv`, answering the
/// keepalives that ask for a reply, and checks that the WAL arrives contiguously in messages of
/// at most 128 KiB. Returns the segment's bytes and the end of the WAL received (which may lie
/// past `seg_end`).
async fn receive_segment(
    stream: &mut ReplicationStream,
    seg_start: u64,
    seg_end: u64,
) -> (Vec<u8>, u64) {
    let mut received = Vec::with_capacity((seg_end - seg_start) as usize);
    let mut next = seg_start;
    let mut from_try_recv = 0;
    while next < seg_end {
        let mut batch = vec![recv_timeout(stream).await];
        while let Some(m) = stream.try_recv().unwrap() {
            from_try_recv += 1;
            batch.push(m);
        }
        for msg in batch {
            match msg {
                ReplicationMessage::XLogData {
                    wal_start,
                    data,
                    wal_end,
                    ..
                } => {
                    assert_eq!(wal_start, next, "WAL must arrive contiguously");
                    assert!(wal_end >= wal_start);
                    assert!(data.len() <= 128 * 1024);
                    let take = data.len().min(seg_end.saturating_sub(next) as usize);
                    received.extend_from_slice(&data[..take]);
                    next += data.len() as u64;
                }
                ReplicationMessage::Keepalive {
                    reply_requested, ..
                } => {
                    if reply_requested {
                        stream.send_status_update(next, 0, 0, false).await.unwrap();
                    }
                }
                m @ ReplicationMessage::EndOfTimeline { .. } => panic!("unexpected {m:?}"),
            }
        }
    }
    assert!(from_try_recv > 0, "try_recv never found a ready message");
    (received, next)
}

/// Waits (3 s limit) until pg_stat_replication shows `flush` as the flush LSN of the walsender
/// `walsender_pid`.
async fn wait_for_reported_flush(pg: &PgServer, walsender_pid: i32, flush: u64) {
    let query = format!(
        "SELECT flush_lsn::text FROM pg_stat_replication \
         WHERE pid = {walsender_pid} AND application_name = 'sk_stream_test'"
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let got = sql_one(pg, &query).await;
        if got.as_deref() == Some(format_lsn(flush).as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "flush_lsn is {got:?}, want {}",
            format_lsn(flush)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// With wal_sender_timeout = 4s the server asks for a reply after 2s of silence: answers two
/// such keepalives (15 s limit), checking that they report at least `flushed` and that any WAL
/// in between continues from `next`.
async fn answer_two_keepalives(stream: &mut ReplicationStream, mut next: u64, flushed: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut answered = 0;
    while answered < 2 {
        assert!(Instant::now() < deadline, "no keepalive requesting a reply");
        match recv_timeout(stream).await {
            ReplicationMessage::Keepalive {
                reply_requested: true,
                wal_end,
                ..
            } => {
                assert!(wal_end >= flushed);
                stream
                    .send_status_update(next, flushed, 0, false)
                    .await
                    .unwrap();
                answered += 1;
            }
            ReplicationMessage::XLogData {
                wal_start, data, ..
            } => {
                assert_eq!(wal_start, next);
                next += data.len() as u64;
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn timeline_switch_after_promotion() {
    let Some(p) = primary("timeline_switch_after_promotion").await else {
        return;
    };
    let primary_pg = &p.pg;
    // Blocking set-up is fine here: nothing else runs on this test's runtime yet.
    let mut standby = PgServer::basebackup_from(primary_pg);
    standby.configure("ssl = off\nhot_standby = on\n");
    standby.start();
    wait_for(&standby, "SELECT pg_is_in_recovery()::text", "true").await;

    check_target_session_attrs(primary_pg, &standby).await;
    promote_after_replay(primary_pg, &standby).await;

    let info = standby.conninfo("");
    let mut c = ReplicationConnection::connect(&info, 0).await.unwrap();
    let id = c.identify_system().await.unwrap();
    assert_eq!(id.timeline, 2);
    let switch = check_history_file(&mut c, &standby).await;

    // Streaming timeline 1 ends exactly at the switch point.
    let seg = u64::from(c.wal_segment_size().await.unwrap());
    let start = switch - switch % seg;
    let c = stream_timeline_1_to_its_end(c, start, switch).await;

    // The same session continues on timeline 2.
    let mut stream = c.start_replication(None, switch, 2).await.unwrap();
    sql_one(&standby, "CREATE TABLE after_promotion AS SELECT 1 AS x").await;
    let pos = loop {
        let msg = recv_timeout(&mut stream).await;
        if let ReplicationMessage::XLogData {
            wal_start, data, ..
        } = msg
        {
            assert_eq!(wal_start, switch);
            break wal_start + data.len() as u64;
        }
    };

    check_stream_from_exact_end(&info, switch).await;

    // A clean shutdown: the walsender sends everything, waits for our flush acknowledgement,
    // then ends with CommandComplete and no CopyDone.
    let stopping = tokio::task::spawn_blocking(move || standby.stop("fast"));
    let err = acknowledge_until_closed(&mut stream, pos).await;
    assert!(matches!(err, PgError::Closed(_)), "{err}");
    assert!(err.is_transient());
    stopping.await.unwrap();
}

/// target_session_attrs picks the right server out of a host list (standby first).
async fn check_target_session_attrs(primary: &PgServer, standby: &PgServer) {
    let hosts = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres sslmode=disable",
        standby.port, primary.port
    );
    for (attrs, want) in [
        ("primary", 1),
        ("standby", 0),
        ("prefer-standby", 0),
        ("any", 0),
    ] {
        let info = ConnInfo::parse(&format!("{hosts} target_session_attrs={attrs}")).unwrap();
        let (mut c, idx) = ReplicationConnection::connect_any(&info).await.unwrap();
        assert_eq!(idx, want, "{attrs}");
        assert_eq!(c.is_in_recovery().await.unwrap(), want == 0);
    }
}

/// Some WAL on timeline 1 that the standby replays, then promotion to timeline 2.
async fn promote_after_replay(primary: &PgServer, standby: &PgServer) {
    sql_one(primary, "CREATE TABLE IF NOT EXISTS tl AS SELECT 1 AS x").await;
    let target = sql_one(primary, "SELECT pg_current_wal_flush_lsn()::text")
        .await
        .unwrap();
    wait_for(
        standby,
        &format!("SELECT (pg_last_wal_replay_lsn() >= '{target}')::text"),
        "true",
    )
    .await;
    standby.promote();
    wait_for(standby, "SELECT pg_is_in_recovery()::text", "false").await;
}

/// TIMELINE_HISTORY 2 names the file as PostgreSQL does, matches the standby's pg_wal copy and
/// says timeline 1 was left; returns the switch point.
async fn check_history_file(c: &mut ReplicationConnection, standby: &PgServer) -> u64 {
    let (name, content) = c.timeline_history(2).await.unwrap();
    assert_eq!(name, "00000002.history");
    let text = String::from_utf8(content.to_vec()).unwrap();
    let mut fields = text.lines().next().unwrap().split('\t');
    assert_eq!(fields.next(), Some("1"));
    let switch = parse_lsn(fields.next().unwrap()).unwrap();
    let on_disk = std::fs::read(standby.datadir.join("pg_wal/00000002.history")).unwrap();
    assert_eq!(content.as_ref(), on_disk.as_slice());
    switch
}

/// Streams timeline 1 from `start`: the WAL ends exactly at `switch` with an EndOfTimeline
/// naming timeline 2 there, after which the stream is over. Returns the session.
async fn stream_timeline_1_to_its_end(
    c: ReplicationConnection,
    start: u64,
    switch: u64,
) -> ReplicationConnection {
    let mut stream = c.start_replication(None, start, 1).await.unwrap();
    let mut next = start;
    loop {
        match recv_timeout(&mut stream).await {
            ReplicationMessage::XLogData {
                wal_start, data, ..
            } => {
                assert_eq!(wal_start, next);
                next += data.len() as u64;
            }
            ReplicationMessage::Keepalive { .. } => {}
            ReplicationMessage::EndOfTimeline {
                next_timeline,
                next_timeline_start,
            } => {
                assert_eq!((next_timeline, next_timeline_start), (2, switch));
                break;
            }
        }
    }
    assert_eq!(next, switch, "timeline 1 WAL must end at the switch point");
    assert!(stream.try_recv().is_err(), "the stream is over");
    stream.into_connection().await.unwrap()
}

/// Asking for timeline 1 exactly at its end: the server skips COPY mode entirely, and the
/// session stays usable.
async fn check_stream_from_exact_end(info: &ConnInfo, switch: u64) {
    let c = ReplicationConnection::connect(info, 0).await.unwrap();
    let mut ended = c.start_replication(None, switch, 1).await.unwrap();
    assert_eq!(
        recv_timeout(&mut ended).await,
        ReplicationMessage::EndOfTimeline {
            next_timeline: 2,
            next_timeline_start: switch
        }
    );
    let mut c = ended.into_connection().await.unwrap();
    assert_eq!(c.identify_system().await.unwrap().timeline, 2);
    c.close().await;
}

/// Acknowledges every byte as flushed, from `pos` on, until the stream fails; returns that
/// error. Only WAL and keepalives may arrive, and the WAL must be contiguous.
async fn acknowledge_until_closed(stream: &mut ReplicationStream, mut pos: u64) -> PgError {
    loop {
        match stream.recv().await {
            Ok(ReplicationMessage::XLogData {
                wal_start, data, ..
            }) => {
                assert_eq!(wal_start, pos);
                pos += data.len() as u64;
                stream.send_status_update(pos, pos, 0, false).await.unwrap();
            }
            Ok(ReplicationMessage::Keepalive { .. }) => {
                stream.send_status_update(pos, pos, 0, false).await.unwrap();
            }
            Ok(m) => panic!("unexpected {m:?}"),
            Err(e) => break e,
        }
    }
}

/// Polls `sql` on `pg` until it returns `want` (10 s limit).
async fn wait_for(pg: &PgServer, sql: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = sql_one(pg, sql).await;
        if got.as_deref() == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "{sql}: got {got:?}, want {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
