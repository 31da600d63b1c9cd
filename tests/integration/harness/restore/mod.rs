//! Restores: a private `rekindle-restored` per story, function containers made the way
//! restores need them, containerd's checkpoint calls, and HTTP into a container's own
//! network namespace. Used by `checkpoint_restore.rs` and by `benches/restore.rs`.
//!
//! - [`restore_story`] runs a story with a fresh rekindle-restored (temp store and
//!   staging area) on [`restored_socket`], and checks after the story that the daemon
//!   holds no restore lease, no lease directory and no half-written file, and that it
//!   stops cleanly (staging tmpfs unmounted). [`restore_story_daemon_down`] runs one with
//!   nothing listening there. These stories take turns, one at a time per test binary,
//!   because they share that socket path: containerd hands its environment to the shims
//!   it starts, and the shared containerd starts once, so `REKINDLE_RESTORED_SOCKET` is
//!   the same for the whole process. It is put into this process's environment before
//!   `main` (see [`EXPORT_RESTORED_SOCKET`]), so the containerd that the first test
//!   starts inherits it.
//! - [`FunctionSpec`] / [`Function`]: the reference function in a container of its own
//!   making — annotations (`io.rekindle.*`), a network namespace of its own (so several
//!   instances restored from one image can all listen on the port they had), an explicit
//!   runtime, a checkpoint to restore from — and the task calls the stories use on it.
//! - [`NetNs`]: that network namespace is made by the test before the container, as a
//!   pod's is made before its containers (CNI), and named in the spec by path: runc then
//!   checkpoints it as external (`--external net[..]:extRootNetNS`) and restores the
//!   process into the namespace the new container names. (A namespace runc creates
//!   itself does not survive a checkpoint here: runc 1.1.5 + CRIU 4.2.1 write no
//!   `netns`/`netdev`/`ifaddr` image for it, and the restored process finds its loopback
//!   down — "Network is unreachable".)
//! - [`checkpoint`]: `Tasks.Checkpoint` as containerd's Go client makes it (pause, dump,
//!   resume), under a containerd lease that keeps the checkpoint's content.
//! - [`fixture_image`]: the reference function checkpointed once per test binary (3
//!   requests answered), kept as an exported archive and imported into each story's
//!   daemon.
//!
//! Files: `daemon.rs` (rekindle-restored), `function.rs` (function containers and their
//! tasks), `checkpoint.rs` (Tasks.Checkpoint, leases, content), `netns.rs` (network
//! namespaces, HTTP inside them), `events.rs` (task events); this one: the daemon's
//! socket, the story runners and the fixture.

mod checkpoint;
mod daemon;
mod events;
mod function;
mod netns;

pub use checkpoint::*;
pub use daemon::*;
pub use events::*;
pub use function::*;
pub use netns::*;

use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use anyhow::{bail, Context as _, Result};

use super::{secs, try_story, Ctx};

/// What the shim reads to find rekindle-restored.
pub const RESTORED_SOCKET_ENV: &str = "REKINDLE_RESTORED_SOCKET";
/// The shim's annotations (shim/src/annotations.rs).
pub const IMAGE_ANNOTATION: &str = "io.rekindle.image";
pub const FALLBACK_ANNOTATION: &str = "io.rekindle.fallback";
pub const STORE_AS_ANNOTATION: &str = "io.rekindle.checkpoint.store-as";
pub const REPLACE_ANNOTATION: &str = "io.rekindle.checkpoint.replace";

/// containerd's checkpoint media types (`images.MediaTypeContainerd1Checkpoint*`).
pub const CHECKPOINT_MEDIA_TYPE: &str =
    "application/vnd.containerd.container.criu.checkpoint.criu.tar";
pub const CHECKPOINT_CONFIG_MEDIA_TYPE: &str =
    "application/vnd.containerd.container.checkpoint.config.v1+proto";

const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const RUNC_OPTIONS_TYPE: &str = "containerd.runc.v1.Options";
/// The options type containerd 2 accepts in `Tasks.Checkpoint` for every runtime
/// (`getCheckpointPath` refuses any other); containerd 1.6 passes whatever it gets to a
/// runtime it does not know. Our shim decodes this one.
pub const CHECKPOINT_OPTIONS_TYPE: &str = "containerd.runc.v1.CheckpointOptions";

/// Port of the function in a network namespace of its own (any port would do: nothing
/// else listens there).
pub const NETNS_PORT: u16 = 8080;
/// Requests the fixture function answered before its checkpoint: a restore of it
/// answers its first request with `FIXTURE_COUNT + 1`.
pub const FIXTURE_COUNT: u64 = 3;
/// MB of state the fixture function builds (`STATE_MB`; the reference function's
/// default is 60). Smaller, because the tests run the debug build of rekindle-restored,
/// which hashes and compresses at a few tens of MB/s: every store, import and unstaged
/// restore of the fixture pays for its size.
pub const FIXTURE_STATE_MB: u64 = 16;

// The daemon's socket, in the environment before main

/// `/tmp/rkrd-<pid>`: this process's daemon directories, its socket and the fixture.
pub fn restored_dir() -> PathBuf {
    PathBuf::from(format!("/tmp/rkrd-{}", std::process::id()))
}

/// Where this process's rekindle-restored listens (the shims' `REKINDLE_RESTORED_SOCKET`).
pub fn restored_socket() -> PathBuf {
    restored_dir().join("restored.sock")
}

/// Runs before `main` (an ELF `.init_array` entry, single-threaded): exports
/// `REKINDLE_RESTORED_SOCKET=<restored_socket()>`, so every containerd this process
/// starts — and every shim those start — finds the test's daemon and never the node's.
/// The harness starts containerd with the test process's environment (only PATH is
/// set explicitly), and whichever test runs first starts it: there is no later moment
/// to set it. (One `.env(RESTORED_SOCKET_ENV, ..)` in `PrivateContainerd::start` would
/// make this unnecessary.)
#[used]
#[link_section = ".init_array"]
pub static EXPORT_RESTORED_SOCKET: extern "C" fn() = export_restored_socket;

extern "C" fn export_restored_socket() {
    std::env::set_var(RESTORED_SOCKET_ENV, restored_socket());
}

// Stories

/// Stories that use the daemon's socket run one at a time.
static TURN: Mutex<()> = Mutex::new(());

/// Runs a story with a fresh rekindle-restored; fails it if the daemon kept anything of
/// the story's restores or did not stop cleanly.
pub fn restore_story<F, Fut>(name: &str, body: F)
where
    F: FnOnce(Ctx, Restored) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    restore_story_inner(name, None, body)
}

/// [`restore_story`] against a containerd of the story's own
/// ([`super::own_containerd`]). Its shims find the daemon as the shared one's do:
/// `REKINDLE_RESTORED_SOCKET` is in this process's environment before main.
#[allow(dead_code)] // tests/integration/containerd_restart.rs only
pub fn restore_story_on<F, Fut>(name: &str, on: &super::Shared, body: F)
where
    F: FnOnce(Ctx, Restored) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    restore_story_inner(name, Some(on), body)
}

fn restore_story_inner<F, Fut>(name: &str, on: Option<&super::Shared>, body: F)
where
    F: FnOnce(Ctx, Restored) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let _turn = TURN.lock().unwrap_or_else(PoisonError::into_inner);
    let daemon = RestoreDaemon::start(&restored_socket())
        .unwrap_or_else(|e| panic!("{name}: starting rekindle-restored: {e:#}"));
    let handle = daemon.handle.clone();
    let outcome = match on {
        Some(shared) => super::try_story_on(name, shared, move |ctx| body(ctx, handle)),
        None => try_story(name, move |ctx| body(ctx, handle)),
    };
    let log = daemon.handle.log_tail(40);
    let left = daemon.stop_and_check();
    let mut report = Vec::new();
    if let Err(r) = outcome {
        report.push(r);
    }
    if !left.is_empty() {
        report.push(format!(
            "LEAK: {name}: rekindle-restored after the story:\n  {}",
            left.join("\n  ")
        ));
    }
    if !report.is_empty() {
        panic!(
            "{}\n\n--- rekindle-restored log (last 40 lines) ---\n{log}",
            report.join("\n\n")
        );
    }
}

/// Runs a story while no rekindle-restored listens on [`restored_socket`].
pub fn restore_story_daemon_down<F, Fut>(name: &str, body: F)
where
    F: FnOnce(Ctx, PathBuf) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let _turn = TURN.lock().unwrap_or_else(PoisonError::into_inner);
    let socket = restored_socket();
    let _ = fs::remove_file(&socket);
    if let Err(report) = try_story(name, move |ctx| body(ctx, socket)) {
        panic!("{report}");
    }
}

/// The stories that need rekindle's restore paths, when another runtime is under test:
/// a message saying so (the caller returns early), else `None`.
pub fn needs_rekindle(ctx: &Ctx, story: &str) -> Option<String> {
    (ctx.runtime() != super::REKINDLE_RUNTIME).then(|| {
        format!(
            "[rekindle-it] {story}: skipped, it needs {} (runtime under test: {})",
            super::REKINDLE_RUNTIME,
            ctx.runtime()
        )
    })
}

// The fixture: the reference function, checkpointed once per test binary

/// The exported archive of the fixture image, once made.
static FIXTURE: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Puts the fixture image into the story's daemon under `name`: the reference function
/// in a network namespace of its own (port [`NETNS_PORT`]), after [`FIXTURE_COUNT`]
/// requests, checkpointed through `Tasks.Checkpoint` and stored by the shim
/// (`io.rekindle.checkpoint.store-as`). Made by the first story that asks (and exported
/// to an archive next to the daemons), imported from that archive by the others.
pub async fn fixture_image(ctx: &Ctx, restored: &Restored, name: &str) -> Result<()> {
    let archive = FIXTURE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    if let Some(archive) = archive {
        restored
            .client()
            .import_image(&archive, Some(name.to_string()))
            .await
            .with_context(|| format!("importing the fixture {}", archive.display()))?;
        return Ok(());
    }
    let f = FunctionSpec::new("fixture")
        .own_netns()
        .env(&format!("STATE_MB={FIXTURE_STATE_MB}"))
        .annotate(STORE_AS_ANNOTATION, name)
        .create(ctx)
        .await
        .context("creating the fixture function")?;
    f.start().await?;
    f.wait_serving(secs(30)).await?;
    for expected in 1..=FIXTURE_COUNT {
        let n = f.count().await?;
        if n != expected {
            bail!("fixture function counted {n}, expected {expected}");
        }
    }
    let ck = f
        .checkpoint(CheckpointOptions::default())
        .await
        .context("checkpointing the fixture function")?;
    ck.release(ctx).await?;
    f.destroy().await?;
    let path = restored_dir().join("fixture.rkimg");
    let _ = fs::remove_file(&path);
    restored
        .client()
        .export_image(name, &path, Some(1))
        .await
        .context("exporting the fixture")?;
    *FIXTURE.lock().unwrap_or_else(PoisonError::into_inner) = Some(path);
    // Removed with the process's daemon directory at exit.
    // SAFETY: registering a plain extern "C" fn.
    unsafe { libc::atexit(remove_restored_dir_at_exit) };
    Ok(())
}

extern "C" fn remove_restored_dir_at_exit() {
    let dir = restored_dir();
    if super::leaks::mounts()
        .iter()
        .all(|m| !Path::new(&m.mount_point).starts_with(&dir))
    {
        let _ = fs::remove_dir_all(&dir);
    }
}

pub(crate) fn is_mounted(path: &Path) -> bool {
    super::leaks::mounts()
        .iter()
        .any(|m| Path::new(&m.mount_point) == path)
}

/// A lazy unmount of `path`; errors (not mounted, gone) are ignored: clean-up.
pub(crate) fn unmount(path: &Path) {
    let _ = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH);
}
