//! The CLI side of central management: `palisade cluster init|token|join|status` and
//! `palisade policy apply|history`.
//!
//! `init`, `token` and `join` work on the data directory's trust files (the node may be
//! running: a running node reads join tokens when a node joins, and starts its cluster plane
//! at its next start); `status` and `policy` ask the running node over the admin API.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use palisade_cluster_trust::files::TrustDir;
use palisade_cluster_trust::join::JoinToken;
use palisade_identity::NodeId;

use crate::admin_client::request;

/// Who runs the command, for the history (the user behind sudo, if any).
fn operator() -> String {
    std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_default()
}

/// One admin API call that must answer 200; any other answer is an error with its reason.
fn call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> anyhow::Result<serde_json::Value> {
    let (code, value) = request(admin, method, path, body, timeout)?;
    answered(code, value)
}

/// The answer if it is a 200; otherwise its reason as the error.
fn answered(code: u16, value: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    if code != 200 {
        bail!(
            "{}",
            value["error"]
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned)
        );
    }
    Ok(value)
}
use crate::config::{self, NodeConfig};

fn load_config(config_file: Option<&Path>) -> anyhow::Result<NodeConfig> {
    match config_file {
        Some(file) => {
            config::load(file).map_err(|errors| anyhow!("invalid configuration:\n{errors}"))
        }
        None => Ok(config::defaults()),
    }
}

/// This node's id: from its store, or from the running node that holds the store's lock.
fn node_id(config: &NodeConfig) -> anyhow::Result<NodeId> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    match palisade_store::Store::open(&config.data_dir) {
        Ok(store) => Ok(store.node_id()),
        Err(palisade_store::StoreError::InUse { .. }) => {
            let (code, status) = request(
                config.admin_listen,
                "GET",
                "/status",
                None,
                Duration::from_secs(5),
            )
            .context("the store is in use by a running node, and its admin API does not answer")?;
            if code != 200 {
                bail!("the running node's admin API answered {code}: {status}");
            }
            status["node_id"]
                .as_str()
                .and_then(|id| id.parse().ok())
                .context("the running node did not say its node id")
        }
        Err(error) => Err(error.into()),
    }
}

fn restart_hint(config: &NodeConfig) -> &'static str {
    match std::net::TcpStream::connect_timeout(&config.admin_listen, Duration::from_millis(300)) {
        Ok(_) => "restart the node (it runs now) to start its cluster plane",
        Err(_) => "start the node to bring up its cluster plane",
    }
}

/// `palisade cluster init`.
pub fn init(config_file: Option<PathBuf>) -> anyhow::Result<()> {
    let config = load_config(config_file.as_deref())?;
    let node = node_id(&config)?;
    let trust = TrustDir::of_data_dir(&config.data_dir);
    let cluster = trust.init(node, time::OffsetDateTime::now_utc())?;
    println!(
        "cluster {} created; this node ({node}) holds its CA key in {}",
        cluster.as_str(),
        trust.path().display()
    );
    println!(
        "cluster port: {} (mutual TLS); {}",
        config.cluster.listen,
        restart_hint(&config)
    );
    println!("add nodes with `palisade cluster token` here, then `palisade cluster join` there");
    Ok(())
}

/// `palisade cluster token`.
pub fn token(config_file: Option<PathBuf>, valid: Duration) -> anyhow::Result<()> {
    let config = load_config(config_file.as_deref())?;
    let trust = TrustDir::of_data_dir(&config.data_dir);
    let token = trust.issue_token(time::OffsetDateTime::now_utc(), valid)?;
    println!("{}", token.encode());
    eprintln!(
        "one-time join token, valid {}s: on the new node run `palisade cluster join <this node's cluster address>:{} <token>`",
        valid.as_secs(),
        config.cluster.listen.port()
    );
    Ok(())
}

/// `palisade cluster join MEMBER TOKEN`.
pub fn join(config_file: Option<PathBuf>, member: &str, token: &str) -> anyhow::Result<()> {
    let config = load_config(config_file.as_deref())?;
    let token = JoinToken::parse(token)?;
    let trust = TrustDir::of_data_dir(&config.data_dir);
    if trust.is_member() {
        bail!(
            "this node is already a cluster member ({}); remove that directory to join another",
            trust.path().display()
        );
    }
    let node = node_id(&config)?;
    let member: SocketAddr = member
        .to_socket_addrs()
        .with_context(|| {
            format!("cannot resolve {member} (HOST:PORT of the node that holds the CA)")
        })?
        .next()
        .with_context(|| format!("{member} resolves to no address"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let joined = runtime.block_on(palisade_cluster::join::join(
        member,
        &token,
        node,
        config.hostname.as_str(),
    ))?;
    trust.install(
        &joined.cluster,
        &joined.ca_pems,
        &joined.key_pem,
        &joined.certificate_pem,
    )?;
    println!(
        "joined cluster {} through {member} as node {node}; {}",
        joined.cluster.as_str(),
        restart_hint(&config)
    );
    Ok(())
}

/// `palisade cluster status`.
pub fn status(admin: SocketAddr, json: bool) -> anyhow::Result<()> {
    let value = call(admin, "GET", "/cluster", None, Duration::from_secs(5))?;
    if json {
        println!("{value:#}");
        return Ok(());
    }
    let head = &value["head"];
    println!(
        "cluster {}  node {} ({})  version {}",
        value["cluster"].as_str().unwrap_or("?"),
        value["node"].as_str().unwrap_or("?"),
        value["node_id"].as_str().unwrap_or("?"),
        value["version"].as_str().unwrap_or("?"),
    );
    println!(
        "storage timestamp: {}  head {}  active {}",
        head["time_ms"].as_u64().map_or(
            "-".to_owned(),
            palisade_replication::coordinator::seeds_timestamp
        ),
        short(head["id"].as_str()),
        short(value["active"].as_str()),
    );
    let certificate = &value["certificate"];
    println!(
        "certificate expires {} ({} days){}",
        certificate["expires"].as_str().unwrap_or("?"),
        certificate["days_left"].as_i64().unwrap_or(0),
        if certificate["alert"].as_bool() == Some(true) {
            "  ALERT: renew with `palisade cluster renew`"
        } else {
            ""
        }
    );
    for peer in value["peers"].as_array().cloned().unwrap_or_default() {
        let state = match (peer["refused"].as_str(), peer["in_sync"].as_bool()) {
            (Some(refused), _) => format!("NOT REPLICATING: {refused}"),
            (None, Some(true)) => "in sync".to_owned(),
            (None, _) => format!("head {}", short(peer["head"].as_str())),
        };
        println!(
            "peer {} ({}) at {}: version {}, clock {:+} ms, {state}",
            peer["name"].as_str().unwrap_or("?"),
            peer["node_id"].as_str().unwrap_or("?"),
            peer["address"].as_str().unwrap_or("?"),
            peer["release"].as_str().unwrap_or("?"),
            peer["clock_difference_ms"].as_i64().unwrap_or(0),
        );
        if let Some(differ) = peer["settings_differ"].as_str() {
            println!("  settings differ: {differ}");
        }
    }
    Ok(())
}

fn short(id: Option<&str>) -> String {
    id.map_or("-".to_owned(), |id| id.chars().take(12).collect())
}

/// `palisade policy apply FILE`.
pub fn apply(
    admin: SocketAddr,
    file: &Path,
    base: Option<String>,
    force: bool,
    message: Option<String>,
    wait: u32,
    confirm: Option<Duration>,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let (header, _) = palisade_policy::bundle::split_revision_header(&text);
    let base = base.or_else(|| header.map(str::to_owned));
    // Read and compiled here first, so a mistake is reported against the operator's file.
    let (bundle, _) =
        palisade_policy::PolicyBundle::read(file, &palisade_policy::NodeIdentity::default())?;
    let saved_by = operator();
    let body = serde_json::to_value(palisade_admin::PolicyApply {
        document: bundle.document,
        lists: bundle.lists,
        base,
        force,
        message: message.unwrap_or_default(),
        saved_by,
        wait,
        confirm_seconds: confirm.map_or(0, |confirm| confirm.as_secs().max(1)),
    })?;
    let base = body["base"].as_str().map(str::to_owned);
    let (code, value) = request(
        admin,
        "POST",
        "/policy/apply",
        Some(&body),
        Duration::from_secs(60),
    )?;
    if code == 409 {
        // An edit from a stale copy: show what changed since the copy was made.
        let changed = match base {
            Some(base) => revision_diff(admin, &base, "head")
                .unwrap_or_else(|error| format!("(cannot show the changes: {error:#})\n")),
            None => {
                "(your copy names no revision: it was not written by a cluster node)\n".to_owned()
            }
        };
        bail!(
            "{}\nchanges since your copy:\n{changed}",
            value["error"].as_str().unwrap_or("refused")
        );
    }
    let value = answered(code, value)?;
    if value["unchanged"].as_bool() == Some(true) {
        println!(
            "unchanged: the cluster's policy is already this (revision {})",
            value["revision"].as_str().unwrap_or("?")
        );
        return Ok(());
    }
    println!(
        "saved revision {} (by {}; stored in {:.1} ms); pushed to every peer",
        value["revision"].as_str().unwrap_or("?"),
        value["saved_by"].as_str().unwrap_or("?"),
        value["stored_ms"].as_f64().unwrap_or(0.0),
    );
    if let Some(seconds) = value["confirm_within_s"].as_u64() {
        println!(
            "rolled back automatically in {seconds} s unless confirmed: `palisade policy confirm`"
        );
    }
    if wait > 0 {
        let live_on = value["live_on"].as_u64().unwrap_or(0);
        let cannot: Vec<String> = value["cannot_install"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|why| why.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        println!("live on {live_on} peers");
        if !cannot.is_empty() && value["refused"].as_bool() == Some(true) {
            bail!(
                "refused: some peers cannot install it, so no node runs it; the cluster went back to the revision it was based on ({}):\n{}",
                value["head"].as_str().unwrap_or("none"),
                cannot.join("\n")
            );
        }
        if !cannot.is_empty() {
            bail!(
                "saved, but some peers cannot install it and keep their last good policy:\n{}",
                cannot.join("\n")
            );
        }
        if live_on < u64::from(wait) {
            bail!(
                "saved, but live on only {live_on} of the {wait} peers waited for within 30 s (see `palisade cluster status`)"
            );
        }
    }
    Ok(())
}

/// `palisade policy history`.
pub fn history(admin: SocketAddr, json: bool) -> anyhow::Result<()> {
    let value = call(
        admin,
        "GET",
        "/policy/history",
        None,
        Duration::from_secs(5),
    )?;
    if json {
        println!("{value:#}");
        return Ok(());
    }
    for revision in value["revisions"].as_array().cloned().unwrap_or_default() {
        let kind = match revision["kind"].as_str() {
            // The member that could not install a save, and why.
            Some("refusal") => format!("refusal of {}", short(revision["parents"][0].as_str())),
            kind => kind.unwrap_or("?").to_owned(),
        };
        println!(
            "{} {} {} by {} (node {}, priority {}): {}",
            revision["id"].as_str().unwrap_or("?"),
            kind,
            palisade_replication::coordinator::seeds_timestamp(
                revision["time_ms"].as_u64().unwrap_or(0)
            ),
            revision["saved_by"].as_str().unwrap_or("?"),
            short(revision["author"].as_str()),
            revision["author_priority"].as_u64().unwrap_or(0),
            revision["message"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}

fn revision(admin: SocketAddr, which: &str) -> anyhow::Result<serde_json::Value> {
    let value = call(
        admin,
        "GET",
        &format!("/policy/revision/{which}"),
        None,
        Duration::from_secs(60),
    )?;
    Ok(value)
}

fn lists_of(value: &serde_json::Value) -> std::collections::BTreeMap<String, String> {
    value["lists"]
        .as_object()
        .map(|lists| {
            lists
                .iter()
                .map(|(name, text)| (name.clone(), text.as_str().unwrap_or("").to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// The documents as a unified diff, and each list's added and removed entries.
pub fn render_diff(old: &serde_json::Value, new: &serde_json::Value) -> String {
    let label = |value: &serde_json::Value| {
        format!(
            "revision {}",
            value["revision"]["id"]
                .as_str()
                .map_or("?", |id| &id[..id.len().min(12)])
        )
    };
    let text = |value: &serde_json::Value| value["document"].as_str().unwrap_or("").to_owned();
    let (old_text, new_text) = (text(old), text(new));
    let mut out = similar::TextDiff::from_lines(&old_text, &new_text)
        .unified_diff()
        .header(&label(old), &label(new))
        .to_string();
    let (old_lists, new_lists) = (lists_of(old), lists_of(new));
    let names: std::collections::BTreeSet<&String> =
        old_lists.keys().chain(new_lists.keys()).collect();
    for name in names {
        let entries = |text: Option<&String>| -> std::collections::BTreeSet<String> {
            text.map(|text| {
                text.lines()
                    .map(str::trim)
                    .filter(|line| !line.is_empty() && !line.starts_with('#'))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
        };
        let (before, after) = (entries(old_lists.get(name)), entries(new_lists.get(name)));
        let added: Vec<&String> = after.difference(&before).collect();
        let removed: Vec<&String> = before.difference(&after).collect();
        if added.is_empty() && removed.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "list {name}: {} added, {} removed\n",
            added.len(),
            removed.len()
        ));
        const SHOWN: usize = 20;
        for entry in added.iter().take(SHOWN) {
            out.push_str(&format!("+ {entry}\n"));
        }
        for entry in removed.iter().take(SHOWN) {
            out.push_str(&format!("- {entry}\n"));
        }
        if added.len() > SHOWN || removed.len() > SHOWN {
            out.push_str(&format!("  (first {SHOWN} of each shown)\n"));
        }
    }
    let names = |value: &serde_json::Value| -> std::collections::BTreeSet<String> {
        value["accounts"]
            .as_array()
            .map(|names| {
                names
                    .iter()
                    .filter_map(|name| name.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (before, after) = (names(old), names(new));
    for added in after.difference(&before) {
        out.push_str(&format!("account + {added}\n"));
    }
    for removed in before.difference(&after) {
        out.push_str(&format!("account - {removed}\n"));
    }
    if out.is_empty() {
        out.push_str("(no difference)\n");
    }
    out
}

fn revision_diff(admin: SocketAddr, old: &str, new: &str) -> anyhow::Result<String> {
    Ok(render_diff(&revision(admin, old)?, &revision(admin, new)?))
}

/// `palisade policy get [REV] [--to FILE]`.
pub fn get(admin: SocketAddr, which: &str, to: Option<&Path>) -> anyhow::Result<()> {
    let value = revision(admin, which)?;
    let id = value["revision"]["id"].as_str().unwrap_or("").to_owned();
    let bundle = palisade_policy::PolicyBundle {
        document: value["document"].as_str().unwrap_or("").to_owned(),
        lists: lists_of(&value),
    };
    match to {
        Some(file) => {
            bundle.write_to(file, &id)?;
            println!(
                "revision {id} written to {} ({} lists beside it); edit it and `palisade policy apply {}`",
                file.display(),
                bundle.lists.len(),
                file.display()
            );
        }
        None => print!(
            "{}{id}\n{}",
            palisade_policy::bundle::REVISION_HEADER,
            bundle.document
        ),
    }
    Ok(())
}

/// `palisade policy diff A B`.
pub fn diff(admin: SocketAddr, old: &str, new: &str) -> anyhow::Result<()> {
    print!("{}", revision_diff(admin, old, new)?);
    Ok(())
}

/// `palisade policy rollback REV`.
pub fn rollback(admin: SocketAddr, which: &str, message: Option<String>) -> anyhow::Result<()> {
    let body = serde_json::to_value(palisade_admin::PolicyRollback {
        revision: which.to_owned(),
        message: message.unwrap_or_default(),
        saved_by: operator(),
    })?;
    let value = call(
        admin,
        "POST",
        "/policy/rollback",
        Some(&body),
        Duration::from_secs(60),
    )?;
    if value["unchanged"].as_bool() == Some(true) {
        println!("unchanged: the cluster's policy is already that revision's");
    } else {
        println!(
            "saved revision {} with the policy of {which}; pushed to every peer",
            value["revision"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

/// `palisade cluster remove NODE_ID` (on the node that holds the CA key).
pub fn remove(admin: SocketAddr, node_id: &str) -> anyhow::Result<()> {
    let body = serde_json::json!({ "node_id": node_id });
    let value = call(
        admin,
        "POST",
        "/cluster/remove",
        Some(&body),
        Duration::from_secs(30),
    )?;
    println!(
        "node {} removed (trust bundle {}): every member refuses it from now on",
        value["removed"].as_str().unwrap_or("?"),
        value["trust_serial"].as_u64().unwrap_or(0)
    );
    Ok(())
}

/// `palisade policy confirm`.
pub fn confirm(admin: SocketAddr) -> anyhow::Result<()> {
    let body = serde_json::json!({});
    let value = call(
        admin,
        "POST",
        "/policy/confirm",
        Some(&body),
        Duration::from_secs(10),
    )?;
    println!(
        "confirmed revision {}: it stays",
        value["confirmed"].as_str().unwrap_or("?")
    );
    Ok(())
}

/// `palisade cluster renew`.
pub fn renew(admin: SocketAddr) -> anyhow::Result<()> {
    let body = serde_json::json!({});
    let value = call(
        admin,
        "POST",
        "/cluster/renew",
        Some(&body),
        Duration::from_secs(30),
    )?;
    println!(
        "certificate renewed (new key, same node id): expires {}; new links use it at once",
        value["expires"].as_str().unwrap_or("?")
    );
    Ok(())
}

/// `palisade cluster request --ca CA.pem`: this node's key (kept) and its signing request.
pub fn request_certificate(config_file: Option<PathBuf>, ca: &Path) -> anyhow::Result<()> {
    let config = load_config(config_file.as_deref())?;
    let ca_pem =
        std::fs::read_to_string(ca).with_context(|| format!("cannot read {}", ca.display()))?;
    let node = node_id(&config)?;
    let trust = TrustDir::of_data_dir(&config.data_dir);
    let request = trust.prepare_request(&ca_pem, node)?;
    print!("{request}");
    eprintln!(
        "signing request for node {node} (its key stays in {}): sign it where the CA key is with `palisade cluster sign`, then `palisade cluster install CERT` here",
        trust.path().display()
    );
    Ok(())
}

/// `palisade cluster sign REQUEST --ca-cert F --ca-key F`: for a CA kept off the nodes.
pub fn sign(request: &Path, ca_cert: &Path, ca_key: &Path) -> anyhow::Result<()> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let (request, cert_pem, key_pem) = (read(request)?, read(ca_cert)?, read(ca_key)?);
    let cluster = palisade_cluster_trust::ClusterCa::cluster_of(&cert_pem)?;
    let ca = palisade_cluster_trust::ClusterCa::from_pem(cluster, &cert_pem, &key_pem)?;
    anyhow::ensure!(
        ca.key_matches(),
        "{} is not the key of {}",
        ca_key.display(),
        ca_cert.display()
    );
    let (node, certificate) = ca.sign(
        &request,
        time::OffsetDateTime::now_utc(),
        palisade_cluster_trust::files::NODE_CERT_LIFETIME,
    )?;
    print!("{certificate}");
    eprintln!("signed a certificate for node {node}");
    Ok(())
}

/// `palisade cluster install CERT`: takes the certificate signed for this node's request.
pub fn install(config_file: Option<PathBuf>, certificate: &Path) -> anyhow::Result<()> {
    let config = load_config(config_file.as_deref())?;
    let cert_pem = std::fs::read_to_string(certificate)
        .with_context(|| format!("cannot read {}", certificate.display()))?;
    let node = node_id(&config)?;
    let trust = TrustDir::of_data_dir(&config.data_dir);
    let checked = trust.install_signed(node, &cert_pem)?;
    println!(
        "node {node} is a member of cluster {} (certificate expires {}); {}",
        trust.cluster_id()?.as_str(),
        checked.not_after,
        restart_hint(&config)
    );
    Ok(())
}

/// `palisade backup`: the whole cluster's configuration, from this node, as JSON.
pub fn backup(admin: SocketAddr, to: Option<&Path>) -> anyhow::Result<()> {
    let value = call(
        admin,
        "GET",
        "/cluster/backup",
        None,
        Duration::from_secs(60),
    )?;
    let text = format!("{value:#}\n");
    match to {
        Some(file) => {
            let temporary = file.with_extension("palisade-tmp");
            std::fs::write(&temporary, &text)
                .with_context(|| format!("cannot write {}", temporary.display()))?;
            std::fs::rename(&temporary, file)
                .with_context(|| format!("cannot write {}", file.display()))?;
            eprintln!(
                "backup of cluster {} ({} members, {} revisions) written to {}",
                value["cluster"].as_str().unwrap_or("?"),
                value["members"].as_array().map_or(0, Vec::len),
                value["history"].as_array().map_or(0, Vec::len),
                file.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// `palisade restore FILE`: the backup's policy, checked, saved as the cluster's new
/// revision (history only grows; members' node-local settings stay each node's own).
pub fn restore(admin: SocketAddr, file: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let backup: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    anyhow::ensure!(
        backup["format"] == "palisade cluster backup 1",
        "{} is not a palisade cluster backup",
        file.display()
    );
    let policy = &backup["policy"];
    anyhow::ensure!(
        policy.is_object(),
        "{} holds no policy (the cluster had none saved)",
        file.display()
    );
    let bundle = palisade_policy::PolicyBundle {
        document: policy["document"]
            .as_str()
            .context("the backup's policy has no document")?
            .to_owned(),
        lists: lists_of(policy),
    };
    // Checked here before anything is sent: a damaged backup changes nothing.
    let node = palisade_policy::NodeIdentity::default();
    if let Err(errors) = bundle.compile(file, &node) {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        bail!(
            "the backup's policy does not compile; nothing restored:\n{}",
            lines.join("\n")
        );
    }
    let body = serde_json::to_value(palisade_admin::PolicyApply {
        document: bundle.document,
        lists: bundle.lists,
        base: None,
        force: true,
        message: format!(
            "restore of the backup taken on {} at {}",
            backup["taken_on"].as_str().unwrap_or("?"),
            palisade_replication::coordinator::seeds_timestamp(
                backup["taken_ms"].as_u64().unwrap_or(0)
            )
        ),
        saved_by: operator(),
        wait: 0,
        confirm_seconds: 0,
    })?;
    let value = call(
        admin,
        "POST",
        "/policy/apply",
        Some(&body),
        Duration::from_secs(60),
    )?;
    if value["unchanged"].as_bool() == Some(true) {
        println!("unchanged: the cluster's policy is already the backup's");
    } else {
        println!(
            "restored: revision {} holds the backup's policy; pushed to every peer",
            value["revision"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

/// `palisade cluster add HOST:PORT`.
pub fn add(admin: SocketAddr, address: &str) -> anyhow::Result<()> {
    let body = serde_json::json!({ "address": address });
    let value = call(
        admin,
        "POST",
        "/cluster/add",
        Some(&body),
        Duration::from_secs(30),
    )?;
    println!(
        "added node {} ({}) at {}: it adopts the cluster's policy",
        value["name"].as_str().unwrap_or("?"),
        value["added"].as_str().unwrap_or("?"),
        value["address"].as_str().unwrap_or("?"),
    );
    Ok(())
}

/// Reads a password from standard input: one line, without echo at a terminal.
fn read_password(prompt: &str) -> anyhow::Result<String> {
    use std::io::{BufRead, IsTerminal};
    let stdin = std::io::stdin();
    let terminal = stdin.is_terminal();
    let saved = if terminal {
        eprint!("{prompt}");
        let saved = nix::sys::termios::tcgetattr(&stdin).ok();
        if let Some(saved) = &saved {
            let mut quiet = saved.clone();
            quiet
                .local_flags
                .remove(nix::sys::termios::LocalFlags::ECHO);
            let _ =
                nix::sys::termios::tcsetattr(&stdin, nix::sys::termios::SetArg::TCSANOW, &quiet);
        }
        saved
    } else {
        None
    };
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(saved) = saved {
        let _ = nix::sys::termios::tcsetattr(&stdin, nix::sys::termios::SetArg::TCSANOW, &saved);
        eprintln!();
    }
    read.context("cannot read the password")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// `palisade admin add|passwd|remove NAME`.
pub fn admin_change(admin: SocketAddr, op: &str, name: &str) -> anyhow::Result<()> {
    palisade_admin::accounts::check_name(name)?;
    let hash = match op {
        "remove" => None,
        _ => {
            let password = read_password(&format!("password for {name}: "))?;
            Some(palisade_admin::accounts::hash_password(&password)?)
        }
    };
    let body = serde_json::to_value(palisade_admin::AccountChange {
        op: op.to_owned(),
        name: name.to_owned(),
        hash,
        saved_by: operator(),
    })?;
    let value = call(
        admin,
        "POST",
        "/admin/accounts",
        Some(&body),
        Duration::from_secs(30),
    )?;
    println!(
        "account {name}: {op} saved as revision {}; live on every node moments later",
        value["revision"].as_str().unwrap_or("?")
    );
    Ok(())
}

/// `palisade admin list`.
pub fn admin_list(admin: SocketAddr) -> anyhow::Result<()> {
    let value = call(
        admin,
        "GET",
        "/admin/accounts",
        None,
        Duration::from_secs(10),
    )?;
    for account in value["accounts"].as_array().cloned().unwrap_or_default() {
        println!(
            "{}  (changed {})",
            account["name"].as_str().unwrap_or("?"),
            palisade_replication::coordinator::seeds_timestamp(
                account["changed_ms"].as_u64().unwrap_or(0)
            )
        );
    }
    Ok(())
}

/// `palisade cluster rotate-ca [--finish]`.
pub fn rotate_ca(admin: SocketAddr, finish: bool) -> anyhow::Result<()> {
    let body = serde_json::json!({ "finish": finish });
    let value = call(
        admin,
        "POST",
        "/cluster/rotate-ca",
        Some(&body),
        Duration::from_secs(30),
    )?;
    if finish {
        println!(
            "CA rotation finished (trust bundle {}): only the new CA is trusted; members still on an old certificate are refused",
            value["trust_serial"].as_u64().unwrap_or(0)
        );
    } else {
        println!(
            "new CA made and trusted beside the old one (trust bundle {}, {} CAs); this node's certificate is renewed from it. Run `palisade cluster renew` on every member, then `palisade cluster rotate-ca --finish` here",
            value["trust_serial"].as_u64().unwrap_or(0),
            value["trusted_cas"].as_u64().unwrap_or(0)
        );
    }
    Ok(())
}
