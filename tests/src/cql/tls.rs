//! TLS for the test server: a self-signed certificate for 127.0.0.1, made
//! at start with the system OpenSSL.

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::ssl::{SslAcceptor, SslMethod};
use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
use openssl::x509::{X509Builder, X509NameBuilder};

/// A server certificate with its key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct TestCertificate {
    /// The certificate; clients trust it as their CA.
    pub cert_pem: Vec<u8>,
    /// Its private key.
    pub key_pem: Vec<u8>,
}

impl TestCertificate {
    /// A fresh self-signed certificate valid for `127.0.0.1` and `localhost`
    /// for one day.
    pub fn self_signed() -> Result<TestCertificate, ErrorStack> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
        let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
        let mut name = X509NameBuilder::new()?;
        name.append_entry_by_text("CN", "flumen cql-test-server")?;
        let name = name.build();
        let mut serial = BigNum::new()?;
        serial.rand(64, MsbOption::MAYBE_ZERO, false)?;
        let mut cert = X509Builder::new()?;
        cert.set_version(2)?;
        let serial = serial.to_asn1_integer()?;
        cert.set_serial_number(&serial)?;
        cert.set_subject_name(&name)?;
        cert.set_issuer_name(&name)?;
        cert.set_pubkey(&key)?;
        let (from, until) = (Asn1Time::days_from_now(0)?, Asn1Time::days_from_now(1)?);
        cert.set_not_before(&from)?;
        cert.set_not_after(&until)?;
        cert.append_extension(BasicConstraints::new().critical().ca().build()?)?;
        let san = SubjectAlternativeName::new()
            .ip("127.0.0.1")
            .dns("localhost")
            .build(&cert.x509v3_context(None, None))?;
        cert.append_extension(san)?;
        cert.sign(&key, MessageDigest::sha256())?;
        Ok(TestCertificate {
            cert_pem: cert.build().to_pem()?,
            key_pem: key.private_key_to_pem_pkcs8()?,
        })
    }

    /// An acceptor presenting this certificate.
    pub(crate) fn acceptor(&self) -> Result<SslAcceptor, ErrorStack> {
        let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
        builder.set_certificate(openssl::x509::X509::from_pem(&self.cert_pem)?.as_ref())?;
        builder.set_private_key(PKey::private_key_from_pem(&self.key_pem)?.as_ref())?;
        builder.check_private_key()?;
        Ok(builder.build())
    }
}
