//! `rekindle-agent`, the per-node daemon: its command line and entry point.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser};

use crate::config::{self, Config, LogFormat};
use crate::{logging, Error};

const ABOUT: &str = "Rekindle's per-node agent: keeps function instances hot, warm, staged or \
                     cold, and tells the scheduler where a function starts fastest";

const LONG_ABOUT: &str = "\
Rekindle's per-node agent. It turns the cold start of a function container into a restore
of an already-initialised checkpoint by keeping the right number of instances of each
function in the right tier, and tells the cluster where a function starts fastest.

What it does (one agent per node, next to containerd and rekindle-restored):
  - pools: per function, instances hot (running), warm (restored and frozen in the
    cgroup freezer), staged (checkpoint decompressed in memory by rekindle-restored) or
    cold (LZ4 checkpoint on disk); cold-started instances are checkpointed after init;
  - forecaster: a local forecast of each function's arrivals sets the pool targets;
  - eBPF metrics: sched, exec/exit and page-fault tracepoints for node load and
    per-instance working sets;
  - Prometheus /metrics on --metrics-addr (starts by tier, restore latency, pool sizes);
  - scheduler hook: gRPC on --hook-socket (plus a scheduler-extender HTTP adapter)
    telling which node holds a hot or warm instance or a staged checkpoint;
  - invoke gateway for edge boxes without Kubernetes (--gateway-addr): hot, then warm
    (thaw), then restore, then cold start; any failure falls back to the next path.

Status: not implemented yet. Running it checks the command line and the configuration
file, then exits with status 69 (EX_UNAVAILABLE) saying so.";

const AFTER_LONG_HELP: &str = "\
Configuration file (TOML; every key optional, command-line options win over it):
  metrics_addr = \"127.0.0.1:9464\"
  hook_socket = \"/run/rekindle/agent.sock\"
  restored_socket = \"/run/rekindle/restored.sock\"
  containerd_address = \"/run/containerd/containerd.sock\"
  containerd_namespace = \"k8s.io\"
  gateway_addr = \"127.0.0.1:8080\"      # unset: no invoke gateway
  log_format = \"text\"                  # or \"json\"

Environment:
  RUST_LOG   log filter (tracing-subscriber EnvFilter syntax), default \"info\"

Exit status:
  0 success, 2 bad command line, 69 not implemented yet, 78 bad configuration";

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

    /// Unix socket of the scheduler hook (gRPC) and the operator CLI `rekindle`.
    #[arg(long, value_name = "PATH", default_value = config::DEFAULT_HOOK_SOCKET)]
    pub hook_socket: PathBuf,

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

/// Runs the agent with a resolved configuration. Not implemented yet: refuses.
pub fn run(config: &Config) -> Result<(), Error> {
    tracing::debug!(
        metrics_addr = %config.metrics_addr,
        hook_socket = %config.hook_socket.display(),
        restored_socket = %config.restored_socket.display(),
        containerd_address = %config.containerd_address.display(),
        containerd_namespace = %config.containerd_namespace,
        gateway_addr = ?config.gateway_addr,
        "configuration loaded"
    );
    Err(Error::NotImplemented {
        what: "rekindle-agent".into(),
        reason: format!(
            "the pool manager, forecaster, eBPF metrics, /metrics on {}, the scheduler hook \
             on {} and the invoke gateway are still to be written; refusing to start rather \
             than pretend to manage pools",
            config.metrics_addr,
            config.hook_socket.display()
        ),
    })
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
    fn running_refuses_with_the_reason() {
        let e = run(&Config::default()).unwrap_err();
        assert_eq!(e.exit_code(), crate::EXIT_UNAVAILABLE);
        let msg = e.to_string();
        assert!(
            msg.starts_with("rekindle-agent is not implemented yet"),
            "{msg}"
        );
        assert!(msg.contains("127.0.0.1:9464"), "{msg}");
    }
}
