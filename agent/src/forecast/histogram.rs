//! Idle-time histograms: how long a function stays without invocations between the end of
//! one invocation and the arrival of the next (Shahrad et al. call this the *idle time*,
//! IT, §4.2).

use std::collections::VecDeque;

/// Shahrad et al.'s range-limited histogram (§4.2): one-minute bins over a range (4 hours
/// in the paper), plus a count of out-of-bound idle times, plus the last few raw idle
/// times (for the time-series forecast of out-of-bound ones).
#[derive(Debug, Clone)]
pub struct IdleHistogram {
    bin_secs: f64,
    bins: Vec<u32>,
    in_range: u64,
    out_of_bounds: u64,
    recent: VecDeque<f64>,
    recent_cap: usize,
}

impl IdleHistogram {
    /// `range_secs / bin_secs` bins; keeps the last `recent_cap` idle times.
    pub fn new(range_secs: f64, bin_secs: f64, recent_cap: usize) -> Self {
        let n = (range_secs / bin_secs).round().max(1.0) as usize;
        IdleHistogram {
            bin_secs,
            bins: vec![0; n],
            in_range: 0,
            out_of_bounds: 0,
            recent: VecDeque::with_capacity(recent_cap),
            recent_cap,
        }
    }

    /// The paper's: 4 hours of 1-minute bins.
    pub fn paper() -> Self {
        Self::new(4.0 * 3600.0, 60.0, 64)
    }

    pub fn range_secs(&self) -> f64 {
        self.bins.len() as f64 * self.bin_secs
    }

    pub fn bin_secs(&self) -> f64 {
        self.bin_secs
    }

    pub fn bins(&self) -> &[u32] {
        &self.bins
    }

    /// Record one idle time (seconds; negative values count as zero).
    pub fn record(&mut self, idle_secs: f64) {
        let it = idle_secs.max(0.0);
        let b = (it / self.bin_secs).floor();
        if b < self.bins.len() as f64 {
            self.bins[b as usize] += 1;
            self.in_range += 1;
        } else {
            self.out_of_bounds += 1;
        }
        if self.recent.len() == self.recent_cap {
            self.recent.pop_front();
        }
        self.recent.push_back(it);
    }

    /// Idle times seen, in range and out of it.
    pub fn count(&self) -> u64 {
        self.in_range + self.out_of_bounds
    }

    pub fn in_range(&self) -> u64 {
        self.in_range
    }

    /// Fraction of idle times beyond the range (0 when none was seen).
    pub fn oob_fraction(&self) -> f64 {
        let n = self.count();
        if n == 0 {
            0.0
        } else {
            self.out_of_bounds as f64 / n as f64
        }
    }

    /// The last idle times, oldest first.
    pub fn recent(&self) -> impl Iterator<Item = f64> + '_ {
        self.recent.iter().copied()
    }

    /// Coefficient of variation of the bin counts (population standard deviation over
    /// the mean). A histogram whose mass sits in few bins has a high CV; a flat one, a low
    /// CV. `None` when the histogram is empty.
    pub fn bin_count_cv(&self) -> Option<f64> {
        if self.in_range == 0 {
            return None;
        }
        let n = self.bins.len() as f64;
        let mean = self.in_range as f64 / n;
        let var = self
            .bins
            .iter()
            .map(|&c| (c as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        Some(var.sqrt() / mean)
    }

    /// The bin index holding the `q` quantile of the in-range idle times.
    pub fn quantile_bin(&self, q: f64) -> Option<usize> {
        if self.in_range == 0 {
            return None;
        }
        let target = q * self.in_range as f64;
        let mut acc = 0u64;
        for (i, &c) in self.bins.iter().enumerate() {
            acc += c as u64;
            if acc as f64 >= target && acc > 0 {
                return Some(i);
            }
        }
        Some(self.bins.len() - 1)
    }
}

/// Rekindle's idle-time distribution: one-minute bins over the first hours (where
/// pre-warming at minute precision matters), then log-spaced bins out to days (where the
/// paper needs a separate time-series model), with exponential forgetting so that a
/// function whose pattern changes is followed.
#[derive(Debug, Clone)]
pub struct IdleDistribution {
    /// Upper edges of the bins, seconds.
    edges: Vec<f64>,
    weights: Vec<f64>,
    /// Per bin, the weighted sum of how far into the bin (fraction of its width) each
    /// idle time ended: where in a bin the request comes, for the cost of holding.
    offsets: Vec<f64>,
    beyond: f64,
    total: f64,
    decay: f64,
    observations: u64,
}

impl IdleDistribution {
    /// `linear_bins` one-minute bins, then `log_bins` bins growing geometrically up to
    /// `max_secs`; each observation multiplies the old weights by `decay` (1 = no
    /// forgetting).
    pub fn new(linear_bins: usize, log_bins: usize, max_secs: f64, decay: f64) -> Self {
        Self::with_edges(Self::edges(linear_bins, log_bins, max_secs), decay)
    }

    /// The bin edges of [`IdleDistribution::new`].
    pub fn edges(linear_bins: usize, log_bins: usize, max_secs: f64) -> Vec<f64> {
        let mut edges: Vec<f64> = (1..=linear_bins).map(|i| i as f64 * 60.0).collect();
        let start = linear_bins as f64 * 60.0;
        if log_bins > 0 && max_secs > start {
            let ratio = (max_secs / start).powf(1.0 / log_bins as f64);
            let mut e = start;
            for _ in 0..log_bins {
                e *= ratio;
                edges.push(e);
            }
        }
        edges
    }

    pub fn with_edges(edges: Vec<f64>, decay: f64) -> Self {
        let n = edges.len();
        IdleDistribution {
            edges,
            weights: vec![0.0; n],
            offsets: vec![0.0; n],
            beyond: 0.0,
            total: 0.0,
            decay,
            observations: 0,
        }
    }

    /// Rekindle's default: 4 h of minutes, then 24 log bins out to 8 days; forgets with a
    /// half-life of about 70 idle times.
    pub fn standard() -> Self {
        Self::new(240, 24, 8.0 * 86400.0, 0.99)
    }

    pub fn edges_secs(&self) -> &[f64] {
        &self.edges
    }

    /// Idle times recorded (without forgetting).
    pub fn observations(&self) -> u64 {
        self.observations
    }

    pub fn bin_of(&self, secs: f64) -> Option<usize> {
        let i = self.edges.partition_point(|&e| e <= secs);
        (i < self.edges.len()).then_some(i)
    }

    pub fn record(&mut self, idle_secs: f64) {
        let it = idle_secs.max(0.0);
        if self.decay < 1.0 {
            for w in self.weights.iter_mut().chain(&mut self.offsets) {
                *w *= self.decay;
            }
            self.beyond *= self.decay;
            self.total *= self.decay;
        }
        match self.bin_of(it) {
            Some(i) => {
                let lo = if i == 0 { 0.0 } else { self.edges[i - 1] };
                self.weights[i] += 1.0;
                self.offsets[i] += ((it - lo) / (self.edges[i] - lo)).clamp(0.0, 1.0);
            }
            None => self.beyond += 1.0,
        }
        self.total += 1.0;
        self.observations += 1;
    }

    /// Probability of each bin, and of "beyond the last edge", as a vector one longer
    /// than the bins. `None` when empty.
    pub fn probabilities(&self) -> Option<Vec<f64>> {
        if self.total <= 0.0 {
            return None;
        }
        let mut p: Vec<f64> = self.weights.iter().map(|w| w / self.total).collect();
        p.push(self.beyond / self.total);
        Some(p)
    }

    /// Per bin, the mean fraction of its width elapsed when an idle time that ended in it
    /// ended (0.5 for a bin without any): a function whose requests come seconds apart has
    /// ~0.03 in the first one-minute bin, where a midpoint would say 0.5.
    pub fn within(&self) -> Vec<f64> {
        self.weights
            .iter()
            .zip(&self.offsets)
            .map(|(&w, &o)| {
                if w > 1e-12 {
                    (o / w).clamp(0.0, 1.0)
                } else {
                    0.5
                }
            })
            .collect()
    }

    /// Mean idle time, seconds, taking bin midpoints (beyond the last edge: the edge).
    pub fn mean_secs(&self) -> Option<f64> {
        let p = self.probabilities()?;
        let mut lo = 0.0;
        let mut m = 0.0;
        for (i, &e) in self.edges.iter().enumerate() {
            m += p[i] * (lo + e) / 2.0;
            lo = e;
        }
        m += p[self.edges.len()] * lo;
        Some(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_cv_and_out_of_bounds() {
        let mut h = IdleHistogram::paper();
        assert_eq!(h.bin_count_cv(), None);
        for _ in 0..10 {
            h.record(6.5 * 60.0);
        }
        assert_eq!(h.quantile_bin(0.05), Some(6));
        assert_eq!(h.quantile_bin(0.99), Some(6));
        // All mass in one of 240 bins: CV = sqrt(239).
        assert!((h.bin_count_cv().unwrap() - 239f64.sqrt()).abs() < 1e-9);
        h.record(5.0 * 3600.0);
        assert_eq!(h.count(), 11);
        assert!((h.oob_fraction() - 1.0 / 11.0).abs() < 1e-12);
        // A flat histogram has CV 0.
        let mut flat = IdleHistogram::new(600.0, 60.0, 4);
        for i in 0..10 {
            flat.record(i as f64 * 60.0 + 1.0);
        }
        assert!(flat.bin_count_cv().unwrap() < 1e-12);
        assert_eq!(flat.recent().count(), 4);
    }

    #[test]
    fn distribution_bins_are_linear_then_logarithmic() {
        let d = IdleDistribution::standard();
        let e = d.edges_secs();
        assert_eq!(e.len(), 264);
        assert_eq!(e[0], 60.0);
        assert_eq!(e[239], 4.0 * 3600.0);
        assert!((e[263] - 8.0 * 86400.0).abs() < 1e-6);
        assert!(e.windows(2).all(|w| w[1] > w[0]));
        assert_eq!(d.bin_of(59.0), Some(0));
        assert_eq!(d.bin_of(60.0), Some(1));
        assert_eq!(d.bin_of(1e9), None);
    }

    #[test]
    fn within_says_where_in_a_bin_idle_times_end() {
        let mut d = IdleDistribution::new(4, 0, 240.0, 1.0);
        for _ in 0..10 {
            d.record(3.0);
        }
        d.record(150.0);
        let w = d.within();
        assert!((w[0] - 0.05).abs() < 1e-9, "{w:?}");
        assert!((w[2] - 0.5).abs() < 1e-9, "{w:?}");
        // No idle time in the bin: its midpoint.
        assert_eq!(w[1], 0.5);
    }

    #[test]
    fn distribution_forgets_old_patterns() {
        let mut d = IdleDistribution::new(10, 0, 0.0, 0.9);
        for _ in 0..50 {
            d.record(30.0);
        }
        for _ in 0..50 {
            d.record(330.0);
        }
        let p = d.probabilities().unwrap();
        assert!(p[5] > 0.99, "recent pattern dominates: {p:?}");
        assert_eq!(d.observations(), 100);
        let mean = d.mean_secs().unwrap();
        assert!((mean - 330.0).abs() < 5.0, "{mean}");
    }
}
