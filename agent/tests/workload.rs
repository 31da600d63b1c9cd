//! The synthetic workload against its calibration targets (agent/src/workload/CALIBRATION.md).
//! Tolerances are wide where the published figure is a curve read by eye.

use rekindle_agent::policy::Trigger;
use rekindle_agent::workload::{self, FunctionModel, WorkloadParams};

fn frac<T>(v: &[T], pred: impl Fn(&T) -> bool) -> f64 {
    v.iter().filter(|x| pred(x)).count() as f64 / v.len() as f64
}

fn within(name: &str, got: f64, target: f64, tol: f64) {
    println!("{name}: {got:.3} (target {target} ± {tol})");
    assert!(
        (got - target).abs() <= tol,
        "{name}: {got:.3} not within {tol} of {target}"
    );
}

/// Configured (not realised) per-function parameters of a large population.
fn population() -> (Vec<FunctionModel>, Vec<(u32, f64)>) {
    let p = WorkloadParams::new(101, 3000, 0.001);
    let (t, models) = workload::generate(&p);
    let mut per_app = vec![(0u32, 0.0f64); t.apps.len()];
    for (f, m) in t.functions.iter().zip(&models) {
        let a = &mut per_app[f.info.app as usize];
        a.0 += 1;
        a.1 += m.per_day;
    }
    (models, per_app)
}

#[test]
fn rates_triggers_and_app_sizes_match_the_paper() {
    let (models, apps) = population();
    // Fig. 5a: 45 % of apps are invoked at most once an hour on average, 81 % at most
    // once a minute; for functions, about 63 % and 93 % (read from the curve).
    within("apps ≤ 1/h", frac(&apps, |a| a.1 <= 24.0), 0.45, 0.06);
    within("apps ≤ 1/min", frac(&apps, |a| a.1 <= 1440.0), 0.81, 0.05);
    within(
        "functions ≤ 1/h",
        frac(&models, |m| m.per_day <= 24.0),
        0.63,
        0.06,
    );
    within(
        "functions ≤ 1/min",
        frac(&models, |m| m.per_day <= 1440.0),
        0.93,
        0.03,
    );
    // Rates span many orders of magnitude (8 in the paper; capped here at 30/min).
    let min = models
        .iter()
        .map(|m| m.per_day)
        .fold(f64::INFINITY, f64::min);
    let max = models.iter().map(|m| m.per_day).fold(0.0, f64::max);
    assert!(max / min > 1e5, "range {min}..{max}");
    // Fig. 2: triggers.
    within(
        "HTTP share",
        frac(&models, |m| m.trigger == Trigger::Http),
        0.55,
        0.03,
    );
    within(
        "timer share",
        frac(&models, |m| m.trigger == Trigger::Timer),
        0.156,
        0.03,
    );
    within(
        "queue share",
        frac(&models, |m| m.trigger == Trigger::Queue),
        0.152,
        0.03,
    );
    // Fig. 1: 54 % of apps have one function, 95 % at most 10.
    within(
        "apps with 1 function",
        frac(&apps, |a| a.0 == 1),
        0.54,
        0.04,
    );
    within(
        "apps with ≤ 10 functions",
        frac(&apps, |a| a.0 <= 10),
        0.95,
        0.03,
    );
}

#[test]
fn execution_times_and_memory_match_the_paper() {
    let (models, _) = population();
    // Fig. 7: half the functions run ≤ 1 s on average, ~90 % ≤ 1 min (log-normal fit
    // μ = −0.38, σ = 2.36 gives 0.56 and 0.97).
    within(
        "mean exec ≤ 1 s",
        frac(&models, |m| m.mean_exec_secs <= 1.0),
        0.56,
        0.05,
    );
    within(
        "mean exec ≤ 60 s",
        frac(&models, |m| m.mean_exec_secs <= 60.0),
        0.97,
        0.03,
    );
    within(
        "mean exec ≤ 0.1 s",
        frac(&models, |m| m.mean_exec_secs <= 0.1),
        0.21,
        0.05,
    );
    // Fig. 8 (apps' average allocated memory; Burr fit): median ~150 MB, ~90 % ≤ 300 MB.
    let p = WorkloadParams::new(7, 3000, 0.001);
    let (t, _) = workload::generate(&p);
    let mut mem: Vec<f64> = Vec::new();
    let mut seen = vec![false; t.apps.len()];
    for f in &t.functions {
        if !seen[f.info.app as usize] {
            seen[f.info.app as usize] = true;
            mem.push(f.info.memory_mb);
        }
    }
    mem.sort_by(|a, b| a.total_cmp(b));
    within("median app memory MB", mem[mem.len() / 2], 140.0, 20.0);
    within("apps ≤ 400 MB", frac(&mem, |m| *m <= 400.0), 0.96, 0.03);
}

#[test]
fn inter_arrival_cv_diurnal_pattern_and_realised_rates() {
    let mut p = WorkloadParams::new(5, 300, 7.0);
    p.max_per_min = 2.0;
    let (t, models) = workload::generate(&p);
    assert!(t.synthetic && t.source.starts_with("synthetic, seed 5"));
    // Realised invocations match the configured rates (diurnal/weekly modulation
    // included: weekends lower the weekly mean).
    let expected: f64 = models.iter().map(|m| m.per_day * 7.0).sum();
    let got = t.len() as f64;
    println!("invocations {got} expected ≤ {expected}");
    assert!(
        got <= expected * 1.02 && got >= expected * 0.8,
        "{got} vs {expected}"
    );

    // Per-app inter-arrival CV (Fig. 6, all apps): ~20 % near 0 (timers), ~57 % ≤ 1,
    // ~72 % ≤ 2.
    let mut per_app: Vec<Vec<f64>> = vec![Vec::new(); t.apps.len()];
    for inv in t.iter() {
        per_app[t.functions[inv.function as usize].info.app as usize].push(inv.arrival);
    }
    let mut cvs = Vec::new();
    for a in &per_app {
        if a.len() < 20 {
            continue;
        }
        let gaps: Vec<f64> = a.windows(2).map(|w| w[1] - w[0]).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let sd = (gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64).sqrt();
        cvs.push(sd / mean);
    }
    println!("apps with ≥ 20 invocations: {}", cvs.len());
    // Known gap (CALIBRATION.md): Fig. 6 has ~20 % of apps at CV ≈ 0; the generator has
    // fewer (~8 %), since its multi-function apps mix triggers. Only their presence is
    // checked.
    let near_zero = frac(&cvs, |c| *c <= 0.1);
    println!("app IAT CV ≤ 0.1: {near_zero:.3} (paper ~0.2; known gap)");
    assert!(near_zero >= 0.05, "{near_zero}");
    within("app IAT CV ≤ 1", frac(&cvs, |c| *c <= 1.0), 0.57, 0.12);
    within("app IAT CV ≤ 2", frac(&cvs, |c| *c <= 2.0), 0.72, 0.12);

    // Diurnal pattern (Fig. 4: hourly invocations swing about ±15 % around the mean)
    // and a weekly one (weekends lower).
    let mut hourly = vec![0.0; 7 * 24];
    for inv in t.iter() {
        hourly[(inv.arrival / 3600.0) as usize] += 1.0;
    }
    let weekdays = &hourly[..5 * 24];
    let mean = weekdays.iter().sum::<f64>() / weekdays.len() as f64;
    let mut by_hour = [0.0; 24];
    for (h, c) in weekdays.iter().enumerate() {
        by_hour[h % 24] += c / 5.0;
    }
    let peak = by_hour.iter().cloned().fold(0.0, f64::max) / mean;
    let trough = by_hour.iter().cloned().fold(f64::INFINITY, f64::min) / mean;
    println!("diurnal peak {peak:.2} trough {trough:.2}");
    assert!(peak > 1.08 && peak < 1.6, "peak/mean {peak}");
    assert!(trough < 0.92 && trough > 0.4, "trough/mean {trough}");
    let weekend = hourly[5 * 24..].iter().sum::<f64>() / (2.0 * 24.0);
    println!("weekend/weekday {:.2}", weekend / mean);
    assert!(weekend / mean < 0.97 && weekend / mean > 0.6);
}
