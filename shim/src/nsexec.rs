//! Starting a process inside a running container without runc (the exec of the direct engine).
//!
//! Containers the direct engine restores through libcriu have no runc state,
//! so `runc exec` cannot reach them. [`spawn`] does what `runc exec --detach
//! --pid-file` does, with the shim's own binary as the helper:
//!
//! ```text
//! containerd-shim-rekindle-v2 nsexec REQUEST.json     (REQUEST.json: a HelperRequest)
//! ```
//!
//! The helper's stdio is the exec'd process's, so it reports a failure in
//! the request's `error_file` (`<pid_file>.nsexec.err`; stderr when unset),
//! which [`spawn`] turns into `Error::Runtime { action: "exec", .. }`.
//!
//! The helper ([`main`], run before any tokio runtime exists: `setns` into a
//! mount or user namespace refuses multi-threaded callers) joins the
//! container's cgroups, then its namespaces (user first, mount last), forks
//! (a pid namespace applies to children only), and the child sets rlimits,
//! the user, capabilities, `no_new_privs`, seccomp and AppArmor before
//! `execve`. The child reports a failure over a close-on-exec pipe, so a
//! pipe closed without data means the exec happened. The helper then writes
//! the new pid to the pid file and exits at once; the orphan is reparented to
//! the shim, a child subreaper, which reaps it like any other process.
//!
//! Supported: the namespaces that differ from the shim's (user, cgroup, ipc,
//! uts, net, pid, time, mnt), cgroups of every hierarchy, `args` resolved
//! against the PATH of the spec's `env` inside the container (like runc),
//! `env`, `cwd`, `user` (uid, gid, additionalGids, umask), `capabilities`
//! (all five sets; a missing object means none, as in runc), `rlimits`,
//! `noNewPrivileges`, `oomScoreAdj`, `apparmorProfile` (when AppArmor is on).
//!
//! Seccomp: when the container's init runs under a filter, the helper copies
//! its filters with `PTRACE_SECCOMP_GET_FILTER` (briefly ptrace-stopping the
//! init) and installs them, oldest first, as runc would: right before
//! `execve` with `noNewPrivileges`, else while the child still has
//! CAP_SYS_ADMIN (so the rest of the setup runs under the filter, as in runc).
//! Flags of the original filters (for example a user-notification listener)
//! are not copied: a `SECCOMP_RET_USER_NOTIF` rule then fails its syscall
//! with ENOSYS in the exec'd process.
//!
//! Refused: a terminal (`spawn` returns InvalidArgument so the caller can
//! fall back), an SELinux label, an AppArmor profile on a host without
//! AppArmor. `ioPriority`, `scheduler` and `execCPUAffinity` are ignored.

use std::{
    convert::Infallible,
    ffi::CString,
    fs::File,
    io::{Read, Write},
    os::{fd::AsFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use containerd_shim::{
    asynchronous::monitor::{monitor_subscribe, monitor_unsubscribe},
    monitor::{Subject, Topic},
};
use nix::{
    errno::Errno,
    fcntl::{open, OFlag},
    sched::{setns, CloneFlags},
    sys::stat::Mode,
    unistd::{Gid, Pid, Uid},
};
use oci_spec::runtime::Process;
use runc::io::Io as _;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The first argument that makes the shim binary run [`main`].
pub const SUBCOMMAND: &str = "nsexec";

/// How long the helper may take before [`spawn`] kills it: it only joins
/// namespaces and forks, so a helper this slow is stuck (for example on a
/// frozen init it tries to ptrace).
pub const HELPER_TIME_LIMIT: Duration = Duration::from_secs(10);

/// What [`spawn`] asks of an exec.
pub struct ExecRequest<'a> {
    /// The container's init, as a pid of the shim's pid namespace.
    pub init_pid: i32,
    /// The container's cgroup directory in every hierarchy, to join.
    pub cgroup_dirs: &'a [PathBuf],
    /// The OCI process to run.
    pub process: &'a Process,
    /// Its stdio; `None` means /dev/null.
    pub io: Option<Arc<crate::stdio::ChildIo>>,
    /// Where the helper writes the new process's pid.
    pub pid_file: &'a Path,
}

/// The helper's input, the JSON file named on its command line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelperRequest {
    pub init_pid: i32,
    pub pid_file: PathBuf,
    /// Where the helper writes why it failed; `None` means its stderr. The
    /// shim always names a file: the helper's stderr is the exec'd process's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_file: Option<PathBuf>,
    #[serde(default)]
    pub cgroup_dirs: Vec<PathBuf>,
    pub process: Process,
}

/// Starts `req.process` in the container of `req.init_pid` and returns its
/// pid (in the shim's pid namespace). The process is a child of the shim
/// once this returns; its exit comes through the reaper like any other.
pub async fn spawn(req: &ExecRequest<'_>) -> Result<i32> {
    if req.process.terminal().unwrap_or(false) {
        return Err(Error::InvalidArgument(
            "a terminal exec is not supported by the direct engine yet".into(),
        ));
    }
    validate(req.process).map_err(Error::InvalidArgument)?;

    let request_file = sibling(req.pid_file, ".nsexec.json");
    let error_file = sibling(req.pid_file, ".nsexec.err");
    let helper_req = HelperRequest {
        init_pid: req.init_pid,
        pid_file: req.pid_file.to_path_buf(),
        error_file: Some(error_file.clone()),
        cgroup_dirs: req.cgroup_dirs.to_vec(),
        process: req.process.clone(),
    };
    let json = serde_json::to_vec(&helper_req)
        .map_err(|e| Error::InvalidArgument(format!("encode the exec process: {e}")))?;
    remove_if_exists(req.pid_file).await;
    remove_if_exists(&error_file).await;
    tokio::fs::write(&request_file, json)
        .await
        .map_err(Error::io(format!("write {}", request_file.display())))?;

    let res = run_helper(req, &request_file).await;
    let message = tokio::fs::read_to_string(&error_file)
        .await
        .unwrap_or_default();
    remove_if_exists(&request_file).await;
    remove_if_exists(&error_file).await;

    let failed = |message: String| Error::Runtime {
        action: "exec".into(),
        message,
    };
    match res? {
        HelperExit::TimedOut => Err(failed(format!(
            "the nsexec helper did not finish within {HELPER_TIME_LIMIT:?}; killed it"
        ))),
        HelperExit::Code(0) => {
            let text = tokio::fs::read_to_string(req.pid_file)
                .await
                .map_err(Error::io(format!("read {}", req.pid_file.display())))?;
            text.trim().parse::<i32>().map_err(|_| {
                failed(format!(
                    "the nsexec helper wrote {text:?} to {}, not a pid",
                    req.pid_file.display()
                ))
            })
        }
        HelperExit::Code(code) => {
            remove_if_exists(req.pid_file).await;
            let message = message.trim();
            Err(failed(if message.is_empty() {
                format!("the nsexec helper exited with status {code}")
            } else {
                message.to_string()
            }))
        }
    }
}

enum HelperExit {
    Code(i32),
    TimedOut,
}

/// Runs the helper and learns its exit code from the shim's reaper (a
/// `wait` here would race the reaper's `waitpid(-1)`).
async fn run_helper(req: &ExecRequest<'_>, request_file: &Path) -> Result<HelperExit> {
    let mut cmd = tokio::process::Command::new("/proc/self/exe");
    cmd.arg0("containerd-shim-rekindle-v2")
        .arg(SUBCOMMAND)
        .arg(request_file)
        // Its own group, so a timeout kills the helper and a half-set-up child.
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Some(io) = &req.io {
        io.set(&mut cmd).await.map_err(|e| Error::Runtime {
            action: "exec".into(),
            message: format!("set up the process's stdio: {e}"),
        })?;
    }
    // Subscribe before spawning: the helper can exit before spawn returns.
    let mut sub = monitor_subscribe(Topic::Pid).await?;
    // Spawned through std: tokio would reap a dropped child itself, racing the
    // reaper; a std Child is just a pid.
    let child = match cmd.as_std_mut().spawn() {
        Ok(c) => c,
        Err(e) => {
            monitor_unsubscribe(sub.id).await.unwrap_or_default();
            if let Some(io) = &req.io {
                io.close_after_start().await;
            }
            return Err(Error::Io {
                context: "spawn the nsexec helper".into(),
                source: e,
            });
        }
    };
    let pid = child.id() as i32;
    drop(child);
    let exit = async {
        while let Some(ev) = sub.rx.recv().await {
            if let Subject::Pid(p) = ev.subject {
                if p == pid {
                    return ev.exit_code;
                }
            }
        }
        -1
    };
    tokio::pin!(exit);
    let res = match tokio::time::timeout(HELPER_TIME_LIMIT, &mut exit).await {
        Ok(code) => HelperExit::Code(code),
        Err(_) => {
            let _ = nix::sys::signal::killpg(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            exit.await;
            HelperExit::TimedOut
        }
    };
    if let Some(io) = &req.io {
        io.close_after_start().await;
    }
    monitor_unsubscribe(sub.id).await.unwrap_or_default();
    Ok(res)
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

async fn remove_if_exists(path: &Path) {
    let _ = tokio::fs::remove_file(path).await;
}

/// What makes a process spec unusable for the direct engine, checked by the
/// shim (to answer InvalidArgument) and again by the helper.
fn validate(process: &Process) -> std::result::Result<(), String> {
    match process.args() {
        Some(args) if !args.is_empty() && !args[0].is_empty() => {}
        _ => return Err("the exec process has no args".into()),
    }
    if !process.cwd().is_absolute() {
        return Err(format!(
            "the exec process's cwd {:?} is not an absolute path",
            process.cwd()
        ));
    }
    if process
        .selinux_label()
        .as_deref()
        .is_some_and(|l| !l.is_empty())
    {
        return Err("an SELinux label is not supported by the direct engine yet".into());
    }
    for rl in process.rlimits().iter().flatten() {
        rlimit_resource(&rl.typ().to_string())?;
    }
    capability_sets(process)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// The helper process.
// ---------------------------------------------------------------------------

/// The helper: `args` are the arguments after `nsexec` (one, the request
/// file). Must run in a single-threaded process. Returns the exit code: 0
/// once the process is started (without waiting for it), 1 on failure with
/// the reason in the error file (or on stderr).
pub fn main(args: &[String]) -> i32 {
    let [path] = args else {
        eprintln!(
            "usage: containerd-shim-rekindle-v2 nsexec REQUEST.json (internal, run by the shim)"
        );
        return 2;
    };
    let req: HelperRequest = match std::fs::read(path)
        .map_err(|e| format!("read {path}: {}", io_text(&e)))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| format!("decode {path}: {e}")))
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("nsexec: {e}");
            return 1;
        }
    };
    // Opened before joining the container's mount namespace, which hides the
    // host's paths.
    let mut sink: Box<dyn Write> = match &req.error_file {
        Some(p) => match File::create(p) {
            Ok(f) => Box::new(f),
            Err(e) => {
                eprintln!("nsexec: create {}: {}", p.display(), io_text(&e));
                return 1;
            }
        },
        None => Box::new(std::io::stderr()),
    };
    match helper(&req) {
        Ok(()) => 0,
        Err(msg) => {
            let _ = sink.write_all(msg.as_bytes());
            let _ = sink.flush();
            1
        }
    }
}

type HelperResult<T> = std::result::Result<T, String>;

/// What the child applies before `execve`, prepared by the helper while it
/// can still read host paths.
struct ChildPlan<'a> {
    process: &'a Process,
    seccomp: Vec<Vec<libc::sock_filter>>,
    apparmor: Option<String>,
}

fn helper(req: &HelperRequest) -> HelperResult<()> {
    validate(&req.process)?;
    if req.process.terminal().unwrap_or(false) {
        return Err("a terminal exec is not supported by the direct engine yet".into());
    }
    let pid = req.init_pid;
    if pid <= 0 {
        return Err(format!("invalid init pid {pid}"));
    }

    let apparmor = match req.process.apparmor_profile().as_deref() {
        None | Some("") => None,
        Some(p) if apparmor_enabled() => Some(p.to_string()),
        Some(p) => {
            return Err(format!(
                "apparmor profile {p:?} requested but AppArmor is not enabled on this host"
            ))
        }
    };
    let seccomp = match seccomp_mode(pid)? {
        0 => Vec::new(),
        2 => seccomp_filters(pid)?,
        m => {
            return Err(format!(
                "container init {pid} is in seccomp mode {m}; cannot exec into it"
            ))
        }
    };

    let pid_file = open(
        &req.pid_file,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .map_err(|e| format!("create {}: {}", req.pid_file.display(), errno_text(e)))?;

    let namespaces = open_namespaces(pid)?;

    // Join the cgroups first so the child is born in them.
    let me = std::process::id().to_string();
    for dir in &req.cgroup_dirs {
        let procs = dir.join("cgroup.procs");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&procs)
            .and_then(|mut f| f.write_all(me.as_bytes()))
            .map_err(|e| format!("join cgroup {}: {}", dir.display(), io_text(&e)))?;
    }
    if let Some(adj) = req.process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| format!("set oom_score_adj {adj}: {}", io_text(&e)))?;
    }
    for ns in &namespaces {
        setns(ns.file.as_fd(), ns.flag).map_err(|e| {
            format!(
                "join the container's {} namespace: {}",
                ns.name,
                errno_text(e)
            )
        })?;
    }
    drop(namespaces);

    let plan = ChildPlan {
        process: &req.process,
        seccomp,
        apparmor,
    };
    let (rd, wr) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| format!("create the exec status pipe: {}", errno_text(e)))?;
    // SAFETY: the helper is single-threaded (it runs before any runtime or
    // thread exists), so the child may do anything the parent could.
    match unsafe { nix::unistd::fork() } {
        Err(e) => Err(format!("fork: {}", errno_text(e))),
        Ok(nix::unistd::ForkResult::Child) => {
            drop(rd);
            let Err(msg) = child(&plan);
            let _ = nix::unistd::write(&wr, msg.as_bytes());
            // SAFETY: _exit ends the process without running the parent's
            // atexit handlers or flushing its copied buffers.
            unsafe { libc::_exit(127) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(wr);
            let mut msg = String::new();
            if let Err(e) = File::from(rd).read_to_string(&mut msg) {
                msg = format!("read the exec status: {}", io_text(&e));
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            }
            if !msg.is_empty() {
                let _ = nix::sys::wait::waitpid(child, None);
                return Err(msg);
            }
            let mut f = File::from(pid_file);
            if let Err(e) = f.write_all(child.as_raw().to_string().as_bytes()) {
                // Nobody would learn about the process: do not leave it running.
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(child, None);
                return Err(format!("write {}: {}", req.pid_file.display(), io_text(&e)));
            }
            Ok(())
        }
    }
}

struct Namespace {
    name: &'static str,
    flag: CloneFlags,
    file: File,
}

/// The container's namespaces that differ from the helper's, in the order to
/// join them: the user namespace first (it grants the rights to join the
/// others), the mount namespace last (it hides `/proc/<pid>/ns` of the host).
fn open_namespaces(pid: i32) -> HelperResult<Vec<Namespace>> {
    let kinds: [(&str, CloneFlags); 8] = [
        ("user", CloneFlags::CLONE_NEWUSER),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("time", CloneFlags::from_bits_retain(libc::CLONE_NEWTIME)),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ];
    let mut out = Vec::new();
    for (name, flag) in kinds {
        // A kernel without this namespace kind has no link for it.
        let Ok(mine) = std::fs::metadata(format!("/proc/self/ns/{name}")) else {
            continue;
        };
        let path = format!("/proc/{pid}/ns/{name}");
        let file = File::open(&path).map_err(|e| format!("open {path}: {}", io_text(&e)))?;
        let theirs = file
            .metadata()
            .map_err(|e| format!("stat {path}: {}", io_text(&e)))?;
        if (theirs.dev(), theirs.ino()) != (mine.dev(), mine.ino()) {
            out.push(Namespace { name, flag, file });
        }
    }
    Ok(out)
}

/// The child: everything between fork and execve. Returns only on failure.
fn child(plan: &ChildPlan<'_>) -> HelperResult<Infallible> {
    let p = plan.process;
    let nnp = p.no_new_privileges().unwrap_or(false);
    let sets = capability_sets(p)?;
    let args = cstrings(p.args().as_deref().unwrap_or_default(), "args")?;
    let env_list = p.env().clone().unwrap_or_default();
    let env = cstrings(&env_list, "env")?;

    reset_signals()?;
    for rl in p.rlimits().iter().flatten() {
        let name = rl.typ().to_string();
        let limit = libc::rlimit {
            rlim_cur: rl.soft(),
            rlim_max: rl.hard(),
        };
        // SAFETY: setrlimit reads the struct it is given.
        if unsafe { libc::setrlimit(rlimit_resource(&name)?, &limit) } != 0 {
            return Err(format!("set {name}: {}", errno_text(Errno::last())));
        }
    }
    if nnp {
        prctl(libc::PR_SET_NO_NEW_PRIVS, 1, "set no_new_privs")?;
    } else if !plan.seccomp.is_empty() {
        // Without no_new_privs installing a filter needs CAP_SYS_ADMIN, which
        // the process may be about to lose (runc does the same).
        install_seccomp(&plan.seccomp)?;
    }
    if let Some(profile) = &plan.apparmor {
        apply_apparmor(profile)?;
    }

    // Bounding set first: dropping from it needs CAP_SETPCAP.
    for cap in caps::runtime::thread_all_supported() {
        if !sets.bounding.contains(&cap)
            && caps::has_cap(None, caps::CapSet::Bounding, cap).unwrap_or(false)
        {
            caps::drop(None, caps::CapSet::Bounding, cap)
                .map_err(|e| format!("drop {cap} from the bounding set: {e}"))?;
        }
    }
    // Keep the permitted set across setuid; the sets are set right after.
    prctl(libc::PR_SET_KEEPCAPS, 1, "set keepcaps")?;

    let user = p.user();
    if let Some(mask) = user.umask() {
        nix::sys::stat::umask(Mode::from_bits_truncate(mask as libc::mode_t));
    }
    let cwd = p.cwd();
    let chdir_failed = |e: Errno| {
        format!(
            "chdir to cwd ({:?}) set in config.json failed: {}",
            cwd.display().to_string(),
            errno_text(e)
        )
    };
    // Before setuid, so a directory only the caller can reach still works;
    // again after it when that was a permission error (as runc does).
    let retry_chdir = match nix::unistd::chdir(cwd) {
        Ok(()) => false,
        Err(Errno::EACCES | Errno::EPERM) => true,
        Err(e) => return Err(chdir_failed(e)),
    };
    set_user(user)?;
    if retry_chdir {
        nix::unistd::chdir(cwd).map_err(chdir_failed)?;
    }

    // Inheritable, effective, permitted: each step keeps effective within
    // permitted, whether setuid cleared the effective set or (uid 0) not.
    for (set, name, value) in [
        (caps::CapSet::Inheritable, "inheritable", &sets.inheritable),
        (caps::CapSet::Effective, "effective", &sets.effective),
        (caps::CapSet::Permitted, "permitted", &sets.permitted),
    ] {
        caps::set(None, set, value).map_err(|e| format!("set the {name} capabilities: {e}"))?;
    }
    if caps::runtime::ambient_set_supported().is_ok() {
        caps::set(None, caps::CapSet::Ambient, &sets.ambient)
            .map_err(|e| format!("set the ambient capabilities: {e}"))?;
    } else if !sets.ambient.is_empty() {
        return Err("ambient capabilities requested but the kernel has none".into());
    }
    prctl(libc::PR_SET_KEEPCAPS, 0, "clear keepcaps")?;

    let program = look_path(&args[0], path_env(&env_list))?;
    // Nothing of the shim's but stdio may leak into the container.
    // SAFETY: close_range only changes descriptor flags.
    if unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    } != 0
    {
        return Err(format!(
            "mark descriptors close-on-exec: {}",
            errno_text(Errno::last())
        ));
    }
    if nnp && !plan.seccomp.is_empty() {
        // As close to execve as possible: the filter need not allow the setup.
        install_seccomp(&plan.seccomp)?;
    }
    let err = nix::unistd::execve(&program, &args, &env).unwrap_err();
    Err(format!(
        "exec {}: {}",
        String::from_utf8_lossy(program.as_bytes()),
        errno_text(err)
    ))
}

fn set_user(user: &oci_spec::runtime::User) -> HelperResult<()> {
    let gids: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    // A user namespace may forbid setgroups; then only an empty list is fine.
    let denied = std::fs::read_to_string("/proc/self/setgroups")
        .map(|s| s.trim() == "deny")
        .unwrap_or(false);
    if !denied {
        nix::unistd::setgroups(&gids)
            .map_err(|e| format!("setgroups {gids:?}: {}", errno_text(e)))?;
    } else if !gids.is_empty() {
        return Err(
            "additionalGids set but setgroups is denied in the container's user namespace".into(),
        );
    }
    nix::unistd::setgid(Gid::from_raw(user.gid()))
        .map_err(|e| format!("setgid {}: {}", user.gid(), errno_text(e)))?;
    nix::unistd::setuid(Uid::from_raw(user.uid()))
        .map_err(|e| format!("setuid {}: {}", user.uid(), errno_text(e)))?;
    Ok(())
}

/// The capability sets of a process spec, as the caps crate names them.
#[derive(Debug, Default)]
struct CapabilitySets {
    bounding: caps::CapsHashSet,
    effective: caps::CapsHashSet,
    inheritable: caps::CapsHashSet,
    permitted: caps::CapsHashSet,
    ambient: caps::CapsHashSet,
}

fn capability_sets(p: &Process) -> HelperResult<CapabilitySets> {
    let Some(c) = p.capabilities() else {
        return Ok(CapabilitySets::default());
    };
    let convert =
        |set: &Option<oci_spec::runtime::Capabilities>| -> HelperResult<caps::CapsHashSet> {
            set.iter()
                .flatten()
                .map(|cap| {
                    let name = format!("CAP_{cap}");
                    name.parse::<caps::Capability>()
                        .map_err(|_| format!("unknown capability {name}"))
                })
                .collect()
        };
    Ok(CapabilitySets {
        bounding: convert(c.bounding())?,
        effective: convert(c.effective())?,
        inheritable: convert(c.inheritable())?,
        permitted: convert(c.permitted())?,
        ambient: convert(c.ambient())?,
    })
}

fn rlimit_resource(name: &str) -> HelperResult<libc::__rlimit_resource_t> {
    Ok(match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        other => return Err(format!("unknown rlimit {other}")),
    })
}

/// Rust ignores SIGPIPE and the shim may block signals; an ignored or
/// blocked signal survives execve, which the container's process must not
/// inherit.
fn reset_signals() -> HelperResult<()> {
    use nix::sys::signal::{self, SigHandler, SigSet, SigmaskHow, Signal};
    // SAFETY: restoring the default disposition installs no handler.
    unsafe { signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) }
        .map_err(|e| format!("reset SIGPIPE: {}", errno_text(e)))?;
    signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(|e| format!("unblock signals: {}", errno_text(e)))
}

fn prctl(option: libc::c_int, value: libc::c_ulong, what: &str) -> HelperResult<()> {
    // SAFETY: the options used here take plain integers.
    if unsafe { libc::prctl(option, value, 0, 0, 0) } != 0 {
        return Err(format!("{what}: {}", errno_text(Errno::last())));
    }
    Ok(())
}

fn cstrings(items: &[String], what: &str) -> HelperResult<Vec<CString>> {
    items
        .iter()
        .map(|s| {
            CString::new(s.as_bytes())
                .map_err(|_| format!("{what} entry {s:?} contains a NUL byte"))
        })
        .collect()
}

/// The PATH of the process's own environment (the last one wins, as in a
/// shell), which is where runc looks up `args[0]` too.
fn path_env(env: &[String]) -> &str {
    env.iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("")
}

/// Resolves `args[0]` like Go's `exec.LookPath` in runc, with the same error
/// texts, inside the container's mount namespace and as its user.
fn look_path(file: &CString, path: &str) -> HelperResult<CString> {
    let name = String::from_utf8_lossy(file.as_bytes()).into_owned();
    if name.contains('/') {
        return executable(file)
            .map(|()| file.clone())
            .map_err(|e| match e {
                LookError::Stat(e) => format!("exec: {name:?}: stat {name}: {}", errno_text(e)),
                LookError::Other(e) => format!("exec: {name:?}: {}", errno_text(e)),
            });
    }
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let Ok(candidate) = CString::new(format!("{dir}/{name}")) else {
            continue;
        };
        if executable(&candidate).is_ok() {
            return Ok(candidate);
        }
    }
    Err(format!(
        "exec: {name:?}: executable file not found in $PATH"
    ))
}

enum LookError {
    Stat(Errno),
    Other(Errno),
}

fn executable(path: &CString) -> std::result::Result<(), LookError> {
    let st = nix::sys::stat::stat(path.as_c_str()).map_err(LookError::Stat)?;
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        return Err(LookError::Other(Errno::EISDIR));
    }
    // SAFETY: path is a valid NUL-terminated string.
    if unsafe { libc::faccessat(libc::AT_FDCWD, path.as_ptr(), libc::X_OK, libc::AT_EACCESS) } != 0
    {
        return Err(LookError::Other(Errno::last()));
    }
    Ok(())
}

fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .map(|s| s.trim_start().starts_with('Y'))
        .unwrap_or(false)
}

/// Asks AppArmor to switch to `profile` at the next execve.
fn apply_apparmor(profile: &str) -> HelperResult<()> {
    let value = format!("exec {profile}");
    let mut last = None;
    for path in [
        "/proc/thread-self/attr/apparmor/exec",
        "/proc/self/attr/exec",
    ] {
        match std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut f| f.write_all(value.as_bytes()))
        {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(format!("{path}: {}", io_text(&e))),
        }
    }
    Err(format!(
        "apply apparmor profile {profile:?}: {}",
        last.unwrap_or_default()
    ))
}

/// The `Seccomp:` mode of a process: 0 none, 1 strict, 2 filter.
fn seccomp_mode(pid: i32) -> HelperResult<u32> {
    let path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&path).map_err(|e| format!("read {path}: {}", io_text(&e)))?;
    Ok(parse_seccomp_mode(&status))
}

fn parse_seccomp_mode(status: &str) -> u32 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `PTRACE_SECCOMP_GET_FILTER` (linux/ptrace.h), which libc lacks.
const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;

/// Copies the seccomp filters of `pid`, oldest first. The kernel only hands
/// them to a tracer of a stopped process, so this seizes it, interrupts it,
/// reads every filter and detaches (the process resumes at once).
fn seccomp_filters(pid: i32) -> HelperResult<Vec<Vec<libc::sock_filter>>> {
    let fail = |what: &str| {
        format!(
            "copy the seccomp filters of the container's init {pid} ({what}): {}",
            errno_text(Errno::last())
        )
    };
    // SAFETY: PTRACE_SEIZE takes no pointers.
    if unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0, 0) } == -1 {
        return Err(fail("ptrace seize"));
    }
    let mut tracee = Tracee { pid, signal: 0 };
    // SAFETY: PTRACE_INTERRUPT takes no pointers.
    if unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0) } == -1 {
        return Err(fail("ptrace interrupt"));
    }
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if r == pid {
            break;
        }
        if Errno::last() != Errno::EINTR {
            return Err(fail("wait for the ptrace stop"));
        }
    }
    if !libc::WIFSTOPPED(status) {
        tracee.pid = 0;
        return Err(format!(
            "the container's init {pid} exited while its seccomp filters were read"
        ));
    }
    // A signal-delivery stop (no event in the high bits) must pass its signal
    // on when detaching, or the init would lose it.
    if status >> 16 == 0 {
        tracee.signal = libc::WSTOPSIG(status);
    }
    let mut filters = Vec::new();
    for index in 0usize.. {
        // SAFETY: a null buffer asks only for the filter's length.
        let n = unsafe {
            libc::ptrace(
                PTRACE_SECCOMP_GET_FILTER,
                pid,
                index,
                std::ptr::null_mut::<libc::c_void>(),
            )
        };
        if n == -1 {
            if Errno::last() == Errno::ENOENT {
                break;
            }
            return Err(fail("PTRACE_SECCOMP_GET_FILTER"));
        }
        let mut prog = vec![
            libc::sock_filter {
                code: 0,
                jt: 0,
                jf: 0,
                k: 0
            };
            n as usize
        ];
        // SAFETY: prog holds the n instructions the kernel said filter
        // `index` has; filters cannot change while the tracee is stopped.
        let m = unsafe { libc::ptrace(PTRACE_SECCOMP_GET_FILTER, pid, index, prog.as_mut_ptr()) };
        if m != n {
            return Err(fail("PTRACE_SECCOMP_GET_FILTER"));
        }
        filters.push(prog);
    }
    drop(tracee);
    // Index 0 is the newest filter; install the oldest first.
    filters.reverse();
    Ok(filters)
}

/// Detaches from a seized process when dropped, whatever happened.
struct Tracee {
    pid: i32,
    signal: libc::c_int,
}

impl Drop for Tracee {
    fn drop(&mut self) {
        if self.pid > 0 {
            // SAFETY: PTRACE_DETACH takes a signal number as data, no pointers.
            unsafe {
                libc::ptrace(
                    libc::PTRACE_DETACH,
                    self.pid,
                    0,
                    self.signal as libc::c_long,
                )
            };
        }
    }
}

fn install_seccomp(filters: &[Vec<libc::sock_filter>]) -> HelperResult<()> {
    for f in filters {
        let prog = libc::sock_fprog {
            len: u16::try_from(f.len())
                .map_err(|_| format!("a seccomp filter of {} instructions is too long", f.len()))?,
            filter: f.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: prog points at f, which outlives the call; the kernel copies it.
        if unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog) } != 0
        {
            return Err(format!(
                "install the container's seccomp filter: {}",
                errno_text(Errno::last())
            ));
        }
    }
    Ok(())
}

/// An errno as Go (and so runc) prints it: "no such file or directory".
fn errno_text(e: Errno) -> String {
    let desc = e.desc();
    let mut chars = desc.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => format!("errno {}", e as i32),
    }
}

fn io_text(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => errno_text(Errno::from_raw(n)),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::ProcessBuilder;

    fn process(args: &[&str]) -> Process {
        ProcessBuilder::default()
            .args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .cwd("/")
            .build()
            .unwrap()
    }

    #[test]
    fn look_path_follows_path_and_names_what_is_missing() {
        let sh = look_path(
            &CString::new("sh").unwrap(),
            "/nonexistent-dir:/usr/bin:/bin",
        )
        .unwrap();
        assert!(sh.to_str().unwrap().ends_with("/sh"), "{sh:?}");
        let err = look_path(&CString::new("nosuchbinary").unwrap(), "/usr/bin").unwrap_err();
        assert_eq!(
            err,
            r#"exec: "nosuchbinary": executable file not found in $PATH"#
        );
        let err = look_path(&CString::new("/nonexistent").unwrap(), "/usr/bin").unwrap_err();
        assert_eq!(
            err,
            r#"exec: "/nonexistent": stat /nonexistent: no such file or directory"#
        );
        // No PATH in the spec's env: nothing is found, as with runc.
        assert!(look_path(&CString::new("sh").unwrap(), "").is_err());
    }

    #[test]
    fn path_env_takes_the_last_path() {
        let env = ["A=1".to_string(), "PATH=/a".into(), "PATH=/b".into()];
        assert_eq!(path_env(&env), "/b");
        assert_eq!(path_env(&[]), "");
    }

    #[test]
    fn seccomp_mode_is_read_from_status() {
        assert_eq!(
            parse_seccomp_mode("Name:\tsleep\nSeccomp:\t2\nSeccomp_filters:\t1\n"),
            2
        );
        assert_eq!(parse_seccomp_mode("Name:\tsleep\n"), 0);
    }

    #[test]
    fn specs_the_engine_cannot_run_are_rejected() {
        assert!(validate(&process(&["sh"])).is_ok());
        assert!(validate(&process(&[])).is_err());
        let mut p = process(&["sh"]);
        p.set_cwd("relative".into());
        assert!(validate(&p).is_err());
        let mut p = process(&["sh"]);
        p.set_selinux_label(Some("system_u:system_r:container_t:s0".into()));
        assert!(validate(&p).unwrap_err().contains("SELinux"));
    }

    #[test]
    fn every_oci_rlimit_and_capability_maps() {
        use oci_spec::runtime::{LinuxCapabilitiesBuilder, PosixRlimitType};
        for t in [
            PosixRlimitType::RlimitNofile,
            PosixRlimitType::RlimitRttime,
            PosixRlimitType::RlimitCpu,
        ] {
            assert!(rlimit_resource(&t.to_string()).is_ok(), "{t}");
        }
        let all: oci_spec::runtime::Capabilities = [
            oci_spec::runtime::Capability::SysAdmin,
            oci_spec::runtime::Capability::NetBindService,
            oci_spec::runtime::Capability::CheckpointRestore,
        ]
        .into_iter()
        .collect();
        let mut p = process(&["sh"]);
        p.set_capabilities(Some(
            LinuxCapabilitiesBuilder::default()
                .bounding(all)
                .effective(oci_spec::runtime::Capabilities::new())
                .build()
                .unwrap(),
        ));
        let sets = capability_sets(&p).unwrap();
        assert!(sets
            .bounding
            .contains(&caps::Capability::CAP_NET_BIND_SERVICE));
        assert_eq!(sets.bounding.len(), 3);
        assert!(sets.effective.is_empty());
    }

    #[test]
    fn the_helper_request_round_trips() {
        let req = HelperRequest {
            init_pid: 42,
            pid_file: "/run/x/exec.pid".into(),
            error_file: None,
            cgroup_dirs: vec!["/sys/fs/cgroup/pids/x".into()],
            process: process(&["sh", "-c", "true"]),
        };
        let back: HelperRequest =
            serde_json::from_slice(&serde_json::to_vec(&req).unwrap()).unwrap();
        assert_eq!(back.init_pid, 42);
        assert_eq!(back.process.args(), req.process.args());
        assert_eq!(
            sibling(&req.pid_file, ".nsexec.json"),
            Path::new("/run/x/exec.pid.nsexec.json")
        );
    }
}
