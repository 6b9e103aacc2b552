//! `Tls`: encrypting the connections to the cluster (system OpenSSL).

use std::path::PathBuf;

use openssl::pkey::PKey;
use openssl::ssl::{SslConnector, SslMethod};
use openssl::x509::X509;
use scylla::client::session::OpenSsl010Config;

use crate::error::CassandraError;

/// A PEM document, from a file or from memory. `Debug` shows a path, or the
/// size of in-memory bytes (which may be a private key), never the bytes.
#[derive(Clone)]
enum Pem {
    File(PathBuf),
    Bytes(Vec<u8>),
}

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pem::File(path) => write!(f, "File({})", path.display()),
            Pem::Bytes(bytes) => write!(f, "Bytes({} bytes, not shown)", bytes.len()),
        }
    }
}

impl Pem {
    fn describe(&self) -> String {
        match self {
            Pem::File(path) => format!("file {}", path.display()),
            Pem::Bytes(_) => "in-memory PEM".into(),
        }
    }

    fn read(&self, what: &str) -> Result<Vec<u8>, CassandraError> {
        match self {
            Pem::Bytes(bytes) => Ok(bytes.clone()),
            Pem::File(path) => std::fs::read(path).map_err(|e| CassandraError::Tls {
                what: format!("{what} ({})", self.describe()),
                reason: e.to_string(),
            }),
        }
    }
}

/// TLS settings of a [`CassandraSink`](crate::CassandraSink). The node's
/// certificate is always verified, against its IP address (as the driver
/// connects by address): against the system's trusted CAs, plus any given
/// with [`ca_file`](Self::ca_file) / [`ca_pem`](Self::ca_pem).
///
/// ```
/// use flumen_cassandra::{CassandraSink, Tls};
///
/// let sink = CassandraSink::new("metrics.device_temp")
///     .nodes("10.0.0.5:9142")
///     .tls(Tls::new()
///         .ca_file("/etc/cassandra/ca.pem")
///         .client_identity_files("/etc/flumen/client.pem", "/etc/flumen/client.key"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct Tls {
    cas: Vec<Pem>,
    identity: Option<(Pem, Pem)>,
}

impl Tls {
    /// TLS, trusting the system's certificate authorities.
    pub fn new() -> Self {
        Tls::default()
    }

    /// Also trusts the CA certificate(s) in this PEM file.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.cas.push(Pem::File(path.into()));
        self
    }

    /// Also trusts the CA certificate(s) in this PEM text.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.cas.push(Pem::Bytes(pem.into()));
        self
    }

    /// Presents this client certificate (PEM file) with its private key (PEM
    /// file), for clusters that require client authentication.
    pub fn client_identity_files(
        mut self,
        certificate: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.identity = Some((Pem::File(certificate.into()), Pem::File(key.into())));
        self
    }

    /// Presents this client certificate with its private key (PEM texts).
    pub fn client_identity_pem(
        mut self,
        certificate: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some((Pem::Bytes(certificate.into()), Pem::Bytes(key.into())));
        self
    }

    /// The driver's TLS context; reads and checks every file.
    pub(crate) fn context(&self) -> Result<OpenSsl010Config, CassandraError> {
        let failed = |what: String| {
            move |e: openssl::error::ErrorStack| CassandraError::Tls {
                what,
                reason: e.to_string(),
            }
        };
        let mut builder =
            SslConnector::builder(SslMethod::tls_client()).map_err(failed("TLS set-up".into()))?;
        for ca in &self.cas {
            let what = format!("CA certificate ({})", ca.describe());
            let certs =
                X509::stack_from_pem(&ca.read("CA certificate")?).map_err(failed(what.clone()))?;
            if certs.is_empty() {
                return Err(CassandraError::Tls {
                    what,
                    reason: "no PEM certificate in it".into(),
                });
            }
            for cert in certs {
                builder
                    .cert_store_mut()
                    .add_cert(cert)
                    .map_err(failed(what.clone()))?;
            }
        }
        if let Some((cert, key)) = &self.identity {
            let what = format!("client certificate ({})", cert.describe());
            let cert_x509 =
                X509::from_pem(&cert.read("client certificate")?).map_err(failed(what.clone()))?;
            builder
                .set_certificate(&cert_x509)
                .map_err(failed(what.clone()))?;
            let key_what = format!("client key ({})", key.describe());
            let pkey = PKey::private_key_from_pem(&key.read("client key")?)
                .map_err(failed(key_what.clone()))?;
            builder.set_private_key(&pkey).map_err(failed(key_what))?;
            builder
                .check_private_key()
                .map_err(failed(format!("{what}: key does not match")))?;
        }
        Ok(OpenSsl010Config::new(builder))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_ca_file_is_named() {
        let err = Tls::new()
            .ca_file("/nonexistent/ca.pem")
            .context()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn a_ca_without_certificates_is_refused() {
        let err = Tls::new()
            .ca_pem("not a certificate")
            .context()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("CA certificate"), "{err}");
    }

    #[test]
    fn no_extra_settings_build_a_context() {
        assert!(Tls::new().context().is_ok());
    }
}
