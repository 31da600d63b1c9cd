//! `rekindle`, the operator CLI: talks to the local `rekindle-agent` (and through it to
//! `rekindle-restored`). Every subcommand is planned and shown in `--help`; none works
//! yet, and each says why.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{self, LogFormat};
pub use crate::image::ImageCommand;
use crate::install::{self, ContainerdVersion};
use crate::{image, logging, Error};

const ABOUT: &str = "Operator CLI for Rekindle: inspect and drive the node's agent, \
                     function pools and checkpoint images";

const LONG_ABOUT: &str = "\
Operator CLI for Rekindle. It asks the local rekindle-agent (on --agent-socket) about the
node's functions and their instances per tier (hot, warm, staged, cold), and manages the
checkpoint images that rekindle-restored keeps.

`rekindle image` manages the images through rekindle-restored's socket (--restored-socket).
`rekindle install` sets the node up (binaries, systemd units, the `rekindle` runtime in
containerd's config) and `rekindle uninstall` takes that away again; both have --dry-run.
The other subcommands are planned: each exits with status 69 (EX_UNAVAILABLE) and says what
it is waiting for.";

const AFTER_LONG_HELP: &str = "\
Environment:
  RUST_LOG   log filter (tracing-subscriber EnvFilter syntax), default \"warn\"

Exit status:
  0 success, 1 the daemon refused the request (its error code and message are printed),
  2 bad command line, 69 not implemented yet or daemon not reachable,
  66 (install) a binary to install is missing, 78 (install, uninstall) containerd's config
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
    /// Unix socket of the local rekindle-agent.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        default_value = config::DEFAULT_HOOK_SOCKET
    )]
    pub agent_socket: PathBuf,

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

    #[command(subcommand)]
    pub command: Command,
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
    /// Show the node: health, instances per tier, staged images, start latencies
    ///
    /// Health of rekindle-agent and rekindle-restored, instances per tier (hot, warm,
    /// staged, cold), images staged in memory, recent start latencies by path.
    Status,

    /// List functions with their instances per tier, forecast and pool targets
    Functions,

    /// Manage checkpoint images in rekindle-restored's store
    #[command(subcommand)]
    Image(ImageCommand),

    /// Checkpoint a running instance of a function into the image store
    Checkpoint {
        /// The function whose instance to checkpoint.
        function: String,
        /// Which instance (default: one the agent picks).
        #[arg(long, value_name = "ID")]
        instance: Option<String>,
        /// Keep the instance running after the checkpoint.
        #[arg(long)]
        leave_running: bool,
    },

    /// Invoke a function through the agent's gateway
    ///
    /// Tries a hot instance, then a warm one (thawed), then a restore from a checkpoint,
    /// then a cold start; prints the response and which path served it.
    Invoke {
        /// The function to invoke.
        function: String,
        /// Request body; `@FILE` reads it from a file.
        #[arg(long, value_name = "DATA")]
        data: Option<String>,
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
            Command::Functions => "functions",
            Command::Image(cmd) => cmd.name(),
            Command::Checkpoint { .. } => "checkpoint",
            Command::Invoke { .. } => "invoke",
            Command::Install(_) => "install",
            Command::Uninstall(_) => "uninstall",
        }
    }

    /// What the command is waiting for.
    fn missing(&self, cli: &Cli) -> String {
        let agent = cli.agent_socket.display();
        match self {
            Command::Status => format!(
                "rekindle-agent does not serve its control API on {agent} yet (the agent \
                 itself refuses to run)"
            ),
            Command::Functions => format!(
                "rekindle-agent's pool manager and forecaster, which this lists, and its \
                 control API on {agent} are still to be written"
            ),
            Command::Image(_) | Command::Install(_) | Command::Uninstall(_) => {
                unreachable!("implemented")
            }
            Command::Checkpoint { .. } => "checkpointing through the shim into \
                 rekindle-restored's image store is still to be written (checkpoint/restore \
                 issue)"
                .into(),
            Command::Invoke { .. } => format!(
                "rekindle-agent's invoke gateway (hot, warm, restore, cold) and its control \
                 API on {agent} are still to be written"
            ),
        }
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

/// Runs one subcommand. `image` talks to rekindle-restored; the others refuse with the
/// reason until the agent serves them.
pub fn run(cli: &Cli) -> Result<(), Error> {
    tracing::debug!(command = cli.command.name(), agent_socket = %cli.agent_socket.display(), output = ?cli.output, "running");
    if let Command::Image(cmd) = &cli.command {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Usage(format!("cannot start the async runtime: {e}")))?;
        return runtime.block_on(image::run(cmd, &cli.restored_socket, cli.output));
    }
    // The `rekindle` binary runs these itself (run_setup), for their own exit statuses.
    if let Some(result) = run_setup(&cli.command) {
        let report = result.map_err(|e| Error::Io {
            what: format!("rekindle {}", cli.command.name()),
            source: std::io::Error::other(e),
        })?;
        print!("{report}");
        return Ok(());
    }
    Err(Error::NotImplemented {
        what: format!("rekindle {}", cli.command.name()),
        reason: cli.command.missing(cli),
    })
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
    }

    #[test]
    fn every_planned_subcommand_parses_and_refuses_with_a_reason() {
        let cases: &[&[&str]] = &[
            &["rekindle", "status"],
            &["rekindle", "functions"],
            &["rekindle", "checkpoint", "hello", "--leave-running"],
            &["rekindle", "invoke", "hello", "--data", "{}"],
        ];
        for args in cases {
            let cli = Cli::try_parse_from(*args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let e = run(&cli).unwrap_err();
            assert_eq!(e.exit_code(), crate::EXIT_UNAVAILABLE);
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!(
                    "rekindle {} is not implemented yet: ",
                    cli.command.name()
                )),
                "{msg}"
            );
        }
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
    fn the_agent_socket_is_the_agents_hook_socket_by_default() {
        let cli = Cli::try_parse_from(["rekindle", "status"]).unwrap();
        assert_eq!(cli.agent_socket, PathBuf::from(config::DEFAULT_HOOK_SOCKET));
        let cli =
            Cli::try_parse_from(["rekindle", "status", "--agent-socket", "/tmp/a.sock"]).unwrap();
        assert_eq!(cli.agent_socket, PathBuf::from("/tmp/a.sock"));
    }
}
