//! A 1,000,000-entry domain list, and lists of 100,000 globs: how long the policy takes to
//! compile, and how long one request takes to judge against it (hit and miss).
//!
//! Run: `cargo bench -p palisade-policy --bench domain_list -- --warm-up-time 1 --measurement-time 3`
//! (append `glob` to run only the glob lists; the 1,000,000-entry file is still built).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use palisade_policy::{Action, CompiledPolicy, NodeIdentity, RequestFacts, compile};

const N_ENTRIES: usize = 1_000_000;
const TLDS: [&str; 8] = ["com", "net", "org", "io", "de", "co.uk", "info", "ru"];

/// Deterministic names, so every run measures the same list (xorshift64*, fixed seed).
struct NameGen(u64);

impl NameGen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn label(&mut self) -> String {
        let len = 4 + (self.next() % 9) as usize;
        (0..len)
            .map(|_| (b'a' + (self.next() % 26) as u8) as char)
            .collect()
    }

    /// `label.tld` or `label.label.tld`.
    fn domain(&mut self) -> String {
        let tld = TLDS[(self.next() % TLDS.len() as u64) as usize];
        if self.next().is_multiple_of(4) {
            format!("{}.{}.{tld}", self.label(), self.label())
        } else {
            format!("{}.{tld}", self.label())
        }
    }
}

struct Fixture {
    dir: PathBuf,
    policy_path: PathBuf,
    policy_text: String,
    /// A domain listed as ".suffix" and one listed exactly, to build hits from.
    suffix_entry: String,
    exact_entry: String,
}

fn fixture() -> Fixture {
    let mut names = NameGen(0x9e37_79b9_7f4a_7c15);
    let mut list = String::with_capacity(N_ENTRIES * 16);
    list.push_str("# generated: half \".suffix\" entries, half exact names\n");
    let (mut suffix_entry, mut exact_entry) = (String::new(), String::new());
    for i in 0..N_ENTRIES {
        let domain = names.domain();
        if i.is_multiple_of(2) {
            list.push('.');
        }
        list.push_str(&domain);
        list.push('\n');
        if i == N_ENTRIES / 2 {
            suffix_entry = domain;
        } else if i == N_ENTRIES / 2 + 1 {
            exact_entry = domain;
        }
    }
    let dir = std::env::temp_dir().join(format!("palisade-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("lists")).expect("temp dir must be writable");
    std::fs::write(dir.join("lists/big.txt"), &list).expect("temp dir must be writable");
    let policy_text = r#"
[lists]
big = { file = "lists/big.txt" }

[[ruleset]]
name = "bench"

  [[ruleset.rule]]
  name = "block-big"
  action = "block"
  host_list = ["big"]
"#
    .to_string();
    let policy_path = dir.join("policy.toml");
    std::fs::write(&policy_path, &policy_text).expect("temp dir must be writable");
    Fixture {
        dir,
        policy_path,
        policy_text,
        suffix_entry,
        exact_entry,
    }
}

fn node() -> NodeIdentity {
    NodeIdentity {
        name: palisade_identity::NodeName::default(),
        proxy_ips: Vec::new(),
        id: None,
    }
}

fn compile_fixture(fx: &Fixture) -> CompiledPolicy {
    compile(&fx.policy_text, &fx.policy_path, &node()).expect("generated policy must compile")
}

fn facts<'a>(host: &'a str) -> RequestFacts<'a> {
    RequestFacts {
        client: IpAddr::V4(Ipv4Addr::LOCALHOST),
        method: "GET",
        host,
        port: 443,
        path: "/index.html",
    }
}

fn bench_domain_list(c: &mut Criterion) {
    let fx = fixture();

    // One cold compile, timed outside criterion: this is what a node pays on a policy change.
    let started = Instant::now();
    let policy = compile_fixture(&fx);
    println!(
        "one-shot compile of a {N_ENTRIES}-entry list file: {:?} ({})",
        started.elapsed(),
        policy.summary()
    );

    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    group.bench_function("1m_entry_list_file", |b| {
        b.iter(|| black_box(compile_fixture(&fx)))
    });
    group.finish();

    let deep_hit = format!("a.b.cdn.{}", fx.suffix_entry);
    let cases = [
        ("hit_suffix_itself", fx.suffix_entry.clone(), Action::Block),
        ("hit_suffix_3_labels_deep", deep_hit, Action::Block),
        ("hit_exact", fx.exact_entry.clone(), Action::Block),
        (
            "miss_4_labels",
            "static.assets.unlisted-zzz.example".to_string(),
            Action::Allow,
        ),
        (
            "miss_subdomain_of_exact",
            format!("www.{}", fx.exact_entry),
            Action::Allow,
        ),
        ("ip_literal", "192.0.2.10".to_string(), Action::Allow),
    ];
    let mut group = c.benchmark_group("evaluate_1m_list");
    for (name, host, expected) in &cases {
        assert_eq!(
            policy.evaluate(&facts(host)).action,
            *expected,
            "{name}: {host}"
        );
        group.bench_function(*name, |b| {
            b.iter(|| black_box(policy.evaluate(black_box(&facts(host)))))
        });
    }
    group.finish();

    let _ = std::fs::remove_dir_all(Path::new(&fx.dir));
}

// === glob lists ===

const N_GLOBS: usize = 100_000;

/// The shape from security finding F9: a leading `*`, then long all-`a` labels that a long
/// all-`a` host nearly matches, made distinct by a numbered tail.
fn long_tail(i: usize) -> String {
    format!(
        "{}.{}.{}.{}q{i}",
        "a".repeat(62),
        "a".repeat(63),
        "a".repeat(63),
        "a".repeat(40)
    )
}

struct GlobFixture {
    name: &'static str,
    globs: Vec<String>,
    /// A host one of the globs matches.
    hit: String,
}

fn glob_fixtures() -> Vec<GlobFixture> {
    vec![
        GlobFixture {
            name: "suffix_100k",
            globs: (0..N_GLOBS).map(|i| format!("*{}", long_tail(i))).collect(),
            hit: format!("x.{}", long_tail(77_777)),
        },
        GlobFixture {
            name: "prefix_100k",
            globs: (0..N_GLOBS).map(|i| format!("{}*", long_tail(i))).collect(),
            hit: format!("{}.example", long_tail(77_777)),
        },
        GlobFixture {
            name: "inner_100k",
            globs: (0..N_GLOBS).map(|i| format!("*.cdn{i}.*")).collect(),
            hit: "img.cdn77777.example".to_string(),
        },
        GlobFixture {
            name: "mixed_100k",
            globs: (0..N_GLOBS)
                .map(|i| match i % 10 {
                    0..=3 => format!("*{}", long_tail(i)),
                    4..=6 => format!("*.cdn{i}.example"),
                    _ => format!("proxy-{i}-*"),
                })
                .collect(),
            hit: "proxy-77777-eu.example".to_string(),
        },
    ]
}

/// Writes the globs as a list file beside a policy blocking them; the policy's path and text.
fn write_glob_policy(dir: &Path, fx: &GlobFixture) -> (PathBuf, String) {
    let list_name = format!("{}.txt", fx.name);
    let mut list = String::with_capacity(fx.globs.len() * 64);
    for glob in &fx.globs {
        list.push_str(glob);
        list.push('\n');
    }
    std::fs::write(dir.join(&list_name), list).expect("temp dir must be writable");
    let text = format!(
        "[lists]\nglobs = {{ file = \"{list_name}\" }}\n\n[[ruleset]]\nname = \"bench\"\n\n  [[ruleset.rule]]\n  name = \"block-globs\"\n  action = \"block\"\n  host_list = [\"globs\"]\n"
    );
    (dir.join(format!("{}.toml", fx.name)), text)
}

/// Times `n` single evaluations one by one: criterion reports means and medians, the goal
/// is stated for the 99th percentile.
fn percentiles(policy: &CompiledPolicy, host: &str, n: usize) -> (Duration, Duration, Duration) {
    let mut samples: Vec<Duration> = (0..n)
        .map(|_| {
            let started = Instant::now();
            black_box(policy.evaluate(black_box(&facts(host))));
            started.elapsed()
        })
        .collect();
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99), samples[samples.len() - 1])
}

fn bench_glob_list(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("palisade-bench-globs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir must be writable");
    let long_plain = "a".repeat(253);
    let long_labels = format!(
        "{}.{}.{}.{}",
        "a".repeat(63),
        "a".repeat(63),
        "a".repeat(63),
        "a".repeat(61)
    );
    // Varied bytes, so that lookups land all over the tables instead of on one cached slot.
    let mut names = NameGen(0x2545_f491_4f6c_dd1d);
    let mut long_varied = String::new();
    while long_varied.len() < 253 - 13 {
        long_varied.push_str(&names.label());
        long_varied.push('.');
    }
    long_varied.push_str(&"x".repeat(253 - long_varied.len()));
    assert_eq!(
        (long_plain.len(), long_labels.len(), long_varied.len()),
        (253, 253, 253)
    );

    for fx in glob_fixtures() {
        let (path, text) = write_glob_policy(&dir, &fx);
        let compile_globs = || compile(&text, &path, &node()).expect("glob policy must compile");

        let started = Instant::now();
        let policy = compile_globs();
        println!(
            "glob_list/{}: one-shot compile of {N_GLOBS} globs: {:?} ({})",
            fx.name,
            started.elapsed(),
            policy.summary()
        );
        let mut group = c.benchmark_group("glob_list");
        group.sample_size(10);
        group.bench_function(format!("compile/{}", fx.name), |b| {
            b.iter(|| black_box(compile_globs()))
        });
        group.finish();

        let cases = [
            ("long_a_253", long_plain.as_str(), Action::Allow),
            ("long_a_labels_253", long_labels.as_str(), Action::Allow),
            ("long_varied_253", long_varied.as_str(), Action::Allow),
            ("short", "www.example.com", Action::Allow),
            ("hit", fx.hit.as_str(), Action::Block),
        ];
        let mut group = c.benchmark_group("glob_list");
        for (case, host, expected) in cases {
            assert_eq!(
                policy.evaluate(&facts(host)).action,
                expected,
                "{}: {case}: {host}",
                fx.name
            );
            group.bench_function(format!("evaluate/{}/{case}", fx.name), |b| {
                b.iter(|| black_box(policy.evaluate(black_box(&facts(host)))))
            });
            let (p50, p99, max) = percentiles(&policy, host, 10_000);
            println!(
                "glob_list/{}/{case}: 10000 single lookups: p50 {p50:?}, p99 {p99:?}, max {max:?}",
                fx.name
            );
        }
        group.finish();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench_domain_list, bench_glob_list);
criterion_main!(benches);
