//! Building the `aws-sdk-s3` client.
//!
//! Owns the SDK setup: the rustls+ring HTTP client (the trimmed feature set has no default HTTP
//! client, so forgetting `.http_client(...)` would only fail at the first request — the test below
//! sends one), credentials, region, endpoint and addressing style.
//!
//! Invariants:
//! - the SDK never retries on its own ([`RetryConfig::disabled`]): retries belong to
//!   [`RetryingStorage`](crate::retry::RetryingStorage), which can be tested with injected faults;
//! - the SDK neither adds nor validates checksums by itself: this crate sends the crc32c header it
//!   computed and verifies downloads itself, so checksum failures surface as typed errors;
//! - with static credentials the SDK's default chain is not built at all, so nothing probes
//!   instance metadata; with an explicit region nothing probes it for the region either.

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::Credentials;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_smithy_http_client::tls;

use crate::config::S3Options;

/// Region used when none is configured and the standard chain finds none either. S3-compatible
/// servers usually ignore it, but requests cannot be signed without one.
const FALLBACK_REGION: &str = "us-east-1";

/// Build an S3 client from `opts`. Does not touch the network (except that, without static
/// credentials or region, the SDK's lazy default chains may do so on the first request).
pub async fn build_client(opts: &S3Options) -> aws_sdk_s3::Client {
    let http_client = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(opts.connect_timeout)
                .build(),
        );
    if let Some(region) = &opts.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(creds) = &opts.credentials {
        loader = loader.credentials_provider(Credentials::new(
            creds.access_key_id.clone(),
            creds.secret_access_key.clone(),
            creds.session_token.clone(),
            None,
            "remote_storage-static",
        ));
    }
    if let Some(endpoint) = &opts.endpoint {
        loader = loader.endpoint_url(endpoint.clone());
    }
    let sdk_config = loader.load().await;
    let mut builder = aws_sdk_s3::config::Builder::from(&sdk_config)
        .force_path_style(opts.force_path_style)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    if sdk_config.region().is_none() {
        builder = builder.region(Region::new(FALLBACK_REGION));
    }
    aws_sdk_s3::Client::from_conf(builder.build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StaticCredentials;
    use std::time::Duration;

    /// Builds the client and sends a real request to a closed local port: with a working HTTP
    /// client this is a connection (dispatch) error; without one it would be a construction
    /// error saying no HTTP client is configured.
    #[tokio::test]
    async fn client_builds_and_dispatches() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let opts = S3Options {
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            region: Some("us-east-1".into()),
            force_path_style: true,
            credentials: Some(StaticCredentials::new("test", "test")),
            connect_timeout: Duration::from_secs(2),
        };
        let client = build_client(&opts).await;
        let err = client
            .head_bucket()
            .bucket("nope")
            .send()
            .await
            .expect_err("nothing listens on that port");
        assert!(
            matches!(err, aws_sdk_s3::error::SdkError::DispatchFailure(_)),
            "expected a dispatch failure, got {}",
            DisplayErrorContext(&err)
        );
    }

    use aws_smithy_types::error::display::DisplayErrorContext;
}
