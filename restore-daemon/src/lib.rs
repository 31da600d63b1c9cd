//! `rekindle-restored`, Rekindle's restore daemon.
//!
//! It owns the node's checkpoint images: it takes the CRIU images of a checkpointed
//! function instance, keeps them LZ4-compressed on disk ([`store`]), exports and imports
//! them zstd-compressed for shipping ([`store::archive`]), keeps the ones the agent asks
//! for staged decompressed in memory ([`stage`]), and hands the shim a verified,
//! decompressed image directory for each restore ([`service`]). It speaks the protocol of
//! `rekindle-restore-api` on a unix socket ([`server`]).
//!
//! Where to start reading: [`service::Service::handle`] is every operation, one `match`.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod gc;
pub mod host;
pub mod logging;
pub mod server;
pub mod service;
pub mod stage;
pub mod store;

use std::ffi::OsString;

use clap::{CommandFactory, FromArgMatches};

pub use cli::Cli;
pub use config::Config;

/// `sysexits.h`'s EX_CONFIG: the configuration is wrong.
pub const EXIT_CONFIG: u8 = 78;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::Error),

    #[error("cannot set up logging: {0}")]
    Logging(String),

    /// The daemon could not start: store, staging area, socket.
    #[error("cannot start: {0}")]
    Startup(String),
}

impl Error {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => EXIT_CONFIG,
            Error::Logging(_) | Error::Startup(_) => 1,
        }
    }
}

/// Parses the command line (`--help`/`--version` print and exit here, as clap does),
/// loads the configuration, sets up logging, and runs the daemon until SIGTERM/SIGINT.
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

/// Runs the daemon with a resolved configuration until SIGTERM/SIGINT.
pub fn run(config: &Config) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("restored")
        .build()
        .map_err(|e| Error::Startup(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(daemon::run(config))
}
