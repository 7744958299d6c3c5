//! Is this safekeeper still one the primary waits for? The replication protocol never says, so
//! the observer asks: a short replication session runs `SHOW synchronous_standby_names` on the
//! primary, and [`names_standby`] reads the setting as PostgreSQL does (plain list, `FIRST n
//! (...)`, `ANY n (...)`, `*`, quoted names; names compared case-insensitively).
//!
//! "Listed" means the primary may wait for this safekeeper's flush: the synchronous standby, one
//! of a quorum, or a potential standby of a `FIRST n` list. Not listed means its commits never
//! wait for it, whatever the safekeeper holds.
//!
//! Invariants: the probe is a separate session that never touches the follower's; it runs at
//! most once per [`PROBE_INTERVAL`] per cluster and is bounded by [`PROBE_TIMEOUT`]; an error is
//! "unknown", never "not listed"; the connection string is never part of a message.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::pg::{ConnInfo, ReplicationConnection};

/// How often a streaming cluster's primary is asked.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(30);
/// The `application_name` of the probe's session.
pub(crate) const PROBE_APPLICATION_NAME: &str = "safekeeper-sync-probe";
/// Bound on one probe, connection included.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads `synchronous_standby_names` from the primary of `primary` (a connection string).
pub(crate) async fn probe(primary: &str) -> Result<String> {
    let mut info = ConnInfo::parse(primary).context("invalid connection string")?;
    // Never the follower's name: a walsender under it would look like a second standby.
    info.application_name = Some(PROBE_APPLICATION_NAME.to_string());
    let session = async {
        let (mut conn, _) = ReplicationConnection::connect_any(&info).await?;
        let value = conn.show("synchronous_standby_names").await;
        conn.close().await;
        value
    };
    tokio::time::timeout(PROBE_TIMEOUT, session)
        .await
        .context("timed out")?
        .context("SHOW synchronous_standby_names failed")
}

/// Whether `setting` (the value of `synchronous_standby_names`) names `application_name`.
pub(crate) fn names_standby(setting: &str, application_name: &str) -> bool {
    list_of(setting)
        .iter()
        .any(|name| name == "*" || name.eq_ignore_ascii_case(application_name))
}

/// The standby names of a setting, quotes removed.
fn list_of(setting: &str) -> Vec<String> {
    let mut rest = setting.trim();
    // `FIRST n (...)`, `ANY n (...)`: the keyword counts only when a number follows.
    for keyword in ["FIRST", "ANY"] {
        if let Some(head) = rest.get(..keyword.len())
            && head.eq_ignore_ascii_case(keyword)
            && rest[keyword.len()..]
                .trim_start()
                .starts_with(|c: char| c.is_ascii_digit())
            && rest[keyword.len()..].starts_with(char::is_whitespace)
        {
            rest = rest[keyword.len()..].trim_start();
        }
    }
    // `n (...)`
    let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits > 0 && rest[digits..].trim_start().starts_with('(') {
        rest = rest[digits..].trim_start();
    }
    if let Some(inner) = rest.strip_prefix('(').and_then(|r| r.strip_suffix(')')) {
        rest = inner;
    }
    split_names(rest)
}

/// Splits a comma-separated list of names, some double-quoted (`""` is a quote inside one).
fn split_names(list: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut current = String::new();
    let mut chars = list.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                current.push('"');
            }
            '"' => quoted = !quoted,
            ',' if !quoted => names.push(std::mem::take(&mut current)),
            c if c.is_whitespace() && !quoted => {}
            c => current.push(c),
        }
    }
    names.push(current);
    names.retain(|n| !n.is_empty());
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_of_the_setting_is_read_as_postgresql_does() {
        let me = "safekeeper1";
        for listed in [
            "safekeeper1",
            "SafeKeeper1",
            "other, safekeeper1",
            "FIRST 1 (other, safekeeper1)",
            "first 2(safekeeper1)",
            "ANY 1 (sk2, safekeeper1, sk3)",
            "2 (a, safekeeper1)",
            "*",
            "FIRST 1 (*)",
            "\"safekeeper1\"",
            " ANY 2 ( \"x,y\" , safekeeper1 ) ",
        ] {
            assert!(names_standby(listed, me), "{listed:?}");
        }
        for not_listed in [
            "",
            "   ",
            "other",
            "safekeeper10",
            "FIRST 1 (safekeeper2)",
            "\"safekeeper1,x\"",
            "ANY 1 (sk2)",
        ] {
            assert!(!names_standby(not_listed, me), "{not_listed:?}");
        }
        // A standby really called "first" or "any" is a name, not a keyword.
        assert!(names_standby("first", "first"));
        assert!(names_standby("any, b", "any"));
        assert_eq!(list_of("FIRST 1 (a, \"b\"\"c\")"), vec!["a", "b\"c"]);
    }
}
