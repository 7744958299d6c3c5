//! libpq connection strings: `key=value` and `postgresql://` URI forms, environment defaults.
//!
//! Owns the translation of a user-supplied connection string plus `PG*` environment variables
//! into a validated [`ConnInfo`]. Invariants: a `ConnInfo` always has at least one host, every
//! port is non-zero, and an explicit setting always wins over the environment, which wins over
//! the built-in default (as in libpq). Passwords from `~/.pgpass` are looked up per host at
//! connect time ([`ConnInfo::password_for`]) because the file matches on host and port.
//! Parsing touches the filesystem only to look for the default `~/.postgresql/root.crt`.

mod parse;
mod pgpass;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::PgError;

pub use pgpass::lookup_pgpass;

/// `sslmode` as in libpq (`allow` is treated as `prefer`). Like libpq, TLS is never attempted
/// over unix sockets, whatever the mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it, no certificate check; plaintext otherwise.
    Prefer,
    /// TLS required; the certificate is checked only if a root certificate file is configured
    /// (then it behaves as `VerifyCa`, like libpq).
    Require,
    /// TLS with a certificate chain verified against the root certificates.
    VerifyCa,
    /// `VerifyCa` plus the host name must match the certificate.
    VerifyFull,
}

/// `target_session_attrs` as in libpq; used by [`super::ReplicationConnection::connect_any`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetSessionAttrs {
    Any,
    /// For replication sessions the same as `Primary` (not in recovery).
    ReadWrite,
    /// For replication sessions the same as `Standby` (in recovery).
    ReadOnly,
    Primary,
    Standby,
    PreferStandby,
}

/// A parsed, defaulted connection specification.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// `(host, port)` candidates in order. A host starting with `/` is a unix socket directory.
    pub hosts: Vec<(String, u16)>,
    pub user: String,
    /// Explicit password (connection string or `PGPASSWORD`).
    pub password: Option<String>,
    /// Password file consulted when `password` is `None` (`passfile`, `PGPASSFILE`, `~/.pgpass`).
    pub passfile: Option<PathBuf>,
    /// Database name; ignored by the server for physical replication sessions.
    pub dbname: Option<String>,
    pub sslmode: SslMode,
    /// Root certificates (PEM). `system` means the built-in web PKI roots.
    pub sslrootcert: Option<PathBuf>,
    pub application_name: Option<String>,
    /// `None` waits forever.
    pub connect_timeout: Option<Duration>,
    pub target_session_attrs: TargetSessionAttrs,
    /// Command-line options for the server backend (`options=-c foo=bar`).
    pub options: Option<String>,
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnInfo")
            .field("hosts", &self.hosts)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("passfile", &self.passfile)
            .field("dbname", &self.dbname)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("target_session_attrs", &self.target_session_attrs)
            .field("options", &self.options)
            .finish()
    }
}

/// Default port when neither the string nor `PGPORT` gives one.
pub const DEFAULT_PORT: u16 = 5432;
/// Default host when neither the string nor `PGHOST` gives one.
pub const DEFAULT_HOST: &str = "127.0.0.1";

impl ConnInfo {
    /// Parses a connection string using the process environment for defaults.
    pub fn parse(s: &str) -> Result<ConnInfo, PgError> {
        Self::parse_with_env(s, &|name| std::env::var(name).ok())
    }

    /// Parses a connection string with `env` standing in for the process environment
    /// (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGPASSFILE`, `PGDATABASE`, `PGSSLMODE`,
    /// `PGSSLROOTCERT`, `PGAPPNAME`, `PGCONNECT_TIMEOUT`, `PGTARGETSESSIONATTRS`, `PGOPTIONS`,
    /// `HOME`).
    pub fn parse_with_env(
        s: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ConnInfo, PgError> {
        let pairs = if parse::is_uri(s) {
            parse::parse_uri(s)?
        } else {
            parse::parse_keyword_value(s)?
        };
        let mut settings = parse::Settings::default();
        for (key, value) in pairs {
            settings.set(&key, value)?;
        }
        build(settings, env)
    }

    /// The password to use for `hosts[host_index]`: the explicit one, else the matching
    /// password-file entry. The database matched is `dbname`, or `replication` when unset (as
    /// pg_receivewal does; this is meant for replication sessions).
    pub fn password_for(&self, host_index: usize) -> Option<String> {
        if let Some(p) = &self.password {
            return Some(p.clone());
        }
        let (host, port) = self.hosts.get(host_index)?;
        let file = self.passfile.as_deref()?;
        let db = self.dbname.as_deref().unwrap_or("replication");
        lookup_pgpass(file, host, *port, db, &self.user)
    }
}

/// Whether `host` names a unix socket directory rather than a network host.
pub fn is_unix_socket_dir(host: &str) -> bool {
    host.starts_with('/')
}

/// Path of the socket file for a unix socket directory and port.
pub fn unix_socket_path(dir: &str, port: u16) -> PathBuf {
    Path::new(dir).join(format!(".s.PGSQL.{port}"))
}

fn build(s: parse::Settings, env: &dyn Fn(&str) -> Option<String>) -> Result<ConnInfo, PgError> {
    let get = |explicit: Option<String>, var: &str| {
        explicit.or_else(|| env(var).filter(|v| !v.is_empty()))
    };
    let host_list = get(s.host, "PGHOST").unwrap_or_default();
    let port_list = get(s.port, "PGPORT").unwrap_or_default();
    let hosts = combine_hosts(&host_list, &port_list)?;

    let user = match get(s.user, "PGUSER") {
        Some(u) => u,
        None => pgpass::os_user_name().ok_or_else(|| {
            PgError::Config("no user given and the OS user name is unknown".into())
        })?,
    };
    let home = env("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(pgpass::os_home_dir);
    let passfile = get(s.passfile, "PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".pgpass")));
    let sslmode = match get(s.sslmode, "PGSSLMODE") {
        Some(m) => parse_sslmode(&m)?,
        None => SslMode::Prefer,
    };
    let sslrootcert = get(s.sslrootcert, "PGSSLROOTCERT")
        .map(PathBuf::from)
        .or_else(|| {
            let default = home.as_ref()?.join(".postgresql").join("root.crt");
            default.is_file().then_some(default)
        });
    let connect_timeout = match get(s.connect_timeout, "PGCONNECT_TIMEOUT") {
        Some(t) => parse_timeout(&t)?,
        None => None,
    };
    let target_session_attrs = match get(s.target_session_attrs, "PGTARGETSESSIONATTRS") {
        Some(t) => parse_target_session_attrs(&t)?,
        None => TargetSessionAttrs::Any,
    };
    Ok(ConnInfo {
        hosts,
        user,
        password: get(s.password, "PGPASSWORD"),
        passfile,
        dbname: get(s.dbname, "PGDATABASE"),
        sslmode,
        sslrootcert,
        application_name: get(s.application_name, "PGAPPNAME").or(s.fallback_application_name),
        connect_timeout,
        target_session_attrs,
        options: get(s.options, "PGOPTIONS"),
    })
}

/// Pairs comma-separated host and port lists like libpq: one port applies to every host,
/// otherwise the counts must match; an empty element takes the default.
fn combine_hosts(hosts: &str, ports: &str) -> Result<Vec<(String, u16)>, PgError> {
    let hosts: Vec<&str> = hosts.split(',').map(str::trim).collect();
    let ports: Vec<&str> = ports.split(',').map(str::trim).collect();
    if ports.len() != 1 && ports.len() != hosts.len() {
        return Err(PgError::Config(format!(
            "could not match {} port numbers to {} hosts",
            ports.len(),
            hosts.len()
        )));
    }
    let mut out = Vec::with_capacity(hosts.len());
    for (i, host) in hosts.iter().enumerate() {
        let port = ports[if ports.len() == 1 { 0 } else { i }];
        let port = if port.is_empty() {
            DEFAULT_PORT
        } else {
            match port.parse::<u16>() {
                Ok(p) if p != 0 => p,
                _ => {
                    return Err(PgError::Config(format!("invalid port number: \"{port}\"")));
                }
            }
        };
        let host = if host.is_empty() { DEFAULT_HOST } else { host };
        out.push((host.to_owned(), port));
    }
    Ok(out)
}

fn parse_sslmode(s: &str) -> Result<SslMode, PgError> {
    Ok(match s {
        "disable" => SslMode::Disable,
        "allow" | "prefer" => SslMode::Prefer,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        _ => return Err(PgError::Config(format!("invalid sslmode value: \"{s}\""))),
    })
}

/// libpq semantics: seconds; zero or negative waits forever; 1 is raised to 2.
fn parse_timeout(s: &str) -> Result<Option<Duration>, PgError> {
    let secs: i64 = s.trim().parse().map_err(|_| {
        PgError::Config(format!(
            "invalid integer value \"{s}\" for connection option \"connect_timeout\""
        ))
    })?;
    Ok((secs > 0).then(|| Duration::from_secs(secs.max(2) as u64)))
}

fn parse_target_session_attrs(s: &str) -> Result<TargetSessionAttrs, PgError> {
    Ok(match s {
        "any" => TargetSessionAttrs::Any,
        "read-write" => TargetSessionAttrs::ReadWrite,
        "read-only" => TargetSessionAttrs::ReadOnly,
        "primary" => TargetSessionAttrs::Primary,
        "standby" => TargetSessionAttrs::Standby,
        "prefer-standby" => TargetSessionAttrs::PreferStandby,
        _ => {
            return Err(PgError::Config(format!(
                "invalid target_session_attrs value: \"{s}\""
            )));
        }
    })
}
