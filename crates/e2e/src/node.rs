//! A palisade node as a child process, with its own data directory and free ports.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A port on 127.0.0.1 where connections are refused, held for as long as the returned
/// socket lives: bound but not listening, so no other test can take it meanwhile.
pub fn closed_port() -> (socket2::Socket, u16) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .unwrap_or_else(|error| panic!("socket: {error}"));
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap_or_else(|error| panic!("bind: {error}"));
    let port = socket
        .local_addr()
        .ok()
        .and_then(|addr| addr.as_socket())
        .map(|addr| addr.port())
        .unwrap_or_else(|| panic!("no local address"));
    (socket, port)
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|error| panic!("temp dir: {error}"));
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct NodeProcess {
    child: Child,
    pub dir: TempDir,
    pub proxy: SocketAddr,
    pub test_port: SocketAddr,
    pub admin: SocketAddr,
    pub policy_path: PathBuf,
}

impl NodeProcess {
    /// Starts `binary run` with a config of free ports plus `extra_config` (TOML appended
    /// to the `[proxy]` table unless it opens its own tables), and `policy` as policy file.
    pub fn start(binary: &str, extra_config: &str, policy: &str) -> NodeProcess {
        NodeProcess::start_with_admin(binary, extra_config, "", policy)
    }

    /// As `start`, with `admin_config` added to the `[admin]` table.
    pub fn start_with_admin(
        binary: &str,
        extra_config: &str,
        admin_config: &str,
        policy: &str,
    ) -> NodeProcess {
        NodeProcess::start_inner(binary, extra_config, admin_config, policy, &[])
    }

    /// As `start`, with `files` (name, bytes) written into the data directory first: a
    /// store or marker left by an earlier run, or a damaged one.
    pub fn start_with_data(binary: &str, policy: &str, files: &[(&str, &[u8])]) -> NodeProcess {
        NodeProcess::start_inner(binary, "", "", policy, files)
    }

    fn start_inner(
        binary: &str,
        extra_config: &str,
        admin_config: &str,
        policy: &str,
        data_files: &[(&str, &[u8])],
    ) -> NodeProcess {
        let dir = TempDir::new("palisade-e2e");
        let data = dir.0.join("data");
        std::fs::create_dir_all(&data).unwrap_or_else(|error| panic!("data dir: {error}"));
        for (name, bytes) in data_files {
            std::fs::write(data.join(name), bytes)
                .unwrap_or_else(|error| panic!("data file {name}: {error}"));
        }
        // Port 0 everywhere: the node binds what the kernel gives and logs it, so parallel
        // tests never race for a port.
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let (proxy, test_port, admin) = (unbound, unbound, unbound);
        let policy_path = dir.0.join("policy.toml");
        std::fs::write(&policy_path, policy).unwrap_or_else(|error| panic!("policy: {error}"));
        let config = format!(
            "[node]\nhostname = \"test-node\"\ndata_dir = {data:?}\n\n[policy]\nfile = {policy:?}\npoll_interval = \"100ms\"\n\n[admin]\nlisten = \"{admin}\"\n{admin_config}\n\n[proxy]\nlisten = [\"{proxy}\"]\ntest_listen = [\"{test_port}\"]\n{extra_config}\n",
            data = dir.0.join("data"),
            policy = policy_path,
        );
        let config_path = dir.0.join("palisade.toml");
        std::fs::write(&config_path, config).unwrap_or_else(|error| panic!("config: {error}"));
        let stderr = std::fs::File::create(dir.0.join("stderr.log"))
            .unwrap_or_else(|error| panic!("stderr log: {error}"));
        let child = Command::new(binary)
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {binary}: {error}"));
        let mut node = NodeProcess {
            child,
            dir,
            proxy,
            test_port,
            admin,
            policy_path,
        };
        node.wait_listening();
        node
    }

    /// Waits for the node to log the addresses it bound (redirect, test and admin port).
    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("palisade exited at start ({status}):\n{}", self.stderr());
            }
            if let (Some(proxy), Some(test_port), Some(admin)) = (
                self.logged_addr(&["Proxy listening", "redirect port"]),
                self.logged_addr(&["Proxy listening", "test port"]),
                self.logged_addr(&["Admin interface listening"]),
            ) {
                (self.proxy, self.test_port, self.admin) = (proxy, test_port, admin);
                return;
            }
            if Instant::now() > deadline {
                panic!("palisade did not listen within 15 s:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `addr=` of the first log line containing every one of `words` (what the node
    /// bound, when it was asked for port 0).
    pub fn logged_addr(&self, words: &[&str]) -> Option<SocketAddr> {
        self.stderr()
            .lines()
            .filter(|line| words.iter().all(|word| line.contains(word)))
            .find_map(|line| {
                let addr = line.split("addr=").nth(1)?.split_whitespace().next()?;
                addr.parse::<SocketAddr>().ok()
            })
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("stderr.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name ("TERM", "HUP", "KILL").
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap_or_else(|error| panic!("kill: {error}"));
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit; `None` if it is still running at the deadline.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The access log records written so far (JSON lines).
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.0.join("data").join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Waits until an access log record satisfies `predicate`.
    pub fn wait_access_log(
        &self,
        predicate: impl Fn(&serde_json::Value) -> bool,
        timeout: Duration,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(record) = self
                .access_log()
                .into_iter()
                .find(|record| predicate(record))
            {
                return record;
            }
            if Instant::now() > deadline {
                panic!(
                    "no matching access log record within {timeout:?}; have:\n{:#?}",
                    self.access_log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the diagnostic log contains `text`.
    pub fn wait_stderr(&self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.stderr().contains(text) {
            if Instant::now() > deadline {
                panic!("{text:?} not logged within {timeout:?}:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The admin API's `/metrics` text.
    pub fn metrics_text(&self) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(self.admin)
            .unwrap_or_else(|error| panic!("connect to admin {}: {error}", self.admin));
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let request = format!(
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.admin
        );
        stream
            .write_all(request.as_bytes())
            .unwrap_or_else(|error| panic!("write to admin: {error}"));
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .unwrap_or_else(|error| panic!("read from admin: {error}"));
        response
    }

    /// The value of one sample of `/metrics`, named with its labels exactly as exposed
    /// (`palisade_active_connections`, `palisade_refused_connections_total{reason="x"}`);
    /// panics if the sample is missing, so a renamed metric fails the test.
    pub fn metric(&self, sample: &str) -> f64 {
        let text = self.metrics_text();
        text.lines()
            .find_map(|line| {
                let value = line.strip_prefix(sample)?.strip_prefix(' ')?;
                value.trim().parse::<f64>().ok()
            })
            .unwrap_or_else(|| panic!("no sample {sample} in /metrics:\n{text}"))
    }

    /// Waits until `condition` holds for the sample's value.
    pub fn wait_metric(&self, sample: &str, condition: impl Fn(f64) -> bool, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.metric(sample);
            if condition(value) {
                return;
            }
            if Instant::now() > deadline {
                panic!("{sample} is {value}, still not as expected after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Resident memory of the process, from /proc.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id())
    }
}

/// Resident memory of process `pid` in KiB (`VmRSS`), 0 if it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
