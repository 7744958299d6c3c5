//! `<data-dir>/clusters.toml`: the clusters added through the admin API, so a restart keeps
//! following them.
//!
//! Design (README, "Admin API"):
//! - The file lists only clusters added at run time (`POST /v1/clusters`); removing one
//!   (`DELETE /v1/clusters/{name}`) drops it from the file. Clusters from the command line or the
//!   config file are never written here, and the API refuses to delete them (409): their source
//!   of truth is the configuration, which the API cannot edit.
//! - On start the file is merged with the configured clusters. A name in both is followed with
//!   the configured settings (the command line / config file wins) and dropped from the file with
//!   a warning, so removing it from the configuration later does not resurrect stale settings.
//! - Written like the control file: a temp file, fsync, rename, directory fsync, so a crash
//!   leaves the old or the new list, never a torn one. Mode 0600: connection strings may hold
//!   passwords. A file that cannot be parsed stops the service with a message naming it, rather
//!   than silently forgetting clusters.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};

use crate::cluster::config::{ClusterConfig, validate_cluster};

/// File name under the data directory.
pub(crate) const FILE_NAME: &str = "clusters.toml";

const HEADER: &str = "# Clusters added through the admin API (POST /v1/clusters). Written by \
                      safekeeper;\n# edit only while it is stopped.\n\n";

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RuntimeFile {
    #[serde(default)]
    cluster: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    primary: String,
    slot: String,
    application_name: String,
}

pub(crate) fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// The clusters in the file; none when it does not exist.
pub(crate) fn load(data_dir: &Path) -> Result<Vec<ClusterConfig>> {
    let path = path(data_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let file: RuntimeFile =
        toml::from_str(&text).with_context(|| format!("invalid {}", path.display()))?;
    let mut out: Vec<ClusterConfig> = Vec::new();
    for e in file.cluster {
        let c = ClusterConfig {
            name: e.name,
            primary: e.primary,
            slot: e.slot,
            application_name: e.application_name,
        };
        validate_cluster(&c).with_context(|| format!("invalid {}", path.display()))?;
        ensure!(
            out.iter().all(|o| o.name != c.name),
            "invalid {}: cluster {:?} is listed twice",
            path.display(),
            c.name
        );
        out.push(c);
    }
    Ok(out)
}

/// Replaces the file with `clusters`, durably.
pub(crate) fn save(data_dir: &Path, clusters: &[&ClusterConfig]) -> Result<()> {
    let path = path(data_dir);
    let file = RuntimeFile {
        cluster: clusters
            .iter()
            .map(|c| Entry {
                name: c.name.clone(),
                primary: c.primary.clone(),
                slot: c.slot.clone(),
                application_name: c.application_name.clone(),
            })
            .collect(),
    };
    let text = format!(
        "{HEADER}{}",
        toml::to_string(&file).context("cannot encode the cluster list")?
    );
    let tmp = data_dir.join(format!("{FILE_NAME}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        File::open(data_dir)?.sync_all()
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

/// Configured clusters first, then the runtime ones whose names are not configured. Returns the
/// merged list (with `true` for runtime entries) and the names the configuration shadowed.
pub(crate) fn merge(
    configured: Vec<ClusterConfig>,
    runtime: Vec<ClusterConfig>,
) -> (Vec<(ClusterConfig, bool)>, Vec<String>) {
    let mut shadowed = Vec::new();
    let mut out: Vec<(ClusterConfig, bool)> = configured.into_iter().map(|c| (c, false)).collect();
    for c in runtime {
        if out.iter().any(|(o, _)| o.name == c.name) {
            shadowed.push(c.name);
        } else {
            out.push((c, true));
        }
    }
    (out, shadowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(name: &str, primary: &str) -> ClusterConfig {
        ClusterConfig {
            name: name.into(),
            primary: primary.into(),
            slot: "safekeeper_1".into(),
            application_name: "safekeeper1".into(),
        }
    }

    #[test]
    fn round_trips_durably_and_privately() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).unwrap().is_empty());
        let (a, b) = (
            cluster("a", "host=a password=secret"),
            cluster("b", "postgresql://u@b/db"),
        );
        save(dir.path(), &[&a, &b]).unwrap();
        assert_eq!(load(dir.path()).unwrap(), vec![a.clone(), b]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        save(dir.path(), &[&a]).unwrap();
        assert_eq!(load(dir.path()).unwrap(), vec![a]);
        assert!(!dir.path().join("clusters.toml.tmp").exists());
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path()), "[[cluster]]\nname = \"../x\"\nprimary = \"p\"\nslot = \"s\"\napplication_name = \"a\"\n").unwrap();
        let err = format!("{:#}", load(dir.path()).unwrap_err());
        assert!(
            err.contains("clusters.toml") && err.contains("../x"),
            "{err}"
        );
        std::fs::write(path(dir.path()), "[[cluster]]\nnme = 1\n").unwrap();
        assert!(load(dir.path()).is_err());
    }

    #[test]
    fn configuration_wins_over_the_runtime_list() {
        let (merged, shadowed) = merge(
            vec![cluster("a", "host=configured")],
            vec![cluster("a", "host=runtime"), cluster("b", "host=b")],
        );
        assert_eq!(shadowed, ["a"]);
        let names: Vec<_> = merged
            .iter()
            .map(|(c, rt)| (c.name.as_str(), c.primary.as_str(), *rt))
            .collect();
        assert_eq!(
            names,
            [("a", "host=configured", false), ("b", "host=b", true)]
        );
    }
}
