//! Logging is shared with the other daemons: see `rekindle_daemon_kit::logging`.

pub use rekindle_daemon_kit::logging::init;
