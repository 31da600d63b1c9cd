//! The direct engine: containers restored by driving CRIU through libcriu from
//! the shim itself, without a runc process, and then run by the shim.
//!
//! - [`resources`]: the spec's cgroup limits and device rules, written by the shim;
//! - [`dump`]: checkpointing a container this engine restored (runc knows nothing of it).

pub mod dump;
pub mod resources;
