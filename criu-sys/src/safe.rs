//! A thin safe wrapper over libcriu's per-handle (`criu_local_*`) API.
//!
//! ```no_run
//! use criu_sys::safe::{Criu, LogLevel};
//!
//! # fn main() -> Result<(), criu_sys::safe::Error> {
//! let images = std::fs::File::open("/var/lib/rekindle/images/f1")?;
//! let mut criu = Criu::new()?; // uses /usr/local/sbin/criu
//! criu.set_images_dir_fd(&images)?;
//! criu.set_log_file("restore.log")?;
//! criu.set_log_level(LogLevel::Info);
//! let pid = criu.restore_child()?;
//! # let _ = pid; Ok(()) }
//! ```
//!
//! # Thread safety
//! A [`Criu`] is `Send` but not `Sync`: its setters take `&mut self` and touch only that
//! handle's options, so different handles can be configured on different threads at once.
//!
//! The requests — [`Criu::check`], [`Criu::dump`], [`Criu::restore`],
//! [`Criu::restore_child`], [`Criu::version`] — are **not thread safe inside libcriu**: it
//! keeps the errno it reports in a process-wide static between the RPC and the return, and
//! it forks a `criu swrk` child and `waitpid`s for it. This module therefore runs them one
//! at a time per process, behind one lock. Two more process-wide effects to know about:
//! - a process that reaps *all* its children (`waitpid(-1)`, e.g. a subreaper's reaper
//!   loop) can reap the `criu swrk` child before libcriu's own `waitpid` does; libcriu
//!   then only loses that exit status, but the reaper sees an exit it did not expect;
//! - [`Criu::restore_child`] makes the restored tree's root a child of this process, which
//!   must reap it;
//! - libcriu's socketpair to `criu swrk` is not close-on-exec, so a process another thread
//!   forks and execs during a request inherits one end of it (and a later dump of that
//!   process fails on an "external socket"). Close descriptors above 2 in such children.
//!
//! Fork safety: libcriu forks inside the request and the child only execs CRIU, so calling
//! it from a multi-threaded process is fine.

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_int, CStr, CString};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::ptr::{self, NonNull};
use std::sync::{Mutex, MutexGuard};

use crate::ffi;

/// The CRIU binary Rekindle runs: CRIU 4.2.x built by `hack/setup.sh`. Never Debian
/// bookworm's `/usr/sbin/criu` (3.17 fails on these kernels).
pub const DEFAULT_SERVICE_BINARY: &str = "/usr/local/sbin/criu";

/// The oldest CRIU this project works with (see DESIGN.md: older ones fail on kernels
/// >= 6.16).
pub const MIN_VERSION: Version = Version::new(4, 2, 0);

/// The version of the `criu.h` these bindings were generated from.
pub const HEADER_VERSION: Version = Version::new(
    ffi::CRIU_VERSION_MAJOR,
    ffi::CRIU_VERSION_MINOR,
    ffi::CRIU_VERSION_SUBLEVEL,
);

/// Serialises libcriu's requests: see the module docs.
static REQUEST_LOCK: Mutex<()> = Mutex::new(());

fn request_lock() -> MutexGuard<'static, ()> {
    // The lock guards no data: a panic while it was held leaves nothing inconsistent.
    REQUEST_LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A step of a restore that CRIU tells its caller about and waits on (what
/// `--action-script` runs for on the command line): `action` is the step's name
/// (`"setup-namespaces"`, `"post-restore"`, `"network-unlock"`, `"pre-resume"`,
/// `"post-resume"`, ...); `pid`, where CRIU gives one, the restored tree's root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notification<'a> {
    pub action: &'a str,
    pub pid: Option<i32>,
}

/// A request's notification handler: `true` lets CRIU go on.
pub type NotifyHandler<'a> = dyn FnMut(Notification<'_>) -> bool + 'a;

thread_local! {
    /// The request lock while this thread is inside a libcriu request: the
    /// notification trampoline lets go of it while the handler runs.
    static HELD: RefCell<Option<MutexGuard<'static, ()>>> = const { RefCell::new(None) };
    /// The handler of this thread's running request, if it has one. Only ever
    /// set for the duration of `Criu::restore_child_notified`, which owns it.
    static HANDLER: Cell<Option<*mut NotifyHandler<'static>>> = const { Cell::new(None) };
    /// The step a handler refused, for the request's error.
    static REFUSED: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// libcriu's notification callback: runs the handler of this thread's request
/// with the request lock released (a handler may block for as long as it
/// likes, e.g. to keep a restored tree stopped until it is wanted; another
/// thread's request is not held up meanwhile). libcriu's only process-wide
/// state is the errno it reports, which the other request resets at its start
/// and which this request sets again on its own failures after the handler.
unsafe extern "C" fn on_notify(action: *mut c_char, na: ffi::criu_notify_arg_t) -> c_int {
    let Some(handler) = HANDLER.get() else {
        return 0;
    };
    let action = if action.is_null() {
        ""
    } else {
        // SAFETY: libcriu passes the NUL-terminated script name of the message.
        unsafe { CStr::from_ptr(action) }.to_str().unwrap_or("")
    };
    // SAFETY: `na` is the message libcriu is handling; criu_notify_pid only reads it.
    let pid = match unsafe { ffi::criu_notify_pid(na) } {
        0 => None,
        p => Some(p),
    };
    let held = HELD.with(|h| h.borrow_mut().take()).is_some();
    // SAFETY: the handler outlives the request (restore_child_notified clears
    // HANDLER before it returns), and this thread is the only one using it.
    let go = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe {
        (*handler)(Notification { action, pid })
    }))
    .unwrap_or(false);
    if held {
        let guard = request_lock();
        HELD.with(|h| *h.borrow_mut() = Some(guard));
    }
    if go {
        0
    } else {
        REFUSED.with(|r| *r.borrow_mut() = Some(action.to_string()));
        -1
    }
}

/// Clears this thread's handler when the request is over, however it ends.
struct HandlerReset;

impl Drop for HandlerReset {
    fn drop(&mut self) {
        HANDLER.set(None);
    }
}

/// What went wrong. Request failures carry libcriu's negative return value and, where
/// CRIU reported one, the errno of the failing step.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// libcriu could not allocate (its options, or a copy of a string).
    #[error("libcriu could not allocate memory for {what}")]
    OutOfMemory { what: &'static str },

    /// An argument this wrapper refused before calling libcriu.
    #[error("invalid {what}: {reason}")]
    InvalidArgument { what: &'static str, reason: String },

    /// A file or descriptor the caller named could not be used.
    #[error("cannot use {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },

    /// The caller's notification handler refused a step; libcriu stopped waiting for
    /// the request there (see [`Criu::restore_child_notified`] for what CRIU does).
    #[error("CRIU {request}: the caller refused the {action:?} step")]
    Refused { request: Request, action: String },

    /// libcriu returned a negative value for a request.
    #[error(
        "CRIU {request} failed: {cause}{} (libcriu returned {code} ({}); CRIU binary {})",
        errno_suffix(*.criu_errno),
        errno_name(-*.code),
        .binary.display()
    )]
    Request {
        request: Request,
        /// libcriu's return value: a negative errno (`-EBADE`, `-ECOMM`, ...), or -1.
        code: i32,
        /// The errno that came with the failure, if any: for [`Cause::Failed`] the one CRIU
        /// reported for its failing step (`ESRCH`, `EPERM`, ...); otherwise that of
        /// libcriu's own failing call (connect, recv, ...).
        criu_errno: Option<i32>,
        cause: Cause,
        binary: PathBuf,
    },
}

impl Error {
    /// libcriu's negative return value, for request failures.
    pub fn code(&self) -> Option<i32> {
        match self {
            Error::Request { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The errno that came with a request failure (see [`Error::Request`]).
    pub fn criu_errno(&self) -> Option<i32> {
        match self {
            Error::Request { criu_errno, .. } => *criu_errno,
            _ => None,
        }
    }

    /// What kind of request failure this was.
    pub fn cause(&self) -> Option<Cause> {
        match self {
            Error::Request { cause, .. } => Some(*cause),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(source: io::Error) -> Self {
        Error::Io {
            what: "a file".into(),
            source,
        }
    }
}

fn errno_suffix(errno: Option<i32>) -> String {
    match errno {
        Some(e) => format!(": {}", io::Error::from_raw_os_error(e)),
        None => String::new(),
    }
}

fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EBADE => "EBADE",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECOMM => "ECOMM",
        libc::EINVAL => "EINVAL",
        libc::EBADMSG => "EBADMSG",
        libc::ENOMEM => "ENOMEM",
        1 => "no errno given",
        _ => "unknown",
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The libcriu request that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Request {
    Check,
    Dump,
    Restore,
    RestoreChild,
    Version,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Request::Check => "check",
            Request::Dump => "dump",
            Request::Restore => "restore",
            Request::RestoreChild => "restore (as child)",
            Request::Version => "version",
        })
    }
}

/// Why a request failed, from libcriu's return value (see the table in `criu.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Cause {
    /// `-EBADE`: CRIU ran the request and reported failure. Its log file says why.
    Failed,
    /// `-ECONNREFUSED`, or -1 from restore_child: libcriu could not start the CRIU binary
    /// or connect to the CRIU service.
    Unreachable,
    /// `-ECOMM`: the request or its answer did not get through; CRIU died or exited early
    /// (typically: the service binary could not be executed).
    Communication,
    /// `-EINVAL`: this CRIU binary does not support the request; it is too old.
    Unsupported,
    /// `-EBADMSG`: CRIU answered something libcriu did not expect; binary and library
    /// versions differ too much.
    UnexpectedResponse,
    /// Any other negative value.
    Other,
}

impl Cause {
    /// Classifies a negative return value of a libcriu request.
    pub fn from_code(code: i32) -> Self {
        match -code {
            libc::EBADE => Cause::Failed,
            libc::ECONNREFUSED | 1 => Cause::Unreachable,
            libc::ECOMM => Cause::Communication,
            libc::EINVAL => Cause::Unsupported,
            libc::EBADMSG => Cause::UnexpectedResponse,
            _ => Cause::Other,
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cause::Failed => "CRIU reported failure (its log file, set_log_file, says why)",
            Cause::Unreachable => "could not start or connect to the CRIU service",
            Cause::Communication => {
                "lost the connection to CRIU (did the service binary start and run to the end?)"
            }
            Cause::Unsupported => "this CRIU binary does not support the request (too old?)",
            Cause::UnexpectedResponse => {
                "CRIU sent an unexpected response (binary and libcriu versions differ?)"
            }
            Cause::Other => "unexpected libcriu return value",
        })
    }
}

/// A CRIU version, as libcriu encodes it: `major * 10000 + minor * 100 + sublevel`.
/// (For a binary built from a git checkout, libcriu reports `minor + 1` and sublevel 0.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub sublevel: u32,
}

impl Version {
    pub const fn new(major: u32, minor: u32, sublevel: u32) -> Self {
        Version {
            major,
            minor,
            sublevel,
        }
    }

    /// Decodes libcriu's integer form, e.g. 40201 → 4.2.1.
    pub const fn from_code(code: u32) -> Self {
        Version::new(code / 10000, code / 100 % 100, code % 100)
    }

    /// libcriu's integer form, e.g. 4.2.1 → 40201.
    pub const fn code(self) -> u32 {
        self.major * 10000 + self.minor * 100 + self.sublevel
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.sublevel)
    }
}

/// CRIU's log levels (`CRIU_LOG_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// Messages printed regardless of level.
    Msg = ffi::CRIU_LOG_MSG as isize,
    Error = ffi::CRIU_LOG_ERROR as isize,
    Warn = ffi::CRIU_LOG_WARN as isize,
    Info = ffi::CRIU_LOG_INFO as isize,
    Debug = ffi::CRIU_LOG_DEBUG as isize,
}

/// One libcriu options handle (`criu_opts`), freed on drop.
///
/// Descriptors handed to it (images dir, work dir, inherited fds) are duplicated and kept
/// open by the handle, because CRIU opens them (through `/proc/<our pid>/fd/N`) only when
/// a request runs.
///
/// libcriu copies the strings it is given; setting the same string option twice leaks the
/// first copy (a few bytes) inside libcriu. Configure a handle once per request.
pub struct Criu {
    opts: NonNull<ffi::criu_opts>,
    binary: PathBuf,
    pid: Option<u32>,
    images_dir: Option<OwnedFd>,
    work_dir: Option<OwnedFd>,
    inherited: Vec<OwnedFd>,
}

// SAFETY: the handle owns its `criu_opts` exclusively (nothing else holds the pointer), and
// libcriu's per-handle functions have no thread affinity. Requests, which do touch
// process-wide state, are serialised by `REQUEST_LOCK`. Not `Sync`: every use needs
// `&mut self`.
unsafe impl Send for Criu {}

impl fmt::Debug for Criu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Criu")
            .field("binary", &self.binary)
            .field("pid", &self.pid)
            .field("images_dir", &self.images_dir)
            .field("work_dir", &self.work_dir)
            .finish_non_exhaustive()
    }
}

impl Drop for Criu {
    fn drop(&mut self) {
        // SAFETY: `opts` came from criu_local_init_opts and is freed exactly once, here.
        unsafe { ffi::criu_local_free_opts(self.opts.as_ptr()) }
    }
}

fn cstring(what: &'static str, s: &[u8]) -> Result<CString> {
    CString::new(s).map_err(|_| Error::InvalidArgument {
        what,
        reason: "contains a NUL byte".into(),
    })
}

fn open_dir(path: &Path) -> Result<OwnedFd> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(path)
        .map_err(|source| Error::Io {
            what: format!("directory {}", path.display()),
            source,
        })?;
    Ok(file.into())
}

fn dup(what: &'static str, fd: impl AsFd) -> Result<OwnedFd> {
    fd.as_fd().try_clone_to_owned().map_err(|source| Error::Io {
        what: format!("{what} descriptor"),
        source,
    })
}

impl Criu {
    /// Allocates a handle with libcriu's defaults and [`DEFAULT_SERVICE_BINARY`] as the
    /// CRIU binary. Thread safe (touches no shared state).
    pub fn new() -> Result<Self> {
        let mut opts: *mut ffi::criu_opts = ptr::null_mut();
        // SAFETY: `opts` is a valid out-pointer, null so nothing is freed first.
        let rc = unsafe { ffi::criu_local_init_opts(&mut opts) };
        let opts = match NonNull::new(opts) {
            Some(opts) if rc == 0 => opts,
            _ => return Err(Error::OutOfMemory { what: "criu_opts" }),
        };
        let mut criu = Criu {
            opts,
            binary: PathBuf::from("criu"),
            pid: None,
            images_dir: None,
            work_dir: None,
            inherited: Vec::new(),
        };
        criu.set_binary_unchecked(Path::new(DEFAULT_SERVICE_BINARY))?;
        Ok(criu)
    }

    fn opts(&mut self) -> *mut ffi::criu_opts {
        self.opts.as_ptr()
    }

    fn set_binary_unchecked(&mut self, path: &Path) -> Result<()> {
        let c = cstring("CRIU binary path", path.as_os_str().as_bytes())?;
        // SAFETY: valid handle; libcriu copies the string.
        let rc = unsafe { ffi::criu_local_set_service_binary(self.opts(), c.as_ptr()) };
        if rc < 0 {
            return Err(Error::OutOfMemory {
                what: "the CRIU binary path",
            });
        }
        self.binary = path.to_path_buf();
        Ok(())
    }

    /// The CRIU binary each request forks and execs (`criu swrk`). Checked to be an
    /// executable file now, so a wrong path fails here rather than as a lost connection.
    pub fn set_service_binary(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|source| Error::Io {
            what: format!("CRIU binary {}", path.display()),
            source,
        })?;
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            return Err(Error::InvalidArgument {
                what: "CRIU binary",
                reason: format!("{} is not an executable file", path.display()),
            });
        }
        self.set_binary_unchecked(path)
    }

    /// The CRIU binary this handle runs.
    pub fn service_binary(&self) -> &Path {
        &self.binary
    }

    /// The directory CRIU writes images to (dump) or reads them from (restore). Required
    /// for dump and restore. The descriptor is duplicated and kept by the handle.
    pub fn set_images_dir_fd(&mut self, fd: impl AsFd) -> Result<()> {
        let fd = dup("images directory", fd)?;
        // SAFETY: valid handle; plain integer option.
        unsafe { ffi::criu_local_set_images_dir_fd(self.opts(), fd.as_raw_fd()) };
        self.images_dir = Some(fd);
        Ok(())
    }

    /// Opens `path` as the images directory (see [`Criu::set_images_dir_fd`]).
    pub fn set_images_dir(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let fd = open_dir(path.as_ref())?;
        self.set_images_dir_fd(fd)
    }

    /// CRIU's working directory, where its log file goes (default: the images directory).
    pub fn set_work_dir_fd(&mut self, fd: impl AsFd) -> Result<()> {
        let fd = dup("work directory", fd)?;
        // SAFETY: valid handle; plain integer option.
        unsafe { ffi::criu_local_set_work_dir_fd(self.opts(), fd.as_raw_fd()) };
        self.work_dir = Some(fd);
        Ok(())
    }

    /// Opens `path` as the work directory (see [`Criu::set_work_dir_fd`]).
    pub fn set_work_dir(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let fd = open_dir(path.as_ref())?;
        self.set_work_dir_fd(fd)
    }

    /// CRIU's log file: a plain file name, created in the work directory (CRIU's RPC
    /// refuses paths with `/`).
    pub fn set_log_file(&mut self, name: &str) -> Result<()> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(Error::InvalidArgument {
                what: "log file name",
                reason: format!(
                    "{name:?}: CRIU takes a plain file name, created in its work directory"
                ),
            });
        }
        let c = cstring("log file name", name.as_bytes())?;
        // SAFETY: valid handle; libcriu copies the string.
        let rc = unsafe { ffi::criu_local_set_log_file(self.opts(), c.as_ptr()) };
        if rc < 0 {
            return Err(Error::OutOfMemory {
                what: "the log file name",
            });
        }
        Ok(())
    }

    pub fn set_log_level(&mut self, level: LogLevel) {
        // SAFETY: valid handle; plain integer option.
        unsafe { ffi::criu_local_set_log_level(self.opts(), level as i32) }
    }

    /// The root of the process tree to dump. Required for [`Criu::dump`] (this wrapper
    /// does not offer libcriu's self-dump, which forks and daemonises the caller).
    pub fn set_pid(&mut self, pid: u32) -> Result<()> {
        let raw =
            i32::try_from(pid)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| Error::InvalidArgument {
                    what: "pid",
                    reason: format!("{pid} is not a valid process id"),
                })?;
        // SAFETY: valid handle; plain integer option.
        unsafe { ffi::criu_local_set_pid(self.opts(), raw) };
        self.pid = Some(pid);
        Ok(())
    }

    /// Keep the dumped tree running after the dump (default: CRIU kills it).
    pub fn set_leave_running(&mut self, yes: bool) {
        // SAFETY: valid handle; plain option.
        unsafe { ffi::criu_local_set_leave_running(self.opts(), yes) }
    }

    /// Checkpoint/restore established TCP connections (`--tcp-established`).
    pub fn set_tcp_established(&mut self, yes: bool) {
        // SAFETY: valid handle; plain option.
        unsafe { ffi::criu_local_set_tcp_established(self.opts(), yes) }
    }

    /// The tree's session/process group leader is outside it (`--shell-job`).
    pub fn set_shell_job(&mut self, yes: bool) {
        // SAFETY: valid handle; plain option.
        unsafe { ffi::criu_local_set_shell_job(self.opts(), yes) }
    }

    /// Allow unix sockets connected to peers outside the tree (`--ext-unix-sk`).
    pub fn set_ext_unix_sk(&mut self, yes: bool) {
        // SAFETY: valid handle; plain option.
        unsafe { ffi::criu_local_set_ext_unix_sk(self.opts(), yes) }
    }

    /// Checkpoint/restore file locks (`--file-locks`).
    pub fn set_file_locks(&mut self, yes: bool) {
        // SAFETY: valid handle; plain option.
        unsafe { ffi::criu_local_set_file_locks(self.opts(), yes) }
    }

    /// The root filesystem of the tree (`--root`), e.g. a container's bind-mounted rootfs.
    pub fn set_root(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let c = cstring("root path", path.as_ref().as_os_str().as_bytes())?;
        // SAFETY: valid handle; libcriu copies the string.
        let rc = unsafe { ffi::criu_local_set_root(self.opts(), c.as_ptr()) };
        if rc < 0 {
            return Err(Error::OutOfMemory {
                what: "the root path",
            });
        }
        Ok(())
    }

    /// Declares an external resource (`--external`, e.g. `net[4026531992]:extnet`), as
    /// runc does to restore into an existing pod network namespace.
    pub fn add_external(&mut self, key: &str) -> Result<()> {
        let c = cstring("external resource", key.as_bytes())?;
        // SAFETY: valid handle; libcriu copies the string.
        let rc = unsafe { ffi::criu_local_add_external(self.opts(), c.as_ptr()) };
        if rc < 0 {
            return Err(Error::OutOfMemory {
                what: "an external resource",
            });
        }
        Ok(())
    }

    /// Hands `fd` to the restored tree in place of the external resource `key`
    /// (`--inherit-fd fd[N]:key`). The descriptor is duplicated and kept by the handle.
    pub fn add_inherit_fd(&mut self, fd: impl AsFd, key: &str) -> Result<()> {
        let c = cstring("inherit-fd key", key.as_bytes())?;
        let fd = dup("inherited", fd)?;
        // SAFETY: valid handle; libcriu copies the string.
        let rc = unsafe { ffi::criu_local_add_inherit_fd(self.opts(), fd.as_raw_fd(), c.as_ptr()) };
        if rc < 0 {
            return Err(Error::OutOfMemory {
                what: "an inherited descriptor",
            });
        }
        self.inherited.push(fd);
        Ok(())
    }

    /// Hands the descriptor already open as `fd` *in the CRIU process that serves the
    /// request* to the restored tree in place of `key`. For a pre-spawned `criu swrk`
    /// ([`Criu::set_service_fd`]) that inherited its descriptors at spawn, e.g. the
    /// container's stdio as swrk's own fds 0, 1 and 2, the way runc hands them over.
    pub fn add_inherit_fd_number(&mut self, fd: i32, key: &str) -> Result<()> {
        if fd < 0 {
            return Err(Error::InvalidArgument {
                what: "inherited descriptor",
                reason: format!("{fd} is not a descriptor number"),
            });
        }
        let c = cstring("inherit-fd key", key.as_bytes())?;
        // SAFETY: valid handle; libcriu copies the string.
        let rc = unsafe { ffi::criu_local_add_inherit_fd(self.opts(), fd, c.as_ptr()) };
        if rc < 0 {
            return Err(Error::OutOfMemory {
                what: "an inherited descriptor",
            });
        }
        Ok(())
    }

    /// Sends the next request to an already running `criu swrk` over `socket` (a
    /// SOCK_SEQPACKET end whose peer is swrk's service fd) instead of forking a CRIU.
    /// libcriu closes the socket after the answer; swrk then exits.
    pub fn set_service_fd(&mut self, socket: OwnedFd) {
        use std::os::fd::IntoRawFd;
        // SAFETY: valid handle; ownership of the descriptor passes to libcriu.
        unsafe { ffi::criu_local_set_service_fd(self.opts(), socket.into_raw_fd()) }
    }

    /// Maps an external mount (`--ext-mount-map key:value`): at dump, `key` is the mount
    /// point and `value` the name recorded in the image; at restore, `key` is that name
    /// and `value` the host path to bind in its place.
    pub fn add_ext_mount(&mut self, key: &str, value: &str) -> Result<()> {
        let k = cstring("ext-mount key", key.as_bytes())?;
        let v = cstring("ext-mount value", value.as_bytes())?;
        // SAFETY: valid handle; libcriu copies the strings.
        let rc = unsafe { ffi::criu_local_add_ext_mount(self.opts(), k.as_ptr(), v.as_ptr()) };
        if rc < 0 {
            return Err(Error::OutOfMemory {
                what: "an external mount",
            });
        }
        Ok(())
    }

    /// Whether and how CRIU dumps and restores the tree's cgroups (`--manage-cgroups`).
    pub fn set_manage_cgroups(&mut self, mode: CgroupMode) {
        // SAFETY: valid handle; plain options.
        unsafe {
            ffi::criu_local_set_manage_cgroups(self.opts(), !matches!(mode, CgroupMode::Ignore));
            ffi::criu_local_set_manage_cgroups_mode(self.opts(), mode.raw());
        }
    }

    /// Rewrites the tree's cgroup root (`--cgroup-root [ctrl:]path`); `None` for every
    /// controller.
    pub fn add_cg_root(&mut self, controller: Option<&str>, path: &str) -> Result<()> {
        let ctrl = controller
            .map(|c| cstring("cgroup controller", c.as_bytes()))
            .transpose()?;
        let p = cstring("cgroup root", path.as_bytes())?;
        // SAFETY: valid handle; libcriu copies the strings; NULL means every controller.
        let rc = unsafe {
            ffi::criu_local_add_cg_root(
                self.opts(),
                ctrl.as_ref().map_or(ptr::null(), |c| c.as_ptr()),
                p.as_ptr(),
            )
        };
        if rc < 0 {
            return Err(Error::OutOfMemory {
                what: "a cgroup root",
            });
        }
        Ok(())
    }

    /// A directory holding every hierarchy, named as CRIU names them (`--cgroup-yard`),
    /// so CRIU does not mount its own on each request.
    pub fn set_cgroup_yard(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let c = cstring("cgroup yard", path.as_ref().as_os_str().as_bytes())?;
        // SAFETY: valid handle; libcriu copies the string.
        let rc = unsafe { ffi::criu_local_add_cg_yard(self.opts(), c.as_ptr()) };
        if rc < 0 {
            return Err(Error::OutOfMemory {
                what: "the cgroup yard",
            });
        }
        Ok(())
    }

    /// Freezes the tree through this freezer cgroup for the dump (`--freeze-cgroup`).
    pub fn set_freeze_cgroup(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let c = cstring("freeze cgroup", path.as_ref().as_os_str().as_bytes())?;
        // SAFETY: valid handle; libcriu copies the string.
        let rc = unsafe { ffi::criu_local_set_freeze_cgroup(self.opts(), c.as_ptr()) };
        if rc < 0 {
            return Err(Error::OutOfMemory {
                what: "the freeze cgroup",
            });
        }
        Ok(())
    }

    /// Devices whose path changed are looked up by their numbers (`--evasive-devices`).
    pub fn set_evasive_devices(&mut self, yes: bool) {
        // SAFETY: valid handle; plain option.
        unsafe { ffi::criu_local_set_evasive_devices(self.opts(), yes) }
    }

    /// Hands the tree's terminal master to the caller (`--orphan-pts-master`).
    pub fn set_orphan_pts_master(&mut self, yes: bool) {
        // SAFETY: valid handle; plain option.
        unsafe { ffi::criu_local_set_orphan_pts_master(self.opts(), yes) }
    }

    /// Namespaces whose contents CRIU does not dump, so restore creates them empty
    /// (`--empty-ns`): a mask of `CLONE_NEW*` flags. runc always passes `CLONE_NEWNET`
    /// (it does not manage network devices).
    pub fn set_empty_ns(&mut self, namespaces: i32) {
        // SAFETY: valid handle; plain integer option.
        unsafe { ffi::criu_local_set_empty_ns(self.opts(), namespaces) }
    }

    /// Restores into an existing namespace (`--join-ns ns:file`), e.g. `ipc` and a path
    /// under `/proc/<pid>/ns` or `/run/netns`.
    pub fn join_ns(&mut self, ns: &str, file: impl AsRef<Path>) -> Result<()> {
        let n = cstring("namespace type", ns.as_bytes())?;
        let f = cstring("namespace file", file.as_ref().as_os_str().as_bytes())?;
        // SAFETY: valid handle; libcriu copies the strings; no extra options.
        let rc = unsafe {
            ffi::criu_local_join_ns_add(self.opts(), n.as_ptr(), f.as_ptr(), ptr::null())
        };
        if rc < 0 {
            return Err(Error::OutOfMemory {
                what: "a namespace to join",
            });
        }
        Ok(())
    }

    /// A CRIU config file applied over the request's options (`--config`): the way to set
    /// what libcriu has no setter for, e.g. `lazy-pages` and `restore-sibling`.
    pub fn set_config_file(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let c = cstring("config file", path.as_ref().as_os_str().as_bytes())?;
        // SAFETY: valid handle; libcriu copies the string.
        let rc = unsafe { ffi::criu_local_set_config_file(self.opts(), c.as_ptr()) };
        if rc < 0 {
            return Err(Error::OutOfMemory {
                what: "the config file path",
            });
        }
        Ok(())
    }

    /// Runs one request under the process-wide request lock and turns libcriu's return
    /// value and errno into a `Result`.
    fn request(
        &mut self,
        request: Request,
        call: unsafe extern "C" fn(*mut ffi::criu_opts) -> i32,
    ) -> Result<i32> {
        let opts = self.opts();
        REFUSED.with(|r| r.borrow_mut().take());
        let (ret, errno) = {
            // In a thread-local slot, so that the notification trampoline can let go of it.
            let guard = request_lock();
            HELD.with(|h| *h.borrow_mut() = Some(guard));
            // SAFETY: valid handle; descriptors it names are kept open by `self`.
            let ret = unsafe { call(opts) };
            // libcriu sets errno to what CRIU reported (0 for nothing) just before returning.
            let errno = io::Error::last_os_error().raw_os_error();
            HELD.with(|h| h.borrow_mut().take());
            (ret, errno)
        };
        if let Some(action) = REFUSED.with(|r| r.borrow_mut().take()) {
            return Err(Error::Refused { request, action });
        }
        if ret < 0 {
            return Err(Error::Request {
                request,
                code: ret,
                criu_errno: errno.filter(|e| *e != 0),
                cause: Cause::from_code(ret),
                binary: self.binary.clone(),
            });
        }
        Ok(ret)
    }

    fn require_images_dir(&self, request: Request) -> Result<()> {
        if self.images_dir.is_none() {
            return Err(Error::InvalidArgument {
                what: "request",
                reason: format!("{request} needs an images directory (set_images_dir_fd)"),
            });
        }
        Ok(())
    }

    /// `criu check`: whether CRIU works on this kernel. Serialised process-wide.
    pub fn check(&mut self) -> Result<()> {
        self.request(Request::Check, ffi::criu_local_check)
            .map(drop)
    }

    /// The version of the CRIU *binary* (not of libcriu). Serialised process-wide.
    pub fn version(&mut self) -> Result<Version> {
        let code = self.request(Request::Version, ffi::criu_local_get_version)?;
        Ok(Version::from_code(code as u32))
    }

    /// Dumps the tree rooted at [`Criu::set_pid`] into the images directory. Serialised
    /// process-wide.
    pub fn dump(&mut self) -> Result<()> {
        self.require_images_dir(Request::Dump)?;
        if self.pid.is_none() {
            return Err(Error::InvalidArgument {
                what: "request",
                reason: "dump needs the pid of the tree to dump (set_pid)".into(),
            });
        }
        self.request(Request::Dump, ffi::criu_local_dump).map(drop)
    }

    /// Restores the tree from the images directory; CRIU is its parent, and when CRIU
    /// exits the tree is re-parented to the nearest subreaper (or init). Returns the pid of
    /// the tree's root. Serialised process-wide.
    pub fn restore(&mut self) -> Result<u32> {
        self.require_images_dir(Request::Restore)?;
        self.request(Request::Restore, ffi::criu_local_restore)
            .map(|pid| pid as u32)
    }

    /// Restores the tree as a child of this process (CRIU's `rst_sibling`), the way a shim
    /// that must reap its container's init restores it. Returns the pid of the tree's root,
    /// which the caller must reap. Serialised process-wide.
    ///
    /// libcriu always forks a `criu swrk` of its own for this request (`criu` from PATH,
    /// not [`Criu::set_service_binary`]'s, and never [`Criu::set_service_fd`]'s):
    /// to restore from a swrk of one's own, use [`Criu::restore`] with `restore-sibling`
    /// in a config file ([`Criu::set_config_file`]).
    pub fn restore_child(&mut self) -> Result<u32> {
        self.require_images_dir(Request::RestoreChild)?;
        self.request(Request::RestoreChild, ffi::criu_local_restore_child)
            .map(|pid| pid as u32)
    }

    /// [`Criu::restore`], telling `handler` of each step CRIU notifies (see
    /// [`Notification`]); CRIU waits until the handler returns. `"pre-resume"` comes with
    /// the whole tree restored and stopped (traced by CRIU) just before it resumes: a
    /// handler that blocks there keeps the tree from running any code until it returns.
    ///
    /// The handler runs on this thread with the request lock released, so it may block;
    /// it must not make libcriu requests itself. Returning `false` (or panicking) makes
    /// libcriu return [`Error::Refused`] at once; CRIU aborts the restore (killing the
    /// tree) for a refused step before `"pre-resume"`, but only logs a refused
    /// `"pre-resume"` or later and resumes the tree: to abandon a restore held there,
    /// kill the tree (and the CRIU service) before the handler returns.
    ///
    /// Notifications stay on for this handle's later requests (libcriu cannot turn them
    /// off); without a handler they are acknowledged at once.
    pub fn restore_notified(&mut self, handler: &mut NotifyHandler<'_>) -> Result<u32> {
        self.require_images_dir(Request::Restore)?;
        self.notified(Request::Restore, ffi::criu_local_restore, handler)
    }

    /// [`Criu::restore_child`] with notifications, as [`Criu::restore_notified`].
    pub fn restore_child_notified(&mut self, handler: &mut NotifyHandler<'_>) -> Result<u32> {
        self.require_images_dir(Request::RestoreChild)?;
        self.notified(
            Request::RestoreChild,
            ffi::criu_local_restore_child,
            handler,
        )
    }

    fn notified(
        &mut self,
        request: Request,
        call: unsafe extern "C" fn(*mut ffi::criu_opts) -> i32,
        handler: &mut NotifyHandler<'_>,
    ) -> Result<u32> {
        // SAFETY: valid handle; on_notify is a plain function.
        unsafe { ffi::criu_local_set_notify_cb(self.opts(), Some(on_notify)) };
        let ptr: *mut NotifyHandler<'_> = handler;
        // SAFETY: only the lifetime is erased; HandlerReset clears the pointer before
        // `handler`'s borrow ends, and only this thread reads it.
        let ptr: *mut NotifyHandler<'static> = unsafe { std::mem::transmute(ptr) };
        HANDLER.set(Some(ptr));
        let _reset = HandlerReset;
        self.request(request, call).map(|pid| pid as u32)
    }
}

/// How CRIU treats cgroups (`--manage-cgroups=<mode>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// Pretend there are none: a restored tree stays in the cgroups of the CRIU that
    /// restores it.
    Ignore,
    /// Restore the tree into its cgroups, create missing ones, set no properties.
    None,
    /// Create missing cgroups and set their properties; leave existing ones alone.
    Soft,
    /// Set properties on existing cgroups too.
    Full,
    /// Require every cgroup to be as dumped.
    Strict,
}

impl CgroupMode {
    fn raw(self) -> ffi::criu_cg_mode::Type {
        match self {
            CgroupMode::Ignore => ffi::criu_cg_mode::CRIU_CG_MODE_IGNORE,
            CgroupMode::None => ffi::criu_cg_mode::CRIU_CG_MODE_NONE,
            CgroupMode::Soft => ffi::criu_cg_mode::CRIU_CG_MODE_SOFT,
            CgroupMode::Full => ffi::criu_cg_mode::CRIU_CG_MODE_FULL,
            CgroupMode::Strict => ffi::criu_cg_mode::CRIU_CG_MODE_STRICT,
        }
    }
}

/// Opens a directory as a `File`, for callers that want to keep it (e.g. to read CRIU's
/// log after a request).
pub fn open_images_dir(path: impl AsRef<Path>) -> Result<File> {
    open_dir(path.as_ref()).map(File::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_round_trips_libcriu_encoding() {
        let v = Version::from_code(40201);
        assert_eq!(v, Version::new(4, 2, 1));
        assert_eq!(v.to_string(), "4.2.1");
        assert_eq!(v.code(), 40201);
        assert!(v >= MIN_VERSION);
        assert!(Version::from_code(31700) < MIN_VERSION);
        assert_eq!(Version::from_code(41000).to_string(), "4.10.0");
    }

    #[test]
    fn header_is_at_least_the_minimum() {
        assert!(HEADER_VERSION >= MIN_VERSION, "criu.h is {HEADER_VERSION}");
    }

    #[test]
    fn causes_follow_the_criu_h_table() {
        assert_eq!(Cause::from_code(-libc::EBADE), Cause::Failed);
        assert_eq!(Cause::from_code(-libc::ECONNREFUSED), Cause::Unreachable);
        assert_eq!(Cause::from_code(-1), Cause::Unreachable);
        assert_eq!(Cause::from_code(-libc::ECOMM), Cause::Communication);
        assert_eq!(Cause::from_code(-libc::EINVAL), Cause::Unsupported);
        assert_eq!(Cause::from_code(-libc::EBADMSG), Cause::UnexpectedResponse);
        assert_eq!(Cause::from_code(-libc::ENOENT), Cause::Other);
    }

    #[test]
    fn request_error_reads_well() {
        let e = Error::Request {
            request: Request::Dump,
            code: -libc::EBADE,
            criu_errno: Some(libc::ESRCH),
            cause: Cause::Failed,
            binary: PathBuf::from(DEFAULT_SERVICE_BINARY),
        };
        let msg = e.to_string();
        assert!(
            msg.starts_with("CRIU dump failed: CRIU reported failure"),
            "{msg}"
        );
        assert!(msg.contains("No such process (os error 3)"), "{msg}");
        assert!(msg.contains("returned -52 (EBADE)"), "{msg}");
        assert!(msg.contains("/usr/local/sbin/criu"), "{msg}");
        assert_eq!(e.code(), Some(-libc::EBADE));
        assert_eq!(e.criu_errno(), Some(libc::ESRCH));
    }

    #[test]
    fn setters_validate_before_calling_libcriu() {
        let mut criu = Criu::new().expect("allocate criu_opts");
        assert_eq!(criu.service_binary(), Path::new(DEFAULT_SERVICE_BINARY));
        assert!(criu.set_log_file("dump.log").is_ok());
        for bad in ["", "..", "logs/dump.log", "/tmp/dump.log"] {
            assert!(matches!(
                criu.set_log_file(bad),
                Err(Error::InvalidArgument { .. })
            ));
        }
        assert!(matches!(
            criu.set_pid(0),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            criu.set_pid(u32::MAX),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            criu.set_service_binary("/nonexistent/criu"),
            Err(Error::Io { .. })
        ));
        let not_executable = tempfile::NamedTempFile::new().unwrap();
        for bad in [not_executable.path(), Path::new("/")] {
            assert!(matches!(
                criu.set_service_binary(bad),
                Err(Error::InvalidArgument { .. })
            ));
        }
        assert_eq!(criu.service_binary(), Path::new(DEFAULT_SERVICE_BINARY));
        // Requests that need an images dir or a pid refuse before forking CRIU.
        assert!(matches!(criu.dump(), Err(Error::InvalidArgument { .. })));
        assert!(matches!(criu.restore(), Err(Error::InvalidArgument { .. })));
        let dir = tempfile::tempdir().unwrap();
        criu.set_images_dir(dir.path()).unwrap();
        assert!(matches!(criu.dump(), Err(Error::InvalidArgument { .. })));
    }

    #[test]
    fn a_missing_binary_is_a_typed_request_error() {
        let mut criu = Criu::new().unwrap();
        // Bypass set_service_binary's check to see what libcriu itself reports.
        criu.set_binary_unchecked(Path::new("/nonexistent/criu"))
            .unwrap();
        let err = criu.version().unwrap_err();
        assert_eq!(err.cause().map(|c| c != Cause::Failed), Some(true), "{err}");
        assert!(err.code().unwrap() < 0);
        assert!(err.to_string().contains("/nonexistent/criu"), "{err}");
    }

    /// Needs root and CRIU >= 4.2 at /usr/local/sbin/criu (hack/setup.sh).
    #[test]
    fn version_of_the_installed_criu_is_at_least_4_2() {
        let mut criu = Criu::new().unwrap();
        let v = criu
            .version()
            .unwrap_or_else(|e| panic!("{e} — run hack/setup.sh (as root)"));
        assert!(v >= MIN_VERSION, "CRIU at {DEFAULT_SERVICE_BINARY} is {v}");
    }

    #[test]
    fn criu_check_passes_here() {
        let mut criu = Criu::new().unwrap();
        criu.check().unwrap_or_else(|e| panic!("{e}"));
    }
}
