//! `containerd-shim-rekindle-v2`: a containerd shim v2 for function containers.
//!
//! - [`bootstrap`]: how containerd runs the binary (task API v2 and v3);
//! - [`service`]: the shim process (containerd's `start`/`delete` actions,
//!   exit and event forwarding);
//! - [`task`]: the Task API over ttrpc, a thin adapter over typed methods;
//! - [`early`]: what a new server starts before Create reaches it;
//! - [`bundle`]: the bundle containerd hands over (spec, engine files, rootfs);
//! - [`container`]: container and process state, free of I/O;
//! - [`runc`]: the runc engine (OCI lifecycle through the runc CLI);
//! - [`direct`]: the direct engine (restores through libcriu, no runc process);
//! - [`nsexec`]: exec into a container the direct engine runs;
//! - [`stdio`] and [`console`]: a process's stdio and terminal;
//! - [`annotations`]: what a container's annotations ask of restores;
//! - [`error`]: the error type and its one mapping to ttrpc codes;
//! - [`logging`]: the log lines containerd gets, tagged with the shim's id.

pub mod annotations;
pub mod bootstrap;
pub mod bundle;
pub mod cgroups;
pub mod console;
pub mod container;
pub mod criu_tar;
pub mod direct;
pub mod early;
pub mod error;
pub mod logging;
pub mod nsexec;
pub mod publisher;
pub mod runc;
pub mod service;
pub mod spawn;
pub mod stdio;
pub mod task;

pub use error::{Error, Result};
pub use service::{Service, RUNTIME_TYPE};
