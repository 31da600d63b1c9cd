//! Pool policies: what to keep ready for each function, and in which tier.
//!
//! One trait, [`Policy`], is the contract between a policy and whoever executes its plans:
//! the trace-driven simulator ([`crate::sim`]) today, the live agent's pool manager later.
//! Both drive a policy the same way — tell it about arrivals and invocation ends, call
//! [`Policy::tick`] once per interval (one minute), and ask [`Policy::plan`] for a
//! function's [`Plan`] — so there is one implementation of each policy, not a simulated copy.
//!
//! A policy does no I/O and reads no clock: every call carries the time (`Secs`, seconds
//! since an arbitrary origin — the trace start in the simulator, the agent's start live).
//!
//! Implementations:
//! - [`fixed::FixedKeepAlive`]: keep an instance hot for a fixed window (10 minutes, as AWS
//!   Lambda does per Shahrad et al.) after each invocation;
//! - [`hybrid::HybridHistogram`]: the hybrid histogram policy of Shahrad et al., ATC'20;
//! - [`rekindle::Rekindle`]: Rekindle's own, which plans across hot, warm and staged tiers
//!   from a per-function forecast.

pub mod fixed;
pub mod hybrid;
pub mod rekindle;

use serde::{Deserialize, Serialize};

/// Seconds since the origin of the policy's clock.
pub type Secs = f64;

/// The length of one planning interval: policies are ticked once per minute.
pub const INTERVAL: Secs = 60.0;

/// A function, as the node knows it: a dense index (0, 1, 2, ...) handed out by whoever
/// registers functions (the trace reader, the agent's registry).
pub type FunctionId = u32;

/// Where an instance (or the function's checkpoint image) is when a request arrives.
///
/// Ordered from the fastest start to the slowest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    /// A running instance that is idle: forward the request.
    Hot,
    /// A restored (or kept) instance, frozen: thaw it, then forward.
    Warm,
    /// The checkpoint image decompressed in memory by rekindle-restored: restore from it.
    Staged,
    /// The LZ4 checkpoint image on disk: decompress and restore.
    Disk,
    /// No image: a full cold start through containerd.
    Cold,
}

impl Tier {
    pub const ALL: [Tier; 5] = [Tier::Hot, Tier::Warm, Tier::Staged, Tier::Disk, Tier::Cold];

    pub fn name(self) -> &'static str {
        match self {
            Tier::Hot => "hot",
            Tier::Warm => "warm",
            Tier::Staged => "staged",
            Tier::Disk => "disk",
            Tier::Cold => "cold",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// How long an idle instance stays in each tier, as a demotion ladder that starts when the
/// instance becomes idle (or at the pre-warm load): hot for `hot` seconds, then warm
/// (frozen) for `warm` seconds, then unloaded with its checkpoint image left staged in
/// memory for `staged` seconds, then only the image on disk. Zero skips a tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct KeepAlive {
    pub hot: Secs,
    pub warm: Secs,
    pub staged: Secs,
}

impl KeepAlive {
    /// Hot only, for `secs` seconds: what the published policies do.
    pub fn hot(secs: Secs) -> Self {
        KeepAlive {
            hot: secs,
            warm: 0.0,
            staged: 0.0,
        }
    }

    /// How long the instance stays loaded (hot, then warm).
    pub fn loaded(&self) -> Secs {
        self.hot + self.warm
    }

    /// The keep-alive window: how long anything of the function stays in memory.
    pub fn window(&self) -> Secs {
        self.hot + self.warm + self.staged
    }

    /// The tier an instance is in `elapsed` seconds into the ladder (`Disk` once past it).
    pub fn tier_at(&self, elapsed: Secs) -> Tier {
        if elapsed < self.hot {
            Tier::Hot
        } else if elapsed < self.hot + self.warm {
            Tier::Warm
        } else if elapsed < self.window() {
            Tier::Staged
        } else {
            Tier::Disk
        }
    }

    /// The first tier of the ladder (`Disk` for an empty ladder).
    pub fn first_tier(&self) -> Tier {
        self.tier_at(0.0)
    }
}

/// How many instances of a function to hold in each tier right now, whatever the
/// keep-alive ladder says: a floor. `hot` counts busy instances too (a busy instance is
/// a hot one that serves a request).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierTargets {
    pub hot: u32,
    pub warm: u32,
    /// Keep the function's checkpoint image staged in memory (one staged image serves
    /// any number of concurrent restores).
    pub staged: bool,
}

/// A policy's answer for one function at one moment.
///
/// Semantics (what the simulator does, and what the live pool manager must do):
/// - When an invocation ends, its instance becomes idle. If `pre_warm` is zero it
///   follows the `keep_alive` ladder from that moment. If `pre_warm` is positive the
///   instance is unloaded at once (Shahrad et al. §4.2: "unload the application right
///   after execution"), and `pre_warm` seconds after that end the function is loaded
///   again in the first tier of the ladder, which it then follows.
/// - A pre-warm loads `1 + pre_warm_extra` instances: a function whose requests come in
///   bursts after its idle times gets the burst's instances, not only the first.
/// - At every interval the pool is topped up to `targets` (background loads, from the
///   fastest source available), and an instance whose ladder says "leave" stays while its
///   tier is at or below its target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub pre_warm: Secs,
    /// Instances a pre-warm loads beyond the first.
    #[serde(default)]
    pub pre_warm_extra: u32,
    pub keep_alive: KeepAlive,
    pub targets: TierTargets,
}

impl Plan {
    /// The published policies' shape: keep hot for `keep_alive` after `pre_warm`.
    pub fn windows(pre_warm: Secs, keep_alive: Secs) -> Self {
        Plan {
            pre_warm,
            pre_warm_extra: 0,
            keep_alive: KeepAlive::hot(keep_alive),
            targets: TierTargets::default(),
        }
    }
}

/// What a policy may know about a function when it is registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionInfo {
    /// The application it belongs to (dense index), for per-app statistics.
    pub app: u32,
    /// Memory of one instance, MB (the trace's allocated memory, or a default).
    pub memory_mb: f64,
    /// The trigger, when the trace says (Azure 2019 does, 2021 does not).
    pub trigger: Option<Trigger>,
}

/// Trigger groups of the Azure Functions 2019 trace (Shahrad et al., Fig. 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Http,
    Queue,
    Event,
    Orchestration,
    Timer,
    Storage,
    Others,
}

impl Trigger {
    pub const ALL: [Trigger; 7] = [
        Trigger::Http,
        Trigger::Queue,
        Trigger::Event,
        Trigger::Orchestration,
        Trigger::Timer,
        Trigger::Storage,
        Trigger::Others,
    ];

    pub fn parse(s: &str) -> Option<Trigger> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "http" => Trigger::Http,
            "queue" => Trigger::Queue,
            "event" => Trigger::Event,
            "orchestration" => Trigger::Orchestration,
            "timer" => Trigger::Timer,
            "storage" => Trigger::Storage,
            "others" | "other" => Trigger::Others,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Trigger::Http => "http",
            Trigger::Queue => "queue",
            Trigger::Event => "event",
            Trigger::Orchestration => "orchestration",
            Trigger::Timer => "timer",
            Trigger::Storage => "storage",
            Trigger::Others => "others",
        }
    }
}

/// A pool policy. See the module documentation for how it is driven.
///
/// Calls come in time order: `now`/`at` never decrease across calls.
pub trait Policy {
    /// Short name for tables (`fixed-10min`, `hybrid-histogram`, `rekindle`).
    fn name(&self) -> String;

    /// Its parameters, one line, for reports.
    fn describe(&self) -> String;

    /// A function the node serves from now on. Called again with new `info` when what
    /// the node knows of the function changes (the live agent: its measured memory per
    /// instance); the function's history stays.
    fn register(&mut self, f: FunctionId, info: &FunctionInfo);

    /// An invocation of `f` arrived at `at`.
    fn on_arrival(&mut self, f: FunctionId, at: Secs);

    /// An invocation of `f` ended at `at` after executing for `exec` seconds.
    fn on_end(&mut self, f: FunctionId, at: Secs, exec: Secs);

    /// An invocation of `f` ended at `at` without executing (refused, timed out, or
    /// failed before an instance ran it): it ends what `on_arrival` began, but has no
    /// execution time to learn from. Default: [`Policy::on_end`] with 0 s.
    fn on_abandon(&mut self, f: FunctionId, at: Secs) {
        self.on_end(f, at, 0.0);
    }

    /// The execution time the policy predicts for `f`, seconds, if it sizes pools by
    /// one (what its hot target multiplies the forecast rate by).
    fn exec_estimate(&self, _f: FunctionId) -> Option<Secs> {
        None
    }

    /// Once per interval, before the interval's `plan` calls: node-level work (forecast
    /// refits, clustering, the memory budget). Default: nothing.
    fn tick(&mut self, _now: Secs) {}

    /// The plan for `f` now. Cheap: called at each invocation end and at each interval.
    fn plan(&mut self, f: FunctionId, now: Secs) -> Plan;

    /// Forecast accuracy the policy measured on itself, if it forecasts rates.
    fn forecast_report(&self) -> Option<crate::forecast::AccuracyReport> {
        None
    }

    /// The invocations of `f` the policy's forecaster expects in the current interval
    /// (the one the last [`Policy::tick`] began), if it forecasts `f`.
    fn arrival_forecast(&self, _f: FunctionId) -> Option<f64> {
        None
    }
}

/// Which policy, by name, with its default parameters (the simulator's `--policies`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PolicyKind {
    /// Fixed 10-minute keep-alive.
    Fixed,
    /// Shahrad et al.'s hybrid histogram policy.
    Hybrid,
    /// Rekindle's tiered, forecast-driven policy.
    Rekindle,
}
