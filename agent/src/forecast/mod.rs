//! Forecasting building blocks, all pure: idle-time histograms, the execution-time
//! estimator, the per-function arrival-rate forecaster (ETS + a small learned model,
//! blended by recent error), k-means for borrowing a forecast, and forecast-error
//! reporting (MAPE, MASE).

pub mod cluster;
pub mod exec;
pub mod histogram;
pub mod mlp;
pub mod rate;

use serde::Serialize;

pub use exec::ExecEstimator;
pub use histogram::{IdleDistribution, IdleHistogram};
pub use rate::{Accuracy, RateConfig, RateForecast, RateModel};

/// Forecast error of one model over many functions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelError {
    pub model: String,
    /// Mean absolute percentage error, pooled over all scored minutes with a positive
    /// actual count (MAPE is undefined at zero), in percent.
    pub mape_pct: f64,
    /// Mean absolute scaled error (Hyndman & Koehler 2006): the model's MAE over the
    /// naive one-step MAE of the same series, per function; mean and median over
    /// functions. The naive forecast scores 1 by construction.
    pub mase_mean: f64,
    pub mase_median: f64,
}

/// Forecast error of the rate forecaster over the functions it forecast.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccuracyReport {
    /// Functions scored (those dense enough to be forecast per minute).
    pub functions: usize,
    /// Minutes scored, summed over functions.
    pub minutes: u64,
    pub models: Vec<ModelError>,
}

impl AccuracyReport {
    /// Combine per-function accuracies; functions whose naive scale is zero (a constant
    /// series) are left out of MASE.
    pub fn from_functions<'a>(accs: impl IntoIterator<Item = &'a Accuracy>) -> Option<Self> {
        let accs: Vec<&Accuracy> = accs.into_iter().filter(|a| a.n > 0).collect();
        if accs.is_empty() {
            return None;
        }
        let mut models = Vec::new();
        for (k, name) in rate::MODELS.iter().enumerate() {
            let (ape, n_ape) = accs.iter().fold((0.0, 0u64), |(s, n), a| {
                if k == 4 {
                    (s, n) // seasonal naive: MAPE over its own minutes is below
                } else {
                    (s + a.ape[k], n + a.n_ape)
                }
            });
            let mut mases: Vec<f64> = accs
                .iter()
                .filter(|a| a.naive_scale > 0.0)
                .filter_map(|a| {
                    let scale = a.naive_scale / a.n as f64;
                    if k == 4 {
                        // Needs a day of history: score it only with an hour of such minutes.
                        (a.n_seasonal >= 60)
                            .then(|| (a.abs_err[4] / a.n_seasonal as f64) / scale.max(1e-12))
                    } else {
                        Some((a.abs_err[k] / a.n as f64) / scale)
                    }
                })
                .collect();
            if mases.is_empty() {
                continue;
            }
            mases.sort_by(|a, b| a.total_cmp(b));
            let mean = mases.iter().sum::<f64>() / mases.len() as f64;
            let median = exec::quantile_sorted(&mases, 0.5);
            let mape = if k == 4 || n_ape == 0 {
                f64::NAN
            } else {
                100.0 * ape / n_ape as f64
            };
            models.push(ModelError {
                model: name.to_string(),
                mape_pct: mape,
                mase_mean: mean,
                mase_median: median,
            });
        }
        Some(AccuracyReport {
            functions: accs.len(),
            minutes: accs.iter().map(|a| a.n).sum(),
            models,
        })
    }
}
