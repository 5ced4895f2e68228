//! The node's durable state, in one redb file, `<data_dir>/palisade.redb`: the only owner of
//! what must survive a restart (issue 9): the node's identity and its drain marker now, the
//! replicated documents as they move in. redb gives crash-safe transactions (a write either
//! committed whole or not at all) and a file lock, so two processes cannot share one data
//! directory.
//!
//! Every error names the file. A corrupt store is [`StoreError::Corrupt`]: the node then
//! serves with its policy file and says so loudly (`cli`), it never guesses. The format can
//! change between releases through [`Store::export`] / [`Store::import`]: versioned JSON.

use std::path::{Path, PathBuf};

use palisade_identity::NodeId;
use redb::{Database, ReadableDatabase, TableDefinition};

/// The file name inside the data directory.
pub const FILE_NAME: &str = "palisade.redb";
/// Version of the export format (and of the tables' layout it mirrors).
pub const EXPORT_FORMAT: u64 = 1;

/// Node-local facts, one value per key.
const NODE: TableDefinition<&str, &[u8]> = TableDefinition::new("node");
const NODE_ID: &str = "node_id";
/// Present while the node is drained; the value is the Unix time of the drain (8 bytes, LE).
const DRAINED_SINCE: &str = "drained_since";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the store {path} is corrupt ({detail}); move it aside to start with a new identity, or import an export"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error("the store {path} is in use by another palisade process (one data directory per node)")]
    InUse { path: PathBuf },
    #[error(
        "the store {path} was written by another release (format {found}); export it with that release and import the export"
    )]
    Format { path: PathBuf, found: String },
    #[error("store {path}: {detail}")]
    Io { path: PathBuf, detail: String },
    #[error("cannot import into {path}: {detail}")]
    Import { path: PathBuf, detail: String },
}

/// The open store. Writes are synchronous (fsync on commit): call them off the async
/// workers.
pub struct Store {
    tables: Tables,
    node_id: NodeId,
}

/// The redb file and the file's name for errors.
struct Tables {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) the store in `data_dir` and makes the node's id on first use.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let path = data_dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|error| open_error(&path, error))?;
        let tables = Tables { db, path };
        let node_id = match tables.read_fixed::<16>(NODE_ID, "node id")? {
            Some(bytes) => NodeId::from_bytes(bytes),
            None => {
                let id = NodeId::random();
                tables.write(&[(NODE_ID, Some(id.as_bytes()))])?;
                id
            }
        };
        Ok(Store { tables, node_id })
    }

    pub fn path(&self) -> &Path {
        &self.tables.path
    }

    /// This node's identity: made once, kept for the life of the store.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Since when (Unix seconds) the node is drained, if it is: `palisade drain` survives
    /// restarts until `palisade resume`.
    pub fn drained_since(&self) -> Result<Option<u64>, StoreError> {
        let since = self.tables.read_fixed::<8>(DRAINED_SINCE, "drain marker")?;
        Ok(since.map(u64::from_le_bytes))
    }

    /// Records the drain (`Some(unix seconds)`) or its end (`None`), durably: the call
    /// returns after the commit is on disk.
    pub fn set_drained_since(&self, since: Option<u64>) -> Result<(), StoreError> {
        let bytes = since.map(u64::to_le_bytes);
        self.tables
            .write(&[(DRAINED_SINCE, bytes.as_ref().map(|bytes| &bytes[..]))])
    }

    /// Everything in the store as versioned JSON, for backups and for moving between
    /// releases whose file formats differ.
    pub fn export(&self) -> Result<serde_json::Value, StoreError> {
        Ok(serde_json::json!({
            "format": EXPORT_FORMAT,
            "node": {
                "id": self.node_id.to_string(),
                "drained_since": self.drained_since()?,
            },
        }))
    }

    /// Replaces the store's contents with an export (of this format). The node's identity
    /// comes with it: importing another node's export makes this node that node.
    pub fn import(&mut self, export: &serde_json::Value) -> Result<(), StoreError> {
        let refuse = |detail: String| StoreError::Import {
            path: self.tables.path.clone(),
            detail,
        };
        match export.get("format").and_then(serde_json::Value::as_u64) {
            Some(EXPORT_FORMAT) => {}
            Some(other) => {
                return Err(refuse(format!(
                    "export format {other}, this release reads {EXPORT_FORMAT}"
                )));
            }
            None => return Err(refuse("no \"format\": not a palisade store export".into())),
        }
        let id = export
            .pointer("/node/id")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| refuse("no node.id".into()))?
            .parse::<NodeId>()
            .map_err(|error| refuse(error.to_string()))?;
        let drained_since = match export.pointer("/node/drained_since") {
            None | Some(serde_json::Value::Null) => None,
            Some(value) => Some(
                value
                    .as_u64()
                    .ok_or_else(|| refuse(format!("node.drained_since is {value}")))?,
            ),
        };
        let drained_since = drained_since.map(u64::to_le_bytes);
        // One transaction: a crash mid-import leaves the store as it was, not half-imported.
        self.tables.write(&[
            (NODE_ID, Some(&id.as_bytes()[..])),
            (
                DRAINED_SINCE,
                drained_since.as_ref().map(|bytes| &bytes[..]),
            ),
        ])?;
        self.node_id = id;
        Ok(())
    }
}

impl Tables {
    fn read(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let read = self.db.begin_read().map_err(|error| self.fail(error))?;
        let table = match read.open_table(NODE) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(error) => return Err(self.fail(error)),
        };
        let value = table.get(key).map_err(|error| self.fail(error))?;
        Ok(value.map(|value| value.value().to_vec()))
    }

    /// A value of exactly `N` bytes; another length is corruption (`what` names it).
    fn read_fixed<const N: usize>(
        &self,
        key: &str,
        what: &str,
    ) -> Result<Option<[u8; N]>, StoreError> {
        let Some(bytes) = self.read(key)? else {
            return Ok(None);
        };
        let length = bytes.len();
        bytes.try_into().map(Some).map_err(|_| StoreError::Corrupt {
            path: self.path.clone(),
            detail: format!("{what} of {length} bytes"),
        })
    }

    /// Sets (or, with `None`, removes) keys in one committed transaction: all or nothing.
    fn write(&self, entries: &[(&str, Option<&[u8]>)]) -> Result<(), StoreError> {
        let write = self.db.begin_write().map_err(|error| self.fail(error))?;
        {
            let mut table = write.open_table(NODE).map_err(|error| self.fail(error))?;
            for (key, value) in entries {
                match value {
                    Some(value) => table.insert(*key, *value).map(|_| ()),
                    None => table.remove(*key).map(|_| ()),
                }
                .map_err(|error| self.fail(error))?;
            }
        }
        write.commit().map_err(|error| self.fail(error))
    }

    fn fail(&self, error: impl Into<redb::Error>) -> StoreError {
        classify(&self.path, error.into())
    }
}

fn open_error(path: &Path, error: redb::DatabaseError) -> StoreError {
    match error {
        redb::DatabaseError::DatabaseAlreadyOpen | redb::DatabaseError::LockProtocolMismatch => {
            StoreError::InUse {
                path: path.to_owned(),
            }
        }
        redb::DatabaseError::UpgradeRequired(found) => StoreError::Format {
            path: path.to_owned(),
            found: found.to_string(),
        },
        other => classify(path, other.into()),
    }
}

fn classify(path: &Path, error: redb::Error) -> StoreError {
    let path = path.to_owned();
    match error {
        redb::Error::Corrupted(detail) => StoreError::Corrupt { path, detail },
        // Not a redb file at all (bad magic, truncated header): redb reports InvalidData.
        redb::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
            StoreError::Corrupt {
                path,
                detail: io.to_string(),
            }
        }
        redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => {
            StoreError::InUse { path }
        }
        redb::Error::UpgradeRequired(found) => StoreError::Format {
            path,
            found: found.to_string(),
        },
        other => StoreError::Io {
            path,
            detail: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let path =
                std::env::temp_dir().join(format!("palisade-store-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap_or_else(|error| panic!("{error}"));
            Dir(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn open(dir: &Dir) -> Store {
        Store::open(&dir.0).unwrap_or_else(|error| panic!("{error}"))
    }

    #[test]
    fn the_node_id_is_made_once_and_kept() {
        let dir = Dir::new("identity");
        let first = open(&dir).node_id();
        let again = open(&dir).node_id();
        assert_eq!(first, again);
        let other = Dir::new("identity-other");
        assert_ne!(
            open(&other).node_id(),
            first,
            "another data directory, another node"
        );
    }

    #[test]
    fn the_drain_marker_survives_reopening_until_cleared() {
        let dir = Dir::new("drain");
        assert_eq!(open(&dir).drained_since().ok(), Some(None));
        open(&dir)
            .set_drained_since(Some(42))
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(open(&dir).drained_since().ok(), Some(Some(42)));
        open(&dir)
            .set_drained_since(None)
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(open(&dir).drained_since().ok(), Some(None));
    }

    #[test]
    fn a_second_process_on_the_same_directory_is_refused() {
        let dir = Dir::new("in-use");
        let _held = open(&dir);
        match Store::open(&dir.0) {
            Err(StoreError::InUse { path }) => assert_eq!(path, dir.0.join(FILE_NAME)),
            other => panic!(
                "expected InUse, got {:?}",
                other.map(|store| store.node_id())
            ),
        }
    }

    #[test]
    fn a_corrupt_store_is_named_and_left_alone() {
        let dir = Dir::new("corrupt");
        let file = dir.0.join(FILE_NAME);
        for garbage in [&b"not a database at all, just text"[..], &[0xff; 4096][..]] {
            std::fs::write(&file, garbage).unwrap_or_else(|error| panic!("{error}"));
            match Store::open(&dir.0) {
                Err(error @ StoreError::Corrupt { .. }) => {
                    let text = error.to_string();
                    assert!(text.contains(&file.display().to_string()), "{text}");
                }
                other => panic!(
                    "expected Corrupt, got {:?}",
                    other.map(|store| store.node_id())
                ),
            }
            // Nothing was written over the evidence.
            assert_eq!(std::fs::read(&file).unwrap_or_default(), garbage);
        }
    }

    #[test]
    fn export_and_import_carry_the_identity() {
        let (from, to) = (Dir::new("export-from"), Dir::new("export-to"));
        let source = open(&from);
        source
            .set_drained_since(Some(1_795_000_000))
            .unwrap_or_else(|error| panic!("{error}"));
        let export = source.export().unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(export["format"], EXPORT_FORMAT);
        let mut target = open(&to);
        assert_ne!(target.node_id(), source.node_id());
        target
            .import(&export)
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(target.node_id(), source.node_id());
        assert_eq!(target.drained_since().ok(), Some(Some(1_795_000_000)));
        drop(target);
        assert_eq!(
            open(&to).node_id(),
            source.node_id(),
            "the import was committed"
        );
        let mut target = open(&to);
        for bad in [
            serde_json::json!({"format": 2, "node": {"id": source.node_id().to_string()}}),
            serde_json::json!({"node": {"id": source.node_id().to_string()}}),
            serde_json::json!({"format": 1, "node": {"id": "node-a"}}),
        ] {
            let error = target.import(&bad).map(|()| "imported").unwrap_err();
            assert!(matches!(error, StoreError::Import { .. }), "{error}");
        }
        assert_eq!(
            target.node_id(),
            source.node_id(),
            "a refused import changes nothing"
        );
    }
}
