//! Restores: a private `rekindle-restored` per story, function containers made the way
//! restores need them, containerd's checkpoint calls, and HTTP into a container's own
//! network namespace. Used by `checkpoint_restore.rs` and by `benches/restore.rs`.
//!
//! - [`restore_story`] runs a story with a fresh rekindle-restored (temp store and
//!   staging area) on [`restored_socket`], and checks after the story that the daemon
//!   holds no restore lease, no lease directory and no half-written file, and that it
//!   stops cleanly (staging tmpfs unmounted). [`restore_story_daemon_down`] runs one with
//!   nothing listening there. These stories take turns, one at a time per test binary,
//!   because they share that socket path: containerd hands its environment to the shims
//!   it starts, and the shared containerd starts once, so `REKINDLE_RESTORED_SOCKET` is
//!   the same for the whole process. It is put into this process's environment before
//!   `main` (see [`EXPORT_RESTORED_SOCKET`]), so the containerd that the first test
//!   starts inherits it.
//! - [`FunctionSpec`] / [`Function`]: the reference function in a container of its own
//!   making — annotations (`io.rekindle.*`), a network namespace of its own (so several
//!   instances restored from one image can all listen on the port they had), an explicit
//!   runtime, a checkpoint to restore from — and the task calls the stories use on it.
//! - [`NetNs`]: that network namespace is made by the test before the container, as a
//!   pod's is made before its containers (CNI), and named in the spec by path: runc then
//!   checkpoints it as external (`--external net[..]:extRootNetNS`) and restores the
//!   process into the namespace the new container names. (A namespace runc creates
//!   itself does not survive a checkpoint here: runc 1.1.5 + CRIU 4.2.1 write no
//!   `netns`/`netdev`/`ifaddr` image for it, and the restored process finds its loopback
//!   down — "Network is unreachable".)
//! - [`checkpoint`]: `Tasks.Checkpoint` as containerd's Go client makes it (pause, dump,
//!   resume), under a containerd lease that keeps the checkpoint's content.
//! - [`fixture_image`]: the reference function checkpointed once per test binary (3
//!   requests answered), kept as an exported archive and imported into each story's
//!   daemon.

use std::collections::HashMap;
use std::fs;
use std::future::Future;
use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::{
    snapshots_client::SnapshotsClient, PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use containerd_client::services::v1::{
    container::Runtime, CheckpointTaskRequest, Container, CreateContainerRequest,
    CreateTaskRequest, DeleteContainerRequest, DeleteProcessRequest, DeleteTaskRequest,
    ExecProcessRequest, GetRequest, KillRequest, ListPidsRequest, MetricsRequest, PauseTaskRequest,
    PublishRequest, ReadContentRequest, ResumeTaskRequest, StartRequest, SubscribeRequest,
    WaitRequest, WriteAction, WriteContentRequest,
};
use containerd_client::tonic::Request;
use containerd_client::types::v1::{Process, ProcessInfo, Status};
use containerd_client::types::{Descriptor, Envelope, Metric};
use oci_spec::runtime::{LinuxNamespaceBuilder, LinuxNamespaceType, Spec};
use prost::Message as _;
use prost_types::Any;
use sha2::Digest as _;

use super::client::bounded;
use super::containerd::profile_dir;
use super::stdio::Capture;
use super::{secs, try_story, Ctx, IMAGE, NAMESPACE, RPC_TIMEOUT, SNAPSHOTTER};

/// What the shim reads to find rekindle-restored.
pub const RESTORED_SOCKET_ENV: &str = "REKINDLE_RESTORED_SOCKET";
/// The shim's annotations (shim/src/annotations.rs).
pub const IMAGE_ANNOTATION: &str = "io.rekindle.image";
pub const FALLBACK_ANNOTATION: &str = "io.rekindle.fallback";
pub const STORE_AS_ANNOTATION: &str = "io.rekindle.checkpoint.store-as";

/// containerd's checkpoint media types (`images.MediaTypeContainerd1Checkpoint*`).
pub const CHECKPOINT_MEDIA_TYPE: &str =
    "application/vnd.containerd.container.criu.checkpoint.criu.tar";
pub const CHECKPOINT_CONFIG_MEDIA_TYPE: &str =
    "application/vnd.containerd.container.checkpoint.config.v1+proto";

const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const PROCESS_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
const RUNC_OPTIONS_TYPE: &str = "containerd.runc.v1.Options";
/// The options type containerd 2 accepts in `Tasks.Checkpoint` for every runtime
/// (`getCheckpointPath` refuses any other); containerd 1.6 passes whatever it gets to a
/// runtime it does not know. Our shim decodes this one.
pub const CHECKPOINT_OPTIONS_TYPE: &str = "containerd.runc.v1.CheckpointOptions";

/// Port of the function in a network namespace of its own (any port would do: nothing
/// else listens there).
pub const NETNS_PORT: u16 = 8080;
/// Requests the fixture function answered before its checkpoint: a restore of it
/// answers its first request with `FIXTURE_COUNT + 1`.
pub const FIXTURE_COUNT: u64 = 3;
/// MB of state the fixture function builds (`STATE_MB`; the reference function's
/// default is 60). Smaller, because the tests run the debug build of rekindle-restored,
/// which hashes and compresses at a few tens of MB/s: every store, import and unstaged
/// restore of the fixture pays for its size.
pub const FIXTURE_STATE_MB: u64 = 16;

// ---------------------------------------------------------------------------------
// The daemon's socket, in the environment before main
// ---------------------------------------------------------------------------------

/// `/tmp/rkrd-<pid>`: this process's daemon directories, its socket and the fixture.
pub fn restored_dir() -> PathBuf {
    PathBuf::from(format!("/tmp/rkrd-{}", std::process::id()))
}

/// Where this process's rekindle-restored listens (the shims' `REKINDLE_RESTORED_SOCKET`).
pub fn restored_socket() -> PathBuf {
    restored_dir().join("restored.sock")
}

/// Runs before `main` (an ELF `.init_array` entry, single-threaded): exports
/// `REKINDLE_RESTORED_SOCKET=<restored_socket()>`, so every containerd this process
/// starts — and every shim those start — finds the test's daemon and never the node's.
/// The harness starts containerd with the test process's environment (only PATH is
/// set explicitly), and whichever test runs first starts it: there is no later moment
/// to set it. (One `.env(RESTORED_SOCKET_ENV, ..)` in `PrivateContainerd::start` would
/// make this unnecessary.)
#[used]
#[link_section = ".init_array"]
pub static EXPORT_RESTORED_SOCKET: extern "C" fn() = export_restored_socket;

extern "C" fn export_restored_socket() {
    std::env::set_var(RESTORED_SOCKET_ENV, restored_socket());
}

// ---------------------------------------------------------------------------------
// rekindle-restored
// ---------------------------------------------------------------------------------

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
        let mut cmd = Command::new(&binary);
        cmd.arg("--socket")
            .arg(socket)
            .arg("--store")
            .arg(&handle.store)
            .arg("--stage-dir")
            .arg(&handle.stage)
            .arg("--config")
            .arg("/dev/null")
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

/// Stories that use the daemon's socket run one at a time.
static TURN: Mutex<()> = Mutex::new(());

/// Runs a story with a fresh rekindle-restored; fails it if the daemon kept anything of
/// the story's restores or did not stop cleanly.
pub fn restore_story<F, Fut>(name: &str, body: F)
where
    F: FnOnce(Ctx, Restored) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let _turn = TURN.lock().unwrap_or_else(PoisonError::into_inner);
    let daemon = RestoreDaemon::start(&restored_socket())
        .unwrap_or_else(|e| panic!("{name}: starting rekindle-restored: {e:#}"));
    let handle = daemon.handle.clone();
    let outcome = try_story(name, move |ctx| body(ctx, handle));
    let log = daemon.handle.log_tail(40);
    let left = daemon.stop_and_check();
    let mut report = Vec::new();
    if let Err(r) = outcome {
        report.push(r);
    }
    if !left.is_empty() {
        report.push(format!(
            "LEAK: {name}: rekindle-restored after the story:\n  {}",
            left.join("\n  ")
        ));
    }
    if !report.is_empty() {
        panic!(
            "{}\n\n--- rekindle-restored log (last 40 lines) ---\n{log}",
            report.join("\n\n")
        );
    }
}

/// Runs a story while no rekindle-restored listens on [`restored_socket`].
pub fn restore_story_daemon_down<F, Fut>(name: &str, body: F)
where
    F: FnOnce(Ctx, PathBuf) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let _turn = TURN.lock().unwrap_or_else(PoisonError::into_inner);
    let socket = restored_socket();
    let _ = fs::remove_file(&socket);
    if let Err(report) = try_story(name, move |ctx| body(ctx, socket)) {
        panic!("{report}");
    }
}

/// The stories that need rekindle's restore paths, when another runtime is under test:
/// a message saying so (the caller returns early), else `None`.
pub fn needs_rekindle(ctx: &Ctx, story: &str) -> Option<String> {
    (ctx.runtime() != super::REKINDLE_RUNTIME).then(|| {
        format!(
            "[rekindle-it] {story}: skipped, it needs {} (runtime under test: {})",
            super::REKINDLE_RUNTIME,
            ctx.runtime()
        )
    })
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
        for m in super::leaks::mounts() {
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

fn is_mounted(path: &Path) -> bool {
    super::leaks::mounts()
        .iter()
        .any(|m| Path::new(&m.mount_point) == path)
}

fn unmount(path: &Path) {
    if let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) {
        // SAFETY: valid NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

// ---------------------------------------------------------------------------------
// Function containers
// ---------------------------------------------------------------------------------

/// `containerd.runc.v1.Options`, reduced to the runc root (as the harness sets it).
#[derive(Clone, PartialEq, prost::Message)]
struct RuncOptions {
    #[prost(string, tag = "7")]
    root: String,
}

/// `containerd.runc.v1.CheckpointOptions` (containerd's `runc/options/oci.proto`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckpointOptions {
    #[prost(bool, tag = "1")]
    pub exit: bool,
    #[prost(bool, tag = "2")]
    pub open_tcp: bool,
    #[prost(bool, tag = "3")]
    pub external_unix_sockets: bool,
    #[prost(bool, tag = "4")]
    pub terminal: bool,
    #[prost(bool, tag = "5")]
    pub file_locks: bool,
    #[prost(string, repeated, tag = "6")]
    pub empty_namespaces: Vec<String>,
    #[prost(string, tag = "7")]
    pub cgroups_mode: String,
    #[prost(string, tag = "8")]
    pub image_path: String,
    #[prost(string, tag = "9")]
    pub work_path: String,
}

/// How to make a function container.
#[derive(Clone, Debug)]
pub struct FunctionSpec {
    tag: String,
    id: Option<String>,
    runtime: Option<String>,
    port: Option<u16>,
    own_netns: bool,
    annotations: HashMap<String, String>,
    env: Vec<String>,
    checkpoint: Option<Descriptor>,
    spec: Option<Spec>,
}

impl FunctionSpec {
    /// The reference function, host network, a free port, the runtime under test.
    pub fn new(tag: &str) -> Self {
        FunctionSpec {
            tag: tag.to_string(),
            id: None,
            runtime: None,
            port: None,
            own_netns: false,
            annotations: HashMap::new(),
            env: Vec::new(),
            checkpoint: None,
            spec: None,
        }
    }

    /// In a network namespace of its own ([`NetNs`]), listening on [`NETNS_PORT`] there.
    pub fn own_netns(mut self) -> Self {
        self.own_netns = true;
        self
    }

    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// A runtime other than the one under test (the bench runs runc.v2 and Rekindle).
    #[allow(dead_code)]
    pub fn runtime(mut self, runtime: &str) -> Self {
        self.runtime = Some(runtime.to_string());
        self
    }

    /// Reuses a container id (as `ctr container restore` does: the checkpointed
    /// container's). The id must be under the harness' cleanup already.
    pub fn id(mut self, id: &str) -> Self {
        self.id = Some(id.to_string());
        self
    }

    /// An environment variable added to the image's (`KEY=value`).
    pub fn env(mut self, var: &str) -> Self {
        self.env.push(var.to_string());
        self
    }

    pub fn annotate(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_string(), value.to_string());
        self
    }

    /// `Tasks.Create` with this checkpoint (a restore, as `ctr container restore`).
    pub fn restore_from(mut self, checkpoint: &Descriptor) -> Self {
        self.checkpoint = Some(checkpoint.clone());
        self
    }

    /// The container's OCI spec as given (e.g. the one a checkpoint recorded), instead
    /// of one made here; annotations are still added to it.
    pub fn with_spec(mut self, spec: Spec) -> Self {
        self.spec = Some(spec);
        self
    }

    /// Everything short of asking containerd: the spec, the FIFOs. Then
    /// [`PreparedFunction::create`] makes the container and its task.
    pub async fn prepare(self, ctx: &Ctx) -> Result<PreparedFunction> {
        let image = ctx.image().await?;
        let (id, adopt) = match &self.id {
            Some(id) => (id.clone(), false),
            None => (ctx.new_id(&self.tag), true),
        };
        let port = match (self.port, self.own_netns) {
            (Some(p), _) => p,
            (None, true) => NETNS_PORT,
            (None, false) => super::http::free_port()?,
        };
        let netns = if self.own_netns {
            Some(Arc::new(NetNs::create(
                &ctx.paths().dir.join("netns").join(&id),
            )?))
        } else {
            None
        };
        let mut spec = match self.spec.clone() {
            Some(s) => s,
            None => {
                let mut env = image.env.clone();
                env.push(format!("PORT={port}"));
                env.extend(self.env.clone());
                function_spec(
                    &id,
                    &format!("/{NAMESPACE}/{id}"),
                    image.args.clone(),
                    env,
                    &image.cwd,
                    netns.as_deref().map(NetNs::path),
                )?
            }
        };
        if !self.annotations.is_empty() {
            let mut a = spec.annotations().clone().unwrap_or_default();
            a.extend(self.annotations.clone());
            spec.set_annotations(Some(a));
        }
        let cgroups_path = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let process = spec.process().clone().context("spec without process")?;
        if adopt {
            ctx.adopt(&id, &cgroups_path);
        }
        let io_dir = ctx.paths().io.join(&id);
        fs::create_dir_all(&io_dir)?;
        let io_tag = IO_SEQ.fetch_add(1, Ordering::SeqCst);
        let stdout = Capture::fifo(&io_dir.join(format!("fn-{io_tag}.stdout")))?;
        let stderr = Capture::fifo(&io_dir.join(format!("fn-{io_tag}.stderr")))?;
        Ok(PreparedFunction {
            runtime: self.runtime.unwrap_or_else(|| ctx.runtime().to_string()),
            checkpoint: self.checkpoint,
            function: Function {
                ctx: ctx.clone(),
                id,
                pid: Arc::new(AtomicU32::new(0)),
                port,
                netns,
                stdout,
                stderr,
                process,
            },
            spec,
        })
    }

    /// [`Self::prepare`], then [`PreparedFunction::create`].
    pub async fn create(self, ctx: &Ctx) -> Result<Function> {
        self.prepare(ctx).await?.create().await
    }
}

static IO_SEQ: AtomicU32 = AtomicU32::new(1);

/// A function container ready to be made with one round of containerd calls.
pub struct PreparedFunction {
    runtime: String,
    checkpoint: Option<Descriptor>,
    spec: Spec,
    function: Function,
}

impl PreparedFunction {
    /// Containers.Create, Snapshots.Prepare and Tasks.Create (with the checkpoint, if
    /// any). If the task cannot be created, the container and its snapshot are removed
    /// again, as `ctr` does, and the error is returned.
    pub async fn create(self) -> Result<Function> {
        let f = self.function;
        let ctx = &f.ctx;
        let image = ctx.image().await?;
        let options = runc_options(ctx);
        let container = Container {
            id: f.id.clone(),
            image: IMAGE.to_string(),
            labels: HashMap::from([("rekindle.test/restore".to_string(), "1".to_string())]),
            runtime: Some(Runtime {
                name: self.runtime.clone(),
                options: Some(options.clone()),
            }),
            spec: Some(Any {
                type_url: SPEC_TYPE.to_string(),
                value: serde_json::to_vec(&self.spec)?,
            }),
            snapshotter: SNAPSHOTTER.to_string(),
            snapshot_key: f.id.clone(),
            ..Default::default()
        };
        bounded(
            "Containers.Create",
            RPC_TIMEOUT,
            ctx.containers().create(ctx.req(CreateContainerRequest {
                container: Some(container),
            })),
        )
        .await?;
        let mounts = bounded(
            "Snapshots.Prepare",
            RPC_TIMEOUT,
            SnapshotsClient::new(ctx.channel()).prepare(ctx.req(PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.to_string(),
                key: f.id.clone(),
                parent: image.chain_id.clone(),
                labels: HashMap::new(),
            })),
        )
        .await;
        let mounts = match mounts {
            Ok(m) => m.into_inner().mounts,
            Err(e) => {
                remove_container(ctx, &f.id).await;
                return Err(e);
            }
        };
        let created = bounded(
            "Tasks.Create",
            RPC_TIMEOUT,
            ctx.tasks().create(ctx.req(CreateTaskRequest {
                container_id: f.id.clone(),
                rootfs: mounts,
                stdin: String::new(),
                stdout: f.stdout.path(),
                stderr: f.stderr.path(),
                terminal: false,
                checkpoint: self.checkpoint.clone(),
                options: Some(options),
                ..Default::default()
            })),
        )
        .await;
        match created {
            Ok(r) => {
                f.pid.store(r.into_inner().pid, Ordering::SeqCst);
                Ok(f)
            }
            Err(e) => {
                remove_container(ctx, &f.id).await;
                Err(e)
            }
        }
    }
}

/// The OCI spec of a function container: runc's usual defaults (oci-spec's), a
/// cgroup under `/<namespace>/<id>` like ctr's, and either the host's network namespace
/// or the one at `netns`.
pub fn function_spec(
    id: &str,
    cgroups_path: &str,
    args: Vec<String>,
    env: Vec<String>,
    cwd: &str,
    netns: Option<&Path>,
) -> Result<Spec> {
    let mut spec = Spec::default();
    spec.set_hostname(Some(id.chars().take(63).collect()));
    let process = spec
        .process_mut()
        .as_mut()
        .context("default spec without process")?;
    process.set_args(Some(args));
    process.set_env(Some(env));
    process.set_cwd(cwd.into());
    spec.root_mut()
        .as_mut()
        .context("default spec without root")?
        .set_readonly(Some(false));
    let linux = spec
        .linux_mut()
        .as_mut()
        .context("default spec without linux")?;
    let mut namespaces: Vec<_> = linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|ns| ns.typ() != LinuxNamespaceType::Network)
        .collect();
    if let Some(path) = netns {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path(path)
                .build()?,
        );
    }
    linux.set_namespaces(Some(namespaces));
    linux.set_cgroups_path(Some(cgroups_path.into()));
    Ok(spec)
}

fn runc_options(ctx: &Ctx) -> Any {
    Any {
        type_url: RUNC_OPTIONS_TYPE.to_string(),
        value: RuncOptions {
            root: ctx.paths().runc_root.display().to_string(),
        }
        .encode_to_vec(),
    }
}

/// The snapshot, then the container record (as the Go client's `WithSnapshotCleanup`
/// does: the other order lets a garbage collection that runs in between take the
/// snapshot, once nothing references it, and the removal then fails with NotFound).
async fn remove_container(ctx: &Ctx, id: &str) {
    let _ = bounded(
        "Snapshots.Remove",
        RPC_TIMEOUT,
        SnapshotsClient::new(ctx.channel()).remove(ctx.req(RemoveSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_string(),
            key: id.to_string(),
        })),
    )
    .await;
    let _ = bounded(
        "Containers.Delete",
        RPC_TIMEOUT,
        ctx.containers()
            .delete(ctx.req(DeleteContainerRequest { id: id.to_string() })),
    )
    .await;
}

/// A function container and its task, made by [`FunctionSpec`].
pub struct Function {
    ctx: Ctx,
    pub id: String,
    /// The init's pid (host view): from Tasks.Create, or from Tasks.Start for a task
    /// that a restore brings into being only at Start.
    pid: Arc<AtomicU32>,
    pub port: u16,
    /// Its network namespace, when it has one of its own (removed with the `Function`).
    pub netns: Option<Arc<NetNs>>,
    pub stdout: Capture,
    pub stderr: Capture,
    process: oci_spec::runtime::Process,
}

impl Drop for Function {
    fn drop(&mut self) {
        self.stdout.close();
        self.stderr.close();
    }
}

impl Function {
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::SeqCst)
    }

    pub async fn start(&self) -> Result<u32> {
        self.start_within(RPC_TIMEOUT).await
    }

    /// Tasks.Start that must answer within `limit`. If it does not, the CRIU processes
    /// still restoring this container are killed (so that runc, the shim and the
    /// story's clean-up can go on) and the error says so.
    pub async fn start_within(&self, limit: Duration) -> Result<u32> {
        let started = Instant::now();
        let r = bounded(
            "Tasks.Start",
            limit,
            self.ctx.tasks().start(self.ctx.req(StartRequest {
                container_id: self.id.clone(),
                exec_id: String::new(),
            })),
        )
        .await;
        let r = match r {
            Ok(r) => r,
            Err(e) if started.elapsed() >= limit => {
                let killed = kill_restoring_criu(&self.id);
                return Err(e.context(format!(
                    "the restore of {} hung: Tasks.Start did not answer within {limit:?}; \
                     killed the CRIU processes still restoring it: {killed:?}",
                    self.id
                )));
            }
            Err(e) => return Err(e),
        };
        let pid = r.into_inner().pid;
        self.pid.store(pid, Ordering::SeqCst);
        Ok(pid)
    }

    /// `GET path` on the function: over loopback, or inside its network namespace.
    pub async fn get(&self, path: &str, timeout: Duration) -> Result<(u16, String)> {
        if let Some(ns) = &self.netns {
            get_in_netns(ns.path(), self.port, path, timeout).await
        } else {
            super::http::get(self.port, path, timeout).await
        }
    }

    /// `GET /`: the function's JSON answer.
    pub async fn call(&self) -> Result<serde_json::Value> {
        let (status, body) = self.get("/", secs(10)).await?;
        if status != 200 {
            bail!("GET / on {} answered {status}: {body}", self.id);
        }
        serde_json::from_str(&body)
            .with_context(|| format!("GET / on {}: body is not JSON: {body:?}", self.id))
    }

    /// `GET /`: its invocation counter.
    pub async fn count(&self) -> Result<u64> {
        let json = self.call().await?;
        json.get("count")
            .and_then(serde_json::Value::as_u64)
            .with_context(|| format!("GET / on {}: no numeric \"count\" in {json}", self.id))
    }

    /// Polls `GET /healthz` (which counts nothing) until it answers 200.
    pub async fn wait_serving(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.get("/healthz", secs(5)).await {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => last = format!("answered {status}: {body}"),
                Err(e) => last = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!(
            "function {} did not answer within {timeout:?} (last: {last}); stdout {:?}, stderr {:?}",
            self.id,
            self.stdout.text(),
            self.stderr.text()
        )
    }

    pub async fn state(&self) -> Result<Process> {
        let r = bounded(
            "Tasks.Get",
            RPC_TIMEOUT,
            self.ctx.tasks().get(self.ctx.req(GetRequest {
                container_id: self.id.clone(),
                exec_id: String::new(),
            })),
        )
        .await?;
        r.into_inner().process.context("Tasks.Get without process")
    }

    pub async fn status(&self) -> Result<Status> {
        Ok(self.state().await?.status())
    }

    pub async fn pids(&self) -> Result<Vec<ProcessInfo>> {
        let r = bounded(
            "Tasks.ListPids",
            RPC_TIMEOUT,
            self.ctx.tasks().list_pids(self.ctx.req(ListPidsRequest {
                container_id: self.id.clone(),
            })),
        )
        .await?;
        Ok(r.into_inner().processes)
    }

    pub async fn pause(&self) -> Result<()> {
        bounded(
            "Tasks.Pause",
            RPC_TIMEOUT,
            self.ctx.tasks().pause(self.ctx.req(PauseTaskRequest {
                container_id: self.id.clone(),
            })),
        )
        .await?;
        Ok(())
    }

    pub async fn resume(&self) -> Result<()> {
        bounded(
            "Tasks.Resume",
            RPC_TIMEOUT,
            self.ctx.tasks().resume(self.ctx.req(ResumeTaskRequest {
                container_id: self.id.clone(),
            })),
        )
        .await?;
        Ok(())
    }

    pub async fn metrics(&self) -> Result<Vec<Metric>> {
        let r = bounded(
            "Tasks.Metrics",
            RPC_TIMEOUT,
            self.ctx.tasks().metrics(self.ctx.req(MetricsRequest {
                filters: vec![format!("id=={}", self.id)],
            })),
        )
        .await?;
        Ok(r.into_inner().metrics)
    }

    /// Runs `args` in the container (Tasks.Exec, Start, Wait, DeleteProcess): its exit
    /// status and its stdout.
    pub async fn exec(&self, exec_id: &str, args: &[&str]) -> Result<(u32, String)> {
        let mut process = self.process.clone();
        process.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
        process.set_terminal(Some(false));
        let io_dir = self.ctx.paths().io.join(&self.id);
        let stdout = Capture::fifo(&io_dir.join(format!("{exec_id}.stdout")))?;
        let result = async {
            bounded(
                "Tasks.Exec",
                RPC_TIMEOUT,
                self.ctx.tasks().exec(self.ctx.req(ExecProcessRequest {
                    container_id: self.id.clone(),
                    stdin: String::new(),
                    stdout: stdout.path(),
                    stderr: String::new(),
                    terminal: false,
                    spec: Some(Any {
                        type_url: PROCESS_TYPE.to_string(),
                        value: serde_json::to_vec(&process)?,
                    }),
                    exec_id: exec_id.to_string(),
                })),
            )
            .await?;
            let waiting = {
                let (ctx, id, exec_id) = (self.ctx.clone(), self.id.clone(), exec_id.to_string());
                tokio::spawn(async move { wait(&ctx, &id, &exec_id, secs(30)).await })
            };
            bounded(
                "Tasks.Start (exec)",
                RPC_TIMEOUT,
                self.ctx.tasks().start(self.ctx.req(StartRequest {
                    container_id: self.id.clone(),
                    exec_id: exec_id.to_string(),
                })),
            )
            .await?;
            let status = waiting.await??;
            let out = stdout.wait_eof(secs(10)).await?;
            bounded(
                "Tasks.DeleteProcess",
                RPC_TIMEOUT,
                self.ctx
                    .tasks()
                    .delete_process(self.ctx.req(DeleteProcessRequest {
                        container_id: self.id.clone(),
                        exec_id: exec_id.to_string(),
                    })),
            )
            .await?;
            Ok((status, out))
        }
        .await;
        stdout.close();
        result
    }

    pub async fn kill(&self, signal: i32) -> Result<()> {
        bounded(
            "Tasks.Kill",
            RPC_TIMEOUT,
            self.ctx.tasks().kill(self.ctx.req(KillRequest {
                container_id: self.id.clone(),
                exec_id: String::new(),
                signal: signal as u32,
                all: false,
            })),
        )
        .await?;
        Ok(())
    }

    /// Tasks.Wait issued now, answered when the init exits.
    pub fn wait_in_background(&self, timeout: Duration) -> tokio::task::JoinHandle<Result<u32>> {
        let (ctx, id) = (self.ctx.clone(), self.id.clone());
        tokio::spawn(async move { wait(&ctx, &id, "", timeout).await })
    }

    /// Tasks.Delete, then the snapshot and the container (see [`remove_container`]):
    /// the task's exit status.
    pub async fn delete(self) -> Result<u32> {
        let r = bounded(
            "Tasks.Delete",
            RPC_TIMEOUT,
            self.ctx.tasks().delete(self.ctx.req(DeleteTaskRequest {
                container_id: self.id.clone(),
            })),
        )
        .await?
        .into_inner();
        bounded(
            "Snapshots.Remove",
            RPC_TIMEOUT,
            SnapshotsClient::new(self.ctx.channel()).remove(self.ctx.req(RemoveSnapshotRequest {
                snapshotter: SNAPSHOTTER.to_string(),
                key: self.id.clone(),
            })),
        )
        .await?;
        bounded(
            "Containers.Delete",
            RPC_TIMEOUT,
            self.ctx
                .containers()
                .delete(self.ctx.req(DeleteContainerRequest {
                    id: self.id.clone(),
                })),
        )
        .await?;
        Ok(r.exit_status)
    }

    /// SIGKILL, wait for the exit, delete everything: the end of an instance whose end
    /// is not what the story is about.
    pub async fn destroy(self) -> Result<()> {
        let exited = self.wait_in_background(secs(30));
        self.kill(libc::SIGKILL).await?;
        exited.await??;
        self.delete().await?;
        Ok(())
    }

    /// [`checkpoint`] of this function's task.
    pub async fn checkpoint(&self, opts: CheckpointOptions) -> Result<Checkpoint> {
        checkpoint(&self.ctx, &self.id, opts).await
    }

    /// The inode of the init's network namespace (as the kernel sees the process).
    pub fn netns_inode(&self) -> Result<u64> {
        ns_inode(Path::new(&format!("/proc/{}/ns/net", self.pid())))
    }
}

/// SIGKILL to every descendant of the `runc restore` of container `id` (CRIU and the
/// tasks it is restoring): their pids and command lines.
fn kill_restoring_criu(id: &str) -> Vec<String> {
    let mut parent = HashMap::new();
    let mut cmdline = HashMap::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // `pid (comm) state ppid ...`: comm may hold spaces, so split after its `)`.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if let Some(ppid) = ppid {
            parent.insert(pid, ppid);
        }
        let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        cmdline.insert(pid, String::from_utf8_lossy(&raw).replace('\0', " "));
    }
    let restores: Vec<i32> = cmdline
        .iter()
        .filter(|(_, c)| c.contains(" restore ") && c.split_whitespace().any(|w| w == id))
        .map(|(p, _)| *p)
        .collect();
    let mut killed = Vec::new();
    for (&pid, _) in parent.iter() {
        let mut p = pid;
        let mut depth = 0;
        while let Some(&pp) = parent.get(&p) {
            if restores.contains(&pp) {
                // SAFETY: kill(2) of a descendant of our container's runc restore.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                killed.push(format!("{pid} {}", cmdline[&pid].trim()));
                break;
            }
            p = pp;
            depth += 1;
            if depth > 16 {
                break;
            }
        }
    }
    killed
}

async fn wait(ctx: &Ctx, id: &str, exec_id: &str, timeout: Duration) -> Result<u32> {
    let r = bounded(
        &format!("Tasks.Wait({id} {exec_id})"),
        timeout,
        ctx.tasks().wait(ctx.req(WaitRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        })),
    )
    .await?;
    Ok(r.into_inner().exit_status)
}

// ---------------------------------------------------------------------------------
// Checkpoints through containerd
// ---------------------------------------------------------------------------------

/// What `Tasks.Checkpoint` wrote: the CRIU image (a tar) and the container's spec, in
/// containerd's content store, held by a containerd lease until [`Checkpoint::release`].
pub struct Checkpoint {
    pub lease: String,
    pub descriptors: Vec<Descriptor>,
}

impl Checkpoint {
    /// The CRIU image, as `Tasks.Create` wants it.
    pub fn criu(&self) -> Result<&Descriptor> {
        self.descriptors
            .iter()
            .find(|d| d.media_type == CHECKPOINT_MEDIA_TYPE)
            .with_context(|| format!("no {CHECKPOINT_MEDIA_TYPE} in {:?}", self.descriptors))
    }

    /// The container's OCI spec as the checkpoint recorded it (what `ctr container
    /// restore` recreates the container with).
    pub async fn spec(&self, ctx: &Ctx) -> Result<Spec> {
        let d = self
            .descriptors
            .iter()
            .find(|d| d.media_type == CHECKPOINT_CONFIG_MEDIA_TYPE)
            .with_context(|| {
                format!(
                    "no {CHECKPOINT_CONFIG_MEDIA_TYPE} in {:?}",
                    self.descriptors
                )
            })?;
        let any = Any::decode(read_content(ctx, &d.digest).await?.as_slice())
            .context("the checkpoint's config is not a protobuf Any")?;
        serde_json::from_slice(&any.value).with_context(|| {
            format!(
                "the checkpoint's config ({}) is not an OCI spec",
                any.type_url
            )
        })
    }

    /// Deletes the lease: containerd may collect the content.
    pub async fn release(self, ctx: &Ctx) -> Result<()> {
        delete_lease(ctx, &self.lease).await
    }
}

/// `Tasks.Checkpoint` of `id` with `containerd.runc.v1.CheckpointOptions`, as
/// containerd's Go client calls it: the task is paused first (unless it is already),
/// and resumed afterwards, the checkpoint's content held by a new lease. With
/// `opts.exit`, the resume fails (the task has stopped), as it does for the Go client,
/// which ignores it.
pub async fn checkpoint(ctx: &Ctx, id: &str, opts: CheckpointOptions) -> Result<Checkpoint> {
    let lease = create_lease(ctx).await?;
    let status = bounded(
        "Tasks.Get",
        RPC_TIMEOUT,
        ctx.tasks().get(ctx.req(GetRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        })),
    )
    .await?
    .into_inner()
    .process
    .context("Tasks.Get without process")?
    .status();
    let pause = status != Status::Paused;
    if pause {
        bounded(
            "Tasks.Pause",
            RPC_TIMEOUT,
            ctx.tasks().pause(ctx.req(PauseTaskRequest {
                container_id: id.to_string(),
            })),
        )
        .await?;
    }
    let exit = opts.exit;
    let mut req = ctx.req(CheckpointTaskRequest {
        container_id: id.to_string(),
        parent_checkpoint: String::new(),
        options: Some(Any {
            type_url: CHECKPOINT_OPTIONS_TYPE.to_string(),
            value: opts.encode_to_vec(),
        }),
    });
    with_lease(&mut req, &lease);
    let result = bounded("Tasks.Checkpoint", secs(60), ctx.tasks().checkpoint(req)).await;
    if pause {
        let resumed = bounded(
            "Tasks.Resume",
            RPC_TIMEOUT,
            ctx.tasks().resume(ctx.req(ResumeTaskRequest {
                container_id: id.to_string(),
            })),
        )
        .await;
        if let (Err(e), false, Ok(_)) = (&resumed, exit, &result) {
            bail!("resuming {id} after its checkpoint: {e:#}");
        }
    }
    match result {
        Ok(r) => Ok(Checkpoint {
            lease,
            descriptors: r.into_inner().descriptors,
        }),
        Err(e) => {
            let _ = delete_lease(ctx, &lease).await;
            Err(e)
        }
    }
}

fn with_lease<T>(req: &mut Request<T>, lease: &str) {
    req.metadata_mut()
        .insert("containerd-lease", lease.parse().expect("ascii lease id"));
}

async fn create_lease(ctx: &Ctx) -> Result<String> {
    use containerd_client::services::v1::CreateRequest;
    let r = bounded(
        "Leases.Create",
        RPC_TIMEOUT,
        LeasesClient::new(ctx.channel()).create(ctx.req(CreateRequest {
            id: ctx.new_id("rekindle-it-lease"),
            labels: HashMap::new(),
        })),
    )
    .await?;
    Ok(r.into_inner()
        .lease
        .context("Leases.Create without lease")?
        .id)
}

async fn delete_lease(ctx: &Ctx, lease: &str) -> Result<()> {
    use containerd_client::services::v1::DeleteRequest;
    bounded(
        "Leases.Delete",
        RPC_TIMEOUT,
        LeasesClient::new(ctx.channel()).delete(ctx.req(DeleteRequest {
            id: lease.to_string(),
            sync: false,
        })),
    )
    .await?;
    Ok(())
}

/// A blob of containerd's content store.
pub async fn read_content(ctx: &Ctx, digest: &str) -> Result<Vec<u8>> {
    let mut stream = bounded(
        "Content.Read",
        RPC_TIMEOUT,
        ContentClient::new(ctx.channel()).read(ctx.req(ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        })),
    )
    .await?
    .into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = bounded("Content.Read stream", RPC_TIMEOUT, stream.message()).await? {
        data.extend_from_slice(&chunk.data);
    }
    Ok(data)
}

/// Writes `data` into containerd's content store (held by a new lease, returned with
/// the descriptor): how a checkpoint that came from elsewhere gets there.
pub async fn write_content(
    ctx: &Ctx,
    media_type: &str,
    data: &[u8],
) -> Result<(Descriptor, String)> {
    let lease = create_lease(ctx).await?;
    let digest = format!("sha256:{}", hex(&sha2::Sha256::digest(data)));
    let total = data.len() as i64;
    let reference = format!("rekindle-it-{}", &digest[7..23]);
    const CHUNK: usize = 1 << 20;
    let mut requests: Vec<WriteContentRequest> = data
        .chunks(CHUNK)
        .enumerate()
        .map(|(i, c)| WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: reference.clone(),
            total,
            expected: digest.clone(),
            offset: (i * CHUNK) as i64,
            data: c.to_vec(),
            labels: HashMap::new(),
        })
        .collect();
    requests.push(WriteContentRequest {
        action: WriteAction::Commit as i32,
        r#ref: reference,
        total,
        expected: digest.clone(),
        offset: total,
        data: Vec::new(),
        labels: HashMap::new(),
    });
    let mut req = ctx.req(containerd_client::tonic::codegen::tokio_stream::iter(
        requests,
    ));
    with_lease(&mut req, &lease);
    let written = async {
        let mut responses = bounded(
            "Content.Write",
            RPC_TIMEOUT,
            ContentClient::new(ctx.channel()).write(req),
        )
        .await?
        .into_inner();
        while bounded("Content.Write stream", RPC_TIMEOUT, responses.message())
            .await?
            .is_some()
        {}
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = written {
        let _ = delete_lease(ctx, &lease).await;
        return Err(e);
    }
    Ok((
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size: total,
            annotations: HashMap::new(),
        },
        lease,
    ))
}

/// Deletes a lease made by [`write_content`].
pub async fn release_lease(ctx: &Ctx, lease: &str) -> Result<()> {
    delete_lease(ctx, lease).await
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------
// The fixture: the reference function, checkpointed once per test binary
// ---------------------------------------------------------------------------------

/// The exported archive of the fixture image, once made.
static FIXTURE: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Puts the fixture image into the story's daemon under `name`: the reference function
/// in a network namespace of its own (port [`NETNS_PORT`]), after [`FIXTURE_COUNT`]
/// requests, checkpointed through `Tasks.Checkpoint` and stored by the shim
/// (`io.rekindle.checkpoint.store-as`). Made by the first story that asks (and exported
/// to an archive next to the daemons), imported from that archive by the others.
pub async fn fixture_image(ctx: &Ctx, restored: &Restored, name: &str) -> Result<()> {
    let archive = FIXTURE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    if let Some(archive) = archive {
        restored
            .client()
            .import_image(&archive, Some(name.to_string()))
            .await
            .with_context(|| format!("importing the fixture {}", archive.display()))?;
        return Ok(());
    }
    let f = FunctionSpec::new("fixture")
        .own_netns()
        .env(&format!("STATE_MB={FIXTURE_STATE_MB}"))
        .annotate(STORE_AS_ANNOTATION, name)
        .create(ctx)
        .await
        .context("creating the fixture function")?;
    f.start().await?;
    f.wait_serving(secs(30)).await?;
    for expected in 1..=FIXTURE_COUNT {
        let n = f.count().await?;
        if n != expected {
            bail!("fixture function counted {n}, expected {expected}");
        }
    }
    let ck = f
        .checkpoint(CheckpointOptions::default())
        .await
        .context("checkpointing the fixture function")?;
    ck.release(ctx).await?;
    f.destroy().await?;
    let path = restored_dir().join("fixture.rkimg");
    let _ = fs::remove_file(&path);
    restored
        .client()
        .export_image(name, &path, Some(1))
        .await
        .context("exporting the fixture")?;
    *FIXTURE.lock().unwrap_or_else(PoisonError::into_inner) = Some(path);
    // Removed with the process's daemon directory at exit.
    // SAFETY: registering a plain extern "C" fn.
    unsafe { libc::atexit(remove_restored_dir_at_exit) };
    Ok(())
}

extern "C" fn remove_restored_dir_at_exit() {
    let dir = restored_dir();
    if super::leaks::mounts()
        .iter()
        .all(|m| !Path::new(&m.mount_point).starts_with(&dir))
    {
        let _ = fs::remove_dir_all(&dir);
    }
}

/// A CRIU image directory as a tar (what containerd keeps a checkpoint as), with `cut`
/// applied to each file's bytes on the way.
pub fn tar_dir(dir: &Path, cut: impl Fn(&str, Vec<u8>) -> Vec<u8>) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut names: Vec<_> = fs::read_dir(dir)?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let mut data = Vec::new();
        fs::File::open(dir.join(&name))?.read_to_end(&mut data)?;
        let data = cut(&name, data);
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append_data(&mut h, &name, data.as_slice())?;
    }
    Ok(b.into_inner()?)
}

// ---------------------------------------------------------------------------------
// HTTP inside a network namespace
// ---------------------------------------------------------------------------------

/// A network namespace made for one container, as a CNI plugin makes a pod's: created
/// by a thread that unshares its own, brings loopback up and bind-mounts
/// `/proc/thread-self/ns/net` on a file. Dropping it unmounts and removes the file (the
/// namespace itself lives on while a process is in it).
#[derive(Debug)]
pub struct NetNs {
    path: PathBuf,
}

impl NetNs {
    pub fn create(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let me = NetNs {
            path: path.to_path_buf(),
        };
        let target = path.to_path_buf();
        std::thread::Builder::new()
            .name("netns-create".into())
            .spawn(move || make_netns(&target))?
            .join()
            .map_err(|_| anyhow::anyhow!("the netns thread panicked"))?
            .with_context(|| format!("making the network namespace {}", path.display()))?;
        Ok(me)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn inode(&self) -> Result<u64> {
        ns_inode(&self.path)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        unmount(&self.path);
        let _ = fs::remove_file(&self.path);
    }
}

fn ns_inode(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .ino())
}

/// On a thread of its own (it ends right after): a new network namespace, loopback up,
/// bind-mounted on `target`.
fn make_netns(target: &Path) -> Result<()> {
    // SAFETY: unshare(2) of this thread's network namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNET)");
    }
    // SAFETY: a socket, and SIOC[GS]IFFLAGS on a zeroed ifreq naming "lo".
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("socket");
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        let ok = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) == 0 && {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr) == 0
        };
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if !ok {
            return Err(err).context("bringing lo up");
        }
    }
    let src = std::ffi::CString::new("/proc/thread-self/ns/net")?;
    let dst = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())?;
    // SAFETY: bind mount between two valid NUL-terminated paths.
    let mounted = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if mounted != 0 {
        return Err(std::io::Error::last_os_error()).context("bind-mounting the namespace");
    }
    Ok(())
}

/// `GET path` on 127.0.0.1:`port` in the network namespace at `netns`, from a thread
/// of its own that enters that namespace (and ends with the request).
pub async fn get_in_netns(
    netns: &Path,
    port: u16,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String)> {
    let (netns, path) = (netns.to_path_buf(), path.to_string());
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("netns-http".into())
        .spawn(move || {
            let _ = tx.send(blocking_get_in_netns(&netns, port, &path, timeout));
        })?;
    rx.await.context("the netns HTTP thread died")?
}

fn blocking_get_in_netns(
    netns: &Path,
    port: u16,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String)> {
    let ns = fs::File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    // SAFETY: setns(2) with a valid fd; it moves this thread only, which ends after
    // the request.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setns {}", netns.display()));
    }
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).with_context(|| {
        format!(
            "connecting to {addr} in the network namespace {}",
            netns.display()
        )
    })?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("GET {path} on {addr} (netns {})", netns.display()))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("GET {path} on {addr}: not an HTTP response: {text:?}");
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status code in {head:?}"))?;
    Ok((status, body.to_string()))
}

// ---------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------

/// Every task event topic containerd publishes for one container, collected in the
/// background from `Events.Subscribe`.
pub struct TaskEvents {
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

/// Every task event starts with `string container_id = 1`.
#[derive(Clone, PartialEq, prost::Message)]
struct TaskEvent {
    #[prost(string, tag = "1")]
    container_id: String,
}

impl TaskEvents {
    /// Subscribes, and confirms the subscription with a marker event of our own
    /// (containerd answers Subscribe only with its first event).
    pub async fn subscribe(ctx: &Ctx) -> Result<Self> {
        let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Envelope>();
        let channel = ctx.channel();
        tokio::spawn(async move {
            let mut client = EventsClient::new(channel);
            let Ok(stream) = client
                .subscribe(SubscribeRequest {
                    filters: vec![format!("namespace=={NAMESPACE}")],
                })
                .await
            else {
                return;
            };
            let mut stream = stream.into_inner();
            while let Ok(Some(e)) = stream.message().await {
                if tx.send(e).is_err() {
                    return;
                }
            }
        });
        let marker = format!("/rekindle-it/subscribed/{}", ctx.new_id("sub"));
        let deadline = Instant::now() + secs(10);
        loop {
            EventsClient::new(ctx.channel())
                .publish(ctx.req(PublishRequest {
                    topic: marker.clone(),
                    event: Some(Any {
                        type_url: "containerd.events.ContainerCreate".into(),
                        value: Vec::new(),
                    }),
                }))
                .await?;
            match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
                Ok(Some(e)) if e.topic == marker => break,
                Ok(Some(_)) | Err(_) => {}
                Ok(None) => bail!("the event subscription ended"),
            }
            if Instant::now() > deadline {
                bail!("no event came through Events.Subscribe within 10 s");
            }
        }
        let sink = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                let Some(any) = e.event else { continue };
                if !e.topic.starts_with("/tasks/") {
                    continue;
                }
                if let Ok(ev) = TaskEvent::decode(any.value.as_slice()) {
                    sink.lock().unwrap().push((ev.container_id, e.topic));
                }
            }
        });
        Ok(TaskEvents { seen })
    }

    /// The topics seen for `id`, in order, once all of `expected` are among them (or
    /// an error listing what came).
    pub async fn wait_for(&self, id: &str, expected: &[&str]) -> Result<Vec<String>> {
        let deadline = Instant::now() + secs(10);
        loop {
            let topics: Vec<String> = self
                .seen
                .lock()
                .unwrap()
                .iter()
                .filter(|(c, _)| c == id)
                .map(|(_, t)| t.clone())
                .collect();
            if expected.iter().all(|e| topics.iter().any(|t| t == e)) {
                return Ok(topics);
            }
            if Instant::now() > deadline {
                bail!("events for {id}: expected {expected:?}, containerd published {topics:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
