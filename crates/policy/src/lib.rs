//! palisade's policy: the cluster-wide policy document (TOML) -> [`CompiledPolicy`] -> a
//! [`Verdict`] per request.
//!
//! **Architecture Invariant:** evaluation is pure. [`CompiledPolicy::evaluate`] and the other
//! per-request queries do no I/O, read no clock and allocate nothing (a `path_regex` only
//! borrows scratch space from the `regex` crate's pool); all parsing, validation and file
//! reading happens once, in [`compile`]. The proxy holds the
//! compiled policy in an `Arc` behind an atomic swap, so a new policy is either fully valid
//! and live at once or refused with every problem listed, and the last good one keeps serving.
//!
//! Semantics, in one place: rulesets are tried in document order, their rules in order, and the
//! first rule whose every present criterion matches decides (values inside one criterion are
//! alternatives). No match applies `default_action`, reported as rule `"default"`. Rulesets and
//! rules may be limited to some nodes (`node_hostname`, `node_ip`); that is settled at compile
//! time against the [`NodeIdentity`], but every part of the document is validated on every
//! node, because the document is the same cluster-wide.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

mod block_page;
pub mod bundle;
mod compile;
mod domain;
mod error;
mod glob;
mod net;
mod raw;

pub use block_page::BlockPageContext;
pub use bundle::{BundleError, Manifest, PolicyBundle};
pub use error::{PolicyError, PolicyErrorKind};

use block_page::Template;
use domain::{DomainSet, Host};
use net::{CidrSet, PortSet};

/// Who this node is, for the rulesets and rules limited to some nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeIdentity {
    pub name: palisade_identity::NodeName,
    pub proxy_ips: Vec<IpAddr>,
    /// `None` before the node has one (a policy checked offline): `node_id` criteria then
    /// match nothing.
    pub id: Option<palisade_identity::NodeId>,
}

/// The policy a node runs with before any policy has been set: loopback clients only, CONNECT
/// to port 443 only, everything else allowed.
pub fn default_source() -> &'static str {
    include_str!("default_policy.toml")
}

/// Compiles a policy document. List files named in it are read relative to the directory of
/// `origin`, which is also the file name errors carry.
pub fn compile(
    source: &str,
    origin: &Path,
    node: &NodeIdentity,
) -> Result<CompiledPolicy, Vec<PolicyError>> {
    compile_with_reader(source, origin, node, &|path, _| {
        std::fs::read_to_string(path)
    })
}

/// [`compile`] with list files read through `read` (given the path already joined to the
/// directory of `origin`, and the name as the document declares it), so that tests and the
/// replication layer need no file system.
pub fn compile_with_reader(
    source: &str,
    origin: &Path,
    node: &NodeIdentity,
    read: &dyn Fn(&Path, &str) -> std::io::Result<String>,
) -> Result<CompiledPolicy, Vec<PolicyError>> {
    compile::Compiler::new(source, origin, node, read).compile()
}

/// What the policy says about a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Allow,
    Block,
}

/// The decision and the rule that made it: `"ruleset/rule"`, or `"default"` when no rule
/// matched and `default_action` applied.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub action: Action,
    pub rule: Arc<str>,
}

/// What the proxy knows about a request when it asks for a verdict.
#[derive(Clone, Copy, Debug)]
pub struct RequestFacts<'a> {
    pub client: IpAddr,
    /// As sent, e.g. `"GET"`, `"CONNECT"`; compared without regard to case.
    pub method: &'a str,
    /// Lowercase, no trailing dot; an IPv6 literal without brackets.
    pub host: &'a str,
    pub port: u16,
    /// The path in canonical form, then the query as sent (`"/a/b?x=1"`); `""` for CONNECT.
    /// Canonical: dot segments removed, repeated slashes merged, `%2F`, `%5C` and `\` read as
    /// `/`, `;parameters` removed from each segment, unreserved percent-escapes decoded, so
    /// that no spelling of a path slips past a rule. Rules compare against it as given.
    pub path: &'a str,
}

/// Counts for the log line that announces a new policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicySummary {
    /// Rulesets in force on this node.
    pub rulesets: usize,
    /// Rules in force on this node.
    pub rules: usize,
    /// Rulesets and rules in the document but limited to other nodes.
    pub rulesets_skipped: usize,
    pub rules_skipped: usize,
    /// Named lists, and the distinct entries they hold together.
    pub lists: usize,
    pub list_entries: usize,
}

impl std::fmt::Display for PolicySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} rulesets, {} rules ({} rulesets and {} rules for other nodes), {} lists with {} entries",
            self.rulesets,
            self.rules,
            self.rulesets_skipped,
            self.rules_skipped,
            self.lists,
            self.list_entries
        )
    }
}

/// A validated policy, ready to judge requests. Immutable; share it in an `Arc`.
pub struct CompiledPolicy {
    default_verdict: Verdict,
    rules: Vec<Rule>,
    clients: CidrSet,
    connect_ports: PortSet,
    allow_destinations: CidrSet,
    block_page: Template,
    summary: PolicySummary,
    source_files: Vec<std::path::PathBuf>,
}

impl std::fmt::Debug for CompiledPolicy {
    // Lists can hold millions of entries: show the counts, never the contents.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPolicy")
            .field("default_action", &self.default_verdict.action)
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

impl CompiledPolicy {
    /// The list files this policy was compiled from (as resolved against the policy file's
    /// directory), besides the policy file itself: a change to any of them needs a reload.
    pub fn source_files(&self) -> &[std::path::PathBuf] {
        &self.source_files
    }

    /// The verdict for one request: the first matching rule's action, else the default.
    pub fn evaluate(&self, req: &RequestFacts<'_>) -> Verdict {
        let facts = Facts {
            client: req.client.to_canonical(),
            method: req.method,
            host: Host::classify(req.host),
            port: req.port,
            path: req.path,
        };
        match self.rules.iter().find(|rule| rule.matches(&facts)) {
            Some(rule) => Verdict {
                action: rule.action,
                rule: Arc::clone(&rule.name),
            },
            None => self.default_verdict.clone(),
        }
    }

    /// Whether `client` may use the proxy at all (`[access].clients`).
    pub fn client_allowed(&self, client: IpAddr) -> bool {
        self.clients.contains(client)
    }

    /// Whether CONNECT to `port` is allowed (`[access].connect_ports`).
    pub fn connect_port_allowed(&self, port: u16) -> bool {
        self.connect_ports.contains(port)
    }

    /// Whether the operator exempted `ip` from the proxy's SSRF protection
    /// (`[access].allow_destinations`).
    pub fn destination_exempt(&self, ip: IpAddr) -> bool {
        self.allow_destinations.contains(ip)
    }

    /// The block page for a refused request, every substituted value escaped for the context
    /// its placeholder names (`{{url}}` / `{{url_attr}}` HTML, `{{url_js}}` a JavaScript string).
    pub fn render_block_page(&self, ctx: &BlockPageContext<'_>) -> String {
        self.block_page.render(ctx)
    }

    pub fn summary(&self) -> PolicySummary {
        self.summary
    }
}

// === impl Rule ===

/// The request, normalised once so that rules compare without re-parsing.
struct Facts<'a> {
    client: IpAddr,
    method: &'a str,
    host: Host<'a>,
    port: u16,
    path: &'a str,
}

/// One compiled rule; `None` criteria are absent and match anything.
#[derive(Debug)]
struct Rule {
    /// `"ruleset/rule"`, shared by every verdict this rule gives.
    name: Arc<str>,
    action: Action,
    method: Option<Vec<Box<str>>>,
    port: Option<PortSet>,
    client: Option<CidrSet>,
    host: Option<HostCriterion>,
    path_prefix: Option<Vec<Box<str>>>,
    path_regex: Option<regex::RegexSet>,
    /// `path_prefix` compares ignoring ASCII case (`path_regex` was built that way).
    path_ignore_case: bool,
}

/// `host` and `host_list` together are one criterion: the host is in any of them.
#[derive(Debug)]
struct HostCriterion {
    inline: DomainSet,
    lists: Vec<Arc<DomainSet>>,
}

impl Rule {
    // Cheapest comparisons first; the order does not change the result (all must match).
    fn matches(&self, facts: &Facts<'_>) -> bool {
        if let Some(methods) = &self.method
            && !methods.iter().any(|m| m.eq_ignore_ascii_case(facts.method))
        {
            return false;
        }
        if let Some(ports) = &self.port
            && !ports.contains(facts.port)
        {
            return false;
        }
        if let Some(clients) = &self.client
            && !clients.contains(facts.client)
        {
            return false;
        }
        if let Some(host) = &self.host
            && !(host.inline.matches(facts.host)
                || host.lists.iter().any(|list| list.matches(facts.host)))
        {
            return false;
        }
        if let Some(prefixes) = &self.path_prefix
            && !prefixes
                .iter()
                .any(|p| has_prefix(facts.path, p, self.path_ignore_case))
        {
            return false;
        }
        if let Some(regexes) = &self.path_regex
            && !regexes.is_match(facts.path)
        {
            return false;
        }
        true
    }
}

/// Whether `path` starts with `prefix`, optionally ignoring ASCII case, without allocating.
fn has_prefix(path: &str, prefix: &str, ignore_ascii_case: bool) -> bool {
    // Bytes, not `str` slicing: the cut may fall inside a multi-byte character.
    match path.as_bytes().get(..prefix.len()) {
        Some(head) if ignore_ascii_case => head.eq_ignore_ascii_case(prefix.as_bytes()),
        Some(head) => head == prefix.as_bytes(),
        None => false,
    }
}

#[cfg(test)]
mod tests;
