//! `rekindle-sim`: replay a trace (an Azure 2019/2021 file, or synthetic traces from the
//! seeded generator) against the pool policies and print the results table. Thin: the
//! work is in `rekindle_agent::{trace, workload, sim}`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rekindle_agent::policy::PolicyKind;
use rekindle_agent::sim::report::{Report, TraceRun};
use rekindle_agent::sim::{self, LatencyTable, RunOptions};
use rekindle_agent::trace::{self, Format, ReadOptions};
use rekindle_agent::workload::{self, WorkloadParams};

/// Replay invocation traces against Rekindle's pool policies and the published baselines.
///
/// Without --trace, runs synthetic traces from the seeded generator (calibrated to
/// Shahrad et al., ATC'20, §3), one per seed; every table says "synthetic" and names the
/// seed and the generator's parameters.
#[derive(Debug, Parser)]
#[command(name = "rekindle-sim", version)]
struct Args {
    /// A trace file: Azure 2021 (`app,func,end_timestamp,duration`) or Azure 2019
    /// invocations (`invocations_per_function_md.anon.dNN.csv`; repeat for more days).
    #[arg(long, value_name = "FILE")]
    trace: Vec<PathBuf>,
    /// Trace format.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    format: Format,
    /// 2019: execution-time percentiles file (default: the sibling of the first --trace).
    #[arg(long, value_name = "FILE")]
    durations: Option<PathBuf>,
    /// 2019: app memory file (default: the sibling of the first --trace).
    #[arg(long, value_name = "FILE")]
    memory: Option<PathBuf>,
    /// Short synthetic run for CI: 80 apps, 1 day (the default).
    #[arg(long, conflicts_with = "full")]
    quick: bool,
    /// Full synthetic evaluation: 400 apps, 7 days (minutes per seed).
    #[arg(long)]
    full: bool,
    /// Synthetic apps (overrides --quick/--full).
    #[arg(long)]
    apps: Option<usize>,
    /// Synthetic days (overrides --quick/--full).
    #[arg(long)]
    days: Option<f64>,
    /// Seeds, comma-separated: one synthetic trace per seed (and the latency draws).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    seeds: Vec<u64>,
    /// Per-function rate cap of the generator, invocations per minute.
    #[arg(long, default_value_t = 30.0)]
    max_per_min: f64,
    /// Policies, comma-separated: fixed, hybrid, rekindle.
    #[arg(long, value_delimiter = ',', default_value = "fixed,hybrid,rekindle")]
    policies: Vec<String>,
    /// Tier latencies (TOML or JSON with p50_ms/p99_ms per tier, as the bench writes);
    /// default: labelled placeholders.
    #[arg(long, value_name = "FILE")]
    tier_latencies: Option<PathBuf>,
    /// Idle memory per tier as a fraction of the instance's: hot,warm,staged.
    #[arg(
        long,
        value_delimiter = ',',
        num_args = 3,
        default_value = "1.0,1.0,0.6"
    )]
    tier_memory: Vec<f64>,
    /// Rekindle: ms of start latency one GB·minute of idle memory is worth.
    #[arg(long)]
    price: Option<f64>,
    /// Rekindle: node memory budget for idle pools, MB.
    #[arg(long)]
    memory_budget_mb: Option<f64>,
    /// Also replay Rekindle at the hybrid histogram policy's wasted memory: the lowest
    /// price at which it wastes no more than the hybrid policy (the lower of its two
    /// variants) on the same trace, found by bisection (~9 more replays per trace). Its
    /// row is `rekindle@hybrid-memory`: the two policies compared at equal memory.
    #[arg(long)]
    match_memory: bool,
    /// Print JSON instead of markdown.
    #[arg(long)]
    json: bool,
    /// Write the (first) trace in the Azure 2021 format to FILE and exit.
    #[arg(long, value_name = "FILE")]
    write_trace: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rekindle-sim: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let mut kinds = Vec::new();
    for p in &args.policies {
        kinds.push(match p.as_str() {
            "fixed" => PolicyKind::Fixed,
            "hybrid" => PolicyKind::Hybrid,
            "rekindle" => PolicyKind::Rekindle,
            other => {
                return Err(format!(
                    "unknown policy {other:?} (fixed, hybrid, rekindle)"
                ))
            }
        });
    }
    let latencies = match &args.tier_latencies {
        Some(p) => LatencyTable::from_file(p).map_err(|e| e.to_string())?,
        None => LatencyTable::placeholder(),
    };
    if args.tier_memory.iter().any(|f| !(0.0..=4.0).contains(f)) {
        return Err("--tier-memory factors must be between 0 and 4".into());
    }
    let memory_factors = [
        args.tier_memory[0],
        args.tier_memory[1],
        args.tier_memory[2],
        0.0,
        0.0,
    ];
    let (apps, days) = if args.full { (400, 7.0) } else { (80, 1.0) };
    let apps = args.apps.unwrap_or(apps);
    let days = args.days.unwrap_or(days);
    let variants = sim::default_variants(&kinds);
    // Every variant on `t`, with the latency draws of `seed`.
    let replay = |t: &trace::Trace, seed: u64| {
        let mut o = RunOptions::new(seed);
        o.latencies = latencies.clone();
        o.memory_factors = memory_factors;
        o.price_ms_per_gb_min = args.price;
        o.memory_budget_mb = args.memory_budget_mb;
        let mut results = sim::run_variants(t, &variants, &o);
        if args.match_memory {
            add_matched(t, &o, &mut results);
        }
        results
    };
    let mut runs = Vec::new();
    let seeds = if args.seeds.is_empty() {
        vec![1]
    } else {
        args.seeds.clone()
    };
    if !args.trace.is_empty() {
        let opts = ReadOptions {
            durations: args.durations.clone(),
            memory: args.memory.clone(),
            seed: seeds[0],
        };
        let t = trace::read(&args.trace, args.format, &opts).map_err(|e| e.to_string())?;
        if let Some(out) = &args.write_trace {
            return write_trace(&t, out);
        }
        for &seed in &seeds {
            let results = replay(&t, seed);
            runs.push(TraceRun {
                trace: format!("{} (latency seed {seed})", t.source),
                synthetic: false,
                seed: Some(seed),
                functions: t.functions.len(),
                apps: t.apps.len(),
                invocations: t.len(),
                results,
            });
        }
    } else {
        for &seed in &seeds {
            let mut p = WorkloadParams::new(seed, apps, days);
            p.max_per_min = args.max_per_min;
            let (t, _) = workload::generate(&p);
            if let Some(out) = &args.write_trace {
                return write_trace(&t, out);
            }
            let results = replay(&t, seed);
            runs.push(TraceRun {
                trace: format!("SYNTHETIC trace: {}", t.source),
                synthetic: true,
                seed: Some(seed),
                functions: t.functions.len(),
                apps: t.apps.len(),
                invocations: t.len(),
                results,
            });
        }
    }
    let report = Report {
        latencies,
        memory_factors,
        runs,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
        );
    } else {
        print!("{}", report.markdown());
    }
    Ok(())
}

/// With `--match-memory`: Rekindle's replay at the hybrid policy's wasted memory, added
/// to `results` as `rekindle@hybrid-memory` (its price in the row's note).
fn add_matched(t: &trace::Trace, o: &RunOptions, results: &mut Vec<sim::SimResult>) {
    let target = results
        .iter()
        .filter(|r| r.policy.starts_with("hybrid"))
        .map(|r| r.wasted_gb_min)
        .fold(f64::INFINITY, f64::min);
    if !target.is_finite() {
        eprintln!("rekindle-sim: --match-memory needs the hybrid policy in --policies");
        return;
    }
    match sim::rekindle_at_memory(t, o, target) {
        Some((price, mut r)) => {
            r.policy = "rekindle@hybrid-memory".into();
            r.note = Some(format!(
                "`rekindle@hybrid-memory`: Rekindle at price {price:.1} ms per GB·min, the \
                 lowest at which it wastes no more than the hybrid policy ({target:.0} GB·min)"
            ));
            // The same forecasts as the `rekindle` row: not printed twice.
            r.forecast = None;
            results.push(r);
        }
        None => eprintln!(
            "rekindle-sim: Rekindle wastes more than {target:.0} GB·min even at the highest price"
        ),
    }
}

fn write_trace(t: &trace::Trace, out: &PathBuf) -> Result<(), String> {
    let f = std::fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut w = std::io::BufWriter::new(f);
    t.write_azure2021(&mut w)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    eprintln!(
        "wrote {} invocations of {} ({}) to {}",
        t.len(),
        if t.synthetic {
            "a SYNTHETIC trace"
        } else {
            "the trace"
        },
        t.source,
        out.display()
    );
    Ok(())
}
