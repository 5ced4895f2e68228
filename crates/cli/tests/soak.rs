//! One minute of mixed load (GETs, blocked requests, CONNECT tunnels, large downloads,
//! policy edits, log rotation) through the real binary: every request answered as the load
//! asked, and no clear leak of heap or descriptors between seconds 10-20 and 50-60. The
//! 30-minute run with the 5% goal is `bench/soak.sh` (BENCHMARKS.md).

use std::time::Duration;

use palisade_e2e::soak::{Limits, SoakPlan, SoakRig, run};

const BIN: &str = env!("CARGO_BIN_EXE_palisade");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_minute_of_mixed_load_leaks_nothing() {
    let rig = SoakRig::start(BIN).await;
    // A tenth of the office load: the test binary is a debug build sharing two cores with
    // the load and the origin.
    let plan = SoakPlan {
        get_rate: 400,
        connections: 40,
        large_bytes: 4 << 20,
        rotate_every: Duration::from_secs(20),
        sample_every: Duration::from_secs(1),
        ..SoakPlan::office(Duration::from_secs(60))
    };
    let report = run(&rig.target, &plan).await;
    assert_eq!(
        report.failed(),
        0,
        "requests failed that should not have: {:?}\ncounts: {:?}",
        report.errors,
        report.counts
    );
    for (kind, (ok, _)) in &report.counts {
        assert!(*ok > 0, "no {kind} succeeded: {:?}", report.counts);
    }
    let reloads = rig.node.stderr().matches("policy reloaded").count() as u64;
    let (edits, _) = report.counts["reload"];
    assert!(
        reloads >= edits,
        "{edits} policy edits, {reloads} reloads logged"
    );
    match report.check(&plan, &Limits::clear_leak()) {
        Ok(growth) => eprintln!("soak growth: {growth:?}\ncounts: {:?}", report.counts),
        Err(problem) => panic!("{problem}\ncounts: {:?}", report.counts),
    }
}
