//! The command line of `rekindle-restored`.

use std::path::PathBuf;

use clap::Parser;

use crate::config::{self, LogFormat};

const ABOUT: &str = "Rekindle's restore daemon: owns the node's checkpoint images and \
                     prepares them for fast restores";

const LONG_ABOUT: &str = "\
Rekindle's restore daemon: owns the node's checkpoint images and prepares them for fast
restores, so that a function starts in milliseconds instead of cold-starting.

What it does (one daemon per node, next to containerd and rekindle-agent):
  - takes the CRIU images of a checkpointed function instance from the shim
    (containerd-shim-rekindle-v2) and stores them LZ4-compressed under --store, with a
    manifest of SHA-256 checksums, the CRIU version and the kernel they were made with;
  - exports and imports images as zstd-compressed tar archives, for shipping them
    between nodes (archives are validated: paths, file types, sizes, checksums);
  - keeps the images the agent marks hot staged decompressed in memory (a tmpfs at
    --stage-dir), so that a restore reads no disk and decompresses nothing;
  - hands the shim a verified, decompressed image directory for each restore (a lease),
    refusing images made by another CRIU version or kernel unless told otherwise; the
    shim runs CRIU itself (runc restore, or libcriu), so that it stays the parent of the
    restored container;
  - garbage-collects images by age and size, never a staged or leased one;
  - counts the restore outcomes the shim reports (by engine: direct, runc, cold; with
    the latest failure's reason), shown by `rekindle image stats`.

Protocol: newline-delimited JSON on the unix socket --socket (root-only), one request
per connection; see the rekindle-restore-api crate. `rekindle image ...` is its CLI.";

const AFTER_LONG_HELP: &str = "\
Configuration file (TOML; every key optional, command-line options win over it):
  socket = \"/run/rekindle/restored.sock\"   # unix socket for the shim and the agent
  store = \"/var/lib/rekindle/images\"       # LZ4-compressed images, one directory each
  stage_dir = \"/run/rekindle/staged\"       # staged images and restore leases (tmpfs)
  mount_stage_tmpfs = true                   # mount a tmpfs on stage_dir if needed
  stage_tmpfs_size = \"8g\"                  # its size= (default: half of RAM)
  criu_binary = \"/usr/local/sbin/criu\"     # CRIU >= 4.2 (never Debian's 3.17)
  allowed_uids = []                          # non-root uids allowed on the socket
  socket_gid = 1000                          # socket group (mode 0660) for those uids
  max_files = 4096                           # most files in one image
  max_total_bytes = 17179869184              # most bytes in one image (16 GiB)
  lease_ttl_secs = 900                       # unreleased restore leases expire
  log_format = \"text\"                      # or \"json\"

Environment:
  RUST_LOG   log filter (tracing-subscriber EnvFilter syntax), default \"info\"

Signals:
  SIGTERM, SIGINT   stop accepting, finish requests in flight, remove the socket, drop
                    the staged images (and unmount the staging tmpfs if it was mounted)

Exit status:
  0 stopped by a signal, 1 could not start, 2 bad command line, 78 bad configuration";

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

    /// Staging area: decompressed images kept in memory (a tmpfs is mounted here when it
    /// is not on one), and each restore's own decompressed copy.
    #[arg(long, value_name = "DIR", default_value = config::DEFAULT_STAGE_DIR)]
    pub stage_dir: PathBuf,

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
        assert_eq!(cli.stage_dir, PathBuf::from("/run/rekindle/staged"));
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
