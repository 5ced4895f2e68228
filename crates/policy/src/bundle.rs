//! A policy as one unit: the document and every list file it names, as central management
//! stores and replicates it. Lists are kept by content id, so a 1,000,000-entry list that did
//! not change is not copied into the next revision; the bundle's id is a hash of the document
//! and of each list's path and id, the same whether the policy came from files or from a peer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ring::digest;

use crate::{CompiledPolicy, NodeIdentity, PolicyError};

/// SHA-256 of some content.
pub type ContentHash = [u8; 32];

fn sha256(bytes: &[u8]) -> ContentHash {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
    out
}

/// A policy document and its lists, by the name the document declares them with
/// ([`list_key`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyBundle {
    pub document: String,
    pub lists: BTreeMap<String, String>,
}

/// The id of a bundle, from the document and the lists' hashes: what the policy installer
/// reports as the live revision and what replication stores a revision's content under.
pub fn bundle_id(document: &str, lists: &BTreeMap<String, ContentHash>) -> ContentHash {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(b"palisade policy bundle v1\0");
    context.update(&(document.len() as u64).to_be_bytes());
    context.update(document.as_bytes());
    for (path, hash) in lists {
        context.update(&(path.len() as u64).to_be_bytes());
        context.update(path.as_bytes());
        context.update(hash);
    }
    sha256_of(context)
}

fn sha256_of(context: digest::Context) -> ContentHash {
    let mut out = [0u8; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

/// The key a list is filed under: its name as the document declares it, lexically normalised
/// (`./a/../lists/x.txt` is `lists/x.txt`), so the key does not depend on where the document
/// lies or how its path was spelled.
pub fn list_key(declared: &str) -> String {
    let absolute = declared.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in declared.split('/') {
        match part {
            "" | "." => {}
            ".." if parts.last().is_some_and(|last| *last != "..") => {
                parts.pop();
            }
            ".." if absolute => {}
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    if absolute {
        format!("/{joined}")
    } else {
        joined
    }
}

impl PolicyBundle {
    /// Reads the document at `origin` and every list it names, compiling it for `node` on the
    /// way (a bundle that does not compile is never made).
    pub fn read(
        origin: &Path,
        node: &NodeIdentity,
    ) -> Result<(PolicyBundle, CompiledPolicy), BundleError> {
        let document = std::fs::read_to_string(origin).map_err(|error| BundleError::Read {
            path: origin.to_owned(),
            error: error.to_string(),
        })?;
        let lists = std::cell::RefCell::new(BTreeMap::new());
        let reader = |path: &Path, declared: &str| {
            let text = std::fs::read_to_string(path)?;
            lists.borrow_mut().insert(list_key(declared), text.clone());
            Ok(text)
        };
        let compiled = crate::compile_with_reader(&document, origin, node, &reader)
            .map_err(BundleError::Invalid)?;
        Ok((
            PolicyBundle {
                document,
                lists: lists.into_inner(),
            },
            compiled,
        ))
    }

    /// Compiles the bundle for `node`; errors name `origin` (where the operator knows the
    /// document from) and list files by their path in the bundle.
    pub fn compile(
        &self,
        origin: &Path,
        node: &NodeIdentity,
    ) -> Result<CompiledPolicy, Vec<PolicyError>> {
        let reader = |_: &Path, declared: &str| {
            self.lists.get(&list_key(declared)).cloned().ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "not in the policy bundle")
            })
        };
        crate::compile_with_reader(&self.document, origin, node, &reader)
    }

    /// Each list's hash, by path.
    pub fn list_hashes(&self) -> BTreeMap<String, ContentHash> {
        self.lists
            .iter()
            .map(|(path, text)| (path.clone(), sha256(text.as_bytes())))
            .collect()
    }

    pub fn id(&self) -> ContentHash {
        bundle_id(&self.document, &self.list_hashes())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read {}: {error}", path.display())]
    Read { path: PathBuf, error: String },
    #[error("invalid policy:\n{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<PolicyError>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("palisade-bundle-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("lists")).unwrap_or_else(|error| panic!("{error}"));
        dir
    }

    const POLICY: &str = "default_action = \"allow\"\n[lists]\nblocked = { file = \"lists/blocked.txt\" }\n[[ruleset]]\nname = \"r\"\n[[ruleset.rule]]\nname = \"b\"\naction = \"block\"\nhost_list = [\"blocked\"]\n";

    #[test]
    fn a_bundle_read_from_files_compiles_anywhere_with_the_same_id() {
        let here = dir("here");
        std::fs::write(here.join("policy.toml"), POLICY).unwrap_or_else(|error| panic!("{error}"));
        std::fs::write(here.join("lists/blocked.txt"), "bad.example\n")
            .unwrap_or_else(|error| panic!("{error}"));
        let node = NodeIdentity::default();
        let read = PolicyBundle::read(&here.join("policy.toml"), &node);
        let (bundle, _) = match read {
            Ok(read) => read,
            Err(error) => panic!("{error}"),
        };
        assert_eq!(
            bundle.lists.keys().collect::<Vec<_>>(),
            ["lists/blocked.txt"]
        );
        // Another node, another directory, no files: the bundle alone compiles.
        assert!(
            bundle
                .compile(Path::new("/elsewhere/policy.toml"), &node)
                .is_ok()
        );
        // The id does not depend on where the files were.
        let there = dir("there");
        std::fs::write(there.join("policy.toml"), POLICY).unwrap_or_else(|error| panic!("{error}"));
        std::fs::write(there.join("lists/blocked.txt"), "bad.example\n")
            .unwrap_or_else(|error| panic!("{error}"));
        let Ok((again, _)) = PolicyBundle::read(&there.join("policy.toml"), &node) else {
            panic!("second read");
        };
        assert_eq!(again.id(), bundle.id());
        // A changed list changes the id.
        std::fs::write(there.join("lists/blocked.txt"), "worse.example\n")
            .unwrap_or_else(|error| panic!("{error}"));
        let Ok((changed, _)) = PolicyBundle::read(&there.join("policy.toml"), &node) else {
            panic!("third read");
        };
        assert_ne!(changed.id(), bundle.id());
        let _ = std::fs::remove_dir_all(here);
        let _ = std::fs::remove_dir_all(there);
    }

    #[test]
    fn list_keys_are_the_declared_names_normalised() {
        assert_eq!(list_key("lists/x.txt"), "lists/x.txt");
        assert_eq!(list_key("./lists//x.txt"), "lists/x.txt");
        assert_eq!(list_key("a/../lists/x.txt"), "lists/x.txt");
        assert_eq!(list_key("../shared/x.txt"), "../shared/x.txt");
        assert_eq!(
            list_key("/etc/palisade/../palisade/x.txt"),
            "/etc/palisade/x.txt"
        );
        assert_eq!(list_key("/../x.txt"), "/x.txt");
    }

    #[test]
    fn a_bundle_missing_a_list_does_not_compile() {
        let bundle = PolicyBundle {
            document: POLICY.to_owned(),
            lists: BTreeMap::new(),
        };
        assert!(
            bundle
                .compile(Path::new("/p/policy.toml"), &NodeIdentity::default())
                .is_err()
        );
    }
}
