//! The configuration reference in README.md is generated from the CLI definition and must match
//! it: the `safekeeper run` table (flag, environment variable, config-file key, meaning) from
//! `RunArgs`, and the `--help` of the demo and recovery commands from the built binary.
//!
//! After changing a flag or its doc comment, regenerate the README blocks with:
//!     UPDATE_README=1 cargo test -p safekeeper --test readme_reference

use std::path::PathBuf;
use std::process::Command;

use clap::{ArgAction, Args};
use safekeeper::process::config::{RunArgs, ServiceConfig};

const RUN_BEGIN: &str = "<!-- run-flags:begin -->";
const RUN_END: &str = "<!-- run-flags:end -->";
const HELP_BEGIN: &str = "<!-- cli-help:begin -->";
const HELP_END: &str = "<!-- cli-help:end -->";

/// Flags that are keys of a `[[cluster]]` entry in the config file (flag name, key).
const CLUSTER_KEYS: [(&str, &str); 4] = [
    ("cluster", "name"),
    ("primary", "primary"),
    ("slot", "slot"),
    ("application_name", "application_name"),
];

/// Subcommands whose `--help` the README reproduces.
const HELP_COMMANDS: [&[&str]; 9] = [
    &["demo"],
    &["backup"],
    &["restore"],
    &["restore-wal"],
    &["recover"],
    &["remote", "ls"],
    &["remote", "verify"],
    &["remote", "prune"],
    &["remote", "retention"],
];

fn readme_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md")
}

/// Where a flag lives in the config file: a top-level key, a `[[cluster]]` key, or nowhere.
enum FileKey {
    Top(String),
    Cluster(&'static str),
    None,
}

fn file_key(long: &str) -> FileKey {
    let key = long.replace('-', "_");
    if key == "config" {
        return FileKey::None;
    }
    match CLUSTER_KEYS.iter().find(|(flag, _)| *flag == key) {
        Some((_, k)) => FileKey::Cluster(k),
        None => FileKey::Top(key),
    }
}

/// `<`, `>` and `|` escaped outside backtick spans, so help text renders as written.
fn markdown_cell(text: &str) -> String {
    text.split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 {
                part.replace('|', "\\|")
            } else {
                part.replace('<', "&lt;")
                    .replace('>', "&gt;")
                    .replace('|', "\\|")
            }
        })
        .collect::<Vec<_>>()
        .join("`")
}

fn run_flags_block() -> String {
    let cmd = RunArgs::augment_args(clap::Command::new("run"));
    let mut out =
        String::from("| flag | environment | config file key | meaning |\n|---|---|---|---|\n");
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" {
            continue;
        }
        let flag = match (arg.get_action(), arg.get_value_names()) {
            (ArgAction::SetTrue, _) => format!("`--{long}`"),
            (_, Some(names)) => format!("`--{long} {}`", names[0]),
            _ => format!("`--{long}`"),
        };
        let env = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_else(|| "–".into());
        let key = match file_key(long) {
            FileKey::Top(k) => format!("`{k}`"),
            FileKey::Cluster(k) => format!("`[[cluster]]` `{k}`"),
            FileKey::None => "–".into(),
        };
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        out.push_str(&format!(
            "| {flag} | {env} | {key} | {} |\n",
            markdown_cell(&help)
        ));
    }
    out
}

fn cli_help_block() -> String {
    let mut out = String::new();
    for args in HELP_COMMANDS {
        let output = Command::new(env!("CARGO_BIN_EXE_safekeeper"))
            .args(args)
            .arg("--help")
            // The help shows the current value of every env-backed flag: show none.
            .env_clear()
            .output()
            .expect("run the safekeeper binary");
        assert!(output.status.success(), "{args:?} --help failed");
        let help = String::from_utf8(output.stdout).expect("UTF-8 help");
        // clap indents blank lines; keep the README free of trailing spaces.
        let help: Vec<&str> = help.lines().map(str::trim_end).collect();
        out.push_str(&format!(
            "<details><summary><code>safekeeper {} --help</code></summary>\n\n```text\n{}\n```\n\n</details>\n",
            args.join(" "),
            help.join("\n").trim_end()
        ));
    }
    out
}

/// Replaces the text between `begin` and `end` (markers kept); `None` if a marker is missing.
fn splice(text: &str, begin: &str, end: &str, body: &str) -> Option<String> {
    let start = text.find(begin)? + begin.len();
    let stop = start + text[start..].find(end)?;
    Some(format!("{}\n{}{}", &text[..start], body, &text[stop..]))
}

#[test]
fn readme_reference_matches_the_cli() {
    let path = readme_path();
    let readme = std::fs::read_to_string(&path).expect("read README.md");
    let updated = splice(&readme, RUN_BEGIN, RUN_END, &run_flags_block())
        .and_then(|t| splice(&t, HELP_BEGIN, HELP_END, &cli_help_block()))
        .unwrap_or_else(|| {
            panic!("README.md lacks the markers {RUN_BEGIN}/{RUN_END} or {HELP_BEGIN}/{HELP_END}")
        });
    if std::env::var_os("UPDATE_README").is_some() {
        if updated != readme {
            std::fs::write(&path, &updated).expect("write README.md");
        }
        return;
    }
    if updated != readme {
        let first_diff = readme
            .lines()
            .zip(updated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(readme.lines().count().min(updated.lines().count()));
        panic!(
            "README.md's configuration reference does not match the CLI (first difference at \
             line {}). Regenerate it with:\n    UPDATE_README=1 cargo test -p safekeeper --test \
             readme_reference",
            first_diff + 1
        );
    }
}

/// Every key the table names is one the config file accepts (an unknown key is an error that
/// says "unknown field"); values of the wrong type are fine here, only the name is checked.
#[test]
fn config_keys_in_the_table_are_accepted_by_the_config_file() {
    let cmd = RunArgs::augment_args(clap::Command::new("run"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sk.toml");
    let mut checked = 0;
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        let toml = match file_key(long) {
            FileKey::Top(k) => format!("{k} = \"x\"\n"),
            FileKey::Cluster("name") => "[[cluster]]\nname = \"a\"\nprimary = \"host=x\"\n".into(),
            FileKey::Cluster("primary") => "[[cluster]]\nname = \"a\"\nprimary = \"x\"\n".into(),
            FileKey::Cluster(k) => {
                format!("[[cluster]]\nname = \"a\"\nprimary = \"x\"\n{k} = \"x\"\n")
            }
            FileKey::None => continue,
        };
        std::fs::write(&path, &toml).unwrap();
        let args = RunArgs {
            config: Some(path.clone()),
            ..RunArgs::default()
        };
        if let Err(e) = ServiceConfig::resolve(&args) {
            let text = format!("{e:#}");
            assert!(
                !text.contains("unknown field"),
                "--{long}: the config file does not accept {toml:?}: {text}"
            );
        }
        checked += 1;
    }
    assert!(checked > 10, "only {checked} keys checked");
}
