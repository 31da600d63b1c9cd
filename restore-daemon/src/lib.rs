//! `rekindle-restored`, Rekindle's restore daemon.
//!
//! It owns the node's checkpoint images: it takes the CRIU images of a checkpointed
//! function instance, keeps them LZ4-compressed on disk, exports and imports them
//! zstd-compressed for shipping, keeps the ones the agent asks for staged decompressed in
//! memory, and performs the fast restore through libcriu when the shim asks for one.
//!
//! For now only its command line, configuration and logging exist: running it refuses to
//! start (see [`Error::NotImplemented`]) rather than pretend to serve.

pub mod cli;
pub mod config;
pub mod logging;
pub mod store;

use std::ffi::OsString;

use clap::{CommandFactory, FromArgMatches};

pub use cli::Cli;
pub use config::Config;

/// `sysexits.h`'s EX_UNAVAILABLE: the service cannot run (here: not implemented yet).
pub const EXIT_UNAVAILABLE: u8 = 69;
/// `sysexits.h`'s EX_CONFIG: the configuration is wrong.
pub const EXIT_CONFIG: u8 = 78;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::Error),

    #[error("cannot set up logging: {0}")]
    Logging(String),

    #[error(
        "not implemented yet: the image store (LZ4 at rest under {store}, zstd for shipping, \
         in-memory staging) and the restore socket {socket} are still to be written \
         (checkpoint/restore issue); refusing to start rather than pretend to serve"
    )]
    NotImplemented { socket: String, store: String },
}

impl Error {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => EXIT_CONFIG,
            Error::Logging(_) => 1,
            Error::NotImplemented { .. } => EXIT_UNAVAILABLE,
        }
    }
}

/// Parses the command line (`--help`/`--version` print and exit here, as clap does),
/// loads the configuration, sets up logging, and runs the daemon.
pub fn main_with_args<I, T>(args: I) -> Result<(), Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = Cli::command().get_matches_from(args);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let config = Config::load(&cli, &matches)?;
    logging::init(config.log_format).map_err(Error::Logging)?;
    run(&config)
}

/// Runs the daemon with a resolved configuration. Not implemented yet: refuses.
pub fn run(config: &Config) -> Result<(), Error> {
    tracing::debug!(
        socket = %config.socket.display(),
        store = %config.store.display(),
        stage_dir = %config.stage_dir.display(),
        criu_binary = %config.criu_binary.display(),
        "configuration loaded"
    );
    Err(Error::NotImplemented {
        socket: config.socket.display().to_string(),
        store: config.store.display().to_string(),
    })
}
