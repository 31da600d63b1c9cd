//! A rekindle-restored of the test's own: started in a fresh directory, checked and
//! stopped after the story.

use std::fs;
use std::io::{Read as _, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use super::super::containerd::profile_dir;
use super::super::leaks;
use super::{is_mounted, restored_dir, unmount};

/// A rekindle-restored of our own: `--socket <socket> --store <dir>/store
/// --stage-dir <dir>/stage --config /dev/null`, log in `<dir>/restored.log`.
pub struct RestoreDaemon {
    child: Option<Child>,
    pub handle: Restored,
    dir: PathBuf,
}

/// What a story needs of its daemon; cheap to clone.
#[derive(Clone, Debug)]
pub struct Restored {
    pub socket: PathBuf,
    pub store: PathBuf,
    pub stage: PathBuf,
    pub log: PathBuf,
}

impl RestoreDaemon {
    /// Starts the daemon in a fresh directory under [`restored_dir`], listening on
    /// `socket`, and waits until it answers.
    pub fn start(socket: &Path) -> Result<Self> {
        Self::start_with_config(socket, "")
    }

    /// [`RestoreDaemon::start`] with `config` as its configuration file's text
    /// (restored.toml keys, e.g. `criu_binary`).
    pub fn start_with_config(socket: &Path, config: &str) -> Result<Self> {
        sweep_stale_dirs();
        let binary = profile_dir()?.join("rekindle-restored");
        if !binary.is_file() {
            bail!(
                "{} is missing: run `cargo build --workspace --bins` (same profile)",
                binary.display()
            );
        }
        let parent = restored_dir();
        fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("d-")
            .tempdir_in(&parent)?
            .keep();
        let handle = Restored {
            socket: socket.to_path_buf(),
            store: dir.join("store"),
            stage: dir.join("stage"),
            log: dir.join("restored.log"),
        };
        let _ = fs::remove_file(socket);
        let log = fs::File::create(&handle.log)?;
        let config_path = dir.join("restored.toml");
        fs::write(&config_path, config)?;
        let mut cmd = Command::new(&binary);
        cmd.arg("--socket")
            .arg(socket)
            .arg("--store")
            .arg(&handle.store)
            .arg("--stage-dir")
            .arg(&handle.stage)
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe. The daemon stops (and unmounts its staging
        // tmpfs) if the thread that started it dies without stopping it.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut me = RestoreDaemon {
            child: Some(child),
            handle,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if answers_stats(socket) {
                return Ok(me);
            }
            if let Some(status) = me.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!(
                    "rekindle-restored exited at start-up with {status}:\n{}",
                    me.handle.log_tail(30)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "rekindle-restored did not listen on {} within 20 s:\n{}",
                    socket.display(),
                    me.handle.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What the daemon still holds for finished restores (leases, lease directories,
    /// half-written files), then SIGTERM; returns every problem found, the daemon's own
    /// failure to stop included. Removes the daemon's directory.
    pub fn stop_and_check(mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        match rt.block_on(self.handle.client().stats()) {
            Ok(s) if s.leases > 0 => problems.push(format!(
                "rekindle-restored still holds {} restore lease(s) after the story",
                s.leases
            )),
            Ok(_) => {}
            Err(e) => problems.push(format!("rekindle-restored stats after the story: {e}")),
        }
        let leases = self.handle.stage.join(".leases");
        for e in fs::read_dir(&leases).into_iter().flatten().flatten() {
            problems.push(format!("lease directory left: {}", e.path().display()));
        }
        for dir in [&self.handle.stage, &self.handle.store] {
            for e in fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().starts_with(".tmp") {
                    problems.push(format!("temporary file left: {}", e.path().display()));
                }
            }
        }
        problems.extend(self.stop());
        problems
    }

    /// SIGTERM, wait (10 s, then SIGKILL); the staging tmpfs must be gone afterwards.
    fn stop(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let Some(mut child) = self.child.take() else {
            return problems;
        };
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => break None,
            }
        };
        match status {
            Some(s) if s.success() => {}
            Some(s) => problems.push(format!(
                "rekindle-restored exited with {s} on SIGTERM:\n{}",
                self.handle.log_tail(20)
            )),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                problems.push("rekindle-restored ignored SIGTERM for 10 s".to_string());
            }
        }
        if is_mounted(&self.handle.stage) {
            problems.push(format!(
                "staging tmpfs {} still mounted after the daemon stopped",
                self.handle.stage.display()
            ));
            unmount(&self.handle.stage);
        }
        if self.handle.socket.exists() {
            problems.push(format!(
                "socket {} left after the daemon stopped",
                self.handle.socket.display()
            ));
            let _ = fs::remove_file(&self.handle.socket);
        }
        if std::env::var_os("REKINDLE_IT_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
        problems
    }
}

impl Drop for RestoreDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Restored {
    pub fn client(&self) -> rekindle_restore_api::Client {
        rekindle_restore_api::Client::new(&self.socket)
    }

    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `rekindle image --restored-socket <socket> <args>`: stdout, or an error with
    /// stderr when it exits non-zero.
    pub async fn cli(&self, args: &[&str]) -> Result<String> {
        let binary = profile_dir()?.join("rekindle");
        let out = tokio::process::Command::new(&binary)
            .arg("image")
            .arg("--restored-socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .await
            .with_context(|| format!("running {}", binary.display()))?;
        if !out.status.success() {
            bail!(
                "rekindle image {} exited with {}: {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The stored LZ4 frame of `file` of image `name` (`<store>/<name>/<file>.lz4`).
    pub fn stored_file(&self, name: &str, file: &str) -> PathBuf {
        self.store.join(name).join(format!("{file}.lz4"))
    }
}

/// Whether a daemon answers a `stats` request on `socket` (a bare connect would leave
/// a "malformed request" warning in its log).
fn answers_stats(socket: &Path) -> bool {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut answer = String::new();
    s.write_all(b"{\"v\":1,\"op\":\"stats\"}\n").is_ok()
        && s.shutdown(std::net::Shutdown::Write).is_ok()
        && s.read_to_string(&mut answer).is_ok()
        && answer.starts_with("{\"ok\"")
}

/// Removes the directories of earlier test processes that are gone (their staging
/// tmpfs, if a daemon was killed with them, is unmounted first).
fn sweep_stale_dirs() {
    let Ok(rd) = fs::read_dir("/tmp") else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("rkrd-")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = e.path();
        for m in leaks::mounts() {
            if Path::new(&m.mount_point).starts_with(&dir) {
                unmount(Path::new(&m.mount_point));
            }
        }
        eprintln!(
            "[rekindle-it] removing {} left by an earlier run",
            dir.display()
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
