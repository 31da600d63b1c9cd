//! The command line of `rekindle-restored`.

use std::path::PathBuf;

use clap::Parser;

use crate::config::{self, LogFormat};

const ABOUT: &str = "Rekindle's restore daemon: owns the node's checkpoint images and \
                     restores function containers from them";

const LONG_ABOUT: &str = "\
Rekindle's restore daemon: owns the node's checkpoint images and restores function
containers from them, so that a function starts in milliseconds instead of cold-starting.

What it does (one daemon per node, next to containerd and rekindle-agent):
  - takes the CRIU images of a checkpointed function instance from the shim
    (containerd-shim-rekindle-v2) and stores them LZ4-compressed under --store;
  - exports and imports images zstd-compressed, for shipping them between nodes;
  - keeps the images the agent marks hot staged decompressed in memory (tmpfs/memfd),
    so that a restore reads no disk;
  - does the slow part of a restore ahead of time (decompressing, staging pages,
    checking manifests) and the restore itself through libcriu (CRIU >= 4.2,
    /usr/local/sbin/criu), on request from the shim over the unix socket --socket;
  - garbage-collects images by policy.

Status: not implemented yet. Running it checks the command line and the configuration
file, then exits with status 69 (EX_UNAVAILABLE) saying so; see the checkpoint/restore
issue.";

const AFTER_LONG_HELP: &str = "\
Configuration file (TOML; every key optional, command-line options win over it):
  socket = \"/run/rekindle/restored.sock\"   # unix socket for the shim and the agent
  store = \"/var/lib/rekindle/images\"       # LZ4-compressed images, one directory each
  stage_dir = \"/run/rekindle/staged\"       # tmpfs where hot images are staged
  criu_binary = \"/usr/local/sbin/criu\"     # CRIU >= 4.2 (never Debian's 3.17)
  log_format = \"text\"                      # or \"json\"

Environment:
  RUST_LOG   log filter (tracing-subscriber EnvFilter syntax), default \"info\"

Exit status:
  0 success, 2 bad command line, 69 not implemented yet, 78 bad configuration";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "rekindle-restored",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_long_help = AFTER_LONG_HELP
)]
pub struct Cli {
    /// Unix socket on which the shim and the agent ask for restores and images.
    #[arg(long, value_name = "PATH", default_value = config::DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// Image store: checkpoint images, LZ4-compressed, one directory per image.
    #[arg(long, value_name = "DIR", default_value = config::DEFAULT_STORE)]
    pub store: PathBuf,

    /// Configuration file (TOML). A missing file is fine at the default path, an error
    /// when named explicitly.
    #[arg(long, value_name = "FILE", default_value = config::DEFAULT_CONFIG)]
    pub config: PathBuf,

    /// Log format on stderr: human-readable text, or one JSON object per line.
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
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
    fn defaults_are_the_conventional_paths() {
        let cli = Cli::try_parse_from(["rekindle-restored"]).unwrap();
        assert_eq!(cli.socket, PathBuf::from("/run/rekindle/restored.sock"));
        assert_eq!(cli.store, PathBuf::from("/var/lib/rekindle/images"));
        assert_eq!(cli.config, PathBuf::from("/etc/rekindle/restored.toml"));
        assert_eq!(cli.log_format, LogFormat::Text);
    }

    #[test]
    fn log_format_accepts_text_and_json_only() {
        let cli = Cli::try_parse_from(["rekindle-restored", "--log-format", "json"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        assert!(Cli::try_parse_from(["rekindle-restored", "--log-format", "xml"]).is_err());
    }
}
