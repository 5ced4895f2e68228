//! The document as written: TOML -> `raw::*` with spans, nothing validated beyond shape.
//!
//! The tree is walked by hand down to each `[access]`, list, `[[ruleset]]` and
//! `[[ruleset.rule]]`, and only those pieces go through serde. serde stops at the first error
//! it meets, so deserializing piecewise is what lets one run report a typo in every rule at once.

use std::ops::Range;

use serde::Deserialize;
use serde::de::IgnoredAny;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::error::PolicyErrorKind;
use crate::net::PortSpec;

pub(crate) type Strings = Spanned<Vec<Spanned<String>>>;
pub(crate) type Ports = Spanned<Vec<Spanned<PortSpec>>>;

/// Problems found, as byte spans into the policy text.
pub(crate) type Errors = Vec<(Range<usize>, PolicyErrorKind)>;

#[derive(Debug, Default)]
pub(crate) struct Document {
    pub(crate) default_action: Option<Spanned<String>>,
    pub(crate) access: Option<Access>,
    pub(crate) lists: Vec<List>,
    pub(crate) rulesets: Vec<Ruleset>,
    pub(crate) block_page: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Access {
    pub(crate) clients: Option<Strings>,
    pub(crate) connect_ports: Option<Ports>,
    pub(crate) allow_destinations: Option<Strings>,
}

#[derive(Debug)]
pub(crate) struct List {
    pub(crate) name: Spanned<String>,
    pub(crate) body: ListBody,
}

#[derive(Debug)]
pub(crate) enum ListBody {
    Inline(Strings),
    File(Spanned<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListFile {
    file: Spanned<String>,
}

#[derive(Debug)]
pub(crate) struct Ruleset {
    /// `None` when the ruleset's own keys did not deserialize (already reported); its rules are
    /// still checked so that one run reports everything.
    pub(crate) header: Option<RulesetHeader>,
    pub(crate) rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RulesetHeader {
    pub(crate) name: Spanned<String>,
    pub(crate) node_hostname: Option<Strings>,
    pub(crate) node_ip: Option<Strings>,
    pub(crate) node_id: Option<Strings>,
    /// Always taken out before deserializing (rules are read one by one); declared so that an
    /// unknown-key message lists `rule` among the keys a ruleset accepts.
    #[serde(default)]
    #[expect(dead_code, reason = "present only for serde's list of expected keys")]
    rule: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Rule {
    pub(crate) name: Spanned<String>,
    pub(crate) action: Spanned<String>,
    pub(crate) host: Option<Strings>,
    pub(crate) host_list: Option<Strings>,
    pub(crate) path_prefix: Option<Strings>,
    pub(crate) path_regex: Option<Strings>,
    pub(crate) path_ignore_case: Option<Spanned<bool>>,
    pub(crate) port: Option<Ports>,
    pub(crate) method: Option<Strings>,
    pub(crate) client: Option<Strings>,
    pub(crate) node_hostname: Option<Strings>,
    pub(crate) node_ip: Option<Strings>,
    pub(crate) node_id: Option<Strings>,
}

const TOP_LEVEL_KEYS: &str = "default_action, access, lists, ruleset, block_page";

pub(crate) fn read(root: DeTable<'_>, errors: &mut Errors) -> Document {
    let mut doc = Document::default();
    for (key, value) in root {
        let key_span = key.span();
        match key.get_ref().as_ref() {
            "default_action" => doc.default_action = de(value, errors),
            "access" => doc.access = de(value, errors),
            "block_page" => doc.block_page = de(value, errors),
            "lists" => read_lists(value, &mut doc.lists, errors),
            "ruleset" => {
                for table in array_of_tables(
                    value,
                    "ruleset",
                    "an array of tables, written [[ruleset]]",
                    errors,
                ) {
                    doc.rulesets.push(read_ruleset(table, errors));
                }
            }
            other => errors.push((
                key_span,
                PolicyErrorKind::UnknownKey {
                    key: other.to_string(),
                    table: "the policy",
                    expected: TOP_LEVEL_KEYS,
                },
            )),
        }
    }
    doc
}

fn read_lists(value: Spanned<DeValue<'_>>, lists: &mut Vec<List>, errors: &mut Errors) {
    let span = value.span();
    let DeValue::Table(table) = value.into_inner() else {
        errors.push((
            span,
            wrong_shape("lists", "a table of named lists ([lists])"),
        ));
        return;
    };
    for (key, value) in table {
        let name = Spanned::new(key.span(), key.get_ref().to_string());
        let body = match value.get_ref() {
            DeValue::Array(_) => de(value, errors).map(ListBody::Inline),
            DeValue::Table(_) => de::<ListFile>(value, errors).map(|f| ListBody::File(f.file)),
            _ => {
                errors.push((
                    value.span(),
                    wrong_shape(
                        format!("list \"{}\"", name.get_ref()),
                        "an array of host patterns or { file = \"path\" }",
                    ),
                ));
                None
            }
        };
        if let Some(body) = body {
            lists.push(List { name, body });
        }
    }
}

fn read_ruleset(table: Spanned<DeTable<'_>>, errors: &mut Errors) -> Ruleset {
    let span = table.span();
    let mut header = DeTable::new();
    let mut rules = Vec::new();
    for (key, value) in table.into_inner() {
        if key.get_ref() == "rule" {
            for rule in array_of_tables(
                value,
                "rule",
                "an array of tables, written [[ruleset.rule]]",
                errors,
            ) {
                let rule_span = rule.span();
                let rule = Spanned::new(rule_span, DeValue::Table(rule.into_inner()));
                rules.extend(de::<Rule>(rule, errors));
            }
        } else {
            header.insert(key, value);
        }
    }
    let header = de(Spanned::new(span, DeValue::Table(header)), errors);
    Ruleset { header, rules }
}

/// The tables of a `[[name]]` array; anything else is reported and skipped.
fn array_of_tables<'i>(
    value: Spanned<DeValue<'i>>,
    name: &str,
    expected: &'static str,
    errors: &mut Errors,
) -> Vec<Spanned<DeTable<'i>>> {
    let span = value.span();
    let shape = || wrong_shape(name, expected);
    let DeValue::Array(items) = value.into_inner() else {
        errors.push((span, shape()));
        return Vec::new();
    };
    let mut tables = Vec::with_capacity(items.len());
    for item in items {
        let item_span = item.span();
        match item.into_inner() {
            DeValue::Table(table) => tables.push(Spanned::new(item_span, table)),
            _ => errors.push((item_span, shape())),
        }
    }
    tables
}

fn wrong_shape(what: impl Into<String>, expected: &'static str) -> PolicyErrorKind {
    PolicyErrorKind::WrongShape {
        what: what.into(),
        expected,
    }
}

/// Deserializes one piece; on failure reports the TOML reader's message at its span.
fn de<'i, T: Deserialize<'i>>(value: Spanned<DeValue<'i>>, errors: &mut Errors) -> Option<T> {
    let span = value.span();
    match T::deserialize(ValueDeserializer::from(value)) {
        Ok(parsed) => Some(parsed),
        Err(err) => {
            let mut message = err.message().trim_end().to_string();
            // TOML puts every key after `[[ruleset.rule]]` into that rule, so a top-level key
            // written at the end of the document lands there; say so, the message alone
            // would only puzzle.
            let misplaced = TOP_LEVEL_KEYS
                .split(", ")
                .find(|key| message.starts_with(&format!("unknown field `{key}`")));
            if let Some(key) = misplaced {
                message.push_str(&format!(
                    " (`{key}` belongs at the top of the document, before the first [table])"
                ));
            }
            errors.push((err.span().unwrap_or(span), PolicyErrorKind::Toml(message)));
            None
        }
    }
}
