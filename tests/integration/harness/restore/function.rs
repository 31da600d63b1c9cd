//! Function containers made the way restores need them, and the task calls the stories
//! make on them.

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use containerd_client::services::v1::snapshots::{
    snapshots_client::SnapshotsClient, PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use containerd_client::services::v1::{
    container::Runtime, Container, CreateContainerRequest, CreateTaskRequest,
    DeleteContainerRequest,
};
use containerd_client::types::v1::{Process, ProcessInfo, Status};
use containerd_client::types::{Descriptor, Metric};
use oci_spec::runtime::{LinuxNamespaceBuilder, LinuxNamespaceType, Spec};
use prost::Message as _;
use prost_types::Any;

use super::super::client::{
    bounded, task_delete, task_delete_process, task_exec, task_kill, task_metrics, task_pause,
    task_pids, task_resume, task_start, task_state, task_update, wait, wait_in_background,
};
use super::super::stdio::Capture;
use super::super::{http, secs, Ctx, IMAGE, NAMESPACE, RPC_TIMEOUT, SNAPSHOTTER};
use super::{
    checkpoint, get_in_netns, ns_inode, Checkpoint, CheckpointOptions, NetNs, NETNS_PORT,
    RUNC_OPTIONS_TYPE, SPEC_TYPE,
};

/// `containerd.runc.v1.Options`, reduced to what the stories set: the runc root
/// (as the harness sets it) and the owner of the stdio pipes.
#[derive(Clone, PartialEq, prost::Message)]
struct RuncOptions {
    #[prost(uint32, tag = "4")]
    io_uid: u32,
    #[prost(uint32, tag = "5")]
    io_gid: u32,
    #[prost(string, tag = "7")]
    root: String,
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
    /// IoUid and IoGid of the runtime options.
    io_owner: (u32, u32),
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
            io_owner: (0, 0),
        }
    }

    /// Its stdio pipes owned by `uid`:`gid` (runc options IoUid, IoGid).
    pub fn io_owner(mut self, uid: u32, gid: u32) -> Self {
        self.io_owner = (uid, gid);
        self
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
            (None, false) => http::free_port()?,
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
            io_owner: self.io_owner,
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
                create_phases: CreatePhases::default(),
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
    io_owner: (u32, u32),
    checkpoint: Option<Descriptor>,
    spec: Spec,
    function: Function,
}

impl PreparedFunction {
    /// Containers.Create, Snapshots.Prepare and Tasks.Create (with the checkpoint, if
    /// any). If the task cannot be created, the container and its snapshot are removed
    /// again, as `ctr` does, and the error is returned.
    pub async fn create(self) -> Result<Function> {
        let mut f = self.function;
        let ctx = &f.ctx;
        let image = ctx.image().await?;
        let options = runc_options(ctx, self.io_owner);
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
        let t = Instant::now();
        bounded(
            "Containers.Create",
            RPC_TIMEOUT,
            ctx.containers().create(ctx.req(CreateContainerRequest {
                container: Some(container),
            })),
        )
        .await?;
        f.create_phases.container = t.elapsed();
        let t = Instant::now();
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
        f.create_phases.snapshot = t.elapsed();
        let t = Instant::now();
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
        f.create_phases.task = t.elapsed();
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

fn runc_options(ctx: &Ctx, (io_uid, io_gid): (u32, u32)) -> Any {
    Any {
        type_url: RUNC_OPTIONS_TYPE.to_string(),
        value: RuncOptions {
            io_uid,
            io_gid,
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
    /// How long each of `PreparedFunction::create`'s calls took (the bench's phases).
    pub create_phases: CreatePhases,
}

/// The three containerd calls that make a function container, timed.
#[derive(Clone, Copy, Debug, Default)]
pub struct CreatePhases {
    /// Containers.Create.
    pub container: Duration,
    /// Snapshots.Prepare: the writable rootfs snapshot.
    pub snapshot: Duration,
    /// Tasks.Create: the shim's start and its Create.
    pub task: Duration,
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
        let r = task_start(&self.ctx, &self.id, "", "Tasks.Start", limit).await;
        let pid = match r {
            Ok(pid) => pid,
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
        self.pid.store(pid, Ordering::SeqCst);
        Ok(pid)
    }

    /// `GET path` on the function: over loopback, or inside its network namespace.
    pub async fn get(&self, path: &str, timeout: Duration) -> Result<(u16, String)> {
        if let Some(ns) = &self.netns {
            get_in_netns(ns.path(), self.port, path, timeout).await
        } else {
            http::get(self.port, path, timeout).await
        }
    }

    /// `GET path`, answered 200 with JSON: that JSON.
    async fn get_json(&self, path: &str, timeout: Duration) -> Result<serde_json::Value> {
        let (status, body) = self.get(path, timeout).await?;
        if status != 200 {
            bail!("GET {path} on {} answered {status}: {body}", self.id);
        }
        serde_json::from_str(&body)
            .with_context(|| format!("GET {path} on {}: body is not JSON: {body:?}", self.id))
    }

    /// `GET /`: the function's JSON answer.
    pub async fn call(&self) -> Result<serde_json::Value> {
        self.get_json("/", secs(10)).await
    }

    /// `GET /`: its invocation counter.
    pub async fn count(&self) -> Result<u64> {
        let json = self.call().await?;
        json.get("count")
            .and_then(serde_json::Value::as_u64)
            .with_context(|| format!("GET / on {}: no numeric \"count\" in {json}", self.id))
    }

    /// Checks its whole state, byte for byte, against a fresh build of it (`GET
    /// /verify`): after a restore, a read of every page CRIU brought back (with lazy
    /// pages, of every page the lazy-pages daemon serves on a fault, prefetches or
    /// sends in the background).
    pub async fn state_intact(&self) -> Result<()> {
        let json = self.get_json("/verify", secs(30)).await?;
        if json.get("state").and_then(serde_json::Value::as_str) != Some("intact") {
            bail!("{}'s state is not what it built: {json}", self.id);
        }
        Ok(())
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
        task_state(&self.ctx, &self.id).await
    }

    pub async fn status(&self) -> Result<Status> {
        Ok(self.state().await?.status())
    }

    pub async fn pids(&self) -> Result<Vec<ProcessInfo>> {
        task_pids(&self.ctx, &self.id).await
    }

    pub async fn pause(&self) -> Result<()> {
        task_pause(&self.ctx, &self.id).await
    }

    pub async fn resume(&self) -> Result<()> {
        task_resume(&self.ctx, &self.id).await
    }

    /// Tasks.Update with these OCI `LinuxResources`.
    pub async fn update(&self, resources: serde_json::Value) -> Result<()> {
        task_update(&self.ctx, &self.id, &resources).await
    }

    pub async fn metrics(&self) -> Result<Vec<Metric>> {
        task_metrics(&self.ctx, &self.id).await
    }

    /// Runs `args` in the container (Tasks.Exec, Start, Wait, DeleteProcess): its exit
    /// status and its stdout.
    pub async fn exec(&self, exec_id: &str, args: &[&str]) -> Result<(u32, String)> {
        let io_dir = self.ctx.paths().io.join(&self.id);
        let stdout = Capture::fifo(&io_dir.join(format!("{exec_id}.stdout")))?;
        let result = async {
            let (ctx, id) = (&self.ctx, &self.id);
            let io = (stdout.path(), String::new());
            task_exec(ctx, id, &self.process, exec_id, args, false, io).await?;
            let waiting = {
                let (ctx, id, exec_id) = (ctx.clone(), id.clone(), exec_id.to_string());
                tokio::spawn(async move { wait(&ctx, &id, &exec_id, secs(30)).await })
            };
            task_start(ctx, id, exec_id, "Tasks.Start (exec)", RPC_TIMEOUT).await?;
            let status = waiting.await??;
            let out = stdout.wait_eof(secs(10)).await?;
            task_delete_process(ctx, id, exec_id).await?;
            Ok((status, out))
        }
        .await;
        stdout.close();
        result
    }

    pub async fn kill(&self, signal: i32) -> Result<()> {
        task_kill(&self.ctx, &self.id, signal, false).await
    }

    /// Tasks.Wait issued now, answered when the init exits.
    pub fn wait_in_background(&self, timeout: Duration) -> tokio::task::JoinHandle<Result<u32>> {
        wait_in_background(&self.ctx, &self.id, timeout)
    }

    /// Tasks.Delete, then the snapshot and the container (see [`remove_container`]):
    /// the task's exit status.
    pub async fn delete(self) -> Result<u32> {
        let status = task_delete(&self.ctx, &self.id).await?;
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
        Ok(status)
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
