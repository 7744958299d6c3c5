//! The demo's write load: single-row INSERTs in autocommit from a few connections, counting only
//! the commits the primary acknowledged (each one waited for the safekeeper's fsync).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::postgres::Server;

/// The demo's table; `id` tells the order of commits.
pub(super) const CREATE_TABLE: &str = "CREATE TABLE demo_commits (\
     id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
     writer int NOT NULL, \
     committed_at timestamptz NOT NULL DEFAULT clock_timestamp())";

/// When the load stops.
#[derive(Clone, Copy, Debug)]
pub(super) enum Limit {
    Rows(u64),
    Time(Duration),
}

/// Runs `writers` connections until `limit`; returns the number of acknowledged commits.
pub(super) async fn write_load(server: &Server, writers: u32, limit: Limit) -> Result<u64> {
    let claimed = AtomicU64::new(0);
    let committed = AtomicU64::new(0);
    let start = Instant::now();
    let writer = |w: u32| {
        let (claimed, committed) = (&claimed, &committed);
        async move {
            let mut conn = server.connect().await?;
            let insert = format!("INSERT INTO demo_commits (writer) VALUES ({w})");
            loop {
                let more = match limit {
                    Limit::Rows(n) => claimed.fetch_add(1, Ordering::Relaxed) < n,
                    Limit::Time(d) => start.elapsed() < d,
                };
                if !more {
                    break;
                }
                conn.simple_query(&insert)
                    .await
                    .with_context(|| format!("writer {w}: INSERT failed"))?;
                // Only now, with COMMIT acknowledged, does the row count as committed.
                committed.fetch_add(1, Ordering::Relaxed);
            }
            conn.close().await;
            anyhow::Ok(())
        }
    };
    futures::future::try_join_all((1..=writers).map(writer)).await?;
    Ok(committed.load(Ordering::Relaxed))
}
