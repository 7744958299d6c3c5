//! Flags shared by the recovery commands (`restore-wal`, `remote ls|verify|prune|cat`,
//! `recover`), which need only the remote storage (and the key file of an encrypted archive),
//! never a running safekeeper or its data directory.
//!
//! Owns how those commands open the archive: the key file is loaded and installed first
//! (`crate::encryption`), so a bad key file fails before any object is read; a `file://` remote must already exist (opening it
//! never creates an empty directory that would then read as "no WAL", which would end a
//! PostgreSQL recovery early), and the `--wal-segment-size` syntax (PostgreSQL's: `16MB` is
//! 16 MiB).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use remote_storage::{RemoteLocation, RemoteStorage};

use crate::remote::S3Args;

/// Where the archive is.
#[derive(Args, Debug, Clone)]
pub struct ArchiveArgs {
    /// Remote storage holding the archive: file:///abs/path or s3://bucket/prefix.
    #[arg(long, env = "SAFEKEEPER_REMOTE", value_name = "URL")]
    pub remote: String,

    /// Cluster whose WAL to read (the name the safekeeper follows it under).
    #[arg(
        long,
        env = "SAFEKEEPER_CLUSTER",
        default_value = "main",
        value_name = "NAME"
    )]
    pub cluster: String,

    /// WAL segment size, e.g. 16MB or 1GB (default: the size of the full segments in the
    /// archive, or what a partial's first page header says, else 16MB).
    #[arg(long, value_name = "SIZE", value_parser = parse_segment_size)]
    pub wal_segment_size: Option<u32>,

    /// Key file of an encrypted archive (`safekeeper keygen` writes one; mode 0600): every key
    /// in it reads; objects sealed with a key it lacks are an error naming that key's ID.
    #[arg(long, env = "SAFEKEEPER_ENCRYPTION_KEY_FILE", value_name = "PATH")]
    pub encryption_key_file: Option<PathBuf>,

    #[command(flatten)]
    pub s3: S3Args,
}

impl ArchiveArgs {
    /// Installs the key ring of `--encryption-key-file` (if given) for this process, then opens
    /// the remote storage (with retries and timeouts).
    pub async fn open(&self) -> Result<Arc<dyn RemoteStorage>> {
        crate::encryption::install_from(self.encryption_key_file.as_deref())?;
        let location = RemoteLocation::parse(&self.remote)
            .with_context(|| format!("invalid --remote {:?}", self.remote))?;
        if let RemoteLocation::Local(path) = &location
            && !path.is_dir()
        {
            bail!(
                "remote storage {} does not exist (or is not a directory readable by this user)",
                self.remote
            );
        }
        // Few quick retries per request: the commands retry whole lookups themselves (restore-wal
        // for --retry-for) and report the last error they saw.
        let mut config = self.s3.remote_config();
        config.retry.max_attempts = 3;
        remote_storage::from_url(&self.remote, &config)
            .await
            .with_context(|| format!("cannot open remote storage {}", self.remote))
    }

    /// The flags that reproduce these arguments on another command line.
    pub fn to_flags(&self) -> Vec<String> {
        let mut flags = vec![
            "--remote".to_string(),
            self.remote.clone(),
            "--cluster".to_string(),
            self.cluster.clone(),
        ];
        if let Some(size) = self.wal_segment_size {
            flags.push("--wal-segment-size".into());
            flags.push(size.to_string());
        }
        if let Some(ep) = &self.s3.s3_endpoint {
            flags.push("--s3-endpoint".into());
            flags.push(ep.clone());
        }
        if let Some(region) = &self.s3.s3_region {
            flags.push("--s3-region".into());
            flags.push(region.clone());
        }
        if let Some(path) = &self.encryption_key_file {
            // Absolute: PostgreSQL runs restore_command in its data directory.
            let path = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            flags.push("--encryption-key-file".into());
            flags.push(path.display().to_string());
        }
        if self.s3.s3_force_path_style {
            flags.push("--s3-force-path-style".into());
        }
        flags
    }
}

/// The tokio runtime of a recovery command.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// A WAL segment size as PostgreSQL writes it (`16MB` = 16 MiB; also `16MiB`, `1GB`, bytes):
/// a power of two from 1 MiB to 1 GiB.
pub fn parse_segment_size(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 16MB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("{text:?}: unknown size unit {unit:?}")),
    };
    let size = n
        .checked_mul(mult)
        .and_then(|s| u32::try_from(s).ok())
        .filter(|s| control_file::lsn::is_valid_segment_size(*s))
        .ok_or_else(|| {
            format!("{text:?} is not a WAL segment size (a power of two from 1MB to 1GB)")
        })?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_sizes_read_like_postgres() {
        assert_eq!(parse_segment_size("16MB"), Ok(16 << 20));
        assert_eq!(parse_segment_size("1GB"), Ok(1 << 30));
        assert_eq!(parse_segment_size("1mib"), Ok(1 << 20));
        assert_eq!(parse_segment_size("16777216"), Ok(16 << 20));
        for bad in ["15MB", "2GB", "512kB", "x", "16XB", ""] {
            assert!(parse_segment_size(bad).is_err(), "{bad}");
        }
    }
}
