//! `safekeeper keygen`: writes a new encryption key file, or appends a new key to one (rotation).
//!
//! Owns only the file handling; the key file format and its checks are `crate::encryption`'s.
//! Invariants: a new key file is created with mode 0600 and never overwrites an existing file
//! (overwriting a key file would make every object sealed with its keys unreadable); appending
//! first loads the existing file with every check of a reader (mode, format, unique IDs), so a
//! rotation never produces a file the safekeeper then refuses. The key is never printed.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::encryption::{KeyRing, check_id, new_key_base64};

/// Arguments of `keygen`.
#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// The key file to create (mode 0600; an existing file is never overwritten).
    #[arg(value_name = "PATH")]
    pub path: PathBuf,

    /// Append a new key to an existing key file instead: it becomes the writing key, the
    /// older ones keep reading what they sealed.
    #[arg(long)]
    pub append: bool,

    /// ID of the new key (1-32 letters, digits, '.', '_', '-'; default: the UTC time, e.g.
    /// 20261202T151916Z).
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
}

pub fn run(args: KeygenArgs) -> ExitCode {
    match keygen(&args) {
        Ok(id) => {
            let verb = if args.append { "appended" } else { "wrote" };
            println!(
                "{verb} key {id} to {} (the writing key from now on)",
                args.path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn keygen(args: &KeygenArgs) -> Result<String> {
    let id = match &args.id {
        Some(id) => id.clone(),
        None => humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            .to_string()
            .replace(['-', ':'], ""),
    };
    check_id(&id)?;
    let line = format!("{id} {}\n", new_key_base64());
    if args.append {
        append(&args.path, &id, &line)?;
    } else {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&args.path)
            .with_context(|| {
                format!(
                    "cannot create key file {} (an existing one is never overwritten: use --append to rotate)",
                    args.path.display()
                )
            })?;
        let header = "# safekeeper encryption keys: `ID BASE64KEY`, the last one seals new objects.\n\
                      # Losing this file makes the archive unreadable: keep a copy away from the bucket.\n";
        file.write_all(header.as_bytes())
            .and_then(|()| file.write_all(line.as_bytes()))
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write key file {}", args.path.display()))?;
    }
    Ok(id)
}

/// Appends `line` (key `id`) to the existing key file at `path`, after the checks of a reader.
fn append(path: &Path, id: &str, line: &str) -> Result<()> {
    let ring = KeyRing::load(path)?;
    if ring.get(id).is_some() {
        bail!("key file {} already has a key {id}", path.display());
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open key file {}", path.display()))?;
    let sep = if text.is_empty() || text.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    file.write_all(sep.as_bytes())
        .and_then(|()| file.write_all(line.as_bytes()))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write key file {}", path.display()))
}
