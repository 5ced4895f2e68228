//! The block page template: HTML with `{{placeholder}}`s, parsed once at compile time.
//!
//! Every value is escaped for the context its placeholder names, because the URL is the
//! client's (anyone can make a user's browser request a crafted one):
//! - `{{name}}` and `{{name_attr}}`: HTML text or a quoted attribute value. Besides
//!   `& < > " '`, also `` ` $ { } \ `` become character references, so that even a value
//!   dropped into a `<script>` (where references are not decoded) cannot end a JavaScript
//!   string or template literal or open a `${...}`. Not for event-handler attributes: the
//!   browser decodes references there before it runs the script;
//! - `{{name_js}}`: inside a JavaScript string literal of any quote kind, in a `<script>` or
//!   an event-handler attribute: everything outside a small allowlist becomes `\uXXXX`, so
//!   the value reads back exactly.

use std::fmt::Write as _;
use std::net::IpAddr;

/// What the proxy knows when it refuses a request; every value is escaped when rendered, for
/// the context its placeholder names.
#[derive(Clone, Copy, Debug)]
pub struct BlockPageContext<'a> {
    pub node_hostname: &'a str,
    pub rule: &'a str,
    pub url: &'a str,
    pub client_ip: IpAddr,
    pub request_id: &'a str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placeholder {
    Hostname,
    Rule,
    Url,
    ClientIp,
    RequestId,
}

/// How a value is escaped: the placeholder's suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Context {
    /// No suffix, or `_attr`: HTML text or a quoted attribute value.
    Html,
    /// `_js`: inside a JavaScript string literal.
    Js,
}

pub(crate) const PLACEHOLDERS: &str = "{{hostname}}, {{rule}}, {{url}}, {{client_ip}}, {{request_id}}, each also as {{name_js}} or {{name_attr}}";

impl Placeholder {
    fn from_name(name: &str) -> Option<(Self, Context)> {
        let (base, context) = if let Some(base) = name.strip_suffix("_js") {
            (base, Context::Js)
        } else if let Some(base) = name.strip_suffix("_attr") {
            (base, Context::Html)
        } else {
            (name, Context::Html)
        };
        let placeholder = match base {
            "hostname" => Placeholder::Hostname,
            "rule" => Placeholder::Rule,
            "url" => Placeholder::Url,
            "client_ip" => Placeholder::ClientIp,
            "request_id" => Placeholder::RequestId,
            _ => return None,
        };
        Some((placeholder, context))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    Value(Placeholder, Context),
}

#[derive(Clone, Debug)]
pub(crate) struct Template {
    segments: Vec<Segment>,
    literal_len: usize,
}

/// A template problem at a byte offset into the template text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TemplateError {
    Unknown { offset: usize, name: String },
    Unterminated { offset: usize },
}

impl Template {
    /// Parses `text`, collecting every problem. `{{ name }}` may have spaces inside the braces.
    pub(crate) fn parse(text: &str) -> Result<Template, Vec<TemplateError>> {
        let mut segments = Vec::new();
        let mut errors = Vec::new();
        let mut rest = text;
        let mut consumed = 0;
        while let Some(open) = rest.find("{{") {
            let after_open = &rest[open + 2..];
            let Some(close) = after_open.find("}}") else {
                errors.push(TemplateError::Unterminated {
                    offset: consumed + open,
                });
                break;
            };
            if open > 0 {
                segments.push(Segment::Literal(rest[..open].into()));
            }
            let name = after_open[..close].trim();
            match Placeholder::from_name(name) {
                Some((placeholder, context)) => {
                    segments.push(Segment::Value(placeholder, context));
                }
                None => errors.push(TemplateError::Unknown {
                    offset: consumed + open,
                    name: name.to_string(),
                }),
            }
            let advance = open + 2 + close + 2;
            consumed += advance;
            rest = &rest[advance..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Literal(rest.into()));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let literal_len = segments
            .iter()
            .map(|s| match s {
                Segment::Literal(text) => text.len(),
                Segment::Value(..) => 0,
            })
            .sum();
        Ok(Template {
            segments,
            literal_len,
        })
    }

    pub(crate) fn render(&self, ctx: &BlockPageContext<'_>) -> String {
        let mut out = String::with_capacity(self.literal_len + 256);
        // An address has no characters that need escaping, but the rule is "every
        // substituted value is escaped", and this keeps it true without an audit.
        let mut client_ip = String::with_capacity(45);
        let _ = write!(client_ip, "{}", ctx.client_ip);
        for segment in &self.segments {
            let (value, context) = match segment {
                Segment::Literal(text) => {
                    out.push_str(text);
                    continue;
                }
                Segment::Value(Placeholder::Hostname, context) => (ctx.node_hostname, context),
                Segment::Value(Placeholder::Rule, context) => (ctx.rule, context),
                Segment::Value(Placeholder::Url, context) => (ctx.url, context),
                Segment::Value(Placeholder::RequestId, context) => (ctx.request_id, context),
                Segment::Value(Placeholder::ClientIp, context) => (client_ip.as_str(), context),
            };
            match context {
                Context::Html => escape_html_into(&mut out, value),
                Context::Js => escape_js_into(&mut out, value),
            }
        }
        out
    }
}

/// Escapes what matters in HTML text and quoted attribute values (`& < > " '`), and what
/// would matter if the template put the value in a script anyway: `` ` `` and `\` end or
/// break a string, `$` `{` `}` open a template substitution.
fn escape_html_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '`' => out.push_str("&#96;"),
            '$' => out.push_str("&#36;"),
            '{' => out.push_str("&#123;"),
            '}' => out.push_str("&#125;"),
            '\\' => out.push_str("&#92;"),
            c => out.push(c),
        }
    }
}

/// Characters left as they are inside a JavaScript string: none can end a string of any
/// quote kind, start an escape or a substitution, close the script (`<` is escaped) or
/// form an HTML character reference in an event-handler attribute (`&` is escaped).
fn is_js_safe(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~/:?=%#+,;@!*()".contains(c)
}

/// Writes every other character as `\uXXXX` (UTF-16, so two escapes beyond U+FFFF).
fn escape_js_into(out: &mut String, text: &str) {
    for c in text.chars() {
        if is_js_safe(c) {
            out.push(c);
            continue;
        }
        let mut units = [0u16; 2];
        for unit in c.encode_utf16(&mut units) {
            let _ = write!(out, "\\u{unit:04X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ctx() -> BlockPageContext<'static> {
        BlockPageContext {
            node_hostname: "proxy-1",
            rule: "rs/r",
            url: "http://x.test/?a=<script>&b=\"'",
            client_ip: "10.0.0.9".parse().unwrap(),
            request_id: "req-1",
        }
    }

    #[track_caller]
    fn check(template: &str, expected: Result<&str, Vec<TemplateError>>) {
        let actual = Template::parse(template).map(|t| t.render(&ctx()));
        assert_eq!(actual.as_deref().map_err(Clone::clone), expected);
    }

    #[test]
    fn templates() {
        check("plain", Ok("plain"));
        check("", Ok(""));
        check("{{hostname}}", Ok("proxy-1"));
        check(
            "<p>{{ rule }} for {{client_ip}} ({{request_id}}) on {{hostname}}</p>",
            Ok("<p>rs/r for 10.0.0.9 (req-1) on proxy-1</p>"),
        );
        check(
            "<a href=\"{{url}}\">",
            Ok("<a href=\"http://x.test/?a=&lt;script&gt;&amp;b=&quot;&#39;\">"),
        );
        check(
            "a {{nope}} b {{url}} {{bad}}",
            Err(vec![
                TemplateError::Unknown {
                    offset: 2,
                    name: "nope".into(),
                },
                TemplateError::Unknown {
                    offset: 21,
                    name: "bad".into(),
                },
            ]),
        );
        check(
            "x {{url",
            Err(vec![TemplateError::Unterminated { offset: 2 }]),
        );
        check("}} {", Ok("}} {"));
    }

    /// The URL from finding F10: ends a template literal, opens a substitution, and leaves a
    /// backslash to escape whatever closing quote follows.
    const EXPLOIT: &str = "http://x.blocked.test/${alert(document.domain)}`;//\\";

    #[track_caller]
    fn check_url(template: &str, url: &str, expected: &str) {
        let ctx = BlockPageContext { url, ..ctx() };
        let rendered = Template::parse(template).map(|t| t.render(&ctx));
        assert_eq!(rendered.as_deref(), Ok(expected));
    }

    #[test]
    fn values_cannot_break_out_of_their_context() {
        // The template from the finding: the default form inside a script.
        check_url(
            "<script>var t = `{{url}}`;</script>",
            EXPLOIT,
            "<script>var t = `http://x.blocked.test/&#36;&#123;alert(document.domain)&#125;&#96;;//&#92;`;</script>",
        );
        check_url(
            "<script>var t = `{{url_js}}`;</script>",
            EXPLOIT,
            "<script>var t = `http://x.blocked.test/\\u0024\\u007Balert(document.domain)\\u007D\\u0060;//\\u005C`;</script>",
        );
        check_url(
            "<script>var t = \"{{url_js}}\";</script>",
            EXPLOIT,
            "<script>var t = \"http://x.blocked.test/\\u0024\\u007Balert(document.domain)\\u007D\\u0060;//\\u005C\";</script>",
        );
        check_url(
            "<a href=\"{{url_attr}}\">",
            EXPLOIT,
            "<a href=\"http://x.blocked.test/&#36;&#123;alert(document.domain)&#125;&#96;;//&#92;\">",
        );
        // In an event handler the attribute is decoded first: no `&`, no quote of any kind.
        check_url(
            "<button onclick=\"go('{{url_js}}')\">",
            "x'&#39;\"&quot;",
            "<button onclick=\"go('x\\u0027\\u0026#39;\\u0022\\u0026quot;')\">",
        );
        // Closing the script, other quotes, line breaks and non-ASCII, in a string.
        check_url(
            "'{{url_js}}'",
            "/</script><b>'\"&amp;\n\u{2028}é😀",
            "'/\\u003C/script\\u003E\\u003Cb\\u003E\\u0027\\u0022\\u0026amp;\\u000A\\u2028\\u00E9\\uD83D\\uDE00'",
        );
    }

    #[test]
    fn every_placeholder_has_every_form() {
        check(
            "{{hostname_js}} {{rule_attr}} {{client_ip_js}} {{request_id_attr}} {{url_attr}}",
            Ok("proxy-1 rs/r 10.0.0.9 req-1 http://x.test/?a=&lt;script&gt;&amp;b=&quot;&#39;"),
        );
        check(
            "{{url_css}} {{_js}}",
            Err(vec![
                TemplateError::Unknown {
                    offset: 0,
                    name: "url_css".into(),
                },
                TemplateError::Unknown {
                    offset: 12,
                    name: "_js".into(),
                },
            ]),
        );
    }

    /// Reverses `escape_html_into`; `None` if a character it escapes appears bare.
    fn unescape_html(text: &str) -> Option<String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if "<>\"'`${}\\".contains(c) {
                return None;
            }
            if c == '&' {
                let end = rest.find(';')?;
                out.push(match &rest[..=end] {
                    "&amp;" => '&',
                    "&lt;" => '<',
                    "&gt;" => '>',
                    "&quot;" => '"',
                    "&#39;" => '\'',
                    "&#96;" => '`',
                    "&#36;" => '$',
                    "&#123;" => '{',
                    "&#125;" => '}',
                    "&#92;" => '\\',
                    _ => return None,
                });
                rest = &rest[end + 1..];
            } else {
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        Some(out)
    }

    /// Reverses `escape_js_into`; `None` if anything outside the allowlist appears bare.
    fn unescape_js(text: &str) -> Option<String> {
        let mut units = Vec::new();
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if let Some(after) = rest.strip_prefix("\\u") {
                units.push(u16::from_str_radix(after.get(..4)?, 16).ok()?);
                rest = &after[4..];
            } else if is_js_safe(c) {
                units.push(c as u16);
                rest = &rest[1..];
            } else {
                return None;
            }
        }
        String::from_utf16(&units).ok()
    }

    proptest! {
        #[test]
        fn escapes_leave_nothing_bare_and_lose_nothing(value in any::<String>()) {
            let mut html = String::new();
            escape_html_into(&mut html, &value);
            prop_assert_eq!(unescape_html(&html), Some(value.clone()));
            let mut js = String::new();
            escape_js_into(&mut js, &value);
            prop_assert_eq!(unescape_js(&js), Some(value));
        }
    }
}
