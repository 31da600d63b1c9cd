//! The runc engine: the OCI lifecycle of a container through the runc CLI.
//!
//! Every runc invocation is spawned through [`ReaperSpawner`]: the shim is a
//! child subreaper that reaps every child itself (containerd learns exit codes
//! from it), so runc's own exit status must come from the reaper, not from
//! tokio's `wait`, which would race it.

use std::{
    io::Read as _,
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
    protos::protobuf::{
        rt::skip_field_for_tag, well_known_types::any::Any, CodedInputStream, Message,
    },
    protos::shim::oci::CheckpointOptions,
};
use runc::{io::Io as _, options::GlobalOpts, Command, Runc, Spawner};
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

/// The type containerd's runc shim takes, and what `ctr` and the agent send.
const RUNC_OPTIONS_TYPE: &str = "containerd.runc.v1.Options";
/// The type containerd's CRI plugin sends for a runtime whose type is not runc
/// (ours): `type_url` = 1, `config_path` = 2, `config_body` = 3. containerd 2.x
/// puts the runtime's `options` table, as TOML, in `config_body`; 1.x fills only
/// `config_path`, and only when the table names a `ConfigPath`.
const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";
/// The `options` keys the shim understands: those of runc's options.
const OPTION_KEYS: &str = "BinaryName, Root, SystemdCgroup, CriuPath, CriuImagePath, \
                           CriuWorkPath, NoPivotRoot, NoNewKeyring, ShimCgroup, IoUid, IoGid";
/// An options file is a few hundred bytes; this bounds a wrong `config_path`.
const MAX_OPTIONS_FILE: u64 = 1 << 20;

/// Why the runtime options of a task were refused.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error(
        "unsupported runtime options type {0:?}: io.containerd.rekindle.v2 takes \
         {RUNC_OPTIONS_TYPE} or {RUNTIME_OPTIONS_TYPE}"
    )]
    UnsupportedType(String),
    #[error("decode runtime options ({type_url}): {reason}")]
    Malformed {
        type_url: &'static str,
        reason: String,
    },
    #[error("runtime options in {origin} are not valid TOML: {reason}")]
    BadToml { origin: String, reason: String },
    #[error(
        "unknown runtime option {key:?} in {origin}: io.containerd.rekindle.v2 takes \
         {OPTION_KEYS}"
    )]
    UnknownKey { key: String, origin: String },
    #[error("runtime option {key} in {origin} must be {expected}, not {found}")]
    WrongType {
        key: &'static str,
        origin: String,
        expected: &'static str,
        found: String,
    },
    #[error("runtime option {key} appears twice in {origin} (as {first:?} and {second:?}; names are case-insensitive)")]
    DuplicateKey {
        key: &'static str,
        origin: String,
        first: String,
        second: String,
    },
    #[error(
        "runtime option CriuPath = {path:?} in {origin} is not supported (containerd 2.x \
         dropped it from runc's options too): the shim runs $REKINDLE_CRIU, else \
         /usr/local/sbin/criu, else criu on PATH"
    )]
    CriuPath { path: String, origin: String },
    #[error("runtime options config_path {0:?} must be an absolute path")]
    RelativeConfigPath(String),
    #[error(
        "read the runtime options file {path} (runtimeoptions.v1.Options config_path): {source}"
    )]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<OptionsError> for Error {
    fn from(e: OptionsError) -> Self {
        match e {
            // The request is fine; the node lacks the file its config names.
            OptionsError::ReadConfig { .. } => Error::FailedPrecondition(e.to_string()),
            _ => Error::InvalidArgument(e.to_string()),
        }
    }
}

/// Decodes the runtime options containerd attaches to a task:
/// `containerd.runc.v1.Options` (ctr, the agent, containerd-client users), or
/// `runtimeoptions.v1.Options` (CRI, for the `rekindle` runtime's `options`
/// table), whose keys are runc's and map to the same options.
pub fn decode_options(any: Option<&Any>) -> Result<Options> {
    let Some(any) = any else {
        return Ok(Options::default());
    };
    if any.type_url.ends_with(RUNTIME_OPTIONS_TYPE) {
        let envelope = RuntimeOptions::decode(&any.value)?;
        return Ok(envelope.resolve()?);
    }
    if any.value.is_empty() {
        return Ok(Options::default());
    }
    if !any.type_url.ends_with(RUNC_OPTIONS_TYPE) {
        return Err(OptionsError::UnsupportedType(any.type_url.clone()).into());
    }
    Options::parse_from_bytes(&any.value)
        .map_err(|e| Error::InvalidArgument(format!("decode runtime options: {e}")))
}

/// `runtimeoptions.v1.Options`, decoded by hand: the protobuf crate the shim
/// uses has no generated type for it, and it is three fields.
#[derive(Debug, Default, PartialEq, Eq)]
struct RuntimeOptions {
    config_path: String,
    config_body: Vec<u8>,
}

impl RuntimeOptions {
    fn decode(bytes: &[u8]) -> std::result::Result<Self, OptionsError> {
        let malformed = |e: containerd_shim::protos::protobuf::Error| OptionsError::Malformed {
            type_url: RUNTIME_OPTIONS_TYPE,
            reason: e.to_string(),
        };
        let mut out = RuntimeOptions::default();
        let mut is = CodedInputStream::from_bytes(bytes);
        while let Some(tag) = is.read_raw_tag_or_eof().map_err(malformed)? {
            let (field, wire) = (tag >> 3, tag & 7);
            // All three fields are length-delimited (wire type 2).
            match (field, wire) {
                (1, 2) => {
                    is.read_string().map_err(malformed)?;
                }
                (2, 2) => out.config_path = is.read_string().map_err(malformed)?,
                (3, 2) => out.config_body = is.read_bytes().map_err(malformed)?,
                (1..=3, _) => {
                    return Err(OptionsError::Malformed {
                        type_url: RUNTIME_OPTIONS_TYPE,
                        reason: format!("field {field} has wire type {wire}, expected 2"),
                    })
                }
                _ => skip_field_for_tag(tag, &mut is).map_err(malformed)?,
            }
        }
        Ok(out)
    }

    /// The options the envelope carries: its body, else the file it names,
    /// else the defaults (containerd 1.x without a `ConfigPath`).
    fn resolve(&self) -> std::result::Result<Options, OptionsError> {
        if !self.config_body.is_empty() {
            let text =
                std::str::from_utf8(&self.config_body).map_err(|e| OptionsError::BadToml {
                    origin: "config_body".into(),
                    reason: format!("not UTF-8: {e}"),
                })?;
            return options_from_toml(text, "config_body", true);
        }
        if self.config_path.is_empty() {
            return Ok(Options::default());
        }
        let path = Path::new(&self.config_path);
        if !path.is_absolute() {
            return Err(OptionsError::RelativeConfigPath(self.config_path.clone()));
        }
        let read = |source| OptionsError::ReadConfig {
            path: path.to_path_buf(),
            source,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(read)?
            .take(MAX_OPTIONS_FILE)
            .read_to_string(&mut text)
            .map_err(read)?;
        options_from_toml(&text, &self.config_path, false)
    }
}

/// runc's options from the TOML of a runtime's `options` table (or of the
/// file it names). Names match case-insensitively, as containerd's own TOML
/// decoding of runc's options does. `envelope_keys`: in `config_body`,
/// containerd also passes the keys it consumed itself (`TypeUrl`, an empty
/// `ConfigPath`); they are not options.
pub fn options_from_toml(
    text: &str,
    origin: &str,
    envelope_keys: bool,
) -> std::result::Result<Options, OptionsError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| OptionsError::BadToml {
            origin: origin.to_string(),
            reason: e.to_string().trim_end().to_string(),
        })?;
    let mut o = Options::default();
    let mut seen: Vec<(&'static str, String)> = Vec::new();
    for (key, value) in &table {
        let lower = key.to_ascii_lowercase();
        if envelope_keys
            && (lower == "typeurl" || (lower == "configpath" && value.as_str() == Some("")))
        {
            continue;
        }
        let name = match lower.as_str() {
            "binaryname" => "BinaryName",
            "root" => "Root",
            "systemdcgroup" => "SystemdCgroup",
            "criupath" => "CriuPath",
            "criuimagepath" => "CriuImagePath",
            "criuworkpath" => "CriuWorkPath",
            "nopivotroot" => "NoPivotRoot",
            "nonewkeyring" => "NoNewKeyring",
            "shimcgroup" => "ShimCgroup",
            "iouid" => "IoUid",
            "iogid" => "IoGid",
            _ => {
                return Err(OptionsError::UnknownKey {
                    key: key.clone(),
                    origin: origin.to_string(),
                })
            }
        };
        if let Some((_, first)) = seen.iter().find(|(n, _)| *n == name) {
            return Err(OptionsError::DuplicateKey {
                key: name,
                origin: origin.to_string(),
                first: first.clone(),
                second: key.clone(),
            });
        }
        seen.push((name, key.clone()));
        let wrong = |expected: &'static str| OptionsError::WrongType {
            key: name,
            origin: origin.to_string(),
            expected,
            found: format!("{} {value}", value.type_str()),
        };
        let string = || {
            value
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| wrong("a string"))
        };
        let boolean = || value.as_bool().ok_or_else(|| wrong("a boolean"));
        let id = || {
            value
                .as_integer()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| wrong("an integer from 0 to 4294967295"))
        };
        match name {
            "BinaryName" => o.binary_name = string()?,
            "Root" => o.root = string()?,
            "SystemdCgroup" => o.systemd_cgroup = boolean()?,
            "CriuPath" => {
                let path = string()?;
                if !path.is_empty() {
                    return Err(OptionsError::CriuPath {
                        path,
                        origin: origin.to_string(),
                    });
                }
            }
            "CriuImagePath" => o.criu_image_path = string()?,
            "CriuWorkPath" => o.criu_work_path = string()?,
            "NoPivotRoot" => o.no_pivot_root = boolean()?,
            "NoNewKeyring" => o.no_new_keyring = boolean()?,
            "ShimCgroup" => o.shim_cgroup = string()?,
            "IoUid" => o.io_uid = id()?,
            "IoGid" => o.io_gid = id()?,
            _ => unreachable!("every name above is handled"),
        }
    }
    Ok(o)
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

/// [`criu_binary`] resolved (a bare name through `PATH`), or why CRIU cannot run
/// here, with the fix: checked before a checkpoint so a node without CRIU gets an
/// error naming it rather than runc's or CRIU's own.
pub fn criu_executable() -> std::result::Result<PathBuf, String> {
    resolve_criu(&criu_binary(), std::env::var_os("PATH").as_deref())
}

fn resolve_criu(
    name: &str,
    path_var: Option<&std::ffi::OsStr>,
) -> std::result::Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let exec = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let found = if name.contains('/') {
        Some(PathBuf::from(name)).filter(|p| exec(p))
    } else {
        path_var.and_then(|path| {
            std::env::split_paths(path)
                .map(|d| d.join(name))
                .find(|p| exec(p))
        })
    };
    found.ok_or_else(|| {
        format!(
            "CRIU is not available: {name} is not an executable file{}: install CRIU 4.2 or \
             later (hack/setup.sh builds it into /usr/local/sbin), or point REKINDLE_CRIU at it \
             in containerd's environment",
            if name.contains('/') { "" } else { " on PATH" }
        )
    })
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
        io: Option<&Arc<crate::stdio::ChildIo>>,
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
        io: Option<&Arc<crate::stdio::ChildIo>>,
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
    use containerd_shim::protos::protobuf::CodedOutputStream;

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

    /// `runtimeoptions.v1.Options` as containerd's CRI encodes it (Go's
    /// protobuf, fields in order, empty ones left out), built with the
    /// protobuf crate's encoder rather than the decoder under test.
    fn runtime_options(type_url: &str, path: &str, body: &str) -> Any {
        let mut value = Vec::new();
        {
            let mut os = CodedOutputStream::vec(&mut value);
            if !type_url.is_empty() {
                os.write_string(1, type_url).unwrap();
            }
            if !path.is_empty() {
                os.write_string(2, path).unwrap();
            }
            if !body.is_empty() {
                os.write_bytes(3, body.as_bytes()).unwrap();
            }
            os.flush().unwrap();
        }
        Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value,
            ..Default::default()
        }
    }

    fn refusal(any: &Any) -> String {
        match decode_options(Some(any)) {
            Err(Error::InvalidArgument(msg)) => msg,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn the_body_containerd_2_sends_for_systemd_cgroup_is_decoded() {
        // The exact bytes of containerd 2.x for `options = { SystemdCgroup = true }`:
        // field 3 (tag 0x1a), 21 bytes of go-toml's rendering of the table.
        let mut value = vec![0x1a, 21];
        value.extend_from_slice(b"SystemdCgroup = true\n");
        let any = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value,
            ..Default::default()
        };
        let o = decode_options(Some(&any)).unwrap();
        assert!(o.systemd_cgroup);
        assert_eq!(
            o,
            Options {
                systemd_cgroup: true,
                ..Default::default()
            }
        );
    }

    #[test]
    fn every_runc_key_in_the_body_maps_to_runcs_options() {
        let body = r#"BinaryName = "/usr/sbin/runc"
CriuImagePath = "/var/lib/criu/img"
CriuPath = ""
CriuWorkPath = "/var/lib/criu/work"
IoGid = 1001
IoUid = 1000
NoNewKeyring = true
NoPivotRoot = true
Root = "/run/rekindle/runc"
ShimCgroup = "/rekindle/shims"
SystemdCgroup = true
"#;
        let got = decode_options(Some(&runtime_options("", "", body))).unwrap();
        let want = Options {
            binary_name: "/usr/sbin/runc".into(),
            criu_image_path: "/var/lib/criu/img".into(),
            criu_work_path: "/var/lib/criu/work".into(),
            io_gid: 1001,
            io_uid: 1000,
            no_new_keyring: true,
            no_pivot_root: true,
            root: "/run/rekindle/runc".into(),
            shim_cgroup: "/rekindle/shims".into(),
            systemd_cgroup: true,
            ..Default::default()
        };
        assert_eq!(got, want);
    }

    #[test]
    fn body_keys_match_case_insensitively_and_envelope_keys_are_skipped() {
        // containerd's TOML decoding of runc's options ignores case; it also
        // leaves the keys it consumed itself in the body.
        let body =
            "systemdcgroup = true\nbinaryName = \"crun\"\nTypeUrl = \"x\"\nConfigPath = \"\"\n";
        let o = decode_options(Some(&runtime_options("", "", body))).unwrap();
        assert!(o.systemd_cgroup);
        assert_eq!(o.binary_name, "crun");

        let twice = runtime_options("", "", "Root = \"/a\"\nroot = \"/b\"\n");
        let msg = refusal(&twice);
        assert!(msg.contains("Root") && msg.contains("twice"), "{msg}");
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let any = runtime_options("", "", "SystemdCgroup = true\nSystemdCgroupz = false\n");
        let msg = refusal(&any);
        assert!(msg.contains("\"SystemdCgroupz\""), "{msg}");
        assert!(
            msg.contains("config_body") && msg.contains("BinaryName"),
            "{msg}"
        );
        assert!(matches!(
            decode_options(Some(&any)).unwrap_err(),
            Error::InvalidArgument(_)
        ));
    }

    #[test]
    fn bad_toml_and_wrong_types_are_refused_clearly() {
        let msg = refusal(&runtime_options("", "", "SystemdCgroup = \n"));
        assert!(
            msg.contains("not valid TOML") && msg.contains("config_body"),
            "{msg}"
        );

        let msg = refusal(&runtime_options("", "", "SystemdCgroup = \"true\"\n"));
        assert!(
            msg.contains("SystemdCgroup")
                && msg.contains("must be a boolean")
                && msg.contains("string"),
            "{msg}"
        );
        let msg = refusal(&runtime_options("", "", "IoUid = -1\n"));
        assert!(
            msg.contains("IoUid") && msg.contains("integer from 0"),
            "{msg}"
        );
        let msg = refusal(&runtime_options("", "", "IoGid = 4294967296\n"));
        assert!(msg.contains("IoGid"), "{msg}");

        let mut invalid_utf8 = runtime_options("", "", "");
        invalid_utf8.value = vec![0x1a, 2, 0xff, 0xfe];
        assert!(refusal(&invalid_utf8).contains("not UTF-8"));
    }

    #[test]
    fn a_missing_criu_is_named_with_the_fix() {
        let e = resolve_criu("/nonexistent/criu", None).unwrap_err();
        assert!(
            e.contains("/nonexistent/criu")
                && e.contains("REKINDLE_CRIU")
                && e.contains("hack/setup.sh"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let e = resolve_criu("criu", Some(dir.path().as_os_str())).unwrap_err();
        assert!(e.contains("criu is not an executable file on PATH"), "{e}");
        // A file that is not executable is not CRIU either; an executable one is found.
        let bin = dir.path().join("criu");
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        assert!(resolve_criu("criu", Some(dir.path().as_os_str())).is_err());
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            resolve_criu("criu", Some(dir.path().as_os_str())).unwrap(),
            bin
        );
        assert_eq!(resolve_criu(bin.to_str().unwrap(), None).unwrap(), bin);
    }

    #[test]
    fn a_criu_path_is_refused_rather_than_silently_ignored() {
        let msg = refusal(&runtime_options("", "", "CriuPath = \"/opt/criu\"\n"));
        assert!(
            msg.contains("/opt/criu") && msg.contains("REKINDLE_CRIU"),
            "{msg}"
        );
    }

    #[test]
    fn config_path_is_read_when_the_body_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rekindle.toml");
        std::fs::write(&file, "Root = \"/run/rk\"\nSystemdCgroup = true\n").unwrap();
        let path = file.to_str().unwrap();

        // containerd 1.x: type_url and config_path, no body.
        let o = decode_options(Some(&runtime_options(
            "runtimeoptions.v1.Options",
            path,
            "",
        )))
        .unwrap();
        assert_eq!(o.root, "/run/rk");
        assert!(o.systemd_cgroup);

        // A body wins over the path (containerd sends a body only without a path).
        let o = decode_options(Some(&runtime_options("", path, "Root = \"/body\"\n"))).unwrap();
        assert_eq!(o.root, "/body");

        // In a file, the envelope's own keys are not options.
        std::fs::write(&file, "TypeUrl = \"x\"\n").unwrap();
        let msg = refusal(&runtime_options("", path, ""));
        assert!(msg.contains("\"TypeUrl\"") && msg.contains(path), "{msg}");

        std::fs::write(&file, "Root = [\n").unwrap();
        let msg = refusal(&runtime_options("", path, ""));
        assert!(
            msg.contains("not valid TOML") && msg.contains(path),
            "{msg}"
        );

        let missing = dir.path().join("missing.toml");
        let err =
            decode_options(Some(&runtime_options("", missing.to_str().unwrap(), ""))).unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
        assert!(err.to_string().contains("missing.toml"), "{err}");

        let msg = refusal(&runtime_options("", "etc/rekindle.toml", ""));
        assert!(msg.contains("absolute"), "{msg}");
    }

    #[test]
    fn an_empty_envelope_means_defaults() {
        // containerd 1.x for an options table without ConfigPath: nothing at all,
        // or only the type URL.
        for any in [
            runtime_options("", "", ""),
            runtime_options("runtimeoptions.v1.Options", "", ""),
        ] {
            assert_eq!(decode_options(Some(&any)).unwrap(), Options::default());
        }
    }

    #[test]
    fn a_malformed_envelope_is_refused() {
        let mut any = runtime_options("", "", "");
        // Field 3 claims 10 bytes, 1 follows.
        any.value = vec![0x1a, 10, b'x'];
        assert!(refusal(&any).contains("runtimeoptions.v1.Options"));
        // Field 2 as a varint instead of a string.
        any.value = vec![0x10, 1];
        assert!(refusal(&any).contains("wire type 0"));
        // Unknown fields are skipped, as protobuf decoders do.
        any.value = vec![0x20, 7, 0x1a, 5];
        any.value.extend_from_slice(b"Root=");
        let msg = refusal(&any);
        assert!(msg.contains("not valid TOML"), "{msg}");
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
