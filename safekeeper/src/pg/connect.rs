//! Session establishment: transport, TLS negotiation, startup packet, authentication and the
//! server's initial parameter reports up to the first ReadyForQuery.
//!
//! Invariants: the whole establishment of one host is bounded by `connect_timeout`; the
//! SSLRequest answer is read unbuffered so no plaintext byte can be injected ahead of the TLS
//! handshake; a password is looked up (including `.pgpass`) only when the server asks for one and
//! is never logged; with `sslmode=prefer` a failed TLS attempt is retried once in plaintext.

use std::collections::HashMap;

use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::net::{TcpSocket, UnixStream};

use super::conninfo::{is_unix_socket_dir, unix_socket_path};
use super::wire::{
    Body, PgStream, Wire, decode_error, decode_parameter_status, log_notice, tag_name,
};
use super::{ConnInfo, PgError, SessionKind, SslMode, tls};

/// A session that has reached its first ReadyForQuery.
pub(crate) struct Established {
    pub wire: Wire,
    pub params: HashMap<String, String>,
    pub backend_pid: i32,
    pub tls: bool,
}

/// Connects to `info.hosts[host_index]` and logs in.
pub(crate) async fn establish(
    info: &ConnInfo,
    host_index: usize,
    kind: SessionKind,
) -> Result<Established, PgError> {
    let Some((host, port)) = info.hosts.get(host_index) else {
        return Err(PgError::Config(format!(
            "host index {host_index} out of range: {} host(s) configured",
            info.hosts.len()
        )));
    };
    let all = async {
        let want_tls = info.sslmode != SslMode::Disable && !is_unix_socket_dir(host);
        match attempt(info, host_index, kind, want_tls).await {
            Err(e) if want_tls && info.sslmode == SslMode::Prefer && retry_in_plaintext(&e) => {
                tracing::info!(
                    "TLS session with {host}:{port} failed ({e}); retrying without TLS (sslmode=prefer)"
                );
                attempt(info, host_index, kind, false).await
            }
            result => result,
        }
    };
    match info.connect_timeout {
        Some(limit) => tokio::time::timeout(limit, all)
            .await
            .map_err(|_| PgError::Timeout)?,
        None => all.await,
    }
}

fn retry_in_plaintext(e: &PgError) -> bool {
    // 28000: no pg_hba.conf entry for an encrypted connection (there may be one for plaintext).
    matches!(e, PgError::Tls(_)) || e.code() == Some("28000")
}

async fn attempt(
    info: &ConnInfo,
    host_index: usize,
    kind: SessionKind,
    want_tls: bool,
) -> Result<Established, PgError> {
    let (host, port) = &info.hosts[host_index];
    let mut wire = open_transport(host, *port).await?;
    let mut tls = false;
    if want_tls {
        (wire, tls) = negotiate_tls(wire, info, host).await?;
    }

    let mut params: Vec<(&str, &str)> = vec![("user", &info.user), ("client_encoding", "UTF8")];
    if let Some(db) = &info.dbname {
        params.push(("database", db));
    }
    if kind == SessionKind::PhysicalReplication {
        params.push(("replication", "true"));
    }
    if let Some(app) = &info.application_name {
        params.push(("application_name", app));
    }
    if let Some(options) = &info.options {
        params.push(("options", options));
    }
    frontend::startup_message(params, wire.wbuf())
        .map_err(|e| PgError::Config(format!("invalid startup parameter: {e}")))?;
    wire.flush().await?;

    authenticate(&mut wire, info, host_index).await?;

    let mut params = HashMap::new();
    let mut backend_pid = 0;
    loop {
        let frame = wire.read_frame().await?;
        match frame.tag {
            b'S' => {
                let (name, value) = decode_parameter_status(&frame.body)?;
                params.insert(name, value);
            }
            b'K' => backend_pid = Body::new(&frame.body, "BackendKeyData").i32()?,
            b'N' => log_notice(&frame.body),
            b'E' => return Err(decode_error(&frame.body)),
            b'Z' => break,
            tag => {
                return Err(PgError::Protocol(format!(
                    "unexpected {} during session startup",
                    tag_name(tag)
                )));
            }
        }
    }
    Ok(Established {
        wire,
        params,
        backend_pid,
        tls,
    })
}

/// Opens a unix socket (host is a directory) or TCP connection (every resolved address in
/// turn) with TCP_NODELAY and keepalives.
async fn open_transport(host: &str, port: u16) -> Result<Wire, PgError> {
    if is_unix_socket_dir(host) {
        let path = unix_socket_path(host, port);
        let peer = path.display().to_string();
        let s = UnixStream::connect(&path)
            .await
            .map_err(|e| PgError::io(format!("connecting to unix socket {peer}"), e))?;
        return Ok(Wire::new(PgStream::Unix(s), peer));
    }
    let peer = format!("{host}:{port}");
    let addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| PgError::io(format!("resolving {peer}"), e))?;
    let mut last_err = None;
    for addr in addrs {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        };
        let connected = async {
            let socket = socket?;
            socket.set_keepalive(true)?;
            let stream = socket.connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok::<_, std::io::Error>(stream)
        };
        match connected.await {
            Ok(stream) => return Ok(Wire::new(PgStream::Tcp(stream), peer)),
            Err(e) => last_err = Some(PgError::io(format!("connecting to {peer} ({addr})"), e)),
        }
    }
    Err(last_err.unwrap_or_else(|| {
        PgError::io(
            format!("resolving {peer}"),
            std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
        )
    }))
}

/// Sends SSLRequest and, on `S`, performs the TLS handshake. Returns whether TLS is in use.
async fn negotiate_tls(
    mut wire: Wire,
    info: &ConnInfo,
    host: &str,
) -> Result<(Wire, bool), PgError> {
    let config = tls::client_config(info)?;
    let name = tls::server_name(host)?;
    frontend::ssl_request(wire.wbuf());
    wire.flush().await?;
    match wire.read_byte_unbuffered().await? {
        b'S' => {}
        b'N' if info.sslmode == SslMode::Prefer => return Ok((wire, false)),
        b'N' => {
            return Err(PgError::Tls(
                "server does not support SSL, but SSL was required".into(),
            ));
        }
        other => {
            return Err(PgError::Protocol(format!(
                "received invalid response to SSL negotiation: {:?}",
                char::from(other)
            )));
        }
    }
    let peer = wire.peer.clone();
    let PgStream::Tcp(tcp) = wire.into_stream() else {
        unreachable!("TLS is only negotiated on TCP connections");
    };
    let connector = tokio_rustls::TlsConnector::from(config);
    let stream = connector.connect(name, tcp).await.map_err(|e| {
        // Certificate and handshake failures come back as io::Error wrapping a rustls::Error.
        if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
            PgError::Tls(format!("handshake with {peer} failed: {e}"))
        } else {
            PgError::io(format!("TLS handshake with {peer}"), e)
        }
    })?;
    Ok((Wire::new(PgStream::Tls(Box::new(stream)), peer), true))
}

/// Runs the authentication exchange until AuthenticationOk.
async fn authenticate(wire: &mut Wire, info: &ConnInfo, host_index: usize) -> Result<(), PgError> {
    let password = || {
        info.password_for(host_index).ok_or_else(|| {
            PgError::Auth(format!(
                "server requested a password for user \"{}\" but none was supplied \
                 (password in the connection string, PGPASSWORD or a password file entry)",
                info.user
            ))
        })
    };
    let mut scram: Option<ScramSha256> = None;
    loop {
        let frame = wire.read_frame().await?;
        match frame.tag {
            b'R' => {}
            b'E' => return Err(decode_error(&frame.body)),
            b'N' => {
                log_notice(&frame.body);
                continue;
            }
            tag => {
                return Err(PgError::Protocol(format!(
                    "expected an authentication request, got {}",
                    tag_name(tag)
                )));
            }
        }
        let mut body = Body::new(&frame.body, "Authentication");
        let encode_err = |e: std::io::Error| PgError::Auth(format!("encoding response: {e}"));
        match body.i32()? {
            0 => return Ok(()),
            3 => frontend::password_message(password()?.as_bytes(), wire.wbuf())
                .map_err(encode_err)?,
            5 => {
                let salt: [u8; 4] = body.bytes(4)?.try_into().expect("4 bytes");
                let hash = md5_hash(info.user.as_bytes(), password()?.as_bytes(), salt);
                frontend::password_message(hash.as_bytes(), wire.wbuf()).map_err(encode_err)?;
            }
            10 => {
                let mechanisms: Vec<&str> = body
                    .rest()
                    .split(|&b| b == 0)
                    .filter(|m| !m.is_empty())
                    .filter_map(|m| std::str::from_utf8(m).ok())
                    .collect();
                if !mechanisms.contains(&SCRAM_SHA_256) {
                    return Err(PgError::Auth(format!(
                        "no supported SASL mechanism offered by the server: {mechanisms:?}"
                    )));
                }
                // Channel binding is not implemented: tell the server so ('n'), which it accepts
                // even over TLS, unlike 'y' ("supported but not offered").
                let s = ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), wire.wbuf())
                    .map_err(encode_err)?;
                scram = Some(s);
            }
            11 => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| PgError::Protocol("SASL continue without SASL start".into()))?;
                s.update(body.rest())
                    .map_err(|e| PgError::Auth(format!("SCRAM exchange failed: {e}")))?;
                frontend::sasl_response(s.message(), wire.wbuf()).map_err(encode_err)?;
            }
            12 => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| PgError::Protocol("SASL final without SASL start".into()))?;
                // Verifies the server's signature: proves the server knows the password too.
                s.finish(body.rest())
                    .map_err(|e| PgError::Auth(format!("server SCRAM signature invalid: {e}")))?;
                continue;
            }
            2 | 6 | 7 | 8 | 9 => {
                return Err(PgError::Auth(
                    "server requested Kerberos/GSSAPI/SSPI/SCM authentication, which is not supported"
                        .into(),
                ));
            }
            code => {
                return Err(PgError::Protocol(format!(
                    "unknown authentication request code {code}"
                )));
            }
        }
        wire.flush().await?;
    }
}
