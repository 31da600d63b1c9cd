//! k-means (k-means++ seeding, Lloyd iterations) over per-function features, so that a
//! function with little history can borrow the idle-time distribution of functions that
//! look like it.
//!
//! Hand-written (≈ 80 lines) rather than `linfa-clustering`: the data are a few thousand
//! points of 3 dimensions, refitted once an hour, and linfa would bring ndarray and its
//! own `rand` into the build for that.

use crate::rng::Rng;

#[derive(Debug, Clone, PartialEq)]
pub struct KMeans {
    pub centroids: Vec<Vec<f64>>,
}

impl KMeans {
    /// Cluster `points` (all of the same dimension) into at most `k` clusters.
    pub fn fit(points: &[Vec<f64>], k: usize, iterations: usize, seed: u64) -> Option<KMeans> {
        if points.is_empty() || k == 0 {
            return None;
        }
        let k = k.min(points.len());
        let mut rng = Rng::new(seed);
        // k-means++: the first centroid uniformly, each next one with probability ∝ D².
        let mut centroids = vec![points[rng.below(points.len() as u64) as usize].clone()];
        while centroids.len() < k {
            let d2: Vec<f64> = points
                .iter()
                .map(|p| {
                    centroids
                        .iter()
                        .map(|c| dist2(p, c, None))
                        .fold(f64::INFINITY, f64::min)
                })
                .collect();
            if d2.iter().sum::<f64>() <= 0.0 {
                break; // fewer distinct points than k
            }
            centroids.push(points[rng.weighted(&d2)].clone());
        }
        let dim = points[0].len();
        let mut assign = vec![usize::MAX; points.len()];
        for _ in 0..iterations {
            let mut changed = false;
            for (i, p) in points.iter().enumerate() {
                let c = nearest(&centroids, p, None);
                if assign[i] != c {
                    assign[i] = c;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
            let mut sums = vec![vec![0.0; dim]; centroids.len()];
            let mut counts = vec![0usize; centroids.len()];
            for (p, &c) in points.iter().zip(&assign) {
                counts[c] += 1;
                for (s, x) in sums[c].iter_mut().zip(p) {
                    *s += x;
                }
            }
            for (c, (s, n)) in sums.into_iter().zip(counts).enumerate() {
                if n > 0 {
                    centroids[c] = s.into_iter().map(|x| x / n as f64).collect();
                }
            }
        }
        Some(KMeans { centroids })
    }

    /// The nearest centroid to `p`, comparing only the dimensions where `mask` is true
    /// (all when `None`): a new function knows its execution time before its rate.
    pub fn assign(&self, p: &[f64], mask: Option<&[bool]>) -> usize {
        nearest(&self.centroids, p, mask)
    }

    pub fn k(&self) -> usize {
        self.centroids.len()
    }
}

fn dist2(a: &[f64], b: &[f64], mask: Option<&[bool]>) -> f64 {
    a.iter()
        .zip(b)
        .enumerate()
        .filter(|(i, _)| mask.is_none_or(|m| m[*i]))
        .map(|(_, (x, y))| (x - y) * (x - y))
        .sum()
}

fn nearest(centroids: &[Vec<f64>], p: &[f64], mask: Option<&[bool]>) -> usize {
    let mut best = (0, f64::INFINITY);
    for (i, c) in centroids.iter().enumerate() {
        let d = dist2(p, c, mask);
        if d < best.1 {
            best = (i, d);
        }
    }
    best.0
}

/// Standardise columns to zero mean and unit variance; returns the per-column (mean, sd)
/// used, so that later points can be transformed the same way.
pub fn standardize(points: &mut [Vec<f64>]) -> Vec<(f64, f64)> {
    if points.is_empty() {
        return Vec::new();
    }
    let dim = points[0].len();
    let n = points.len() as f64;
    let mut stats = Vec::with_capacity(dim);
    for d in 0..dim {
        let mean = points.iter().map(|p| p[d]).sum::<f64>() / n;
        let var = points.iter().map(|p| (p[d] - mean).powi(2)).sum::<f64>() / n;
        let sd = if var > 1e-12 { var.sqrt() } else { 1.0 };
        for p in points.iter_mut() {
            p[d] = (p[d] - mean) / sd;
        }
        stats.push((mean, sd));
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separates_obvious_clusters_and_assigns_with_partial_features() {
        let mut rng = Rng::new(1);
        let mut pts = Vec::new();
        for &(cx, cy) in &[(0.0, 0.0), (10.0, 0.0), (0.0, 10.0)] {
            for _ in 0..30 {
                pts.push(vec![cx + rng.normal() * 0.3, cy + rng.normal() * 0.3]);
            }
        }
        let km = KMeans::fit(&pts, 3, 50, 7).unwrap();
        assert_eq!(km.k(), 3);
        let a = km.assign(&[0.1, 0.1], None);
        let b = km.assign(&[9.9, 0.2], None);
        let c = km.assign(&[0.2, 9.8], None);
        assert!(a != b && b != c && a != c);
        // Only x known: x = 10 can only be the second cluster.
        assert_eq!(km.assign(&[10.0, 999.0], Some(&[true, false])), b);
        // Standardisation gives unit variance.
        let mut p2 = pts.clone();
        let st = standardize(&mut p2);
        assert_eq!(st.len(), 2);
        let var: f64 = p2.iter().map(|p| p[0] * p[0]).sum::<f64>() / p2.len() as f64;
        assert!((var - 1.0).abs() < 1e-9);
        assert_eq!(KMeans::fit(&[], 3, 10, 1), None);
        // Fewer distinct points than k.
        let same = vec![vec![1.0, 1.0]; 5];
        assert_eq!(KMeans::fit(&same, 3, 10, 1).unwrap().k(), 1);
    }
}
