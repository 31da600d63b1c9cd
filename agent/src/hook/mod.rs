//! The scheduler hook: the gRPC service `rekindle.v1.SchedulerHook`
//! (`agent/proto/rekindle/v1/hook.proto`) a cluster scheduler consults per placement, with
//! `grpc.health.v1.Health` and server reflection (v1 and v1alpha), so `grpcurl` works
//! without the .proto.
//!
//! It listens on the agent's `hook_socket` (a unix socket, mode 0600: a stale socket left
//! by a dead agent is removed, one a live process answers on is an error) and, when
//! `hook_addr` is set, on that TCP address too: with mutual TLS when `[hook_tls]` gives
//! the hook's certificate and key and the CA client certificates must chain to
//! ([`server_tls`], [`client_tls`]), else in plaintext. The answers are pure
//! functions of a [`NodeSnapshot`] ([`placement`]); the agent's snapshots come from its
//! pool manager ([`PoolSource`]), tests give their own ([`SnapshotSource`]).

pub mod extender;
pub mod placement;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream, UnixListenerStream};
use tonic::{Request, Response, Status};

use crate::config::{Config, HookTls};
use crate::pool::manager::PoolManager;
use crate::sim::LatencyTable;
use crate::Error;

pub use placement::{FunctionSnapshot, NodeSnapshot};

/// The generated types and service of `rekindle.v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("rekindle.v1");

    /// The encoded file descriptor set of `rekindle.v1` (for reflection).
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("rekindle_v1_descriptor");
}

/// The gRPC service name, as health checks name it.
pub const SERVICE_NAME: &str = "rekindle.v1.SchedulerHook";

/// Where the node's state comes from.
pub trait SnapshotSource: Send + Sync + 'static {
    fn snapshot(&self) -> NodeSnapshot;
}

/// A fixed snapshot (tests, tools), changeable through the sender.
impl SnapshotSource for watch::Receiver<NodeSnapshot> {
    fn snapshot(&self) -> NodeSnapshot {
        self.borrow().clone()
    }
}

/// The agent's pools, with each function's memory from the configuration, the budget, and
/// (without a budget) the kernel's MemAvailable.
pub struct PoolSource {
    pool: PoolManager,
    memory_mb: HashMap<String, f64>,
    budget_bytes: Option<u64>,
    cpu_millis: Option<u64>,
}

impl PoolSource {
    pub fn new(pool: PoolManager, config: &Config) -> Self {
        PoolSource {
            pool,
            memory_mb: config
                .functions
                .iter()
                .map(|f| (f.name.clone(), f.memory_mb as f64))
                .collect(),
            budget_bytes: config.memory_budget_mb.map(|m| m * 1024 * 1024),
            cpu_millis: std::thread::available_parallelism()
                .ok()
                .map(|n| n.get() as u64 * 1000),
        }
    }
}

impl SnapshotSource for PoolSource {
    fn snapshot(&self) -> NodeSnapshot {
        NodeSnapshot {
            functions: self
                .pool
                .snapshot()
                .into_iter()
                .map(|p| FunctionSnapshot {
                    memory_mb: self.memory_mb.get(&p.function).copied().unwrap_or(0.0),
                    function: p.function,
                    hot: p.hot,
                    warm: p.warm,
                    busy: p.busy,
                    starting: p.starting,
                    image: p.image,
                })
                .collect(),
            memory_budget_bytes: self.budget_bytes,
            available_bytes: match self.budget_bytes {
                Some(_) => None,
                None => mem_available(),
            },
            cpu_capacity_millis: self.cpu_millis,
        }
    }
}

/// `MemAvailable` of /proc/meminfo, bytes.
fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// How the service runs.
#[derive(Clone)]
pub struct HookOptions {
    /// `WatchNode` sends at least this often, even without a change.
    pub watch_interval: Duration,
    /// How often `WatchNode` looks for a change.
    pub watch_poll: Duration,
}

impl Default for HookOptions {
    fn default() -> Self {
        HookOptions {
            watch_interval: Duration::from_secs(5),
            watch_poll: Duration::from_millis(250),
        }
    }
}

/// The `SchedulerHook` service.
#[derive(Clone)]
pub struct Hook {
    source: Arc<dyn SnapshotSource>,
    latencies: Arc<LatencyTable>,
    opts: HookOptions,
}

impl Hook {
    pub fn new(
        source: Arc<dyn SnapshotSource>,
        latencies: LatencyTable,
        opts: HookOptions,
    ) -> Self {
        Hook {
            source,
            latencies: Arc::new(latencies),
            opts,
        }
    }

    fn state(&self) -> pb::NodeState {
        placement::node_state(&self.source.snapshot(), &self.latencies)
    }
}

type StateStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::NodeState, Status>> + Send>>;

#[tonic::async_trait]
impl pb::scheduler_hook_server::SchedulerHook for Hook {
    async fn placement(
        &self,
        request: Request<pb::PlacementRequest>,
    ) -> Result<Response<pb::PlacementResponse>, Status> {
        let req = request.into_inner();
        if req.function.is_empty() {
            return Err(Status::invalid_argument("function is empty"));
        }
        let r = placement::placement(&self.source.snapshot(), &self.latencies, &req);
        tracing::debug!(function = %req.function, tier = r.tier, score = r.score, "placement");
        Ok(Response::new(r))
    }

    type WatchNodeStream = StateStream;

    async fn watch_node(
        &self,
        _request: Request<pb::WatchRequest>,
    ) -> Result<Response<StateStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let hook = self.clone();
        tokio::spawn(async move {
            let mut last: Option<pb::NodeState> = None;
            let mut sent_at = tokio::time::Instant::now();
            loop {
                let state = hook.state();
                let due = sent_at.elapsed() >= hook.opts.watch_interval;
                if last.as_ref() != Some(&state) || due {
                    let mut out = state.clone();
                    out.generated_at = Some(prost_types::Timestamp::from(SystemTime::now()));
                    if tx.send(Ok(out)).await.is_err() {
                        return; // the client went away
                    }
                    last = Some(state);
                    sent_at = tokio::time::Instant::now();
                }
                tokio::select! {
                    _ = tokio::time::sleep(hook.opts.watch_poll) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Where the hook listens.
#[derive(Debug, Clone, PartialEq)]
pub enum Listen {
    /// A unix socket, mode 0600.
    Unix(PathBuf),
    /// A TCP address (mutual TLS with [`serve_with`]).
    Tcp(SocketAddr),
}

/// A bound listener, ready for [`serve`].
pub enum Bound {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

impl Bound {
    /// Binds `at` (see [`bind_unix`] for the unix socket's rules).
    pub async fn bind(at: &Listen) -> Result<Bound, Error> {
        match at {
            Listen::Unix(p) => Ok(Bound::Unix(bind_unix(p)?, p.clone())),
            Listen::Tcp(a) => {
                TcpListener::bind(a)
                    .await
                    .map(Bound::Tcp)
                    .map_err(|e| Error::Listen {
                        what: "hook_addr",
                        addr: *a,
                        source: e,
                    })
            }
        }
    }

    /// The TCP address actually bound (port 0: the system's choice).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Bound::Tcp(l) => l.local_addr().ok(),
            Bound::Unix(..) => None,
        }
    }
}

/// Binds the hook's unix socket at `path`, mode 0600 from its first moment; a stale one
/// (left by a dead agent) is replaced, a live one or any other file there is an error (see
/// [`rekindle_daemon_kit::socket::bind_private`]).
pub fn bind_unix(path: &Path) -> Result<UnixListener, Error> {
    let io = |source| Error::Io {
        what: format!("hook socket {}", path.display()),
        source,
    };
    UnixListener::from_std(rekindle_daemon_kit::socket::bind_private(path, None).map_err(io)?)
        .map_err(io)
}

/// Serves the hook, health (`SchedulerHook` and the server, "", SERVING; NOT_SERVING once
/// `stop` turns true) and reflection on `bound` until `stop` turns true; then removes the
/// unix socket.
pub async fn serve(bound: Bound, hook: Hook, stop: watch::Receiver<bool>) {
    serve_with(bound, hook, None, stop).await
}

/// [`serve`], with TLS on a TCP listener (`tls` is ignored on a unix socket).
pub async fn serve_with(
    bound: Bound,
    hook: Hook,
    tls: Option<tonic::transport::ServerTlsConfig>,
    mut stop: watch::Receiver<bool>,
) {
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::scheduler_hook_server::SchedulerHookServer<Hook>>()
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    fn reflection() -> tonic_reflection::server::Builder<'static> {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    }
    let (v1, v1alpha) = match (reflection().build_v1(), reflection().build_v1alpha()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "the hook's reflection service cannot be built");
            return;
        }
    };
    let mut builder = tonic::transport::Server::builder();
    if let (Some(tls), Bound::Tcp(_)) = (tls, &bound) {
        builder = match builder.tls_config(tls) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "the hook's TLS configuration is invalid");
                return;
            }
        };
    }
    let router = builder
        .add_service(health_service)
        .add_service(v1)
        .add_service(v1alpha)
        .add_service(pb::scheduler_hook_server::SchedulerHookServer::new(hook));
    let shutdown = {
        let health = health.clone();
        async move {
            while !*stop.borrow_and_update() {
                if stop.changed().await.is_err() {
                    break;
                }
            }
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            health
                .set_not_serving::<pb::scheduler_hook_server::SchedulerHookServer<Hook>>()
                .await;
        }
    };
    let r = match bound {
        Bound::Unix(l, path) => {
            // Mode 0600 keeps others from connecting; the peer's credentials are checked
            // as well (a socket whose mode was changed, or passed on): root, or the
            // agent's own user.
            // SAFETY: geteuid(2) cannot fail and touches no memory.
            let me = unsafe { libc::geteuid() };
            let incoming =
                tokio_stream::StreamExt::filter(UnixListenerStream::new(l), move |c| match c {
                    Ok(stream) => peer_allowed(stream, me),
                    Err(_) => true,
                });
            let r = router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await;
            let _ = std::fs::remove_file(&path);
            r
        }
        Bound::Tcp(l) => {
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(l), shutdown)
                .await
        }
    };
    if let Err(e) = r {
        tracing::error!(error = %e, "the scheduler hook stopped");
    }
}

/// Whether the peer on a hook connection may use it: uid 0 or `me` (SO_PEERCRED). A
/// refused connection is logged and dropped.
fn peer_allowed(stream: &tokio::net::UnixStream, me: u32) -> bool {
    match stream.peer_cred() {
        Ok(c) if c.uid() == 0 || c.uid() == me => true,
        Ok(c) => {
            tracing::warn!(
                uid = c.uid(),
                pid = ?c.pid(),
                "hook socket: refused a connection from a user that is neither root nor the agent's"
            );
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "hook socket: cannot read the peer's credentials: refused");
            false
        }
    }
}

/// Reads PEM files: the hook's identity, and the CA client certificates must chain to
/// (mutual TLS: a client without a valid certificate is refused).
pub fn server_tls(t: &HookTls) -> Result<tonic::transport::ServerTlsConfig, Error> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| Error::Io {
            what: format!("reading {} (hook_tls)", p.display()),
            source: e,
        })
    };
    Ok(tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            read(&t.cert)?,
            read(&t.key)?,
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(read(&t.client_ca)?)))
}

/// A client's side of the hook's mutual TLS, from PEM: the CA the hook's certificate
/// chains to, the client's certificate and key, and the name the hook's certificate is
/// for.
pub fn client_tls(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
    domain: &str,
) -> tonic::transport::ClientTlsConfig {
    tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
        .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem))
        .domain_name(domain)
}

/// The agent's hook: binds `config.hook_socket` (and `config.hook_addr`, with
/// `config.hook_tls`) and serves the pools' state, with the tier latencies the pool
/// policy plans with. Returns the serving task.
pub async fn start(
    config: &Config,
    pool: &PoolManager,
    latencies: &LatencyTable,
    stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let tls = config.hook_tls.as_ref().map(server_tls).transpose()?;
    let tcp = match config.hook_addr {
        Some(a) => Some(Bound::bind(&Listen::Tcp(a)).await?),
        None => None,
    };
    let bound = Bound::bind(&Listen::Unix(config.hook_socket.clone())).await?;
    let source = Arc::new(PoolSource::new(pool.clone(), config));
    let hook = Hook::new(source, latencies.clone(), HookOptions::default());
    tracing::info!(
        socket = %config.hook_socket.display(),
        latencies = %latencies.source,
        "scheduler hook listening"
    );
    let mut tasks = vec![tokio::spawn(serve(bound, hook.clone(), stop.clone()))];
    if let Some(tcp) = tcp {
        let addr = tcp.local_addr();
        if tls.is_some() {
            tracing::info!(addr = ?addr, "scheduler hook listening on TCP, mutual TLS");
        } else {
            tracing::warn!(
                addr = ?addr,
                "scheduler hook listening on TCP in plaintext (no [hook_tls]): anyone who \
                 reaches it can read the node's pools"
            );
        }
        tasks.push(tokio::spawn(serve_with(tcp, hook, tls, stop)));
    }
    Ok(tokio::spawn(async move {
        for t in tasks {
            let _ = t.await;
        }
    }))
}

/// A channel to a hook (or any gRPC server) on a unix socket.
pub async fn connect_unix(
    path: &Path,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    tonic::transport::Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
}
