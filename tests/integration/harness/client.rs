//! containerd-client helpers: a test's context ([`Ctx`]), its containers
//! ([`Instance`]) and their exec'd processes ([`Exec`]). Every lifecycle call here is a
//! gRPC call to containerd; nothing shells out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::snapshots::{
    snapshots_client::SnapshotsClient, PrepareSnapshotRequest, RemoveSnapshotRequest,
    StatSnapshotRequest,
};
use containerd_client::services::v1::{
    containers_client::ContainersClient, content_client::ContentClient,
    images_client::ImagesClient, tasks_client::TasksClient, Container, CreateContainerRequest,
    CreateTaskRequest, DeleteContainerRequest, DeleteProcessRequest, DeleteTaskRequest,
    ExecProcessRequest, GetContainerRequest, GetImageRequest, GetRequest, KillRequest,
    ListPidsRequest, MetricsRequest, PauseTaskRequest, ReadContentRequest, ResumeTaskRequest,
    StartRequest, UpdateTaskRequest, WaitRequest,
};
use containerd_client::tonic::{transport::Channel, Code, Request};
use containerd_client::types::v1::{Process, ProcessInfo, Status};
use containerd_client::types::Metric;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use prost_types::Any;
use sha2::Digest as _;

use super::containerd::Paths;
use super::leaks;
use super::stdio::Capture;
use super::{http, Shared, IMAGE, NAMESPACE, RPC_TIMEOUT, SNAPSHOTTER};

const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const PROCESS_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
const RUNC_OPTIONS_TYPE: &str = "containerd.runc.v1.Options";

/// `containerd.runc.v1.Options`, reduced to the one field the tests set.
#[derive(Clone, PartialEq, prost::Message)]
struct RuncOptions {
    /// runc's `--root`; the shim appends the namespace.
    #[prost(string, tag = "7")]
    root: String,
}

/// Bounds an RPC (or any step) so a hang fails the test with a name instead of hanging.
pub async fn bounded<T, E>(
    what: &str,
    timeout: Duration,
    fut: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(anyhow::Error::new(e).context(what.to_string())),
        Err(_) => bail!("{what}: no answer within {timeout:?}"),
    }
}

/// What the tests need from the reference image: its rootfs (as a snapshot chain id)
/// and its process defaults.
#[derive(Clone, Debug)]
pub struct ImageInfo {
    pub chain_id: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
}

static IMAGE_INFO: OnceLock<ImageInfo> = OnceLock::new();
static NEXT_ID: AtomicU32 = AtomicU32::new(1);

/// A test's handle on containerd. Cloning is cheap; the harness keeps one to clean up
/// after the test body.
#[derive(Clone)]
pub struct Ctx {
    inner: Arc<CtxInner>,
}

struct CtxInner {
    story: String,
    channel: Channel,
    paths: Paths,
    runtime: String,
    tracked: Mutex<Vec<Tracked>>,
    /// How long the leak check waits for things to go away before reporting them.
    leak_grace: Mutex<Duration>,
}

/// A container the test created, for cleanup, the leak check and diagnostics.
struct Tracked {
    id: String,
    cgroups_path: String,
    captures: Vec<(String, Capture)>,
}

impl Ctx {
    pub async fn connect(story: &str, shared: &Shared) -> Result<Self> {
        let channel = containerd_client::connect(&shared.paths.grpc)
            .await
            .with_context(|| format!("connecting to {}", shared.paths.grpc.display()))?;
        Ok(Ctx {
            inner: Arc::new(CtxInner {
                story: story.to_string(),
                channel,
                paths: shared.paths.clone(),
                runtime: super::runtime_under_test(),
                tracked: Mutex::new(Vec::new()),
                leak_grace: Mutex::new(Duration::from_secs(10)),
            }),
        })
    }

    /// The gRPC channel to containerd, for services the helpers do not wrap.
    pub fn channel(&self) -> Channel {
        self.inner.channel.clone()
    }

    /// The runtime under test (`REKINDLE_TEST_RUNTIME`).
    pub fn runtime(&self) -> &str {
        &self.inner.runtime
    }

    pub fn paths(&self) -> &Paths {
        &self.inner.paths
    }

    /// Puts `id` under the harness' cleanup and leak check, as if the test had created a
    /// container with that id and cgroup (for the harness' own self-test).
    pub fn adopt(&self, id: &str, cgroups_path: &str) {
        self.inner.tracked.lock().unwrap().push(Tracked {
            id: id.to_string(),
            cgroups_path: cgroups_path.to_string(),
            captures: Vec::new(),
        });
    }

    /// Sets how long the leak check waits for leftovers to disappear (default 10 s).
    pub fn set_leak_grace(&self, grace: Duration) {
        *self.inner.leak_grace.lock().unwrap() = grace;
    }

    /// Wraps a message into a request in the tests' namespace.
    pub fn req<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        req.metadata_mut()
            .insert("containerd-namespace", NAMESPACE.parse().expect("ascii"));
        req
    }

    pub fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.inner.channel.clone())
    }

    pub fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.inner.channel.clone())
    }

    fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.inner.channel.clone())
    }

    /// A fresh container id: `<tag>-<8 hex>`, unique across concurrent test binaries.
    pub fn new_id(&self, tag: &str) -> String {
        let n = NEXT_ID.fetch_add(1, Ordering::SeqCst);
        let mut h = sha2::Sha256::new();
        h.update(format!(
            "{}-{n}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        let hex: String = h.finalize()[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{tag}-{hex}")
    }

    /// The reference image's chain id and process defaults (read once from containerd's
    /// image and content stores).
    pub async fn image(&self) -> Result<ImageInfo> {
        if let Some(info) = IMAGE_INFO.get() {
            return Ok(info.clone());
        }
        let info = self.resolve_image().await?;
        Ok(IMAGE_INFO.get_or_init(|| info).clone())
    }

    async fn resolve_image(&self) -> Result<ImageInfo> {
        let mut images = ImagesClient::new(self.inner.channel.clone());
        let image = bounded(
            "Images.Get",
            RPC_TIMEOUT,
            images.get(self.req(GetImageRequest {
                name: IMAGE.to_string(),
            })),
        )
        .await
        .with_context(|| {
            format!("image {IMAGE} not in namespace {NAMESPACE}: did the import name it so?")
        })?
        .into_inner()
        .image
        .context("Images.Get returned no image")?;
        let target = image.target.context("image without target")?;

        let mut digest = target.digest.clone();
        let mut manifest: serde_json::Value =
            serde_json::from_slice(&self.read_blob(&digest).await?)?;
        if let Some(list) = manifest.get("manifests").and_then(|m| m.as_array()) {
            let arch = match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                other => other,
            };
            let chosen = list
                .iter()
                .find(|m| {
                    m.pointer("/platform/os").and_then(|v| v.as_str()) == Some("linux")
                        && m.pointer("/platform/architecture").and_then(|v| v.as_str())
                            == Some(arch)
                })
                .or_else(|| list.first())
                .context("image index without manifests")?;
            digest = chosen["digest"]
                .as_str()
                .context("manifest without digest")?
                .to_string();
            manifest = serde_json::from_slice(&self.read_blob(&digest).await?)?;
        }
        let config_digest = manifest
            .pointer("/config/digest")
            .and_then(|v| v.as_str())
            .with_context(|| format!("manifest {digest} without config"))?;
        let config: serde_json::Value =
            serde_json::from_slice(&self.read_blob(config_digest).await?)?;

        let diff_ids: Vec<String> = config
            .pointer("/rootfs/diff_ids")
            .and_then(|v| v.as_array())
            .context("image config without rootfs.diff_ids")?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        let chain_id = chain_id(&diff_ids).context("image with no layers")?;
        let strings = |ptr: &str| -> Vec<String> {
            config
                .pointer(ptr)
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut args = strings("/config/Entrypoint");
        args.extend(strings("/config/Cmd"));
        let cwd = config
            .pointer("/config/WorkingDir")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .unwrap_or("/")
            .to_string();

        // The import must have unpacked it for our snapshotter.
        bounded(
            "Snapshots.Stat of the image's top layer",
            RPC_TIMEOUT,
            self.snapshots().stat(self.req(StatSnapshotRequest {
                snapshotter: SNAPSHOTTER.to_string(),
                key: chain_id.clone(),
            })),
        )
        .await
        .with_context(|| {
            format!("{IMAGE} is not unpacked for {SNAPSHOTTER} (chain id {chain_id})")
        })?;

        Ok(ImageInfo {
            chain_id,
            args,
            env: strings("/config/Env"),
            cwd,
        })
    }

    /// A blob of containerd's content store.
    pub async fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let mut content = ContentClient::new(self.inner.channel.clone());
        let mut stream = bounded(
            "Content.Read",
            RPC_TIMEOUT,
            content.read(self.req(ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            })),
        )
        .await?
        .into_inner();
        let mut data = Vec::new();
        while let Some(chunk) =
            bounded("Content.Read stream", RPC_TIMEOUT, stream.message()).await?
        {
            data.extend_from_slice(&chunk.data);
        }
        Ok(data)
    }

    /// Creates a container from the reference image and its task (not started), with
    /// stdout and stderr on FIFOs. `args` replaces the image's command; `env` is added to
    /// the image's environment. The container uses the host's network namespace, so a
    /// function inside is reachable on 127.0.0.1.
    pub async fn create(
        &self,
        tag: &str,
        args: Option<Vec<String>>,
        env: Vec<String>,
    ) -> Result<Instance> {
        let image = self.image().await?;
        let id = self.new_id(tag);
        let cgroups_path = format!("/{NAMESPACE}/{id}");
        let args = args.unwrap_or_else(|| image.args.clone());
        let mut full_env = image.env.clone();
        full_env.extend(env);
        let spec = build_spec(&id, &cgroups_path, args, full_env, &image.cwd)?;
        let process = spec.process().clone().context("spec without process")?;

        let io_dir = self.inner.paths.io.join(&id);
        std::fs::create_dir_all(&io_dir)?;
        let stdout = Capture::fifo(&io_dir.join("stdout"))?;
        let stderr = Capture::fifo(&io_dir.join("stderr"))?;
        self.inner.tracked.lock().unwrap().push(Tracked {
            id: id.clone(),
            cgroups_path: cgroups_path.clone(),
            captures: vec![
                ("stdout".into(), stdout.clone()),
                ("stderr".into(), stderr.clone()),
            ],
        });

        let options = self.runc_options();
        let container = Container {
            id: id.clone(),
            image: IMAGE.to_string(),
            labels: HashMap::from([("rekindle.test/story".to_string(), self.inner.story.clone())]),
            runtime: Some(Runtime {
                name: self.inner.runtime.clone(),
                options: Some(options.clone()),
            }),
            spec: Some(Any {
                type_url: SPEC_TYPE.to_string(),
                value: serde_json::to_vec(&spec)?,
            }),
            snapshotter: SNAPSHOTTER.to_string(),
            snapshot_key: id.clone(),
            ..Default::default()
        };
        bounded(
            "Containers.Create",
            RPC_TIMEOUT,
            self.containers().create(self.req(CreateContainerRequest {
                container: Some(container),
            })),
        )
        .await?;

        let mounts = bounded(
            "Snapshots.Prepare",
            RPC_TIMEOUT,
            self.snapshots().prepare(self.req(PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.to_string(),
                key: id.clone(),
                parent: image.chain_id.clone(),
                labels: HashMap::new(),
            })),
        )
        .await?
        .into_inner()
        .mounts;

        let created = bounded(
            "Tasks.Create",
            RPC_TIMEOUT,
            self.tasks().create(self.req(CreateTaskRequest {
                container_id: id.clone(),
                rootfs: mounts,
                stdin: String::new(),
                stdout: stdout.path(),
                stderr: stderr.path(),
                terminal: false,
                options: Some(options),
                ..Default::default()
            })),
        )
        .await;
        let created = match created {
            Ok(r) => r.into_inner(),
            Err(e) => {
                // As ctr does: a container whose task could not be created is removed.
                self.remove_container(&id).await;
                return Err(e);
            }
        };

        Ok(Instance {
            ctx: self.clone(),
            id,
            pid: created.pid,
            stdout,
            stderr,
            process,
            port: None,
        })
    }

    /// Removes a container's snapshot, then its record (the order of containerd's own
    /// client: once the record is gone, the garbage collector may take the snapshot
    /// first). A snapshot already gone is fine.
    pub async fn delete_container(&self, id: &str) -> Result<()> {
        let removed = bounded(
            "Snapshots.Remove",
            RPC_TIMEOUT,
            self.snapshots().remove(self.req(RemoveSnapshotRequest {
                snapshotter: SNAPSHOTTER.to_string(),
                key: id.to_string(),
            })),
        )
        .await;
        match removed {
            Err(e) if !is_code(&e, Code::NotFound) => return Err(e),
            _ => {}
        }
        bounded(
            "Containers.Delete",
            RPC_TIMEOUT,
            self.containers()
                .delete(self.req(DeleteContainerRequest { id: id.to_string() })),
        )
        .await?;
        Ok(())
    }

    /// [`Ctx::delete_container`], ignoring errors (clean-up paths).
    async fn remove_container(&self, id: &str) {
        let _ = self.delete_container(id).await;
    }

    /// The reference HTTP function, started, listening on its own port, ready.
    pub async fn start_function(&self, tag: &str) -> Result<Instance> {
        let port = http::free_port()?;
        let mut f = self.create(tag, None, vec![format!("PORT={port}")]).await?;
        f.port = Some(port);
        f.start().await?;
        f.stdout
            .wait_for(&format!("ready port={port}"), Duration::from_secs(20))
            .await
            .with_context(|| {
                format!(
                    "function {} never said it was ready; stderr: {:?}",
                    f.id,
                    f.stderr.text()
                )
            })?;
        Ok(f)
    }

    /// runc options pointing runc's state at our temp dir instead of /run/containerd/runc.
    fn runc_options(&self) -> Any {
        use prost::Message as _;
        Any {
            type_url: RUNC_OPTIONS_TYPE.to_string(),
            value: RuncOptions {
                root: self.inner.paths.runc_root.display().to_string(),
            }
            .encode_to_vec(),
        }
    }

    /// Best-effort removal of everything the test created and did not delete itself:
    /// SIGKILL to all its processes, task delete, container delete, snapshot removal.
    /// Returns notes on what it had to do (empty when the test cleaned up after itself).
    pub async fn cleanup(&self) -> Vec<String> {
        let ids: Vec<String> = self
            .inner
            .tracked
            .lock()
            .unwrap()
            .iter()
            .map(|t| t.id.clone())
            .collect();
        let mut notes = Vec::new();
        let short = Duration::from_secs(10);
        for id in ids {
            if let Some(p) = self.task_of(&id).await {
                let status = p.status();
                notes.push(format!(
                    "{id}: task left in state {status:?}: killing and deleting it"
                ));
                if status == Status::Paused {
                    let _ = bounded(
                        "Tasks.Resume",
                        short,
                        self.tasks().resume(self.req(ResumeTaskRequest {
                            container_id: id.clone(),
                        })),
                    )
                    .await;
                }
                let _ = bounded(
                    "Tasks.Kill",
                    short,
                    self.tasks().kill(self.req(KillRequest {
                        container_id: id.clone(),
                        exec_id: String::new(),
                        signal: libc::SIGKILL as u32,
                        all: true,
                    })),
                )
                .await;
                let _ = wait(self, &id, "", short).await;
                if let Err(e) = bounded(
                    "Tasks.Delete",
                    short,
                    self.tasks().delete(self.req(DeleteTaskRequest {
                        container_id: id.clone(),
                    })),
                )
                .await
                {
                    notes.push(format!("{id}: {e:#}"));
                }
            }
            if self.container_exists(&id).await {
                notes.push(format!("{id}: container record left: deleting it"));
            }
            if self.snapshot_exists(&id).await {
                notes.push(format!("{id}: snapshot left: removing it"));
            }
            self.remove_container(&id).await;
        }
        notes
    }

    async fn task_of(&self, id: &str) -> Option<Process> {
        bounded(
            "Tasks.Get",
            Duration::from_secs(10),
            self.tasks().get(self.req(GetRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            })),
        )
        .await
        .ok()
        .and_then(|r| r.into_inner().process)
    }

    async fn container_exists(&self, id: &str) -> bool {
        bounded(
            "Containers.Get",
            Duration::from_secs(10),
            self.containers()
                .get(self.req(GetContainerRequest { id: id.to_string() })),
        )
        .await
        .is_ok()
    }

    async fn snapshot_exists(&self, id: &str) -> bool {
        bounded(
            "Snapshots.Stat",
            Duration::from_secs(10),
            self.snapshots().stat(self.req(StatSnapshotRequest {
                snapshotter: SNAPSHOTTER.to_string(),
                key: id.to_string(),
            })),
        )
        .await
        .is_ok()
    }

    /// The leak check for every container of the test: polls for up to 10 s by default
    /// (shims exit asynchronously after Delete), then reports what is left and removes it.
    pub async fn check_leaks(&self) -> Vec<String> {
        let targets: Vec<(String, String)> = self
            .inner
            .tracked
            .lock()
            .unwrap()
            .iter()
            .map(|t| (t.id.clone(), t.cgroups_path.clone()))
            .collect();
        let mut report = Vec::new();
        for (id, cgroups_path) in targets {
            let target = leaks::Target {
                paths: &self.inner.paths,
                namespace: NAMESPACE,
                id: &id,
                cgroups_path,
            };
            let grace = *self.inner.leak_grace.lock().unwrap();
            let deadline = tokio::time::Instant::now() + grace;
            let mut found = leaks::find(&target);
            while !found.is_empty() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
                found = leaks::find(&target);
            }
            if let Some(p) = self.task_of(&id).await {
                found.push(format!("containerd still has the task: {p:?}"));
            }
            if self.container_exists(&id).await {
                found.push("containerd still has the container".to_string());
            }
            if self.snapshot_exists(&id).await {
                found.push(format!("snapshot {SNAPSHOTTER}/{id} still exists"));
            }
            if !found.is_empty() {
                leaks::clean(&target);
                report.extend(found.into_iter().map(|f| format!("[{id}] {f}")));
            }
        }
        for t in self.inner.tracked.lock().unwrap().iter() {
            for (_, c) in &t.captures {
                c.close();
            }
        }
        report
    }

    /// What to print when the test failed: containerd's log lines about the test's
    /// containers, the tail of the log, and the containers' output.
    pub fn diagnostics(&self) -> String {
        let tracked = self.inner.tracked.lock().unwrap();
        let ids: Vec<String> = tracked.iter().map(|t| t.id.clone()).collect();
        let mut s = format!(
            "\n\n--- runtime {} / containerd {:?}, log {} ---",
            self.inner.runtime,
            self.inner.paths.version,
            self.inner.paths.log.display()
        );
        s.push_str(&format!(
            "\n--- containerd log lines about {ids:?} (last 60) ---\n{}",
            self.inner.paths.log_lines_mentioning(&ids, 60)
        ));
        s.push_str(&format!(
            "\n--- containerd log tail ---\n{}",
            self.inner.paths.log_tail(15)
        ));
        for t in tracked.iter() {
            for (name, c) in &t.captures {
                let text = c.text();
                if !text.is_empty() {
                    s.push_str(&format!("\n--- {} {name} ---\n{}", t.id, text.trim_end()));
                }
            }
        }
        s
    }

    fn track_capture(&self, id: &str, label: String, c: &Capture) {
        if let Some(t) = self
            .inner
            .tracked
            .lock()
            .unwrap()
            .iter_mut()
            .find(|t| t.id == id)
        {
            t.captures.push((label, c.clone()));
        }
    }
}

/// The OCI spec of a test container: runc's usual defaults (oci-spec's), minus the
/// network namespace, with a cgroup under `/<namespace>/<id>` like ctr does.
fn build_spec(
    id: &str,
    cgroups_path: &str,
    args: Vec<String>,
    env: Vec<String>,
    cwd: &str,
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
    let root = spec
        .root_mut()
        .as_mut()
        .context("default spec without root")?;
    root.set_readonly(Some(false));
    let linux = spec
        .linux_mut()
        .as_mut()
        .context("default spec without linux")?;
    let namespaces = linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|ns| ns.typ() != LinuxNamespaceType::Network)
        .collect();
    linux.set_namespaces(Some(namespaces));
    linux.set_cgroups_path(Some(cgroups_path.into()));
    Ok(spec)
}

/// One container with its task.
pub struct Instance {
    ctx: Ctx,
    pub id: String,
    /// Pid of the init process as containerd reported it at Create.
    pub pid: u32,
    pub stdout: Capture,
    pub stderr: Capture,
    process: oci_spec::runtime::Process,
    /// The HTTP function's port, for instances made by [`Ctx::start_function`].
    pub port: Option<u16>,
}

impl Instance {
    pub fn port(&self) -> u16 {
        self.port.expect("not a function instance")
    }

    pub async fn start(&self) -> Result<u32> {
        task_start(&self.ctx, &self.id, "", "Tasks.Start", RPC_TIMEOUT).await
    }

    /// Tasks.Wait on the init process: its exit status.
    pub async fn wait(&self, timeout: Duration) -> Result<u32> {
        wait(&self.ctx, &self.id, "", timeout).await
    }

    /// Tasks.Wait issued now, answered later: for a kill that should end the task.
    pub fn wait_in_background(&self, timeout: Duration) -> tokio::task::JoinHandle<Result<u32>> {
        wait_in_background(&self.ctx, &self.id, timeout)
    }

    pub async fn kill(&self, signal: i32, all: bool) -> Result<()> {
        task_kill(&self.ctx, &self.id, signal, all).await
    }

    /// Tasks.Get of the init process.
    pub async fn state(&self) -> Result<Process> {
        task_state(&self.ctx, &self.id).await
    }

    pub async fn pids(&self) -> Result<Vec<ProcessInfo>> {
        task_pids(&self.ctx, &self.id).await
    }

    pub async fn metrics(&self) -> Result<Vec<Metric>> {
        task_metrics(&self.ctx, &self.id).await
    }

    pub async fn pause(&self) -> Result<()> {
        task_pause(&self.ctx, &self.id).await
    }

    pub async fn resume(&self) -> Result<()> {
        task_resume(&self.ctx, &self.id).await
    }

    /// Adds a process (not started) running `args`, with the container's process
    /// settings. With `terminal`, its output arrives through a pty on stdout alone.
    pub async fn exec(&self, exec_id: &str, args: &[&str], terminal: bool) -> Result<Exec> {
        let io_dir = self.ctx.inner.paths.io.join(&self.id);
        let stdout = Capture::fifo(&io_dir.join(format!("{exec_id}.stdout")))?;
        self.ctx
            .track_capture(&self.id, format!("exec {exec_id} stdout"), &stdout);
        let stderr = if terminal {
            None
        } else {
            let c = Capture::fifo(&io_dir.join(format!("{exec_id}.stderr")))?;
            self.ctx
                .track_capture(&self.id, format!("exec {exec_id} stderr"), &c);
            Some(c)
        };
        let stderr_path = stderr.as_ref().map(Capture::path).unwrap_or_default();
        let io = (stdout.path(), stderr_path);
        task_exec(
            &self.ctx,
            &self.id,
            &self.process,
            exec_id,
            args,
            terminal,
            io,
        )
        .await?;
        Ok(Exec {
            ctx: self.ctx.clone(),
            container_id: self.id.clone(),
            exec_id: exec_id.to_string(),
            stdout,
            stderr,
        })
    }

    /// Tasks.Delete, then the snapshot and the container. Returns the exit status
    /// containerd reports for the deleted task.
    pub async fn delete(self) -> Result<u32> {
        let status = task_delete(&self.ctx, &self.id).await?;
        self.ctx.delete_container(&self.id).await?;
        Ok(status)
    }
}

// The task calls on a container (or one of its processes) by id: shared by
// [`Instance`], [`Exec`] and the restored functions of `restore::Function`.

/// Tasks.Start of `exec_id` ("" for the init), answering within `limit`: its pid.
pub async fn task_start(
    ctx: &Ctx,
    id: &str,
    exec_id: &str,
    what: &str,
    limit: Duration,
) -> Result<u32> {
    let r = bounded(
        what,
        limit,
        ctx.tasks().start(ctx.req(StartRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        })),
    )
    .await?;
    Ok(r.into_inner().pid)
}

/// Tasks.Kill of the init process (with `all`, of every process in the container).
pub async fn task_kill(ctx: &Ctx, id: &str, signal: i32, all: bool) -> Result<()> {
    bounded(
        "Tasks.Kill",
        RPC_TIMEOUT,
        ctx.tasks().kill(ctx.req(KillRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
            signal: signal as u32,
            all,
        })),
    )
    .await?;
    Ok(())
}

/// Tasks.Get of the init process.
pub async fn task_state(ctx: &Ctx, id: &str) -> Result<Process> {
    let r = bounded(
        "Tasks.Get",
        RPC_TIMEOUT,
        ctx.tasks().get(ctx.req(GetRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        })),
    )
    .await?;
    r.into_inner().process.context("Tasks.Get without process")
}

pub async fn task_pids(ctx: &Ctx, id: &str) -> Result<Vec<ProcessInfo>> {
    let r = bounded(
        "Tasks.ListPids",
        RPC_TIMEOUT,
        ctx.tasks().list_pids(ctx.req(ListPidsRequest {
            container_id: id.to_string(),
        })),
    )
    .await?;
    Ok(r.into_inner().processes)
}

pub async fn task_metrics(ctx: &Ctx, id: &str) -> Result<Vec<Metric>> {
    let r = bounded(
        "Tasks.Metrics",
        RPC_TIMEOUT,
        ctx.tasks().metrics(ctx.req(MetricsRequest {
            filters: vec![format!("id=={id}")],
        })),
    )
    .await?;
    Ok(r.into_inner().metrics)
}

pub async fn task_pause(ctx: &Ctx, id: &str) -> Result<()> {
    bounded(
        "Tasks.Pause",
        RPC_TIMEOUT,
        ctx.tasks().pause(ctx.req(PauseTaskRequest {
            container_id: id.to_string(),
        })),
    )
    .await?;
    Ok(())
}

/// Tasks.Update with OCI `LinuxResources` (as JSON, the way containerd carries them).
pub async fn task_update(ctx: &Ctx, id: &str, resources: &serde_json::Value) -> Result<()> {
    bounded(
        "Tasks.Update",
        RPC_TIMEOUT,
        ctx.tasks().update(ctx.req(UpdateTaskRequest {
            container_id: id.to_string(),
            resources: Some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
                value: serde_json::to_vec(resources)?,
            }),
            annotations: Default::default(),
        })),
    )
    .await?;
    Ok(())
}

pub async fn task_resume(ctx: &Ctx, id: &str) -> Result<()> {
    bounded(
        "Tasks.Resume",
        RPC_TIMEOUT,
        ctx.tasks().resume(ctx.req(ResumeTaskRequest {
            container_id: id.to_string(),
        })),
    )
    .await?;
    Ok(())
}

/// Tasks.Exec (not started) of `args` with the container's `process` settings, its
/// stdout and stderr on the FIFOs at `io` ("" for none).
pub async fn task_exec(
    ctx: &Ctx,
    id: &str,
    process: &oci_spec::runtime::Process,
    exec_id: &str,
    args: &[&str],
    terminal: bool,
    io: (String, String),
) -> Result<()> {
    let mut process = process.clone();
    process.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
    process.set_terminal(Some(terminal));
    bounded(
        "Tasks.Exec",
        RPC_TIMEOUT,
        ctx.tasks().exec(ctx.req(ExecProcessRequest {
            container_id: id.to_string(),
            stdin: String::new(),
            stdout: io.0,
            stderr: io.1,
            terminal,
            spec: Some(Any {
                type_url: PROCESS_TYPE.to_string(),
                value: serde_json::to_vec(&process)?,
            }),
            exec_id: exec_id.to_string(),
        })),
    )
    .await?;
    Ok(())
}

/// Tasks.DeleteProcess of an exec'd process: its exit status.
pub async fn task_delete_process(ctx: &Ctx, id: &str, exec_id: &str) -> Result<u32> {
    let r = bounded(
        "Tasks.DeleteProcess",
        RPC_TIMEOUT,
        ctx.tasks().delete_process(ctx.req(DeleteProcessRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        })),
    )
    .await?;
    Ok(r.into_inner().exit_status)
}

/// Tasks.Delete (the task only, not the container): its exit status.
pub async fn task_delete(ctx: &Ctx, id: &str) -> Result<u32> {
    let r = bounded(
        "Tasks.Delete",
        RPC_TIMEOUT,
        ctx.tasks().delete(ctx.req(DeleteTaskRequest {
            container_id: id.to_string(),
        })),
    )
    .await?;
    Ok(r.into_inner().exit_status)
}

/// Tasks.Wait on the init, issued now and answered later.
pub fn wait_in_background(
    ctx: &Ctx,
    id: &str,
    timeout: Duration,
) -> tokio::task::JoinHandle<Result<u32>> {
    let (ctx, id) = (ctx.clone(), id.to_string());
    tokio::spawn(async move { wait(&ctx, &id, "", timeout).await })
}

/// Tasks.Wait on `exec_id` ("" for the init): its exit status.
pub async fn wait(ctx: &Ctx, id: &str, exec_id: &str, timeout: Duration) -> Result<u32> {
    let r = bounded(
        &format!(
            "Tasks.Wait({id}{}{exec_id})",
            if exec_id.is_empty() { "" } else { "/" }
        ),
        timeout,
        ctx.tasks().wait(ctx.req(WaitRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        })),
    )
    .await?;
    Ok(r.into_inner().exit_status)
}

/// A process added to a running container with Tasks.Exec.
pub struct Exec {
    ctx: Ctx,
    pub container_id: String,
    pub exec_id: String,
    pub stdout: Capture,
    pub stderr: Option<Capture>,
}

impl Exec {
    pub async fn start(&self) -> Result<u32> {
        let (id, exec_id) = (&self.container_id, &self.exec_id);
        task_start(&self.ctx, id, exec_id, "Tasks.Start (exec)", RPC_TIMEOUT).await
    }

    pub async fn wait(&self, timeout: Duration) -> Result<u32> {
        wait(&self.ctx, &self.container_id, &self.exec_id, timeout).await
    }

    /// Tasks.DeleteProcess.
    pub async fn delete(self) -> Result<u32> {
        task_delete_process(&self.ctx, &self.container_id, &self.exec_id).await
    }
}

/// The snapshot chain id of layers with these diff ids (OCI image spec):
/// `chain(n) = sha256(chain(n-1) + " " + diff(n))`.
fn chain_id(diff_ids: &[String]) -> Option<String> {
    let mut it = diff_ids.iter();
    let mut chain = it.next()?.clone();
    for diff in it {
        let h = sha2::Sha256::digest(format!("{chain} {diff}").as_bytes());
        chain = format!(
            "sha256:{}",
            h.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
    }
    Some(chain)
}

/// Whether `code` is what the error carries (anywhere in its chain).
pub fn is_code(err: &anyhow::Error, code: Code) -> bool {
    super::grpc_code(err) == Some(code)
}
