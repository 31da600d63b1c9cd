//! `rekindle-extender`: the kube-scheduler extender in front of the agents' scheduler
//! hooks (see `rekindle_agent::hook::extender`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use rekindle_agent::config::LogFormat;
use rekindle_agent::hook::extender::{serve, Extender, ExtenderConfig};

const AFTER_LONG_HELP: &str = "\
Configuration file (TOML):
  listen = \"127.0.0.1:8888\"            # kube-scheduler's urlPrefix: http://127.0.0.1:8888/
  deadline_ms = 200                    # per agent; no answer in time: neutral score 5
  [nodes]                              # node name -> its agent's scheduler hook
  node-a = \"unix:/run/rekindle/agent.sock\"
  node-b = \"http://10.0.0.12:7070\"

KubeSchedulerConfiguration (extenders):
  - urlPrefix: http://127.0.0.1:8888/
    filterVerb: filter
    prioritizeVerb: prioritize
    weight: 1
    nodeCacheCapable: false
    ignorable: true
    httpTimeout: 1s

Exit status: 0 stopped by SIGTERM/SIGINT, 2 bad command line, 69 cannot listen,
78 bad configuration";

/// kube-scheduler extender: POST /filter and /prioritize (ExtenderArgs), answered from
/// the rekindle-agents' scheduler hooks.
#[derive(Debug, Parser)]
#[command(name = "rekindle-extender", version, after_long_help = AFTER_LONG_HELP)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/rekindle/extender.toml"
    )]
    config: PathBuf,
    /// Listen here instead of the configuration's `listen`.
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// Log format on stderr.
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match ExtenderConfig::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rekindle-extender: error: {e}");
            return ExitCode::from(rekindle_agent::EXIT_CONFIG);
        }
    };
    if let Some(l) = cli.listen {
        config.listen = l;
    }
    if let Err(e) = rekindle_agent::logging::init(cli.log_format, "info") {
        eprintln!("rekindle-extender: error: {e}");
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rekindle-extender: error: starting the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let ext = match Extender::new(&config) {
            Ok(e) => Arc::new(e),
            Err(e) => {
                eprintln!("rekindle-extender: error: {e}");
                return ExitCode::from(rekindle_agent::EXIT_CONFIG);
            }
        };
        let listener = match tokio::net::TcpListener::bind(config.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("rekindle-extender: error: cannot listen on {}: {e}", config.listen);
                return ExitCode::from(rekindle_agent::EXIT_UNAVAILABLE);
            }
        };
        tracing::info!(listen = %config.listen, nodes = config.nodes.len(), "rekindle-extender running");
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(serve(listener, ext, stop_rx));
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            eprintln!("rekindle-extender: error: cannot install the signal handlers");
            return ExitCode::FAILURE;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let _ = stop.send(true);
        let _ = server.await;
        ExitCode::SUCCESS
    })
}
