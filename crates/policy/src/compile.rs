//! `raw::Document` -> [`CompiledPolicy`], collecting every problem on the way.
//!
//! Each check reports and carries on with what it could salvage, so that one run lists all
//! problems; nothing is handed out unless the error list stays empty.

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml::Spanned;
use toml::de::DeTable;

use crate::block_page::{PLACEHOLDERS, Template, TemplateError};
use crate::domain::{self, DomainSet, parse_host_pattern};
use crate::error::{LineIndex, PolicyError, PolicyErrorKind, to_u32};
use crate::net::{self, CidrSet, PortSet, parse_cidr, parse_port_spec};
use crate::raw::{self, Ports, Strings};
use crate::{Action, CompiledPolicy, HostCriterion, NodeIdentity, PolicySummary, Rule, Verdict};

/// The rule name a verdict carries when no rule matched.
const DEFAULT_RULE: &str = "default";
/// Bad lines reported per list file; a wrong file can have a million, and the first few say
/// what is wrong.
const MAX_LIST_FILE_ERRORS: usize = 20;

pub(crate) struct Compiler<'a> {
    source: &'a str,
    origin: &'a Path,
    node: &'a NodeIdentity,
    read: &'a dyn Fn(&Path, &str) -> io::Result<String>,
    index: LineIndex<'a>,
    errors: Vec<PolicyError>,
    /// Every list file read, so the binary can watch them like the policy file.
    source_files: Vec<PathBuf>,
}

impl<'a> Compiler<'a> {
    pub(crate) fn new(
        source: &'a str,
        origin: &'a Path,
        node: &'a NodeIdentity,
        read: &'a dyn Fn(&Path, &str) -> io::Result<String>,
    ) -> Self {
        Compiler {
            source,
            origin,
            node,
            read,
            index: LineIndex::new(source),
            errors: Vec::new(),
            source_files: Vec::new(),
        }
    }

    pub(crate) fn compile(mut self) -> Result<CompiledPolicy, Vec<PolicyError>> {
        let (root, syntax_errors) = DeTable::parse_recoverable(self.source);
        if !syntax_errors.is_empty() {
            // The recovered tree would only add confusing follow-up errors.
            for err in syntax_errors {
                let span = err.span().unwrap_or(0..0);
                let mut message = err.message().trim_end().to_string();
                // The TOML reader does not say which key; with two lists or tables of the same
                // name, which one is the question.
                if message == "duplicate key"
                    && let Some(key) = self.source.get(span.clone())
                {
                    message = format!("duplicate key `{}`", key.trim());
                }
                self.error(span, PolicyErrorKind::Toml(message));
            }
            return Err(self.finish_errors());
        }
        let mut raw_errors = Vec::new();
        let doc = raw::read(root.into_inner(), &mut raw_errors);
        for (span, kind) in raw_errors {
            self.error(span, kind);
        }

        let default_action = match &doc.default_action {
            Some(action) => self.action(action).unwrap_or(Action::Allow),
            None => Action::Allow,
        };
        let (clients, connect_ports, allow_destinations) = self.access(doc.access);
        let mut summary = PolicySummary::default();
        let lists = self.lists(doc.lists, &mut summary);
        let rules = self.rulesets(doc.rulesets, &lists, &mut summary);
        let block_page = self.block_page(doc.block_page.as_ref());

        if !self.errors.is_empty() {
            return Err(self.finish_errors());
        }
        Ok(CompiledPolicy {
            default_verdict: Verdict {
                action: default_action,
                rule: Arc::from(DEFAULT_RULE),
            },
            rules,
            clients,
            connect_ports,
            allow_destinations,
            block_page: block_page.unwrap_or_else(default_block_page),
            summary,
            source_files: self.source_files,
        })
    }

    fn finish_errors(mut self) -> Vec<PolicyError> {
        // Policy-file problems first, in document order, then each list file's.
        let origin = self.origin.to_path_buf();
        self.errors.sort_by(|a, b| {
            (a.file != origin, &a.file, a.line, a.col).cmp(&(
                b.file != origin,
                &b.file,
                b.line,
                b.col,
            ))
        });
        self.errors
    }

    // === reporting ===

    fn error(&mut self, span: Range<usize>, kind: PolicyErrorKind) {
        self.error_at(span.start, kind);
    }

    fn error_at(&mut self, offset: usize, kind: PolicyErrorKind) {
        let position = self.index.position(offset);
        self.errors
            .push(PolicyError::new(self.origin, position, kind));
    }

    /// Source offset of byte `inner` of a string value, so that an error can point inside the
    /// string (a regex, a template). Exact when the string is written without escapes, as
    /// such values nearly always are; otherwise the string's start.
    fn offset_in_string(&self, value: &Spanned<String>, inner: usize) -> usize {
        let span = value.span();
        let Some(raw) = self.source.get(span.clone()) else {
            return span.start;
        };
        let (delim, literal) = if raw.starts_with("\"\"\"") {
            ("\"\"\"", false)
        } else if raw.starts_with("'''") {
            ("'''", true)
        } else if raw.starts_with('\'') {
            ("'", true)
        } else {
            ("\"", false)
        };
        let Some(mut body) = raw.strip_prefix(delim).and_then(|r| r.strip_suffix(delim)) else {
            return span.start;
        };
        let mut start = span.start + delim.len();
        // TOML trims one newline right after the opening delimiter of a multi-line string.
        if delim.len() == 3 {
            for newline in ["\r\n", "\n"] {
                if let Some(rest) = body.strip_prefix(newline) {
                    body = rest;
                    start += newline.len();
                    break;
                }
            }
        }
        let maps_one_to_one = body == value.get_ref().as_str() && (literal || !body.contains('\\'));
        if maps_one_to_one {
            start + inner
        } else {
            span.start
        }
    }

    // === top level ===

    fn action(&mut self, value: &Spanned<String>) -> Option<Action> {
        match value.get_ref().as_str() {
            "allow" => Some(Action::Allow),
            "block" => Some(Action::Block),
            other => {
                self.error(value.span(), PolicyErrorKind::BadAction(other.to_string()));
                None
            }
        }
    }

    fn access(&mut self, access: Option<raw::Access>) -> (CidrSet, PortSet, CidrSet) {
        let access = access.unwrap_or(raw::Access {
            clients: None,
            connect_ports: None,
            allow_destinations: None,
        });
        // Empty arrays are meaningful here (no clients, no CONNECT, no exemptions), unlike in
        // rule criteria, so they are not refused.
        let clients = match access.clients {
            Some(values) => self.cidrs(values.into_inner()),
            None => net::default_clients(),
        };
        let connect_ports = match access.connect_ports {
            Some(values) => self.ports(values.into_inner()),
            None => PortSet::from_ranges(vec![(443, 443)]),
        };
        let allow_destinations = match access.allow_destinations {
            Some(values) => self.cidrs(values.into_inner()),
            None => CidrSet::default(),
        };
        (clients, connect_ports, allow_destinations)
    }

    fn cidrs(&mut self, values: Vec<Spanned<String>>) -> CidrSet {
        let mut set = CidrSet::default();
        for value in values {
            match parse_cidr(value.get_ref()) {
                Ok(net) => set.insert(net),
                Err(reason) => self.error(
                    value.span(),
                    PolicyErrorKind::BadCidr {
                        value: value.into_inner(),
                        reason,
                    },
                ),
            }
        }
        set
    }

    fn ports(&mut self, values: Vec<Spanned<net::PortSpec>>) -> PortSet {
        let mut ranges = Vec::with_capacity(values.len());
        for value in values {
            match parse_port_spec(value.get_ref()) {
                Ok(range) => ranges.push(range),
                Err((shown, reason)) => self.error(
                    value.span(),
                    PolicyErrorKind::BadPort {
                        value: shown,
                        reason,
                    },
                ),
            }
        }
        PortSet::from_ranges(ranges)
    }

    // === lists ===

    fn lists(
        &mut self,
        lists: Vec<raw::List>,
        summary: &mut PolicySummary,
    ) -> HashMap<String, Arc<DomainSet>> {
        let mut named = HashMap::with_capacity(lists.len());
        for list in lists {
            self.name(&list.name, "list");
            let set = match list.body {
                raw::ListBody::Inline(values) => self.inline_patterns(values.into_inner()),
                raw::ListBody::File(file) => self.list_file(&file),
            };
            summary.lists += 1;
            summary.list_entries += set.len();
            named.insert(list.name.into_inner(), Arc::new(set));
        }
        named
    }

    fn inline_patterns(&mut self, values: Vec<Spanned<String>>) -> DomainSet {
        let mut set = DomainSet::with_capacity(values.len(), 0);
        let mut buf = String::new();
        for value in values {
            match parse_host_pattern(value.get_ref(), &mut buf) {
                Ok(pattern) => set.insert(pattern),
                Err(reason) => self.error(
                    value.span(),
                    PolicyErrorKind::BadHostPattern {
                        pattern: value.into_inner(),
                        reason,
                    },
                ),
            }
        }
        set
    }

    fn list_file(&mut self, file: &Spanned<String>) -> DomainSet {
        let path: PathBuf = self
            .origin
            .parent()
            .unwrap_or(Path::new(""))
            .join(file.get_ref());
        if !self.source_files.contains(&path) {
            self.source_files.push(path.clone());
        }
        let text = match (self.read)(&path, file.get_ref()) {
            Ok(text) => text,
            Err(err) => {
                self.error(
                    file.span(),
                    PolicyErrorKind::ListFileUnreadable {
                        path: path.display().to_string(),
                        reason: err.to_string(),
                    },
                );
                return DomainSet::default();
            }
        };
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        // One entry per line, so the line count and file size are tight capacities, and save
        // growing a million-entry table several times over.
        let n_lines = text.bytes().filter(|&b| b == b'\n').count() + 1;
        let mut set = DomainSet::with_capacity(n_lines, text.len());
        let mut buf = String::new();
        let mut n_bad = 0;
        for (line_idx, line) in text.lines().enumerate() {
            let content = line.find('#').map_or(line, |hash| &line[..hash]);
            let entry = content.trim();
            if entry.is_empty() {
                continue;
            }
            match parse_host_pattern(entry, &mut buf) {
                Ok(pattern) => set.insert(pattern),
                Err(reason) => {
                    n_bad += 1;
                    if n_bad > MAX_LIST_FILE_ERRORS {
                        continue;
                    }
                    let leading = content.len() - content.trim_start().len();
                    let col = content[..leading].chars().count() + 1;
                    self.errors.push(PolicyError::new(
                        &path,
                        (to_u32(line_idx + 1), to_u32(col)),
                        PolicyErrorKind::BadHostPattern {
                            pattern: entry.to_string(),
                            reason,
                        },
                    ));
                }
            }
        }
        if n_bad > MAX_LIST_FILE_ERRORS {
            self.error(
                file.span(),
                PolicyErrorKind::MoreListErrors(n_bad - MAX_LIST_FILE_ERRORS),
            );
        }
        set
    }

    // === rulesets and rules ===

    fn rulesets(
        &mut self,
        rulesets: Vec<raw::Ruleset>,
        lists: &HashMap<String, Arc<DomainSet>>,
        summary: &mut PolicySummary,
    ) -> Vec<Rule> {
        let mut compiled = Vec::new();
        // Names are cluster-wide, so duplicates are refused even among rulesets for other nodes.
        let mut ruleset_lines: HashMap<String, u32> = HashMap::new();
        for ruleset in rulesets {
            let (ruleset_name, ruleset_applies) = match ruleset.header {
                Some(header) => {
                    self.name(&header.name, "ruleset");
                    self.unique(&header.name, "ruleset", &mut ruleset_lines);
                    let applies =
                        self.applies(header.node_hostname, header.node_ip, header.node_id);
                    (header.name.into_inner(), applies)
                }
                None => (String::new(), false),
            };
            let mut rule_lines: HashMap<String, u32> = HashMap::new();
            let (mut n_rules, mut n_rules_skipped) = (0, 0);
            for raw_rule in ruleset.rules {
                self.unique(&raw_rule.name, "rule", &mut rule_lines);
                let Some((rule, rule_applies)) = self.rule(raw_rule, &ruleset_name, lists) else {
                    continue;
                };
                if ruleset_applies && rule_applies {
                    n_rules += 1;
                    compiled.push(rule);
                } else {
                    n_rules_skipped += 1;
                }
            }
            if ruleset_applies {
                summary.rulesets += 1;
            } else {
                summary.rulesets_skipped += 1;
            }
            summary.rules += n_rules;
            summary.rules_skipped += n_rules_skipped;
        }
        compiled
    }

    /// One rule, or `None` when anything in it is wrong (reported).
    fn rule(
        &mut self,
        raw: raw::Rule,
        ruleset_name: &str,
        lists: &HashMap<String, Arc<DomainSet>>,
    ) -> Option<(Rule, bool)> {
        let n_errors = self.errors.len();
        self.name(&raw.name, "rule");
        let action = self.action(&raw.action);
        let applies = self.applies(raw.node_hostname, raw.node_ip, raw.node_id);

        let host_inline = self
            .non_empty("host", raw.host)
            .map(|values| self.inline_patterns(values));
        let host_lists = self.non_empty("host_list", raw.host_list).map(|names| {
            names
                .into_iter()
                .filter_map(|name| self.list_ref(&name, lists))
                .collect::<Vec<_>>()
        });
        let host = (host_inline.is_some() || host_lists.is_some()).then(|| HostCriterion {
            inline: host_inline.unwrap_or_default(),
            lists: host_lists.unwrap_or_default(),
        });

        let path_ignore_case = match raw.path_ignore_case {
            Some(flag) if raw.path_prefix.is_none() && raw.path_regex.is_none() => {
                // It would change nothing, which is likely not what its author meant.
                self.error(flag.span(), PolicyErrorKind::IgnoreCaseWithoutPath);
                false
            }
            Some(flag) => flag.into_inner(),
            None => false,
        };
        let path_prefix = self
            .non_empty("path_prefix", raw.path_prefix)
            .map(|values| {
                let mut prefixes = Vec::with_capacity(values.len());
                for value in values {
                    if value.get_ref().starts_with('/') {
                        prefixes.push(value.into_inner().into_boxed_str());
                    } else {
                        self.error(
                            value.span(),
                            PolicyErrorKind::BadPathPrefix(value.into_inner()),
                        );
                    }
                }
                prefixes
            });
        let path_regex = self.path_regexes(raw.path_regex, path_ignore_case);
        let port = self
            .non_empty_ports(raw.port)
            .map(|values| self.ports(values));
        let method = self.non_empty("method", raw.method).map(|values| {
            let mut methods = Vec::with_capacity(values.len());
            for value in values {
                if is_token(value.get_ref()) {
                    methods.push(value.get_ref().to_ascii_uppercase().into_boxed_str());
                } else {
                    self.error(value.span(), PolicyErrorKind::BadMethod(value.into_inner()));
                }
            }
            methods
        });
        let client = self
            .non_empty("client", raw.client)
            .map(|values| self.cidrs(values));

        if self.errors.len() > n_errors {
            return None;
        }
        let rule = Rule {
            name: Arc::from(format!("{ruleset_name}/{}", raw.name.get_ref())),
            action: action?,
            method,
            port,
            client,
            host,
            path_prefix,
            path_regex: path_regex.flatten(),
            path_ignore_case,
        };
        Some((rule, applies))
    }

    fn list_ref(
        &mut self,
        name: &Spanned<String>,
        lists: &HashMap<String, Arc<DomainSet>>,
    ) -> Option<Arc<DomainSet>> {
        if let Some(list) = lists.get(name.get_ref()) {
            return Some(Arc::clone(list));
        }
        let mut known: Vec<&str> = lists.keys().map(String::as_str).collect();
        known.sort_unstable();
        let known = if known.is_empty() {
            "no lists are defined under [lists]".to_string()
        } else {
            format!("defined lists: {}", known.join(", "))
        };
        self.error(
            name.span(),
            PolicyErrorKind::UnknownList {
                name: name.get_ref().clone(),
                known,
            },
        );
        None
    }

    /// `Some(None)` when present but broken (reported), so the caller can tell it from absent.
    fn path_regexes(
        &mut self,
        values: Option<Strings>,
        ignore_case: bool,
    ) -> Option<Option<regex::RegexSet>> {
        let values = self.non_empty("path_regex", values)?;
        let n_errors = self.errors.len();
        for value in &values {
            let built = regex::RegexBuilder::new(value.get_ref())
                .case_insensitive(ignore_case)
                .build();
            if let Err(err) = built {
                let (inner, reason) = regex_error(value.get_ref(), &err);
                let offset = self.offset_in_string(value, inner);
                self.error_at(
                    offset,
                    PolicyErrorKind::BadRegex {
                        pattern: value.get_ref().clone(),
                        reason,
                    },
                );
            }
        }
        if self.errors.len() > n_errors {
            return Some(None);
        }
        let first_span = values.first().map_or(0..0, Spanned::span);
        // The `(?i)` flag folds Unicode case: on ASCII, what request paths are made of, that
        // is the comparison `path_prefix` makes; beyond it, it only matches more.
        let set = regex::RegexSetBuilder::new(values.iter().map(|v| v.get_ref().as_str()))
            .case_insensitive(ignore_case)
            .build();
        match set {
            Ok(set) => Some(Some(set)),
            Err(err) => {
                // Each compiled alone, so this is the combined size limit.
                self.error(
                    first_span,
                    PolicyErrorKind::BadRegex {
                        pattern: values
                            .iter()
                            .map(|v| v.get_ref().as_str())
                            .collect::<Vec<_>>()
                            .join(" | "),
                        reason: flatten_regex_message(&err.to_string()),
                    },
                );
                Some(None)
            }
        }
    }

    fn non_empty(
        &mut self,
        key: &'static str,
        values: Option<Strings>,
    ) -> Option<Vec<Spanned<String>>> {
        let values = values?;
        if values.get_ref().is_empty() {
            self.error(values.span(), PolicyErrorKind::EmptyCriterion { key });
        }
        Some(values.into_inner())
    }

    fn non_empty_ports(&mut self, values: Option<Ports>) -> Option<Vec<Spanned<net::PortSpec>>> {
        let values = values?;
        if values.get_ref().is_empty() {
            self.error(
                values.span(),
                PolicyErrorKind::EmptyCriterion { key: "port" },
            );
        }
        Some(values.into_inner())
    }

    /// Whether a ruleset or rule with these `node_*` criteria is for this node; both present
    /// means both must hold.
    fn applies(
        &mut self,
        hostnames: Option<Strings>,
        ips: Option<Strings>,
        ids: Option<Strings>,
    ) -> bool {
        let mut applies = true;
        if let Some(patterns) = self.non_empty("node_hostname", hostnames) {
            let hostname = self
                .node
                .name
                .as_str()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            let mut any = false;
            for pattern in patterns {
                let lower = pattern.get_ref().to_ascii_lowercase();
                if let Err(reason) = domain::check_name(&lower, true) {
                    self.error(
                        pattern.span(),
                        PolicyErrorKind::BadNodeHostname {
                            pattern: pattern.into_inner(),
                            reason,
                        },
                    );
                    continue;
                }
                any |= domain::glob_match(lower.as_bytes(), hostname.as_bytes());
            }
            applies &= any;
        }
        if let Some(cidrs) = self.non_empty("node_ip", ips) {
            let set = self.cidrs(cidrs);
            applies &= self.node.proxy_ips.iter().any(|&ip| set.contains(ip));
        }
        // The seeds' System.UUID: survives renames and address changes.
        if let Some(values) = self.non_empty("node_id", ids) {
            let mut any = false;
            for value in values {
                match value.get_ref().parse::<palisade_identity::NodeId>() {
                    Ok(id) => any |= self.node.id == Some(id),
                    Err(_) => {
                        self.error(value.span(), PolicyErrorKind::BadNodeId(value.into_inner()))
                    }
                }
            }
            applies &= any;
        }
        applies
    }

    fn name(&mut self, name: &Spanned<String>, what: &'static str) {
        let text = name.get_ref();
        let reason = if text.is_empty() {
            Some("must not be empty")
        } else if !text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            // Verdicts name rules "ruleset/rule" in logs and metrics labels.
            Some("use only letters, digits, '-', '_' and '.'")
        } else {
            None
        };
        if let Some(reason) = reason {
            self.error(
                name.span(),
                PolicyErrorKind::BadName {
                    what,
                    name: text.clone(),
                    reason,
                },
            );
        }
    }

    fn unique(
        &mut self,
        name: &Spanned<String>,
        what: &'static str,
        seen: &mut HashMap<String, u32>,
    ) {
        let line = self.index.position(name.span().start).0;
        match seen.get(name.get_ref()) {
            Some(&first_line) => self.error(
                name.span(),
                PolicyErrorKind::DuplicateName {
                    what,
                    name: name.get_ref().clone(),
                    first_line,
                },
            ),
            None => {
                seen.insert(name.get_ref().clone(), line);
            }
        }
    }

    // === block page ===

    fn block_page(&mut self, text: Option<&Spanned<String>>) -> Option<Template> {
        let text = text?;
        match Template::parse(text.get_ref()) {
            Ok(template) => Some(template),
            Err(errors) => {
                for err in errors {
                    let (inner, kind) = match err {
                        TemplateError::Unknown { offset, name } => (
                            offset,
                            PolicyErrorKind::UnknownPlaceholder {
                                name,
                                expected: PLACEHOLDERS,
                            },
                        ),
                        TemplateError::Unterminated { offset } => {
                            (offset, PolicyErrorKind::UnterminatedPlaceholder)
                        }
                    };
                    let offset = self.offset_in_string(text, inner);
                    self.error_at(offset, kind);
                }
                None
            }
        }
    }
}

fn default_block_page() -> Template {
    match Template::parse(include_str!("default_block_page.html")) {
        Ok(template) => template,
        // The embedded page is fixed at build time and parsed by a unit test.
        Err(errors) => panic!("embedded block page is invalid: {errors:?}"),
    }
}

/// RFC 9110 5.6.2 token: what a method may be made of.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Byte offset into the pattern where it goes wrong, and the reason in one line.
fn regex_error(pattern: &str, err: &regex::Error) -> (usize, String) {
    // regex reports a multi-line message with a caret; regex-syntax gives the same error as a
    // span and a one-line kind, which fits `file:line:col: message`.
    match regex_syntax::Parser::new().parse(pattern) {
        Err(regex_syntax::Error::Parse(e)) => (e.span().start.offset, e.kind().to_string()),
        Err(regex_syntax::Error::Translate(e)) => (e.span().start.offset, e.kind().to_string()),
        _ => (0, flatten_regex_message(&err.to_string())),
    }
}

fn flatten_regex_message(message: &str) -> String {
    let last = message
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(message);
    let last = last
        .trim()
        .trim_start_matches("error: ")
        .trim_end_matches('.');
    let mut chars = last.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}
