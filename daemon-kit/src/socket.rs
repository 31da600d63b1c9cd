//! The unix sockets the daemons serve on (rekindle-restored's API, the agent's admin API
//! and scheduler hook): private to their owner (mode 0600, or 0660 for one group) from the
//! moment they exist, and never taken over from a live daemon.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::Path;

/// Binds a listening unix socket at `path`, creating its directory if missing.
///
/// A socket file nobody accepts on (left by a daemon that died) is replaced. A socket a live
/// process accepts on is an [`io::ErrorKind::AddrInUse`] error and any other file there an
/// [`io::ErrorKind::AlreadyExists`] one; both are left as they are. The socket is bound
/// under umask 0177, so it is never reachable by others, then given mode 0600, or 0660 and
/// group `gid` when one is given. The listener is non-blocking, ready for tokio.
pub fn bind_private(path: &Path, gid: Option<u32>) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "the path exists and is not a socket; move it away",
                ));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "a live process listens on it (another instance of this daemon?)",
                ));
            }
            std::fs::remove_file(path)?;
            tracing::info!(path = %path.display(), "removed a stale socket");
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
        }
        Err(e) => return Err(e),
    }
    // SAFETY: umask only swaps the process' mask, restored right after the bind. Files other
    // threads create meanwhile get 0600 at worst, never more permissive.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    } else {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    listener.set_nonblocking(true)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_fresh_stale_replaced_live_and_files_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/d.sock");
        let l = bind_private(&path, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let e = bind_private(&path, None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        assert!(e.to_string().contains("a live process listens"), "{e}");
        drop(l);

        // Left by a dead daemon: replaced. A datagram socket stands in for it: a stream
        // listener just dropped could still accept through the copy a parallel test's fork
        // holds until its exec (CI saw that once); a stream connect here never succeeds.
        std::fs::remove_file(&path).unwrap();
        drop(std::os::unix::net::UnixDatagram::bind(&path).unwrap());
        let _l = bind_private(&path, Some(unsafe { libc::getegid() })).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);

        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let e = bind_private(&file, None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    }
}
