//! The metrics read from the clusters' `watch` channels at scrape time, in Prometheus text format.
//!
//! The same snapshots the admin API serves, so `/metrics` and `GET /v1/clusters/{name}` agree;
//! LSNs are byte positions (PostgreSQL's `pg_wal_lsn_diff(lsn, '0/0')`).

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

/// A per-cluster gauge: name, help, and how to read it from a snapshot.
type Gauge = (&'static str, &'static str, fn(&Snapshot) -> f64);

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

const STATES: [(ConnectionState, &str); 5] = [
    (ConnectionState::Connecting, "connecting"),
    (ConnectionState::Streaming, "streaming"),
    (ConnectionState::Retrying, "retrying"),
    (ConnectionState::Failed, "failed"),
    (ConnectionState::Stopped, "stopped"),
];

/// Renders every scrape-time family.
pub(crate) fn render(set: &ClusterSet, sk_id: u64, started: Instant) -> String {
    let clusters: Vec<Snapshot> = set.list().iter().map(|e| Snapshot::of(e)).collect();
    let mut out = String::with_capacity(4096 + clusters.len() * 2048);
    let id = sk_id.to_string();
    Family::new(
        &mut out,
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
        &mut out,
        "safekeeper_uptime_seconds",
        "gauge",
        "Seconds since the process started.",
    )
    .sample(
        "safekeeper_uptime_seconds",
        &[],
        started.elapsed().as_secs_f64(),
    );
    Family::new(
        &mut out,
        "safekeeper_clusters",
        "gauge",
        "Clusters followed.",
    )
    .sample("safekeeper_clusters", &[], clusters.len() as f64);

    let gauges: [Gauge; 13] = [
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
    ];
    for (name, help, value) in gauges {
        per_cluster(&mut out, &clusters, name, "gauge", help, value);
    }
    per_cluster(
        &mut out,
        &clusters,
        "safekeeper_timeline",
        "gauge",
        "PostgreSQL timeline followed (0 before it is known).",
        |c| f64::from(c.status.timeline.unwrap_or(0)),
    );
    per_cluster(
        &mut out,
        &clusters,
        "safekeeper_reconnects_total",
        "counter",
        "Connection attempts after a failed replication session.",
        |c| c.status.reconnects as f64,
    );
    per_cluster(
        &mut out,
        &clusters,
        "safekeeper_gaps_total",
        "counter",
        "Times the primary could not continue the WAL held here (fork or missing WAL).",
        |c| c.status.gaps as f64,
    );
    per_cluster(
        &mut out,
        &clusters,
        "safekeeper_gc_deleted_objects_total",
        "counter",
        "Superseded remote objects deleted by GC.",
        |c| c.offload.gc_deleted as f64,
    );

    let name = "safekeeper_connection_state";
    let mut f = Family::new(
        &mut out,
        name,
        "gauge",
        "Replication connection state: 1 for the current state, 0 for the others.",
    );
    for c in &clusters {
        for (state, label) in STATES {
            let v = if c.status.connection == state {
                1.0
            } else {
                0.0
            };
            f.sample(name, &[("cluster", &c.name), ("state", label)], v);
        }
    }
    out
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
}
