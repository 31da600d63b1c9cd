//! What the restore-daemon's fault tests (faults.rs, disk_full.rs) share: the real
//! daemon started on a temp store, image sources of noise, and tree comparisons.
// Each test file uses its own part of this.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long any wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A daemon on `<dir>/restored.sock`, store `<dir>/store`, staging area `<dir>/stage`.
/// Dropped: SIGTERM, which also unmounts the staging tmpfs.
pub struct Daemon {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub store: PathBuf,
    pub stage: PathBuf,
    /// Starts so far, to keep each run's log.
    pub runs: u32,
}

impl Daemon {
    pub fn start(dir: &Path) -> Daemon {
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

    pub fn log_path(&self) -> PathBuf {
        self.dir.join(format!("restored-{}.log", self.runs))
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Waits for a line of this run's log holding every one of `needles` (the daemon
    /// may accept connections a moment before it logs that it listens).
    pub fn wait_for_log(&self, needles: &[&str]) {
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
    pub fn restart(&mut self) {
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
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    }

    pub fn stop(&mut self) -> std::process::ExitStatus {
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
        // The daemon unmounts its staging tmpfs when it stops, not when it was killed or
        // died, and a test that failed between a kill and a restart leaves it mounted.
        let _ = nix::mount::umount2(&self.stage, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Writes `size` bytes of xorshift noise: incompressible for LZ4 and zstd alike.
pub fn noise(path: &Path, size: usize, seed: u64) {
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
pub fn image_source(dir: &Path, pages: usize, seed: u64) -> PathBuf {
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
pub fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    pub fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
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
pub fn assert_same_tree(got: &Path, want: &Path) {
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

pub fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

pub fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}
