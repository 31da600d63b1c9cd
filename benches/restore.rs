//! Time to first response of the reference function, five ways, side by side in one run:
//!
//! 1. `cold`: cold start through containerd, `io.containerd.runc.v2` (Containers.Create,
//!    Snapshots.Prepare, Tasks.Create, Tasks.Start);
//! 2. `runc-restore`: `runc restore` of the function's checkpoint through containerd,
//!    `io.containerd.runc.v2` (the same calls, Tasks.Create carrying the checkpoint
//!    descriptor, as `ctr container restore --live` does);
//! 3. `rekindle-disk`: Rekindle restore from rekindle-restored's LZ4 store on disk
//!    (`io.rekindle.image`, not staged: decompressed and verified per restore);
//! 4. `rekindle-staged`: the same from a staged image (decompressed in memory already);
//! 5. `rekindle-precreated`: staged, and the task created 250 ms before the clock starts
//!    (as an instance created ahead of its request): from Tasks.Start to the first
//!    response. The shim restores ahead, during Create, and holds the tree stopped, so
//!    Start only lets it resume.
//!
//! The clock runs from the first request to containerd for that instance (Start for 5)
//! until its first `HTTP 200` to `GET /` on 127.0.0.1 (host network: the checkpointed
//! process listens on the port it had, so instances run one at a time). The modes take
//! turns, round after round (the first mode rotating), so machine noise hits all alike.
//! One warm-up round of every mode comes first, timed and reported on its own, not
//! counted: the first restore of a stored image on a node records its working set (the
//! pages its first request touches, served by CRIU's lazy-pages daemon one fault at a
//! time), which every later restore of the image copies in before the process resumes.
//! It is a once-per-image cost, like a cold page cache, not the restore the modes
//! compare; the report gives its time next to the table.
//! Each restore is checked to answer from its checkpoint's state (count 4 after the
//! three requests before the checkpoint), each cold start with count 1.
//!
//! Everything runs on its own: a private containerd (from `hack/setup.sh`'s cache) and a
//! private rekindle-restored, started here and stopped at the end, with the harness of
//! the integration tests (`tests/integration/harness`).
//!
//! Run `bash hack/bench.sh` (release build, set-up, results in `bench-results/`).
//! Environment: `REKINDLE_BENCH_ITERATIONS` (per mode, default 30),
//! `REKINDLE_BENCH_WARMUP` (`0`: no warm-up round, the first restores counted),
//! `REKINDLE_BENCH_OUT` (default `<repo>/bench-results`), `REKINDLE_CONTAINERD` (`2` or
//! `1.6`), `REKINDLE_BENCH_COMMIT` (recorded with the results),
//! `REKINDLE_BENCH_WINDOWS=<file>`: appends each sample's window (the warm-up's too) to
//! the file, one line `<mode> <start> <end>` in seconds of CLOCK_MONOTONIC — the clock
//! of `perf record -k CLOCK_MONOTONIC` —, so that a system-wide profile taken during the
//! run can be cut to the samples' windows (`hack/perf-windows.py`).
//!
//! `REKINDLE_BENCH_AB_CRIU=<criu A>,<criu B>` compares two CRIU builds instead (a change
//! to CRIU's patches, say): only mode (4), two samples a round, A then B and B then A in
//! turn, the shims' CRIU (`REKINDLE_CRIU`, a symlink) switched before each; the medians
//! and the paired differences go to `ab.md` in the output dir, not to the table. Build
//! both with one `SOURCE_DATE_EPOCH`: CRIU stamps its kernel-feature cache
//! (`/run/criu/criu.kdat`) with its build time, and a build that finds the other's stamp
//! detects everything again (~15 ms) and rewrites the cache; the report counts such
//! rewrites. `REKINDLE_BENCH_AB_SHIM=<shim A>,<shim B>` compares two builds of the shim
//! binary the same way (the one containerd runs is a symlink switched before each
//! sample; hack/static-shim.sh builds one: copy its dir aside before building the other).

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use containerd_client::services::v1::version_client::VersionClient;

#[allow(dead_code, unused_imports)]
#[path = "../tests/integration/harness/mod.rs"]
mod harness;

use harness::containerd::{cache_dir, PrivateContainerd, Version};
use harness::restore::{
    restored_socket, CheckpointOptions, FunctionSpec, RestoreDaemon, Restored, IMAGE_ANNOTATION,
    STORE_AS_ANNOTATION,
};
use harness::{http, Ctx, Shared, IMAGE, NAMESPACE, REKINDLE_RUNTIME, SNAPSHOTTER};

const RUNC_RUNTIME: &str = "io.containerd.runc.v2";
/// Requests the source functions answer before their checkpoint.
const WARM_REQUESTS: u64 = 3;
/// The image names in rekindle-restored.
const DISK_IMAGE: &str = "bench-fn";
const STAGED_IMAGE: &str = "bench-fn-staged";
/// How long before its Start mode (5) creates the task (the label says 250 ms).
const PRECREATED_AHEAD: Duration = Duration::from_millis(250);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Cold,
    RuncRestore,
    RekindleDisk,
    RekindleStaged,
    RekindlePrecreated,
}

const MODES: [Mode; 5] = [
    Mode::Cold,
    Mode::RuncRestore,
    Mode::RekindleDisk,
    Mode::RekindleStaged,
    Mode::RekindlePrecreated,
];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Cold => "cold",
            Mode::RuncRestore => "runc-restore",
            Mode::RekindleDisk => "rekindle-disk",
            Mode::RekindleStaged => "rekindle-staged",
            Mode::RekindlePrecreated => "rekindle-precreated",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Mode::Cold => "(1) cold start, io.containerd.runc.v2: create + task create + start",
            Mode::RuncRestore => {
                "(2) runc restore via containerd, io.containerd.runc.v2: create + task create with the checkpoint + start"
            }
            Mode::RekindleDisk => {
                "(3) Rekindle, LZ4 store on disk (io.rekindle.image, not staged): create + task create + start"
            }
            Mode::RekindleStaged => {
                "(4) Rekindle, staged image: create + task create + start"
            }
            Mode::RekindlePrecreated => {
                "(5) Rekindle, staged, task created 250 ms ahead: start only"
            }
        }
    }

    /// Restored by Rekindle's direct engine (the shim logs how: [`direct_restore_times`]).
    fn direct(self) -> bool {
        !matches!(self, Mode::Cold | Mode::RuncRestore)
    }

    /// The count the first response must carry.
    fn expected_count(self) -> u64 {
        match self {
            Mode::Cold => 1,
            _ => WARM_REQUESTS + 1,
        }
    }
}

struct Config {
    iterations: usize,
    warmup: bool,
    out: PathBuf,
    commit: Option<String>,
    ab: Option<Ab>,
}

/// What an A/B run compares.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AbOf {
    /// `REKINDLE_BENCH_AB_CRIU`: the shims' CRIU (`REKINDLE_CRIU`).
    Criu,
    /// `REKINDLE_BENCH_AB_SHIM`: the shim binary containerd runs (`REKINDLE_SHIM_DIR`).
    Shim,
}

impl AbOf {
    const ALL: [AbOf; 2] = [AbOf::Criu, AbOf::Shim];

    fn var(self) -> &'static str {
        match self {
            AbOf::Criu => "REKINDLE_BENCH_AB_CRIU",
            AbOf::Shim => "REKINDLE_BENCH_AB_SHIM",
        }
    }

    fn title(self) -> &'static str {
        match self {
            AbOf::Criu => "CRIU",
            AbOf::Shim => "Shim",
        }
    }

    /// The name of the symlink switched between the two builds.
    fn link_name(self) -> &'static str {
        match self {
            AbOf::Criu => "criu",
            AbOf::Shim => harness::containerd::SHIM_BINARY,
        }
    }
}

/// Two builds to compare (see [`AbOf`]), and the symlink that runs.
struct Ab {
    of: AbOf,
    builds: [PathBuf; 2],
    link: PathBuf,
}

impl Ab {
    fn from_env() -> Result<Option<Self>> {
        let asked: Vec<(AbOf, String)> = AbOf::ALL
            .into_iter()
            .filter_map(|of| std::env::var(of.var()).ok().map(|v| (of, v)))
            .collect();
        let (of, v) = match <[(AbOf, String); 1]>::try_from(asked) {
            Ok([one]) => one,
            Err(asked) if asked.is_empty() => return Ok(None),
            Err(_) => bail!(
                "{} and {}: one comparison a run",
                AbOf::Criu.var(),
                AbOf::Shim.var()
            ),
        };
        let var = of.var();
        let builds: Vec<PathBuf> = v.split(',').map(|p| PathBuf::from(p.trim())).collect();
        let [a, b] = <[PathBuf; 2]>::try_from(builds)
            .map_err(|_| anyhow::anyhow!("{var}={v:?}: two binaries, comma-separated"))?;
        for p in [&a, &b] {
            if !p.is_absolute() || !p.is_file() {
                bail!("{var}: {} is not a file (an absolute path)", p.display());
            }
        }
        let link = std::env::temp_dir()
            .join(format!("rekindle-bench-ab-{}", std::process::id()))
            .join(of.link_name());
        Ok(Some(Ab {
            of,
            builds: [a, b],
            link,
        }))
    }

    /// Sets the link up and points what runs at it; before containerd starts (the
    /// shims get its environment), while the bench is still one thread.
    fn install(&self) -> Result<()> {
        let dir = self.link.parent().unwrap_or(Path::new("/"));
        fs::create_dir_all(dir)?;
        self.switch(0)?;
        match self.of {
            AbOf::Criu => std::env::set_var("REKINDLE_CRIU", &self.link),
            AbOf::Shim => {
                // The shim's tar helper in that dir too, as where the shims were built.
                const TAR_HELPER: &str = "rekindle-criu-tar";
                let helper = harness::containerd::shim_dir()?.join(TAR_HELPER);
                let _ = fs::remove_file(dir.join(TAR_HELPER));
                std::os::unix::fs::symlink(helper, dir.join(TAR_HELPER))?;
                std::env::set_var("REKINDLE_SHIM_DIR", dir);
            }
        }
        Ok(())
    }

    /// Points the link at build `i` (0: A, 1: B).
    fn switch(&self, i: usize) -> Result<()> {
        let tmp = self.link.with_extension("new");
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&self.builds[i], &tmp)?;
        fs::rename(&tmp, &self.link).with_context(|| {
            format!(
                "switching {} to {}",
                self.link.display(),
                self.builds[i].display()
            )
        })
    }
}

impl Config {
    fn from_env() -> Result<Self> {
        let iterations = match std::env::var("REKINDLE_BENCH_ITERATIONS") {
            Ok(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| format!("REKINDLE_BENCH_ITERATIONS={v:?}: a positive number"))?,
            Err(_) => 30,
        };
        let out = std::env::var_os("REKINDLE_BENCH_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench-results"));
        let warmup = !matches!(std::env::var("REKINDLE_BENCH_WARMUP").as_deref(), Ok("0"));
        let commit = std::env::var("REKINDLE_BENCH_COMMIT")
            .ok()
            .filter(|s| !s.is_empty());
        Ok(Config {
            iterations,
            warmup,
            out,
            commit,
            ab: Ab::from_env()?,
        })
    }
}

/// What the checkpoints the modes restore from are, and how they were made.
struct Sources {
    runc_checkpoint: harness::restore::Checkpoint,
    checkpoint_ms: f64,
    image: rekindle_restore_api::ImageInfo,
    stage_ms: f64,
    port: u16,
    /// The warm source function's resident memory (VmRSS of its process), MiB.
    rss_mib: f64,
}

fn main() -> Result<()> {
    let cfg = Config::from_env()?;
    // SAFETY: geteuid(2) cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("run as root (containerd, runc and CRIU need it): bash hack/bench.sh");
    }
    let image_tar = cache_dir().join("images/python-fn.oci.tar");
    if !image_tar.is_file() {
        bail!("{} is missing: run hack/setup.sh", image_tar.display());
    }
    let version = Version::from_env()?;
    if let Some(ab) = &cfg.ab {
        ab.install()?;
    }

    // The shims started by this containerd find this daemon through the environment
    // (harness::restore exports REKINDLE_RESTORED_SOCKET before main).
    let daemon = RestoreDaemon::start(&restored_socket()).context("starting rekindle-restored")?;
    let containerd = PrivateContainerd::start(version)?;
    let out = containerd
        .ctr(NAMESPACE)
        .args(["images", "import", "--snapshotter", SNAPSHOTTER])
        .arg(&image_tar)
        .output()
        .context("ctr images import")?;
    if !out.status.success() {
        bail!(
            "ctr images import {}: {}",
            image_tar.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let shared = Shared {
        paths: containerd.paths.clone(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let restored = daemon.handle.clone();
    let result = rt.block_on(async {
        let ctx = Ctx::connect("bench", &shared).await?;
        let outcome = bench(&ctx, &restored, &cfg).await;
        let notes = ctx.cleanup().await;
        let leaks = ctx.check_leaks().await;
        if !notes.is_empty() || !leaks.is_empty() {
            eprintln!(
                "bench: clean-up:\n  {}",
                notes
                    .into_iter()
                    .chain(leaks)
                    .collect::<Vec<_>>()
                    .join("\n  ")
            );
        }
        outcome
    });
    drop(rt);
    let left = daemon.stop_and_check();
    if !left.is_empty() {
        eprintln!(
            "bench: rekindle-restored at the end:\n  {}",
            left.join("\n  ")
        );
    }
    drop(containerd);
    if let Some(ab) = &cfg.ab {
        let _ = fs::remove_dir_all(ab.link.parent().unwrap_or(&ab.link));
    }
    result
}

async fn bench(ctx: &Ctx, restored: &Restored, cfg: &Config) -> Result<()> {
    let facts = machine_facts(ctx).await?;
    eprintln!("bench: {}", facts_line(&facts));
    let sources = prepare_sources(ctx, restored).await?;
    eprintln!(
        "bench: image {} files, {:.1} MiB ({:.1} MiB LZ4 on disk), checkpoint {:.0} ms, stage {:.0} ms; {} iterations per mode",
        sources.image.manifest.file_count,
        mib(sources.image.manifest.total_size),
        mib(sources.image.manifest.total_compressed_size),
        sources.checkpoint_ms,
        sources.stage_ms,
        cfg.iterations
    );

    if let Some(ab) = &cfg.ab {
        return ab_bench(ctx, sources, cfg, ab).await;
    }

    // Not counted: see the module's doc.
    let mut warmup = Vec::new();
    if cfg.warmup {
        let mut line = String::from("warm-up round (not counted):");
        for m in MODES {
            let sample = one(ctx, m, &sources)
                .await
                .with_context(|| format!("{} (warm-up round)", m.name()))?;
            let _ = write!(line, " {}={:.1}", m.name(), sample.total);
            warmup.push(sample.total);
        }
        eprintln!("bench: {line} ms");
    }
    let load_before = loadavg();
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); MODES.len()];
    let started = Instant::now();
    for round in 0..cfg.iterations {
        let mut line = format!("round {:>3}/{}:", round + 1, cfg.iterations);
        for k in 0..MODES.len() {
            let i = (round + k) % MODES.len();
            let sample = one(ctx, MODES[i], &sources)
                .await
                .with_context(|| format!("{} (round {})", MODES[i].name(), round + 1))?;
            let _ = write!(line, " {}={:.0}", MODES[i].name(), sample.total);
            samples[i].push(sample);
        }
        eprintln!("bench: {line} ms");
    }
    let wall = started.elapsed();
    let load_after = loadavg();
    sources.runc_checkpoint.release(ctx).await?;

    let stats: Vec<Stats> = samples
        .iter()
        .map(|s| Stats::of(&s.iter().map(|x| x.total).collect::<Vec<_>>()))
        .collect();
    let report = Report {
        facts,
        stats,
        samples,
        sources_desc: format!(
            "{} files, {:.1} MiB CRIU image ({:.1} MiB LZ4 on disk, {:.2}x); checkpoint (runc + CRIU through containerd) {:.0} ms; staging {:.0} ms",
            sources.image.manifest.file_count,
            mib(sources.image.manifest.total_size),
            mib(sources.image.manifest.total_compressed_size),
            sources.image.manifest.total_size as f64
                / sources.image.manifest.total_compressed_size.max(1) as f64,
            sources.checkpoint_ms,
            sources.stage_ms
        ),
        rss_mib: sources.rss_mib,
        iterations: cfg.iterations,
        warmup,
        wall,
        load: (load_before, load_after),
        commit: cfg.commit.clone(),
    };
    let md = report.markdown();
    println!("{md}");
    fs::create_dir_all(&cfg.out).with_context(|| format!("creating {}", cfg.out.display()))?;
    let md_path = cfg.out.join("restore.md");
    let json_path = cfg.out.join("restore.json");
    fs::write(&md_path, &md)?;
    fs::write(
        &json_path,
        serde_json::to_string_pretty(&report.json())? + "\n",
    )?;
    eprintln!(
        "bench: wrote {} and {}",
        md_path.display(),
        json_path.display()
    );
    Ok(())
}

/// The two checkpoints: one taken through containerd's runc shim (restored by mode 2),
/// one taken through Rekindle's shim and stored by it (`io.rekindle.checkpoint.store-as`),
/// then exported and imported under a second name and staged (modes 3-5). Both from the
/// reference function after [`WARM_REQUESTS`] requests, listening on the same port.
async fn prepare_sources(ctx: &Ctx, restored: &Restored) -> Result<Sources> {
    let port = http::free_port()?;

    let src = FunctionSpec::new("bench-src-runc")
        .runtime(RUNC_RUNTIME)
        .port(port)
        .create(ctx)
        .await?;
    warm_up(&src).await?;
    let t = Instant::now();
    let runc_checkpoint = src.checkpoint(CheckpointOptions::default()).await?;
    let runc_ms = ms(t.elapsed());
    src.destroy().await?;

    let src = FunctionSpec::new("bench-src")
        .runtime(REKINDLE_RUNTIME)
        .port(port)
        .annotate(STORE_AS_ANNOTATION, DISK_IMAGE)
        .create(ctx)
        .await?;
    warm_up(&src).await?;
    let rss_mib = vm_rss_kib(src.pid()).map(|k| k as f64 / 1024.0)?;
    let t = Instant::now();
    let ck = src.checkpoint(CheckpointOptions::default()).await?;
    let rekindle_ms = ms(t.elapsed());
    ck.release(ctx).await?;
    src.destroy().await?;
    eprintln!(
        "bench: checkpoints: runc.v2 {runc_ms:.0} ms, rekindle (+ store) {rekindle_ms:.0} ms"
    );

    let client = restored.client();
    let archive = restored.store.with_file_name("bench-fn.tar.zst");
    let _ = fs::remove_file(&archive);
    client.export_image(DISK_IMAGE, &archive, Some(1)).await?;
    client
        .import_image(&archive, Some(STAGED_IMAGE.to_string()))
        .await?;
    fs::remove_file(&archive)?;
    let t = Instant::now();
    client.stage_image(STAGED_IMAGE).await?;
    let stage_ms = ms(t.elapsed());
    let image = client.get_image(DISK_IMAGE).await?;
    Ok(Sources {
        runc_checkpoint,
        checkpoint_ms: runc_ms,
        image,
        stage_ms,
        port,
        rss_mib,
    })
}

/// VmRSS of a process, KiB.
fn vm_rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

async fn warm_up(f: &harness::restore::Function) -> Result<()> {
    f.start().await?;
    f.wait_serving(Duration::from_secs(60)).await?;
    for expected in 1..=WARM_REQUESTS {
        let n = f.count().await?;
        if n != expected {
            bail!("{} counted {n}, expected {expected}", f.id);
        }
    }
    Ok(())
}

/// One timed instance, in milliseconds: in all, and by phase.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    total: f64,
    /// Containers.Create (0 for a pre-created task).
    container: f64,
    /// Snapshots.Prepare (0 for a pre-created task).
    snapshot: f64,
    /// Tasks.Create (0 for a pre-created task).
    task: f64,
    /// Tasks.Start (where the restore itself happens).
    start: f64,
    /// From Start's answer to the first HTTP 200.
    respond: f64,
    /// Rekindle's restores, from the shim's log line ([`direct_restore_times`]): CRIU's
    /// restore from the shim's request to its pre-resume step (NaN for runc's modes).
    criu: f64,
    /// The same line: from Start's go to CRIU's answer, the tree resumed (NaN for runc's).
    resume: f64,
}

/// One phase of a [`Sample`], as [`phase_p50`] takes it.
type Phase = fn(&Sample) -> f64;

/// The phases of a sample, in the order the reports give them.
const PHASES: [(&str, Phase); 5] = [
    ("container", |s| s.container),
    ("snapshot", |s| s.snapshot),
    ("task", |s| s.task),
    ("start", |s| s.start),
    ("respond", |s| s.respond),
];

/// What the shim's log says of a direct restore, in the order the reports give them.
const SHIM_PHASES: [(&str, Phase); 2] = [("criu", |s| s.criu), ("resume", |s| s.resume)];

/// Mode (4) with two builds, sample by sample (see the module's doc).
async fn ab_bench(ctx: &Ctx, sources: Sources, cfg: &Config, ab: &Ab) -> Result<()> {
    let kdat = Path::new("/run/criu/criu.kdat");
    let stamp = || fs::metadata(kdat).and_then(|m| m.modified()).ok();
    // One of each first, not counted (the first restore of the image records its
    // working set).
    for i in [0, 1] {
        ab.switch(i)?;
        one(ctx, Mode::RekindleStaged, &sources).await?;
    }
    let mut samples: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
    let mut rewrites = 0;
    for round in 0..cfg.iterations {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            ab.switch(i)?;
            let before = stamp();
            let s = one(ctx, Mode::RekindleStaged, &sources)
                .await
                .with_context(|| format!("build {} (round {})", ["A", "B"][i], round + 1))?;
            if stamp() != before {
                rewrites += 1;
            }
            samples[i].push(s);
        }
        eprintln!(
            "bench: round {:>3}/{}: A={:.1} B={:.1} ms",
            round + 1,
            cfg.iterations,
            samples[0][round].total,
            samples[1][round].total
        );
    }
    let mut md = format!(
        "# {} A/B: mode (4), staged restore to first response\n\n- A: `{}`\n- B: `{}`\n\n\
         {} rounds of one sample of each build, A first and B first in turn; B - A is the median of the \
         differences within a round.\n\n| phase | A p50 ms | B p50 ms | B - A ms |\n|---|---:|---:|---:|\n",
        ab.of.title(),
        ab.builds[0].display(),
        ab.builds[1].display(),
        cfg.iterations
    );
    let total: (&str, Phase) = ("total", |s| s.total);
    for (name, phase) in std::iter::once(total).chain(PHASES).chain(SHIM_PHASES) {
        let diffs: Vec<f64> = samples[0]
            .iter()
            .zip(&samples[1])
            .map(|(a, b)| phase(b) - phase(a))
            .collect();
        let _ = writeln!(
            md,
            "| {name} | {:.2} | {:.2} | {:+.2} |",
            phase_p50(&samples[0], phase),
            phase_p50(&samples[1], phase),
            Stats::of(&diffs).p50
        );
    }
    if rewrites > 0 {
        let _ = write!(
            md,
            "\n**Warning**: CRIU's kernel-feature cache was rewritten during {rewrites} samples: \
             the two builds carry different build stamps (build both with one \
             `SOURCE_DATE_EPOCH`), and those samples include CRIU's full detection.\n"
        );
    }
    sources.runc_checkpoint.release(ctx).await?;
    fs::create_dir_all(&cfg.out)?;
    let path = cfg.out.join("ab.md");
    fs::write(&path, &md)?;
    print!("{md}");
    eprintln!("bench: wrote {}", path.display());
    Ok(())
}

/// One instance of `mode`: the time to its first response (checked), then its end
/// (not timed).
async fn one(ctx: &Ctx, mode: Mode, s: &Sources) -> Result<Sample> {
    let spec = FunctionSpec::new(&format!("bench-{}", mode.name())).port(s.port);
    let spec = match mode {
        Mode::Cold => spec.runtime(RUNC_RUNTIME),
        Mode::RuncRestore => spec
            .runtime(RUNC_RUNTIME)
            .restore_from(s.runc_checkpoint.criu()?),
        Mode::RekindleDisk => spec
            .runtime(REKINDLE_RUNTIME)
            .annotate(IMAGE_ANNOTATION, DISK_IMAGE),
        Mode::RekindleStaged | Mode::RekindlePrecreated => spec
            .runtime(REKINDLE_RUNTIME)
            .annotate(IMAGE_ANNOTATION, STAGED_IMAGE),
    };
    let prepared = spec.prepare(ctx).await?;
    let (f, t0, w0) = if mode == Mode::RekindlePrecreated {
        let f = prepared.create().await?;
        // Created ahead of the request, as a pool's instance is: Start comes a while
        // later, by when the shim's restore ahead (CRIU during Create) is done and held.
        tokio::time::sleep(PRECREATED_AHEAD).await;
        (f, Instant::now(), monotonic_s())
    } else {
        let (t0, w0) = (Instant::now(), monotonic_s());
        (prepared.create().await?, t0, w0)
    };
    let created = t0.elapsed();
    // A task created ahead has its create phases outside the clock.
    let phases = if mode == Mode::RekindlePrecreated {
        Default::default()
    } else {
        f.create_phases
    };
    f.start().await?;
    let started = t0.elapsed();
    let first = first_response(s.port, Duration::from_secs(60)).await;
    let elapsed = t0.elapsed();
    note_window(mode, w0, monotonic_s())?;
    let checked = first.and_then(|body| {
        let json: serde_json::Value = serde_json::from_str(&body)
            .with_context(|| format!("first response is not JSON: {body:?}"))?;
        let count = json.get("count").and_then(serde_json::Value::as_u64);
        if count != Some(mode.expected_count()) {
            bail!(
                "first response {body:?}: expected count {}",
                mode.expected_count()
            );
        }
        Ok(())
    });
    let id = f.id.clone();
    let ended = f.destroy().await;
    checked?;
    ended?;
    let (criu, resume) = if mode.direct() {
        direct_restore_times(ctx.paths(), &id)?
    } else {
        (f64::NAN, f64::NAN)
    };
    Ok(Sample {
        total: ms(elapsed),
        container: ms(phases.container),
        snapshot: ms(phases.snapshot),
        task: ms(phases.task),
        start: ms(started - created),
        respond: ms(elapsed - started),
        criu,
        resume,
    })
}

/// `(criu_ms, resume_ms)` of the shim's line `restored by the direct engine` for
/// container `id` in containerd's log. None is an error: the restore took another path
/// (a fallback to runc), and the sample would not be what its mode says.
fn direct_restore_times(paths: &harness::containerd::Paths, id: &str) -> Result<(f64, f64)> {
    let line = paths
        .shim_line(id, "msg=\"restored by the direct engine ")
        .with_context(|| {
            format!(
                "{id}: no 'restored by the direct engine' line in {}: the restore took \
                 another path (its lines there say why)",
                paths.log.display()
            )
        })?;
    let field = |name: &str| -> Result<f64> {
        let key = format!(" {name}=");
        let at = line
            .find(&key)
            .with_context(|| format!("{id}: no {name} in {line:?}"))?;
        let value = &line[at + key.len()..];
        let end = value
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(value.len());
        value[..end]
            .parse()
            .with_context(|| format!("{id}: {name} in {line:?}"))
    };
    Ok((field("criu_ms")?, field("resume_ms")?))
}

/// CLOCK_MONOTONIC in seconds: what `perf record -k CLOCK_MONOTONIC` stamps samples with
/// (`Instant` reads the same clock, but does not show its value).
fn monotonic_s() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Appends a sample's window to `REKINDLE_BENCH_WINDOWS`, if set (after the clock
/// stopped: nothing of it is timed).
fn note_window(mode: Mode, start: f64, end: f64) -> Result<()> {
    use std::io::Write as _;
    let Some(path) = std::env::var_os("REKINDLE_BENCH_WINDOWS") else {
        return Ok(());
    };
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| {
            format!(
                "REKINDLE_BENCH_WINDOWS: opening {}",
                Path::new(&path).display()
            )
        })?;
    writeln!(f, "{} {start:.6} {end:.6}", mode.name()).with_context(|| {
        format!(
            "REKINDLE_BENCH_WINDOWS: writing {}",
            Path::new(&path).display()
        )
    })
}

/// Polls `GET /` on 127.0.0.1:`port` every millisecond until it answers 200: the body.
async fn first_response(port: u16, limit: Duration) -> Result<String> {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        match http::get(port, "/", Duration::from_secs(10)).await {
            Ok((200, body)) => return Ok(body),
            Ok((status, body)) => last = format!("{status}: {body}"),
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    bail!("no 200 on 127.0.0.1:{port} within {limit:?} (last: {last})")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

#[derive(Clone, Debug)]
struct Stats {
    n: usize,
    p50: f64,
    p99: f64,
    min: f64,
    max: f64,
    mean: f64,
}

impl Stats {
    /// Nearest-rank percentiles.
    fn of(samples: &[f64]) -> Stats {
        let mut v = samples.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let rank = |p: f64| {
            let r = (p / 100.0 * v.len() as f64).ceil() as usize;
            v[r.clamp(1, v.len()) - 1]
        };
        Stats {
            n: v.len(),
            p50: rank(50.0),
            p99: rank(99.0),
            min: v[0],
            max: v[v.len() - 1],
            mean: v.iter().sum::<f64>() / v.len() as f64,
        }
    }
}

struct Facts {
    kernel: String,
    criu: String,
    containerd: String,
    runc: String,
    cores: usize,
    cpu: String,
    memory: String,
    /// How long moving a process into its cgroups takes here (see
    /// [`cgroup_migration`]): the step each restore pays to put CRIU in the
    /// container's cgroups, and runc for each container it starts.
    cgroup_migration: String,
    /// What one CPUID instruction costs here (see [`cpuid_cost`]).
    cpuid: String,
    /// What a first touch of fresh memory costs here (see [`fresh_memory_cost`]).
    fresh_memory: String,
    /// How an idle CPU waits for work here (see [`cpu_idle`]).
    idle: String,
    /// The shim binary the runs used, and how it is linked (see [`shim_linking`]).
    shim: String,
}

/// The type of the filesystem `path` is on (the deepest mount above it).
fn fs_type(path: &std::path::Path) -> String {
    harness::leaks::mounts()
        .into_iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.len())
        .map(|m| m.fstype)
        .unwrap_or_else(|| "an unknown filesystem".into())
}

async fn machine_facts(ctx: &Ctx) -> Result<Facts> {
    let first_line = |cmd: &str, args: &[&str]| -> String {
        Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            })
            .unwrap_or_else(|| "?".into())
    };
    let v = VersionClient::new(ctx.channel())
        .version(())
        .await
        .context("containerd Version")?
        .into_inner();
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "?".into())
    };
    Ok(Facts {
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        criu: format!(
            "CRIU {}",
            first_line("/usr/local/sbin/criu", &["--version"]).trim_start_matches("Version: ")
        ),
        containerd: format!(
            "{} (its state dir on {})",
            if v.revision.is_empty() {
                format!("containerd {}", v.version)
            } else {
                format!("containerd {} ({})", v.version, v.revision)
            },
            // The harness mounts a tmpfs there, as /run/containerd is on a node.
            fs_type(&ctx.paths().state)
        ),
        runc: first_line("runc", &["--version"]).replace("runc version", "runc"),
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu: field(&cpuinfo, "model name"),
        memory: field(&meminfo, "MemTotal")
            .trim_end_matches(" kB")
            .parse::<f64>()
            .map(|kb| format!("{:.1} GiB", kb / (1 << 20) as f64))
            .unwrap_or_else(|_| "?".into()),
        cgroup_migration: cgroup_migration().unwrap_or_else(|e| format!("not measured ({e:#})")),
        cpuid: cpuid_cost(),
        idle: cpu_idle(),
        fresh_memory: fresh_memory_cost(),
        shim: shim_linking(),
    })
}

/// Times moving a sleeping process into a scratch cgroup in every mounted
/// hierarchy, as the shim moves `criu swrk` into a container's, five times a
/// quarter second apart: p50 and max. Without cgroup favordynmods the first
/// write waits for an RCU grace period (hack/setup.sh,
/// systemd/rekindle-favordynmods.service), which these numbers show.
fn cgroup_migration() -> Result<String> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let scratch = format!("rekindle-bench-{}", std::process::id());
    let mut dirs = Vec::new();
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(dir), Some(fstype)) = (f.get(1), f.get(2)) else {
            continue;
        };
        if *fstype != "cgroup" && *fstype != "cgroup2" {
            continue;
        }
        let d = PathBuf::from(dir).join(&scratch);
        if fs::create_dir(&d).is_err() {
            continue;
        }
        for knob in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = fs::read_to_string(Path::new(dir).join(knob)) {
                let _ = fs::write(d.join(knob), v.trim());
            }
        }
        dirs.push(d);
    }
    let timed = || -> Result<Vec<f64>> {
        let mut times = Vec::new();
        for _ in 0..5 {
            let mut child = Command::new("sleep")
                .arg("30")
                .spawn()
                .context("spawning sleep")?;
            let pid = child.id().to_string();
            let t = Instant::now();
            let moved = dirs.iter().try_for_each(|d| {
                fs::write(d.join("cgroup.procs"), &pid)
                    .with_context(|| format!("moving into {}", d.display()))
            });
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            let _ = child.kill();
            let _ = child.wait();
            moved?;
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(times)
    };
    let times = timed();
    for d in &dirs {
        let _ = fs::remove_dir(d);
    }
    let mut times = times?;
    times.sort_by(f64::total_cmp);
    Ok(format!(
        "a cgroup migration ({} hierarchies) {:.2} ms p50, {:.2} ms max of 5",
        dirs.len(),
        times[2],
        times[4],
    ))
}

/// Times the CPUID instruction (mean of 2000, leaf 4). In a VM it traps to the
/// hypervisor; every process start pays a few dozen (the dynamic loader's CPU
/// feature and cache probing), and every CRIU process as many again (compel's
/// CPU feature table): on a machine where one costs microseconds, a restore's
/// execs of criu carry that.
fn cpuid_cost() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        const N: u32 = 2000;
        let t = Instant::now();
        for i in 0..N {
            std::hint::black_box(std::arch::x86_64::__cpuid_count(4, i & 3));
        }
        format!(
            "a CPUID instruction {:.2} us",
            t.elapsed().as_secs_f64() * 1e6 / f64::from(N)
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        "no CPUID (not x86_64)".to_string()
    }
}

/// The shim under test and its linking: a static one (hack/static-shim.sh's, what
/// hack/bench.sh runs) has no program interpreter (`PT_INTERP`), a dynamically linked
/// one loads its shared libraries through ld.so at every `shim start`; a PIE
/// (`ET_DYN`) is relocated at every exec, an executable (`ET_EXEC`) is not.
fn shim_linking() -> String {
    let path = match harness::containerd::shim_dir() {
        Ok(dir) => dir.join(harness::containerd::SHIM_BINARY),
        Err(e) => return format!("shim: {e:#}"),
    };
    let linking = match fs::read(&path) {
        Ok(data) => elf_linking(&data).unwrap_or("not a 64-bit ELF file"),
        Err(_) => "unreadable",
    };
    format!("shim {linking} ({})", path.display())
}

/// How a 64-bit little-endian ELF executable is linked: an interpreter (PT_INTERP)
/// or none, position-independent (ET_DYN) or not.
fn elf_linking(data: &[u8]) -> Option<&'static str> {
    use object::elf::{FileHeader64, ET_DYN, PT_INTERP};
    use object::read::elf::{FileHeader as _, ProgramHeader as _};
    let header = FileHeader64::<object::LittleEndian>::parse(data).ok()?;
    let endian = header.endian().ok()?;
    let interp = header
        .program_headers(endian, data)
        .ok()?
        .iter()
        .any(|ph| ph.p_type(endian) == PT_INTERP);
    let pie = header.e_type(endian) == ET_DYN;
    Some(match (interp, pie) {
        (true, true) => "dynamically linked, PIE",
        (true, false) => "dynamically linked, not PIE",
        (false, true) => "statically linked, static-pie",
        (false, false) => "statically linked, not PIE",
    })
}

/// Times the first write to each 4 KiB page of 256 MiB of fresh anonymous memory
/// (huge pages off), three times: p50 per page. Every process start and every restore
/// pays it for the memory it fills. In a VM whose free memory goes back to the host
/// (virtio-balloon free page reporting, as on these machines) a page's first touch
/// may also fault on the host, and this moves with the host.
fn fresh_memory_cost() -> String {
    const LEN: usize = 256 << 20;
    const PAGE: usize = 4096;
    let mut per_page = Vec::new();
    for _ in 0..3 {
        // SAFETY: a private anonymous mapping of our own, written within its length
        // and unmapped before it goes out of scope.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                return format!(
                    "fresh memory not measured ({})",
                    std::io::Error::last_os_error()
                );
            }
            libc::madvise(p, LEN, libc::MADV_NOHUGEPAGE);
            let base = p.cast::<u8>();
            let t = Instant::now();
            for off in (0..LEN).step_by(PAGE) {
                std::ptr::write_volatile(base.add(off), 1);
            }
            per_page.push(t.elapsed().as_secs_f64() * 1e6 / (LEN / PAGE) as f64);
            libc::munmap(p, LEN);
        }
    }
    per_page.sort_by(f64::total_cmp);
    format!(
        "a first touch of fresh memory {:.2} us per 4 KiB page",
        per_page[1]
    )
}

/// The cpuidle driver and, for the KVM guest's `haltpoll` driver, how long an idle
/// CPU polls before it halts (`guest_halt_poll_ns`). A restore hands work between
/// processes (CRIU's stages, the lazy-pages daemon, the shim's threads); a CPU that
/// halted at once takes a wake-up through the hypervisor each time, a polling one
/// may not (bench-results/journal.md, "Night of November 27": no difference shown
/// in full runs here).
fn cpu_idle() -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    let driver =
        read("/sys/devices/system/cpu/cpuidle/current_driver").unwrap_or_else(|| "none".into());
    match read("/sys/module/haltpoll/parameters/guest_halt_poll_ns") {
        Some(ns) if driver == "haltpoll" => {
            format!("cpuidle haltpoll, guest halt polling {ns} ns")
        }
        _ => format!("cpuidle {driver}"),
    }
}

fn facts_line(f: &Facts) -> String {
    facts_joined(f, ", ")
}

/// The machine's facts, one after the other, `sep` between them.
fn facts_joined(f: &Facts, sep: &str) -> String {
    [
        format!("kernel {}", f.kernel),
        f.criu.clone(),
        f.containerd.clone(),
        f.runc.clone(),
        format!("{} cores ({})", f.cores, f.cpu),
        format!("{} RAM", f.memory),
        f.cgroup_migration.clone(),
        f.cpuid.clone(),
        f.fresh_memory.clone(),
        f.idle.clone(),
        f.shim.clone(),
    ]
    .join(sep)
}

struct Report {
    facts: Facts,
    stats: Vec<Stats>,
    samples: Vec<Vec<Sample>>,
    sources_desc: String,
    /// The warm function's resident memory, MiB.
    rss_mib: f64,
    iterations: usize,
    /// The warm-up round's times, ms, in [`MODES`] order (empty without one).
    warmup: Vec<f64>,
    wall: Duration,
    /// `/proc/loadavg`'s 1-minute load before and after the rounds: other work on the
    /// machine (a busy 2-core machine shows in the p99s).
    load: (f64, f64),
    commit: Option<String>,
}

impl Report {
    fn stat(&self, m: Mode) -> &Stats {
        &self.stats[MODES.iter().position(|x| *x == m).expect("a mode")]
    }

    /// `(what, faster by at p50, faster by at p99, target)`.
    fn ratios(&self) -> Vec<(String, f64, f64, f64)> {
        let r = |a: Mode, b: Mode| {
            (
                self.stat(b).p50 / self.stat(a).p50,
                self.stat(b).p99 / self.stat(a).p99,
            )
        };
        let (s_r50, s_r99) = r(Mode::RekindleStaged, Mode::RuncRestore);
        let (s_c50, s_c99) = r(Mode::RekindleStaged, Mode::Cold);
        let (p_r50, p_r99) = r(Mode::RekindlePrecreated, Mode::RuncRestore);
        let (p_c50, p_c99) = r(Mode::RekindlePrecreated, Mode::Cold);
        vec![
            ("(4) staged vs (2) runc restore".into(), s_r50, s_r99, 4.0),
            ("(4) staged vs (1) cold start".into(), s_c50, s_c99, 10.0),
            (
                "(5) pre-created vs (2) runc restore".into(),
                p_r50,
                p_r99,
                4.0,
            ),
            (
                "(5) pre-created vs (1) cold start".into(),
                p_c50,
                p_c99,
                10.0,
            ),
        ]
    }

    fn markdown(&self) -> String {
        let f = &self.facts;
        let mut s = String::new();
        let _ = writeln!(s, "# Restore benchmark: time to first response\n");
        let _ = writeln!(
            s,
            "Reference function (`{IMAGE}`, Python: numpy + pandas imported, 48 MB of \
             state, {:.0} MiB resident when warm; HTTP on 127.0.0.1), \
             `benches/restore.rs` via `bash hack/bench.sh`. Clock: from the first request to \
             containerd for the instance (Tasks.Start for (5)) to its first HTTP 200. Modes \
             interleaved round-robin, {} rounds, {:.0} s in all. Every restore answered from \
             its checkpoint's state (count {}), every cold start with count 1.\n",
            self.rss_mib,
            self.iterations,
            self.wall.as_secs_f64(),
            WARM_REQUESTS + 1
        );
        let _ = writeln!(
            s,
            "| mode | n | p50 ms | p99 ms | min ms | max ms | mean ms |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
        for (m, st) in MODES.iter().zip(&self.stats) {
            let _ = writeln!(
                s,
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
                m.describe(),
                st.n,
                st.p50,
                st.p99,
                st.min,
                st.max,
                st.mean
            );
        }
        let _ = writeln!(
            s,
            "\np99 is the nearest-rank 99th percentile: with {} samples, the slowest one.\n",
            self.iterations
        );
        if self.warmup.is_empty() {
            let _ = writeln!(
                s,
                "No warm-up round (`REKINDLE_BENCH_WARMUP=0`): the first restore of each \
                 image, which records its working set, is among the samples.\n"
            );
        } else {
            let times: Vec<String> = MODES
                .iter()
                .zip(&self.warmup)
                .map(|(m, t)| format!("{} {t:.1}", m.name()))
                .collect();
            let _ = writeln!(
                s,
                "Warm-up round, one of each mode before the rounds and not counted (ms): {}. \
                 The first restore of a stored image on a node records its working set: \
                 the pages its first request touches, served by CRIU's lazy-pages daemon one \
                 fault at a time; every later restore of the image has them copied in before \
                 the process resumes.\n",
                times.join(", ")
            );
        }
        let _ = writeln!(
            s,
            "Where the time goes (p50 of each phase, ms): container = Containers.Create; \
             snapshot = Snapshots.Prepare (the writable rootfs); task = Tasks.Create (the \
             shim's start and Create; Rekindle prepares the stored image there); start = \
             Tasks.Start (the restore, or runc start); respond = from Start's answer to the \
             first HTTP 200.\n"
        );
        let _ = write!(s, "| mode |");
        for (name, _) in PHASES {
            let _ = write!(s, " {name} |");
        }
        let _ = writeln!(s, "\n|---|{}", "---:|".repeat(PHASES.len()));
        for (m, samples) in MODES.iter().zip(&self.samples) {
            let _ = write!(s, "| {} |", m.name());
            for (_, phase) in PHASES {
                let _ = write!(s, " {:.1} |", phase_p50(samples, phase));
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(
            s,
            "\nInside a Rekindle restore (p50 ms, from the shim's log line `restored by the \
             direct engine`): criu = CRIU's restore from the shim's request to its pre-resume \
             step (it starts during Tasks.Create and, for a task created ahead, ends there); \
             resume = from Start's go to CRIU's answer, the tree resumed.\n"
        );
        let _ = write!(s, "| mode |");
        for (name, _) in SHIM_PHASES {
            let _ = write!(s, " {name} |");
        }
        let _ = writeln!(s, "\n|---|{}", "---:|".repeat(SHIM_PHASES.len()));
        for (m, samples) in MODES.iter().zip(&self.samples) {
            if !m.direct() {
                continue;
            }
            let _ = write!(s, "| {} |", m.name());
            for (_, phase) in SHIM_PHASES {
                let _ = write!(s, " {:.1} |", phase_p50(samples, phase));
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(s, "\nRatios (how many times faster; the issue's target):\n");
        let _ = writeln!(s, "| comparison | at p50 | at p99 | target |");
        let _ = writeln!(s, "|---|---:|---:|---:|");
        for (what, p50, p99, target) in self.ratios() {
            let _ = writeln!(
                s,
                "| {what} | {p50:.2}x | {p99:.2}x | {target:.0}x ({}) |",
                if p50 >= target { "met" } else { "not met" }
            );
        }
        let staged = self.stat(Mode::RekindleStaged);
        let disk = self.stat(Mode::RekindleDisk);
        let _ = writeln!(
            s,
            "\nAbsolute targets: (4) p50 ≤ 30 ms: {:.1} ms ({}); (4) p99 ≤ 60 ms: {:.1} ms ({}); \
             (3) p50 ≤ 100 ms: {:.1} ms ({}).",
            staged.p50,
            met(staged.p50 <= 30.0),
            staged.p99,
            met(staged.p99 <= 60.0),
            disk.p50,
            met(disk.p50 <= 100.0)
        );
        let _ = writeln!(s, "\nImage: {}.", self.sources_desc);
        let _ = writeln!(
            s,
            "\nMachine: {}{}. Load average (1 min) {:.2} before the rounds, {:.2} after.",
            facts_joined(f, "; "),
            self.commit
                .as_deref()
                .map(|c| format!("; Rekindle {c}"))
                .unwrap_or_default(),
            self.load.0,
            self.load.1
        );
        s
    }

    fn json(&self) -> serde_json::Value {
        let f = &self.facts;
        let modes: Vec<serde_json::Value> = MODES
            .iter()
            .zip(&self.stats)
            .zip(&self.samples)
            .map(|((m, st), samples)| {
                serde_json::json!({
                    "mode": m.name(),
                    "description": m.describe(),
                    "n": st.n,
                    "p50_ms": st.p50,
                    "p99_ms": st.p99,
                    "min_ms": st.min,
                    "max_ms": st.max,
                    "mean_ms": st.mean,
                    "container_p50_ms": phase_p50(samples, |x| x.container),
                    "snapshot_p50_ms": phase_p50(samples, |x| x.snapshot),
                    "task_p50_ms": phase_p50(samples, |x| x.task),
                    "start_p50_ms": phase_p50(samples, |x| x.start),
                    "respond_p50_ms": phase_p50(samples, |x| x.respond),
                    "criu_p50_ms": phase_p50(samples, |x| x.criu),
                    "resume_p50_ms": phase_p50(samples, |x| x.resume),
                    "samples_ms": samples.iter().map(|x| x.total).collect::<Vec<_>>(),
                    "samples_container_ms": samples.iter().map(|x| x.container).collect::<Vec<_>>(),
                    "samples_snapshot_ms": samples.iter().map(|x| x.snapshot).collect::<Vec<_>>(),
                    "samples_task_ms": samples.iter().map(|x| x.task).collect::<Vec<_>>(),
                    "samples_start_ms": samples.iter().map(|x| x.start).collect::<Vec<_>>(),
                    "samples_respond_ms": samples.iter().map(|x| x.respond).collect::<Vec<_>>(),
                    "samples_criu_ms": samples.iter().map(|x| x.criu).collect::<Vec<_>>(),
                    "samples_resume_ms": samples.iter().map(|x| x.resume).collect::<Vec<_>>(),
                })
            })
            .collect();
        let ratios: Vec<serde_json::Value> = self
            .ratios()
            .into_iter()
            .map(|(what, p50, p99, target)| {
                serde_json::json!({"comparison": what, "p50": p50, "p99": p99, "target": target})
            })
            .collect();
        serde_json::json!({
            "benchmark": "restore: time to first response",
            "function": IMAGE,
            "function_rss_mib": self.rss_mib,
            "iterations_per_mode": self.iterations,
            "warmup_ms": MODES
                .iter()
                .zip(&self.warmup)
                .map(|(m, t)| (m.name().to_string(), serde_json::json!(t)))
                .collect::<serde_json::Map<_, _>>(),
            "wall_s": self.wall.as_secs_f64(),
            "image": self.sources_desc,
            "modes": modes,
            "ratios": ratios,
            "machine": {
                "kernel": f.kernel,
                "criu": f.criu,
                "containerd": f.containerd,
                "runc": f.runc,
                "cores": f.cores,
                "cpu": f.cpu,
                "memory": f.memory,
                "cgroup_migration": f.cgroup_migration,
                "cpuid": f.cpuid,
                "fresh_memory": f.fresh_memory,
                "idle": f.idle,
                "shim": f.shim,
            },
            "loadavg_1m": {"before": self.load.0, "after": self.load.1},
            "commit": self.commit,
        })
    }
}

fn phase_p50(samples: &[Sample], phase: impl Fn(&Sample) -> f64) -> f64 {
    Stats::of(&samples.iter().map(phase).collect::<Vec<_>>()).p50
}

fn loadavg() -> f64 {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "not met"
    }
}
