//! Where remote objects live: the remote storage URL and S3 options shared by `safekeeper run` and
//! the recovery commands, and the key layout of docs/architecture.md, "In object storage".
//!
//! Owns the key scheme: `<cluster>/wal/<SEGMENT>`, `<cluster>/wal/<SEGMENT>_<COMMITLSN>_<TERM>_sk<ID>.partial`
//! and `<cluster>/wal/<TLI>.history`, relative to the storage root (`file:///path` or
//! `s3://bucket/prefix`). Object names themselves come from `control_file::names`; this module
//! only places them under a cluster.

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use control_file::names::{PartialName, TimelineId, history_file_name, segment_file_name};
use remote_storage::{RemoteConfig, RemoteStorage, S3Options};

/// Tag put on every object the safekeeper uploads, so lifecycle rules can tell them apart.
pub(crate) const KIND_TAG: &str = "safekeeper-kind";

/// S3 connection flags (ignored for `file://` remotes). Credentials come from the standard AWS
/// chain: environment, profile, SSO, web identity, ECS/EC2 instance roles.
#[derive(Args, Debug, Default, Clone)]
pub struct S3Args {
    /// Custom S3 endpoint, e.g. http://127.0.0.1:9000 (also the standard AWS_ENDPOINT_URL).
    #[arg(long, env = "SAFEKEEPER_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,

    /// S3 region (default: the standard AWS chain, e.g. AWS_REGION).
    #[arg(long, env = "SAFEKEEPER_S3_REGION", value_name = "REGION")]
    pub s3_region: Option<String>,

    /// Use path-style addressing (endpoint/bucket/key), needed by most S3-compatible servers.
    #[arg(long, env = "SAFEKEEPER_S3_FORCE_PATH_STYLE")]
    pub s3_force_path_style: bool,
}

impl S3Args {
    /// Flags over config-file values.
    pub fn or(&self, file: &S3Args) -> S3Args {
        S3Args {
            s3_endpoint: self
                .s3_endpoint
                .clone()
                .or_else(|| file.s3_endpoint.clone()),
            s3_region: self.s3_region.clone().or_else(|| file.s3_region.clone()),
            s3_force_path_style: self.s3_force_path_style || file.s3_force_path_style,
        }
    }

    pub fn remote_config(&self) -> RemoteConfig {
        RemoteConfig {
            s3: S3Options {
                endpoint: self.s3_endpoint.clone(),
                region: self.s3_region.clone(),
                force_path_style: self.s3_force_path_style,
                ..S3Options::default()
            },
            ..RemoteConfig::default()
        }
    }
}

/// Opens the remote storage at `url` with retries, limits and timeouts layered on.
pub(crate) async fn open_remote(url: &str, s3: &S3Args) -> Result<Arc<dyn RemoteStorage>> {
    remote_storage::from_url(url, &s3.remote_config())
        .await
        .with_context(|| format!("cannot open remote storage {url}"))
}

/// Checks at startup that the remote storage answers. Permanent problems (a missing bucket,
/// denied access) are errors; a storage that is merely unreachable is only a warning, because
/// ingest and synchronous commits must not depend on object storage being up.
pub(crate) async fn check_remote(storage: &dyn RemoteStorage) -> Result<()> {
    use futures::StreamExt;
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut listing = storage.list("", remote_storage::ListOptions::default(), &cancel);
    match listing.next().await {
        None | Some(Ok(_)) => Ok(()),
        Some(Err(e)) if e.kind().is_retryable() => {
            tracing::warn!(error = %e, "remote storage is not reachable now; uploads will retry");
            Ok(())
        }
        Some(Err(e)) => {
            let e = anyhow::Error::new(e);
            Err(anyhow::anyhow!(crate::hints::with_hint(&e)))
        }
    }
}

/// The metric labels `(cluster, kind)` of a key of this layout (`kind`: the tag value
/// `full`/`partial`/`history`; both kinds of partial piece, bases and increments, are
/// `partial`); `None` for keys outside it, whose puts are not recorded.
pub(crate) fn key_labels(key: &str) -> Option<(&str, &'static str)> {
    let (cluster, file) = key.split_once("/wal/")?;
    let kind = if file.ends_with(".partial") || file.ends_with(".delta") {
        "partial"
    } else if file.ends_with(".history") {
        "history"
    } else {
        "full"
    };
    Some((cluster, kind))
}

/// Key prefix of one cluster's WAL objects (ends with `/`).
pub(crate) fn wal_prefix(cluster: &str) -> String {
    format!("{cluster}/wal/")
}

/// Key of a full segment.
pub(crate) fn segment_key(
    cluster: &str,
    timeline: TimelineId,
    segno: u64,
    seg_size: u32,
) -> String {
    format!(
        "{}{}",
        wal_prefix(cluster),
        segment_file_name(timeline, segno, seg_size)
    )
}

/// Key of a partial segment version.
pub(crate) fn partial_key(cluster: &str, name: &PartialName, seg_size: u32) -> String {
    format!("{}{}", wal_prefix(cluster), name.to_file_name(seg_size))
}

/// Key of a timeline history file.
pub(crate) fn history_key(cluster: &str, timeline: TimelineId) -> String {
    format!("{}{}", wal_prefix(cluster), history_file_name(timeline))
}

#[cfg(test)]
mod tests {
    use super::*;
    use control_file::Lsn;

    #[test]
    fn keys_are_labelled_by_cluster_and_kind() {
        const SEGMENT: &str = "main/wal/000000010000000000000003";
        const PARTIAL: &str =
            "db-1/wal/000000010000000000000003_0000000003A1B2C8_0000000000000001_sk1.partial";
        assert_eq!(key_labels(SEGMENT), Some(("main", "full")));
        assert_eq!(key_labels(PARTIAL), Some(("db-1", "partial")));
        assert_eq!(
            key_labels(
                "db-1/wal/000000010000000000000003_0000000003A1B2C8_0000000000000001_sk1_0000000003400000.delta"
            ),
            Some(("db-1", "partial"))
        );
        assert_eq!(
            key_labels("main/wal/00000002.history"),
            Some(("main", "history"))
        );
        assert_eq!(key_labels("elsewhere"), None);
    }

    #[test]
    fn keys_follow_the_design_layout() {
        let seg = 16 << 20;
        assert_eq!(
            segment_key("main", 1, 3, seg),
            "main/wal/000000010000000000000003"
        );
        let p = PartialName::base(1, 3, Lsn(0x0000_0000_03A1_B2C8), 1, 1, seg);
        assert_eq!(
            partial_key("main", &p, seg),
            "main/wal/000000010000000000000003_0000000003A1B2C8_0000000000000001_sk1.partial"
        );
        let d = PartialName {
            start_lsn: Lsn(0x0340_0000),
            ..p
        };
        assert_eq!(
            partial_key("main", &d, seg),
            "main/wal/000000010000000000000003_0000000003A1B2C8_0000000000000001_sk1_0000000003400000.delta"
        );
        assert_eq!(history_key("main", 2), "main/wal/00000002.history");
    }
}
