//! `rekindle-agent`, the per-node daemon: its command line and entry point.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{self, Config, LogFormat};
use crate::driver::{ContainerdDriver, InstanceDriver};
use crate::metrics::Metrics;
use crate::pool::manager::{PoolManager, PoolOptions};
use crate::sim::RunOptions;
use crate::{logging, Error};

const ABOUT: &str = "Rekindle's per-node agent: keeps function instances hot, warm, staged or \
                     cold, and tells the scheduler where a function starts fastest";

const LONG_ABOUT: &str = "\
Rekindle's per-node agent. It turns the cold start of a function container into a restore
of an already-initialised checkpoint by keeping the right number of instances of each
function in the right tier.

What it does now (one agent per node, next to containerd and rekindle-restored):
  - pools: per function registered in the configuration ([[function]]), instances hot
    (running), warm (frozen in the cgroup freezer), staged (checkpoint decompressed in
    memory by rekindle-restored) or cold (checkpoint on disk, or no image yet); a cold-
    started instance is checkpointed into the store so the next start is a restore;
  - forecaster and policy: every reconcile interval the pool policy (the same code
    rekindle-sim replays: rekindle, hybrid or fixed) plans each function's keep-alive ladder and
    targets from the arrivals it saw, and the agent moves the pools there, within the
    node's memory budget (least recently invoked function released first);
  - what feeds it, measured live: each request's duration (its predicted execution
    time, IQR-filtered, sizes the hot target: rate x time x buffer), the gaps between
    arrivals (the keep-alive ladder), the memory of each function's instances (p90 per
    instance, charged in the budget when above memory_mb), and the node's pressure
    (PSI: at pressure_cpu_pct / pressure_memory_pct pre-warm loads, warm-target starts
    and stages wait; hot targets still start);
  - Prometheus /metrics on --metrics-addr: rekindle_starts_total{function,tier},
    rekindle_start_failures_total{function,tier,reason},
    rekindle_start_latency_seconds{tier}, rekindle_pool_instances{function,tier},
    rekindle_pool_target{function,tier}, rekindle_pool_actions_total;
  - invoke gateway (--gateway-addr; edge boxes without Kubernetes):
    POST /invoke/<function> (to its invoke_path) or any method on
    /invoke/<function>/<path> (passthrough) is served by an idle hot instance, else a
    warm one (thawed), else a restore (staged image, then disk), else a cold start,
    within max_instances; past it the request waits in a queue (max_queue,
    max_queue_wait_secs), then gets 503 with Retry-After (rekindle_gateway_refused_total).

  - eBPF node metrics per function (CPU, run-queue latency, page faults, exec/exit;
    memory from the cgroups) in /metrics; if BPF cannot load, the agent says so, sets
    rekindle_bpf_loaded 0 and goes on with cgroup statistics;
  - scheduler hook: gRPC rekindle.v1.SchedulerHook (Placement, WatchNode),
    grpc.health.v1 and reflection on --hook-socket, or on hook_addr (TCP) with
    mutual TLS from [hook_tls] cert/key/client_ca;
  - admin API for operators on --admin-socket (HTTP/JSON on a unix socket, mode 0600,
    root peers only): node status, functions registered or removed while running,
    checkpoint on request, invoke; the `rekindle` CLI speaks it, and so does
    `curl --unix-socket /run/rekindle/admin.sock http://agent/v1/status`.

SIGTERM or SIGINT stops every instance the agent started, then it exits 0. Killed
instead (SIGKILL, a crash), it leaves its instances running: started again with the same
agent_id, it adopts the ones that still answer (hot; frozen ones warm) and removes the
rest before its first reconcile.";

const AFTER_LONG_HELP: &str = "\
Configuration file (TOML; every key optional, command-line options win over it):
  metrics_addr = \"127.0.0.1:9464\"
  hook_socket = \"/run/rekindle/agent.sock\"       # the scheduler hook (gRPC)
  admin_socket = \"/run/rekindle/admin.sock\"      # the admin API (`rekindle` CLI), root only
  restored_socket = \"/run/rekindle/restored.sock\"
  containerd_address = \"/run/containerd/containerd.sock\"
  containerd_namespace = \"k8s.io\"
  agent_id = \"default\"                 # label on its containers; a restart adopts them
  functions_dir = \"/var/lib/rekindle/functions\"   # `rekindle functions add` kept here
  gateway_addr = \"127.0.0.1:8080\"      # unset: no invoke gateway
  log_format = \"text\"                  # or \"json\"
  policy = \"rekindle\"                  # or \"hybrid\", \"fixed\"
  tier_latencies = \"/var/lib/rekindle/restore.json\"   # this node's bench-results/restore.json
  reconcile_interval_ms = 1000
  time_scale = 1.0                     # policy seconds per real second
  memory_budget_mb = 4096              # unset: no budget
  max_parallel_starts = 2
  pressure_cpu_pct = 90                # PSI /proc/pressure/cpu \"some\" avg10 at which
  pressure_memory_pct = 20             #   (or memory's) speculative pool work waits; >100: never
  snapshotter = \"overlayfs\"
  runc_root = \"/run/containerd/runc/k8s.io\"   # unset: the runtime's default
  netns_dir = \"/run/netns\"
  instance_log_dir = \"/var/log/rekindle/instances\"

  [[function]]                         # one per function
  name = \"hello\"                       # POST /invoke/hello, ANY /invoke/hello/<path>
  image_ref = \"docker.io/rekindle/python-fn:latest\"
  port = 8080                          # given to it as $PORT
  env = [\"STATE_MB=64\"]
  memory_mb = 256                      # cgroup limit; what the budget counts
  cpu_shares = 512
  store_as = \"hello\"                   # its checkpoint image's name (default: name)
  netns = \"own\"                        # or \"host\" (then max_instances = 1)
  ready_path = \"/healthz\"
  min_instances = 0                    # hot, whatever the policy says
  max_instances = 10
  keep_alive_min_secs = 0              # bounds on the policy's keep-alive window
  keep_alive_max_secs = 600
  invoke_timeout_secs = 30             # queueing and start included
  invoke_path = \"/invoke\"              # where POST /invoke/hello goes
  max_body_bytes = 6291456             # 413 past it
  max_response_bytes = 6291456         # 502 past it
  max_queue = 64                       # requests waiting while max_instances are busy
  max_queue_wait_secs = 10             # then 503 (queue_full / queue_timeout)

Environment:
  RUST_LOG   log filter (tracing-subscriber EnvFilter syntax), default \"info\"

Exit status:
  0 stopped by SIGTERM/SIGINT, 2 bad command line, 69 containerd or a listen address
  unavailable, 78 bad configuration";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "rekindle-agent",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_long_help = AFTER_LONG_HELP
)]
pub struct Cli {
    /// Configuration file (TOML). A missing file is fine at the default path, an error
    /// when named explicitly.
    #[arg(long, value_name = "FILE", default_value = config::DEFAULT_CONFIG)]
    pub config: PathBuf,

    /// Address of the Prometheus /metrics endpoint.
    #[arg(long, value_name = "ADDR", default_value = config::DEFAULT_METRICS_ADDR)]
    pub metrics_addr: SocketAddr,

    /// Unix socket of the scheduler hook (gRPC).
    #[arg(long, value_name = "PATH", default_value = config::DEFAULT_HOOK_SOCKET)]
    pub hook_socket: PathBuf,

    /// Unix socket of the admin API (HTTP/JSON, root only), for the operator CLI
    /// `rekindle` (status, functions, checkpoint, invoke) and `curl --unix-socket`.
    #[arg(long, value_name = "PATH", default_value = config::DEFAULT_ADMIN_SOCKET)]
    pub admin_socket: PathBuf,

    /// Unix socket of rekindle-restored, which owns the checkpoint images.
    #[arg(long, value_name = "PATH", default_value = config::DEFAULT_RESTORED_SOCKET)]
    pub restored_socket: PathBuf,

    /// containerd's API socket.
    #[arg(long, value_name = "PATH", default_value = config::DEFAULT_CONTAINERD_ADDRESS)]
    pub containerd_address: PathBuf,

    /// Serve invocations on this address (edge boxes without Kubernetes). Off by default.
    #[arg(long, value_name = "ADDR")]
    pub gateway_addr: Option<SocketAddr>,

    /// Log format on stderr: human-readable text, or one JSON object per line.
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Parses the command line (`--help`/`--version` print and exit here, as clap does),
/// loads the configuration, sets up logging, and runs the agent.
pub fn main_with_args<I, T>(args: I) -> Result<(), Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = Cli::command().get_matches_from(args);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let config = Config::load(&cli, &matches)?;
    logging::init(config.log_format, "info").map_err(Error::Logging)?;
    run(&config)
}

/// Runs the agent with a resolved configuration until SIGTERM or SIGINT, then stops
/// every instance it started.
pub fn run(config: &Config) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Io {
            what: "starting the tokio runtime".into(),
            source: e,
        })?;
    rt.block_on(async {
        let agent = Agent::start(config).await?;
        wait_for_signal().await?;
        tracing::info!("stopping: SIGTERM or SIGINT");
        agent.shutdown().await;
        Ok(())
    })
}

async fn wait_for_signal() -> Result<(), Error> {
    use tokio::signal::unix::{signal, SignalKind};
    let io = |e| Error::Io {
        what: "installing the signal handlers".into(),
        source: e,
    };
    let mut term = signal(SignalKind::terminate()).map_err(io)?;
    let mut int = signal(SignalKind::interrupt()).map_err(io)?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// How often rekindle-restored is asked whether the fast path works.
const FAST_PATH_PROBE_EVERY: Duration = Duration::from_secs(5);

/// A running agent: its pools, its HTTP endpoints and its reconcile loop.
pub struct Agent {
    pub pool: PoolManager,
    /// Where /metrics and the gateway actually listen (port 0 in the configuration: the
    /// port the system chose).
    pub metrics_addr: SocketAddr,
    pub gateway_addr: Option<SocketAddr>,
    /// Where the admin API listens.
    pub admin_socket: PathBuf,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Agent {
    /// Connects to containerd, listens, and starts reconciling.
    pub async fn start(config: &Config) -> Result<Agent, Error> {
        let driver = ContainerdDriver::connect(config.driver_config())
            .await
            .map_err(Box::new)?;
        Self::start_with(config, Arc::new(driver)).await
    }

    /// [`Agent::start`] with a driver of the caller's.
    pub async fn start_with(
        config: &Config,
        driver: Arc<dyn InstanceDriver>,
    ) -> Result<Agent, Error> {
        let listen = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr).await.map_err(|e| Error::Listen {
                what,
                addr,
                source: e,
            })
        };
        let metrics_listener = listen(config.metrics_addr, "metrics_addr").await?;
        let gateway_listener = match config.gateway_addr {
            Some(a) => Some(listen(a, "gateway_addr").await?),
            None => None,
        };
        let mut opts = RunOptions::new(1);
        opts.memory_budget_mb = config.memory_budget_mb.map(|m| m as f64);
        if let Some(path) = &config.tier_latencies {
            opts.latencies = crate::sim::LatencyTable::from_file(path).map_err(|e| {
                Error::Config(crate::config::Error::Invalid(format!(
                    "tier_latencies: {e}"
                )))
            })?;
            tracing::info!(source = %opts.latencies.source, "tier latencies");
        }
        let policy = opts.policy(config.policy.kind());
        let metrics = Arc::new(Metrics::new());
        // Functions registered through the admin API by an earlier run; agent.toml wins
        // over a file of the same name.
        let (kept, problems) = crate::admin::persist::load(&config.functions_dir);
        for p in &problems {
            tracing::error!(
                "skipped a function file: {p} (fix or remove it; `rekindle functions add` \
                 writes them)"
            );
        }
        let mut functions = config.functions.clone();
        let mut persisted = Vec::new();
        for f in kept {
            if functions
                .iter()
                .any(|c| c.name == f.name || c.store_as() == f.store_as())
            {
                tracing::warn!(
                    function = %f.name,
                    dir = %config.functions_dir.display(),
                    "a function registered through the API has the name or store_as of one \
                     in the configuration file, which wins: its file is ignored"
                );
                continue;
            }
            persisted.push(f.name.clone());
            functions.push(f);
        }
        if !persisted.is_empty() {
            tracing::info!(
                functions = ?persisted,
                dir = %config.functions_dir.display(),
                "functions registered through the API, read back"
            );
        }
        let all = Config {
            functions: functions.clone(),
            ..config.clone()
        };
        if let Err(e) = all.validate() {
            // E.g. together they exceed the memory budget: the files are left out.
            tracing::error!(error = %e, "the functions registered through the API do not fit next to agent.toml's: they are left out");
            functions = config.functions.clone();
            persisted.clear();
        }
        let pool = PoolManager::new(
            driver.clone(),
            &functions,
            PoolOptions {
                time_scale: config.time_scale,
                memory_budget_mb: config.memory_budget_mb.map(|m| m as f64),
                max_parallel_starts: config.max_parallel_starts as usize,
                policy,
                pressure: crate::pool::pressure::PressureThresholds {
                    cpu_some_pct: config.pressure_cpu_pct,
                    memory_some_pct: config.pressure_memory_pct,
                },
            },
            metrics.clone(),
        );
        // Before the first reconcile: images already in the store make the next start a
        // restore; without CRIU no doomed checkpoint is planned.
        let mut fast_path = None;
        crate::fast_path::refresh(&pool, &config.restored_socket, &mut fast_path).await;
        // What an earlier run left (it was killed, or restarted): adopted or removed
        // before the first reconcile, so no instance is orphaned or started twice.
        let found = driver.discover().await.map_err(Box::new)?;
        if !found.is_empty() {
            let a = pool.adopt(found).await;
            tracing::info!(
                adopted = a.adopted.len(),
                removed = a.removed.len(),
                "instances of an earlier run taken over"
            );
        }
        let (stop, stop_rx) = watch::channel(false);
        let metrics_addr = metrics_listener.local_addr().map_err(|e| Error::Listen {
            what: "metrics_addr",
            addr: config.metrics_addr,
            source: e,
        })?;
        let mut tasks = vec![tokio::spawn(crate::gateway::serve_metrics(
            metrics_listener,
            metrics,
            stop_rx.clone(),
        ))];
        tasks.push(crate::hook::start(config, &pool, &opts.latencies, stop_rx.clone()).await?);
        let admin = crate::admin::bind(&config.admin_socket)?;
        tasks.push(tokio::spawn(crate::admin::serve(
            admin,
            config.admin_socket.clone(),
            Arc::new(
                crate::admin::AdminState::new(
                    pool.clone(),
                    config.restored_socket.clone(),
                    config.memory_budget_mb,
                    format!("{:?}", config.policy).to_lowercase(),
                )
                .with_functions_dir(config.functions_dir.clone(), &persisted),
            ),
            crate::admin::Access::default(),
            stop_rx.clone(),
        )));
        let mut gateway_addr = None;
        if let Some(l) = gateway_listener {
            gateway_addr = l.local_addr().ok();
            tasks.push(tokio::spawn(crate::gateway::serve_gateway(
                l,
                pool.clone(),
                stop_rx.clone(),
            )));
        }
        let node = crate::ebpf::NodeCollector::start(
            &config.containerd_namespace,
            functions.iter().map(|f| f.name.as_str()),
            pool.metrics().node.clone(),
        );
        // Each new instance's cgroup is watched from just before its Tasks.Start.
        driver.set_start_hook(node.start_hook());
        let node_every = Duration::from_millis(config.reconcile_interval_ms.clamp(1000, 5000));
        tasks.push(tokio::spawn(node.run(node_every, stop_rx.clone())));
        tasks.push(tokio::spawn(crate::fast_path::watch(
            pool.clone(),
            config.restored_socket.clone(),
            FAST_PATH_PROBE_EVERY,
            fast_path,
            stop_rx.clone(),
        )));
        let interval = Duration::from_millis(config.reconcile_interval_ms);
        let p = pool.clone();
        tasks.push(tokio::spawn(async move { p.run(interval, stop_rx).await }));
        tracing::info!(
            %metrics_addr,
            gateway_addr = ?gateway_addr,
            admin_socket = %config.admin_socket.display(),
            functions = functions.len(),
            policy = ?config.policy,
            "rekindle-agent running"
        );
        Ok(Agent {
            pool,
            metrics_addr,
            gateway_addr,
            admin_socket: config.admin_socket.clone(),
            stop,
            tasks,
        })
    }

    /// Stops listening and reconciling, waits for the requests and actions in flight
    /// (up to a minute), then stops every instance the agent started.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let n = self.pool.shutdown(Duration::from_secs(60)).await;
        tracing::info!(instances = n, "stopped every instance");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_are_the_conventional_places() {
        let cli = Cli::try_parse_from(["rekindle-agent"]).unwrap();
        assert_eq!(cli.config, PathBuf::from("/etc/rekindle/agent.toml"));
        assert_eq!(cli.metrics_addr.to_string(), "127.0.0.1:9464");
        assert_eq!(cli.hook_socket, PathBuf::from("/run/rekindle/agent.sock"));
        assert_eq!(cli.gateway_addr, None);
    }

    #[test]
    fn running_without_containerd_says_so() {
        let c = Config {
            containerd_address: "/nonexistent/containerd.sock".into(),
            metrics_addr: "127.0.0.1:0".parse().unwrap(),
            ..Config::default()
        };
        let e = run(&c).unwrap_err();
        assert_eq!(e.exit_code(), crate::EXIT_UNAVAILABLE, "{e}");
    }
}
