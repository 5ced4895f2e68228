//! The cluster's trust (issue 10): a cluster CA, node certificates that name the node by its
//! `NodeId` (never by an address: NAT'd members and address changes keep working), join
//! tokens that pin the CA, and the mutual-TLS configurations of the peer links.
//!
//! A node certificate carries one DNS name, `node-<uuid>.<cluster>.palisade`, which is also
//! the TLS server name a peer checks whatever address it dialled. The CA key stays where the
//! cluster was made (or offline); members hold only the CA certificate.

use std::sync::Arc;
use std::time::Duration;

use palisade_identity::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

pub mod files;
pub mod join;
pub mod trust_bundle;

/// The DNS-name suffix of every node certificate.
const SUFFIX: &str = "palisade";

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("certificate error: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("not a certificate this cluster issues: {0}")]
    NotOurs(String),
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
}

/// A cluster's id: random, made by `palisade cluster init`, part of every node's name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClusterId(String);

impl ClusterId {
    /// A new random id (16 hex digits).
    pub fn random() -> ClusterId {
        let bytes = *NodeId::random().as_bytes();
        ClusterId(
            bytes[..8]
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect(),
        )
    }

    pub fn parse(text: &str) -> Result<ClusterId, TrustError> {
        let valid = text.len() == 16
            && text
                .bytes()
                .all(|byte| byte.is_ascii_hexdigit() && !byte.is_ascii_uppercase());
        if valid {
            Ok(ClusterId(text.to_owned()))
        } else {
            Err(TrustError::Malformed {
                what: "cluster id",
                detail: text.to_owned(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The name a node's certificate carries and its peers check: `node-<uuid>.<cluster>.palisade`.
pub fn node_dns_name(node: NodeId, cluster: &ClusterId) -> String {
    format!("node-{node}.{}.{SUFFIX}", cluster.as_str())
}

/// The name every member's certificate also carries: what a peer dials by address checks
/// (the node itself is then read from the certificate).
pub fn member_dns_name(cluster: &ClusterId) -> String {
    format!("member.{}.{SUFFIX}", cluster.as_str())
}

/// The node a name belongs to, if it is one of `cluster`'s.
pub fn node_of_dns_name(name: &str, cluster: &ClusterId) -> Option<NodeId> {
    let rest = name.strip_prefix("node-")?;
    let id = rest.strip_suffix(&format!(".{}.{SUFFIX}", cluster.as_str()))?;
    id.parse().ok()
}

/// SHA-256 of a certificate's DER: what a join token pins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(der: &[u8]) -> Fingerprint {
        let mut out = [0u8; 32];
        out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, der).as_ref());
        Fingerprint(out)
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// The cluster CA: its certificate (every member holds it) and its key (only where the
/// cluster was made, or offline).
pub struct ClusterCa {
    pub cluster: ClusterId,
    pub cert_pem: String,
    pub(crate) key: KeyPair,
    cert_der: CertificateDer<'static>,
}

/// `now + lifetime`, or the end of year 9999 (X.509's latest) for lifetimes past it.
fn offset(now: OffsetDateTime, lifetime: Duration) -> OffsetDateTime {
    let latest = rcgen::date_time_ymd(9999, 12, 31);
    i64::try_from(lifetime.as_secs())
        .ok()
        .and_then(|seconds| now.checked_add(time::Duration::seconds(seconds)))
        .map_or(latest, |end| end.min(latest))
}

/// A random 16-byte serial number (RFC 5280 4.1.2.2: unique per CA; a renewal with the same
/// key must not reuse one).
fn serial() -> rcgen::SerialNumber {
    let mut bytes = *NodeId::random().as_bytes();
    // Positive, as DER integers for serials must be.
    bytes[0] &= 0x7f;
    rcgen::SerialNumber::from_slice(&bytes)
}

impl ClusterCa {
    /// A new CA for `cluster`, valid from `now` for `lifetime`.
    pub fn create(
        cluster: ClusterId,
        now: OffsetDateTime,
        lifetime: Duration,
    ) -> Result<ClusterCa, TrustError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("palisade cluster {} CA", cluster.as_str()),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = offset(now, lifetime);
        params.serial_number = Some(serial());
        let cert = params.self_signed(&key)?;
        Ok(ClusterCa {
            cluster,
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key,
        })
    }

    /// The CA of `cluster` from its stored certificate and key.
    pub fn from_pem(
        cluster: ClusterId,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<ClusterCa, TrustError> {
        let key = KeyPair::from_pem(key_pem)?;
        let cert_der = pem_certificate(cert_pem)?;
        Ok(ClusterCa {
            cluster,
            cert_pem: cert_pem.to_owned(),
            cert_der,
            key,
        })
    }

    /// The cluster a CA certificate (PEM) is of, from its name.
    pub fn cluster_of(cert_pem: &str) -> Result<ClusterId, TrustError> {
        let der = pem_certificate(cert_pem)?;
        let (_, cert) =
            x509_parser::parse_x509_certificate(&der).map_err(|error| TrustError::Malformed {
                what: "CA certificate",
                detail: error.to_string(),
            })?;
        let name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|name| name.as_str().ok())
            .unwrap_or_default();
        let id = name
            .strip_prefix("palisade cluster ")
            .and_then(|rest| rest.strip_suffix(" CA"))
            .ok_or_else(|| TrustError::NotOurs(format!("{name:?} is not a palisade cluster CA")))?;
        ClusterId::parse(id)
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Whether the key is this certificate's (a CA file and key file that belong together).
    pub fn key_matches(&self) -> bool {
        x509_parser::parse_x509_certificate(&self.cert_der).is_ok_and(|(_, cert)| {
            cert.public_key().subject_public_key.data.as_ref() == self.key.public_key_raw()
        })
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.cert_der)
    }

    /// When the CA certificate expires.
    pub fn not_after(&self) -> Result<OffsetDateTime, TrustError> {
        let (_, cert) = x509_parser::parse_x509_certificate(&self.cert_der).map_err(|error| {
            TrustError::Malformed {
                what: "CA certificate",
                detail: error.to_string(),
            }
        })?;
        Ok(cert.validity().not_after.to_datetime())
    }

    /// Signs a node's request: the certificate names the node the request names (nothing
    /// else it asks for is taken), serves as client and server, is no CA, and is valid for
    /// `lifetime` from `now` (never past the CA's own expiry). The caller decides whether
    /// that node may have one: the id must be the one its join token was issued for, and not
    /// a member's already.
    pub fn sign(
        &self,
        csr_pem: &str,
        now: OffsetDateTime,
        lifetime: Duration,
    ) -> Result<(NodeId, String), TrustError> {
        let request = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let node = request
            .params
            .subject_alt_names
            .iter()
            .find_map(|san| match san {
                SanType::DnsName(name) => node_of_dns_name(name.as_str(), &self.cluster),
                _ => None,
            })
            .ok_or_else(|| {
                TrustError::NotOurs(format!(
                    "the request names no node of cluster {}",
                    self.cluster.as_str()
                ))
            })?;
        let mut params = CertificateParams::new(vec![
            node_dns_name(node, &self.cluster),
            member_dns_name(&self.cluster),
        ])?;
        params
            .distinguished_name
            .push(DnType::CommonName, node_dns_name(node, &self.cluster));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = now - time::Duration::minutes(5);
        // Never beyond the CA: a certificate that outlives its issuer only fails later.
        params.not_after = offset(now, lifetime).min(self.not_after()?);
        params.serial_number = Some(serial());
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_ca_cert_der(&self.cert_der, &self.key)?;
        let cert = params.signed_by(&request.public_key, &issuer)?;
        Ok((node, cert.pem()))
    }
}

/// A node's own key and its signing request for `cluster` (the key never leaves the node).
pub fn node_key_and_request(
    node: NodeId,
    cluster: &ClusterId,
) -> Result<(String, String), TrustError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let params = CertificateParams::new(vec![node_dns_name(node, cluster)])?;
    let request = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), request.pem()?))
}

fn pem_certificate(pem: &str) -> Result<CertificateDer<'static>, TrustError> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|error| {
        TrustError::Malformed {
            what: "certificate PEM",
            detail: error.to_string(),
        }
    })?;
    Ok(CertificateDer::from(parsed.contents))
}

/// Checks a certificate a node is about to take as its own (a renewal): it chains to one of
/// `trusted_ca_pems` and is valid now, it names `node` of `cluster`, and it is for `key_pem`.
pub fn check_own_certificate(
    cert_pem: &str,
    key_pem: &str,
    trusted_ca_pems: &[String],
    node: NodeId,
    cluster: &ClusterId,
) -> Result<NodeCertificate, TrustError> {
    let der = pem_certificate(cert_pem)?;
    let mut roots = rustls::RootCertStore::empty();
    for pem in trusted_ca_pems {
        roots.add(pem_certificate(pem)?)?;
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()?;
    verifier.verify_client_cert(&der, &[], rustls::pki_types::UnixTime::now())?;
    let read = NodeCertificate::read(&der, cluster)?;
    if read.node != node {
        return Err(TrustError::NotOurs(format!(
            "the certificate names node {}, not this node {node}",
            read.node
        )));
    }
    let key = KeyPair::from_pem(key_pem)?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|error| TrustError::Malformed {
            what: "certificate",
            detail: error.to_string(),
        })?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(TrustError::NotOurs(
            "the certificate is not for this node's new key".to_owned(),
        ));
    }
    Ok(read)
}

/// What a certificate says of the node that holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCertificate {
    pub node: NodeId,
    pub not_after: OffsetDateTime,
}

impl NodeCertificate {
    /// Reads a node certificate of `cluster` (DER).
    pub fn read(der: &[u8], cluster: &ClusterId) -> Result<NodeCertificate, TrustError> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|error| TrustError::Malformed {
                what: "certificate",
                detail: error.to_string(),
            })?;
        let node = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|san| {
                san.value.general_names.iter().find_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(name) => {
                        node_of_dns_name(name, cluster)
                    }
                    _ => None,
                })
            })
            .ok_or_else(|| {
                TrustError::NotOurs(format!("no node name of cluster {}", cluster.as_str()))
            })?;
        Ok(NodeCertificate {
            node,
            not_after: cert.validity().not_after.to_datetime(),
        })
    }

    /// Time left before it expires (zero once it has).
    pub fn remaining(&self, now: OffsetDateTime) -> Duration {
        let left = self.not_after - now;
        Duration::from_secs(left.whole_seconds().max(0) as u64)
    }
}

/// This node's TLS identity: its certificate chain and key, and the CAs it trusts (two during
/// a CA rotation).
pub struct TlsIdentity {
    pub cluster: ClusterId,
    pub node: NodeId,
    pub cert_pem: String,
    pub key_pem: String,
    pub trusted_ca_pems: Vec<String>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    // ring only: two providers in one process make rustls panic at run time.
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsIdentity {
    fn roots(&self) -> Result<rustls::RootCertStore, TrustError> {
        let mut roots = rustls::RootCertStore::empty();
        for pem in &self.trusted_ca_pems {
            roots.add(pem_certificate(pem)?)?;
        }
        Ok(roots)
    }

    fn chain_and_key(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TrustError> {
        let key = KeyPair::from_pem(&self.key_pem)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![pem_certificate(&self.cert_pem)?], key))
    }

    /// Accepting peer links: a client certificate of a trusted CA is required, unless
    /// `accept_joins`, which lets a TLS session without one complete (a joining node has none
    /// yet); the link layer then offers such a session nothing but the join exchange. The
    /// chain sent includes the trusted CAs, so a joining node can check the CA its token pins.
    pub fn server_config(&self, accept_joins: bool) -> Result<rustls::ServerConfig, TrustError> {
        let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()?),
            provider(),
        );
        let verifier = if accept_joins {
            builder.allow_unauthenticated().build()?
        } else {
            builder.build()?
        };
        let (mut chain, key) = self.chain_and_key()?;
        for pem in &self.trusted_ca_pems {
            chain.push(pem_certificate(pem)?);
        }
        Ok(rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?)
    }

    /// Dialling peer links: the peer must present a certificate of a trusted CA for the name
    /// given as server name (`node_dns_name` of the node expected there).
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TrustError> {
        let (chain, key) = self.chain_and_key()?;
        Ok(rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(chain, key)?)
    }
}

#[cfg(test)]
mod tests;
