//! The hybrid histogram policy of Shahrad et al., "Serverless in the Wild: Characterizing
//! and Optimizing the Serverless Workload at a Large Cloud Provider", USENIX ATC 2020,
//! §4.2 (the baseline of the issue).
//!
//! What the paper specifies, and where this implementation follows it:
//! - Per application, a *range-limited histogram* of idle times (IT: from the end of an
//!   invocation to the next arrival), 1-minute bins over a 4-hour range; ITs beyond the
//!   range are counted as out of bounds (OOB).
//! - Pre-warming window = the histogram *head* (5th percentile), keep-alive window = the
//!   *tail* (99th percentile), each with a 10 % margin: the head is lowered by 10 %, the
//!   tail raised by 10 %. The keep-alive window runs from the pre-warm load (the paper
//!   loads the application at `pre-warm` after an execution ends and keeps it until the
//!   tail), so here `keep_alive = 1.1·tail − 0.9·head`. With a zero pre-warming window the
//!   instance simply stays loaded after the execution.
//! - When the histogram is *not representative* — the paper tests the coefficient of
//!   variation (CV) of the bin counts: few, concentrated bins give a high CV — the policy
//!   falls back to a standard keep-alive: no pre-warming, and a keep-alive of the
//!   histogram's range (4 h). The CV threshold is 2, as in the public re-implementations
//!   of the policy we checked (dslab-faas, OpenDC, an OpenWhisk port). An empty
//!   histogram (a new function) is not representative either.
//! - When too many ITs are out of bounds (here: at least half, as in those
//!   re-implementations), the paper forecasts the next IT with a time-series model (ARIMA)
//!   and sets pre-warm = forecast − 15 %, keep-alive = 2 × 15 % of the forecast. augurs has
//!   no ARIMA, so this uses `augurs-ets`' AutoETS on the recent ITs (the mean of the recent
//!   ITs when there are too few for a fit) — the same role, a different model.
//!
//! The paper's unit is the application (all functions of an Azure app load together);
//! Rekindle's instances are per function, so the histogram here is per function.

use std::collections::HashMap;

use super::{FunctionId, FunctionInfo, Plan, Policy, Secs};
use crate::forecast::rate::fit_ets;
use crate::forecast::IdleHistogram;

/// Parameters of the hybrid histogram policy; [`HybridConfig::paper`] holds the paper's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HybridConfig {
    pub range_secs: Secs,
    pub bin_secs: Secs,
    pub head: f64,
    pub tail: f64,
    pub margin: f64,
    pub cv_threshold: f64,
    pub oob_threshold: f64,
    pub forecast_margin: f64,
}

impl HybridConfig {
    pub fn paper() -> Self {
        HybridConfig {
            range_secs: 4.0 * 3600.0,
            bin_secs: 60.0,
            head: 0.05,
            tail: 0.99,
            margin: 0.10,
            cv_threshold: 2.0,
            oob_threshold: 0.5,
            forecast_margin: 0.15,
        }
    }
}

/// Which branch of the policy produced a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Branch {
    /// Histogram not representative (or empty): standard keep-alive.
    Fallback,
    /// Windows from the histogram's head and tail.
    Histogram,
    /// Too many out-of-bound idle times: windows from a time-series forecast.
    Forecast,
}

#[derive(Debug, Clone)]
struct FnState {
    hist: IdleHistogram,
    last_end: Option<Secs>,
    plan: Plan,
    branch: Branch,
    dirty: bool,
}

#[derive(Debug, Clone)]
pub struct HybridHistogram {
    cfg: HybridConfig,
    fns: HashMap<FunctionId, FnState>,
}

impl HybridHistogram {
    pub fn new(cfg: HybridConfig) -> Self {
        HybridHistogram {
            cfg,
            fns: HashMap::new(),
        }
    }

    pub fn paper() -> Self {
        Self::new(HybridConfig::paper())
    }

    /// The branch behind the last plan of `f`.
    pub fn branch(&mut self, f: FunctionId) -> Branch {
        self.refresh(f);
        self.fns.get(&f).map_or(Branch::Fallback, |s| s.branch)
    }

    fn state(&mut self, f: FunctionId) -> &mut FnState {
        let cfg = self.cfg;
        self.fns.entry(f).or_insert_with(|| FnState {
            hist: IdleHistogram::new(cfg.range_secs, cfg.bin_secs, 64),
            last_end: None,
            plan: Plan::windows(0.0, cfg.range_secs),
            branch: Branch::Fallback,
            dirty: false,
        })
    }

    fn refresh(&mut self, f: FunctionId) {
        let cfg = self.cfg;
        let s = self.state(f);
        if !s.dirty {
            return;
        }
        s.dirty = false;
        let (branch, plan) = compute(&cfg, &s.hist);
        s.branch = branch;
        s.plan = plan;
    }
}

fn compute(cfg: &HybridConfig, h: &IdleHistogram) -> (Branch, Plan) {
    let fallback = (Branch::Fallback, Plan::windows(0.0, cfg.range_secs));
    if h.count() == 0 {
        return fallback;
    }
    if h.oob_fraction() >= cfg.oob_threshold {
        let its: Vec<f64> = h.recent().collect();
        let predicted = fit_ets(&its, 1)
            .and_then(|f| f.first().copied())
            .filter(|v| v.is_finite() && *v > 0.0)
            .unwrap_or_else(|| its.iter().sum::<f64>() / its.len() as f64);
        let m = cfg.forecast_margin;
        return (
            Branch::Forecast,
            Plan::windows(predicted * (1.0 - m), predicted * 2.0 * m),
        );
    }
    match h.bin_count_cv() {
        Some(cv) if cv >= cfg.cv_threshold => {
            let head_bin = h.quantile_bin(cfg.head).unwrap_or(0);
            let tail_bin = h.quantile_bin(cfg.tail).unwrap_or(0);
            // The head is the start of its bin, the tail the end of its bin.
            let head = head_bin as f64 * cfg.bin_secs;
            let tail = (tail_bin + 1) as f64 * cfg.bin_secs;
            let pre_warm = head * (1.0 - cfg.margin);
            let keep_alive = tail * (1.0 + cfg.margin) - pre_warm;
            (Branch::Histogram, Plan::windows(pre_warm, keep_alive))
        }
        _ => fallback,
    }
}

impl Policy for HybridHistogram {
    fn name(&self) -> String {
        "hybrid-histogram".into()
    }

    fn describe(&self) -> String {
        let c = &self.cfg;
        format!(
            "Shahrad et al. ATC'20: range {:.0} h, {:.0} s bins, head p{:.0}/tail p{:.0} \
             with {:.0}% margins, CV threshold {}, OOB threshold {}, time-series \
             (AutoETS) margin {:.0}%",
            c.range_secs / 3600.0,
            c.bin_secs,
            c.head * 100.0,
            c.tail * 100.0,
            c.margin * 100.0,
            c.cv_threshold,
            c.oob_threshold,
            c.forecast_margin * 100.0
        )
    }

    fn register(&mut self, f: FunctionId, _info: &FunctionInfo) {
        self.state(f);
    }

    fn on_arrival(&mut self, f: FunctionId, at: Secs) {
        let s = self.state(f);
        if let Some(end) = s.last_end {
            s.hist.record(at - end);
            s.dirty = true;
        }
    }

    fn on_end(&mut self, f: FunctionId, at: Secs, _exec: Secs) {
        let s = self.state(f);
        s.last_end = Some(s.last_end.map_or(at, |e| e.max(at)));
    }

    fn plan(&mut self, f: FunctionId, _now: Secs) -> Plan {
        self.refresh(f);
        self.fns[&f].plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> FunctionInfo {
        FunctionInfo {
            app: 0,
            memory_mb: 128.0,
            trigger: None,
        }
    }

    /// Drive `p` with arrivals every `period` seconds, each running `exec` seconds.
    fn drive(p: &mut HybridHistogram, n: usize, period: f64, exec: f64) -> Plan {
        p.register(0, &info());
        let mut plan = p.plan(0, 0.0);
        for i in 0..n {
            let t = i as f64 * period;
            p.on_arrival(0, t);
            p.on_end(0, t + exec, exec);
            plan = p.plan(0, t + exec);
        }
        plan
    }

    #[test]
    fn no_history_falls_back_to_standard_keep_alive() {
        let mut p = HybridHistogram::paper();
        p.register(0, &info());
        let plan = p.plan(0, 0.0);
        assert_eq!(plan.pre_warm, 0.0);
        assert_eq!(plan.keep_alive.hot, 4.0 * 3600.0);
        assert_eq!(p.branch(0), Branch::Fallback);
    }

    #[test]
    fn periodic_every_seven_minutes_pre_warms_just_before_and_keeps_alive_briefly() {
        let mut p = HybridHistogram::paper();
        let plan = drive(&mut p, 20, 420.0, 2.0);
        assert_eq!(p.branch(0), Branch::Histogram);
        // IT = 418 s → bin 6: head 6 min, tail 7 min.
        assert!((plan.pre_warm - 0.9 * 360.0).abs() < 1e-9, "{plan:?}");
        let unload_at = plan.pre_warm + plan.keep_alive.hot;
        assert!((unload_at - 1.1 * 420.0).abs() < 1e-9);
        // Loaded before the next arrival (418 s after the end), unloaded soon after it.
        assert!(plan.pre_warm < 418.0 && unload_at > 418.0);
        assert!(plan.keep_alive.hot < 180.0);
    }

    #[test]
    fn spread_out_idle_times_are_not_representative() {
        let mut p = HybridHistogram::paper();
        p.register(0, &info());
        let mut t = 0.0;
        // Idle times spread evenly over 2 hours: a flat histogram, CV < 2.
        for i in 0..240 {
            p.on_arrival(0, t);
            p.on_end(0, t + 1.0, 1.0);
            t += 1.0 + (i % 120) as f64 * 60.0 + 30.0;
        }
        assert_eq!(p.branch(0), Branch::Fallback);
        assert_eq!(p.plan(0, t).keep_alive.hot, 4.0 * 3600.0);
    }

    #[test]
    fn mostly_out_of_bound_idle_times_use_the_forecast() {
        let mut p = HybridHistogram::paper();
        // Every 6 hours: all ITs out of the 4-hour range.
        let plan = drive(&mut p, 30, 6.0 * 3600.0, 1.0);
        assert_eq!(p.branch(0), Branch::Forecast);
        let it = 6.0 * 3600.0 - 1.0;
        assert!((plan.pre_warm - 0.85 * it).abs() < 0.02 * it, "{plan:?}");
        assert!((plan.keep_alive.hot - 0.3 * it).abs() < 0.02 * it);
    }
}
