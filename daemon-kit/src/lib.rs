//! What `rekindle-restored`, `rekindle-agent` and the `rekindle` CLI share, so that they
//! log and read their configuration the same way:
//! - [`logging`]: `tracing` to stderr, `RUST_LOG` filters, text or JSON lines;
//! - [`config`]: built-in defaults, overridden by a TOML file, overridden by the
//!   options given on the command line;
//! - [`socket`]: the private unix sockets they serve on.

pub mod config;
pub mod logging;
pub mod socket;

pub use config::ConfigError;
pub use logging::LogFormat;
