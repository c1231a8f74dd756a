//! The cluster's certificate authority and node certificates (rcgen): made at `init`,
//! issued at `join`, and what the API's mutual TLS checks against.
//!
//! A node certificate serves and authenticates: its SANs are the node's name and
//! addresses, its extended key usages both server and client auth. The CA pin
//! (`sha256:` + the hex SHA-256 of the CA's SubjectPublicKeyInfo, as kubeadm pins it)
//! goes into join tokens so a joining node can check the CA before it sends anything.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, CertifiedIssuer,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::config::hex;

/// How long a CA certificate is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a node certificate is valid.
pub const NODE_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the CA certificate and key do not belong together")]
    Mismatch,
}

/// What a certificate says its holder is (its subject's organizational unit): a node of
/// the cluster, or an operator. A certificate without one (issued before roles) is a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRole {
    Node,
    Operator,
}

impl CertRole {
    fn unit(self) -> &'static str {
        match self {
            CertRole::Node => "milvus-fleet node",
            CertRole::Operator => "milvus-fleet operator",
        }
    }

    /// The role a client certificate (DER) carries: an operator only when it says so.
    pub fn of_der(cert_der: &[u8]) -> CertRole {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert_der) else {
            return CertRole::Node;
        };
        let operator = cert
            .subject()
            .iter_organizational_unit()
            .any(|unit| unit.as_str().ok() == Some(CertRole::Operator.unit()));
        if operator {
            CertRole::Operator
        } else {
            CertRole::Node
        }
    }
}

/// The common name of a certificate (DER): a node certificate's node name.
pub fn common_name_of_der(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let name = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(name)
}

/// PEM-encoded certificate and private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// The cluster CA.
pub struct Ca {
    pem: Pem,
    issuer: Issuer<'static, KeyPair>,
    public_key_info: Vec<u8>,
}

impl Ca {
    /// A new self-signed CA for `cluster`.
    pub fn create(cluster: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&format!("milvus-fleet CA {cluster}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + CA_VALIDITY;
        let key_pem = key.serialize_pem();
        let certified = CertifiedIssuer::self_signed(params, key)?;
        Self::load(&Pem {
            cert: certified.pem(),
            key: key_pem,
        })
    }

    /// The CA from its stored certificate and key.
    pub fn load(pem: &Pem) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(&pem.key)?;
        let public_key_info = key.subject_public_key_info();
        let issuer = Issuer::from_ca_cert_pem(&pem.cert, key)?;
        let cert_key = cert_public_key_info(&pem.cert)?;
        if cert_key != public_key_info {
            return Err(PkiError::Mismatch);
        }
        Ok(Self {
            pem: pem.clone(),
            issuer,
            public_key_info,
        })
    }

    pub fn pem(&self) -> &Pem {
        &self.pem
    }

    /// `sha256:<hex>` of the CA's SubjectPublicKeyInfo.
    pub fn pin(&self) -> String {
        pin_of(&self.public_key_info)
    }

    /// A certificate and new key for `node`, reachable at `addresses`.
    pub fn issue_node(
        &self,
        node: &str,
        addresses: &[String],
        valid_for: Duration,
    ) -> Result<Pem, PkiError> {
        let key = KeyPair::generate()?;
        let cert = node_params(node, addresses, valid_for)?.signed_by(&key, &self.issuer)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// A client certificate and new key for operator `name`: it authenticates (client
    /// auth only, no address) and says it is an operator's.
    pub fn issue_operator(&self, name: &str, valid_for: Duration) -> Result<Pem, PkiError> {
        let key = KeyPair::generate()?;
        let params = client_params(subject(name, CertRole::Operator), valid_for);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// A client certificate and new key for etcd user `user` (the Milvus roles' `milvus`):
    /// client auth only, no address, no role the API accepts (its hash is no node's).
    pub fn issue_etcd_client(&self, user: &str, valid_for: Duration) -> Result<Pem, PkiError> {
        let key = KeyPair::generate()?;
        let cert = client_params(name(user), valid_for).signed_by(&key, &self.issuer)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// Signs a joining node's request for etcd user `user`'s client certificate (see
    /// [`Ca::issue_etcd_client`]); only the public key is taken from the request.
    pub fn sign_etcd_client_csr(&self, csr_pem: &str, user: &str) -> Result<String, PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        csr.params = client_params(name(user), NODE_VALIDITY);
        Ok(csr.signed_by(&self.issuer)?.pem())
    }

    /// Signs a joining node's CSR. Only the public key is taken from the request; the
    /// name, addresses and usages are the cluster's decision.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        node: &str,
        addresses: &[String],
    ) -> Result<String, PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        csr.params = node_params(node, addresses, NODE_VALIDITY)?;
        Ok(csr.signed_by(&self.issuer)?.pem())
    }
}

/// A CSR and its new private key, made by a joining node.
pub fn node_csr(node: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(node);
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

/// The pin of the key a certificate request (PEM) asks a certificate for; the request is
/// signed with that key, so it proves the sender holds it.
pub fn pin_of_csr(csr_pem: &str) -> Result<String, PkiError> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
    Ok(pin_of(&csr.public_key.subject_public_key_info()))
}

/// The pin of a CA certificate, as a joining node computes it from what it was sent.
pub fn pin_of_cert(cert_pem: &str) -> Result<String, PkiError> {
    Ok(pin_of(&cert_public_key_info(cert_pem)?))
}

/// The pin of a CA certificate in DER form (as a TLS handshake carries it).
pub fn pin_of_der(cert_der: &[u8]) -> Result<String, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|_| PkiError::Rcgen(rcgen::Error::CouldNotParseCertificate))?;
    Ok(pin_of(cert.public_key().raw))
}

/// The SHA-256 of a PEM certificate's DER bytes: how the cluster names an issued
/// certificate (and revokes it).
pub fn cert_sha256(cert_pem: &str) -> Result<String, PkiError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|_| PkiError::Rcgen(rcgen::Error::CouldNotParseCertificate))?;
    Ok(hex(&Sha256::digest(&pem.contents)))
}

fn pin_of(public_key_info: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(public_key_info)))
}

/// The SubjectPublicKeyInfo (DER) of a PEM certificate.
fn cert_public_key_info(cert_pem: &str) -> Result<Vec<u8>, PkiError> {
    let unparsable = || PkiError::Rcgen(rcgen::Error::CouldNotParseCertificate);
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|_| unparsable())?;
    let cert = pem.parse_x509().map_err(|_| unparsable())?;
    Ok(cert.public_key().raw.to_vec())
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn subject(common_name: &str, role: CertRole) -> DistinguishedName {
    let mut subject = name(common_name);
    subject.push(DnType::OrganizationalUnitName, role.unit());
    subject
}

/// A client-only certificate (no address) for `subject`.
fn client_params(subject: DistinguishedName, valid_for: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = subject;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + valid_for;
    params
}

fn node_params(
    node: &str,
    addresses: &[String],
    valid_for: Duration,
) -> Result<CertificateParams, PkiError> {
    let mut sans = vec![
        node.to_owned(),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
    ];
    sans.extend(addresses.iter().cloned());
    let mut params = CertificateParams::new(sans)?;
    params.distinguished_name = subject(node, CertRole::Node);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + valid_for;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, UnixTime};
    use rustls::server::WebPkiClientVerifier;
    use rustls::RootCertStore;

    use super::*;

    /// The check the API's mutual TLS makes: is this client certificate from our CA?
    fn accepted(ca: &Ca, cert_pem: &str) -> bool {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.pem().cert.as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        verifier
            .verify_client_cert(&cert, &[], UnixTime::now())
            .is_ok()
    }

    #[test]
    fn a_certificate_says_whether_its_holder_is_an_operator() {
        let ca = Ca::create("test").unwrap();
        let der = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let node = ca.issue_node("n1", &[], NODE_VALIDITY).unwrap();
        let operator = ca.issue_operator("alice", NODE_VALIDITY).unwrap();
        assert_eq!(CertRole::of_der(&der(&node.cert)), CertRole::Node);
        assert_eq!(CertRole::of_der(&der(&operator.cert)), CertRole::Operator);
        assert!(accepted(&ca, &operator.cert));
        // A node naming itself "operator" is still a node; garbage is no operator.
        let named = ca
            .issue_node("milvus-fleet operator", &[], NODE_VALIDITY)
            .unwrap();
        assert_eq!(CertRole::of_der(&der(&named.cert)), CertRole::Node);
        assert_eq!(CertRole::of_der(b"not a certificate"), CertRole::Node);
    }

    #[test]
    fn node_certificates_of_this_ca_are_accepted_and_others_are_not() {
        let ca = Ca::create("test").unwrap();
        let node = ca
            .issue_node("n1", &["10.0.0.1".into()], NODE_VALIDITY)
            .unwrap();
        assert!(accepted(&ca, &node.cert));

        let other = Ca::create("test").unwrap();
        let stranger = other
            .issue_node("n1", &["10.0.0.1".into()], NODE_VALIDITY)
            .unwrap();
        assert!(
            !accepted(&ca, &stranger.cert),
            "a certificate from another CA"
        );

        let expired = {
            let key = KeyPair::generate().unwrap();
            let mut params = node_params("n1", &[], NODE_VALIDITY).unwrap();
            params.not_before = OffsetDateTime::now_utc() - time::Duration::days(10);
            params.not_after = OffsetDateTime::now_utc() - time::Duration::days(1);
            params.signed_by(&key, &ca.issuer).unwrap().pem()
        };
        assert!(!accepted(&ca, &expired), "an expired certificate");
    }

    #[test]
    fn a_signed_request_gets_the_clusters_name_and_addresses() {
        let ca = Ca::create("test").unwrap();
        let (csr, _key) = node_csr("n2").unwrap();
        let cert = ca.sign_csr(&csr, "n2", &["10.0.0.2".into()]).unwrap();
        assert!(accepted(&ca, &cert));
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert.as_bytes()).unwrap();
        let parsed = pem.parse_x509().unwrap();
        let sans = format!(
            "{:?}",
            parsed.subject_alternative_name().unwrap().unwrap().value
        );
        assert!(
            sans.contains("10.0.0.2") || sans.contains("[10, 0, 0, 2]"),
            "{sans}"
        );
        assert!(sans.contains("n2"), "{sans}");
    }

    #[test]
    fn the_pin_is_the_same_from_the_key_and_from_the_certificate() {
        let ca = Ca::create("test").unwrap();
        assert_eq!(pin_of_cert(&ca.pem().cert).unwrap(), ca.pin());
        assert!(ca.pin().starts_with("sha256:") && ca.pin().len() == 7 + 64);
        let reloaded = Ca::load(ca.pem()).unwrap();
        assert_eq!(reloaded.pin(), ca.pin());
        let other = Ca::create("test").unwrap();
        assert_ne!(other.pin(), ca.pin());
        let mixed = Pem {
            cert: ca.pem().cert.clone(),
            key: other.pem().key.clone(),
        };
        assert!(matches!(Ca::load(&mixed), Err(PkiError::Mismatch)));
    }
}
