//! Rekindle's policy: plan each function across the cheaper tiers (warm, staged, the
//! image on disk) instead of only "loaded or not", from a per-function forecast.
//!
//! Two forecasts, for two kinds of functions:
//!
//! 1. **When will the next request come?** (every function.) An idle-time distribution
//!    ([`IdleDistribution`]: 1-minute bins over 4 h, log-spaced bins out to 8 days, with
//!    forgetting) gives, for each minute after an invocation ends, the hazard `h` — the
//!    probability that the next request arrives in that minute given none came before.
//!    Holding tier `k` through that minute is worth `h × (L_base − L_k)` milliseconds of
//!    start latency saved and costs `m_k × memory × price` (price: ms of start latency one
//!    GB·minute of idle memory is worth). Each minute gets the tier of highest net value
//!    (or none); the minutes are then folded into the [`Plan`]'s shape: a pre-warm delay
//!    and a hot → warm → staged ladder. Periodic functions get a pre-warm just before
//!    their period; Poisson-like ones a short hot window and a longer staged tail; rare
//!    ones only their image on disk. This replaces the hybrid policy's three branches
//!    (histogram / fixed fallback / ARIMA) with one rule, and its fixed percentiles with
//!    the measured tier costs.
//! 2. **How many requests in the next minute?** (functions invoked at least about once a
//!    minute.) The rate forecaster ([`RateModel`]: ETS blended with an MLP by recent
//!    error) sizes the pools: hot = forecast × mean execution time (IQR-filtered) ×
//!    buffer, warm from the forecast's upper quantile, the image staged to absorb bursts.
//!
//! A function with little history borrows: functions are clustered (k-means over log
//! rate, idle-time CV and log execution time) every hour, and a new function's idle-time
//! distribution is blended with its cluster's (nearest centroid on the features it has
//! so far) until it has `prior_until` idle times of its own.
//!
//! An optional node memory budget demotes units (hot → warm → staged → out) by expected
//! cost of a miss per MB ([`crate::sizing::fit_budget`]).

use super::{FunctionId, FunctionInfo, KeepAlive, Plan, Policy, Secs, Tier, TierTargets, INTERVAL};
use crate::forecast::cluster::{standardize, KMeans};
use crate::forecast::mlp::Mlp;
use crate::forecast::rate::FEATURES;
use crate::forecast::{
    AccuracyReport, ExecEstimator, IdleDistribution, RateConfig, RateForecast, RateModel,
};
use crate::sizing::{self, BudgetItem, TierCosts};

/// Parameters of Rekindle's policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RekindleConfig {
    /// Tier latencies and memory factors the plans weigh (the same the node measures).
    pub costs: TierCosts,
    /// Milliseconds of start latency that one GB·minute of idle memory is worth.
    pub price_ms_per_gb_min: f64,
    /// Functions forecast at this many invocations per minute or more get a rate model
    /// and tier targets.
    pub dense_per_min: f64,
    /// Safety buffer of the hot target.
    pub buffer: f64,
    pub min_instances: u32,
    pub max_instances: u32,
    /// Idle times after which a function no longer borrows its cluster's distribution.
    pub prior_until: u64,
    pub clusters: usize,
    /// Minutes between re-clusterings.
    pub cluster_every: u64,
    /// Node memory budget for idle pools, MB (`None`: unlimited).
    pub memory_budget_mb: Option<f64>,
    pub rate: RateConfig,
    pub seed: u64,
}

impl RekindleConfig {
    pub fn new(costs: TierCosts) -> Self {
        RekindleConfig {
            costs,
            // Where Rekindle has fewer cold starts, lower start latency and less wasted
            // memory than the hybrid histogram policy on every synthetic seed tried
            // (1-6; docs/simulation.md). A node operator moves along the curve with it.
            price_ms_per_gb_min: 50.0,
            dense_per_min: 1.0,
            buffer: 1.2,
            min_instances: 0,
            max_instances: 1000,
            prior_until: 10,
            clusters: 8,
            cluster_every: 60,
            memory_budget_mb: None,
            rate: RateConfig::default(),
            seed: 1,
        }
    }
}

/// Burst peaks kept per function for sizing pre-warms.
const PEAKS_KEPT: usize = 16;

/// Requests less than this apart (from the end of one to the next) are one burst: the gap
/// is not an idle time (no instance could be let go and loaded again in it), and the
/// burst's size is what a pre-warm should load. Without it a burst whose requests were
/// served one after another by a hot instance looked like a function invoked every few
/// milliseconds, planned "hold one hot instance", and restored the rest of every burst.
pub const BURST_GRACE: Secs = 1.0;

#[derive(Debug, Clone)]
struct FnState {
    info: FunctionInfo,
    idle: IdleDistribution,
    exec: ExecEstimator,
    last_end: Option<Secs>,
    busy: u32,
    image_on_disk: bool,
    arrivals: u64,
    first_arrival: Option<Secs>,
    this_minute: u32,
    ewma_per_min: f64,
    // Welford over idle times, for the clustering features.
    it_n: u64,
    it_mean: f64,
    it_m2: f64,
    rate: Option<RateModel>,
    cluster: Option<usize>,
    /// The burst in progress (requests less than [`BURST_GRACE`] apart): its peak demand
    /// (requests in flight, or arrived within the last `BURST_GRACE`, whichever is more),
    /// whether it followed an idle time a pre-warm covers (a minute or more), and its
    /// arrivals of the last `BURST_GRACE`.
    burst_peak: u32,
    burst_after_gap: bool,
    burst_arrivals: std::collections::VecDeque<Secs>,
    /// Peaks of the last bursts that followed such idle times: how many instances a
    /// pre-warm should load.
    peaks: std::collections::VecDeque<u32>,
    ladder: Plan,
    dirty: bool,
    plan: Plan,
}

impl FnState {
    fn new(info: FunctionInfo) -> Self {
        FnState {
            info,
            idle: IdleDistribution::standard(),
            exec: ExecEstimator::default(),
            last_end: None,
            busy: 0,
            image_on_disk: false,
            arrivals: 0,
            first_arrival: None,
            this_minute: 0,
            ewma_per_min: 0.0,
            it_n: 0,
            it_mean: 0.0,
            it_m2: 0.0,
            rate: None,
            cluster: None,
            burst_peak: 0,
            burst_after_gap: false,
            burst_arrivals: std::collections::VecDeque::new(),
            peaks: std::collections::VecDeque::new(),
            ladder: Plan::default(),
            dirty: true,
            plan: Plan::default(),
        }
    }

    /// The burst in progress is over (a request came after an idle time): its peak counts
    /// for pre-warms if it followed an idle time a pre-warm covers.
    fn close_burst(&mut self) {
        if self.burst_after_gap {
            if self.peaks.len() == PEAKS_KEPT {
                self.peaks.pop_front();
            }
            self.peaks.push_back(self.burst_peak);
            self.burst_after_gap = false;
            self.dirty = true;
        }
    }

    /// Clustering features: log10 rate per minute, idle-time CV, log10 execution time;
    /// and which of them are known yet.
    fn features(&mut self, now: Secs) -> ([f64; 3], [bool; 3]) {
        let mut f = [0.0; 3];
        let mut known = [false; 3];
        if let Some(first) = self.first_arrival {
            if self.arrivals >= 3 {
                let minutes = ((now - first) / 60.0).max(1.0);
                f[0] = (self.arrivals as f64 / minutes + 1e-4).log10();
                known[0] = true;
            }
        }
        if self.it_n >= 3 && self.it_mean > 0.0 {
            let sd = (self.it_m2 / self.it_n as f64).sqrt();
            f[1] = (sd / self.it_mean).min(10.0);
            known[1] = true;
        }
        if let Some(e) = self.exec.mean() {
            f[2] = (e + 1e-3).log10();
            known[2] = true;
        }
        (f, known)
    }
}

#[derive(Debug, Clone)]
struct Clusters {
    km: KMeans,
    stats: Vec<(f64, f64)>,
    priors: Vec<Option<Vec<f64>>>,
}

pub struct Rekindle {
    cfg: RekindleConfig,
    fns: Vec<Option<FnState>>,
    ids: Vec<FunctionId>,
    mlp: Mlp,
    clusters: Option<Clusters>,
    global_prior: Option<Vec<f64>>,
    minutes: u64,
    last_tick: Option<Secs>,
    budget_demotions: u64,
}

impl Rekindle {
    pub fn new(cfg: RekindleConfig) -> Self {
        let mlp = Mlp::new(FEATURES, 16, 3e-3, cfg.seed);
        Rekindle {
            cfg,
            fns: Vec::new(),
            ids: Vec::new(),
            mlp,
            clusters: None,
            global_prior: None,
            minutes: 0,
            last_tick: None,
            budget_demotions: 0,
        }
    }

    pub fn config(&self) -> &RekindleConfig {
        &self.cfg
    }

    /// Units demoted by the memory budget so far.
    pub fn budget_demotions(&self) -> u64 {
        self.budget_demotions
    }

    /// The latest rate forecast of `f`, if it is forecast per minute.
    pub fn rate_forecast(&self, f: FunctionId) -> Option<RateForecast> {
        self.get(f)?.rate.as_ref()?.forecast()
    }

    /// The cluster `f` borrows from, if any.
    pub fn cluster_of(&self, f: FunctionId) -> Option<usize> {
        self.get(f)?.cluster
    }

    fn get(&self, f: FunctionId) -> Option<&FnState> {
        self.fns.get(f as usize)?.as_ref()
    }

    fn state(&mut self, f: FunctionId) -> &mut FnState {
        let i = f as usize;
        if i >= self.fns.len() {
            self.fns.resize_with(i + 1, || None);
        }
        if self.fns[i].is_none() {
            self.fns[i] = Some(FnState::new(FunctionInfo {
                app: 0,
                memory_mb: 128.0,
                trigger: None,
            }));
            self.ids.push(f);
        }
        self.fns[i].as_mut().expect("just inserted")
    }

    fn recluster(&mut self, now: Secs) {
        let mut pts = Vec::new();
        let mut members = Vec::new();
        let mut probs = Vec::new();
        for &f in &self.ids {
            let s = self.fns[f as usize].as_mut().expect("registered");
            if s.idle.observations() < self.cfg.prior_until {
                continue;
            }
            let (x, known) = s.features(now);
            if known.iter().all(|&k| k) {
                if let Some(p) = s.idle.probabilities() {
                    pts.push(x.to_vec());
                    members.push(f);
                    probs.push(p);
                }
            }
        }
        if probs.is_empty() {
            return;
        }
        self.global_prior = Some(average(probs.iter()));
        if pts.len() < 2 * self.cfg.clusters {
            return;
        }
        let stats = standardize(&mut pts);
        let Some(km) = KMeans::fit(&pts, self.cfg.clusters, 50, self.cfg.seed) else {
            return;
        };
        let mut groups: Vec<Vec<&Vec<f64>>> = vec![Vec::new(); km.k()];
        for (p, prob) in pts.iter().zip(&probs) {
            groups[km.assign(p, None)].push(prob);
        }
        let priors = groups
            .into_iter()
            .map(|g| (!g.is_empty()).then(|| average(g.into_iter())))
            .collect();
        self.clusters = Some(Clusters { km, stats, priors });
        // New functions are re-assigned lazily (see `prior_for`).
        for &f in &self.ids {
            if let Some(s) = self.fns[f as usize].as_mut() {
                s.cluster = None;
                s.dirty = true;
            }
        }
        let _ = members;
    }

    /// The distribution a function with little history borrows.
    fn prior_for(&mut self, f: FunctionId, now: Secs) -> Option<Vec<f64>> {
        let clusters = self.clusters.as_ref();
        let s = self.fns[f as usize].as_mut().expect("registered");
        if let Some(c) = clusters {
            if s.cluster.is_none() {
                let (x, known) = s.features(now);
                if known.iter().any(|&k| k) {
                    let z: Vec<f64> = x
                        .iter()
                        .zip(&c.stats)
                        .map(|(v, (m, sd))| (v - m) / sd)
                        .collect();
                    s.cluster = Some(c.km.assign(&z, Some(&known)));
                }
            }
            if let Some(p) = s.cluster.and_then(|k| c.priors[k].clone()) {
                return Some(p);
            }
        }
        self.global_prior.clone()
    }

    /// Recompute the ladder part of `f`'s plan from its idle-time distribution.
    fn compute_ladder(&mut self, f: FunctionId, now: Secs) {
        let prior_until = self.cfg.prior_until;
        let n = self.fns[f as usize]
            .as_ref()
            .expect("registered")
            .idle
            .observations();
        let prior = if n < prior_until {
            self.prior_for(f, now)
        } else {
            None
        };
        let s = self.fns[f as usize].as_mut().expect("registered");
        let own = s.idle.probabilities();
        let w = if n >= prior_until {
            0.0
        } else {
            1.0 - n as f64 / prior_until as f64
        };
        let p = match (own, prior) {
            (Some(o), Some(pr)) => o
                .iter()
                .zip(&pr)
                .map(|(a, b)| (1.0 - w) * a + w * b)
                .collect(),
            (Some(o), None) => o,
            (None, Some(pr)) => pr,
            (None, None) => {
                // Nothing known anywhere yet: a fixed 10-minute hot window.
                s.ladder = Plan::windows(0.0, 600.0);
                return;
            }
        };
        let mem_gb = s.info.memory_mb / 1024.0;
        let costs = &self.cfg.costs;
        let price = self.cfg.price_ms_per_gb_min;
        s.ladder = ladder_from_distribution(
            &p,
            s.idle.edges_secs(),
            &s.idle.within(),
            costs,
            s.image_on_disk,
            mem_gb,
            price,
        );
        if s.ladder.pre_warm > 0.0 {
            // Each instance beyond the first, priced like the ladder: the restore it saves
            // when the burst needs it, against holding it from the load to the request
            // (half the first tier's window on average).
            let ka = s.ladder.keep_alive;
            let first = ka.first_tier();
            let window = match first {
                Tier::Hot => ka.hot,
                Tier::Warm => ka.warm,
                _ => 0.0,
            };
            if window > 0.0 {
                let saved = costs.base_latency(s.image_on_disk) - costs.latency(first);
                let cost = 0.5 * window / 60.0 * costs.memory(first) * mem_gb * price;
                s.ladder.pre_warm_extra = burst_extra(&s.peaks, saved, cost)
                    .min(self.cfg.max_instances.saturating_sub(1));
            }
        }
    }

    fn apply_budget(&mut self, now: Secs, budget: f64) {
        let costs = self.cfg.costs;
        let mut items = Vec::new();
        let mut floors = Vec::new();
        let mut owners = Vec::new();
        for &f in &self.ids {
            let s = self.fns[f as usize].as_ref().expect("registered");
            let mut t = s.plan.targets;
            // The unit the ladder holds right now (one idle instance or the image).
            if s.busy == 0 {
                if let Some(end) = s.last_end {
                    let el = now - end - s.plan.pre_warm;
                    if el >= 0.0 {
                        match s.plan.keep_alive.tier_at(el) {
                            Tier::Hot => t.hot = t.hot.max(1),
                            Tier::Warm => t.warm = t.warm.max(1),
                            Tier::Staged => t.staged = true,
                            _ => {}
                        }
                    }
                }
            }
            t.hot = t.hot.max(s.busy);
            let rate = s.rate.as_ref().and_then(|r| r.forecast()).map_or_else(
                || s.idle.mean_secs().map_or(0.0, |m| 1.0 / (m + 1.0)),
                |fc| fc.mean / 60.0,
            );
            items.push(BudgetItem {
                memory_mb: s.info.memory_mb,
                rate,
                exec: s.exec.recent_mean().unwrap_or(1.0),
                image_on_disk: s.image_on_disk,
                targets: t,
            });
            floors.push(s.busy);
            owners.push(f);
        }
        let before: Vec<TierTargets> = items.iter().map(|i| i.targets).collect();
        let fit = sizing::fit_budget(&mut items, &floors, budget, &costs, INTERVAL);
        self.budget_demotions += fit.demotions as u64;
        for ((f, it), b) in owners.into_iter().zip(items).zip(before) {
            if it.targets == b {
                continue;
            }
            let s = self.fns[f as usize].as_mut().expect("registered");
            let elapsed = s
                .last_end
                .map_or(0.0, |e| (now - e - s.plan.pre_warm).max(0.0));
            let ka = &mut s.plan.keep_alive;
            // Cut the ladder where the fitter demoted it, from now on.
            if it.targets.hot < b.hot {
                ka.hot = ka.hot.min(elapsed);
            }
            if it.targets.warm < b.warm || it.targets.hot < b.hot && it.targets.warm == b.warm {
                ka.warm = ka.warm.min((elapsed - ka.hot).max(0.0));
            }
            if !it.targets.staged && b.staged {
                ka.staged = ka.staged.min((elapsed - ka.hot - ka.warm).max(0.0));
            }
            s.plan.targets.hot = it.targets.hot.min(s.plan.targets.hot);
            s.plan.targets.warm = it.targets.warm.min(s.plan.targets.warm);
            s.plan.targets.staged = it.targets.staged && s.plan.targets.staged;
        }
    }
}

impl ExecEstimator {
    /// The IQR-filtered mean without the cache (for shared references).
    pub fn recent_mean(&self) -> Option<f64> {
        let mut c = self.clone();
        c.mean()
    }
}

fn average<'a>(vs: impl Iterator<Item = &'a Vec<f64>>) -> Vec<f64> {
    let mut out: Vec<f64> = Vec::new();
    let mut n = 0.0;
    for v in vs {
        if out.is_empty() {
            out = vec![0.0; v.len()];
        }
        for (o, x) in out.iter_mut().zip(v) {
            *o += x;
        }
        n += 1.0;
    }
    for o in &mut out {
        *o /= n;
    }
    out
}

/// The ladder of a plan from an idle-time distribution: `p` holds the probability of
/// each bin (upper edges `edges`, seconds) and, last, of "beyond"; `within`, per bin, how
/// far into it a request that comes in it comes on average (fraction of the width; 0.5
/// where missing). Holding tier `k`
/// through bin `b` is worth `p_b × (L_base − L_k)` ms of start latency (the next request
/// comes in that bin) and costs `S_b × held_b × m_k × mem_gb × price` (the function is
/// still idle at the bin's start with probability `S_b`, and then holds the unit for
/// `held_b` minutes of it, see `held_minutes`). A plan has one shape — nothing until the
/// pre-warm, then hot, then warm, then staged, then nothing — so the bins' tiers are
/// chosen together: the sequence of that shape with the highest total value (a dynamic
/// programme over the bins). Choosing each bin's best tier alone and then covering from
/// the first to the last bin chosen for a tier held an instance hot across hours of
/// worthless bins between a short-gap mode and a rare long gap.
pub fn ladder_from_distribution(
    p: &[f64],
    edges: &[f64],
    within: &[f64],
    costs: &TierCosts,
    image_on_disk: bool,
    mem_gb: f64,
    price: f64,
) -> Plan {
    // States in ladder order: 0 before the pre-warm, 1 hot, 2 warm, 3 staged, 4 after.
    const TIERS: [Option<Tier>; 5] = [
        None,
        Some(Tier::Hot),
        Some(Tier::Warm),
        Some(Tier::Staged),
        None,
    ];
    let base = costs.base_latency(image_on_disk);
    let bins = edges.len().min(p.len());
    let mut survival: f64 = p.iter().sum();
    // best[s]: the highest value of bins 0..=b with bin b in state s; from[b][s]: the
    // state of bin b - 1 on that path.
    let mut best = [f64::NEG_INFINITY; 5];
    let mut from: Vec<[usize; 5]> = Vec::with_capacity(bins);
    let mut lo = 0.0;
    for b in 0..bins {
        let hi = edges[b];
        let value = |state: usize| -> f64 {
            match TIERS[state] {
                None => 0.0,
                Some(t) if survival > 1e-12 => {
                    let h = (p[b] / survival).min(1.0);
                    p[b] * (base - costs.latency(t))
                        - survival
                            * held_minutes(h, within.get(b).copied().unwrap_or(0.5), hi - lo)
                            * costs.memory(t)
                            * mem_gb
                            * price
                }
                // Never idle this long: holding gains nothing and must not tie with
                // letting go (a dense function was held hot for 8 days that way).
                Some(_) => -1e-9 * (hi - lo),
            }
        };
        let mut next = [f64::NEG_INFINITY; 5];
        let mut back = [0usize; 5];
        for state in 0..5 {
            let (prev, v) = if b == 0 {
                (0, 0.0)
            } else {
                (0..=state)
                    .map(|q| (q, best[q]))
                    .fold((0, f64::NEG_INFINITY), first_best)
            };
            next[state] = v + value(state);
            back[state] = prev;
        }
        best = next;
        from.push(back);
        survival -= p[b];
        lo = hi;
    }
    if bins == 0 {
        return Plan::default();
    }
    let (mut state, total) = best
        .iter()
        .copied()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), first_best);
    if total <= 1e-12 {
        return Plan::default();
    }
    // Walk back: the span of each state.
    let mut span = [(f64::INFINITY, f64::NEG_INFINITY); 5];
    for b in (0..bins).rev() {
        let lo = if b == 0 { 0.0 } else { edges[b - 1] };
        let sp = &mut span[state];
        sp.0 = sp.0.min(lo);
        sp.1 = sp.1.max(edges[b]);
        state = from[b][state];
    }
    let len = |s: usize| (span[s].1 - span[s].0).max(0.0);
    let start = (1..4).map(|s| span[s].0).fold(f64::INFINITY, f64::min);
    if !start.is_finite() {
        return Plan::default();
    }
    Plan {
        pre_warm: start,
        pre_warm_extra: 0,
        keep_alive: KeepAlive {
            hot: len(1),
            warm: len(2),
            staged: len(3),
        },
        targets: TierTargets::default(),
    }
}

/// For a fold over `(state, value)`: the first of the highest values.
fn first_best(acc: (usize, f64), x: (usize, f64)) -> (usize, f64) {
    if x.1 > acc.1 {
        x
    } else {
        acc
    }
}

/// Instances a pre-warm should load beyond the first: the `j`-th is worth it when the
/// share of recent bursts (after idle times) that reached `j` concurrent requests,
/// times the `saved_ms` it saves then, exceeds what holding it costs (`cost_ms`).
pub fn burst_extra<'a>(
    peaks: impl IntoIterator<Item = &'a u32>,
    saved_ms: f64,
    cost_ms: f64,
) -> u32 {
    let peaks: Vec<u32> = peaks.into_iter().copied().collect();
    if peaks.is_empty() {
        return 0;
    }
    let n = peaks.len() as f64;
    let max = peaks.iter().copied().max().unwrap_or(1);
    let mut extra = 0;
    for j in 2..=max {
        let reach = peaks.iter().filter(|&&p| p >= j).count() as f64 / n;
        if reach * saved_ms > cost_ms {
            extra = j - 1;
        } else {
            break;
        }
    }
    extra
}

/// Expected minutes an idle unit is held through a bin `width` seconds wide, given that
/// the next request comes in it with probability `h` (and nothing came before it), at
/// `within` of the bin's width on average when it does: `h × within × width + (1 − h) ×
/// width`. Charging the whole bin instead made a function whose requests come seconds
/// apart pay a full minute of memory per request and lose its hot instance (42 000
/// staged restores of one function on seed 4).
fn held_minutes(h: f64, within: f64, width: Secs) -> f64 {
    let h = h.clamp(0.0, 1.0);
    width / 60.0 * (h * within.clamp(0.0, 1.0) + (1.0 - h))
}

impl Policy for Rekindle {
    fn name(&self) -> String {
        "rekindle".into()
    }

    fn describe(&self) -> String {
        let c = &self.cfg;
        format!(
            "hazard-priced tiers (price {} ms per GB·min idle), rate forecast (AutoETS + MLP \
             blend) for functions ≥ {}/min, hot buffer {}, k-means k={} prior until {} idle \
             times, budget {}",
            c.price_ms_per_gb_min,
            c.dense_per_min,
            c.buffer,
            c.clusters,
            c.prior_until,
            c.memory_budget_mb
                .map_or_else(|| "none".to_string(), |b| format!("{b:.0} MB"))
        )
    }

    fn register(&mut self, f: FunctionId, info: &FunctionInfo) {
        let s = self.state(f);
        s.info = info.clone();
        // The ladder prices memory: a new memory per instance re-plans it.
        s.dirty = true;
    }

    fn on_arrival(&mut self, f: FunctionId, at: Secs) {
        let s = self.state(f);
        s.arrivals += 1;
        s.first_arrival.get_or_insert(at);
        s.this_minute += 1;
        s.busy += 1;
        let gap = if s.busy == 1 {
            s.last_end.map(|e| (at - e).max(0.0))
        } else {
            None
        };
        if s.busy == 1 && gap.is_none_or(|g| g >= BURST_GRACE) {
            s.close_burst();
            s.burst_after_gap = gap.is_some_and(|g| g >= INTERVAL);
            s.burst_peak = 0;
            s.burst_arrivals.clear();
        }
        while s
            .burst_arrivals
            .front()
            .is_some_and(|&a| a < at - BURST_GRACE)
        {
            s.burst_arrivals.pop_front();
        }
        s.burst_arrivals.push_back(at);
        s.burst_peak = s.burst_peak.max(s.busy.max(s.burst_arrivals.len() as u32));
        if let Some(it) = gap.filter(|&g| g >= BURST_GRACE) {
            s.idle.record(it);
            s.it_n += 1;
            let d = it - s.it_mean;
            s.it_mean += d / s.it_n as f64;
            s.it_m2 += d * (it - s.it_mean);
            s.dirty = true;
        }
    }

    fn on_end(&mut self, f: FunctionId, at: Secs, exec: Secs) {
        let s = self.state(f);
        s.busy = s.busy.saturating_sub(1);
        s.exec.record(exec);
        s.last_end = Some(s.last_end.map_or(at, |e| e.max(at)));
        if !s.image_on_disk {
            // The node checkpoints a function after its first start.
            s.image_on_disk = true;
            s.dirty = true;
        }
    }

    fn on_abandon(&mut self, f: FunctionId, at: Secs) {
        // Not an execution: no duration for the estimator (a refused burst of zeros would
        // shrink the hot target exactly when more instances are needed), no checkpoint.
        let s = self.state(f);
        s.busy = s.busy.saturating_sub(1);
        s.last_end = Some(s.last_end.map_or(at, |e| e.max(at)));
    }

    fn exec_estimate(&self, f: FunctionId) -> Option<Secs> {
        self.get(f)?.exec.recent_mean()
    }

    fn tick(&mut self, now: Secs) {
        if self.last_tick.is_some_and(|t| now < t + INTERVAL - 1e-9) {
            return;
        }
        self.last_tick = Some(now);
        self.minutes += 1;
        if self.minutes.is_multiple_of(self.cfg.cluster_every) {
            self.recluster(now);
        }
        let minute_of_day = ((now / 60.0).floor() as u64 % 1440) as usize;
        let ids = self.ids.clone();
        for f in ids {
            let cfg_dense = self.cfg.dense_per_min;
            let rate_cfg = self.cfg.rate;
            let s = self.fns[f as usize].as_mut().expect("registered");
            let count = s.this_minute as f64;
            s.this_minute = 0;
            s.ewma_per_min = 0.95 * s.ewma_per_min + 0.05 * count;
            if s.rate.is_none() && (s.ewma_per_min >= cfg_dense || count >= 5.0 * cfg_dense) {
                s.rate = Some(RateModel::new(rate_cfg));
            }
            let forecast = s
                .rate
                .as_mut()
                .map(|r| r.observe(count, minute_of_day, &mut self.mlp));
            if s.dirty {
                s.dirty = false;
                self.compute_ladder(f, now);
            }
            let s = self.fns[f as usize].as_mut().expect("registered");
            let mut plan = s.ladder;
            if let Some(fc) = forecast.filter(|fc| fc.mean >= cfg_dense * 0.5) {
                let exec = s.exec.mean().unwrap_or(1.0);
                let c = &self.cfg;
                let hot = sizing::hot_target(
                    fc.mean / 60.0,
                    exec,
                    c.buffer,
                    c.min_instances,
                    c.max_instances,
                );
                let warm =
                    sizing::warm_target(fc.upper / 60.0, exec, c.buffer, hot, c.max_instances);
                // Only as many as pay for their memory at the policy's price, valued at
                // the expected rate (the upper quantile bounds how many, not what each
                // is worth).
                let costs = &c.costs;
                let warm = sizing::priced_extra(
                    fc.mean / 60.0,
                    exec,
                    hot,
                    warm,
                    costs.base_latency(s.image_on_disk) - costs.latency(Tier::Warm),
                    costs.memory(Tier::Warm) * s.info.memory_mb / 1024.0 * c.price_ms_per_gb_min,
                );
                // The staged image absorbs bursts beyond the hot and warm instances: worth
                // its memory only when the upper quantile needs more than they give.
                let beyond =
                    sizing::hot_target(fc.upper / 60.0, exec, c.buffer * 1.5, 0, c.max_instances);
                plan.targets = TierTargets {
                    hot,
                    warm,
                    staged: s.image_on_disk && beyond > hot + warm,
                };
            }
            s.plan = plan;
        }
        if let Some(budget) = self.cfg.memory_budget_mb {
            self.apply_budget(now, budget);
        }
    }

    fn plan(&mut self, f: FunctionId, now: Secs) -> Plan {
        let dirty = self.state(f).dirty;
        if dirty && self.last_tick.is_none_or(|t| now - t < INTERVAL) {
            // New information between ticks (a first invocation, a new idle time): the
            // ladder follows at once; targets wait for the tick.
            self.state(f).dirty = false;
            self.compute_ladder(f, now);
            let s = self.state(f);
            let targets = s.plan.targets;
            s.plan = s.ladder;
            s.plan.targets = targets;
        }
        self.state(f).plan
    }

    fn arrival_forecast(&self, f: FunctionId) -> Option<f64> {
        self.rate_forecast(f).map(|fc| fc.mean)
    }

    fn forecast_report(&self) -> Option<AccuracyReport> {
        AccuracyReport::from_functions(
            self.fns
                .iter()
                .flatten()
                .filter_map(|s| s.rate.as_ref().map(|r| r.accuracy())),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn costs() -> TierCosts {
        TierCosts {
            latency_ms: [0.0, 5.0, 37.0, 200.0, 1000.0],
            memory_factor: [1.0, 1.0, 0.6, 0.0, 0.0],
        }
    }

    fn info() -> FunctionInfo {
        FunctionInfo {
            app: 0,
            memory_mb: 256.0,
            trigger: None,
        }
    }

    fn drive(p: &mut Rekindle, f: FunctionId, times: &[f64], exec: f64) -> Plan {
        let mut plan = p.plan(f, 0.0);
        let mut next_tick = 60.0;
        for &t in times {
            while next_tick <= t {
                p.tick(next_tick);
                next_tick += 60.0;
            }
            p.on_arrival(f, t);
            p.on_end(f, t + exec, exec);
            plan = p.plan(f, t + exec);
        }
        plan
    }

    #[test]
    fn periodic_function_is_pre_warmed_just_before_its_period() {
        let mut p = Rekindle::new(RekindleConfig::new(costs()));
        p.register(0, &info());
        let times: Vec<f64> = (0..40).map(|i| i as f64 * 420.0).collect();
        let plan = drive(&mut p, 0, &times, 2.0);
        // IT = 418 s, in the bin [360, 420).
        assert_eq!(plan.pre_warm, 360.0, "{plan:?}");
        assert!(plan.keep_alive.first_tier() == Tier::Hot);
        let loaded_until = plan.pre_warm + plan.keep_alive.window();
        assert!((418.0..=480.0).contains(&loaded_until), "{plan:?}");
    }

    #[test]
    fn new_function_without_any_history_gets_a_fixed_window() {
        let mut p = Rekindle::new(RekindleConfig::new(costs()));
        p.register(3, &info());
        let plan = p.plan(3, 0.0);
        assert_eq!(plan, Plan::windows(0.0, 600.0));
    }

    #[test]
    fn rare_function_keeps_only_its_image_on_disk() {
        let mut p = Rekindle::new(RekindleConfig::new(costs()));
        p.register(0, &info());
        // Every 30 hours: holding anything for that long costs more than it saves.
        let times: Vec<f64> = (0..12).map(|i| i as f64 * 30.0 * 3600.0).collect();
        let plan = drive(&mut p, 0, &times, 1.0);
        // Holding even a staged image through a 5-hour-wide bin of the idle-time
        // distribution costs more than the restore it saves: nothing stays in memory.
        assert_eq!(plan.keep_alive.window(), 0.0, "{plan:?}");
        assert_eq!(plan.targets, TierTargets::default());
    }

    #[test]
    fn ladder_prefers_staged_for_unlikely_minutes_and_hot_for_likely_ones() {
        let c = costs();
        let edges: Vec<f64> = (1..=10).map(|i| i as f64 * 60.0).collect();
        // 90 % of idle times in the first minute, 2 % in each of the next five.
        let mut p = vec![0.9];
        p.extend(vec![0.02; 5]);
        p.extend(vec![0.0; 5]);
        let plan = ladder_from_distribution(&p, &edges, &[], &c, true, 0.25, 200.0);
        assert_eq!(plan.pre_warm, 0.0);
        assert_eq!(plan.keep_alive.hot, 60.0, "{plan:?}");
        assert_eq!(plan.keep_alive.warm, 0.0, "{plan:?}");
        assert_eq!(plan.keep_alive.staged, 300.0, "{plan:?}");
        // A huge price holds nothing.
        let none = ladder_from_distribution(&p, &edges, &[], &c, true, 0.25, 1e9);
        assert_eq!(none, Plan::default());
    }

    #[test]
    fn ladder_does_not_hold_across_worthless_minutes_to_reach_a_rare_long_gap() {
        let c = costs();
        let edges: Vec<f64> = (1..=240).map(|i| i as f64 * 60.0).collect();
        // Requests seconds apart, and once in a while a gap of four hours: in that last
        // minute the next request is certain, but holding an instance the 239 minutes
        // before it costs far more than one restore. (Choosing each minute's best tier
        // alone and covering the span between held it hot for four hours.)
        let mut p = vec![0.0; 241];
        p[0] = 0.99;
        p[239] = 0.01;
        let mut within = vec![0.5; 240];
        within[0] = 0.05;
        let plan = ladder_from_distribution(&p, &edges, &within, &c, true, 0.25, 200.0);
        assert_eq!(plan.pre_warm, 0.0, "{plan:?}");
        assert_eq!(plan.keep_alive.window(), 60.0, "{plan:?}");
        assert_eq!(plan.keep_alive.hot, 60.0, "{plan:?}");
    }

    #[test]
    fn holding_cost_follows_where_in_the_minute_requests_come() {
        let c = costs();
        let edges = [60.0, 120.0];
        let p = [0.97, 0.0, 0.03];
        // A 4 GB function whose next request comes within the minute 97 % of the time:
        // charged half a minute per request (a midpoint) it is not worth holding hot at
        // this price; its requests come ~3 s apart (within 0.05), so it is.
        let mid = ladder_from_distribution(&p, &edges, &[0.5, 0.5], &c, true, 4.0, 200.0);
        assert_ne!(mid.keep_alive.first_tier(), Tier::Hot, "{mid:?}");
        let near = ladder_from_distribution(&p, &edges, &[0.05, 0.5], &c, true, 4.0, 200.0);
        assert_eq!(near.keep_alive.hot, 60.0, "{near:?}");
        assert!(held_minutes(1.0, 0.05, 60.0) < held_minutes(1.0, 0.5, 60.0));
        assert_eq!(held_minutes(0.0, 0.05, 60.0), 1.0);
    }

    #[test]
    fn burst_extra_counts_the_instances_bursts_reach_often_enough() {
        assert_eq!(burst_extra(&[], 100.0, 1.0), 0);
        assert_eq!(burst_extra(&[1, 1, 1], 100.0, 1.0), 0);
        assert_eq!(burst_extra(&[3, 3, 3, 3], 100.0, 1.0), 2);
        // The third instance is needed in a quarter of the bursts: worth 25 ms, not 30.
        assert_eq!(burst_extra(&[2, 2, 2, 3], 100.0, 30.0), 1);
        assert_eq!(burst_extra(&[2, 2, 2, 3], 100.0, 20.0), 2);
        assert_eq!(burst_extra(&[3, 3], 100.0, 1e6), 0);
    }

    /// Twelve bursts of 3 requests, 7 minutes apart: all 3 at once, or one after another
    /// 0.1 s apart (each ending before the next comes). The plan after the last.
    fn replay_bursts(serial: bool) -> Plan {
        let mut p = Rekindle::new(RekindleConfig::new(costs()));
        p.register(0, &info());
        let mut next_tick = 60.0;
        let mut plan = Plan::default();
        for k in 0..12 {
            let t = k as f64 * 420.0;
            while next_tick <= t {
                p.tick(next_tick);
                next_tick += 60.0;
            }
            if serial {
                for i in 0..3 {
                    let at = t + 0.1 * i as f64;
                    p.on_arrival(0, at);
                    p.on_end(0, at + 0.05, 0.05);
                }
            } else {
                for _ in 0..3 {
                    p.on_arrival(0, t);
                }
                for _ in 0..3 {
                    p.on_end(0, t + 1.0, 1.0);
                }
            }
            plan = p.plan(0, t + 1.0);
        }
        plan
    }

    #[test]
    fn bursts_after_idle_times_are_pre_warmed_with_their_size() {
        // Bursts of 3 concurrent requests (the agent_forecast story's shape, slower).
        let plan = replay_bursts(false);
        assert_eq!(plan.pre_warm, 360.0, "{plan:?}");
        assert_eq!(plan.pre_warm_extra, 2, "{plan:?}");
        // The same bursts served one request after another: still a burst of 3, and no
        // idle time of 0.1 s.
        let serial = replay_bursts(true);
        assert_eq!(serial.pre_warm, 360.0, "{serial:?}");
        assert_eq!(serial.pre_warm_extra, 2, "{serial:?}");
        // Requests one at a time: one instance.
        let mut q = Rekindle::new(RekindleConfig::new(costs()));
        q.register(0, &info());
        let times: Vec<f64> = (0..12).map(|i| i as f64 * 420.0).collect();
        let single = drive(&mut q, 0, &times, 1.0);
        assert_eq!(single.pre_warm, 360.0, "{single:?}");
        assert_eq!(single.pre_warm_extra, 0, "{single:?}");
    }

    #[test]
    fn dense_function_gets_rate_based_targets_and_a_forecast() {
        let mut p = Rekindle::new(RekindleConfig::new(costs()));
        p.register(0, &info());
        // 30 arrivals a minute, 4 s each: ~2 busy on average.
        let times: Vec<f64> = (0..(30 * 180)).map(|i| i as f64 * 2.0).collect();
        let plan = drive(&mut p, 0, &times, 4.0);
        let fc = p.rate_forecast(0).expect("dense function is forecast");
        assert!((fc.mean - 30.0).abs() < 5.0, "{fc:?}");
        // 0.5/s × 4 s × 1.2 = 2.4 → 3.
        assert_eq!(plan.targets.hot, 3, "{plan:?}");
        assert!(plan.targets.staged);
        assert!(p.forecast_report().is_some());
    }

    #[test]
    fn hot_target_uses_measured_durations_without_outliers_or_abandoned_requests() {
        let mut p = Rekindle::new(RekindleConfig::new(costs()));
        p.register(0, &info());
        assert_eq!(p.exec_estimate(0), None);
        // 30 a minute for 3 hours; every tenth takes 60 s instead of 4 s (a stuck
        // request): IQR drops those, the plain mean would be 9.6 s.
        let mut next_tick = 60.0;
        for i in 0..(30 * 180) {
            let t = i as f64 * 2.0;
            while next_tick <= t {
                p.tick(next_tick);
                next_tick += 60.0;
            }
            let exec = if i % 10 == 0 { 60.0 } else { 4.0 };
            p.on_arrival(0, t);
            // As many refused requests: they end, but teach no duration.
            p.on_arrival(0, t + 0.1);
            p.on_abandon(0, t + 0.2);
            p.on_end(0, t + exec, exec);
        }
        assert_eq!(p.exec_estimate(0), Some(4.0));
        p.tick(next_tick);
        let plan = p.plan(0, next_tick);
        let fc = p.rate_forecast(0).expect("dense function is forecast");
        // About 60 a minute: refused requests are demand too.
        assert!((fc.mean - 60.0).abs() < 6.0, "{fc:?}");
        let c = p.config();
        let want = sizing::hot_target(fc.mean / 60.0, 4.0, c.buffer, 0, c.max_instances);
        assert_eq!(plan.targets.hot, want, "{plan:?} {fc:?}");
        // With the plain mean (9.6 s) it would be about twice that.
        let plain = sizing::hot_target(fc.mean / 60.0, 9.6, c.buffer, 0, c.max_instances);
        assert!(plain >= 2 * want - 1, "{plain} vs {want}");
    }

    #[test]
    fn new_function_borrows_its_clusters_distribution() {
        let mut cfg = RekindleConfig::new(costs());
        cfg.clusters = 2;
        cfg.cluster_every = 10;
        let mut p = Rekindle::new(cfg);
        // 10 periodic functions (every 7 min, 2 s) and 10 busy ones (every 20 s, 0.1 s).
        for f in 0..22 {
            p.register(f, &info());
        }
        let mut events: Vec<(f64, FunctionId, f64)> = Vec::new();
        for f in 0..10 {
            for i in 0..60 {
                events.push((i as f64 * 420.0 + f as f64, f, 2.0));
            }
        }
        for f in 10..20 {
            for i in 0..1200 {
                events.push((i as f64 * 20.0 + f as f64, f, 0.1));
            }
        }
        events.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut next_tick = 60.0;
        for (t, f, e) in events {
            while next_tick <= t {
                p.tick(next_tick);
                next_tick += 60.0;
            }
            p.on_arrival(f, t);
            p.on_end(f, t + e, e);
        }
        // A new function that ran once for 2 s looks like the periodic ones.
        let t = next_tick;
        p.on_arrival(20, t);
        p.on_end(20, t + 2.0, 2.0);
        p.tick(t + 60.0);
        let plan = p.plan(20, t + 60.0);
        assert!(p.cluster_of(20).is_some());
        assert!(
            plan.pre_warm >= 300.0,
            "borrowed the 7-minute pattern: {plan:?}"
        );
        // A new function that ran for 0.1 s looks like the busy ones instead.
        p.on_arrival(21, t + 61.0);
        p.on_end(21, t + 61.1, 0.1);
        let busy = p.plan(21, t + 61.1);
        assert_ne!(p.cluster_of(21), p.cluster_of(20));
        assert_eq!(busy.pre_warm, 0.0, "borrowed the busy pattern: {busy:?}");
    }

    #[test]
    fn measured_memory_given_again_at_registration_counts_in_the_budget() {
        let mut cfg = RekindleConfig::new(costs());
        cfg.memory_budget_mb = Some(600.0);
        let mut p = Rekindle::new(cfg);
        for f in 0..2 {
            p.register(f, &info());
        }
        let run = |p: &mut Rekindle, from: f64| {
            let mut t = from;
            while t < from + 1800.0 {
                for f in 0..2 {
                    p.on_arrival(f, t + f as f64);
                    p.on_end(f, t + f as f64 + 0.5, 0.5);
                }
                t += 30.0;
                if (t % 60.0).abs() < 1e-9 {
                    p.tick(t);
                }
            }
        };
        // Two functions of 256 MB each keep an idle instance: 512 MB fit 600.
        run(&mut p, 0.0);
        assert_eq!(p.budget_demotions(), 0);
        // Measured at 400 MB an instance: the two no longer fit.
        for f in 0..2 {
            p.register(
                f,
                &FunctionInfo {
                    memory_mb: 400.0,
                    ..info()
                },
            );
        }
        run(&mut p, 1800.0);
        assert!(p.budget_demotions() > 0);
    }

    #[test]
    fn memory_budget_cuts_ladders() {
        let mut cfg = RekindleConfig::new(costs());
        cfg.memory_budget_mb = Some(300.0);
        let mut p = Rekindle::new(cfg);
        for f in 0..4 {
            p.register(f, &info());
        }
        // Four functions invoked every 30 s: each would keep an idle hot instance.
        let mut t = 0.0;
        while t < 3600.0 {
            for f in 0..4 {
                p.on_arrival(f, t + f as f64);
                p.on_end(f, t + f as f64 + 0.5, 0.5);
            }
            t += 30.0;
            if (t % 60.0).abs() < 1e-9 {
                p.tick(t);
            }
        }
        assert!(p.budget_demotions() > 0);
        // What stays held now fits: at most one 256 MB instance.
        let held: usize = (0..4)
            .filter(|&f| {
                let plan = p.plan(f, t);
                let el = t - (t - 30.0 + f as f64 + 0.5) - plan.pre_warm;
                plan.keep_alive.tier_at(el) == Tier::Hot
            })
            .count();
        assert!(held <= 1, "{held}");
    }
}
