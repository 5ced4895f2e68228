//! The block page template: HTML with `{{placeholder}}`s, parsed once at compile time.

use std::fmt::Write as _;
use std::net::IpAddr;

/// What the proxy knows when it refuses a request; every value is HTML-escaped when rendered.
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

pub(crate) const PLACEHOLDERS: &str =
    "{{hostname}}, {{rule}}, {{url}}, {{client_ip}}, {{request_id}}";

impl Placeholder {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "hostname" => Placeholder::Hostname,
            "rule" => Placeholder::Rule,
            "url" => Placeholder::Url,
            "client_ip" => Placeholder::ClientIp,
            "request_id" => Placeholder::RequestId,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    Value(Placeholder),
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
                Some(placeholder) => segments.push(Segment::Value(placeholder)),
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
                Segment::Value(_) => 0,
            })
            .sum();
        Ok(Template {
            segments,
            literal_len,
        })
    }

    pub(crate) fn render(&self, ctx: &BlockPageContext<'_>) -> String {
        let mut out = String::with_capacity(self.literal_len + 256);
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => out.push_str(text),
                Segment::Value(Placeholder::Hostname) => escape_into(&mut out, ctx.node_hostname),
                Segment::Value(Placeholder::Rule) => escape_into(&mut out, ctx.rule),
                Segment::Value(Placeholder::Url) => escape_into(&mut out, ctx.url),
                Segment::Value(Placeholder::RequestId) => escape_into(&mut out, ctx.request_id),
                Segment::Value(Placeholder::ClientIp) => {
                    // An address has no characters that need escaping, but the rule is "every
                    // substituted value is escaped", and this keeps it true without an audit.
                    let mut ip = String::with_capacity(45);
                    let _ = write!(ip, "{}", ctx.client_ip);
                    escape_into(&mut out, &ip);
                }
            }
        }
        out
    }
}

/// Escapes the five characters that matter in HTML text and attribute values.
fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
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
}
