//! The shim process itself: how containerd starts it (`start`), cleans up
//! after it (`delete`), and the loops that carry exits and events.

use std::{
    env::current_dir,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use containerd_shim::{
    asynchronous::{
        monitor::{monitor_subscribe, monitor_unsubscribe},
        publisher::RemotePublisher,
        spawn, ExitSignal, Shim,
    },
    monitor::{Subject, Topic},
    mount::umount_recursive,
    util::{
        read_file_to_str, read_options, read_pid_from_file, read_runtime, timestamp,
        write_str_to_file,
    },
    Config, DeleteResponse, Flags, StartOpts,
};
use runc::options::DeleteOpts;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::{
    publisher::EventPublisher,
    runc::{new_runc, INIT_PID_FILE},
    task::{EventTx, TaskService},
};

/// The runtime type containerd knows this shim by.
pub const RUNTIME_TYPE: &str = "io.containerd.rekindle.v2";

/// Annotations that put containers into one shim (one per pod or group).
pub const GROUP_LABELS: [&str; 3] = [
    "io.containerd.rekindle.v2.group",
    "io.containerd.runc.v2.group",
    "io.kubernetes.cri.sandbox-id",
];

/// The shim group of the container whose bundle is `bundle` (containerd runs
/// `start` in the bundle): the first group annotation of its spec, or its id.
pub fn grouping(bundle: &std::path::Path, id: &str) -> Result<String, String> {
    let spec = crate::bundle::read_spec(bundle).map_err(|e| e.to_string())?;
    Ok(grouping_of(&spec, id))
}

/// The shim group of container `id` with `spec`: see [`grouping`].
pub fn grouping_of(spec: &oci_spec::runtime::Spec, id: &str) -> String {
    spec.annotations()
        .as_ref()
        .and_then(|a| GROUP_LABELS.iter().find_map(|l| a.get(*l)))
        .cloned()
        .unwrap_or_else(|| id.to_string())
}

pub struct Service {
    exit: Arc<ExitSignal>,
    id: String,
    namespace: String,
}

#[async_trait]
impl Shim for Service {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Service {
            exit: Arc::new(ExitSignal::default()),
            id: args.id.clone(),
            namespace: args.namespace.clone(),
        }
    }

    /// The trait's way (a re-exec'd server); the binary's `start` forks
    /// instead (crate::bootstrap), with the same grouping.
    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let grouping = grouping(std::path::Path::new("."), &opts.id)
            .map_err(containerd_shim::Error::InvalidArgument)?;
        let address = spawn(opts, &grouping, Vec::new()).await?;
        write_str_to_file("address", &address).await?;
        Ok(address)
    }

    /// Cleans up after a shim that died: containerd runs `shim delete` in the
    /// bundle. Nothing of the container may outlive this.
    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let bundle = current_dir().map_err(|e| containerd_shim::Error::IoError {
            context: "get current dir".into(),
            err: e,
        })?;
        let mut opts = read_options(&bundle).await.unwrap_or_default();
        if let Ok(runtime) = read_runtime(&bundle).await {
            if !runtime.is_empty() {
                opts.binary_name = runtime;
            }
        }
        // Only when runc still has the container: running runc would create
        // its root directory otherwise.
        let root = if opts.root.is_empty() {
            crate::runc::DEFAULT_RUNC_ROOT
        } else {
            opts.root.as_str()
        };
        if std::path::Path::new(root)
            .join(&self.namespace)
            .join(&self.id)
            .exists()
        {
            match new_runc(&self.namespace, &bundle, &opts) {
                Ok(runc) => {
                    if let Err(e) = runc
                        .delete(&self.id, Some(&DeleteOpts { force: true }))
                        .await
                    {
                        warn!(error = %e, "runc delete during shim cleanup");
                    }
                }
                Err(e) => warn!(error = %e, "cannot run runc for cleanup"),
            }
        }
        if let Err(e) = umount_recursive(bundle.join("rootfs").to_str(), 0) {
            warn!(error = %e, "unmount rootfs during shim cleanup");
        }
        // The dead shim's socket (its address is in the bundle) goes too; a
        // live shim of the same group keeps serving on its own.
        if let Ok(address) = read_file_to_str(bundle.join("address")).await {
            remove_dead_socket(&address).await;
        }
        let pid = read_pid_from_file(&bundle.join(INIT_PID_FILE))
            .await
            .unwrap_or_default();
        Ok(DeleteResponse {
            pid: pid as u32,
            // As containerd's own shims report it: killed.
            exit_status: 128 + 9,
            exited_at: Some(timestamp()?).into(),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    /// The crate's publisher does not survive a containerd restart: only its
    /// address is used (see [`Service::task_service`], which the shim calls).
    async fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        self.task_service(EventPublisher::unconnected(&publisher.address))
            .await
            .0
    }
}

impl Service {
    /// The task service, its events forwarded to containerd by `publisher`, and
    /// the queue of those events (for the shim to drain before it exits).
    pub async fn task_service(&self, publisher: EventPublisher) -> (TaskService, EventQueue) {
        let (tx, rx) = mpsc::channel(128);
        let queue = EventQueue {
            tx: tx.clone(),
            busy: Arc::default(),
        };
        let task = TaskService::new(&self.namespace, tx, self.exit.clone());
        forward_exits(&task).await;
        forward_events(publisher, self.namespace.clone(), rx, queue.busy.clone());
        (task, queue)
    }
}

/// The events on their way to containerd. The shim's last events (`/tasks/exit`,
/// `/tasks/delete`) come just before it exits; one that needs a reconnect (after a
/// containerd restart) would otherwise be lost with the process.
pub struct EventQueue {
    tx: EventTx,
    /// Set while the forwarding loop holds an event it has not handed over yet.
    busy: Arc<AtomicBool>,
}

impl EventQueue {
    /// Waits (at most `limit`) until every queued event was forwarded or given up.
    pub async fn drain(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut idle = 0;
        while tokio::time::Instant::now() < deadline {
            let empty = self.tx.capacity() == self.tx.max_capacity();
            if empty && !self.busy.load(Ordering::SeqCst) {
                // Twice in a row: the loop may be between receiving and marking busy.
                idle += 1;
                if idle == 2 {
                    return;
                }
            } else {
                idle = 0;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        warn!("exiting with events not yet forwarded to containerd");
    }
}

/// Removes a shim socket nobody answers on any more.
async fn remove_dead_socket(address: &str) {
    let path = address.strip_prefix("unix://").unwrap_or(address);
    if containerd_shim::protos::ttrpc::asynchronous::Client::connect(address)
        .await
        .is_ok()
    {
        return;
    }
    match tokio::fs::remove_file(path).await {
        Ok(()) => info!(socket = path, "removed the dead shim's socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warn!(error = %e, socket = path, "remove the dead shim's socket"),
    }
}

/// Every child the reaper collects is offered to the task service.
async fn forward_exits(task: &TaskService) {
    let mut sub = match monitor_subscribe(Topic::Pid).await {
        Ok(s) => s,
        Err(e) => {
            error!(error = %e, "cannot subscribe to process exits");
            return;
        }
    };
    let task = task.clone();
    tokio::spawn(async move {
        while let Some(ev) = sub.rx.recv().await {
            if let Subject::Pid(pid) = ev.subject {
                task.handle_exit(pid, ev.exit_code).await;
            }
        }
        monitor_unsubscribe(sub.id).await.unwrap_or_default();
    });
}

fn forward_events(
    publisher: EventPublisher,
    namespace: String,
    mut rx: mpsc::Receiver<(
        String,
        containerd_shim::protos::protobuf::well_known_types::any::Any,
    )>,
    busy: Arc<AtomicBool>,
) {
    tokio::spawn(async move {
        publisher.connect_ahead().await;
        while let Some((topic, event)) = rx.recv().await {
            busy.store(true, Ordering::SeqCst);
            // A failure is logged by the publisher (after its retries).
            let _ = publisher.publish(&topic, &namespace, event).await;
            busy.store(false, Ordering::SeqCst);
        }
    });
}
