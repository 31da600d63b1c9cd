//! A small multilayer perceptron trained online on the node: one hidden tanh layer, a
//! linear output, Adam updates, one sample at a time.
//!
//! Hand-written (about a hundred lines) instead of `candle-nn`/`burn`: the model is tiny
//! (≈ 250 weights), trains one sample per function per minute, and a tensor framework
//! would add minutes of compile time on the project's 2-core machines for no gain.

use crate::rng::Rng;

#[derive(Debug, Clone)]
pub struct Mlp {
    inputs: usize,
    hidden: usize,
    /// hidden × inputs, row-major, then hidden biases, then hidden output weights, then
    /// the output bias.
    w: Vec<f64>,
    m: Vec<f64>,
    v: Vec<f64>,
    t: u64,
    lr: f64,
    h: Vec<f64>,
}

impl Mlp {
    pub fn new(inputs: usize, hidden: usize, lr: f64, seed: u64) -> Self {
        let n = hidden * inputs + hidden + hidden + 1;
        let mut rng = Rng::new(seed);
        let mut w = vec![0.0; n];
        let s1 = (1.0 / inputs as f64).sqrt();
        let s2 = (1.0 / hidden as f64).sqrt();
        for x in w.iter_mut().take(hidden * inputs) {
            *x = rng.uniform(-s1, s1);
        }
        let out = hidden * inputs + hidden;
        for x in w.iter_mut().skip(out).take(hidden) {
            *x = rng.uniform(-s2, s2);
        }
        Mlp {
            inputs,
            hidden,
            w,
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
            lr,
            h: vec![0.0; hidden],
        }
    }

    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// Training steps taken.
    pub fn steps(&self) -> u64 {
        self.t
    }

    pub fn predict(&mut self, x: &[f64]) -> f64 {
        debug_assert_eq!(x.len(), self.inputs);
        let (ni, nh) = (self.inputs, self.hidden);
        let b1 = nh * ni;
        let w2 = b1 + nh;
        let mut y = self.w[w2 + nh];
        for j in 0..nh {
            let row = &self.w[j * ni..(j + 1) * ni];
            let a: f64 = row.iter().zip(x).map(|(w, x)| w * x).sum::<f64>() + self.w[b1 + j];
            self.h[j] = a.tanh();
            y += self.w[w2 + j] * self.h[j];
        }
        y
    }

    /// One Adam step on the squared error of `x → target`; returns the prediction made
    /// before the step.
    pub fn train(&mut self, x: &[f64], target: f64) -> f64 {
        let y = self.predict(x);
        let (ni, nh) = (self.inputs, self.hidden);
        let b1 = nh * ni;
        let w2 = b1 + nh;
        // d(½(y−t)²)/dy, clipped so that one wild sample cannot wreck the model.
        let g = (y - target).clamp(-5.0, 5.0);
        let mut grad = vec![0.0; self.w.len()];
        grad[w2 + nh] = g;
        for j in 0..nh {
            grad[w2 + j] = g * self.h[j];
            let gh = g * self.w[w2 + j] * (1.0 - self.h[j] * self.h[j]);
            grad[b1 + j] = gh;
            for i in 0..ni {
                grad[j * ni + i] = gh * x[i];
            }
        }
        self.t += 1;
        let (b1c, b2c) = (0.9f64, 0.999f64);
        let bc1 = 1.0 - b1c.powi(self.t.min(10_000) as i32);
        let bc2 = 1.0 - b2c.powi(self.t.min(10_000) as i32);
        for (k, g) in grad.iter().enumerate() {
            self.m[k] = b1c * self.m[k] + (1.0 - b1c) * g;
            self.v[k] = b2c * self.v[k] + (1.0 - b2c) * g * g;
            let mh = self.m[k] / bc1;
            let vh = self.v[k] / bc2;
            self.w[k] -= self.lr * mh / (vh.sqrt() + 1e-8);
        }
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_a_simple_nonlinear_function() {
        let mut mlp = Mlp::new(2, 8, 0.01, 1);
        let mut rng = Rng::new(3);
        let f = |a: f64, b: f64| (a * 2.0).sin() + 0.5 * b;
        let test: Vec<(f64, f64)> = (0..50)
            .map(|_| (rng.uniform(-1.0, 1.0), rng.uniform(-1.0, 1.0)))
            .collect();
        let err = |m: &mut Mlp| -> f64 {
            test.iter()
                .map(|&(a, b)| (m.predict(&[a, b]) - f(a, b)).abs())
                .sum::<f64>()
                / test.len() as f64
        };
        let before = err(&mut mlp);
        for _ in 0..20_000 {
            let (a, b) = (rng.uniform(-1.0, 1.0), rng.uniform(-1.0, 1.0));
            mlp.train(&[a, b], f(a, b));
        }
        let after = err(&mut mlp);
        assert!(after < 0.1 && after < before / 3.0, "{before} -> {after}");
        assert_eq!(mlp.steps(), 20_000);
    }
}
