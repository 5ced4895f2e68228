//! Joining a cluster: a one-time token made on the node that holds the CA key pins that CA
//! (so the new node knows it talks to the cluster, not to whoever answers the address) and
//! carries a secret the CA holder redeems once. The new node's key never leaves it: it sends
//! a signing request and gets its certificate back.

use std::sync::Arc;

use ring::rand::{SecureRandom, SystemRandom};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::{ClusterId, Fingerprint, TrustError, provider};

/// Tokens read `PJ1.<cluster>.<CA fingerprint>.<secret>` (hex), one line, safe in a shell.
const TOKEN_PREFIX: &str = "PJ1";

/// A join token: which cluster, which CA, and the one-time secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub cluster: ClusterId,
    pub ca: Fingerprint,
    pub secret: [u8; 32],
}

impl std::fmt::Debug for JoinToken {
    // The secret never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JoinToken({}, CA {})", self.cluster.as_str(), self.ca)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (index, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * index..2 * index + 2], 16).ok()?;
    }
    Some(out)
}

/// SHA-256 of a token's secret: what the CA holder keeps (never the secret itself).
pub fn secret_digest(secret: &[u8; 32]) -> [u8; 32] {
    Fingerprint::of(secret).0
}

impl JoinToken {
    /// A new token with a random secret.
    pub fn new(cluster: ClusterId, ca: Fingerprint) -> Result<JoinToken, TrustError> {
        let mut secret = [0u8; 32];
        SystemRandom::new()
            .fill(&mut secret)
            .map_err(|_| TrustError::Malformed {
                what: "randomness",
                detail: "the system has none to give".to_owned(),
            })?;
        Ok(JoinToken {
            cluster,
            ca,
            secret,
        })
    }

    pub fn encode(&self) -> String {
        format!(
            "{TOKEN_PREFIX}.{}.{}.{}",
            self.cluster.as_str(),
            self.ca,
            hex(&self.secret)
        )
    }

    pub fn parse(text: &str) -> Result<JoinToken, TrustError> {
        let malformed = || {
            TrustError::Malformed {
            what: "join token",
            detail: "expected PJ1.<cluster>.<CA fingerprint>.<secret> as `palisade cluster token` prints it".to_owned(),
        }
        };
        let mut parts = text.trim().split('.');
        let (Some(TOKEN_PREFIX), Some(cluster), Some(ca), Some(secret), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(malformed());
        };
        Ok(JoinToken {
            cluster: ClusterId::parse(cluster).map_err(|_| malformed())?,
            ca: Fingerprint(unhex32(ca).ok_or_else(malformed)?),
            secret: unhex32(secret).ok_or_else(malformed)?,
        })
    }
}

/// Parses a hex SHA-256 (as [`Fingerprint`] prints it).
pub fn parse_digest(text: &str) -> Option<[u8; 32]> {
    unhex32(text)
}

/// The TLS client of a joining node: no client certificate (it has none yet), and the
/// member must present a chain to the CA the token pins, for the member name of the token's
/// cluster.
pub fn join_client_config(token: &JoinToken) -> Result<rustls::ClientConfig, TrustError> {
    let verifier = PinnedCa {
        fingerprint: token.ca,
        provider: provider(),
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// Trusts exactly the CA with this fingerprint, which the server must send in its chain.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: Fingerprint,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|cert| Fingerprint::of(cert) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the member did not present the cluster CA the join token pins".to_owned(),
                )
            })?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|error| rustls::Error::General(error.to_string()))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What a joining node sends (JSON, one frame).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The token's secret (hex).
    pub secret: String,
    pub node_id: String,
    pub name: String,
    pub csr_pem: String,
}

/// What the CA holder answers.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinResponse {
    pub certificate_pem: Option<String>,
    /// Every CA the cluster trusts now (two during a rotation).
    pub ca_pems: Vec<String>,
    pub cluster: String,
    pub error: Option<String>,
}

/// Join frames are one JSON document of at most this many bytes, behind a 4-byte length.
pub const MAX_JOIN_FRAME: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        let token = JoinToken::new(ClusterId::random(), Fingerprint([7; 32]))
            .unwrap_or_else(|error| panic!("{error}"));
        let text = token.encode();
        assert_eq!(JoinToken::parse(&text).ok(), Some(token.clone()));
        assert_eq!(
            JoinToken::parse(&format!("  {text}\n")).ok(),
            Some(token.clone())
        );
        assert!(
            !format!("{token:?}").contains(&hex(&token.secret)),
            "no secret in Debug"
        );
        for bad in [
            "",
            "PJ1",
            &text.replacen("PJ1", "PJ2", 1),
            &format!("{text}.x"),
            &text[..text.len() - 1],
            &text.replace('.', "-"),
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad}");
        }
    }
}
