//! A 1,000,000-entry domain list: how long the policy takes to compile, and how long one
//! request takes to judge against it (hit and miss).
//!
//! Run: `cargo bench -p palisade-policy --bench domain_list -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Instant;

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
        hostname: "bench".to_string(),
        proxy_ips: Vec::new(),
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

fn bench(c: &mut Criterion) {
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

criterion_group!(benches, bench);
criterion_main!(benches);
