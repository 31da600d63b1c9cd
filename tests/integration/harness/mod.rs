//! Test harness: one private containerd per test binary, one story per test.
//!
//! - [`containerd::PrivateContainerd`] starts a containerd of our own (root, state and
//!   sockets in a temp dir), with the shim under test first on its PATH.
//! - The first test to run starts it and imports the reference image with `ctr images
//!   import` (setup only); every container lifecycle call then goes through
//!   containerd-client (gRPC). The containerd is shared by the tests of this binary
//!   (they run in parallel, each with its own container ids in the namespace
//!   [`NAMESPACE`]) and stopped at process exit, where the shims and mounts it left
//!   are reported as leaks (the process then exits non-zero).
//! - [`story`] runs one test: its body, then a best-effort cleanup of whatever
//!   containers it created, then the [leak check](leaks) for each of them, which fails
//!   the test if anything was left behind.
//!
//! Environment:
//! - `REKINDLE_TEST_RUNTIME`: runtime under test (default `io.containerd.rekindle.v2`;
//!   `io.containerd.runc.v2` validates the harness itself).
//! - `REKINDLE_CONTAINERD`: `2` (default) or `1.6`.
//! - `REKINDLE_CACHE`: where `hack/setup.sh` put containerd and the image (default
//!   /var/cache/rekindle).
//! - `REKINDLE_IT_KEEP=1`: keep the temp dir (containerd.log, state) after the run.
//! - `REKINDLE_IT_LOG_LEVEL`: containerd's log level (default debug).
//! - `REKINDLE_IT_STORY_TIMEOUT`: seconds one story may take (default 120).

pub mod client;
pub mod containerd;
pub mod gateway;
pub mod http;
pub mod leaks;
pub mod metrics;
pub mod restore;
pub mod stdio;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

pub use client::Ctx;
use containerd::{Paths, PrivateContainerd, Version};

/// The containerd namespace all tests share (images are per namespace, so one import
/// serves every test).
pub const NAMESPACE: &str = "rekindle-it";
/// Name of the reference function image in `$REKINDLE_CACHE/images/python-fn.oci.tar`.
pub const IMAGE: &str = "docker.io/rekindle/python-fn:latest";
pub const SNAPSHOTTER: &str = "overlayfs";
pub const REKINDLE_RUNTIME: &str = "io.containerd.rekindle.v2";

/// Generous bound for one RPC: a hang fails the test instead of the whole run.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// The runtime under test: `REKINDLE_TEST_RUNTIME`, default `io.containerd.rekindle.v2`.
pub fn runtime_under_test() -> String {
    std::env::var("REKINDLE_TEST_RUNTIME")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| REKINDLE_RUNTIME.to_string())
}

/// What every test shares: the paths of the running containerd.
pub struct Shared {
    pub paths: Paths,
}

static SHARED: OnceLock<std::result::Result<Shared, String>> = OnceLock::new();
static OWNER: Mutex<Option<PrivateContainerd>> = Mutex::new(None);
/// Whether runc's default state dir for our namespace existed before the run.
static DEFAULT_RUNC_DIR_EXISTED: AtomicBool = AtomicBool::new(true);
/// When the shared containerd started: a containerd checkpoint copy
/// (`<tmp>/ctrd-checkpoint<digits>`) made after it and still there at exit leaked.
static RUN_STARTED: OnceLock<std::time::SystemTime> = OnceLock::new();

/// containerd's checkpoint copies (Tasks.Create with a checkpoint) made since `since`
/// in the temp dirs containerd uses (`$XDG_RUNTIME_DIR`, else the temp dir).
fn checkpoint_copies_since(since: std::time::SystemTime) -> Vec<std::path::PathBuf> {
    let mut dirs = vec![std::env::temp_dir()];
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR") {
        dirs.push(x.into());
    }
    dirs.iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("ctrd-checkpoint")
        })
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since)
        })
        .map(|e| e.path())
        .collect()
}

/// runc's default `--root` for [`NAMESPACE`]. The tests hand every task a runc root in
/// the temp dir (`containerd.runc.v1.Options.root`), so nothing should appear here.
fn default_runc_dir() -> std::path::PathBuf {
    std::path::Path::new("/run/containerd/runc").join(NAMESPACE)
}

/// The shared containerd, started (and the image imported) by the first caller.
pub fn shared() -> &'static Shared {
    let res = SHARED.get_or_init(|| start_shared().map_err(|e| format!("{e:#}")));
    match res {
        Ok(s) => s,
        Err(e) => panic!("test environment unavailable: {e}"),
    }
}

fn start_shared() -> Result<Shared> {
    let runtime = runtime_under_test();
    if runtime == REKINDLE_RUNTIME {
        let shim = containerd::shim_dir()?.join(containerd::SHIM_BINARY);
        if !shim.is_file() {
            bail!(
                "{} is missing: run `cargo build --workspace` first (same profile as the tests), \
                 or set REKINDLE_TEST_RUNTIME=io.containerd.runc.v2 to test the harness alone",
                shim.display()
            );
        }
    }
    let image_tar = containerd::cache_dir().join("images/python-fn.oci.tar");
    if !image_tar.is_file() {
        bail!("{} is missing: run hack/setup.sh", image_tar.display());
    }

    DEFAULT_RUNC_DIR_EXISTED.store(default_runc_dir().exists(), Ordering::SeqCst);
    let _ = RUN_STARTED.set(std::time::SystemTime::now());
    let cd = PrivateContainerd::start(Version::from_env()?)?;
    let paths = cd.paths.clone();
    // SAFETY: registering a plain extern "C" fn; it runs once at process exit.
    unsafe { libc::atexit(stop_shared_at_exit) };
    *OWNER.lock().unwrap() = Some(cd);
    import_image(&image_tar)?;
    eprintln!(
        "[rekindle-it] runtime under test: {runtime}; containerd dir {}",
        paths.dir.display()
    );
    Ok(Shared { paths })
}

/// `ctr images import` of the reference image into [`NAMESPACE`], unpacked for the
/// overlayfs snapshotter. This is setup, not the code under test.
fn import_image(tar: &std::path::Path) -> Result<()> {
    let guard = OWNER.lock().unwrap();
    let cd = guard.as_ref().context("containerd gone")?;
    let out = cd
        .ctr(NAMESPACE)
        .args(["images", "import", "--snapshotter", SNAPSHOTTER])
        .arg(tar)
        .output()
        .context("running ctr images import")?;
    if !out.status.success() {
        bail!(
            "ctr images import {} failed ({}): {}{}",
            tar.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

extern "C" fn stop_shared_at_exit() {
    let cd = OWNER.lock().map(|mut g| g.take()).unwrap_or(None);
    if let Some(mut cd) = cd {
        let mut leaked = cd.shutdown();
        let runc_dir = default_runc_dir();
        if !DEFAULT_RUNC_DIR_EXISTED.load(Ordering::SeqCst) && runc_dir.exists() {
            let inside: Vec<String> = std::fs::read_dir(&runc_dir)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            let msg = format!(
                "{} was created during the run (contents: {inside:?}): some runc call ignored \
                 the runc root given in the task's containerd.runc.v1.Options",
                runc_dir.display()
            );
            eprintln!("[rekindle-it] LEAK: {msg}");
            leaked.push(msg);
            let _ = std::fs::remove_dir(&runc_dir);
        }
        if let Some(since) = RUN_STARTED.get() {
            for dir in checkpoint_copies_since(*since) {
                let msg = format!(
                    "{} (containerd's copy of a checkpoint for a restore) was left: the \
                     shim removes it at Delete",
                    dir.display()
                );
                eprintln!("[rekindle-it] LEAK: {msg}");
                leaked.push(msg);
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        leaks::remove_empty_namespace_cgroups(NAMESPACE);
        drop(cd);
        if !leaked.is_empty() {
            eprintln!(
                "[rekindle-it] FAILED: resources leaked past the end of the run (listed above)"
            );
            // SAFETY: _exit is the one way to set the status from an atexit handler.
            unsafe { libc::_exit(1) };
        }
    }
}

/// Runs one user story against the shared containerd, then cleans up and checks for
/// leaks. The test fails if the body fails or panics, or if anything leaked.
pub fn story<F, Fut>(name: &str, body: F)
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    if let Err(report) = try_story(name, body) {
        panic!("{report}");
    }
}

/// [`story`], returning the failure report instead of panicking with it.
pub fn try_story<F, Fut>(name: &str, body: F) -> std::result::Result<(), String>
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    try_story_on(name, shared(), body)
}

/// A containerd of a story's own (not the shared one), with the reference image
/// imported: for stories that do to containerd what the others must not see (restart
/// it). Run the story on it with [`try_story_on`] (or `restore::restore_story_on`);
/// drop or [`PrivateContainerd::shutdown`] it afterwards (that reports its leaks).
#[allow(dead_code)] // tests/integration/containerd_restart.rs only
pub fn own_containerd() -> Result<(PrivateContainerd, Shared)> {
    own_containerd_with_env(&[])
}

/// [`own_containerd`] with `env` added to containerd's (and so its shims')
/// environment.
#[allow(dead_code)] // tests/integration/criu_missing.rs and own_containerd only
pub fn own_containerd_with_env(env: &[(&str, &str)]) -> Result<(PrivateContainerd, Shared)> {
    let image_tar = containerd::cache_dir().join("images/python-fn.oci.tar");
    if !image_tar.is_file() {
        bail!("{} is missing: run hack/setup.sh", image_tar.display());
    }
    let cd = PrivateContainerd::start_with_env(Version::from_env()?, env)?;
    cd.import_image_into(NAMESPACE, &image_tar)?;
    let shared = Shared {
        paths: cd.paths.clone(),
    };
    Ok((cd, shared))
}

/// [`try_story`] against the containerd `shared` describes.
pub fn try_story_on<F, Fut>(name: &str, shared: &Shared, body: F) -> std::result::Result<(), String>
where
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let name = name.to_string();
    let failure: Option<String> = rt.block_on(async move {
        let ctx = match Ctx::connect(&name, shared).await {
            Ok(c) => c,
            Err(e) => return Some(format!("connecting to containerd: {e:#}")),
        };
        let limit = story_timeout();
        let task = tokio::spawn(body(ctx.clone()));
        let abort = task.abort_handle();
        let outcome = match tokio::time::timeout(limit, task).await {
            Ok(joined) => joined,
            Err(_) => {
                abort.abort();
                Ok(Err(anyhow::anyhow!(
                    "did not finish within {limit:?} (REKINDLE_IT_STORY_TIMEOUT)"
                )))
            }
        };
        let mut problems = Vec::new();
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => problems.push(format!("{name} failed: {e:#}")),
            Err(join) if join.is_panic() => {
                let payload = join.into_panic();
                let msg = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panic".to_string());
                problems.push(format!("{name} panicked: {msg}"));
            }
            Err(join) => problems.push(format!("{name} did not finish: {join}")),
        }
        let failed_body = !problems.is_empty();
        let cleanup_notes = ctx.cleanup().await;
        let leaked = ctx.check_leaks().await;
        if !leaked.is_empty() {
            problems.push(format!(
                "LEAK: {name} left resources behind after its containers were deleted:\n  {}",
                leaked.join("\n  ")
            ));
        }
        if problems.is_empty() {
            return None;
        }
        let mut report = problems.join("\n\n");
        if failed_body && !cleanup_notes.is_empty() {
            report.push_str("\n\ncleanup after the failure:\n  ");
            report.push_str(&cleanup_notes.join("\n  "));
        }
        report.push_str(&ctx.diagnostics());
        Some(report)
    });
    match failure {
        None => Ok(()),
        Some(report) => Err(report),
    }
}

/// Bound on one story's body: `REKINDLE_IT_STORY_TIMEOUT` seconds, default 120.
fn story_timeout() -> Duration {
    let secs = std::env::var("REKINDLE_IT_STORY_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    Duration::from_secs(secs)
}

/// Shorthand for tests: `Duration::from_secs(n)`.
pub const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Shorthand for tests: `Duration::from_millis(n)`.
pub const fn millis(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A tonic status code, if the error (anywhere in its chain) is a tonic::Status.
pub fn grpc_code(err: &anyhow::Error) -> Option<containerd_client::tonic::Code> {
    err.chain()
        .find_map(|e| e.downcast_ref::<containerd_client::tonic::Status>())
        .map(containerd_client::tonic::Status::code)
}

/// Puts every instance an in-process agent made so far under the story's clean-up and
/// leak check, each once (`adopted`: those already put).
#[allow(dead_code)] // the agent stories only
pub fn adopt_agent_instances(
    ctx: &Ctx,
    driver: &rekindle_agent::driver::ContainerdDriver,
    agent: &rekindle_agent::daemon::Agent,
    adopted: &mut Vec<String>,
) {
    for id in agent.pool.instances_made() {
        if !adopted.contains(&id) {
            ctx.adopt(&id, &driver.cgroups_path(&id));
            adopted.push(id);
        }
    }
}

/// An in-process agent's configuration for a story: its id (`it-<tag>`, so that at
/// start it adopts or removes only its own instances) and everything it touches —
/// admin and hook sockets, network namespaces, instance logs, kept functions — under
/// `<story dir>/<tag>-…`: never the host's /run/rekindle or /var/lib/rekindle, never
/// another story's (an agent sweeps its netns_dir at start). On the story's containerd,
/// runc root and `restored_socket`; metrics on a port the system picks; the rest is
/// `Config::default()`, for the story to override.
#[allow(dead_code)] // the agent stories only
pub fn agent_config(
    ctx: &Ctx,
    tag: &str,
    restored_socket: &std::path::Path,
) -> rekindle_agent::config::Config {
    let dir = &ctx.paths().dir;
    rekindle_agent::config::Config {
        agent_id: format!("it-{tag}"),
        metrics_addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_socket: dir.join(format!("{tag}-admin.sock")),
        hook_socket: dir.join(format!("{tag}-hook.sock")),
        restored_socket: restored_socket.to_path_buf(),
        containerd_address: ctx.paths().grpc.clone(),
        containerd_namespace: NAMESPACE.to_string(),
        snapshotter: SNAPSHOTTER.to_string(),
        runc_root: Some(ctx.paths().runc_root.clone()),
        instance_log_dir: dir.join(format!("{tag}-logs")),
        netns_dir: dir.join(format!("{tag}-netns")),
        functions_dir: dir.join(format!("{tag}-functions")),
        ..rekindle_agent::config::Config::default()
    }
}
