//! The part of containerd's cgroup metrics the tests look at, decoded with prost.
//!
//! containerd-client does not ship these types; the field numbers are those of
//! containerd/cgroups' `cgroup1/stats/metrics.proto` (package `io.containerd.cgroups.v1`)
//! and `cgroup2/stats/metrics.proto` (package `io.containerd.cgroups.v2`).

use anyhow::{bail, Context as _, Result};

pub const V1_TYPE: &str = "io.containerd.cgroups.v1.Metrics";
pub const V2_TYPE: &str = "io.containerd.cgroups.v2.Metrics";

pub mod v1 {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Metrics {
        #[prost(message, optional, tag = "2")]
        pub pids: Option<PidsStat>,
        #[prost(message, optional, tag = "4")]
        pub memory: Option<MemoryStat>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PidsStat {
        #[prost(uint64, tag = "1")]
        pub current: u64,
        #[prost(uint64, tag = "2")]
        pub limit: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MemoryStat {
        #[prost(uint64, tag = "1")]
        pub cache: u64,
        #[prost(uint64, tag = "2")]
        pub rss: u64,
        #[prost(message, optional, tag = "33")]
        pub usage: Option<MemoryEntry>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MemoryEntry {
        #[prost(uint64, tag = "1")]
        pub limit: u64,
        #[prost(uint64, tag = "2")]
        pub usage: u64,
        #[prost(uint64, tag = "3")]
        pub max: u64,
        #[prost(uint64, tag = "4")]
        pub failcnt: u64,
    }
}

pub mod v2 {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Metrics {
        #[prost(message, optional, tag = "1")]
        pub pids: Option<PidsStat>,
        #[prost(message, optional, tag = "4")]
        pub memory: Option<MemoryStat>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PidsStat {
        #[prost(uint64, tag = "1")]
        pub current: u64,
        #[prost(uint64, tag = "2")]
        pub limit: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MemoryStat {
        #[prost(uint64, tag = "1")]
        pub anon: u64,
        #[prost(uint64, tag = "32")]
        pub usage: u64,
        #[prost(uint64, tag = "33")]
        pub usage_limit: u64,
    }
}

/// What the tests check, whichever cgroup version produced it.
#[derive(Debug)]
pub struct Summary {
    pub type_url: String,
    pub memory_usage: u64,
    pub pids_current: Option<u64>,
}

/// Decodes the payload of a `containerd.types.Metric` (type URL with or without the
/// `types.googleapis.com/` style prefix).
pub fn decode(any: &prost_types::Any) -> Result<Summary> {
    use prost::Message as _;
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    match name {
        V1_TYPE => {
            let m =
                v1::Metrics::decode(any.value.as_slice()).context("decoding cgroup v1 metrics")?;
            let memory = m
                .memory
                .context("cgroup v1 metrics without a memory section")?;
            Ok(Summary {
                type_url: any.type_url.clone(),
                memory_usage: memory.usage.map(|u| u.usage).unwrap_or_default(),
                pids_current: m.pids.map(|p| p.current),
            })
        }
        V2_TYPE => {
            let m =
                v2::Metrics::decode(any.value.as_slice()).context("decoding cgroup v2 metrics")?;
            let memory = m
                .memory
                .context("cgroup v2 metrics without a memory section")?;
            Ok(Summary {
                type_url: any.type_url.clone(),
                memory_usage: memory.usage,
                pids_current: m.pids.map(|p| p.current),
            })
        }
        other => bail!(
            "unexpected metrics type {other:?} ({} bytes); expected {V1_TYPE} or {V2_TYPE}",
            any.value.len()
        ),
    }
}
