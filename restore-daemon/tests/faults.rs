//! The real `rekindle-restored` killed (SIGKILL) in the middle of an image import, a
//! store (the shim's checkpoint), a prepare_restore that decompresses into a lease
//! directory, a stage, and an export into a user's directory. Each time: the client in flight gets a clear error instead of
//! hanging; the daemon restarted on the same store and staging area lists no half-written
//! image, keeps every earlier image intact (prepared and compared byte for byte), leaves
//! no temporary file or lease directory behind, and does the same operation again.
//!
//! "In the middle" is seen, not guessed: the test polls for the temporary directory the
//! operation writes into (`<store>/.tmp-<name>-*`, `<stage>/.tmp-*`,
//! `<stage>/.leases/.tmp-*`; for an export, which writes an unnamed file, the daemon's
//! open descriptor of it) and kills once the large file has appeared there; the
//! image is large (96 MiB of noise, which neither LZ4 nor zstd shrinks), so the
//! operation lasts seconds in a debug build. Needs root (the daemon mounts its tmpfs).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rekindle_restore_api::{Client, ErrorCode};

/// The large image's pages file.
const BIG_SIZE: usize = 96 << 20;
mod common;
use common::*;

/// What is shared by the tests, made once: the large image's source, the store holding
/// it as the daemon wrote it, and its export archive. Removed when the test process exits.
struct Fixture {
    big_src: PathBuf,
    big_stored: PathBuf,
    big_archive: PathBuf,
}

static FIXTURE_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_fixture() {
    if let Some(dir) = FIXTURE_DIR.get() {
        let _ = fs::remove_dir_all(dir);
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("rekindle-faults-")
            .tempdir()
            .unwrap()
            .keep();
        let dir = fs::canonicalize(dir).unwrap();
        FIXTURE_DIR.set(dir.clone()).unwrap();
        // SAFETY: registers a plain function to run at exit.
        unsafe { libc::atexit(remove_fixture) };
        let big_src = image_source(&dir.join("big-src"), BIG_SIZE, 0x5eed);
        let big_archive = dir.join("big.tar.zst");
        let mut daemon = Daemon::start(&dir.join("maker"));
        let client = Client::new(&daemon.socket);
        // On a thread of its own: the caller may be inside a runtime already.
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    client
                        .store_image("big", &big_src, BTreeMap::new(), None)
                        .await
                        .unwrap();
                    client
                        .export_image("big", &big_archive, Some(1))
                        .await
                        .unwrap();
                })
            });
        });
        assert!(daemon.stop().success());
        Fixture {
            big_src,
            big_stored: daemon.store.join("big"),
            big_archive,
        }
    })
}

/// A test's directory, with a small image `keep` stored through the daemon beforehand
/// and, when `with_big`, the large image copied into its store.
struct Setup {
    dir: PathBuf,
    daemon: Daemon,
    client: Client,
    keep_src: PathBuf,
    /// Last: removed after the daemon stopped and its tmpfs is unmounted.
    _tmp: tempfile::TempDir,
}

async fn setup(with_big: bool) -> Setup {
    let tmp = tempfile::Builder::new()
        .prefix("rekindle-faults-")
        .tempdir()
        .unwrap();
    let dir = fs::canonicalize(tmp.path()).unwrap();
    if with_big {
        let to = dir.join("store/big");
        fs::create_dir_all(&to).unwrap();
        for e in fs::read_dir(&fixture().big_stored).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
    let keep_src = image_source(&dir.join("keep-src"), 1 << 20, 0x6b656570);
    let daemon = Daemon::start(&dir);
    let client = Client::new(&daemon.socket);
    client
        .store_image("keep", &keep_src, BTreeMap::new(), None)
        .await
        .unwrap();
    Setup {
        dir,
        daemon,
        client,
        keep_src,
        _tmp: tmp,
    }
}

/// Polls until `found` returns something, failing if `in_flight` ends first (the
/// operation finished or failed before the kill could land) or at the deadline.
async fn poll_for<T, R: std::fmt::Debug>(
    what: &str,
    in_flight: &tokio::task::JoinHandle<R>,
    mut found: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(t) = found() {
            return t;
        }
        assert!(
            !in_flight.is_finished(),
            "the request ended before {what} was seen"
        );
        assert!(Instant::now() < deadline, "no {what} within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The entry of `dir` whose name starts with `prefix` and that holds `file`.
fn temp_with(dir: &Path, prefix: &str, file: &str) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .find(|e| {
            e.file_name().to_string_lossy().starts_with(prefix) && e.path().join(file).is_file()
        })
        .map(|e| e.path())
}

/// Kills the daemon and checks what the request in flight got: an error naming the
/// daemon and its socket, at once.
async fn kill_and_check_client<T: std::fmt::Debug>(
    daemon: &mut Daemon,
    in_flight: tokio::task::JoinHandle<rekindle_restore_api::client::Result<T>>,
) {
    daemon.kill();
    let result = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the client hangs after the daemon died")
        .unwrap();
    let e = result.expect_err("the request succeeded although the daemon was killed during it");
    // The connection ends without an answer: the client says so, naming the daemon and
    // its socket (not an error code the daemon never sent, not "not running").
    assert!(
        matches!(e, rekindle_restore_api::Error::Closed { .. }),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains("rekindle-restored on"), "{msg}");
    assert!(msg.contains(&*daemon.socket.to_string_lossy()), "{msg}");
    assert!(
        msg.contains("closed the connection without answering"),
        "{msg}"
    );
}

/// After the restart: the store holds exactly the images `want` and nothing being
/// written, the staging area nothing but an empty lease directory, `list` shows exactly
/// `want`, and each image of `verify` is prepared, compared with its source, released.
async fn check_consistent(s: &Setup, want: &[&str], verify: &[(&str, &Path)]) {
    assert_eq!(names(&s.daemon.store), set(want), "store after the restart");
    assert_eq!(
        names(&s.daemon.stage),
        set(&[".leases"]),
        "staging area after the restart"
    );
    assert!(
        names(&s.daemon.stage.join(".leases")).is_empty(),
        "lease directories left after the restart"
    );
    let listed: Vec<String> = s
        .client
        .list_images()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.manifest.name)
        .collect();
    assert_eq!(listed, want, "list after the restart");
    for (name, src) in verify {
        let p = s.client.prepare_restore(name, false).await.unwrap();
        assert!(!p.staged);
        assert_same_tree(&p.image_dir, src);
        assert!(
            s.client
                .release_restore(&p.lease)
                .await
                .unwrap()
                .removed_dir
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_an_import_it_keeps_no_half_imported_image() {
    let fx = fixture();
    let mut s = setup(false).await;
    let store = s.daemon.store.clone();
    let c = s.client.clone();
    let archive = fx.big_archive.clone();
    let in_flight = tokio::spawn(async move { c.import_image(archive, None).await });
    let tmp = poll_for("the import's temporary image", &in_flight, || {
        temp_with(&store, ".tmp-big-", "pages-1.img.lz4")
            .filter(|t| fs::metadata(t.join("pages-1.img.lz4")).unwrap().len() > 0)
    })
    .await;
    kill_and_check_client(&mut s.daemon, in_flight).await;
    assert!(
        tmp.is_dir(),
        "the half-written import is gone before the restart"
    );
    assert!(!store.join("big").exists());

    s.daemon.restart();
    assert!(
        !tmp.exists(),
        "the half-written import survived the restart"
    );
    s.daemon
        .wait_for_log(&["rekindle-restored listening", "\"leftovers_removed\":1"]);
    let e = s.client.get_image("big").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    check_consistent(&s, &["keep"], &[("keep", &s.keep_src)]).await;

    // The same archive imports now.
    let imported = s.client.import_image(&fx.big_archive, None).await.unwrap();
    assert_eq!(imported.manifest.name, "big");
    assert_eq!(names(&store), set(&["big", "keep"]));
    assert!(s.daemon.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_a_store_it_keeps_no_half_stored_image() {
    let fx = fixture();
    let mut s = setup(false).await;
    let store = s.daemon.store.clone();
    let c = s.client.clone();
    let src = fx.big_src.clone();
    let in_flight =
        tokio::spawn(async move { c.store_image("big", src, BTreeMap::new(), None).await });
    let tmp = poll_for("the store's temporary image", &in_flight, || {
        temp_with(&store, ".tmp-big-", "pages-1.img.lz4")
            .filter(|t| fs::metadata(t.join("pages-1.img.lz4")).unwrap().len() > 0)
    })
    .await;
    kill_and_check_client(&mut s.daemon, in_flight).await;
    assert!(
        tmp.is_dir(),
        "the half-written image is gone before the restart"
    );
    assert!(!store.join("big").exists());

    s.daemon.restart();
    assert!(!tmp.exists(), "the half-written image survived the restart");
    s.daemon
        .wait_for_log(&["rekindle-restored listening", "\"leftovers_removed\":1"]);
    let e = s.client.get_image("big").await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    check_consistent(&s, &["keep"], &[("keep", &s.keep_src)]).await;

    // The next checkpoint under that name is stored.
    let next = image_source(&s.dir.join("next-src"), 256 << 10, 2);
    s.client
        .store_image("big", &next, BTreeMap::new(), None)
        .await
        .unwrap();
    check_consistent(
        &s,
        &["big", "keep"],
        &[("big", &next), ("keep", &s.keep_src)],
    )
    .await;
    assert!(s.daemon.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_a_prepare_restore_it_leaves_no_lease_directory() {
    let fx = fixture();
    let mut s = setup(true).await;
    let leases = s.daemon.stage.join(".leases");
    let c = s.client.clone();
    let in_flight = tokio::spawn(async move { c.prepare_restore("big", false).await });
    let tmp = poll_for("the restore's temporary directory", &in_flight, || {
        temp_with(&leases, ".tmp-", "pages-1.img")
    })
    .await;
    kill_and_check_client(&mut s.daemon, in_flight).await;
    assert!(
        tmp.is_dir(),
        "the half-extracted copy is gone before the restart"
    );

    s.daemon.restart();
    assert!(
        !tmp.exists(),
        "the half-extracted copy survived the restart"
    );
    // Both images intact; the next restore of the large one works (and compares).
    check_consistent(
        &s,
        &["big", "keep"],
        &[("big", &fx.big_src), ("keep", &s.keep_src)],
    )
    .await;
    assert!(s.daemon.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_a_stage_it_leaves_nothing_staged() {
    let fx = fixture();
    let mut s = setup(true).await;
    let stage = s.daemon.stage.clone();
    let c = s.client.clone();
    let in_flight = tokio::spawn(async move { c.stage_image("big").await });
    let tmp = poll_for("the stage's temporary directory", &in_flight, || {
        temp_with(&stage, ".tmp-", "pages-1.img")
    })
    .await;
    kill_and_check_client(&mut s.daemon, in_flight).await;
    assert!(
        tmp.is_dir(),
        "the half-staged copy is gone before the restart"
    );
    assert!(!stage.join("big").exists());

    s.daemon.restart();
    assert!(!tmp.exists(), "the half-staged copy survived the restart");
    s.daemon.wait_for_log(&[
        "removed staged images left by a previous run",
        "\"removed\":1",
    ]);
    // `big` is verified by the next stage, byte for byte.
    check_consistent(&s, &["big", "keep"], &[("keep", &s.keep_src)]).await;

    // The next stage works, and a restore uses the staged copy.
    let staged = s.client.stage_image("big").await.unwrap();
    assert!(!staged.already_staged);
    assert_same_tree(&staged.dir, &fx.big_src);
    let p = s.client.prepare_restore("big", false).await.unwrap();
    assert!(p.staged);
    s.client.release_restore(&p.lease).await.unwrap();
    assert!(s.daemon.stop().success());
}

/// The daemon's open descriptor (`/proc/<pid>/fd/<n>`) of an unnamed (`O_TMPFILE`) file
/// in `dir` that holds data already: the kernel shows its target as `<dir>/#<inode>
/// (deleted)`.
fn unnamed_file_in(pid: u32, dir: &Path) -> Option<PathBuf> {
    let prefix = format!("{}/#", dir.display());
    fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|fd| {
            fs::read_link(fd).is_ok_and(|target| {
                let target = target.to_string_lossy();
                target.starts_with(&prefix) && target.ends_with(" (deleted)")
            }) && fs::metadata(fd).is_ok_and(|m| m.is_file() && m.len() > 0)
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_an_export_it_leaves_nothing_in_the_destination() {
    let fx = fixture();
    let mut s = setup(true).await;
    let out = s.dir.join("out");
    fs::create_dir(&out).unwrap();
    let dest = out.join("big.tar.zst");
    let pid = s.daemon.child.as_ref().unwrap().id();
    let c = s.client.clone();
    let to = dest.clone();
    let in_flight = tokio::spawn(async move { c.export_image("big", to, None).await });
    let fd = poll_for("the export's unnamed file", &in_flight, || {
        // Nothing named in the directory while the archive is written.
        let named = names(&out);
        assert!(named.is_empty(), "the export named {named:?} while writing");
        unnamed_file_in(pid, &out)
    })
    .await;
    kill_and_check_client(&mut s.daemon, in_flight).await;
    assert!(!fd.exists(), "the daemon's descriptor outlived it");
    // Nothing to clean, not even by a restart: no archive, no `.partial-*`.
    assert!(
        names(&out).is_empty(),
        "the killed export left {:?}",
        names(&out)
    );

    s.daemon.restart();
    assert!(
        names(&out).is_empty(),
        "after the restart: {:?}",
        names(&out)
    );
    check_consistent(&s, &["big", "keep"], &[("keep", &s.keep_src)]).await;

    // The same export to the same path works now, and its archive imports.
    let exported = s.client.export_image("big", &dest, None).await.unwrap();
    assert_eq!(names(&out), set(&["big.tar.zst"]));
    assert_eq!(exported.bytes, fs::metadata(&dest).unwrap().len());
    let imported = s
        .client
        .import_image(&dest, Some("big-copy".into()))
        .await
        .unwrap();
    assert_eq!(imported.manifest.name, "big-copy");
    check_consistent(
        &s,
        &["big", "big-copy", "keep"],
        &[("big-copy", &fx.big_src)],
    )
    .await;
    assert!(s.daemon.stop().success());
}
