//! The agent's configuration: built-in defaults, overridden by the TOML file (`--config`,
//! default /etc/rekindle/agent.toml), overridden by options given on the command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::ArgMatches;
use serde::Deserialize;

use crate::daemon::Cli;
use crate::driver::{FunctionSpec, NetMode};

pub const DEFAULT_CONFIG: &str = "/etc/rekindle/agent.toml";
/// Loopback only by default: expose it to Prometheus deliberately.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";
pub const DEFAULT_HOOK_SOCKET: &str = "/run/rekindle/agent.sock";
/// The admin API's socket (`rekindle status`, `functions`, `checkpoint`, `invoke`). Not
/// the hook's path: the hook owns that one (schedulers and extenders are configured
/// with it), and the admin API is a different protocol with root-only operations.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/rekindle/admin.sock";
pub const DEFAULT_RESTORED_SOCKET: &str = "/run/rekindle/restored.sock";
pub const DEFAULT_CONTAINERD_ADDRESS: &str = "/run/containerd/containerd.sock";
/// The functions registered through the admin API (`rekindle functions add`).
pub const DEFAULT_FUNCTIONS_DIR: &str = "/var/lib/rekindle/functions";
/// One agent per node: one id is enough unless two agents share a containerd namespace.
pub const DEFAULT_AGENT_ID: &str = "default";
/// The namespace the CRI plugin (and so Kubernetes) uses.
pub const DEFAULT_CONTAINERD_NAMESPACE: &str = "k8s.io";

pub use rekindle_daemon_kit::LogFormat;

/// Which pool policy drives the agent (the same code the simulator replays).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyName {
    /// Fixed 10-minute keep-alive.
    Fixed,
    /// Shahrad et al.'s hybrid histogram policy.
    Hybrid,
    /// Rekindle's tiered, forecast-driven policy.
    #[default]
    Rekindle,
}

impl PolicyName {
    pub fn kind(self) -> crate::policy::PolicyKind {
        use crate::policy::PolicyKind;
        match self {
            PolicyName::Fixed => PolicyKind::Fixed,
            PolicyName::Hybrid => PolicyKind::Hybrid,
            PolicyName::Rekindle => PolicyKind::Rekindle,
        }
    }
}

fn default_fn_memory_mb() -> u64 {
    256
}
fn default_max_instances() -> u32 {
    10
}
fn default_keep_alive_max() -> f64 {
    600.0
}
fn default_invoke_timeout() -> f64 {
    30.0
}
fn default_ready_path() -> String {
    "/healthz".to_string()
}
fn default_invoke_path() -> String {
    "/invoke".to_string()
}
/// 6 MiB, the synchronous payload limit common FaaS platforms have.
pub const DEFAULT_MAX_BODY_BYTES: usize = 6 << 20;
fn default_max_body() -> usize {
    DEFAULT_MAX_BODY_BYTES
}
fn default_max_queue() -> u32 {
    64
}
fn default_max_queue_wait() -> f64 {
    10.0
}

/// Upper bounds on a function's fields (agent.toml and the admin API alike).
pub mod limits {
    pub const IMAGE_REF: usize = 512;
    pub const PATH: usize = 1024;
    pub const ENV_ENTRIES: usize = 256;
    pub const ENV_BYTES: usize = 64 << 10;
    pub const MEMORY_MB: u64 = 1 << 20;
    pub const INSTANCES: u32 = 1000;
    pub const QUEUE: u32 = 100_000;
    pub const BODY_BYTES: usize = 1 << 30;
    /// A week.
    pub const SECS: f64 = 7.0 * 86_400.0;
}

/// One function the agent serves (`[[function]]` in the file).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionConfig {
    /// Its name: the gateway's `/invoke/<name>/...` and its instances' id prefix.
    pub name: String,
    /// containerd image (imported and unpacked for the snapshotter).
    pub image_ref: String,
    /// Added to the image's environment (`KEY=value`).
    #[serde(default)]
    pub env: Vec<String>,
    /// The port the function listens on (`$PORT`).
    pub port: u16,
    /// Memory of one instance, MB: its cgroup limit and what the pool and the memory
    /// budget count for it.
    #[serde(default = "default_fn_memory_mb")]
    pub memory_mb: u64,
    #[serde(default)]
    pub cpu_shares: Option<u64>,
    /// Name of its checkpoint image in rekindle-restored (default: the function's name).
    #[serde(default)]
    pub store_as: Option<String>,
    #[serde(default)]
    pub netns: NetMode,
    #[serde(default = "default_ready_path")]
    pub ready_path: String,
    /// Hot instances kept whatever the policy says.
    #[serde(default)]
    pub min_instances: u32,
    /// Instances (hot + warm, busy included) never exceeded.
    #[serde(default = "default_max_instances")]
    pub max_instances: u32,
    /// Bounds on the policy's keep-alive window (hot + warm + staged), seconds.
    #[serde(default)]
    pub keep_alive_min_secs: f64,
    #[serde(default = "default_keep_alive_max")]
    pub keep_alive_max_secs: f64,
    /// Bound on one forwarded request, seconds (queueing and start included).
    #[serde(default = "default_invoke_timeout")]
    pub invoke_timeout_secs: f64,
    /// The function's handler: where the gateway's `POST /invoke/<name>` goes.
    #[serde(default = "default_invoke_path")]
    pub invoke_path: String,
    /// Largest request body the gateway forwards (413 past it), bytes.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Largest answer body the gateway forwards back (502 past it), bytes.
    #[serde(default = "default_max_body")]
    pub max_response_bytes: usize,
    /// Requests that may wait for an instance while `max_instances` are busy (or the
    /// memory budget has no room yet); past it: 503 `queue_full`.
    #[serde(default = "default_max_queue")]
    pub max_queue: u32,
    /// How long a request may wait in that queue, seconds; past it: 503
    /// `queue_timeout`.
    #[serde(default = "default_max_queue_wait")]
    pub max_queue_wait_secs: f64,
}

impl FunctionConfig {
    /// A function with the defaults for everything optional.
    pub fn new(name: &str, image_ref: &str, port: u16) -> Self {
        FunctionConfig {
            name: name.to_string(),
            image_ref: image_ref.to_string(),
            env: Vec::new(),
            port,
            memory_mb: default_fn_memory_mb(),
            cpu_shares: None,
            store_as: None,
            netns: NetMode::Own,
            ready_path: default_ready_path(),
            min_instances: 0,
            max_instances: default_max_instances(),
            keep_alive_min_secs: 0.0,
            keep_alive_max_secs: default_keep_alive_max(),
            invoke_timeout_secs: default_invoke_timeout(),
            invoke_path: default_invoke_path(),
            max_body_bytes: default_max_body(),
            max_response_bytes: default_max_body(),
            max_queue: default_max_queue(),
            max_queue_wait_secs: default_max_queue_wait(),
        }
    }

    /// The image name its checkpoints are stored under.
    pub fn store_as(&self) -> &str {
        self.store_as.as_deref().unwrap_or(&self.name)
    }

    /// What the driver needs to make its instances.
    pub fn spec(&self) -> FunctionSpec {
        FunctionSpec {
            name: self.name.clone(),
            image_ref: self.image_ref.clone(),
            env: self.env.clone(),
            port: self.port,
            memory_limit_bytes: self.memory_mb << 20,
            cpu_shares: self.cpu_shares,
            store_as: self.store_as().to_string(),
            netns: self.netns,
            ready_path: self.ready_path.clone(),
        }
    }

    fn validate(&self) -> Result<(), Error> {
        let bad = |why: String| Err(Error::Invalid(format!("function {:?}: {why}", self.name)));
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 48
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        };
        if !name_ok(&self.name) {
            return bad("name must be 1-48 characters of [A-Za-z0-9._-]".into());
        }
        if !name_ok(self.store_as()) {
            return bad("store_as must be 1-48 characters of [A-Za-z0-9._-]".into());
        }
        if self.image_ref.is_empty() {
            return bad("image_ref is empty".into());
        }
        if self.port == 0 {
            return bad("port is 0".into());
        }
        if self.memory_mb == 0 {
            return bad("memory_mb is 0".into());
        }
        if !self.ready_path.starts_with('/') {
            return bad(format!(
                "ready_path {:?} must start with /",
                self.ready_path
            ));
        }
        if self.max_instances == 0 || self.min_instances > self.max_instances {
            return bad(format!(
                "need 0 <= min_instances ({}) <= max_instances ({}) and max_instances >= 1",
                self.min_instances, self.max_instances
            ));
        }
        if self.netns == NetMode::Host && self.max_instances > 1 {
            return bad(
                "netns = \"host\" allows one instance at a time: set max_instances = 1".into(),
            );
        }
        let finite = |x: f64| x.is_finite() && x >= 0.0;
        if !finite(self.keep_alive_min_secs)
            || !finite(self.keep_alive_max_secs)
            || self.keep_alive_min_secs > self.keep_alive_max_secs
        {
            return bad(format!(
                "need 0 <= keep_alive_min_secs ({}) <= keep_alive_max_secs ({})",
                self.keep_alive_min_secs, self.keep_alive_max_secs
            ));
        }
        if !(self.invoke_timeout_secs.is_finite() && self.invoke_timeout_secs > 0.0) {
            return bad("invoke_timeout_secs must be positive".into());
        }
        if !self.invoke_path.starts_with('/') {
            return bad(format!(
                "invoke_path {:?} must start with /",
                self.invoke_path
            ));
        }
        if !finite(self.max_queue_wait_secs) {
            return bad("max_queue_wait_secs must be 0 or more".into());
        }
        // Bounds: these come from the admin API too (untrusted sizes), and each ends up
        // in an OCI spec, a cgroup file or a queue.
        let printable = |v: &str| !v.chars().any(char::is_control);
        if self.image_ref.len() > limits::IMAGE_REF || !printable(&self.image_ref) {
            return bad(format!(
                "image_ref must be at most {} printable characters",
                limits::IMAGE_REF
            ));
        }
        for (key, path) in [
            ("ready_path", &self.ready_path),
            ("invoke_path", &self.invoke_path),
        ] {
            if path.len() > limits::PATH || path.chars().any(|c| c.is_control() || c == ' ') {
                return bad(format!(
                    "{key} must be at most {} characters, without spaces or control characters",
                    limits::PATH
                ));
            }
        }
        if self.env.len() > limits::ENV_ENTRIES
            || self.env.iter().map(String::len).sum::<usize>() > limits::ENV_BYTES
        {
            return bad(format!(
                "env: at most {} entries and {} bytes in all",
                limits::ENV_ENTRIES,
                limits::ENV_BYTES
            ));
        }
        if let Some(e) = self
            .env
            .iter()
            .find(|e| e.split_once('=').is_none_or(|(k, _)| k.is_empty()) || e.contains('\0'))
        {
            return bad(format!("env entry {e:?} is not KEY=value"));
        }
        if self.memory_mb > limits::MEMORY_MB {
            return bad(format!(
                "memory_mb is more than {} (1 TiB)",
                limits::MEMORY_MB
            ));
        }
        // cgroup v1's cpu.shares range.
        if self.cpu_shares.is_some_and(|s| !(2..=262_144).contains(&s)) {
            return bad("cpu_shares must be within 2-262144".into());
        }
        if self.max_instances > limits::INSTANCES || self.max_queue > limits::QUEUE {
            return bad(format!(
                "max_instances is at most {} and max_queue at most {}",
                limits::INSTANCES,
                limits::QUEUE
            ));
        }
        if self.max_body_bytes > limits::BODY_BYTES || self.max_response_bytes > limits::BODY_BYTES
        {
            return bad(format!(
                "max_body_bytes and max_response_bytes are at most {} (1 GiB)",
                limits::BODY_BYTES
            ));
        }
        let long = [
            ("keep_alive_max_secs", self.keep_alive_max_secs),
            ("invoke_timeout_secs", self.invoke_timeout_secs),
            ("max_queue_wait_secs", self.max_queue_wait_secs),
        ];
        if let Some((key, v)) = long.iter().find(|(_, v)| *v > limits::SECS) {
            return bad(format!("{key} = {v} is more than a week"));
        }
        Ok(())
    }
}

/// `[hook_tls]`: the scheduler hook's mutual TLS on `hook_addr`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where Prometheus scrapes `/metrics`.
    pub metrics_addr: SocketAddr,
    /// Unix socket of the scheduler hook (gRPC) and of the operator CLI.
    pub hook_socket: PathBuf,
    /// The scheduler hook on TCP as well (schedulers on other hosts); unset: unix socket
    /// only. With `hook_tls`, mutual TLS; without, plaintext (a warning is logged).
    pub hook_addr: Option<SocketAddr>,
    /// Mutual TLS on `hook_addr` (PEM files): `cert` and `key` are the hook's, client
    /// certificates must chain to `client_ca`.
    pub hook_tls: Option<HookTls>,
    /// Unix socket of the admin API (HTTP/JSON; mode 0600 and root peers only), which the
    /// operator CLI `rekindle` talks to.
    pub admin_socket: PathBuf,
    /// Unix socket of `rekindle-restored`.
    pub restored_socket: PathBuf,
    /// containerd's API socket.
    pub containerd_address: PathBuf,
    /// containerd namespace of the function containers.
    pub containerd_namespace: String,
    /// Where functions registered through the admin API are kept (one TOML file each),
    /// read back at start-up: they survive a restart.
    pub functions_dir: PathBuf,
    /// This agent's id, put on every container it makes (label
    /// `io.rekindle.agent/owner`): a restarted agent adopts or removes the instances
    /// with its own id and never touches another agent's in the same namespace.
    pub agent_id: String,
    /// Address of the invoke gateway (edge boxes without Kubernetes); off when unset.
    pub gateway_addr: Option<SocketAddr>,
    /// Log format on stderr.
    pub log_format: LogFormat,
    /// The pool policy.
    pub policy: PolicyName,
    /// Milliseconds between two reconciles of the pools.
    pub reconcile_interval_ms: u64,
    /// Policy seconds per real second: the policies plan in one-minute intervals; 60
    /// makes a real second a policy minute (for tests and demos). Default 1.
    pub time_scale: f64,
    /// Node memory budget for the pools (instances and staged images), MB; unset: none.
    pub memory_budget_mb: Option<u64>,
    /// Instance starts (restores, cold starts) in flight at once, at most.
    pub max_parallel_starts: u32,
    /// Node pressure at which the pools hold back speculative work (pre-warm loads,
    /// warm-target starts, stages): Linux PSI `some` avg10 of `/proc/pressure/cpu`,
    /// percent. Above 100: never.
    pub pressure_cpu_pct: f64,
    /// The same for `/proc/pressure/memory`.
    pub pressure_memory_pct: f64,
    /// containerd snapshotter of the function images.
    pub snapshotter: String,
    /// runc's `--root` for the instances' tasks; unset: the runtime's default.
    pub runc_root: Option<PathBuf>,
    /// Where the instances' network namespaces are bind-mounted.
    pub netns_dir: PathBuf,
    /// Where the instances' stdout and stderr go (one file per instance).
    pub instance_log_dir: PathBuf,
    /// The tier latencies the policy plans with and the scheduler hook answers with:
    /// a file as `rekindle-sim --tier-latencies` reads it, e.g. this node's
    /// `bench-results/restore.json` from `hack/bench.sh`. Unset: the placeholder table
    /// (its source says so in the hook's answers).
    pub tier_latencies: Option<PathBuf>,
    /// The functions served (`[[function]]` tables).
    #[serde(rename = "function")]
    pub functions: Vec<FunctionConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            metrics_addr: DEFAULT_METRICS_ADDR.parse().expect("valid default address"),
            hook_socket: DEFAULT_HOOK_SOCKET.into(),
            hook_addr: None,
            hook_tls: None,
            admin_socket: DEFAULT_ADMIN_SOCKET.into(),
            restored_socket: DEFAULT_RESTORED_SOCKET.into(),
            containerd_address: DEFAULT_CONTAINERD_ADDRESS.into(),
            containerd_namespace: DEFAULT_CONTAINERD_NAMESPACE.into(),
            agent_id: DEFAULT_AGENT_ID.into(),
            functions_dir: DEFAULT_FUNCTIONS_DIR.into(),
            gateway_addr: None,
            log_format: LogFormat::Text,
            policy: PolicyName::default(),
            reconcile_interval_ms: 1000,
            time_scale: 1.0,
            memory_budget_mb: None,
            max_parallel_starts: 2,
            pressure_cpu_pct: crate::pool::pressure::PressureThresholds::default().cpu_some_pct,
            pressure_memory_pct: crate::pool::pressure::PressureThresholds::default()
                .memory_some_pct,
            snapshotter: "overlayfs".into(),
            runc_root: None,
            netns_dir: "/run/netns".into(),
            instance_log_dir: "/var/log/rekindle/instances".into(),
            tier_latencies: None,
            functions: Vec::new(),
        }
    }
}

pub use rekindle_daemon_kit::ConfigError as Error;

impl Config {
    /// Parses a configuration file's text; keys left out keep their defaults.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, Error> {
        rekindle_daemon_kit::config::from_toml(text, path)
    }

    /// Defaults, then the configuration file, then the options given on the command line
    /// (`matches` tells which options were given rather than defaulted).
    pub fn load(cli: &Cli, matches: &ArgMatches) -> Result<Self, Error> {
        let given = |id: &str| rekindle_daemon_kit::config::given(matches, id);
        let mut config: Config = rekindle_daemon_kit::config::load(&cli.config, given("config"))?;
        if given("metrics_addr") {
            config.metrics_addr = cli.metrics_addr;
        }
        if given("hook_socket") {
            config.hook_socket = cli.hook_socket.clone();
        }
        if given("admin_socket") {
            config.admin_socket = cli.admin_socket.clone();
        }
        if given("restored_socket") {
            config.restored_socket = cli.restored_socket.clone();
        }
        if given("containerd_address") {
            config.containerd_address = cli.containerd_address.clone();
        }
        if cli.gateway_addr.is_some() {
            config.gateway_addr = cli.gateway_addr;
        }
        if given("log_format") {
            config.log_format = cli.log_format;
        }
        config.validate()?;
        Ok(config)
    }

    /// The instance driver's settings this configuration gives (what the agent connects
    /// with; a test reading the agent's instances uses the same).
    pub fn driver_config(&self) -> crate::driver::ContainerdConfig {
        let mut dc = crate::driver::ContainerdConfig::new(
            &self.containerd_address,
            &self.containerd_namespace,
        );
        dc.owner = self.agent_id.clone();
        dc.restored_socket = self.restored_socket.clone();
        dc.snapshotter = self.snapshotter.clone();
        dc.runc_root = self.runc_root.clone();
        dc.netns_dir = self.netns_dir.clone();
        dc.log_dir = self.instance_log_dir.clone();
        dc
    }

    /// Checks what can be checked without touching the system.
    pub fn validate(&self) -> Result<(), Error> {
        for (name, path) in [
            ("hook_socket", &self.hook_socket),
            ("admin_socket", &self.admin_socket),
            ("restored_socket", &self.restored_socket),
            ("containerd_address", &self.containerd_address),
        ] {
            rekindle_daemon_kit::config::check_socket_path(name, path)?;
        }
        if self.admin_socket == self.hook_socket {
            return Err(Error::Invalid(format!(
                "admin_socket and hook_socket are both {}: they are two servers",
                self.admin_socket.display()
            )));
        }
        if self.hook_tls.is_some() && self.hook_addr.is_none() {
            return Err(Error::Invalid(
                "hook_tls is set but hook_addr is not: TLS is for the TCP hook".into(),
            ));
        }
        if self.containerd_namespace.is_empty() {
            return Err(Error::Invalid("containerd_namespace is empty".into()));
        }
        if !self.functions_dir.is_absolute() {
            return Err(Error::Invalid(format!(
                "functions_dir {} must be an absolute path",
                self.functions_dir.display()
            )));
        }
        // A containerd label value; kept to what reads well in a filter.
        if self.agent_id.is_empty()
            || self.agent_id.len() > 63
            || !self
                .agent_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(Error::Invalid(format!(
                "agent_id {:?} must be 1-63 characters of [A-Za-z0-9._-]",
                self.agent_id
            )));
        }
        // Port 0 on both is fine: the system picks two ports.
        if Some(self.metrics_addr) == self.gateway_addr && self.metrics_addr.port() != 0 {
            return Err(Error::Invalid(format!(
                "metrics_addr and gateway_addr are both {}",
                self.metrics_addr
            )));
        }
        if self.reconcile_interval_ms < 10 {
            return Err(Error::Invalid(format!(
                "reconcile_interval_ms is {}: at least 10",
                self.reconcile_interval_ms
            )));
        }
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            return Err(Error::Invalid(format!(
                "time_scale is {}: must be positive",
                self.time_scale
            )));
        }
        if self.max_parallel_starts == 0 {
            return Err(Error::Invalid("max_parallel_starts is 0".into()));
        }
        for (name, v) in [
            ("pressure_cpu_pct", self.pressure_cpu_pct),
            ("pressure_memory_pct", self.pressure_memory_pct),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::Invalid(format!(
                    "{name} is {v}: a positive percentage (above 100: never hold back)"
                )));
            }
        }
        for (name, path) in [
            ("netns_dir", &self.netns_dir),
            ("instance_log_dir", &self.instance_log_dir),
        ] {
            rekindle_daemon_kit::config::check_absolute(name, path)?;
        }
        if let Some(root) = &self.runc_root {
            rekindle_daemon_kit::config::check_absolute("runc_root", root)?;
        }
        let mut names = std::collections::HashSet::new();
        let mut images = std::collections::HashSet::new();
        for f in &self.functions {
            f.validate()?;
            if !names.insert(f.name.as_str()) {
                return Err(Error::Invalid(format!(
                    "function {:?} is registered twice",
                    f.name
                )));
            }
            if !images.insert(f.store_as()) {
                return Err(Error::Invalid(format!(
                    "function {:?}: store_as {:?} is another function's too",
                    f.name,
                    f.store_as()
                )));
            }
            if let Some(b) = self.memory_budget_mb {
                if f.memory_mb > b {
                    return Err(Error::Invalid(format!(
                        "function {:?}: memory_mb {} exceeds memory_budget_mb {b}: it could never run",
                        f.name, f.memory_mb
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches};

    use super::*;

    fn load(args: &[&str]) -> Result<Config, Error> {
        let matches = Cli::command().try_get_matches_from(args).unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        Config::load(&cli, &matches)
    }

    #[test]
    fn defaults_are_the_conventional_places() {
        let c = Config::default();
        assert_eq!(c.metrics_addr.to_string(), "127.0.0.1:9464");
        assert_eq!(c.hook_socket, Path::new("/run/rekindle/agent.sock"));
        assert_eq!(c.restored_socket, Path::new("/run/rekindle/restored.sock"));
        assert_eq!(c.admin_socket, Path::new("/run/rekindle/admin.sock"));
        assert_eq!(
            c.containerd_address,
            Path::new("/run/containerd/containerd.sock")
        );
        assert_eq!(c.containerd_namespace, "k8s.io");
        assert_eq!(c.gateway_addr, None);
        assert_eq!(c.log_format, LogFormat::Text);
        c.validate().unwrap();
    }

    #[test]
    fn an_empty_file_means_defaults_and_keys_override_them() {
        let p = Path::new("agent.toml");
        assert_eq!(Config::from_toml("", p).unwrap(), Config::default());
        let c = Config::from_toml(
            "metrics_addr = \"0.0.0.0:9464\"\ngateway_addr = \"127.0.0.1:8080\"\n",
            p,
        )
        .unwrap();
        assert_eq!(c.metrics_addr.to_string(), "0.0.0.0:9464");
        assert_eq!(c.gateway_addr, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(c.hook_socket, Path::new(DEFAULT_HOOK_SOCKET));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        let p = Path::new("agent.toml");
        let e = Config::from_toml("metrics_adr = \"127.0.0.1:1\"\n", p).unwrap_err();
        assert!(e.to_string().contains("metrics_adr"), "{e}");
        assert!(Config::from_toml("metrics_addr = \"localhost\"\n", p).is_err());
    }

    #[test]
    fn pressure_thresholds_default_and_are_checked() {
        let p = Path::new("agent.toml");
        let c = Config::default();
        assert_eq!((c.pressure_cpu_pct, c.pressure_memory_pct), (90.0, 20.0));
        let c =
            Config::from_toml("pressure_cpu_pct = 101\npressure_memory_pct = 5.5\n", p).unwrap();
        c.validate().unwrap();
        assert_eq!((c.pressure_cpu_pct, c.pressure_memory_pct), (101.0, 5.5));
        let c = Config::from_toml("pressure_memory_pct = 0\n", p).unwrap();
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("pressure_memory_pct"), "{e}");
    }

    #[test]
    fn a_missing_file_is_fine_only_at_the_default_path() {
        if !Path::new(DEFAULT_CONFIG).exists() {
            assert_eq!(load(&["rekindle-agent"]).unwrap(), Config::default());
        }
        let e = load(&["rekindle-agent", "--config", "/nonexistent/agent.toml"]);
        assert!(matches!(e, Err(Error::Read { .. })), "{e:?}");
    }

    #[test]
    fn the_command_line_wins_over_the_file_which_wins_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(
            &file,
            "metrics_addr = \"127.0.0.1:1111\"\nhook_socket = \"/run/file.sock\"\n",
        )
        .unwrap();
        let file = file.to_str().unwrap();
        let c = load(&[
            "rekindle-agent",
            "--config",
            file,
            "--metrics-addr",
            "127.0.0.1:2222",
        ])
        .unwrap();
        assert_eq!(c.metrics_addr.to_string(), "127.0.0.1:2222");
        assert_eq!(c.hook_socket, Path::new("/run/file.sock"));
        assert_eq!(c.restored_socket, Path::new(DEFAULT_RESTORED_SOCKET));
    }

    const FN: &str = "[[function]]\nname = \"hello\"\nimage_ref = \"docker.io/rekindle/python-fn:latest\"\nport = 8080\n";

    #[test]
    fn functions_are_registered_with_defaults() {
        let p = Path::new("agent.toml");
        let c =
            Config::from_toml(&format!("policy = \"hybrid\"\ntime_scale = 60.0\n{FN}"), p).unwrap();
        c.validate().unwrap();
        assert_eq!(c.policy, PolicyName::Hybrid);
        assert_eq!(c.functions.len(), 1);
        let f = &c.functions[0];
        assert_eq!(f.store_as(), "hello");
        assert_eq!((f.min_instances, f.max_instances), (0, 10));
        let spec = f.spec();
        assert_eq!(spec.memory_limit_bytes, 256 << 20);
        assert_eq!(spec.netns, NetMode::Own);
        assert_eq!(spec.store_as, "hello");
        assert_eq!(f.invoke_path, "/invoke");
        assert_eq!((f.max_body_bytes, f.max_response_bytes), (6 << 20, 6 << 20));
        assert_eq!((f.max_queue, f.max_queue_wait_secs), (64, 10.0));
    }

    #[test]
    fn bad_functions_are_rejected_with_the_reason() {
        let p = Path::new("agent.toml");
        let check = |extra: &str, want: &str| {
            let c = Config::from_toml(&format!("{extra}{FN}"), p);
            let e = match c {
                Ok(c) => c.validate().unwrap_err(),
                Err(e) => e,
            };
            assert!(e.to_string().contains(want), "{e} (wanted {want:?})");
        };
        check(FN, "registered twice");
        check("memory_budget_mb = 100\n", "exceeds memory_budget_mb");
        check("time_scale = 0.0\n", "time_scale");
        let bad_fn = |line: &str, want: &str| {
            let e = Config::from_toml(&format!("{FN}{line}\n"), p)
                .and_then(|c| c.validate())
                .unwrap_err();
            assert!(e.to_string().contains(want), "{e} (wanted {want:?})");
        };
        bad_fn("min_instances = 3\nmax_instances = 2", "min_instances (3)");
        bad_fn("netns = \"host\"", "one instance at a time");
        bad_fn("keep_alive_max_secs = -1.0", "keep_alive_min_secs");
        bad_fn("port2 = 1", "port2");
        bad_fn("invoke_path = \"invoke\"", "invoke_path");
        bad_fn("max_queue_wait_secs = -1.0", "max_queue_wait_secs");
        // Bounded: these come from the admin API too.
        let bounded = |change: &dyn Fn(&mut FunctionConfig), want: &str| {
            let mut f = FunctionConfig::new("f", "img", 8080);
            change(&mut f);
            let e = f.validate().unwrap_err();
            assert!(e.to_string().contains(want), "{e} (wanted {want:?})");
        };
        bounded(
            &|f| f.image_ref = "a".repeat(513),
            "image_ref must be at most 512",
        );
        bounded(&|f| f.image_ref = "a\nb".into(), "printable");
        bounded(&|f| f.ready_path = "/a b".into(), "ready_path must be");
        bounded(
            &|f| f.invoke_path = format!("/{}", "x".repeat(1024)),
            "invoke_path",
        );
        bounded(&|f| f.env = vec!["NOEQUALS".into()], "is not KEY=value");
        bounded(&|f| f.env = vec!["=x".into()], "is not KEY=value");
        bounded(
            &|f| f.env = (0..300).map(|i| format!("K{i}=v")).collect(),
            "at most 256 entries",
        );
        bounded(
            &|f| f.env = vec![format!("K={}", "v".repeat(70_000))],
            "bytes in all",
        );
        bounded(&|f| f.memory_mb = 2_000_000, "1 TiB");
        bounded(&|f| f.cpu_shares = Some(1), "cpu_shares");
        bounded(&|f| f.max_instances = 5000, "max_instances is at most 1000");
        bounded(&|f| f.max_queue = 1_000_000, "max_queue at most");
        bounded(&|f| f.max_body_bytes = 2 << 30, "1 GiB");
        bounded(&|f| f.invoke_timeout_secs = 1e12, "more than a week");
        assert!(FunctionConfig::new("f", "img", 8080).validate().is_ok());
        let e = Config::from_toml(
            "[[function]]\nname = \"a b\"\nimage_ref = \"i\"\nport = 1\n",
            p,
        )
        .unwrap()
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("[A-Za-z0-9._-]"), "{e}");
    }

    #[test]
    fn bad_combinations_are_rejected() {
        let e = load(&["rekindle-agent", "--hook-socket", "agent.sock"]).unwrap_err();
        assert!(
            e.to_string().contains("hook_socket must be an absolute"),
            "{e}"
        );
        let e = load(&["rekindle-agent", "--gateway-addr", "127.0.0.1:9464"]).unwrap_err();
        assert!(e.to_string().contains("both 127.0.0.1:9464"), "{e}");
        let e = load(&[
            "rekindle-agent",
            "--admin-socket",
            "/run/rekindle/agent.sock",
        ])
        .unwrap_err();
        assert!(
            e.to_string().contains("admin_socket and hook_socket"),
            "{e}"
        );
        let c = load(&["rekindle-agent", "--admin-socket", "/run/a.sock"]).unwrap();
        assert_eq!(c.admin_socket, Path::new("/run/a.sock"));
        for bad in ["", "a b", "x/y", &"a".repeat(64)] {
            let c = Config {
                agent_id: bad.to_string(),
                ..Config::default()
            };
            let e = c.validate().unwrap_err();
            assert!(e.to_string().contains("agent_id"), "{e}");
        }
        assert_eq!(Config::default().agent_id, "default");
    }
}
