//! Pool sizing rules, as pure functions (the "Sizing" section):
//!
//! - [`hot_target`]: forecast arrival rate × mean execution time × a safety buffer
//!   (Little's law: the mean number of busy instances), rounded up, clamped to min/max;
//! - [`warm_target`]: the same from the forecast's upper quantile, minus what is hot;
//!   [`priced_extra`]: how many of those are worth their memory;
//! - [`keep_alive_from_gaps`]: a per-function keep-alive from observed inter-arrival gaps;
//! - [`fit_budget`]: when the node's pools do not fit its memory budget, demote
//!   (hot → warm → staged → out) the units whose loss — the expected cost of the misses
//!   they would have prevented — per MB freed is smallest, until they fit; never exceed
//!   the budget.
//!
//! The tier costs ([`TierCosts`]) — start latency and memory held per tier — are inputs,
//! so the simulator and the live agent size with the same numbers they measure.

use serde::{Deserialize, Serialize};

use crate::policy::{Tier, TierTargets};

/// What holding a function in each tier costs and saves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TierCosts {
    /// Mean start latency per tier, ms, indexed by [`Tier::index`].
    pub latency_ms: [f64; 5],
    /// Memory held while idle in a tier, as a fraction of the instance's memory
    /// (hot, warm, staged; disk and cold hold none).
    pub memory_factor: [f64; 5],
}

impl TierCosts {
    pub fn latency(&self, t: Tier) -> f64 {
        self.latency_ms[t.index()]
    }

    pub fn memory(&self, t: Tier) -> f64 {
        self.memory_factor[t.index()]
    }

    /// Latency of the start a request gets when nothing is held in memory: a restore
    /// from disk when the image exists and that is faster, else a cold start.
    pub fn base_latency(&self, image_on_disk: bool) -> f64 {
        let cold = self.latency(Tier::Cold);
        if image_on_disk {
            cold.min(self.latency(Tier::Disk))
        } else {
            cold
        }
    }
}

/// Target hot instances: `ceil(rate × exec × buffer)`, clamped to `[min, max]`.
/// `rate` in invocations per second, `exec` in seconds.
pub fn hot_target(rate: f64, exec: f64, buffer: f64, min: u32, max: u32) -> u32 {
    let busy = (rate.max(0.0) * exec.max(0.0) * buffer.max(0.0)).ceil();
    let n = if busy.is_finite() {
        busy.min(u32::MAX as f64) as u32
    } else {
        max
    };
    n.clamp(min, max.max(min))
}

/// Target warm instances: the instances the forecast's upper quantile needs beyond `hot`,
/// so that `hot + warm ≤ max`.
pub fn warm_target(upper_rate: f64, exec: f64, buffer: f64, hot: u32, max: u32) -> u32 {
    let need = hot_target(upper_rate, exec, buffer, 0, max);
    need.saturating_sub(hot).min(max.saturating_sub(hot))
}

/// How many of `cap` instances beyond `hot` are worth holding frozen, priced the way the
/// ladder prices a minute of idle memory: the `j`-th instance serves the requests that
/// find `j - 1` busy (concurrency Poisson with mean `rate × exec`, what a request sees in
/// an M/G/∞ system), saving `saved_ms` each, and costs `cost_ms_per_min` for each minute
/// it is idle (`P(concurrency < j)`). Returns the highest `j - hot` whose value exceeds its
/// cost, 0 if none does. Without this a bursty function with long executions held its
/// whole upper-quantile need frozen all day (20 instances of one function on seed 5).
pub fn priced_extra(
    rate: f64,
    exec: f64,
    hot: u32,
    cap: u32,
    saved_ms: f64,
    cost_ms_per_min: f64,
) -> u32 {
    let per_min = rate.max(0.0) * 60.0;
    let mean = rate.max(0.0) * exec.max(0.0);
    let mut best = 0;
    for extra in 1..=cap {
        let j = hot + extra;
        let p_seen = poisson_tail(mean, j - 1) - poisson_tail(mean, j);
        let value = per_min * p_seen * saved_ms;
        let cost = cost_ms_per_min * (1.0 - poisson_tail(mean, j));
        if value > cost {
            best = extra;
        }
    }
    best
}

/// A keep-alive window from observed gaps between arrivals: the `quantile` of the gaps
/// times `1 + margin`, clamped to `[min, max]` seconds; `default` without gaps.
pub fn keep_alive_from_gaps(
    gaps: &[f64],
    quantile: f64,
    margin: f64,
    min: f64,
    max: f64,
    default: f64,
) -> f64 {
    let mut g: Vec<f64> = gaps
        .iter()
        .copied()
        .filter(|x| x.is_finite() && *x >= 0.0)
        .collect();
    if g.is_empty() {
        return default.clamp(min, max);
    }
    g.sort_by(|a, b| a.total_cmp(b));
    let q = crate::forecast::exec::quantile_sorted(&g, quantile);
    (q * (1.0 + margin)).clamp(min, max)
}

/// P(a Poisson variable of mean `mean` is at least `k`).
pub fn poisson_tail(mean: f64, k: u32) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if mean <= 0.0 {
        return 0.0;
    }
    let mut p = (-mean).exp();
    let mut cdf = p;
    for i in 1..k {
        p *= mean / i as f64;
        cdf += p;
    }
    (1.0 - cdf).max(0.0)
}

/// Probability that the `k`-th instance of a function (1-based, counting from the first
/// one a request would take) serves a request during the next `interval` seconds: for
/// the first, that any request arrives; for the others, that the concurrency
/// (Poisson, mean `rate × exec`) reaches `k`.
pub fn p_instance_used(rate: f64, exec: f64, interval: f64, k: u32) -> f64 {
    if k <= 1 {
        1.0 - (-rate.max(0.0) * interval).exp()
    } else {
        poisson_tail(rate * exec, k).min(1.0 - (-rate.max(0.0) * interval).exp())
    }
}

/// One function's pool, as the budget fitter sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetItem {
    /// Memory of one instance, MB.
    pub memory_mb: f64,
    /// Forecast arrival rate, per second, and mean execution time, seconds.
    pub rate: f64,
    pub exec: f64,
    /// Whether a checkpoint image exists on disk (a miss then costs a restore, not a
    /// cold start, when that is faster).
    pub image_on_disk: bool,
    /// The targets; [`fit_budget`] lowers them.
    pub targets: TierTargets,
}

impl BudgetItem {
    pub fn memory(&self, costs: &TierCosts) -> f64 {
        let t = &self.targets;
        self.memory_mb
            * (t.hot as f64 * costs.memory(Tier::Hot)
                + t.warm as f64 * costs.memory(Tier::Warm)
                + if t.staged {
                    costs.memory(Tier::Staged)
                } else {
                    0.0
                })
    }
}

/// The outcome of [`fit_budget`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetFit {
    /// Memory of all targets before and after, MB.
    pub before_mb: f64,
    pub after_mb: f64,
    /// Demotions made.
    pub demotions: u32,
    /// Expected added start latency of the demotions, ms per interval.
    pub expected_loss_ms: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Move {
    HotToWarm,
    DropHot,
    DropWarm,
    Unstage,
}

/// Demote targets until their memory fits `budget_mb`, taking each time the demotion with
/// the smallest expected cost of a miss per MB freed. Busy instances are not the fitter's
/// to demote: `min_hot[i]` hot instances of item `i` stay (may be empty for none).
///
/// The result never exceeds the budget unless the floors alone do.
pub fn fit_budget(
    items: &mut [BudgetItem],
    min_hot: &[u32],
    budget_mb: f64,
    costs: &TierCosts,
    interval: f64,
) -> BudgetFit {
    let before: f64 = items.iter().map(|i| i.memory(costs)).sum();
    let staged_before: Vec<bool> = items.iter().map(|i| i.targets.staged).collect();
    let mut total = before;
    let mut fit = BudgetFit {
        before_mb: before,
        after_mb: before,
        demotions: 0,
        expected_loss_ms: 0.0,
    };
    while total > budget_mb + 1e-9 {
        let mut best: Option<(usize, Move, f64, f64)> = None; // (item, move, loss/MB, freed)
        for (i, it) in items.iter().enumerate() {
            let floor = min_hot.get(i).copied().unwrap_or(0);
            for (mv, loss, freed) in moves(it, floor, costs, interval) {
                if freed <= 1e-9 {
                    continue;
                }
                let per_mb = loss / freed;
                if best.is_none_or(|b| per_mb < b.2) {
                    best = Some((i, mv, per_mb, freed));
                }
            }
        }
        let Some((i, mv, per_mb, freed)) = best else {
            break; // only floors left
        };
        let t = &mut items[i].targets;
        match mv {
            Move::HotToWarm => {
                t.hot -= 1;
                t.warm += 1;
            }
            Move::DropHot => t.hot -= 1,
            Move::DropWarm => t.warm -= 1,
            Move::Unstage => t.staged = false,
        }
        total -= freed;
        fit.demotions += 1;
        fit.expected_loss_ms += per_mb * freed;
    }
    // Greedy demotion can unstage an image (rarely used while the function had a hot
    // instance) and then drop the instance too; give images back where they now fit,
    // most valuable per MB first.
    let mut refill: Vec<(usize, f64)> = items
        .iter()
        .enumerate()
        .filter(|(i, it)| staged_before[*i] && !it.targets.staged)
        .map(|(i, it)| {
            let t = it.targets;
            let p = p_instance_used(it.rate, it.exec, interval, t.hot + t.warm + 1);
            let gain = p * (costs.base_latency(it.image_on_disk) - costs.latency(Tier::Staged));
            (
                i,
                gain / (it.memory_mb * costs.memory(Tier::Staged)).max(1e-9),
            )
        })
        .filter(|(_, v)| *v > 0.0)
        .collect();
    refill.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (i, _) in refill {
        let add = items[i].memory_mb * costs.memory(Tier::Staged);
        if total + add <= budget_mb + 1e-9 {
            items[i].targets.staged = true;
            total += add;
            fit.demotions -= 1;
        }
    }
    fit.after_mb = items.iter().map(|i| i.memory(costs)).sum();
    fit
}

/// The demotions possible for one item: (move, expected loss in ms, MB freed).
fn moves(it: &BudgetItem, floor: u32, costs: &TierCosts, interval: f64) -> Vec<(Move, f64, f64)> {
    let t = it.targets;
    let mut out = Vec::with_capacity(4);
    let base = costs.base_latency(it.image_on_disk);
    // Where a request lands when the marginal instance is gone.
    let below_instances = if t.staged {
        costs.latency(Tier::Staged).min(base)
    } else {
        base
    };
    let (rate, exec, m) = (it.rate, it.exec, it.memory_mb);
    if t.hot > floor {
        // The marginal hot instance is the last one a request takes among the hot ones.
        let p = p_instance_used(rate, exec, interval, t.hot);
        let to_warm = p * (costs.latency(Tier::Warm) - costs.latency(Tier::Hot)).max(0.0);
        out.push((
            Move::HotToWarm,
            to_warm,
            m * (costs.memory(Tier::Hot) - costs.memory(Tier::Warm)),
        ));
        // Dropping it makes the next request fall to warm (if any) or below.
        let p_drop = p_instance_used(rate, exec, interval, t.hot + t.warm);
        let loss = p_drop * (below_instances - costs.latency(Tier::Hot)).max(0.0);
        out.push((Move::DropHot, loss, m * costs.memory(Tier::Hot)));
    }
    if t.warm > 0 {
        let p = p_instance_used(rate, exec, interval, t.hot + t.warm);
        let loss = p * (below_instances - costs.latency(Tier::Warm)).max(0.0);
        out.push((Move::DropWarm, loss, m * costs.memory(Tier::Warm)));
    }
    if t.staged {
        let p = p_instance_used(rate, exec, interval, t.hot + t.warm + 1);
        let loss = p * (base - costs.latency(Tier::Staged)).max(0.0);
        out.push((Move::Unstage, loss, m * costs.memory(Tier::Staged)));
    }
    out
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

    #[test]
    fn priced_extra_holds_what_pays_for_its_memory() {
        // 1 request/s of 10 s: ~10 busy. Each extra instance's requests save 100 ms.
        let cheap = priced_extra(1.0, 10.0, 10, 10, 100.0, 1.0);
        let dear = priced_extra(1.0, 10.0, 10, 10, 100.0, 200.0);
        let none = priced_extra(1.0, 10.0, 10, 10, 100.0, 1e6);
        assert!(
            cheap > dear && dear > 0 && none == 0,
            "{cheap} {dear} {none}"
        );
        assert!(cheap <= 10);
        // Nothing arrives: nothing is worth holding.
        assert_eq!(priced_extra(0.0, 10.0, 0, 5, 100.0, 1.0), 0);
    }

    #[test]
    fn hot_target_is_littles_law_with_buffer_and_clamps() {
        // 10/s × 0.5 s = 5 busy; × 1.2 = 6.
        assert_eq!(hot_target(10.0, 0.5, 1.2, 0, 100), 6);
        // Any positive demand needs an instance.
        assert_eq!(hot_target(0.001, 0.1, 1.0, 0, 100), 1);
        assert_eq!(hot_target(0.0, 1.0, 1.5, 0, 100), 0);
        assert_eq!(hot_target(0.0, 1.0, 1.5, 2, 100), 2);
        assert_eq!(hot_target(1e6, 10.0, 2.0, 0, 50), 50);
        assert_eq!(hot_target(f64::INFINITY, 1.0, 1.0, 0, 7), 7);
    }

    #[test]
    fn warm_target_covers_the_upper_quantile_beyond_hot() {
        assert_eq!(warm_target(20.0, 0.5, 1.0, 6, 100), 4);
        assert_eq!(warm_target(5.0, 0.5, 1.0, 6, 100), 0);
        assert_eq!(warm_target(100.0, 1.0, 1.0, 6, 10), 4);
    }

    #[test]
    fn keep_alive_from_gaps_takes_a_quantile_with_margin() {
        let gaps: Vec<f64> = (1..=100).map(|x| x as f64).collect();
        let ka = keep_alive_from_gaps(&gaps, 0.99, 0.1, 60.0, 3600.0, 600.0);
        assert!((ka - 99.01 * 1.1).abs() < 1e-9, "{ka}");
        assert_eq!(
            keep_alive_from_gaps(&[], 0.99, 0.1, 60.0, 3600.0, 600.0),
            600.0
        );
        assert_eq!(
            keep_alive_from_gaps(&[1.0, 2.0], 0.99, 0.1, 60.0, 3600.0, 0.0),
            60.0
        );
        assert_eq!(
            keep_alive_from_gaps(&[1e6], 0.5, 0.0, 60.0, 3600.0, 0.0),
            3600.0
        );
    }

    #[test]
    fn poisson_tail_and_usage_probabilities() {
        assert_eq!(poisson_tail(1.0, 0), 1.0);
        assert!((poisson_tail(1.0, 1) - (1.0 - (-1.0f64).exp())).abs() < 1e-12);
        assert!(poisson_tail(0.1, 3) < 0.001);
        let p1 = p_instance_used(1.0 / 60.0, 1.0, 60.0, 1);
        assert!((p1 - (1.0 - (-1.0f64).exp())).abs() < 1e-12);
        assert!(p_instance_used(1.0 / 60.0, 1.0, 60.0, 2) < 0.001);
    }

    fn item(mem: f64, rate: f64, hot: u32, warm: u32, staged: bool) -> BudgetItem {
        BudgetItem {
            memory_mb: mem,
            rate,
            exec: 1.0,
            image_on_disk: true,
            targets: TierTargets { hot, warm, staged },
        }
    }

    #[test]
    fn budget_is_never_exceeded_and_busy_floors_stay() {
        let c = costs();
        let mut items = vec![
            item(100.0, 1.0, 3, 1, true),
            item(200.0, 0.001, 1, 0, true),
            item(50.0, 0.1, 2, 2, false),
        ];
        let budget = 300.0;
        let fit = fit_budget(&mut items, &[1, 0, 0], budget, &c, 60.0);
        assert!(fit.before_mb > budget);
        assert!(fit.after_mb <= budget + 1e-9, "{fit:?}");
        assert!(items[0].targets.hot >= 1);
        assert!(fit.demotions > 0);
        let total: f64 = items.iter().map(|i| i.memory(&c)).sum();
        assert!((total - fit.after_mb).abs() < 1e-9);
    }

    #[test]
    fn budget_demotes_the_cheapest_miss_first() {
        let c = costs();
        // Same memory; the rarely used function loses its instance first.
        let mut items = vec![
            item(100.0, 1.0, 1, 0, false),
            item(100.0, 0.0001, 1, 0, false),
        ];
        fit_budget(&mut items, &[], 100.0, &c, 60.0);
        assert_eq!(items[0].targets.hot, 1);
        assert_eq!(items[1].targets.hot, 0);
    }

    #[test]
    fn staged_image_is_kept_longer_than_an_instance_when_it_is_cheaper_per_mb() {
        let c = costs();
        // One hot instance (100 MB) and a staged image (60 MB) of the same function; a
        // budget of 60 MB keeps the image: losing the instance costs a staged restore
        // (37 ms), losing the image costs a disk restore.
        let mut items = vec![item(100.0, 0.01, 1, 0, true)];
        let fit = fit_budget(&mut items, &[], 60.0, &c, 60.0);
        assert_eq!(items[0].targets.hot, 0);
        assert!(items[0].targets.staged);
        assert!((fit.after_mb - 60.0).abs() < 1e-9);
    }

    #[test]
    fn floors_alone_over_budget_stop_the_fitter() {
        let c = costs();
        let mut items = vec![item(100.0, 1.0, 2, 0, false)];
        let fit = fit_budget(&mut items, &[2], 50.0, &c, 60.0);
        assert_eq!(items[0].targets.hot, 2);
        assert_eq!(fit.demotions, 0);
        assert!(fit.after_mb > 50.0);
    }

    #[test]
    fn base_latency_prefers_the_faster_of_restore_and_cold() {
        let mut c = costs();
        assert_eq!(c.base_latency(true), 200.0);
        assert_eq!(c.base_latency(false), 1000.0);
        c.latency_ms[Tier::Cold.index()] = 150.0;
        assert_eq!(c.base_latency(true), 150.0);
    }
}
