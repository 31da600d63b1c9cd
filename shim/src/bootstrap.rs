//! How the shim binary is run by containerd: `start`, `delete`, or serving.
//!
//! Why not `containerd_shim::asynchronous::run`: that entry point (crate 0.12)
//! speaks only task API v3 and answers `start` with a JSON reply, which only
//! containerd 2.x understands. containerd 1.6 reads the reply as a plain
//! socket address and 1.7 refuses version 3, and both call
//! `containerd.task.v2.Task`. So the shim answers `start` with the plain
//! address every containerd since 1.2 accepts, and serves the Task service
//! under both names (v2 and v3 differ only in the service name). The rest —
//! spawning the server, the fifo logger, the reaper's monitor — comes from the
//! crate; the event publisher is ours (`crate::publisher`: it reconnects after
//! a containerd restart).

use std::{collections::HashMap, os::unix::net::UnixListener, path::Path, sync::Arc};

use containerd_shim::{
    asynchronous::monitor::monitor_notify_by_pid,
    protos::{
        protobuf::Message,
        shim_async::{create_task, Task},
        ttrpc::{
            self,
            r#async::{transport::Listener, Server},
        },
        types::introspection::RuntimeInfo,
    },
    Config, Flags, Shim, StartOpts,
};
use nix::{
    errno::Errno,
    sys::wait::{waitpid, WaitPidFlag, WaitStatus},
    unistd::Pid,
};
use tokio::{
    io::AsyncWriteExt,
    signal::unix::{signal, SignalKind},
};
use tracing::{debug, error, info, warn};

use crate::publisher::EventPublisher;
use crate::service::{Service, RUNTIME_TYPE};

const TTRPC_ADDRESS: &str = "TTRPC_ADDRESS";
const TASK_V2: &str = "containerd.task.v2.Task";
const TASK_V3: &str = "containerd.task.v3.Task";

/// Entry point of the shim binary. `start` runs before any tokio runtime
/// exists, so that it can fork the server (see `start`).
pub fn main() -> Result<(), String> {
    let args: Vec<_> = std::env::args_os().collect();
    let flags = containerd_shim::parse(&args[1..]).map_err(|e| e.to_string())?;
    if flags.action == "start" && !flags.info {
        return start(flags);
    }
    runtime()?.block_on(run(flags))
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("start the tokio runtime: {e}"))
}

/// `start`: forks the server first thing, prints the address it reports.
///
/// containerd execs `shim start`, waits for it to exit and connects to the
/// address it printed. The usual way (containerd-shim's `spawn`, Go shims)
/// re-execs the binary as the server and waits for it to serve; here the server
/// is a fork of this still single-threaded process: one exec of a 15 MB binary
/// and one runtime start fewer on every container start, and containerd's first
/// request waits in the socket's backlog while the server starts instead of
/// `start` waiting for it. The fork comes before anything else (reading the
/// spec, hashing the address, binding): what `start` maps it also unmaps when it
/// exits, ~0.5 ms here for the pages that work touches (measured with perf in
/// the bench's windows), and containerd waits for that exit. Forked first,
/// `start` has touched next to nothing and its server (which needs those pages
/// anyway) does the work.
fn start(flags: Flags) -> Result<(), String> {
    use std::io::Read;
    // containerd: the server's OOM score is set from its, as containerd-shim's
    // spawn does (the server's own parent is this process, gone soon).
    let containerd = std::os::unix::process::parent_id();
    let (answer, report) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("pipe for the shim server's answer: {e}"))?;
    // SAFETY: no other thread exists yet (no runtime was started), so the
    // child is a consistent copy; it starts its own runtime.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            drop(answer);
            std::process::exit(start_server(flags, containerd, report))
        }
        Ok(nix::unistd::ForkResult::Parent { .. }) => {
            drop(report);
            let mut said = Vec::new();
            std::fs::File::from(answer)
                .read_to_end(&mut said)
                .map_err(|e| format!("read the shim server's answer: {e}"))?;
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            match said.split_first() {
                Some((b'+', address)) => {
                    use std::io::Write;
                    let mut out = std::io::stdout();
                    out.write_all(address)
                        .and_then(|_| out.flush())
                        .map_err(|e| e.to_string())
                }
                Some((b'-', error)) => Err(text(error)),
                // It reports every error it meets; this is a death (a signal).
                _ => Err("the shim server ended before it listened, without a word".into()),
            }
        }
        Err(e) => Err(format!("fork the shim server: {e}")),
    }
}

/// The forked server's side of `start`: binds the group's socket and tells
/// `start` (on `report`: `+address` or `-error`), then serves. Its stdio is
/// /dev/null from the start: containerd reads `start`'s output until every
/// writer has closed it. The exit code.
fn start_server(mut flags: Flags, containerd: u32, report: std::os::fd::OwnedFd) -> i32 {
    detach_stdio();
    let mut report = std::fs::File::from(report);
    let bound = match bind_group(&flags) {
        Ok(b) => b,
        Err(e) => {
            let _ = tell(&mut report, b'-', &e);
            return 1;
        }
    };
    let (listener, address, path, spec) = match bound {
        Bound::Listening {
            listener,
            address,
            path,
            spec,
        } => (listener, address, path, spec),
        // A shim of the same group serves there already: nothing to serve here.
        Bound::Served(address) => return i32::from(tell(&mut report, b'+', &address).is_err()),
    };
    // The socket `start` bound goes with this server, however it ends.
    let socket_file = SocketFile(path);
    if tell(&mut report, b'+', &address).is_err() {
        return 1;
    }
    // Closed: `start` has read its answer to the end and exits.
    drop(report);
    let oom = adjust_oom_score(containerd);
    // Served at the address, as if containerd had run the binary with `-socket`.
    flags.socket = address;
    flags.action = String::new();
    let code = match server(flags, listener, *spec, oom) {
        Ok(()) => 0,
        Err(e) => {
            error!("shim server: {e}");
            1
        }
    };
    drop(socket_file);
    code
}

/// What the server tells `start`: `+` and the address, or `-` and the error.
fn tell(report: &mut std::fs::File, what: u8, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    report.write_all(&[what])?;
    report.write_all(text.as_bytes())
}

/// Where the server left the group's socket.
enum Bound {
    /// Bound here: this process serves it.
    Listening {
        listener: UnixListener,
        address: String,
        path: String,
        spec: Box<oci_spec::runtime::Spec>,
    },
    /// A shim of the same group serves at this address already.
    Served(String),
}

/// Reads the bundle's spec (once: the server starts its container's restore from
/// it too), binds its group's socket and records the address in the bundle.
fn bind_group(flags: &Flags) -> Result<Bound, String> {
    let spec = crate::bundle::read_spec(Path::new(".")).map_err(|e| e.to_string())?;
    let grouping = crate::service::grouping_of(&spec, &flags.id);
    let opts = StartOpts {
        id: flags.id.clone(),
        publish_binary: flags.publish_binary.clone(),
        address: flags.address.clone(),
        ttrpc_address: std::env::var(TTRPC_ADDRESS).unwrap_or_default(),
        namespace: flags.namespace.clone(),
        debug: flags.debug,
        ..Default::default()
    };
    let address = opts.socket_address(&grouping);
    let path = address
        .strip_prefix("unix://")
        .unwrap_or(&address)
        .to_string();
    let listener = match bind(&path) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                write_address(&address)?;
                return Ok(Bound::Served(address));
            }
            let _ = std::fs::remove_file(&path);
            bind(&path).map_err(|e| format!("listen on {path}: {e}"))?
        }
        Err(e) => return Err(format!("listen on {path}: {e}")),
    };
    if let Err(e) = write_address(&address) {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(Bound::Listening {
        listener,
        address,
        path,
        spec: Box::new(spec),
    })
}

/// The address `start` tells containerd, also kept in the bundle for `shim
/// delete` and for containerd's reconnect after a restart.
fn write_address(address: &str) -> Result<(), String> {
    std::fs::write("address", address).map_err(|e| format!("write address: {e}"))
}

/// /dev/null on stdin, stdout and stderr.
fn detach_stdio() {
    // SAFETY: open and dup2 on this process's own descriptors.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            libc::close(null);
        }
    }
}

/// The kernel's highest oom_score_adj (include/uapi/linux/oom.h).
const OOM_SCORE_ADJ_MAX: i64 = 1000;

/// As containerd-shim's spawn does for its server: this process's OOM score one
/// above `containerd`'s, so that the kernel kills a shim before containerd. (The
/// crate's `adjust_oom_score` reads its caller's parent: here `start`, gone by then.)
fn adjust_oom_score(containerd: u32) -> Result<(), String> {
    let score: i64 = std::fs::read_to_string(format!("/proc/{containerd}/oom_score_adj"))
        .map_err(|e| format!("read containerd's OOM score: {e}"))?
        .trim()
        .parse()
        .map_err(|e| format!("containerd's OOM score: {e}"))?;
    if score < OOM_SCORE_ADJ_MAX {
        std::fs::write("/proc/self/oom_score_adj", (score + 1).to_string())
            .map_err(|e| format!("set the shim server's OOM score: {e}"))?;
    }
    Ok(())
}

/// The forked server, served as if containerd had run the binary with
/// `-socket`. `spec` is the bundle's, as `start` read it; `oom` how setting
/// the server's OOM score went (logged once the log is open).
fn server(
    flags: Flags,
    listener: UnixListener,
    spec: oci_spec::runtime::Spec,
    oom: Result<(), String>,
) -> Result<(), String> {
    set_subreaper()?;
    runtime()?.block_on(async move {
        // First, so that it is under way while this server starts.
        // The bundle by its absolute path: CRIU resolves the paths made from it
        // in a process with another working directory.
        let early = std::env::current_dir().ok().and_then(|bundle| {
            crate::early::Early::start(&bundle, &spec, &flags.id, &flags.namespace)
        });
        let mut config = Config::default();
        let shim = Service::new(RUNTIME_TYPE, &flags, &mut config).await;
        serve(shim, &flags, Some(listener), early, oom).await
    })
}

async fn run(flags: Flags) -> Result<(), String> {
    if flags.info {
        let info = RuntimeInfo {
            name: RUNTIME_TYPE.to_string(),
            ..Default::default()
        };
        let bytes = info.write_to_bytes().map_err(|e| e.to_string())?;
        return write_stdout(&bytes).await;
    }
    set_subreaper()?;
    let mut config = Config::default();
    let mut shim = Service::new(RUNTIME_TYPE, &flags, &mut config).await;
    match flags.action.as_str() {
        "delete" => {
            tokio::spawn(reap_children());
            let resp = shim.delete_shim().await.map_err(|e| e.to_string())?;
            let bytes = resp.write_to_bytes().map_err(|e| e.to_string())?;
            write_stdout(&bytes).await
        }
        _ => serve(shim, &flags, None, None, Ok(())).await,
    }
}

/// Serves the task API on `listener`, or on a socket bound at `-socket`; `oom`:
/// how setting the server's OOM score went, logged once the log is open.
async fn serve(
    mut shim: Service,
    flags: &Flags,
    listener: Option<UnixListener>,
    early: Option<crate::early::Early>,
    oom: Result<(), String>,
) -> Result<(), String> {
    if flags.socket.is_empty() {
        return Err("-socket is required to serve the task API".into());
    }
    crate::logging::init(flags.debug, "info", &flags.namespace, &flags.id)
        .map_err(|e| format!("open containerd's log fifo: {e}"))?;
    if let Err(e) = oom {
        warn!(error = %e, "OOM score of the shim server left as it was");
    }
    tokio::spawn(reap_children());

    let path = flags
        .socket
        .strip_prefix("unix://")
        .unwrap_or(&flags.socket)
        .to_string();
    // A listener handed over comes with its socket file's owner (`start`).
    let owned = listener.is_none();
    let bound = match listener {
        Some(l) => Ok(l),
        None => bind(&path),
    };
    let listener = match bound {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            // Another shim of the same group already serves here: hand it over.
            if ttrpc::asynchronous::Client::connect(&flags.socket)
                .await
                .is_ok()
            {
                std::fs::write("address", &flags.socket).map_err(|e| e.to_string())?;
                signal_started();
                return Ok(());
            }
            let _ = std::fs::remove_file(&path);
            bind(&path).map_err(|e| format!("listen on {path}: {e}"))?
        }
        Err(e) => return Err(format!("listen on {path}: {e}")),
    };
    let _socket_file = owned.then(|| SocketFile(path));

    let ttrpc_address = std::env::var(TTRPC_ADDRESS)
        .map_err(|_| format!("{TTRPC_ADDRESS} is not set: containerd sets it for its shims"))?;
    // Connected by the event loop, off the way to serving: containerd's Create
    // waits in the socket's backlog until the server starts.
    let publisher = EventPublisher::unconnected(&ttrpc_address);
    let (task, events) = shim.task_service(publisher).await;
    if let Some(e) = early {
        task.set_early(e);
    }
    let unused = task.clone();
    let task: Arc<dyn Task + Send + Sync> = Arc::new(task);

    let listener = Listener::try_from(listener).map_err(|e| format!("ttrpc listener: {e}"))?;
    let mut server = Server::new().add_listener(listener);
    server = server.register_service(task_services(task));
    server
        .start()
        .await
        .map_err(|e| format!("start ttrpc server: {e}"))?;
    signal_started();
    info!(socket = %flags.socket, "shim serving the task API (v2 and v3)");

    shim.wait().await;
    unused.release_early().await;
    // The last events (exit, delete) reach containerd before the process ends.
    events.drain(std::time::Duration::from_secs(3)).await;
    info!("shim shutting down");
    server.shutdown().await.unwrap_or_default();
    Ok(())
}

/// The path of the socket a server bound, removed when it is dropped: however
/// the server ends, failing included, since a socket file left behind makes
/// the group's next `start` try to connect to it first.
struct SocketFile(String);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The Task service under both API names containerd may call.
fn task_services(task: Arc<dyn Task + Send + Sync>) -> HashMap<String, ttrpc::r#async::Service> {
    let mut services = create_task(task.clone());
    if let Some(v2) = create_task(task).remove(TASK_V3) {
        services.insert(TASK_V2.to_string(), v2);
    }
    services
}

fn bind(path: &str) -> std::io::Result<UnixListener> {
    if let Some(dir) = Path::new(path).parent() {
        std::fs::create_dir_all(dir)?;
    }
    UnixListener::bind(path)
}

/// containerd's `start` waits for the server to close its stdout: point
/// stdout at stderr once the socket is ready.
fn signal_started() {
    // SAFETY: dup2 on the process's own standard descriptors.
    unsafe {
        libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO);
    }
}

fn set_subreaper() -> Result<(), String> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(format!(
            "become a child subreaper: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Reaps every child (containers are re-parented to the shim) and reports
/// each exit to the monitor, which the task service and runc calls watch.
async fn reap_children() {
    let mut sigchld = match signal(SignalKind::child()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot watch SIGCHLD: exits will not be seen");
            return;
        }
    };
    // SIGTERM/SIGINT/SIGPIPE must not kill the shim: containerd ends it with Shutdown.
    let ignored: Vec<_> = [
        SignalKind::terminate(),
        SignalKind::interrupt(),
        SignalKind::pipe(),
    ]
    .into_iter()
    .filter_map(|k| signal(k).ok())
    .collect();
    let _keep = ignored;
    loop {
        loop {
            match waitpid(Some(Pid::from_raw(-1)), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => notify(pid, code).await,
                Ok(WaitStatus::Signaled(pid, sig, _)) => notify(pid, 128 + sig as i32).await,
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "waitpid");
                    break;
                }
            }
        }
        if sigchld.recv().await.is_none() {
            return;
        }
    }
}

async fn notify(pid: Pid, code: i32) {
    debug!(pid = pid.as_raw(), code, "reaped");
    if let Err(e) = monitor_notify_by_pid(pid.as_raw(), code).await {
        warn!(error = %e, "deliver exit");
    }
}

async fn write_stdout(bytes: &[u8]) -> Result<(), String> {
    let mut out = tokio::io::stdout();
    out.write_all(bytes).await.map_err(|e| e.to_string())?;
    out.flush().await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::TaskService;

    #[test]
    fn the_task_service_answers_to_v2_and_v3() {
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let task = TaskService::new("default", tx, Arc::default());
        let services = task_services(Arc::new(task));
        assert!(services.contains_key(TASK_V2), "{:?}", services.keys());
        assert!(services.contains_key(TASK_V3), "{:?}", services.keys());
    }
}
