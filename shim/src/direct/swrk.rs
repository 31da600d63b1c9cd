//! CRIU processes the shim starts itself: `criu swrk` (the RPC server libcriu
//! talks to) and `criu lazy-pages`.
//!
//! The shim is a subreaper whose reaper loop collects every child, so the exit
//! of a helper is learnt from the reaper's monitor, never from `wait(2)`.

use std::{
    ffi::{OsStr, OsString},
    io,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, OnceLock},
    time::Duration,
};

use containerd_shim::{
    asynchronous::monitor::{monitor_subscribe, monitor_unsubscribe, Subscription},
    monitor::{Subject, Topic},
};
use runc::io::Io as _;
use tokio::process::{Child, Command};
use tracing::{debug, warn};

use crate::{
    error::{Error, Result},
    spawn::Source,
};

/// A child of the shim whose exit comes from the reaper's monitor.
pub struct Watched {
    pub pid: i32,
    /// Held, never waited on: tokio reaps a dropped, unwaited child on its own
    /// (its orphan queue), which could race the shim's reaper; once the reaper
    /// has reported the exit, dropping it is harmless. `None` for a child
    /// started by [`crate::spawn`], which only the reaper knows.
    _child: Option<Child>,
    sub: Option<Subscription>,
    exit: Option<i32>,
}

impl Watched {
    /// Spawns `cmd`, subscribed to exits first (a fast child can exit before
    /// `spawn` returns).
    pub async fn spawn(cmd: &mut Command, what: &str) -> Result<Watched> {
        let program = PathBuf::from(cmd.as_std().get_program());
        Self::start(&program, what, || {
            cmd.spawn()
                .map(|child| (child.id().unwrap_or_default() as i32, Some(child)))
        })
        .await
    }

    /// Starts `program` with [`crate::spawn::spawn`] (no fork of the shim).
    pub async fn posix_spawn(
        program: &Path,
        args: &[&OsStr],
        env: &[(&OsStr, &OsStr)],
        fds: &[(crate::spawn::Source<'_>, RawFd)],
        what: &str,
    ) -> Result<Watched> {
        Self::start(program, what, || {
            crate::spawn::spawn(program, args, env, fds).map(|pid| (pid, None))
        })
        .await
    }

    async fn start(
        program: &Path,
        what: &str,
        spawn: impl FnOnce() -> io::Result<(i32, Option<Child>)>,
    ) -> Result<Watched> {
        // A failed exec makes std wait for the child itself, which the shim's
        // reaper may have collected already (std then panics): check first.
        if !is_executable(program) {
            return Err(Error::FailedPrecondition(format!(
                "start {what}: {} is not an executable file (set REKINDLE_CRIU, or run hack/setup.sh to install CRIU)",
                program.display()
            )));
        }
        let sub = monitor_subscribe(Topic::Pid)
            .await
            .map_err(|e| Error::Runtime {
                action: format!("start {what}"),
                message: format!("subscribe to the reaper's exits: {e}"),
            })?;
        match spawn() {
            Ok((pid, child)) => Ok(Watched {
                pid,
                _child: child,
                sub: Some(sub),
                exit: None,
            }),
            Err(e) => {
                monitor_unsubscribe(sub.id).await.unwrap_or_default();
                Err(Error::io(format!("start {what}"))(e))
            }
        }
    }

    /// Waits up to `limit` for the exit, then kills the child (SIGKILL) and
    /// waits for that. Returns the exit code, or `None` when it had to be killed.
    pub async fn wait(&mut self, limit: Duration) -> Option<i32> {
        if let Some(code) = self.exit {
            return Some(code);
        }
        let mut sub = self.sub.take()?;
        let pid = self.pid;
        let wait = async {
            while let Some(ev) = sub.rx.recv().await {
                if matches!(ev.subject, Subject::Pid(p) if p == pid) {
                    return ev.exit_code;
                }
            }
            -1
        };
        tokio::pin!(wait);
        let code = match tokio::time::timeout(limit, &mut wait).await {
            Ok(code) => Some(code),
            Err(_) => {
                self.kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), &mut wait).await;
                None
            }
        };
        monitor_unsubscribe(sub.id).await.unwrap_or_default();
        self.exit = code;
        code
    }

    /// The exit code if the reaper has reported the exit already (no wait).
    pub fn exited(&mut self) -> Option<i32> {
        if self.exit.is_none() {
            if let Some(sub) = self.sub.as_mut() {
                while let Ok(ev) = sub.rx.try_recv() {
                    if matches!(ev.subject, Subject::Pid(p) if p == self.pid) {
                        self.exit = Some(ev.exit_code);
                        break;
                    }
                }
            }
        }
        self.exit
    }

    /// SIGKILL to the child and its process group (best effort; both CRIU helpers
    /// are spawned as group leaders). The group too: `criu swrk` forks helpers for
    /// its kernel checks at start-up (hack/criu-patches/0009), which a swrk killed
    /// then left waiting forever, reparented to init.
    pub fn kill(&self) {
        if self.exit.is_none() && self.pid > 0 {
            let pid = nix::unistd::Pid::from_raw(self.pid);
            let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(sub) = self.sub.take() {
            self.kill();
            // Unsubscribing needs the runtime; without one the process is exiting.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    monitor_unsubscribe(sub.id).await.unwrap_or_default();
                });
            }
        }
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The `tar` CRIU runs (through PATH) to restore a tmpfs's content, next to
/// the shim: extracts in-process, saving the exec of GNU tar and gzip (~4 ms
/// per tmpfs mount); GNU tar for anything else.
const CRIU_TAR: &str = "rekindle-criu-tar";

/// Read by Rekindle's CRIU (hack/criu-patches/0010): no hardware breakpoints.
const NO_BREAKPOINTS_ENV: &str = "CRIU_NO_BREAKPOINTS";

/// Read by Rekindle's CRIU (hack/criu-patches/0011): the notifications a restore
/// sends the shim. Only the steps it waits at (`super::NOTIFIED`); each other one was
/// a round trip to the shim's thread on the restore's path (0.04-0.4 ms apiece). A
/// CRIU without the patch notifies every step, which the shim acknowledges.
const NOTIFY_ACTIONS_ENV: &str = "CRIU_NOTIFY_ACTIONS";

/// Read by Rekindle's CRIU (hack/criu-patches/0015): with cgroups ignored, the
/// restored tree's root task unshares a cgroup namespace rooted at the cgroups it is
/// born in (the container's: swrk is moved there first), as runc does at creation for
/// a spec with a cgroup namespace. Without it such a container came back in CRIU's
/// (the host's) cgroup namespace: every hierarchy visible under /sys/fs/cgroup and
/// its own limits not where a process looks for them.
pub const CGROUPNS_UNSHARE_ENV: &str = "CRIU_CGROUPNS_UNSHARE";

/// Read by Rekindle's CRIU (hack/criu-patches/0019): the directory CRIU makes its
/// mount namespaces' yard in, instead of /tmp. The shim names the bundle's work dir
/// (on containerd's state tmpfs): cheaper to make and remove there than on a disk's
/// /tmp, and removed with the bundle should criu be killed mid-restore (a killed criu
/// left an empty `/tmp/.criu.mntns.*` behind for good).
pub const MNTNS_YARD_DIR_ENV: &str = "CRIU_MNTNS_YARD_DIR";

/// PATH when the shim has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where the `tar` symlinks to [`CRIU_TAR`] live. Under /run: root-only,
/// tmpfs, gone at reboot, and one directory for every shim instead of one
/// per shim process to clean up; not under /tmp, where another user could
/// have made the path first (swrk runs as root what it finds there).
const CRIU_PATH_BASE: &str = "/run/rekindle/criu-path";

/// The directory to put first on swrk's PATH, or `None` for GNU tar; made
/// once per shim.
fn criu_path_dir() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        if std::env::var_os("REKINDLE_CRIU_TAR").is_some_and(|v| v == "gnu") {
            debug!("REKINDLE_CRIU_TAR=gnu: criu swrk restores tmpfs with GNU tar");
            return None;
        }
        let ours = match std::env::current_exe() {
            Ok(exe) => exe.with_file_name(CRIU_TAR),
            Err(e) => {
                debug!(error = %e, "shim's path unknown: criu swrk restores tmpfs with GNU tar");
                return None;
            }
        };
        if !is_executable(&ours) {
            debug!(path = %ours.display(), "no {CRIU_TAR}: criu swrk restores tmpfs with GNU tar");
            return None;
        }
        match link_criu_tar(&ours) {
            Ok(dir) => Some(dir),
            Err(e) => {
                warn!(error = %e, base = CRIU_PATH_BASE, "criu swrk restores tmpfs with GNU tar");
                None
            }
        }
    })
    .as_deref()
}

/// Makes `CRIU_PATH_BASE/<hash of ours>/tar` -> `ours` and returns its
/// directory. One directory per installed binary, so shims from two installs
/// (a test build next to the installed one) do not take turns at one link.
fn link_criu_tar(ours: &Path) -> io::Result<PathBuf> {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    ours.hash(&mut h);
    let base = Path::new(CRIU_PATH_BASE);
    let dir = base.join(format!("{:016x}", h.finish()));
    for (d, mode) in [
        (base.parent().unwrap_or(base), 0o755),
        (base, 0o700),
        (&dir, 0o700),
    ] {
        private_dir(d, mode)?;
    }
    let link = dir.join("tar");
    if std::fs::read_link(&link).is_ok_and(|t| t == ours) {
        return Ok(dir);
    }
    // Another shim may be making the same link: make it aside, rename over.
    let tmp = dir.join(format!(".tar.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(ours, &tmp)?;
    std::fs::rename(&tmp, &link).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    Ok(dir)
}

/// Makes `dir` (mode `mode`) if missing, and checks that it is a directory
/// only root can write to: swrk runs, as root, the `tar` in it.
fn private_dir(dir: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().mode(mode).create(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    let m = std::fs::symlink_metadata(dir)?;
    if !m.is_dir() || m.uid() != 0 || m.mode() & 0o022 != 0 {
        return Err(io::Error::other(format!(
            "{} is not a directory only root can write to",
            dir.display()
        )));
    }
    Ok(())
}

/// swrk's PATH: `dir` first, then the shim's PATH.
fn path_with(dir: &Path) -> OsString {
    let mut path = OsString::from(dir);
    path.push(":");
    match std::env::var_os("PATH").filter(|p| !p.is_empty()) {
        Some(p) => path.push(p),
        None => path.push(DEFAULT_PATH),
    }
    path
}

/// A started `criu swrk`: the peer of `socket` serves one request.
pub struct Swrk {
    pub process: Watched,
    pub socket: Option<OwnedFd>,
    /// The numbers under which `inherit` fds are open in swrk, in order.
    pub fds: Vec<RawFd>,
}

/// Starts `criu swrk` with the container's stdio as its fds 0, 1 and 2 (how
/// runc hands stdio to a restored tree: `--inherit-fd fd[i]:pipe:[N]`) and
/// each of `inherit` open in it under the number in [`Swrk::fds`].
pub async fn spawn_swrk(
    criu: &Path,
    io: Option<&Arc<crate::stdio::ChildIo>>,
    inherit: &[&OwnedFd],
    env: &[(&str, &std::ffi::OsStr)],
) -> Result<Swrk> {
    let mut sv = [0 as RawFd; 2];
    // SAFETY: valid out-array of two descriptors.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            sv.as_mut_ptr(),
        )
    } != 0
    {
        return Err(Error::io("socketpair for criu swrk")(
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: fresh descriptors nothing else owns.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) };
    let stdio = match io {
        Some(io) => io
            .child_fds()
            .map_err(Error::io("hand the container's stdio to criu swrk"))?,
        None => [None, None, None],
    };
    // The container's stdio at 0-2, then swrk's socket and the inherited fds.
    let fixed: Vec<Source<'_>> = stdio
        .iter()
        .map(|f| f.as_ref().map_or(Source::Null, |f| Source::Fd(f.as_fd())))
        .collect();
    let extra: Vec<_> = std::iter::once(theirs.as_fd())
        .chain(inherit.iter().map(|f| f.as_fd()))
        .collect();
    let (fds, base) = crate::spawn::layout(&fixed, &extra);
    let base_arg = base.to_string();
    // Stop the tree at its sigreturn by tracing syscalls, not with a hardware
    // breakpoint: on a node where no other task-bound perf event exists, the
    // breakpoint's perf event waits for an RCU grace period (2-20 ms) in the
    // middle of the restore (hack/criu-patches/0010; ignored without it).
    let mut vars: Vec<(&OsStr, &OsStr)> = vec![
        (NO_BREAKPOINTS_ENV.as_ref(), "1".as_ref()),
        (NOTIFY_ACTIONS_ENV.as_ref(), super::NOTIFIED.as_ref()),
    ];
    let path;
    match criu_path_dir() {
        Some(dir) => {
            debug!(tar = %dir.join("tar").display(), "criu swrk restores tmpfs with {CRIU_TAR}");
            path = path_with(dir);
            vars.push(("PATH".as_ref(), &path));
        }
        None => debug!("criu swrk restores tmpfs with GNU tar"),
    }
    vars.extend(env.iter().map(|(k, v)| (k.as_ref(), *v)));
    // posix_spawn, not a fork of the shim (crate::spawn): swrk is started on
    // every restore, while the shim's threads are busy with Create.
    let process = Watched::posix_spawn(
        criu,
        &["swrk".as_ref(), base_arg.as_ref()],
        &vars,
        &fds,
        &format!("{} swrk", criu.display()),
    )
    .await?;
    drop(fds);
    drop(stdio);
    if let Some(io) = io {
        io.close_after_start().await;
    }
    drop(theirs);
    Ok(Swrk {
        process,
        socket: Some(ours),
        fds: (base + 1..).take(inherit.len()).collect(),
    })
}

/// The lazy-pages daemon's socket in `work`, listening: a restore may connect
/// (its connection waits in the backlog) before the daemon is started on it
/// ([`spawn_lazy_pages`]).
pub fn listen_lazy_pages(work: &Path) -> Result<OwnedFd> {
    listen_in(work, LAZY_PAGES_SOCKET).map_err(Error::io(format!(
        "listen on {}",
        work.join(LAZY_PAGES_SOCKET).display()
    )))
}

/// The socket a restore connects to in its work dir (CRIU's LAZY_PAGES_SOCK_NAME).
const LAZY_PAGES_SOCKET: &str = "lazy-pages.socket";

/// The lazy-pages daemon's log, in the work dir.
pub const LAZY_PAGES_LOG: &str = "lazy-pages.log";

/// Starts `criu lazy-pages` on `listener` (from [`listen_lazy_pages`]) serving
/// `images` to the restore that runs with `work` as its work dir. `env` is
/// handed to the daemon (the working set it records or prefetches, see
/// `super::WorkingSet`).
///
/// The shim binds and listens on `work/lazy-pages.socket` itself and hands
/// the socket over as the daemon's stdin (`CRIU_LAZY_PAGES_LISTEN_FD=0`,
/// hack/criu-patches/0003), so the restore may begin as soon as this
/// returns: its connection and uffds wait in the socket until the daemon
/// accepts. Waiting for the daemon to say
/// it is ready cost 4-10 ms of every Start on a loaded 2-core machine. The
/// daemon then holds the only copy of the socket: if it dies before
/// accepting, the restore's "restore finished" message (sent before the tree
/// is resumed) fails and so does the restore.
pub async fn spawn_lazy_pages(
    listener: OwnedFd,
    criu: &Path,
    images: &Path,
    work: &Path,
    env: Option<(&str, &Path)>,
) -> Result<Watched> {
    let mut cmd = Command::new(criu);
    // The socket is the daemon's stdin (it reads nothing there): a standard
    // stream is the one descriptor std hands to a child without a pre_exec
    // closure, and without one the child is spawned with posix_spawn (vfork)
    // instead of a fork of the shim, which copied its page tables and queued
    // behind the concurrent fork of swrk (the preparation: ~4.5 -> ~3.5 ms).
    cmd.arg("lazy-pages")
        .arg("--images-dir")
        .arg(images)
        .arg("--work-dir")
        .arg(work)
        .args(["--log-file", LAZY_PAGES_LOG])
        .arg(format!("-v{}", super::criu_log_level() as i32))
        .env("CRIU_LAZY_PAGES_LISTEN_FD", "0")
        .env(
            "CRIU_LAZY_PAGES_BACKGROUND_DELAY_MS",
            super::lazy_pages_delay_ms().to_string(),
        )
        // Read only while a working set is recorded (CRIU patch 0021).
        .env("CRIU_LAZY_PAGES_RECORD_MS", super::record_ms().to_string())
        .stdin(Stdio::from(listener))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    let daemon = Watched::spawn(&mut cmd, "criu lazy-pages").await;
    // The shim's copy of the socket goes with the command: the daemon's is the
    // only one left.
    drop(cmd);
    daemon
}

/// A listening unix stream socket (close-on-exec) at `dir/name`, bound
/// through `/proc/self/fd`: a bundle's path can be longer than a socket
/// address may be (107 bytes).
fn listen_in(dir: &Path, name: &str) -> io::Result<OwnedFd> {
    use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
    let dirfd = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let path = format!("/proc/self/fd/{}/{name}", dirfd.as_raw_fd());
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let sock = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::bind(sock.as_raw_fd(), &UnixAddr::new(path.as_str())?)?;
    socket::listen(&sock, Backlog::new(16)?)?;
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::{UnixListener, UnixStream};

    use super::*;

    /// `/proc/self/fd/<fd of dir>/<name>`: how a test reaches a socket whose
    /// full path is too long for an address, as CRIU does from its work dir.
    fn short_path(dir: &Path, name: &str) -> (OwnedFd, String) {
        let fd = OwnedFd::from(std::fs::File::open(dir).unwrap());
        let path = format!("/proc/self/fd/{}/{name}", fd.as_raw_fd());
        (fd, path)
    }

    #[test]
    fn the_lazy_pages_socket_is_bound_in_a_directory_too_long_for_an_address() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("b".repeat(100)).join("direct-work");
        std::fs::create_dir_all(&dir).unwrap();
        assert!(dir.join(LAZY_PAGES_SOCKET).as_os_str().len() > 107);
        // A stale socket from an earlier attempt is replaced.
        let listener = listen_in(&dir, LAZY_PAGES_SOCKET).unwrap();
        drop(listener);
        let listener = UnixListener::from(listen_in(&dir, LAZY_PAGES_SOCKET).unwrap());
        let (_dirfd, path) = short_path(&dir, LAZY_PAGES_SOCKET);
        let mut client = UnixStream::connect(&path).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        use std::io::{Read, Write};
        client.write_all(b"pid").unwrap();
        let mut got = [0u8; 3];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"pid");
    }

    /// Killing a helper kills what it forked in its process group: a killed swrk's
    /// start-up check children were left behind, reparented to init.
    #[tokio::test]
    async fn a_killed_helper_takes_its_process_group_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild");
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(format!(
                "sleep 1000 & echo $! > {}; wait",
                pidfile.display()
            ))
            .process_group(0);
        let helper = Watched::spawn(&mut cmd, "sh").await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let grandchild: i32 = loop {
            if let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                break pid;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the grandchild did not start"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        helper.kill();
        let gone = loop {
            let stat = std::fs::read_to_string(format!("/proc/{grandchild}/stat"));
            let state = stat.ok().and_then(|s| {
                let i = s.rfind(')')?;
                s[i + 2..].chars().next()
            });
            if matches!(state, None | Some('Z')) {
                break true;
            }
            if std::time::Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(grandchild),
            nix::sys::signal::Signal::SIGKILL,
        );
        drop(helper);
        assert!(
            gone,
            "pid {grandchild}, forked by the killed helper, still runs"
        );
    }

    /// The daemon holds the only copy of the socket the shim bound: once it
    /// has exited, a restore's connection is refused instead of waiting in a
    /// socket nobody will accept on (and the restore fails, see
    /// spawn_lazy_pages).
    #[tokio::test]
    async fn a_lazy_pages_daemon_that_exits_leaves_no_socket_listening() {
        let criu = PathBuf::from(crate::runc::criu_binary());
        let images = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        // No image at all: the daemon exits as soon as it looks for one.
        let listener = listen_lazy_pages(work.path()).unwrap();
        let daemon = spawn_lazy_pages(listener, &criu, images.path(), work.path(), None)
            .await
            .unwrap();
        let (_dirfd, path) = short_path(work.path(), LAZY_PAGES_SOCKET);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let refused = loop {
            match UnixStream::connect(&path) {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break true,
                _ if std::time::Instant::now() > deadline => break false,
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        daemon.kill();
        assert!(
            refused,
            "the socket still accepts connections 10 s after criu lazy-pages started with no image"
        );
        let log = std::fs::read_to_string(work.path().join(LAZY_PAGES_LOG)).unwrap_or_default();
        assert!(
            !log.contains("CRIU_LAZY_PAGES_LISTEN_FD"),
            "the daemon refused the socket it was handed: {log}"
        );
    }
}
