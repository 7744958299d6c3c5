//! Parsing of values the server reports as text: LSNs, byte sizes, version strings.
//!
//! Invariant: every parser is strict (rejects trailing garbage and out-of-range values) and
//! reports the offending text, since a misread position or segment size would corrupt WAL.

use super::PgError;

/// Formats an LSN the way PostgreSQL prints `pg_lsn` values: `16/B374D848`.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Parses PostgreSQL's `X/Y` LSN text form (each half up to 8 hex digits).
pub fn parse_lsn(s: &str) -> Result<u64, PgError> {
    let bad = || PgError::Protocol(format!("invalid LSN {s:?}: expected hex \"X/Y\""));
    let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
    let valid = |h: &str| (1..=8).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid(hi) || !valid(lo) {
        return Err(bad());
    }
    let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
    let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
    Ok((u64::from(hi) << 32) | u64::from(lo))
}

/// Parses a byte-unit GUC display (`16MB`, `1GB`, `65536kB`) and checks it is a valid WAL
/// segment size (a power of two from 1 MiB to 1 GiB).
pub(crate) fn parse_segment_size(text: &str) -> Result<u32, PgError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => 0,
    };
    let bytes = num.parse::<u64>().ok().map(|n| n * mult);
    match bytes {
        Some(b) if b.is_power_of_two() && ((1 << 20)..=(1 << 30)).contains(&b) => Ok(b as u32),
        _ => Err(PgError::Protocol(format!(
            "invalid wal_segment_size {text:?}: expected a power of two between 1MB and 1GB"
        ))),
    }
}

/// `15.18 (Debian 15.18-1)` -> 150018, `9.6.24` -> 90624, `17devel`/`16beta1` -> 170000/160000.
pub(crate) fn parse_server_version(text: &str) -> Option<u32> {
    let version = text.split_whitespace().next()?;
    let mut nums = version.split('.').map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
    });
    let major: u32 = nums.next()?.parse().ok()?;
    let minor: u32 = nums.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    if major >= 10 {
        Some(major * 10000 + minor)
    } else {
        let patch: u32 = nums.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        Some(major * 10000 + minor * 100 + patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trip() {
        assert_eq!(format_lsn(0), "0/0");
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("16/B374D848").unwrap(), 0x16_B374_D848);
        assert_eq!(parse_lsn("0/3000000").unwrap(), 0x300_0000);
        assert_eq!(parse_lsn(&format_lsn(u64::MAX)).unwrap(), u64::MAX);
        for bad in [
            "",
            "/",
            "1/",
            "/1",
            "x/1",
            "1/2/3",
            "123456789/0",
            "1:2",
            "+1/2",
            "1/-2",
        ] {
            assert!(parse_lsn(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn segment_sizes() {
        assert_eq!(parse_segment_size("16MB").unwrap(), 16 << 20);
        assert_eq!(parse_segment_size("1GB").unwrap(), 1 << 30);
        assert_eq!(parse_segment_size("1024kB").unwrap(), 1 << 20);
        assert_eq!(parse_segment_size("67108864").unwrap(), 64 << 20);
        for bad in ["", "MB", "3MB", "512kB", "2GB", "16XB", "-16MB"] {
            assert!(parse_segment_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn server_versions() {
        assert_eq!(
            parse_server_version("15.18 (Debian 15.18-1.pgdg120+1)"),
            Some(150018)
        );
        assert_eq!(parse_server_version("9.6.24"), Some(90624));
        assert_eq!(parse_server_version("17devel"), Some(170000));
        assert_eq!(parse_server_version("16beta1"), Some(160000));
        assert_eq!(parse_server_version("16.2"), Some(160002));
        assert_eq!(parse_server_version("x"), None);
    }
}
