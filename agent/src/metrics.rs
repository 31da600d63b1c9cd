//! The agent's Prometheus metrics (`GET /metrics` on `metrics_addr`), one name per
//! concept:
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `rekindle_starts_total` | `function`, `tier` | requests served, by how their instance was had: `hot` (an idle running instance), `warm` (thawed), `restore_staged`, `restore_disk` (restored from the image staged in memory / on disk), `cold` (full cold start) |
//! | `rekindle_start_failures_total` | `function`, `tier`, `reason` | a path of the gateway that failed (the request fell back to the next); `reason` is one of [`REASONS`] |
//! | `rekindle_start_latency_seconds` | `tier` | time from a request's arrival to an instance ready to take it |
//! | `rekindle_pool_instances` | `function`, `tier` | instances now: `hot` (running, busy included), `warm` (frozen); the image: `staged`, `disk` (0 or 1) |
//! | `rekindle_pool_target` | `function`, `tier` | the policy's targets now: `hot`, `warm`, `staged` (0 or 1) |
//! | `rekindle_pool_actions_total` | `function`, `action`, `outcome` | the pool's own actions (`start`, `checkpoint`, `freeze`, `thaw`, `stop`, `stage`, `unstage`; `ok` or `failed`) |

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::driver::{Cause, DriverError};

/// How a request's instance was had (the `tier` label of the start metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StartTier {
    Hot,
    Warm,
    RestoreStaged,
    RestoreDisk,
    Cold,
}

impl StartTier {
    pub const ALL: [StartTier; 5] = [
        StartTier::Hot,
        StartTier::Warm,
        StartTier::RestoreStaged,
        StartTier::RestoreDisk,
        StartTier::Cold,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StartTier::Hot => "hot",
            StartTier::Warm => "warm",
            StartTier::RestoreStaged => "restore_staged",
            StartTier::RestoreDisk => "restore_disk",
            StartTier::Cold => "cold",
        }
    }
}

/// The values of the `reason` label: bounded, enum-like.
pub const REASONS: [&str; 10] = [
    "containerd",
    "timeout",
    "not_ready",
    "restored",
    "io",
    "invalid",
    "cleanup",
    "invoke",
    "budget",
    "shutdown",
];

/// The `reason` label of a driver failure.
pub fn reason(e: &DriverError) -> &'static str {
    match &e.cause {
        Cause::Grpc { .. } => "containerd",
        Cause::Timeout { .. } => "timeout",
        Cause::NotReady { .. } => "not_ready",
        Cause::Restored(_) => "restored",
        Cause::Io { .. } => "io",
        Cause::Invalid(_) => "invalid",
        Cause::Several { .. } => "cleanup",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FnTier {
    pub function: String,
    pub tier: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FnTierReason {
    pub function: String,
    pub tier: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabel {
    pub tier: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FnAction {
    pub function: String,
    pub action: String,
    pub outcome: String,
}

type HistogramFamily = Family<TierLabel, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms … ~33 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    pub starts: Family<FnTier, Counter>,
    pub start_failures: Family<FnTierReason, Counter>,
    pub start_latency: HistogramFamily,
    pub pool_instances: Family<FnTier, Gauge>,
    pub pool_target: Family<FnTier, Gauge>,
    pub pool_actions: Family<FnAction, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let starts = Family::<FnTier, Counter>::default();
        let start_failures = Family::<FnTierReason, Counter>::default();
        let start_latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let pool_instances = Family::<FnTier, Gauge>::default();
        let pool_target = Family::<FnTier, Gauge>::default();
        let pool_actions = Family::<FnAction, Counter>::default();
        registry.register(
            "rekindle_starts",
            "Requests served, by how their instance was had (hot, warm, restore_staged, restore_disk, cold)",
            starts.clone(),
        );
        registry.register(
            "rekindle_start_failures",
            "Gateway paths that failed (the request fell back to the next path), by reason",
            start_failures.clone(),
        );
        registry.register(
            "rekindle_start_latency_seconds",
            "From a request's arrival to an instance ready to take it",
            start_latency.clone(),
        );
        registry.register(
            "rekindle_pool_instances",
            "Instances by tier (hot: running, warm: frozen); the image: staged, disk (0 or 1)",
            pool_instances.clone(),
        );
        registry.register(
            "rekindle_pool_target",
            "The policy's targets (hot, warm instances; staged image 0 or 1)",
            pool_target.clone(),
        );
        registry.register(
            "rekindle_pool_actions",
            "The pool manager's own actions, by outcome",
            pool_actions.clone(),
        );
        Metrics {
            registry,
            starts,
            start_failures,
            start_latency,
            pool_instances,
            pool_target,
            pool_actions,
        }
    }

    pub fn start(&self, function: &str, tier: StartTier, latency_secs: f64) {
        self.starts
            .get_or_create(&FnTier {
                function: function.into(),
                tier: tier.name().into(),
            })
            .inc();
        self.start_latency
            .get_or_create(&TierLabel {
                tier: tier.name().into(),
            })
            .observe(latency_secs);
    }

    pub fn failure(&self, function: &str, tier: StartTier, reason: &'static str) {
        debug_assert!(REASONS.contains(&reason), "{reason}");
        self.start_failures
            .get_or_create(&FnTierReason {
                function: function.into(),
                tier: tier.name().into(),
                reason: reason.into(),
            })
            .inc();
    }

    pub fn action(&self, function: &str, action: &'static str, ok: bool) {
        self.pool_actions
            .get_or_create(&FnAction {
                function: function.into(),
                action: action.into(),
                outcome: if ok { "ok" } else { "failed" }.into(),
            })
            .inc();
    }

    pub fn set_pool(&self, function: &str, tier: &'static str, instances: i64) {
        self.pool_instances
            .get_or_create(&FnTier {
                function: function.into(),
                tier: tier.into(),
            })
            .set(instances);
    }

    pub fn set_target(&self, function: &str, tier: &'static str, target: i64) {
        self.pool_target
            .get_or_create(&FnTier {
                function: function.into(),
                tier: tier.into(),
            })
            .set(target);
    }

    /// The text exposition (OpenMetrics text, which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_the_readme_metrics() {
        let m = Metrics::new();
        m.start("hello", StartTier::Cold, 1.5);
        m.start("hello", StartTier::Hot, 0.0001);
        m.failure("hello", StartTier::RestoreDisk, "restored");
        m.set_pool("hello", "hot", 2);
        m.set_target("hello", "warm", 1);
        m.action("hello", "checkpoint", true);
        let t = m.encode();
        for want in [
            "rekindle_starts_total{function=\"hello\",tier=\"cold\"} 1",
            "rekindle_starts_total{function=\"hello\",tier=\"hot\"} 1",
            "rekindle_start_failures_total{function=\"hello\",tier=\"restore_disk\",reason=\"restored\"} 1",
            "rekindle_start_latency_seconds_count{tier=\"cold\"} 1",
            "rekindle_pool_instances{function=\"hello\",tier=\"hot\"} 2",
            "rekindle_pool_target{function=\"hello\",tier=\"warm\"} 1",
            "rekindle_pool_actions_total{function=\"hello\",action=\"checkpoint\",outcome=\"ok\"} 1",
        ] {
            assert!(t.contains(want), "{want} missing in:\n{t}");
        }
    }
}
