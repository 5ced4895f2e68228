//! `palisade drill` for each of its faults against a fresh two-node lab (the nobody-hangs
//! lab: director node1, scanning node2, 1 s adverts, heartbeat links), from the client host,
//! with the load from a client of the node the fault hits, RUNS times each; prints a table
//! of medians and every run's figures. Then the same faults, where one applies, against the
//! stack palisade replaces: Squid behind keepalived (`palisade_e2e::squid_pair`), through
//! `palisade drill --fault-command`.
//!
//! Usage: drill-bench PALISADE_BINARY [RUNS] (needs root, iproute2, nftables, keepalived,
//! squid; `STACKS=palisade` or `STACKS=keepalived` runs one stack only; `ADVERT=100ms`
//! sets both stacks' advert interval, 1 s by default)

use palisade_e2e::director_lab::DirectorLab;
use palisade_e2e::squid_pair::SquidPair;

const FAULTS: [&str; 5] = [
    "kill-director",
    "cut-director-link",
    "stop-scanning-node",
    "drain-director",
    "drain-scanning-node",
];

/// The figures of one drill, as its JSON report has them.
const FIELDS: [&str; 9] = [
    "detection_ms",
    "takeover_ms",
    "first_success_after_failure_ms",
    "failed_before_response",
    "failed_mid_response",
    "connections_lost",
    "longest_wait_for_an_error_ms",
    "hanging",
    "requests_after_fault",
];

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(binary) = args.next() else {
        eprintln!("usage: drill-bench PALISADE_BINARY [RUNS]");
        std::process::exit(2);
    };
    let runs: usize = args.next().and_then(|runs| runs.parse().ok()).unwrap_or(3);
    // STACKS=palisade or STACKS=keepalived: one of the two only.
    let stacks = std::env::var("STACKS").unwrap_or_else(|_| "palisade,keepalived".to_owned());
    // ADVERT=100ms: both stacks advertise every 100 ms instead of every second.
    let advert = std::env::var("ADVERT").unwrap_or_else(|_| "1s".to_owned());
    let Some(advert_ms) = milliseconds(&advert) else {
        eprintln!("ADVERT={advert}: expected milliseconds or seconds, e.g. 100ms or 1s");
        std::process::exit(2);
    };
    // Both stacks get the same interval, whatever way it was written.
    let advert = format!("{advert_ms}ms");
    println!("| stack | fault | {} |", FIELDS.join(" | "));
    println!("|---|---|{}|", FIELDS.map(|_| "---:").join("|"));
    for fault in FAULTS {
        for stack in ["palisade", "keepalived"] {
            if !stacks.split(',').any(|wanted| wanted == stack) {
                continue;
            }
            let mut reports = Vec::new();
            for _ in 0..runs {
                let report = if stack == "palisade" {
                    let lab = DirectorLab::with_advert_interval(&binary, &advert);
                    Some(drill(&lab, &binary, fault))
                } else if SquidPair::applies(fault) {
                    let pair = SquidPair::start(std::time::Duration::from_millis(advert_ms));
                    pair.drill(&binary, fault, &[&SETTINGS[..], &LOAD[..]].concat())
                } else {
                    None
                };
                reports.extend(report);
            }
            if reports.is_empty() {
                // No equivalent in keepalived + Squid: its backup serves nothing.
                continue;
            }
            let median = |field: &str| {
                let mut values: Vec<u64> = (reports.iter())
                    .filter_map(|report| report[field].as_u64())
                    .collect();
                values.sort_unstable();
                match values.get(values.len() / 2) {
                    Some(value) if values.len() == reports.len() => value.to_string(),
                    Some(value) => format!("{value} ({} of {})", values.len(), reports.len()),
                    None => "-".to_owned(),
                }
            };
            let cells: Vec<String> = FIELDS.iter().map(|field| median(field)).collect();
            let name = if stack == "palisade" {
                "palisade"
            } else {
                "keepalived + Squid"
            };
            println!("| {name} | {fault} | {} |", cells.join(" | "));
            for report in &reports {
                eprintln!("{stack} {fault}: {report}");
            }
        }
    }
}

/// "100ms" or "1s" in milliseconds.
fn milliseconds(text: &str) -> Option<u64> {
    match text.strip_suffix("ms") {
        Some(ms) => ms.parse().ok(),
        None => (text.strip_suffix('s')?.parse::<u64>().ok()).map(|seconds| seconds * 1_000),
    }
}

/// Timing and load of every drill, both stacks alike.
const SETTINGS: [&str; 6] = ["--before", "2", "--after", "12", "--hang", "10"];
const LOAD: [&str; 4] = ["--connections", "8", "--rate", "100"];

fn drill(lab: &DirectorLab, binary: &str, fault: &str) -> serde_json::Value {
    // A client of the node the fault hits: node1 directs, node2 scans.
    let source = if fault.ends_with("scanning-node") {
        lab.on[1]
    } else {
        lab.on[0]
    };
    lab.drill(binary, fault, source, &[&SETTINGS[..], &LOAD[..]].concat())
}
