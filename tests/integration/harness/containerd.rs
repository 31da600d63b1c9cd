//! A private containerd started by the tests: its own root, state and sockets in a
//! temporary directory, never /run/containerd or /var/lib/containerd.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use super::leaks;

/// Which containerd the tests run against: `REKINDLE_CONTAINERD=2` (default) or `1.6`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1_6,
    V2,
}

impl Version {
    pub fn from_env() -> Result<Self> {
        match std::env::var("REKINDLE_CONTAINERD").as_deref() {
            Err(_) | Ok("") | Ok("2") => Ok(Version::V2),
            Ok("1.6") => Ok(Version::V1_6),
            Ok(other) => bail!("REKINDLE_CONTAINERD={other:?}: expected `2` or `1.6`"),
        }
    }

    /// Name of the folder under `$REKINDLE_CACHE` that `hack/setup.sh` unpacks it into.
    pub fn dir_name(self) -> &'static str {
        match self {
            Version::V1_6 => "containerd-1.6",
            Version::V2 => "containerd-2",
        }
    }
}

/// `$REKINDLE_CACHE`, where `hack/setup.sh` puts containerd, the test image and friends.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("REKINDLE_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/rekindle"))
}

/// Folder of the shim binary built in the same cargo profile as this test binary:
/// `target/<profile>/deps/integration-<hash>` → `target/<profile>`.
pub fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .with_context(|| format!("no cargo profile dir above {}", exe.display()))
}

pub const SHIM_BINARY: &str = "containerd-shim-rekindle-v2";

/// Where the shim under test is: `REKINDLE_SHIM_DIR` (hack/bench.sh and hack/test.sh
/// point it at the static build of hack/static-shim.sh), else this build's profile
/// dir (target/debug for the tests, target/release for the bench).
pub fn shim_dir() -> Result<PathBuf> {
    match std::env::var_os("REKINDLE_SHIM_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            anyhow::ensure!(
                dir.join(SHIM_BINARY).is_file(),
                "REKINDLE_SHIM_DIR={}: no {SHIM_BINARY} there (hack/static-shim.sh builds one)",
                dir.display()
            );
            Ok(dir)
        }
        None => profile_dir(),
    }
}

/// In each temp dir: the pid of the test process that owns it.
const OWNER_FILE: &str = "owner.pid";
/// In a temp dir kept on purpose (`REKINDLE_IT_KEEP`): not swept by later runs.
const KEEP_FILE: &str = "kept";

/// Every path the private containerd uses. Cheap to clone and share between tests.
#[derive(Clone, Debug)]
pub struct Paths {
    pub version: Version,
    /// The temporary directory holding everything below.
    pub dir: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    pub grpc: PathBuf,
    pub ttrpc: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    /// `--root` that runc gets through the runc options (`<runc_root>/<namespace>/<id>`).
    pub runc_root: PathBuf,
    /// Where the tests put the FIFOs for containers' stdio.
    pub io: PathBuf,
    pub bin_dir: PathBuf,
    pub shim_dir: PathBuf,
    /// Added to containerd's environment, which its shims inherit (e.g. a CRIU that
    /// does not exist, for the story of a node without CRIU).
    pub shim_env: Vec<(String, String)>,
}

impl Paths {
    /// Container `id`'s bundle (in namespace `namespace`): where containerd 2 and 1.6
    /// keep it under their state dir, and where the shim makes its work dirs.
    pub fn bundle(&self, namespace: &str, id: &str) -> PathBuf {
        self.state
            .join("io.containerd.runtime.v2.task")
            .join(namespace)
            .join(id)
    }

    /// The last `n` lines of containerd's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// containerd's log lines that mention any of `needles` (at most `max`, the last ones).
    pub fn log_lines_mentioning(&self, needles: &[String], max: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| needles.iter().any(|n| l.contains(n.as_str())))
            .collect();
        lines[lines.len().saturating_sub(max)..].join("\n")
    }

    /// The last line of containerd's log that the shim `id` wrote (it tags its lines
    /// `id="<id>"`: one shim per container here) and that contains `text`.
    pub fn shim_line(&self, id: &str, text: &str) -> Option<String> {
        let tag = format!(" id=\"{id}\" ");
        fs::read_to_string(&self.log)
            .ok()?
            .lines()
            .rev()
            .find(|l| l.contains(&tag) && l.contains(text))
            .map(str::to_owned)
    }
}

/// A containerd process of our own. Dropping it stops containerd, reports and removes
/// the shims and mounts it left behind, and deletes the temporary directory (set
/// `REKINDLE_IT_KEEP=1` to keep it for a post-mortem).
pub struct PrivateContainerd {
    pub paths: Paths,
    child: Option<Child>,
    /// Dropping the sender lets the thread that spawned containerd end (it holds
    /// containerd's parent-death signal: see [`spawn_from_keeper_thread`]).
    keeper: Option<mpsc::Sender<()>>,
    _tempdir: Option<tempfile::TempDir>,
}

impl PrivateContainerd {
    pub fn start(version: Version) -> Result<Self> {
        Self::start_inner(version, None, &[])
    }

    /// [`PrivateContainerd::start`] with `env` added to containerd's environment (and
    /// so to its shims').
    #[allow(dead_code)] // tests/integration/criu_missing.rs only
    pub fn start_with_env(version: Version, env: &[(&str, &str)]) -> Result<Self> {
        Self::start_inner(version, None, env)
    }

    /// [`PrivateContainerd::start`] with containerd's CRI plugin enabled and configured
    /// by `cri` (the default start keeps CRI disabled): the tests of the Kubernetes path.
    #[allow(dead_code)] // tests/cri.rs; the integration binary has no CRI test
    pub fn start_with_cri(version: Version, cri: &CriSetup) -> Result<Self> {
        Self::start_inner(version, Some(cri), &[])
    }

    fn start_inner(version: Version, cri: Option<&CriSetup>, env: &[(&str, &str)]) -> Result<Self> {
        sweep_stale_dirs();
        let bin_dir = cache_dir().join(version.dir_name()).join("usr/bin");
        let containerd = bin_dir.join("containerd");
        if !containerd.is_file() {
            bail!(
                "{} is missing: run hack/setup.sh (it installs containerd {} under $REKINDLE_CACHE={})",
                containerd.display(),
                version.dir_name(),
                cache_dir().display()
            );
        }
        let shim_dir = shim_dir()?;

        // Short prefix: shim sockets live at <state>/s/<64 hex>, and unix socket paths
        // are limited to 108 bytes.
        let tempdir = tempfile::Builder::new()
            .prefix("rkit-")
            .tempdir_in("/tmp")
            .context("creating the containerd temp dir")?;
        let dir = tempdir.path().to_path_buf();
        fs::write(dir.join(OWNER_FILE), std::process::id().to_string())?;
        let paths = Paths {
            version,
            root: dir.join("root"),
            state: dir.join("state"),
            grpc: dir.join("containerd.sock"),
            ttrpc: dir.join("containerd.sock.ttrpc"),
            config: dir.join("config.toml"),
            log: dir.join("containerd.log"),
            runc_root: dir.join("runc"),
            io: dir.join("io"),
            bin_dir,
            shim_dir,
            shim_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            dir,
        };
        for d in [&paths.root, &paths.state, &paths.runc_root, &paths.io] {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        if let Some(cri) = cri {
            cri.write_files(&paths)?;
        }
        fs::write(&paths.config, config_toml(&paths, cri))
            .with_context(|| format!("writing {}", paths.config.display()))?;

        let log = fs::File::create(&paths.log).context("creating containerd.log")?;
        let cmd = containerd_command(&paths, log)?;
        mount_state_tmpfs(&paths.state)?;
        let (child, keeper) = match spawn_from_keeper_thread(cmd) {
            Ok(spawned) => spawned,
            Err(e) => {
                super::restore::unmount(&paths.state);
                return Err(e).with_context(|| format!("spawning {}", containerd.display()));
            }
        };

        let mut me = PrivateContainerd {
            paths,
            child: Some(child),
            keeper: Some(keeper),
            _tempdir: Some(tempdir),
        };
        if std::env::var_os("REKINDLE_IT_KEEP").is_some() {
            // Keep the directory (and say where it is) instead of deleting it on drop.
            let kept = me._tempdir.take().map(tempfile::TempDir::keep);
            let _ = fs::write(me.paths.dir.join(KEEP_FILE), "");
            eprintln!("[rekindle-it] REKINDLE_IT_KEEP set: keeping {kept:?}");
        }
        me.wait_ready(Duration::from_secs(30))?;
        Ok(me)
    }

    /// Stops containerd (SIGTERM, waits for it to exit) and starts it again with the
    /// same root, state, sockets and config, as an operator's `systemctl restart
    /// containerd` does. The shims and their tasks are left running (no leak check):
    /// the new containerd is expected to reconnect to them. Its log is appended to
    /// the same containerd.log. Only for a story's own containerd
    /// ([`super::own_containerd`]), never the shared one.
    #[allow(dead_code)] // tests/integration/containerd_restart.rs only
    pub fn restart(&mut self) -> Result<()> {
        let mut child = self.child.take().context("containerd is not running")?;
        let pid = child.id() as libc::pid_t;
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("containerd (pid {pid}) ignored SIGTERM for 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(self.keeper.take());
        {
            use std::io::Write as _;
            let mut log = fs::OpenOptions::new().append(true).open(&self.paths.log)?;
            let _ = writeln!(
                log,
                "----- [rekindle-it] containerd restarted by the test -----"
            );
        }
        let log = fs::OpenOptions::new()
            .append(true)
            .open(&self.paths.log)
            .context("opening containerd.log")?;
        let cmd = containerd_command(&self.paths, log)?;
        let (child, keeper) = spawn_from_keeper_thread(cmd).context("respawning containerd")?;
        self.child = Some(child);
        self.keeper = Some(keeper);
        self.wait_ready(Duration::from_secs(30))
    }
}

/// containerd's command line and environment for `paths`, its output to `log`.
fn containerd_command(paths: &Paths, log: fs::File) -> Result<Command> {
    let containerd = paths.bin_dir.join("containerd");
    let mut cmd = Command::new(&containerd);
    cmd.arg("--config")
        .arg(&paths.config)
        .arg("--log-level")
        .arg(std::env::var("REKINDLE_IT_LOG_LEVEL").unwrap_or_else(|_| "debug".into()))
        .env("PATH", search_path(paths))
        // The shims inherit containerd's environment: bound a CRIU restore
        // below the stories' 10 s bound on Start, so a restore that hangs
        // is the shim's error to report, not the harness's.
        .env(
            "REKINDLE_RESTORE_TIMEOUT_MS",
            std::env::var("REKINDLE_RESTORE_TIMEOUT_MS").unwrap_or_else(|_| "5000".into()),
        )
        // The shims' recorded working sets stay in this run's dir, not the
        // host's /var/lib/rekindle.
        .env("REKINDLE_WORKING_SETS", paths.dir.join("working-sets"))
        // Each direct restore's CRIU logs, kept past its bundle (REKINDLE_IT_KEEP=1
        // keeps this dir).
        .env("REKINDLE_CRIU_LOGS_DIR", paths.dir.join("criu-logs"))
        .envs(paths.shim_env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    Ok(cmd)
}

impl PrivateContainerd {
    /// Waits until containerd answers a Version call on its socket.
    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let deadline = Instant::now() + timeout;
        let mut last_err = String::from("socket not created yet");
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "containerd exited at start-up with {status}; tail of {}:\n{}",
                    self.paths.log.display(),
                    self.paths.log_tail(40)
                );
            }
            if self.paths.grpc.exists() {
                let grpc = self.paths.grpc.clone();
                let res = rt.block_on(async move {
                    let channel = containerd_client::connect(&grpc).await?;
                    let mut version = containerd_client::Client::from(channel).version();
                    let v = version.version(()).await?.into_inner();
                    anyhow::Ok(v)
                });
                match res {
                    Ok(v) => {
                        eprintln!(
                            "[rekindle-it] containerd {} ({}) ready at {}",
                            v.version,
                            v.revision,
                            self.paths.grpc.display()
                        );
                        return Ok(());
                    }
                    Err(e) => last_err = format!("{e:#}"),
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "containerd did not answer on {} within {timeout:?} ({last_err}); tail of {}:\n{}",
            self.paths.grpc.display(),
            self.paths.log.display(),
            self.paths.log_tail(40)
        )
    }

    /// `ctr` of the same containerd, pointed at our socket.
    pub fn ctr(&self, namespace: &str) -> Command {
        let mut cmd = Command::new(self.paths.bin_dir.join("ctr"));
        cmd.arg("--address")
            .arg(&self.paths.grpc)
            .arg("--namespace")
            .arg(namespace)
            .env("PATH", search_path(&self.paths));
        cmd
    }

    /// `ctr images import` of the OCI archive `tar` into `namespace`, unpacked for
    /// [`super::SNAPSHOTTER`] (setup, as `hack/setup.sh`'s image is imported for the
    /// other tests; CRI sees images of [`CRI_NAMESPACE`]).
    #[allow(dead_code)] // tests/cri.rs
    pub fn import_image_into(&self, namespace: &str, tar: &Path) -> Result<()> {
        let out = self
            .ctr(namespace)
            .args(["images", "import", "--snapshotter", super::SNAPSHOTTER])
            .arg(tar)
            .output()
            .context("running ctr images import")?;
        if !out.status.success() {
            bail!(
                "ctr -n {namespace} images import {} failed ({}): {}{}",
                tar.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Stops containerd and cleans up after it. Returns what had leaked: shims still
    /// running, mounts left under the temp dir. Those are removed, but reported.
    pub fn shutdown(&mut self) -> Vec<String> {
        let Some(mut child) = self.child.take() else {
            return Vec::new();
        };
        let pid = child.id() as libc::pid_t;
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Ok(None) = child.try_wait() {
            eprintln!("[rekindle-it] containerd ignored SIGTERM for 10 s: SIGKILL");
            let _ = child.kill();
            let _ = child.wait();
        }
        drop(self.keeper.take());

        let leaked = leaks::after_containerd(&self.paths);
        if !leaked.is_empty() {
            eprintln!(
                "[rekindle-it] LEAK after stopping containerd ({}):\n  {}",
                self.paths.dir.display(),
                leaked.join("\n  ")
            );
        }
        if self._tempdir.is_some() {
            // Lazily (MNT_DETACH, as restore::unmount does): a leaked shim may still hold it.
            super::restore::unmount(&self.paths.state);
        } else {
            eprintln!(
                "[rekindle-it] kept: containerd's state is still mounted (tmpfs) at {}; `umount` it when done",
                self.paths.state.display()
            );
        }
        leaked
    }
}

/// Mounts a tmpfs on `state`, containerd's state directory (`--state`: bundles, shim
/// sockets, what the shims write in the bundles), as a node has it: containerd's state
/// is /run/containerd, and /run is a tmpfs on any systemd host. This machine has no
/// systemd and /tmp on disk (ext4), where the files each container start creates and
/// removes there cost ~3 ms of its Tasks.Create (measured side by side with the bench,
/// all modes alike), a cost no node pays. Unmounted by [`PrivateContainerd::shutdown`].
fn mount_state_tmpfs(state: &Path) -> Result<()> {
    use nix::mount::{mount, MsFlags};
    mount(
        Some("rekindle-it-state"),
        state,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0711,size=1g"),
    )
    .with_context(|| {
        format!(
            "mount a tmpfs on containerd's state dir {}",
            state.display()
        )
    })
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// PATH for containerd and, through it, for the shims: the shim under test first, then
/// this containerd's own binaries (containerd-shim-runc-v2), CRIU 4.2 in /usr/local/sbin
/// before Debian's, runc in /usr/sbin.
fn search_path(paths: &Paths) -> String {
    format!(
        "{}:{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        paths.shim_dir.display(),
        paths.bin_dir.display()
    )
}

/// Plugins the tests do not need. Disabling them keeps start-up fast and keeps
/// containerd away from host paths (/opt/containerd, /etc/cni, ...).
const DISABLED_PLUGINS: &[&str] = &[
    // CRI (1.6: one plugin; 2.x: split into several)
    "io.containerd.grpc.v1.cri",
    "io.containerd.cri.v1.images",
    "io.containerd.cri.v1.runtime",
    "io.containerd.podsandbox.controller.v1.podsandbox",
    "io.containerd.nri.v1.nri",
    "io.containerd.internal.v1.opt",
    "io.containerd.internal.v1.tracing",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.blockfile",
    "io.containerd.snapshotter.v1.erofs",
    "io.containerd.differ.v1.erofs",
    "io.containerd.grpc.v1.cri-image-service",
    "io.containerd.grpc.v1.sandbox-controllers",
];

/// The plugins CRI needs (both versions' names), kept enabled by
/// [`PrivateContainerd::start_with_cri`].
const CRI_PLUGINS: &[&str] = &[
    "io.containerd.grpc.v1.cri",
    "io.containerd.cri.v1.images",
    "io.containerd.cri.v1.runtime",
    "io.containerd.podsandbox.controller.v1.podsandbox",
    "io.containerd.grpc.v1.cri-image-service",
    "io.containerd.grpc.v1.sandbox-controllers",
];

/// Config for `containerd --config`: schema version 2 for 1.6, version 3 for 2.x.
/// No runtime section is needed: outside CRI, containerd maps a runtime name such as
/// `io.containerd.rekindle.v2` to the binary `containerd-shim-rekindle-v2` on its PATH.
/// With `cri`, the CRI plugin is enabled and configured (see [`CriSetup::config`]).
fn config_toml(paths: &Paths, cri: Option<&CriSetup>) -> String {
    let schema = match paths.version {
        Version::V1_6 => 2,
        Version::V2 => 3,
    };
    let disabled = DISABLED_PLUGINS
        .iter()
        .filter(|p| cri.is_none() || !CRI_PLUGINS.contains(p))
        .map(|p| format!("{p:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    // containerd 2 mounts layers for unpacking under `temp` (top-level key, 2.x only).
    let temp = match paths.version {
        Version::V1_6 => String::new(),
        Version::V2 => format!("temp = {:?}\n", paths.dir.join("tmp").display().to_string()),
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "version = {schema}\n\
         root = {root:?}\n\
         state = {state:?}\n\
         {temp}\
         disabled_plugins = [{disabled}]\n\
         \n\
         [grpc]\n  address = {grpc:?}\n\
         \n\
         [ttrpc]\n  address = {ttrpc:?}\n\
         \n\
         [debug]\n  address = \"\"\n\
         \n\
         [metrics]\n  address = \"\"",
        root = paths.root.display().to_string(),
        state = paths.state.display().to_string(),
        grpc = paths.grpc.display().to_string(),
        ttrpc = paths.ttrpc.display().to_string(),
    );
    if let Some(cri) = cri {
        s.push_str(&cri.config(paths));
    }
    s
}

/// The containerd namespace CRI keeps its pods, containers and images in.
#[allow(dead_code)] // tests/cri.rs
pub const CRI_NAMESPACE: &str = "k8s.io";

/// How a CRI runtime handler's `options` table reaches the shim. containerd's CRI
/// sends a runtime whose type is not runc `runtimeoptions.v1.Options`: 2.x with the
/// table as TOML in `config_body`, 1.x with only the `ConfigPath` the table names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code)] // tests/cri.rs
pub enum CriRuntimeOptions {
    /// `Root = "<runc root>"` in the table itself (2.x).
    Table,
    /// `ConfigPath = "<dir>/<handler>-options.toml"` in the table, `Root = ...` in
    /// that file (the one way through 1.x; 2.x honours it too).
    ConfigFile,
}

/// containerd's CRI plugin, set up for a test that drives containerd as the kubelet
/// does. Everything it writes stays in the temp dir, except what CNI plugins and the
/// kernel keep elsewhere (the test checks those itself).
#[derive(Clone, Debug)]
pub struct CriSetup {
    /// A local image, imported by the test before the first pod, named as the
    /// sandbox ("pause") image so that CRI never pulls.
    pub sandbox_image: String,
    /// The runtime handler pods name (`RuntimeClass.handler`) and its runtime type.
    pub handler: String,
    pub runtime_type: String,
    /// How the handler's options (runc's root in the temp dir) are passed.
    pub options: CriRuntimeOptions,
    /// Further handlers of the same runtime type: (name, their `options` table as
    /// TOML lines), e.g. a misconfigured one whose pods must fail clearly.
    pub extra_handlers: Vec<(String, String)>,
    /// The CNI plugins' directory (`/usr/lib/cni` for Debian's containernetworking-plugins).
    pub cni_bin_dir: PathBuf,
    /// The CNI network (a `.conflist` JSON) written to [`Paths::cni_conf_dir`];
    /// `@DIR@` in it stands for the temp dir.
    pub cni_conflist: String,
}

impl Paths {
    /// CNI config dir of a containerd started with [`CriSetup`].
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("cni/net.d")
    }

    /// The file a [`CriRuntimeOptions::ConfigFile`] handler's options live in.
    pub fn cri_options_file(&self, handler: &str) -> PathBuf {
        self.dir.join(format!("{handler}-options.toml"))
    }
}

impl CriSetup {
    fn write_files(&self, paths: &Paths) -> Result<()> {
        let conf_dir = paths.cni_conf_dir();
        fs::create_dir_all(&conf_dir)
            .with_context(|| format!("creating {}", conf_dir.display()))?;
        let conflist = self
            .cni_conflist
            .replace("@DIR@", &paths.dir.display().to_string());
        fs::write(conf_dir.join("10-rekindle-test.conflist"), conflist)?;
        if self.options == CriRuntimeOptions::ConfigFile {
            let file = paths.cri_options_file(&self.handler);
            fs::write(&file, self.options_body(paths))
                .with_context(|| format!("writing {}", file.display()))?;
        }
        Ok(())
    }

    /// runc's state in the temp dir, as the other tests' runc options put it.
    fn options_body(&self, paths: &Paths) -> String {
        format!("Root = {:?}\n", paths.runc_root.display().to_string())
    }

    /// The CRI part of the config: the handler, the pause image, CNI in the temp dir,
    /// and `restrict_oom_score_adj` (runc may not lower `oom_score_adj` on the test
    /// machines: without it RunPodSandbox fails with "can't get final child's PID
    /// from pipe").
    fn config(&self, paths: &Paths) -> String {
        let options = match self.options {
            CriRuntimeOptions::Table => self.options_body(paths),
            CriRuntimeOptions::ConfigFile => format!(
                "ConfigPath = {:?}\n",
                paths.cri_options_file(&self.handler).display().to_string()
            ),
        };
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        let (bin, conf) = (q(&self.cni_bin_dir), q(&paths.cni_conf_dir()));
        let (handler, rt, pause) = (&self.handler, &self.runtime_type, &self.sandbox_image);
        let runtimes = match paths.version {
            Version::V2 => "plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes",
            Version::V1_6 => "plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes",
        };
        let extra: String = self
            .extra_handlers
            .iter()
            .map(|(name, options)| {
                format!(
                    "[{runtimes}.{name}]\nruntime_type = {rt:?}\n[{runtimes}.{name}.options]\n{options}\n"
                )
            })
            .collect();
        let main = match paths.version {
            Version::V2 => format!(
                "\n\
                 [plugins.\"io.containerd.cri.v1.images\"]\n\
                 snapshotter = \"overlayfs\"\n\
                 [plugins.\"io.containerd.cri.v1.images\".pinned_images]\n\
                 sandbox = {pause:?}\n\
                 [plugins.\"io.containerd.cri.v1.runtime\"]\n\
                 restrict_oom_score_adj = true\n\
                 enable_cdi = false\n\
                 # the pods' network namespaces under the temp dir, not /var/run/netns\n\
                 netns_mounts_under_state_dir = true\n\
                 [plugins.\"io.containerd.cri.v1.runtime\".cni]\n\
                 bin_dirs = [{bin}]\n\
                 conf_dir = {conf}\n\
                 [plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.{handler}]\n\
                 runtime_type = {rt:?}\n\
                 [plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.{handler}.options]\n\
                 {options}\
                 [plugins.\"io.containerd.grpc.v1.cri\"]\n\
                 stream_server_address = \"127.0.0.1\"\n\
                 stream_server_port = \"0\"\n"
            ),
            Version::V1_6 => format!(
                "\n\
                 [plugins.\"io.containerd.grpc.v1.cri\"]\n\
                 sandbox_image = {pause:?}\n\
                 restrict_oom_score_adj = true\n\
                 enable_cdi = false\n\
                 stream_server_address = \"127.0.0.1\"\n\
                 stream_server_port = \"0\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n\
                 bin_dir = {bin}\n\
                 conf_dir = {conf}\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n\
                 snapshotter = \"overlayfs\"\n\
                 # 1.6 replaces its default runtimes with the ones configured\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n\
                 runtime_type = \"io.containerd.runc.v2\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{handler}]\n\
                 runtime_type = {rt:?}\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{handler}.options]\n\
                 {options}"
            ),
        };
        main + &extra
    }
}

/// Spawns `cmd` from a thread that lives as long as the returned sender, with
/// PR_SET_PDEATHSIG=SIGKILL: if the test binary dies (Ctrl-C, a killed CI job),
/// containerd goes with it. The death signal follows the *thread* that forked, and
/// libtest ends each test's thread when the test ends, hence the keeper thread.
fn spawn_from_keeper_thread(mut cmd: Command) -> Result<(Child, mpsc::Sender<()>)> {
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let (child_tx, child_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("containerd-keeper".into())
        .spawn(move || {
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let _ = child_tx.send(cmd.spawn());
            // Returns once the sender is dropped (containerd already stopped).
            let _ = done_rx.recv();
        })?;
    let child = child_rx.recv().context("keeper thread died")??;
    Ok((child, done_tx))
}

/// Removes the temp dirs of earlier runs whose test process is gone (killed before its
/// clean-up ran): what still refers to them is killed and unmounted, and reported.
/// Dirs kept with `REKINDLE_IT_KEEP` stay.
fn sweep_stale_dirs() {
    let Ok(rd) = fs::read_dir("/tmp") else {
        return;
    };
    for e in rd.flatten() {
        let dir = e.path();
        let is_ours = e
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with("rkit-"));
        let Ok(owner) = fs::read_to_string(dir.join(OWNER_FILE)) else {
            continue;
        };
        let alive = owner
            .trim()
            .parse::<i32>()
            .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !is_ours || alive || dir.join(KEEP_FILE).exists() {
            continue;
        }
        let paths = Paths {
            version: Version::V2,
            root: dir.join("root"),
            state: dir.join("state"),
            grpc: dir.join("containerd.sock"),
            ttrpc: dir.join("containerd.sock.ttrpc"),
            config: dir.join("config.toml"),
            log: dir.join("containerd.log"),
            runc_root: dir.join("runc"),
            io: dir.join("io"),
            bin_dir: PathBuf::new(),
            shim_dir: PathBuf::new(),
            shim_env: Vec::new(),
            dir: dir.clone(),
        };
        let leaked = leaks::after_containerd(&paths);
        eprintln!(
            "[rekindle-it] removing {} left by an earlier run (pid {}){}",
            dir.display(),
            owner.trim(),
            if leaked.is_empty() {
                String::new()
            } else {
                format!(", which had left:\n  {}", leaked.join("\n  "))
            }
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
