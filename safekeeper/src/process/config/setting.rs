//! One service-wide setting of `safekeeper run`, picked by the precedence rule.
//!
//! Owns the rule and only the rule: the command-line flag wins, then its environment variable,
//! then the `--config` file, then the built-in default. clap already folds the environment
//! variable into the flag's value (`#[arg(env = "SAFEKEEPER_...")]`, where a flag given on the
//! command line beats the variable), so a setting gets two candidates, flag-or-env and file, and
//! its default last.
//!
//! Invariants: a value from a higher level is never replaced by one from a lower level; a default
//! is only computed when no level gave a value; nothing here validates, so every check and its
//! message stays with the caller.

/// The candidates for one setting, highest precedence first.
#[derive(Debug)]
pub(super) struct Setting<T> {
    flag: Option<T>,
    file: Option<T>,
}

impl<T: Clone> Setting<T> {
    /// `flag` is the clap field (flag or environment variable), `file` the config file's key.
    pub(super) fn new(flag: &Option<T>, file: &Option<T>) -> Setting<T> {
        Setting {
            flag: flag.clone(),
            file: file.clone(),
        }
    }
}

impl<T> Setting<T> {
    /// The value, or `default` when neither the flag, its variable nor the file gave one.
    pub(super) fn or(self, default: T) -> T {
        self.or_else(|| default)
    }

    /// Like [`Setting::or`], for a default that is built from other settings.
    pub(super) fn or_else(self, default: impl FnOnce() -> T) -> T {
        self.optional().unwrap_or_else(default)
    }

    /// The value of a setting without a default (unset means "off").
    pub(super) fn optional(self) -> Option<T> {
        self.flag.or(self.file)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::process::config::{RunArgs, ServiceConfig};

    #[test]
    fn the_flag_beats_the_file_and_the_default() {
        assert_eq!(Setting::new(&Some(1), &Some(2)).or(3), 1);
        assert_eq!(Setting::new(&Some(1), &None).or(3), 1);
        assert_eq!(Setting::new(&Some(1), &Some(2)).optional(), Some(1));
    }

    #[test]
    fn the_file_beats_the_default() {
        assert_eq!(Setting::new(&None, &Some(2)).or(3), 2);
        assert_eq!(Setting::new(&None, &Some(2)).optional(), Some(2));
    }

    #[test]
    fn the_default_only_fills_a_gap() {
        assert_eq!(Setting::<u32>::new(&None, &None).or(3), 3);
        assert_eq!(Setting::<u32>::new(&None, &None).optional(), None);
        let mut built = false;
        let v = Setting::new(&Some("flag"), &None).or_else(|| {
            built = true;
            "default"
        });
        assert_eq!(
            (v, built),
            ("flag", false),
            "a default is not built when unused"
        );
    }

    /// Names the directory of the child run of `flag_beats_env_beats_file_beats_default`.
    const PRECEDENCE_CHILD: &str = "SAFEKEEPER_CONFIG_TEST_PRECEDENCE_DIR";

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        if let Some(dir) = std::env::var_os(PRECEDENCE_CHILD) {
            return precedence_child(Path::new(&dir));
        }
        // clap reads the environment, and changing this process's environment would race with
        // the other tests, so the check runs in a child with its own environment.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("sk.toml"),
            "upload_parallelism = 5\nlocal_retention = \"64MiB\"\npartial_interval = \"500ms\"\n",
        )
        .unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap());
        child.args([
            "process::config::setting::tests::flag_beats_env_beats_file_beats_default",
            "--exact",
            "--test-threads=1",
        ]);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SAFEKEEPER_") {
                child.env_remove(name);
            }
        }
        let status = child
            .env(PRECEDENCE_CHILD, dir.path())
            .env("SAFEKEEPER_UPLOAD_PARALLELISM", "7")
            .env("SAFEKEEPER_LOCAL_RETENTION", "2MiB")
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "child failed: {status}");
        assert!(
            dir.path().join("checked").exists(),
            "the child ran no check"
        );
    }

    fn precedence_child(dir: &Path) {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        let config = dir.join("sk.toml");
        let argv = ["safekeeper", "--upload-parallelism", "9", "--config"];
        let cli = <Cli as clap::Parser>::try_parse_from(
            argv.iter().map(Into::into).chain([config.into_os_string()]),
        )
        .unwrap();
        let c = ServiceConfig::resolve(&cli.run).unwrap();
        // Flag (9) over env (7) over file (5).
        assert_eq!(c.offload.upload_parallelism, 9);
        // Env (2MiB) over file (64MiB).
        assert_eq!(c.offload.local_retention, 2 << 20);
        // File over default.
        assert_eq!(c.offload.partial_interval, Duration::from_millis(500));
        // Default.
        assert_eq!(c.status_interval, Duration::from_secs(10));
        std::fs::write(dir.join("checked"), "").unwrap();
    }
}
