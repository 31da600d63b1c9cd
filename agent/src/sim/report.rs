//! The simulator's results table (markdown) and its JSON form.

use std::fmt::Write as _;

use serde::Serialize;

use super::{LatencyTable, SimResult};
use crate::forecast::AccuracyReport;
use crate::policy::Tier;

/// One run of all policies on one trace (one seed of the generator, or a real trace).
#[derive(Debug, Clone, Serialize)]
pub struct TraceRun {
    /// What the trace is; says "synthetic" and names seed and parameters when it is.
    pub trace: String,
    pub synthetic: bool,
    pub seed: Option<u64>,
    pub functions: usize,
    pub apps: usize,
    pub invocations: u64,
    pub results: Vec<SimResult>,
}

/// Everything a `rekindle-sim` invocation reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub latencies: LatencyTable,
    pub memory_factors: [f64; 5],
    pub runs: Vec<TraceRun>,
}

fn fmt_pct(x: f64) -> String {
    format!("{:.2}", 100.0 * x)
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "## Rekindle pool simulation\n");
        let _ = writeln!(s, "- Tier latencies: {}", self.latencies.source);
        let _ = writeln!(
            s,
            "  (p50/p99 ms) hot {}/{}, warm {}/{}, staged {}/{}, disk {}/{}, cold {}/{}",
            self.latencies.hot.p50_ms,
            self.latencies.hot.p99_ms,
            self.latencies.warm.p50_ms,
            self.latencies.warm.p99_ms,
            self.latencies.staged.p50_ms,
            self.latencies.staged.p99_ms,
            self.latencies.disk.p50_ms,
            self.latencies.disk.p99_ms,
            self.latencies.cold.p50_ms,
            self.latencies.cold.p99_ms
        );
        let m = self.memory_factors;
        let _ = writeln!(
            s,
            "- Idle memory per tier (fraction of the instance's memory; assumptions): hot {}, \
             warm {}, staged {}",
            m[0], m[1], m[2]
        );
        let _ = writeln!(
            s,
            "- `+images`: the policy on Rekindle's node (misses restore from the image on \
             disk); without it, as published (misses are cold starts)."
        );
        for run in &self.runs {
            let _ = writeln!(s, "\n### {}\n", run.trace);
            let _ = writeln!(
                s,
                "{} functions, {} apps, {} invocations{}\n",
                run.functions,
                run.apps,
                run.invocations,
                if run.synthetic {
                    " — SYNTHETIC trace"
                } else {
                    ""
                }
            );
            table(&mut s, &run.results);
            for note in run.results.iter().filter_map(|r| r.note.as_ref()) {
                let _ = writeln!(s, "\n{note}");
            }
            for r in &run.results {
                if let Some(f) = &r.forecast {
                    forecast_table(&mut s, &r.policy, f);
                }
            }
        }
        if self.runs.len() > 1 {
            let _ = writeln!(
                s,
                "\n### Mean over the {} runs above{}\n",
                self.runs.len(),
                if self.runs.iter().all(|r| r.synthetic) {
                    " (synthetic)"
                } else {
                    ""
                }
            );
            let n = self.runs.len() as f64;
            let mut means: Vec<SimResult> = Vec::new();
            for (k, first) in self.runs[0].results.iter().enumerate() {
                let mut m = first.clone();
                let all: Vec<&SimResult> =
                    self.runs.iter().filter_map(|r| r.results.get(k)).collect();
                let avg = |f: fn(&SimResult) -> f64| all.iter().map(|r| f(r)).sum::<f64>() / n;
                m.invocations = (all.iter().map(|r| r.invocations).sum::<u64>() as f64 / n) as u64;
                for t in Tier::ALL {
                    m.starts[t.index()] =
                        (all.iter().map(|r| r.starts[t.index()]).sum::<u64>() as f64 / n) as u64;
                }
                m.total_start_latency_s = avg(|r| r.total_start_latency_s);
                m.mean_start_latency_ms = avg(|r| r.mean_start_latency_ms);
                m.p50_start_latency_ms = avg(|r| r.p50_start_latency_ms);
                m.p99_start_latency_ms = avg(|r| r.p99_start_latency_ms);
                m.wasted_gb_min = avg(|r| r.wasted_gb_min);
                m.p75_app_cold_pct = avg(|r| r.p75_app_cold_pct);
                m.p75_app_miss_pct = avg(|r| r.p75_app_miss_pct);
                m.background_loads = avg(|r| r.background_loads as f64) as u64;
                means.push(m);
            }
            table(&mut s, &means);
        }
        s
    }
}

fn table(s: &mut String, results: &[SimResult]) {
    let _ = writeln!(
        s,
        "| policy | hot | warm | staged | disk | cold | cold % | p75 app cold % | p75 app miss % | \
         total start s | mean ms | p50 ms | p99 ms | wasted GB·min | pre-loads |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in results {
        let st = r.starts;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
            r.policy,
            st[0],
            st[1],
            st[2],
            st[3],
            st[4],
            fmt_pct(r.cold_fraction()),
            r.p75_app_cold_pct,
            r.p75_app_miss_pct,
            r.total_start_latency_s,
            r.mean_start_latency_ms,
            r.p50_start_latency_ms,
            r.p99_start_latency_ms,
            r.wasted_gb_min,
            r.background_loads
        );
    }
}

fn forecast_table(s: &mut String, policy: &str, f: &AccuracyReport) {
    let _ = writeln!(
        s,
        "\nForecast error of `{policy}`'s rate forecaster (one-step, invocations per minute; \
         {} functions, {} function-minutes scored):\n",
        f.functions, f.minutes
    );
    let _ = writeln!(
        s,
        "| model | MAPE % (actual > 0) | MASE mean | MASE median |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|");
    for m in &f.models {
        let mape = if m.mape_pct.is_nan() {
            "—".to_string()
        } else {
            format!("{:.1}", m.mape_pct)
        };
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} | {:.3} |",
            m.model, mape, m.mase_mean, m.mase_median
        );
    }
}
