//! The soak (issue #7's "Load"): the whole node under a bounded mixed load on loopback
//! for a fixed time, with real containerd, runc, CRIU, rekindle-restored and the agent
//! (in-process, its invoke gateway and admin API).
//!
//! Several functions of the reference image, each with its own arrival pattern — steady
//! ones that stay hot, bursty ones that need more instances than they keep, sparse ones
//! whose instances go idle and are frozen, stopped and restored — under a node memory
//! budget smaller than everything they would hold, with checkpoints asked for through the
//! admin API while requests run, and images removed from the store now and then (an
//! operator's `rekindle image rm` or a GC; the next start is then cold and the agent
//! checkpoints again). The Rekindle policy at `time_scale` 10.
//!
//! Afterwards: every request has an answer — 200 from the function (its JSON, with the
//! tier and instance headers) or an explicit 503 with its reason; the memory the pools
//! count and the memory the instances' cgroups and the staged images actually use stayed
//! within the budget (sampled every 250 ms); after shutdown nothing leaked, counted
//! before and after: processes (shims, CRIU, the functions), mounts, cgroups, the test
//! process' file descriptors, staged files and restore leases, network namespaces; and
//! the harness' leak check on every instance. A summary table (requests, errors by kind,
//! p50/p99 per tier, memory, leaks) is printed and, with `REKINDLE_SOAK_OUT`, written
//! to that file.
//!
//! Run: `cargo build --workspace --bins && cargo test --test soak -- --nocapture`
//! (root; `hack/setup.sh`). `REKINDLE_SOAK_SECS` sets the load's duration (default 60:
//! the short version CI runs); `hack/soak.sh` runs the long one and writes
//! `bench-results/soak.md`.

#[allow(dead_code, unused_imports)]
#[path = "integration/harness/mod.rs"]
mod harness;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use rekindle_agent::admin::{CheckpointRequest, Client as AdminClient};
use rekindle_agent::config::{Config, FunctionConfig, PolicyName};
use rekindle_agent::daemon::Agent;
use rekindle_agent::driver::{ContainerdDriver, NetMode};

use harness::restore::{needs_rekindle, restore_story, Restored, FIXTURE_STATE_MB};
use harness::{Ctx, IMAGE, NAMESPACE};

/// Policy seconds per real second.
const TIME_SCALE: f64 = 10.0;
const MEMORY_MB: u64 = 160;
/// Less than every function's instances and images would hold.
const BUDGET_MB: u64 = 1400;

/// How one function is driven.
#[derive(Clone, Copy, Debug)]
enum Pattern {
    /// Requests one after the other, `gap_ms` apart: stays hot.
    Steady { gap_ms: u64 },
    /// `size` requests at once every `every_s` seconds: more instances than it keeps.
    Bursty { size: usize, every_s: f64 },
    /// One request after a random idle time between `min_s` and `max_s` seconds: its
    /// instances go warm, then away, and it is restored.
    Sparse { min_s: f64, max_s: f64 },
}

const PATTERNS: [(&str, Pattern); 6] = [
    ("soak-steady-a", Pattern::Steady { gap_ms: 40 }),
    ("soak-steady-b", Pattern::Steady { gap_ms: 90 }),
    (
        "soak-bursty",
        Pattern::Bursty {
            size: 4,
            every_s: 9.0,
        },
    ),
    (
        "soak-sparse-a",
        Pattern::Sparse {
            min_s: 2.0,
            max_s: 9.0,
        },
    ),
    (
        "soak-sparse-b",
        Pattern::Sparse {
            min_s: 5.0,
            max_s: 16.0,
        },
    ),
    (
        "soak-sparse-c",
        Pattern::Sparse {
            min_s: 8.0,
            max_s: 25.0,
        },
    ),
];

/// splitmix64: a seeded, dependency-free random stream (the soak is reproducible up to
/// timing).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    /// Served: latency (ms, the client's: request sent to answer read) by tier.
    by_tier: BTreeMap<String, Vec<f64>>,
    /// The start made for the request (`x-rekindle-start-ms`: restore or cold start
    /// alone, without queueing and releases) by tier.
    start_ms: BTreeMap<String, Vec<f64>>,
    /// 503s by reason.
    refused: BTreeMap<String, u64>,
    /// Anything else: what happened (status or transport error).
    errors: BTreeMap<String, u64>,
    /// Answers that were not the function's (a 200 without its JSON or headers).
    wrong: Vec<String>,
}

impl Tally {
    fn requests(&self) -> u64 {
        self.by_tier.values().map(|v| v.len() as u64).sum::<u64>()
            + self.refused.values().sum::<u64>()
            + self.errors.values().sum::<u64>()
    }
}

async fn one_request(gw: SocketAddr, function: &str, tally: &Mutex<Tally>) {
    let body = br#"{"soak":true}"#;
    let raw = format!(
        "POST /invoke/{function} HTTP/1.1\r\nHost: {gw}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        String::from_utf8_lossy(body)
    );
    let t0 = Instant::now();
    let answer = harness::http::exchange(gw, raw.as_bytes(), Duration::from_secs(120)).await;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut t = tally.lock().unwrap();
    match answer {
        Ok(a) if a.status == 200 => {
            let json: Option<serde_json::Value> = serde_json::from_str(&a.body).ok();
            let ok = json.as_ref().is_some_and(|j| {
                j["body_bytes"] == body.len() && j["count"].as_u64().is_some_and(|c| c >= 1)
            });
            match a.headers.get("x-rekindle-tier") {
                Some(tier) if ok && a.headers.contains_key("x-rekindle-instance") => {
                    t.by_tier.entry(tier.clone()).or_default().push(ms);
                    if let Some(start) = a
                        .headers
                        .get("x-rekindle-start-ms")
                        .and_then(|v| v.parse::<f64>().ok())
                    {
                        t.start_ms.entry(tier.clone()).or_default().push(start);
                    }
                }
                _ => t
                    .wrong
                    .push(format!("{function}: 200 {:?} {:?}", a.headers, a.body)),
            }
        }
        Ok(a) if a.status == 503 => {
            let reason = a
                .headers
                .get("x-rekindle-refused")
                .cloned()
                .unwrap_or_else(|| "(no reason header)".into());
            if !a.headers.contains_key("retry-after") {
                t.wrong.push(format!("{function}: 503 without Retry-After"));
            }
            *t.refused.entry(reason).or_default() += 1;
        }
        Ok(a) => {
            *t.errors.entry(format!("HTTP {}", a.status)).or_default() += 1;
            t.wrong
                .push(format!("{function}: {} {}", a.status, a.body.trim()));
        }
        Err(e) => {
            *t.errors.entry("transport".into()).or_default() += 1;
            t.wrong.push(format!("{function}: {e:#}"));
        }
    }
}

/// Drives one function until `until`.
async fn drive(
    gw: SocketAddr,
    function: &'static str,
    pattern: Pattern,
    seed: u64,
    until: Instant,
    tally: Arc<Mutex<Tally>>,
) {
    let mut rng = Rng(seed);
    while Instant::now() < until {
        match pattern {
            Pattern::Steady { gap_ms } => {
                one_request(gw, function, &tally).await;
                tokio::time::sleep(Duration::from_millis(gap_ms)).await;
            }
            Pattern::Bursty { size, every_s } => {
                let burst: Vec<_> = (0..size)
                    .map(|_| {
                        let tally = tally.clone();
                        tokio::spawn(async move { one_request(gw, function, &tally).await })
                    })
                    .collect();
                for b in burst {
                    let _ = b.await;
                }
                tokio::time::sleep(Duration::from_secs_f64(every_s * rng.uniform(0.7, 1.3))).await;
            }
            Pattern::Sparse { min_s, max_s } => {
                tokio::time::sleep(Duration::from_secs_f64(rng.uniform(min_s, max_s))).await;
                if Instant::now() < until {
                    one_request(gw, function, &tally).await;
                }
            }
        }
    }
}

/// What is counted before and after for leaks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Census {
    /// Processes by name, of the kinds a leak would leave.
    processes: BTreeMap<String, u64>,
    mounts: usize,
    /// The soak's instance cgroups (any hierarchy).
    cgroups: usize,
    fds: usize,
    netns: usize,
}

fn census(netns_dir: &Path, containerd_dir: &Path) -> Census {
    // Only this run's: the instances' processes (by cgroup), the shims and runc of this
    // containerd (their command lines name its directory), and their children (CRIU).
    let dir = containerd_dir.to_string_lossy().into_owned();
    let cg = format!("/{NAMESPACE}/soak-");
    let mut procs: Vec<(u32, u32, String, bool)> = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let read = |f: &str| std::fs::read(e.path().join(f)).unwrap_or_default();
        let comm = String::from_utf8_lossy(&read("comm")).trim().to_string();
        let cmdline = String::from_utf8_lossy(&read("cmdline")).replace('\0', " ");
        let cgroup = String::from_utf8_lossy(&read("cgroup")).into_owned();
        let ppid = String::from_utf8_lossy(&read("stat"))
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0);
        let ours = cmdline.contains(&dir) || cgroup.contains(&cg);
        procs.push((pid, ppid, comm, ours));
    }
    let ours: std::collections::HashSet<u32> = procs.iter().filter(|p| p.3).map(|p| p.0).collect();
    let mut processes = BTreeMap::new();
    for (_, ppid, comm, mine) in &procs {
        if *mine || ours.contains(ppid) {
            *processes.entry(comm.clone()).or_default() += 1;
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().count())
        .unwrap_or(0);
    // In every hierarchy (each v1 controller and the unified one).
    let cgroups = harness::leaks::cgroup_roots()
        .iter()
        .flat_map(|root| {
            std::fs::read_dir(root.join(NAMESPACE))
                .into_iter()
                .flatten()
        })
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("soak-"))
        .count();
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0);
    let netns = std::fs::read_dir(netns_dir).map(|d| d.count()).unwrap_or(0);
    Census {
        processes,
        mounts,
        cgroups,
        fds,
        netns,
    }
}

/// Memory the soak's instances' cgroups use now, bytes (v1 memory controller, or v2).
fn instances_memory() -> u64 {
    let mut sum = 0;
    for (dir, file) in [
        (
            Path::new("/sys/fs/cgroup/memory").join(NAMESPACE),
            "memory.usage_in_bytes",
        ),
        (
            Path::new("/sys/fs/cgroup").join(NAMESPACE),
            "memory.current",
        ),
    ] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with("soak-") {
                sum += std::fs::read_to_string(e.path().join(file))
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    sum
}

/// The pools' own count of the memory they hold (`rekindle_pool_memory_bytes`), bytes,
/// and the pool lines of `/metrics` behind it (for the report when it is over).
async fn pools_memory(metrics: SocketAddr) -> Result<(u64, String)> {
    let (_, _, text) = harness::http::get_with_headers(metrics, "/metrics").await?;
    let sum = text
        .lines()
        .filter(|l| l.starts_with("rekindle_pool_memory_bytes{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64;
    let detail = text
        .lines()
        .filter(|l| {
            (l.starts_with("rekindle_pool_memory_bytes{")
                || l.starts_with("rekindle_pool_instances{"))
                && !l.ends_with(" 0")
        })
        .collect::<Vec<_>>()
        .join("; ");
    Ok((sum, detail))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[k.min(sorted.len() - 1)]
}

fn soak_secs() -> u64 {
    std::env::var("REKINDLE_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

#[test]
fn the_node_answers_every_request_of_a_mixed_soak_within_budget_and_leaks_nothing() {
    let secs = soak_secs();
    if std::env::var_os("REKINDLE_IT_STORY_TIMEOUT").is_none() {
        // The load, plus starts, shutdown and checks.
        // SAFETY: set before any thread of this test binary reads the environment.
        unsafe { std::env::set_var("REKINDLE_IT_STORY_TIMEOUT", (secs + 300).to_string()) };
    }
    restore_story("soak", move |ctx, restored| async move {
        if let Some(skip) = needs_rekindle(&ctx, "soak") {
            eprintln!("{skip}");
            return Ok(());
        }
        soak(ctx, restored, secs).await
    });
}

async fn soak(ctx: Ctx, restored: Restored, secs: u64) -> Result<()> {
    let functions: Vec<FunctionConfig> = PATTERNS
        .iter()
        .map(|(name, _)| {
            let mut f = FunctionConfig::new(name, IMAGE, 8080);
            f.env = vec![format!("STATE_MB={FIXTURE_STATE_MB}")];
            f.memory_mb = MEMORY_MB;
            f.cpu_shares = Some(256);
            f.store_as = Some(ctx.new_id(name));
            f.netns = NetMode::Own;
            f.max_instances = 4;
            f.max_queue = 16;
            f.max_queue_wait_secs = 30.0;
            f.invoke_timeout_secs = 60.0;
            f
        })
        .collect();
    let config = Config {
        gateway_addr: Some("127.0.0.1:0".parse()?),
        policy: PolicyName::Rekindle,
        reconcile_interval_ms: 250,
        time_scale: TIME_SCALE,
        memory_budget_mb: Some(BUDGET_MB),
        max_parallel_starts: 2,
        // The soak loads the machine on purpose: the pressure gate would hold back the
        // pools' speculative work, which is part of what is soaked.
        pressure_cpu_pct: 1000.0,
        pressure_memory_pct: 1000.0,
        tier_latencies: Some(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/integration/data/restore-latencies.json"),
        ),
        functions: functions.clone(),
        ..harness::agent_config(&ctx, "soak", &restored.socket)
    };
    config.validate()?;
    let netns_dir = config.netns_dir.clone();
    let admin_socket = config.admin_socket.clone();
    let before = census(&netns_dir, &ctx.paths().dir);
    let driver = ContainerdDriver::connect(config.driver_config()).await?;
    let agent = Agent::start(&config).await?;
    let gw = agent.gateway_addr.context("no gateway address")?;
    let metrics = agent.metrics_addr;
    eprintln!(
        "[soak] {} functions, {secs} s of load, budget {BUDGET_MB} MB, gateway {gw}",
        functions.len()
    );

    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(secs);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut clients = Vec::new();
    for (i, (name, pattern)) in PATTERNS.iter().enumerate() {
        clients.push(tokio::spawn(drive(
            gw,
            name,
            *pattern,
            0x5eed + i as u64,
            until,
            tally.clone(),
        )));
    }

    // Memory, sampled while the load runs.
    let done = Arc::new(AtomicBool::new(false));
    let max_pools = Arc::new(AtomicU64::new(0));
    let max_used = Arc::new(AtomicU64::new(0));
    let over: Arc<Mutex<Vec<String>>> = Arc::default();
    let sampler = {
        let (done, max_pools, max_used, over) = (
            done.clone(),
            max_pools.clone(),
            max_used.clone(),
            over.clone(),
        );
        let client = restored.client();
        tokio::spawn(async move {
            let budget = BUDGET_MB << 20;
            while !done.load(Ordering::SeqCst) {
                if let Ok((p, detail)) = pools_memory(metrics).await {
                    max_pools.fetch_max(p, Ordering::SeqCst);
                    if p > budget {
                        over.lock().unwrap().push(format!(
                            "pools count {p} B at {:.1} s: {detail}",
                            t0.elapsed().as_secs_f64()
                        ));
                    }
                }
                let staged = client.stats().await.map(|s| s.staged_bytes).unwrap_or(0);
                let used = instances_memory() + staged;
                max_used.fetch_max(used, Ordering::SeqCst);
                if used > budget {
                    over.lock().unwrap().push(format!(
                        "instances + staged use {used} B at {:.1} s",
                        t0.elapsed().as_secs_f64()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    // Operators meanwhile: checkpoints through the admin API, images removed.
    let ops = {
        let functions = functions.clone();
        let client = restored.client();
        tokio::spawn(async move {
            let api = AdminClient::new(&admin_socket);
            let mut rng = Rng(0x0b5);
            let mut log: BTreeMap<String, u64> = BTreeMap::new();
            let mut k = 0usize;
            while Instant::now() + Duration::from_secs(3) < until {
                tokio::time::sleep(Duration::from_secs_f64(rng.uniform(2.0, 5.0))).await;
                let f = &functions[k % functions.len()];
                k += 1;
                if k.is_multiple_of(3) {
                    let r = client.delete_image(f.store_as()).await;
                    *log.entry(match r {
                        Ok(_) => "image removed".into(),
                        Err(e) => format!("image rm refused ({})", short(&e.to_string())),
                    })
                    .or_default() += 1;
                } else {
                    let r = api
                        .checkpoint(
                            &f.name,
                            &CheckpointRequest {
                                keep_running: true,
                                ..Default::default()
                            },
                        )
                        .await;
                    *log.entry(match r {
                        Ok(_) => "checkpoint taken".into(),
                        Err(e) => format!("checkpoint refused ({})", short(&e.to_string())),
                    })
                    .or_default() += 1;
                }
            }
            log
        })
    };

    for c in clients {
        c.await?;
    }
    let load_secs = t0.elapsed().as_secs_f64();
    let ops_log = ops.await?;
    done.store(true, Ordering::SeqCst);
    sampler.await?;
    let mut starts = Vec::new();
    harness::adopt_agent_instances(&ctx, &driver, &agent, &mut starts);
    agent.shutdown().await;
    drop(driver);
    // The shims exit and containerd removes the tasks' mounts shortly after the last
    // delete.
    let mut after = census(&netns_dir, &ctx.paths().dir);
    let settle = Instant::now() + Duration::from_secs(20);
    while after != before && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = census(&netns_dir, &ctx.paths().dir);
    }
    let stats = restored.client().stats().await?;
    let staged_files = std::fs::read_dir(&restored.stage)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .count();

    let t = std::mem::take(&mut *tally.lock().unwrap());
    let table = summary(&SummaryInput {
        secs: load_secs,
        tally: &t,
        instances: starts.len(),
        ops: &ops_log,
        max_pools: max_pools.load(Ordering::SeqCst),
        max_used: max_used.load(Ordering::SeqCst),
        before: &before,
        after: &after,
        staged_files,
        leases: stats.leases as u64,
    });
    println!("{table}");
    if let Some(out) = std::env::var_os("REKINDLE_SOAK_OUT") {
        std::fs::write(PathBuf::from(&out), &table)
            .with_context(|| format!("writing {}", PathBuf::from(&out).display()))?;
    }

    // Every request answered: served by the function or refused with a reason.
    ensure!(t.wrong.is_empty(), "wrong answers: {:#?}", t.wrong);
    ensure!(
        t.errors.is_empty(),
        "requests without an answer: {:?}",
        t.errors
    );
    ensure!(t.requests() > 0, "no request was made");
    for tier in ["hot", "cold"] {
        ensure!(
            t.by_tier.contains_key(tier),
            "no {tier} start in the soak: {:?}",
            t.by_tier.keys().collect::<Vec<_>>()
        );
    }
    ensure!(
        t.by_tier.contains_key("restore_staged") || t.by_tier.contains_key("restore_disk"),
        "no restore in the soak: {:?}",
        t.by_tier.keys().collect::<Vec<_>>()
    );
    let over = over.lock().unwrap().clone();
    ensure!(over.is_empty(), "over the memory budget: {over:?}");
    // Nothing leaked.
    ensure!(
        after == before,
        "leaked: before {before:?}, after {after:?}"
    );
    ensure!(staged_files == 0, "{staged_files} staged file(s) left");
    ensure!(stats.leases == 0, "{} restore lease(s) left", stats.leases);
    Ok(())
}

fn short(s: &str) -> String {
    let s = s.split(':').next_back().unwrap_or(s).trim();
    s.chars().take(60).collect()
}

struct SummaryInput<'a> {
    secs: f64,
    tally: &'a Tally,
    instances: usize,
    ops: &'a BTreeMap<String, u64>,
    max_pools: u64,
    max_used: u64,
    before: &'a Census,
    after: &'a Census,
    staged_files: usize,
    leases: u64,
}

/// The summary as a Markdown table (what the README shows).
fn summary(s: &SummaryInput) -> String {
    let t = s.tally;
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    let mut out = format!(
        "Soak: {} functions, {:.0} s of load, budget {BUDGET_MB} MB, policy rekindle (time_scale {TIME_SCALE})\n\n",
        PATTERNS.len(),
        s.secs
    );
    out += "| requests | served | refused (503) | without answer | wrong answers | instances started |\n";
    out += "|---:|---:|---:|---:|---:|---:|\n";
    let served: u64 = t.by_tier.values().map(|v| v.len() as u64).sum();
    out += &format!(
        "| {} | {} | {} | {} | {} | {} |\n\n",
        t.requests(),
        served,
        t.refused.values().sum::<u64>(),
        t.errors.values().sum::<u64>(),
        t.wrong.len(),
        s.instances
    );
    out += "| tier | requests | p50 ms | p99 ms | max ms | start alone p50 / p99 ms |\n|---|---:|---:|---:|---:|---:|\n";
    for tier in ["hot", "warm", "restore_staged", "restore_disk", "cold"] {
        let Some(v) = t.by_tier.get(tier) else {
            out += &format!("| {tier} | 0 | | | | |\n");
            continue;
        };
        let mut v = v.clone();
        v.sort_by(f64::total_cmp);
        let start = match t.start_ms.get(tier) {
            Some(s) => {
                let mut s = s.clone();
                s.sort_by(f64::total_cmp);
                format!("{:.1} / {:.1}", percentile(&s, 0.5), percentile(&s, 0.99))
            }
            None => String::new(),
        };
        out += &format!(
            "| {tier} | {} | {:.1} | {:.1} | {:.1} | {start} |\n",
            v.len(),
            percentile(&v, 0.5),
            percentile(&v, 0.99),
            v.last().copied().unwrap_or(f64::NAN)
        );
    }
    out += "\n(p50/p99: the client's time from sending the request to reading the whole answer, queueing for an instance, the releases made for it and the start included; \"start alone\": the restore or cold start the agent made for the request.)\n\n";
    out += "\n| refusals and errors by kind | count |\n|---|---:|\n";
    if t.refused.is_empty() && t.errors.is_empty() {
        out += "| (none) | 0 |\n";
    }
    for (k, n) in &t.refused {
        out += &format!("| 503 {k} | {n} |\n");
    }
    for (k, n) in &t.errors {
        out += &format!("| {k} | {n} |\n");
    }
    out += "\n| operator actions during the load | count |\n|---|---:|\n";
    for (k, n) in s.ops {
        out += &format!("| {k} | {n} |\n");
    }
    out += &format!(
        "\n| memory (max sampled every 250 ms) | MB |\n|---|---:|\n| budget | {BUDGET_MB} |\n| counted by the pools | {:.0} |\n| used: instances' cgroups + staged images | {:.0} |\n",
        mb(s.max_pools),
        mb(s.max_used)
    );
    let procs = |c: &Census| {
        c.processes
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    out += "\n| leak check | before | after |\n|---|---|---|\n";
    out += &format!(
        "| processes (shims, runc, CRIU, functions) | {} | {} |\n",
        or_none(&procs(s.before)),
        or_none(&procs(s.after))
    );
    out += &format!("| mounts | {} | {} |\n", s.before.mounts, s.after.mounts);
    out += &format!(
        "| instance cgroups | {} | {} |\n",
        s.before.cgroups, s.after.cgroups
    );
    out += &format!(
        "| file descriptors (test process) | {} | {} |\n",
        s.before.fds, s.after.fds
    );
    out += &format!(
        "| network namespaces | {} | {} |\n",
        s.before.netns, s.after.netns
    );
    out += &format!(
        "| staged files, restore leases | 0, 0 | {}, {} |\n",
        s.staged_files, s.leases
    );
    out
}

fn or_none(s: &str) -> String {
    if s.is_empty() {
        "none".into()
    } else {
        s.to_string()
    }
}
