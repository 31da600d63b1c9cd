//! The spec's cgroup limits and device rules, written by the shim.
