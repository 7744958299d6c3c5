//! Integration tests of `safekeeper::pg` against a real PostgreSQL server: authentication
//! methods, `.pgpass`, TLS modes, replication commands, WAL streaming byte-identical to
//! `pg_wal`, status updates, keepalives and a timeline switch after promoting a standby
//! (the streaming tests are in `pg_client/replication.rs`).

#[path = "pg_client/harness.rs"]
mod harness;
#[path = "pg_client/replication.rs"]
mod replication;

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use harness::PgServer;
use safekeeper::pg::{ConnInfo, PgError, ReplicationConnection, SessionKind};

const HBA: &str = "\
local all all trust
local replication all trust
hostssl replication ssluser 127.0.0.1/32 scram-sha-256
hostnossl replication ssluser 127.0.0.1/32 reject
host replication md5user 127.0.0.1/32 md5
host replication scramuser 127.0.0.1/32 scram-sha-256
host replication plainuser 127.0.0.1/32 password
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
";

const ROLES: &str = "\
SET password_encryption = 'md5';
CREATE ROLE md5user LOGIN REPLICATION PASSWORD 'md5 pw';
SET password_encryption = 'scram-sha-256';
CREATE ROLE scramuser LOGIN REPLICATION PASSWORD 'scr''am:pw';
CREATE ROLE plainuser LOGIN REPLICATION PASSWORD 'plain';
CREATE ROLE ssluser LOGIN REPLICATION PASSWORD 'tls pw';
";

static SHARED: Mutex<Weak<Primary>> = Mutex::new(Weak::new());

/// The shared primary and the root certificates its server certificate does / does not
/// chain to.
struct Primary {
    pg: PgServer,
    ca: std::path::PathBuf,
    other_ca: std::path::PathBuf,
}

async fn primary(test: &str) -> Option<Arc<Primary>> {
    let bindir = harness::bindir_or_skip(test)?;
    // Blocking set-up, once per batch of concurrently running tests.
    let p = tokio::task::spawn_blocking(move || {
        harness::shared(&SHARED, || {
            let mut pg = PgServer::init(&bindir);
            let (ca, other_ca) = pg.make_certificates();
            pg.configure(
                "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
                 wal_sender_timeout = '4s'\nwal_keep_size = '64MB'\n",
            );
            pg.write_hba(HBA);
            pg.start();
            Primary { pg, ca, other_ca }
        })
    })
    .await
    .unwrap();
    // Roles are created once per server instance.
    let mut sql = sql_conn(&p.pg).await;
    let exists = sql
        .simple_query("SELECT 1 FROM pg_roles WHERE rolname = 'ssluser'")
        .await
        .unwrap();
    if exists.is_empty() {
        // Concurrent tests may race here; a duplicate role error is harmless.
        let _ = sql.simple_query(ROLES).await;
    }
    Some(p)
}

/// A regular SQL session as the superuser over the unix socket.
async fn sql_conn(pg: &PgServer) -> ReplicationConnection {
    let info = ConnInfo::parse(&format!(
        "host={} port={} user=postgres dbname=postgres",
        pg.socket_dir().display(),
        pg.port
    ))
    .unwrap();
    ReplicationConnection::connect_with(&info, 0, SessionKind::Regular)
        .await
        .unwrap()
}

async fn sql_one(pg: &PgServer, sql: &str) -> Option<String> {
    let mut c = sql_conn(pg).await;
    let rows = c.simple_query(sql).await.unwrap();
    c.close().await;
    rows.into_iter()
        .next()
        .and_then(|r| r.into_iter().next().flatten())
}

#[tokio::test]
async fn unix_socket_trust_and_replication_commands() {
    let Some(p) = primary("unix_socket_trust_and_replication_commands").await else {
        return;
    };
    let info = ConnInfo::parse(&format!(
        "host={} port={} user=postgres application_name=sk_unix",
        p.pg.socket_dir().display(),
        p.pg.port
    ))
    .unwrap();
    let mut c = ReplicationConnection::connect(&info, 0).await.unwrap();
    assert!(!c.is_tls(), "no TLS on unix sockets");
    assert!(c.backend_pid() > 0);
    assert!(c.parameter("server_version").is_some());
    assert_eq!(c.parameter("integer_datetimes"), Some("on"));
    assert!(c.server_version_num().await.unwrap() >= 100000);

    let id = c.identify_system().await.unwrap();
    assert_ne!(id.system_identifier, 0);
    assert_eq!(id.timeline, 1);
    assert!(id.xlogpos > 0);
    assert_eq!(id.dbname, None);
    let from_sql = sql_one(
        &p.pg,
        "SELECT system_identifier::text FROM pg_control_system()",
    )
    .await;
    assert_eq!(from_sql, Some(id.system_identifier.to_string()));

    assert_eq!(c.wal_segment_size().await.unwrap(), 16 << 20);
    assert_eq!(c.show("wal_level").await.unwrap(), "replica");
    assert!(!c.is_in_recovery().await.unwrap());

    // Plain SQL is refused in a physical replication session; the session stays usable.
    for sql in ["SELECT 1", ""] {
        let err = c.simple_query(sql).await.unwrap_err();
        assert_eq!(err.code(), Some("0A000"), "{err}");
    }
    assert_eq!(
        c.identify_system().await.unwrap().system_identifier,
        id.system_identifier
    );
    assert_eq!(c.read_replication_slot("no_such_slot").await.unwrap(), None);
    let err = c.timeline_history(1).await.unwrap_err();
    assert!(matches!(err, PgError::Server { .. }), "{err}");
    c.close().await;
}

#[tokio::test]
async fn password_authentication() {
    let Some(p) = primary("password_authentication").await else {
        return;
    };
    let cases = [
        ("md5user", "'md5 pw'", true),
        ("md5user", "wrong", false),
        ("scramuser", r"'scr\'am:pw'", true),
        ("scramuser", "wrong", false),
        ("plainuser", "plain", true),
        ("plainuser", "wrong", false),
    ];
    for (user, password, ok) in cases {
        let info = p.pg.conninfo(&format!("user={user} password={password}"));
        let result = ReplicationConnection::connect(&info, 0).await;
        match (ok, result) {
            (true, Ok(mut c)) => {
                c.identify_system().await.unwrap();
            }
            (false, Err(e)) => {
                assert_eq!(e.code(), Some("28P01"), "{user}: {e}");
                assert!(!e.is_transient());
                assert!(
                    e.to_string().starts_with(&format!(
                        "FATAL 28P01: password authentication failed for user \"{user}\""
                    )),
                    "{e}"
                );
            }
            (ok, r) => panic!("{user}/{password}: expected ok={ok}, got {:?}", r.err()),
        }
    }
    // No password anywhere: a client-side, permanent error.
    let info = p.pg.conninfo("user=scramuser");
    let err = ReplicationConnection::connect(&info, 0)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, PgError::Auth(_)), "{err}");
    assert!(!err.is_transient());
}

#[tokio::test]
async fn pgpass_lookup() {
    use std::os::unix::fs::PermissionsExt;
    let Some(p) = primary("pgpass_lookup").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgpass");
    std::fs::write(
        &file,
        format!(
            "# test\n127.0.0.1:{port}:postgres:scramuser:not-this-one\n\
             127.0.0.1:{port}:replication:scramuser:scr'am\\:pw\n",
            port = p.pg.port
        ),
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let info =
        p.pg.conninfo(&format!("user=scramuser passfile={}", file.display()));
    let mut c = ReplicationConnection::connect(&info, 0).await.unwrap();
    c.identify_system().await.unwrap();

    // A world-readable password file is ignored, like libpq does.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = ReplicationConnection::connect(&info, 0)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, PgError::Auth(_)), "{err}");
}

#[tokio::test]
async fn tls_modes() {
    let Some(p) = primary("tls_modes").await else {
        return;
    };
    let base = "user=ssluser password='tls pw'";
    let connect = |extra: String| {
        let info = p.pg.conninfo(&format!("{base} {extra}"));
        async move { ReplicationConnection::connect(&info, 0).await }
    };

    let mut c = connect("sslmode=require".into()).await.unwrap();
    assert!(c.is_tls());
    c.identify_system().await.unwrap();
    let pid = c.backend_pid();
    let ssl = sql_one(
        &p.pg,
        &format!("SELECT ssl::text FROM pg_stat_ssl WHERE pid = {pid}"),
    )
    .await;
    assert_eq!(ssl.as_deref(), Some("true"));

    assert!(connect("sslmode=prefer".into()).await.unwrap().is_tls());
    let ca = p.ca.display();
    let other = p.other_ca.display();
    // The certificate chains to `ca` but names only "localhost".
    assert!(
        connect(format!("sslmode=verify-ca sslrootcert={ca}"))
            .await
            .unwrap()
            .is_tls()
    );
    assert!(
        connect(format!("sslmode=require sslrootcert={ca}"))
            .await
            .unwrap()
            .is_tls()
    );
    let info = ConnInfo::parse(&format!(
        "host=localhost port={} {base} sslmode=verify-full sslrootcert={ca} passfile=/nonexistent",
        p.pg.port
    ))
    .unwrap();
    assert!(
        ReplicationConnection::connect(&info, 0)
            .await
            .unwrap()
            .is_tls()
    );

    for bad in [
        format!("sslmode=verify-full sslrootcert={ca}"),
        format!("sslmode=verify-ca sslrootcert={other}"),
        format!("sslmode=require sslrootcert={other}"),
    ] {
        let err = connect(bad.clone()).await.err().unwrap();
        assert!(matches!(err, PgError::Tls(_)), "{bad}: {err}");
        assert!(!err.is_transient());
    }
    // pg_hba rejects this user without TLS.
    let err = connect("sslmode=disable".into()).await.err().unwrap();
    assert_eq!(err.code(), Some("28000"), "{err}");
}

#[tokio::test]
async fn connect_timeout_and_refused() {
    // A listener that accepts TCP connections (via the backlog) but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let info = ConnInfo::parse(&format!(
        "host=127.0.0.1 port={port} user=x connect_timeout=2 sslmode=disable"
    ))
    .unwrap();
    let started = Instant::now();
    let err = ReplicationConnection::connect(&info, 0)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, PgError::Timeout), "{err}");
    assert!(err.is_transient());
    assert!(started.elapsed() >= Duration::from_millis(1900));
    drop(silent);

    let err = ReplicationConnection::connect(&info, 0)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, PgError::Io { .. }), "{err}");
    assert!(err.is_transient());
    let err = ReplicationConnection::connect(&info, 1)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, PgError::Config(_)), "{err}");
}
