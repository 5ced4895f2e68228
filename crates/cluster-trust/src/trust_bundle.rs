//! The cluster's trust bundle: which CAs members trust and which node ids are removed
//! (`palisade cluster remove`). It is signed by a CA of the cluster, never an ordinary
//! replicated document: a member can save policy, but only the CA key can change who is a
//! member. Nodes pass it on; each checks the signature against a CA it already trusts and
//! keeps the one with the highest serial.

use std::collections::BTreeSet;

use palisade_identity::NodeId;
use rcgen::SigningKey;

use crate::{ClusterCa, Fingerprint, TrustError, pem_certificate};

const MAGIC: &[u8] = b"palisade trust bundle v1\n";
/// CAs in one bundle at most (two during a rotation; a few spare).
const MAX_CAS: usize = 8;
/// Removed nodes in one bundle at most.
const MAX_DENIED: usize = 100_000;
/// A signed bundle's size at most (fits one replication message).
pub const MAX_SIGNED: usize = 48_000;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustBundle {
    /// Higher replaces lower.
    pub serial: u64,
    /// Unix milliseconds when it was signed.
    pub issued_ms: u64,
    /// PEM of every trusted CA.
    pub cas: Vec<String>,
    /// Node ids removed from the cluster: refused on every link.
    pub denied: BTreeSet<NodeId>,
}

/// A bundle with the signature of the CA that issued it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedTrustBundle {
    pub bundle: TrustBundle,
    pub signer: Fingerprint,
    /// The canonical bytes the signature covers.
    bytes: Vec<u8>,
    signature: Vec<u8>,
}

fn malformed(detail: &str) -> TrustError {
    TrustError::Malformed {
        what: "trust bundle",
        detail: detail.to_owned(),
    }
}

impl TrustBundle {
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&self.serial.to_be_bytes());
        out.extend_from_slice(&self.issued_ms.to_be_bytes());
        out.push(self.cas.len().min(MAX_CAS) as u8);
        for ca in self.cas.iter().take(MAX_CAS) {
            out.extend_from_slice(&(ca.len() as u32).to_be_bytes());
            out.extend_from_slice(ca.as_bytes());
        }
        out.extend_from_slice(&(self.denied.len().min(MAX_DENIED) as u32).to_be_bytes());
        for node in self.denied.iter().take(MAX_DENIED) {
            out.extend_from_slice(node.as_bytes());
        }
        out
    }

    fn from_bytes(bytes: &[u8]) -> Result<TrustBundle, TrustError> {
        let mut rest = bytes
            .strip_prefix(MAGIC)
            .ok_or_else(|| malformed("not a trust bundle"))?;
        let mut take = |count: usize| -> Result<&[u8], TrustError> {
            if rest.len() < count {
                return Err(malformed("truncated"));
            }
            let (taken, left) = rest.split_at(count);
            rest = left;
            Ok(taken)
        };
        let u64_of = |bytes: &[u8]| {
            let mut array = [0u8; 8];
            array.copy_from_slice(bytes);
            u64::from_be_bytes(array)
        };
        let u32_of = |bytes: &[u8]| {
            let mut array = [0u8; 4];
            array.copy_from_slice(bytes);
            u32::from_be_bytes(array) as usize
        };
        let serial = u64_of(take(8)?);
        let issued_ms = u64_of(take(8)?);
        let ca_count = usize::from(take(1)?[0]);
        if ca_count > MAX_CAS {
            return Err(malformed("too many CAs"));
        }
        let mut cas = Vec::with_capacity(ca_count);
        for _ in 0..ca_count {
            let length = u32_of(take(4)?);
            if length > MAX_SIGNED {
                return Err(malformed("CA too long"));
            }
            let pem = std::str::from_utf8(take(length)?).map_err(|_| malformed("CA not UTF-8"))?;
            cas.push(pem.to_owned());
        }
        let denied_count = u32_of(take(4)?);
        if denied_count > MAX_DENIED {
            return Err(malformed("too many removed nodes"));
        }
        let mut denied = BTreeSet::new();
        for _ in 0..denied_count {
            let mut id = [0u8; 16];
            id.copy_from_slice(take(16)?);
            denied.insert(NodeId::from_bytes(id));
        }
        if !rest.is_empty() {
            return Err(malformed("trailing bytes"));
        }
        Ok(TrustBundle {
            serial,
            issued_ms,
            cas,
            denied,
        })
    }

    /// Signs the bundle with the CA's key.
    pub fn sign(self, ca: &ClusterCa) -> Result<SignedTrustBundle, TrustError> {
        let bytes = self.to_bytes();
        let signature = ca.key.sign(&bytes)?;
        Ok(SignedTrustBundle {
            bundle: self,
            signer: ca.fingerprint(),
            bytes,
            signature,
        })
    }
}

impl SignedTrustBundle {
    /// The stored and transmitted form: bytes, signer, signature.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes.len() + 32 + self.signature.len() + 8);
        out.extend_from_slice(&(self.bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.bytes);
        out.extend_from_slice(&self.signer.0);
        out.extend_from_slice(&(self.signature.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.signature);
        out
    }

    /// Reads a signed bundle and checks its signature against one of `trusted_cas` (PEM):
    /// a bundle signed by any other key is refused, whatever it says.
    pub fn verify(wire: &[u8], trusted_cas: &[String]) -> Result<SignedTrustBundle, TrustError> {
        if wire.len() > MAX_SIGNED {
            return Err(malformed("too long"));
        }
        let (length, rest) = wire
            .split_at_checked(4)
            .ok_or_else(|| malformed("truncated"))?;
        let mut array = [0u8; 4];
        array.copy_from_slice(length);
        let length = u32::from_be_bytes(array) as usize;
        let (bytes, rest) = rest
            .split_at_checked(length)
            .ok_or_else(|| malformed("truncated"))?;
        let (signer, rest) = rest
            .split_at_checked(32)
            .ok_or_else(|| malformed("truncated"))?;
        let (length, signature) = rest
            .split_at_checked(2)
            .ok_or_else(|| malformed("truncated"))?;
        if signature.len() != usize::from(u16::from_be_bytes([length[0], length[1]])) {
            return Err(malformed("signature length"));
        }
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(signer);
        let signer = Fingerprint(fingerprint);
        let ca = trusted_cas
            .iter()
            .filter_map(|pem| pem_certificate(pem).ok())
            .find(|der| Fingerprint::of(der) == signer)
            .ok_or_else(|| {
                TrustError::NotOurs("signed by a CA this node does not trust".to_owned())
            })?;
        let (_, cert) = x509_parser::parse_x509_certificate(&ca)
            .map_err(|error| malformed(&error.to_string()))?;
        let key = cert.public_key().subject_public_key.data.as_ref();
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, key)
            .verify(bytes, signature)
            .map_err(|_| {
                TrustError::NotOurs("the trust bundle's signature does not verify".to_owned())
            })?;
        Ok(SignedTrustBundle {
            bundle: TrustBundle::from_bytes(bytes)?,
            signer,
            bytes: bytes.to_vec(),
            signature: signature.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ca() -> ClusterCa {
        ClusterCa::create(
            crate::ClusterId::random(),
            time::OffsetDateTime::now_utc(),
            Duration::from_secs(86_400),
        )
        .unwrap_or_else(|error| panic!("{error}"))
    }

    #[test]
    fn a_signed_bundle_verifies_with_its_ca_only_and_tampering_is_refused() {
        let (ours, theirs) = (ca(), ca());
        let bundle = TrustBundle {
            serial: 7,
            issued_ms: 1_800_000_000_000,
            cas: vec![ours.cert_pem.clone()],
            denied: BTreeSet::from([NodeId::random(), NodeId::random()]),
        };
        let signed = bundle
            .clone()
            .sign(&ours)
            .unwrap_or_else(|error| panic!("{error}"));
        let wire = signed.to_wire();
        let read = SignedTrustBundle::verify(&wire, std::slice::from_ref(&ours.cert_pem))
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(read.bundle, bundle);
        assert!(
            SignedTrustBundle::verify(&wire, std::slice::from_ref(&theirs.cert_pem)).is_err(),
            "another cluster's CA does not vouch for it"
        );
        // A member (no CA key) cannot forge one: signed by another key, claiming our CA.
        let forged = bundle
            .sign(&theirs)
            .unwrap_or_else(|error| panic!("{error}"));
        let mut forged_wire = forged.to_wire();
        let signer_at = 4 + forged.bytes.len();
        forged_wire[signer_at..signer_at + 32].copy_from_slice(&ours.fingerprint().0);
        assert!(
            SignedTrustBundle::verify(&forged_wire, std::slice::from_ref(&ours.cert_pem)).is_err()
        );
        for index in [5, 30, wire.len() - 3] {
            let mut tampered = wire.clone();
            tampered[index] ^= 1;
            assert!(
                SignedTrustBundle::verify(&tampered, std::slice::from_ref(&ours.cert_pem)).is_err(),
                "byte {index}"
            );
        }
        for cut in 0..wire.len() {
            assert!(
                SignedTrustBundle::verify(&wire[..cut], std::slice::from_ref(&ours.cert_pem))
                    .is_err()
            );
        }
    }
}
