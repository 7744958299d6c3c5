//! `safekeeper remote cat KEY` (hidden, for maintenance and tests): the decoded bytes of one
//! object of an archive, as restore reads them.
//!
//! Owns what "the bytes of an object" means to someone outside the safekeeper: an object in the
//! object format (`crate::object_format`) is decoded and checked (header, lengths, crc32c of the
//! WAL bytes), a raw object is printed as it is, and a partial *version* name
//! (`SEGMENT_COMMITLSN_TERM_skID.partial`) that is stored as a chain of pieces rather than as one
//! object prints the version assembled from its pieces (unpadded), exactly what `restore-wal`
//! pads and serves. So tests and operators compare WAL bytes without knowing how they are stored.
//!
//! Exit status: 0 with the bytes written; 1 when the object (or version) does not exist, cannot be
//! read, or does not decode, with an `error:` line on stderr and nothing on stdout.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use control_file::names::PartialName;
use remote_storage::{RemoteStorage, RemoteStorageExt};
use tokio_util::sync::CancellationToken;

use super::archive_args::{ArchiveArgs, runtime};
use crate::archive::spool::write_file_atomic;
use crate::archive::{Archive, assemble, versions_of};
use crate::object_format;
use crate::remote::wal_prefix;

#[derive(Args, Debug)]
pub struct CatArgs {
    #[command(flatten)]
    pub archive: ArchiveArgs,
    /// The object: its key relative to the storage root (`main/wal/000000010000000000000003`) or
    /// its name under the cluster's `wal/` (`000000010000000000000003`); a partial version's name
    /// prints the version assembled from its pieces.
    #[arg(value_name = "KEY")]
    pub key: String,
    /// Write the bytes to this file (atomically) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

pub fn run(args: CatArgs) -> ExitCode {
    match runtime().and_then(|rt| rt.block_on(cat(&args))) {
        Ok(data) => {
            let written = match &args.output {
                Some(path) => write_file_atomic(path, &data),
                None => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&data)
                        .and_then(|()| out.flush())
                        .context("cannot write to stdout")
                }
            };
            match written {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn cat(args: &CatArgs) -> Result<Bytes> {
    let cancel = CancellationToken::new();
    let storage = args.archive.open().await?;
    let prefix = wal_prefix(&args.archive.cluster);
    let key = if args.key.contains('/') {
        args.key.clone()
    } else {
        format!("{prefix}{}", args.key)
    };
    match storage.get_bytes(&key, &cancel).await {
        Ok(object) => {
            let decoded = object_format::decode(object, &key).with_context(|| key.clone())?;
            Ok(decoded.data)
        }
        Err(e) if e.is_not_found() => version(&*storage, args, &key, &cancel).await,
        Err(e) => Err(e).with_context(|| format!("cannot read {key}")),
    }
}

/// A partial version that is not stored as one object: assembled from the chain of pieces of
/// its safekeeper and term that ends exactly at its commit LSN (the fewest pieces).
async fn version(
    storage: &dyn RemoteStorage,
    args: &CatArgs,
    key: &str,
    cancel: &CancellationToken,
) -> Result<Bytes> {
    let missing = || format!("{key} does not exist");
    let file = key.rsplit('/').next().unwrap_or(key);
    if !file.ends_with(".partial") {
        bail!(missing());
    }
    let cluster = &args.archive.cluster;
    let archive = Archive::load(storage, cluster, args.archive.wal_segment_size, cancel).await?;
    let Ok(name) = PartialName::parse(file, archive.seg_size) else {
        bail!(missing());
    };
    let pieces: Vec<_> = archive
        .timelines
        .get(&name.timeline)
        .and_then(|t| t.pieces.get(&name.segno))
        .into_iter()
        .flatten()
        .filter(|p| {
            (p.name.sk_id, p.name.term) == (name.sk_id, name.term)
                && p.name.commit_lsn <= name.commit_lsn
        })
        .cloned()
        .collect();
    let prefix = wal_prefix(cluster);
    let versions = versions_of(&pieces, &prefix, archive.seg_size);
    let Some(v) = versions.iter().find(|v| v.name == name) else {
        bail!(
            "{} (neither as an object nor as a version its safekeeper's pieces chain to)",
            missing()
        );
    };
    let mut objects = Vec::with_capacity(v.pieces.len());
    for p in &v.pieces {
        let object = storage
            .get_bytes(&p.key, cancel)
            .await
            .with_context(|| format!("cannot read {}", p.key))?;
        objects.push(object);
    }
    assemble(v, objects).map_err(|e| anyhow::anyhow!("{key}: {e}"))
}
