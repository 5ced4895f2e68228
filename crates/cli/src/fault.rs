//! Faults a drill injects into this node (`palisade fault`, `POST /fault`): only an operator
//! of the node can ask (loopback or an admin account), as for `palisade drain`.
//!
//! - `crash`: the process is killed (SIGKILL, after the answer is sent): its kernel closes
//!   every socket, the peers see the links drop.
//! - `cut-link`: every VRRP interface drops all traffic in both directions for a while (an
//!   nftables `netdev` table at ingress and egress), as if the node's switch port failed;
//!   removed by the node itself afterwards, and at start if the process died meanwhile.
//! - `stop`: an orderly stop, as on SIGTERM.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

/// The table a cut lives in.
const CUT_TABLE: &str = "palisade_fault_cut";
/// The longest cut a drill may ask for.
pub const CUT_MAX: Duration = Duration::from_secs(600);

/// Drops everything on `interfaces` for `seconds`, then restores them. Returns once the cut
/// is in place.
pub async fn cut_link(interfaces: &[String], seconds: Duration) -> Result<(), String> {
    let mut chains = String::new();
    for (index, interface) in interfaces.iter().enumerate() {
        for hook in ["ingress", "egress"] {
            chains.push_str(&format!(
                "  chain {hook}{index} {{ type filter hook {hook} device \"{interface}\" priority -500; policy drop; }}\n"
            ));
        }
    }
    let script = format!(
        "table netdev {CUT_TABLE} {{}}\ndelete table netdev {CUT_TABLE}\ntable netdev {CUT_TABLE} {{\n{chains}}}\n"
    );
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|error| format!("cannot run nft: {error} (is nftables installed?)"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|error| error.to_string())?;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|error| error.to_string())?;
    if !output.status.success() {
        return Err(format!(
            "nft refused the cut: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    tracing::warn!(interfaces = ?interfaces, seconds = seconds.as_secs_f64(), "fault injected: every VRRP interface drops all traffic");
    tokio::spawn(async move {
        tokio::time::sleep(seconds).await;
        remove_cut();
        tracing::warn!("fault over: the VRRP interfaces carry traffic again");
    });
    Ok(())
}

/// Removes a cut (also at start: a process that died during one left it).
pub fn remove_cut() {
    let _ = std::process::Command::new("nft")
        .args(["delete", "table", "netdev", CUT_TABLE])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Kills this process a moment from now (the admin answer goes out first).
pub fn crash_soon() {
    tracing::warn!("fault injected: this process is killed (SIGKILL) now");
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(100));
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
    });
}

/// Stops this node in order a moment from now, as on SIGTERM.
pub fn stop_soon() {
    tracing::warn!("fault injected: the node stops (as on SIGTERM)");
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(100));
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGTERM);
    });
}
