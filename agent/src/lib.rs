//! Rekindle's per-node agent, `rekindle-agent`, and the operator CLI, `rekindle`.
//!
//! The agent keeps the right number of instances of each function hot (running), warm
//! (restored and frozen), staged (checkpoint decompressed in memory by
//! `rekindle-restored`) or cold (LZ4 checkpoint on disk), from a local forecast of the
//! function's arrivals and eBPF-collected node metrics; it exports Prometheus metrics,
//! tells the cluster scheduler which node can start a function fastest, and on edge boxes
//! without Kubernetes serves invocations itself (hot → warm → restore → cold).
//!
//! The daemon ([`daemon::Agent`]) runs the pools ([`pool`]) of the functions in its
//! configuration through containerd ([`driver`]), the invoke gateway and `/metrics`
//! ([`gateway`], [`metrics`]), the eBPF node metrics ([`ebpf`]) and the scheduler hook
//! ([`hook`]); CLI subcommands that need what is not written yet refuse with the reason
//! (see [`Error::NotImplemented`]). `rekindle image ...` ([`image`]) manages the checkpoint
//! images through rekindle-restored.

pub mod admin;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod driver;
pub mod ebpf;
pub mod fast_path;
pub mod files;
pub mod gateway;
pub mod hook;
pub mod image;
pub mod install;
pub mod logging;
pub mod metrics;

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

    /// The requested function does not exist yet; `what` names it and `reason` says what is
    /// missing for it.
    #[error("{what} is not implemented yet: {reason}")]
    NotImplemented { what: String, reason: String },

    /// A request to rekindle-restored failed (or it could not be reached).
    #[error(transparent)]
    Restored(#[from] rekindle_restore_api::Error),

    /// containerd could not be reached (or the driver could not start).
    #[error(transparent)]
    Driver(#[from] Box<driver::DriverError>),

    /// An address to listen on could not be bound.
    #[error("cannot listen on {what} {addr}: {source}")]
    Listen {
        what: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// A command line that parsed but cannot be carried out as given.
    #[error("{0}")]
    Usage(String),
}

impl Error {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => EXIT_CONFIG,
            Error::Logging(_) => 1,
            Error::NotImplemented { .. } => EXIT_UNAVAILABLE,
            Error::Restored(e) if e.is_unreachable() => EXIT_UNAVAILABLE,
            Error::Restored(_) => 1,
            Error::Usage(_) => 2,
            Error::Driver(_) | Error::Listen { .. } => EXIT_UNAVAILABLE,
            Error::Io { .. } => 1,
        }
    }
}

// Pure logic of the pools: policies, forecaster, sizing, traces, the workload generator and
// the trace-driven simulator (no I/O beyond reading a trace file the caller names).
pub mod forecast;
pub mod policy;
pub mod pool;
pub mod rng;
pub mod sim;
pub mod sizing;
pub mod trace;
pub mod workload;
