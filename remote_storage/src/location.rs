//! Parsing a storage URL into a [`RemoteLocation`], and opening the bare backend it names.
//!
//! Owns the URL syntax (`file:///absolute/path` and `s3://bucket[/prefix]`) and the choice of
//! backend for each scheme ([`RemoteLocation::open`]).
//!
//! Invariants: a local root is absolute; an S3 prefix has no leading or trailing `/` and is a
//! valid key prefix, so `prefix + "/" + key` is the object's full name; `open` returns the bare
//! backend, never a wrapper (layering is [`RemoteConfig::layer`](crate::config::RemoteConfig::layer)'s
//! job).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::S3Options;
use crate::error::{ErrorKind, Op, Result, StorageError};
use crate::key::validate_key;
use crate::local::LocalFs;
use crate::s3::S3Storage;
use crate::storage::RemoteStorage;

/// Where a storage lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteLocation {
    /// A directory on a local (or mounted) filesystem.
    Local(PathBuf),
    /// A bucket and a key prefix in it (`""` for the bucket root).
    S3 {
        /// The bucket name.
        bucket: String,
        /// The key prefix, without leading or trailing `/`.
        prefix: String,
    },
}

impl RemoteLocation {
    /// Parse `file:///abs/path` or `s3://bucket[/prefix]`.
    pub fn parse(url: &str) -> Result<Self> {
        let invalid =
            |msg: String| StorageError::new(ErrorKind::InvalidInput, Op::Open, url, "", msg);
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(invalid(
                    "a file URL needs an absolute path: file:///abs/path".to_string(),
                ));
            }
            if path.contains(['?', '#']) || path.contains('%') {
                return Err(invalid(
                    "query strings, fragments and %-escapes are not supported".into(),
                ));
            }
            return Ok(RemoteLocation::Local(PathBuf::from(path)));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let prefix = prefix.trim_end_matches('/');
            if !valid_bucket(bucket) {
                return Err(invalid(format!(
                    "bucket name {bucket:?} is not a valid S3 bucket name (3-63 of [a-z0-9.-])"
                )));
            }
            if !prefix.is_empty() {
                validate_key(prefix).map_err(|e| invalid(format!("prefix: {e}")))?;
            }
            return Ok(RemoteLocation::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            });
        }
        Err(invalid(
            "expected file:///abs/path or s3://bucket/prefix".to_string(),
        ))
    }
}

impl RemoteLocation {
    /// Open the bare backend for this location, without limit or retry layers. `s3` is ignored
    /// for a local location.
    pub async fn open(&self, s3: &S3Options) -> Result<Arc<dyn RemoteStorage>> {
        Ok(match self {
            RemoteLocation::Local(path) => Arc::new(LocalFs::new(path)?),
            RemoteLocation::S3 { bucket, prefix } => {
                Arc::new(S3Storage::new(bucket, prefix, s3).await?)
            }
        })
    }
}

fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && b.starts_with(|c: char| c.is_ascii_alphanumeric())
        && b.ends_with(|c: char| c.is_ascii_alphanumeric())
}

impl fmt::Display for RemoteLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteLocation::Local(p) => write!(f, "file://{}", p.display()),
            RemoteLocation::S3 { bucket, prefix } if prefix.is_empty() => {
                write!(f, "s3://{bucket}")
            }
            RemoteLocation::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(
            RemoteLocation::parse("file:///var/lib/sk").ok(),
            Some(RemoteLocation::Local("/var/lib/sk".into()))
        );
        assert_eq!(
            RemoteLocation::parse("s3://my-bucket/a/b/").ok(),
            Some(RemoteLocation::S3 {
                bucket: "my-bucket".into(),
                prefix: "a/b".into()
            })
        );
        assert_eq!(
            RemoteLocation::parse("s3://my-bucket").ok(),
            Some(RemoteLocation::S3 {
                bucket: "my-bucket".into(),
                prefix: String::new()
            })
        );
        for bad in [
            "file://rel/path",
            "s3://",
            "s3://B",
            "s3://b/../x",
            "http://x",
            "/abs",
            "s3://ab//x",
        ] {
            let e = RemoteLocation::parse(bad).expect_err(bad);
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
            assert!(e.to_string().contains(bad), "{e}");
        }
        assert_eq!(
            RemoteLocation::parse("s3://bkt/p")
                .map(|l| l.to_string())
                .ok(),
            Some("s3://bkt/p".to_string())
        );
    }
}
