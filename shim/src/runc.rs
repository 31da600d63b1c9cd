//! The runc engine: the OCI lifecycle of a container through the runc CLI.
//!
//! Every runc invocation is spawned through [`ReaperSpawner`]: the shim is a
//! child subreaper that reaps every child itself (containerd learns exit codes
//! from it), so runc's own exit status must come from the reaper, not from
//! tokio's `wait`, which would race it.

use std::{
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::ExitStatus,
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use containerd_shim::{
    api::Options,
    asynchronous::monitor::{monitor_subscribe, monitor_unsubscribe},
    monitor::{Subject, Topic},
    protos::protobuf::{well_known_types::any::Any, Message},
    protos::shim::oci::CheckpointOptions,
};
use runc::{options::GlobalOpts, Command, Runc, Spawner};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

use crate::error::{Error, Result};

/// Where runc keeps container state when the runtime options name no root,
/// the same default as containerd's runc shim so `runc list` finds them.
pub const DEFAULT_RUNC_ROOT: &str = "/run/containerd/runc";
pub const DEFAULT_RUNC_BINARY: &str = "runc";
/// runc's JSON log in the bundle; its last error line explains a failure.
pub const RUNC_LOG: &str = "log.json";
pub const INIT_PID_FILE: &str = "init.pid";

/// Decodes the runtime options containerd attaches to a task
/// (`containerd.runc.v1.Options`: BinaryName, Root, SystemdCgroup, IoUid...).
pub fn decode_options(any: Option<&Any>) -> Result<Options> {
    let Some(any) = any else {
        return Ok(Options::default());
    };
    if any.value.is_empty() {
        return Ok(Options::default());
    }
    if !any.type_url.ends_with("containerd.runc.v1.Options") {
        return Err(Error::InvalidArgument(format!(
            "unsupported runtime options type {:?}: io.containerd.rekindle.v2 takes containerd.runc.v1.Options",
            any.type_url
        )));
    }
    Options::parse_from_bytes(&any.value)
        .map_err(|e| Error::InvalidArgument(format!("decode runtime options: {e}")))
}

/// Builds the runc driver for one container of `namespace`.
pub fn new_runc(namespace: &str, bundle: &Path, opts: &Options) -> Result<Runc> {
    Ok(new_engine(namespace, bundle, opts)?.0)
}

/// The runc driver (lifecycle) and the CLI for what the runc crate lacks
/// (checkpoint and restore), sharing one configuration.
pub fn new_engine(namespace: &str, bundle: &Path, opts: &Options) -> Result<(Runc, RuncCli)> {
    let binary = if opts.binary_name.is_empty() {
        DEFAULT_RUNC_BINARY
    } else {
        opts.binary_name.as_str()
    };
    let root = if opts.root.is_empty() {
        DEFAULT_RUNC_ROOT
    } else {
        opts.root.as_str()
    };
    if which(binary).is_none() {
        return Err(Error::FailedPrecondition(format!(
            "OCI runtime binary {binary:?} not found in PATH ({}); install runc (apt-get install --no-install-recommends runc) or set BinaryName in the runtime options",
            std::env::var("PATH").unwrap_or_default()
        )));
    }
    let root = Path::new(root).join(namespace);
    let mut g = GlobalOpts::default()
        .command(binary)
        .root(&root)
        .log(bundle.join(RUNC_LOG))
        .log_json()
        .systemd_cgroup(opts.systemd_cgroup);
    g.custom_spawner(Arc::new(ReaperSpawner));
    let runc = g
        .build()
        .map_err(|e| Error::FailedPrecondition(format!("set up runc: {e}")))?;
    let cli = RuncCli {
        binary: binary.to_string(),
        root,
        log: bundle.join(RUNC_LOG),
        systemd_cgroup: opts.systemd_cgroup,
    };
    Ok((runc, cli))
}

/// The CRIU binary runc should use: Rekindle needs CRIU >= 4.2 on this
/// kernel (see the README), which `hack/setup.sh` installs in /usr/local/sbin;
/// `REKINDLE_CRIU` overrides.
pub fn criu_binary() -> String {
    if let Ok(p) = std::env::var("REKINDLE_CRIU") {
        return p;
    }
    if Path::new("/usr/local/sbin/criu").is_file() {
        return "/usr/local/sbin/criu".into();
    }
    "criu".into()
}

/// What `runc checkpoint` is asked to do (containerd.runc.v1.CheckpointOptions).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointSpec {
    pub image_path: PathBuf,
    pub work_path: PathBuf,
    /// Stop the container after the dump instead of leaving it running.
    pub exit: bool,
    pub open_tcp: bool,
    pub external_unix_sockets: bool,
    pub terminal: bool,
    pub file_locks: bool,
    pub empty_namespaces: Vec<String>,
    pub cgroups_mode: String,
}

impl CheckpointSpec {
    /// runc's flags for a checkpoint or a restore of this image.
    pub fn args(&self, restore: bool) -> Vec<String> {
        let mut a = vec![
            "--image-path".to_string(),
            self.image_path.display().to_string(),
            "--work-path".to_string(),
            self.work_path.display().to_string(),
        ];
        if !restore && !self.exit {
            a.push("--leave-running".into());
        }
        for (on, flag) in [
            (self.open_tcp, "--tcp-established"),
            (self.external_unix_sockets, "--ext-unix-sk"),
            (self.terminal, "--shell-job"),
            (self.file_locks, "--file-locks"),
        ] {
            if on {
                a.push(flag.into());
            }
        }
        if !restore {
            for ns in &self.empty_namespaces {
                a.push("--empty-ns".into());
                a.push(ns.clone());
            }
        }
        if !self.cgroups_mode.is_empty() {
            a.push("--manage-cgroups-mode".into());
            a.push(self.cgroups_mode.clone());
        }
        a
    }
}

/// runc invoked directly, for the subcommands the runc crate does not wrap.
#[derive(Debug, Clone)]
pub struct RuncCli {
    pub binary: String,
    pub root: PathBuf,
    pub log: PathBuf,
    pub systemd_cgroup: bool,
}

impl RuncCli {
    fn command(&self, args: &[String]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(&self.log)
            .arg("--log-format")
            .arg("json")
            .arg("--criu")
            .arg(criu_binary());
        if self.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        // A group of its own, so a run past its time limit can be killed with
        // the CRIU it started.
        cmd.process_group(0);
        cmd.args(args)
            .env_remove("NOTIFY_SOCKET")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd
    }

    async fn run(
        &self,
        args: Vec<String>,
        io: Option<&Arc<dyn runc::io::Io>>,
        limit: Duration,
    ) -> runc::Result<()> {
        let mut cmd = self.command(&args);
        if let Some(io) = io {
            io.set(&mut cmd)
                .await
                .map_err(|e| runc::error::Error::IoSet(e.to_string()))?;
        }
        let res = ReaperSpawner.execute_bounded(cmd, Some(limit)).await;
        if let Some(io) = io {
            io.close_after_start().await;
        }
        let (status, _, stdout, stderr) = res?;
        if !status.success() {
            return Err(runc::error::Error::CommandFailed {
                status,
                stdout,
                stderr,
            });
        }
        Ok(())
    }

    /// `runc checkpoint`: CRIU dumps the container into `spec.image_path`.
    pub async fn checkpoint(&self, id: &str, spec: &CheckpointSpec) -> runc::Result<()> {
        let mut args = vec!["checkpoint".to_string()];
        args.extend(spec.args(false));
        args.push(id.to_string());
        self.run(args, None, criu_time_limit(false)).await
    }

    /// `runc restore --detach`: CRIU brings the container back from
    /// `spec.image_path`; its init becomes the shim's child via the reaper.
    #[allow(clippy::too_many_arguments)]
    pub async fn restore(
        &self,
        id: &str,
        bundle: &Path,
        spec: &CheckpointSpec,
        pid_file: &Path,
        io: Option<&Arc<dyn runc::io::Io>>,
        console_socket: Option<&Path>,
        no_pivot: bool,
    ) -> runc::Result<()> {
        let mut args = vec![
            "restore".to_string(),
            "--detach".into(),
            "--bundle".into(),
            bundle.display().to_string(),
            "--pid-file".into(),
            pid_file.display().to_string(),
        ];
        args.extend(spec.args(true));
        if let Some(s) = console_socket {
            args.push("--console-socket".into());
            args.push(s.display().to_string());
        }
        if no_pivot {
            args.push("--no-pivot".into());
        }
        args.push(id.to_string());
        self.run(args, io, criu_time_limit(true)).await
    }
}

fn which(binary: &str) -> Option<PathBuf> {
    if binary.contains('/') {
        return Path::new(binary).is_file().then(|| PathBuf::from(binary));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(binary))
            .find(|p| p.is_file())
    })
}

#[derive(Deserialize)]
struct LogLine {
    level: String,
    msg: String,
}

/// Turns a failed runc call into an error that names runc's own reason, read
/// from the last error line of its JSON log in the bundle.
pub async fn runtime_error(bundle: &Path, err: runc::error::Error, action: &str) -> Error {
    if let runc::error::Error::ProcessSpawnFailed(e) = &err {
        return Error::FailedPrecondition(format!("{action}: cannot start runc: {e}"));
    }
    if err.to_string().contains(TIMED_OUT) {
        // A killed runc's log says nothing about why it was killed.
        return Error::Runtime {
            action: action.to_string(),
            message: err.to_string(),
        };
    }
    let mut message = None;
    if let Ok(file) = tokio::fs::File::open(bundle.join(RUNC_LOG)).await {
        let mut lines = BufReader::new(file).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(l) = serde_json::from_str::<LogLine>(&line) {
                if l.level == "error" {
                    message = Some(l.msg.trim().to_string());
                }
            }
        }
    }
    Error::Runtime {
        action: action.to_string(),
        message: message.unwrap_or_else(|| err.to_string()),
    }
}

/// Decodes containerd's checkpoint options (`containerd.runc.v1.CheckpointOptions`).
pub fn decode_checkpoint_options(any: Option<&Any>) -> Result<CheckpointOptions> {
    match any {
        Some(any) if !any.value.is_empty() => {
            if !any
                .type_url
                .ends_with("containerd.runc.v1.CheckpointOptions")
            {
                return Err(Error::InvalidArgument(format!(
                    "unsupported checkpoint options type {:?}: expected containerd.runc.v1.CheckpointOptions",
                    any.type_url
                )));
            }
            CheckpointOptions::parse_from_bytes(&any.value)
                .map_err(|e| Error::InvalidArgument(format!("decode checkpoint options: {e}")))
        }
        _ => Ok(CheckpointOptions::default()),
    }
}

/// Maps runc's complaint about a kill to what containerd expects: a process
/// that is already gone is `NotFound`.
pub fn kill_error(err: runc::error::Error) -> Error {
    let msg = err.to_string();
    let lower = msg.to_lowercase();
    if lower.contains("process already finished")
        || lower.contains("container not running")
        || lower.contains("no such process")
    {
        Error::NotFound("process already finished".into())
    } else if lower.contains("does not exist") {
        Error::NotFound("no such container".into())
    } else {
        Error::Runtime {
            action: "runc kill".into(),
            message: msg,
        }
    }
}

/// Spawns runc and learns its exit status from the shim's reaper.
#[derive(Debug, Default)]
pub struct ReaperSpawner;

#[async_trait]
impl Spawner for ReaperSpawner {
    async fn execute(&self, cmd: Command) -> runc::Result<(ExitStatus, u32, String, String)> {
        self.execute_bounded(cmd, None).await
    }
}

/// How long a CRIU run through runc may take before the shim gives up on it:
/// a restore from a damaged image can leave CRIU waiting forever.
pub fn criu_time_limit(restore: bool) -> Duration {
    let (var, default_ms) = if restore {
        ("REKINDLE_RESTORE_TIMEOUT_MS", 8_000)
    } else {
        ("REKINDLE_CHECKPOINT_TIMEOUT_MS", 120_000)
    };
    let ms = std::env::var(var)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .unwrap_or(default_ms);
    Duration::from_millis(ms)
}

/// The message of the error a run past its time limit ends with.
pub const TIMED_OUT: &str = "did not finish within its time limit; killed it and its CRIU";

impl ReaperSpawner {
    /// Runs `cmd`, killing its whole process group (runc and the CRIU it
    /// started) when it outlives `limit`. Commands with a limit must be
    /// spawned in a process group of their own.
    pub async fn execute_bounded(
        &self,
        cmd: Command,
        limit: Option<Duration>,
    ) -> runc::Result<(ExitStatus, u32, String, String)> {
        let mut cmd = cmd;
        // Subscribe before spawning: a fast runc can exit before spawn returns.
        let mut sub = monitor_subscribe(Topic::Pid)
            .await
            .map_err(|e| runc::error::Error::Other(Box::new(e)))?;
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                monitor_unsubscribe(sub.id).await.unwrap_or_default();
                return Err(runc::error::Error::ProcessSpawnFailed(e));
            }
        };
        let pid = child.id().unwrap_or_default();
        let mut timed_out = false;
        let wait = async {
            let exit = async {
                while let Some(ev) = sub.rx.recv().await {
                    if let Subject::Pid(p) = ev.subject {
                        if p as u32 == pid {
                            return ev.exit_code;
                        }
                    }
                }
                -1
            };
            tokio::pin!(exit);
            if let Some(limit) = limit {
                if let Ok(code) = tokio::time::timeout(limit, &mut exit).await {
                    return code;
                }
                timed_out = true;
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            exit.await
        };
        let (stdout, stderr, code) = tokio::join!(
            read_all(child.stdout.take()),
            read_all(child.stderr.take()),
            wait
        );
        monitor_unsubscribe(sub.id).await.unwrap_or_default();
        if timed_out {
            return Err(runc::error::Error::Other(Box::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("runc {TIMED_OUT} after {:?}", limit.unwrap_or_default()),
            ))));
        }
        // The reaper reports an exit code; ExitStatus wants a wait(2) status.
        Ok((ExitStatus::from_raw(code << 8), pid, stdout, stderr))
    }
}

async fn read_all<R: AsyncRead + Unpin>(r: Option<R>) -> String {
    let mut out = String::new();
    if let Some(mut r) = r {
        let _ = r.read_to_string(&mut out).await;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_options_mean_defaults() {
        let o = decode_options(None).unwrap();
        assert!(o.binary_name.is_empty() && o.root.is_empty());
    }

    #[test]
    fn runc_options_are_decoded_and_others_rejected() {
        let opts = Options {
            binary_name: "/usr/sbin/runc".into(),
            root: "/tmp/runc-root".into(),
            ..Default::default()
        };
        let any = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: opts.write_to_bytes().unwrap(),
            ..Default::default()
        };
        let got = decode_options(Some(&any)).unwrap();
        assert_eq!(got.binary_name, "/usr/sbin/runc");
        assert_eq!(got.root, "/tmp/runc-root");

        let other = Any {
            type_url: "io.containerd.runhcs.v1.Options".into(),
            value: vec![1, 2, 3],
            ..Default::default()
        };
        assert!(matches!(
            decode_options(Some(&other)),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn a_missing_runc_binary_is_named_with_its_fix() {
        let opts = Options {
            binary_name: "runc-that-does-not-exist".into(),
            ..Default::default()
        };
        let err = new_runc("default", Path::new("/tmp"), &opts).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::FailedPrecondition(_)));
        assert!(msg.contains("runc-that-does-not-exist") && msg.contains("BinaryName"));
    }

    #[tokio::test]
    async fn runtime_errors_quote_runcs_last_error_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(RUNC_LOG),
            "{\"level\":\"info\",\"msg\":\"starting\"}\n{\"level\":\"error\",\"msg\":\"exec: \\\"/nope\\\": no such file\"}\n",
        )
        .unwrap();
        let err = runtime_error(
            dir.path(),
            runc::error::Error::Other(Box::new(std::io::Error::other("x"))),
            "runc create",
        )
        .await;
        assert_eq!(
            err.to_string(),
            "runc create failed: exec: \"/nope\": no such file"
        );
    }

    #[test]
    fn kill_of_a_finished_process_is_not_found() {
        let e = kill_error(runc::error::Error::Other(Box::new(std::io::Error::other(
            "container not running",
        ))));
        assert!(matches!(e, Error::NotFound(_)));
    }
}
