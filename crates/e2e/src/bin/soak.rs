//! Soak benchmark (issue 8): the office load of `palisade_e2e::soak` through one node for
//! MINUTES (default 30), then minutes 5-10 against 25-30 (scaled to the run): heap in use
//! and RSS may grow by at most 5%, descriptors stay put, no request fails that the load did
//! not ask to fail. Prints a sample per minute, the verdict, and writes every sample as JSON.
//!
//! Usage: soak PALISADE_BINARY [MINUTES] [JSON_OUT]   (through bench/soak.sh)
//! To isolate a growth: SOAK_GET_RATE, SOAK_RELOAD_MS, SOAK_ROTATE_S override the plan.

use std::time::Duration;

use palisade_e2e::soak::{Limits, SoakPlan, SoakRig, run};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(binary) = args.next() else {
        eprintln!("usage: soak PALISADE_BINARY [MINUTES] [JSON_OUT]");
        std::process::exit(2);
    };
    let minutes: f64 = args
        .next()
        .and_then(|minutes| minutes.parse().ok())
        .unwrap_or(30.0);
    let out = args
        .next()
        .unwrap_or_else(|| "bench/runs/soak.json".to_owned());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            std::process::exit(1);
        }
    };
    let mut plan = SoakPlan::office(Duration::from_secs_f64(minutes * 60.0));
    let setting = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|value| value.parse::<u64>().ok())
    };
    if let Some(rate) = setting("SOAK_GET_RATE") {
        plan.get_rate = rate.max(1) as u32;
    }
    if let Some(millis) = setting("SOAK_RELOAD_MS") {
        plan.reload_every = Duration::from_millis(millis.max(1));
    }
    if let Some(seconds) = setting("SOAK_ROTATE_S") {
        plan.rotate_every = Duration::from_secs(seconds.max(1));
    }
    // A sample a second: the medians then hold 300 samples per window, and a 6 s reload
    // period cannot alias with the sampling.
    plan.sample_every = Duration::from_secs(1);
    let (report, stderr) = runtime.block_on(async {
        let rig = SoakRig::start(&binary).await;
        eprintln!(
            "soak: {minutes} min, {} GET/s over {} connections, node pid {}",
            plan.get_rate,
            plan.connections,
            rig.node.pid()
        );
        let report = run(&rig.target, &plan).await;
        (report, rig.node.stderr())
    });
    println!("| minute | RSS MiB | heap in use MiB | heap retained MiB | fds | threads | GETs |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mib = |bytes: f64| bytes / 1048576.0;
    let mut next_minute = 0.0;
    for sample in &report.samples {
        if sample.seconds + 1e-6 >= next_minute {
            println!(
                "| {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
                sample.seconds / 60.0,
                mib(sample.rss_bytes),
                mib(sample.heap_in_use_bytes),
                mib(sample.heap_retained_bytes),
                sample.open_fds,
                sample.threads,
                sample.requests
            );
            next_minute += 60.0;
        }
    }
    println!("\ncounts (ok, failed): {:?}", report.counts);
    let reloads = stderr.matches("policy reloaded").count();
    println!("policy reloads logged: {reloads}");
    // The node's own log, for the reasons behind any failure.
    let node_log = format!("{out}.node.log");
    if let Err(error) = std::fs::write(&node_log, &stderr) {
        eprintln!("cannot write {node_log}: {error}");
    }
    let mut json = report.to_json();
    json["minutes"] = serde_json::json!(minutes);
    if let Err(error) = std::fs::write(&out, json.to_string()) {
        eprintln!("cannot write {out}: {error}");
    }
    let verdict = report.check(&plan, &Limits::flat());
    let (early, late) = plan.windows();
    match (&verdict, report.failed()) {
        (Ok(growth), 0) => {
            println!(
                "PASS: seconds {early:?} vs {late:?}: heap in use {:+.1}%, RSS {:+.1}%, heap retained {:+.1}%, open fds {} -> {}",
                growth.heap_in_use * 100.0,
                growth.rss * 100.0,
                growth.heap_retained * 100.0,
                growth.early_fds,
                growth.late_fds
            );
        }
        (verdict, failed) => {
            println!(
                "FAIL: {verdict:?}; {failed} failed requests: {:?}",
                report.errors
            );
            std::process::exit(1);
        }
    }
}
