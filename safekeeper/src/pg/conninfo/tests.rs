//! Unit tests for connection string parsing and the password file.

use std::collections::HashMap;
use std::time::Duration;

use super::pgpass::find_password;
use super::*;

fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

/// Parses with a fixed environment: user `envuser`, no home directory files.
fn parse(s: &str) -> Result<ConnInfo, PgError> {
    ConnInfo::parse_with_env(
        s,
        &env_of(&[("PGUSER", "envuser"), ("HOME", "/nonexistent")]),
    )
}

fn err(s: &str) -> String {
    parse(s).unwrap_err().to_string()
}

#[test]
fn defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.hosts, vec![("127.0.0.1".to_owned(), 5432)]);
    assert_eq!(c.user, "envuser");
    assert_eq!(c.password, None);
    assert_eq!(c.passfile, Some(PathBuf::from("/nonexistent/.pgpass")));
    assert_eq!(c.dbname, None);
    assert_eq!(c.sslmode, SslMode::Prefer);
    assert_eq!(c.sslrootcert, None);
    assert_eq!(c.application_name, None);
    assert_eq!(c.connect_timeout, None);
    assert_eq!(c.target_session_attrs, TargetSessionAttrs::Any);
}

#[test]
fn keyword_value() {
    let c = parse(
        "host=db.example port=6543 user=x password='a b' dbname=y sslmode=require \
         application_name=z connect_timeout=10 target_session_attrs=primary",
    )
    .unwrap();
    assert_eq!(c.hosts, vec![("db.example".to_owned(), 6543)]);
    assert_eq!(c.user, "x");
    assert_eq!(c.password.as_deref(), Some("a b"));
    assert_eq!(c.dbname.as_deref(), Some("y"));
    assert_eq!(c.sslmode, SslMode::Require);
    assert_eq!(c.application_name.as_deref(), Some("z"));
    assert_eq!(c.connect_timeout, Some(Duration::from_secs(10)));
    assert_eq!(c.target_session_attrs, TargetSessionAttrs::Primary);
}

#[test]
fn quoting_and_escapes() {
    let c = parse(r"password='it\'s \\ here' user = spaced   application_name=a\ b").unwrap();
    assert_eq!(c.password.as_deref(), Some(r"it's \ here"));
    assert_eq!(c.user, "spaced");
    assert_eq!(c.application_name.as_deref(), Some("a b"));
    let c = parse("password='' user=u").unwrap();
    assert_eq!(c.password.as_deref(), Some(""));
    // Later settings override earlier ones.
    assert_eq!(parse("user=a user=b").unwrap().user, "b");
}

#[test]
fn keyword_value_errors() {
    assert_eq!(
        err("host"),
        "invalid connection settings: missing \"=\" after \"host\" in connection info string"
    );
    assert!(err("host=a port").contains("missing \"=\" after \"port\""));
    assert!(err("password='abc").contains("unterminated quoted string"));
    assert_eq!(
        err("bogus=1"),
        "invalid connection settings: invalid connection option \"bogus\""
    );
    assert!(err("port=abc").contains("invalid port number: \"abc\""));
    assert!(err("port=0").contains("invalid port number"));
    assert!(err("port=70000").contains("invalid port number"));
    assert!(err("sslmode=maybe").contains("invalid sslmode value: \"maybe\""));
    assert!(err("connect_timeout=soon").contains("connect_timeout"));
    assert!(err("target_session_attrs=x").contains("target_session_attrs"));
    assert!(err("sslcert=/x").contains("\"sslcert\" is not supported"));
    assert!(err("channel_binding=require").contains("not supported"));
    assert!(err("=x").contains("missing keyword"));
}

#[test]
fn multiple_hosts() {
    let c = parse("host=a,b,c port=1,2,3").unwrap();
    assert_eq!(
        c.hosts,
        vec![("a".into(), 1), ("b".into(), 2), ("c".into(), 3)]
    );
    let c = parse("host=a,b port=7").unwrap();
    assert_eq!(c.hosts, vec![("a".into(), 7), ("b".into(), 7)]);
    let c = parse("host=a,,/tmp port=1,,3").unwrap();
    assert_eq!(
        c.hosts,
        vec![
            ("a".into(), 1),
            ("127.0.0.1".into(), 5432),
            ("/tmp".into(), 3)
        ]
    );
    assert_eq!(
        err("host=a,b,c port=1,2"),
        "invalid connection settings: could not match 2 port numbers to 3 hosts"
    );
}

#[test]
fn uri() {
    let c = parse("postgresql://us%40r:p%3Ass@host1:5433,host2:5434/my%20db?sslmode=require&application_name=sk1&connect_timeout=1").unwrap();
    assert_eq!(c.user, "us@r");
    assert_eq!(c.password.as_deref(), Some("p:ss"));
    assert_eq!(
        c.hosts,
        vec![("host1".into(), 5433), ("host2".into(), 5434)]
    );
    assert_eq!(c.dbname.as_deref(), Some("my db"));
    assert_eq!(c.sslmode, SslMode::Require);
    assert_eq!(c.application_name.as_deref(), Some("sk1"));
    // libpq raises a 1 s timeout to 2 s.
    assert_eq!(c.connect_timeout, Some(Duration::from_secs(2)));

    let c = parse("postgres://[::1]:6000,[fe80::1]/").unwrap();
    assert_eq!(
        c.hosts,
        vec![("::1".into(), 6000), ("fe80::1".into(), 5432)]
    );
    assert_eq!(c.dbname, None);

    let c = parse("postgresql://%2Fvar%2Frun%2Fpostgresql:5433").unwrap();
    assert_eq!(c.hosts, vec![("/var/run/postgresql".into(), 5433)]);
    assert_eq!(
        unix_socket_path(&c.hosts[0].0, c.hosts[0].1),
        PathBuf::from("/var/run/postgresql/.s.PGSQL.5433")
    );

    let c = parse("postgresql://?host=/tmp&port=7&user=q&ssl=true").unwrap();
    assert_eq!(c.hosts, vec![("/tmp".into(), 7)]);
    assert_eq!(c.user, "q");
    assert_eq!(c.sslmode, SslMode::Require);

    let c = parse("postgresql://").unwrap();
    assert_eq!(c.hosts, vec![("127.0.0.1".into(), 5432)]);
    let c = parse("postgresql://u@h").unwrap();
    assert_eq!((c.user.as_str(), c.password.as_deref()), ("u", None));
}

#[test]
fn uri_errors() {
    assert!(err("postgresql://h/db?sslmode").contains("missing key/value separator"));
    assert!(err("postgresql://h/db?bogus=1").contains("invalid connection option \"bogus\""));
    assert!(err("postgresql://h/d%zzb").contains("invalid percent-encoded token"));
    assert!(err("postgresql://h/d%00").contains("%00"));
    assert!(err("postgresql://[::1/db").contains("matching \"]\""));
    assert!(err("postgresql://[::1]x/db").contains("unexpected character"));
    assert!(err("postgresql://h:port/db").contains("invalid port number: \"port\""));
}

#[test]
fn environment() {
    let env = env_of(&[
        ("PGHOST", "envhost1,envhost2"),
        ("PGPORT", "6000"),
        ("PGUSER", "eu"),
        ("PGPASSWORD", "ep"),
        ("PGSSLMODE", "verify-full"),
        ("PGAPPNAME", "eapp"),
        ("PGCONNECT_TIMEOUT", "0"),
        ("PGPASSFILE", "/etc/pgpass"),
        ("PGDATABASE", "edb"),
        ("HOME", "/nonexistent"),
    ]);
    let c = ConnInfo::parse_with_env("", &env).unwrap();
    assert_eq!(
        c.hosts,
        vec![("envhost1".into(), 6000), ("envhost2".into(), 6000)]
    );
    assert_eq!(c.user, "eu");
    assert_eq!(c.password.as_deref(), Some("ep"));
    assert_eq!(c.sslmode, SslMode::VerifyFull);
    assert_eq!(c.application_name.as_deref(), Some("eapp"));
    assert_eq!(c.connect_timeout, None);
    assert_eq!(c.passfile, Some(PathBuf::from("/etc/pgpass")));
    assert_eq!(c.dbname.as_deref(), Some("edb"));
    // Explicit settings win over the environment.
    let c = ConnInfo::parse_with_env("host=h user=u password=p sslmode=disable", &env).unwrap();
    assert_eq!(c.hosts, vec![("h".into(), 6000)]);
    assert_eq!((c.user.as_str(), c.password.as_deref()), ("u", Some("p")));
    assert_eq!(c.sslmode, SslMode::Disable);
    // fallback_application_name only applies without application_name.
    let c = ConnInfo::parse_with_env("fallback_application_name=fb", &env_of(&[("PGUSER", "u")]))
        .unwrap();
    assert_eq!(c.application_name.as_deref(), Some("fb"));
    // Without PGUSER the OS account name is used.
    let c = ConnInfo::parse_with_env("", &env_of(&[])).unwrap();
    assert!(!c.user.is_empty());
}

#[test]
fn debug_redacts_password() {
    let c = parse("password=hunter2").unwrap();
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("hunter2"), "{dbg}");
    assert!(dbg.contains("<redacted>"));
}

#[test]
fn pgpass_matching() {
    let file = "\
# comment\n\
\n\
short:line\n\
db1:5432:replication:alice:pw1\n\
*:5433:*:alice:pw-any-host\n\
h\\:x:5432:*:bob:colon\\:host\n\
localhost:*:*:carol:sock\\\\et:ignored\n\
\\*:*:*:dave:literal-star\n\
*:*:*:*:fallback\n";
    let find = |h, p, d, u| find_password(file, [h, p, d, u]);
    assert_eq!(
        find("db1", "5432", "replication", "alice").as_deref(),
        Some("pw1")
    );
    assert_eq!(
        find("db2", "5433", "x", "alice").as_deref(),
        Some("pw-any-host")
    );
    assert_eq!(
        find("h:x", "5432", "d", "bob").as_deref(),
        Some("colon:host")
    );
    assert_eq!(find("/tmp", "1", "d", "carol").as_deref(), Some(r"sock\et"));
    assert_eq!(find("*", "1", "d", "dave").as_deref(), Some("literal-star"));
    assert_eq!(find("other", "1", "d", "dave").as_deref(), Some("fallback"));
    assert_eq!(
        find("db1", "5432", "postgres", "alice").as_deref(),
        Some("fallback")
    );
    assert_eq!(find_password("a:b:c:d\n", ["a", "b", "c", "d"]), None);
}

#[cfg(unix)]
#[test]
fn pgpass_file_permissions_and_lookup() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgpass");
    std::fs::write(&path, "127.0.0.1:5432:replication:u:secret\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let home = dir.path().to_str().unwrap().to_owned();
    let passfile = path.to_str().unwrap().to_owned();
    let env = env_of(&[("HOME", &home), ("PGPASSFILE", &passfile)]);
    let c = ConnInfo::parse_with_env("user=u", &env).unwrap();
    assert_eq!(c.password_for(0).as_deref(), Some("secret"));
    assert_eq!(c.password_for(1), None);
    // An explicit dbname is what gets matched.
    let c = ConnInfo::parse_with_env("user=u dbname=other", &env).unwrap();
    assert_eq!(c.password_for(0), None);
    // Group/world readable files are ignored, as by libpq.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let c = ConnInfo::parse_with_env("user=u", &env).unwrap();
    assert_eq!(c.password_for(0), None);
    // The default root certificate is picked up from ~/.postgresql/root.crt.
    std::fs::create_dir(dir.path().join(".postgresql")).unwrap();
    std::fs::write(dir.path().join(".postgresql/root.crt"), "").unwrap();
    let c = ConnInfo::parse_with_env("user=u", &env).unwrap();
    assert_eq!(c.sslrootcert, Some(dir.path().join(".postgresql/root.crt")));
}
