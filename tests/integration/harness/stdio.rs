//! A process's stdout or stderr, captured the way containerd's own clients do it: a FIFO
//! that the test reads and the shim opens for writing.

use std::ffi::CString;
use std::fs::File;
use std::io::{ErrorKind, Read as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

#[derive(Clone)]
pub struct Capture {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    buf: Mutex<Vec<u8>>,
    /// All writers have closed the FIFO after at least one had opened it.
    eof: AtomicBool,
    /// Set by [`Capture::close`]: stop reading.
    closed: AtomicBool,
}

impl Capture {
    /// Creates the FIFO at `path` and starts reading it in a thread.
    ///
    /// The read end is opened non-blocking right away, so the shim's blocking open for
    /// writing succeeds. On Linux a FIFO reports POLLHUP only once a writer has come and
    /// gone, so `poll` waits for the shim rather than seeing an early end of file.
    pub fn fifo(path: &Path) -> Result<Self> {
        let c = CString::new(path.as_os_str().as_bytes())?;
        // SAFETY: valid NUL-terminated path.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mkfifo {}", path.display()));
        }
        // SAFETY: valid NUL-terminated path; the fd is owned by `file` below.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("opening {} for reading", path.display()));
        }
        // SAFETY: fd was just opened and nothing else owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        let inner = Arc::new(Inner {
            path: path.to_path_buf(),
            buf: Mutex::new(Vec::new()),
            eof: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        let reader = Arc::clone(&inner);
        std::thread::Builder::new()
            .name(format!("fifo-{}", path.display()))
            .spawn(move || read_loop(file, &reader))?;
        Ok(Capture { inner })
    }

    /// The path to hand to containerd.
    pub fn path(&self) -> String {
        self.inner.path.display().to_string()
    }

    /// Everything read so far, lossily decoded.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.inner.buf.lock().unwrap()).into_owned()
    }

    pub fn at_eof(&self) -> bool {
        self.inner.eof.load(Ordering::SeqCst)
    }

    /// Waits until the output contains `needle`; returns the whole output.
    pub async fn wait_for(&self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            // End of file first, then the text: the reader thread appends the last
            // bytes before it marks the end, so text read after seeing the end is all
            // of it (read the other way round, output and end arriving together
            // looked like an end without the output).
            let eof = self.at_eof();
            let text = self.text();
            if text.contains(needle) {
                return Ok(text);
            }
            if eof {
                bail!(
                    "{} closed without {needle:?}; it said: {text:?}",
                    self.inner.path.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "no {needle:?} on {} within {timeout:?}; it said: {text:?}",
                    self.inner.path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the writers have closed the FIFO (the shim has copied all of the
    /// process's output); returns the whole output.
    pub async fn wait_eof(&self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        while !self.at_eof() {
            if Instant::now() > deadline {
                bail!(
                    "{} still open for writing after {timeout:?}; read so far: {:?}",
                    self.inner.path.display(),
                    self.text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(self.text())
    }

    /// Stops the reader thread (at the latest 100 ms later).
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
    }
}

fn read_loop(mut file: File, inner: &Inner) {
    let mut chunk = [0u8; 8192];
    while !inner.closed.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd {
            fd: file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 100) };
        if n <= 0 {
            continue; // timeout or EINTR: check `closed` again
        }
        if pfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) == 0 {
            continue;
        }
        // A writer has been here: drain what is buffered; 0 now means end of file.
        loop {
            match file.read(&mut chunk) {
                Ok(0) => {
                    inner.eof.store(true, Ordering::SeqCst);
                    return;
                }
                Ok(n) => inner.buf.lock().unwrap().extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    inner.eof.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
    }
}
