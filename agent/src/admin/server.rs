//! The admin API's server: the socket (root-only from its first moment), the peer check,
//! the routes, each carried out through the pool manager's public API.

use std::collections::HashSet;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::UnixListener;
use tokio::sync::watch;

use super::{
    parse_function, tier_latencies, validate_function, ApiError, CheckpointDone, CheckpointRequest,
    FunctionSpecView, FunctionStatus, ImageStatus, InstanceStatus, InvokeDone, InvokeRequest,
    Memory, NodeStatus, Removed, RestoredStatus, Tiers, MAX_BODY_BYTES,
};
use crate::pool::manager::PoolManager;
use crate::pool::{ImageState, Loaded, STAGED_MEMORY_FACTOR};
use crate::Error;

type Body = Full<Bytes>;

/// How long status and add wait for rekindle-restored before answering without it.
const RESTORED_TIMEOUT: Duration = Duration::from_secs(3);

/// How long `DELETE /v1/functions/<name>` lets the function's requests and starts in
/// flight end before it stops its instances anyway.
const REMOVE_GRACE: Duration = Duration::from_secs(60);

/// Which peers are served: uid 0 only in the agent; tests name others to see refusals.
#[derive(Debug, Clone)]
pub struct Access {
    pub uids: Vec<u32>,
}

impl Default for Access {
    fn default() -> Self {
        Access { uids: vec![0] }
    }
}

impl Access {
    fn allows(&self, uid: u32) -> bool {
        self.uids.contains(&uid)
    }
}

/// What the routes work on.
pub struct AdminState {
    pub pool: PoolManager,
    pub restored_socket: PathBuf,
    pub memory_budget_mb: Option<u64>,
    /// The pool policy's name, for status.
    pub policy: String,
    /// Functions registered through the API (the others come from agent.toml), kept in
    /// `functions_dir` across restarts.
    added: Mutex<HashSet<String>>,
    functions_dir: Option<PathBuf>,
}

impl AdminState {
    pub fn new(
        pool: PoolManager,
        restored_socket: PathBuf,
        memory_budget_mb: Option<u64>,
        policy: String,
    ) -> Self {
        AdminState {
            pool,
            restored_socket,
            memory_budget_mb,
            policy,
            added: Mutex::new(HashSet::new()),
            functions_dir: None,
        }
    }

    /// Keeps the functions the API registers in `dir` (see [`super::persist`]);
    /// `persisted` are those read back from it at start-up.
    pub fn with_functions_dir(mut self, dir: PathBuf, persisted: &[String]) -> Self {
        self.functions_dir = Some(dir);
        self.added = Mutex::new(persisted.iter().cloned().collect());
        self
    }

    fn functions(&self) -> Vec<FunctionStatus> {
        let snaps = self.pool.snapshot();
        let added = self.added.lock().unwrap().clone();
        self.pool
            .functions()
            .into_iter()
            .filter_map(|cfg| {
                let p = snaps.iter().find(|p| p.function == cfg.name)?;
                let mib = (cfg.memory_mb as f64) * 1_048_576.0;
                let staged = p.image == ImageState::Staged;
                // What the pool counts against the budget (FunctionView::memory_now).
                let memory = (p.hot + p.warm + p.starting) as f64 * mib
                    + if staged {
                        mib * STAGED_MEMORY_FACTOR
                    } else {
                        0.0
                    };
                let api = added.contains(&cfg.name);
                Some(FunctionStatus {
                    name: cfg.name.clone(),
                    source: if api { "api" } else { "config" }.into(),
                    persisted: !api || self.functions_dir.is_some(),
                    spec: FunctionSpecView::from(&cfg),
                    instances: Tiers {
                        hot: p.hot,
                        warm: p.warm,
                        staged: staged as u32,
                    },
                    busy: p.busy,
                    starting: p.starting,
                    image: p.image.into(),
                    targets: Tiers {
                        hot: p.plan.targets.hot,
                        warm: p.plan.targets.warm,
                        staged: p.plan.targets.staged as u32,
                    },
                    memory_bytes: memory as u64,
                })
            })
            .collect()
    }

    async fn status(&self) -> NodeStatus {
        let functions = self.functions();
        let instances = self
            .pool
            .instances()
            .into_iter()
            .map(|i| InstanceStatus {
                function: i.function,
                id: i.id,
                tier: match i.loaded {
                    Loaded::Hot => "hot",
                    Loaded::Warm => "warm",
                }
                .into(),
                busy: i.busy,
                idle_secs: i.idle_secs,
                restored_from: i.restored_from,
            })
            .collect();
        let client = rekindle_restore_api::Client::new(&self.restored_socket);
        let listed = tokio::time::timeout(RESTORED_TIMEOUT, client.list_images()).await;
        let (restored, images) = match listed {
            Ok(Ok(all)) => {
                let images = all
                    .iter()
                    .filter_map(|i| {
                        let f = functions
                            .iter()
                            .find(|f| f.spec.store_as == i.manifest.name)?;
                        Some(ImageStatus {
                            name: i.manifest.name.clone(),
                            function: f.name.clone(),
                            staged: i.staged,
                            size_bytes: i.manifest.total_size,
                            compressed_bytes: i.manifest.total_compressed_size,
                            created_unix: i.manifest.created_unix,
                        })
                    })
                    .collect();
                let r = RestoredStatus {
                    socket: self.restored_socket.display().to_string(),
                    reachable: true,
                    error: None,
                    images_total: all.len() as u64,
                    images_staged: all.iter().filter(|i| i.staged).count() as u64,
                };
                (r, images)
            }
            Ok(Err(e)) => (self.restored_down(e.to_string()), Vec::new()),
            Err(_) => (
                self.restored_down(format!("no answer within {} s", RESTORED_TIMEOUT.as_secs())),
                Vec::new(),
            ),
        };
        let starts: Vec<_> = self
            .pool
            .recent_starts()
            .into_iter()
            .map(|s| (s.tier, s.latency_secs))
            .collect();
        NodeStatus {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_secs: self.pool.uptime_secs(),
            policy: self.policy.clone(),
            memory: Memory {
                budget_bytes: self.memory_budget_mb.map(|m| m << 20),
                used_bytes: functions.iter().map(|f| f.memory_bytes).sum(),
            },
            functions,
            instances,
            images,
            restored,
            fast_path: self.pool.fast_path(),
            start_latencies: tier_latencies(&starts),
        }
    }

    fn restored_down(&self, error: String) -> RestoredStatus {
        RestoredStatus {
            socket: self.restored_socket.display().to_string(),
            reachable: false,
            error: Some(error),
            images_total: 0,
            images_staged: 0,
        }
    }

    async fn add(&self, body: &[u8]) -> Result<FunctionStatus, ApiError> {
        let cfg = parse_function(body)?;
        validate_function(&cfg, &self.pool.functions(), self.memory_budget_mb)?;
        // Written first: a function the agent serves is one it will serve after a
        // restart too.
        if let Some(dir) = &self.functions_dir {
            let path = super::persist::save(dir, &cfg).map_err(|e| {
                ApiError::Failed(format!(
                    "cannot keep function {:?} in {}: {e}: nothing was registered",
                    cfg.name,
                    dir.display()
                ))
            })?;
            tracing::info!(function = %cfg.name, path = %path.display(), "function kept");
        }
        if let Err(e) = self.pool.add_function(cfg.clone()) {
            if let Some(dir) = &self.functions_dir {
                let _ = super::persist::remove(dir, &cfg.name);
            }
            return Err(e.into());
        }
        self.added.lock().unwrap().insert(cfg.name.clone());
        // As at start-up: an image already in the store makes the next start a restore.
        let client = rekindle_restore_api::Client::new(&self.restored_socket);
        match tokio::time::timeout(RESTORED_TIMEOUT, client.get_image(cfg.store_as())).await {
            Ok(Ok(info)) => self.pool.set_image(&cfg.name, info.staged),
            Ok(Err(e)) => {
                tracing::debug!(function = %cfg.name, error = %e, "no stored image yet")
            }
            Err(_) => tracing::warn!(function = %cfg.name, "rekindle-restored did not answer"),
        }
        tracing::info!(
            function = %cfg.name,
            image_ref = %cfg.image_ref,
            persisted = self.functions_dir.is_some(),
            "function added through the admin API"
        );
        self.functions()
            .into_iter()
            .find(|f| f.name == cfg.name)
            .ok_or_else(|| ApiError::NotFound(format!("{:?} was removed meanwhile", cfg.name)))
    }

    async fn remove(&self, name: &str) -> Result<Removed, ApiError> {
        let n = self.pool.remove_function(name, REMOVE_GRACE).await?;
        let was_api = self.added.lock().unwrap().remove(name);
        if let (true, Some(dir)) = (was_api, &self.functions_dir) {
            if let Err(e) = super::persist::remove(dir, name) {
                // Removed now; it would come back at the next start.
                return Err(ApiError::Failed(format!(
                    "function {name:?} removed, but its file in {} could not be: {e}: \
                     remove {} by hand or it is registered again at the next start",
                    dir.display(),
                    super::persist::path_of(dir, name).display()
                )));
            }
        }
        Ok(Removed {
            name: name.to_string(),
            instances_stopped: n,
        })
    }

    async fn checkpoint(&self, name: &str, body: &[u8]) -> Result<CheckpointDone, ApiError> {
        let req: CheckpointRequest = parse_optional(body)?;
        let c = self
            .pool
            .checkpoint(name, req.instance.as_deref(), req.keep_running, req.replace)
            .await?;
        Ok(CheckpointDone {
            function: name.to_string(),
            instance: c.instance,
            image: c.image,
            kept_running: c.kept_running,
            secs: c.secs,
        })
    }

    async fn invoke(&self, name: &str, body: &[u8]) -> Result<InvokeDone, ApiError> {
        let req: InvokeRequest = parse_optional(body)?;
        let limits = self
            .pool
            .gateway_limits(name)
            .ok_or_else(|| ApiError::NotFound(format!("no function {name:?} is registered")))?;
        let (method, path) = req.target(&limits.invoke_path)?;
        let body = Bytes::from(req.body.unwrap_or_default());
        if body.len() > limits.max_body_bytes {
            return Err(ApiError::BadRequest(format!(
                "the request body ({} bytes) exceeds {name:?}'s max_body_bytes ({})",
                body.len(),
                limits.max_body_bytes
            )));
        }
        let mut headers = hyper::HeaderMap::new();
        if !body.is_empty() {
            let json = serde_json::from_slice::<serde_json::Value>(&body).is_ok();
            headers.insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(if json {
                    "application/json"
                } else {
                    "application/octet-stream"
                }),
            );
        }
        let began = Instant::now();
        // The gateway's own path: admission and queueing, then hot → warm → restore →
        // cold, with its accounting.
        let served = self
            .pool
            .forward(
                name,
                crate::driver::ForwardRequest {
                    method,
                    path,
                    headers,
                    body,
                },
            )
            .await?;
        if served.tier.starts_instance() {
            // As the gateway does: the end of the instance's start-up timeline.
            self.pool.metrics().node.first_response(
                &served.instance,
                served.tier,
                rekindle::bpf::monotonic_ns(),
            );
        }
        let r = served.response;
        Ok(InvokeDone {
            function: name.to_string(),
            status: r.status.as_u16(),
            tier: served.tier.name().into(),
            instance: served.instance,
            secs: began.elapsed().as_secs_f64(),
            start_secs: served.start.map(|d| d.as_secs_f64()),
            queued_secs: served.queued.map(|d| d.as_secs_f64()),
            content_type: r
                .headers
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            body: String::from_utf8_lossy(&r.body).into_owned(),
        })
    }
}

/// An optional JSON body: empty means the defaults.
fn parse_optional<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("bad request body: {e}")))
}

fn json<T: Serialize>(status: u16, value: &T) -> Response<Body> {
    let (status, bytes) = match serde_json::to_vec_pretty(value) {
        Ok(mut b) => {
            b.push(b'\n');
            (status, b)
        }
        Err(e) => (
            500,
            format!(
                "{{\"error\":{{\"code\":\"internal\",\"message\":\"cannot encode the answer: {e}\"}}}}\n"
            )
            .into_bytes(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .expect("a valid response")
}

fn error(e: &ApiError) -> Response<Body> {
    json(e.status(), &e.body())
}

fn answer<T: Serialize>(status: u16, r: Result<T, ApiError>) -> Response<Body> {
    match r {
        Ok(v) => json(status, &v),
        Err(e) => error(&e),
    }
}

const ROUTES: &str = "GET /v1/status, GET|POST /v1/functions, GET|DELETE /v1/functions/<name>, \
                      POST /v1/functions/<name>/checkpoint, POST /v1/functions/<name>/invoke";

async fn route(state: Arc<AdminState>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error(&ApiError::BadRequest(format!(
                "cannot read the request body (at most {MAX_BODY_BYTES} bytes): {e}"
            )))
        }
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let wrong_method = || {
        error(&ApiError::NotFound(format!(
            "{method} {path}: no such route; the API has {ROUTES}"
        )))
    };
    match parts.as_slice() {
        ["v1", "status"] => match method {
            Method::GET => json(200, &state.status().await),
            _ => wrong_method(),
        },
        ["v1", "functions"] => match method {
            Method::GET => json(200, &state.functions()),
            Method::POST => answer(201, state.add(&body).await),
            _ => wrong_method(),
        },
        ["v1", "functions", name] => match method {
            Method::GET => match state.functions().into_iter().find(|f| f.name == *name) {
                Some(f) => json(200, &f),
                None => error(&ApiError::NotFound(format!(
                    "no function {name:?} is registered"
                ))),
            },
            Method::DELETE => answer(200, state.remove(name).await),
            _ => wrong_method(),
        },
        ["v1", "functions", name, "checkpoint"] if method == Method::POST => {
            answer(200, state.checkpoint(name, &body).await)
        }
        ["v1", "functions", name, "invoke"] if method == Method::POST => {
            answer(200, state.invoke(name, &body).await)
        }
        _ => wrong_method(),
    }
}

/// Binds the admin socket at `path`, root-only from its first moment; a stale one (left by a
/// dead agent) is replaced, a live one or any other file there is an error (see
/// [`rekindle_daemon_kit::socket::bind_private`]).
pub fn bind(path: &Path) -> Result<UnixListener, Error> {
    let io = |source| Error::Io {
        what: format!("admin socket {}", path.display()),
        source,
    };
    UnixListener::from_std(rekindle_daemon_kit::socket::bind_private(path, None).map_err(io)?)
        .map_err(io)
}

/// Whether the peer on `stream` may use the API (SO_PEERCRED), with its uid and pid.
fn peer(stream: &tokio::net::UnixStream, access: &Access) -> (bool, Option<u32>, Option<i32>) {
    match stream.peer_cred() {
        Ok(c) => (access.allows(c.uid()), Some(c.uid()), c.pid()),
        Err(e) => {
            tracing::warn!(error = %e, "admin socket: cannot read the peer's credentials");
            (false, None, None)
        }
    }
}

/// Serves the API on `listener` until `stop` turns true, then removes the socket at
/// `path`. Requests in flight finish on their own (the pool's shutdown waits for their
/// operations).
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    state: Arc<AdminState>,
    access: Access,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => break,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin socket: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (allowed, uid, pid) = peer(&stream, &access);
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move {
                    let began = Instant::now();
                    let (method, path) = (req.method().clone(), req.uri().path().to_string());
                    let resp = if allowed {
                        route(state, req).await
                    } else {
                        error(&ApiError::Forbidden(match uid {
                            Some(u) => format!(
                                "uid {u} may not use rekindle-agent's admin API: root only \
                                 (run it with sudo)"
                            ),
                            None => "the peer's credentials cannot be read: refused".into(),
                        }))
                    };
                    let status = resp.status().as_u16();
                    let ms = began.elapsed().as_secs_f64() * 1000.0;
                    if status < 400 {
                        tracing::info!(%method, path, status, uid, pid, ms, "admin request");
                    } else {
                        tracing::warn!(%method, path, status, uid, pid, ms, "admin request refused or failed");
                    }
                    Ok::<_, Infallible>(resp)
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
        if *stop.borrow() {
            break;
        }
    }
    drop(listener);
    if let Err(e) = std::fs::remove_file(&path) {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove the admin socket");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_allowed_uids_are_served() {
        let (a, _b) = tokio::net::UnixStream::pair().unwrap();
        let me = unsafe { libc::geteuid() };
        let (ok, uid, pid) = peer(&a, &Access { uids: vec![me] });
        assert!(ok);
        assert_eq!(uid, Some(me));
        assert_eq!(pid, Some(std::process::id() as i32));
        let (ok, ..) = peer(&a, &Access { uids: vec![me + 1] });
        assert!(!ok);
        assert_eq!(Access::default().uids, [0]);
    }

    #[test]
    fn the_socket_is_root_only_and_a_live_one_is_named_in_the_error() {
        // The rules themselves (stale replaced, files left alone) are daemon-kit's tests.
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/admin.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let _l = bind(&path).unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            let e = bind(&path).unwrap_err().to_string();
            assert!(
                e.contains("admin socket") && e.contains("a live process listens"),
                "{e}"
            );
        });
    }
}
