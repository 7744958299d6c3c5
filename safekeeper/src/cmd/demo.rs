//! `safekeeper demo`: the whole promise on one machine, no cloud account. A throwaway primary
//! commits, the safekeeper (its synchronous standby) makes every commit durable and archives it
//! in a local directory, the primary is destroyed, and a new one recovered from the archive
//! alone has every committed row.
//!
//! Owns the orchestration and what the newcomer reads. Invariants:
//! - nothing is written outside the demo directory (`--dir`, default `./.demo`): servers listen
//!   on 127.0.0.1 with no unix socket, and an existing directory is reused only if an earlier
//!   demo made it;
//! - every process it starts is stopped by its PID (the safekeeper through its child handle,
//!   PostgreSQL through the PID in `postmaster.pid`), on success, failure and Ctrl-C; the
//!   safekeeper child also gets SIGTERM if the demo itself dies;
//! - every wait is bounded;
//! - exit 0 only when the recovered row count equals the acknowledged commit count. On failure
//!   the directory is kept for inspection; on success it is removed unless `--keep`.
//!
//! Submodules: [`postgres`] (binaries, OS user, one server), [`child`] (the safekeeper process),
//! [`load`] (the write load), [`archive_view`] (what the archive holds), [`recovery`] (base backup
//! and recovery through restore-wal), [`workdir`] (the demo directory).

mod archive_view;
mod child;
mod load;
mod postgres;
mod recovery;
mod workdir;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;

use crate::pg::{format_lsn, parse_lsn};

use child::SafekeeperChild;
use load::Limit;
use postgres::{OsUser, PgTools, Server, free_port};

const STEPS: usize = 7;
const APP_NAME: &str = "safekeeper1";

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Keep the demo directory at the end (every process is stopped either way).
    #[arg(long)]
    pub keep: bool,

    /// Directory for everything the demo creates; nothing is written outside it.
    #[arg(long, default_value = "./.demo", value_name = "DIR")]
    pub dir: PathBuf,

    /// Stop the write load after this many commits instead of after --seconds.
    #[arg(long, value_name = "N", conflicts_with = "seconds",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub rows: Option<u64>,

    /// How long the write load runs.
    #[arg(long, default_value_t = 3, value_name = "S",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub seconds: u64,
}

pub fn run(args: DemoArgs) -> ExitCode {
    match prepare(&args) {
        Ok(mut demo) => demo.run(),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Everything that can fail before anything is created.
fn prepare(args: &DemoArgs) -> Result<Demo> {
    let bindir = postgres::find_bindir()?;
    let user = OsUser::for_postgres()?;
    if user.is_some() {
        // Files the safekeeper writes must stay readable by the PostgreSQL user (restore_command).
        // SAFETY: umask has no preconditions.
        unsafe { libc::umask(0o022) };
    }
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let dir: PathBuf = cwd.join(&args.dir).components().collect();
    let exe = std::env::current_exe().context("cannot find the safekeeper executable")?;
    Ok(Demo {
        limit: match args.rows {
            Some(n) => Limit::Rows(n),
            None => Limit::Time(Duration::from_secs(args.seconds)),
        },
        keep: args.keep,
        pg: PgTools { bindir, user },
        primary: Server::new(&dir.join("primary"), 0),
        recovered: Server::new(&dir.join("new-primary"), 0),
        remote_url: format!("file://{}", dir.join("remote").display()),
        restore_exe: exe.clone(),
        exe,
        sk: None,
        sk_log: dir.join("safekeeper.log"),
        cwd,
        dir,
    })
}

struct Demo {
    limit: Limit,
    keep: bool,
    dir: PathBuf,
    cwd: PathBuf,
    pg: PgTools,
    primary: Server,
    recovered: Server,
    remote_url: String,
    /// This executable: runs the safekeeper.
    exe: PathBuf,
    /// The executable in restore_command (a copy inside the directory if the PostgreSQL user
    /// cannot run `exe`).
    restore_exe: PathBuf,
    sk: Option<SafekeeperChild>,
    sk_log: PathBuf,
}

struct Outcome {
    committed: u64,
    recovered: u64,
}

impl Demo {
    fn run(&mut self) -> ExitCode {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: cannot start the async runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        let result = rt.block_on(async {
            tokio::select! {
                r = self.steps() => r,
                _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
            }
        });
        rt.block_on(self.stop_everything());
        let ok = match &result {
            Ok(o) if o.committed == o.recovered => {
                println!(
                    "\ncommitted {}, recovered {}: every committed row came back from the archive.",
                    o.committed, o.recovered
                );
                true
            }
            Ok(o) => {
                println!(
                    "\ncommitted {}, recovered {}: MISMATCH, {} committed rows are missing.",
                    o.committed,
                    o.recovered,
                    o.committed.abs_diff(o.recovered)
                );
                false
            }
            Err(e) => {
                eprintln!("\nerror: {e:#}");
                false
            }
        };
        if ok && !self.keep {
            if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                eprintln!("warning: cannot remove {}: {e}", self.show(&self.dir));
            }
        } else if self.dir.join(workdir::MARKER).exists() {
            self.print_kept(ok);
        }
        if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }

    /// The seven steps, in order; each prints its heading and what it did.
    async fn steps(&mut self) -> Result<Outcome> {
        self.introduce().await?;
        self.start_primary().await?;
        self.follow_synchronously().await?;
        self.take_base_backup().await?;
        let (committed, flush) = self.write_rows().await?;
        self.show_archive(flush).await?;
        self.destroy_primary().await?;
        let recovered = self.recover_from_archive().await?;
        Ok(Outcome {
            committed,
            recovered,
        })
    }

    /// Creates the demo directory and says what is about to happen.
    async fn introduce(&mut self) -> Result<()> {
        let version = self.pg.version().await?;
        self.restore_exe = workdir::create(
            &self.dir,
            &self.pg,
            [&self.primary, &self.recovered],
            &self.exe,
        )
        .await?;
        println!(
            "safekeeper demo: a primary commits rows, each COMMIT returns only once the \
             safekeeper has\nfsynced its WAL, the safekeeper archives that WAL, the primary is \
             destroyed, and a new primary\nis rebuilt from a base backup and the archive alone. \
             Then the rows are counted.\n\n\
             PostgreSQL {version} from {}; everything lives in {}",
            self.pg.bindir.display(),
            self.show(&self.dir)
        );
        Ok(())
    }

    /// Step 1.
    async fn start_primary(&mut self) -> Result<()> {
        step(1, "A throwaway primary");
        self.primary.port = free_port()?;
        workdir::server_dir(&self.pg, &self.dir.join("primary"))?;
        self.primary.initdb(&self.pg).await?;
        self.primary.start(&self.pg).await?;
        detail(format!(
            "127.0.0.1:{}, data directory {}",
            self.primary.port,
            self.show(&self.primary.data)
        ));
        Ok(())
    }

    /// Step 2.
    async fn follow_synchronously(&mut self) -> Result<()> {
        step(2, "The safekeeper, the primary's synchronous standby");
        self.start_safekeeper().await?;
        self.make_synchronous().await?;
        detail(format!(
            "pg_stat_replication: {APP_NAME} streaming, sync_state = sync \
             (synchronous_standby_names = '{APP_NAME}')"
        ));
        detail(format!(
            "local WAL in {}, archive in {}",
            self.show(&self.dir.join("safekeeper/main/wal")),
            self.show(&self.dir.join("remote"))
        ));
        Ok(())
    }

    /// Step 3.
    async fn take_base_backup(&self) -> Result<()> {
        step(3, "A base backup, taken before any demo row exists");
        let b = recovery::base_backup(&self.remote_url, &self.primary).await?;
        detail(format!(
            "safekeeper backup into {}/main/basebackups/{}/: LSN {} to {}, {} in {} chunk(s)",
            self.show(&self.dir.join("remote")),
            b.id,
            format_lsn(b.start_lsn),
            format_lsn(b.end_lsn),
            crate::archive::human_bytes(b.tar_bytes()),
            b.archives.iter().map(|a| a.chunks.len()).sum::<usize>()
        ));
        Ok(())
    }

    /// Step 4: the acknowledged commit count and the primary's flush LSN after the load.
    async fn write_rows(&self) -> Result<(u64, u64)> {
        step(4, "Writes: every COMMIT waits for the safekeeper's fsync");
        self.primary.sql(load::CREATE_TABLE).await?;
        let started = Instant::now();
        let committed = load::write_load(&self.primary, 2, self.limit).await?;
        let (flush, sk_flush) = self.lsns().await?;
        detail(format!(
            "{committed} single-row commits acknowledged to 2 connections in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
        detail(format!(
            "primary flushed WAL up to {}, safekeeper flushed up to {}",
            format_lsn(flush),
            format_lsn(sk_flush)
        ));
        Ok((committed, flush))
    }

    /// Step 5: waits until the archive covers `flush`.
    async fn show_archive(&self, flush: u64) -> Result<()> {
        step(5, "The archive (a local directory standing in for S3)");
        let archive =
            archive_view::wait_until_covered(&self.remote_url, flush, Duration::from_secs(60))
                .await
                .with_context(|| format!("see {}", self.show(&self.sk_log)))?;
        detail(format!(
            "{}/main/wal/:",
            self.show(&self.dir.join("remote"))
        ));
        for line in archive_view::render(&archive, flush) {
            detail(format!("  {line}"));
        }
        Ok(())
    }

    /// Step 6.
    async fn destroy_primary(&mut self) -> Result<()> {
        step(6, "Disaster: the primary is destroyed");
        let pid = self.primary.kill9().await?;
        std::fs::remove_dir_all(&self.primary.data)
            .with_context(|| format!("cannot delete {}", self.primary.data.display()))?;
        self.stop_safekeeper().await;
        detail(format!(
            "kill -9 {pid} (postmaster), {} deleted, safekeeper stopped",
            self.show(&self.primary.data)
        ));
        detail(format!(
            "from here on only {} is used",
            self.show(&self.dir.join("remote"))
        ));
        Ok(())
    }

    /// Step 7: the row count of the recovered primary.
    async fn recover_from_archive(&mut self) -> Result<u64> {
        step(
            7,
            "A new primary from the base backup and the archive alone",
        );
        self.recovered.port = free_port()?;
        workdir::server_dir(&self.pg, &self.dir.join("new-primary"))?;
        recovery::restore_latest(&self.pg, &self.remote_url, &self.recovered).await?;
        detail(format!(
            "safekeeper restore --latest into {}: the backup, checked against its manifest",
            self.show(&self.recovered.data)
        ));
        let command = recovery::restore_command(&self.restore_exe, &self.remote_url);
        detail(format!("restore_command = '{command}'"));
        recovery::recover(&self.pg, &self.recovered, &command).await?;
        self.describe_recovery().await?;
        self.recovered
            .sql_one("SELECT count(*) FROM demo_commits")
            .await?
            .parse()
            .context("count(*) is not a number")
    }

    /// What step 7's recovery restored and replayed, and the timeline it ended on.
    async fn describe_recovery(&self) -> Result<()> {
        let restored = recovery::restored_files(&self.recovered.log);
        let replayed = self
            .recovered
            .sql_one("SELECT pg_last_wal_replay_lsn()")
            .await?;
        let walfile = self
            .recovered
            .sql_one("SELECT pg_walfile_name(pg_current_wal_lsn())")
            .await?;
        let timeline = u32::from_str_radix(walfile.get(..8).unwrap_or("0"), 16).unwrap_or(0);
        detail(format!(
            "restored from the archive: {}",
            if restored.is_empty() {
                "nothing".to_string()
            } else {
                restored.join(", ")
            }
        ));
        detail(format!(
            "replayed up to {replayed}, then promoted: a primary on timeline {timeline}"
        ));
        Ok(())
    }

    async fn start_safekeeper(&mut self) -> Result<()> {
        let primary = format!(
            "host=127.0.0.1 port={} user=postgres sslmode=disable",
            self.primary.port
        );
        let http = format!("127.0.0.1:{}", free_port()?);
        let args: Vec<OsString> = vec![
            "--id".into(),
            "1".into(),
            "--cluster".into(),
            "main".into(),
            "--partial-interval".into(),
            "1s".into(),
            "--remote".into(),
            self.remote_url.clone().into(),
            "--http-addr".into(),
            http.into(),
            "--primary".into(),
            primary.into(),
            "--data-dir".into(),
            self.dir.join("safekeeper").into(),
        ];
        self.sk = Some(SafekeeperChild::spawn(&self.exe, args, &self.sk_log)?);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.check_safekeeper_alive()?;
            let state = self
                .primary
                .sql(&format!(
                    "SELECT state FROM pg_stat_replication WHERE application_name = '{APP_NAME}'"
                ))
                .await?;
            if state.first().and_then(|r| r.first().cloned().flatten()) == Some("streaming".into())
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the safekeeper is not streaming after 60 s: see {}",
                    self.show(&self.sk_log)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn check_safekeeper_alive(&mut self) -> Result<()> {
        match &mut self.sk {
            Some(sk) => sk.check_alive(),
            None => Ok(()),
        }
    }

    async fn make_synchronous(&mut self) -> Result<()> {
        self.primary
            .sql(&format!(
                "ALTER SYSTEM SET synchronous_standby_names = '{APP_NAME}'"
            ))
            .await?;
        self.primary.sql("SELECT pg_reload_conf()").await?;
        let query = format!(
            "SELECT sync_state FROM pg_stat_replication WHERE application_name = '{APP_NAME}'"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.primary.sql_one(&query).await.ok().as_deref() != Some("sync") {
            self.check_safekeeper_alive()?;
            if Instant::now() >= deadline {
                bail!("the safekeeper did not become the synchronous standby within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// The primary's flush LSN and the safekeeper's, from pg_stat_replication.
    async fn lsns(&self) -> Result<(u64, u64)> {
        let rows = self
            .primary
            .sql(&format!(
                "SELECT pg_current_wal_flush_lsn(), flush_lsn FROM pg_stat_replication \
                 WHERE application_name = '{APP_NAME}'"
            ))
            .await?;
        let row = rows
            .first()
            .context("the safekeeper left pg_stat_replication")?;
        let lsn = |i: usize| -> Result<u64> {
            let text = row
                .get(i)
                .cloned()
                .flatten()
                .unwrap_or_else(|| "0/0".into());
            Ok(parse_lsn(&text)?)
        };
        Ok((lsn(0)?, lsn(1)?))
    }

    async fn stop_safekeeper(&mut self) {
        if let Some(sk) = self.sk.take() {
            sk.stop().await;
        }
    }

    async fn stop_everything(&mut self) {
        self.stop_safekeeper().await;
        for (server, mode) in [(&self.recovered, "fast"), (&self.primary, "immediate")] {
            if let Err(e) = server.stop(&self.pg, mode).await {
                eprintln!("warning: {e:#}");
            }
        }
    }

    fn print_kept(&self, ok: bool) {
        let d = self.show(&self.dir);
        let logs: Vec<String> = [&self.primary.log, &self.sk_log, &self.recovered.log]
            .into_iter()
            .filter(|p| p.exists())
            .map(|p| self.show(p))
            .collect();
        println!(
            "\n{} {d} (every process is stopped). Logs: {}.",
            if ok { "Kept" } else { "Kept for inspection:" },
            if logs.is_empty() {
                "none".to_string()
            } else {
                logs.join(", ")
            }
        );
        if ok {
            println!(
                "Look around: {} remote ls --remote {}",
                self.exe.display(),
                self.remote_url
            );
        }
        println!("Remove it with: rm -rf {d}");
    }

    /// `path` relative to the current directory when it is under it.
    fn show(&self, path: &Path) -> String {
        match path.strip_prefix(&self.cwd) {
            Ok(rel) if !rel.as_os_str().is_empty() => rel.display().to_string(),
            _ => path.display().to_string(),
        }
    }
}

fn step(n: usize, title: &str) {
    println!("\n[{n}/{STEPS}] {title}");
}

fn detail(text: String) {
    println!("      {text}");
}
