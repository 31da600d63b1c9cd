//! [`ContainerdDriver`]: instances as containerd containers on the runtime
//! `io.containerd.rekindle.v2`, their checkpoints and staging through rekindle-restored.
//!
//! Every lifecycle call is a gRPC call to containerd (`containerd-client`); nothing shells
//! out. An instance is:
//! - a network namespace of its own (unless the function uses the host's), made before the
//!   container and named in its spec by path (see `super::netns`);
//! - a container (label [`FUNCTION_LABEL`]) whose spec carries
//!   `io.rekindle.checkpoint.store-as=<store_as>` and, for a restore,
//!   `io.rekindle.image=<image>` (the shim restores at Start), a cgroup under
//!   `/<namespace>/<id>` with the function's memory limit and CPU shares;
//! - an overlay snapshot on the image's top layer, keyed by the container id;
//! - a task whose stdout and stderr the shim appends to `<log_dir>/<id>.log`.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher as _, Hasher as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::{
    snapshots_client::SnapshotsClient, PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use containerd_client::services::v1::{
    containers_client::ContainersClient, images_client::ImagesClient, tasks_client::TasksClient,
    CheckpointTaskRequest, Container, CreateContainerRequest, CreateTaskRequest,
    DeleteContainerRequest, DeleteTaskRequest, GetImageRequest, GetRequest, KillRequest,
    ListContainersRequest, PauseTaskRequest, ReadContentRequest, ResumeTaskRequest, StartRequest,
    WaitRequest,
};
use containerd_client::tonic::{self, transport::Channel, Code, Request};
use containerd_client::types::v1::Status;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, Spec,
};
use prost::Message as _;
use prost_types::Any;
use rekindle_restore_api::Client as RestoredClient;
use sha2::Digest as _;

use super::netns;
use super::{
    Cause, DriverError, ForwardError, ForwardRequest, ForwardResponse, Found, FunctionSpec,
    Instance, InstanceDriver, NetMode, Op, Response, StageOutcome, StartHook, TaskState,
    FUNCTION_LABEL, IMAGE_ANNOTATION, OWNER_LABEL, REPLACE_ANNOTATION, STORE_AS_ANNOTATION,
};

pub const REKINDLE_RUNTIME: &str = "io.containerd.rekindle.v2";

const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const RUNC_OPTIONS_TYPE: &str = "containerd.runc.v1.Options";
/// The options type containerd 2 accepts in `Tasks.Checkpoint` for every runtime; the
/// shim decodes it.
const CHECKPOINT_OPTIONS_TYPE: &str = "containerd.runc.v1.CheckpointOptions";

/// `containerd.runc.v1.Options`, reduced to runc's `--root`.
#[derive(Clone, PartialEq, prost::Message)]
struct RuncOptions {
    #[prost(string, tag = "7")]
    root: String,
}

/// `containerd.runc.v1.CheckpointOptions` (containerd's `runc/options/oci.proto`), the
/// fields the driver sets.
#[derive(Clone, PartialEq, prost::Message)]
struct CheckpointOptions {
    #[prost(bool, tag = "1")]
    exit: bool,
    #[prost(bool, tag = "2")]
    open_tcp: bool,
}

/// Where and how the driver works.
#[derive(Clone, Debug)]
pub struct ContainerdConfig {
    /// containerd's gRPC socket.
    pub containerd_socket: PathBuf,
    /// The containerd namespace of the instances (and their images).
    pub namespace: String,
    /// The agent's id, on every container it makes ([`OWNER_LABEL`]): what
    /// [`InstanceDriver::discover`] finds again after a restart (default `default`).
    pub owner: String,
    /// Default [`REKINDLE_RUNTIME`].
    pub runtime: String,
    /// rekindle-restored's socket (stage, unstage). The shims find the daemon through
    /// containerd's environment (`REKINDLE_RESTORED_SOCKET`): it must be the same one.
    pub restored_socket: PathBuf,
    /// Default `overlayfs`.
    pub snapshotter: String,
    /// runc's `--root` for the tasks (`containerd.runc.v1.Options.root`); `None`: the
    /// runtime's default.
    pub runc_root: Option<PathBuf>,
    /// Where the instances' network namespaces are bind-mounted (default `/run/netns`).
    pub netns_dir: PathBuf,
    /// Where the instances' stdout and stderr go, one file per instance (removed at stop).
    pub log_dir: PathBuf,
    /// Bound on one containerd call (default 30 s).
    pub rpc_timeout: Duration,
    /// Bound on a new instance answering its ready path after Tasks.Start (default 30 s).
    pub ready_timeout: Duration,
    /// Bound on Tasks.Checkpoint, which dumps and stores the image (default 120 s).
    pub checkpoint_timeout: Duration,
}

impl ContainerdConfig {
    /// The defaults, on this containerd socket and namespace.
    pub fn new(containerd_socket: impl Into<PathBuf>, namespace: &str) -> Self {
        ContainerdConfig {
            containerd_socket: containerd_socket.into(),
            namespace: namespace.to_string(),
            owner: "default".to_string(),
            runtime: REKINDLE_RUNTIME.to_string(),
            restored_socket: PathBuf::from(rekindle_restore_api::DEFAULT_SOCKET),
            snapshotter: "overlayfs".to_string(),
            runc_root: None,
            netns_dir: PathBuf::from("/run/netns"),
            log_dir: PathBuf::from("/var/log/rekindle/instances"),
            rpc_timeout: Duration::from_secs(30),
            ready_timeout: Duration::from_secs(30),
            checkpoint_timeout: Duration::from_secs(120),
        }
    }
}

/// What an instance needs of its image: the snapshot to start from and the process
/// defaults.
#[derive(Clone, Debug)]
struct ImageConfig {
    chain_id: String,
    args: Vec<String>,
    env: Vec<String>,
    cwd: String,
}

/// The instance driver on containerd and rekindle-restored.
pub struct ContainerdDriver {
    channel: Channel,
    config: ContainerdConfig,
    restored: RestoredClient,
    namespace: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    images: Mutex<HashMap<String, ImageConfig>>,
    start_hook: Mutex<Option<Arc<dyn StartHook>>>,
}

/// Who a failing step belongs to, to name it in the error.
struct Scope<'a> {
    op: Op,
    function: &'a str,
    instance: Option<&'a str>,
    image: Option<&'a str>,
}

impl Scope<'_> {
    fn err(&self, cause: Cause) -> DriverError {
        DriverError {
            op: self.op,
            function: self.function.to_string(),
            instance: self.instance.map(str::to_string),
            image: self.image.map(str::to_string),
            cause,
        }
    }
}

/// One gRPC call, bounded.
async fn rpc<T>(
    call: &'static str,
    limit: Duration,
    fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, Cause> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(Cause::Grpc {
            call,
            code: s.code(),
            message: s.message().to_string(),
        }),
        Err(_) => Err(Cause::Timeout { call, after: limit }),
    }
}

fn is_not_found(c: &Cause) -> bool {
    matches!(
        c,
        Cause::Grpc {
            code: Code::NotFound,
            ..
        }
    )
}

fn io_cause(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Cause {
    let what = what.into();
    move |source| Cause::Io { what, source }
}

/// A fresh instance id: `<function>-<16 hex>` (the function's name reduced to what
/// container ids allow, at most 40 characters of it).
fn new_id(function: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(SEQ.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    let name: String = function
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let name = name.trim_start_matches(['-', '_', '.']);
    let name = if name.is_empty() { "fn" } else { name };
    format!("{name}-{:016x}", h.finish())
}

impl ContainerdDriver {
    /// Connects to containerd (the restore daemon is reached per call).
    pub async fn connect(config: ContainerdConfig) -> Result<Self, DriverError> {
        let scope = Scope {
            op: Op::Connect,
            function: "",
            instance: None,
            image: None,
        };
        let namespace = config.namespace.parse().map_err(|_| {
            scope.err(Cause::Invalid(format!(
                "namespace {:?} is not ASCII",
                config.namespace
            )))
        })?;
        let channel = tokio::time::timeout(
            config.rpc_timeout,
            containerd_client::connect(&config.containerd_socket),
        )
        .await
        .map_err(|_| {
            scope.err(Cause::Timeout {
                call: "connect",
                after: config.rpc_timeout,
            })
        })?
        .map_err(|e| {
            scope.err(Cause::Invalid(format!(
                "connecting to containerd on {}: {e}",
                config.containerd_socket.display()
            )))
        })?;
        Ok(ContainerdDriver {
            channel,
            restored: RestoredClient::new(config.restored_socket.clone()),
            config,
            namespace,
            images: Mutex::new(HashMap::new()),
            start_hook: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &ContainerdConfig {
        &self.config
    }

    /// The cgroup (cgroupfs path) of an instance's container.
    pub fn cgroups_path(&self, instance_id: &str) -> String {
        format!("/{}/{instance_id}", self.config.namespace)
    }

    /// The file an instance's stdout and stderr go to (until it is stopped).
    pub fn log_path(&self, instance_id: &str) -> PathBuf {
        self.config.log_dir.join(format!("{instance_id}.log"))
    }

    fn req<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        req.metadata_mut()
            .insert("containerd-namespace", self.namespace.clone());
        req
    }

    fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }

    fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }

    fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }

    fn runc_options(&self) -> Option<Any> {
        self.config.runc_root.as_ref().map(|root| Any {
            type_url: RUNC_OPTIONS_TYPE.to_string(),
            value: RuncOptions {
                root: root.display().to_string(),
            }
            .encode_to_vec(),
        })
    }

    // Images

    /// The image's top-layer chain id and process defaults, from containerd's image and
    /// content stores (once per image reference).
    async fn image_config(&self, image_ref: &str) -> Result<ImageConfig, Cause> {
        if let Some(c) = self
            .images
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(image_ref)
        {
            return Ok(c.clone());
        }
        let c = self.resolve_image(image_ref).await?;
        self.images
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(image_ref.to_string(), c.clone());
        Ok(c)
    }

    async fn resolve_image(&self, image_ref: &str) -> Result<ImageConfig, Cause> {
        let limit = self.config.rpc_timeout;
        let image = rpc(
            "Images.Get",
            limit,
            ImagesClient::new(self.channel.clone()).get(self.req(GetImageRequest {
                name: image_ref.to_string(),
            })),
        )
        .await?
        .image
        .ok_or_else(|| Cause::Invalid(format!("Images.Get {image_ref}: no image")))?;
        let target = image
            .target
            .ok_or_else(|| Cause::Invalid(format!("image {image_ref} without target")))?;
        let json = |bytes: Vec<u8>, what: &str| -> Result<serde_json::Value, Cause> {
            serde_json::from_slice(&bytes)
                .map_err(|e| Cause::Invalid(format!("image {image_ref}: {what} is not JSON: {e}")))
        };
        let mut digest = target.digest;
        let mut manifest = json(self.read_blob(&digest).await?, "manifest")?;
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
                .ok_or_else(|| Cause::Invalid(format!("image {image_ref}: empty index")))?;
            digest = chosen["digest"]
                .as_str()
                .ok_or_else(|| {
                    Cause::Invalid(format!("image {image_ref}: manifest without digest"))
                })?
                .to_string();
            manifest = json(self.read_blob(&digest).await?, "manifest")?;
        }
        let config_digest = manifest
            .pointer("/config/digest")
            .and_then(|v| v.as_str())
            .ok_or_else(|| Cause::Invalid(format!("manifest {digest} without config")))?
            .to_string();
        let config = json(self.read_blob(&config_digest).await?, "config")?;
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
        let chain_id = chain_id(&strings("/rootfs/diff_ids"))
            .ok_or_else(|| Cause::Invalid(format!("image {image_ref} has no layers")))?;
        let mut args = strings("/config/Entrypoint");
        args.extend(strings("/config/Cmd"));
        if args.is_empty() {
            return Err(Cause::Invalid(format!("image {image_ref} has no command")));
        }
        let cwd = config
            .pointer("/config/WorkingDir")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .unwrap_or("/")
            .to_string();
        Ok(ImageConfig {
            chain_id,
            args,
            env: strings("/config/Env"),
            cwd,
        })
    }

    async fn read_blob(&self, digest: &str) -> Result<Vec<u8>, Cause> {
        let limit = self.config.rpc_timeout;
        let mut stream = rpc(
            "Content.Read",
            limit,
            ContentClient::new(self.channel.clone()).read(self.req(ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            })),
        )
        .await?;
        let mut data = Vec::new();
        loop {
            match tokio::time::timeout(limit, stream.message()).await {
                Ok(Ok(Some(chunk))) => data.extend_from_slice(&chunk.data),
                Ok(Ok(None)) => return Ok(data),
                Ok(Err(s)) => {
                    return Err(Cause::Grpc {
                        call: "Content.Read",
                        code: s.code(),
                        message: s.message().to_string(),
                    })
                }
                Err(_) => {
                    return Err(Cause::Timeout {
                        call: "Content.Read",
                        after: limit,
                    })
                }
            }
        }
    }

    // Instances

    /// Makes and starts an instance (a restore of `image`, or a cold start), waits until
    /// it answers. On failure, removes whatever of it was made.
    async fn launch(
        &self,
        op: Op,
        f: &FunctionSpec,
        image: Option<&str>,
    ) -> Result<Instance, DriverError> {
        let id = new_id(&f.name);
        let mut inst = Instance {
            id: id.clone(),
            function: f.name.clone(),
            pid: 0,
            port: f.port,
            netns: None,
            restored_from: image.map(str::to_string),
            store_as: f.store_as.clone(),
        };
        let started = Instant::now();
        match self.launch_steps(f, image, &mut inst).await {
            Ok(()) => {
                tracing::info!(
                    function = %f.name, instance = %id, pid = inst.pid, image = ?image,
                    elapsed_ms = started.elapsed().as_millis() as u64, "{op}: ready"
                );
                Ok(inst)
            }
            Err(cause) => {
                let left = self.teardown(&inst).await;
                if !left.is_empty() {
                    tracing::warn!(
                        function = %f.name, instance = %id,
                        "{op} failed, and its clean-up too: {:?}", left
                    );
                }
                Err(Scope {
                    op,
                    function: &f.name,
                    instance: Some(&id),
                    image,
                }
                .err(cause))
            }
        }
    }

    async fn launch_steps(
        &self,
        f: &FunctionSpec,
        image: Option<&str>,
        inst: &mut Instance,
    ) -> Result<(), Cause> {
        let limit = self.config.rpc_timeout;
        let image_config = self.image_config(&f.image_ref).await?;
        if f.netns == NetMode::Own {
            let path = self.config.netns_dir.join(format!("rekindle-{}", inst.id));
            let p = path.clone();
            tokio::task::spawn_blocking(move || netns::create(&p))
                .await
                .map_err(|e| Cause::Invalid(format!("the netns task failed: {e}")))?
                .map_err(io_cause(format!(
                    "making the network namespace {}",
                    path.display()
                )))?;
            inst.netns = Some(path);
        }
        let spec = self.build_spec(f, &image_config, image, inst)?;
        let spec_json = serde_json::to_vec(&spec)
            .map_err(|e| Cause::Invalid(format!("encoding the OCI spec: {e}")))?;

        let log = self.log_path(&inst.id);
        std::fs::create_dir_all(&self.config.log_dir).map_err(io_cause(format!(
            "creating {}",
            self.config.log_dir.display()
        )))?;
        let log_uri = format!("file://{}", log.display());

        let options = self.runc_options();
        let container = Container {
            id: inst.id.clone(),
            image: f.image_ref.clone(),
            labels: HashMap::from([
                (FUNCTION_LABEL.to_string(), f.name.clone()),
                (OWNER_LABEL.to_string(), self.config.owner.clone()),
            ]),
            runtime: Some(Runtime {
                name: self.config.runtime.clone(),
                options: options.clone(),
            }),
            spec: Some(Any {
                type_url: SPEC_TYPE.to_string(),
                value: spec_json,
            }),
            snapshotter: self.config.snapshotter.clone(),
            snapshot_key: inst.id.clone(),
            ..Default::default()
        };
        rpc(
            "Containers.Create",
            limit,
            self.containers().create(self.req(CreateContainerRequest {
                container: Some(container),
            })),
        )
        .await?;
        let mounts = rpc(
            "Snapshots.Prepare",
            limit,
            self.snapshots().prepare(self.req(PrepareSnapshotRequest {
                snapshotter: self.config.snapshotter.clone(),
                key: inst.id.clone(),
                parent: image_config.chain_id.clone(),
                labels: HashMap::new(),
            })),
        )
        .await?
        .mounts;
        let created = rpc(
            "Tasks.Create",
            limit,
            self.tasks().create(self.req(CreateTaskRequest {
                container_id: inst.id.clone(),
                rootfs: mounts,
                stdin: String::new(),
                stdout: log_uri.clone(),
                stderr: log_uri,
                terminal: false,
                options,
                ..Default::default()
            })),
        )
        .await?;
        inst.pid = created.pid;
        // The cgroup exists now (Tasks.Create made it) and the function's processes do
        // not run yet: the collector watches it, and its start-up timeline, from here.
        let hook = self.start_hook.lock().unwrap().clone();
        if let Some(hook) = hook {
            hook.before_start(&f.name, &inst.id, &self.cgroups_path(&inst.id));
        }
        let started = rpc(
            "Tasks.Start",
            limit,
            self.tasks().start(self.req(StartRequest {
                container_id: inst.id.clone(),
                exec_id: String::new(),
            })),
        )
        .await?;
        inst.pid = started.pid;
        self.wait_ready(f, inst).await
    }

    /// Polls `GET <ready_path>` until it answers 200, within the ready timeout.
    async fn wait_ready(&self, f: &FunctionSpec, inst: &Instance) -> Result<(), Cause> {
        let limit = self.config.ready_timeout;
        let deadline = Instant::now() + limit;
        let mut last = String::from("no attempt");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let attempt = left.min(Duration::from_secs(2));
            match netns::http_get(inst.netns.as_deref(), inst.port, &f.ready_path, attempt).await {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => last = format!("answered {status}: {body}"),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(Cause::NotReady {
            path: f.ready_path.clone(),
            port: inst.port,
            after: limit,
            last,
        })
    }

    /// The instance's OCI spec: runc's usual defaults (oci-spec's), the image's process
    /// with `PORT` and the function's environment, the network namespace, a cgroup under
    /// `/<namespace>/<id>` with the function's limits, the shim's annotations.
    fn build_spec(
        &self,
        f: &FunctionSpec,
        image_config: &ImageConfig,
        image: Option<&str>,
        inst: &Instance,
    ) -> Result<Spec, Cause> {
        let missing = |what: &str| Cause::Invalid(format!("oci-spec's default spec has no {what}"));
        let mut spec = Spec::default();
        spec.set_hostname(Some(inst.id.chars().take(63).collect()));
        let mut env = image_config.env.clone();
        env.push(format!("PORT={}", f.port));
        env.extend(f.env.iter().cloned());
        let process = spec
            .process_mut()
            .as_mut()
            .ok_or_else(|| missing("process"))?;
        process.set_args(Some(image_config.args.clone()));
        process.set_env(Some(env));
        process.set_cwd(image_config.cwd.clone().into());
        spec.root_mut()
            .as_mut()
            .ok_or_else(|| missing("root"))?
            .set_readonly(Some(false));
        let linux = spec.linux_mut().as_mut().ok_or_else(|| missing("linux"))?;
        let mut namespaces: Vec<_> = linux
            .namespaces()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|ns| ns.typ() != LinuxNamespaceType::Network)
            .collect();
        if let Some(path) = &inst.netns {
            namespaces.push(
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::Network)
                    .path(path.clone())
                    .build()
                    .map_err(|e| Cause::Invalid(format!("network namespace entry: {e}")))?,
            );
        }
        linux.set_namespaces(Some(namespaces));
        linux.set_cgroups_path(Some(self.cgroups_path(&inst.id).into()));
        let mut resources = linux.resources().clone().unwrap_or_default();
        if f.memory_limit_bytes > 0 {
            let limit = i64::try_from(f.memory_limit_bytes).map_err(|_| {
                Cause::Invalid(format!("memory limit {} too large", f.memory_limit_bytes))
            })?;
            resources.set_memory(Some(
                LinuxMemoryBuilder::default()
                    .limit(limit)
                    .build()
                    .map_err(|e| Cause::Invalid(format!("memory limit: {e}")))?,
            ));
        }
        if let Some(shares) = f.cpu_shares {
            resources.set_cpu(Some(
                LinuxCpuBuilder::default()
                    .shares(shares)
                    .build()
                    .map_err(|e| Cause::Invalid(format!("cpu shares: {e}")))?,
            ));
        }
        if f.memory_limit_bytes > 0 || f.cpu_shares.is_some() {
            linux.set_resources(Some(resources));
        }
        let mut annotations = spec.annotations().clone().unwrap_or_default();
        annotations.insert(STORE_AS_ANNOTATION.to_string(), f.store_as.clone());
        annotations.insert(REPLACE_ANNOTATION.to_string(), "true".to_string());
        if let Some(image) = image {
            annotations.insert(IMAGE_ANNOTATION.to_string(), image.to_string());
        }
        spec.set_annotations(Some(annotations));
        Ok(spec)
    }

    /// Removes everything of an instance that exists: its task (killed first, thawed if
    /// frozen), its snapshot, its container, its network namespace, its log. Returns
    /// what could not be removed.
    /// SIGKILL to every process of the task (`Tasks.Kill` with `all`).
    async fn kill_all(&self, id: &str, limit: Duration) -> Result<(), Cause> {
        rpc(
            "Tasks.Kill",
            limit,
            self.tasks().kill(self.req(KillRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
                signal: libc::SIGKILL as u32,
                all: true,
            })),
        )
        .await
        .map(drop)
    }

    async fn teardown(&self, inst: &Instance) -> Vec<Cause> {
        let limit = self.config.rpc_timeout;
        let id = &inst.id;
        let mut failed = Vec::new();
        let task = rpc(
            "Tasks.Get",
            limit,
            self.tasks().get(self.req(GetRequest {
                container_id: id.clone(),
                exec_id: String::new(),
            })),
        )
        .await;
        match task {
            Ok(r) => {
                let status = r.process.map(|p| p.status()).unwrap_or(Status::Unknown);
                if matches!(status, Status::Paused | Status::Pausing) {
                    // A frozen process does not die of SIGKILL until it is thawed.
                    if let Err(c) = rpc(
                        "Tasks.Resume",
                        limit,
                        self.tasks().resume(self.req(ResumeTaskRequest {
                            container_id: id.clone(),
                        })),
                    )
                    .await
                    {
                        tracing::debug!(instance = %id, "thaw before kill: {c}");
                    }
                }
                if status == Status::Created {
                    // Never started (or a restore whose Start failed): its init, if
                    // any, waits to be started; a kill may find nothing to kill.
                    let _ = self.kill_all(id, limit).await;
                } else if status != Status::Stopped {
                    let waiting = {
                        let (mut tasks, req) = (
                            self.tasks(),
                            self.req(WaitRequest {
                                container_id: id.clone(),
                                exec_id: String::new(),
                            }),
                        );
                        tokio::spawn(async move {
                            rpc("Tasks.Wait", limit, tasks.wait(req)).await.map(|_| ())
                        })
                    };
                    let killed = self.kill_all(id, limit).await;
                    match killed {
                        Err(c) if !is_not_found(&c) => {
                            waiting.abort();
                            failed.push(c);
                        }
                        _ => match waiting.await {
                            Ok(Err(c)) if !is_not_found(&c) => failed.push(c),
                            Err(e) => failed.push(Cause::Invalid(format!("Tasks.Wait: {e}"))),
                            _ => {}
                        },
                    }
                }
                match rpc(
                    "Tasks.Delete",
                    limit,
                    self.tasks().delete(self.req(DeleteTaskRequest {
                        container_id: id.clone(),
                    })),
                )
                .await
                {
                    Err(c) if !is_not_found(&c) => failed.push(c),
                    _ => {}
                }
            }
            Err(c) if is_not_found(&c) => {}
            Err(c) => failed.push(c),
        }
        // The snapshot, then the container record (as containerd's Go client does: the
        // other order lets a garbage collection in between take the snapshot).
        match rpc(
            "Snapshots.Remove",
            limit,
            self.snapshots().remove(self.req(RemoveSnapshotRequest {
                snapshotter: self.config.snapshotter.clone(),
                key: id.clone(),
            })),
        )
        .await
        {
            Err(c) if !is_not_found(&c) => failed.push(c),
            _ => {}
        }
        match rpc(
            "Containers.Delete",
            limit,
            self.containers()
                .delete(self.req(DeleteContainerRequest { id: id.clone() })),
        )
        .await
        {
            Err(c) if !is_not_found(&c) => failed.push(c),
            _ => {}
        }
        if let Some(path) = &inst.netns {
            if let Err(e) = netns::remove(path) {
                failed.push(Cause::Io {
                    what: format!("removing the network namespace {}", path.display()),
                    source: e,
                });
            }
        }
        let log = self.log_path(id);
        match std::fs::remove_file(&log) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => failed.push(Cause::Io {
                what: format!("removing {}", log.display()),
                source: e,
            }),
            _ => {}
        }
        failed
    }

    /// [`InstanceDriver::discover`]: this agent's containers read back, then what an
    /// interrupted launch left without a container swept.
    async fn discover_steps(&self) -> Result<Vec<Found>, Cause> {
        let limit = self.config.rpc_timeout;
        let containers = rpc(
            "Containers.List",
            limit,
            self.containers()
                .list(self.req(ListContainersRequest { filters: vec![] })),
        )
        .await?
        .containers;
        let all_ids: std::collections::HashSet<String> =
            containers.iter().map(|c| c.id.clone()).collect();
        let mut found = Vec::new();
        for c in containers {
            if c.labels.get(OWNER_LABEL) != Some(&self.config.owner) {
                continue;
            }
            let Some(function) = c.labels.get(FUNCTION_LABEL).cloned() else {
                continue;
            };
            let spec = c.spec.as_ref().map(|a| a.value.as_slice()).unwrap_or(&[]);
            let mut instance = match instance_from_spec(&c.id, &function, spec) {
                Ok(i) => i,
                Err(why) => {
                    // Still ours to remove: found with what is known (no netns, no port).
                    tracing::warn!(instance = %c.id, function, "unreadable spec: {why}");
                    Instance {
                        id: c.id.clone(),
                        function: function.clone(),
                        pid: 0,
                        port: 0,
                        netns: None,
                        restored_from: None,
                        store_as: String::new(),
                    }
                }
            };
            let state = match rpc(
                "Tasks.Get",
                limit,
                self.tasks().get(self.req(GetRequest {
                    container_id: c.id.clone(),
                    exec_id: String::new(),
                })),
            )
            .await
            {
                Ok(r) => {
                    let p = r.process.unwrap_or_default();
                    instance.pid = p.pid;
                    Some(task_state(p.status()))
                }
                Err(c) if is_not_found(&c) => None,
                Err(c) => return Err(c),
            };
            found.push(Found { instance, state });
        }
        // A launch interrupted between its network namespace (or log) and its container
        // left them behind; no container will ever name them again.
        let orphan = |name: &str, prefix: &str, suffix: &str| {
            name.strip_prefix(prefix)
                .and_then(|n| n.strip_suffix(suffix))
                .is_some_and(|id| !id.is_empty() && !all_ids.contains(id))
        };
        for (dir, prefix, suffix) in [
            (&self.config.netns_dir, "rekindle-", ""),
            (&self.config.log_dir, "", ".log"),
        ] {
            let Ok(rd) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !orphan(&name, prefix, suffix) {
                    continue;
                }
                let path = e.path();
                let r = if prefix.is_empty() {
                    std::fs::remove_file(&path)
                } else {
                    netns::remove(&path)
                };
                match r {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "removed, left by an interrupted start")
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot remove what an interrupted start left")
                    }
                }
            }
        }
        Ok(found)
    }

    async fn task_status(&self, id: &str) -> Result<Status, Cause> {
        let r = rpc(
            "Tasks.Get",
            self.config.rpc_timeout,
            self.tasks().get(self.req(GetRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            })),
        )
        .await?;
        Ok(r.process.map(|p| p.status()).unwrap_or(Status::Unknown))
    }

    /// Tasks.Checkpoint as containerd's Go client makes it: paused first (unless it is
    /// already), the content under a lease of its own (deleted after: the image that
    /// matters is the one the shim stored), resumed after.
    async fn checkpoint_steps(&self, inst: &Instance) -> Result<(), Cause> {
        let limit = self.config.rpc_timeout;
        let id = &inst.id;
        let mut leases = LeasesClient::new(self.channel.clone());
        let lease = rpc(
            "Leases.Create",
            limit,
            leases.create(self.req(containerd_client::services::v1::CreateRequest {
                id: format!("rekindle-agent-{}", new_id(&inst.function)),
                labels: HashMap::new(),
            })),
        )
        .await?
        .lease
        .ok_or_else(|| Cause::Invalid("Leases.Create without lease".into()))?
        .id;
        let result = async {
            let pause = !matches!(
                self.task_status(id).await?,
                Status::Paused | Status::Pausing
            );
            if pause {
                rpc(
                    "Tasks.Pause",
                    limit,
                    self.tasks().pause(self.req(PauseTaskRequest {
                        container_id: id.clone(),
                    })),
                )
                .await?;
            }
            let mut req = self.req(CheckpointTaskRequest {
                container_id: id.clone(),
                parent_checkpoint: String::new(),
                options: Some(Any {
                    type_url: CHECKPOINT_OPTIONS_TYPE.to_string(),
                    value: CheckpointOptions {
                        exit: false,
                        open_tcp: false,
                    }
                    .encode_to_vec(),
                }),
            });
            req.metadata_mut().insert(
                "containerd-lease",
                lease
                    .parse()
                    .map_err(|_| Cause::Invalid(format!("lease id {lease:?} is not ASCII")))?,
            );
            let dumped = rpc(
                "Tasks.Checkpoint",
                self.config.checkpoint_timeout,
                self.tasks().checkpoint(req),
            )
            .await;
            if pause {
                let resumed = rpc(
                    "Tasks.Resume",
                    limit,
                    self.tasks().resume(self.req(ResumeTaskRequest {
                        container_id: id.clone(),
                    })),
                )
                .await;
                if dumped.is_ok() {
                    resumed?;
                }
            }
            dumped.map(|_| ())
        }
        .await;
        // Synchronously: containerd then collects the checkpoint's content (only the
        // lease held it; the shim has stored the image) before it answers. Left to
        // the next collection, a checkpoint of the same container soon after found
        // a blob of this one still there, and containerd 1.6 fails a commit of
        // content that exists (`Tasks.Checkpoint: AlreadyExists`, after the shim had
        // stored the new image; fixed in containerd 2.0, PR #8401).
        let released = rpc(
            "Leases.Delete",
            limit,
            leases.delete(self.req(containerd_client::services::v1::DeleteRequest {
                id: lease.clone(),
                sync: true,
            })),
        )
        .await;
        result?;
        released.map(|_| ())
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

/// An instance as its container's OCI spec (written by [`ContainerdDriver::build_spec`])
/// describes it; the pid is the task's, filled in by the caller.
fn instance_from_spec(id: &str, function: &str, spec_json: &[u8]) -> Result<Instance, String> {
    let spec: Spec = serde_json::from_slice(spec_json).map_err(|e| e.to_string())?;
    let annotations = spec.annotations().clone().unwrap_or_default();
    let store_as = annotations
        .get(STORE_AS_ANNOTATION)
        .cloned()
        .ok_or_else(|| format!("no {STORE_AS_ANNOTATION} annotation"))?;
    let port = spec
        .process()
        .as_ref()
        .and_then(|p| p.env().as_ref())
        .and_then(|env| {
            // The driver puts PORT after the image's environment, and the function's own
            // entries after it: the first PORT= from the end that parses.
            env.iter()
                .rev()
                .find_map(|kv| kv.strip_prefix("PORT=")?.parse::<u16>().ok())
        })
        .ok_or("no PORT in the process environment")?;
    let netns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|ns| {
            ns.iter()
                .find(|n| n.typ() == LinuxNamespaceType::Network)
                .and_then(|n| n.path().clone())
        });
    Ok(Instance {
        id: id.to_string(),
        function: function.to_string(),
        pid: 0,
        port,
        netns,
        restored_from: annotations.get(IMAGE_ANNOTATION).cloned(),
        store_as,
    })
}

fn task_state(s: Status) -> TaskState {
    match s {
        Status::Created => TaskState::Created,
        Status::Running => TaskState::Running,
        Status::Paused => TaskState::Paused,
        Status::Pausing => TaskState::Pausing,
        Status::Stopped => TaskState::Stopped,
        Status::Unknown => TaskState::Unknown,
    }
}

fn instance_scope(op: Op, i: &Instance) -> Scope<'_> {
    Scope {
        op,
        function: &i.function,
        instance: Some(&i.id),
        image: None,
    }
}

#[async_trait::async_trait]
impl InstanceDriver for ContainerdDriver {
    async fn cold_start(&self, f: &FunctionSpec) -> Result<Instance, DriverError> {
        self.launch(Op::ColdStart, f, None).await
    }

    async fn restore(&self, f: &FunctionSpec, image: &str) -> Result<Instance, DriverError> {
        self.launch(Op::Restore, f, Some(image)).await
    }

    async fn checkpoint(
        &self,
        i: &Instance,
        image: &str,
        replace: bool,
    ) -> Result<(), DriverError> {
        let scope = Scope {
            image: Some(image),
            ..instance_scope(Op::Checkpoint, i)
        };
        if image != i.store_as {
            return Err(scope.err(Cause::Invalid(format!(
                "the instance stores its checkpoints as {:?} (its container's \
                 {STORE_AS_ANNOTATION}, fixed at creation), not {image:?}",
                i.store_as
            ))));
        }
        // Instances are annotated to replace (REPLACE_ANNOTATION): whether one may
        // is decided here, before CRIU dumps anything.
        if !replace {
            match self.restored.get_image(image).await {
                Ok(_) => return Err(scope.err(Cause::ImageExists(image.to_string()))),
                Err(e) if e.code() == Some(rekindle_restore_api::ErrorCode::NotFound) => {}
                Err(e) => return Err(scope.err(Cause::Restored(e))),
            }
        }
        let started = Instant::now();
        self.checkpoint_steps(i).await.map_err(|c| scope.err(c))?;
        tracing::info!(
            function = %i.function, instance = %i.id, image,
            elapsed_ms = started.elapsed().as_millis() as u64, "checkpoint stored"
        );
        Ok(())
    }

    async fn freeze(&self, i: &Instance) -> Result<(), DriverError> {
        rpc(
            "Tasks.Pause",
            self.config.rpc_timeout,
            self.tasks().pause(self.req(PauseTaskRequest {
                container_id: i.id.clone(),
            })),
        )
        .await
        .map(|_| ())
        .map_err(|c| instance_scope(Op::Freeze, i).err(c))
    }

    async fn thaw(&self, i: &Instance) -> Result<(), DriverError> {
        rpc(
            "Tasks.Resume",
            self.config.rpc_timeout,
            self.tasks().resume(self.req(ResumeTaskRequest {
                container_id: i.id.clone(),
            })),
        )
        .await
        .map(|_| ())
        .map_err(|c| instance_scope(Op::Thaw, i).err(c))
    }

    async fn state(&self, i: &Instance) -> Result<TaskState, DriverError> {
        self.task_status(&i.id)
            .await
            .map(task_state)
            .map_err(|c| instance_scope(Op::State, i).err(c))
    }

    async fn stop(&self, i: Instance) -> Result<(), DriverError> {
        let mut failed = self.teardown(&i).await;
        if failed.is_empty() {
            return Ok(());
        }
        let first = failed.remove(0);
        let cause = if failed.is_empty() {
            first
        } else {
            Cause::Several {
                first: Box::new(first),
                more: failed.len(),
            }
        };
        Err(instance_scope(Op::Stop, &i).err(cause))
    }

    async fn stage(&self, image: &str) -> Result<StageOutcome, DriverError> {
        let staged = self.restored.stage_image(image).await.map_err(|e| {
            Scope {
                op: Op::Stage,
                function: "",
                instance: None,
                image: Some(image),
            }
            .err(Cause::Restored(e))
        })?;
        Ok(StageOutcome {
            bytes: staged.bytes,
            already_staged: staged.already_staged,
        })
    }

    async fn unstage(&self, image: &str) -> Result<(), DriverError> {
        self.restored
            .unstage_image(image)
            .await
            .map(|_| ())
            .map_err(|e| {
                Scope {
                    op: Op::Unstage,
                    function: "",
                    instance: None,
                    image: Some(image),
                }
                .err(Cause::Restored(e))
            })
    }

    async fn discover(&self) -> Result<Vec<Found>, DriverError> {
        self.discover_steps().await.map_err(|c| {
            Scope {
                op: Op::Discover,
                function: "",
                instance: None,
                image: None,
            }
            .err(c)
        })
    }

    fn set_start_hook(&self, hook: Arc<dyn StartHook>) {
        *self.start_hook.lock().unwrap() = Some(hook);
    }

    async fn invoke(
        &self,
        i: &Instance,
        path: &str,
        timeout: Duration,
    ) -> Result<Response, DriverError> {
        netns::http_get(i.netns.as_deref(), i.port, path, timeout)
            .await
            .map(|(status, body)| Response { status, body })
            .map_err(|e| {
                instance_scope(Op::Invoke, i).err(Cause::Io {
                    what: format!("GET {path} on port {}", i.port),
                    source: e,
                })
            })
    }

    async fn forward(
        &self,
        i: &Instance,
        req: ForwardRequest,
        timeout: Duration,
        max_response_bytes: usize,
    ) -> Result<ForwardResponse, ForwardError> {
        let what = format!("{} {} on port {}", req.method, req.path, i.port);
        let io = |source| {
            instance_scope(Op::Invoke, i).err(Cause::Io {
                what: what.clone(),
                source,
            })
        };
        netns::forward(i.netns.as_deref(), i.port, req, timeout, max_response_bytes)
            .await
            .map_err(|f| match f {
                netns::ForwardFailure::Connect(e) => ForwardError::NotSent(io(e)),
                netns::ForwardFailure::Exchange(e) => ForwardError::Failed(io(e)),
                netns::ForwardFailure::TooLarge => ForwardError::TooLarge {
                    instance: i.id.clone(),
                    limit: max_response_bytes,
                },
            })
    }
}

impl std::fmt::Debug for ContainerdDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerdDriver")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function() -> FunctionSpec {
        FunctionSpec {
            name: "hello world".into(),
            image_ref: "docker.io/rekindle/python-fn:latest".into(),
            env: vec!["STATE_MB=16".into()],
            port: 8080,
            memory_limit_bytes: 256 << 20,
            cpu_shares: Some(512),
            store_as: "hello".into(),
            netns: NetMode::Own,
            ready_path: "/healthz".into(),
        }
    }

    #[test]
    fn ids_are_unique_and_valid() {
        let a = new_id("hello world/ü");
        let b = new_id("hello world/ü");
        assert_ne!(a, b);
        assert!(a.starts_with("hello-world--"), "{a}");
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)));
        assert!(new_id("---").starts_with("fn-"));
        assert!(new_id(&"x".repeat(100)).len() <= 40 + 17);
    }

    #[test]
    fn chain_id_of_one_and_two_layers() {
        assert_eq!(chain_id(&[]), None);
        assert_eq!(chain_id(&["sha256:a".into()]).as_deref(), Some("sha256:a"));
        let two = chain_id(&["sha256:a".into(), "sha256:b".into()]).unwrap();
        let want = sha2::Sha256::digest(b"sha256:a sha256:b");
        assert_eq!(
            two,
            format!(
                "sha256:{}",
                want.iter().map(|b| format!("{b:02x}")).collect::<String>()
            )
        );
    }

    #[tokio::test]
    async fn spec_carries_netns_cgroup_limits_env_and_annotations() {
        // A channel that is never used: build_spec makes no call.
        let channel = tonic::transport::Endpoint::from_static("http://[::]:1").connect_lazy();
        let config = ContainerdConfig::new("/nonexistent.sock", "rekindle");
        let driver = ContainerdDriver {
            channel,
            restored: RestoredClient::new("/nonexistent"),
            namespace: "rekindle".parse().unwrap(),
            config,
            images: Mutex::new(HashMap::new()),
            start_hook: Mutex::new(None),
        };
        let image = ImageConfig {
            chain_id: "sha256:x".into(),
            args: vec!["python3".into(), "/fn.py".into()],
            env: vec!["PATH=/usr/bin".into()],
            cwd: "/".into(),
        };
        let f = function();
        let inst = Instance {
            id: "hello-1".into(),
            function: f.name.clone(),
            pid: 0,
            port: 8080,
            netns: Some("/run/netns/rekindle-hello-1".into()),
            restored_from: Some("hello".into()),
            store_as: "hello".into(),
        };
        let spec = driver.build_spec(&f, &image, Some("hello"), &inst).unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            json["process"]["env"],
            serde_json::json!(["PATH=/usr/bin", "PORT=8080", "STATE_MB=16"])
        );
        assert_eq!(json["linux"]["cgroupsPath"], "/rekindle/hello-1");
        assert_eq!(json["linux"]["resources"]["memory"]["limit"], 256 << 20);
        assert_eq!(json["linux"]["resources"]["cpu"]["shares"], 512);
        let net: Vec<_> = json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["type"] == "network")
            .collect();
        assert_eq!(net.len(), 1);
        assert_eq!(net[0]["path"], "/run/netns/rekindle-hello-1");
        assert_eq!(json["annotations"][STORE_AS_ANNOTATION], "hello");
        assert_eq!(json["annotations"][IMAGE_ANNOTATION], "hello");
        // A restarted agent reads the instance back from the spec (pid from the task).
        let back = instance_from_spec(&inst.id, &f.name, &serde_json::to_vec(&spec).unwrap());
        assert_eq!(back, Ok(inst.clone()));
        assert!(instance_from_spec("x", "f", b"{}")
            .unwrap_err()
            .contains(STORE_AS_ANNOTATION));
        assert!(instance_from_spec("x", "f", b"not json").is_err());

        // Host network, no limits, a cold start: no netns entry, no image annotation.
        let f = FunctionSpec {
            netns: NetMode::Host,
            memory_limit_bytes: 0,
            cpu_shares: None,
            ..function()
        };
        let inst = Instance {
            netns: None,
            ..inst
        };
        let json =
            serde_json::to_value(driver.build_spec(&f, &image, None, &inst).unwrap()).unwrap();
        assert!(json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["type"] != "network"));
        assert!(json["annotations"].get(IMAGE_ANNOTATION).is_none());
        assert_eq!(json["annotations"][STORE_AS_ANNOTATION], "hello");
        let spec = driver.build_spec(&f, &image, None, &inst).unwrap();
        let back = instance_from_spec(&inst.id, &f.name, &serde_json::to_vec(&spec).unwrap());
        assert_eq!(
            back,
            Ok(Instance {
                restored_from: None,
                ..inst
            })
        );
    }
}
