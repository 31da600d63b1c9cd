//! Rekindle: node-level pieces shared by the components.
//!
//! - [`bpf`]: the eBPF probes built from `bpf/` by `build.rs` — per-cgroup CPU time,
//!   run-queue latency, page faults, exec/exit counts and start-up timeline, loaded with
//!   libbpf-rs. The agent loads them at start-up and, where that is not possible (no
//!   privileges, no kernel BTF), goes on with cgroup statistics alone.

pub mod bpf;
