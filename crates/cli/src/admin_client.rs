//! The CLI side of the admin API: `palisade status`, `palisade drain`, `palisade resume` ask
//! a running node over HTTP and print what it says.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

/// One request to the admin API; returns the status code and the JSON body.
pub(crate) fn request(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let mut stream = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(3))
        .with_context(|| format!("cannot reach the admin API at {admin} (is the node running?)"))?;
    stream.set_read_timeout(Some(timeout))?;
    let body = body.map(ToString::to_string);
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n");
    // An admin account, for a node other than this one.
    if let (Ok(user), Ok(password)) = (
        std::env::var("PALISADE_ADMIN_USER"),
        std::env::var("PALISADE_ADMIN_PASSWORD"),
    ) {
        use base64::Engine;
        let credentials =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        head.push_str(&format!("Authorization: Basic {credentials}\r\n"));
    }
    if let Some(body) = &body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if let Some(body) = &body {
        stream.write_all(body.as_bytes())?;
    }
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .with_context(|| format!("no complete answer from the admin API at {admin}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed response from the admin API")?;
    let status_line = head.lines().next().unwrap_or_default();
    let code = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("malformed status line from the admin API: {status_line}"))?;
    let value = serde_json::from_str(body)
        .with_context(|| format!("admin API answered {status_line} without JSON: {body}"))?;
    Ok((code, value))
}

/// `palisade status`: the node's HA groups.
pub fn status(admin: SocketAddr, json: bool) -> anyhow::Result<()> {
    let (code, mut value) = request(admin, "GET", "/status", None, Duration::from_secs(5))?;
    if code != 200 {
        anyhow::bail!("admin API answered {code}: {value}");
    }
    if json {
        // The director's view too (as the text shows it): which members it chooses now.
        if let Ok((200, director)) =
            request(admin, "GET", "/director", None, Duration::from_secs(5))
        {
            value["director"] = director;
        }
        println!("{value:#}");
        return Ok(());
    }
    let node = value["node"].as_str().unwrap_or("?");
    let drained = if value["drained"].as_bool() == Some(true) {
        " (drained: `palisade resume` puts it back in service)"
    } else {
        ""
    };
    let groups = value["groups"].as_array().cloned().unwrap_or_default();
    if groups.is_empty() {
        println!("node {node}{drained}: no HA groups configured");
    } else {
        println!("node {node}{drained}");
    }
    if let Some(id) = value["node_id"].as_str() {
        match value["node_priority"].as_u64() {
            Some(priority) => println!("node id {id}, node priority {priority} (lower wins)"),
            None => println!("node id {id}"),
        }
    }
    let connections = &value["connections"];
    if let Some(open) = connections["open"].as_u64() {
        match connections["cut_in_ms"].as_u64() {
            Some(cut_in) if open > 0 && connections["closing"].as_bool() == Some(true) => println!(
                "connections: {open} open, each closing after its current response; the rest cut in {:.1} s",
                cut_in as f64 / 1000.0
            ),
            _ if connections["closing"].as_bool() == Some(true) => {
                println!("connections: {open} open, each closing after its current response")
            }
            _ => println!("connections: {open} open"),
        }
    }
    if let Some(revision) = value["policy"]["revision"].as_str() {
        println!("policy revision {}", revision.get(..12).unwrap_or(revision));
    }
    if let Some(problem) = value["store"]["error"].as_str() {
        println!("STORE UNUSABLE: {problem}");
    }
    if let Some(peers) = value["peers"].as_array() {
        let up: Vec<String> = peers
            .iter()
            .map(|peer| {
                format!(
                    "{} ({})",
                    peer["name"].as_str().unwrap_or("?"),
                    peer["address"].as_str().unwrap_or("?")
                )
            })
            .collect();
        if up.is_empty() {
            println!("peer links: none up");
        } else {
            println!("peer links up: {}", up.join(", "));
        }
    }
    if groups.is_empty() {
        return Ok(());
    }
    println!(
        "{:<12} {:>4} {:<8} {:<7} {:>4} {:<16} {:>11} {:>9}  VIPs",
        "INSTANCE", "VRID", "IFACE", "STATE", "PRIO", "MASTER", "MASTER PRIO", "ADVERT"
    );
    for group in groups {
        let vips: Vec<&str> = group["vips"]
            .as_array()
            .map(|vips| vips.iter().filter_map(|vip| vip.as_str()).collect())
            .unwrap_or_default();
        let state = if group["drained"].as_bool() == Some(true) {
            "DRAINED"
        } else {
            group["state"].as_str().unwrap_or("?")
        };
        println!(
            "{:<12} {:>4} {:<8} {:<7} {:>4} {:<16} {:>11} {:>7}ms  {}",
            group["name"].as_str().unwrap_or("?"),
            group["vrid"],
            group["interface"].as_str().unwrap_or("?"),
            state,
            group["priority"],
            group["master"].as_str().unwrap_or("-"),
            group["master_priority"]
                .as_u64()
                .map_or("-".to_owned(), |priority| priority.to_string()),
            group["advert_interval_ms"],
            vips.join(" "),
        );
    }
    let (code, director) = request(admin, "GET", "/director", None, Duration::from_secs(5))?;
    if code == 200 {
        print_director(&director);
    }
    Ok(())
}

/// Each group's director view: members, their state and load.
fn print_director(value: &serde_json::Value) {
    for group in value["groups"].as_array().cloned().unwrap_or_default() {
        let role = if group["directing"].as_bool() == Some(true) {
            "this node directs".to_owned()
        } else {
            match group["director"].as_str() {
                Some(name) => format!("{name} directs"),
                None => "another node directs".to_owned(),
            }
        };
        println!("director of VRID {} ({role}):", group["vrid"]);
        if let Some(why) = group["failure"].as_str() {
            if group["fail_open"].as_bool() == Some(true) {
                println!(
                    "  current state: failure (fail-open): no other member is healthy ({why})"
                );
            } else {
                println!("  current state: failure ({why})");
            }
        }
        println!(
            "  {:<16} {:>6} {:>8} {:>7} {:>11} {:>6}  {:<12}  STATE",
            "NODE", "WEIGHT", "RELAYED", "STICKY", "CONNECTIONS", "CPU", "POLICY"
        );
        for member in group["members"].as_array().cloned().unwrap_or_default() {
            println!(
                "  {:<16} {:>6} {:>8} {:>7} {:>11} {:>6}  {:<12}  {}",
                member["name"].as_str().unwrap_or("?"),
                member["weight"],
                member["relayed_connections"],
                member["sticky_clients"],
                member["active_connections"]
                    .as_u64()
                    .map_or("-".to_owned(), |count| count.to_string()),
                member["cpu_permille"]
                    .as_u64()
                    .map_or("-".to_owned(), |permille| format!(
                        "{:.1}%",
                        permille as f64 / 10.0
                    )),
                member["policy_revision"]
                    .as_str()
                    .map_or("-", |revision| &revision[..revision.len().min(12)]),
                member["state"].as_str().unwrap_or("?"),
            );
            if let Some(differ) = member["settings_differ"].as_array() {
                let differ: Vec<&str> = differ.iter().filter_map(|d| d.as_str()).collect();
                println!("    settings differ: {}", differ.join("; "));
            }
        }
    }
}

/// `palisade healthcheck`: asks the deep health check's endpoint.
pub fn healthcheck(addr: SocketAddr) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("cannot reach the deep health check on {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: palisade\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    print!("{body}");
    if !response.starts_with("HTTP/1.1 200") {
        anyhow::bail!("deep health check failing");
    }
    Ok(())
}

/// `palisade monitor [-v]`: the port monitor's last probe. Exits non-zero in failure, so a
/// script can use it as a check.
pub fn monitor(admin: SocketAddr, verbose: bool, json: bool) -> anyhow::Result<()> {
    let (code, value) = request(admin, "GET", "/monitor", None, Duration::from_secs(5))?;
    if code != 200 {
        anyhow::bail!("admin API answered {code}: {value}");
    }
    if json {
        println!("{value:#}");
    }
    if value.is_null() {
        anyhow::bail!("no port monitor: this node is in no HA group");
    }
    let state = value["state"].as_str().unwrap_or("?");
    if !json {
        println!("current state: {state}");
        if verbose {
            for port in value["ports"].as_array().cloned().unwrap_or_default() {
                let required = if port["required"].as_bool() == Some(true) {
                    ""
                } else {
                    " (reported only)"
                };
                println!(
                    "  {} {}: {}{required}",
                    port["kind"].as_str().unwrap_or("?"),
                    port["address"].as_str().unwrap_or("?"),
                    if port["listening"].as_bool() == Some(true) {
                        "listening"
                    } else {
                        "NOT LISTENING"
                    },
                );
            }
        }
    }
    if state != "healthy" {
        anyhow::bail!("current state: failure");
    }
    Ok(())
}

/// `palisade status --client IP`: which node serves that client, and why.
pub fn status_for_client(
    admin: SocketAddr,
    client: std::net::IpAddr,
    json: bool,
) -> anyhow::Result<()> {
    let (code, value) = request(
        admin,
        "GET",
        &format!("/director/{client}"),
        None,
        Duration::from_secs(5),
    )?;
    if code != 200 {
        anyhow::bail!("admin API answered {code}: {value}");
    }
    if json {
        println!("{value:#}");
        return Ok(());
    }
    let groups = value["groups"].as_array().cloned().unwrap_or_default();
    if groups.is_empty() {
        anyhow::bail!("this node has no director (no HA group with peer links)");
    }
    for group in groups {
        let choice = &group["client"];
        println!(
            "VRID {}: client {} is served by {}: {}",
            group["vrid"],
            choice["client"].as_str().unwrap_or("?"),
            choice["served_by"].as_str().unwrap_or("nobody"),
            choice["why"].as_str().unwrap_or("?"),
        );
        if group["directing"].as_bool() != Some(true) {
            println!(
                "  (this node does not hold the VIP now: ask the director for its live counts)"
            );
        }
        println!(
            "  {:<16} {:>10} {:>8} {:>8}  STATE",
            "NODE", "SCORE", "RELAYED", "BOUND"
        );
        for candidate in choice["candidates"].as_array().cloned().unwrap_or_default() {
            println!(
                "  {:<16} {:>10.3} {:>8} {:>8}  {}",
                candidate["name"].as_str().unwrap_or("?"),
                candidate["score"].as_f64().unwrap_or(0.0),
                candidate["relayed_connections"],
                candidate["bound"]
                    .as_u64()
                    .map_or("-".to_owned(), |bound| bound.to_string()),
                candidate["out"].as_str().unwrap_or("in"),
            );
        }
    }
    Ok(())
}

/// `palisade drain`: takes the node out of service, handing every VIP it holds to the next
/// node in line.
pub fn drain(admin: SocketAddr, force: bool, now: bool) -> anyhow::Result<()> {
    let body = serde_json::json!({ "force": force, "now": now });
    let (code, value) = request(
        admin,
        "POST",
        "/drain",
        Some(&body),
        Duration::from_secs(60),
    )?;
    let reason = || {
        value["error"]
            .as_str()
            .unwrap_or("no reason given")
            .to_owned()
    };
    match code {
        200 => {}
        409 => anyhow::bail!("drain refused: {}", reason()),
        _ => anyhow::bail!("drain failed ({code}): {}", reason()),
    }
    println!(
        "node {}: drained (`palisade resume` puts it back in service)",
        value["node"].as_str().unwrap_or("?")
    );
    // A drain that left a VIP in doubt must not look like success to a script.
    let mut doubts = Vec::new();
    for group in value["groups"].as_array().cloned().unwrap_or_default() {
        let name = group["name"].as_str().unwrap_or("?");
        let was = group["was"].as_str().unwrap_or("?");
        if let Some(error) = group["error"].as_str() {
            println!("{name}: {error}");
            doubts.push(format!("{name}: {error}"));
        } else if let Some(to) = group["handed_over_to"].as_str() {
            match group["confirmed_ms"].as_u64() {
                Some(ms) => {
                    println!("{name}: was {was}, handed over to {to} (master there after {ms} ms)")
                }
                None => {
                    println!("{name}: was {was}, handed over to {to}, but no advert from it yet");
                    doubts.push(format!(
                        "{name}: {to} has not announced itself as master; check `palisade status` there"
                    ));
                }
            }
        } else if group["released"].as_bool() == Some(true) {
            println!(
                "{name}: was {was}, VIPs released (priority 0: a backup takes over after Skew_Time)"
            );
        } else {
            println!("{name}: was {was}, out of service");
        }
    }
    if !doubts.is_empty() {
        anyhow::bail!("drained, but: {}", doubts.join("; "));
    }
    Ok(())
}

/// `palisade fault`: a drill's fault, injected into the node behind `admin`.
pub fn fault(admin: SocketAddr, kind: &str, seconds: u64) -> anyhow::Result<()> {
    let body = serde_json::json!({ "kind": kind, "seconds": seconds });
    let (code, value) = request(
        admin,
        "POST",
        "/fault",
        Some(&body),
        Duration::from_secs(10),
    )?;
    if code != 200 {
        anyhow::bail!(
            "fault refused ({code}): {}",
            value["error"].as_str().unwrap_or("no reason given")
        );
    }
    println!(
        "node {}: fault {kind} injected",
        value["node"].as_str().unwrap_or("?")
    );
    Ok(())
}

/// `palisade resume`: puts a drained node back in service.
pub fn resume(admin: SocketAddr) -> anyhow::Result<()> {
    let body = serde_json::json!({});
    let (code, value) = request(
        admin,
        "POST",
        "/resume",
        Some(&body),
        Duration::from_secs(30),
    )?;
    if code != 200 {
        anyhow::bail!(
            "resume failed ({code}): {}",
            value["error"].as_str().unwrap_or("no reason given")
        );
    }
    println!(
        "node {}: back in service",
        value["node"].as_str().unwrap_or("?")
    );
    let mut failed = Vec::new();
    for group in value["groups"].as_array().cloned().unwrap_or_default() {
        let name = group["name"].as_str().unwrap_or("?");
        match group["error"].as_str() {
            Some(error) => {
                println!("{name}: {error}");
                failed.push(format!("{name}: {error}"));
            }
            None => println!("{name}: {}", group["state"].as_str().unwrap_or("?")),
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("resumed, but: {}", failed.join("; "));
    }
    Ok(())
}
