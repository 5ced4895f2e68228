//! The cluster's trust as files in the node's data directory (`<data_dir>/cluster/`):
//!
//! | file | what | who has it |
//! | --- | --- | --- |
//! | `cluster-id` | the cluster's id | every member |
//! | `ca.pem` | every CA the cluster trusts (two during a rotation) | every member |
//! | `ca-key.pem` | the CA's key (mode 0600) | the node that made the cluster, or nobody (offline) |
//! | `node.pem`, `node-key.pem` | this node's certificate and key (0600) | every member |
//! | `join-tokens` | SHA-256 of each unused join token's secret, and its expiry | the CA holder |
//!
//! Every write goes to a temporary file that is then renamed over the old one, so a crash
//! leaves the old file or the new, never half of one.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use palisade_identity::NodeId;
use time::OffsetDateTime;

use crate::join::{JoinToken, parse_digest, secret_digest};
use crate::trust_bundle::{SignedTrustBundle, TrustBundle};
use crate::{ClusterCa, ClusterId, Fingerprint, NodeCertificate, TlsIdentity, TrustError};

/// A node certificate's lifetime unless the operator asks for another.
pub const NODE_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// The CA's lifetime.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Expiry closer than this raises the alert (status, log, metric).
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {error}")]
    Trust { path: PathBuf, error: TrustError },
    #[error(
        "this node is already a member of cluster {0} ({1}); remove that directory to start over"
    )]
    AlreadyMember(String, PathBuf),
    #[error(
        "this node does not hold the cluster CA's key: tokens are made and requests signed on the node that made the cluster (`palisade cluster init`)"
    )]
    NoCaKey,
    #[error(
        "the join token is unknown, used already or expired: make a new one with `palisade cluster token` on the node that holds the CA"
    )]
    TokenRefused,
    #[error("{path} names node {named}, but this node is {me}")]
    WrongNode {
        path: PathBuf,
        named: NodeId,
        me: NodeId,
    },
}

/// The trust directory of one data directory.
#[derive(Clone, Debug)]
pub struct TrustDir {
    dir: PathBuf,
}

/// What a member loads at start.
pub struct Membership {
    pub identity: TlsIdentity,
    pub certificate: NodeCertificate,
    /// Whether this node holds the CA key (it then answers join requests).
    pub holds_ca_key: bool,
}

impl TrustDir {
    pub fn of_data_dir(data_dir: &Path) -> TrustDir {
        TrustDir {
            dir: data_dir.join("cluster"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Whether this node has a certificate of a cluster (it is a member).
    pub fn is_member(&self) -> bool {
        self.file("node.pem").exists()
    }

    fn read(&self, name: &str) -> Result<String, FilesError> {
        let path = self.file(name);
        std::fs::read_to_string(&path).map_err(|error| FilesError::Io { path, error })
    }

    fn write_bytes(&self, name: &str, contents: &[u8]) -> Result<(), FilesError> {
        self.write_mode(name, contents, false)
    }

    fn write(&self, name: &str, contents: &str, secret: bool) -> Result<(), FilesError> {
        self.write_mode(name, contents.as_bytes(), secret)
    }

    fn write_mode(&self, name: &str, contents: &[u8], secret: bool) -> Result<(), FilesError> {
        let path = self.file(name);
        let io = |error| FilesError::Io {
            path: path.clone(),
            error,
        };
        std::fs::create_dir_all(&self.dir).map_err(|error| FilesError::Io {
            path: self.dir.clone(),
            error,
        })?;
        let temporary = self.file(&format!(".{name}.tmp"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(if secret { 0o600 } else { 0o644 })
            .open(&temporary)
            .map_err(io)?;
        file.write_all(contents).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&temporary, &path).map_err(io)?;
        Ok(())
    }

    fn trust_error(&self, name: &str) -> impl Fn(TrustError) -> FilesError + '_ {
        let path = self.file(name);
        move |error| FilesError::Trust {
            path: path.clone(),
            error,
        }
    }

    pub fn cluster_id(&self) -> Result<ClusterId, FilesError> {
        ClusterId::parse(self.read("cluster-id")?.trim()).map_err(self.trust_error("cluster-id"))
    }

    /// Makes a cluster: a CA (its key kept here) and this node's certificate.
    pub fn init(&self, node: NodeId, now: OffsetDateTime) -> Result<ClusterId, FilesError> {
        if self.is_member() {
            let cluster = self.cluster_id().map(|id| id.as_str().to_owned());
            return Err(FilesError::AlreadyMember(
                cluster.unwrap_or_else(|_| "?".to_owned()),
                self.dir.clone(),
            ));
        }
        let cluster = ClusterId::random();
        let ca = ClusterCa::create(cluster.clone(), now, CA_LIFETIME)
            .map_err(self.trust_error("ca.pem"))?;
        let (key_pem, request) = crate::node_key_and_request(node, &cluster)
            .map_err(self.trust_error("node-key.pem"))?;
        let (_, cert_pem) = ca
            .sign(&request, now, NODE_CERT_LIFETIME)
            .map_err(self.trust_error("node.pem"))?;
        // The node certificate last: its presence is what makes this node a member.
        self.write("ca-key.pem", &ca.key_pem(), true)?;
        self.write("ca.pem", &ca.cert_pem, false)?;
        self.write("cluster-id", &format!("{}\n", cluster.as_str()), false)?;
        self.write("node-key.pem", &key_pem, true)?;
        self.write("node.pem", &cert_pem, false)?;
        Ok(cluster)
    }

    /// Every CA certificate this node trusts (PEM, one each).
    pub fn trusted_cas(&self) -> Result<Vec<String>, FilesError> {
        let text = self.read("ca.pem")?;
        let cas = split_pem(&text);
        if cas.is_empty() {
            return Err(FilesError::Trust {
                path: self.file("ca.pem"),
                error: TrustError::Malformed {
                    what: "CA file",
                    detail: "no certificate in it".to_owned(),
                },
            });
        }
        Ok(cas)
    }

    /// The CA with its key, when this node holds it (the newest CA in `ca.pem` it signs with).
    pub fn ca(&self) -> Result<Option<ClusterCa>, FilesError> {
        let key_path = self.file("ca-key.pem");
        if !key_path.exists() {
            return Ok(None);
        }
        let key = self.read("ca-key.pem")?;
        let cluster = self.cluster_id()?;
        let mut last_error = None;
        // The key belongs to one of the trusted CAs: the one whose public key it is.
        for cert in self.trusted_cas()?.iter().rev() {
            match ClusterCa::from_pem(cluster.clone(), cert, &key) {
                Ok(ca) if ca.key_matches() => return Ok(Some(ca)),
                Ok(_) => {}
                Err(error) => last_error = Some(error),
            }
        }
        Err(FilesError::Trust {
            path: key_path,
            error: last_error.unwrap_or(TrustError::NotOurs(
                "the CA key belongs to none of the trusted CAs".to_owned(),
            )),
        })
    }

    /// Replaces this node's key and certificate (a renewal), crash-safe: both go first into
    /// one journal file, then each is renamed into place, then the journal goes; a start that
    /// finds the journal finishes the replacement ([`TrustDir::membership`]).
    pub fn replace_certificate(&self, key_pem: &str, cert_pem: &str) -> Result<(), FilesError> {
        self.write("renewal.pem", &format!("{key_pem}{cert_pem}"), true)?;
        self.finish_renewal()
    }

    /// Moves a journalled renewal into `node-key.pem` and `node.pem`, if there is one.
    fn finish_renewal(&self) -> Result<(), FilesError> {
        let journal = self.file("renewal.pem");
        let text = match std::fs::read_to_string(&journal) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => {
                return Err(FilesError::Io {
                    path: journal,
                    error,
                });
            }
        };
        let Some(split) = text.find("-----BEGIN CERTIFICATE-----") else {
            // Torn before it was whole (the rename makes that impossible, but say so).
            let _ = std::fs::remove_file(&journal);
            return Ok(());
        };
        let (key_pem, cert_pem) = text.split_at(split);
        self.write("node-key.pem", key_pem, true)?;
        self.write("node.pem", cert_pem, false)?;
        std::fs::remove_file(&journal).map_err(|error| FilesError::Io {
            path: journal,
            error,
        })
    }

    /// Loads this member's TLS identity; the certificate must name `node`.
    pub fn membership(&self, node: NodeId) -> Result<Membership, FilesError> {
        self.finish_renewal()?;
        let cluster = self.cluster_id()?;
        let cert_pem = self.read("node.pem")?;
        let key_pem = self.read("node-key.pem")?;
        let der = crate::pem_certificate(&cert_pem).map_err(self.trust_error("node.pem"))?;
        let certificate =
            NodeCertificate::read(&der, &cluster).map_err(self.trust_error("node.pem"))?;
        if certificate.node != node {
            return Err(FilesError::WrongNode {
                path: self.file("node.pem"),
                named: certificate.node,
                me: node,
            });
        }
        Ok(Membership {
            identity: TlsIdentity {
                cluster,
                node,
                cert_pem,
                key_pem,
                trusted_ca_pems: self.trusted_cas()?,
            },
            certificate,
            holds_ca_key: self.file("ca-key.pem").exists(),
        })
    }

    /// Makes a one-time join token valid for `lifetime` (only where the CA key is).
    pub fn issue_token(
        &self,
        now: OffsetDateTime,
        lifetime: Duration,
    ) -> Result<JoinToken, FilesError> {
        let ca = self.ca()?.ok_or(FilesError::NoCaKey)?;
        let token = JoinToken::new(ca.cluster.clone(), ca.fingerprint())
            .map_err(self.trust_error("join-tokens"))?;
        let expires = now.unix_timestamp() + lifetime.as_secs() as i64;
        let mut tokens = self.tokens(now)?;
        tokens.push((secret_digest(&token.secret), expires));
        self.write_tokens(&tokens)?;
        Ok(token)
    }

    /// Unexpired tokens.
    fn tokens(&self, now: OffsetDateTime) -> Result<Vec<([u8; 32], i64)>, FilesError> {
        let text = match std::fs::read_to_string(self.file("join-tokens")) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(error) => {
                return Err(FilesError::Io {
                    path: self.file("join-tokens"),
                    error,
                });
            }
        };
        Ok(text
            .lines()
            .filter_map(|line| {
                let (digest, expires) = line.split_once(' ')?;
                Some((parse_digest(digest)?, expires.trim().parse::<i64>().ok()?))
            })
            .filter(|(_, expires)| *expires > now.unix_timestamp())
            .collect())
    }

    fn write_tokens(&self, tokens: &[([u8; 32], i64)]) -> Result<(), FilesError> {
        let text: String = tokens
            .iter()
            .map(|(digest, expires)| format!("{} {expires}\n", Fingerprint(*digest)))
            .collect();
        self.write("join-tokens", &text, true)
    }

    /// Uses up the token with this secret: `Ok` once, then never again.
    pub fn redeem(&self, secret: &[u8; 32], now: OffsetDateTime) -> Result<(), FilesError> {
        let digest = secret_digest(secret);
        let mut tokens = self.tokens(now)?;
        let before = tokens.len();
        // Digests compare in plain time: timing reveals a digest's prefix, never the secret.
        tokens.retain(|(held, _)| *held != digest);
        if tokens.len() == before {
            return Err(FilesError::TokenRefused);
        }
        self.write_tokens(&tokens)
    }

    /// The trust bundle this node holds, checked against its CAs (`None`: none yet).
    pub fn trust_bundle(&self) -> Result<Option<SignedTrustBundle>, FilesError> {
        let path = self.file("trust-bundle");
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(FilesError::Io { path, error }),
        };
        SignedTrustBundle::verify(&bytes, &self.trusted_cas()?)
            .map(Some)
            .map_err(self.trust_error("trust-bundle"))
    }

    /// Keeps `signed` if it is newer than the bundle held; returns whether it was.
    pub fn offer_trust_bundle(&self, signed: &SignedTrustBundle) -> Result<bool, FilesError> {
        let held = self.trust_bundle()?.map_or(0, |held| held.bundle.serial);
        if signed.bundle.serial <= held {
            return Ok(false);
        }
        self.write_bytes("trust-bundle", &signed.to_wire())?;
        Ok(true)
    }

    /// Takes the CAs a verified trust bundle names as the ones this node trusts (a rotation
    /// reaching a member); returns whether they changed.
    pub fn adopt_cas(&self, cas: &[String]) -> Result<bool, FilesError> {
        if cas.is_empty() || self.trusted_cas()? == cas {
            return Ok(false);
        }
        self.write("ca.pem", &cas.concat(), false)?;
        Ok(true)
    }

    /// The current trust bundle's contents, or a first one with the CAs trusted here.
    fn current_bundle(&self) -> Result<TrustBundle, FilesError> {
        Ok(match self.trust_bundle()? {
            Some(held) => held.bundle,
            None => TrustBundle {
                cas: self.trusted_cas()?,
                ..TrustBundle::default()
            },
        })
    }

    /// Starts a CA rotation (on the node holding the CA key): a new CA for the same cluster,
    /// trusted beside the old one by a bundle the old CA signs (every member trusts it), its
    /// key now the one this node signs with, and this node's certificate renewed from it.
    /// Members then renew theirs (`palisade cluster renew`); [`TrustDir::finish_rotation`]
    /// drops the old CA.
    pub fn rotate_ca(
        &self,
        node: NodeId,
        now: OffsetDateTime,
        now_ms: u64,
    ) -> Result<SignedTrustBundle, FilesError> {
        let old = self.ca()?.ok_or(FilesError::NoCaKey)?;
        let new = ClusterCa::create(old.cluster.clone(), now, CA_LIFETIME)
            .map_err(self.trust_error("ca.pem"))?;
        let mut bundle = self.current_bundle()?;
        bundle.serial += 1;
        bundle.issued_ms = now_ms;
        bundle.cas = self.trusted_cas()?;
        bundle.cas.push(new.cert_pem.clone());
        let signed = bundle
            .sign(&old)
            .map_err(self.trust_error("trust-bundle"))?;
        // Trust both, then sign with the new key; the old key is kept apart, unused.
        self.write("ca.pem", &signed.bundle.cas.concat(), false)?;
        self.write("ca-key.retired.pem", &old.key_pem(), true)?;
        self.write("ca-key.pem", &new.key_pem(), true)?;
        self.write_bytes("trust-bundle", &signed.to_wire())?;
        let (key, request) = crate::node_key_and_request(node, &old.cluster)
            .map_err(self.trust_error("node-key.pem"))?;
        let (_, cert) = new
            .sign(&request, now, NODE_CERT_LIFETIME)
            .map_err(self.trust_error("node.pem"))?;
        self.replace_certificate(&key, &cert)?;
        Ok(signed)
    }

    /// Ends a CA rotation: only the CA whose key this node holds stays trusted, by a bundle
    /// that CA signs. Members whose certificate the old CA issued are refused from then on.
    pub fn finish_rotation(&self, now_ms: u64) -> Result<SignedTrustBundle, FilesError> {
        let ca = self.ca()?.ok_or(FilesError::NoCaKey)?;
        let mut bundle = self.current_bundle()?;
        bundle.serial += 1;
        bundle.issued_ms = now_ms;
        bundle.cas = vec![ca.cert_pem.clone()];
        let signed = bundle.sign(&ca).map_err(self.trust_error("trust-bundle"))?;
        self.write("ca.pem", &ca.cert_pem, false)?;
        self.write_bytes("trust-bundle", &signed.to_wire())?;
        let retired = self.file("ca-key.retired.pem");
        if retired.exists() {
            std::fs::remove_file(&retired).map_err(|error| FilesError::Io {
                path: retired,
                error,
            })?;
        }
        Ok(signed)
    }

    /// Removes `node` from the cluster: a new trust bundle naming it, signed with the CA key
    /// held here.
    pub fn remove_node(&self, node: NodeId, now_ms: u64) -> Result<SignedTrustBundle, FilesError> {
        let ca = self.ca()?.ok_or(FilesError::NoCaKey)?;
        let mut bundle = self.current_bundle()?;
        bundle.serial += 1;
        bundle.issued_ms = now_ms;
        bundle.denied.insert(node);
        let signed = bundle.sign(&ca).map_err(self.trust_error("trust-bundle"))?;
        self.write_bytes("trust-bundle", &signed.to_wire())?;
        Ok(signed)
    }

    /// For a CA kept offline: this node's key (kept here) and a signing request for the
    /// cluster of `ca_pem`, to be signed with `palisade cluster sign` where the CA key is.
    pub fn prepare_request(&self, ca_pem: &str, node: NodeId) -> Result<String, FilesError> {
        if self.is_member() {
            let cluster = self.cluster_id().map(|id| id.as_str().to_owned());
            return Err(FilesError::AlreadyMember(
                cluster.unwrap_or_else(|_| "?".to_owned()),
                self.dir.clone(),
            ));
        }
        let cluster = ClusterCa::cluster_of(ca_pem).map_err(self.trust_error("ca.pem"))?;
        let (key_pem, request) = crate::node_key_and_request(node, &cluster)
            .map_err(self.trust_error("request-key.pem"))?;
        self.write("ca.pem", ca_pem, false)?;
        self.write("cluster-id", &format!("{}\n", cluster.as_str()), false)?;
        self.write("request-key.pem", &key_pem, true)?;
        Ok(request)
    }

    /// Takes the certificate signed for [`TrustDir::prepare_request`]'s request: checked
    /// (trusted CA, this node, the key kept here), then installed; this node is a member.
    pub fn install_signed(
        &self,
        node: NodeId,
        cert_pem: &str,
    ) -> Result<NodeCertificate, FilesError> {
        let key_pem = self.read("request-key.pem")?;
        let cluster = self.cluster_id()?;
        let checked =
            crate::check_own_certificate(cert_pem, &key_pem, &self.trusted_cas()?, node, &cluster)
                .map_err(self.trust_error("node.pem"))?;
        self.write("node-key.pem", &key_pem, true)?;
        self.write("node.pem", cert_pem, false)?;
        let key_path = self.file("request-key.pem");
        std::fs::remove_file(&key_path).map_err(|error| FilesError::Io {
            path: key_path,
            error,
        })?;
        Ok(checked)
    }

    /// Stores what a join brought: the cluster, its CAs, this node's key and certificate.
    pub fn install(
        &self,
        cluster: &ClusterId,
        ca_pems: &[String],
        key_pem: &str,
        cert_pem: &str,
    ) -> Result<(), FilesError> {
        if self.is_member() {
            return Err(FilesError::AlreadyMember(
                cluster.as_str().to_owned(),
                self.dir.clone(),
            ));
        }
        self.write("ca.pem", &ca_pems.concat(), false)?;
        self.write("cluster-id", &format!("{}\n", cluster.as_str()), false)?;
        self.write("node-key.pem", key_pem, true)?;
        self.write("node.pem", cert_pem, false)
    }
}

/// Splits concatenated PEM certificates.
fn split_pem(text: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let Some(end) = rest[start..].find(END) else {
            break;
        };
        let stop = start + end + END.len();
        out.push(format!("{}\n", &rest[start..stop]));
        rest = &rest[stop..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("palisade-trust-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn init_then_token_then_join_then_membership() {
        let now = OffsetDateTime::now_utc();
        let (first, second) = (NodeId::random(), NodeId::random());
        let holder = TrustDir::of_data_dir(&dir("holder"));
        let cluster = holder
            .init(first, now)
            .unwrap_or_else(|error| panic!("{error}"));
        assert!(matches!(
            holder.init(first, now),
            Err(FilesError::AlreadyMember(..))
        ));
        let membership = holder
            .membership(first)
            .unwrap_or_else(|error| panic!("{error}"));
        assert!(membership.holds_ca_key);
        assert!(matches!(
            holder.membership(second),
            Err(FilesError::WrongNode { .. })
        ));

        let token = holder
            .issue_token(now, Duration::from_secs(600))
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(token.cluster, cluster);
        let ca = holder.ca().ok().flatten().unwrap_or_else(|| panic!("CA"));
        assert_eq!(token.ca, ca.fingerprint());
        assert!(holder.redeem(&[9; 32], now).is_err(), "unknown secret");
        holder
            .redeem(&token.secret, now)
            .unwrap_or_else(|error| panic!("{error}"));
        assert!(
            matches!(
                holder.redeem(&token.secret, now),
                Err(FilesError::TokenRefused)
            ),
            "once only"
        );
        let late = holder
            .issue_token(now, Duration::from_secs(60))
            .unwrap_or_else(|error| panic!("{error}"));
        assert!(
            holder
                .redeem(&late.secret, now + time::Duration::minutes(2))
                .is_err(),
            "expired"
        );

        let joiner = TrustDir::of_data_dir(&dir("joiner"));
        assert!(!joiner.is_member());
        let (key, request) =
            crate::node_key_and_request(second, &cluster).unwrap_or_else(|error| panic!("{error}"));
        let (named, cert) = ca
            .sign(&request, now, NODE_CERT_LIFETIME)
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(named, second);
        joiner
            .install(
                &cluster,
                &holder.trusted_cas().unwrap_or_default(),
                &key,
                &cert,
            )
            .unwrap_or_else(|error| panic!("{error}"));
        let joined = joiner
            .membership(second)
            .unwrap_or_else(|error| panic!("{error}"));
        assert!(!joined.holds_ca_key);
        assert!(matches!(
            joiner.issue_token(now, Duration::from_secs(60)),
            Err(FilesError::NoCaKey)
        ));
        let mode = std::fs::metadata(joiner.path().join("node-key.pem"))
            .map(|meta| std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777)
            .unwrap_or(0);
        assert_eq!(mode, 0o600);
        for dir in [holder.path(), joiner.path()] {
            let _ = std::fs::remove_dir_all(dir.parent().unwrap_or(dir));
        }
    }

    #[test]
    fn removing_a_node_signs_a_newer_bundle_that_members_keep() {
        let now = OffsetDateTime::now_utc();
        let holder = TrustDir::of_data_dir(&dir("remove-holder"));
        holder
            .init(NodeId::random(), now)
            .unwrap_or_else(|error| panic!("{error}"));
        let gone = NodeId::random();
        let first = holder
            .remove_node(gone, 1)
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(first.bundle.serial, 1);
        assert!(first.bundle.denied.contains(&gone));
        let member = TrustDir::of_data_dir(&dir("remove-member"));
        member
            .install(
                &holder
                    .cluster_id()
                    .unwrap_or_else(|error| panic!("{error}")),
                &holder.trusted_cas().unwrap_or_default(),
                "key",
                "cert",
            )
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(member.offer_trust_bundle(&first).ok(), Some(true));
        assert_eq!(
            member.offer_trust_bundle(&first).ok(),
            Some(false),
            "not newer"
        );
        let held = member.trust_bundle().ok().flatten().map(|held| held.bundle);
        assert_eq!(held, Some(first.bundle.clone()));
        assert!(matches!(
            member.remove_node(gone, 2),
            Err(FilesError::NoCaKey)
        ));
        for dir in [holder.path(), member.path()] {
            let _ = std::fs::remove_dir_all(dir.parent().unwrap_or(dir));
        }
    }

    #[test]
    fn a_renewal_replaces_key_and_certificate_and_a_torn_one_finishes_at_start() {
        let now = OffsetDateTime::now_utc();
        let node = NodeId::random();
        let trust = TrustDir::of_data_dir(&dir("renew"));
        let cluster = trust
            .init(node, now)
            .unwrap_or_else(|error| panic!("{error}"));
        let ca = trust.ca().ok().flatten().unwrap_or_else(|| panic!("CA"));
        let (key, request) =
            crate::node_key_and_request(node, &cluster).unwrap_or_else(|error| panic!("{error}"));
        let (_, cert) = ca
            .sign(&request, now, NODE_CERT_LIFETIME)
            .unwrap_or_else(|error| panic!("{error}"));
        let cas = trust.trusted_cas().unwrap_or_default();
        assert!(crate::check_own_certificate(&cert, &key, &cas, node, &cluster).is_ok());
        assert!(
            crate::check_own_certificate(&cert, &key, &cas, NodeId::random(), &cluster).is_err(),
            "another node's"
        );
        let (other_key, _) =
            crate::node_key_and_request(node, &cluster).unwrap_or_else(|error| panic!("{error}"));
        assert!(
            crate::check_own_certificate(&cert, &other_key, &cas, node, &cluster).is_err(),
            "not for this key"
        );
        let stranger = ClusterCa::create(ClusterId::random(), now, CA_LIFETIME)
            .unwrap_or_else(|error| panic!("{error}"));
        assert!(
            crate::check_own_certificate(&cert, &key, &[stranger.cert_pem], node, &cluster)
                .is_err(),
            "not of a trusted CA"
        );
        trust
            .replace_certificate(&key, &cert)
            .unwrap_or_else(|error| panic!("{error}"));
        let loaded = trust
            .membership(node)
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(loaded.identity.cert_pem, cert);
        assert_eq!(loaded.identity.key_pem, key);
        // A crash after the journal was written: the next start finishes the job.
        let (key2, request2) =
            crate::node_key_and_request(node, &cluster).unwrap_or_else(|error| panic!("{error}"));
        let (_, cert2) = ca
            .sign(&request2, now, NODE_CERT_LIFETIME)
            .unwrap_or_else(|error| panic!("{error}"));
        trust
            .write("renewal.pem", &format!("{key2}{cert2}"), true)
            .unwrap_or_else(|error| panic!("{error}"));
        let recovered = trust
            .membership(node)
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(recovered.identity.cert_pem, cert2);
        assert_eq!(recovered.identity.key_pem, key2);
        assert!(!trust.path().join("renewal.pem").exists());
        let _ = std::fs::remove_dir_all(trust.path().parent().unwrap_or(trust.path()));
    }

    #[test]
    fn an_offline_ca_signs_a_request_and_the_node_installs_it() {
        let now = OffsetDateTime::now_utc();
        let ca = ClusterCa::create(ClusterId::random(), now, CA_LIFETIME)
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(
            ClusterCa::cluster_of(&ca.cert_pem).ok().as_ref(),
            Some(&ca.cluster)
        );
        let node = NodeId::random();
        let trust = TrustDir::of_data_dir(&dir("offline"));
        let request = trust
            .prepare_request(&ca.cert_pem, node)
            .unwrap_or_else(|error| panic!("{error}"));
        assert!(!trust.is_member());
        let (named, cert) = ca
            .sign(&request, now, NODE_CERT_LIFETIME)
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(named, node);
        assert!(
            trust.install_signed(NodeId::random(), &cert).is_err(),
            "another node's id"
        );
        trust
            .install_signed(node, &cert)
            .unwrap_or_else(|error| panic!("{error}"));
        assert!(trust.membership(node).is_ok());
        assert!(!trust.path().join("request-key.pem").exists());
        let _ = std::fs::remove_dir_all(trust.path().parent().unwrap_or(trust.path()));
    }

    #[test]
    fn a_rotation_trusts_both_then_only_the_new_ca() {
        let now = OffsetDateTime::now_utc();
        let holder_id = NodeId::random();
        let holder = TrustDir::of_data_dir(&dir("rotate-holder"));
        let cluster = holder
            .init(holder_id, now)
            .unwrap_or_else(|error| panic!("{error}"));
        let old_cas = holder.trusted_cas().unwrap_or_default();
        let member = TrustDir::of_data_dir(&dir("rotate-member"));
        member
            .install(&cluster, &old_cas, "key", "cert")
            .unwrap_or_else(|error| panic!("{error}"));
        let started = holder
            .rotate_ca(holder_id, now, 1)
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(started.bundle.cas.len(), 2);
        assert_eq!(holder.trusted_cas().unwrap_or_default().len(), 2);
        assert!(
            holder.membership(holder_id).is_ok(),
            "renewed from the new CA"
        );
        // The member trusts only the old CA, which signed the bundle: it verifies and adopts.
        let wire = started.to_wire();
        let verified =
            SignedTrustBundle::verify(&wire, &old_cas).unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(member.adopt_cas(&verified.bundle.cas).ok(), Some(true));
        assert_eq!(
            member.adopt_cas(&verified.bundle.cas).ok(),
            Some(false),
            "unchanged"
        );
        let finished = holder
            .finish_rotation(2)
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(finished.bundle.cas.len(), 1);
        assert_ne!(finished.bundle.cas, old_cas, "the new CA stays");
        // Signed by the new CA, which the member trusts by now.
        let verified = SignedTrustBundle::verify(
            &finished.to_wire(),
            &member.trusted_cas().unwrap_or_default(),
        )
        .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(member.adopt_cas(&verified.bundle.cas).ok(), Some(true));
        assert!(
            SignedTrustBundle::verify(&finished.to_wire(), &old_cas).is_err(),
            "a node that still trusts only the old CA cannot take it"
        );
        for dir in [holder.path(), member.path()] {
            let _ = std::fs::remove_dir_all(dir.parent().unwrap_or(dir));
        }
    }

    #[test]
    fn concatenated_pems_split() {
        let ca = ClusterCa::create(ClusterId::random(), OffsetDateTime::now_utc(), CA_LIFETIME)
            .unwrap_or_else(|error| panic!("{error}"));
        let other = ClusterCa::create(ClusterId::random(), OffsetDateTime::now_utc(), CA_LIFETIME)
            .unwrap_or_else(|error| panic!("{error}"));
        let both = format!("{}{}", ca.cert_pem, other.cert_pem);
        assert_eq!(split_pem(&both).len(), 2);
        assert_eq!(split_pem("garbage"), Vec::<String>::new());
    }
}
