//! TLS client configuration for each `sslmode`, on rustls with the ring provider.
//!
//! Invariants: handshake signatures are always verified (so the peer really holds the key of
//! the certificate it presented); what varies by mode is only which certificates are trusted:
//! - `prefer`/`require` without a root file: any certificate (encryption without authentication,
//!   as in libpq);
//! - `require` with a root file, `verify-ca`: the chain must lead to a trusted root, any name;
//! - `verify-full`: the chain and the host name must both check out.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::{ConnInfo, PgError, SslMode};

/// Builds the rustls client configuration for `info.sslmode`.
pub(crate) fn client_config(info: &ConnInfo) -> Result<Arc<ClientConfig>, PgError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match (info.sslmode, &info.sslrootcert) {
        (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, None) => Arc::new(AnyCert {
            algorithms: provider.signature_verification_algorithms,
        }),
        (SslMode::Require | SslMode::VerifyCa, _) => Arc::new(ChainOnly {
            inner: webpki_verifier(info, &provider)?,
        }),
        (SslMode::VerifyFull, _) => webpki_verifier(info, &provider)?,
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // Required by PostgreSQL 17+ for direct TLS and accepted by every version otherwise.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Arc::new(config))
}

/// The name to verify and send as SNI (rustls sends no SNI for IP addresses, like libpq).
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, PgError> {
    ServerName::try_from(host.to_owned())
        .map_err(|_| PgError::Config(format!("invalid host name for TLS: \"{host}\"")))
}

fn webpki_verifier(
    info: &ConnInfo,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, PgError> {
    let mut roots = RootCertStore::empty();
    match &info.sslrootcert {
        Some(path) if path.as_os_str() != "system" => {
            let file = std::fs::File::open(path).map_err(|e| {
                PgError::Config(format!(
                    "could not read root certificate file \"{}\": {e}",
                    path.display()
                ))
            })?;
            for cert in CertificateDer::pem_reader_iter(file) {
                let cert = cert.map_err(|e| {
                    PgError::Config(format!(
                        "invalid root certificate file \"{}\": {e}",
                        path.display()
                    ))
                })?;
                roots.add(cert).map_err(|e| {
                    PgError::Config(format!(
                        "unusable certificate in \"{}\": {e}",
                        path.display()
                    ))
                })?;
            }
            if roots.is_empty() {
                return Err(PgError::Config(format!(
                    "root certificate file \"{}\" contains no certificates",
                    path.display()
                )));
            }
        }
        _ => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| PgError::Tls(e.to_string()))
}

/// Accepts any certificate but still checks that the handshake is signed by its key.
#[derive(Debug)]
struct AnyCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Verifies the certificate chain but not the host name (`verify-ca`).
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The name is checked last, after the chain: a name error means the chain is good.
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
