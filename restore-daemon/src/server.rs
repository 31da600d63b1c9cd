//! The unix socket: one request per connection, a JSON line each way; peer credentials
//! checked; one structured log line per request; graceful stop.

use std::fs;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rekindle_restore_api::{
    parse_request, ApiError, ErrorCode, Op, RequestParseError, Response, MAX_REQUEST_BYTES,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;

use crate::service::{Peer, Service};

/// How long a client may take to send its request line.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stop waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Who may connect besides root.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub allowed_uids: Vec<u32>,
}

impl Access {
    fn allows(&self, uid: u32) -> bool {
        uid == 0 || self.allowed_uids.contains(&uid)
    }
}

/// Binds the socket, mode 0600 (0660 and group `gid` when one is given, for the
/// non-root uids of `allowed_uids`) from its first moment. A stale socket file is replaced;
/// a live one (another daemon answers on it) is an error (see
/// [`rekindle_daemon_kit::socket::bind_private`]).
pub fn bind(path: &Path, gid: Option<u32>) -> io::Result<UnixListener> {
    UnixListener::from_std(rekindle_daemon_kit::socket::bind_private(path, gid)?)
}

/// Serves until `shutdown` completes, then stops accepting, lets the requests in flight
/// finish (for up to 30 s) and removes the socket.
pub async fn serve(
    service: Arc<Service>,
    listener: UnixListener,
    socket: PathBuf,
    access: Access,
    shutdown: impl Future<Output = ()>,
) {
    let access = Arc::new(access);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let service = service.clone();
                    let access = access.clone();
                    tasks.spawn(async move { connection(service, stream, &access).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    if let Err(e) = fs::remove_file(&socket) {
        tracing::warn!(socket = %socket.display(), error = %e, "cannot remove the socket");
    }
    if !tasks.is_empty() {
        tracing::info!(
            in_flight = tasks.len(),
            "stopping: waiting for requests in flight"
        );
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                abandoned = tasks.len(),
                "requests still running after {} s; stopping anyway",
                DRAIN_TIMEOUT.as_secs()
            );
            tasks.abort_all();
        }
    }
}

/// Reads the request line; `Err` is the error response to send.
async fn read_request(
    stream: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
) -> Result<Op, ApiError> {
    let mut line = Vec::new();
    let read = tokio::time::timeout(
        READ_TIMEOUT,
        (&mut *stream)
            .take(MAX_REQUEST_BYTES as u64 + 1)
            .read_until(b'\n', &mut line),
    )
    .await;
    let invalid = |m: String| ApiError::new(ErrorCode::InvalidArgument, m);
    match read {
        Err(_) => {
            return Err(invalid(format!(
                "no request within {} s",
                READ_TIMEOUT.as_secs()
            )))
        }
        Ok(Err(e)) => return Err(invalid(format!("cannot read the request: {e}"))),
        Ok(Ok(_)) => {}
    }
    if line.len() > MAX_REQUEST_BYTES {
        return Err(invalid(format!(
            "request longer than {MAX_REQUEST_BYTES} bytes"
        )));
    }
    let text = std::str::from_utf8(&line).map_err(|_| invalid("request is not UTF-8".into()))?;
    match parse_request(text.trim_end()) {
        Ok(req) => Ok(req.op),
        Err(RequestParseError::Malformed(m)) => Err(invalid(format!("malformed request: {m}"))),
        Err(RequestParseError::Version(m)) => Err(invalid(m)),
    }
}

async fn connection(service: Arc<Service>, stream: UnixStream, access: &Access) {
    let started = Instant::now();
    let cred = stream.peer_cred();
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut op_name = "unknown";
    let mut image: Option<String> = None;
    let mut peer = None;
    let result = async {
        let cred = cred.map_err(|e| {
            ApiError::new(
                ErrorCode::Internal,
                format!("cannot read peer credentials: {e}"),
            )
        })?;
        let p = Peer {
            uid: cred.uid(),
            pid: cred.pid(),
        };
        peer = Some(p);
        if !access.allows(p.uid) {
            return Err(ApiError::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "uid {} may not use rekindle-restored (root and allowed_uids only)",
                    p.uid
                ),
            ));
        }
        let op = read_request(&mut reader).await?;
        op_name = op.name();
        image = op.image_name().map(str::to_string);
        service.handle(op, &p).await
    }
    .await;

    let (line, failure, bytes) = match &result {
        Ok(o) => (serde_json::to_string(&Response::Ok(&o.body)), None, o.bytes),
        Err(e) => (
            serde_json::to_string(&Response::<()>::Error(e.clone())),
            Some(e),
            0,
        ),
    };
    let line = line.unwrap_or_else(|e| {
        format!("{{\"error\":{{\"code\":\"internal\",\"message\":\"cannot encode the response: {e}\"}}}}")
    });
    // Counted before the reply: a client that asks for stats once answered
    // must see its own request.
    service.record(op_name, failure.map(|e| e.code));
    let sent = async {
        write.write_all(line.as_bytes()).await?;
        write.write_all(b"\n").await?;
        write.shutdown().await
    }
    .await;

    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    let uid = peer.map(|p| p.uid);
    let pid = peer.and_then(|p| p.pid);
    let image = image.as_deref().unwrap_or("");
    match failure {
        None => tracing::info!(op = op_name, image, uid, pid, duration_ms, bytes, "ok"),
        Some(e) => tracing::warn!(
            op = op_name, image, uid, pid, duration_ms,
            code = %e.code, error = %e.message, "failed"
        ),
    }
    if let Err(e) = sent {
        tracing::warn!(op = op_name, error = %e, "cannot send the response");
    }
}
