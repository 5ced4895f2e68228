//! Host globs, indexed so that a lookup costs about the same for ten globs as for a hundred
//! thousand.
//!
//! A glob `p0*p1*...*pk` matches a name when the name starts with `p0`, ends with `pk` and
//! holds `p1`, ..., `p(k-1)` in that order between them. Each glob is filed under one literal
//! key the name must contain:
//! - its prefix (`proxy-7-*` under `proxy-7-`) or its suffix (`*.cdn7.example` under
//!   `.cdn7.example`), found by hashing the name's prefixes and suffixes of just the lengths
//!   some key has, with a rolling hash: one step per byte of the name;
//! - for a glob that starts and ends with `*`, a gram (up to 8 bytes) of an inner piece
//!   (`*.tracker7.*` under `acker7.`), found by looking up every gram of the name of the
//!   widths some key has (1, 2, 4, 8): one probe per byte for each width.
//!
//! Of its candidate keys a glob takes the one fewest globs share, so buckets stay small, and
//! only the globs in the buckets a name hits are matched, each in linear time.

use std::hash::BuildHasher;

use hashbrown::hash_table::Entry;
use hashbrown::{DefaultHashBuilder, HashTable};

/// Longest glob accepted: the longest name DNS allows; `check_name` refuses longer ones.
const MAX_GLOB_LEN: usize = 253;

/// Inner-piece globs are tried one by one while there are at most this many per gram width
/// in use: trying one costs about as much as probing a few positions of the name.
const SCAN_PER_GRAM_WIDTH: usize = 16;

/// A set of globs; [`GlobSet::matches`] agrees with trying `glob_match` on each of them.
pub(crate) struct GlobSet {
    /// Every glob's text, back to back, so that a large list is a few allocations.
    arena: String,
    globs: Vec<Glob>,
    /// Indices into `globs`, by text: duplicates are refused in constant time.
    by_text: HashTable<usize>,
    hasher: DefaultHashBuilder,
    rolling: Rolling,
    prefixes: AnchoredIndex,
    suffixes: AnchoredIndex,
    grams: GramIndex,
    /// A glob of `*`s alone matches every name.
    matches_all: bool,
}

impl Default for GlobSet {
    fn default() -> Self {
        let hasher = DefaultHashBuilder::default();
        // The hasher's random seed makes the base random, so nobody can aim names at
        // hash collisions (which would only cost time: keys are compared in full).
        let rolling = Rolling::new(hasher.hash_one(0x676c_6f62_u64));
        GlobSet {
            arena: String::new(),
            globs: Vec::new(),
            by_text: HashTable::new(),
            hasher,
            rolling,
            prefixes: AnchoredIndex::default(),
            suffixes: AnchoredIndex::default(),
            grams: GramIndex::default(),
            matches_all: false,
        }
    }
}

/// One glob: its text in the arena, and where its literal prefix and suffix end.
struct Glob {
    start: usize,
    len: usize,
    /// Bytes before the first `*`; `len` when there is no `*` (then it is an exact name).
    prefix_len: usize,
    /// Bytes after the last `*`.
    suffix_len: usize,
    /// The next glob filed under the same key.
    next: Option<usize>,
}

/// Where a glob is filed.
#[derive(Clone, Copy, Debug)]
enum Key {
    /// The glob's first `len` bytes, and their rolling hash.
    Prefix {
        len: usize,
        hash: u64,
    },
    /// The glob's last `len` bytes, from `offset`, and their rolling hash.
    Suffix {
        offset: usize,
        len: usize,
        hash: u64,
    },
    Gram(Gram),
}

impl GlobSet {
    /// Adds a lowercase, validated glob; whether it was new.
    pub(crate) fn insert(&mut self, glob: &str) -> bool {
        if glob.len() > MAX_GLOB_LEN {
            // Unreachable after `check_name`; refusing beats an index of unbounded keys.
            return false;
        }
        let text_hash = self.hasher.hash_one(glob.as_bytes());
        let GlobSet {
            arena,
            globs,
            by_text,
            hasher,
            ..
        } = self;
        let text_of = |id: usize| globs.get(id).map_or("", |g| glob_text(arena, g));
        match by_text.entry(
            text_hash,
            |&id| text_of(id) == glob,
            |&id| hasher.hash_one(text_of(id).as_bytes()),
        ) {
            Entry::Occupied(_) => return false,
            Entry::Vacant(vacant) => {
                vacant.insert(globs.len());
            }
        }

        let start = arena.len();
        arena.push_str(glob);
        let (prefix_len, suffix_len) = match (glob.find('*'), glob.rfind('*')) {
            (Some(first), Some(last)) => (first, glob.len() - last - 1),
            _ => (glob.len(), 0),
        };
        let id = globs.len();
        globs.push(Glob {
            start,
            len: glob.len(),
            prefix_len,
            suffix_len,
            next: None,
        });
        match self.choose_key(glob, prefix_len, suffix_len) {
            Some(key) => self.file(key, start, id),
            None => self.matches_all = true,
        }
        true
    }

    /// Whether any glob matches `name`, which is lowercase (globs are compared byte for byte).
    pub(crate) fn matches(&self, name: &str) -> bool {
        self.matches_with(name, self.grams.prefer_index())
    }

    /// [`GlobSet::matches`], told whether to look up the grams of `name` or try the
    /// inner-piece globs one by one, so that tests can check that both ways agree.
    fn matches_with(&self, name: &str, index_grams: bool) -> bool {
        if self.matches_all {
            return true;
        }
        self.match_prefixes(name)
            || self.match_suffixes(name)
            || if index_grams {
                self.match_grams(name)
            } else {
                self.match_inner_scan(name)
            }
    }

    /// Distinct globs held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.globs.len()
    }

    /// The key a new glob is filed under: its prefix or suffix if it has one, else a gram
    /// of an inner piece; of the candidates the one fewest globs share (then the longest),
    /// so that `{i}*.example` does not pile 100,000 globs under `.example`.
    /// `None` for a glob of `*`s alone.
    fn choose_key(&self, glob: &str, prefix_len: usize, suffix_len: usize) -> Option<Key> {
        let bytes = glob.as_bytes();
        // (key, globs already under it, key length)
        let mut best: Option<(Key, usize, usize)> = None;
        let mut consider = |key: Key, crowd: usize, len: usize| {
            let better = best.is_none_or(|(_, best_crowd, best_len)| {
                crowd < best_crowd || (crowd == best_crowd && len > best_len)
            });
            if better {
                best = Some((key, crowd, len));
            }
        };
        if let Some(prefix) = bytes.get(..prefix_len)
            && !prefix.is_empty()
        {
            let hash = self.rolling.hash(prefix);
            let crowd = self.prefixes.crowd(&self.arena, &self.hasher, hash, prefix);
            consider(
                Key::Prefix {
                    len: prefix_len,
                    hash,
                },
                crowd,
                prefix_len,
            );
        }
        let suffix_offset = glob.len() - suffix_len;
        if let Some(suffix) = bytes.get(suffix_offset..)
            && !suffix.is_empty()
        {
            let hash = self.rolling.hash(suffix);
            let crowd = self.suffixes.crowd(&self.arena, &self.hasher, hash, suffix);
            consider(
                Key::Suffix {
                    offset: suffix_offset,
                    len: suffix_len,
                    hash,
                },
                crowd,
                suffix_len,
            );
        }
        if prefix_len == 0 && suffix_len == 0 {
            for piece in glob.split('*').map(str::as_bytes) {
                let width = gram_width(piece.len());
                // Grams side by side, and the last one: enough choice to find a rare gram
                // (a number, say) without a probe per byte of a long piece.
                let last = piece.len().saturating_sub(width);
                let starts = (0..last).step_by(width.max(1)).chain([last]);
                for window in starts.filter_map(|at| piece.get(at..at + width)) {
                    if let Some(gram) = Gram::new(window) {
                        consider(Key::Gram(gram), self.grams.crowd(&self.hasher, gram), width);
                    }
                }
            }
        }
        best.map(|(key, _, _)| key)
    }

    /// Files glob `id`, whose text starts at `start` of the arena, under `key`.
    fn file(&mut self, key: Key, start: usize, id: usize) {
        let GlobSet {
            arena,
            globs,
            hasher,
            prefixes,
            suffixes,
            grams,
            ..
        } = self;
        let first = match key {
            Key::Prefix { len, hash } => prefixes.file(arena, hasher, start, len, hash, id),
            Key::Suffix { offset, len, hash } => {
                suffixes.file(arena, hasher, start + offset, len, hash, id)
            }
            Key::Gram(gram) => grams.file(hasher, gram, id),
        };
        if let Some(glob) = globs.get_mut(id) {
            glob.next = first;
        }
    }

    /// Looks up `name[..n]` for every length `n` a prefix key has.
    fn match_prefixes(&self, name: &str) -> bool {
        let index = &self.prefixes;
        if index.n_globs == 0 {
            return false;
        }
        let bytes = name.as_bytes();
        let mut hash = 0;
        for (n_taken, &byte) in bytes.iter().enumerate().take(index.max_len) {
            hash = self.rolling.push(hash, byte);
            let len = n_taken + 1;
            if index.has_len(len)
                && let Some(key) = bytes.get(..len)
                && let Some(first) = index.find(&self.arena, &self.hasher, hash, key)
                && self.chain_matches(first, name)
            {
                return true;
            }
        }
        false
    }

    /// Looks up `name[name.len() - n..]` for every length `n` a suffix key has.
    fn match_suffixes(&self, name: &str) -> bool {
        let index = &self.suffixes;
        if index.n_globs == 0 {
            return false;
        }
        let bytes = name.as_bytes();
        // Growing the key leftwards: its new first byte takes the highest power.
        let (mut hash, mut power) = (0u64, 1u64);
        for (n_taken, &byte) in bytes.iter().rev().enumerate().take(index.max_len) {
            hash = hash.wrapping_add(byte_value(byte).wrapping_mul(power));
            power = power.wrapping_mul(self.rolling.base);
            let len = n_taken + 1;
            if index.has_len(len)
                && let Some(key) = bytes.get(bytes.len() - len..)
                && let Some(first) = index.find(&self.arena, &self.hasher, hash, key)
                && self.chain_matches(first, name)
            {
                return true;
            }
        }
        false
    }

    /// Looks up every gram of `name` of every width in use.
    fn match_grams(&self, name: &str) -> bool {
        let index = &self.grams;
        if index.n_globs == 0 {
            return false;
        }
        let bytes = name.as_bytes();
        // A gram can occur many times in a name, and a bucket that failed once fails again:
        // remember a few failed buckets (by first glob), so that "a.a.a.a..." does not retry
        // the globs filed under "a." at every position. A forgotten one is merely retried.
        let mut failed = [usize::MAX; 16];
        for width in [1, 2, 4, 8] {
            if index.widths & width == 0 {
                continue;
            }
            for window in bytes.windows(usize::from(width)) {
                let Some(gram) = Gram::new(window) else {
                    continue;
                };
                let Some(first) = index.find(&self.hasher, gram) else {
                    continue;
                };
                let slot = first % failed.len();
                if failed.get(slot) == Some(&first) {
                    continue;
                }
                if self.chain_matches(first, name) {
                    return true;
                }
                if let Some(entry) = failed.get_mut(slot) {
                    *entry = first;
                }
            }
        }
        false
    }

    /// Tries every glob filed under a gram.
    fn match_inner_scan(&self, name: &str) -> bool {
        self.grams
            .table
            .iter()
            .any(|bucket| self.chain_matches(bucket.first, name))
    }

    /// Tries the globs of one bucket, from `first` along `Glob::next`.
    fn chain_matches(&self, first: usize, name: &str) -> bool {
        let mut next = Some(first);
        while let Some(id) = next {
            let Some(glob) = self.globs.get(id) else {
                return false;
            };
            if glob_matches(&self.arena, glob, name) {
                return true;
            }
            next = glob.next;
        }
        false
    }
}

fn glob_text<'a>(arena: &'a str, glob: &Glob) -> &'a str {
    arena.get(glob.start..glob.start + glob.len).unwrap_or("")
}

/// `glob_match` in linear time: anchor the prefix and suffix, then place each inner piece at
/// its leftmost occurrence after the previous one. Leftmost is never worse, because `*`
/// takes any run, so this agrees with the backtracking matcher.
fn glob_matches(arena: &str, glob: &Glob, name: &str) -> bool {
    let text = glob_text(arena, glob);
    if glob.prefix_len == glob.len {
        return text == name;
    }
    let (Some(prefix), Some(suffix)) = (
        text.get(..glob.prefix_len),
        text.get(glob.len - glob.suffix_len..),
    ) else {
        return false;
    };
    if name.len() < prefix.len() + suffix.len()
        || !name.as_bytes().starts_with(prefix.as_bytes())
        || !name.as_bytes().ends_with(suffix.as_bytes())
    {
        return false;
    }
    // `name` starts with `prefix` and ends with `suffix`, whole strings both, so these are
    // character boundaries.
    let Some(mut rest) = name.get(prefix.len()..name.len() - suffix.len()) else {
        return false;
    };
    if glob.len == glob.prefix_len + 1 + glob.suffix_len {
        // One `*`, which takes whatever lies between prefix and suffix.
        return true;
    }
    let inner = text
        .get(glob.prefix_len + 1..glob.len - glob.suffix_len - 1)
        .unwrap_or("");
    for piece in inner.split('*').filter(|piece| !piece.is_empty()) {
        match rest.find(piece) {
            Some(at) => rest = rest.get(at + piece.len()..).unwrap_or(""),
            None => return false,
        }
    }
    true
}

// === AnchoredIndex ===

/// Globs by literal prefix (or suffix): a hash table of keys, each with its globs in a
/// linked list through `Glob::next`.
#[derive(Default)]
struct AnchoredIndex {
    table: HashTable<AnchoredBucket>,
    /// Bit `n` is set when some key is `n` bytes long: lookups probe only those lengths.
    lengths: [u64; 4],
    max_len: usize,
    n_globs: usize,
}

struct AnchoredBucket {
    /// The key is this range of the arena (a piece of the first glob filed here).
    key_start: usize,
    key_len: usize,
    /// The key's rolling hash, kept so that growing the table rehashes nothing.
    hash: u64,
    first: usize,
    n_globs: usize,
}

impl AnchoredBucket {
    fn key<'a>(&self, arena: &'a str) -> &'a [u8] {
        arena
            .as_bytes()
            .get(self.key_start..self.key_start + self.key_len)
            .unwrap_or(&[])
    }
}

impl AnchoredIndex {
    fn has_len(&self, len: usize) -> bool {
        self.lengths
            .get(len / 64)
            .is_some_and(|word| word & (1 << (len % 64)) != 0)
    }

    /// The first glob filed under `key`, whose rolling hash is `hash`.
    fn find(
        &self,
        arena: &str,
        hasher: &DefaultHashBuilder,
        hash: u64,
        key: &[u8],
    ) -> Option<usize> {
        self.table
            .find(hasher.hash_one(hash), |bucket| bucket.key(arena) == key)
            .map(|bucket| bucket.first)
    }

    /// How many globs are filed under `key`.
    fn crowd(&self, arena: &str, hasher: &DefaultHashBuilder, hash: u64, key: &[u8]) -> usize {
        self.table
            .find(hasher.hash_one(hash), |bucket| bucket.key(arena) == key)
            .map_or(0, |bucket| bucket.n_globs)
    }

    /// Files glob `id` under the key at `key_start..key_start + key_len` of the arena;
    /// returns the glob filed there before it, to link after it.
    fn file(
        &mut self,
        arena: &str,
        hasher: &DefaultHashBuilder,
        key_start: usize,
        key_len: usize,
        hash: u64,
        id: usize,
    ) -> Option<usize> {
        let key = arena.as_bytes().get(key_start..key_start + key_len)?;
        self.n_globs += 1;
        let entry = self.table.entry(
            hasher.hash_one(hash),
            |bucket| bucket.key(arena) == key,
            |bucket| hasher.hash_one(bucket.hash),
        );
        match entry {
            Entry::Occupied(mut occupied) => {
                let bucket = occupied.get_mut();
                bucket.n_globs += 1;
                Some(std::mem::replace(&mut bucket.first, id))
            }
            Entry::Vacant(vacant) => {
                vacant.insert(AnchoredBucket {
                    key_start,
                    key_len,
                    hash,
                    first: id,
                    n_globs: 1,
                });
                if let Some(word) = self.lengths.get_mut(key_len / 64) {
                    *word |= 1 << (key_len % 64);
                }
                self.max_len = self.max_len.max(key_len);
                None
            }
        }
    }
}

// === GramIndex ===

/// Up to 8 bytes of an inner piece, packed into an integer: probing needs no arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Gram {
    bytes: u64,
    width: u8,
}

impl Gram {
    /// `None` for a window wider than 8 bytes.
    fn new(window: &[u8]) -> Option<Gram> {
        let width = u8::try_from(window.len()).ok().filter(|&w| w <= 8)?;
        // Whole-integer loads for the widths lookups use; going through a stack buffer
        // instead costs a stalled load per position.
        let bytes = if let Ok(eight) = <[u8; 8]>::try_from(window) {
            u64::from_le_bytes(eight)
        } else if let Ok(four) = <[u8; 4]>::try_from(window) {
            u64::from(u32::from_le_bytes(four))
        } else {
            window
                .iter()
                .rev()
                .fold(0, |bytes, &byte| bytes << 8 | u64::from(byte))
        };
        Some(Gram { bytes, width })
    }

    /// The bytes alone: hashing one integer is the cheapest probe, and the rare grams that
    /// differ only in width (`a` and `a\0`) still differ in `==`.
    fn hash(self, hasher: &DefaultHashBuilder) -> u64 {
        hasher.hash_one(self.bytes)
    }
}

/// The width of the grams taken from a piece of `len` bytes: at most 8, and a power of two,
/// so that lookups slide over the name at most four times (widths 1, 2, 4 and 8).
fn gram_width(len: usize) -> usize {
    match len {
        8.. => 8,
        4..=7 => 4,
        2..=3 => 2,
        _ => 1,
    }
}

/// Globs that start and end with `*`, by one gram of an inner piece.
#[derive(Default)]
struct GramIndex {
    table: HashTable<GramBucket>,
    /// The gram widths in use, as a bit set of the widths themselves (1 | 2 | 4 | 8).
    widths: u8,
    n_globs: usize,
}

struct GramBucket {
    gram: Gram,
    first: usize,
    n_globs: usize,
}

impl GramIndex {
    fn find(&self, hasher: &DefaultHashBuilder, gram: Gram) -> Option<usize> {
        self.table
            .find(gram.hash(hasher), |bucket| bucket.gram == gram)
            .map(|bucket| bucket.first)
    }

    fn crowd(&self, hasher: &DefaultHashBuilder, gram: Gram) -> usize {
        self.table
            .find(gram.hash(hasher), |bucket| bucket.gram == gram)
            .map_or(0, |bucket| bucket.n_globs)
    }

    /// Files glob `id` under `gram`; returns the glob filed there before it.
    fn file(&mut self, hasher: &DefaultHashBuilder, gram: Gram, id: usize) -> Option<usize> {
        self.n_globs += 1;
        self.widths |= gram.width;
        let entry = self.table.entry(
            gram.hash(hasher),
            |bucket| bucket.gram == gram,
            |bucket| bucket.gram.hash(hasher),
        );
        match entry {
            Entry::Occupied(mut occupied) => {
                let bucket = occupied.get_mut();
                bucket.n_globs += 1;
                Some(std::mem::replace(&mut bucket.first, id))
            }
            Entry::Vacant(vacant) => {
                vacant.insert(GramBucket {
                    gram,
                    first: id,
                    n_globs: 1,
                });
                None
            }
        }
    }

    /// Whether looking up every gram of a name beats trying each glob.
    fn prefer_index(&self) -> bool {
        self.n_globs > SCAN_PER_GRAM_WIDTH * self.widths.count_ones() as usize
    }
}

// === Rolling ===

/// Polynomial hash `sum of (s[i] + 1) * base^(len - 1 - i)`, wrapping, with an odd base.
/// Extending it by a byte at either end costs a multiply, which is what makes probing every
/// prefix and suffix of a name linear in its length. A collision costs only a comparison.
#[derive(Clone, Copy)]
struct Rolling {
    base: u64,
}

impl Rolling {
    fn new(seed: u64) -> Self {
        // Odd, so that no power of the base is zero modulo 2^64.
        Rolling { base: seed | 1 }
    }

    /// The hash of the string `hash` is of, with `byte` appended.
    fn push(self, hash: u64, byte: u8) -> u64 {
        hash.wrapping_mul(self.base).wrapping_add(byte_value(byte))
    }

    fn hash(self, bytes: &[u8]) -> u64 {
        bytes.iter().fold(0, |hash, &byte| self.push(hash, byte))
    }
}

/// Plus one, so that a leading zero byte still changes the hash.
fn byte_value(byte: u8) -> u64 {
    u64::from(byte) + 1
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::domain::glob_match;

    fn set_of(globs: &[&str]) -> GlobSet {
        let mut set = GlobSet::default();
        for glob in globs {
            set.insert(glob);
        }
        set
    }

    /// The naive "try every glob" answer, and both ways of trying inner-piece globs.
    #[track_caller]
    fn check(globs: &[&str], name: &str, expected: bool) {
        let set = set_of(globs);
        let naive = globs
            .iter()
            .any(|glob| glob_match(glob.as_bytes(), name.as_bytes()));
        assert_eq!(naive, expected, "naive: {globs:?} vs {name}");
        assert_eq!(
            set.matches_with(name, true),
            expected,
            "indexed: {globs:?} vs {name}"
        );
        assert_eq!(
            set.matches_with(name, false),
            expected,
            "scanned: {globs:?} vs {name}"
        );
    }

    #[test]
    fn shapes() {
        check(&["proxy-*"], "proxy-eu-1", true);
        check(&["proxy-*"], "proxy", false);
        check(&["*.cdn.example"], "img.cdn.example", true);
        check(&["*.cdn.example"], "cdn.example", false);
        check(&["*.cdn.*"], "a.cdn.b", true);
        check(&["*.cdn.*"], "a.cdn", false);
        check(&["*.tracking-pixel.*"], "a.tracking-pixel.b", true);
        check(&["*.tracking-pixel.*"], "a.tracking-pixe.b", false);
        check(&["a*b"], "ab", true);
        check(&["a*b"], "b", false);
        check(&["ab*ba"], "aba", false);
        check(&["ab*ba"], "abba", true);
        check(&["a*a*a"], "aaa", true);
        check(&["a*a*a"], "aa", false);
        check(&["*a*b*"], "xxaxxbxx", true);
        check(&["*a*b*"], "xxbxxaxx", false);
        check(&["**"], "", true);
        check(&["*"], "anything", true);
        check(&["exact"], "exact", true);
        check(&["exact"], "exact.x", false);
        check(&[], "x", false);
        // Multi-byte characters are compared byte for byte, and never split.
        check(&["*é*", "a*"], "bé", true);
        check(&["a*", "*a"], "é", false);
    }

    #[test]
    fn duplicates_count_once() {
        let set = set_of(&["*.x", "*.x", "a*", "*", "*"]);
        assert_eq!(set.len(), 3);
    }

    #[test]
    fn a_shared_suffix_is_not_where_globs_pile_up() {
        let globs: Vec<String> = (0..100).map(|i| format!("p{i}*.example")).collect();
        let globs: Vec<&str> = globs.iter().map(String::as_str).collect();
        let set = set_of(&globs);
        let largest = set
            .prefixes
            .table
            .iter()
            .map(|bucket| bucket.n_globs)
            .chain(set.suffixes.table.iter().map(|bucket| bucket.n_globs))
            .max();
        assert_eq!(largest, Some(1));
        assert!(set.matches("p42.www.example"));
        assert!(!set.matches("q42.www.example"));
    }

    #[test]
    fn a_shared_inner_piece_is_not_where_globs_pile_up() {
        let globs: Vec<String> = (0..100)
            .map(|i| format!("*.{}{i}.*", "a".repeat(20)))
            .collect();
        let globs: Vec<&str> = globs.iter().map(String::as_str).collect();
        let set = set_of(&globs);
        let largest = set.grams.table.iter().map(|bucket| bucket.n_globs).max();
        assert_eq!(largest, Some(1));
        let hit = format!("x.{}42.y", "a".repeat(20));
        assert!(set.matches_with(&hit, true) && set.matches_with(&hit, false));
    }

    #[test]
    fn grams() {
        assert_eq!(gram_width(1), 1);
        assert_eq!(gram_width(3), 2);
        assert_eq!(gram_width(7), 4);
        assert_eq!(gram_width(200), 8);
        assert_eq!(Gram::new(b"abcdefghi"), None);
        assert_ne!(Gram::new(b"a\0"), Gram::new(b"a"));
        // Every way of packing agrees on the byte order.
        let packed = |window: &[u8]| Gram::new(window).map(|gram| gram.bytes);
        assert_eq!(packed(b"abcd"), packed(b"abcd\0\0\0\0"));
        assert_eq!(packed(b"abc"), packed(b"abc\0"));
    }

    #[test]
    fn rolling_hash_grows_both_ways() {
        let rolling = Rolling::new(12345);
        let text = b"abc.def";
        let (mut hash, mut power) = (0u64, 1u64);
        for start in (0..text.len()).rev() {
            hash = hash.wrapping_add(byte_value(text[start]).wrapping_mul(power));
            power = power.wrapping_mul(rolling.base);
            assert_eq!(hash, rolling.hash(&text[start..]));
        }
    }

    fn arb_glob() -> impl Strategy<Value = String> {
        // A tiny alphabet makes shared keys, repeated pieces and near-misses common.
        prop_oneof!["[ab.*]{1,8}", "\\*[ab.]{1,10}\\*"]
    }

    fn arb_name() -> impl Strategy<Value = String> {
        prop_oneof![9 => "[ab.]{0,16}", 1 => "[abé.*]{0,6}"]
    }

    proptest! {
        #[test]
        fn indexed_agrees_with_trying_every_glob(
            globs in prop::collection::vec(arb_glob(), 0..24),
            names in prop::collection::vec(arb_name(), 1..8),
        ) {
            let mut set = GlobSet::default();
            for glob in &globs {
                set.insert(glob);
            }
            for name in &names {
                let naive = globs.iter().any(|glob| glob_match(glob.as_bytes(), name.as_bytes()));
                prop_assert_eq!(set.matches(name), naive, "{:?} vs {:?}", globs, name);
                prop_assert_eq!(set.matches_with(name, true), naive, "{:?} vs {:?}", globs, name);
                prop_assert_eq!(set.matches_with(name, false), naive, "{:?} vs {:?}", globs, name);
            }
        }
    }
}
