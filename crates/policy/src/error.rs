//! Policy errors: where (`file:line:col`) and what, in words an operator can act on.

use std::path::{Path, PathBuf};

/// One problem found while compiling a policy.
///
/// Displays as `{file}:{line}:{col}: {message}`. `file` is the policy file, or the list file the
/// bad line is in; `line` and `col` count from 1, `col` in characters.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{col}: {kind}", file.display())]
pub struct PolicyError {
    pub file: PathBuf,
    pub line: u32,
    pub col: u32,
    pub kind: PolicyErrorKind,
}

/// What is wrong, without the position.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyErrorKind {
    /// TOML syntax, a value of the wrong type, a missing or unknown key (the TOML reader's
    /// own words).
    #[error("{0}")]
    Toml(String),
    #[error("unknown key `{key}` in {table}, expected one of: {expected}")]
    UnknownKey {
        key: String,
        table: &'static str,
        expected: &'static str,
    },
    #[error("{what} must be {expected}")]
    WrongShape {
        what: String,
        expected: &'static str,
    },
    #[error("invalid action \"{0}\": expected \"allow\" or \"block\"")]
    BadAction(String),
    #[error("invalid CIDR \"{value}\": {reason}")]
    BadCidr { value: String, reason: String },
    #[error("invalid port {value}: {reason}")]
    BadPort { value: String, reason: &'static str },
    #[error("invalid regex \"{pattern}\": {reason}")]
    BadRegex { pattern: String, reason: String },
    #[error("invalid host pattern \"{pattern}\": {reason}")]
    BadHostPattern { pattern: String, reason: String },
    #[error("invalid node_hostname pattern \"{pattern}\": {reason}")]
    BadNodeHostname { pattern: String, reason: String },
    #[error(
        "invalid node_id \"{0}\": expected a node id such as 0b6f7c1e-8d2a-4f0e-9c53-2d1f1a7e4b90 (`palisade status` shows it)"
    )]
    BadNodeId(String),
    #[error("invalid path_prefix \"{0}\": must start with \"/\"")]
    BadPathPrefix(String),
    #[error("path_ignore_case needs path_prefix or path_regex in the same rule")]
    IgnoreCaseWithoutPath,
    #[error("invalid method \"{0}\": must be an HTTP method token such as GET or CONNECT")]
    BadMethod(String),
    #[error("invalid {what} name \"{name}\": {reason}")]
    BadName {
        what: &'static str,
        name: String,
        reason: &'static str,
    },
    #[error("duplicate {what} name \"{name}\" (first defined on line {first_line})")]
    DuplicateName {
        what: &'static str,
        name: String,
        first_line: u32,
    },
    #[error("unknown list \"{name}\" ({known})")]
    UnknownList { name: String, known: String },
    #[error("{key} is empty: list at least one value, or remove the key to match anything")]
    EmptyCriterion { key: &'static str },
    #[error("unknown block page placeholder \"{{{{{name}}}}}\": expected one of {expected}")]
    UnknownPlaceholder {
        name: String,
        expected: &'static str,
    },
    #[error("unterminated block page placeholder: \"{{{{\" without \"}}}}\"")]
    UnterminatedPlaceholder,
    #[error("cannot read list file \"{path}\": {reason}")]
    ListFileUnreadable { path: String, reason: String },
    #[error("{0} more invalid lines in this list file not shown")]
    MoreListErrors(usize),
}

impl PolicyError {
    pub(crate) fn new(file: &Path, (line, col): (u32, u32), kind: PolicyErrorKind) -> Self {
        PolicyError {
            file: file.to_path_buf(),
            line,
            col,
            kind,
        }
    }
}

/// Turns byte offsets of one text into 1-based line and column (column in characters).
pub(crate) struct LineIndex<'a> {
    text: &'a str,
    /// Byte offset at which each line starts; `line_starts[0] == 0`.
    line_starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(at, _)| at + 1));
        LineIndex { text, line_starts }
    }

    pub(crate) fn position(&self, offset: usize) -> (u32, u32) {
        let offset = offset.min(self.text.len());
        let line_idx = match self.line_starts.binary_search(&offset) {
            Ok(idx) => idx,
            Err(next) => next - 1,
        };
        let line_start = self.line_starts[line_idx];
        // A span never starts inside a UTF-8 sequence, but be lenient rather than panic.
        let col = self
            .text
            .get(line_start..offset)
            .map_or(offset - line_start, |prefix| prefix.chars().count());
        (to_u32(line_idx + 1), to_u32(col + 1))
    }
}

pub(crate) fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(text: &str, offset: usize, expected: (u32, u32)) {
        assert_eq!(LineIndex::new(text).position(offset), expected);
    }

    #[test]
    fn positions() {
        check("", 0, (1, 1));
        check("abc", 2, (1, 3));
        check("abc\ndef", 3, (1, 4));
        check("abc\ndef", 4, (2, 1));
        check("abc\ndef", 6, (2, 3));
        check("é = 1\nx", 3, (1, 3));
        check("a\n\n\nb", 4, (4, 1));
        check("abc", 99, (1, 4));
    }
}
