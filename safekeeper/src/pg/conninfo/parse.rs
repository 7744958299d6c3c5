//! Lexing of the two libpq connection string syntaxes into `(keyword, value)` pairs, and the
//! table of accepted keywords.
//!
//! Invariant: the output of both syntaxes goes through the same [`Settings::set`], so a keyword
//! is accepted, ignored or rejected identically whichever form it came in; later occurrences of
//! a keyword override earlier ones.

use crate::pg::PgError;

/// Raw (not yet defaulted) values of the keywords we act on.
#[derive(Default, Debug)]
pub(super) struct Settings {
    pub host: Option<String>,
    pub port: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub passfile: Option<String>,
    pub dbname: Option<String>,
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
    pub application_name: Option<String>,
    pub fallback_application_name: Option<String>,
    pub connect_timeout: Option<String>,
    pub target_session_attrs: Option<String>,
    pub options: Option<String>,
}

impl Settings {
    pub(super) fn set(&mut self, key: &str, value: String) -> Result<(), PgError> {
        let slot = match key {
            "host" => &mut self.host,
            "port" => &mut self.port,
            "user" => &mut self.user,
            "password" => &mut self.password,
            "passfile" => &mut self.passfile,
            "dbname" => &mut self.dbname,
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "application_name" => &mut self.application_name,
            "fallback_application_name" => &mut self.fallback_application_name,
            "connect_timeout" => &mut self.connect_timeout,
            "target_session_attrs" => &mut self.target_session_attrs,
            "options" => &mut self.options,
            // Accepted for compatibility; the session kind is chosen by the caller's API, TCP
            // keepalives are always on, and the rest only tune behaviour we do not implement.
            "replication"
            | "keepalives"
            | "keepalives_idle"
            | "keepalives_interval"
            | "keepalives_count"
            | "tcp_user_timeout"
            | "sslcompression"
            | "sslsni"
            | "client_encoding"
            | "ssl_min_protocol_version"
            | "ssl_max_protocol_version"
            | "krbsrvname"
            | "gsslib" => return Ok(()),
            "gssencmode" if value != "require" => return Ok(()),
            "channel_binding" if value != "require" => return Ok(()),
            "gssencmode" | "channel_binding" => {
                return Err(PgError::Config(format!("{key}=require is not supported")));
            }
            "hostaddr" | "sslcert" | "sslkey" | "sslpassword" | "sslcrl" | "sslcrldir"
            | "service" | "requirepeer" | "require_auth" | "load_balance_hosts"
            | "sslnegotiation" | "sslcertmode" => {
                return Err(PgError::Config(format!(
                    "connection option \"{key}\" is not supported"
                )));
            }
            "ssl" => {
                // JDBC-style URI parameter; libpq maps ssl=true to sslmode=require.
                if matches!(value.as_str(), "true" | "1" | "on") {
                    self.sslmode = Some("require".to_owned());
                }
                return Ok(());
            }
            _ => {
                return Err(PgError::Config(format!(
                    "invalid connection option \"{key}\""
                )));
            }
        };
        *slot = Some(value);
        Ok(())
    }
}

pub(super) fn is_uri(s: &str) -> bool {
    s.starts_with("postgresql://") || s.starts_with("postgres://")
}

/// `keyword = value` pairs separated by whitespace; values may be single-quoted; a backslash
/// escapes the next character in both quoted and unquoted values.
pub(super) fn parse_keyword_value(s: &str) -> Result<Vec<(String, String)>, PgError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(PgError::Config(format!(
                "missing \"=\" after \"{key}\" in connection info string"
            )));
        }
        if key.is_empty() {
            return Err(PgError::Config(
                "missing keyword before \"=\" in connection info string".into(),
            ));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => {
                        return Err(PgError::Config(
                            "unterminated quoted string in connection info string".into(),
                        ));
                    }
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

/// `postgresql://[user[:password]@][host[:port]][,...][/dbname][?key=value[&...]]`, with
/// percent-decoding of every component and `[v6addr]` host syntax.
pub(super) fn parse_uri(s: &str) -> Result<Vec<(String, String)>, PgError> {
    let rest = s
        .strip_prefix("postgresql://")
        .or_else(|| s.strip_prefix("postgres://"))
        .ok_or_else(|| PgError::Config(format!("invalid URI prefix in \"{s}\"")))?;
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (rest, None),
    };
    let mut out = Vec::new();
    let hostlist = match authority.split_once('@') {
        Some((userinfo, hosts)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                out.push(("user".to_owned(), percent_decode(user)?));
            }
            if let Some(p) = password {
                out.push(("password".to_owned(), percent_decode(p)?));
            }
            hosts
        }
        None => authority,
    };
    if !hostlist.is_empty() {
        let mut hosts = Vec::new();
        let mut ports = Vec::new();
        for spec in hostlist.split(',') {
            let (host, port) = split_host_port(spec, s)?;
            hosts.push(percent_decode(host)?);
            ports.push(percent_decode(port.unwrap_or(""))?);
        }
        out.push(("host".to_owned(), hosts.join(",")));
        if ports.iter().any(|p| !p.is_empty()) {
            out.push(("port".to_owned(), ports.join(",")));
        }
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        out.push(("dbname".to_owned(), percent_decode(db)?));
    }
    for param in query.into_iter().flat_map(|q| q.split('&')) {
        if param.is_empty() {
            continue;
        }
        let (key, value) = param.split_once('=').ok_or_else(|| {
            PgError::Config(format!(
                "missing key/value separator \"=\" in URI query parameter: \"{param}\""
            ))
        })?;
        out.push((percent_decode(key)?, percent_decode(value)?));
    }
    Ok(out)
}

fn split_host_port<'a>(spec: &'a str, uri: &str) -> Result<(&'a str, Option<&'a str>), PgError> {
    if let Some(v6) = spec.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| {
            PgError::Config(format!(
                "end of string reached when looking for matching \"]\" in IPv6 host address in URI: \"{uri}\""
            ))
        })?;
        if host.is_empty() {
            return Err(PgError::Config(format!(
                "IPv6 host address may not be empty in URI: \"{uri}\""
            )));
        }
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err(PgError::Config(format!(
                    "unexpected character after IPv6 host address in URI: \"{uri}\""
                ))),
            },
        };
    }
    Ok(match spec.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (spec, None),
    })
}

fn percent_decode(s: &str) -> Result<String, PgError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    PgError::Config(format!("invalid percent-encoded token: \"{s}\""))
                })?;
            if hex == 0 {
                return Err(PgError::Config(format!(
                    "forbidden value %00 in percent-encoded value: \"{s}\""
                )));
            }
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| PgError::Config(format!("percent-decoded value is not UTF-8: \"{s}\"")))
}
