//! The trace-driven simulator: replays a [`Trace`] against a [`Policy`] and measures what
//! the policy's plans would have cost and saved on one node.
//!
//! Model (the same semantics the live pool manager must implement; see [`Plan`]):
//! - An instance serves one request at a time (OpenWhisk/Lambda style); concurrent
//!   requests need more instances.
//! - A request takes the fastest start available: an idle hot instance, a warm (frozen)
//!   one, a restore from the staged image, a restore from the image on disk, a cold start
//!   — whichever of the last two is faster (with the placeholder latencies the restore).
//!   Its instance is busy for the start latency plus the execution time.
//! - When an invocation ends, the instance follows the plan's pre-warm and keep-alive
//!   ladder; once per interval the pool is topped up to the plan's targets (background
//!   loads, not charged to any request).
//! - Node modes: *as published* — no checkpoint images; every miss is a cold start (the
//!   world of the fixed and hybrid policies' papers); *with images* — Rekindle's node:
//!   after a function's first cold start its image is on disk, and staging/restoring is
//!   possible.
//! - Wasted memory = memory held by idle instances and staged images, GB·minutes (busy
//!   instances are not waste), as in Shahrad et al. §4.

pub mod latency;
pub mod report;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use serde::Serialize;

use crate::forecast::AccuracyReport;
use crate::policy::{FunctionId, Plan, Policy, Secs, Tier, INTERVAL};
use crate::rng::Rng;
use crate::trace::Trace;

pub use latency::{LatencyTable, DEFAULT_MEMORY_FACTORS};

/// Whether the node has checkpoint images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeMode {
    /// No images: a miss is a cold start (the published policies' setting).
    AsPublished,
    /// Rekindle's node: images on disk after a function's first start; staging possible.
    WithImages,
}

/// Simulation settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    pub latencies: LatencyTable,
    pub memory_factors: [f64; 5],
    pub mode: NodeMode,
    /// Seed of the per-start latency draws (the table's p50/p99 define a log-normal).
    pub seed: u64,
}

/// What one replay measured.
#[derive(Debug, Clone, Serialize)]
pub struct SimResult {
    pub policy: String,
    pub policy_params: String,
    pub mode: NodeMode,
    pub invocations: u64,
    /// Starts per tier: hot, warm, staged, disk, cold.
    pub starts: [u64; 5],
    /// Sum of start latencies, seconds (each start's latency drawn from its tier's
    /// log-normal through the table's p50/p99).
    pub total_start_latency_s: f64,
    pub mean_start_latency_ms: f64,
    /// Quantiles of the start latency over all requests (mixture of the tiers).
    pub p50_start_latency_ms: f64,
    pub p99_start_latency_ms: f64,
    /// Idle memory held (idle instances and staged images), GB·minutes.
    pub wasted_gb_min: f64,
    /// Of it, by staged images.
    pub staged_gb_min: f64,
    /// The 75th percentile over apps of the per-app percentage of full cold starts
    /// (Shahrad et al.'s headline metric).
    pub p75_app_cold_pct: f64,
    /// Same for every start not served by a hot or warm instance (restores included).
    pub p75_app_miss_pct: f64,
    /// Instances loaded (and images staged) ahead of requests: pre-warms and target
    /// top-ups.
    pub background_loads: u64,
    pub sim_seconds: f64,
    pub forecast: Option<AccuracyReport>,
    /// Printed under the table (how a row was obtained, e.g. a matched price).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl SimResult {
    pub fn cold_fraction(&self) -> f64 {
        self.starts[Tier::Cold.index()] as f64 / self.invocations.max(1) as f64
    }

    /// Fraction of starts that were not hot or warm.
    pub fn miss_fraction(&self) -> f64 {
        let m: u64 = self.starts[Tier::Staged.index()..].iter().sum();
        m as f64 / self.invocations.max(1) as f64
    }
}

#[derive(Debug, Clone, Copy)]
struct IdleInst {
    /// Ladder start (idle since, or the pre-warm load time).
    since: Secs,
    /// Held in a tier by the targets (not following the ladder).
    pinned: Option<Tier>,
}

#[derive(Debug, Clone)]
struct FnRun {
    mem_mb: f64,
    app: u32,
    busy: u32,
    idle: Vec<IdleInst>,
    pending_load: Option<Secs>,
    /// Staged by the ladder over [from, until).
    staged_from: Secs,
    staged_until: Secs,
    staged_pinned: bool,
    image: bool,
    acc: Secs,
    plan: Plan,
}

#[derive(Debug, Default, Clone, Copy)]
struct AppStat {
    invocations: u64,
    cold: u64,
    miss: u64,
}

struct Time(f64);
impl PartialEq for Time {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}
impl Eq for Time {}
impl PartialOrd for Time {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Time {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

struct Engine<'a> {
    cfg: &'a SimConfig,
    fns: Vec<FnRun>,
    waste_mb_s: f64,
    staged_mb_s: f64,
    background: u64,
}

impl Engine<'_> {
    fn factor(&self, t: Tier) -> f64 {
        self.cfg.memory_factors[t.index()]
    }

    /// Account memory of `f` up to `now` and apply ladder transitions and pre-warm loads.
    fn advance(&mut self, f: usize, now: Secs) {
        let (fh, fw, fs) = (
            self.factor(Tier::Hot),
            self.factor(Tier::Warm),
            self.factor(Tier::Staged),
        );
        let r = &mut self.fns[f];
        if let Some(at) = r.pending_load {
            if at <= now {
                r.pending_load = None;
                for _ in 0..1 + r.plan.pre_warm_extra {
                    r.idle.push(IdleInst {
                        since: at,
                        pinned: None,
                    });
                    self.background += 1;
                }
            }
        }
        let a = r.acc;
        if now <= a {
            return;
        }
        let ka = r.plan.keep_alive;
        let mut held = 0.0; // MB·s
        let mut new_staged: Vec<(f64, f64)> = Vec::new();
        let mut i = 0;
        while i < r.idle.len() {
            let inst = r.idle[i];
            match inst.pinned {
                Some(t) => {
                    let from = a.max(inst.since);
                    if now > from {
                        held += r.mem_mb * (if t == Tier::Hot { fh } else { fw }) * (now - from);
                    }
                    i += 1;
                }
                None => {
                    let hot_end = inst.since + ka.hot;
                    let warm_end = hot_end + ka.warm;
                    let seg = |lo: f64, hi: f64| (hi.min(now) - lo.max(a).max(inst.since)).max(0.0);
                    held +=
                        r.mem_mb * (fh * seg(inst.since, hot_end) + fw * seg(hot_end, warm_end));
                    if now >= warm_end {
                        // Unloaded; the image stays staged for the rest of the ladder.
                        if ka.staged > 0.0 {
                            new_staged.push((warm_end, warm_end + ka.staged));
                        }
                        r.idle.swap_remove(i);
                    } else {
                        i += 1;
                    }
                }
            }
        }
        // Staged image: pinned by the targets, or held by ladders (union of intervals).
        let staged_secs = if r.staged_pinned {
            now - a
        } else {
            new_staged.push((r.staged_from, r.staged_until));
            new_staged.sort_by(|x, y| x.0.total_cmp(&y.0));
            let mut secs = 0.0;
            let mut cur: Option<(f64, f64)> = None;
            for (lo, hi) in new_staged.iter().copied() {
                match cur {
                    Some((clo, chi)) if lo <= chi => cur = Some((clo, chi.max(hi))),
                    _ => {
                        if let Some((clo, chi)) = cur {
                            secs += (chi.min(now) - clo.max(a)).max(0.0);
                        }
                        cur = Some((lo, hi));
                    }
                }
            }
            if let Some((clo, chi)) = cur {
                secs += (chi.min(now) - clo.max(a)).max(0.0);
                // Keep the latest interval for later accounting.
                r.staged_from = clo;
                r.staged_until = chi;
            }
            secs
        };
        let staged = if self.cfg.mode == NodeMode::WithImages && r.image {
            r.mem_mb * fs * staged_secs
        } else {
            0.0
        };
        self.staged_mb_s += staged;
        self.waste_mb_s += held + staged;
        r.acc = now;
    }

    fn staged_at(&self, f: usize, now: Secs) -> bool {
        let r = &self.fns[f];
        self.cfg.mode == NodeMode::WithImages
            && r.image
            && (r.staged_pinned || (r.staged_from <= now && now < r.staged_until))
    }

    /// Take the best idle instance; returns its tier.
    fn take_idle(&mut self, f: usize, now: Secs) -> Option<Tier> {
        let r = &mut self.fns[f];
        let ka = r.plan.keep_alive;
        let tier_of = |i: &IdleInst| i.pinned.unwrap_or_else(|| ka.tier_at(now - i.since));
        let mut best: Option<(usize, Tier)> = None;
        for (i, inst) in r.idle.iter().enumerate() {
            let t = tier_of(inst);
            if t > Tier::Warm {
                continue;
            }
            if best.is_none_or(|b| t < b.1) {
                best = Some((i, t));
                if t == Tier::Hot {
                    break;
                }
            }
        }
        let (i, t) = best?;
        r.idle.swap_remove(i);
        Some(t)
    }

    fn apply_targets(&mut self, f: usize, now: Secs) {
        let mode = self.cfg.mode;
        let r = &mut self.fns[f];
        let t = r.plan.targets;
        let ka = r.plan.keep_alive;
        r.staged_pinned = t.staged && r.image && mode == NodeMode::WithImages;
        for tier in [Tier::Hot, Tier::Warm] {
            let want = if tier == Tier::Hot { t.hot } else { t.warm };
            let have_ladder = r
                .idle
                .iter()
                .filter(|i| i.pinned.is_none() && ka.tier_at(now - i.since) == tier)
                .count() as u32;
            let busy = if tier == Tier::Hot { r.busy } else { 0 };
            let pinned: Vec<usize> = r
                .idle
                .iter()
                .enumerate()
                .filter(|(_, i)| i.pinned == Some(tier))
                .map(|(k, _)| k)
                .collect();
            let have = busy + have_ladder + pinned.len() as u32;
            if have < want {
                for _ in 0..(want - have) {
                    r.idle.push(IdleInst {
                        since: now,
                        pinned: Some(tier),
                    });
                    self.background += 1;
                }
            } else {
                let excess = (have - want).min(pinned.len() as u32) as usize;
                // Release the newest pinned instances first.
                for &k in pinned.iter().rev().take(excess) {
                    r.idle.swap_remove(k);
                }
            }
        }
    }
}

/// Replay `trace` against `policy`.
pub fn run(trace: &Trace, policy: &mut dyn Policy, cfg: &SimConfig) -> SimResult {
    let started = Instant::now();
    let mut rng = Rng::new(cfg.seed);
    let mut eng = Engine {
        cfg,
        fns: trace
            .functions
            .iter()
            .map(|m| FnRun {
                mem_mb: m.info.memory_mb,
                app: m.info.app,
                busy: 0,
                idle: Vec::new(),
                pending_load: None,
                staged_from: 0.0,
                staged_until: 0.0,
                staged_pinned: false,
                image: false,
                acc: 0.0,
                plan: Plan::default(),
            })
            .collect(),
        waste_mb_s: 0.0,
        staged_mb_s: 0.0,
        background: 0,
    };
    for (i, m) in trace.functions.iter().enumerate() {
        policy.register(i as FunctionId, &m.info);
        eng.fns[i].plan = policy.plan(i as FunctionId, 0.0);
    }
    let mut apps = vec![AppStat::default(); trace.apps.len().max(1)];
    let mut starts = [0u64; 5];
    let mut total_latency_ms = 0.0;
    let mut invocations = 0u64;
    // (end time, function, execution time as f32 bits)
    let mut ends: BinaryHeap<Reverse<(Time, u32, u32)>> = BinaryHeap::new();
    let mut next_tick = INTERVAL;
    let mut arrivals = trace.iter().peekable();
    let horizon = trace.horizon;
    loop {
        let ta = arrivals.peek().map_or(f64::INFINITY, |a| a.arrival);
        let te = ends.peek().map_or(f64::INFINITY, |Reverse((t, _, _))| t.0);
        let events_left = ta.is_finite() || te.is_finite();
        if !events_left && next_tick > horizon {
            break;
        }
        if te <= ta && te <= next_tick {
            let t = te;
            // An invocation ends.
            let Reverse((_, f, bits)) = ends.pop().expect("peeked");
            let fi = f as usize;
            eng.advance(fi, t);
            let exec = f32::from_bits(bits) as f64;
            policy.on_end(f, t, exec);
            let plan = policy.plan(f, t);
            let r = &mut eng.fns[fi];
            r.plan = plan;
            r.busy -= 1;
            if cfg.mode == NodeMode::WithImages {
                r.image = true;
            }
            if plan.pre_warm > 0.0 {
                r.pending_load = Some(t + plan.pre_warm);
            } else if plan.keep_alive.window() > 0.0 {
                r.idle.push(IdleInst {
                    since: t,
                    pinned: None,
                });
            }
            continue;
        }
        if next_tick <= ta {
            let now = next_tick;
            next_tick += INTERVAL;
            policy.tick(now);
            for fi in 0..eng.fns.len() {
                eng.advance(fi, now);
                let plan = policy.plan(fi as FunctionId, now);
                eng.fns[fi].plan = plan;
                eng.apply_targets(fi, now);
            }
            continue;
        }
        let Some(inv) = arrivals.next() else {
            break;
        };
        let (fi, t) = (inv.function as usize, inv.arrival);
        eng.advance(fi, t);
        policy.on_arrival(inv.function, t);
        let tier = match eng.take_idle(fi, t) {
            Some(tier) => tier,
            None if eng.staged_at(fi, t) => Tier::Staged,
            None => {
                let r = &eng.fns[fi];
                if cfg.mode == NodeMode::WithImages
                    && r.image
                    && cfg.latencies.mean(Tier::Disk) <= cfg.latencies.mean(Tier::Cold)
                {
                    Tier::Disk
                } else {
                    Tier::Cold
                }
            }
        };
        let lat = cfg.latencies.sample(tier, &mut rng);
        total_latency_ms += lat;
        starts[tier.index()] += 1;
        invocations += 1;
        let app = &mut apps[eng.fns[fi].app as usize];
        app.invocations += 1;
        if tier == Tier::Cold {
            app.cold += 1;
        }
        if tier > Tier::Warm {
            app.miss += 1;
        }
        eng.fns[fi].busy += 1;
        ends.push(Reverse((
            Time(t + lat / 1000.0 + inv.duration as f64),
            inv.function,
            inv.duration.to_bits(),
        )));
    }
    let end = horizon.max(next_tick - INTERVAL);
    for fi in 0..eng.fns.len() {
        eng.advance(fi, end);
    }
    let pct = |sel: fn(&AppStat) -> u64| -> f64 {
        let mut v: Vec<f64> = apps
            .iter()
            .filter(|a| a.invocations > 0)
            .map(|a| 100.0 * sel(a) as f64 / a.invocations as f64)
            .collect();
        if v.is_empty() {
            return 0.0;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        crate::forecast::exec::quantile_sorted(&v, 0.75)
    };
    SimResult {
        policy: policy.name()
            + if cfg.mode == NodeMode::WithImages && policy.name() != "rekindle" {
                "+images"
            } else {
                ""
            },
        policy_params: policy.describe(),
        mode: cfg.mode,
        invocations,
        starts,
        total_start_latency_s: total_latency_ms / 1000.0,
        mean_start_latency_ms: total_latency_ms / invocations.max(1) as f64,
        p50_start_latency_ms: cfg.latencies.mixture_quantile(&starts, 0.5),
        p99_start_latency_ms: cfg.latencies.mixture_quantile(&starts, 0.99),
        wasted_gb_min: eng.waste_mb_s / 1024.0 / 60.0,
        staged_gb_min: eng.staged_mb_s / 1024.0 / 60.0,
        p75_app_cold_pct: pct(|a| a.cold),
        p75_app_miss_pct: pct(|a| a.miss),
        background_loads: eng.background,
        sim_seconds: started.elapsed().as_secs_f64(),
        forecast: policy.forecast_report(),
        note: None,
    }
}

/// A policy and the node it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    pub kind: crate::policy::PolicyKind,
    pub mode: NodeMode,
}

/// The comparison: each baseline as published and on Rekindle's node, then Rekindle's
/// policy (which only makes sense with images).
pub fn default_variants(kinds: &[crate::policy::PolicyKind]) -> Vec<Variant> {
    use crate::policy::PolicyKind;
    let mut v = Vec::new();
    for mode in [NodeMode::AsPublished, NodeMode::WithImages] {
        for &kind in kinds {
            if kind != PolicyKind::Rekindle {
                v.push(Variant { kind, mode });
            }
        }
    }
    if kinds.contains(&PolicyKind::Rekindle) {
        v.push(Variant {
            kind: PolicyKind::Rekindle,
            mode: NodeMode::WithImages,
        });
    }
    v
}

/// Settings shared by all variants of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOptions {
    pub latencies: LatencyTable,
    pub memory_factors: [f64; 5],
    /// Seed of latency draws and of the policies' own randomness.
    pub seed: u64,
    /// Rekindle's price of idle memory (ms per GB·minute); `None`: its default.
    pub price_ms_per_gb_min: Option<f64>,
    /// Rekindle's node memory budget, MB.
    pub memory_budget_mb: Option<f64>,
}

impl RunOptions {
    pub fn new(seed: u64) -> Self {
        RunOptions {
            latencies: LatencyTable::placeholder(),
            memory_factors: DEFAULT_MEMORY_FACTORS,
            seed,
            price_ms_per_gb_min: None,
            memory_budget_mb: None,
        }
    }

    /// The policy of a variant, with these options (the live agent's too).
    pub fn policy(&self, kind: crate::policy::PolicyKind) -> Box<dyn Policy + Send> {
        use crate::policy::{fixed, hybrid, rekindle, PolicyKind};
        match kind {
            PolicyKind::Fixed => Box::new(fixed::FixedKeepAlive::ten_minutes()),
            PolicyKind::Hybrid => Box::new(hybrid::HybridHistogram::paper()),
            PolicyKind::Rekindle => {
                let mut c =
                    rekindle::RekindleConfig::new(self.latencies.costs(self.memory_factors));
                if let Some(p) = self.price_ms_per_gb_min {
                    c.price_ms_per_gb_min = p;
                }
                c.memory_budget_mb = self.memory_budget_mb;
                c.seed = self.seed;
                Box::new(rekindle::Rekindle::new(c))
            }
        }
    }
}

/// Replay `trace` against every variant.
pub fn run_variants(trace: &Trace, variants: &[Variant], opts: &RunOptions) -> Vec<SimResult> {
    variants
        .iter()
        .map(|v| {
            let mut p = opts.policy(v.kind);
            let cfg = SimConfig {
                latencies: opts.latencies.clone(),
                memory_factors: opts.memory_factors,
                mode: v.mode,
                seed: opts.seed,
            };
            run(trace, p.as_mut(), &cfg)
        })
        .collect()
}

/// Rekindle at the same wasted memory as another policy: the lowest price of idle memory
/// (bisected on a log scale over `[1, 5000]` ms per GB·minute, ~3 % apart) at which its
/// replay of `trace` wastes no more than `target_gb_min`, and that replay. Policies are
/// compared on a latency/memory curve (Shahrad et al. plot cold starts against wasted
/// memory); this is the point of Rekindle's curve at the other policy's memory. `None`
/// when not even the highest price gets there.
pub fn rekindle_at_memory(
    trace: &Trace,
    opts: &RunOptions,
    target_gb_min: f64,
) -> Option<(f64, SimResult)> {
    let replay = |price: f64| {
        let mut o = opts.clone();
        o.price_ms_per_gb_min = Some(price);
        let v = [Variant {
            kind: crate::policy::PolicyKind::Rekindle,
            mode: NodeMode::WithImages,
        }];
        run_variants(trace, &v, &o).pop().expect("one variant")
    };
    let (mut lo, mut hi) = (1f64.ln(), 5000f64.ln());
    let mut best = replay(hi.exp());
    if best.wasted_gb_min > target_gb_min {
        return None;
    }
    // `best` is always the replay at `hi`.
    for _ in 0..8 {
        let mid = (lo + hi) / 2.0;
        let r = replay(mid.exp());
        if r.wasted_gb_min <= target_gb_min {
            hi = mid;
            best = r;
        } else {
            lo = mid;
        }
    }
    Some((hi.exp(), best))
}
