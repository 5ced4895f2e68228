//! The one writer of the live policy (issue 9): compiles off the async workers, swaps the
//! policy the proxy reads atomically, publishes the live revision on a watch channel, logs
//! and counts. The file watcher is its first caller; the replicator will be the second, so
//! the two can never fight over the `ArcSwap`.
//!
//! The revision is a SHA-256 of everything the policy was compiled from (the document and
//! every list file, as read), so two nodes with the same sources show the same revision,
//! whatever the files' times; later the replicated revision takes its place.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use arc_swap::ArcSwap;
use palisade_policy::{CompiledPolicy, NodeIdentity};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

/// What a policy was compiled from, hashed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PolicyRevision([u8; 32]);

impl PolicyRevision {
    /// The first 12 hex digits, for log lines (as `git` shortens commits).
    pub fn short(&self) -> String {
        self.to_string()[..12].to_owned()
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for PolicyRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PolicyRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PolicyRevision({})", self.short())
    }
}

/// A compiled policy and the revision of its sources.
pub struct LoadedPolicy {
    pub policy: CompiledPolicy,
    pub revision: PolicyRevision,
}

/// Reads and compiles the policy at `path`, hashing every byte it read (blocking: call it
/// off the async workers).
pub fn load(path: &Path, node: &NodeIdentity) -> anyhow::Result<LoadedPolicy> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read policy {}", path.display()))?;
    // Each list is hashed as it is read (a list may be a million lines: no second copy);
    // the revision is the policy bundle's id, the same a replicated revision carries.
    let lists: RefCell<BTreeMap<String, [u8; 32]>> = RefCell::new(BTreeMap::new());
    let reader = |list: &Path, declared: &str| {
        let content = std::fs::read_to_string(list)?;
        let mut hash = [0u8; 32];
        hash.copy_from_slice(
            ring::digest::digest(&ring::digest::SHA256, content.as_bytes()).as_ref(),
        );
        lists
            .borrow_mut()
            .insert(palisade_policy::bundle::list_key(declared), hash);
        Ok(content)
    };
    let policy =
        palisade_policy::compile_with_reader(&text, path, node, &reader).map_err(|errors| {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            anyhow!("invalid policy:\n{}", lines.join("\n"))
        })?;
    let (_, document) = palisade_policy::bundle::split_revision_header(&text);
    let revision = palisade_policy::bundle::bundle_id(document, &lists.into_inner());
    Ok(LoadedPolicy {
        policy,
        revision: PolicyRevision(revision),
    })
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Installs policies into the live `ArcSwap`; the only code that stores into it.
pub struct PolicyInstaller {
    live: Arc<ArcSwap<CompiledPolicy>>,
    node: NodeIdentity,
    revision: watch::Sender<PolicyRevision>,
    installs: Family<OutcomeLabels, Counter>,
    /// The last bundle checked before a save, compiled: installing it when it comes back as
    /// the head does not compile it again (a 1,000,000-entry list takes a second).
    checked: std::sync::Mutex<Option<(PolicyRevision, CompiledPolicy)>>,
    /// The document of the live policy when it came from the cluster, so the file watcher
    /// can tell its own write-back from an operator's edit without compiling.
    live_document: std::sync::Mutex<Option<String>>,
}

impl PolicyInstaller {
    /// Takes over `live`, which holds the policy of `revision` (compiled at start).
    pub fn new(
        live: Arc<ArcSwap<CompiledPolicy>>,
        revision: PolicyRevision,
        node: NodeIdentity,
        registry: &mut Registry,
    ) -> PolicyInstaller {
        let installs = Family::<OutcomeLabels, Counter>::default();
        for outcome in ["installed", "unchanged", "refused"] {
            let _ = installs.get_or_create(&OutcomeLabels { outcome });
        }
        registry.register(
            "palisade_policy_installs",
            "Policy installs: installed (now live), unchanged (same revision as the live one), refused (did not compile; the live one stays)",
            installs.clone(),
        );
        PolicyInstaller {
            live,
            node,
            revision: watch::Sender::new(revision),
            installs,
            checked: std::sync::Mutex::new(None),
            live_document: std::sync::Mutex::new(None),
        }
    }

    /// The live policy's revision, now and as it changes.
    pub fn revision(&self) -> watch::Receiver<PolicyRevision> {
        self.revision.subscribe()
    }

    pub fn live(&self) -> Arc<CompiledPolicy> {
        self.live.load_full()
    }

    /// Compiles the policy file at `path` and makes it live; on any error the live policy
    /// stays and the error says why.
    pub async fn install_file(&self, path: &Path) -> anyhow::Result<PolicyRevision> {
        let (reload_path, node) = (path.to_owned(), self.node.clone());
        let loaded = tokio::task::spawn_blocking(move || load(&reload_path, &node))
            .await
            .map_err(|error| anyhow!("policy compile task failed: {error}"))
            .and_then(|loaded| loaded);
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(error) => {
                self.count("refused");
                tracing::error!(path = %path.display(), "policy reload refused, previous policy stays live: {error:#}");
                return Err(error);
            }
        };
        if loaded.revision == *self.revision.borrow() {
            self.count("unchanged");
            tracing::info!(path = %path.display(), revision = %loaded.revision.short(), "policy unchanged");
            return Ok(loaded.revision);
        }
        let summary = loaded.policy.summary();
        self.live.store(Arc::new(loaded.policy));
        self.revision.send_replace(loaded.revision);
        self.count("installed");
        // The previous policy is freed by now (or by the last request holding it): give its
        // pages back rather than keep them as free heap.
        tokio::task::spawn_blocking(crate::allocator::release_free_memory);
        tracing::info!(path = %path.display(), revision = %loaded.revision.short(), rulesets = summary.rulesets, rules = summary.rules, "policy reloaded");
        Ok(loaded.revision)
    }

    /// Compiles a replicated policy bundle (`origin` is where its errors say it is) and makes
    /// it live; on any error the live policy stays.
    pub async fn install_bundle(
        &self,
        bundle: palisade_policy::PolicyBundle,
        origin: &Path,
    ) -> Result<PolicyRevision, palisade_cluster::NotInstalled> {
        use palisade_cluster::NotInstalled;
        let revision = PolicyRevision(bundle.id());
        let document = bundle.document.clone();
        if revision == *self.revision.borrow() {
            self.count("unchanged");
            self.set_live_document(Some(document));
            return Ok(revision);
        }
        let checked = self
            .checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .filter(|(id, _)| *id == revision);
        let compiled = match checked {
            Some((_, policy)) => Ok(policy),
            None => {
                let (origin_owned, node) = (origin.to_owned(), self.node.clone());
                tokio::task::spawn_blocking(move || {
                    refused_by_test_hook(&bundle.document)?;
                    bundle.compile(&origin_owned, &node).map_err(|errors| {
                        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
                        NotInstalled::Invalid(format!("invalid policy:\n{}", lines.join("\n")))
                    })
                })
                .await
                .map_err(|error| {
                    NotInstalled::Failed(format!("policy compile task failed: {error}"))
                })
                .and_then(|compiled| compiled)
            }
        };
        let policy = match compiled {
            Ok(policy) => policy,
            Err(error) => {
                self.count("refused");
                tracing::error!(revision = %revision.short(), "replicated policy refused, previous policy stays live: {}", error.reason());
                return Err(error);
            }
        };
        let summary = policy.summary();
        self.live.store(Arc::new(policy));
        self.revision.send_replace(revision);
        self.set_live_document(Some(document));
        self.count("installed");
        tokio::task::spawn_blocking(crate::allocator::release_free_memory);
        tracing::info!(revision = %revision.short(), rulesets = summary.rulesets, rules = summary.rules, "policy installed from the cluster");
        Ok(revision)
    }

    /// Compiles a bundle for this node without installing it (the check before a save).
    /// Compiling does not depend on the node (every rule is checked, whichever node it is
    /// for), so a bundle that compiles here compiles on every member of this release.
    pub async fn check_bundle(
        &self,
        bundle: palisade_policy::PolicyBundle,
        origin: &Path,
    ) -> Result<palisade_policy::PolicyBundle, String> {
        let (origin, node) = (origin.to_owned(), self.node.clone());
        let (bundle, compiled) =
            tokio::task::spawn_blocking(move || match bundle.compile(&origin, &node) {
                Ok(compiled) => Ok((bundle, compiled)),
                Err(errors) => Err(errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")),
            })
            .await
            .map_err(|error| format!("policy compile task failed: {error}"))??;
        *self
            .checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((PolicyRevision(bundle.id()), compiled));
        Ok(bundle)
    }

    fn set_live_document(&self, document: Option<String>) {
        *self
            .live_document
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = document;
    }

    /// Whether `text` (a policy file) holds the live cluster policy's document.
    pub fn is_live_document(&self, text: &str) -> bool {
        let (_, document) = palisade_policy::bundle::split_revision_header(text);
        self.live_document
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_deref()
            == Some(document)
    }

    fn count(&self, outcome: &'static str) {
        self.installs
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
}

/// Debug builds only (the tests): a node started with `PALISADE_TEST_REFUSE_POLICY=TEXT`
/// cannot install a replicated policy containing TEXT, as a member of an older release could
/// not compile a newer policy (which cannot be built here), so the cluster's refusal path is
/// tested end to end.
fn refused_by_test_hook(document: &str) -> Result<(), palisade_cluster::NotInstalled> {
    #[cfg(debug_assertions)]
    if let Ok(marker) = std::env::var("PALISADE_TEST_REFUSE_POLICY")
        && !marker.is_empty()
        && document.contains(&marker)
    {
        return Err(palisade_cluster::NotInstalled::Invalid(format!(
            "invalid policy: this node cannot compile a policy containing {marker:?} (test hook)"
        )));
    }
    let _ = document;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("palisade-install-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|error| panic!("{error}"));
        dir
    }

    fn node() -> NodeIdentity {
        NodeIdentity {
            name: palisade_identity::NodeName::default(),
            proxy_ips: Vec::new(),
            id: None,
        }
    }

    const POLICY: &str = "default_action = \"allow\"\n[lists]\nbad = { file = \"bad.txt\" }\n[[ruleset]]\nname = \"r\"\n  [[ruleset.rule]]\n  name = \"b\"\n  action = \"block\"\n  host_list = [\"bad\"]\n";

    #[test]
    fn the_revision_covers_the_document_and_its_lists() {
        let dir = dir("revision");
        let policy = dir.join("policy.toml");
        std::fs::write(&policy, POLICY).unwrap_or_else(|error| panic!("{error}"));
        std::fs::write(dir.join("bad.txt"), ".a.test\n").unwrap_or_else(|error| panic!("{error}"));
        let revision = |path: &Path| load(path, &node()).map(|loaded| loaded.revision).ok();
        let first = revision(&policy);
        assert!(first.is_some());
        assert_eq!(revision(&policy), first, "same sources, same revision");
        std::fs::write(dir.join("bad.txt"), ".b.test\n").unwrap_or_else(|error| panic!("{error}"));
        let second = revision(&policy);
        assert_ne!(second, first, "a list edit is a new revision");
        std::fs::write(&policy, format!("# edited\n{POLICY}"))
            .unwrap_or_else(|error| panic!("{error}"));
        assert_ne!(
            revision(&policy),
            second,
            "a document edit is a new revision"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn installs_swap_publish_and_count_and_refusals_keep_the_live_policy() {
        let dir = dir("install");
        let policy = dir.join("policy.toml");
        std::fs::write(&policy, POLICY).unwrap_or_else(|error| panic!("{error}"));
        std::fs::write(dir.join("bad.txt"), ".a.test\n").unwrap_or_else(|error| panic!("{error}"));
        let loaded = load(&policy, &node()).unwrap_or_else(|error| panic!("{error:#}"));
        let live = Arc::new(ArcSwap::from_pointee(loaded.policy));
        let mut registry = Registry::default();
        let installer = PolicyInstaller::new(live.clone(), loaded.revision, node(), &mut registry);
        let mut revisions = installer.revision();
        assert_eq!(
            installer.install_file(&policy).await.ok(),
            Some(loaded.revision)
        );
        assert!(
            !revisions.has_changed().unwrap_or(true),
            "unchanged: nothing published"
        );

        std::fs::write(dir.join("bad.txt"), ".b.test\n").unwrap_or_else(|error| panic!("{error}"));
        let before = live.load_full();
        let installed = installer.install_file(&policy).await.ok();
        assert!(installed.is_some() && installed != Some(loaded.revision));
        assert!(!Arc::ptr_eq(&before, &live.load_full()), "swapped");
        assert!(revisions.has_changed().unwrap_or(false));
        assert_eq!(Some(*revisions.borrow_and_update()), installed);

        std::fs::write(&policy, "default_action = \"maybe\"\n")
            .unwrap_or_else(|error| panic!("{error}"));
        let current = live.load_full();
        assert!(installer.install_file(&policy).await.is_err());
        assert!(
            Arc::ptr_eq(&current, &live.load_full()),
            "the live policy stays"
        );
        assert!(!revisions.has_changed().unwrap_or(true));

        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap_or_default();
        for sample in [
            "palisade_policy_installs_total{outcome=\"installed\"} 1",
            "palisade_policy_installs_total{outcome=\"unchanged\"} 1",
            "palisade_policy_installs_total{outcome=\"refused\"} 1",
        ] {
            assert!(text.contains(sample), "{sample} missing:\n{text}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
