//! An async client: one connection per request, as the protocol wants.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::proto::*;

/// What a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing listens on the socket (it does not exist, or refuses connections).
    #[error("cannot connect to {}: {source} (is rekindle-restored running?)", .socket.display())]
    NotRunning {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The socket exists but we may not use it (it is root-only by default).
    #[error(
        "cannot connect to {}: {source} (rekindle-restored's socket is for root and the \
         uids in its allowed_uids)",
        .socket.display()
    )]
    PermissionDenied {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Any other failure to talk to the daemon.
    #[error("talking to rekindle-restored on {}: {source}", .socket.display())]
    Io {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The connection ended before any answer: the daemon stopped (or crashed)
    /// while it handled the request.
    #[error(
        "rekindle-restored on {} closed the connection without answering: it stopped or \
         crashed during the request (see its log, e.g. `journalctl -u rekindle-restored`)",
        .socket.display()
    )]
    Closed { socket: PathBuf },
    /// The daemon answered something this client does not understand.
    #[error("rekindle-restored on {} sent an invalid response: {reason}", .socket.display())]
    Protocol { socket: PathBuf, reason: String },
    /// The daemon ran the operation and reports that it failed.
    #[error("rekindle-restored: {0}")]
    Api(#[from] ApiError),
}

impl Error {
    /// The daemon's error code, when the daemon answered with an error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Api(e) => Some(e.code),
            _ => None,
        }
    }

    /// The daemon could not be reached at all (not running, or no permission).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Error::NotRunning { .. } | Error::PermissionDenied { .. }
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A client of `rekindle-restored`. Cheap to clone; holds no connection.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Default for Client {
    fn default() -> Self {
        Client::new(DEFAULT_SOCKET)
    }
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one operation and decodes its `ok` body as `T`.
    pub async fn call<T: DeserializeOwned>(&self, op: Op) -> Result<T> {
        let mut line = serde_json::to_vec(&Request::new(op)).map_err(|e| Error::Protocol {
            socket: self.socket.clone(),
            reason: format!("cannot encode the request: {e}"),
        })?;
        line.push(b'\n');
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|source| self.connect_error(source))?;
        let io_err = |source| Error::Io {
            socket: self.socket.clone(),
            source,
        };
        let (read, mut write) = stream.into_split();
        write.write_all(&line).await.map_err(io_err)?;
        write.shutdown().await.map_err(io_err)?;
        let mut reader = BufReader::new(read).take(MAX_RESPONSE_BYTES as u64 + 1);
        let mut response = Vec::new();
        reader
            .read_until(b'\n', &mut response)
            .await
            .map_err(io_err)?;
        if response.len() > MAX_RESPONSE_BYTES {
            return Err(self.protocol(format!("response longer than {MAX_RESPONSE_BYTES} bytes")));
        }
        if response.is_empty() {
            return Err(Error::Closed {
                socket: self.socket.clone(),
            });
        }
        match serde_json::from_slice::<Response<T>>(&response) {
            Ok(Response::Ok(body)) => Ok(body),
            Ok(Response::Error(e)) => Err(Error::Api(e)),
            Err(e) => Err(self.protocol(format!(
                "{e}: {}",
                String::from_utf8_lossy(&response[..response.len().min(200)])
            ))),
        }
    }

    fn connect_error(&self, source: io::Error) -> Error {
        let socket = self.socket.clone();
        match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                Error::NotRunning { socket, source }
            }
            io::ErrorKind::PermissionDenied => Error::PermissionDenied { socket, source },
            _ => Error::Io { socket, source },
        }
    }

    fn protocol(&self, reason: String) -> Error {
        Error::Protocol {
            socket: self.socket.clone(),
            reason,
        }
    }

    pub async fn store_image(
        &self,
        name: &str,
        source_dir: impl Into<PathBuf>,
        labels: BTreeMap<String, String>,
        spec_digest: Option<String>,
    ) -> Result<ImageInfo> {
        self.store(name, source_dir.into(), labels, spec_digest, false)
            .await
    }

    /// [`Self::store_image`], replacing an image of that name if there is one.
    pub async fn replace_image(
        &self,
        name: &str,
        source_dir: impl Into<PathBuf>,
        labels: BTreeMap<String, String>,
        spec_digest: Option<String>,
    ) -> Result<ImageInfo> {
        self.store(name, source_dir.into(), labels, spec_digest, true)
            .await
    }

    async fn store(
        &self,
        name: &str,
        source_dir: PathBuf,
        labels: BTreeMap<String, String>,
        spec_digest: Option<String>,
        replace: bool,
    ) -> Result<ImageInfo> {
        self.call(Op::StoreImage {
            name: name.into(),
            source_dir,
            labels,
            spec_digest,
            replace,
        })
        .await
    }

    pub async fn list_images(&self) -> Result<Vec<ImageInfo>> {
        let list: ImageList = self.call(Op::ListImages {}).await?;
        Ok(list.images)
    }

    pub async fn get_image(&self, name: &str) -> Result<ImageInfo> {
        self.call(Op::GetImage { name: name.into() }).await
    }

    pub async fn delete_image(&self, name: &str) -> Result<Deleted> {
        self.call(Op::DeleteImage { name: name.into() }).await
    }

    pub async fn stage_image(&self, name: &str) -> Result<Staged> {
        self.call(Op::StageImage { name: name.into() }).await
    }

    pub async fn unstage_image(&self, name: &str) -> Result<Unstaged> {
        self.call(Op::UnstageImage { name: name.into() }).await
    }

    pub async fn prepare_restore(&self, name: &str, allow_mismatch: bool) -> Result<Prepared> {
        self.call(Op::PrepareRestore {
            name: name.into(),
            allow_mismatch,
        })
        .await
    }

    pub async fn release_restore(&self, lease: &str) -> Result<Released> {
        self.call(Op::ReleaseRestore {
            lease: lease.into(),
        })
        .await
    }

    pub async fn export_image(
        &self,
        name: &str,
        dest: impl Into<PathBuf>,
        zstd_level: Option<i32>,
    ) -> Result<Exported> {
        self.call(Op::ExportImage {
            name: name.into(),
            dest: dest.into(),
            zstd_level,
        })
        .await
    }

    pub async fn import_image(
        &self,
        path: impl Into<PathBuf>,
        name: Option<String>,
    ) -> Result<ImageInfo> {
        self.call(Op::ImportImage {
            path: path.into(),
            name,
        })
        .await
    }

    pub async fn gc(
        &self,
        max_bytes: Option<u64>,
        max_age_secs: Option<u64>,
        dry_run: bool,
    ) -> Result<GcReport> {
        self.call(Op::Gc {
            max_bytes,
            max_age_secs,
            dry_run,
        })
        .await
    }

    pub async fn stats(&self) -> Result<Stats> {
        self.call(Op::Stats {}).await
    }

    /// Reports how a restore went, to be counted (see [`Op::ReportRestore`]): `image`
    /// the stored image when the restore came from the store (`None` for containerd's
    /// own checkpoints), `engine` one of [`RESTORE_ENGINES`], `outcome` one of
    /// [`RESTORE_OUTCOMES`], `reason` a few words (clipped here as the daemon would, see
    /// [`clip_reason`], so that a long error never makes the request too big).
    ///
    /// Like every call it has no deadline of its own: a caller on a latency-sensitive
    /// path should run it in the background or under a timeout.
    pub async fn report_restore(
        &self,
        image: Option<&str>,
        engine: &str,
        outcome: &str,
        reason: Option<&str>,
    ) -> Result<()> {
        let _: Reported = self
            .call(Op::ReportRestore {
                image: image.map(str::to_string),
                engine: engine.into(),
                outcome: outcome.into(),
                reason: reason.and_then(clip_reason),
            })
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::UnixListener;

    use super::*;

    #[tokio::test]
    async fn a_missing_socket_asks_whether_the_daemon_runs() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("restored.sock");
        let e = Client::new(&socket).stats().await.unwrap_err();
        assert!(e.is_unreachable());
        let msg = e.to_string();
        assert!(msg.contains(&socket.display().to_string()), "{msg}");
        assert!(msg.contains("is rekindle-restored running?"), "{msg}");
    }

    #[tokio::test]
    async fn a_refusing_socket_asks_whether_the_daemon_runs() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("restored.sock");
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let e = Client::new(&socket).stats().await.unwrap_err();
        assert!(matches!(e, Error::NotRunning { .. }), "{e:?}");
    }

    async fn serve_once(listener: UnixListener, reply: &'static str) -> String {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        BufReader::new(read).read_line(&mut line).await.unwrap();
        write.write_all(reply.as_bytes()).await.unwrap();
        line
    }

    #[tokio::test]
    async fn one_request_line_and_one_response_line() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("restored.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let server = tokio::spawn(serve_once(
            listener,
            "{\"ok\":{\"name\":\"a\",\"freed_bytes\":7}}\n",
        ));
        let deleted = Client::new(&socket).delete_image("a").await.unwrap();
        assert_eq!(deleted.freed_bytes, 7);
        assert_eq!(
            server.await.unwrap(),
            "{\"v\":1,\"op\":\"delete_image\",\"name\":\"a\"}\n"
        );
    }

    #[tokio::test]
    async fn errors_carry_code_and_message() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("restored.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let server = tokio::spawn(serve_once(
            listener,
            "{\"error\":{\"code\":\"corrupt\",\"message\":\"pages-1.img: checksum mismatch\"}}\n",
        ));
        let e = Client::new(&socket)
            .prepare_restore("a", false)
            .await
            .unwrap_err();
        server.await.unwrap();
        assert_eq!(e.code(), Some(ErrorCode::Corrupt));
        assert!(e.to_string().contains("pages-1.img"), "{e}");
    }

    #[tokio::test]
    async fn restore_reports_are_one_line_with_a_clipped_reason() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("restored.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let server = tokio::spawn(serve_once(listener, "{\"ok\":{}}\n"));
        let long = format!("criu failed:\n{}", "x".repeat(2000));
        Client::new(&socket)
            .report_restore(Some("hello-fn"), "direct", "failed", Some(&long))
            .await
            .unwrap();
        let line = server.await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["op"], "report_restore");
        assert_eq!(v["image"], "hello-fn");
        assert_eq!(v["engine"], "direct");
        assert_eq!(v["outcome"], "failed");
        let reason = v["reason"].as_str().unwrap();
        assert!(reason.starts_with("criu failed: xxx"), "{reason}");
        assert_eq!(reason.len(), MAX_RESTORE_REASON_BYTES);

        let listener = UnixListener::bind(dir.path().join("2.sock")).unwrap();
        let server = tokio::spawn(serve_once(listener, "{\"ok\":{}}\n"));
        Client::new(dir.path().join("2.sock"))
            .report_restore(None, "cold", "ok", None)
            .await
            .unwrap();
        assert_eq!(
            server.await.unwrap(),
            "{\"v\":1,\"op\":\"report_restore\",\"engine\":\"cold\",\"outcome\":\"ok\"}\n"
        );
    }

    #[tokio::test]
    async fn garbage_is_a_protocol_error() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("restored.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let server = tokio::spawn(serve_once(listener, "hello\n"));
        let e = Client::new(&socket).stats().await.unwrap_err();
        server.await.unwrap();
        assert!(matches!(e, Error::Protocol { .. }), "{e:?}");
    }
}
