//! The tmpfs helper: CRIU's restore hands each tmpfs image to this thread of
//! the shim instead of forking and exec'ing `tar` per mount.
//!
//! A runc container has five or more tmpfs mounts (`/dev`, `/dev/shm`, runc's
//! masks, `/sys/fs/cgroup` on a cgroup v1 host); even with the in-process
//! `rekindle-criu-tar`, the fork + exec + wait costs ~1.5 ms each, a third of
//! the time CRIU spends restoring the reference function. With Rekindle's
//! CRIU patch (hack/criu-patches/0002-tmpfs-restore-helper.patch) a restore
//! whose environment names `CRIU_TMPFS_RESTORE_SOCKET` connects there per
//! tmpfs, sends the image fd and an `O_DIRECTORY` fd of the mount point
//! (SCM_RIGHTS), and reads one reply: `o` (extracted), `e<why>` (refused: the
//! restore fails), `u<why>` (not handled: CRIU runs `tar` as before).
//!
//! The extraction is [`crate::criu_tar`], the same code `rekindle-criu-tar`
//! runs, into the descriptor CRIU sends: the mount point is never resolved by
//! path here (CRIU's restore is in its own mount namespace by then). The
//! socket lives in a root-only directory and only root peers are answered.
//! A CRIU without the patch ignores the variable.

use std::{
    io::{self, IoSlice, IoSliceMut},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::fs::{DirBuilderExt, FileExt, PermissionsExt},
    },
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
};

use nix::sys::socket::{
    self, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};
use tracing::{debug, warn};

use crate::criu_tar::{self, TarError};

/// The environment variable the patched CRIU reads.
pub const SOCKET_ENV: &str = "CRIU_TMPFS_RESTORE_SOCKET";

/// Where the helpers' sockets live: short, because a socket path has at most
/// 107 bytes and containerd's bundle paths can be longer than that.
const SOCKET_DIR: &str = "/run/rekindle/tmpfs";

/// A compressed tmpfs image above this is left to `tar` (GNU tar streams it;
/// here it would be held in memory whole).
const MAX_IMAGE: u64 = 16 << 20;

/// Mode of directories an archive needs but does not list: 0777 less the
/// umask 022 `tar` would have inherited (the shim's umask cannot be read
/// without changing it, and it is shared by every thread).
const INTERDIR_MODE: libc::mode_t = 0o755;

/// `REKINDLE_TMPFS_HELPER=0` turns the helper off (CRIU then runs `tar`).
pub fn enabled() -> bool {
    !matches!(std::env::var("REKINDLE_TMPFS_HELPER").as_deref(), Ok("0"))
}

/// A listening helper; stops (and removes its socket) when dropped.
pub struct TmpfsHelper {
    path: PathBuf,
    listener: Arc<OwnedFd>,
    stopped: Arc<AtomicBool>,
}

impl TmpfsHelper {
    /// Binds a fresh socket and serves it on its own thread.
    pub fn start() -> io::Result<TmpfsHelper> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(SOCKET_DIR)?;
        // The directory may predate this shim: root-only whatever made it.
        std::fs::set_permissions(SOCKET_DIR, std::fs::Permissions::from_mode(0o700))?;
        let path = Path::new(SOCKET_DIR).join(format!(
            "{}-{}.sock",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(io::Error::from)?;
        let addr = UnixAddr::new(&path).map_err(io::Error::from)?;
        socket::bind(fd.as_raw_fd(), &addr).map_err(io::Error::from)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        socket::listen(&fd, socket::Backlog::new(8).map_err(io::Error::from)?)
            .map_err(io::Error::from)?;
        let listener = Arc::new(fd);
        let stopped = Arc::new(AtomicBool::new(false));
        let (l, s) = (listener.clone(), stopped.clone());
        std::thread::Builder::new()
            .name("tmpfs-helper".into())
            .spawn(move || serve(&l, &s))?;
        Ok(TmpfsHelper {
            path,
            listener,
            stopped,
        })
    }

    /// The socket, for [`SOCKET_ENV`].
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TmpfsHelper {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        // Wakes the blocked accept (it fails with EINVAL); the thread exits.
        let _ = socket::shutdown(self.listener.as_raw_fd(), socket::Shutdown::Both);
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(listener: &OwnedFd, stopped: &AtomicBool) {
    loop {
        let conn = socket::accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC);
        if stopped.load(Ordering::SeqCst) {
            return;
        }
        match conn {
            // SAFETY: a fresh descriptor nothing else owns.
            Ok(fd) => answer(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::ECONNABORTED) => {}
            Err(e) => {
                warn!(error = %e, "tmpfs helper: accept failed; CRIU runs tar from now on");
                return;
            }
        }
    }
}

/// One request: read it, extract, reply.
fn answer(conn: OwnedFd) {
    let reply = match request(&conn) {
        Ok((image, dir)) => match extract(&image, dir) {
            Ok(()) => "o".to_string(),
            Err(TarError::Unhandled(why)) => {
                debug!(%why, "tmpfs helper: left to tar");
                format!("u{why}")
            }
            Err(TarError::Refused(why) | TarError::Failed(why)) => format!("e{why}"),
        },
        Err(Refusal::Unhandled(why)) => format!("u{why}"),
        Err(Refusal::Peer(why)) => {
            warn!(%why, "tmpfs helper: request refused");
            return;
        }
    };
    // CRIU logs the reply; a message is kept short (its buffer is 512 bytes).
    let reply = truncate(&reply, 500);
    if let Err(e) = socket::send(conn.as_raw_fd(), reply.as_bytes(), MsgFlags::MSG_NOSIGNAL) {
        warn!(error = %e, "tmpfs helper: reply not sent");
    }
}

enum Refusal {
    /// Not a request to answer at all (not root, malformed).
    Peer(String),
    /// A request that `tar` should serve instead.
    Unhandled(String),
}

/// The image and the mount point the peer sent, after checking the peer.
fn request(conn: &OwnedFd) -> Result<(std::fs::File, OwnedFd), Refusal> {
    let cred = socket::getsockopt(conn, socket::sockopt::PeerCredentials)
        .map_err(|e| Refusal::Peer(format!("peer credentials: {e}")))?;
    if cred.uid() != 0 {
        return Err(Refusal::Peer(format!(
            "peer pid {} runs as uid {}, not root",
            cred.pid(),
            cred.uid()
        )));
    }
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 2]);
    let msg = socket::recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| Refusal::Peer(format!("receive: {e}")))?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for cmsg in msg
        .cmsgs()
        .map_err(|e| Refusal::Peer(format!("control data: {e}")))?
    {
        if let ControlMessageOwned::ScmRights(got) = cmsg {
            // SAFETY: descriptors the kernel just installed for us.
            fds.extend(
                got.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if msg.bytes != 1 || fds.len() != 2 {
        return Err(Refusal::Peer(format!(
            "expected one byte and two descriptors, got {} bytes and {} descriptors",
            msg.bytes,
            fds.len()
        )));
    }
    let dir = fds.pop().expect("two descriptors");
    let image = std::fs::File::from(fds.pop().expect("two descriptors"));
    let meta = image
        .metadata()
        .map_err(|e| Refusal::Unhandled(format!("stat the image: {e}")))?;
    if !meta.is_file() {
        return Err(Refusal::Unhandled("the image is not a regular file".into()));
    }
    if meta.len() > MAX_IMAGE {
        return Err(Refusal::Unhandled(format!(
            "the image is larger than {} MiB",
            MAX_IMAGE >> 20
        )));
    }
    Ok((image, dir))
}

/// Reads the image from its current offset without moving it (so `tar` can
/// still be given it) and extracts it into `dir`.
fn extract(image: &std::fs::File, dir: OwnedFd) -> Result<(), TarError> {
    // SAFETY: lseek with SEEK_CUR and 0 only reports the offset.
    let start = unsafe { libc::lseek(image.as_raw_fd(), 0, libc::SEEK_CUR) };
    if start < 0 {
        return Err(TarError::Unhandled(format!(
            "the image's offset: {}",
            io::Error::last_os_error()
        )));
    }
    let len = image
        .metadata()
        .map_err(|e| TarError::Unhandled(format!("stat the image: {e}")))?
        .len()
        .saturating_sub(start as u64);
    let mut data = vec![0u8; len as usize];
    image
        .read_exact_at(&mut data, start as u64)
        .map_err(|e| TarError::Unhandled(format!("read the image: {e}")))?;
    criu_tar::extract_gz(&data, dir, INTERDIR_MODE)
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A client of the helper as the patched CRIU is, for tests: sends `image`
/// (its fd, at its current offset) and `dir`, returns the reply.
#[doc(hidden)]
pub fn request_as_criu(
    socket_path: &Path,
    image: &std::fs::File,
    dir: &Path,
) -> io::Result<String> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    socket::connect(
        fd.as_raw_fd(),
        &UnixAddr::new(socket_path).map_err(io::Error::from)?,
    )
    .map_err(io::Error::from)?;
    let d = std::fs::File::open(dir)?;
    let fds = [image.as_raw_fd(), d.as_raw_fd()];
    socket::sendmsg::<()>(
        fd.as_raw_fd(),
        &[IoSlice::new(b"x")],
        &[socket::ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(io::Error::from)?;
    let mut buf = [0u8; 512];
    let n = socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(io::Error::from)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}
