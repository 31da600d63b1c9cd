//! Rekindle: node-level pieces shared by the components (eBPF programs, built from `bpf/`).
