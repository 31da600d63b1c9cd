//! `rekindle`, the operator CLI: talks to the local `rekindle-agent`'s admin API
//! ([`crate::admin`]: status, functions, checkpoint, invoke) and to `rekindle-restored`
//! (`image ...`), and sets the node up (`install`, `uninstall`).

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::admin::{render, CheckpointRequest, Client, ClientError, InvokeRequest};
use crate::config::{self, LogFormat};
use crate::driver::NetMode;
pub use crate::image::ImageCommand;
use crate::install::{self, ContainerdVersion};
use crate::{image, logging, Error};

const ABOUT: &str = "Operator CLI for Rekindle: inspect and drive the node's agent, \
                     function pools and checkpoint images";

const LONG_ABOUT: &str = "\
Operator CLI for Rekindle. `status`, `functions`, `checkpoint` and `invoke` ask the local
rekindle-agent through its admin API (HTTP/JSON on the root-only unix socket --socket,
the agent's admin_socket) about the node's functions and their instances per tier (hot,
warm, staged, cold), register and remove functions, checkpoint and invoke them.

`rekindle image` manages the checkpoint images through rekindle-restored's socket
(--restored-socket). `rekindle install` sets the node up (binaries, systemd units, the
`rekindle` runtime in containerd's config) and `rekindle uninstall` takes that away again;
both have --dry-run.

Tables for people by default; --output json prints the agent's answer for scripts.";

const AFTER_LONG_HELP: &str = "\
Environment:
  RUST_LOG   log filter (tracing-subscriber EnvFilter syntax), default \"warn\"

Exit status:
  0 success, 1 the daemon refused the request (its error code and message are printed),
  2 bad command line, 69 daemon not reachable (not running, or not root),
  66 (install) a binary to install is missing, (invoke) the --data @FILE is unreadable, 78 (install, uninstall) containerd's config
  cannot be edited";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "rekindle",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_long_help = AFTER_LONG_HELP,
    subcommand_required = true,
    arg_required_else_help = true
)]
pub struct Cli {
    /// The local rekindle-agent's admin socket (its `admin_socket`).
    #[arg(
        long = "socket",
        visible_alias = "agent-socket",
        global = true,
        value_name = "PATH",
        env = "REKINDLE_AGENT_SOCKET",
        default_value = config::DEFAULT_ADMIN_SOCKET
    )]
    pub socket: PathBuf,

    /// Unix socket of the local rekindle-restored (for `rekindle image`).
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "REKINDLE_RESTORED_SOCKET",
        default_value = config::DEFAULT_RESTORED_SOCKET
    )]
    pub restored_socket: PathBuf,

    /// Output: a table for people, or JSON for scripts.
    #[arg(long, global = true, value_name = "FORMAT", value_enum, default_value_t = Output::Text)]
    pub output: Output,

    /// Short for `--output json`.
    #[arg(long, global = true, conflicts_with = "output")]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The output format asked for (`--json` or `--output`).
    pub fn format(&self) -> Output {
        if self.json {
            Output::Json
        } else {
            self.output
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Tables for people.
    Text,
    /// JSON for scripts.
    Json,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Show the node: pools, instances, images, memory budget, start latencies
    ///
    /// The agent's version and uptime, its memory budget and what the pools hold, whether
    /// rekindle-restored answers; per function its instances per tier (hot, warm, staged),
    /// the policy's targets and its checkpoint image; every loaded instance; the
    /// functions' images in the store; the latencies of the last starts by tier.
    Status,

    /// List, add or remove the agent's functions (`rekindle functions` lists them)
    Functions {
        #[command(subcommand)]
        command: Option<FunctionsCommand>,
    },

    /// Manage checkpoint images in rekindle-restored's store
    #[command(subcommand)]
    Image(ImageCommand),

    /// Checkpoint an idle instance of a function into the image store
    ///
    /// Through the agent's instance driver, as the pool's own checkpoints: the image is
    /// stored in rekindle-restored under the function's store_as, and the next start of
    /// the function is a restore. The instance is stopped afterwards unless
    /// --keep-running.
    Checkpoint {
        /// The function whose instance to checkpoint.
        function: String,
        /// Which instance (default: an idle running one, else an idle frozen one).
        #[arg(long, value_name = "ID")]
        instance: Option<String>,
        /// Leave the instance in the pool after the checkpoint.
        #[arg(long, visible_alias = "leave-running")]
        keep_running: bool,
        /// Replace the function's stored image (in one step: restores find the old
        /// image or the new). Without it, a function that has an image is refused.
        #[arg(long)]
        replace: bool,
    },

    /// Invoke a function through the agent, as its gateway does
    ///
    /// `POST <invoke_path>` with --data on an instance (the gateway's
    /// `POST /invoke/<function>`), or --method (default GET, POST with --data) on --path
    /// (its passthrough). Tries a hot instance, then a warm one (thawed), then a restore
    /// from a checkpoint, then a cold start; prints the function's answer on stdout and
    /// which path served it on stderr (--output json: both as one object).
    Invoke {
        /// The function to invoke.
        function: String,
        /// Request body; `@FILE` reads it from a file.
        #[arg(long, value_name = "BODY|@FILE")]
        data: Option<String>,
        /// Request this path (and query) instead of the function's invoke_path.
        #[arg(long, value_name = "PATH")]
        path: Option<String>,
        /// HTTP method, with --path.
        #[arg(long, value_name = "METHOD", requires = "path")]
        method: Option<String>,
    },

    /// Install Rekindle on this node: binaries, systemd units, the containerd runtime
    ///
    /// Copies containerd-shim-rekindle-v2, rekindle-criu-tar, rekindle-restored,
    /// rekindle-agent and rekindle to /usr/local/bin; the systemd units
    /// (rekindle-restored.service, rekindle-agent.service, run-criu.mount) and the
    /// containerd drop-in (containerd.service.d/rekindle.conf) to /etc/systemd/system;
    /// an example /etc/rekindle/agent.toml only if there is none; and adds the `rekindle`
    /// runtime (runtime_type io.containerd.rekindle.v2) to containerd's config, keeping the
    /// rest of the file as it is: `plugins."io.containerd.grpc.v1.cri"` for a `version = 2`
    /// config (containerd 1.x), `plugins."io.containerd.cri.v1.runtime"` for `version = 3`
    /// (containerd 2.x). Running it again changes nothing. It restarts nothing: it prints
    /// the systemctl commands to run.
    Install(InstallArgs),

    /// Remove what `rekindle install` added
    ///
    /// Takes the `rekindle` runtime table out of containerd's config (the rest of the file
    /// stays byte for byte), and removes the systemd units, the drop-in and the binaries.
    /// /etc/rekindle and /var/lib/rekindle (the checkpoint images) stay unless --purge.
    Uninstall(UninstallArgs),
}

/// `rekindle functions ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum FunctionsCommand {
    /// List the functions with their pools
    #[command(visible_alias = "list")]
    Ls,
    /// Register a function while the agent runs (until it restarts)
    ///
    /// Checked as the agent checks a `[[function]]` table of agent.toml (same keys and
    /// defaults); options left out keep the defaults. Not written to agent.toml: the
    /// function is registered until the agent restarts.
    Add(Box<AddArgs>),
    /// Remove a function: its instances are stopped (its image stays in the store)
    #[command(visible_alias = "remove")]
    Rm {
        /// The function's name.
        name: String,
    },
}

/// `rekindle functions add`'s options: the keys of a `[[function]]` table.
#[derive(Debug, Clone, clap::Args)]
pub struct AddArgs {
    /// Its name (the gateway's `/invoke/<name>/...`, its instances' id prefix).
    pub name: String,
    /// containerd image reference (image_ref).
    #[arg(long = "image", value_name = "REF")]
    pub image_ref: String,
    /// The port the function listens on ($PORT).
    #[arg(long, value_name = "PORT")]
    pub port: u16,
    /// Environment, KEY=value (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Memory of one instance, MB [agent default: 256].
    #[arg(long, value_name = "MB")]
    pub memory_mb: Option<u64>,
    #[arg(long, value_name = "SHARES")]
    pub cpu_shares: Option<u64>,
    /// Name of its checkpoint image [agent default: the function's name].
    #[arg(long, value_name = "IMAGE")]
    pub store_as: Option<String>,
    /// Network namespace: own, or host (then --max-instances 1).
    #[arg(long, value_name = "MODE", value_parser = parse_netns)]
    pub netns: Option<NetMode>,
    /// Readiness path [agent default: /healthz].
    #[arg(long, value_name = "PATH")]
    pub ready_path: Option<String>,
    #[arg(long, value_name = "N")]
    pub min_instances: Option<u32>,
    #[arg(long, value_name = "N")]
    pub max_instances: Option<u32>,
    #[arg(long, value_name = "SECS")]
    pub keep_alive_min_secs: Option<f64>,
    #[arg(long, value_name = "SECS")]
    pub keep_alive_max_secs: Option<f64>,
    #[arg(long, value_name = "SECS")]
    pub invoke_timeout_secs: Option<f64>,
    /// The function's handler, where invocations go [agent default: /invoke].
    #[arg(long, value_name = "PATH")]
    pub invoke_path: Option<String>,
    #[arg(long, value_name = "BYTES")]
    pub max_body_bytes: Option<u64>,
    #[arg(long, value_name = "N")]
    pub max_queue: Option<u32>,
    #[arg(long, value_name = "SECS")]
    pub max_queue_wait_secs: Option<f64>,
}

fn parse_netns(s: &str) -> Result<NetMode, String> {
    match s {
        "own" => Ok(NetMode::Own),
        "host" => Ok(NetMode::Host),
        _ => Err(format!("{s:?}: own or host")),
    }
}

impl AddArgs {
    /// The `[[function]]` table as JSON: only the keys given, so the agent's defaults
    /// apply to the rest.
    pub fn table(&self) -> serde_json::Value {
        let mut t = serde_json::Map::new();
        let mut put = |k: &str, v: serde_json::Value| {
            t.insert(k.to_string(), v);
        };
        put("name", self.name.clone().into());
        put("image_ref", self.image_ref.clone().into());
        put("port", self.port.into());
        if !self.env.is_empty() {
            put("env", self.env.clone().into());
        }
        let opt = |v: Option<serde_json::Value>| v;
        for (k, v) in [
            ("memory_mb", opt(self.memory_mb.map(Into::into))),
            ("cpu_shares", self.cpu_shares.map(Into::into)),
            ("store_as", self.store_as.clone().map(Into::into)),
            (
                "netns",
                self.netns
                    .map(|n| serde_json::to_value(n).unwrap_or_default()),
            ),
            ("ready_path", self.ready_path.clone().map(Into::into)),
            ("min_instances", self.min_instances.map(Into::into)),
            ("max_instances", self.max_instances.map(Into::into)),
            (
                "keep_alive_min_secs",
                self.keep_alive_min_secs.map(Into::into),
            ),
            (
                "keep_alive_max_secs",
                self.keep_alive_max_secs.map(Into::into),
            ),
            (
                "invoke_timeout_secs",
                self.invoke_timeout_secs.map(Into::into),
            ),
            ("invoke_path", self.invoke_path.clone().map(Into::into)),
            ("max_body_bytes", self.max_body_bytes.map(Into::into)),
            ("max_queue", self.max_queue.map(Into::into)),
            (
                "max_queue_wait_secs",
                self.max_queue_wait_secs.map(Into::into),
            ),
        ] {
            if let Some(v) = v {
                put(k, v);
            }
        }
        serde_json::Value::Object(t)
    }
}

/// `rekindle install`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct InstallArgs {
    /// Directory with the binaries to install [default: the directory of this rekindle].
    #[arg(long, value_name = "DIR")]
    pub from: Option<PathBuf>,

    /// containerd's config file.
    #[arg(long, value_name = "PATH", default_value = install::DEFAULT_CONTAINERD_CONFIG)]
    pub config: PathBuf,

    /// Prefix of every path written, the config's too (an image's root, a test dir).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,

    /// containerd's version (e.g. 1.6, 2.1), when the config has no `version` key or does
    /// not exist [default: `containerd --version` on PATH, asked only then].
    #[arg(long, value_name = "VERSION", value_parser = parse_containerd_version)]
    pub containerd_version: Option<ContainerdVersion>,

    /// Print what it would do (and the config's diff), changing nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl InstallArgs {
    pub fn options(&self) -> Result<install::InstallOptions, install::Error> {
        Ok(install::InstallOptions {
            root: self.root.clone(),
            from: match &self.from {
                Some(dir) => dir.clone(),
                None => install::default_source_dir()?,
            },
            config: self.config.clone(),
            containerd_version: self.containerd_version,
            dry_run: self.dry_run,
        })
    }
}

/// `rekindle uninstall`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct UninstallArgs {
    /// containerd's config file.
    #[arg(long, value_name = "PATH", default_value = install::DEFAULT_CONTAINERD_CONFIG)]
    pub config: PathBuf,

    /// Prefix of every path removed, the config's too.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,

    /// Also remove /etc/rekindle and /var/lib/rekindle (every checkpoint image).
    #[arg(long)]
    pub purge: bool,

    /// Print what it would do (and the config's diff), changing nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl UninstallArgs {
    pub fn options(&self) -> install::UninstallOptions {
        install::UninstallOptions {
            root: self.root.clone(),
            config: self.config.clone(),
            purge: self.purge,
            dry_run: self.dry_run,
        }
    }
}

fn parse_containerd_version(s: &str) -> Result<ContainerdVersion, String> {
    ContainerdVersion::parse(s)
        .ok_or_else(|| format!("{s:?} is not a containerd version (e.g. 1.6, 1.7, 2.1)"))
}

/// Runs `install` or `uninstall` (`None` for the other commands) and returns its report,
/// which the caller prints.
pub fn run_setup(command: &Command) -> Option<Result<install::Report, install::Error>> {
    match command {
        Command::Install(args) => Some(args.options().and_then(|o| install::install(&o))),
        Command::Uninstall(args) => Some(install::uninstall(&args.options())),
        _ => None,
    }
}

impl Command {
    /// The command's name as typed, e.g. `image export`.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Status => "status",
            Command::Functions { command } => match command {
                None | Some(FunctionsCommand::Ls) => "functions ls",
                Some(FunctionsCommand::Add(_)) => "functions add",
                Some(FunctionsCommand::Rm { .. }) => "functions rm",
            },
            Command::Image(cmd) => cmd.name(),
            Command::Checkpoint { .. } => "checkpoint",
            Command::Invoke { .. } => "invoke",
            Command::Install(_) => "install",
            Command::Uninstall(_) => "uninstall",
        }
    }

    /// Whether the command talks to the agent's admin API.
    pub fn uses_agent(&self) -> bool {
        matches!(
            self,
            Command::Status
                | Command::Functions { .. }
                | Command::Checkpoint { .. }
                | Command::Invoke { .. }
        )
    }
}

/// Why a command against the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentCommandError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot read the request body from {path}: {source}")]
    Input {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the answer: {0}")]
    Output(#[source] std::io::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

impl AgentCommandError {
    /// The process exit status (see `rekindle --help`).
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentCommandError::Client(e) => e.exit_code(),
            // sysexits.h EX_NOINPUT
            AgentCommandError::Input { .. } => 66,
            AgentCommandError::Output(_) | AgentCommandError::Runtime(_) => 1,
        }
    }
}

/// `--data`: the body itself, or `@FILE`'s content.
pub fn read_data(data: &str) -> Result<String, AgentCommandError> {
    match data.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|e| AgentCommandError::Input {
            path: path.into(),
            source: e,
        }),
        None => Ok(data.to_string()),
    }
}

/// A "waiting for ..." line on stderr, redrawn with a spinner and the time elapsed while
/// an operation runs, and erased after; only when stderr is a terminal (logs and pipes
/// get nothing).
pub(crate) struct Progress {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    pub(crate) fn start(what: String) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress { task: None };
        }
        let task = tokio::spawn(async move {
            const FRAMES: [char; 4] = ['|', '/', '-', '\\'];
            let began = Instant::now();
            // Quick answers (a hot instance) show nothing.
            tokio::time::sleep(Duration::from_millis(300)).await;
            for k in 0.. {
                eprint!(
                    "\r\x1b[2K{} {what} ({:.1} s)",
                    FRAMES[k % FRAMES.len()],
                    began.elapsed().as_secs_f64()
                );
                let _ = std::io::stderr().flush();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Progress { task: Some(task) }
    }

    pub(crate) fn done(self) {
        if let Some(t) = self.task {
            t.abort();
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
        }
    }
}

fn emit<T: Serialize>(
    output: Output,
    value: &T,
    text: impl FnOnce() -> String,
) -> Result<(), AgentCommandError> {
    let s = match output {
        Output::Json => {
            serde_json::to_string_pretty(value)
                .map_err(|e| AgentCommandError::Output(std::io::Error::other(e)))?
                + "\n"
        }
        Output::Text => text(),
    };
    std::io::stdout()
        .write_all(s.as_bytes())
        .map_err(AgentCommandError::Output)
}

/// Runs `status`, `functions`, `checkpoint` or `invoke` against the agent on `--socket`
/// (`None` for the other commands).
pub fn run_agent(cli: &Cli) -> Option<Result<(), AgentCommandError>> {
    if !cli.command.uses_agent() {
        return None;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return Some(Err(AgentCommandError::Runtime(e))),
    };
    Some(runtime.block_on(agent_command(cli)))
}

async fn agent_command(cli: &Cli) -> Result<(), AgentCommandError> {
    let client = Client::new(&cli.socket);
    let out = cli.format();
    match &cli.command {
        Command::Status => {
            let s = client.status().await?;
            emit(out, &s, || render::status_text(&s))
        }
        Command::Functions { command } => match command {
            None | Some(FunctionsCommand::Ls) => {
                let fns = client.functions().await?;
                emit(out, &fns, || render::functions_table(&fns))
            }
            Some(FunctionsCommand::Add(args)) => {
                let f = client.add_function(&args.table()).await?;
                emit(out, &f, || render::added_text(&f))
            }
            Some(FunctionsCommand::Rm { name }) => {
                let progress = Progress::start(format!("removing {name}: draining its instances"));
                let r = client.remove_function(name).await;
                progress.done();
                let r = r?;
                emit(out, &r, || render::removed_text(&r))
            }
        },
        Command::Checkpoint {
            function,
            instance,
            keep_running,
            replace,
        } => {
            let progress = Progress::start(format!("checkpointing {function}"));
            let r = client
                .checkpoint(
                    function,
                    &CheckpointRequest {
                        instance: instance.clone(),
                        keep_running: *keep_running,
                        replace: *replace,
                    },
                )
                .await;
            progress.done();
            let c = r?;
            emit(out, &c, || render::checkpoint_text(&c))
        }
        Command::Invoke {
            function,
            data,
            path,
            method,
        } => {
            let body = data.as_deref().map(read_data).transpose()?;
            let progress = Progress::start(format!(
                "waiting for {function} (hot, warm, restore, or a cold start)"
            ));
            let r = client
                .invoke(
                    function,
                    &InvokeRequest {
                        path: path.clone(),
                        method: method.clone(),
                        body,
                    },
                )
                .await;
            progress.done();
            let i = r?;
            if out == Output::Text {
                eprint!("{}", render::invoke_summary(&i));
            }
            emit(out, &i, || {
                let mut b = i.body.clone();
                if !b.ends_with('\n') {
                    b.push('\n');
                }
                b
            })
        }
        _ => unreachable!("uses_agent"),
    }
}

/// Parses the command line (`--help`/`--version` print and exit here, as clap does) and
/// runs the subcommand.
pub fn main_with_args<I, T>(args: I) -> Result<(), Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    init_and_run(&cli)
}

/// Sets up logging and runs the parsed command line.
pub fn init_and_run(cli: &Cli) -> Result<(), Error> {
    logging::init(LogFormat::Text, "warn").map_err(Error::Logging)?;
    run(cli)
}

/// Runs one subcommand. (The `rekindle` binary runs the agent's commands through
/// [`run_agent`] itself, for their exit statuses; here their errors are
/// [`Error::Io`].)
pub fn run(cli: &Cli) -> Result<(), Error> {
    tracing::debug!(command = cli.command.name(), socket = %cli.socket.display(), output = ?cli.format(), "running");
    if let Command::Image(cmd) = &cli.command {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Usage(format!("cannot start the async runtime: {e}")))?;
        return runtime.block_on(image::run(cmd, &cli.restored_socket, cli.format()));
    }
    if let Some(result) = run_agent(cli) {
        return result.map_err(|e| Error::Io {
            what: format!("rekindle {}", cli.command.name()),
            source: std::io::Error::other(e),
        });
    }
    // The `rekindle` binary runs these itself (run_setup), for their own exit statuses.
    match run_setup(&cli.command) {
        Some(result) => {
            let report = result.map_err(|e| Error::Io {
                what: format!("rekindle {}", cli.command.name()),
                source: std::io::Error::other(e),
            })?;
            print!("{report}");
            Ok(())
        }
        None => unreachable!("every command is run above"),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn image_subcommands_parse() {
        let cases: &[&[&str]] = &[
            &["rekindle", "image", "list"],
            &["rekindle", "image", "ls", "--output", "json"],
            &["rekindle", "image", "inspect", "img1"],
            &["rekindle", "image", "export", "img1", "/tmp/img1.zst"],
            &[
                "rekindle",
                "image",
                "export",
                "img1",
                "x.zst",
                "--zstd-level",
                "9",
            ],
            &[
                "rekindle",
                "image",
                "import",
                "/tmp/img1.zst",
                "--name",
                "img2",
            ],
            &["rekindle", "image", "rm", "img1"],
            &["rekindle", "image", "stage", "img1"],
            &["rekindle", "image", "unstage", "img1"],
            &[
                "rekindle",
                "image",
                "gc",
                "--max-bytes",
                "20G",
                "--max-age",
                "7d",
            ],
            &["rekindle", "image", "gc", "--dry-run", "--max-bytes", "0"],
        ];
        for args in cases {
            let cli = Cli::try_parse_from(*args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert!(cli.command.name().starts_with("image "));
        }
        assert!(Cli::try_parse_from(["rekindle", "image", "gc", "--max-bytes", "lots"]).is_err());
        let cli = Cli::try_parse_from(["rekindle", "status", "--json"]).unwrap();
        assert_eq!(cli.format(), Output::Json);
        let cli = Cli::try_parse_from(["rekindle", "status"]).unwrap();
        assert_eq!(cli.format(), Output::Text);
        assert!(Cli::try_parse_from(["rekindle", "status", "--json", "--output", "text"]).is_err());
    }

    #[test]
    fn agent_subcommands_parse() {
        let cases: &[(&[&str], &str)] = &[
            (&["rekindle", "status"], "status"),
            (&["rekindle", "functions"], "functions ls"),
            (&["rekindle", "functions", "ls"], "functions ls"),
            (&["rekindle", "functions", "list"], "functions ls"),
            (&["rekindle", "functions", "rm", "hello"], "functions rm"),
            (
                &[
                    "rekindle",
                    "functions",
                    "add",
                    "hello",
                    "--image",
                    "i",
                    "--port",
                    "1",
                ],
                "functions add",
            ),
            (
                &["rekindle", "checkpoint", "hello", "--keep-running"],
                "checkpoint",
            ),
            (
                &["rekindle", "checkpoint", "hello", "--leave-running"],
                "checkpoint",
            ),
            (&["rekindle", "invoke", "hello", "--data", "{}"], "invoke"),
        ];
        for (args, name) in cases {
            let cli = Cli::try_parse_from(*args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(cli.command.name(), *name);
            assert!(cli.command.uses_agent());
        }
        let cli =
            Cli::try_parse_from(["rekindle", "checkpoint", "f", "--instance", "f-1"]).unwrap();
        let Command::Checkpoint {
            instance,
            keep_running,
            replace,
            ..
        } = cli.command
        else {
            panic!()
        };
        assert_eq!((instance.as_deref(), keep_running), (Some("f-1"), false));
        assert!(!replace, "a stored image is replaced only when asked");
        let cli = Cli::try_parse_from(["rekindle", "checkpoint", "f", "--replace"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Checkpoint { replace: true, .. }
        ));
        assert!(Cli::try_parse_from(["rekindle", "functions", "add", "f", "--port", "1"]).is_err());
        // --method goes with --path (the function's handler takes POST).
        assert!(Cli::try_parse_from(["rekindle", "invoke", "f", "--method", "PUT"]).is_err());
        let cli = Cli::try_parse_from([
            "rekindle", "invoke", "f", "--path", "/x?y=1", "--method", "PUT",
        ])
        .unwrap();
        let Command::Invoke {
            path, method, data, ..
        } = cli.command
        else {
            panic!()
        };
        assert_eq!(
            (path.as_deref(), method.as_deref(), data),
            (Some("/x?y=1"), Some("PUT"), None)
        );
    }

    #[test]
    fn functions_add_sends_only_the_keys_given() {
        let cli = Cli::try_parse_from([
            "rekindle",
            "functions",
            "add",
            "hello",
            "--image",
            "docker.io/rekindle/python-fn:latest",
            "--port",
            "8080",
            "--env",
            "STATE_MB=8",
            "--env",
            "A=b",
            "--memory-mb",
            "128",
            "--netns",
            "host",
            "--max-instances",
            "1",
        ])
        .unwrap();
        let Command::Functions {
            command: Some(FunctionsCommand::Add(args)),
        } = &cli.command
        else {
            panic!("{cli:?}")
        };
        let t = args.table();
        assert_eq!(
            t,
            serde_json::json!({
                "name": "hello",
                "image_ref": "docker.io/rekindle/python-fn:latest",
                "port": 8080,
                "env": ["STATE_MB=8", "A=b"],
                "memory_mb": 128,
                "netns": "host",
                "max_instances": 1,
            })
        );
        // What the agent parses, with its defaults for the rest, and accepts.
        let f = crate::admin::parse_function(t.to_string().as_bytes()).unwrap();
        assert_eq!((f.memory_mb, f.ready_path.as_str()), (128, "/healthz"));
        crate::admin::validate_function(&f, &[], None).unwrap();
        assert!(Cli::try_parse_from([
            "rekindle",
            "functions",
            "add",
            "f",
            "--image",
            "i",
            "--port",
            "1",
            "--netns",
            "bridge"
        ])
        .is_err());
    }

    #[test]
    fn data_is_the_body_or_a_files_content() {
        assert_eq!(read_data("{\"a\":1}").unwrap(), "{\"a\":1}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("body.json");
        std::fs::write(&file, "from a file").unwrap();
        assert_eq!(
            read_data(&format!("@{}", file.display())).unwrap(),
            "from a file"
        );
        let e = read_data("@/nonexistent/body.json").unwrap_err();
        assert_eq!(e.exit_code(), 66);
        assert!(e.to_string().contains("/nonexistent/body.json"), "{e}");
    }

    #[test]
    fn without_the_agent_the_error_names_the_socket_and_how_to_start_it() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let cli = Cli::try_parse_from(["rekindle", "status", "--socket", socket.to_str().unwrap()])
            .unwrap();
        let e = run_agent(&cli).unwrap().unwrap_err();
        assert_eq!(e.exit_code(), crate::EXIT_UNAVAILABLE);
        let m = e.to_string();
        assert!(m.contains(socket.to_str().unwrap()), "{m}");
        assert!(m.contains("systemctl start rekindle-agent"), "{m}");
    }

    #[test]
    fn install_and_uninstall_parse() {
        let cli = Cli::try_parse_from([
            "rekindle",
            "install",
            "--dry-run",
            "--root",
            "/tmp/r",
            "--from",
            "/opt/rekindle/bin",
            "--containerd-version",
            "v2.1.9",
        ])
        .unwrap();
        let Command::Install(args) = &cli.command else {
            panic!("{cli:?}")
        };
        let opts = args.options().unwrap();
        assert!(opts.dry_run);
        assert_eq!(opts.root, PathBuf::from("/tmp/r"));
        assert_eq!(opts.from, PathBuf::from("/opt/rekindle/bin"));
        assert_eq!(opts.config, PathBuf::from("/etc/containerd/config.toml"));
        assert_eq!(
            opts.containerd_version,
            Some(ContainerdVersion { major: 2, minor: 1 })
        );
        assert!(
            Cli::try_parse_from(["rekindle", "install", "--containerd-version", "two"]).is_err()
        );

        let cli = Cli::try_parse_from(["rekindle", "uninstall", "--purge", "--config", "/c.toml"])
            .unwrap();
        let Command::Uninstall(args) = &cli.command else {
            panic!("{cli:?}")
        };
        let opts = args.options();
        assert!(opts.purge && !opts.dry_run);
        assert_eq!(opts.config, PathBuf::from("/c.toml"));
        assert_eq!(opts.root, PathBuf::from("/"));
    }

    #[test]
    fn a_subcommand_is_required() {
        assert!(Cli::try_parse_from(["rekindle"]).is_err());
    }

    #[test]
    fn the_socket_is_the_agents_admin_socket_by_default() {
        let cli = Cli::try_parse_from(["rekindle", "status"]).unwrap();
        if std::env::var_os("REKINDLE_AGENT_SOCKET").is_none() {
            assert_eq!(cli.socket, PathBuf::from(config::DEFAULT_ADMIN_SOCKET));
        }
        let cli = Cli::try_parse_from(["rekindle", "status", "--socket", "/tmp/a.sock"]).unwrap();
        assert_eq!(cli.socket, PathBuf::from("/tmp/a.sock"));
        // The flag's earlier name still works.
        let cli =
            Cli::try_parse_from(["rekindle", "status", "--agent-socket", "/tmp/b.sock"]).unwrap();
        assert_eq!(cli.socket, PathBuf::from("/tmp/b.sock"));
    }
}
