//! The real `rekindle-restored` killed (SIGKILL) in the middle of an image import, a
//! store (the shim's checkpoint), a prepare_restore that decompresses into a lease
//! directory, and a stage. Each time: the client in flight gets a clear error instead of
//! hanging; the daemon restarted on the same store and staging area lists no half-written
//! image, keeps every earlier image intact (prepared and compared byte for byte), leaves
//! no temporary file or lease directory behind, and does the same operation again.
//!
//! "In the middle" is seen, not guessed: the test polls for the temporary directory the
//! operation writes into (`<store>/.tmp-<name>-*`, `<stage>/.tmp-*`,
//! `<stage>/.leases/.tmp-*`) and kills once the large file has appeared there; the
//! image is large (96 MiB of noise, which neither LZ4 nor zstd shrinks), so the
//! operation lasts seconds in a debug build. Needs root (the daemon mounts its tmpfs).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rekindle_restore_api::{Client, ErrorCode};

/// The large image's pages file.
const BIG_SIZE: usize = 96 << 20;
/// How long any wait may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);

/// A daemon on `<dir>/restored.sock`, store `<dir>/store`, staging area `<dir>/stage`.
/// Dropped: SIGTERM, which also unmounts the staging tmpfs.
struct Daemon {
    child: Option<Child>,
    dir: PathBuf,
    socket: PathBuf,
    store: PathBuf,
    stage: PathBuf,
    /// Starts so far, to keep each run's log.
    runs: u32,
}

impl Daemon {
    fn start(dir: &Path) -> Daemon {
        let mut d = Daemon {
            child: None,
            dir: dir.to_path_buf(),
            socket: dir.join("restored.sock"),
            store: dir.join("store"),
            stage: dir.join("stage"),
            runs: 0,
        };
        d.restart();
        d
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("restored-{}.log", self.runs))
    }

    fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Waits for a line of this run's log holding every one of `needles` (the daemon
    /// may accept connections a moment before it logs that it listens).
    fn wait_for_log(&self, needles: &[&str]) {
        let deadline = Instant::now() + DEADLINE;
        while !self
            .log()
            .lines()
            .any(|l| needles.iter().all(|n| l.contains(n)))
        {
            assert!(
                Instant::now() < deadline,
                "no log line with {needles:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the daemon (again) on the same socket, store and staging area, and waits
    /// until it answers.
    fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        self.runs += 1;
        fs::create_dir_all(&self.dir).unwrap();
        let config = self.dir.join("restored.toml");
        fs::write(&config, "lease_ttl_secs = 600\n").unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_rekindle-restored"))
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--store")
            .arg(&self.store)
            .arg("--stage-dir")
            .arg(&self.stage)
            .arg("--log-format")
            .arg("json")
            .stdout(Stdio::null())
            .stderr(fs::File::create(self.log_path()).unwrap())
            .spawn()
            .expect("start rekindle-restored");
        self.child = Some(child);
        let deadline = Instant::now() + DEADLINE;
        // The socket of a killed daemon is still there: wait for an answer, not a file.
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            let exited = self.child.as_mut().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "rekindle-restored did not listen ({exited:?}); log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL: no clean-up of any kind.
    fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        // A test that failed between a kill and a restart leaves the tmpfs mounted.
        let _ = nix::mount::umount2(&self.stage, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Writes `size` bytes of xorshift noise: incompressible for LZ4 and zstd alike.
fn noise(path: &Path, size: usize, seed: u64) {
    let mut f = BufWriter::new(fs::File::create(path).unwrap());
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for c in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len());
        f.write_all(&buf[..n]).unwrap();
        left -= n;
    }
    f.into_inner().unwrap().sync_all().unwrap();
}

/// A CRIU-like image directory: inventory, pagemap and a pages file of `pages` bytes.
fn image_source(dir: &Path, pages: usize, seed: u64) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("inventory.img"), format!("inventory {seed}")).unwrap();
    fs::write(
        dir.join("pagemap-1.img"),
        format!("pagemap {seed}").repeat(50),
    )
    .unwrap();
    noise(&dir.join("pages-1.img"), pages, seed);
    dir.to_path_buf()
}

/// Relative path → bytes of every file under `dir`.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
                out.insert(rel, fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Asserts that `got` holds the same files with the same bytes as `want` (without
/// printing megabytes when they differ).
fn assert_same_tree(got: &Path, want: &Path) {
    let (g, w) = (tree(got), tree(want));
    assert_eq!(
        g.keys().collect::<Vec<_>>(),
        w.keys().collect::<Vec<_>>(),
        "{} and {} hold different files",
        got.display(),
        want.display()
    );
    for (k, v) in &w {
        assert!(
            g[k] == *v,
            "{k} differs between {} and {}",
            got.display(),
            want.display()
        );
    }
}

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

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
