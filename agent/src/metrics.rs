//! The agent's Prometheus metrics (`GET /metrics` on `metrics_addr`), one name per
//! concept:
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `rekindle_starts_total` | `function`, `tier` | requests served, by how their instance was had: `hot` (an idle running instance), `warm` (thawed), `restore_staged`, `restore_disk` (restored from the image staged in memory / on disk), `cold` (full cold start) |
//! | `rekindle_start_failures_total` | `function`, `tier`, `reason` | a path of the gateway that failed (the request fell back to the next); `reason` is one of [`REASONS`] |
//! | `rekindle_gateway_refused_total` | `function`, `reason` | requests the invoke gateway answered 503 without serving: `queue_full` (`max_instances` busy and `max_queue` requests waiting), `queue_timeout` (waited `max_queue_wait_secs`), `budget` (no memory for an instance, none can come), `shutdown` |
//! | `rekindle_start_latency_seconds` | `tier` | time from a request's arrival to an instance ready to take it |
//! | `rekindle_pool_instances` | `function`, `tier` | instances now: `hot` (running, busy included), `warm` (frozen); the image: `staged`, `disk` (0 or 1) |
//! | `rekindle_pool_target` | `function`, `tier` | the policy's targets now: `hot`, `warm`, `staged` (0 or 1) |
//! | `rekindle_pool_actions_total` | `function`, `action`, `outcome` | the pool's own actions (`start`, `checkpoint`, `freeze`, `thaw`, `stop`, `stage`, `unstage`; `ok` or `failed`) |
//! | `rekindle_fast_path_available` | | 1 while checkpoints and restores work (rekindle-restored reachable and its CRIU working), 0 while instances start cold (the reason is in the log and in `rekindle status`) |
//! | `rekindle_bpf_loaded` | | 1 when the eBPF probes are loaded and read, 0 when the agent goes on with cgroup statistics alone (the reason is in its log) |
//! | `rekindle_function_cpu_seconds_total` | `function` | CPU time of the function's instances (eBPF, `sched_switch`; accounted when a task leaves a CPU) |
//! | `rekindle_function_runqueue_latency_seconds` | `function` | histogram of the waits of its instances' tasks from runnable to running (eBPF; log2 buckets from 2 µs) |
//! | `rekindle_function_page_faults_total` | `function`, `kind` | page faults of its instances' tasks, `kind` `minor` or `major` (eBPF, the tasks' own `min_flt`/`maj_flt`) |
//! | `rekindle_function_processes_exec_total` | `function` | successful `execve`s in its instances (eBPF) |
//! | `rekindle_function_processes_exit_total` | `function` | processes (thread-group leaders) that exited in its instances (eBPF) |
//! | `rekindle_function_memory_bytes` | `function` | memory charged to its instances' cgroups now, summed (`memory.usage_in_bytes` on cgroup v1, `memory.current` on v2; with or without eBPF) |
//! | `rekindle_function_instance_memory_bytes` | `function` | memory one instance of the function takes: the 90th percentile of its instances' recent cgroup memory reads (the last 64, one per instance per collection) |
//! | `rekindle_node_pressure` | `resource` | the node's pressure, Linux PSI "some" avg10 (percent of the last 10 s in which a task stalled on `cpu` or `memory`); absent without PSI |
//! | `rekindle_function_io_bytes_total` | `function`, `direction` | block I/O of its instances, `direction` `read` or `write` (cgroup files: `blkio.throttle.io_service_bytes` on v1, `io.stat` on v2; with or without eBPF) |
//! | `rekindle_function_io_operations_total` | `function`, `direction` | block I/O operations of its instances (`blkio.throttle.io_serviced` on v1, `io.stat` on v2) |
//! | `rekindle_function_startup_seconds` | `function`, `tier` | start-up timeline of an instance started for a request (`tier` `restore_staged`, `restore_disk` or `cold`): from the first time a task of its cgroup ran (eBPF, watched from just before Tasks.Start) to the agent receiving the instance's answer to that request; the pool's own background starts (targets, pre-warm) answer no request and have none |
//! | `rekindle_forecast_arrivals` | `function` | requests the policy's forecaster expects in the current window (one policy interval); absent for functions it does not forecast |
//! | `rekindle_observed_arrivals` | `function` | requests that arrived in the current window so far |
//! | `rekindle_forecast_window_seconds` | | the window's length in real seconds (one policy minute: 60 / `time_scale`) |
//! | `rekindle_memory_budget_bytes` | | the node's memory budget for the pools (absent without one) |
//! | `rekindle_pool_memory_bytes` | `function` | memory the budget counts for the function now: its instances (running, frozen, starting) at `memory_mb` each — or at `rekindle_function_instance_memory_bytes` when that is more — and its staged image |
//! | `rekindle_exec_seconds` | `function` | the execution time the policy predicts for the function (IQR-filtered mean of its recent measured durations) and sizes its hot target with; absent for policies that do not size by it |
//! | `rekindle_pressure_hold_back` | | 1 while the node's pressure holds back speculative pool work (pre-warm loads, warm-target starts, stages), 0 otherwise |
//!
//! The `rekindle_function_*` metrics are sampled by the node collector ([`crate::ebpf`])
//! every few seconds; the eBPF ones (CPU, run-queue latency, page faults, exec/exit,
//! start-up) are absent while `rekindle_bpf_loaded` is 0. They count from when the
//! collector first saw an instance's cgroup — for the instances the driver starts, from
//! just before Tasks.Start — and keep counting across instances (an instance's last
//! counts are added when its cgroup goes away). The arrivals and memory metrics are set
//! by the pool manager at each reconcile.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
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

    /// Whether a request served this way had a new instance started for it (restore or
    /// cold start), rather than one already loaded.
    pub fn starts_instance(self) -> bool {
        matches!(
            self,
            StartTier::RestoreStaged | StartTier::RestoreDisk | StartTier::Cold
        )
    }

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
pub const REASONS: [&str; 12] = [
    "containerd",
    "timeout",
    "not_ready",
    "restored",
    "io",
    "invalid",
    "cleanup",
    "image_exists",
    "invoke",
    "budget",
    "shutdown",
    // A restore wanted while checkpoints and restores do not work here (no CRIU,
    // rekindle-restored down): not tried, the request started cold.
    "fast_path_unavailable",
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
        Cause::ImageExists(_) => "image_exists",
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
pub struct FnReason {
    pub function: String,
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

/// Buckets of the start histograms (start latency, start-up timeline): 1 ms … ~33 s.
fn start_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 16)
}

fn latency_histogram() -> Histogram {
    Histogram::new(start_buckets())
}

pub struct Metrics {
    registry: Registry,
    pub starts: Family<FnTier, Counter>,
    pub start_failures: Family<FnTierReason, Counter>,
    pub start_latency: HistogramFamily,
    pub pool_instances: Family<FnTier, Gauge>,
    pub pool_target: Family<FnTier, Gauge>,
    pub pool_actions: Family<FnAction, Counter>,
    /// The gateway's 503s, by reason.
    pub refused: Family<FnReason, Counter>,
    /// 1 while checkpoints and restores work on this node ([`crate::fast_path`]).
    pub fast_path: Gauge,
    /// Per-function node statistics (eBPF and cgroups), written by [`crate::ebpf`].
    pub node: Arc<NodeMetrics>,
    /// Forecast vs. observed arrivals and memory budget use, written by the pool manager.
    pub pool: Arc<PoolMetrics>,
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
        let refused = Family::<FnReason, Counter>::default();
        let fast_path = Gauge::default();
        // Until the first probe says otherwise.
        fast_path.set(1);
        registry.register(
            "rekindle_fast_path_available",
            "1 while checkpoints and restores work (rekindle-restored reachable, its CRIU working); 0: instances start cold",
            fast_path.clone(),
        );
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
        registry.register(
            "rekindle_gateway_refused",
            "Requests the invoke gateway refused with 503 (queue_full, queue_timeout, budget, shutdown)",
            refused.clone(),
        );
        let node = Arc::new(NodeMetrics::default());
        registry.register_collector(Box::new(node.clone()));
        let pool = Arc::new(PoolMetrics::default());
        registry.register_collector(Box::new(pool.clone()));
        Metrics {
            registry,
            starts,
            start_failures,
            start_latency,
            pool_instances,
            pool_target,
            pool_actions,
            refused,
            fast_path,
            node,
            pool,
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

    /// A request the gateway refused; `reason` is a
    /// [`crate::pool::admission::Refusal::label`].
    pub fn refused(&self, function: &str, reason: &'static str) {
        self.refused
            .get_or_create(&FnReason {
                function: function.into(),
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

    pub fn set_fast_path(&self, available: bool) {
        self.fast_path.set(available as i64);
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

/// One function's node statistics: eBPF counters summed over its instances since the
/// collector first saw them, and its instances' memory now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FunctionNodeStats {
    pub cpu_ns: u64,
    pub runq_count: u64,
    pub runq_total_ns: u64,
    /// Per bucket (not cumulative); bucket `i` ends at
    /// [`rekindle::bpf::runq_bucket_upper_us`]`(i)`.
    pub runq_hist: [u64; rekindle::bpf::RUNQ_BUCKETS],
    pub faults_minor: u64,
    pub faults_major: u64,
    pub execs: u64,
    pub exits: u64,
    pub memory_bytes: u64,
    /// The 90th percentile of its instances' recent memory reads, bytes.
    pub instance_memory_p90_bytes: Option<u64>,
    /// Block I/O summed over its instances' samples (cgroup files), bytes and operations.
    pub io: IoStats,
}

/// Block I/O of a cgroup (or a sum of them): what the cgroup files count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoStats {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_ops: u64,
    pub write_ops: u64,
}

impl IoStats {
    /// What grew from `last` to `self` (a counter that went down counts as 0).
    pub fn since(&self, last: &IoStats) -> IoStats {
        IoStats {
            read_bytes: self.read_bytes.saturating_sub(last.read_bytes),
            write_bytes: self.write_bytes.saturating_sub(last.write_bytes),
            read_ops: self.read_ops.saturating_sub(last.read_ops),
            write_ops: self.write_ops.saturating_sub(last.write_ops),
        }
    }

    pub fn add(&mut self, d: &IoStats) {
        self.read_bytes += d.read_bytes;
        self.write_bytes += d.write_bytes;
        self.read_ops += d.read_ops;
        self.write_ops += d.write_ops;
    }
}

/// The agent receiving the first answer of an instance started for a request: the end
/// of its start-up timeline, matched by the node collector with the instance's first
/// schedule (eBPF).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirstResponse {
    pub instance: String,
    pub tier: StartTier,
    /// `CLOCK_MONOTONIC` ns ([`rekindle::bpf::monotonic_ns`]), the probes' clock.
    pub at_ns: u64,
}

/// Responses kept for the collector at most; beyond, the oldest are dropped (the
/// collector drains them every few seconds, so only a stalled one gets there).
const MAX_PENDING_RESPONSES: usize = 4096;

/// A histogram with fixed bounds, counted here (per bucket, not cumulative).
#[derive(Clone, Debug, PartialEq)]
struct Buckets {
    sum: f64,
    count: u64,
    /// One per bound of [`start_buckets`], then +Inf.
    counts: Vec<u64>,
}

impl Buckets {
    fn new() -> Self {
        Buckets {
            sum: 0.0,
            count: 0,
            counts: vec![0; start_buckets().count() + 1],
        }
    }

    fn observe(&mut self, v: f64) {
        let i = start_buckets()
            .position(|upper| v <= upper)
            .unwrap_or(self.counts.len() - 1);
        self.counts[i] += 1;
        self.count += 1;
        self.sum += v;
    }

    fn encode(&self) -> ConstHistogram {
        let bounds = start_buckets().chain(std::iter::once(f64::INFINITY));
        ConstHistogram {
            sum: self.sum,
            count: self.count,
            buckets: bounds.zip(self.counts.iter().copied()).collect(),
        }
    }
}

/// The node collector's latest view, encoded at each scrape (a prometheus-client
/// [`Collector`]): `rekindle_bpf_loaded` and the `rekindle_function_*` metrics.
#[derive(Debug, Default)]
pub struct NodeMetrics {
    state: Mutex<NodeState>,
}

#[derive(Debug, Default)]
struct NodeState {
    /// `None` until the collector has started: nothing is exported.
    bpf_loaded: Option<bool>,
    functions: BTreeMap<String, FunctionNodeStats>,
    /// PSI, when the kernel has it.
    pressure: Option<crate::pool::pressure::NodePressure>,
    /// Start-up timelines by (function, tier).
    startup: BTreeMap<(String, &'static str), Buckets>,
    /// First answers not yet matched by the collector.
    responses: Vec<FirstResponse>,
}

impl NodeMetrics {
    /// Whether the eBPF probes are loaded (what `rekindle_bpf_loaded` says).
    pub fn set_bpf_loaded(&self, loaded: bool) {
        self.state.lock().unwrap().bpf_loaded = Some(loaded);
    }

    /// Replaces the per-function statistics.
    pub fn set_functions(&self, functions: BTreeMap<String, FunctionNodeStats>) {
        self.state.lock().unwrap().functions = functions;
    }

    pub fn function(&self, name: &str) -> Option<FunctionNodeStats> {
        self.state.lock().unwrap().functions.get(name).cloned()
    }

    /// The node's pressure now (`None`: no PSI).
    pub fn set_pressure(&self, p: Option<crate::pool::pressure::NodePressure>) {
        self.state.lock().unwrap().pressure = p;
    }

    pub fn pressure(&self) -> Option<crate::pool::pressure::NodePressure> {
        self.state.lock().unwrap().pressure
    }

    /// The agent has just received the first answer of `instance`, started for that
    /// request by `tier` (see [`StartTier::starts_instance`]); the collector closes the
    /// instance's start-up timeline with it at its next pass. Kept only while the eBPF
    /// probes are loaded (without them there is no first schedule to match).
    pub fn first_response(&self, instance: &str, tier: StartTier, at_ns: u64) {
        let mut st = self.state.lock().unwrap();
        if st.bpf_loaded != Some(true) {
            return;
        }
        if st.responses.len() >= MAX_PENDING_RESPONSES {
            st.responses.remove(0);
        }
        st.responses.push(FirstResponse {
            instance: instance.to_string(),
            tier,
            at_ns,
        });
    }

    /// The first answers recorded since the last call (for the collector).
    pub fn take_responses(&self) -> Vec<FirstResponse> {
        std::mem::take(&mut self.state.lock().unwrap().responses)
    }

    /// One start-up timeline: `secs` from first schedule to first response.
    pub fn observe_startup(&self, function: &str, tier: StartTier, secs: f64) {
        self.state
            .lock()
            .unwrap()
            .startup
            .entry((function.to_string(), tier.name()))
            .or_insert_with(Buckets::new)
            .observe(secs);
    }
}

/// The pool manager's view for `/metrics`, encoded at each scrape (a prometheus-client
/// [`Collector`]): forecast vs. observed arrivals per function and the memory budget.
#[derive(Debug, Default)]
pub struct PoolMetrics {
    state: Mutex<PoolState>,
}

#[derive(Debug, Default)]
struct PoolState {
    budget_bytes: Option<u64>,
    /// `None` until the pool manager has published: nothing is exported.
    window_secs: Option<f64>,
    functions: BTreeMap<String, FunctionPoolStats>,
    /// Whether node pressure holds back speculative work now.
    hold_back: bool,
}

/// One function's arrivals and budgeted memory, as the pool manager sees them now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FunctionPoolStats {
    /// Requests the forecaster expects in the current window; `None` when the policy
    /// does not forecast this function (not a forecasting policy, or too few requests).
    pub forecast_arrivals: Option<f64>,
    /// Requests that arrived in the current window so far.
    pub observed_arrivals: u64,
    /// What the memory budget counts for the function now, bytes.
    pub memory_bytes: u64,
    /// The execution time the policy predicts, seconds (`None`: it does not size by one).
    pub exec_secs: Option<f64>,
}

impl PoolMetrics {
    /// The node's memory budget (`None`: none) and the forecast window, real seconds.
    pub fn set_node(&self, budget_bytes: Option<u64>, window_secs: f64) {
        let mut st = self.state.lock().unwrap();
        st.budget_bytes = budget_bytes;
        st.window_secs = Some(window_secs);
    }

    pub fn set_function(&self, function: &str, stats: FunctionPoolStats) {
        self.state
            .lock()
            .unwrap()
            .functions
            .insert(function.to_string(), stats);
    }

    pub fn function(&self, name: &str) -> Option<FunctionPoolStats> {
        self.state.lock().unwrap().functions.get(name).cloned()
    }

    /// Whether node pressure holds back speculative work now.
    pub fn set_hold_back(&self, held: bool) {
        self.state.lock().unwrap().hold_back = held;
    }

    pub fn hold_back(&self) -> bool {
        self.state.lock().unwrap().hold_back
    }
}

impl Collector for PoolMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::gauge::ConstGauge;
        use prometheus_client::metrics::MetricType;
        let st = self.state.lock().unwrap();
        let Some(window) = st.window_secs else {
            return Ok(());
        };
        let label = |f: &String| FnLabel {
            function: f.clone(),
        };
        encode_family(
            &mut encoder,
            "rekindle_forecast_arrivals",
            "Requests the forecaster expects in the current window (one policy interval)",
            st.functions
                .iter()
                .filter_map(|(f, s)| s.forecast_arrivals.map(|n| (label(f), ConstGauge::new(n)))),
            MetricType::Gauge,
        )?;
        encode_family(
            &mut encoder,
            "rekindle_observed_arrivals",
            "Requests that arrived in the current window so far",
            st.functions
                .iter()
                .map(|(f, s)| (label(f), ConstGauge::new(s.observed_arrivals as i64))),
            MetricType::Gauge,
        )?;
        ConstGauge::new(window).encode(encoder.encode_descriptor(
            "rekindle_forecast_window_seconds",
            "Length of the forecast window (one policy interval), real seconds",
            None,
            MetricType::Gauge,
        )?)?;
        if let Some(budget) = st.budget_bytes {
            ConstGauge::new(budget as i64).encode(encoder.encode_descriptor(
                "rekindle_memory_budget_bytes",
                "The node's memory budget for the pools",
                None,
                MetricType::Gauge,
            )?)?;
        }
        encode_family(
            &mut encoder,
            "rekindle_pool_memory_bytes",
            "Memory the budget counts for the function now (instances at memory_mb or their measured p90 if more, staged image)",
            st.functions
                .iter()
                .map(|(f, s)| (label(f), ConstGauge::new(s.memory_bytes as i64))),
            MetricType::Gauge,
        )?;
        encode_family(
            &mut encoder,
            "rekindle_exec_seconds",
            "Execution time the policy predicts for the function (IQR-filtered recent durations)",
            st.functions
                .iter()
                .filter_map(|(f, s)| s.exec_secs.map(|e| (label(f), ConstGauge::new(e)))),
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(st.hold_back)).encode(encoder.encode_descriptor(
            "rekindle_pressure_hold_back",
            "1 while node pressure holds back speculative pool work (pre-warm, warm starts, stages)",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FnLabel {
    function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabel {
    resource: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FnKind {
    function: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FnDirection {
    function: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FnStartTier {
    function: String,
    tier: &'static str,
}

/// Encodes one family: a descriptor, then one sample per label set.
fn encode_family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, M)>,
    metric_type: prometheus_client::metrics::MetricType,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, metric) in samples {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A histogram already bucketed (the eBPF log2 run-queue histogram).
struct ConstHistogram {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl EncodeMetric for ConstHistogram {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.sum,
            self.count,
            &self.buckets,
            None,
        )
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

fn runq_histogram(s: &FunctionNodeStats) -> ConstHistogram {
    let buckets = s
        .runq_hist
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let upper =
                rekindle::bpf::runq_bucket_upper_us(i).map_or(f64::INFINITY, |us| us as f64 / 1e6);
            (upper, n)
        })
        .collect();
    ConstHistogram {
        sum: s.runq_total_ns as f64 / 1e9,
        count: s.runq_count,
        buckets,
    }
}

impl Collector for NodeMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::metrics::gauge::ConstGauge;
        use prometheus_client::metrics::MetricType;
        let st = self.state.lock().unwrap();
        let Some(bpf_loaded) = st.bpf_loaded else {
            return Ok(());
        };
        let fns = &st.functions;
        let label = |f: &String| FnLabel {
            function: f.clone(),
        };
        let loaded = ConstGauge::new(i64::from(bpf_loaded));
        loaded.encode(encoder.encode_descriptor(
            "rekindle_bpf_loaded",
            "1 when the eBPF probes are loaded, 0 when the agent goes on with cgroup statistics alone",
            None,
            MetricType::Gauge,
        )?)?;
        encode_family(
            &mut encoder,
            "rekindle_function_memory_bytes",
            "Memory charged to the function's instances' cgroups now, summed",
            fns.iter()
                .map(|(f, s)| (label(f), ConstGauge::new(s.memory_bytes as i64))),
            MetricType::Gauge,
        )?;
        encode_family(
            &mut encoder,
            "rekindle_function_instance_memory_bytes",
            "Memory of one instance of the function: p90 of its instances' recent cgroup reads",
            fns.iter().filter_map(|(f, s)| {
                s.instance_memory_p90_bytes
                    .map(|b| (label(f), ConstGauge::new(b as i64)))
            }),
            MetricType::Gauge,
        )?;
        if let Some(p) = st.pressure {
            encode_family(
                &mut encoder,
                "rekindle_node_pressure",
                "The node's pressure: PSI some avg10, percent of time a task stalled on the resource",
                [("cpu", p.cpu_some_pct), ("memory", p.memory_some_pct)]
                    .map(|(resource, v)| (ResourceLabel { resource }, ConstGauge::new(v))),
                MetricType::Gauge,
            )?;
        }
        let directions = |pick: fn(&IoStats) -> [u64; 2]| {
            fns.iter().flat_map(move |(f, s)| {
                let [read, write] = pick(&s.io);
                [("read", read), ("write", write)].map(|(direction, n)| {
                    (
                        FnDirection {
                            function: f.clone(),
                            direction,
                        },
                        ConstCounter::new(n),
                    )
                })
            })
        };
        encode_family(
            &mut encoder,
            "rekindle_function_io_bytes",
            "Block I/O of the function's instances, bytes (cgroup files)",
            directions(|io| [io.read_bytes, io.write_bytes]),
            MetricType::Counter,
        )?;
        encode_family(
            &mut encoder,
            "rekindle_function_io_operations",
            "Block I/O operations of the function's instances (cgroup files)",
            directions(|io| [io.read_ops, io.write_ops]),
            MetricType::Counter,
        )?;
        if !bpf_loaded {
            return Ok(());
        }
        encode_family(
            &mut encoder,
            "rekindle_function_startup_seconds",
            "From the first schedule of an instance started for a request (eBPF) to the agent receiving its answer",
            st.startup.iter().map(|((f, tier), b)| {
                (
                    FnStartTier {
                        function: f.clone(),
                        tier,
                    },
                    b.encode(),
                )
            }),
            MetricType::Histogram,
        )?;
        encode_family(
            &mut encoder,
            "rekindle_function_cpu_seconds",
            "CPU time of the function's instances (eBPF)",
            fns.iter()
                .map(|(f, s)| (label(f), ConstCounter::new(s.cpu_ns as f64 / 1e9))),
            MetricType::Counter,
        )?;
        encode_family(
            &mut encoder,
            "rekindle_function_runqueue_latency_seconds",
            "Waits of the function's instances' tasks from runnable to running (eBPF)",
            fns.iter().map(|(f, s)| (label(f), runq_histogram(s))),
            MetricType::Histogram,
        )?;
        encode_family(
            &mut encoder,
            "rekindle_function_page_faults",
            "Page faults of the function's instances' tasks, minor or major (eBPF)",
            fns.iter().flat_map(|(f, s)| {
                [("minor", s.faults_minor), ("major", s.faults_major)].map(|(kind, n)| {
                    (
                        FnKind {
                            function: f.clone(),
                            kind,
                        },
                        ConstCounter::new(n),
                    )
                })
            }),
            MetricType::Counter,
        )?;
        encode_family(
            &mut encoder,
            "rekindle_function_processes_exec",
            "Successful execve()s in the function's instances (eBPF)",
            fns.iter()
                .map(|(f, s)| (label(f), ConstCounter::new(s.execs))),
            MetricType::Counter,
        )?;
        encode_family(
            &mut encoder,
            "rekindle_function_processes_exit",
            "Processes that exited in the function's instances (eBPF)",
            fns.iter()
                .map(|(f, s)| (label(f), ConstCounter::new(s.exits))),
            MetricType::Counter,
        )?;
        Ok(())
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
        m.refused("hello", "queue_full");
        let t = m.encode();
        for want in [
            "rekindle_starts_total{function=\"hello\",tier=\"cold\"} 1",
            "rekindle_starts_total{function=\"hello\",tier=\"hot\"} 1",
            "rekindle_start_failures_total{function=\"hello\",tier=\"restore_disk\",reason=\"restored\"} 1",
            "rekindle_start_latency_seconds_count{tier=\"cold\"} 1",
            "rekindle_pool_instances{function=\"hello\",tier=\"hot\"} 2",
            "rekindle_pool_target{function=\"hello\",tier=\"warm\"} 1",
            "rekindle_pool_actions_total{function=\"hello\",action=\"checkpoint\",outcome=\"ok\"} 1",
            "rekindle_gateway_refused_total{function=\"hello\",reason=\"queue_full\"} 1",
        ] {
            assert!(t.contains(want), "{want} missing in:\n{t}");
        }
    }

    #[test]
    fn node_metrics_are_exported_once_the_collector_runs() {
        let m = Metrics::new();
        assert!(!m.encode().contains("rekindle_bpf_loaded"));
        let mut s = FunctionNodeStats {
            cpu_ns: 1_500_000_000,
            runq_count: 3,
            runq_total_ns: 7_000,
            faults_minor: 10,
            faults_major: 2,
            execs: 4,
            exits: 1,
            memory_bytes: 4096,
            ..Default::default()
        };
        s.runq_hist[0] = 1;
        s.runq_hist[1] = 2;
        m.node.set_bpf_loaded(true);
        m.node.set_functions([("hello".to_string(), s)].into());
        let t = m.encode();
        for want in [
            "rekindle_bpf_loaded 1\n",
            "rekindle_function_memory_bytes{function=\"hello\"} 4096",
            "rekindle_function_cpu_seconds_total{function=\"hello\"} 1.5",
            "rekindle_function_runqueue_latency_seconds_count{function=\"hello\"} 3",
            "rekindle_function_runqueue_latency_seconds_bucket{le=\"0.000002\",function=\"hello\"} 1",
            "rekindle_function_runqueue_latency_seconds_bucket{le=\"0.000004\",function=\"hello\"} 3",
            "rekindle_function_runqueue_latency_seconds_bucket{le=\"+Inf\",function=\"hello\"} 3",
            "rekindle_function_page_faults_total{function=\"hello\",kind=\"minor\"} 10",
            "rekindle_function_page_faults_total{function=\"hello\",kind=\"major\"} 2",
            "rekindle_function_processes_exec_total{function=\"hello\"} 4",
            "rekindle_function_processes_exit_total{function=\"hello\"} 1",
        ] {
            assert!(t.contains(want), "{want} missing in:\n{t}");
        }
        m.node
            .observe_startup("hello", StartTier::RestoreStaged, 0.03);
        m.node
            .observe_startup("hello", StartTier::RestoreStaged, 0.0005);
        let t = m.encode();
        for want in [
            "rekindle_function_startup_seconds_count{function=\"hello\",tier=\"restore_staged\"} 2\n",
            "rekindle_function_startup_seconds_sum{function=\"hello\",tier=\"restore_staged\"} 0.0305\n",
            "rekindle_function_startup_seconds_bucket{le=\"0.001\",function=\"hello\",tier=\"restore_staged\"} 1\n",
            "rekindle_function_startup_seconds_bucket{le=\"0.016\",function=\"hello\",tier=\"restore_staged\"} 1\n",
            "rekindle_function_startup_seconds_bucket{le=\"0.032\",function=\"hello\",tier=\"restore_staged\"} 2\n",
            "rekindle_function_startup_seconds_bucket{le=\"+Inf\",function=\"hello\",tier=\"restore_staged\"} 2\n",
            "rekindle_function_io_bytes_total{function=\"hello\",direction=\"read\"} 0\n",
        ] {
            assert!(t.contains(want), "{want} missing in:\n{t}");
        }
        m.node.set_bpf_loaded(false);
        let t = m.encode();
        assert!(t.contains("rekindle_bpf_loaded 0\n"), "{t}");
        assert!(!t.contains("rekindle_function_startup_seconds"), "{t}");
        assert!(
            t.contains(
                "rekindle_function_io_bytes_total{function=\"hello\",direction=\"read\"} 0\n"
            ),
            "{t}"
        );
        assert!(
            t.contains("rekindle_function_memory_bytes{function=\"hello\"} 4096"),
            "{t}"
        );
        assert!(!t.contains("rekindle_function_cpu_seconds"), "{t}");
    }

    /// A registry with a sample in every family the agent exports.
    fn every_family() -> Metrics {
        let m = Metrics::new();
        for tier in StartTier::ALL {
            m.start("hello", tier, 0.01);
        }
        m.failure("hello", StartTier::Cold, "timeout");
        m.set_pool("hello", "hot", 1);
        m.set_target("hello", "hot", 1);
        m.action("hello", "start", true);
        m.refused("hello", "queue_timeout");
        m.node.set_bpf_loaded(true);
        m.node.set_functions(
            [(
                "hello".to_string(),
                FunctionNodeStats {
                    cpu_ns: 1,
                    instance_memory_p90_bytes: Some(1 << 27),
                    ..Default::default()
                },
            )]
            .into(),
        );
        m.node
            .set_pressure(Some(crate::pool::pressure::NodePressure {
                cpu_some_pct: 12.5,
                memory_some_pct: 0.0,
            }));
        m.pool.set_hold_back(true);
        m.node.observe_startup("hello", StartTier::Cold, 0.1);
        m.pool.set_node(Some(1 << 30), 60.0);
        m.pool.set_function(
            "hello",
            FunctionPoolStats {
                forecast_arrivals: Some(2.5),
                observed_arrivals: 3,
                memory_bytes: 1 << 28,
                exec_secs: Some(0.25),
            },
        );
        m
    }

    /// The `rekindle_*` names in a PromQL expression.
    fn metric_names(expr: &str) -> Vec<&str> {
        let mut out = Vec::new();
        let mut rest = expr;
        while let Some(k) = rest.find("rekindle_") {
            let tail = &rest[k..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            out.push(&tail[..end]);
            rest = &tail[end..];
        }
        out
    }

    /// Every PromQL query of a Grafana dashboard: the panels' `expr`, the template
    /// variables' `query`.
    fn queries(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(o) => {
                for (k, v) in o {
                    match (k.as_str(), v) {
                        ("expr" | "query", serde_json::Value::String(q)) => out.push(q.clone()),
                        _ => queries(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| queries(v, out)),
            _ => {}
        }
    }

    /// deploy/grafana-dashboard.json queries only series the agent exports (as this
    /// code renders them), and has a panel for every family it exports.
    #[test]
    fn the_grafana_dashboard_queries_what_the_agent_exports() {
        let text = every_family().encode();
        let series: std::collections::HashSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../deploy/grafana-dashboard.json"))
                .expect("the dashboard is JSON");
        let mut qs = Vec::new();
        queries(&dashboard, &mut qs);
        assert!(qs.len() >= 20, "{qs:?}");
        let used: Vec<&str> = qs.iter().flat_map(|q| metric_names(q)).collect();
        for (q, name) in qs
            .iter()
            .flat_map(|q| metric_names(q).into_iter().map(move |n| (q, n)))
        {
            assert!(
                series.contains(name),
                "the dashboard queries {name} ({q}), which the agent does not export:\n{text}"
            );
        }
        for family in families {
            assert!(
                used.iter()
                    .any(|n| *n == family
                        || n.strip_prefix(family).is_some_and(|s| s.starts_with('_'))),
                "no panel of deploy/grafana-dashboard.json shows {family}"
            );
        }
    }
}
