//! What the shim knows about its containers and their processes: state only,
//! no I/O, so the state machine can be read (and tested) on its own.

use std::{collections::HashMap, path::PathBuf};

use containerd_shim::{
    api::{Options, StateResponse, Status},
    io::{Pty, Stdio},
    protos::protobuf::well_known_types::timestamp::Timestamp,
};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::{
    annotations::RestorePolicy,
    error::{Error, Result},
    runc::RuncCli,
    stdio::ProcessIo,
};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub status: u32,
    pub at: OffsetDateTime,
}

impl Exit {
    pub fn timestamp(&self) -> Timestamp {
        Timestamp {
            seconds: self.at.unix_timestamp(),
            nanos: self.at.nanosecond() as i32,
            ..Default::default()
        }
    }
}

/// A container's init process or one exec'd into it.
pub struct Process {
    /// The container id for init, the exec id otherwise.
    pub id: String,
    pub pid: i32,
    pub status: Status,
    pub stdio: Stdio,
    pub io: ProcessIo,
    pub console: Option<Pty>,
    /// Set once, when the reaper reports the exit; `Wait` watches it.
    exit: watch::Sender<Option<Exit>>,
    /// The OCI process to run, for execs.
    pub spec: Option<oci_spec::runtime::Process>,
    /// For an init created from a checkpoint: what `Start` restores.
    pub restore_from: Option<RestoreSource>,
}

impl Process {
    pub fn new(id: &str, stdio: Stdio) -> Self {
        Self {
            id: id.to_string(),
            pid: 0,
            status: Status::CREATED,
            stdio,
            io: ProcessIo::default(),
            console: None,
            exit: watch::channel(None).0,
            spec: None,
            restore_from: None,
        }
    }

    pub fn set_exited(&mut self, status: i32) -> Exit {
        let exit = Exit {
            status: status as u32,
            at: OffsetDateTime::now_utc(),
        };
        self.status = Status::STOPPED;
        self.exit.send_replace(Some(exit));
        exit
    }

    pub fn exit(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    pub fn watch_exit(&self) -> watch::Receiver<Option<Exit>> {
        self.exit.subscribe()
    }

    pub fn state(&self, bundle: &str, exec_id: &str) -> StateResponse {
        let exit = self.exit();
        StateResponse {
            id: self.id.clone(),
            bundle: bundle.to_string(),
            pid: self.pid.max(0) as u32,
            status: self.status.into(),
            stdin: self.stdio.stdin.clone(),
            stdout: self.stdio.stdout.clone(),
            stderr: self.stdio.stderr.clone(),
            terminal: self.stdio.terminal,
            exit_status: exit.map(|e| e.status).unwrap_or_default(),
            exited_at: exit.map(|e| e.timestamp()).into(),
            exec_id: exec_id.to_string(),
            ..Default::default()
        }
    }

    /// Guards a start: only a created process starts, once.
    pub fn check_startable(&self) -> Result<()> {
        match self.status {
            Status::CREATED => Ok(()),
            s => Err(Error::FailedPrecondition(format!(
                "process {} cannot be started: it is {s:?}",
                self.id
            ))),
        }
    }

    /// Guards a delete: a live process must be killed first.
    pub fn check_deletable(&self) -> Result<()> {
        match self.status {
            Status::RUNNING | Status::PAUSED | Status::PAUSING => {
                Err(Error::FailedPrecondition(format!(
                    "cannot delete process {}: it is still {:?}; kill it first",
                    self.id, self.status
                )))
            }
            _ => Ok(()),
        }
    }
}

/// One container of this shim (a shim serves a group, e.g. a pod).
pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub options: Options,
    pub runc: runc::Runc,
    pub cli: RuncCli,
    pub init: Process,
    pub execs: HashMap<String, Process>,
    /// Whether the container shares a pid namespace: then its children are not
    /// killed by the kernel when init exits, and the shim must do it.
    pub shared_pid_ns: bool,
    /// Whether the shim mounted `bundle/rootfs` and must unmount it.
    pub rootfs_mounted: bool,
    /// The mounts that make `bundle/rootfs`, to make it again after a failed
    /// restore (CRIU killed halfway can leave it unusable).
    pub rootfs: Vec<containerd_shim::protos::types::mount::Mount>,
    /// What the container's annotations ask of restores and checkpoints.
    pub policy: RestorePolicy,
    /// The spec's `linux.cgroupsPath`, to clean up after a restore killed halfway.
    pub cgroups_path: Option<String>,
    /// The network namespace the spec joins (a path), likewise.
    pub netns_path: Option<PathBuf>,
    /// Set when the direct engine (not runc) restores and runs this container.
    pub direct: Option<Direct>,
    /// The temporary directory containerd extracted the checkpoint into for a
    /// CreateTask with a checkpoint (`<tmp>/ctrd-checkpoint<digits>`). containerd
    /// never removes it (plugins/services/tasks/local.go: MkdirTemp, no RemoveAll),
    /// so every such restore would leave one behind; nothing reads it once the
    /// container is gone, and the shim removes it at Delete.
    pub containerd_checkpoint: Option<PathBuf>,
}

/// The direct engine's part of a container: prepared and restored (held
/// before the resume) from Create on, running after Start. runc knows
/// nothing of such a container.
pub enum Direct {
    /// Being prepared and restored: spawned at Create, which answers without
    /// waiting for it (CRIU restores while containerd and the client go on to
    /// Start); Start, Delete and Shutdown settle it first.
    Preparing(Preparing),
    /// Restored, stopped before the resume until Start.
    Held(Box<crate::direct::Held>),
    /// The restore ahead failed: Start reports it and takes the next path.
    Failed(crate::error::Error, Box<crate::direct::Prepared>),
    Running(crate::direct::Running),
}

/// The direct engine's work from Create, under way.
pub struct Preparing {
    pub handle: tokio::task::JoinHandle<Preparation>,
    /// Set by Start before it waits for `handle`: CRIU, on reaching the hold, goes
    /// on at once instead of waiting to be let go (see `crate::direct::restore_ahead`).
    pub start_came: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// What the direct engine's work from Create gave: a restore held or failed,
/// not applicable (with the reason), or a failed preparation; the last two
/// restore through runc.
pub type Preparation =
    crate::error::Result<std::result::Result<crate::direct::Ahead, crate::direct::plan::NotDirect>>;

/// Where a restore's CRIU image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreSource {
    /// A directory containerd extracted (CreateTask with a checkpoint).
    Checkpoint(PathBuf),
    /// An image in rekindle-restored, named by the `io.rekindle.image`
    /// annotation, prepared at Create (verified, decompressed or staged) so
    /// that Start only restores; `lease` is released once CRIU is done.
    Stored {
        name: String,
        image_dir: PathBuf,
        lease: String,
    },
}

impl std::fmt::Display for RestoreSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestoreSource::Checkpoint(p) => write!(f, "checkpoint {}", p.display()),
            RestoreSource::Stored { name, .. } => write!(f, "stored image {name}"),
        }
    }
}

impl Container {
    /// The direct engine's running state, when it runs this container.
    pub fn direct_running(&self) -> Option<&crate::direct::Running> {
        match &self.direct {
            Some(Direct::Running(r)) => Some(r),
            _ => None,
        }
    }

    pub fn bundle_str(&self) -> String {
        self.bundle.to_string_lossy().into_owned()
    }

    pub fn process(&self, exec_id: &str) -> Result<&Process> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs.get(exec_id).ok_or_else(|| {
            Error::NotFound(format!("exec {exec_id} not found in container {}", self.id))
        })
    }

    pub fn process_mut(&mut self, exec_id: &str) -> Result<&mut Process> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        let id = self.id.clone();
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| Error::NotFound(format!("exec {exec_id} not found in container {id}")))
    }

    /// Finds the process a reaped pid belonged to (init first).
    pub fn process_by_pid(&mut self, pid: i32) -> Option<&mut Process> {
        if pid <= 0 {
            return None;
        }
        if self.init.pid == pid {
            return Some(&mut self.init);
        }
        self.execs.values_mut().find(|p| p.pid == pid)
    }
}

/// The spec's `linux.cgroupsPath`, if any.
pub fn spec_cgroups_path(spec: &oci_spec::runtime::Spec) -> Option<String> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| p.display().to_string())
}

/// The network namespace the spec joins by path (a pod's, on Kubernetes), if any.
pub fn spec_netns_path(spec: &oci_spec::runtime::Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .and_then(|nss| {
            nss.iter()
                .find(|ns| ns.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
                .and_then(|ns| ns.path().clone())
        })
}

/// True when the spec asks for a new namespace of kind `typ` (one without a path
/// to join).
pub fn has_own_namespace(
    spec: &oci_spec::runtime::Spec,
    typ: oci_spec::runtime::LinuxNamespaceType,
) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|nss| nss.iter().any(|ns| ns.typ() == typ && ns.path().is_none()))
}

/// True when the spec joins an existing pid namespace or has none of its own.
pub fn shares_pid_namespace(spec: &oci_spec::runtime::Spec) -> bool {
    !has_own_namespace(spec, oci_spec::runtime::LinuxNamespaceType::Pid)
}

/// Whether `path` is a checkpoint directory containerd made for one CreateTask
/// (`os.MkdirTemp(..., "ctrd-checkpoint")`: the prefix and random digits), as opposed
/// to a path a client named (CRI's `RestoreFromPath`, `<container dir>/ctrd-checkpoint`
/// without digits, or a user's directory), which is never removed.
pub fn is_containerd_temp_checkpoint(path: &std::path::Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("ctrd-checkpoint"))
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_sees_the_exit_recorded_by_the_reaper() {
        let mut p = Process::new("c1", Stdio::default());
        let mut rx = p.watch_exit();
        assert!(p.exit().is_none());
        let exit = p.set_exited(3);
        let seen = rx.wait_for(|e| e.is_some()).await.unwrap().unwrap();
        assert_eq!(seen, exit);
        assert_eq!(p.status, Status::STOPPED);
        let st = p.state("/b", "");
        assert_eq!(st.exit_status, 3);
        assert_eq!(st.status, Status::STOPPED.into());
    }

    #[test]
    fn a_running_process_cannot_be_deleted_or_started_again() {
        let mut p = Process::new("c1", Stdio::default());
        p.check_startable().unwrap();
        p.pid = 42;
        p.status = Status::RUNNING;
        assert!(matches!(
            p.check_deletable(),
            Err(Error::FailedPrecondition(_))
        ));
        assert!(matches!(
            p.check_startable(),
            Err(Error::FailedPrecondition(_))
        ));
        p.set_exited(0);
        p.check_deletable().unwrap();
    }

    #[test]
    fn pid_namespace_sharing_follows_the_spec() {
        let spec = oci_spec::runtime::Spec::default();
        // The default spec has a private pid namespace.
        assert!(!shares_pid_namespace(&spec));
        let mut spec = spec;
        let mut linux = spec.linux().clone().unwrap();
        linux.set_namespaces(Some(vec![]));
        spec.set_linux(Some(linux));
        assert!(shares_pid_namespace(&spec));
    }

    #[test]
    fn only_containerd_temp_checkpoint_dirs_are_recognised() {
        assert!(is_containerd_temp_checkpoint(std::path::Path::new(
            "/tmp/ctrd-checkpoint1081236500"
        )));
        assert!(is_containerd_temp_checkpoint(std::path::Path::new(
            "/run/user/0/ctrd-checkpoint42"
        )));
        for not in [
            "/var/lib/containerd/io.containerd.grpc.v1.cri/containers/x/ctrd-checkpoint",
            "/tmp/ctrd-checkpoint12a",
            "/srv/images/my-checkpoint",
            "/tmp/ctrd-checkpoint1/..",
            "/",
        ] {
            assert!(
                !is_containerd_temp_checkpoint(std::path::Path::new(not)),
                "{not}"
            );
        }
    }
}
