//! The direct engine: containers restored by driving CRIU through libcriu from
//! the shim itself, without a runc process, and then run by the shim.
//!
//! - [`resources`]: the spec's cgroup limits and device rules, written by the shim;
//! - [`swrk`]: the CRIU processes the shim starts (`criu swrk`, `criu lazy-pages`);
//! - [`dump`]: checkpointing a container this engine restored (runc knows nothing of it).

pub mod dump;
pub mod resources;
pub mod swrk;
