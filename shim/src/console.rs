//! The console socket runc sends a terminal's master fd over (`--console-socket`).

use std::{
    io::IoSliceMut,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use containerd_shim::io::Pty;
use nix::{
    cmsg_space,
    sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr},
};
use tokio::net::UnixListener;

use crate::error::{Error, Result};

const ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ConsoleSocket {
    dir: PathBuf,
    pub path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    pub fn new() -> Result<Self> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rekindle-pty-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("create {}", dir.display())))?;
        let path = dir.join("pty.sock");
        let listener =
            UnixListener::bind(&path).map_err(Error::io(format!("bind {}", path.display())))?;
        Ok(Self {
            dir,
            path,
            listener,
        })
    }

    /// Waits for runc to connect and send the terminal's master end.
    pub async fn receive(&self) -> Result<Pty> {
        let (stream, _) = tokio::time::timeout(ACCEPT_TIMEOUT, self.listener.accept())
            .await
            .map_err(|_| Error::FailedPrecondition("runc did not send the console fd".into()))?
            .map_err(Error::io("accept on console socket"))?;
        let stream = stream
            .into_std()
            .map_err(Error::io("console socket to std"))?;
        stream
            .set_nonblocking(false)
            .map_err(Error::io("console socket blocking"))?;
        let fd = tokio::task::spawn_blocking(move || receive_fd(stream.as_raw_fd()))
            .await
            .map_err(|e| Error::FailedPrecondition(format!("receive console: {e}")))??;
        Ok(Pty::new(std::fs::File::from(fd))?)
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn receive_fd(sock: i32) -> Result<OwnedFd> {
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = cmsg_space!([i32; 2]);
    let msg = recvmsg::<UnixAddr>(sock, &mut iov, Some(&mut space), MsgFlags::empty())
        .map_err(|e| Error::io("receive console fd")(e.into()))?;
    for cmsg in msg
        .cmsgs()
        .map_err(|e| Error::io("read console message")(e.into()))?
    {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed this descriptor for us.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(Error::FailedPrecondition(
        "runc connected to the console socket but sent no fd".into(),
    ))
}

/// Sets a terminal's window size (ResizePty).
pub fn resize(pty: &Pty, height: u32, width: u32) -> Result<()> {
    use std::os::fd::AsFd;
    let ws = libc::winsize {
        ws_row: height as u16,
        ws_col: width as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
    let rc = unsafe { libc::ioctl(pty.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if rc < 0 {
        return Err(Error::io("resize terminal")(std::io::Error::last_os_error()));
    }
    Ok(())
}
