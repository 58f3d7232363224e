//! `botvisor serve` as a child process, as systemd runs it.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};

/// A running `botvisor serve`.
pub struct ServeProcess {
    pub child: Child,
    _dir: tempfile::TempDir,
}

impl ServeProcess {
    /// Starts `botvisor serve` with exactly `env` (plus PATH) and an empty settings file;
    /// its log goes to `log` if given.
    pub fn start(env: &HashMap<String, String>, log: Option<&std::path::Path>) -> Self {
        Self::start_args(env, log, &["serve"])
    }

    /// Starts `botvisor ARGS…` (a long-running command such as `panel`) the same way.
    pub fn start_args(
        env: &HashMap<String, String>,
        log: Option<&std::path::Path>,
        args: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let stderr = match log {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap(),
            ),
            None => Stdio::null(),
        };
        let child = super::botvisor_command(env, dir.path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn botvisor");
        Self { child, _dir: dir }
    }

    /// Sends a signal (`TERM`, `KILL`, `HUP`) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit (blocking, on a helper thread) and returns its code.
    pub async fn wait(mut self) -> Option<i32> {
        tokio::task::spawn_blocking(move || {
            let status = self.child.wait().unwrap();
            status.code()
        })
        .await
        .unwrap()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
