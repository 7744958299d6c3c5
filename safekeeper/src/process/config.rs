//! Configuration of `safekeeper run`: command-line flags, environment variables and a TOML file.
//!
//! Owns the precedence rule — flag, then environment variable, then config file, then built-in
//! default — and the validation of the merged result (ids, names, addresses, one entry per
//! cluster name), so the rest of the service only ever sees a complete, checked [`ServiceConfig`].
//!
//! Invariants: every service-wide setting is picked by the one rule of `Setting`
//! (`config/setting.rs`; the S3 group by `S3Args::or`, the same rule), so
//! [`ServiceConfig::resolve`] reads as a list; per-cluster keys follow their own rule, a
//! `[[cluster]]` entry's key over the service-wide flag over the id-derived default; an unknown
//! config-file key is an error, never a silent default; settings are checked in the order
//! listed, and the first failed check is the error.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use clap::Args;
use serde::Deserialize;

use crate::cluster::config::{ClusterConfig, OffloadSettings, validate_cluster};
use crate::remote::S3Args;
pub use crate::telemetry::log::LogFormat;

mod schedule;
mod setting;

use setting::Setting;

/// Flags of `safekeeper run`. Every one can also be given as an environment variable or in the
/// `--config` file (same name with `_` instead of `-`).
#[derive(Args, Debug, Default, Clone)]
pub struct RunArgs {
    /// TOML config file; flags and environment variables override its values.
    #[arg(long, env = "SAFEKEEPER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// This safekeeper's id, unique among the safekeepers following one cluster; it appears in
    /// the names of its partial objects (default 1).
    #[arg(long, env = "SAFEKEEPER_ID", value_name = "N")]
    pub id: Option<u64>,

    /// Directory for control files and local WAL (default ./.safekeeper).
    #[arg(long, env = "SAFEKEEPER_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Remote storage URL: file:///abs/path or s3://bucket/prefix (default file://<data-dir>/remote).
    #[arg(long, env = "SAFEKEEPER_REMOTE", value_name = "URL")]
    pub remote: Option<String>,

    /// Address of the HTTP admin API (default 127.0.0.1:7676).
    #[arg(long, env = "SAFEKEEPER_HTTP_ADDR", value_name = "ADDR")]
    pub http_addr: Option<String>,

    /// File holding the bearer token of the admin API. When set, every route except the public
    /// ones (--http-auth-public-routes) needs `Authorization: Bearer <token>`.
    #[arg(long, env = "SAFEKEEPER_HTTP_AUTH_TOKEN_FILE", value_name = "FILE")]
    pub http_auth_token_file: Option<PathBuf>,

    /// Routes served without the token when auth is on, comma-separated from `metrics`
    /// (/metrics), `status` (/v1/status), `page` (the status page's document at /, which holds
    /// no data and asks for the token) and `openapi` (/v1/openapi.json); `none` for none
    /// (default metrics,status,page).
    #[arg(long, env = "SAFEKEEPER_HTTP_AUTH_PUBLIC_ROUTES", value_name = "LIST")]
    pub http_auth_public_routes: Option<String>,

    /// Name for the cluster of --primary: its directory under --data-dir and its prefix in the
    /// remote storage (default main).
    #[arg(long, env = "SAFEKEEPER_CLUSTER", value_name = "NAME")]
    pub cluster: Option<String>,

    /// Connection string of the primary: libpq keyword/value or URI. The password comes from the
    /// string, PGPASSWORD or ~/.pgpass.
    #[arg(long, env = "SAFEKEEPER_PRIMARY", value_name = "CONNSTRING")]
    pub primary: Option<String>,

    /// Physical replication slot on the primary, created when missing (default safekeeper_<id>).
    #[arg(long, env = "SAFEKEEPER_SLOT", value_name = "NAME")]
    pub slot: Option<String>,

    /// The application_name reported to the primary: the name to list in its
    /// synchronous_standby_names (default safekeeper<id>).
    #[arg(long, env = "SAFEKEEPER_APPLICATION_NAME", value_name = "NAME")]
    pub application_name: Option<String>,

    /// How often to send a standby status update when no WAL arrives (default 10s).
    #[arg(long, env = "SAFEKEEPER_STATUS_INTERVAL", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub status_interval: Option<Duration>,

    /// End a replication session when the primary sent nothing for this long, then reconnect
    /// (default 60s, like PostgreSQL's wal_receiver_timeout).
    #[arg(long, env = "SAFEKEEPER_RECEIVE_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub receive_timeout: Option<Duration>,

    /// How many full segments are uploaded at once, per cluster (default 4).
    #[arg(long, env = "SAFEKEEPER_UPLOAD_PARALLELISM", value_name = "N")]
    pub upload_parallelism: Option<usize>,

    /// How far the archive may trail the newest commit while WAL arrives: the segment being
    /// written is uploaded (its new bytes, as an increment) when its oldest byte not yet remote
    /// is this old (default 1s, at least 100ms).
    #[arg(long, env = "SAFEKEEPER_PARTIAL_INTERVAL", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub partial_interval: Option<Duration>,

    /// How much already-uploaded WAL to keep on local disk as well, per cluster; given up first
    /// when the disk runs short (see "Disk space" in the README) (default 1GiB).
    #[arg(long, env = "SAFEKEEPER_LOCAL_RETENTION", value_name = "BYTES", value_parser = parse_bytes)]
    pub local_retention: Option<u64>,

    /// How uploaded objects are compressed: `zstd` (level 1), `zstd:LEVEL` (1-22) or `none`
    /// (default zstd). Restore reads every setting, and objects written before compression existed.
    #[arg(long, env = "SAFEKEEPER_COMPRESSION", value_name = "CODEC", value_parser = crate::object_format::Compression::parse)]
    pub compression: Option<crate::object_format::Compression>,

    /// Encrypt every uploaded object with the newest (last) key of this key file (`safekeeper
    /// keygen` writes one; it must not be readable by group or others). Without it, objects are
    /// uploaded unencrypted. Keep it away from the bucket: losing it loses the archive.
    #[arg(long, env = "SAFEKEEPER_ENCRYPTION_KEY_FILE", value_name = "PATH")]
    pub encryption_key_file: Option<PathBuf>,

    #[command(flatten)]
    pub backup: schedule::BackupScheduleArgs,

    /// How log lines are written on stderr: `text` for people, `json` for log shippers (one
    /// object per line; the cluster, LSNs and error are fields) (default text).
    #[arg(long, env = "SAFEKEEPER_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    #[command(flatten)]
    pub s3: S3Args,
}

/// The `--config` file. Unknown keys are an error, so a typo never silently falls back to a default.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    id: Option<u64>,
    data_dir: Option<PathBuf>,
    remote: Option<String>,
    http_addr: Option<String>,
    http_auth_token_file: Option<PathBuf>,
    http_auth_public_routes: Option<String>,
    #[serde(default, with = "humantime_serde_opt")]
    status_interval: Option<Duration>,
    upload_parallelism: Option<usize>,
    #[serde(default, with = "humantime_serde_opt")]
    receive_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    partial_interval: Option<Duration>,
    #[serde(default, deserialize_with = "bytes_opt")]
    local_retention: Option<u64>,
    compression: Option<String>,
    encryption_key_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde_opt")]
    backup_interval: Option<Duration>,
    backup_keep_last: Option<usize>,
    #[serde(default, with = "humantime_serde_opt")]
    backup_keep_within: Option<Duration>,
    s3_endpoint: Option<String>,
    s3_region: Option<String>,
    #[serde(default)]
    s3_force_path_style: bool,
    log_format: Option<LogFormat>,
    #[serde(default)]
    cluster: Vec<FileCluster>,
}

impl FileConfig {
    fn s3(&self) -> S3Args {
        S3Args {
            s3_endpoint: self.s3_endpoint.clone(),
            s3_region: self.s3_region.clone(),
            s3_force_path_style: self.s3_force_path_style,
        }
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileCluster {
    name: String,
    primary: String,
    slot: Option<String>,
    application_name: Option<String>,
}

/// The complete, validated configuration of one safekeeper process.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    pub id: u64,
    pub data_dir: PathBuf,
    pub remote: String,
    pub http_addr: SocketAddr,
    pub http_auth_token_file: Option<PathBuf>,
    /// Routes that need no token when auth is on (names from [`PUBLIC_ROUTE_NAMES`]).
    pub http_public_routes: BTreeSet<String>,
    pub status_interval: Duration,
    pub receive_timeout: Duration,
    pub s3: S3Args,
    pub offload: OffloadSettings,
    /// `--encryption-key-file`, absolute; `cmd::run` installs its key ring before anything uploads.
    pub encryption_key_file: Option<PathBuf>,
    /// `--backup-interval` and its retention policy (`None`: no scheduled backups).
    pub backup: Option<crate::cluster::scheduled_backup::BackupSchedule>,
    pub clusters: Vec<ClusterConfig>,
    /// How log lines are written (`--log-format`).
    pub log_format: LogFormat,
}

impl ServiceConfig {
    /// Merges flags/env (already in `args`) over the config file over defaults, and validates.
    /// Settings are resolved, and checked, in the order listed.
    pub fn resolve(args: &RunArgs) -> Result<ServiceConfig> {
        let file = match &args.config {
            Some(path) => read_file_config(path)?,
            None => FileConfig::default(),
        };
        let id = Setting::new(&args.id, &file.id).or(1);
        ensure!(id > 0, "--id must be a positive integer");
        let data_dir =
            Setting::new(&args.data_dir, &file.data_dir).or_else(|| PathBuf::from("./.safekeeper"));
        let data_dir = absolute(&data_dir)?;
        let remote = Setting::new(&args.remote, &file.remote)
            .or_else(|| format!("file://{}", data_dir.join("remote").display()));
        ensure!(
            remote.starts_with("file:///") || remote.starts_with("s3://"),
            "--remote must be file:///absolute/path or s3://bucket/prefix, got {remote:?}"
        );
        let http_addr = parse_http_addr(
            &Setting::new(&args.http_addr, &file.http_addr).or_else(|| "127.0.0.1:7676".into()),
        )?;
        let http_auth_token_file =
            Setting::new(&args.http_auth_token_file, &file.http_auth_token_file)
                .optional()
                .map(|p| absolute(&p))
                .transpose()?;
        let http_public_routes = parse_public_routes(
            &Setting::new(&args.http_auth_public_routes, &file.http_auth_public_routes)
                .or_else(|| "metrics,status,page".into()),
        )?;
        let status_interval =
            Setting::new(&args.status_interval, &file.status_interval).or(Duration::from_secs(10));
        ensure!(
            status_interval >= Duration::from_millis(100),
            "--status-interval must be at least 100ms"
        );
        let receive_timeout =
            Setting::new(&args.receive_timeout, &file.receive_timeout).or(Duration::from_secs(60));
        ensure!(
            receive_timeout > status_interval,
            "--receive-timeout must be longer than --status-interval"
        );
        let offload = resolve_offload(args, &file)?;
        let encryption_key_file =
            Setting::new(&args.encryption_key_file, &file.encryption_key_file)
                .optional()
                .map(|p| absolute(&p))
                .transpose()?;
        // The S3 group merges the same way, flag (or env) over file, in `S3Args::or`.
        let s3 = args.s3.or(&file.s3());
        let log_format = Setting::new(&args.log_format, &file.log_format).or(LogFormat::Text);
        let backup = schedule::resolve(
            &args.backup,
            (
                file.backup_interval,
                file.backup_keep_last,
                file.backup_keep_within,
            ),
        )?;
        let clusters = resolve_clusters(args, file.cluster, id)?;
        Ok(ServiceConfig {
            log_format,
            id,
            data_dir,
            remote,
            http_addr,
            http_auth_token_file,
            http_public_routes,
            status_interval,
            receive_timeout,
            s3,
            offload,
            encryption_key_file,
            backup,
            clusters,
        })
    }
}

/// The offload settings, checked.
fn resolve_offload(args: &RunArgs, file: &FileConfig) -> Result<OffloadSettings> {
    let upload_parallelism = Setting::new(&args.upload_parallelism, &file.upload_parallelism).or(4);
    ensure!(
        (1..=64).contains(&upload_parallelism),
        "--upload-parallelism must be between 1 and 64"
    );
    let partial_interval =
        Setting::new(&args.partial_interval, &file.partial_interval).or(Duration::from_secs(1));
    ensure!(
        partial_interval >= Duration::from_millis(100),
        "--partial-interval must be at least 100ms"
    );
    let local_retention = Setting::new(&args.local_retention, &file.local_retention).or(1 << 30);
    let from_file = match &file.compression {
        Some(s) => Some(
            crate::object_format::Compression::parse(s)
                .map_err(|e| anyhow::anyhow!("config file: compression: {e}"))?,
        ),
        None => None,
    };
    let compression = Setting::new(&args.compression, &from_file).or(Default::default());
    Ok(OffloadSettings {
        upload_parallelism,
        partial_interval,
        local_retention,
        compression,
    })
}

/// The cluster of `--primary` first, then the file's `[[cluster]]` entries, each validated and
/// each name once.
///
/// Per-cluster keys follow their own rule: a `[[cluster]]` entry's own `slot` or
/// `application_name` beats the service-wide `--slot`/`--application-name` (flag or env), which
/// beats the default derived from the id.
fn resolve_clusters(args: &RunArgs, file: Vec<FileCluster>, id: u64) -> Result<Vec<ClusterConfig>> {
    let slot = |own: Option<String>| {
        own.or_else(|| args.slot.clone())
            .unwrap_or_else(|| format!("safekeeper_{id}"))
    };
    let application_name = |own: Option<String>| {
        own.or_else(|| args.application_name.clone())
            .unwrap_or_else(|| format!("safekeeper{id}"))
    };
    let mut clusters = Vec::new();
    if let Some(primary) = &args.primary {
        clusters.push(ClusterConfig {
            name: args.cluster.clone().unwrap_or_else(|| "main".to_string()),
            primary: primary.clone(),
            slot: slot(None),
            application_name: application_name(None),
        });
    } else if args.cluster.is_some() || args.slot.is_some() || args.application_name.is_some() {
        bail!("--cluster, --slot and --application-name need --primary");
    }
    for c in file {
        clusters.push(ClusterConfig {
            slot: slot(c.slot),
            application_name: application_name(c.application_name),
            name: c.name,
            primary: c.primary,
        });
    }
    let mut seen = BTreeSet::new();
    for c in &clusters {
        validate_cluster(c)?;
        ensure!(
            seen.insert(c.name.clone()),
            "cluster {:?} is configured twice",
            c.name
        );
    }
    Ok(clusters)
}

fn parse_http_addr(text: &str) -> Result<SocketAddr> {
    text.parse()
        .with_context(|| format!("--http-addr {text:?} is not an address like 127.0.0.1:7676"))
}

/// Route names `--http-auth-public-routes` accepts.
pub const PUBLIC_ROUTE_NAMES: [&str; 4] = ["metrics", "status", "page", "openapi"];

fn parse_public_routes(text: &str) -> Result<BTreeSet<String>> {
    let mut routes = BTreeSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part == "none" {
            continue;
        }
        ensure!(
            PUBLIC_ROUTE_NAMES.contains(&part),
            "--http-auth-public-routes: unknown route {part:?} (expected a comma-separated list \
             of {} or none)",
            PUBLIC_ROUTE_NAMES.join(", ")
        );
        routes.insert(part.to_string());
    }
    Ok(routes)
}

fn read_file_config(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    Ok(cwd.join(path))
}

/// Parses a byte size: a number with an optional unit (B, kB, MB, GB, KiB, MiB, GiB, TiB).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 1GiB or 512MB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "tib" | "t" => 1 << 40,
        _ => return Err(format!("{text:?}: unknown size unit {unit:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too large"))
}

fn bytes_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Number(u64),
        Text(String),
    }
    match Option::<Size>::deserialize(d)? {
        None => Ok(None),
        Some(Size::Number(n)) => Ok(Some(n)),
        Some(Size::Text(t)) => parse_bytes(&t).map(Some).map_err(serde::de::Error::custom),
    }
}

/// `status_interval = "10s"` in the config file.
mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> RunArgs {
        RunArgs {
            primary: Some("host=127.0.0.1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_follow_the_id() {
        let mut a = args();
        a.id = Some(3);
        let c = ServiceConfig::resolve(&a).unwrap();
        assert_eq!(c.clusters[0].name, "main");
        assert_eq!(c.clusters[0].slot, "safekeeper_3");
        assert_eq!(c.clusters[0].application_name, "safekeeper3");
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:7676");
        assert!(c.data_dir.is_absolute());
        assert!(c.remote.starts_with("file:///"));
        assert!(c.remote.ends_with("/.safekeeper/remote"));
        assert_eq!(c.offload.upload_parallelism, 4);
        assert_eq!(c.offload.partial_interval, Duration::from_secs(1));
        assert_eq!(c.offload.local_retention, 1 << 30);
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("512MB"), Ok(512_000_000));
        assert_eq!(parse_bytes("16777216"), Ok(16 << 20));
        assert!(parse_bytes("1 parsec").is_err());
        assert!(parse_bytes("GiB").is_err());
        assert!(parse_bytes("99999999999TiB").is_err());
    }

    #[test]
    fn flags_override_the_file_and_file_lists_clusters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sk.toml");
        std::fs::write(
            &path,
            r#"
id = 7
data_dir = "/var/lib/sk"
http_addr = "127.0.0.1:9000"
status_interval = "2s"
partial_interval = "500ms"
local_retention = "64MiB"
s3_endpoint = "http://127.0.0.1:9000"
[[cluster]]
name = "a"
primary = "host=a"
[[cluster]]
name = "b"
primary = "host=b"
slot = "custom"
"#,
        )
        .unwrap();
        let a = RunArgs {
            config: Some(path),
            http_addr: Some("127.0.0.1:9999".into()),
            ..Default::default()
        };
        let c = ServiceConfig::resolve(&a).unwrap();
        assert_eq!(c.id, 7);
        assert_eq!(c.http_addr.port(), 9999);
        assert_eq!(c.status_interval, Duration::from_secs(2));
        assert_eq!(c.offload.partial_interval, Duration::from_millis(500));
        assert_eq!(c.offload.local_retention, 64 << 20);
        assert_eq!(c.s3.s3_endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/sk"));
        let names: Vec<_> = c.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(c.clusters[0].slot, "safekeeper_7");
        assert_eq!(c.clusters[1].slot, "custom");
    }

    #[test]
    fn rejects_bad_input_with_a_clear_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sk.toml");
        std::fs::write(&path, "idd = 1\n").unwrap();
        let a = RunArgs {
            config: Some(path),
            ..args()
        };
        let err = format!("{:#}", ServiceConfig::resolve(&a).unwrap_err());
        assert!(err.contains("idd"), "{err}");

        let a = RunArgs {
            cluster: Some("../etc".into()),
            ..args()
        };
        assert!(ServiceConfig::resolve(&a).is_err());
        let a = RunArgs {
            slot: Some("Bad-Slot".into()),
            ..args()
        };
        assert!(ServiceConfig::resolve(&a).is_err());
        let a = RunArgs {
            remote: Some("http://x".into()),
            ..args()
        };
        assert!(ServiceConfig::resolve(&a).is_err());
        let a = RunArgs {
            http_auth_public_routes: Some("metrics,secrets".into()),
            ..args()
        };
        assert!(ServiceConfig::resolve(&a).is_err());
    }

    #[test]
    fn auth_public_routes_default_to_metrics_status_and_the_page() {
        let c = ServiceConfig::resolve(&args()).unwrap();
        assert!(c.http_auth_token_file.is_none());
        assert_eq!(
            c.http_public_routes.iter().collect::<Vec<_>>(),
            ["metrics", "page", "status"]
        );
        let a = RunArgs {
            http_auth_public_routes: Some("none".into()),
            ..args()
        };
        assert!(
            ServiceConfig::resolve(&a)
                .unwrap()
                .http_public_routes
                .is_empty()
        );
        // Clusters may all come from <data-dir>/clusters.toml or the admin API.
        assert!(
            ServiceConfig::resolve(&RunArgs::default())
                .unwrap()
                .clusters
                .is_empty()
        );
    }
}
