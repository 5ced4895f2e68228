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
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// The file name inside the data directory.
pub const FILE_NAME: &str = "palisade.redb";
/// Version of the export format (and of the tables' layout it mirrors).
pub const EXPORT_FORMAT: u64 = 2;
/// Earlier export formats this release still reads.
const READS_FORMATS: [u64; 2] = [1, 2];

/// Node-local facts, one value per key.
const NODE: TableDefinition<&str, &[u8]> = TableDefinition::new("node");
const NODE_ID: &str = "node_id";
/// Present while the node is drained; the value is the Unix time of the drain (8 bytes, LE).
const DRAINED_SINCE: &str = "drained_since";
const HLC_HIGH_WATER: &str = "hlc_high_water";
/// A save made with `--confirm` that has not been confirmed yet (opaque to the store).
const PENDING_CONFIRM: &str = "pending_confirm";
/// The cluster whose history the revisions table holds.
const CLUSTER_ID: &str = "cluster_id";
/// Replicated revisions by id, in the replication plane's encoding (opaque here).
const REVISIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("revisions");
/// Content-addressed documents (policy bundles, list files) by SHA-256.
const CONTENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("contents");
/// A stored node record: node id, time (opaque), bytes.
pub type StoredRecord = ([u8; 16], [u8; 10], Vec<u8>);

/// Each member's node record (its time, then its bytes), by node id.
const NODE_RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("node_records");
/// Revisions of a cluster this node was in before (kept, never replicated).
const ARCHIVED_REVISIONS: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("archived_revisions");

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

    /// The save waiting for `palisade policy confirm`, as the admin plane wrote it: a restart
    /// must not forget the rollback it owes.
    pub fn pending_confirm(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.tables.read(PENDING_CONFIRM)
    }

    /// Records (`Some`) or clears the save waiting for confirmation, durably.
    pub fn set_pending_confirm(&self, pending: Option<&[u8]>) -> Result<(), StoreError> {
        self.tables.write(&[(PENDING_CONFIRM, pending)])
    }

    /// The replication clock's high-water mark (opaque bytes of the replication plane).
    pub fn hlc_high_water(&self) -> Result<Option<[u8; 10]>, StoreError> {
        self.tables
            .read_fixed::<10>(HLC_HIGH_WATER, "clock high-water mark")
    }

    /// Stores a revision with the contents it brings and the clock's high-water mark, in one
    /// committed transaction: a crash leaves all of it or none.
    pub fn save_revision(
        &self,
        id: &[u8; 32],
        revision: &[u8],
        contents: &[([u8; 32], &[u8])],
        high_water: [u8; 10],
    ) -> Result<(), StoreError> {
        self.tables.transaction(|write| {
            write.open_table(REVISIONS)?.insert(&id[..], revision)?;
            insert_contents(write, contents)?;
            write
                .open_table(NODE)?
                .insert(HLC_HIGH_WATER, &high_water[..])?;
            Ok(())
        })
    }

    /// The cluster whose history this store holds, if recorded.
    pub fn cluster_id(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .tables
            .read(CLUSTER_ID)?
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// Makes this store hold `cluster`'s history: revisions kept from another cluster (or
    /// from before any was recorded) move to the archive, in one transaction, so a node
    /// that joins a cluster adopts its head instead of merging its old policy into it.
    /// Returns how many were archived.
    pub fn adopt_cluster(&self, cluster: &str) -> Result<usize, StoreError> {
        if self.cluster_id()?.as_deref() == Some(cluster) {
            return Ok(0);
        }
        let mut archived = 0;
        self.tables.transaction(|write| {
            let mut revisions = write.open_table(REVISIONS)?;
            let mut archive = write.open_table(ARCHIVED_REVISIONS)?;
            let moved: Vec<(Vec<u8>, Vec<u8>)> = revisions
                .iter()?
                .map(|entry| {
                    entry.map(|(key, value)| (key.value().to_vec(), value.value().to_vec()))
                })
                .collect::<Result<_, _>>()?;
            for (key, value) in &moved {
                archive.insert(key.as_slice(), value.as_slice())?;
            }
            revisions.retain(|_, _| false)?;
            archived = moved.len();
            write
                .open_table(NODE)?
                .insert(CLUSTER_ID, cluster.as_bytes())?;
            Ok(())
        })?;
        Ok(archived)
    }

    /// Stores a member's node record (`time`: opaque bytes of the replication plane).
    pub fn put_node_record(
        &self,
        node: &[u8; 16],
        time: [u8; 10],
        record: &[u8],
    ) -> Result<(), StoreError> {
        let mut value = time.to_vec();
        value.extend_from_slice(record);
        self.tables.transaction(|write| {
            write
                .open_table(NODE_RECORDS)?
                .insert(&node[..], value.as_slice())?;
            Ok(())
        })
    }

    /// Every node record held: node id, time, bytes.
    pub fn node_records(&self) -> Result<Vec<StoredRecord>, StoreError> {
        Ok(self
            .tables
            .all(NODE_RECORDS)?
            .into_iter()
            .filter_map(|(key, value)| {
                let node: [u8; 16] = key.try_into().ok()?;
                let time: [u8; 10] = value.get(..10)?.try_into().ok()?;
                Some((node, time, value[10..].to_vec()))
            })
            .collect())
    }

    /// Revisions archived from clusters this node was in before (encoded).
    pub fn archived_revisions(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        self.tables
            .all(ARCHIVED_REVISIONS)
            .map(|entries| entries.into_iter().map(|(_, value)| value).collect())
    }

    /// Stores contents that arrived apart from a revision (a bundle's lists, a peer's
    /// bundle), in one committed transaction.
    pub fn put_contents(&self, contents: &[([u8; 32], &[u8])]) -> Result<(), StoreError> {
        self.tables
            .transaction(|write| insert_contents(write, contents))
    }

    /// The ids of every stored content.
    pub fn content_ids(&self) -> Result<Vec<[u8; 32]>, StoreError> {
        self.tables.read_only(CONTENTS, Vec::new(), |table| {
            let mut ids = Vec::new();
            // Keys only: a content may be a 20 MB list.
            for entry in table.iter()? {
                let (key, _) = entry?;
                if let Ok(id) = key.value().try_into() {
                    ids.push(id);
                }
            }
            Ok(ids)
        })
    }

    /// Every stored revision (encoded), in no particular order.
    pub fn revisions(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        self.tables
            .all(REVISIONS)
            .map(|entries| entries.into_iter().map(|(_, value)| value).collect())
    }

    /// A stored document by its content id.
    pub fn content(&self, id: &[u8; 32]) -> Result<Option<Vec<u8>>, StoreError> {
        self.tables.read_only(CONTENTS, None, |table| {
            Ok(table.get(&id[..])?.map(|value| value.value().to_vec()))
        })
    }

    /// Everything in the store as versioned JSON, for backups and for moving between
    /// releases whose file formats differ.
    pub fn export(&self) -> Result<serde_json::Value, StoreError> {
        let hex_pairs = |entries: Entries| -> serde_json::Value {
            entries
                .into_iter()
                .map(|(key, value)| serde_json::json!([hex(&key), hex(&value)]))
                .collect()
        };
        Ok(serde_json::json!({
            "format": EXPORT_FORMAT,
            "node": {
                "id": self.node_id.to_string(),
                "drained_since": self.drained_since()?,
                "hlc_high_water": self.hlc_high_water()?.map(|mark| hex(&mark)),
            },
            "revisions": hex_pairs(self.tables.all(REVISIONS)?),
            "contents": hex_pairs(self.tables.all(CONTENTS)?),
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
            Some(format) if READS_FORMATS.contains(&format) => {}
            Some(other) => {
                return Err(refuse(format!(
                    "export format {other}, this release reads {READS_FORMATS:?}"
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
        let high_water = match export.pointer("/node/hlc_high_water") {
            None | Some(serde_json::Value::Null) => None,
            Some(value) => Some(
                value
                    .as_str()
                    .and_then(unhex)
                    .filter(|bytes| bytes.len() == 10)
                    .ok_or_else(|| refuse(format!("node.hlc_high_water is {value}")))?,
            ),
        };
        let pairs = |name: &str| -> Result<Entries, StoreError> {
            let Some(entries) = export.get(name) else {
                return Ok(Vec::new());
            };
            let entries = entries
                .as_array()
                .ok_or_else(|| refuse(format!("{name} is not a list")))?;
            entries
                .iter()
                .enumerate()
                .map(|(index, entry)| {
                    let pair = entry.as_array().filter(|pair| pair.len() == 2);
                    let key = pair.and_then(|pair| pair[0].as_str()).and_then(unhex);
                    let value = pair.and_then(|pair| pair[1].as_str()).and_then(unhex);
                    match (key, value) {
                        (Some(key), Some(value)) if key.len() == 32 => Ok((key, value)),
                        _ => Err(refuse(format!("{name}[{index}] is not [id, bytes] in hex"))),
                    }
                })
                .collect()
        };
        let (revisions, contents) = (pairs("revisions")?, pairs("contents")?);
        // One transaction: a crash mid-import leaves the store as it was, not half-imported.
        self.tables.transaction(|write| {
            let mut node = write.open_table(NODE)?;
            node.insert(NODE_ID, &id.as_bytes()[..])?;
            for (key, value) in [
                (
                    DRAINED_SINCE,
                    drained_since.as_ref().map(|bytes| &bytes[..]),
                ),
                (HLC_HIGH_WATER, high_water.as_deref()),
            ] {
                match value {
                    Some(value) => node.insert(key, value).map(|_| ())?,
                    None => node.remove(key).map(|_| ())?,
                }
            }
            for (definition, entries) in [(REVISIONS, &revisions), (CONTENTS, &contents)] {
                write.delete_table(definition)?;
                let mut table = write.open_table(definition)?;
                for (key, value) in entries {
                    table.insert(&key[..], &value[..])?;
                }
            }
            Ok(())
        })?;
        self.node_id = id;
        Ok(())
    }
}

/// A table's entries: (key, value) in key order.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

fn insert_contents(
    write: &redb::WriteTransaction,
    contents: &[([u8; 32], &[u8])],
) -> Result<(), redb::Error> {
    let mut table = write.open_table(CONTENTS)?;
    for (id, bytes) in contents {
        // Content-addressed: a content held already is the same bytes (an unchanged
        // 1,000,000-entry list is not written again with every save).
        if table.get(&id[..])?.is_some() {
            continue;
        }
        table.insert(&id[..], *bytes)?;
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

impl Tables {
    /// Runs `read` on a table in a read transaction; a table never written yet reads as
    /// `absent`.
    fn read_only<K: redb::Key + 'static, V: redb::Value + 'static, T>(
        &self,
        definition: TableDefinition<K, V>,
        absent: T,
        read: impl FnOnce(redb::ReadOnlyTable<K, V>) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        let transaction = self.db.begin_read().map_err(|error| self.fail(error))?;
        let table = match transaction.open_table(definition) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(absent),
            Err(error) => return Err(self.fail(error)),
        };
        read(table).map_err(|error| self.fail(error))
    }

    /// Every entry of a table, in key order.
    fn all(&self, definition: TableDefinition<&[u8], &[u8]>) -> Result<Entries, StoreError> {
        self.read_only(definition, Vec::new(), |table| {
            let mut entries = Vec::new();
            for entry in table.iter()? {
                let (key, value) = entry?;
                entries.push((key.value().to_vec(), value.value().to_vec()));
            }
            Ok(entries)
        })
    }

    fn read(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.read_only(NODE, None, |table| {
            Ok(table.get(key)?.map(|value| value.value().to_vec()))
        })
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
        self.transaction(|write| {
            let mut table = write.open_table(NODE)?;
            for (key, value) in entries {
                match value {
                    Some(value) => table.insert(*key, *value).map(|_| ())?,
                    None => table.remove(*key).map(|_| ())?,
                }
            }
            Ok(())
        })
    }

    /// Runs `fill` in one write transaction and commits it: all or nothing.
    fn transaction(
        &self,
        fill: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        let write = self.db.begin_write().map_err(|error| self.fail(error))?;
        fill(&write).map_err(|error| self.fail(error))?;
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
    fn a_pending_confirmation_survives_reopening_until_cleared() {
        let dir = Dir::new("confirm");
        assert_eq!(open(&dir).pending_confirm().ok(), Some(None));
        open(&dir)
            .set_pending_confirm(Some(b"{\"revision\":\"ab\"}"))
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(
            open(&dir).pending_confirm().ok(),
            Some(Some(b"{\"revision\":\"ab\"}".to_vec()))
        );
        open(&dir)
            .set_pending_confirm(None)
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(open(&dir).pending_confirm().ok(), Some(None));
    }

    #[test]
    fn joining_another_cluster_archives_the_old_history() {
        let dir = Dir::new("adopt");
        let store = open(&dir);
        store
            .save_revision(&[1; 32], b"old revision", &[], [0; 10])
            .unwrap_or_else(|error| panic!("{error}"));
        // Revisions from before any cluster was recorded: archived on the first adoption.
        assert_eq!(store.adopt_cluster("aaaa").ok(), Some(1));
        assert_eq!(store.revisions().ok(), Some(Vec::new()));
        assert_eq!(store.cluster_id().ok().flatten().as_deref(), Some("aaaa"));
        store
            .save_revision(&[2; 32], b"in aaaa", &[], [0; 10])
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(
            store.adopt_cluster("aaaa").ok(),
            Some(0),
            "same cluster: kept"
        );
        assert_eq!(store.revisions().map(|all| all.len()).ok(), Some(1));
        drop(store);
        let store = open(&dir);
        assert_eq!(
            store.adopt_cluster("bbbb").ok(),
            Some(1),
            "another cluster: archived"
        );
        assert_eq!(store.revisions().ok(), Some(Vec::new()));
        let mut archived = store.archived_revisions().unwrap_or_default();
        archived.sort();
        assert_eq!(
            archived,
            vec![b"in aaaa".to_vec(), b"old revision".to_vec()]
        );
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
    fn revisions_contents_and_the_clock_mark_survive_reopening_and_export() {
        let (from, to) = (Dir::new("repl-from"), Dir::new("repl-to"));
        let source = open(&from);
        let (id, content) = ([7u8; 32], [9u8; 32]);
        source
            .save_revision(
                &id,
                b"revision bytes",
                &[(content, b"policy bundle")],
                [1; 10],
            )
            .unwrap_or_else(|error| panic!("{error}"));
        drop(source);
        let source = open(&from);
        assert_eq!(
            source.revisions().ok(),
            Some(vec![b"revision bytes".to_vec()])
        );
        assert_eq!(
            source.content(&content).ok(),
            Some(Some(b"policy bundle".to_vec()))
        );
        assert_eq!(source.content(&[0; 32]).ok(), Some(None));
        assert_eq!(source.hlc_high_water().ok(), Some(Some([1; 10])));
        source
            .put_contents(&[([3; 32], b"a list")])
            .unwrap_or_else(|error| panic!("{error}"));
        let mut ids = source
            .content_ids()
            .unwrap_or_else(|error| panic!("{error}"));
        ids.sort();
        assert_eq!(ids, vec![[3; 32], content]);
        let export = source.export().unwrap_or_else(|error| panic!("{error}"));
        let mut target = open(&to);
        target
            .import(&export)
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(target.revisions().ok(), source.revisions().ok());
        assert_eq!(
            target.content(&content).ok(),
            Some(Some(b"policy bundle".to_vec()))
        );
        assert_eq!(target.hlc_high_water().ok(), Some(Some([1; 10])));
        // A format-1 export (before replication) still imports, with nothing replicated.
        let old = serde_json::json!({"format": 1, "node": {"id": source.node_id().to_string(), "drained_since": null}});
        target
            .import(&old)
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(target.revisions().ok(), Some(Vec::new()));
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
            serde_json::json!({"format": 3, "node": {"id": source.node_id().to_string()}}),
            serde_json::json!({"format": 2, "node": {"id": source.node_id().to_string()}, "revisions": [["00", "11"]]}),
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
