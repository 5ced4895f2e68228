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
/// reports as the live revision and what replication stores a revision's content under. It
/// is the SHA-256 of the bundle's [`Manifest`] bytes, so a stored manifest checks against it.
pub fn bundle_id(document: &str, lists: &BTreeMap<String, ContentHash>) -> ContentHash {
    let mut context = digest::Context::new(&digest::SHA256);
    write_manifest(document, lists, &mut |bytes| context.update(bytes));
    sha256_of(context)
}

fn sha256_of(context: digest::Context) -> ContentHash {
    let mut out = [0u8; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

/// The manifest's bytes, piece by piece (hashed without a copy of the document, or written).
fn write_manifest(
    document: &str,
    lists: &BTreeMap<String, ContentHash>,
    out: &mut dyn FnMut(&[u8]),
) {
    out(MANIFEST_MAGIC);
    out(&(document.len() as u64).to_be_bytes());
    out(document.as_bytes());
    out(&(lists.len() as u32).to_be_bytes());
    for (path, hash) in lists {
        out(&(path.len() as u32).to_be_bytes());
        out(path.as_bytes());
        out(hash);
    }
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

/// Bundle entries under this prefix are the cluster's own (the admin accounts), never a list
/// a policy declares: they are not written beside the policy file, and a policy may not
/// declare a list there.
pub const RESERVED_PREFIX: &str = ".palisade/";

/// The first line of a policy file that a cluster node wrote back: the revision it holds,
/// which `palisade policy apply` names as the base of the next save. Not part of the
/// document (a bundle's id does not depend on it).
pub const REVISION_HEADER: &str = "# palisade-revision: ";

/// Splits a policy file into the revision its header names (if any) and the document.
pub fn split_revision_header(text: &str) -> (Option<&str>, &str) {
    match text.strip_prefix(REVISION_HEADER) {
        Some(rest) => {
            let (line, document) = rest.split_once('\n').unwrap_or((rest, ""));
            (Some(line.trim()), document)
        }
        None => (None, text),
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
        // The whole file compiles (the header is a comment, and line numbers stay true);
        // the bundle holds the document without it.
        let compiled = crate::compile_with_reader(&document, origin, node, &reader)
            .map_err(BundleError::Invalid)?;
        let (_, without_header) = split_revision_header(&document);
        Ok((
            PolicyBundle {
                document: without_header.to_owned(),
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

    /// Why this bundle cannot be replicated, if it cannot: every node writes the lists next to
    /// its own policy file, so a list must be named relative to the document and inside its
    /// directory (never an absolute path a peer would then write to).
    pub fn unportable_lists(&self) -> Vec<String> {
        self.lists
            .keys()
            .filter(|key| key.starts_with('/') || key.starts_with("..") || key.is_empty())
            .cloned()
            .collect()
    }

    /// Writes the bundle where `origin` names the document: each list beside it (under the
    /// name the document declares it by), then the document, its first line naming
    /// `revision`. Each file is written whole and renamed into place; the document last, so
    /// a reader of it finds its lists.
    pub fn write_to(&self, origin: &Path, revision: &str) -> Result<(), BundleError> {
        if let Some(key) = self.unportable_lists().first() {
            return Err(BundleError::Write {
                path: PathBuf::from(key),
                error: "a replicated list must be named relative to the policy document, inside its directory".to_owned(),
            });
        }
        let base = origin.parent().unwrap_or(Path::new("."));
        for (key, text) in &self.lists {
            if key.starts_with(RESERVED_PREFIX) {
                continue;
            }
            write_whole(&base.join(key), text.as_bytes())?;
        }
        let mut document =
            String::with_capacity(REVISION_HEADER.len() + revision.len() + 1 + self.document.len());
        document.push_str(REVISION_HEADER);
        document.push_str(revision);
        document.push('\n');
        document.push_str(&self.document);
        write_whole(origin, document.as_bytes())
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

/// A bundle as central management stores it: the manifest (document and each list's path and
/// hash) is one content, each list another, so an unchanged list is stored once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub document: String,
    pub lists: BTreeMap<String, ContentHash>,
}

const MANIFEST_MAGIC: &[u8] = b"palisade policy manifest v1\n";

impl Manifest {
    /// Its id is the bundle's id ([`bundle_id`]).
    pub fn id(&self) -> ContentHash {
        bundle_id(&self.document, &self.lists)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.document.len() + 64 * (self.lists.len() + 1));
        write_manifest(&self.document, &self.lists, &mut |bytes| {
            out.extend_from_slice(bytes)
        });
        out
    }

    /// A stored or received manifest; strict (lengths checked, UTF-8, nothing trailing).
    pub fn from_bytes(bytes: &[u8]) -> Result<Manifest, BundleError> {
        let bad = |what: &str| BundleError::Manifest(what.to_owned());
        let rest = bytes
            .strip_prefix(MANIFEST_MAGIC)
            .ok_or_else(|| bad("not a policy manifest"))?;
        let mut reader = rest;
        let mut take = |count: usize| -> Result<&[u8], BundleError> {
            if reader.len() < count {
                return Err(bad("truncated"));
            }
            let (taken, left) = reader.split_at(count);
            reader = left;
            Ok(taken)
        };
        let length = u64::from_be_bytes(take(8)?.try_into().map_err(|_| bad("length"))?);
        let length = usize::try_from(length).map_err(|_| bad("document too long"))?;
        let document = std::str::from_utf8(take(length)?)
            .map_err(|_| bad("document not UTF-8"))?
            .to_owned();
        let count = u32::from_be_bytes(take(4)?.try_into().map_err(|_| bad("count"))?);
        let mut lists = BTreeMap::new();
        for _ in 0..count {
            let length =
                u32::from_be_bytes(take(4)?.try_into().map_err(|_| bad("path length"))?) as usize;
            let path = std::str::from_utf8(take(length)?)
                .map_err(|_| bad("list path not UTF-8"))?
                .to_owned();
            let hash: ContentHash = take(32)?.try_into().map_err(|_| bad("hash"))?;
            lists.insert(path, hash);
        }
        if !reader.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(Manifest { document, lists })
    }
}

impl PolicyBundle {
    /// The manifest and each list's (hash, text), to store.
    pub fn split(&self) -> (Manifest, Vec<(ContentHash, &str)>) {
        let manifest = Manifest {
            document: self.document.clone(),
            lists: self.list_hashes(),
        };
        let lists = self
            .lists
            .values()
            .map(|text| (sha256(text.as_bytes()), text.as_str()))
            .collect();
        (manifest, lists)
    }

    /// The bundle from its manifest and stored lists (each checked against its hash).
    pub fn join(
        manifest: Manifest,
        list: impl Fn(&ContentHash) -> Option<String>,
    ) -> Result<PolicyBundle, BundleError> {
        let mut lists = BTreeMap::new();
        for (path, hash) in manifest.lists {
            let text = list(&hash)
                .ok_or_else(|| BundleError::Manifest(format!("list {path} is not stored")))?;
            if sha256(text.as_bytes()) != hash {
                return Err(BundleError::Manifest(format!(
                    "list {path} does not match its hash"
                )));
            }
            lists.insert(path, text);
        }
        Ok(PolicyBundle {
            document: manifest.document,
            lists,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read {}: {error}", path.display())]
    Read { path: PathBuf, error: String },
    #[error("invalid policy:\n{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<PolicyError>),
    #[error("policy manifest: {0}")]
    Manifest(String),
    #[error("cannot write {}: {error}", path.display())]
    Write { path: PathBuf, error: String },
}

/// Writes a file through a temporary sibling renamed over it.
fn write_whole(path: &Path, bytes: &[u8]) -> Result<(), BundleError> {
    let failed = |error: std::io::Error| BundleError::Write {
        path: path.to_owned(),
        error: error.to_string(),
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(failed)?;
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".palisade-tmp");
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, bytes).map_err(failed)?;
    std::fs::rename(&temporary, path).map_err(failed)
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
    fn a_written_back_bundle_reads_back_the_same_with_its_revision_in_the_header() {
        let here = dir("writeback");
        let bundle = PolicyBundle {
            document: POLICY.to_owned(),
            lists: BTreeMap::from([("lists/blocked.txt".to_owned(), "bad.example\n".to_owned())]),
        };
        let origin = here.join("policy.toml");
        bundle
            .write_to(&origin, "abc123")
            .unwrap_or_else(|error| panic!("{error}"));
        let text = std::fs::read_to_string(&origin).unwrap_or_default();
        assert_eq!(split_revision_header(&text), (Some("abc123"), POLICY));
        let Ok((read, _)) = PolicyBundle::read(&origin, &NodeIdentity::default()) else {
            panic!("read back");
        };
        assert_eq!(read, bundle, "the header is not part of the document");
        assert_eq!(read.id(), bundle.id());
        let escaping = PolicyBundle {
            document: POLICY.to_owned(),
            lists: BTreeMap::from([
                ("../etc/x".to_owned(), String::new()),
                ("/etc/y".to_owned(), String::new()),
            ]),
        };
        assert_eq!(escaping.unportable_lists().len(), 2);
        assert!(escaping.write_to(&origin, "abc").is_err());
        let _ = std::fs::remove_dir_all(here);
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
    fn a_bundle_splits_into_a_manifest_and_lists_and_joins_back_checked() {
        let bundle = PolicyBundle {
            document: POLICY.to_owned(),
            lists: BTreeMap::from([("lists/blocked.txt".to_owned(), "bad.example\n".to_owned())]),
        };
        let (manifest, lists) = bundle.split();
        assert_eq!(manifest.id(), bundle.id());
        // The id is the manifest's SHA-256: a stored manifest checks against it.
        assert_eq!(manifest.id(), sha256(&manifest.to_bytes()));
        let stored: BTreeMap<ContentHash, String> = lists
            .iter()
            .map(|(hash, text)| (*hash, (*text).to_owned()))
            .collect();
        let Ok(again) = Manifest::from_bytes(&manifest.to_bytes()) else {
            panic!("manifest round trip");
        };
        assert_eq!(again, manifest);
        let joined = PolicyBundle::join(again.clone(), |hash| stored.get(hash).cloned());
        assert_eq!(joined.ok(), Some(bundle));
        // A list that does not match its hash, or is missing, is refused.
        assert!(PolicyBundle::join(again.clone(), |_| Some("tampered".to_owned())).is_err());
        assert!(PolicyBundle::join(again, |_| None).is_err());
        let bytes = manifest.to_bytes();
        for cut in 0..bytes.len() {
            assert!(Manifest::from_bytes(&bytes[..cut]).is_err(), "cut at {cut}");
        }
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
