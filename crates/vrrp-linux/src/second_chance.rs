//! The second chance of a director's drain (issue 12 §2): the director hands its VIPs over
//! but keeps serving the connections it has until they end. Once the VIP has moved, their
//! clients' packets reach the new director, whose kernel would reset them; so for the drain:
//!
//! - the new director ([`Forwarding`]) sends on every packet to a VIP's redirect port that
//!   belongs to no connection it saw start (no SYN seen here) to the old director, unchanged
//!   (nftables `dup to <old director> device <interface>` then `drop`: the packet leaves at
//!   layer 2 for the old director's MAC). Its own connections are remembered by their SYN in
//!   a set that lives as long as the table. This is GLB's and Katran's "second chance",
//!   without a connection list to keep in step: nothing is missed between the last list and
//!   the move.
//! - the old director ([`Receiving`]) marks packets to the VIP that arrive after its address
//!   is gone and routes them locally (policy routing, as TPROXY does), so each reaches its
//!   socket; the sockets it accepted as director are `IP_TRANSPARENT` (set at accept) so
//!   their replies may still come from the VIP.
//!
//! Both are nftables tables and (old director) one `ip rule`, made with the `nft` and `ip`
//! tools (iproute2's `ip` for the rule, as for the rest of the node's routing), removed when
//! the drain ends and at start (a crashed drain leaves nothing behind for long).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::AsyncWriteExt;

/// The packet mark and routing table of the old director's local delivery ("pal").
pub const MARK: u32 = 0x0070_616c;
pub const ROUTE_TABLE: u32 = 2701;
const RULE_PRIORITY: u32 = 2701;
/// The new director's own connections remembered at most (beyond it, a new connection's
/// packets go to the old director, which serves it: it still listens).
const OWN_CONNECTIONS_MAX: u32 = 1_048_576;
/// Every table this module makes starts with this.
const TABLE_PREFIX: &str = "palisade_second_chance";

#[derive(Debug, thiserror::Error)]
pub enum SecondChanceError {
    #[error("cannot run {tool}: {error} (is {package} installed?)")]
    Spawn {
        tool: &'static str,
        package: &'static str,
        error: std::io::Error,
    },
    #[error("{tool} refused the second chance's rules: {stderr}")]
    Refused { tool: &'static str, stderr: String },
    #[error("no VIP of the group is of the old director's address family ({0})")]
    NoVip(IpAddr),
}

/// The nftables family of an address's table.
fn family(address: &IpAddr) -> &'static str {
    match address {
        IpAddr::V4(_) => "ip",
        IpAddr::V6(_) => "ip6",
    }
}

/// `{ a, b }` for nft.
fn set_of<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let items: Vec<String> = items.into_iter().map(|item| item.to_string()).collect();
    format!("{{ {} }}", items.join(", "))
}

async fn run(
    tool: &'static str,
    package: &'static str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<(), SecondChanceError> {
    let mut command = tokio::process::Command::new(tool);
    command
        .args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let spawn = |error| SecondChanceError::Spawn {
        tool,
        package,
        error,
    };
    let mut child = command.spawn().map_err(spawn)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await.map_err(spawn)?;
    }
    let output = child.wait_with_output().await.map_err(spawn)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(SecondChanceError::Refused {
            tool,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

async fn nft(script: &str) -> Result<(), SecondChanceError> {
    run("nft", "nftables", &["-f", "-"], Some(script)).await
}

/// Deletes tables, ignoring those already gone (blocking: also runs from `Drop`).
fn delete_tables(tables: &[(&'static str, String)]) {
    for (family, name) in tables {
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", family, name])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// The new director's side: packets of connections it did not see start go to the old
/// director while this lives.
pub struct Forwarding {
    tables: Vec<(&'static str, String)>,
}

impl Forwarding {
    /// Forwards, on `interface`, packets to `vips`' `ports` of connections this node did not
    /// see start, to `old_director` (its address on that network).
    pub async fn install(
        vrid: u8,
        old_director: IpAddr,
        interface: &str,
        vips: &[IpAddr],
        ports: &[u16],
    ) -> Result<Forwarding, SecondChanceError> {
        let family = family(&old_director);
        let vips: Vec<&IpAddr> = (vips.iter())
            .filter(|vip| vip.is_ipv4() == old_director.is_ipv4())
            .collect();
        if vips.is_empty() || ports.is_empty() {
            return Err(SecondChanceError::NoVip(old_director));
        }
        let name = format!("{TABLE_PREFIX}_forward_{vrid}");
        let address = if old_director.is_ipv4() {
            "ipv4_addr"
        } else {
            "ipv6_addr"
        };
        let matched = format!(
            "{family} daddr {} tcp dport {}",
            set_of(&vips),
            set_of(ports)
        );
        let key = format!("{family} saddr . tcp sport . {family} daddr . tcp dport");
        let mut script = String::new();
        // Deleted first if a crashed drain left it (a fresh set, the current old director).
        let _ = writeln!(
            script,
            "table {family} {name} {{}}\ndelete table {family} {name}"
        );
        let _ = writeln!(
            script,
            "table {family} {name} {{
  set own {{ type {address} . inet_service . {address} . inet_service; flags dynamic; size {OWN_CONNECTIONS_MAX}; }}
  chain prerouting {{
    type filter hook prerouting priority raw; policy accept;
    {matched} tcp flags & (syn | ack) == syn add @own {{ {key} }} accept
    {matched} {key} @own accept
    {matched} dup to {old_director} device \"{interface}\" drop
  }}
}}"
        );
        nft(&script).await?;
        Ok(Forwarding {
            tables: vec![(family, name)],
        })
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        delete_tables(&self.tables);
    }
}

/// How many [`Receiving`]s share the policy-routing rule.
static RECEIVING: AtomicUsize = AtomicUsize::new(0);

/// The old director's side: packets to its former VIPs reach its sockets while this lives.
pub struct Receiving {
    tables: Vec<(&'static str, String)>,
}

impl Receiving {
    /// Delivers packets to `vips`' `ports` locally, also once the addresses are gone.
    pub async fn install(
        vrid: u8,
        vips: &[IpAddr],
        ports: &[u16],
    ) -> Result<Receiving, SecondChanceError> {
        let name = format!("{TABLE_PREFIX}_receive_{vrid}");
        let mut rules = String::new();
        for (family, wanted) in [("ip", true), ("ip6", false)] {
            let vips: Vec<&IpAddr> = (vips.iter())
                .filter(|vip| vip.is_ipv4() == wanted)
                .collect();
            if !vips.is_empty() && !ports.is_empty() {
                let _ = writeln!(
                    rules,
                    "    {family} daddr {} tcp dport {} meta mark set {MARK:#x}",
                    set_of(&vips),
                    set_of(ports)
                );
            }
        }
        let script = format!(
            "table inet {name} {{}}\ndelete table inet {name}\ntable inet {name} {{\n  chain prerouting {{\n    type filter hook prerouting priority mangle; policy accept;\n{rules}  }}\n}}\n"
        );
        if RECEIVING.fetch_add(1, Ordering::SeqCst) == 0 {
            add_local_route().await.inspect_err(|_| {
                RECEIVING.fetch_sub(1, Ordering::SeqCst);
            })?;
        }
        let receiving = Receiving {
            tables: vec![("inet", name)],
        };
        nft(&script).await?;
        Ok(receiving)
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        delete_tables(&self.tables);
        if RECEIVING.fetch_sub(1, Ordering::SeqCst) == 1 {
            delete_local_route();
        }
    }
}

/// Marked packets are routed locally: `ip rule add fwmark MARK lookup TABLE` and
/// `ip route replace local default dev lo table TABLE`, for both families.
async fn add_local_route() -> Result<(), SecondChanceError> {
    delete_local_route();
    let (mark, table, priority) = (
        format!("{MARK:#x}"),
        ROUTE_TABLE.to_string(),
        RULE_PRIORITY.to_string(),
    );
    for version in ["-4", "-6"] {
        let rule = [
            version, "rule", "add", "fwmark", &mark, "lookup", &table, "priority", &priority,
        ];
        let route = [
            version, "route", "replace", "local", "default", "dev", "lo", "table", &table,
        ];
        let added = match run("ip", "iproute2", &rule, None).await {
            Ok(()) => run("ip", "iproute2", &route, None).await,
            Err(error) => Err(error),
        };
        match added {
            Ok(()) => {}
            // A host without IPv6 has IPv4 VIPs only.
            Err(error) if version == "-6" => {
                tracing::debug!(%error, "no IPv6 local delivery for a drain's second chance")
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Removes the rule and the route (blocking: also runs from `Drop`; absent ones ignored).
fn delete_local_route() {
    let table = ROUTE_TABLE.to_string();
    let mark = format!("{MARK:#x}");
    let priority = RULE_PRIORITY.to_string();
    for version in ["-4", "-6"] {
        for args in [
            vec![
                version, "rule", "del", "fwmark", &mark, "lookup", &table, "priority", &priority,
            ],
            vec![version, "route", "flush", "table", &table],
        ] {
            let _ = std::process::Command::new("ip")
                .args(&args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// At start: removes what a drain of an earlier process left (it crashed mid-drain).
pub fn clear_stale() {
    let Ok(output) = std::process::Command::new("nft")
        .args(["list", "tables"])
        .stderr(std::process::Stdio::null())
        .output()
    else {
        return;
    };
    let listed = String::from_utf8_lossy(&output.stdout).into_owned();
    let stale: Vec<(&'static str, String)> = listed
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace().skip(1);
            let family = match words.next()? {
                "ip" => "ip",
                "ip6" => "ip6",
                "inet" => "inet",
                _ => return None,
            };
            let name = words.next()?;
            name.starts_with(TABLE_PREFIX)
                .then(|| (family, name.to_owned()))
        })
        .collect();
    if !stale.is_empty() {
        tracing::warn!(tables = ?stale, "removing a drain's second-chance rules left by an earlier process");
        delete_tables(&stale);
    }
    if RECEIVING.load(Ordering::SeqCst) == 0 {
        delete_local_route();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_sets_list_every_item() {
        assert_eq!(set_of([9090, 3128]), "{ 9090, 3128 }");
        let vip: IpAddr = "10.0.0.100"
            .parse()
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        assert_eq!(set_of([&vip]), "{ 10.0.0.100 }");
        assert_eq!(family(&vip), "ip");
    }
}
