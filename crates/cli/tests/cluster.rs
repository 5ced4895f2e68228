//! Central management for real: palisade nodes in network namespaces make a cluster (init,
//! token, join), and a policy saved on any node is live on every node; a stale copy is
//! refused; saves on both sides of a partition converge by the seeds' rule with the loser in
//! history; a node of another CA never gets a link.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use palisade_e2e::netns::{Lab, LabHost, require_netns};

const BIN: &str = env!("CARGO_BIN_EXE_palisade");
const CLUSTER_PORT: u16 = 12346;

struct Member {
    host: LabHost,
    config: PathBuf,
    policy: PathBuf,
    log: PathBuf,
}

impl Member {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        self.host.run(BIN, args)
    }

    fn cli(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "palisade {args:?} on {}: {}{}",
            self.host.name,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn cluster_status(&self) -> serde_json::Value {
        let output = self.run(&["cluster", "status", "--json"]);
        serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null)
    }

    fn head(&self) -> Option<String> {
        self.cluster_status()["head"]["id"]
            .as_str()
            .map(str::to_owned)
    }

    fn active(&self) -> Option<String> {
        self.cluster_status()["active"].as_str().map(str::to_owned)
    }

    /// Peers this node replicates with (linked, and their checks passed).
    fn peers(&self) -> usize {
        self.cluster_status()["peers"]
            .as_array()
            .map_or(0, |peers| {
                peers
                    .iter()
                    .filter(|peer| peer["replicating"] == true)
                    .count()
            })
    }

    /// A sample's value on the node's /metrics (`name{labels}` as printed).
    fn metric(&self, sample: &str) -> Option<f64> {
        let output = self
            .host
            .run("curl", &["-s", "http://127.0.0.1:4711/metrics"]);
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
    }

    fn history(&self) -> Vec<serde_json::Value> {
        let output = self.run(&["policy", "history", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&output.stdout)
            .ok()
            .and_then(|value| value["revisions"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Writes this node's policy file (a block list of `blocked`), keeping its header.
    fn write_policy(&self, blocked: &[&str], note: &str) {
        let current = std::fs::read_to_string(&self.policy).unwrap_or_default();
        let header: String = current
            .lines()
            .next()
            .filter(|line| line.starts_with("# palisade-revision: "))
            .map(|line| format!("{line}\n"))
            .unwrap_or_default();
        std::fs::write(&self.policy, format!("{header}{}", policy(note)))
            .unwrap_or_else(|error| panic!("{error}"));
        let lists = self.policy.parent().map(|dir| dir.join("lists"));
        let lists = lists.unwrap_or_else(|| panic!("policy dir"));
        std::fs::create_dir_all(&lists).unwrap_or_else(|error| panic!("{error}"));
        std::fs::write(lists.join("blocked.txt"), blocked.join("\n") + "\n")
            .unwrap_or_else(|error| panic!("{error}"));
    }

    /// The status code the node's proxy gives a request for `host` (403: blocked).
    fn proxy_code(&self, host: &str) -> String {
        (self.host).status_through("http://127.0.0.1:9090", &format!("http://{host}/"))
    }
}

/// Appends HA group `VI_1` (VRID 51 on eth0, `vip`) with `priority` and advert `interval` to
/// `member`'s config, then `extra` (more tables).
fn add_ha_group(member: &Member, priority: u8, interval: &str, vip: Ipv4Addr, extra: &str) {
    let mut config = std::fs::read_to_string(&member.config).unwrap_or_default();
    config.push_str(&format!(
        "[[vrrp]]\nname = \"VI_1\"\nvrid = 51\ninterface = \"eth0\"\npriority = {priority}\nadvert_interval = \"{interval}\"\nvips = [\"{vip}/24\"]\n{extra}"
    ));
    std::fs::write(&member.config, config).unwrap_or_else(|error| panic!("{error}"));
}

fn policy(note: &str) -> String {
    format!(
        "# {note}\ndefault_action = \"allow\"\n[access]\nclients = [\"127.0.0.0/8\", \"10.213.0.0/16\"]\nallow_destinations = [\"10.213.0.0/16\"]\n[lists]\nblocked = {{ file = \"lists/blocked.txt\" }}\n[[ruleset]]\nname = \"blocklist\"\n  [[ruleset.rule]]\n  name = \"blocked-hosts\"\n  action = \"block\"\n  host_list = [\"blocked\"]\n"
    )
}

/// Configs for `names` in `dir`: each lists the members before it as peers.
fn members(lab: &Lab, dir: &Path, names: &[&str]) -> Vec<Member> {
    let mut out: Vec<Member> = Vec::new();
    for name in names {
        let host = lab.host(name).clone();
        let home = dir.join(name);
        std::fs::create_dir_all(&home).unwrap_or_else(|error| panic!("{error}"));
        let peers: Vec<String> = out
            .iter()
            .map(|member| format!("\"{}:{CLUSTER_PORT}\"", member.host.addr))
            .collect();
        let policy_file = home.join("policy.toml");
        std::fs::write(&policy_file, policy("initial")).unwrap_or_else(|error| panic!("{error}"));
        std::fs::create_dir_all(home.join("lists")).unwrap_or_else(|error| panic!("{error}"));
        std::fs::write(home.join("lists/blocked.txt"), "\n")
            .unwrap_or_else(|error| panic!("{error}"));
        let config = home.join("palisade.toml");
        std::fs::write(
            &config,
            format!(
                "[node]\nhostname = \"{name}\"\ndata_dir = \"{data}\"\n[proxy]\nlisten = [\"0.0.0.0:9090\"]\ntest_listen = [\"0.0.0.0:9091\"]\n[dns]\nservers = [\"127.0.0.1:53\"]\ntimeout = \"100ms\"\n[admin]\nlisten = \"0.0.0.0:4711\"\n[policy]\nfile = \"{policy}\"\npoll_interval = \"200ms\"\n[cluster]\nlisten = \"0.0.0.0:{CLUSTER_PORT}\"\naddress = \"{addr}\"\npeers = [{peers}]\ndigest_interval = \"500ms\"\n",
                data = home.join("data").display(),
                policy = policy_file.display(),
                addr = host.addr,
                peers = peers.join(", "),
            ),
        )
        .unwrap_or_else(|error| panic!("{error}"));
        out.push(Member {
            host,
            config,
            policy: policy_file,
            log: home.join("node.log"),
        });
    }
    out
}

fn start(lab: &mut Lab, member: &Member) -> u32 {
    lab.spawn(
        &member.host.name,
        BIN,
        &["run", "--config", &member.config.display().to_string()],
        &member.log,
    )
}

/// node1 makes the cluster, the others join with tokens, all start and link; their pids.
fn form_cluster(lab: &mut Lab, members: &[Member]) -> Vec<u32> {
    let mut pids = vec![init_and_start(lab, members)];
    for member in &members[1..] {
        join(&members[0], member);
        pids.push(start(lab, member));
    }
    for member in members {
        wait_for(
            &format!("{} linked to every member", member.host.name),
            Duration::from_secs(20),
            members,
            || member.peers() == members.len() - 1,
        );
    }
    pids
}

/// `members[0]` makes the cluster and starts; returns once its cluster port listens.
fn init_and_start(lab: &mut Lab, members: &[Member]) -> u32 {
    let first = &members[0];
    let made = first.cli(&[
        "cluster",
        "init",
        "--config",
        &first.config.display().to_string(),
    ]);
    assert!(made.contains("created"), "{made}");
    let pid = start(lab, first);
    wait_for(
        "node1's cluster port",
        Duration::from_secs(10),
        members,
        || first.log_text().contains("Cluster port listening"),
    );
    pid
}

/// `member` joins `first`'s cluster with a token made there (it is not started).
fn join(first: &Member, member: &Member) {
    let token = first.cli(&[
        "cluster",
        "token",
        "--config",
        &first.config.display().to_string(),
    ]);
    let joined = member.cli(&[
        "cluster",
        "join",
        &format!("{}:{CLUSTER_PORT}", first.host.addr),
        token.trim(),
        "--config",
        &member.config.display().to_string(),
    ]);
    assert!(joined.contains("joined cluster"), "{joined}");
}

/// SIGTERM to `member`'s node `pid`, then waits until the process is gone.
fn stop(member: &Member, pid: u32, members: &[Member]) {
    member.host.run("kill", &["-TERM", &pid.to_string()]);
    wait_for(
        &format!("{} stopped", member.host.name),
        Duration::from_secs(10),
        members,
        || palisade_e2e::ha::is_dead(pid),
    );
}

/// Polls `condition` until it holds; panics naming `what`, with every member's log.
fn wait_for(
    what: &str,
    timeout: Duration,
    members: &[Member],
    mut condition: impl FnMut() -> bool,
) {
    let started = std::time::Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < timeout,
            "{what}: not within {timeout:?}\n{}",
            all_logs(members)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn all_logs(members: &[Member]) -> String {
    members
        .iter()
        .map(|member| format!("--- {}\n{}", member.host.name, member.log_text()))
        .collect()
}

fn apply(member: &Member, message: &str) -> std::process::Output {
    member.run(&[
        "policy",
        "apply",
        &member.policy.display().to_string(),
        "-m",
        message,
    ])
}

fn applied_revision(output: &std::process::Output, members: &[Member]) -> String {
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "apply: {text}{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        all_logs(members)
    );
    text.split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("no revision in {text}"))
        .to_owned()
}

/// A save on one node is live on all three (its list too), the file on each names it; a
/// copy edited from an older revision is refused; `--force` saves it.
#[test]
fn a_policy_saved_on_any_node_is_live_on_every_node() {
    if !require_netns("a_policy_saved_on_any_node_is_live_on_every_node") {
        return;
    }
    let mut lab = Lab::new(&["node1", "node2", "node3"]);
    let dir = palisade_e2e::node::TempDir::new("palisade-cluster");
    let members = members(&lab, &dir.0, &["node1", "node2", "node3"]);
    form_cluster(&mut lab, &members);
    members[1].write_policy(&["blocked.example"], "saved on node2");
    // --wait 2: the command returns once both other nodes run it.
    let output = members[1].run(&[
        "policy",
        "apply",
        &members[1].policy.display().to_string(),
        "-m",
        "block blocked.example",
        "--wait",
        "2",
    ]);
    let revision = applied_revision(&output, &members);
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("live on 2 peers"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let node2 = members[1].cluster_status();
    let live_everywhere = node2["peers"].as_array().is_some_and(|peers| {
        peers.len() == 2 && peers.iter().all(|peer| peer["live"] == revision.as_str())
    });
    assert!(live_everywhere, "{node2:#}");
    // A backup from any node holds the whole cluster: every member's settings, the policy.
    let backup = dir.0.join("backup.json");
    members[2].cli(&["backup", "--to", &backup.display().to_string()]);
    let taken: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&backup).unwrap_or_default())
            .unwrap_or_default();
    let mut names: Vec<String> = taken["members"]
        .as_array()
        .map(|members| {
            members
                .iter()
                .filter_map(|member| member["config"]["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    assert_eq!(names, ["node1", "node2", "node3"], "{taken:#}");
    assert_eq!(taken["policy"]["revision"]["id"], revision.as_str());
    assert!(
        !std::fs::read_to_string(&backup)
            .unwrap_or_default()
            .contains("PRIVATE KEY"),
        "no keys in a backup"
    );
    for member in &members {
        wait_for(
            &format!("{} runs {revision}", member.host.name),
            Duration::from_secs(10),
            &members,
            || member.active().as_deref() == Some(revision.as_str()),
        );
        assert_eq!(
            member.proxy_code("blocked.example"),
            "403",
            "{}",
            all_logs(&members)
        );
        let written = std::fs::read_to_string(&member.policy).unwrap_or_default();
        assert!(
            written.starts_with(&format!(
                "# palisade-revision: {revision}\n# saved on node2"
            )),
            "{written}"
        );
    }
    let history = members[0].history();
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0]["message"], "block blocked.example");
    assert_eq!(
        history[0]["saved_by"].as_str().map(|by| by.is_empty()),
        Some(false)
    );

    // node3 edits its copy; meanwhile node1 saves: node3's copy is stale and refused.
    let stale = std::fs::read_to_string(&members[2].policy).unwrap_or_default();
    members[0].write_policy(&["blocked.example", "second.example"], "saved on node1");
    let second = applied_revision(&apply(&members[0], "block second.example"), &members);
    wait_for(
        "node3 runs node1's save",
        Duration::from_secs(10),
        &members,
        || members[2].active().as_deref() == Some(second.as_str()),
    );
    std::fs::write(
        &members[2].policy,
        stale.replace("# saved on node2", "# node3's edit"),
    )
    .unwrap_or_else(|error| panic!("{error}"));
    let refused = apply(&members[2], "from a stale copy");
    assert!(!refused.status.success());
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(
        error.contains("the policy changed since your copy"),
        "{error}"
    );
    // ... with what changed since the copy: node1's save, document and list.
    assert!(error.contains("changes since your copy:"), "{error}");
    assert!(error.contains("+# saved on node1"), "{error}");
    assert!(
        error.contains("list lists/blocked.txt: 1 added, 0 removed\n+ second.example"),
        "{error}"
    );
    assert_eq!(
        members[2].head().as_deref(),
        Some(second.as_str()),
        "nothing saved"
    );
    // --force saves it over the head (the operator's explicit choice).
    let forced = members[2].run(&[
        "policy",
        "apply",
        &members[2].policy.display().to_string(),
        "--force",
        "-m",
        "forced",
    ]);
    let forced = applied_revision(&forced, &members);
    for member in &members {
        wait_for(
            "forced save everywhere",
            Duration::from_secs(10),
            &members,
            || member.active().as_deref() == Some(forced.as_str()),
        );
    }

    // diff, get and rollback: the first revision's policy becomes the head again.
    let diff = members[1].cli(&["policy", "diff", &revision[..12], &second]);
    assert!(diff.contains("+ second.example"), "{diff}");
    let copy = members[1]
        .policy
        .parent()
        .map(|dir| dir.join("copy/policy.toml"))
        .unwrap_or_default();
    members[1].cli(&[
        "policy",
        "get",
        &revision[..12],
        "--to",
        &copy.display().to_string(),
    ]);
    let text = std::fs::read_to_string(&copy).unwrap_or_default();
    assert!(
        text.starts_with(&format!(
            "# palisade-revision: {revision}\n# saved on node2"
        )),
        "{text}"
    );
    let rolled = members[0].cli(&["policy", "rollback", &revision[..12], "-m", "undo"]);
    let rollback = rolled
        .split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_owned();
    for member in &members {
        wait_for(
            "rollback everywhere",
            Duration::from_secs(10),
            &members,
            || member.active().as_deref() == Some(rollback.as_str()),
        );
        assert_ne!(
            member.proxy_code("second.example"),
            "403",
            "unblocked again"
        );
        assert_eq!(member.proxy_code("blocked.example"), "403");
    }
    let history = members[2].history();
    assert_eq!(history.len(), 4, "{history:?}");
    assert!(
        history[0]["message"].as_str().is_some_and(
            |message| message.starts_with("rollback to ") && message.ends_with(": undo")
        ),
        "{history:?}"
    );

    // --confirm: unconfirmed, the save undoes itself on every node; confirmed, it stays.
    wait_for(
        "node1 wrote back the rollback",
        Duration::from_secs(10),
        &members,
        || {
            std::fs::read_to_string(&members[0].policy)
                .is_ok_and(|text| text.starts_with(&format!("# palisade-revision: {rollback}")))
        },
    );
    members[0].write_policy(&["blocked.example", "third.example"], "to be confirmed");
    let policy_file = members[0].policy.display().to_string();
    let confirmable = members[0].cli(&["policy", "apply", &policy_file, "--confirm", "1s"]);
    assert!(confirmable.contains("unless confirmed"), "{confirmable}");
    wait_for(
        "rolled back automatically",
        Duration::from_secs(15),
        &members,
        || {
            members
                .iter()
                .all(|member| member.proxy_code("third.example") != "403")
                && members[1].history()[0]["message"]
                    .as_str()
                    .is_some_and(|message| message.contains(": automatic rollback: "))
        },
    );
    wait_for(
        "node1 wrote back the automatic rollback",
        Duration::from_secs(10),
        &members,
        || {
            std::fs::read_to_string(&members[0].policy)
                .is_ok_and(|text| text.contains("# saved on node2"))
        },
    );
    members[0].write_policy(&["blocked.example", "third.example"], "confirmed this time");
    members[0].cli(&["policy", "apply", &policy_file, "--confirm", "30s"]);
    let confirmed = members[0].cli(&["policy", "confirm"]);
    assert!(confirmed.contains("confirmed revision"), "{confirmed}");
    let again = members[0].run(&["policy", "confirm"]);
    assert!(!again.status.success(), "nothing left to confirm");

    // The backup restores on any node as a new revision, live everywhere.
    let restored = members[0].cli(&["restore", &backup.display().to_string()]);
    assert!(restored.contains("restored: revision"), "{restored}");
    for member in &members {
        wait_for(
            "the backup's policy everywhere",
            Duration::from_secs(10),
            &members,
            || {
                member.proxy_code("third.example") != "403"
                    && member.proxy_code("blocked.example") == "403"
            },
        );
    }
    let broken = dir.0.join("broken.json");
    std::fs::write(
        &broken,
        std::fs::read_to_string(&backup)
            .unwrap_or_default()
            .replace(
                "default_action = \\\"allow\\\"",
                "default_action = \\\"maybe\\\"",
            ),
    )
    .unwrap_or_else(|error| panic!("{error}"));
    let refused = members[0].run(&["restore", &broken.display().to_string()]);
    assert!(!refused.status.success(), "a damaged backup is refused");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("does not compile; nothing restored"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(
        history[0]["message"].as_str().is_some_and(
            |message| message.starts_with("rollback to ") && message.ends_with(": undo")
        ),
        "{history:?}"
    );
}

/// A partition with saves on both sides: after healing every node has the same head, a
/// merge whose content is the seeds' winner (equal node priorities: the newest save), and
/// both saves in history. A node with its own CA is never linked.
#[test]
fn saves_on_both_sides_of_a_partition_converge_and_strangers_are_refused() {
    if !require_netns("saves_on_both_sides_of_a_partition_converge_and_strangers_are_refused") {
        return;
    }
    let mut lab = Lab::new(&["node1", "node2", "node3", "stranger"]);
    let dir = palisade_e2e::node::TempDir::new("palisade-cluster-split");
    let all = members(&lab, &dir.0, &["node1", "node2", "node3", "stranger"]);
    let (members, stranger) = all.split_at(3);
    form_cluster(&mut lab, members);

    // node3 is cut off; node1 saves, then node3 saves (later: the winner).
    members[2].host.set_link(&lab, false);
    wait_for(
        "node1 sees node3 gone",
        Duration::from_secs(15),
        members,
        || members[0].peers() == 1,
    );
    members[0].write_policy(&["one.example"], "node1 during the split");
    let one = applied_revision(&apply(&members[0], "node1's side"), members);
    members[2].write_policy(&["three.example"], "node3 during the split");
    let three = applied_revision(&apply(&members[2], "node3's side"), members);
    wait_for(
        "node3 runs its own save alone",
        Duration::from_secs(10),
        members,
        || members[2].active().as_deref() == Some(three.as_str()),
    );
    wait_for(
        "node2 runs node1's save",
        Duration::from_secs(10),
        members,
        || members[1].active().as_deref() == Some(one.as_str()),
    );

    // node3 cannot reach the others: the seeds' 301, naming the node last seen there.
    wait_for(
        "node3 says it cannot connect",
        Duration::from_secs(15),
        members,
        || {
            let log = members[2].log_text();
            log.contains("[Coordinator] [NodeRequestFailed] Message '<co_connect>' on node")
            && log.contains("(node1) failed with error '(301 - 'cannot connect') - \"co_connect: failure 'errno: ")
            && log.contains("while sending request - last action: connect\"'")
        },
    );
    members[2].host.set_link(&lab, true);
    for member in members {
        wait_for(
            "links back after the split",
            Duration::from_secs(15),
            members,
            || member.peers() == 2,
        );
    }
    let mut head = None;
    wait_for(
        "one head everywhere",
        Duration::from_secs(30),
        members,
        || {
            let heads: Vec<Option<String>> = members.iter().map(Member::active).collect();
            let same = heads.windows(2).all(|pair| pair[0] == pair[1]);
            head = heads[0].clone();
            same && head.as_deref().is_some_and(|id| id != one && id != three)
        },
    );
    let history = members[1].history();
    let merge = history
        .iter()
        .find(|revision| revision["id"].as_str() == head.as_deref())
        .unwrap_or_else(|| panic!("head not in history: {history:?}"));
    assert_eq!(merge["kind"], "merge", "{history:?}");
    let three_summary = history
        .iter()
        .find(|revision| revision["id"] == three.as_str())
        .unwrap_or_else(|| panic!("node3's save lost: {history:?}"));
    assert!(
        history
            .iter()
            .any(|revision| revision["id"] == one.as_str()),
        "loser kept"
    );
    assert_eq!(
        merge["bundle"], three_summary["bundle"],
        "the newest save wins"
    );
    for member in members {
        assert_eq!(member.proxy_code("three.example"), "403");
    }
    let settled = members.iter().any(|member| {
        member
            .log_text()
            .contains("concurrent policy saves settled")
    });
    assert!(settled, "{}", all_logs(members));
    let conflicts: f64 = members
        .iter()
        .filter_map(|member| member.metric("palisade_cluster_conflicts_total"))
        .sum();
    assert!(conflicts >= 1.0, "no conflict counted");
    assert!(
        members[0]
            .metric("palisade_cluster_certificate_expiry_timestamp_seconds")
            .is_some_and(|at| at > 1.7e9),
        "certificate expiry not exported"
    );

    // A node of another cluster dials node1: refused, never a peer.
    let stranger = &stranger[0];
    stranger.cli(&[
        "cluster",
        "init",
        "--config",
        &stranger.config.display().to_string(),
    ]);
    // Its config lists the three members.
    let stranger_pid = start(&mut lab, stranger);
    wait_for(
        "node1 refuses the stranger",
        Duration::from_secs(10),
        members,
        || {
            let log = members[0].log_text();
            log.contains("peer-link peer refused")
                && log.contains("failed with error '(306 - 'peer not authenticated')")
        },
    );
    assert_eq!(members[0].peers(), 2);
    assert_eq!(stranger.peers(), 0);

    // The stranger saves in its own cluster, then leaves it and joins this one: its history
    // is archived and it adopts this cluster's head (its old policy does not merge in).
    stranger.write_policy(&["stranger.example"], "the stranger's own cluster");
    applied_revision(&apply(stranger, "alone"), members);
    stop(stranger, stranger_pid, members);
    let trust = stranger
        .policy
        .parent()
        .map(|home| home.join("data/cluster"))
        .unwrap_or_default();
    std::fs::remove_dir_all(&trust).unwrap_or_else(|error| panic!("{error}"));
    join(&members[0], stranger);
    start(&mut lab, stranger);
    wait_for(
        "the former stranger adopts the head",
        Duration::from_secs(15),
        members,
        || stranger.active() == head && members[0].active() == head,
    );
    assert!(
        stranger
            .log_text()
            .contains("is archived; it adopts the cluster's policy"),
        "{}",
        stranger.log_text()
    );
    assert_ne!(stranger.proxy_code("stranger.example"), "403");
    assert_eq!(stranger.proxy_code("three.example"), "403");
}

fn start_with_env(lab: &mut Lab, member: &Member, env: &[&str]) -> u32 {
    let config = member.config.display().to_string();
    let mut args: Vec<&str> = env.to_vec();
    args.extend([BIN, "run", "--config", &config]);
    lab.spawn(&member.host.name, "env", &args, &member.log)
}

/// A member whose clock is 10 minutes ahead (libfaketime) is refused with the seeds' 405
/// naming both times, one of an incompatible release with 404; replication stops with them
/// only; a compatible release (same minor) replicates. HA keeps working with the skewed
/// member: node1 (Master) hands its VIP over to it on a graceful stop.
#[test]
fn clock_skew_is_a_405_and_an_incompatible_release_a_404() {
    if !require_netns("clock_skew_is_a_405_and_an_incompatible_release_a_404") {
        return;
    }
    let faketime = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    assert!(
        Path::new(faketime).exists(),
        "libfaketime missing (Debian package faketime)"
    );
    let mut lab = Lab::new(&["node1", "node2", "node3"]);
    let dir = palisade_e2e::node::TempDir::new("palisade-cluster-checks");
    let members = members(&lab, &dir.0, &["node1", "node2", "node3"]);
    // node1 and node2 also form an HA group (their own peer links, the group key).
    let vip = lab.spare_addr(100);
    for (member, priority, peer) in [
        (&members[0], 150, members[1].host.addr),
        (&members[1], 100, members[0].host.addr),
    ] {
        let heartbeat = palisade_e2e::ha::heartbeat_section(peer);
        add_ha_group(member, priority, "1s", vip, &heartbeat);
    }
    let node1 = init_and_start(&mut lab, &members);
    for member in &members[1..] {
        join(&members[0], member);
    }
    let preload = format!("LD_PRELOAD={faketime}");
    start_with_env(
        &mut lab,
        &members[1],
        &["FAKETIME=+10m", "FAKETIME_DONT_FAKE_MONOTONIC=1", &preload],
    );
    let node3 = start_with_env(&mut lab, &members[2], &["PALISADE_TEST_RELEASE=9.0.0"]);

    wait_for(
        "node1 refuses both",
        Duration::from_secs(15),
        &members,
        || {
            let log = members[0].log_text();
            log.contains("[Coordinator] [NodeRequestFailed] Message '<co_replicate>' on node")
                && log.contains("(node2) failed with error '(405 - 'time difference too high')")
                && log.contains("(node3) failed with error '(404 - 'version mismatch')")
        },
    );
    // The skewed node says it too, from its side; and both show it in status.
    wait_for(
        "node2 refuses node1",
        Duration::from_secs(10),
        &members,
        || {
            members[1]
                .log_text()
                .contains("(node1) failed with error '(405 - 'time difference too high')")
        },
    );
    let status = members[0].cluster_status();
    let refused = |name: &str| {
        status["peers"]
            .as_array()
            .and_then(|peers| peers.iter().find(|peer| peer["name"] == name))
            .and_then(|peer| peer["refused"].as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    assert!(refused("node2").contains("405"), "{status:#}");
    assert!(refused("node3").contains("404"), "{status:#}");
    for code in ["404", "405"] {
        let sample = format!("palisade_cluster_replication_refusals_total{{code=\"{code}\"}}");
        wait_for(&sample, Duration::from_secs(10), &members, || {
            members[0].metric(&sample).is_some_and(|count| count >= 1.0)
        });
    }

    // A save on node1 reaches neither (three digest rounds go by).
    members[0].write_policy(&["checked.example"], "node1 alone");
    let saved = applied_revision(&apply(&members[0], "while they are refused"), &members);
    wait_for("node1 runs it", Duration::from_secs(10), &members, || {
        members[0].active().as_deref() == Some(saved.as_str())
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(members[1].active(), None, "{}", all_logs(&members));
    assert_eq!(members[2].active(), None, "{}", all_logs(&members));

    // node3 upgraded to a compatible release (same minor): it replicates.
    stop(&members[2], node3, &members);
    start_with_env(&mut lab, &members[2], &["PALISADE_TEST_RELEASE=0.1.99"]);
    wait_for(
        "node3 catches up",
        Duration::from_secs(15),
        &members,
        || members[2].active().as_deref() == Some(saved.as_str()),
    );
    assert_eq!(
        members[1].active(),
        None,
        "the skewed node still does not replicate"
    );

    // HA is another plane: node1, Master, hands the VIP over to the skewed node2 on a
    // graceful stop, over their peer link.
    wait_for(
        "node1 holds the VIP",
        Duration::from_secs(15),
        &members,
        || members[0].host.has_address(vip),
    );
    wait_for(
        "node2 knows node1 as Master",
        Duration::from_secs(10),
        &members,
        || {
            let output = members[1].run(&["status", "--json"]);
            serde_json::from_slice::<serde_json::Value>(&output.stdout).is_ok_and(|status| {
                status["groups"][0]["master"] == members[0].host.addr.to_string()
            })
        },
    );
    members[0].host.run("kill", &["-TERM", &node1.to_string()]);
    wait_for(
        "the skewed node2 takes the VIP by handover",
        Duration::from_secs(10),
        &members,
        || {
            members[1].host.has_address(vip)
                && members[1]
                    .log_text()
                    .contains("handover received: taking over")
        },
    );
}

/// A member that cannot compile a save (here a debug-build hook stands in for a member of an
/// older release that cannot read a newer policy) refuses it cluster-wide: the saver's
/// `--wait` says so, every node goes back to the revision it was based on (its lists too),
/// the refusal is in every history, and the next good save is live everywhere.
#[test]
fn a_save_some_member_cannot_compile_never_stays_the_head() {
    if !require_netns("a_save_some_member_cannot_compile_never_stays_the_head") {
        return;
    }
    let mut lab = Lab::new(&["node1", "node2", "node3"]);
    let dir = palisade_e2e::node::TempDir::new("palisade-cluster-refusal");
    let members = members(&lab, &dir.0, &["node1", "node2", "node3"]);
    init_and_start(&mut lab, &members);
    for member in &members[1..] {
        join(&members[0], member);
    }
    let node2 = start(&mut lab, &members[1]);
    start_with_env(
        &mut lab,
        &members[2],
        &["PALISADE_TEST_REFUSE_POLICY=needs-a-newer-release"],
    );
    for member in &members {
        wait_for("linked", Duration::from_secs(20), &members, || {
            member.peers() == members.len() - 1
        });
    }
    let wait_all = |what: &str, revision: &str| {
        for member in &members {
            wait_for(what, Duration::from_secs(15), &members, || {
                member.active().as_deref() == Some(revision)
            });
        }
    };
    members[0].write_policy(&["good.example"], "good");
    let good = applied_revision(&apply(&members[0], "good"), &members);
    wait_all("the good save is live everywhere", &good);

    members[0].write_policy(&["good.example", "bad.example"], "needs-a-newer-release");
    let output = members[0].run(&[
        "policy",
        "apply",
        &members[0].policy.display().to_string(),
        "-m",
        "bad",
        "--wait",
        "2",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("refused: some peers cannot install it")
            && stderr.contains("node3: ")
            && stderr.contains("test hook")
            && stderr.contains(&good[..12]),
        "{stderr}\n{}",
        all_logs(&members)
    );
    wait_all("every node back on the good save", &good);
    for member in &members {
        assert_eq!(member.head().as_deref(), Some(good.as_str()));
        assert_eq!(member.proxy_code("good.example"), "403");
        assert_ne!(
            member.proxy_code("bad.example"),
            "403",
            "{}",
            member.host.name
        );
        let history = member.history();
        let refusal = history
            .iter()
            .find(|revision| revision["kind"] == "refusal")
            .unwrap_or_else(|| panic!("no refusal on {}: {history:?}", member.host.name));
        assert_eq!(refusal["saved_by"], "node3");
        wait_for("counted", Duration::from_secs(10), &members, || {
            member
                .metric("palisade_cluster_refused_revisions_total")
                .is_some_and(|count| count >= 1.0)
        });
    }
    // The saver's file is the good revision again (written back on activation).
    let file = std::fs::read_to_string(&members[0].policy).unwrap_or_default();
    assert!(
        file.starts_with(&format!("# palisade-revision: {good}")),
        "{file}"
    );
    assert!(
        members[0]
            .log_text()
            .contains("node node3 cannot install policy revision"),
        "{}",
        all_logs(&members)
    );

    // The cluster is not stuck: the next save every member can compile is live everywhere.
    members[1].write_policy(&["good.example", "next.example"], "next");
    let next = applied_revision(&apply(&members[1], "next"), &members);
    wait_all("the next save is live everywhere", &next);
    assert_eq!(members[2].proxy_code("next.example"), "403");
    // Every member's storage timestamp is a metric on each node.
    wait_for("peer head times", Duration::from_secs(10), &members, || {
        let output = (members[0].host).run("curl", &["-s", "http://127.0.0.1:4711/metrics"]);
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        ["node2", "node3"].iter().all(|peer| {
            let prefix = format!("palisade_cluster_peer_head_time_seconds{{peer=\"{peer}\"");
            text.lines().any(|line| {
                line.starts_with(&prefix)
                    && line
                        .rsplit(' ')
                        .next()
                        .and_then(|value| value.parse::<f64>().ok())
                        .is_some_and(|seconds| seconds > 1.7e9)
            })
        })
    });

    // A save made with --confirm is still rolled back when its node restarts before the
    // deadline (the pending rollback is in the store, not only in memory).
    members[1].write_policy(
        &["good.example", "next.example", "unconfirmed.example"],
        "x",
    );
    let policy_file = members[1].policy.display().to_string();
    members[1].cli(&["policy", "apply", &policy_file, "--confirm", "4s"]);
    stop(&members[1], node2, &members);
    start(&mut lab, &members[1]);
    for member in &members {
        wait_for(
            "the unconfirmed save rolled back after the restart",
            Duration::from_secs(20),
            &members,
            || {
                member.proxy_code("unconfirmed.example") != "403"
                    && member.history()[0]["message"]
                        .as_str()
                        .is_some_and(|message| message.contains("automatic rollback"))
            },
        );
    }
    assert!(
        members[1].log_text().contains("still not confirmed"),
        "{}",
        all_logs(&members)
    );
}

/// A node stopped while others save catches up when it returns (anti-entropy on reconnect);
/// a node killed with SIGKILL in the middle of saves restarts on an intact store, and the
/// cluster agrees on one head that includes every save it acknowledged.
#[test]
fn a_node_down_during_saves_catches_up_and_a_kill_mid_save_loses_nothing() {
    if !require_netns("a_node_down_during_saves_catches_up_and_a_kill_mid_save_loses_nothing") {
        return;
    }
    let mut lab = Lab::new(&["node1", "node2", "node3"]);
    let dir = palisade_e2e::node::TempDir::new("palisade-cluster-down");
    let members = members(&lab, &dir.0, &["node1", "node2", "node3"]);
    let pids = form_cluster(&mut lab, &members);

    // node3 stops; two saves happen without it; it comes back and catches up.
    stop(&members[2], pids[2], &members);
    members[0].write_policy(&["first.example"], "while node3 was down");
    let first = applied_revision(&apply(&members[0], "first"), &members);
    wait_for(
        "node2 has the first save",
        Duration::from_secs(10),
        &members,
        || members[1].active().as_deref() == Some(first.as_str()),
    );
    members[1].write_policy(&["first.example", "second.example"], "still down");
    let second = applied_revision(&apply(&members[1], "second"), &members);
    start(&mut lab, &members[2]);
    wait_for(
        "node3 catches up",
        Duration::from_secs(15),
        &members,
        || members[2].active().as_deref() == Some(second.as_str()),
    );
    assert_eq!(members[2].proxy_code("second.example"), "403");

    // node1 is killed while saves keep coming: every acknowledged save survives.
    let mut acknowledged = Vec::new();
    let mut node1 = pids[0];
    for round in 0..3 {
        members[0].write_policy(
            &["first.example", &format!("kill-{round}.example")],
            "racing a kill",
        );
        let config = members[0].policy.display().to_string();
        let host = members[0].host.clone();
        let saving = std::thread::spawn(move || {
            host.run(
                BIN,
                &["policy", "apply", &config, "--force", "-m", "racing"],
            )
        });
        // Somewhere in the save: after the request is sent, before or after the commit.
        std::thread::sleep(Duration::from_millis(3 * round as u64));
        members[0].host.run("kill", &["-KILL", &node1.to_string()]);
        let output = saving.join().unwrap_or_else(|_| panic!("apply thread"));
        if output.status.success() {
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            acknowledged.extend(text.split_whitespace().nth(2).map(str::to_owned));
        }
        wait_for("node1 gone", Duration::from_secs(10), &members, || {
            palisade_e2e::ha::is_dead(node1)
        });
        node1 = start(&mut lab, &members[0]);
        wait_for(
            "node1 back and linked",
            Duration::from_secs(20),
            &members,
            || members[0].peers() == 2,
        );
    }
    // One head everywhere, and every acknowledged save is in every node's history.
    let mut head = None;
    wait_for(
        "one head everywhere",
        Duration::from_secs(20),
        &members,
        || {
            let heads: Vec<Option<String>> = members.iter().map(Member::active).collect();
            head = heads[0].clone();
            head.is_some() && heads.windows(2).all(|pair| pair[0] == pair[1])
        },
    );
    for member in &members {
        let history = member.history();
        for saved in &acknowledged {
            assert!(
                history
                    .iter()
                    .any(|revision| revision["id"] == saved.as_str()),
                "{} lost acknowledged save {saved}: {history:?}",
                member.host.name
            );
        }
    }
    assert!(
        !members[0].log_text().contains("STORE UNUSABLE"),
        "{}",
        members[0].log_text()
    );
}

/// `palisade cluster remove` on the CA holder: the signed trust bundle reaches every member,
/// which closes its links to the removed node and refuses it from then on, across restarts.
#[test]
fn a_removed_node_is_cut_off_and_refused_by_every_member() {
    if !require_netns("a_removed_node_is_cut_off_and_refused_by_every_member") {
        return;
    }
    let mut lab = Lab::new(&["node1", "node2", "node3"]);
    let dir = palisade_e2e::node::TempDir::new("palisade-cluster-remove");
    let members = members(&lab, &dir.0, &["node1", "node2", "node3"]);
    let pids = form_cluster(&mut lab, &members);
    let node3 = members[2].cluster_status()["node_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // Only the CA holder can remove: node2 has no CA key.
    let refused = members[1].run(&["cluster", "remove", &node3]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("does not hold the cluster CA's key"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let removed = members[0].cli(&["cluster", "remove", &node3]);
    assert!(removed.contains("removed"), "{removed}");
    for (member, peers) in members.iter().zip([1, 1, 0]) {
        wait_for("node3 cut off", Duration::from_secs(15), &members, || {
            member.peers() == peers
        });
    }
    wait_for(
        "node2 applied the bundle",
        Duration::from_secs(5),
        &members,
        || {
            members[1]
                .log_text()
                .contains("cluster trust bundle applied")
        },
    );
    wait_for("node3 refused", Duration::from_secs(10), &members, || {
        members[0]
            .log_text()
            .contains("failed with error '(306 - 'peer not authenticated')")
    });

    // node2 restarts: the stored bundle still keeps node3 out.
    stop(&members[1], pids[1], &members);
    start(&mut lab, &members[1]);
    wait_for(
        "node2 back with node1",
        Duration::from_secs(15),
        &members,
        || members[1].peers() == 1,
    );
    wait_for(
        "node2 refuses node3 after its restart",
        Duration::from_secs(10),
        &members,
        || {
            members[1]
                .log_text()
                .contains("failed with error '(306 - 'peer not authenticated')")
        },
    );
    assert_eq!(members[2].peers(), 0);
}

/// `palisade cluster renew`: a member's new key is signed by the CA holder over the
/// authenticated link (the holder signs its own at once); after a restart the member links
/// with the new certificate.
#[test]
fn a_member_renews_its_certificate_through_the_ca_holder() {
    if !require_netns("a_member_renews_its_certificate_through_the_ca_holder") {
        return;
    }
    let mut lab = Lab::new(&["node1", "node2"]);
    let dir = palisade_e2e::node::TempDir::new("palisade-cluster-renew");
    let members = members(&lab, &dir.0, &["node1", "node2"]);
    let pids = form_cluster(&mut lab, &members);
    let certificate = |member: &Member| {
        let data = member
            .policy
            .parent()
            .map(|home| home.join("data/cluster/node.pem"));
        std::fs::read_to_string(data.unwrap_or_default()).unwrap_or_default()
    };
    for member in &members {
        let before = certificate(member);
        let renewed = member.cli(&["cluster", "renew"]);
        assert!(renewed.contains("certificate renewed"), "{renewed}");
        let after = certificate(member);
        assert!(after.starts_with("-----BEGIN CERTIFICATE-----") && after != before);
    }
    assert!(
        members[0]
            .log_text()
            .contains("certificate renewed for a member"),
        "{}",
        members[0].log_text()
    );
    // Both put the new certificate into their links' TLS at once.
    for member in &members {
        assert!(
            member.log_text().contains("cluster TLS reloaded"),
            "{}",
            member.log_text()
        );
    }
    // node2 restarts on its new key and certificate, and links again.
    stop(&members[1], pids[1], &members);
    start(&mut lab, &members[1]);
    wait_for(
        "node2 links with its renewed certificate",
        Duration::from_secs(15),
        &members,
        || members[0].peers() == 1 && members[1].peers() == 1,
    );
}

/// A CA kept off the nodes: after `cluster init` the key is moved away; a new node makes
/// its key and a request, the operator signs it where the key is (`cluster sign`), the node
/// installs the certificate and links; no node can make tokens any more.
#[test]
fn a_node_joins_through_a_ca_kept_offline() {
    if !require_netns("a_node_joins_through_a_ca_kept_offline") {
        return;
    }
    let mut lab = Lab::new(&["node1", "node2"]);
    let dir = palisade_e2e::node::TempDir::new("palisade-cluster-offline");
    let members = members(&lab, &dir.0, &["node1", "node2"]);
    let config = |member: &Member| member.config.display().to_string();
    members[0].cli(&["cluster", "init", "--config", &config(&members[0])]);
    let trust = members[0]
        .policy
        .parent()
        .map(|home| home.join("data/cluster"))
        .unwrap_or_default();
    let offline = dir.0.join("offline");
    std::fs::create_dir_all(&offline).unwrap_or_else(|error| panic!("{error}"));
    std::fs::rename(trust.join("ca-key.pem"), offline.join("ca-key.pem"))
        .unwrap_or_else(|error| panic!("{error}"));
    std::fs::copy(trust.join("ca.pem"), offline.join("ca.pem"))
        .unwrap_or_else(|error| panic!("{error}"));
    let token = members[0].run(&["cluster", "token", "--config", &config(&members[0])]);
    assert!(!token.status.success(), "no CA key on the node: no tokens");
    start(&mut lab, &members[0]);

    let request = members[1].cli(&[
        "cluster",
        "request",
        "--ca",
        &offline.join("ca.pem").display().to_string(),
        "--config",
        &config(&members[1]),
    ]);
    std::fs::write(offline.join("node2.csr"), &request).unwrap_or_else(|error| panic!("{error}"));
    let signed = std::process::Command::new(BIN)
        .args([
            "cluster",
            "sign",
            &offline.join("node2.csr").display().to_string(),
            "--ca-cert",
            &offline.join("ca.pem").display().to_string(),
            "--ca-key",
            &offline.join("ca-key.pem").display().to_string(),
        ])
        .output()
        .unwrap_or_else(|error| panic!("{error}"));
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    std::fs::write(offline.join("node2.pem"), &signed.stdout)
        .unwrap_or_else(|error| panic!("{error}"));
    let installed = members[1].cli(&[
        "cluster",
        "install",
        &offline.join("node2.pem").display().to_string(),
        "--config",
        &config(&members[1]),
    ]);
    assert!(installed.contains("is a member of cluster"), "{installed}");
    start(&mut lab, &members[1]);
    wait_for("node2 links", Duration::from_secs(15), &members, || {
        members[0].peers() == 1 && members[1].peers() == 1
    });
}

/// `palisade cluster add HOST:PORT` (the seeds' flow): a member links to a node that holds a
/// certificate of the CA but lists no one; the other members learn its address from its
/// record and link to it too. A node that is no member has no listener to be talked back to:
/// the seeds' error. An address nobody answers at: the seeds' 301.
#[test]
fn cluster_add_links_a_node_and_the_members_find_it() {
    if !require_netns("cluster_add_links_a_node_and_the_members_find_it") {
        return;
    }
    let mut lab = Lab::new(&["node1", "node2", "node3"]);
    let dir = palisade_e2e::node::TempDir::new("palisade-cluster-add");
    let members = members(&lab, &dir.0, &["node1", "node2", "node3"]);
    // node3 lists nobody.
    let text = std::fs::read_to_string(&members[2].config).unwrap_or_default();
    let alone: String = text
        .lines()
        .map(|line| {
            if line.starts_with("peers = ") {
                "peers = []"
            } else {
                line
            }
        })
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(&members[2].config, alone).unwrap_or_else(|error| panic!("{error}"));

    // Not a member yet: nothing to add to.
    let outsider = start(&mut lab, &members[2]);
    wait_for("node3 serving", Duration::from_secs(10), &members, || {
        members[2].log_text().contains("palisade node started")
    });
    let refused = members[2].run(&["cluster", "add", "10.0.0.1:12346"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains(
            "cannot add node because the local node has no running listener available - new node would not be able to talk back to this node"
        ),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    stop(&members[2], outsider, &members);

    init_and_start(&mut lab, &members);
    for member in &members[1..] {
        join(&members[0], member);
        start(&mut lab, member);
    }
    wait_for(
        "node1 and node2 linked",
        Duration::from_secs(15),
        &members,
        || members[0].peers() == 1 && members[1].peers() == 1,
    );
    assert_eq!(
        members[2].peers(),
        0,
        "node3 lists nobody and nobody knows it"
    );

    // node2's address, a port nothing listens on: refused at once.
    let closed = members[0].run(&["cluster", "add", &format!("{}:1", members[1].host.addr)]);
    assert!(!closed.status.success());
    assert!(
        String::from_utf8_lossy(&closed.stderr).contains(
            "(301 - 'cannot connect') - \"co_distribute_add_cluster_node: failure 'errno: 111 - 'Connection refused'' while sending request - last action: connect\""
        ),
        "{}",
        String::from_utf8_lossy(&closed.stderr)
    );
    let added = members[0].cli(&[
        "cluster",
        "add",
        &format!("{}:{CLUSTER_PORT}", members[2].host.addr),
    ]);
    assert!(added.contains("added node node3"), "{added}");
    for member in &members {
        wait_for(
            "everyone linked to everyone",
            Duration::from_secs(15),
            &members,
            || member.peers() == 2,
        );
    }
}

/// Admin accounts: added on one node (argon2id, the password read from standard input),
/// replicated with the policy; another host changes state only with an account (HTTP Basic),
/// and the history names the account; a removed account no longer gets in.
#[test]
fn admin_accounts_replicate_and_let_other_hosts_in() {
    if !require_netns("admin_accounts_replicate_and_let_other_hosts_in") {
        return;
    }
    let mut lab = Lab::new(&["node1", "node2"]);
    let dir = palisade_e2e::node::TempDir::new("palisade-cluster-accounts");
    let members = members(&lab, &dir.0, &["node1", "node2"]);
    form_cluster(&mut lab, &members);
    members[0].write_policy(&["first.example"], "before any account");
    applied_revision(&apply(&members[0], "first"), &members);

    let add = |member: &Member, name: &str, password: &str| {
        let mut child = member
            .host
            .command(BIN)
            .args(["admin", "add", name])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("{error}"));
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            let _ = writeln!(stdin, "{password}");
        }
        child
            .wait_with_output()
            .unwrap_or_else(|error| panic!("{error}"))
    };
    let short = add(&members[0], "alice", "short");
    assert!(!short.status.success(), "a short password is refused");
    let added = add(&members[0], "alice", "correct horse battery");
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    wait_for(
        "node2 knows alice",
        Duration::from_secs(10),
        &members,
        || String::from_utf8_lossy(&members[1].run(&["admin", "list"]).stdout).contains("alice"),
    );

    // From node1's namespace to node2's admin port: an account is needed.
    let node2_admin = format!("{}:4711", members[1].host.addr);
    members[1].write_policy(
        &["first.example", "remote.example"],
        "saved from another host",
    );
    let file = members[1].policy.display().to_string();
    let remote_apply = |credentials: Option<(&str, &str)>| {
        let mut command = members[0].host.command(BIN);
        command.args([
            "policy",
            "apply",
            &file,
            "--admin",
            &node2_admin,
            "-m",
            "remote",
        ]);
        if let Some((user, password)) = credentials {
            command
                .env("PALISADE_ADMIN_USER", user)
                .env("PALISADE_ADMIN_PASSWORD", password);
        }
        command.output().unwrap_or_else(|error| panic!("{error}"))
    };
    let anonymous = remote_apply(None);
    assert!(!anonymous.status.success());
    assert!(
        String::from_utf8_lossy(&anonymous.stderr).contains("an admin account is needed"),
        "{}",
        String::from_utf8_lossy(&anonymous.stderr)
    );
    let wrong = remote_apply(Some(("alice", "wrong horse battery")));
    assert!(!wrong.status.success());
    let saved = remote_apply(Some(("alice", "correct horse battery")));
    assert!(
        saved.status.success(),
        "{}",
        String::from_utf8_lossy(&saved.stderr)
    );
    let history = members[0].history();
    assert_eq!(history[0]["saved_by"], "alice", "{history:?}");
    for member in &members {
        wait_for(
            "the remote save everywhere",
            Duration::from_secs(10),
            &members,
            || member.proxy_code("remote.example") == "403",
        );
    }
    // The accounts survive a policy save (they are the head's, not the file's).
    wait_for("still there", Duration::from_secs(5), &members, || {
        String::from_utf8_lossy(&members[0].run(&["admin", "list"]).stdout).contains("alice")
    });
    let removed = members[0].run(&["admin", "remove", "alice"]);
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    wait_for(
        "alice gone on node2",
        Duration::from_secs(10),
        &members,
        || !String::from_utf8_lossy(&members[1].run(&["admin", "list"]).stdout).contains("alice"),
    );
    members[1].write_policy(&["first.example"], "after alice left");
    let refused = remote_apply(Some(("alice", "correct horse battery")));
    assert!(
        !refused.status.success(),
        "a removed account no longer gets in"
    );
}

/// `palisade cluster rotate-ca`: a new CA is trusted beside the old one everywhere (the old CA
/// signs the bundle); a member that renews gets a certificate from the new CA; after
/// `--finish` only the new CA is trusted: the renewed member links after a restart, a member
/// still on the old CA's certificate is refused.
#[test]
fn a_ca_rotation_keeps_renewed_members_and_drops_the_others() {
    if !require_netns("a_ca_rotation_keeps_renewed_members_and_drops_the_others") {
        return;
    }
    let mut lab = Lab::new(&["node1", "node2", "node3"]);
    let dir = palisade_e2e::node::TempDir::new("palisade-cluster-rotate");
    let members = members(&lab, &dir.0, &["node1", "node2", "node3"]);
    let pids = form_cluster(&mut lab, &members);
    let rotated = members[0].cli(&["cluster", "rotate-ca"]);
    assert!(rotated.contains("new CA made"), "{rotated}");
    for member in &members[1..] {
        wait_for(
            "the new CA trusted",
            Duration::from_secs(10),
            &members,
            || {
                member
                    .log_text()
                    .contains("the cluster's trusted CAs changed")
            },
        );
    }
    let renewed = members[1].cli(&["cluster", "renew"]);
    assert!(renewed.contains("certificate renewed"), "{renewed}");
    members[0].cli(&["cluster", "rotate-ca", "--finish"]);
    for member in &members[1..] {
        wait_for("only the new CA", Duration::from_secs(10), &members, || {
            member
                .log_text()
                .matches("the cluster's trusted CAs changed")
                .count()
                == 2
        });
    }
    // Restarts: node2 (renewed) links again; node3 (old certificate) is refused.
    for (index, pid) in [(1usize, pids[1]), (2, pids[2])] {
        stop(&members[index], pid, &members);
        start(&mut lab, &members[index]);
    }
    wait_for(
        "node2 back with node1",
        Duration::from_secs(15),
        &members,
        || members[0].peers() == 1 && members[1].peers() == 1,
    );
    wait_for("node3 refused", Duration::from_secs(10), &members, || {
        members[0]
            .log_text()
            .contains("failed with error '(306 - 'peer not authenticated')")
    });
    assert_eq!(members[2].peers(), 0);
}

/// A member that runs an older policy than a reachable peer for more than 10 s (its
/// activations hang: a debug-build hook) is behind: it says so, gives up its VIP and the
/// director gives it no clients; once no reachable peer runs a newer policy (here the peer
/// stops) it directs again, so the last eligible node is never taken out.
#[test]
fn a_node_behind_the_clusters_policy_takes_no_director_role_until_it_catches_up() {
    if !require_netns(
        "a_node_behind_the_clusters_policy_takes_no_director_role_until_it_catches_up",
    ) {
        return;
    }
    let mut lab = Lab::new(&["node1", "node2"]);
    let dir = palisade_e2e::node::TempDir::new("palisade-cluster-behind");
    let members = members(&lab, &dir.0, &["node1", "node2"]);
    // One HA group: node2 has the better priority and directs at first.
    let vip = lab.spare_addr(100);
    for (member, priority, peer) in [
        (&members[0], 100, members[1].host.addr),
        (&members[1], 150, members[0].host.addr),
    ] {
        let heartbeat = palisade_e2e::ha::heartbeat_section(peer);
        add_ha_group(member, priority, "100ms", vip, &heartbeat);
    }
    let node1 = init_and_start(&mut lab, &members);
    join(&members[0], &members[1]);
    start_with_env(
        &mut lab,
        &members[1],
        &["PALISADE_TEST_STALL_ACTIVATION=stalls-on-node2"],
    );
    wait_for(
        "node2 directs, linked to node1",
        Duration::from_secs(20),
        &members,
        || members[1].host.has_address(vip) && members[1].peers() == 1,
    );

    // A save node2 cannot activate (it hangs there): node1 runs it, node2 does not.
    members[0].write_policy(&["behind.example"], "stalls-on-node2");
    let saved = applied_revision(&apply(&members[0], "node2 hangs on it"), &members);
    wait_for("node1 runs it", Duration::from_secs(10), &members, || {
        members[0].active().as_deref() == Some(saved.as_str())
    });
    let started = std::time::Instant::now();
    wait_for(
        "node2 is behind and gives the VIP to node1",
        Duration::from_secs(25),
        &members,
        || {
            members[1]
                .log_text()
                .contains("behind the cluster's policy: node1 runs revision")
                && members[0].host.has_address(vip)
                && !members[1].host.has_address(vip)
        },
    );
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "behind after {:?}: not before 10 s\n{}",
        started.elapsed(),
        all_logs(&members)
    );
    assert!(
        members[1].log_text().contains("Entering FAULT STATE"),
        "{}",
        all_logs(&members)
    );
    // node1, now the director, gives node2 no clients, and says why.
    wait_for(
        "node1's director has node2 out",
        Duration::from_secs(10),
        &members,
        || {
            let output = members[0].run(&["status"]);
            String::from_utf8_lossy(&output.stdout).lines().any(|line| {
                line.trim_start().starts_with("node2")
                    && line.ends_with("out: behind the cluster's policy")
            })
        },
    );

    // node1 stops: no reachable peer runs a newer policy, node2 is eligible again and takes
    // the VIP (the last eligible node is never out).
    stop(&members[0], node1, &members);
    wait_for(
        "node2 directs again",
        Duration::from_secs(10),
        &members,
        || {
            members[1].host.has_address(vip)
                && members[1]
                    .log_text()
                    .contains("no reachable peer runs a newer policy now")
        },
    );
}

/// In a cluster the director runs on the cluster's mutual-TLS links, with no `[heartbeat]`
/// and no group key: the pair keys of the scan port are exported from the links, and the
/// members come from the replicated configuration. node1 and node2 both serve clients
/// through the VIP; node3 runs the same VRRP group and holds a group key, but it is no
/// cluster member: no link the director listens on accepts it, so it can neither report nor
/// be chosen, and as a lower-priority VRRP backup it never takes the VIP.
#[test]
fn a_clusters_director_runs_on_its_links_with_the_members_its_configuration_declares() {
    if !require_netns(
        "a_clusters_director_runs_on_its_links_with_the_members_its_configuration_declares",
    ) {
        return;
    }
    let mut lab = Lab::new(&["node1", "node2", "node3", "client"]);
    let dir = palisade_e2e::node::TempDir::new("palisade-cluster-director");
    let members = members(&lab, &dir.0, &["node1", "node2"]);
    let (node3, client) = (lab.host("node3").clone(), lab.host("client").clone());
    let vip = lab.spare_addr(100);
    for (member, priority) in [(&members[0], 150), (&members[1], 100)] {
        add_ha_group(
            member,
            priority,
            "100ms",
            vip,
            "[director]\nslow_start = \"1s\"\n",
        );
    }
    let pids = form_cluster(&mut lab, &members);
    // node3: the same group, a group key and heartbeat links to both; in no cluster.
    let heartbeat = format!(
        "[heartbeat]\nlisten = \"0.0.0.0:{port}\"\npeers = [\"{}:{port}\", \"{}:{port}\"]\nkey = \"{}\"\n",
        members[0].host.addr,
        members[1].host.addr,
        palisade_e2e::ha::HEARTBEAT_KEY,
        port = palisade_e2e::ha::HEARTBEAT_PORT,
    );
    let mut stranger = palisade_e2e::ha::HaNode::new(&dir.0, &node3, "100ms", 50, vip, &heartbeat);
    stranger.start(&mut lab, BIN);
    let sources = client.add_client_addresses(&lab, 16);
    let served_by = |source: std::net::Ipv4Addr| palisade_e2e::ha::served_by(&client, source, vip);
    wait_for(
        "node1 directs and both members serve clients",
        Duration::from_secs(30),
        &members,
        || {
            let served: std::collections::HashSet<String> = sources
                .iter()
                .filter_map(|source| served_by(*source))
                .collect();
            members[0].host.has_address(vip)
                && served
                    == std::collections::HashSet::from(["node1".to_owned(), "node2".to_owned()])
        },
    );
    // node1's director: node1 and node2, both in; node3 no member.
    let output = members[0].run(&["status"]);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let row = |name: &str| {
        text.lines()
            .find(|line| line.trim_start().starts_with(name))
            .map(str::to_owned)
    };
    assert!(
        row("node1").is_some_and(|line| line.ends_with("in"))
            && row("node2").is_some_and(|line| line.ends_with("in"))
            && row("node3").is_none(),
        "{text}"
    );
    // node1's config names no peer (node2 joined it): node2's internal ports, learnt from
    // the links, are closed to clients through node1 all the same (508, a forwarding loop).
    let proxy = format!("http://{}:9090", members[0].host.addr);
    for port in [9190, 4711, CLUSTER_PORT] {
        let target = format!("http://{}:{port}/", members[1].host.addr);
        wait_for(
            &format!("{target} refused through node1"),
            Duration::from_secs(10),
            &members,
            || client.status_through(&proxy, &target) == "508",
        );
    }
    // node2 admitted the relayed connections with a key from its link to node1.
    assert!(
        members[1]
            .metric("palisade_scan_port_relayed_connections_total")
            .is_some_and(|count| count >= 1.0),
        "{}",
        all_logs(&members)
    );
    assert!(
        !stranger.log_text().is_empty(),
        "node3 ran: {}",
        stranger.log_text()
    );
    // VRRP's statuses and handover ride the cluster's links too: node1 stops and hands the
    // VIP to node2 at once (node3, no member, is never its successor).
    stop(&members[0], pids[0], &members);
    wait_for(
        "node2 takes the VIP by handover over the cluster's links",
        Duration::from_secs(10),
        &members,
        || {
            members[1].host.has_address(vip)
                && members[1]
                    .log_text()
                    .contains("handover received: taking over")
        },
    );
    assert!(!node3.has_address(vip), "{}", stranger.log_text());
}
