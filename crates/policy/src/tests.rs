//! Whole-document tests: TOML in, verdicts or error messages out.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::path::Path;

use proptest::prelude::*;

use super::*;

const ORIGIN: &str = "/etc/palisade/policy.toml";

const THIS_NODE: &str = "0b6f7c1e-8d2a-4f0e-9c53-2d1f1a7e4b90";

fn node() -> NodeIdentity {
    NodeIdentity {
        name: palisade_identity::NodeName::new("proxy-eu-1").unwrap(),
        proxy_ips: vec!["10.1.0.5".parse().unwrap(), "2001:db8::5".parse().unwrap()],
        id: Some(THIS_NODE.parse().unwrap()),
    }
}

/// List files the test documents may name, relative to the policy's directory.
fn files() -> HashMap<&'static str, &'static str> {
    HashMap::from([
        (
            "/etc/palisade/lists/social.txt",
            "# social networks\n\nfacebook.com\n  .TikTok.com  # and all under it\n*.fbcdn.*\n192.0.2.44\n",
        ),
        (
            "/etc/palisade/lists/bad.txt",
            "good.example\nbad..example\n\n   has space.example\nok.example\nbad.example.\n",
        ),
    ])
}

fn compile_text(source: &str, node: &NodeIdentity) -> Result<CompiledPolicy, Vec<PolicyError>> {
    let files = files();
    let read = |path: &Path, _: &str| -> io::Result<String> {
        let key = path.to_str().unwrap_or_default();
        files.get(key).map(|text| text.to_string()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "No such file or directory (os error 2)",
            )
        })
    };
    compile_with_reader(source, Path::new(ORIGIN), node, &read)
}

#[track_caller]
fn compiled(source: &str) -> CompiledPolicy {
    match compile_text(source, &node()) {
        Ok(policy) => policy,
        Err(errors) => panic!("policy does not compile:\n{}", render(&errors)),
    }
}

fn render(errors: &[PolicyError]) -> String {
    errors.iter().map(|e| format!("{e}\n")).collect()
}

/// `"CLIENT METHOD HOST PORT [PATH]"`, e.g. `"10.0.0.1 GET example.com 80 /a?b"`.
fn facts(request: &str) -> RequestFacts<'_> {
    let parts: Vec<&str> = request.split(' ').collect();
    assert!(
        parts.len() == 4 || parts.len() == 5,
        "bad request notation {request:?}"
    );
    RequestFacts {
        client: parts[0].parse().unwrap(),
        method: parts[1],
        host: parts[2],
        port: parts[3].parse().unwrap(),
        path: parts.get(4).copied().unwrap_or(""),
    }
}

#[track_caller]
fn check(policy: &str, request: &str, expected_action: Action, expected_rule: &str) {
    let verdict = compiled(policy).evaluate(&facts(request));
    assert_eq!(
        (verdict.action, &*verdict.rule),
        (expected_action, expected_rule),
        "request {request:?}"
    );
}

#[track_caller]
fn check_errors(policy: &str, expected: &[&str]) {
    let actual = match compile_text(policy, &node()) {
        Ok(_) => String::new(),
        Err(errors) => render(&errors),
    };
    let expected: String = expected.iter().map(|e| format!("{e}\n")).collect();
    assert_eq!(actual, expected);
}

use Action::{Allow, Block};

// === verdicts ===

#[test]
fn default_action_applies_when_nothing_matches() {
    check("", "127.0.0.1 GET example.com 80 /", Allow, "default");
    check(
        "default_action = \"block\"",
        "127.0.0.1 GET example.com 80 /",
        Block,
        "default",
    );
    let one_rule = r#"
default_action = "block"
[[ruleset]]
name = "rs"
[[ruleset.rule]]
name = "ok"
action = "allow"
host = ["ok.example"]
"#;
    check(one_rule, "127.0.0.1 GET ok.example 80 /", Allow, "rs/ok");
    check(
        one_rule,
        "127.0.0.1 GET other.example 80 /",
        Block,
        "default",
    );
}

const HOSTS: &str = r#"
[lists]
social = { file = "lists/social.txt" }
inline = ["Inline.Example", ".inline-suffix.example"]
[[ruleset]]
name = "hosts"
[[ruleset.rule]]
name = "inline"
action = "block"
host = [".Example.COM", "exact.org", "*.cdn.*", "192.0.2.1", "[2001:db8::1]"]
[[ruleset.rule]]
name = "lists"
action = "block"
host_list = ["social", "inline"]
[[ruleset.rule]]
name = "both"
action = "block"
host = ["both.example"]
host_list = ["inline"]
"#;

#[test]
fn host_criterion() {
    let c = "127.0.0.1 GET";
    check(
        HOSTS,
        &format!("{c} example.com 80 /"),
        Block,
        "hosts/inline",
    );
    check(
        HOSTS,
        &format!("{c} www.example.com 80 /"),
        Block,
        "hosts/inline",
    );
    check(HOSTS, &format!("{c} notexample.com 80 /"), Allow, "default");
    check(HOSTS, &format!("{c} exact.org 80 /"), Block, "hosts/inline");
    check(HOSTS, &format!("{c} www.exact.org 80 /"), Allow, "default");
    check(
        HOSTS,
        &format!("{c} img.cdn.net 80 /"),
        Block,
        "hosts/inline",
    );
    check(HOSTS, &format!("{c} cdn.net 80 /"), Allow, "default");
    check(HOSTS, &format!("{c} 192.0.2.1 80 /"), Block, "hosts/inline");
    check(HOSTS, &format!("{c} 192.0.2.10 80 /"), Allow, "default");
    check(
        HOSTS,
        &format!("{c} 2001:db8::1 443"),
        Block,
        "hosts/inline",
    );
    // From the list file: exact, ".suffix" (uppercase in the file), glob and IP entries.
    check(
        HOSTS,
        &format!("{c} facebook.com 80 /"),
        Block,
        "hosts/lists",
    );
    check(
        HOSTS,
        &format!("{c} www.facebook.com 80 /"),
        Allow,
        "default",
    );
    check(HOSTS, &format!("{c} tiktok.com 80 /"), Block, "hosts/lists");
    check(
        HOSTS,
        &format!("{c} v16.tiktok.com 80 /"),
        Block,
        "hosts/lists",
    );
    // Rules are tried in order: the glob in the first rule matches before the list does.
    check(
        HOSTS,
        &format!("{c} v16.cdn.tiktok.com 80 /"),
        Block,
        "hosts/inline",
    );
    check(
        HOSTS,
        &format!("{c} scontent.fbcdn.net 80 /"),
        Block,
        "hosts/lists",
    );
    check(HOSTS, &format!("{c} 192.0.2.44 443"), Block, "hosts/lists");
    // From the inline list.
    check(
        HOSTS,
        &format!("{c} inline.example 80 /"),
        Block,
        "hosts/lists",
    );
    check(
        HOSTS,
        &format!("{c} a.inline-suffix.example 80 /"),
        Block,
        "hosts/lists",
    );
    // host and host_list are one criterion: either matches.
    check(
        HOSTS,
        &format!("{c} both.example 80 /"),
        Block,
        "hosts/both",
    );
}

#[test]
fn path_criteria() {
    let policy = r#"
[[ruleset]]
name = "paths"
[[ruleset.rule]]
name = "admin"
action = "block"
path_prefix = ["/admin", "/wp-login.php"]
[[ruleset.rule]]
name = "numbered"
action = "block"
path_regex = ['^/x/[0-9]+$', '\?debug=1']
"#;
    check(
        policy,
        "127.0.0.1 GET a.example 80 /admin",
        Block,
        "paths/admin",
    );
    check(
        policy,
        "127.0.0.1 GET a.example 80 /admin/users?x=1",
        Block,
        "paths/admin",
    );
    check(
        policy,
        "127.0.0.1 GET a.example 80 /wp-login.php?r=1",
        Block,
        "paths/admin",
    );
    check(
        policy,
        "127.0.0.1 GET a.example 80 /public/admin",
        Allow,
        "default",
    );
    check(
        policy,
        "127.0.0.1 GET a.example 80 /x/123",
        Block,
        "paths/numbered",
    );
    check(
        policy,
        "127.0.0.1 GET a.example 80 /x/123/y",
        Allow,
        "default",
    );
    check(
        policy,
        "127.0.0.1 GET a.example 80 /y?debug=1",
        Block,
        "paths/numbered",
    );
    // CONNECT has no path, so path criteria never match it.
    check(policy, "127.0.0.1 CONNECT a.example 443", Allow, "default");
}

#[test]
fn path_ignore_case() {
    let policy = r#"
[[ruleset]]
name = "paths"
[[ruleset.rule]]
name = "admin"
action = "block"
path_prefix = ["/Admin"]
path_ignore_case = true
[[ruleset.rule]]
name = "exports"
action = "block"
path_regex = ['^/export/[a-z]+[0-9]*\.csv$']
path_ignore_case = true
[[ruleset.rule]]
name = "exact-case"
action = "block"
path_prefix = ["/Secret"]
path_regex = ['^/Secret']
path_ignore_case = false
"#;
    let c = "127.0.0.1 GET a.example 80";
    check(policy, &format!("{c} /admin"), Block, "paths/admin");
    check(
        policy,
        &format!("{c} /ADMIN/users?x=1"),
        Block,
        "paths/admin",
    );
    check(policy, &format!("{c} /aDmInistrator"), Block, "paths/admin");
    check(policy, &format!("{c} /adm"), Allow, "default");
    check(
        policy,
        &format!("{c} /EXPORT/Q1.CSV"),
        Block,
        "paths/exports",
    );
    check(
        policy,
        &format!("{c} /export/q1.csv"),
        Block,
        "paths/exports",
    );
    check(policy, &format!("{c} /EXPORT/Q1.CSV/x"), Allow, "default");
    check(policy, &format!("{c} /Secret/x"), Block, "paths/exact-case");
    check(policy, &format!("{c} /secret/x"), Allow, "default");
    // A multi-byte character across the prefix's end neither panics nor matches.
    check(policy, &format!("{c} /Admé"), Allow, "default");
    check(policy, "127.0.0.1 CONNECT a.example 443", Allow, "default");
}

#[test]
fn path_ignore_case_needs_a_path_criterion() {
    check_errors(
        r#"[[ruleset]]
name = "rs"
[[ruleset.rule]]
name = "r"
action = "block"
host = ["a.example"]
path_ignore_case = true
[[ruleset.rule]]
name = "r2"
action = "block"
path_ignore_case = false
[[ruleset.rule]]
name = "r3"
action = "block"
path_prefix = ["/a"]
path_ignore_case = "yes"
"#,
        &[
            "/etc/palisade/policy.toml:7:20: path_ignore_case needs path_prefix or path_regex in the same rule",
            "/etc/palisade/policy.toml:11:20: path_ignore_case needs path_prefix or path_regex in the same rule",
            "/etc/palisade/policy.toml:16:20: invalid type: string \"yes\", expected a boolean",
        ],
    );
}

#[test]
fn port_method_client_criteria() {
    let policy = r#"
[[ruleset]]
name = "rs"
[[ruleset.rule]]
name = "ports"
action = "block"
port = [80, "8000-8100", "9999"]
[[ruleset.rule]]
name = "writes"
action = "block"
method = ["post", "PUT"]
[[ruleset.rule]]
name = "lab"
action = "block"
client = ["10.0.0.0/8", "2001:db8:1::/48"]
"#;
    check(policy, "127.0.0.1 GET a.example 80 /", Block, "rs/ports");
    check(policy, "127.0.0.1 GET a.example 8000 /", Block, "rs/ports");
    check(policy, "127.0.0.1 GET a.example 8100 /", Block, "rs/ports");
    check(policy, "127.0.0.1 GET a.example 8101 /", Allow, "default");
    check(policy, "127.0.0.1 GET a.example 9999 /", Block, "rs/ports");
    check(policy, "127.0.0.1 POST a.example 443 /", Block, "rs/writes");
    check(policy, "127.0.0.1 put a.example 443 /", Block, "rs/writes");
    check(policy, "127.0.0.1 GET a.example 443 /", Allow, "default");
    check(policy, "10.9.8.7 GET a.example 443 /", Block, "rs/lab");
    check(
        policy,
        "::ffff:10.9.8.7 GET a.example 443 /",
        Block,
        "rs/lab",
    );
    check(policy, "2001:db8:1::7 GET a.example 443 /", Block, "rs/lab");
    check(
        policy,
        "2001:db8:2::7 GET a.example 443 /",
        Allow,
        "default",
    );
    check(policy, "11.0.0.1 GET a.example 443 /", Allow, "default");
}

#[test]
fn criteria_are_and_values_are_or() {
    let policy = r#"
[[ruleset]]
name = "rs"
[[ruleset.rule]]
name = "r"
action = "block"
host = [".example.com"]
method = ["POST", "PUT"]
path_prefix = ["/upload"]
"#;
    check(
        policy,
        "127.0.0.1 POST a.example.com 80 /upload/1",
        Block,
        "rs/r",
    );
    check(
        policy,
        "127.0.0.1 PUT example.com 80 /upload",
        Block,
        "rs/r",
    );
    check(
        policy,
        "127.0.0.1 GET a.example.com 80 /upload/1",
        Allow,
        "default",
    );
    check(
        policy,
        "127.0.0.1 POST a.example.org 80 /upload/1",
        Allow,
        "default",
    );
    check(
        policy,
        "127.0.0.1 POST a.example.com 80 /download",
        Allow,
        "default",
    );
}

#[test]
fn first_matching_rule_wins_across_rulesets() {
    let policy = r#"
[[ruleset]]
name = "first"
[[ruleset.rule]]
name = "allow-docs"
action = "allow"
host = ["docs.example.com"]
[[ruleset.rule]]
name = "block-example"
action = "block"
host = [".example.com"]
[[ruleset]]
name = "second"
[[ruleset.rule]]
name = "allow-everything"
action = "allow"
"#;
    check(
        policy,
        "127.0.0.1 GET docs.example.com 80 /",
        Allow,
        "first/allow-docs",
    );
    check(
        policy,
        "127.0.0.1 GET www.example.com 80 /",
        Block,
        "first/block-example",
    );
    check(
        policy,
        "127.0.0.1 GET other.org 80 /",
        Allow,
        "second/allow-everything",
    );
}

const NODE_SCOPED: &str = r#"
[[ruleset]]
name = "eu"
node_hostname = ["PROXY-EU-*"]
[[ruleset.rule]]
name = "eu-block"
action = "block"
host = ["eu.example"]
[[ruleset]]
name = "us"
node_hostname = ["proxy-us-*"]
[[ruleset.rule]]
name = "us-block"
action = "block"
host = ["us.example"]
[[ruleset]]
name = "by-ip"
node_ip = ["10.1.0.0/16"]
[[ruleset.rule]]
name = "here"
action = "block"
host = ["ip.example"]
[[ruleset.rule]]
name = "elsewhere"
action = "block"
host = ["elsewhere.example"]
node_ip = ["192.168.0.0/16"]
[[ruleset.rule]]
name = "v6"
action = "block"
host = ["v6.example"]
node_ip = ["2001:db8::/64"]
node_hostname = ["proxy-eu-1"]
"#;

#[test]
fn node_scoping() {
    check(
        NODE_SCOPED,
        "127.0.0.1 GET eu.example 80 /",
        Block,
        "eu/eu-block",
    );
    check(
        NODE_SCOPED,
        "127.0.0.1 GET us.example 80 /",
        Allow,
        "default",
    );
    check(
        NODE_SCOPED,
        "127.0.0.1 GET ip.example 80 /",
        Block,
        "by-ip/here",
    );
    check(
        NODE_SCOPED,
        "127.0.0.1 GET elsewhere.example 80 /",
        Allow,
        "default",
    );
    check(
        NODE_SCOPED,
        "127.0.0.1 GET v6.example 80 /",
        Block,
        "by-ip/v6",
    );

    let us_node = NodeIdentity {
        name: palisade_identity::NodeName::new("proxy-us-2").unwrap(),
        proxy_ips: vec!["192.168.1.1".parse().unwrap()],
        id: None,
    };
    let policy = compile_text(NODE_SCOPED, &us_node).unwrap();
    let verdict = |host: &str| {
        let request = format!("127.0.0.1 GET {host} 80 /");
        let v = policy.evaluate(&facts(&request));
        (v.action, v.rule.to_string())
    };
    assert_eq!(verdict("eu.example"), (Allow, "default".to_string()));
    assert_eq!(verdict("us.example"), (Block, "us/us-block".to_string()));
    assert_eq!(verdict("ip.example"), (Allow, "default".to_string()));
    assert_eq!(
        policy.summary(),
        PolicySummary {
            rulesets: 1,
            rules: 1,
            rulesets_skipped: 2,
            rules_skipped: 4,
            lists: 0,
            list_entries: 0
        }
    );
}

#[test]
fn access() {
    let defaults = compiled("");
    assert!(defaults.client_allowed("127.0.0.1".parse().unwrap()));
    assert!(defaults.client_allowed("127.200.0.1".parse().unwrap()));
    assert!(defaults.client_allowed("::1".parse().unwrap()));
    assert!(defaults.client_allowed("::ffff:127.0.0.1".parse().unwrap()));
    assert!(!defaults.client_allowed("10.0.0.1".parse().unwrap()));
    assert!(!defaults.client_allowed("::2".parse().unwrap()));
    assert!(defaults.connect_port_allowed(443));
    assert!(!defaults.connect_port_allowed(22));
    assert!(!defaults.destination_exempt("10.0.0.1".parse().unwrap()));

    let policy = compiled(
        r#"
[access]
clients = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]
connect_ports = [443, "8443", "9000-9010"]
allow_destinations = ["10.20.0.0/16", "fd00::/8"]
"#,
    );
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(policy.client_allowed(ip("10.1.2.3")));
    assert!(policy.client_allowed(ip("::ffff:10.1.2.3")));
    assert!(policy.client_allowed(ip("192.0.2.7")));
    assert!(!policy.client_allowed(ip("192.0.2.8")));
    assert!(
        !policy.client_allowed(ip("127.0.0.1")),
        "setting clients replaces the default"
    );
    assert!(policy.client_allowed(ip("2001:db8::9")));
    assert!(policy.connect_port_allowed(443) && policy.connect_port_allowed(8443));
    assert!(policy.connect_port_allowed(9000) && policy.connect_port_allowed(9010));
    assert!(!policy.connect_port_allowed(9011) && !policy.connect_port_allowed(80));
    assert!(policy.destination_exempt(ip("10.20.3.4")));
    assert!(policy.destination_exempt(ip("::ffff:10.20.3.4")));
    assert!(policy.destination_exempt(ip("fd12::1")));
    assert!(!policy.destination_exempt(ip("10.21.0.1")));

    let closed = compiled("[access]\nclients = []\nconnect_ports = []\n");
    assert!(!closed.client_allowed(ip("127.0.0.1")));
    assert!(!closed.connect_port_allowed(443));
}

#[test]
fn block_pages() {
    let ctx = BlockPageContext {
        node_hostname: "proxy-eu-1",
        rule: "rs/<r>",
        url: "http://evil.example/?q=<script>alert('x')</script>&a=\"b\"",
        client_ip: "10.0.0.9".parse().unwrap(),
        request_id: "01J9Z",
    };
    let page = compiled("").render_block_page(&ctx);
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(page.contains(
        "http://evil.example/?q=&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;a=&quot;b&quot;"
    ));
    assert!(page.contains("rs/&lt;r&gt;") && page.contains("10.0.0.9"));
    assert!(page.contains("01J9Z") && page.contains("proxy-eu-1"));
    assert!(!page.contains("{{"));

    let custom = compiled(
        "block_page = \"\"\"\n<p>{{rule}} blocked {{url}} for {{ client_ip }} via {{hostname}} ({{request_id}})</p>\"\"\"\n",
    );
    assert_eq!(
        custom.render_block_page(&ctx),
        "<p>rs/&lt;r&gt; blocked http://evil.example/?q=&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;a=&quot;b&quot; for 10.0.0.9 via proxy-eu-1 (01J9Z)</p>"
    );
}

#[test]
fn summary_counts() {
    let policy = compiled(HOSTS);
    assert_eq!(
        policy.summary(),
        PolicySummary {
            rulesets: 1,
            rules: 3,
            rulesets_skipped: 0,
            rules_skipped: 0,
            lists: 2,
            list_entries: 6
        }
    );
    assert_eq!(
        policy.summary().to_string(),
        "1 rulesets, 3 rules (0 rulesets and 0 rules for other nodes), 2 lists with 6 entries"
    );
}

#[test]
fn shipped_documents_compile() {
    let default = compile(default_source(), Path::new("<default policy>"), &node()).unwrap();
    assert_eq!(default.summary(), PolicySummary::default());
    assert!(default.client_allowed("127.0.0.1".parse().unwrap()));
    assert!(!default.client_allowed("192.0.2.1".parse().unwrap()));
    assert!(default.connect_port_allowed(443) && !default.connect_port_allowed(25));

    let example = include_str!("../../../examples/policy.toml");
    if let Err(errors) = compile_text(example, &node()) {
        panic!(
            "examples/policy.toml does not compile:\n{}",
            render(&errors)
        );
    }
}

#[test]
fn compiled_policy_is_shareable() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<CompiledPolicy>();
    assert_send_sync::<Verdict>();
    assert_send_sync::<PolicyError>();
}

// === errors ===

#[test]
fn toml_syntax_errors() {
    check_errors(
        "default_action = \"allow\"\n[access\n",
        &["/etc/palisade/policy.toml:2:8: unclosed table, expected `]`"],
    );
    check_errors(
        "default_action = allow\n",
        &["/etc/palisade/policy.toml:1:18: string values must be quoted, expected literal string"],
    );
}

#[test]
fn duplicate_list_names_are_duplicate_keys() {
    check_errors(
        "[lists]\nsocial = [\"a.example\"]\nsocial = [\"b.example\"]\n",
        &["/etc/palisade/policy.toml:3:1: duplicate key `social`"],
    );
    check_errors(
        "[lists]\nsocial = [\"a.example\"]\n[lists]\nother = []\n",
        &["/etc/palisade/policy.toml:3:2: duplicate key `lists`"],
    );
}

#[test]
fn unknown_keys_and_wrong_types_name_the_key() {
    check_errors(
        r#"default_acton = "block"
[access]
client = ["10.0.0.0/8"]
[[ruleset]]
name = "rs"
rules = 1
[[ruleset.rule]]
name = "r"
action = "block"
hots = ["a.example"]
[[ruleset.rule]]
name = "r2"
action = "block"
port = 80
"#,
        &[
            "/etc/palisade/policy.toml:1:1: unknown key `default_acton` in the policy, expected one of: default_action, access, lists, ruleset, block_page",
            "/etc/palisade/policy.toml:3:1: unknown field `client`, expected one of `clients`, `connect_ports`, `allow_destinations`",
            "/etc/palisade/policy.toml:6:1: unknown field `rules`, expected one of `name`, `node_hostname`, `node_ip`, `node_id`, `rule`",
            "/etc/palisade/policy.toml:10:1: unknown field `hots`, expected one of `name`, `action`, `host`, `host_list`, `path_prefix`, `path_regex`, `path_ignore_case`, `port`, `method`, `client`, `node_hostname`, `node_ip`, `node_id`",
            "/etc/palisade/policy.toml:14:8: invalid type: integer `80`, expected a sequence",
        ],
    );
}

#[test]
fn top_level_key_after_a_table_gets_a_hint() {
    check_errors(
        "[[ruleset]]\nname = \"rs\"\n[[ruleset.rule]]\nname = \"r\"\naction = \"allow\"\nblock_page = \"x\"\n",
        &[
            "/etc/palisade/policy.toml:6:1: unknown field `block_page`, expected one of `name`, `action`, `host`, `host_list`, `path_prefix`, `path_regex`, `path_ignore_case`, `port`, `method`, `client`, `node_hostname`, `node_ip`, `node_id` (`block_page` belongs at the top of the document, before the first [table])",
        ],
    );
}

#[test]
fn missing_keys() {
    check_errors(
        "[[ruleset]]\nname = \"rs\"\n[[ruleset.rule]]\nhost = [\"a.example\"]\n",
        &["/etc/palisade/policy.toml:3:1: missing field `name`"],
    );
}

#[test]
fn three_problems_three_errors() {
    check_errors(
        r#"default_action = "deny"
[access]
clients = ["10.0.0.0/33"]
[[ruleset]]
name = "rs"
[[ruleset.rule]]
name = "r"
action = "block"
port = [0]
"#,
        &[
            "/etc/palisade/policy.toml:1:18: invalid action \"deny\": expected \"allow\" or \"block\"",
            "/etc/palisade/policy.toml:3:12: invalid CIDR \"10.0.0.0/33\": prefix length \"33\" must be 0-32",
            "/etc/palisade/policy.toml:9:9: invalid port 0: ports are 1-65535",
        ],
    );
}

#[test]
fn criterion_value_errors() {
    check_errors(
        r#"[access]
connect_ports = [443, "9000-8000", 70000, "https"]
allow_destinations = ["10.0.0/8"]
[[ruleset]]
name = "rs"
[[ruleset.rule]]
name = "r"
action = "Block"
host = ["a..example", "white space.example", "UPPER.example", ""]
path_prefix = ["admin"]
path_regex = ["^/ok$", '^/x/(\d+']
method = ["GET", "BAD METHOD"]
client = ["10.0.0.1/8", "nope"]
node_ip = ["10.1.0.0/16", "10.1.0.0/99"]
node_hostname = ["proxy eu"]
"#,
        &[
            "/etc/palisade/policy.toml:2:23: invalid port \"9000-8000\": range start is greater than its end",
            "/etc/palisade/policy.toml:2:36: invalid port 70000: ports are 1-65535",
            "/etc/palisade/policy.toml:2:43: invalid port \"https\": expected a number or a \"lo-hi\" range such as \"8000-8100\"",
            "/etc/palisade/policy.toml:3:23: invalid CIDR \"10.0.0/8\": \"10.0.0\" is not an IP address",
            "/etc/palisade/policy.toml:8:10: invalid action \"Block\": expected \"allow\" or \"block\"",
            "/etc/palisade/policy.toml:9:9: invalid host pattern \"a..example\": empty label (\"..\", or a leading or trailing dot)",
            "/etc/palisade/policy.toml:9:23: invalid host pattern \"white space.example\": contains a space",
            "/etc/palisade/policy.toml:9:63: invalid host pattern \"\": empty pattern",
            "/etc/palisade/policy.toml:10:16: invalid path_prefix \"admin\": must start with \"/\"",
            "/etc/palisade/policy.toml:11:29: invalid regex \"^/x/(\\d+\": unclosed group",
            "/etc/palisade/policy.toml:12:18: invalid method \"BAD METHOD\": must be an HTTP method token such as GET or CONNECT",
            "/etc/palisade/policy.toml:13:25: invalid CIDR \"nope\": not an address or network such as 10.0.0.0/8 or 2001:db8::/32",
            "/etc/palisade/policy.toml:14:27: invalid CIDR \"10.1.0.0/99\": prefix length \"99\" must be 0-32",
            "/etc/palisade/policy.toml:15:18: invalid node_hostname pattern \"proxy eu\": contains a space",
        ],
    );
}

#[test]
fn name_errors() {
    check_errors(
        r#"[lists]
"bad list" = ["a.example"]
[[ruleset]]
name = "rs"
[[ruleset.rule]]
name = "r"
action = "allow"
[[ruleset.rule]]
name = "r"
action = "allow"
[[ruleset]]
name = "rs"
[[ruleset.rule]]
name = "a/b"
action = "allow"
[[ruleset]]
name = ""
"#,
        &[
            "/etc/palisade/policy.toml:2:1: invalid list name \"bad list\": use only letters, digits, '-', '_' and '.'",
            "/etc/palisade/policy.toml:9:8: duplicate rule name \"r\" (first defined on line 6)",
            "/etc/palisade/policy.toml:12:8: duplicate ruleset name \"rs\" (first defined on line 4)",
            "/etc/palisade/policy.toml:14:8: invalid rule name \"a/b\": use only letters, digits, '-', '_' and '.'",
            "/etc/palisade/policy.toml:17:8: invalid ruleset name \"\": must not be empty",
        ],
    );
}

#[test]
fn list_errors() {
    check_errors(
        r#"[lists]
inline = ["ok.example", "bad_char!.example"]
missing = { file = "lists/missing.txt" }
bad = { file = "lists/bad.txt" }
filed = { path = "x" }
number = 5
[[ruleset]]
name = "rs"
[[ruleset.rule]]
name = "r"
action = "block"
host_list = ["inline", "socail"]
"#,
        &[
            "/etc/palisade/policy.toml:2:25: invalid host pattern \"bad_char!.example\": invalid character '!'",
            "/etc/palisade/policy.toml:3:20: cannot read list file \"/etc/palisade/lists/missing.txt\": No such file or directory (os error 2)",
            "/etc/palisade/policy.toml:5:11: unknown field `path`, expected `file`",
            "/etc/palisade/policy.toml:6:10: list \"number\" must be an array of host patterns or { file = \"path\" }",
            "/etc/palisade/policy.toml:12:24: unknown list \"socail\" (defined lists: bad, inline, missing)",
            "/etc/palisade/lists/bad.txt:2:1: invalid host pattern \"bad..example\": empty label (\"..\", or a leading or trailing dot)",
            "/etc/palisade/lists/bad.txt:4:4: invalid host pattern \"has space.example\": contains a space",
            "/etc/palisade/lists/bad.txt:6:1: invalid host pattern \"bad.example.\": empty label (\"..\", or a leading or trailing dot)",
        ],
    );
}

#[test]
fn empty_criteria() {
    check_errors(
        r#"[[ruleset]]
name = "rs"
node_ip = []
[[ruleset.rule]]
name = "r"
action = "block"
host = []
port = []
"#,
        &[
            "/etc/palisade/policy.toml:3:11: node_ip is empty: list at least one value, or remove the key to match anything",
            "/etc/palisade/policy.toml:7:8: host is empty: list at least one value, or remove the key to match anything",
            "/etc/palisade/policy.toml:8:8: port is empty: list at least one value, or remove the key to match anything",
        ],
    );
}

#[test]
fn block_page_errors() {
    check_errors(
        "block_page = \"\"\"\n<p>{{rule}}</p>\n<p>{{hostnme}} {{url}}</p>\n{{client_ip\"\"\"\n",
        &[
            "/etc/palisade/policy.toml:3:4: unknown block page placeholder \"{{hostnme}}\": expected one of {{hostname}}, {{rule}}, {{url}}, {{client_ip}}, {{request_id}}, each also as {{name_js}} or {{name_attr}}",
            "/etc/palisade/policy.toml:4:1: unterminated block page placeholder: \"{{\" without \"}}\"",
        ],
    );
    // With escapes in the string the position falls back to the string's start.
    check_errors(
        "block_page = \"\\u0041 {{nope}}\"\n",
        &[
            "/etc/palisade/policy.toml:1:14: unknown block page placeholder \"{{nope}}\": expected one of {{hostname}}, {{rule}}, {{url}}, {{client_ip}}, {{request_id}}, each also as {{name_js}} or {{name_attr}}",
        ],
    );
}

#[test]
fn errors_in_rulesets_for_other_nodes_are_still_reported() {
    check_errors(
        r#"[[ruleset]]
name = "elsewhere"
node_hostname = ["nowhere-*"]
[[ruleset.rule]]
name = "r"
action = "block"
path_regex = ["("]
"#,
        &["/etc/palisade/policy.toml:7:16: invalid regex \"(\": unclosed group"],
    );
}

#[test]
fn huge_list_file_reports_a_bounded_number_of_errors() {
    let bad_lines = "bad..example\n".repeat(1000);
    let read = |_: &Path, _: &str| -> io::Result<String> { Ok(bad_lines.clone()) };
    let source = "[lists]\nbig = { file = \"big.txt\" }\n";
    let errors = compile_with_reader(source, Path::new("p.toml"), &node(), &read).unwrap_err();
    assert_eq!(errors.len(), 21);
    assert_eq!(
        errors[0].to_string(),
        "p.toml:2:16: 980 more invalid lines in this list file not shown"
    );
    assert_eq!(
        errors[20].to_string(),
        "big.txt:20:1: invalid host pattern \"bad..example\": empty label (\"..\", or a leading or trailing dot)"
    );
}

// === properties ===

fn label() -> impl Strategy<Value = String> {
    // A tiny alphabet makes shared suffixes, hence interesting near-misses, common.
    "[ab]{1,2}"
}

fn domain() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 1..4).prop_map(|labels| labels.join("."))
}

fn suffix_policy(domain: &str) -> CompiledPolicy {
    compiled(&format!(
        "[[ruleset]]\nname = \"rs\"\n[[ruleset.rule]]\nname = \"r\"\naction = \"block\"\nhost = [\".{domain}\"]\n"
    ))
}

proptest! {
    #[test]
    fn suffix_matches_domain_and_subdomains_only(domain in domain(), host in domain()) {
        let policy = suffix_policy(&domain);
        let request = format!("127.0.0.1 GET {host} 80 /");
        let blocked = policy.evaluate(&facts(&request)).action == Block;
        let expected = host == domain || host.ends_with(&format!(".{domain}"));
        prop_assert_eq!(blocked, expected);
    }

    #[test]
    fn evaluation_is_deterministic_and_first_match(
        rules in prop::collection::vec(arb_rule(), 0..6),
        host in domain(),
        port in prop::sample::select(vec![80u16, 443, 8080]),
        method in prop::sample::select(vec!["GET", "POST"]),
        first_action in prop::sample::select(vec!["allow", "block"]),
    ) {
        let body: String = rules.iter().enumerate().map(|(i, r)| format!("[[ruleset.rule]]\nname = \"r{i}\"\n{r}")).collect();
        let policy = compiled(&format!("[[ruleset]]\nname = \"rs\"\n{body}"));
        let request = format!("10.0.0.1 {method} {host} {port} /p");
        let first = policy.evaluate(&facts(&request));
        let second = policy.evaluate(&facts(&request));
        prop_assert_eq!((first.action, &*first.rule), (second.action, &*second.rule));

        let catch_all = format!("[[ruleset]]\nname = \"pre\"\n[[ruleset.rule]]\nname = \"all\"\naction = \"{first_action}\"\n");
        let prepended = compiled(&format!("{catch_all}[[ruleset]]\nname = \"rs\"\n{body}"));
        let verdict = prepended.evaluate(&facts(&request));
        let expected = if first_action == "allow" { Allow } else { Block };
        prop_assert_eq!((verdict.action, &*verdict.rule), (expected, "pre/all"));
    }

    #[test]
    fn path_prefix_ignoring_case_agrees_with_lowercasing(
        prefix in "/[aAbB/é]{0,4}",
        path in "/[aAbB/é?]{0,6}",
    ) {
        let policy = compiled(&format!(
            "[[ruleset]]\nname = \"rs\"\n[[ruleset.rule]]\nname = \"r\"\naction = \"block\"\npath_prefix = [\"{prefix}\"]\npath_ignore_case = true\n"
        ));
        let request = format!("127.0.0.1 GET a.example 80 {path}");
        let expected = path.to_ascii_lowercase().starts_with(&prefix.to_ascii_lowercase());
        prop_assert_eq!(policy.evaluate(&facts(&request)).action == Block, expected);
    }

    #[test]
    fn client_cidr_agrees_with_ipnet(net in arb_net(), addr in arb_addr()) {
        let policy = compiled(&format!(
            "[access]\nclients = [\"{net}\"]\n[[ruleset]]\nname = \"rs\"\n[[ruleset.rule]]\nname = \"r\"\naction = \"block\"\nclient = [\"{net}\"]\n"
        ));
        let expected = net.contains(&addr);
        prop_assert_eq!(policy.client_allowed(addr), expected);
        let request = format!("{addr} GET a.example 80 /");
        prop_assert_eq!(policy.evaluate(&facts(&request)).action == Block, expected);
    }

    #[test]
    fn ipv4_mapped_clients_are_judged_as_ipv4(net in arb_v4_net(), addr in any::<std::net::Ipv4Addr>()) {
        let policy = compiled(&format!(
            "[access]\nclients = [\"{net}\"]\nallow_destinations = [\"{net}\"]\n[[ruleset]]\nname = \"rs\"\n[[ruleset.rule]]\nname = \"r\"\naction = \"block\"\nclient = [\"{net}\"]\n"
        ));
        let v4 = IpAddr::V4(addr);
        let mapped = IpAddr::V6(addr.to_ipv6_mapped());
        prop_assert_eq!(policy.client_allowed(mapped), policy.client_allowed(v4));
        prop_assert_eq!(policy.destination_exempt(mapped), policy.destination_exempt(v4));
        let verdict_v4 = policy.evaluate(&facts(&format!("{v4} GET a.example 80 /"))).action;
        let verdict_mapped = policy.evaluate(&facts(&format!("{mapped} GET a.example 80 /"))).action;
        prop_assert_eq!(verdict_v4, verdict_mapped);
        prop_assert_eq!(verdict_v4 == Block, net.contains(&addr));
    }
}

/// A rule body: an action and any of a few criteria, each key at most once.
fn arb_rule() -> impl Strategy<Value = String> {
    let host = prop::option::of(prop::sample::select(vec![
        "host = [\".a\"]\n",
        "host = [\"b.a\", \"*b*\"]\n",
        "host = [\"a\"]\n",
    ]));
    let port = prop::option::of(prop::sample::select(vec![
        "port = [80, \"8000-8100\"]\n",
        "port = [443]\n",
    ]));
    let method = prop::option::of(Just("method = [\"POST\"]\n"));
    let client = prop::option::of(prop::sample::select(vec![
        "client = [\"10.0.0.0/8\"]\n",
        "client = [\"192.0.2.0/24\"]\n",
    ]));
    let path = prop::option::of(Just("path_prefix = [\"/p\"]\n"));
    (
        prop::sample::select(vec!["allow", "block"]),
        host,
        port,
        method,
        client,
        path,
    )
        .prop_map(|(action, host, port, method, client, path)| {
            let criteria = [host, port, method, client, path];
            let criteria: String = criteria.iter().flatten().copied().collect();
            format!("action = \"{action}\"\n{criteria}")
        })
}

fn arb_v4_net() -> impl Strategy<Value = ipnet::Ipv4Net> {
    (any::<std::net::Ipv4Addr>(), 0u8..=32)
        .prop_map(|(addr, len)| ipnet::Ipv4Net::new(addr, len).unwrap().trunc())
}

fn arb_net() -> impl Strategy<Value = ipnet::IpNet> {
    prop_oneof![
        arb_v4_net().prop_map(ipnet::IpNet::V4),
        (arb_v6_addr(), 0u8..=128).prop_map(|(addr, len)| ipnet::IpNet::V6(
            ipnet::Ipv6Net::new(addr, len).unwrap().trunc()
        )),
    ]
}

/// IPv6 addresses outside `::ffff:0:0/96`, whose mapped-IPv4 meaning has its own property.
fn arb_v6_addr() -> impl Strategy<Value = std::net::Ipv6Addr> {
    any::<std::net::Ipv6Addr>().prop_filter("IPv4-mapped", |a| a.to_ipv4_mapped().is_none())
}

fn arb_addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<std::net::Ipv4Addr>().prop_map(IpAddr::V4),
        arb_v6_addr().prop_map(IpAddr::V6)
    ]
}

#[test]
fn list_files_read_are_reported_for_watching() {
    let policy = compiled(HOSTS);
    assert_eq!(
        policy.source_files(),
        [std::path::PathBuf::from("/etc/palisade/lists/social.txt")]
    );
    assert!(
        compiled("default_action = \"allow\"\n")
            .source_files()
            .is_empty()
    );
}

/// The seeds' System.UUID criterion: a ruleset or rule for one node by its id, which
/// survives renames and address changes.
#[test]
fn node_id_scoping() {
    let policy = format!(
        r#"
default_action = "allow"
[[ruleset]]
name = "this-node"
node_id = ["{THIS_NODE}"]
[[ruleset.rule]]
name = "block"
action = "block"
host = ["here.example"]
[[ruleset]]
name = "other-node"
node_id = ["11111111-2222-4333-8444-555555555555"]
[[ruleset.rule]]
name = "block"
action = "block"
host = ["there.example"]
"#
    );
    check(
        &policy,
        "127.0.0.1 GET here.example 80 /",
        Block,
        "this-node/block",
    );
    check(
        &policy,
        "127.0.0.1 GET there.example 80 /",
        Allow,
        "default",
    );
    // Checked without an id (offline), no node_id ruleset applies.
    let offline = NodeIdentity { id: None, ..node() };
    let compiled = compile_text(&policy, &offline).unwrap();
    let verdict = compiled.evaluate(&facts("127.0.0.1 GET here.example 80 /"));
    assert_eq!(verdict.action, Allow);
    check_errors(
        "[[ruleset]]\nname = \"x\"\nnode_id = [\"node-a\"]\n",
        &[
            "/etc/palisade/policy.toml:3:12: invalid node_id \"node-a\": expected a node id such as 0b6f7c1e-8d2a-4f0e-9c53-2d1f1a7e4b90 (`palisade status` shows it)",
        ],
    );
}
