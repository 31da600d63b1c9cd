//! The Task API (containerd's `containerd.task.v2.Task` over ttrpc).
//!
//! [`TaskService`] does the work in plain async methods that return the
//! shim's typed [`Error`]; the `Task` impl at the bottom is a thin adapter
//! that converts to ttrpc statuses in one place.

use std::{collections::HashMap, path::Path, sync::Arc, time::Duration};

use async_trait::async_trait;
use containerd_shim::{
    api::{
        CheckpointTaskRequest, CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest,
        CreateTaskResponse, DeleteRequest, Empty, ExecProcessRequest, KillRequest, PauseRequest,
        PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest,
        StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, Status,
        UpdateTaskRequest, WaitRequest, WaitResponse,
    },
    asynchronous::ExitSignal,
    event::Event,
    io::Stdio,
    protos::{
        api::ProcessInfo,
        events::task::{
            TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskPaused,
            TaskResumed, TaskStart,
        },
        protobuf::{well_known_types::any::Any, Message, MessageDyn},
    },
    util::convert_to_any,
    DeleteResponse, Task, TtrpcContext, TtrpcResult,
};
use runc::options::{CreateOpts, DeleteOpts, ExecOpts, KillOpts};
use tokio::sync::{mpsc, Mutex};
use tracing::{debug, info, instrument, warn};

use crate::{
    annotations::{Fallback, RestorePolicy},
    bundle,
    console::{self, ConsoleSocket},
    container::{shares_pid_namespace, Container, Direct, Process, RestoreSource},
    error::{Error, Result},
    runc::{
        decode_checkpoint_options, decode_options, kill_error, new_engine, runtime_error,
        CheckpointSpec, INIT_PID_FILE,
    },
    stdio::Owner,
};

/// Events on their way to containerd: (topic, event).
pub type EventTx = mpsc::Sender<(String, Any)>;

pub type Containers = Arc<Mutex<HashMap<String, Container>>>;

#[derive(Clone)]
pub struct TaskService {
    pub namespace: String,
    pub containers: Containers,
    events: EventTx,
    exit: Arc<ExitSignal>,
    /// What this shim's server started for its container before Create.
    early: Arc<std::sync::Mutex<Option<crate::early::Early>>>,
}

impl TaskService {
    pub fn new(namespace: &str, events: EventTx, exit: Arc<ExitSignal>) -> Self {
        Self {
            namespace: namespace.to_string(),
            containers: Arc::default(),
            events,
            exit,
            early: Arc::default(),
        }
    }

    /// Hands Create the image asked for when the server started.
    pub fn set_early(&self, early: crate::early::Early) {
        *self.early.lock().unwrap_or_else(|e| e.into_inner()) = Some(early);
    }

    /// The early answer for container `id`; any other is released.
    fn take_early(&self, id: &str) -> Option<crate::early::Early> {
        self.early
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .filter(|e| e.id == id)
    }

    /// At shutdown: releases an early answer no Create took.
    pub async fn release_early(&self) {
        let early = self.early.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(e) = early {
            e.release().await;
        }
    }

    async fn send<E: Event + Message>(&self, event: E) {
        send_event(&self.events, event).await
    }

    #[instrument(skip_all, fields(id = %req.id))]
    pub async fn create(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse> {
        if req.id.is_empty() {
            return Err(Error::InvalidArgument("a task needs an id".into()));
        }
        let mut early = self.take_early(&req.id);
        let created = self.create_with(req, &mut early).await;
        // What Create did not take is undone before it answers, whatever the answer.
        if let Some(e) = early {
            e.release().await;
        }
        created
    }

    /// Create, with what the server started for this container (see
    /// [`crate::early`]): what it takes of `asked` is its own to undo.
    async fn create_with(
        &self,
        req: CreateTaskRequest,
        asked: &mut Option<crate::early::Early>,
    ) -> Result<CreateTaskResponse> {
        let mut containers = self.containers.lock().await;
        if containers.contains_key(&req.id) {
            return Err(Error::AlreadyExists(format!(
                "container {} already exists",
                req.id
            )));
        }
        let options = decode_options(req.options.as_ref())?;
        let bundle = Path::new(&req.bundle).to_path_buf();
        let (runc, cli) = new_engine(&self.namespace, &bundle, &options)?;
        bundle::write_engine_files(&bundle, &options)?;
        let spec = bundle::read_spec(&bundle)?;
        let policy = RestorePolicy::from_annotations(spec.annotations().as_ref())?;
        if !req.checkpoint.is_empty() && !Path::new(&req.checkpoint).join("inventory.img").is_file()
        {
            return Err(Error::InvalidArgument(format!(
                "checkpoint {} holds no CRIU image (inventory.img missing)",
                req.checkpoint
            )));
        }
        let rootfs = bundle.join("rootfs");
        let stdio = Stdio::new(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        let mut c = Container {
            id: req.id.clone(),
            bundle: bundle.clone(),
            options,
            runc,
            cli,
            init: Process::new(&req.id, stdio),
            execs: HashMap::new(),
            shared_pid_ns: shares_pid_namespace(&spec),
            rootfs_mounted: false,
            rootfs: req.rootfs.to_vec(),
            policy,
            cgroups_path: crate::container::spec_cgroups_path(&spec),
            netns_path: crate::container::spec_netns_path(&spec),
            direct: None,
            containerd_checkpoint: Some(Path::new(&req.checkpoint))
                .filter(|p| crate::container::is_containerd_temp_checkpoint(p))
                .map(Path::to_path_buf),
        };
        // The direct engine's preparation starts now, before the image is found and
        // the rootfs mounted; it is told the image below (or that there is none).
        let early_direct = asked
            .as_mut()
            .filter(|a| req.checkpoint.is_empty() && c.policy.image.as_ref() == Some(&a.image))
            .and_then(|a| a.direct.take());
        let early = match early_direct {
            Some(d) if d.fits(&c) => d.adopt(&mut c, &self.namespace).await,
            other => {
                if let Some(d) = other {
                    d.cancel().await;
                }
                if !req.checkpoint.is_empty() || c.policy.image.is_some() {
                    prepare_direct(&mut c, &spec, &self.namespace).await
                } else {
                    None
                }
            }
        };
        let made = async {
            // A checkpoint from containerd wins over an image named by annotation.
            let source = if !req.checkpoint.is_empty() {
                Some(RestoreSource::Checkpoint(Path::new(&req.checkpoint).to_path_buf()))
            } else if let Some(name) = &c.policy.image {
                // Prepared now (or when the server started), so that Start pays only
                // for the restore itself. An early request that did not reach the
                // daemon is made again (it may be up by now); the daemon's own answer,
                // a refusal too, stands (it is counted once).
                let early = match asked.take().filter(|a| &a.image == name) {
                    Some(a) => a.answer().await,
                    None => None,
                };
                let answer = match early {
                    Some(a @ (Ok(_) | Err(rekindle_restore_api::Error::Api(_)))) => a,
                    _ => restored_client().prepare_restore(name, false).await,
                };
                match answer {
                    Ok(p) => Some(RestoreSource::Stored {
                        name: name.clone(),
                        image_dir: p.image_dir,
                        lease: p.lease,
                    }),
                    Err(e) if c.policy.fallback == Fallback::Cold => {
                        warn!(reason = %e, image = %name, "stored image unavailable; cold start as the container's annotation asks");
                        None
                    }
                    Err(e) => {
                        return Err(store_error(e, &format!("prepare image {name} for restore")))
                    }
                }
            } else {
                None
            };
            if !req.rootfs.is_empty() {
                if let Err(e) = bundle::mount_rootfs(&req.rootfs, &rootfs) {
                    if let Some(RestoreSource::Stored { lease, .. }) = &source {
                        release_lease(lease).await;
                    }
                    return Err(e);
                }
                c.rootfs_mounted = true;
            }
            Ok(source)
        }
        .await;
        let source = match made {
            Ok(s) => s,
            Err(e) => {
                cancel_direct(&mut c, early).await;
                return Err(e);
            }
        };
        let pid = match source {
            // The process runs from Start, when containerd expects it to, as
            // with containerd's runc shim. The direct engine restores it ahead,
            // in the background, and holds it stopped until then; runc
            // restores at Start.
            Some(source) => {
                if let Some(tell) = early {
                    let (image_dir, lazy, image) = match &source {
                        // containerd removes its extracted checkpoint once the task is
                        // running: no daemon may read it later.
                        RestoreSource::Checkpoint(dir) => (dir.clone(), false, None),
                        RestoreSource::Stored {
                            name, image_dir, ..
                        } => (
                            image_dir.clone(),
                            crate::direct::lazy_pages(),
                            Some(name.clone()),
                        ),
                    };
                    let _ = tell.send(Some(crate::direct::Source {
                        image_dir,
                        lazy,
                        image,
                    }));
                }
                info!(source = %source, engine = if c.direct.is_some() { "direct" } else { "runc" }, "container created from a checkpoint; it runs from start");
                c.init.restore_from = Some(source);
                0
            }
            None => {
                cancel_direct(&mut c, early).await;
                match cold_create(&mut c, &self.namespace).await {
                    Ok(pid) => pid,
                    Err(e) => {
                        if c.rootfs_mounted {
                            bundle::unmount_rootfs(&rootfs);
                        }
                        return Err(e);
                    }
                }
            }
        };
        containers.insert(req.id.clone(), c);
        // Sent under the lock, so no TaskExit of this container can overtake it.
        self.send(task_create_event(&req, pid)).await;
        Ok(CreateTaskResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    #[instrument(skip_all, fields(id = %req.id, exec_id = %req.exec_id))]
    pub async fn start(&self, req: StartRequest) -> Result<StartResponse> {
        let mut containers = self.containers.lock().await;
        let c = get_mut(&mut containers, &req.id)?;
        let pid = if req.exec_id.is_empty() {
            c.init.check_startable()?;
            if let Some(source) = c.init.restore_from.take() {
                // Start is here: a restore still under way need not stop at its hold.
                if let Some(Direct::Preparing(p)) = &c.direct {
                    p.start_came
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                }
                settle_direct(c).await;
                match restore(c, &self.namespace, &source).await {
                    Ok(()) => {}
                    Err(e) if c.policy.fallback == Fallback::Cold => {
                        warn!(reason = %e, source = %source, "restore failed; falling back to a cold start as the container's annotation asks");
                        let cold = async {
                            remount_rootfs(c)?;
                            cold_create(c, &self.namespace).await?;
                            if let Err(e) = c.runc.start(&c.id).await {
                                return Err(runtime_error(&c.bundle, e, "runc start").await);
                            }
                            Ok(())
                        }
                        .await;
                        report_restore(&source, "cold", cold.as_ref().err());
                        cold?;
                    }
                    // The image's lease is gone: this container cannot be
                    // started again, only deleted.
                    Err(e) => return Err(e),
                }
            } else if let Err(e) = c.runc.start(&c.id).await {
                return Err(runtime_error(&c.bundle, e, "runc start").await);
            }
            c.init.status = Status::RUNNING;
            let pid = c.init.pid;
            self.send(TaskStart {
                container_id: c.id.clone(),
                pid: pid as u32,
                ..Default::default()
            })
            .await;
            pid
        } else {
            if c.init.status != Status::RUNNING {
                return Err(Error::FailedPrecondition(format!(
                    "cannot start exec {} in container {}: the container is {:?}",
                    req.exec_id, c.id, c.init.status
                )));
            }
            let pid = start_exec(c, &self.namespace, &req.exec_id).await?;
            self.send(TaskExecStarted {
                container_id: c.id.clone(),
                exec_id: req.exec_id.clone(),
                pid: pid as u32,
                ..Default::default()
            })
            .await;
            pid
        };
        info!(pid, "started");
        Ok(StartResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    #[instrument(skip_all, fields(id = %req.id, exec_id = %req.exec_id))]
    pub async fn delete(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        let mut containers = self.containers.lock().await;
        let c = get_mut(&mut containers, &req.id)?;
        if !req.exec_id.is_empty() {
            let p = c.process(&req.exec_id)?;
            p.check_deletable()?;
            let p = c.execs.remove(&req.exec_id).expect("checked above");
            p.io.shutdown().await;
            let _ = tokio::fs::remove_file(c.bundle.join(format!("{}.pid", req.exec_id))).await;
            return Ok(delete_response(&p));
        }
        c.init.check_deletable()?;
        if let Some(running) = c.execs.values().find(|p| p.check_deletable().is_err()) {
            return Err(Error::FailedPrecondition(format!(
                "cannot delete container {}: exec {} is still running",
                c.id, running.id
            )));
        }
        if c.direct.is_none() {
            if let Err(e) = c
                .runc
                .delete(&c.id, Some(&DeleteOpts { force: true }))
                .await
            {
                if !e.to_string().to_lowercase().contains("does not exist") {
                    return Err(runtime_error(&c.bundle, e, "runc delete").await);
                }
            }
        }
        let mut c = containers.remove(&req.id).expect("looked up above");
        let cgroups_path = c.cgroups_path.clone().unwrap_or_default();
        settle_direct(&mut c).await;
        match c.direct.take() {
            Some(Direct::Held(h)) => h.abandon(&cgroups_path).await,
            Some(Direct::Failed(_, p)) => p.abandon(&cgroups_path).await,
            Some(Direct::Running(r)) => r.remove(&cgroups_path).await,
            Some(Direct::Preparing(_)) | None => {}
        }
        if let Some(RestoreSource::Stored { lease, .. }) = &c.init.restore_from {
            release_lease(lease).await;
        }
        c.init.io.shutdown().await;
        for p in c.execs.values() {
            p.io.shutdown().await;
        }
        if c.rootfs_mounted {
            bundle::unmount_rootfs(&c.bundle.join("rootfs"));
        }
        if let Some(dir) = c.containerd_checkpoint.take() {
            match tokio::fs::remove_dir_all(&dir).await {
                Ok(()) => debug!(dir = %dir.display(), "removed containerd's checkpoint copy"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(dir = %dir.display(), error = %e, "cannot remove containerd's checkpoint copy")
                }
            }
        }
        let resp = delete_response(&c.init);
        self.send(TaskDelete {
            container_id: c.id.clone(),
            id: c.id.clone(),
            pid: resp.pid,
            exit_status: resp.exit_status,
            exited_at: resp.exited_at.clone(),
            ..Default::default()
        })
        .await;
        info!(exit_status = resp.exit_status, "container deleted");
        Ok(resp)
    }

    pub async fn state(&self, req: StateRequest) -> Result<StateResponse> {
        let containers = self.containers.lock().await;
        let c = get(&containers, &req.id)?;
        Ok(c.process(&req.exec_id)?
            .state(&c.bundle_str(), &req.exec_id))
    }

    pub async fn wait(&self, req: WaitRequest) -> Result<WaitResponse> {
        let mut rx = {
            let containers = self.containers.lock().await;
            get(&containers, &req.id)?
                .process(&req.exec_id)?
                .watch_exit()
        };
        let exit = rx
            .wait_for(|e| e.is_some())
            .await
            .map_err(|_| Error::NotFound(format!("process {} was deleted", req.id)))?
            .expect("waited for Some");
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        })
    }

    #[instrument(skip_all, fields(id = %req.id, exec_id = %req.exec_id, signal = req.signal, all = req.all))]
    pub async fn kill(&self, req: KillRequest) -> Result<()> {
        let containers = self.containers.lock().await;
        let c = get(&containers, &req.id)?;
        if req.exec_id.is_empty() {
            if c.init.status == Status::STOPPED && !req.all {
                return Err(Error::NotFound(format!(
                    "process already finished: container {} has exited",
                    c.id
                )));
            }
            if let Some(d) = c.direct_running() {
                let sig = signal(req.signal)?;
                if req.all {
                    d.signal_all(sig);
                    return Ok(());
                }
                return send_signal(c.init.pid, sig);
            }
            if matches!(
                c.direct,
                Some(Direct::Held(_) | Direct::Failed(..) | Direct::Preparing(_))
            ) {
                return Err(Error::NotFound(format!(
                    "container {} has no process yet: it is restored at start (the direct engine holds it stopped until then)",
                    c.id
                )));
            }
            return c
                .runc
                .kill(&c.id, req.signal, Some(&KillOpts { all: req.all }))
                .await
                .map_err(kill_error);
        }
        let p = c.process(&req.exec_id)?;
        if p.pid <= 0 {
            return Err(Error::FailedPrecondition(format!(
                "exec {} has not been started",
                req.exec_id
            )));
        }
        if p.exit().is_some() {
            return Err(Error::NotFound("process already finished".into()));
        }
        send_signal(p.pid, signal(req.signal)?)
    }

    #[instrument(skip_all, fields(id = %req.id, exec_id = %req.exec_id))]
    pub async fn exec(&self, req: ExecProcessRequest) -> Result<()> {
        let mut containers = self.containers.lock().await;
        let c = get_mut(&mut containers, &req.id)?;
        if req.exec_id.is_empty() {
            return Err(Error::InvalidArgument("an exec needs an exec id".into()));
        }
        if c.execs.contains_key(&req.exec_id) {
            return Err(Error::AlreadyExists(format!(
                "exec {} already exists in container {}",
                req.exec_id, c.id
            )));
        }
        if c.init.status == Status::STOPPED {
            return Err(Error::FailedPrecondition(format!(
                "container {} has exited",
                c.id
            )));
        }
        let spec = req
            .spec
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("exec request carries no process spec".into()))?;
        let mut spec: oci_spec::runtime::Process = serde_json::from_slice(&spec.value)
            .map_err(|e| Error::InvalidArgument(format!("exec process spec: {e}")))?;
        spec.set_terminal(Some(req.terminal));
        let mut p = Process::new(
            &req.exec_id,
            Stdio::new(&req.stdin, &req.stdout, &req.stderr, req.terminal),
        );
        p.spec = Some(spec);
        c.execs.insert(req.exec_id.clone(), p);
        self.send(TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
        .await;
        Ok(())
    }

    pub async fn resize_pty(&self, req: ResizePtyRequest) -> Result<()> {
        let containers = self.containers.lock().await;
        let p = get(&containers, &req.id)?.process(&req.exec_id)?;
        match &p.console {
            Some(pty) => console::resize(pty, req.height, req.width),
            None => Ok(()),
        }
    }

    pub async fn close_io(&self, req: CloseIORequest) -> Result<()> {
        let containers = self.containers.lock().await;
        let p = get(&containers, &req.id)?.process(&req.exec_id)?;
        if req.stdin {
            p.io.fifos.close_input();
        }
        Ok(())
    }

    #[instrument(skip_all, fields(id = %req.id))]
    pub async fn pause(&self, req: PauseRequest) -> Result<()> {
        let mut containers = self.containers.lock().await;
        let c = get_mut(&mut containers, &req.id)?;
        if c.init.status != Status::RUNNING {
            return Err(Error::FailedPrecondition(format!(
                "cannot pause container {}: it is {:?}",
                c.id, c.init.status
            )));
        }
        if let Some(d) = c.direct_running() {
            d.freeze(true)?;
        } else if let Err(e) = c.runc.pause(&c.id).await {
            return Err(runtime_error(&c.bundle, e, "runc pause").await);
        }
        c.init.status = Status::PAUSED;
        self.send(TaskPaused {
            container_id: c.id.clone(),
            ..Default::default()
        })
        .await;
        Ok(())
    }

    #[instrument(skip_all, fields(id = %req.id))]
    pub async fn resume(&self, req: ResumeRequest) -> Result<()> {
        let mut containers = self.containers.lock().await;
        let c = get_mut(&mut containers, &req.id)?;
        if c.init.status != Status::PAUSED {
            return Err(Error::FailedPrecondition(format!(
                "cannot resume container {}: it is {:?}",
                c.id, c.init.status
            )));
        }
        if let Some(d) = c.direct_running() {
            d.freeze(false)?;
        } else if let Err(e) = c.runc.resume(&c.id).await {
            return Err(runtime_error(&c.bundle, e, "runc resume").await);
        }
        c.init.status = Status::RUNNING;
        self.send(TaskResumed {
            container_id: c.id.clone(),
            ..Default::default()
        })
        .await;
        Ok(())
    }

    pub async fn pids(&self, req: PidsRequest) -> Result<PidsResponse> {
        let containers = self.containers.lock().await;
        let c = get(&containers, &req.id)?;
        let pids = match c.direct_running() {
            Some(d) => d.pids().into_iter().map(|p| p as usize).collect(),
            None => c.runc.ps(&c.id).await.map_err(|e| Error::Runtime {
                action: "runc ps".into(),
                message: e.to_string(),
            })?,
        };
        Ok(PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid: pid as u32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    pub async fn stats(&self, req: StatsRequest) -> Result<StatsResponse> {
        let pid = {
            let containers = self.containers.lock().await;
            let c = get(&containers, &req.id)?;
            if c.init.status == Status::STOPPED || c.init.pid <= 0 {
                return Err(Error::FailedPrecondition(format!(
                    "container {} is not running: no stats",
                    c.id
                )));
            }
            c.init.pid as u32
        };
        let cgroup = containerd_shim::cgroup::get_cgroup(pid)?;
        // containerd decodes v1 and v2 metrics by their type URL: send the
        // one matching the host's hierarchy, as the Go shim does.
        let metrics: Box<dyn MessageDyn> = if cgroup.v2() {
            Box::new(containerd_shim::cgroup::collect_metrics_v2(&cgroup)?)
        } else {
            Box::new(containerd_shim::cgroup::collect_metrics(&cgroup)?)
        };
        Ok(StatsResponse {
            stats: Some(convert_to_any(metrics)?).into(),
            ..Default::default()
        })
    }

    pub async fn update(&self, req: UpdateTaskRequest) -> Result<()> {
        let containers = self.containers.lock().await;
        let c = get(&containers, &req.id)?;
        let any = req
            .resources
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("update carries no resources".into()))?;
        let resources: oci_spec::runtime::LinuxResources = serde_json::from_slice(&any.value)
            .map_err(|e| Error::InvalidArgument(format!("update resources: {e}")))?;
        if let Some(d) = c.direct_running() {
            let hierarchies = crate::direct::resources::hierarchies()
                .map_err(Error::io("read cgroup hierarchies"))?;
            return crate::direct::resources::update(&hierarchies, &d.cgroup_dirs, &resources)
                .map_err(|e| Error::InvalidArgument(format!("update resources: {e}")));
        }
        c.runc
            .update(&c.id, &resources)
            .await
            .map_err(|e| Error::Runtime {
                action: "runc update".into(),
                message: e.to_string(),
            })
    }

    #[instrument(skip_all, fields(id = %req.id, path = %req.path))]
    pub async fn checkpoint(&self, req: CheckpointTaskRequest) -> Result<()> {
        let containers = self.containers.lock().await;
        let c = get(&containers, &req.id)?;
        if !matches!(c.init.status, Status::RUNNING | Status::PAUSED) {
            return Err(Error::FailedPrecondition(format!(
                "cannot checkpoint container {}: it is {:?}",
                c.id, c.init.status
            )));
        }
        let opts = decode_checkpoint_options(req.options.as_ref())?;
        crate::runc::criu_executable().map_err(Error::FailedPrecondition)?;
        let image_path = if !req.path.is_empty() {
            req.path.clone()
        } else if !opts.image_path.is_empty() {
            opts.image_path.clone()
        } else {
            return Err(Error::InvalidArgument(
                "checkpoint needs a path for the image".into(),
            ));
        };
        // A work dir of our own is removed afterwards; one the caller named is kept.
        let own_work = opts.work_path.is_empty();
        let spec = CheckpointSpec {
            image_path: image_path.into(),
            work_path: if own_work {
                c.bundle.join("criu-work")
            } else {
                opts.work_path.clone().into()
            },
            exit: opts.exit,
            open_tcp: opts.open_tcp,
            external_unix_sockets: opts.external_unix_sockets,
            terminal: opts.terminal,
            file_locks: opts.file_locks,
            empty_namespaces: opts.empty_namespaces.clone(),
            cgroups_mode: opts.cgroups_mode.clone(),
        };
        let started = std::time::Instant::now();
        // Which CRIU caller: a container runc runs is dumped by `runc
        // checkpoint`, which knows its libcontainer state (namespaces, mounts,
        // devices) and writes the descriptors.json its restore needs. A
        // container the direct engine restored has no runc state, so the shim
        // dumps it through libcriu itself, with the options runc would use
        // (direct::dump): either engine, and containerd's runc shim, can
        // restore the result.
        let result = match c.direct_running() {
            Some(d) => {
                d.pages_settled(Duration::from_secs(120)).await;
                let oci = bundle::read_spec(&c.bundle)
                    .map_err(|e| Error::FailedPrecondition(e.to_string()))?;
                let target = crate::direct::dump::DumpTarget {
                    pid: c.init.pid,
                    rootfs: &d.rootfs,
                    spec: &oci,
                    cgroup_dirs: &d.cgroup_dirs,
                    descriptors: &d.descriptors,
                };
                crate::direct::dump::checkpoint(&target, &spec).await
            }
            None => match c.cli.checkpoint(&c.id, &spec).await {
                Ok(()) => Ok(()),
                Err(e) => Err(criu_error(&c.bundle, &spec, e, "runc checkpoint").await),
            },
        };
        if own_work {
            let _ = tokio::fs::remove_dir_all(&spec.work_path).await;
        }
        result?;
        info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            exit = spec.exit,
            "container checkpointed"
        );
        if let Some(name) = &c.policy.store_as {
            let labels = [
                ("container".to_string(), c.id.clone()),
                ("namespace".to_string(), self.namespace.clone()),
            ]
            .into();
            let client = restored_client();
            let stored = if c.policy.replace {
                client
                    .replace_image(name, &spec.image_path, labels, None)
                    .await
            } else {
                client
                    .store_image(name, &spec.image_path, labels, None)
                    .await
            };
            stored.map_err(|e| {
                let exists = e.code() == Some(rekindle_restore_api::ErrorCode::AlreadyExists);
                let e = store_error(
                    e,
                    &format!(
                        "checkpoint written to {}, but storing it as image {name}",
                        spec.image_path.display()
                    ),
                );
                match e {
                    Error::AlreadyExists(m) if exists => Error::AlreadyExists(format!(
                        "{m} (annotate the container {}=true to replace it)",
                        crate::annotations::REPLACE
                    )),
                    e => e,
                }
            })?;
            info!(image = %name, replace = c.policy.replace, "checkpoint stored in rekindle-restored");
        }
        Ok(())
    }

    pub async fn connect(&self, req: ConnectRequest) -> Result<ConnectResponse> {
        let containers = self.containers.lock().await;
        let c = get(&containers, &req.id)?;
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: c.init.pid.max(0) as u32,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    pub async fn shutdown(&self) -> Result<()> {
        let containers = self.containers.lock().await;
        if containers.is_empty() {
            info!("no containers left: shim exits");
            self.exit.signal();
        } else {
            debug!(
                containers = containers.len(),
                "shutdown ignored: containers remain"
            );
        }
        Ok(())
    }

    /// Records a reaped child's exit on the process it belonged to and tells
    /// containerd. Called by the exit loop for every pid the reaper reports.
    pub async fn handle_exit(&self, pid: i32, code: i32) {
        let mut containers = self.containers.lock().await;
        for c in containers.values_mut() {
            let is_init = c.init.pid == pid;
            if is_init && c.shared_pid_ns {
                // Nobody else kills the rest of a shared pid namespace.
                if let Some(d) = c.direct_running() {
                    d.signal_all(nix::sys::signal::Signal::SIGKILL);
                } else if let Err(e) = c.runc.kill(&c.id, 9, Some(&KillOpts { all: true })).await {
                    debug!(error = %e, "kill --all after init exit");
                }
            }
            let container_id = c.id.clone();
            if let Some(p) = c.process_by_pid(pid) {
                let exit = p.set_exited(code);
                info!(container = %container_id, process = %p.id, pid, code, "process exited");
                let event = TaskExit {
                    container_id,
                    id: p.id.clone(),
                    pid: pid as u32,
                    exit_status: exit.status,
                    exited_at: Some(exit.timestamp()).into(),
                    ..Default::default()
                };
                send_event(&self.events, event).await;
                return;
            }
        }
    }
}

/// `runc create`: the container's init exists, stopped before its exec,
/// until Start. Cleans up after itself on failure (but leaves the rootfs).
async fn cold_create(c: &mut Container, namespace: &str) -> Result<i32> {
    let owner = owner(c, namespace);
    let pid_file = c.bundle.join(INIT_PID_FILE);
    let mut opts = CreateOpts::new()
        .pid_file(&pid_file)
        .no_pivot(c.options.no_pivot_root)
        .no_new_keyring(c.options.no_new_keyring)
        .detach(false);
    let p = &mut c.init;
    let (console, io) = prepare_stdio(p, &owner).await?;
    opts.console_socket = console.as_ref().map(|s| s.path.clone());
    opts.io = io.map(|io| io as Arc<dyn runc::io::Io>);
    let result = async {
        if let Err(e) = c.runc.create(&c.id, &c.bundle, Some(&opts)).await {
            return Err(runtime_error(&c.bundle, e, "runc create").await);
        }
        finish_start(p, console.as_ref(), &pid_file).await
    }
    .await;
    match result {
        Ok(pid) => {
            p.pid = pid;
            info!(pid, bundle = %c.bundle.display(), "container created");
            Ok(pid)
        }
        Err(e) => {
            warn!(error = %e, "create failed; cleaning up");
            let _ = c
                .runc
                .delete(&c.id, Some(&DeleteOpts { force: true }))
                .await;
            p.io.abort().await;
            p.io = Default::default();
            Err(e)
        }
    }
}

/// What runc hands a new process as its stdio: a console socket for a
/// terminal, else pipes already copying to containerd's destinations (all
/// opened first, so a bad destination fails before any process exists).
async fn prepare_stdio(
    p: &mut Process,
    owner: &Owner,
) -> Result<(Option<ConsoleSocket>, Option<Arc<crate::stdio::ChildIo>>)> {
    if p.stdio.terminal {
        return Ok((Some(ConsoleSocket::new()?), None));
    }
    match p.io.attach(owner, &p.stdio).await {
        Ok(io) => Ok((None, Some(io))),
        Err(e) => {
            p.io.abort().await;
            p.io = Default::default();
            Err(e)
        }
    }
}

/// Once runc has started a process: take its terminal, if it has one, and its pid.
async fn finish_start(
    p: &mut Process,
    console: Option<&ConsoleSocket>,
    pid_file: &Path,
) -> Result<i32> {
    if let Some(s) = console {
        let pty = s.receive().await?;
        p.io.attach_console(&p.stdio, pty.clone())?;
        p.console = Some(pty);
    }
    read_pid(pid_file).await
}

/// Makes `bundle/rootfs` again from containerd's mounts.
fn remount_rootfs(c: &Container) -> Result<()> {
    if !c.rootfs_mounted {
        return Ok(());
    }
    let rootfs = c.bundle.join("rootfs");
    bundle::unmount_rootfs(&rootfs);
    bundle::mount_rootfs(&c.rootfs, &rootfs)
        .map_err(|e| Error::FailedPrecondition(format!("after the failed restore: {e}")))
}

pub(crate) fn owner(c: &Container, namespace: &str) -> Owner {
    Owner {
        container_id: c.id.clone(),
        namespace: namespace.to_string(),
        uid: c.options.io_uid,
        gid: c.options.io_gid,
    }
}

/// Restores a container created from a checkpoint or from a stored image
/// (`runc restore`). On failure nothing of the attempt is left running.
async fn restore(c: &mut Container, namespace: &str, source: &RestoreSource) -> Result<()> {
    let started = std::time::Instant::now();
    let (image_dir, lease) = match source {
        RestoreSource::Checkpoint(dir) => (dir.clone(), None),
        RestoreSource::Stored {
            image_dir, lease, ..
        } => (image_dir.clone(), Some(lease.as_str())),
    };
    let spec = CheckpointSpec {
        image_path: image_dir,
        work_path: if c.options.criu_work_path.is_empty() {
            c.bundle.join("criu-work")
        } else {
            c.options.criu_work_path.clone().into()
        },
        ..Default::default()
    };
    let ahead = match c.direct.take() {
        Some(Direct::Held(held)) => {
            // The image stays leased while a lazy-pages daemon still reads it.
            let pages_lease = lease.map(str::to_string);
            let on_pages_done = move || {
                if let Some(l) = pages_lease {
                    tokio::spawn(async move { release_lease(&l).await });
                }
            };
            Some(held.resume(on_pages_done).await)
        }
        Some(Direct::Failed(e, prepared)) => Some(Err((e, *prepared))),
        other => {
            c.direct = other;
            None
        }
    };
    if let Some(ahead) = ahead {
        match ahead {
            Ok((pid, running)) => {
                report_restore(source, "direct", None);
                c.init.pid = pid;
                c.direct = Some(Direct::Running(running));
                info!(
                    pid,
                    source = %source,
                    engine = "direct",
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "container restored"
                );
                return Ok(());
            }
            Err((e, prepared)) => {
                report_restore(source, "direct", Some(&e));
                prepared
                    .abandon(c.cgroups_path.as_deref().unwrap_or_default())
                    .await;
                c.init.io.abort().await;
                c.init.io = Default::default();
                if e.to_string().contains(crate::runc::TIMED_OUT) {
                    // A CRIU that hangs waits on something the image promises:
                    // runc's CRIU would hang on it as long. Fail now (or cold
                    // start, if asked) instead of paying the time limit twice.
                    warn!(reason = %e, source = %source, "direct restore timed out; not retrying through runc");
                    if let Some(lease) = lease {
                        release_lease(lease).await;
                    }
                    return Err(e);
                }
                // The next path: the same image through runc.
                warn!(reason = %e, source = %source, "direct restore failed; trying runc restore");
                remount_rootfs(c)?;
            }
        }
    }
    let result = runc_restore(c, namespace, &spec).await;
    report_restore(source, "runc", result.as_ref().err());
    if let Some(lease) = lease {
        release_lease(lease).await;
    }
    match &result {
        Ok(()) => info!(
            pid = c.init.pid,
            source = %source,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "container restored"
        ),
        Err(e) => warn!(reason = %e, source = %source, "restore failed"),
    }
    result
}

/// Starts the direct engine's restore at the top of Create, when the container
/// allows it; otherwise Start restores through runc. The preparation (cgroups,
/// `criu swrk`, the lazy-pages daemon: a few ms of process start-ups) begins at
/// once and goes on while Create finds the image and mounts the rootfs (what the
/// returned sender tells it, or `None`: no restore), and while Create answers;
/// CRIU's restore, held before the tree resumes (`direct::Held`), follows.
/// [`settle_direct`] collects them and Start resumes the tree.
async fn prepare_direct(
    c: &mut Container,
    spec: &oci_spec::runtime::Spec,
    namespace: &str,
) -> Option<crate::direct::Tell> {
    if !crate::direct::enabled() {
        return None;
    }
    let cgroups_path = c.cgroups_path.clone().unwrap_or_default();
    if let Err(reason) = crate::direct::check_eligible(
        spec,
        c.options.systemd_cgroup,
        c.init.stdio.terminal,
        c.cgroups_path.as_deref(),
    ) {
        info!(%reason, "restore by runc: the direct engine does not cover this container");
        return None;
    }
    let owner = owner(c, namespace);
    let io = match c.init.io.attach(&owner, &c.init.stdio).await {
        Ok(io) => io,
        Err(e) => {
            warn!(error = %e, "stdio for the direct engine; restore by runc");
            c.init.io.abort().await;
            c.init.io = Default::default();
            return None;
        }
    };
    let (tell, preparing) =
        spawn_preparation(&c.bundle, spec, cgroups_path, io, tracing::Span::current());
    c.direct = Some(Direct::Preparing(preparing));
    Some(tell)
}

/// The preparation and the restore ahead, on the runtime: told the image (or
/// `None`) through the returned sender.
pub(crate) fn spawn_preparation(
    bundle: &Path,
    spec: &oci_spec::runtime::Spec,
    cgroups_path: String,
    io: Arc<crate::stdio::ChildIo>,
    span: tracing::Span,
) -> (crate::direct::Tell, crate::container::Preparing) {
    let (tell, told) = tokio::sync::oneshot::channel();
    let bundle = bundle.to_path_buf();
    let spec = spec.clone();
    let start_came = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let start = start_came.clone();
    let task = async move {
        let prepared =
            crate::direct::prepare(&bundle, &spec, &cgroups_path, Some(io), told).await?;
        Ok(match prepared {
            Ok(p) => Ok(crate::direct::restore_ahead(p, start).await),
            Err(not_direct) => Err(not_direct),
        })
    };
    (
        tell,
        crate::container::Preparing {
            handle: tokio::spawn(tracing::Instrument::instrument(task, span)),
            start_came,
        },
    )
}

/// When Create restores nothing after all (or fails): the preparation it
/// started is told so and undoes itself, and the stdio it held is released.
async fn cancel_direct(c: &mut Container, early: Option<crate::direct::Tell>) {
    let Some(tell) = early else {
        return;
    };
    let _ = tell.send(None);
    // Told None before it could restore anything, the preparation undoes what it
    // made and ends; waited for so that nothing of it outlives this Create.
    if let Some(Direct::Preparing(p)) = c.direct.take() {
        let _ = p.handle.await;
    }
    c.init.io.abort().await;
    c.init.io = Default::default();
}

/// Waits for the preparation and restore started at Create. When they gave
/// neither a held nor a failed restore (the engine does not apply, or could
/// not prepare), the stdio it held is released and `c.direct` is left empty:
/// the restore goes through runc.
async fn settle_direct(c: &mut Container) {
    if !matches!(c.direct, Some(Direct::Preparing(_))) {
        return;
    }
    let Some(Direct::Preparing(p)) = c.direct.take() else {
        unreachable!("matched above");
    };
    match p.handle.await {
        Ok(Ok(Ok(crate::direct::Ahead::Held(h)))) => {
            c.direct = Some(Direct::Held(h));
            return;
        }
        Ok(Ok(Ok(crate::direct::Ahead::Failed(e, p)))) => {
            c.direct = Some(Direct::Failed(e, p));
            return;
        }
        Ok(Ok(Err(reason))) => {
            info!(%reason, "restore by runc: the direct engine does not cover this image")
        }
        Ok(Err(e)) => warn!(error = %e, "the direct engine could not prepare; restore by runc"),
        Err(e) => {
            warn!(error = %e, "the direct engine's preparation did not finish; restore by runc")
        }
    }
    c.init.io.abort().await;
    c.init.io = Default::default();
}

async fn runc_restore(c: &mut Container, namespace: &str, spec: &CheckpointSpec) -> Result<()> {
    let owner = owner(c, namespace);
    let pid_file = c.bundle.join(INIT_PID_FILE);
    let p = &mut c.init;
    let (console, io) = prepare_stdio(p, &owner).await?;
    let result = async {
        if let Err(e) = c
            .cli
            .restore(
                &c.id,
                &c.bundle,
                spec,
                &pid_file,
                io.as_ref(),
                console.as_ref().map(|s| s.path.as_path()),
                c.options.no_pivot_root,
            )
            .await
        {
            return Err(criu_error(&c.bundle, spec, e, "runc restore").await);
        }
        finish_start(p, console.as_ref(), &pid_file).await
    }
    .await;
    match result {
        Ok(pid) => {
            p.pid = pid;
            Ok(())
        }
        Err(e) => {
            p.io.abort().await;
            p.io = Default::default();
            if e.to_string().contains(crate::runc::TIMED_OUT) {
                // runc and CRIU were killed before runc wrote its state: what
                // CRIU had restored is only findable through the cgroups, and
                // the mounts they made (runc's criu-root, CRIU's cgroup yard
                // in the work dir) are left to us. This must come before
                // `runc delete`, which removes runc's directory recursively —
                // through criu-root, a bind of the container's rootfs.
                if let Some(path) = &c.cgroups_path {
                    crate::cgroups::kill_and_remove(path).await;
                }
                if let Some(netns) = &c.netns_path {
                    crate::cgroups::unlock_criu_network(netns).await;
                }
                // Never remove a directory with anything still mounted under it.
                for dir in [spec.work_path.clone(), c.cli.root.join(&c.id)] {
                    if crate::cgroups::detach_mounts_under(&dir) {
                        let _ = tokio::fs::remove_dir_all(&dir).await;
                    } else {
                        warn!(dir = %dir.display(), "mounts left under a failed restore's directory; not removing it");
                    }
                }
            }
            let _ = c
                .runc
                .delete(&c.id, Some(&DeleteOpts { force: true }))
                .await;
            Err(e)
        }
    }
}

/// Tells rekindle-restored how a restore attempt went, so that every engine's
/// successes and failures (with the last reason) are counted in one place on
/// the node (`rekindle image stats`). In the background: the request must not
/// wait for the count, nor fail for want of it.
fn report_restore(source: &RestoreSource, engine: &'static str, error: Option<&Error>) {
    let image = match source {
        RestoreSource::Stored { name, .. } => Some(name.clone()),
        RestoreSource::Checkpoint(_) => None,
    };
    let (outcome, reason) = match error {
        None => ("ok", None),
        Some(e) => ("failed", Some(e.to_string())),
    };
    tokio::spawn(async move {
        let client = restored_client();
        let report = client.report_restore(image.as_deref(), engine, outcome, reason.as_deref());
        match tokio::time::timeout(std::time::Duration::from_secs(2), report).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(error = %e, engine, outcome, "restore outcome not counted"),
            Err(_) => debug!(
                engine,
                outcome, "restore outcome not counted: rekindle-restored did not answer"
            ),
        }
    });
}

/// Tells rekindle-restored that CRIU is done with a prepared image. Best
/// effort: the daemon also expires leases nobody releases.
pub(crate) async fn release_lease(lease: &str) {
    if let Err(e) = restored_client().release_restore(lease).await {
        warn!(error = %e, lease, "release restore lease");
    }
}

/// The restore-daemon's socket: `REKINDLE_RESTORED_SOCKET`, or its default.
pub(crate) fn restored_client() -> rekindle_restore_api::Client {
    let socket = std::env::var_os("REKINDLE_RESTORED_SOCKET")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| rekindle_restore_api::DEFAULT_SOCKET.into());
    rekindle_restore_api::Client::new(socket)
}

/// Maps a restore-daemon failure to the shim's error kinds, keeping its words.
fn store_error(e: rekindle_restore_api::Error, what: &str) -> Error {
    use rekindle_restore_api::ErrorCode;
    let msg = format!("{what}: {e}");
    match e.code() {
        Some(ErrorCode::NotFound) => Error::NotFound(msg),
        Some(ErrorCode::InvalidArgument) => Error::InvalidArgument(msg),
        Some(ErrorCode::AlreadyExists) => Error::AlreadyExists(msg),
        // Unreachable daemon, corrupt image, version mismatch: the node, not
        // the request, must change.
        _ => Error::FailedPrecondition(msg),
    }
}

/// A failed CRIU run through runc: runc's message alone rarely says what went
/// wrong, so quote CRIU's own error lines and keep its log next to the bundle.
async fn criu_error(
    bundle: &Path,
    spec: &CheckpointSpec,
    err: runc::error::Error,
    action: &str,
) -> Error {
    let log_name = if action.contains("restore") {
        "restore.log"
    } else {
        "dump.log"
    };
    let kept = bundle.join(format!("criu-{log_name}"));
    // A CRIU stuck in a loop can write gigabytes of log: keep and read the tail.
    let log = read_tail(&spec.work_path.join(log_name), CRIU_LOG_TAIL).await;
    let copied = !log.is_empty() && tokio::fs::write(&kept, &log).await.is_ok();
    let criu_says = criu_errors(&log);
    match runtime_error(bundle, err, action).await {
        Error::Runtime { action, message } => {
            let mut message = message;
            if !criu_says.is_empty() {
                message = format!("{message}; CRIU: {criu_says}");
            }
            if copied {
                message = format!("{message} (CRIU log: {})", kept.display());
            }
            Error::Runtime { action, message }
        }
        other => other,
    }
}

/// How much of a CRIU log the shim keeps and reads.
const CRIU_LOG_TAIL: u64 = 1 << 20;

/// The last `max` bytes of a file (empty when it cannot be read).
async fn read_tail(path: &Path, max: u64) -> String {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let Ok(mut f) = tokio::fs::File::open(path).await else {
        return String::new();
    };
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    if len > max && f.seek(std::io::SeekFrom::Start(len - max)).await.is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// CRIU errors that do not explain a failure: CRIU logs this one on every
/// restore where it may not raise its own fd limit, and goes on.
const HARMLESS_CRIU_ERRORS: &[&str] = &["Can't setup RLIMIT_NOFILE"];

/// The last few `Error` lines of a CRIU log, bounded in size.
pub(crate) fn criu_errors(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Error (") || l.contains("Error:"))
        .filter(|l| !HARMLESS_CRIU_ERRORS.iter().any(|h| l.contains(h)))
        .collect();
    let tail = &lines[lines.len().saturating_sub(3)..];
    let mut s = tail
        .iter()
        .map(|l| l.trim())
        .collect::<Vec<_>>()
        .join(" | ");
    if s.len() > 600 {
        let mut cut = 600;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

async fn start_exec(c: &mut Container, namespace: &str, exec_id: &str) -> Result<i32> {
    if let Some(d) = c.direct_running() {
        // Tools run by exec (ps, a debugger) read init's memory from outside:
        // give them a whole process, as after runc restore (bounded, so a
        // stuck daemon does not hold the exec).
        d.pages_settled(Duration::from_secs(5)).await;
    }
    let owner = owner(c, namespace);
    let bundle = c.bundle.clone();
    let container_id = c.id.clone();
    let runc = c.runc.clone();
    let direct = c
        .direct_running()
        .map(|d| (c.init.pid, d.cgroup_dirs.clone()));
    let p = c.process_mut(exec_id)?;
    p.check_startable()?;
    let spec = p
        .spec
        .clone()
        .ok_or_else(|| Error::FailedPrecondition(format!("exec {exec_id} has no process spec")))?;
    let pid_file = bundle.join(format!("{exec_id}.pid"));
    let mut opts = ExecOpts {
        io: None,
        pid_file: Some(pid_file.clone()),
        console_socket: None,
        detach: true,
    };
    let (console, io) = prepare_stdio(p, &owner).await?;
    opts.console_socket = console.as_ref().map(|s| s.path.clone());
    opts.io = io.clone().map(|io| io as Arc<dyn runc::io::Io>);
    let result = async {
        if let Some((init_pid, cgroup_dirs)) = &direct {
            // runc has no state for this container: enter it ourselves.
            return crate::nsexec::spawn(&crate::nsexec::ExecRequest {
                init_pid: *init_pid,
                cgroup_dirs,
                process: &spec,
                io,
                pid_file: &pid_file,
            })
            .await;
        }
        if let Err(e) = runc.exec(&container_id, &spec, Some(&opts)).await {
            return Err(runtime_error(&bundle, e, "runc exec").await);
        }
        finish_start(p, console.as_ref(), &pid_file).await
    }
    .await;
    match result {
        Ok(pid) => {
            p.pid = pid;
            p.status = Status::RUNNING;
            Ok(pid)
        }
        Err(e) => {
            // The exec stays registered and may be started again: fresh io.
            p.io.abort().await;
            p.io = Default::default();
            Err(e)
        }
    }
}

async fn read_pid(path: &Path) -> Result<i32> {
    let s = tokio::fs::read_to_string(path)
        .await
        .map_err(Error::io(format!("read pid file {}", path.display())))?;
    s.trim().parse::<i32>().map_err(|e| Error::Runtime {
        action: "read pid".into(),
        message: format!("{}: {e}", path.display()),
    })
}

fn signal(n: u32) -> Result<nix::sys::signal::Signal> {
    nix::sys::signal::Signal::try_from(n as i32)
        .map_err(|_| Error::InvalidArgument(format!("invalid signal {n}")))
}

fn send_signal(pid: i32, sig: nix::sys::signal::Signal) -> Result<()> {
    if pid <= 0 {
        return Err(Error::FailedPrecondition(
            "process has not been started".into(),
        ));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).map_err(|e| match e {
        nix::errno::Errno::ESRCH => Error::NotFound("process already finished".into()),
        e => Error::io(format!("kill {pid}"))(e.into()),
    })
}

fn task_create_event(req: &CreateTaskRequest, pid: i32) -> TaskCreate {
    TaskCreate {
        container_id: req.id.clone(),
        bundle: req.bundle.clone(),
        rootfs: req.rootfs.clone(),
        io: Some(TaskIO {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
            ..Default::default()
        })
        .into(),
        checkpoint: req.checkpoint.clone(),
        pid: pid as u32,
        ..Default::default()
    }
}

fn delete_response(p: &Process) -> DeleteResponse {
    let exit = p.exit();
    DeleteResponse {
        pid: p.pid.max(0) as u32,
        exit_status: exit.map(|e| e.status).unwrap_or_default(),
        exited_at: exit.map(|e| e.timestamp()).into(),
        ..Default::default()
    }
}

fn get<'a>(containers: &'a HashMap<String, Container>, id: &str) -> Result<&'a Container> {
    containers
        .get(id)
        .ok_or_else(|| Error::NotFound(format!("container {id} not found in this shim")))
}

fn get_mut<'a>(
    containers: &'a mut HashMap<String, Container>,
    id: &str,
) -> Result<&'a mut Container> {
    containers
        .get_mut(id)
        .ok_or_else(|| Error::NotFound(format!("container {id} not found in this shim")))
}

pub async fn send_event<E: Event + Message>(events: &EventTx, event: E) {
    let topic = event.topic();
    let any = match crate::publisher::event_any(&event) {
        Ok(a) => a,
        Err(e) => {
            warn!(topic, error = %e, "event dropped: it does not encode");
            return;
        }
    };
    if let Err(e) = events.send((topic.clone(), any)).await {
        warn!(topic, error = %e, "event dropped: publisher gone");
    }
}

/// The ttrpc adapter: each RPC calls the typed method above; errors become
/// ttrpc statuses through `From<Error> for ttrpc::Error`, nowhere else.
#[async_trait]
impl Task for TaskService {
    async fn state(&self, _: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        Ok(TaskService::state(self, req).await?)
    }

    async fn create(
        &self,
        _: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        Ok(TaskService::create(self, req).await?)
    }

    async fn start(&self, _: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        Ok(TaskService::start(self, req).await?)
    }

    async fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        Ok(TaskService::delete(self, req).await?)
    }

    async fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        Ok(TaskService::pids(self, req).await?)
    }

    async fn pause(&self, _: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        TaskService::pause(self, req).await?;
        Ok(Empty::new())
    }

    async fn resume(&self, _: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        TaskService::resume(self, req).await?;
        Ok(Empty::new())
    }

    async fn checkpoint(&self, _: &TtrpcContext, req: CheckpointTaskRequest) -> TtrpcResult<Empty> {
        TaskService::checkpoint(self, req).await?;
        Ok(Empty::new())
    }

    async fn kill(&self, _: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        TaskService::kill(self, req).await?;
        Ok(Empty::new())
    }

    async fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        TaskService::exec(self, req).await?;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        TaskService::resize_pty(self, req).await?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        TaskService::close_io(self, req).await?;
        Ok(Empty::new())
    }

    async fn update(&self, _: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        TaskService::update(self, req).await?;
        Ok(Empty::new())
    }

    async fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        Ok(TaskService::wait(self, req).await?)
    }

    async fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        Ok(TaskService::stats(self, req).await?)
    }

    async fn connect(&self, _: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        Ok(TaskService::connect(self, req).await?)
    }

    async fn shutdown(&self, _: &TtrpcContext, _: ShutdownRequest) -> TtrpcResult<Empty> {
        TaskService::shutdown(self).await?;
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::criu_errors;

    #[test]
    fn criu_errors_quote_the_last_error_lines_only() {
        let log = "(00.001) Dumping\n(00.20) Error (criu/sk-inet.c:199): inet: Connected TCP socket, consider using --tcp-established option.\n(00.21) Unlock network\n";
        assert_eq!(
            criu_errors(log),
            "(00.20) Error (criu/sk-inet.c:199): inet: Connected TCP socket, consider using --tcp-established option."
        );
        assert_eq!(criu_errors("all good\n"), "");
        assert_eq!(
            criu_errors("(00.0008) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n"),
            ""
        );
        let noisy = "Error (x): ".to_string() + &"y".repeat(2000);
        assert!(criu_errors(&noisy).len() <= 604);
    }
}
