//! PUT throughput of 16 MiB objects (one WAL segment each) at several concurrency levels, through
//! the same stack the service uses (`from_url`: retries over limits over the backend).
//!
//! ```text
//! cargo run --release -p remote_storage --example put_bench -- --endpoint http://127.0.0.1:5000
//! cargo run --release -p remote_storage --example put_bench -- --url file:///tmp/bench-root
//! ```
//!
//! Options: `--endpoint URL` (S3-compatible server; implies `s3://BUCKET/put-bench` with path-style
//! addressing and dummy static credentials), `--bucket NAME` (default `bench`, created if missing),
//! `--url URL` (any storage URL instead), `--size-mib N` (default 16), `--concurrency 1,4,16`,
//! `--objects N` (per level; default max(8, 2 × concurrency)).
//!
//! Each object's crc32c is computed by the storage on every put, as in production. Objects are
//! deleted after each level so the server's memory stays bounded.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures::StreamExt;
use rand::RngCore;
use remote_storage::{
    LimitConfig, PutOptions, RemoteConfig, S3Options, StaticCredentials, from_url,
};
use tokio_util::sync::CancellationToken;

struct Args {
    endpoint: Option<String>,
    bucket: String,
    url: Option<String>,
    size_mib: usize,
    concurrency: Vec<usize>,
    objects: Option<usize>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        endpoint: None,
        bucket: "bench".into(),
        url: None,
        size_mib: 16,
        concurrency: vec![1, 4, 16],
        objects: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--endpoint" => args.endpoint = Some(value()?),
            "--bucket" => args.bucket = value()?,
            "--url" => args.url = Some(value()?),
            "--size-mib" => args.size_mib = value()?.parse().context("--size-mib")?,
            "--objects" => args.objects = Some(value()?.parse().context("--objects")?),
            "--concurrency" => {
                args.concurrency = value()?
                    .split(',')
                    .map(|c| c.trim().parse::<usize>().context("--concurrency"))
                    .collect::<Result<_>>()?
            }
            "-h" | "--help" => {
                println!(
                    "usage: put_bench [--endpoint URL [--bucket NAME] | --url URL] [--size-mib N] [--concurrency 1,4,16] [--objects N]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if args.endpoint.is_none() && args.url.is_none() {
        bail!("give --endpoint (S3-compatible server) or --url");
    }
    if args.concurrency.contains(&0) || args.size_mib == 0 {
        bail!("sizes and concurrency levels must be positive");
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let max_concurrency = args.concurrency.iter().copied().max().unwrap_or(1);
    let config = RemoteConfig {
        s3: S3Options {
            endpoint: args.endpoint.clone(),
            region: Some("us-east-1".into()),
            force_path_style: true,
            credentials: Some(StaticCredentials::new("bench", "bench")),
            ..S3Options::default()
        },
        limits: LimitConfig {
            max_concurrent_requests: max_concurrency,
            request_timeout: Duration::from_secs(300),
        },
        ..RemoteConfig::default()
    };
    let url = match (&args.url, &args.endpoint) {
        (Some(url), _) => url.clone(),
        (None, Some(_)) => {
            let client = remote_storage::s3::client::build_client(&config.s3).await;
            if let Err(e) = client.create_bucket().bucket(&args.bucket).send().await {
                let code = aws_sdk_s3::error::ProvideErrorMetadata::code(&e)
                    .unwrap_or_default()
                    .to_string();
                if !matches!(
                    code.as_str(),
                    "BucketAlreadyOwnedByYou" | "BucketAlreadyExists"
                ) {
                    let e = aws_smithy_types::error::display::DisplayErrorContext(&e);
                    bail!("creating bucket {}: {e}", args.bucket);
                }
            }
            format!("s3://{}/put-bench", args.bucket)
        }
        (None, None) => unreachable!("checked in parse_args"),
    };
    let storage = from_url(&url, &config).await?;
    let cancel = CancellationToken::new();

    let size = args.size_mib << 20;
    let mut buf = vec![0u8; size];
    rand::thread_rng().fill_bytes(&mut buf);
    let payload = Bytes::from(buf);
    let opts = PutOptions {
        tags: vec![("safekeeper-kind".into(), "full".into())],
        ..PutOptions::default()
    };

    println!("target {}: {} MiB objects", storage.name(), args.size_mib);
    println!(
        "{:>11} {:>8} {:>9} {:>10} {:>10}",
        "concurrency", "objects", "seconds", "MiB/s", "objects/s"
    );
    for &concurrency in &args.concurrency {
        let objects = args.objects.unwrap_or((2 * concurrency).max(8));
        let keys: Vec<String> = (0..objects)
            .map(|i| format!("c{concurrency}/{i:08}"))
            .collect();
        let started = Instant::now();
        let results: Vec<_> = futures::stream::iter(&keys)
            .map(|key| storage.put(key, payload.clone().into(), &opts, &cancel))
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let secs = started.elapsed().as_secs_f64();
        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
            bail!("put failed: {e}");
        }
        let mib = (objects * args.size_mib) as f64;
        println!(
            "{concurrency:>11} {objects:>8} {secs:>9.2} {:>10.1} {:>10.2}",
            mib / secs,
            objects as f64 / secs
        );
        storage.delete_many(&keys, &cancel).await?;
    }
    Ok(())
}
