//! Simulator: smoke tests on a fixed seed of the synthetic workload and on the real slice.

use std::path::PathBuf;

use rekindle_agent::policy::{fixed::FixedKeepAlive, PolicyKind, Tier};
use rekindle_agent::sim::{self, NodeMode, RunOptions, SimConfig, Variant};
use rekindle_agent::trace::{self, Format, Invocation, Invocations, ReadOptions, Trace};
use rekindle_agent::workload::{self, WorkloadParams};

fn small_synthetic(seed: u64) -> Trace {
    let mut p = WorkloadParams::new(seed, 40, 1.0);
    p.max_per_min = 5.0;
    workload::generate(&p).0
}

#[test]
fn rekindle_beats_fixed_keep_alive_on_cold_starts_at_no_more_wasted_memory() {
    let t = small_synthetic(11);
    assert!(t.synthetic);
    let mut opts = RunOptions::new(11);
    // A price of idle memory at which Rekindle spends no more than the fixed policy
    // (the default price spends more memory for fewer misses; docs/simulation.md).
    opts.price_ms_per_gb_min = Some(800.0);
    let variants = [
        Variant {
            kind: PolicyKind::Fixed,
            mode: NodeMode::AsPublished,
        },
        Variant {
            kind: PolicyKind::Rekindle,
            mode: NodeMode::WithImages,
        },
    ];
    let r = sim::run_variants(&t, &variants, &opts);
    let (fixed, rk) = (&r[0], &r[1]);
    println!("fixed {fixed:?}\nrekindle {rk:?}");
    assert_eq!(fixed.invocations, t.len());
    assert_eq!(rk.invocations, t.len());
    let cold = Tier::Cold.index();
    assert!(
        rk.starts[cold] < fixed.starts[cold] / 2,
        "{:?} vs {:?}",
        rk.starts,
        fixed.starts
    );
    assert!(
        rk.wasted_gb_min <= fixed.wasted_gb_min,
        "{} vs {}",
        rk.wasted_gb_min,
        fixed.wasted_gb_min
    );
    assert!(rk.total_start_latency_s < fixed.total_start_latency_s);
    assert!(rk.p75_app_cold_pct <= fixed.p75_app_cold_pct);
    // Rekindle's node: full cold starts only until a function's first start has ended
    // and left its image (concurrent first requests also start cold).
    let functions_invoked = {
        let mut seen = vec![false; t.functions.len()];
        t.iter().for_each(|i| seen[i.function as usize] = true);
        seen.iter().filter(|s| **s).count() as u64
    };
    assert!(rk.starts[cold] >= functions_invoked);
    assert!(rk.cold_fraction() < 0.01, "{}", rk.cold_fraction());
    // It forecast something and reports its error.
    let f = rk.forecast.as_ref().expect("dense functions are forecast");
    assert!(f
        .models
        .iter()
        .any(|m| m.model == "blend" && m.mase_mean.is_finite()));
}

/// A hand-made trace: one function invoked every `period` seconds for `n` times.
fn periodic(period: f64, n: usize, exec: f32) -> Trace {
    let invs = (0..n)
        .map(|i| Invocation {
            arrival: i as f64 * period,
            duration: exec,
            function: 0,
        })
        .collect();
    Trace {
        source: "hand-made periodic".into(),
        synthetic: true,
        functions: vec![trace::FunctionMeta {
            app_name: "a".into(),
            name: "f".into(),
            info: rekindle_agent::policy::FunctionInfo {
                app: 0,
                memory_mb: 1024.0,
                trigger: None,
            },
        }],
        apps: vec!["a".into()],
        invocations: Invocations::List(invs),
        horizon: period * n as f64,
    }
}

#[test]
fn fixed_keep_alive_accounting_is_exact_on_a_hand_made_trace() {
    // Every 5 minutes, 1 s each, 1 GB: after the first (cold) start every start is hot,
    // and each idle gap of 299 s is waste: 299 s × 1 GB per gap.
    let t = periodic(300.0, 10, 1.0);
    let cfg = SimConfig {
        latencies: sim::LatencyTable::placeholder(),
        memory_factors: sim::DEFAULT_MEMORY_FACTORS,
        mode: NodeMode::AsPublished,
        seed: 1,
    };
    let r = sim::run(&t, &mut FixedKeepAlive::ten_minutes(), &cfg);
    assert_eq!(r.starts, [9, 0, 0, 0, 1]);
    assert_eq!(r.p75_app_cold_pct, 10.0);
    // 9 gaps of ~299 s (minus the first start's latency), then 600 s after the last end
    // until the horizon cuts it (the trace ends 299 s after the last end).
    let waste_s = r.wasted_gb_min * 60.0;
    assert!((waste_s - (9.0 * 299.0 + 299.0)).abs() < 5.0, "{waste_s}");
    // Every 15 minutes: the 10-minute window always expires first.
    let r = sim::run(
        &periodic(900.0, 6, 1.0),
        &mut FixedKeepAlive::ten_minutes(),
        &cfg,
    );
    assert_eq!(r.starts[Tier::Cold.index()], 6);
    assert!(
        (r.wasted_gb_min - 6.0 * 10.0).abs() < 0.2,
        "{}",
        r.wasted_gb_min
    );
}

#[test]
fn hybrid_pre_warms_a_periodic_function_and_saves_memory() {
    let t = periodic(420.0, 60, 2.0);
    let mk = |mode| SimConfig {
        latencies: sim::LatencyTable::placeholder(),
        memory_factors: sim::DEFAULT_MEMORY_FACTORS,
        mode,
        seed: 1,
    };
    let fixed = sim::run(
        &t,
        &mut FixedKeepAlive::ten_minutes(),
        &mk(NodeMode::AsPublished),
    );
    let mut h = rekindle_agent::policy::hybrid::HybridHistogram::paper();
    let hybrid = sim::run(&t, &mut h, &mk(NodeMode::AsPublished));
    // Both catch (almost) every arrival; the hybrid policy holds the instance only
    // around the expected arrival.
    assert!(hybrid.starts[0] >= 58, "{:?}", hybrid.starts);
    assert!(hybrid.background_loads >= 50);
    assert!(
        hybrid.wasted_gb_min < fixed.wasted_gb_min / 2.0,
        "{} vs {}",
        hybrid.wasted_gb_min,
        fixed.wasted_gb_min
    );
}

#[test]
fn replays_the_real_slice_with_every_policy() {
    let dir = std::env::var_os("REKINDLE_TRACES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data"));
    let p = dir.join("azure2021/azure2021_invitro_first199.csv");
    let t = trace::read(&[p], Format::Auto, &ReadOptions::default()).expect("the real slice");
    let variants =
        sim::default_variants(&[PolicyKind::Fixed, PolicyKind::Hybrid, PolicyKind::Rekindle]);
    assert_eq!(variants.len(), 5);
    let results = sim::run_variants(&t, &variants, &RunOptions::new(1));
    for r in &results {
        assert_eq!(r.invocations, 199, "{}", r.policy);
        assert_eq!(r.starts.iter().sum::<u64>(), 199);
        // Every function's first start is cold on a fresh node.
        assert!(
            r.starts[Tier::Cold.index()] >= 31,
            "{}: {:?}",
            r.policy,
            r.starts
        );
        assert!(r.wasted_gb_min >= 0.0);
    }
    let report = sim::report::Report {
        latencies: sim::LatencyTable::placeholder(),
        memory_factors: sim::DEFAULT_MEMORY_FACTORS,
        runs: vec![sim::report::TraceRun {
            trace: t.source.clone(),
            synthetic: false,
            seed: Some(1),
            functions: t.functions.len(),
            apps: t.apps.len(),
            invocations: t.len(),
            results,
        }],
    };
    let md = report.markdown();
    assert!(md.contains("PLACEHOLDER"));
    assert!(md.contains("| hybrid-histogram+images |"));
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["runs"][0]["results"].as_array().unwrap().len(), 5);
}

#[test]
fn at_the_hybrid_policy_s_memory_rekindle_starts_faster_with_fewer_cold_starts() {
    // The goal on a small fixed seed: Rekindle at the lowest price where it
    // wastes no more memory than the hybrid histogram policy (either variant) has fewer
    // full cold starts and a lower total start latency.
    let mut p = WorkloadParams::new(5, 24, 0.5);
    p.max_per_min = 5.0;
    let t = workload::generate(&p).0;
    let opts = RunOptions::new(5);
    let variants = [
        Variant {
            kind: PolicyKind::Hybrid,
            mode: NodeMode::AsPublished,
        },
        Variant {
            kind: PolicyKind::Hybrid,
            mode: NodeMode::WithImages,
        },
    ];
    let r = sim::run_variants(&t, &variants, &opts);
    let target = r[0].wasted_gb_min.min(r[1].wasted_gb_min);
    let (price, rk) = sim::rekindle_at_memory(&t, &opts, target).expect("reachable");
    println!(
        "hybrid {:?}\nhybrid+images {:?}\nrekindle@{price} {rk:?}",
        r[0], r[1]
    );
    assert!(
        rk.wasted_gb_min <= target,
        "{} > {target}",
        rk.wasted_gb_min
    );
    // Against the policy as published (a miss is a cold start). Against the same policy
    // on Rekindle's node (misses restored from disk) Rekindle wins on the README's
    // one-day, 80-app seeds, not on a trace this short (half a day, 24 apps: too little
    // history to learn from); `rekindle-sim --match-memory` shows both.
    assert!(
        rk.total_start_latency_s < r[0].total_start_latency_s,
        "{} vs {}",
        rk.total_start_latency_s,
        r[0].total_start_latency_s
    );
    let cold = Tier::Cold.index();
    assert!(
        rk.starts[cold] < r[0].starts[cold],
        "{:?} vs {:?}",
        rk.starts,
        r[0].starts
    );
    // The lowest such price: a clearly lower one wastes more than the target.
    let mut lower = opts.clone();
    lower.price_ms_per_gb_min = Some(price / 1.5);
    let v = [Variant {
        kind: PolicyKind::Rekindle,
        mode: NodeMode::WithImages,
    }];
    if price / 1.5 >= 1.0 {
        let below = &sim::run_variants(&t, &v, &lower)[0];
        assert!(below.wasted_gb_min > target, "{below:?}");
    }
}
