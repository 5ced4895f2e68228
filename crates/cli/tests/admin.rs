//! The admin plane of a single node, with the real binary and curl: `palisade drain` /
//! `palisade resume` through the admin API, what `/healthz` and `palisade status` say, and
//! that the state-changing endpoints take JSON only, from this node only.

use palisade_e2e::curl;
use palisade_e2e::node::NodeProcess;
use palisade_e2e::origin::Origin;

const BIN: &str = env!("CARGO_BIN_EXE_palisade");

const POLICY: &str = r#"
default_action = "allow"
[access]
clients = ["127.0.0.0/8"]
allow_destinations = ["127.0.0.1/32"]
"#;

fn palisade(node: &NodeProcess, args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(args)
        .arg("--admin")
        .arg(node.admin.to_string())
        .output()
        .unwrap_or_else(|error| panic!("cannot run {BIN}: {error}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_and_resume_a_node_without_ha_groups() {
    let origin = Origin::start().await;
    let node = NodeProcess::start(BIN, "", POLICY);
    let healthz = format!("http://{}/healthz", node.admin);
    assert_eq!(curl(&[&healthz]).status, 200);

    let drained = palisade(&node, &["drain"]);
    assert!(drained.status.success(), "{}", text(&drained.stderr));
    assert!(
        text(&drained.stdout).contains("node test-node: drained"),
        "{}",
        text(&drained.stdout)
    );
    let health = curl(&[&healthz]);
    assert_eq!(
        (health.status, text(&health.body)),
        (503, "drained test-node\n".to_owned())
    );
    let status = palisade(&node, &["status"]);
    assert!(
        text(&status.stdout).contains("node test-node (drained"),
        "{}",
        text(&status.stdout)
    );
    // A drained node still serves whoever reaches it directly: draining only steers traffic.
    let proxied = curl(&[
        "-x",
        &format!("http://{}", node.proxy),
        &origin.url("/small"),
    ]);
    assert_eq!(proxied.status, 200, "{}", proxied.stderr);
    // Draining twice is harmless.
    assert!(palisade(&node, &["drain"]).status.success());

    let resumed = palisade(&node, &["resume"]);
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    assert_eq!(curl(&[&healthz]).status, 200);
    node.wait_stderr("node resumed", std::time::Duration::from_secs(5));
}

/// A node whose store is unusable cannot tell whether it was drained, so it starts drained
/// (taking a VIP by mistake is worse), and a resume that cannot be recorded is refused with
/// the reason and changes nothing (it would not survive a restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_cannot_be_recorded_changes_nothing() {
    let node = NodeProcess::start_with_data(BIN, POLICY, &[("palisade.redb", b"damaged")]);
    let healthz = format!("http://{}/healthz", node.admin);
    assert_eq!(curl(&[&healthz]).status, 503, "{}", node.stderr());
    let resumed = palisade(&node, &["resume"]);
    let stderr = text(&resumed.stderr);
    assert_eq!(resumed.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("resume failed (500): cannot record the resume: the store is unusable"),
        "{stderr}"
    );
    assert_eq!(curl(&[&healthz]).status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changing_endpoints_take_json_only() {
    let node = NodeProcess::start(BIN, "", POLICY);
    let drain = format!("http://{}/drain", node.admin);
    // What an HTML form could send cross-origin: refused, nothing drained.
    let form = curl(&["-X", "POST", "--data", "force=true", &drain]);
    assert_eq!(form.status, 415, "{}", text(&form.body));
    let unknown = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data",
        r#"{"forse":true}"#,
        &drain,
    ]);
    assert_eq!(unknown.status, 422, "{}", text(&unknown.body));
    let get = curl(&[&drain]);
    assert_eq!(get.status, 405);
    // A name instead of an address: what a DNS-rebinding page in a browser on the node sends.
    let rebound = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-H",
        "Host: rebound.example:4711",
        "--data",
        "{}",
        &drain,
    ]);
    assert_eq!(rebound.status, 403, "{}", text(&rebound.body));
    assert_eq!(
        curl(&[&format!("http://{}/healthz", node.admin)]).status,
        200
    );
}

/// The node's identity is a UUID kept in its store, shown by status; a store that cannot be
/// read does not stop the node: it serves with its policy file, under a temporary identity,
/// and says so in status and in its log, leaving the damaged file as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_corrupt_store_serves_and_says_so() {
    let origin = Origin::start().await;
    let healthy = NodeProcess::start(BIN, "", POLICY);
    let status: serde_json::Value =
        serde_json::from_slice(&palisade(&healthy, &["status", "--json"]).stdout)
            .unwrap_or_default();
    let id = status["node_id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(id.len(), 36, "{status}");
    assert!(status["store"]["error"].is_null(), "{status}");
    // The live policy's revision: a SHA-256 of its sources, the same on every node that
    // has the same files.
    let revision = status["policy"]["revision"].as_str().unwrap_or_default();
    assert_eq!(revision.len(), 64, "{status}");
    assert!(
        revision.bytes().all(|byte| byte.is_ascii_hexdigit()),
        "{status}"
    );
    assert!(
        text(&palisade(&healthy, &["status"]).stdout)
            .contains(&format!("policy revision {}", &revision[..12]))
    );
    assert!(healthy.stderr().contains(&id), "the start log names the id");
    assert!(
        text(&palisade(&healthy, &["status"]).stdout)
            .contains(&format!("node id {id}, node priority 100"))
    );
    assert_eq!(status["node_priority"], 100, "{status}");

    let garbage: &[u8] = b"this is not a redb file";
    let node = NodeProcess::start_with_data(BIN, POLICY, &[("palisade.redb", garbage)]);
    let proxied = curl(&[
        "-x",
        &format!("http://{}", node.proxy),
        &origin.url("/small"),
    ]);
    assert_eq!(proxied.status, 200, "{}", proxied.stderr);
    let status: serde_json::Value =
        serde_json::from_slice(&palisade(&node, &["status", "--json"]).stdout).unwrap_or_default();
    let problem = status["store"]["error"].as_str().unwrap_or_default();
    assert!(
        problem.contains("corrupt") && problem.contains("palisade.redb"),
        "{status}"
    );
    assert!(text(&palisade(&node, &["status"]).stdout).contains("STORE UNUSABLE"));
    assert!(
        node.stderr().contains("STORE UNUSABLE"),
        "{}",
        node.stderr()
    );
    assert_eq!(
        std::fs::read(node.dir.0.join("data/palisade.redb")).unwrap_or_default(),
        garbage,
        "the damaged store is left for the operator"
    );
}

fn store_command(args: &[&str], config: &std::path::Path) -> std::process::Output {
    std::process::Command::new(BIN)
        .arg("store")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {BIN}: {error}"))
}

/// `palisade store export` / `import`: the store as versioned JSON, refused while the node
/// runs (it holds the store's lock), and an import gives a node the exported identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_exports_and_imports_with_the_node_stopped() {
    let mut node = NodeProcess::start(BIN, "", POLICY);
    let status: serde_json::Value =
        serde_json::from_slice(&palisade(&node, &["status", "--json"]).stdout).unwrap_or_default();
    let id = status["node_id"].as_str().unwrap_or_default().to_owned();
    let config = node.dir.0.join("palisade.toml");
    let busy = store_command(&["export"], &config);
    assert!(!busy.status.success());
    assert!(
        text(&busy.stderr).contains("in use by another palisade process"),
        "{}",
        text(&busy.stderr)
    );
    node.signal("TERM");
    assert!(node.wait_exit(std::time::Duration::from_secs(20)).is_some());
    let exported = store_command(&["export"], &config);
    assert!(exported.status.success(), "{}", text(&exported.stderr));
    let export: serde_json::Value = serde_json::from_slice(&exported.stdout).unwrap_or_default();
    assert_eq!(export["format"], 2, "{export}");
    assert_eq!(export["node"]["id"], id.as_str(), "{export}");

    let mut other = NodeProcess::start(BIN, "", POLICY);
    other.signal("TERM");
    assert!(
        other
            .wait_exit(std::time::Duration::from_secs(20))
            .is_some()
    );
    let file = other.dir.0.join("export.json");
    std::fs::write(&file, &exported.stdout).unwrap_or_else(|error| panic!("{error}"));
    let other_config = other.dir.0.join("palisade.toml");
    let imported = store_command(&["import", &file.to_string_lossy()], &other_config);
    assert!(imported.status.success(), "{}", text(&imported.stderr));
    let again = store_command(&["export"], &other_config);
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap_or_default();
    assert_eq!(
        again["node"]["id"],
        id.as_str(),
        "the other node now has the exported identity"
    );
}
