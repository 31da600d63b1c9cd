//! Execution time per function, predicted from its recent durations with outliers removed
//! by Tukey's fences (values beyond 1.5 × IQR outside the quartiles).

use std::collections::VecDeque;

#[derive(Debug, Clone)]
pub struct ExecEstimator {
    recent: VecDeque<f64>,
    cap: usize,
    cached: Option<f64>,
}

impl Default for ExecEstimator {
    fn default() -> Self {
        Self::new(64)
    }
}

impl ExecEstimator {
    /// Keeps the last `cap` durations.
    pub fn new(cap: usize) -> Self {
        ExecEstimator {
            recent: VecDeque::with_capacity(cap),
            cap: cap.max(1),
            cached: None,
        }
    }

    pub fn record(&mut self, secs: f64) {
        if !secs.is_finite() || secs < 0.0 {
            return;
        }
        if self.recent.len() == self.cap {
            self.recent.pop_front();
        }
        self.recent.push_back(secs);
        self.cached = None;
    }

    pub fn len(&self) -> usize {
        self.recent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.recent.is_empty()
    }

    /// Mean of the recent durations inside the IQR fences; `None` without data.
    pub fn mean(&mut self) -> Option<f64> {
        if self.cached.is_none() {
            let v: Vec<f64> = self.recent.iter().copied().collect();
            self.cached = iqr_mean(&v);
        }
        self.cached
    }
}

/// Linear-interpolated quantile of sorted data.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    debug_assert!(!sorted.is_empty());
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    sorted[lo] * (1.0 - frac) + sorted[hi] * frac
}

/// The mean of `values` after dropping those outside [Q1 − 1.5·IQR, Q3 + 1.5·IQR].
pub fn iqr_mean(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut s = values.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let q1 = quantile_sorted(&s, 0.25);
    let q3 = quantile_sorted(&s, 0.75);
    let iqr = q3 - q1;
    let (lo, hi) = (q1 - 1.5 * iqr, q3 + 1.5 * iqr);
    let kept: Vec<f64> = s.into_iter().filter(|&x| x >= lo && x <= hi).collect();
    // The quartiles themselves are always inside the fences, so `kept` is never empty.
    Some(kept.iter().sum::<f64>() / kept.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outliers_are_removed() {
        let mut v = vec![1.0; 20];
        v.push(500.0);
        assert_eq!(iqr_mean(&v), Some(1.0));
        let plain: f64 = v.iter().sum::<f64>() / v.len() as f64;
        assert!(plain > 20.0);
    }

    #[test]
    fn spread_without_outliers_is_kept() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(iqr_mean(&v), Some(3.0));
        assert_eq!(iqr_mean(&[]), None);
    }

    #[test]
    fn estimator_uses_only_recent_durations() {
        let mut e = ExecEstimator::new(4);
        assert_eq!(e.mean(), None);
        for d in [10.0, 10.0, 10.0, 10.0, 2.0, 2.0, 2.0, 2.0] {
            e.record(d);
        }
        assert_eq!(e.len(), 4);
        assert_eq!(e.mean(), Some(2.0));
        e.record(f64::NAN);
        assert_eq!(e.mean(), Some(2.0));
    }
}
