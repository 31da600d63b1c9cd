//! Integration tests: Rekindle's shim driven by a real containerd (started by the tests,
//! see `harness`) running real containers through runc.
//!
//! Run: `cargo build --workspace && cargo test --test integration`
//! (`REKINDLE_TEST_RUNTIME=io.containerd.runc.v2` checks the harness with containerd's
//! own shim; `REKINDLE_CONTAINERD=1.6` runs against containerd 1.6). Needs root and what
//! `hack/setup.sh` installs.
//!
//! Each test is a user's story; after each one the harness checks that its containers
//! left nothing behind (processes, mounts, cgroups, runc state, shim sockets).

mod harness;

mod agent_admin;
mod agent_driver;
mod agent_forecast;
mod agent_gateway;
mod agent_live;
mod agent_restart;
mod checkpoint_restore;
mod containerd_restart;
mod criu_missing;
mod errors;
mod events;
mod exec;
mod foreign_image;
mod function;
mod leak_check;
mod observe;
mod run_to_completion;
mod shim_crash;
mod tcp_established;
mod working_set;
