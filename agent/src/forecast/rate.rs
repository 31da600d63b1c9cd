//! Per-function arrival-rate forecaster: invocations in the next minute, from a blend of
//! a statistical model (ETS, fitted by `augurs-ets`) and a small learned model (an MLP
//! shared by all functions of the node, trained online), weighted by each model's recent
//! error.
//!
//! - ETS: `augurs-ets` `AutoETS` over additive-error non-seasonal models (ANN, AAN,
//!   damped AAN; augurs has no seasonal ETS), refitted every `refit_every` minutes on the
//!   last `window` minutes, forecasting up to the next refit.
//! - MLP: input = the last 8 minutes, yesterday's value for the minute being predicted,
//!   the time of day (sin/cos) and the ETS forecast, each scaled by the function's recent
//!   level, so that one model serves functions of any rate; output = the next minute.
//! - Blend: weights ∝ 1 / (recent MAE)², recent MAE an exponentially weighted average.
//!
//! Every forecast is scored when its minute has passed, so the forecaster reports its own
//! MAPE and MASE (see [`Accuracy`]).

use std::collections::VecDeque;

use augurs_ets::AutoETS;

use super::mlp::Mlp;

/// Features of the learned model.
pub const FEATURES: usize = 12;
const LAGS: usize = 8;
const DAY_MIN: usize = 1440;

/// Settings of the rate forecaster.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateConfig {
    /// Minutes of history the ETS fit sees.
    pub window: usize,
    /// Minutes between ETS refits.
    pub refit_every: usize,
    /// Minutes of history kept (for the learned model's "yesterday" input).
    pub history: usize,
    /// Minutes before forecasts are scored (start-up).
    pub warmup: usize,
    /// Smoothing of the recent-error averages used by the blend.
    pub error_alpha: f64,
}

impl Default for RateConfig {
    fn default() -> Self {
        RateConfig {
            window: 240,
            refit_every: 15,
            history: DAY_MIN + LAGS + 2,
            warmup: 60,
            error_alpha: 0.05,
        }
    }
}

/// The models a forecast is scored for.
pub const MODELS: [&str; 5] = ["ets", "mlp", "blend", "naive", "seasonal-naive"];

/// Running error sums for one function.
#[derive(Debug, Clone, Default)]
pub struct Accuracy {
    pub n: u64,
    pub abs_err: [f64; 5],
    /// Absolute percentage errors, summed over minutes whose actual was positive.
    pub ape: [f64; 5],
    pub n_ape: u64,
    /// Σ |y_t − y_{t−1}| over the scored minutes: the in-sample naive MAE that scales MASE.
    pub naive_scale: f64,
    /// Minutes for which a seasonal-naive forecast existed (needs a day of history).
    pub n_seasonal: u64,
}

/// A forecast for the coming minute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateForecast {
    /// Expected invocations in the next minute.
    pub mean: f64,
    /// An upper quantile (≈ 90 %) of the invocations in the next minute.
    pub upper: f64,
}

#[derive(Debug, Clone)]
struct Pending {
    preds: [f64; 5],
    has_seasonal: bool,
    x: [f64; FEATURES],
    scale: f64,
}

/// Per-function state of the rate forecaster.
#[derive(Debug, Clone)]
pub struct RateModel {
    cfg: RateConfig,
    history: VecDeque<f64>,
    minutes: usize,
    ets_path: Vec<f64>,
    ets_fitted_at: usize,
    ets_fits: u64,
    level: f64,
    mae_ets: f64,
    mae_mlp: f64,
    mse_blend: f64,
    pending: Option<Pending>,
    acc: Accuracy,
    last: Option<RateForecast>,
}

impl RateModel {
    pub fn new(cfg: RateConfig) -> Self {
        RateModel {
            cfg,
            history: VecDeque::with_capacity(cfg.history),
            minutes: 0,
            ets_path: Vec::new(),
            ets_fitted_at: 0,
            ets_fits: 0,
            level: 0.0,
            mae_ets: 1.0,
            mae_mlp: 1.0,
            mse_blend: 1.0,
            pending: None,
            acc: Accuracy::default(),
            last: None,
        }
    }

    pub fn accuracy(&self) -> &Accuracy {
        &self.acc
    }

    pub fn ets_fits(&self) -> u64 {
        self.ets_fits
    }

    /// The latest forecast for the coming minute.
    pub fn forecast(&self) -> Option<RateForecast> {
        self.last
    }

    /// Blend weight of ETS (the learned model gets the rest).
    pub fn ets_weight(&self) -> f64 {
        let we = 1.0 / (self.mae_ets * self.mae_ets + 1e-9);
        let wm = 1.0 / (self.mae_mlp * self.mae_mlp + 1e-9);
        we / (we + wm)
    }

    /// The minute that just ended had `count` invocations; `minute_of_day` is the
    /// minute (0..1440) of the day of the minute that comes next. Scores and learns from
    /// the forecast made for the ended minute, then forecasts the next one.
    pub fn observe(&mut self, count: f64, minute_of_day: usize, mlp: &mut Mlp) -> RateForecast {
        let prev = self.history.back().copied();
        // Score and learn.
        if let Some(p) = self.pending.take() {
            let y = count;
            if self.minutes >= self.cfg.warmup {
                self.acc.n += 1;
                for (k, pred) in p.preds.iter().enumerate() {
                    if k == 4 && !p.has_seasonal {
                        continue;
                    }
                    self.acc.abs_err[k] += (pred - y).abs();
                    if y > 0.0 {
                        self.acc.ape[k] += (pred - y).abs() / y;
                    }
                }
                if y > 0.0 {
                    self.acc.n_ape += 1;
                }
                if p.has_seasonal {
                    self.acc.n_seasonal += 1;
                }
                if let Some(prev) = prev {
                    self.acc.naive_scale += (y - prev).abs();
                }
            }
            let a = self.cfg.error_alpha;
            self.mae_ets = (1.0 - a) * self.mae_ets + a * (p.preds[0] - y).abs();
            self.mae_mlp = (1.0 - a) * self.mae_mlp + a * (p.preds[1] - y).abs();
            self.mse_blend = (1.0 - a) * self.mse_blend + a * (p.preds[2] - y).powi(2);
            mlp.train(&p.x, (1.0 + y / p.scale).ln());
        }

        // Remember.
        if self.history.len() == self.cfg.history {
            self.history.pop_front();
        }
        self.history.push_back(count);
        self.minutes += 1;
        self.level = if self.minutes == 1 {
            count
        } else {
            0.97 * self.level + 0.03 * count
        };

        // Refit ETS when due.
        let since = self.minutes - self.ets_fitted_at;
        if self.ets_path.is_empty() || since >= self.cfg.refit_every {
            self.refit_ets();
        }
        let h = self.minutes - self.ets_fitted_at; // 0-based step into the path
        let ets = self
            .ets_path
            .get(h)
            .or(self.ets_path.last())
            .copied()
            .unwrap_or(count)
            .max(0.0);

        // The learned model.
        let scale = self.level.max(0.1);
        let n = self.history.len();
        let mut x = [0.0; FEATURES];
        for (k, xk) in x.iter_mut().take(LAGS).enumerate() {
            let v = if k < n { self.history[n - 1 - k] } else { 0.0 };
            *xk = (1.0 + v / scale).ln();
        }
        let seasonal = (n >= DAY_MIN).then(|| self.history[n - DAY_MIN]);
        x[LAGS] = (1.0 + seasonal.unwrap_or(count) / scale).ln();
        let tod = 2.0 * std::f64::consts::PI * (minute_of_day % DAY_MIN) as f64 / DAY_MIN as f64;
        x[LAGS + 1] = tod.sin();
        x[LAGS + 2] = tod.cos();
        x[LAGS + 3] = (1.0 + ets / scale).ln();
        let mlp_pred = (scale * (mlp.predict(&x).clamp(-10.0, 10.0).exp() - 1.0)).max(0.0);

        let w = self.ets_weight();
        let blend = w * ets + (1.0 - w) * mlp_pred;
        self.pending = Some(Pending {
            preds: [ets, mlp_pred, blend, count, seasonal.unwrap_or(0.0)],
            has_seasonal: seasonal.is_some(),
            x,
            scale,
        });
        let upper = poisson_quantile(blend, 0.9).max(blend + 1.28 * self.mse_blend.sqrt());
        let f = RateForecast { mean: blend, upper };
        self.last = Some(f);
        f
    }

    fn refit_ets(&mut self) {
        let n = self.history.len();
        let start = n.saturating_sub(self.cfg.window);
        let y: Vec<f64> = self.history.range(start..).copied().collect();
        let horizon = self.cfg.refit_every + 1;
        self.ets_fitted_at = self.minutes;
        self.ets_fits += 1;
        self.ets_path = fit_ets(&y, horizon).unwrap_or_else(|| {
            let mean = if y.is_empty() {
                0.0
            } else {
                y.iter().sum::<f64>() / y.len() as f64
            };
            vec![mean; horizon]
        });
    }
}

/// Fit `AutoETS` (additive error, non-seasonal) and forecast `horizon` steps; `None` when
/// the data are too short or flat for a fit.
pub fn fit_ets(y: &[f64], horizon: usize) -> Option<Vec<f64>> {
    use augurs_core::{Fit as _, Predict as _};
    if y.len() < 12 {
        return None;
    }
    let first = y[0];
    if y.iter().all(|&v| v == first) {
        return Some(vec![first; horizon]);
    }
    let search = AutoETS::new(1, "AZN").ok()?;
    let fitted = search.fit(y).ok()?;
    let f = fitted.predict(horizon, None).ok()?;
    if f.point.iter().all(|v| v.is_finite()) {
        Some(f.point)
    } else {
        None
    }
}

/// Smallest k with P(Poisson(mean) ≤ k) ≥ q (normal approximation above mean 50).
pub fn poisson_quantile(mean: f64, q: f64) -> f64 {
    if mean <= 0.0 {
        return 0.0;
    }
    if mean > 50.0 {
        let z = inverse_normal(q);
        return (mean + z * mean.sqrt()).ceil();
    }
    let mut p = (-mean).exp();
    let mut cdf = p;
    let mut k = 0u32;
    while cdf < q && k < 1000 {
        k += 1;
        p *= mean / k as f64;
        cdf += p;
    }
    k as f64
}

/// Inverse of the standard normal CDF (Acklam's rational approximation; good to ~1e-9).
pub fn inverse_normal(p: f64) -> f64 {
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let pl = 0.02425;
    if p < pl {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - pl {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -inverse_normal(1.0 - p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn ets_follows_a_level_shift() {
        let mut y = vec![5.0; 60];
        y.extend(vec![20.0; 60]);
        let f = fit_ets(&y, 3).unwrap();
        assert!(f.iter().all(|&v| (v - 20.0).abs() < 2.0), "{f:?}");
        assert_eq!(fit_ets(&[1.0; 5], 2), None);
        assert_eq!(fit_ets(&[3.0; 30], 2), Some(vec![3.0, 3.0]));
    }

    #[test]
    fn poisson_and_normal_quantiles() {
        assert_eq!(poisson_quantile(0.0, 0.9), 0.0);
        // P(Poisson(1) ≤ 2) = 0.920
        assert_eq!(poisson_quantile(1.0, 0.9), 2.0);
        assert!((inverse_normal(0.975) - 1.959_964).abs() < 1e-5);
        assert!((poisson_quantile(100.0, 0.9) - 113.0).abs() <= 1.0);
    }

    #[test]
    fn forecasts_a_noisy_diurnal_rate_better_than_naive() {
        let mut mlp = Mlp::new(FEATURES, 16, 3e-3, 11);
        let mut m = RateModel::new(RateConfig::default());
        let mut rng = Rng::new(5);
        for t in 0..(3 * DAY_MIN) {
            let tod = (t % DAY_MIN) as f64 / DAY_MIN as f64;
            let rate = 20.0 * (1.0 + 0.8 * (2.0 * std::f64::consts::PI * tod).sin());
            // Poisson-ish noise from a normal approximation.
            let y = (rate + rate.sqrt() * rng.normal()).round().max(0.0);
            m.observe(y, (t + 1) % DAY_MIN, &mut mlp);
        }
        let a = m.accuracy();
        assert!(a.n > 3000);
        let mae = |k: usize| a.abs_err[k] / a.n as f64;
        // The blend beats the naive forecast on noisy data (naive carries all the noise).
        assert!(mae(2) < 0.85 * mae(3), "blend {} naive {}", mae(2), mae(3));
        assert!(m.forecast().unwrap().upper >= m.forecast().unwrap().mean);
        assert!(m.ets_fits() > 100);
        let w = m.ets_weight();
        assert!((0.0..=1.0).contains(&w));
    }
}
