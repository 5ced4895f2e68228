//! The drain tests' load: urllib3 through the VIP at a steady rate, retrying idempotent
//! requests whose connection failed before a response (see `steady_load.py`).

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::netns::LabHost;

const SCRIPT: &str = include_str!("steady_load.py");

/// A load generator running in a lab host.
pub struct SteadyLoad {
    child: Child,
    seconds: f64,
}

/// What the load generator saw.
#[derive(Debug)]
pub struct LoadReport {
    pub ok: u64,
    pub failed: u64,
    /// Requests that succeeded after urllib3 sent them again.
    pub retried: u64,
    pub errors: Vec<String>,
    /// (epoch seconds, the `Via` header) per response.
    pub served: Vec<(f64, String)>,
}

/// What to send.
pub struct Load<'a> {
    /// The proxy's URL (`http://VIP:9090`).
    pub proxy: &'a str,
    pub url: &'a str,
    /// The client address to send from.
    pub source: Ipv4Addr,
    /// Requests a second, over `workers` kept-alive connections, for `seconds`.
    pub rate: u32,
    pub workers: u32,
    pub seconds: u32,
}

impl SteadyLoad {
    /// Starts `load` in `client` (the script is written to `dir`).
    pub fn start(client: &LabHost, dir: &Path, load: &Load<'_>) -> SteadyLoad {
        let script = dir.join("steady_load.py");
        std::fs::write(&script, SCRIPT).unwrap_or_else(|error| panic!("{error}"));
        let child = client
            .command("python3")
            .arg(&script)
            .args([load.proxy, load.url, &load.source.to_string()])
            .args([load.rate, load.seconds, load.workers].map(|number| number.to_string()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| panic!("python3 (with urllib3): {error}"));
        SteadyLoad {
            child,
            seconds: f64::from(load.seconds),
        }
    }

    /// Waits for the load to end (its duration and a margin) and reads its report.
    pub fn finish(mut self) -> LoadReport {
        let deadline = std::time::Instant::now()
            + Duration::from_secs_f64(self.seconds)
            + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the load generator did not finish");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let output = self
            .child
            .wait_with_output()
            .unwrap_or_else(|error| panic!("{error}"));
        let report: serde_json::Value =
            serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
                panic!(
                    "load generator output ({error}): {}\n{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                )
            });
        let count = |key: &str| report[key].as_u64().unwrap_or(0);
        LoadReport {
            ok: count("ok"),
            failed: count("failed"),
            retried: count("retried"),
            errors: (report["errors"].as_array().into_iter().flatten())
                .filter_map(|error| error.as_str().map(str::to_owned))
                .collect(),
            served: (report["served"].as_array().into_iter().flatten())
                .filter_map(|entry| Some((entry[0].as_f64()?, entry[1].as_str()?.to_owned())))
                .collect(),
        }
    }
}

impl LoadReport {
    /// The nodes that served responses received after `from` (epoch seconds), each once,
    /// read from `Via` ("1.1 node2 (palisade)").
    pub fn served_by_after(&self, from: f64) -> Vec<String> {
        let mut nodes: Vec<String> = Vec::new();
        for (at, via) in &self.served {
            let node = via.split_whitespace().nth(1).unwrap_or("?").to_owned();
            if *at >= from && !nodes.contains(&node) {
                nodes.push(node);
            }
        }
        nodes
    }
}

/// Now, in epoch seconds (the load generator's clock).
pub fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs_f64())
        .unwrap_or(0.0)
}
