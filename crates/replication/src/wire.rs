//! Replication messages on the wire, sans-IO and strict: every length is bounded and checked,
//! strings are UTF-8, nothing may trail. Carried by the peer links as the replication plane
//! (its own wire version, [`VERSION`]).

use palisade_identity::{NodeId, NodePriority};

use crate::hlc::HlcTime;
use crate::revision::{ContentId, Revision, RevisionId, RevisionKind};

/// The replication plane's wire version.
pub const VERSION: u8 = 1;
/// Revisions in one message at most.
pub const MAX_REVISIONS: usize = 256;
/// Ids in one message at most.
pub const MAX_IDS: usize = 1024;
/// Parents of one revision at most (a merge of that many concurrent saves).
pub const MAX_PARENTS: usize = 1024;
pub const MAX_SAVED_BY: usize = 256;
pub const MAX_MESSAGE: usize = 4096;
/// Encoded size a message is kept under, so it fits one peer-link frame (65,000 bytes). The
/// largest revision (1,024 parents, longest texts) is about 37 kB.
pub const MAX_MESSAGE_BYTES: usize = 60_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncMessage {
    /// Revisions: a new save pushed to every peer, or what a peer asked for.
    Revisions(Vec<Revision>),
    /// Anti-entropy: this node's frontier and head.
    Digest {
        frontier: Vec<RevisionId>,
        head: Option<RevisionId>,
    },
    /// Please send these revisions.
    Want(Vec<RevisionId>),
    /// Please send these contents (policy bundles, list files).
    WantContent(Vec<ContentId>),
    /// The sender holds none of these contents: ask someone else.
    NoContent(Vec<ContentId>),
    /// Part of a content: `bytes` at `offset` of `total`.
    Content {
        id: ContentId,
        offset: u64,
        total: u64,
        bytes: Vec<u8>,
    },
    /// What the sender runs: the revision live there, and the last one it could not install
    /// (with why), so a save's author sees every node's outcome.
    Activation {
        active: Option<RevisionId>,
        refused: Option<(RevisionId, String)>,
    },
    /// The node records this node holds, by node and time (anti-entropy, every tick).
    RecordDigest(Vec<(NodeId, HlcTime)>),
    /// Node records the receiver lacks or holds older.
    Records(Vec<crate::records::NodeRecord>),
    /// A member asks the node that holds the CA key to sign a new certificate for it (a
    /// PEM signing request for its own node id; the link authenticated who asks).
    RenewRequest(String),
    /// The signed certificate (PEM), or why not.
    RenewResponse(Result<String, String>),
    /// The cluster's trust bundle, signed by its CA (opaque here: the cluster plane checks the
    /// signature before it believes a byte of it).
    Trust(Vec<u8>),
    /// Who the sender is and what it runs, sent when a link comes up and on every digest
    /// tick: the checks before replicating (release, clock, the settings that must agree).
    /// Its layout never changes, so nodes of any wire version can read each other's.
    Hello(Hello),
}

/// The facts a node checks of a peer before replicating with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The sender's replication wire version.
    pub wire_version: u8,
    /// Its release (`CARGO_PKG_VERSION`).
    pub release: String,
    /// Its clock (Unix milliseconds) when it sent this.
    pub wall_ms: u64,
    /// Cluster settings that must agree on every node.
    pub max_time_difference_ms: u64,
    /// 0: major, 1: minor, 2: exact.
    pub version_match: u8,
}

/// A signing request's or certificate's PEM length at most.
pub const MAX_PEM: usize = 16 * 1024;

/// A release string's length at most.
pub const MAX_RELEASE: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("replication message truncated")]
    Truncated,
    #[error("replication message: {0}")]
    Malformed(&'static str),
    #[error("replication message of version {0}, this node speaks {VERSION}")]
    Version(u8),
}

mod kind {
    pub const REVISIONS: u8 = 1;
    pub const DIGEST: u8 = 2;
    pub const WANT: u8 = 3;
    pub const WANT_CONTENT: u8 = 4;
    pub const CONTENT: u8 = 5;
    pub const NO_CONTENT: u8 = 6;
    pub const TRUST: u8 = 7;
    pub const ACTIVATION: u8 = 8;
    pub const RENEW_REQUEST: u8 = 9;
    pub const RENEW_RESPONSE: u8 = 10;
    pub const RECORD_DIGEST: u8 = 11;
    pub const RECORDS: u8 = 12;
    /// Fixed layout in every wire version (see [`super::Hello`]).
    pub const HELLO: u8 = 0x80;
}

/// Bytes of content in one message at most.
pub const MAX_CONTENT_CHUNK: usize = 56_000;

/// A content as the messages that carry it, in order (one empty message for an empty one).
pub fn content_messages(id: ContentId, bytes: &[u8]) -> impl Iterator<Item = SyncMessage> + '_ {
    let total = bytes.len() as u64;
    let empty = bytes.is_empty().then(|| SyncMessage::Content {
        id,
        offset: 0,
        total: 0,
        bytes: Vec::new(),
    });
    empty
        .into_iter()
        .chain(
            bytes
                .chunks(MAX_CONTENT_CHUNK)
                .enumerate()
                .map(move |(index, chunk)| SyncMessage::Content {
                    id,
                    offset: (index * MAX_CONTENT_CHUNK) as u64,
                    total,
                    bytes: chunk.to_vec(),
                }),
        )
}
/// A content's size at most (a 1,000,000-entry list is ~20 MB).
pub const MAX_CONTENT: u64 = 256 * 1024 * 1024;

impl SyncMessage {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        match self {
            SyncMessage::Revisions(revisions) => {
                out.push(kind::REVISIONS);
                out.extend_from_slice(&(revisions.len() as u16).to_be_bytes());
                for revision in revisions {
                    encode_revision(revision, &mut out);
                }
            }
            SyncMessage::Digest { frontier, head } => {
                out.push(kind::DIGEST);
                encode_ids(frontier.iter().map(|id| &id.0), &mut out);
                match head {
                    Some(head) => {
                        out.push(1);
                        out.extend_from_slice(&head.0);
                    }
                    None => out.push(0),
                }
            }
            SyncMessage::Want(ids) => {
                out.push(kind::WANT);
                encode_ids(ids.iter().map(|id| &id.0), &mut out);
            }
            SyncMessage::WantContent(ids) => {
                out.push(kind::WANT_CONTENT);
                encode_ids(ids.iter().map(|id| &id.0), &mut out);
            }
            SyncMessage::NoContent(ids) => {
                out.push(kind::NO_CONTENT);
                encode_ids(ids.iter().map(|id| &id.0), &mut out);
            }
            SyncMessage::Content {
                id,
                offset,
                total,
                bytes,
            } => {
                out.push(kind::CONTENT);
                out.extend_from_slice(&id.0);
                out.extend_from_slice(&offset.to_be_bytes());
                out.extend_from_slice(&total.to_be_bytes());
                let bytes = &bytes[..bytes.len().min(MAX_CONTENT_CHUNK)];
                out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                out.extend_from_slice(bytes);
            }
            SyncMessage::Activation { active, refused } => {
                out.push(kind::ACTIVATION);
                match active {
                    Some(id) => {
                        out.push(1);
                        out.extend_from_slice(&id.0);
                    }
                    None => out.push(0),
                }
                match refused {
                    Some((id, why)) => {
                        out.push(1);
                        out.extend_from_slice(&id.0);
                        let why = truncate(why, MAX_MESSAGE);
                        out.extend_from_slice(&(why.len() as u16).to_be_bytes());
                        out.extend_from_slice(why.as_bytes());
                    }
                    None => out.push(0),
                }
            }
            SyncMessage::RecordDigest(entries) => {
                out.push(kind::RECORD_DIGEST);
                let entries = &entries[..entries.len().min(MAX_IDS)];
                out.extend_from_slice(&(entries.len() as u16).to_be_bytes());
                for (node, time) in entries {
                    out.extend_from_slice(node.as_bytes());
                    out.extend_from_slice(&time.to_bytes());
                }
            }
            SyncMessage::Records(records) => {
                out.push(kind::RECORDS);
                // Whole records only, as many as fit one message.
                let mut fitting = Vec::new();
                let mut size = 0;
                for record in records {
                    let length = 16 + 10 + 4 + record.bytes.len().min(crate::records::MAX_RECORD);
                    if size + length > MAX_MESSAGE_BYTES {
                        break;
                    }
                    size += length;
                    fitting.push(record);
                }
                out.extend_from_slice(&(fitting.len() as u16).to_be_bytes());
                for record in fitting {
                    let bytes = &record.bytes[..record.bytes.len().min(crate::records::MAX_RECORD)];
                    out.extend_from_slice(record.node.as_bytes());
                    out.extend_from_slice(&record.time.to_bytes());
                    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                    out.extend_from_slice(bytes);
                }
            }
            SyncMessage::RenewRequest(pem) => {
                out.push(kind::RENEW_REQUEST);
                let pem = truncate(pem, MAX_PEM);
                out.extend_from_slice(&(pem.len() as u16).to_be_bytes());
                out.extend_from_slice(pem.as_bytes());
            }
            SyncMessage::RenewResponse(answer) => {
                out.push(kind::RENEW_RESPONSE);
                let (flag, text) = match answer {
                    Ok(pem) => (1, truncate(pem, MAX_PEM)),
                    Err(why) => (0, truncate(why, MAX_MESSAGE)),
                };
                out.push(flag);
                out.extend_from_slice(&(text.len() as u16).to_be_bytes());
                out.extend_from_slice(text.as_bytes());
            }
            SyncMessage::Trust(bytes) => {
                out.push(kind::TRUST);
                let bytes = &bytes[..bytes.len().min(MAX_MESSAGE_BYTES)];
                out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                out.extend_from_slice(bytes);
            }
            SyncMessage::Hello(hello) => {
                out[0] = hello.wire_version;
                out.push(kind::HELLO);
                let release = truncate(&hello.release, MAX_RELEASE);
                out.push(release.len() as u8);
                out.extend_from_slice(release.as_bytes());
                out.extend_from_slice(&hello.wall_ms.to_be_bytes());
                out.extend_from_slice(&hello.max_time_difference_ms.to_be_bytes());
                out.push(hello.version_match);
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<SyncMessage, WireError> {
        let mut reader = Reader { bytes };
        let version = reader.u8()?;
        let kind = reader.u8()?;
        if version != VERSION && kind != kind::HELLO {
            return Err(WireError::Version(version));
        }
        let message = match kind {
            kind::HELLO => {
                let length = usize::from(reader.u8()?);
                if length > MAX_RELEASE {
                    return Err(WireError::Malformed("release too long"));
                }
                let release = std::str::from_utf8(reader.take(length)?)
                    .map_err(|_| WireError::Malformed("release not UTF-8"))?
                    .to_owned();
                let wall_ms = u64::from_be_bytes(reader.array()?);
                let max_time_difference_ms = u64::from_be_bytes(reader.array()?);
                let version_match = reader.u8()?;
                SyncMessage::Hello(Hello {
                    wire_version: version,
                    release,
                    wall_ms,
                    max_time_difference_ms,
                    version_match,
                })
            }
            kind::REVISIONS => {
                let count = usize::from(reader.u16()?);
                if count > MAX_REVISIONS {
                    return Err(WireError::Malformed("too many revisions"));
                }
                let mut revisions = Vec::with_capacity(count);
                for _ in 0..count {
                    revisions.push(decode_revision(&mut reader)?);
                }
                SyncMessage::Revisions(revisions)
            }
            kind::DIGEST => {
                let frontier = decode_ids(&mut reader, RevisionId)?;
                let head = match reader.u8()? {
                    0 => None,
                    1 => Some(RevisionId(reader.array()?)),
                    _ => return Err(WireError::Malformed("head flag")),
                };
                SyncMessage::Digest { frontier, head }
            }
            kind::ACTIVATION => {
                let active = match reader.u8()? {
                    0 => None,
                    1 => Some(RevisionId(reader.array()?)),
                    _ => return Err(WireError::Malformed("active flag")),
                };
                let refused = match reader.u8()? {
                    0 => None,
                    1 => {
                        let id = RevisionId(reader.array()?);
                        Some((id, reader.text(MAX_MESSAGE)?))
                    }
                    _ => return Err(WireError::Malformed("refused flag")),
                };
                SyncMessage::Activation { active, refused }
            }
            kind::RECORD_DIGEST => {
                let count = usize::from(reader.u16()?);
                if count > MAX_IDS {
                    return Err(WireError::Malformed("too many records"));
                }
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    let node = NodeId::from_bytes(reader.array()?);
                    entries.push((node, HlcTime::from_bytes(reader.array()?)));
                }
                SyncMessage::RecordDigest(entries)
            }
            kind::RECORDS => {
                let count = usize::from(reader.u16()?);
                if count > MAX_IDS {
                    return Err(WireError::Malformed("too many records"));
                }
                let mut records = Vec::with_capacity(count.min(64));
                for _ in 0..count {
                    let node = NodeId::from_bytes(reader.array()?);
                    let time = HlcTime::from_bytes(reader.array()?);
                    let length = u32::from_be_bytes(reader.array()?) as usize;
                    if length > crate::records::MAX_RECORD {
                        return Err(WireError::Malformed("record too long"));
                    }
                    records.push(crate::records::NodeRecord {
                        node,
                        time,
                        bytes: reader.take(length)?.to_vec(),
                    });
                }
                SyncMessage::Records(records)
            }
            kind::RENEW_REQUEST => SyncMessage::RenewRequest(reader.text(MAX_PEM)?),
            kind::RENEW_RESPONSE => match reader.u8()? {
                1 => SyncMessage::RenewResponse(Ok(reader.text(MAX_PEM)?)),
                0 => SyncMessage::RenewResponse(Err(reader.text(MAX_MESSAGE)?)),
                _ => return Err(WireError::Malformed("renewal flag")),
            },
            kind::TRUST => {
                let length = u32::from_be_bytes(reader.array()?) as usize;
                if length > MAX_MESSAGE_BYTES {
                    return Err(WireError::Malformed("trust bundle too long"));
                }
                SyncMessage::Trust(reader.take(length)?.to_vec())
            }
            kind::WANT => SyncMessage::Want(decode_ids(&mut reader, RevisionId)?),
            kind::WANT_CONTENT => SyncMessage::WantContent(decode_ids(&mut reader, ContentId)?),
            kind::NO_CONTENT => SyncMessage::NoContent(decode_ids(&mut reader, ContentId)?),
            kind::CONTENT => {
                let id = ContentId(reader.array()?);
                let offset = u64::from_be_bytes(reader.array()?);
                let total = u64::from_be_bytes(reader.array()?);
                let length = u32::from_be_bytes(reader.array()?) as usize;
                if length > MAX_CONTENT_CHUNK {
                    return Err(WireError::Malformed("content chunk too long"));
                }
                if total > MAX_CONTENT
                    || offset
                        .checked_add(length as u64)
                        .is_none_or(|end| end > total)
                {
                    return Err(WireError::Malformed("content chunk outside its content"));
                }
                SyncMessage::Content {
                    id,
                    offset,
                    total,
                    bytes: reader.take(length)?.to_vec(),
                }
            }
            _ => return Err(WireError::Malformed("unknown kind")),
        };
        if !reader.bytes.is_empty() {
            return Err(WireError::Malformed("trailing bytes"));
        }
        Ok(message)
    }
}

impl Revision {
    /// The revision as stored (the same encoding as on the wire).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        encode_revision(self, &mut out);
        out
    }

    /// A stored revision; its id is checked when it goes into a [`History`](crate::History).
    pub fn from_bytes(bytes: &[u8]) -> Result<Revision, WireError> {
        let mut reader = Reader { bytes };
        let version = reader.u8()?;
        if version != VERSION {
            return Err(WireError::Version(version));
        }
        let revision = decode_revision(&mut reader)?;
        if !reader.bytes.is_empty() {
            return Err(WireError::Malformed("trailing bytes"));
        }
        Ok(revision)
    }
}

impl HlcTime {
    /// The stored form of a high-water mark.
    pub fn to_bytes(self) -> [u8; 10] {
        let mut out = [0u8; 10];
        out[..8].copy_from_slice(&self.ms.to_be_bytes());
        out[8..].copy_from_slice(&self.counter.to_be_bytes());
        out
    }

    pub fn from_bytes(bytes: [u8; 10]) -> HlcTime {
        let mut ms = [0u8; 8];
        ms.copy_from_slice(&bytes[..8]);
        HlcTime {
            ms: u64::from_be_bytes(ms),
            counter: u16::from_be_bytes([bytes[8], bytes[9]]),
        }
    }
}

/// A count, then each 32-byte id (revisions and contents alike), at most `MAX_IDS`.
fn encode_ids<'a>(ids: impl ExactSizeIterator<Item = &'a [u8; 32]>, out: &mut Vec<u8>) {
    let count = ids.len().min(MAX_IDS);
    out.extend_from_slice(&(count as u16).to_be_bytes());
    for id in ids.take(count) {
        out.extend_from_slice(id);
    }
}

fn decode_ids<T>(reader: &mut Reader<'_>, make: fn([u8; 32]) -> T) -> Result<Vec<T>, WireError> {
    let count = usize::from(reader.u16()?);
    if count > MAX_IDS {
        return Err(WireError::Malformed("too many ids"));
    }
    (0..count).map(|_| reader.array().map(make)).collect()
}

fn encode_revision(revision: &Revision, out: &mut Vec<u8>) {
    out.push(match revision.kind {
        RevisionKind::Save => 1,
        RevisionKind::Merge => 2,
        RevisionKind::Refusal => 3,
    });
    // A history never holds more parents than MAX_PARENTS (refused on insert), so nothing
    // is cut here.
    out.extend_from_slice(
        &(revision.parents.len().min(usize::from(u16::MAX)) as u16).to_be_bytes(),
    );
    for parent in &revision.parents {
        out.extend_from_slice(&parent.0);
    }
    out.extend_from_slice(&revision.id.0);
    out.extend_from_slice(revision.author.as_bytes());
    out.extend_from_slice(&revision.author_priority.value().to_be_bytes());
    out.extend_from_slice(&revision.time.ms.to_be_bytes());
    out.extend_from_slice(&revision.time.counter.to_be_bytes());
    out.extend_from_slice(&revision.content.0);
    for (text, limit) in [
        (&revision.saved_by, MAX_SAVED_BY),
        (&revision.message, MAX_MESSAGE),
    ] {
        let text = truncate(text, limit);
        out.extend_from_slice(&(text.len() as u16).to_be_bytes());
        out.extend_from_slice(text.as_bytes());
    }
}

/// At most `limit` bytes, cut at a character boundary (a longer text is refused before it is
/// saved; this only keeps the encoder total).
pub(crate) fn truncate(text: &str, limit: usize) -> &str {
    let mut end = text.len().min(limit);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn decode_revision(reader: &mut Reader<'_>) -> Result<Revision, WireError> {
    let kind = match reader.u8()? {
        1 => RevisionKind::Save,
        2 => RevisionKind::Merge,
        3 => RevisionKind::Refusal,
        _ => return Err(WireError::Malformed("revision kind")),
    };
    let parent_count = usize::from(reader.u16()?);
    if parent_count > MAX_PARENTS {
        return Err(WireError::Malformed("too many parents"));
    }
    let parents = (0..parent_count)
        .map(|_| reader.array().map(RevisionId))
        .collect::<Result<Vec<_>, _>>()?;
    let id = RevisionId(reader.array()?);
    let author = NodeId::from_bytes(reader.array()?);
    let author_priority = NodePriority::new(reader.u16()?);
    let ms = u64::from_be_bytes(reader.array()?);
    let counter = reader.u16()?;
    let content = ContentId(reader.array()?);
    let saved_by = reader.text(MAX_SAVED_BY)?;
    let message = reader.text(MAX_MESSAGE)?;
    Ok(Revision {
        id,
        kind,
        parents,
        author,
        author_priority,
        time: HlcTime { ms, counter },
        content,
        saved_by,
        message,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], WireError> {
        if self.bytes.len() < count {
            return Err(WireError::Truncated);
        }
        let (taken, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn text(&mut self, limit: usize) -> Result<String, WireError> {
        let length = usize::from(self.u16()?);
        if length > limit {
            return Err(WireError::Malformed("text too long"));
        }
        std::str::from_utf8(self.take(length)?)
            .map(str::to_owned)
            .map_err(|_| WireError::Malformed("text not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn revision(parent: Option<RevisionId>, text: &str) -> Revision {
        Revision::save(
            parent,
            NodeId::from_bytes([3; 16]),
            NodePriority::new(7),
            HlcTime {
                ms: 1_800_000_000_000,
                counter: 2,
            },
            ContentId::of(text.as_bytes()),
            "alice",
            text,
        )
    }

    #[test]
    fn every_message_round_trips() {
        let first = revision(None, "first");
        let second = revision(Some(first.id), "second: ünïcode");
        let refusal = Revision::refusal(
            &second,
            NodeId::from_bytes([4; 16]),
            NodePriority::new(9),
            second.time,
            "proxy-2",
            "policy.toml line 3: unknown list",
        );
        let messages = [
            SyncMessage::Revisions(vec![first.clone(), second.clone(), refusal]),
            SyncMessage::Digest {
                frontier: vec![first.id, second.id],
                head: Some(second.id),
            },
            SyncMessage::Digest {
                frontier: Vec::new(),
                head: None,
            },
            SyncMessage::Want(vec![first.id]),
            SyncMessage::WantContent(vec![first.content]),
            SyncMessage::NoContent(vec![first.content]),
            SyncMessage::Content {
                id: first.content,
                offset: 3,
                total: 10,
                bytes: vec![1, 2, 3],
            },
            SyncMessage::Trust(vec![9; 100]),
            SyncMessage::RenewRequest("-----BEGIN CERTIFICATE REQUEST-----".to_owned()),
            SyncMessage::RecordDigest(vec![(first.author, first.time)]),
            SyncMessage::Records(vec![crate::records::NodeRecord {
                node: first.author,
                time: first.time,
                bytes: b"{\"name\":\"proxy-1\"}".to_vec(),
            }]),
            SyncMessage::RenewResponse(Ok("-----BEGIN CERTIFICATE-----".to_owned())),
            SyncMessage::RenewResponse(Err("no CA key here".to_owned())),
            SyncMessage::Activation {
                active: Some(first.id),
                refused: Some((second.id, "line 3: unknown list".to_owned())),
            },
            SyncMessage::Activation {
                active: None,
                refused: None,
            },
            SyncMessage::Hello(Hello {
                wire_version: VERSION,
                release: "0.1.0".to_owned(),
                wall_ms: 1_800_000_000_000,
                max_time_difference_ms: 120_000,
                version_match: 1,
            }),
        ];
        for message in messages {
            assert_eq!(SyncMessage::decode(&message.encode()), Ok(message));
        }
    }

    #[test]
    fn stored_forms_round_trip() {
        let stored = revision(None, "stored");
        assert_eq!(Revision::from_bytes(&stored.to_bytes()), Ok(stored));
        let mark = HlcTime {
            ms: 1_800_000_000_123,
            counter: 9,
        };
        assert_eq!(HlcTime::from_bytes(mark.to_bytes()), mark);
    }

    #[test]
    fn truncation_trailing_bytes_and_bad_versions_are_errors() {
        let bytes = SyncMessage::Revisions(vec![revision(None, "x")]).encode();
        for cut in 0..bytes.len() {
            assert!(SyncMessage::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(
            SyncMessage::decode(&trailing),
            Err(WireError::Malformed("trailing bytes"))
        );
        let mut newer = bytes;
        newer[0] = 2;
        assert_eq!(SyncMessage::decode(&newer), Err(WireError::Version(2)));
    }

    /// A hello of any wire version is read (a newer node's release must be reported as a
    /// 404, not dropped as unreadable).
    #[test]
    fn hellos_of_other_wire_versions_are_read() {
        let hello = Hello {
            wire_version: 7,
            release: "9.0.0".to_owned(),
            wall_ms: 1,
            max_time_difference_ms: 2,
            version_match: 0,
        };
        let bytes = SyncMessage::Hello(hello.clone()).encode();
        assert_eq!(bytes[0], 7);
        assert_eq!(SyncMessage::decode(&bytes), Ok(SyncMessage::Hello(hello)));
        let long = SyncMessage::Hello(Hello {
            wire_version: VERSION,
            release: "x".repeat(200),
            wall_ms: 0,
            max_time_difference_ms: 0,
            version_match: 0,
        });
        let decoded = SyncMessage::decode(&long.encode());
        assert!(
            matches!(decoded, Ok(SyncMessage::Hello(Hello { ref release, .. })) if release.len() == MAX_RELEASE)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            if let Ok(message) = SyncMessage::decode(&bytes) {
                prop_assert_eq!(SyncMessage::decode(&message.encode()), Ok(message));
            }
        }
    }
}
