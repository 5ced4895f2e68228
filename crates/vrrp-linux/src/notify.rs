//! Notify hooks (keepalived's `notify_master` / `notify_backup` / `notify_fault`): run one at
//! a time per group, in the order of the transitions, each with a deadline. Run
//! concurrently, a fast flap (MASTER, BACKUP, MASTER within a second) could finish its hooks
//! out of order and leave a cloud address with the wrong node; a hook that hangs must not
//! hold back the next one either. A hook runs in its own process group, and the whole group
//! is killed at the deadline (a shell script's children too).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

/// One hook to run: the command (through `sh -c`) and keepalived's arguments.
#[derive(Debug)]
struct HookRun {
    command: String,
    state: String,
    priority: u8,
}

/// A group's hook queue; dropping it lets the queued hooks finish, then the runner ends.
pub struct HookRunner {
    queue: mpsc::UnboundedSender<HookRun>,
}

impl HookRunner {
    /// Starts the runner of group `instance` under `tasks`.
    pub fn start(instance: String, timeout: Duration, tasks: &TaskTracker) -> HookRunner {
        let (queue, mut runs) = mpsc::unbounded_channel::<HookRun>();
        tasks.spawn(async move {
            while let Some(run) = runs.recv().await {
                run_one(&instance, run, timeout).await;
            }
        });
        HookRunner { queue }
    }

    /// Queues `command` for a transition to `state` (e.g. "MASTER") at `priority`.
    pub fn run(&self, command: &str, state: &str, priority: u8) {
        let _ = self.queue.send(HookRun {
            command: command.to_owned(),
            state: state.to_owned(),
            priority,
        });
    }
}

async fn run_one(instance: &str, run: HookRun, timeout: Duration) {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&run.command)
        .arg("palisade-notify")
        .arg("INSTANCE")
        .arg(instance)
        .arg(&run.state)
        .arg(run.priority.to_string())
        .process_group(0)
        .kill_on_drop(false)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) => {
            tracing::error!(instance, %error, "cannot run notify hook");
            return;
        }
    };
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if !status.success() => {
            tracing::warn!(instance, state = %run.state, %status, "notify hook failed");
        }
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::warn!(instance, %error, "notify hook lost"),
        Err(_) => {
            if let Some(pid) = child.id() {
                let group = nix::unistd::Pid::from_raw(pid as i32);
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = child.wait().await;
            tracing::warn!(instance, state = %run.state, ?timeout, "notify hook did not finish in time; its process group was killed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn wait_for(what: &str, timeout: Duration, done: impl Fn() -> bool) {
        let deadline = Instant::now() + timeout;
        while !done() {
            assert!(Instant::now() < deadline, "{what} within {timeout:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hooks_run_in_order_one_at_a_time_and_a_hung_one_is_killed() {
        let dir = std::env::temp_dir().join(format!("palisade-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|error| panic!("{error}"));
        let log = dir.join("log");
        let runner = HookRunner::start(
            "VI_1".into(),
            Duration::from_millis(500),
            &TaskTracker::new(),
        );
        // The first hook is slow: run concurrently, the second would log first.
        let slow = format!("sleep 0.3; echo \"$3 $4\" >> {}", log.display());
        let fast = format!("echo \"$3 $4\" >> {}", log.display());
        // A hook that hangs, with a child of its own that would outlive a plain kill.
        let hung = format!("sleep 30 & echo hung-$3 >> {}; wait", log.display());
        runner.run(&slow, "MASTER", 100);
        runner.run(&fast, "BACKUP", 100);
        runner.run(&hung, "FAULT", 0);
        runner.run(&fast, "MASTER", 100);
        let lines = || std::fs::read_to_string(&log).unwrap_or_default();
        wait_for("all four hooks", Duration::from_secs(10), || {
            lines().lines().count() == 4
        });
        assert_eq!(lines(), "MASTER 100\nBACKUP 100\nhung-FAULT\nMASTER 100\n");
        // The hung hook's group is gone, its background `sleep 30` with it.
        let survivors = std::process::Command::new("pgrep")
            .args(["-f", "^sleep 30$"])
            .output()
            .map(|output| output.stdout)
            .unwrap_or_default();
        assert!(
            survivors.is_empty(),
            "left running: {}",
            String::from_utf8_lossy(&survivors)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
