//! The metrics read from the clusters' `watch` channels at scrape time, in Prometheus text format.
//!
//! Owns the scrape-time families and their text: the process families (build, uptime, number of
//! clusters), the per-cluster gauges ([`GAUGES`]) and counters ([`COUNTERS`]), and the connection
//! state; each group has its own function, called in a fixed order by `render_snapshots`.
//!
//! Invariants:
//! - Values come from the same snapshots the admin API serves (`ClusterEntry::snapshot`), so
//!   `/metrics` and `GET /v1/clusters/{name}` agree; LSNs are byte positions (PostgreSQL's
//!   `pg_wal_lsn_diff(lsn, '0/0')`).
//! - The output is fixed byte for byte by the families' order and text (pinned by a test):
//!   every family has its `# HELP` and `# TYPE` lines even with no cluster, and label values are
//!   escaped.

use std::fmt::Write as _;
use std::time::Instant;

use crate::cluster::status::ConnectionState;
use crate::process::cluster_set::{ClusterEntry, ClusterSet};

/// One metric family being written.
struct Family<'a> {
    out: &'a mut String,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &str, kind: &str, help: &str) -> Family<'a> {
        // Writing into a String cannot fail.
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A per-cluster family: one sample per cluster from `value`.
fn per_cluster(
    out: &mut String,
    clusters: &[Snapshot],
    name: &str,
    kind: &str,
    help: &str,
    value: impl Fn(&Snapshot) -> f64,
) {
    let mut f = Family::new(out, name, kind, help);
    for c in clusters {
        f.sample(name, &[("cluster", &c.name)], value(c));
    }
}

/// A per-cluster family: name, help, and how to read it from a snapshot.
type PerCluster = (&'static str, &'static str, fn(&Snapshot) -> f64);

/// What one scrape reads of one cluster.
struct Snapshot {
    name: String,
    status: crate::cluster::status::ClusterStatus,
    offload: crate::cluster::status::OffloadStatus,
    term: Option<u64>,
    lags: crate::cluster::lag::Lags,
}

impl Snapshot {
    fn of(e: &ClusterEntry) -> Snapshot {
        let (status, offload, lags) = e.snapshot();
        Snapshot {
            name: e.name().to_string(),
            status,
            offload,
            term: e.state.borrow().as_ref().map(|s| s.term),
            lags,
        }
    }
}

const STATES: [(ConnectionState, &str); 6] = [
    (ConnectionState::Connecting, "connecting"),
    (ConnectionState::Streaming, "streaming"),
    (ConnectionState::Retrying, "retrying"),
    (ConnectionState::DiskFull, "disk_full"),
    (ConnectionState::Failed, "failed"),
    (ConnectionState::Stopped, "stopped"),
];

/// Per-cluster gauges, in the order they are rendered.
const GAUGES: [PerCluster; 15] = [
    (
        "safekeeper_received_lsn_bytes",
        "End of the WAL received from the primary.",
        |c| c.status.received_lsn.0 as f64,
    ),
    (
        "safekeeper_flush_lsn_bytes",
        "End of the WAL fsynced locally.",
        |c| c.status.flush_lsn.0 as f64,
    ),
    (
        "safekeeper_commit_lsn_bytes",
        "Highest position acknowledged to the primary as flushed.",
        |c| c.status.commit_lsn.0 as f64,
    ),
    (
        "safekeeper_backup_lsn_bytes",
        "Every full segment below it is in remote storage.",
        |c| c.offload.backup_lsn.0 as f64,
    ),
    (
        "safekeeper_remote_lsn_bytes",
        "Everything below it is in remote storage (full segments or the newest partial).",
        |c| c.offload.remote_lsn.0 as f64,
    ),
    (
        "safekeeper_flush_lag_bytes",
        "Received but not fsynced: received - flush.",
        |c| c.lags.flush.bytes as f64,
    ),
    (
        "safekeeper_flush_lag_seconds",
        "Age of the oldest received byte not fsynced.",
        |c| c.lags.flush.seconds,
    ),
    (
        "safekeeper_upload_lag_bytes",
        "Acknowledged but not in remote storage: commit - remote.",
        |c| c.lags.upload.bytes as f64,
    ),
    (
        "safekeeper_upload_lag_seconds",
        "Age of the oldest acknowledged byte not in remote storage.",
        |c| c.lags.upload.seconds,
    ),
    (
        "safekeeper_backup_lag_bytes",
        "Acknowledged but not in a full remote segment: commit - backup.",
        |c| c.lags.backup.bytes as f64,
    ),
    (
        "safekeeper_backup_lag_seconds",
        "Age of the oldest acknowledged byte not in a full remote segment.",
        |c| c.lags.backup.seconds,
    ),
    (
        "safekeeper_uploads_in_flight",
        "Uploads running now.",
        |c| c.offload.uploads_in_flight as f64,
    ),
    (
        "safekeeper_term",
        "Current term (0 before the control file exists).",
        |c| c.term.unwrap_or(0) as f64,
    ),
    (
        "safekeeper_timeline",
        "PostgreSQL timeline followed (0 before it is known).",
        |c| f64::from(c.status.timeline.unwrap_or(0)),
    ),
    (
        "safekeeper_disk_full",
        "1 while ingest is stalled on a full data directory (nothing uploaded left to free).",
        |c| f64::from(u8::from(c.status.disk_full.is_some())),
    ),
];

/// Per-cluster counters, in the order they are rendered.
const COUNTERS: [PerCluster; 6] = [
    (
        "safekeeper_reconnects_total",
        "Connection attempts after a failed replication session.",
        |c| c.status.reconnects as f64,
    ),
    (
        "safekeeper_gaps_total",
        "Times the primary could not continue the WAL held here (fork or missing WAL).",
        |c| c.status.gaps as f64,
    ),
    (
        "safekeeper_gc_deleted_objects_total",
        "Superseded remote objects deleted by GC.",
        |c| c.offload.gc_deleted as f64,
    ),
    (
        "safekeeper_remote_objects_adopted_total",
        "Objects of this safekeeper found in the archive that the control file did not list.",
        |c| c.offload.objects_adopted as f64,
    ),
    (
        "safekeeper_wal_bytes_total",
        "WAL bytes written locally (compare with safekeeper_upload_bytes_total).",
        |c| c.offload.wal_bytes as f64,
    ),
    (
        "safekeeper_disk_full_stalls_total",
        "Times ingest stalled on a full data directory.",
        |c| c.status.disk_full_stalls as f64,
    ),
];

/// Renders every scrape-time family.
pub(crate) fn render(set: &ClusterSet, sk_id: u64, started: Instant) -> String {
    let clusters: Vec<Snapshot> = set.list().iter().map(|e| Snapshot::of(e)).collect();
    render_snapshots(&clusters, sk_id, started.elapsed().as_secs_f64())
}

/// Renders these snapshots: the process families, then the per-cluster ones.
fn render_snapshots(clusters: &[Snapshot], sk_id: u64, uptime: f64) -> String {
    let mut out = String::with_capacity(4096 + clusters.len() * 2048);
    process_families(&mut out, sk_id, uptime, clusters.len());
    for (name, help, value) in GAUGES {
        per_cluster(&mut out, clusters, name, "gauge", help, value);
    }
    for (name, help, value) in COUNTERS {
        per_cluster(&mut out, clusters, name, "counter", help, value);
    }
    connection_states(&mut out, clusters);
    out
}

/// The families about the process itself: build, uptime, number of clusters.
fn process_families(out: &mut String, sk_id: u64, uptime: f64, clusters: usize) {
    let id = sk_id.to_string();
    Family::new(
        out,
        "safekeeper_build_info",
        "gauge",
        "Version and id of this safekeeper (always 1).",
    )
    .sample(
        "safekeeper_build_info",
        &[("version", env!("CARGO_PKG_VERSION")), ("id", &id)],
        1.0,
    );
    Family::new(
        out,
        "safekeeper_uptime_seconds",
        "gauge",
        "Seconds since the process started.",
    )
    .sample("safekeeper_uptime_seconds", &[], uptime);
    Family::new(out, "safekeeper_clusters", "gauge", "Clusters followed.").sample(
        "safekeeper_clusters",
        &[],
        clusters as f64,
    );
}

/// One sample per cluster and connection state: 1 for the current one, 0 for the others.
fn connection_states(out: &mut String, clusters: &[Snapshot]) {
    let name = "safekeeper_connection_state";
    let mut f = Family::new(
        out,
        name,
        "gauge",
        "Replication connection state: 1 for the current state, 0 for the others.",
    );
    for c in clusters {
        for (state, label) in STATES {
            let v = if c.status.connection == state {
                1.0
            } else {
                0.0
            };
            f.sample(name, &[("cluster", &c.name), ("state", label)], v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_well_formed() {
        let mut out = String::new();
        let mut f = Family::new(&mut out, "x_total", "counter", "Help.");
        f.sample("x_total", &[("cluster", "a\"b"), ("kind", "full")], 3.0);
        f.sample("x_total", &[], 1.5);
        assert_eq!(
            out,
            "# HELP x_total Help.\n# TYPE x_total counter\nx_total{cluster=\"a\\\"b\",kind=\"full\"} 3\nx_total 1.5\n"
        );
    }

    fn fixed() -> Vec<Snapshot> {
        use crate::cluster::lag::{Lags, StageLag};
        use crate::cluster::status::{ClusterStatus, OffloadStatus};
        use control_file::Lsn;
        let mut main = ClusterStatus::new("main");
        main.connection = ConnectionState::Streaming;
        main.timeline = Some(2);
        (main.received_lsn, main.flush_lsn, main.commit_lsn) =
            (Lsn(0x3000_1000), Lsn(0x3000_0800), Lsn(0x3000_0400));
        (main.reconnects, main.gaps) = (3, 1);
        let mut other = ClusterStatus::new("o\"ther");
        other.connection = ConnectionState::Failed;
        vec![
            Snapshot {
                name: "main".into(),
                status: main,
                offload: OffloadStatus {
                    backup_lsn: Lsn(0x3000_0000),
                    remote_lsn: Lsn(0x3000_0200),
                    uploads_in_flight: 2,
                    gc_deleted: 7,
                    ..OffloadStatus::default()
                },
                term: Some(4),
                lags: Lags {
                    flush: StageLag {
                        bytes: 0x800,
                        seconds: 0.25,
                    },
                    upload: StageLag {
                        bytes: 0x200,
                        seconds: 1.5,
                    },
                    backup: StageLag {
                        bytes: 0x400,
                        seconds: 12.125,
                    },
                },
            },
            Snapshot {
                name: "o\"ther".into(),
                status: other,
                offload: OffloadStatus::default(),
                term: None,
                lags: Lags::default(),
            },
        ]
    }

    /// The whole output for a fixed snapshot, byte for byte (scrapers and dashboards read it).
    #[test]
    fn full_output_for_a_fixed_snapshot_is_pinned() {
        let expected = GOLDEN.replace("{VERSION}", env!("CARGO_PKG_VERSION"));
        assert_eq!(render_snapshots(&fixed(), 7, 12.5), expected);
        let empty = render_snapshots(&[], 7, 12.5);
        assert!(empty.ends_with("# TYPE safekeeper_connection_state gauge\n"));
        assert!(empty.contains("safekeeper_clusters 0\n"));
    }

    const GOLDEN: &str = r#"# HELP safekeeper_build_info Version and id of this safekeeper (always 1).
# TYPE safekeeper_build_info gauge
safekeeper_build_info{version="{VERSION}",id="7"} 1
# HELP safekeeper_uptime_seconds Seconds since the process started.
# TYPE safekeeper_uptime_seconds gauge
safekeeper_uptime_seconds 12.5
# HELP safekeeper_clusters Clusters followed.
# TYPE safekeeper_clusters gauge
safekeeper_clusters 2
# HELP safekeeper_received_lsn_bytes End of the WAL received from the primary.
# TYPE safekeeper_received_lsn_bytes gauge
safekeeper_received_lsn_bytes{cluster="main"} 805310464
safekeeper_received_lsn_bytes{cluster="o\"ther"} 0
# HELP safekeeper_flush_lsn_bytes End of the WAL fsynced locally.
# TYPE safekeeper_flush_lsn_bytes gauge
safekeeper_flush_lsn_bytes{cluster="main"} 805308416
safekeeper_flush_lsn_bytes{cluster="o\"ther"} 0
# HELP safekeeper_commit_lsn_bytes Highest position acknowledged to the primary as flushed.
# TYPE safekeeper_commit_lsn_bytes gauge
safekeeper_commit_lsn_bytes{cluster="main"} 805307392
safekeeper_commit_lsn_bytes{cluster="o\"ther"} 0
# HELP safekeeper_backup_lsn_bytes Every full segment below it is in remote storage.
# TYPE safekeeper_backup_lsn_bytes gauge
safekeeper_backup_lsn_bytes{cluster="main"} 805306368
safekeeper_backup_lsn_bytes{cluster="o\"ther"} 0
# HELP safekeeper_remote_lsn_bytes Everything below it is in remote storage (full segments or the newest partial).
# TYPE safekeeper_remote_lsn_bytes gauge
safekeeper_remote_lsn_bytes{cluster="main"} 805306880
safekeeper_remote_lsn_bytes{cluster="o\"ther"} 0
# HELP safekeeper_flush_lag_bytes Received but not fsynced: received - flush.
# TYPE safekeeper_flush_lag_bytes gauge
safekeeper_flush_lag_bytes{cluster="main"} 2048
safekeeper_flush_lag_bytes{cluster="o\"ther"} 0
# HELP safekeeper_flush_lag_seconds Age of the oldest received byte not fsynced.
# TYPE safekeeper_flush_lag_seconds gauge
safekeeper_flush_lag_seconds{cluster="main"} 0.25
safekeeper_flush_lag_seconds{cluster="o\"ther"} 0
# HELP safekeeper_upload_lag_bytes Acknowledged but not in remote storage: commit - remote.
# TYPE safekeeper_upload_lag_bytes gauge
safekeeper_upload_lag_bytes{cluster="main"} 512
safekeeper_upload_lag_bytes{cluster="o\"ther"} 0
# HELP safekeeper_upload_lag_seconds Age of the oldest acknowledged byte not in remote storage.
# TYPE safekeeper_upload_lag_seconds gauge
safekeeper_upload_lag_seconds{cluster="main"} 1.5
safekeeper_upload_lag_seconds{cluster="o\"ther"} 0
# HELP safekeeper_backup_lag_bytes Acknowledged but not in a full remote segment: commit - backup.
# TYPE safekeeper_backup_lag_bytes gauge
safekeeper_backup_lag_bytes{cluster="main"} 1024
safekeeper_backup_lag_bytes{cluster="o\"ther"} 0
# HELP safekeeper_backup_lag_seconds Age of the oldest acknowledged byte not in a full remote segment.
# TYPE safekeeper_backup_lag_seconds gauge
safekeeper_backup_lag_seconds{cluster="main"} 12.125
safekeeper_backup_lag_seconds{cluster="o\"ther"} 0
# HELP safekeeper_uploads_in_flight Uploads running now.
# TYPE safekeeper_uploads_in_flight gauge
safekeeper_uploads_in_flight{cluster="main"} 2
safekeeper_uploads_in_flight{cluster="o\"ther"} 0
# HELP safekeeper_term Current term (0 before the control file exists).
# TYPE safekeeper_term gauge
safekeeper_term{cluster="main"} 4
safekeeper_term{cluster="o\"ther"} 0
# HELP safekeeper_timeline PostgreSQL timeline followed (0 before it is known).
# TYPE safekeeper_timeline gauge
safekeeper_timeline{cluster="main"} 2
safekeeper_timeline{cluster="o\"ther"} 0
# HELP safekeeper_disk_full 1 while ingest is stalled on a full data directory (nothing uploaded left to free).
# TYPE safekeeper_disk_full gauge
safekeeper_disk_full{cluster="main"} 0
safekeeper_disk_full{cluster="o\"ther"} 0
# HELP safekeeper_reconnects_total Connection attempts after a failed replication session.
# TYPE safekeeper_reconnects_total counter
safekeeper_reconnects_total{cluster="main"} 3
safekeeper_reconnects_total{cluster="o\"ther"} 0
# HELP safekeeper_gaps_total Times the primary could not continue the WAL held here (fork or missing WAL).
# TYPE safekeeper_gaps_total counter
safekeeper_gaps_total{cluster="main"} 1
safekeeper_gaps_total{cluster="o\"ther"} 0
# HELP safekeeper_gc_deleted_objects_total Superseded remote objects deleted by GC.
# TYPE safekeeper_gc_deleted_objects_total counter
safekeeper_gc_deleted_objects_total{cluster="main"} 7
safekeeper_gc_deleted_objects_total{cluster="o\"ther"} 0
# HELP safekeeper_remote_objects_adopted_total Objects of this safekeeper found in the archive that the control file did not list.
# TYPE safekeeper_remote_objects_adopted_total counter
safekeeper_remote_objects_adopted_total{cluster="main"} 0
safekeeper_remote_objects_adopted_total{cluster="o\"ther"} 0
# HELP safekeeper_wal_bytes_total WAL bytes written locally (compare with safekeeper_upload_bytes_total).
# TYPE safekeeper_wal_bytes_total counter
safekeeper_wal_bytes_total{cluster="main"} 0
safekeeper_wal_bytes_total{cluster="o\"ther"} 0
# HELP safekeeper_disk_full_stalls_total Times ingest stalled on a full data directory.
# TYPE safekeeper_disk_full_stalls_total counter
safekeeper_disk_full_stalls_total{cluster="main"} 0
safekeeper_disk_full_stalls_total{cluster="o\"ther"} 0
# HELP safekeeper_connection_state Replication connection state: 1 for the current state, 0 for the others.
# TYPE safekeeper_connection_state gauge
safekeeper_connection_state{cluster="main",state="connecting"} 0
safekeeper_connection_state{cluster="main",state="streaming"} 1
safekeeper_connection_state{cluster="main",state="retrying"} 0
safekeeper_connection_state{cluster="main",state="disk_full"} 0
safekeeper_connection_state{cluster="main",state="failed"} 0
safekeeper_connection_state{cluster="main",state="stopped"} 0
safekeeper_connection_state{cluster="o\"ther",state="connecting"} 0
safekeeper_connection_state{cluster="o\"ther",state="streaming"} 0
safekeeper_connection_state{cluster="o\"ther",state="retrying"} 0
safekeeper_connection_state{cluster="o\"ther",state="disk_full"} 0
safekeeper_connection_state{cluster="o\"ther",state="failed"} 1
safekeeper_connection_state{cluster="o\"ther",state="stopped"} 0
"#;
}
