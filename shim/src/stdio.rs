//! A process's stdio as containerd describes it, and the copies that carry it.
//!
//! containerd hands the shim one string per stream. Three forms exist
//! (containerd's `cio` package and the Go runc shim's `process/io.go`):
//! - a plain path (or `fifo://path`): a fifo containerd reads from or writes to;
//! - `file:///abs/path`: append stdout and stderr to that file;
//! - `binary:///abs/path?key=value`: start that program as a logging driver,
//!   with stdout on fd 3, stderr on fd 4 and a readiness pipe on fd 5.

use std::{
    os::fd::{AsRawFd, OwnedFd},
    path::PathBuf,
    process::Stdio as ProcStdio,
    sync::Arc,
    time::Duration,
};

use containerd_shim::io::{IoTasks, Stdio};
use runc::{
    io::{Io, IoOption, NullIo},
    PipedIo,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    sync::Mutex,
    task::JoinHandle,
};
use tracing::{debug, warn};

use crate::error::{Error, Result};

/// How long a binary logging driver may take to signal it is ready.
const LOGGER_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Where one output stream goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Fifo(String),
    File(PathBuf),
    Binary { path: PathBuf, args: Vec<String> },
}

impl Target {
    /// Parses one stdio string from containerd. Untrusted input: only absolute
    /// paths are accepted, and an unknown scheme is an error rather than a
    /// silently dropped stream.
    pub fn parse(uri: &str) -> Result<Target> {
        let uri = uri.trim();
        let Some((scheme, rest)) = uri.split_once("://") else {
            return Ok(Target::Fifo(uri.to_string()));
        };
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        if !path.starts_with('/') {
            return Err(Error::InvalidArgument(format!(
                "stdio URI {uri:?} must name an absolute path"
            )));
        }
        match scheme {
            "fifo" => Ok(Target::Fifo(path.to_string())),
            "file" => Ok(Target::File(PathBuf::from(path))),
            "binary" => {
                let mut args = Vec::new();
                for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    args.push(percent_decode(k)?);
                    if !v.is_empty() {
                        args.push(percent_decode(v)?);
                    }
                }
                Ok(Target::Binary {
                    path: PathBuf::from(path),
                    args,
                })
            }
            other => Err(Error::InvalidArgument(format!(
                "stdio URI {uri:?} has unsupported scheme {other:?} (supported: fifo path, file://, binary://)"
            ))),
        }
    }
}

fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                let b = u8::from_str_radix(hex, 16).map_err(|_| {
                    Error::InvalidArgument(format!("bad percent-escape in stdio URI: {s:?}"))
                })?;
                out.push(b);
                i += 3;
            }
            b'%' => {
                return Err(Error::InvalidArgument(format!(
                    "bad percent-escape in stdio URI: {s:?}"
                )))
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out)
        .map_err(|_| Error::InvalidArgument(format!("stdio URI is not UTF-8: {s:?}")))
}

/// Who the stdio belongs to: the pipes are owned by `uid`/`gid` (runtime
/// options `IoUid`/`IoGid`), and a logging driver learns the container.
#[derive(Debug, Clone, Default)]
pub struct Owner {
    pub container_id: String,
    pub namespace: String,
    pub uid: u32,
    pub gid: u32,
}

/// The copies of one process's stdio, shut down when the process is deleted.
#[derive(Clone, Default)]
pub struct ProcessIo {
    pub fifos: IoTasks,
    /// Copies into files and logging drivers, which `IoTasks` does not cover.
    others: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// The stdio the runtime hands a process: a pipe for each stream containerd names,
/// or nothing at all (/dev/null). It is runc's [`Io`] for runc's own commands, and
/// gives its child ends as descriptors ([`ChildIo::child_fds`]) to a child spawned
/// without std's `Command` (`criu swrk`, see `crate::spawn`).
#[derive(Debug)]
pub struct ChildIo(Option<PipedIo>);

impl ChildIo {
    /// No stdio: runc's `NullIo`.
    pub fn null() -> ChildIo {
        ChildIo(None)
    }

    /// Copies of the child's ends, for its fds 0, 1 and 2: the read end of stdin's
    /// pipe, the write ends of stdout's and stderr's; `None` for a stream without a
    /// pipe. A write end handed to a child already and closed here is an error, as
    /// in runc's `PipedIo::set`.
    pub fn child_fds(&self) -> std::io::Result<[Option<OwnedFd>; 3]> {
        let Some(p) = &self.0 else {
            return Ok([None, None, None]);
        };
        let stdin = p.stdin.as_ref().map(|p| p.rd.try_clone()).transpose()?;
        let wr = |p: &Option<runc::Pipe>| {
            p.as_ref()
                .map(|p| {
                    p.try_clone_wr()
                        .ok_or_else(|| std::io::Error::other("write end closed"))
                })
                .transpose()
        };
        Ok([stdin, wr(&p.stdout)?, wr(&p.stderr)?])
    }
}

#[async_trait::async_trait]
impl Io for ChildIo {
    fn stdin(&self) -> Option<Box<dyn tokio::io::AsyncWrite + Send + Sync + Unpin>> {
        self.0.as_ref()?.stdin()
    }

    fn stdout(&self) -> Option<Box<dyn AsyncRead + Send + Sync + Unpin>> {
        self.0.as_ref()?.stdout()
    }

    fn stderr(&self) -> Option<Box<dyn AsyncRead + Send + Sync + Unpin>> {
        self.0.as_ref()?.stderr()
    }

    /// The ends of [`ChildIo::child_fds`]: runc and swrk get them the one way.
    async fn set(&self, cmd: &mut tokio::process::Command) -> std::io::Result<()> {
        if self.0.is_none() {
            return NullIo {}.set(cmd).await;
        }
        let [stdin, stdout, stderr] = self.child_fds()?;
        if let Some(f) = stdin {
            cmd.stdin(f);
        }
        if let Some(f) = stdout {
            cmd.stdout(f);
        }
        if let Some(f) = stderr {
            cmd.stderr(f);
        }
        Ok(())
    }

    async fn close_after_start(&self) {
        if let Some(p) = &self.0 {
            p.close_after_start().await;
        }
    }
}

/// The pipes the runtime hands to a process for the streams `stdio` names (none
/// may be null: see [`ProcessIo::attach`]), owned by `owner`'s uid and gid.
pub fn pipes(owner: &Owner, stdio: &Stdio) -> Result<Arc<ChildIo>> {
    let opts = IoOption {
        open_stdin: !stdio.stdin.is_empty(),
        open_stdout: !stdio.stdout.is_empty(),
        open_stderr: !stdio.stderr.is_empty(),
    };
    let io = PipedIo::new(owner.uid, owner.gid, &opts).map_err(Error::io("create stdio pipes"))?;
    Ok(Arc::new(ChildIo(Some(io))))
}

impl ProcessIo {
    /// Creates the pipes the runtime hands to the process and starts copying
    /// them to where containerd asked. Opens every destination before the
    /// process exists, so a bad destination fails without leaving one behind.
    pub async fn attach(&self, owner: &Owner, stdio: &Stdio) -> Result<Arc<ChildIo>> {
        if stdio.is_null() {
            return Ok(Arc::new(ChildIo::null()));
        }
        let io = pipes(owner, stdio)?;
        self.connect(owner, stdio, &io).await?;
        Ok(io)
    }

    /// Starts copying the pipes `io` (made by [`pipes`] for the same streams) to
    /// where containerd asked.
    pub async fn connect(&self, owner: &Owner, stdio: &Stdio, io: &Arc<ChildIo>) -> Result<()> {
        if !stdio.stdin.is_empty() {
            let w = io
                .stdin()
                .ok_or_else(|| Error::InvalidArgument("no pipe for stdin".into()))?;
            self.fifos.copy_from_fifo(&stdio.stdin, w)?;
        }
        let stdout = if stdio.stdout.is_empty() {
            None
        } else {
            Some(Target::parse(&stdio.stdout)?)
        };
        let stderr = if stdio.stderr.is_empty() {
            None
        } else {
            Some(Target::parse(&stdio.stderr)?)
        };
        match (&stdout, &stderr) {
            // One logging driver gets both streams, as containerd starts it once.
            (Some(Target::Binary { path, args }), _)
            | (None, Some(Target::Binary { path, args })) => {
                self.start_logger(owner, path, args, io.stdout(), io.stderr())
                    .await?;
            }
            _ => {
                for (target, reader) in [(stdout, io.stdout()), (stderr, io.stderr())] {
                    if let (Some(target), Some(reader)) = (target, reader) {
                        self.copy_out(target, reader).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Copies the terminal's output to the stdout destination and stdin into it.
    pub fn attach_console(&self, stdio: &Stdio, console: containerd_shim::io::Pty) -> Result<()> {
        if !stdio.stdin.is_empty() {
            self.fifos.copy_from_fifo(&stdio.stdin, console.clone())?;
        }
        if !stdio.stdout.is_empty() {
            match Target::parse(&stdio.stdout)? {
                Target::Fifo(path) => self
                    .fifos
                    .copy_to_fifo(TerminalOutput::new(console, path.clone()), &path)?,
                other => {
                    return Err(Error::InvalidArgument(format!(
                        "a terminal's output can only go to a fifo, not {other:?}"
                    )))
                }
            }
        }
        Ok(())
    }

    async fn copy_out(
        &self,
        target: Target,
        mut reader: Box<dyn AsyncRead + Send + Sync + Unpin>,
    ) -> Result<()> {
        match target {
            Target::Fifo(path) => self.fifos.copy_to_fifo(reader, &path)?,
            Target::File(path) => {
                if let Some(dir) = path.parent() {
                    tokio::fs::create_dir_all(dir)
                        .await
                        .map_err(Error::io(format!("create {}", dir.display())))?;
                }
                let mut file = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .await
                    .map_err(Error::io(format!("open stdio file {}", path.display())))?;
                let handle = tokio::spawn(async move {
                    if let Err(e) = tokio::io::copy(&mut reader, &mut file).await {
                        warn!(error = %e, path = %path.display(), "copy to stdio file failed");
                    }
                });
                self.others.lock().await.push(handle);
            }
            Target::Binary { .. } => unreachable!("binary targets are started by start_logger"),
        }
        Ok(())
    }

    async fn start_logger(
        &self,
        owner: &Owner,
        path: &std::path::Path,
        args: &[String],
        stdout: Option<Box<dyn AsyncRead + Send + Sync + Unpin>>,
        stderr: Option<Box<dyn AsyncRead + Send + Sync + Unpin>>,
    ) -> Result<()> {
        let (out_r, out_w) = nix::unistd::pipe().map_err(|e| Error::io("pipe")(e.into()))?;
        let (err_r, err_w) = nix::unistd::pipe().map_err(|e| Error::io("pipe")(e.into()))?;
        let (ready_r, ready_w) = nix::unistd::pipe().map_err(|e| Error::io("pipe")(e.into()))?;
        let fds: [OwnedFd; 3] = [out_r, err_r, ready_w];
        let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let mut cmd = tokio::process::Command::new(path);
        cmd.args(args)
            .env("CONTAINER_ID", &owner.container_id)
            .env("CONTAINER_NAMESPACE", &owner.namespace)
            .stdin(ProcStdio::null())
            .stdout(ProcStdio::null())
            .stderr(ProcStdio::null());
        // SAFETY: only async-signal-safe dup2 calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                for (i, fd) in raw.iter().enumerate() {
                    if libc::dup2(*fd, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            Error::FailedPrecondition(format!(
                "start logging driver {}: {e}; check the binary:// path in the task's stdio",
                path.display()
            ))
        })?;
        // The reaper owns child exits; the handle is not waited on.
        drop(child);
        drop(fds);
        // The driver closes fd 5 once it is ready to read.
        let mut ready = tokio::fs::File::from(std::fs::File::from(ready_r));
        let mut buf = [0u8; 1];
        match tokio::time::timeout(LOGGER_READY_TIMEOUT, ready.read(&mut buf)).await {
            Ok(_) => debug!(path = %path.display(), "logging driver ready"),
            Err(_) => {
                return Err(Error::FailedPrecondition(format!(
                    "logging driver {} did not signal readiness within {LOGGER_READY_TIMEOUT:?}",
                    path.display()
                )))
            }
        }
        for (reader, writer) in [(stdout, out_w), (stderr, err_w)] {
            let mut writer = tokio::fs::File::from(std::fs::File::from(writer));
            if let Some(mut reader) = reader {
                let handle = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                });
                self.others.lock().await.push(handle);
            }
        }
        Ok(())
    }

    /// Lets the output copies drain, then stops every copy.
    pub async fn shutdown(&self) {
        self.fifos.shutdown().await;
        let handles = std::mem::take(&mut *self.others.lock().await);
        for mut h in handles {
            if tokio::time::timeout(Duration::from_secs(2), &mut h)
                .await
                .is_err()
            {
                h.abort();
            }
        }
    }

    /// Stops every copy at once (a process that failed to start).
    pub async fn abort(&self) {
        self.fifos.abort().await;
        for h in std::mem::take(&mut *self.others.lock().await) {
            h.abort();
        }
    }
}

/// A terminal's output on its way to its fifo, with the terminal's hang-up (EIO on
/// the master once the process side has closed) read as the end of the output.
///
/// Why: the copy (`tokio::io::copy`) reads ahead while a write is pending, and
/// returns a read error at once, dropping what it had read and not yet written. A
/// short-lived process's whole output could be lost that way: read, the fifo's
/// first write pending on the reactor, then EIO. As the end of the output, the
/// copy writes what it holds first. The end is logged with the byte count.
struct TerminalOutput<R> {
    inner: R,
    fifo: String,
    bytes: u64,
}

impl<R> TerminalOutput<R> {
    fn new(inner: R, fifo: String) -> Self {
        TerminalOutput {
            inner,
            fifo,
            bytes: 0,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for TerminalOutput<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        self.bytes += read;
        match polled {
            Poll::Ready(Ok(())) if read == 0 => {
                debug!(fifo = %self.fifo, bytes = self.bytes, "terminal output ended");
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) if e.raw_os_error() == Some(libc::EIO) => {
                debug!(fifo = %self.fifo, bytes = self.bytes, "terminal output ended (hung up)");
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_path_is_a_fifo() {
        assert_eq!(
            Target::parse("/run/containerd/fifo/1/x-stdout").unwrap(),
            Target::Fifo("/run/containerd/fifo/1/x-stdout".into())
        );
        assert_eq!(
            Target::parse("fifo:///tmp/f").unwrap(),
            Target::Fifo("/tmp/f".into())
        );
    }

    #[test]
    fn file_and_binary_uris_are_understood() {
        assert_eq!(
            Target::parse("file:///var/log/fn.log").unwrap(),
            Target::File("/var/log/fn.log".into())
        );
        assert_eq!(
            Target::parse("binary:///usr/bin/logger?tag=fn%201&debug").unwrap(),
            Target::Binary {
                path: "/usr/bin/logger".into(),
                args: vec!["tag".into(), "fn 1".into(), "debug".into()]
            }
        );
    }

    #[test]
    fn unknown_schemes_and_relative_paths_are_rejected() {
        for bad in [
            "http://example/x",
            "file://relative/path",
            "binary://bin?x=%zz",
            "binary:///bin?x=%4",
        ] {
            let err = Target::parse(bad).expect_err(bad);
            assert!(matches!(err, Error::InvalidArgument(_)), "{bad}: {err}");
        }
    }

    #[tokio::test]
    async fn output_reaches_a_file_destination() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sub/out.log");
        let pio = ProcessIo::default();
        let (r, w) = tokio::io::duplex(64);
        pio.copy_out(Target::File(log.clone()), Box::new(r))
            .await
            .unwrap();
        {
            use tokio::io::AsyncWriteExt;
            let mut w = w;
            w.write_all(b"hello\n").await.unwrap();
        }
        pio.shutdown().await;
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "hello\n");
    }

    #[tokio::test]
    async fn a_child_gets_the_ends_of_the_pipes_asked_for_and_nothing_once_handed_over() {
        use std::io::Write;
        let stdio = Stdio {
            stdout: "/x/stdout".into(),
            ..Default::default()
        };
        let io = pipes(&Owner::default(), &stdio).unwrap();
        let [stdin, stdout, stderr] = io.child_fds().unwrap();
        assert!(
            stdin.is_none() && stderr.is_none(),
            "only stdout was asked for"
        );
        std::fs::File::from(stdout.unwrap())
            .write_all(b"to the shim")
            .unwrap();
        let mut reader = io.stdout().unwrap();
        let mut got = [0u8; 11];
        tokio::io::AsyncReadExt::read_exact(&mut reader, &mut got)
            .await
            .unwrap();
        assert_eq!(&got, b"to the shim");
        // Once a child has its copy, the shim's write end is closed: no second child.
        io.close_after_start().await;
        assert!(io.child_fds().is_err());
        assert_eq!(
            ChildIo::null()
                .child_fds()
                .unwrap()
                .iter()
                .flatten()
                .count(),
            0
        );
    }
}
