//! Test-only support for palisade's end-to-end tests: real origins, a DNS server and raw
//! clients on loopback, and palisade nodes as child processes. Traffic goes to 127.0.0.0/8
//! only. (Network namespaces for the multi-host tests come with the HA issues.)

pub mod director_lab;
pub mod dns;
pub mod ha;
pub mod netns;
pub mod node;
pub mod origin;
pub mod soak;
pub mod squid_pair;
pub mod steady_load;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `request` on a fresh connection and reads until the peer closes (or `timeout`).
/// Returns what was read and whether the peer closed within the timeout.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> (Vec<u8>, bool) {
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|error| panic!("connect {addr}: {error}"));
    let _ = stream.write_all(request).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(read)) => got.extend_from_slice(&buf[..read]),
            Err(_) => return (got, false),
        }
    }
}

/// Status code of the first response in `bytes` (0 if none).
pub fn status_of(bytes: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(bytes);
    text.strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// Output of a curl run: status code (from `-w`), body, stderr.
pub struct CurlOutput {
    pub status: u16,
    pub body: Vec<u8>,
    pub stderr: String,
    pub success: bool,
}

/// Runs curl with `args` (plus `-s -w %{http_code}` and a 20 s limit).
pub fn curl(args: &[&str]) -> CurlOutput {
    let output = Command::new("curl")
        .args(["-s", "-S", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run curl (is it installed?): {error}"));
    let mut stdout = output.stdout;
    let split = stdout.iter().rposition(|byte| *byte == b'\n').unwrap_or(0);
    let status = String::from_utf8_lossy(&stdout[split..])
        .trim()
        .parse()
        .unwrap_or(0);
    stdout.truncate(split);
    CurlOutput {
        status,
        body: stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        success: output.status.success(),
    }
}
