//! TLS to Redis (`rediss://` URIs): which certificate authorities to trust and which client
//! certificate to present, read once from PEM files and applied to every connection the engine
//! makes (commands, stream readers, consumer group members, every node of a cluster).
//!
//! A `rediss://` URI with no files trusts the system's certificate store (managed Redis services
//! have publicly signed certificates). Certificates are always verified, hostname included: the
//! `redis` crate's `#insecure` URI fragment is refused, since a server that accepts any
//! certificate hands the stream data and the Redis password to whoever sits in between.

use redis::{Client, ClientTlsConfig, ConnectionAddr, IntoConnectionInfo, RedisResult, TlsCertificates};
use std::path::PathBuf;

/// Where the PEM files for TLS to Redis are. All `None` (the default): `rediss://` URIs use the
/// system's trust store and no client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// Certificates of the authorities that sign the Redis servers' certificates, instead of the
    /// system's trust store (a private CA, as Redis's own `tls-ca-cert-file`).
    pub ca_file: Option<PathBuf>,
    /// Certificate chain presented to Redis (for `tls-auth-clients yes`); needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// Private key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

impl RedisTls {
    /// Reads the files: `None` when none is set.
    ///
    /// # Errors
    /// [`crate::Error::Config`] when a file cannot be read, or only one of the certificate and
    /// its key is given.
    pub(crate) fn load(&self) -> Result<Option<TlsCertificates>, crate::Error> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| crate::Error::Config(format!("Redis TLS file {}: {e}", path.display())))
        };
        let client_tls = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Some(ClientTlsConfig { client_cert: read(cert)?, client_key: read(key)? }),
            (None, None) => None,
            _ => {
                return Err(crate::Error::Config(
                    "a client certificate for Redis needs both the certificate and its key".into(),
                ));
            }
        };
        let root_cert = self.ca_file.as_ref().map(read).transpose()?;
        Ok((client_tls.is_some() || root_cert.is_some()).then_some(TlsCertificates { client_tls, root_cert }))
    }
}

/// Whether `uri` is a `rediss://` URI (refusing `#insecure`, see the module docs).
///
/// # Errors
/// When the URI cannot be parsed or asks not to verify certificates.
pub(crate) fn uses_tls(uri: &str) -> RedisResult<bool> {
    match uri.into_connection_info()?.addr() {
        ConnectionAddr::TcpTls { insecure: true, .. } => Err(redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "#insecure (no certificate verification) is not supported; give the CA with --redis-ca",
        ))),
        ConnectionAddr::TcpTls { .. } => Ok(true),
        _ => Ok(false),
    }
}

/// A client for `uri`, with `certificates` when there are any. Files given for a plain
/// `redis://` URI are an error rather than ignored: the operator meant the traffic to be
/// encrypted.
///
/// # Errors
/// When the URI cannot be parsed, asks for `#insecure`, is not `rediss://` while certificates
/// are given, or a certificate or key cannot be parsed.
pub(crate) fn open(uri: &str, certificates: Option<&TlsCertificates>) -> RedisResult<Client> {
    let tls = uses_tls(uri)?;
    match certificates {
        Some(certificates) if tls => Client::build_with_tls(uri, certificates.clone()),
        Some(_) => Err(redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "TLS files are given for Redis but the URI is redis:// (plain TCP); use rediss://",
        ))),
        None => Client::open(uri),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_uris_refuse_tls_files_and_insecure_is_refused() {
        let certificates = TlsCertificates { client_tls: None, root_cert: Some(Vec::new()) };
        assert!(open("redis://127.0.0.1:6379", None).is_ok());
        let error = open("redis://127.0.0.1:6379", Some(&certificates)).err().unwrap();
        assert!(error.to_string().contains("use rediss://"), "{error}");
        assert!(uses_tls("rediss://127.0.0.1:6379").unwrap());
        let error = uses_tls("rediss://127.0.0.1:6379/#insecure").unwrap_err();
        assert!(error.to_string().contains("--redis-ca"), "{error}");
    }

    #[test]
    fn a_certificate_needs_its_key() {
        let tls = RedisTls { cert_file: Some("cert.pem".into()), ..RedisTls::default() };
        assert!(matches!(tls.load(), Err(crate::Error::Config(_))));
        assert!(RedisTls::default().load().unwrap().is_none());
        let missing = RedisTls { ca_file: Some("/nonexistent/ca.pem".into()), ..RedisTls::default() };
        let Err(crate::Error::Config(message)) = missing.load() else { panic!("a missing CA file is an error") };
        assert!(message.contains("/nonexistent/ca.pem"), "{message}");
    }
}
