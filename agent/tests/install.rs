//! `rekindle install` / `rekindle uninstall` as an operator runs them, with `--root` a temp
//! dir: on real containerd configs (`containerd config default` of containerd 2.x and 1.6,
//! and Debian's packaged 1.6 config, from hack/setup.sh's cache) and on hand-written ones
//! with comments. Install then uninstall gives back the config byte for byte; --dry-run and
//! a second install change nothing; and the real containerd reads the edited config
//! (`containerd --config <edited> config dump` shows the rekindle runtime).
//!
//! Without the containerd binaries (REKINDLE_CACHE, default /var/cache/rekindle; `bash
//! hack/setup.sh` unpacks them) the tests that need them say SKIPPED on stderr and pass.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BINARIES: [&str; 5] = [
    "containerd-shim-rekindle-v2",
    "rekindle-criu-tar",
    "rekindle-restored",
    "rekindle-agent",
    "rekindle",
];
const UNITS: [&str; 4] = [
    "etc/systemd/system/rekindle-restored.service",
    "etc/systemd/system/rekindle-agent.service",
    "etc/systemd/system/run-criu.mount",
    "etc/systemd/system/containerd.service.d/rekindle.conf",
];
const CONFIG: &str = "etc/containerd/config.toml";
const RUNTIME_TYPE: &str = "io.containerd.rekindle.v2";

fn cache() -> PathBuf {
    std::env::var_os("REKINDLE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/rekindle"))
}

/// Says so on the real stderr (not the captured one), so that `cargo test` shows it.
fn skip(why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Containerd {
    V2,
    V16,
}

impl Containerd {
    fn binary(self) -> PathBuf {
        let dir = match self {
            Containerd::V2 => "containerd-2",
            Containerd::V16 => "containerd-1.6",
        };
        cache().join(dir).join("usr/bin/containerd")
    }

    /// The binary, or `None` after saying the test is skipped.
    fn available(self, test: &str) -> Option<PathBuf> {
        let bin = self.binary();
        if bin.is_file() {
            Some(bin)
        } else {
            skip(&format!(
                "{test}: {} is absent (bash hack/setup.sh unpacks containerd there)",
                bin.display()
            ));
            None
        }
    }

    /// Where the CRI runtimes are in `config dump`'s output (containerd 2.x migrates a
    /// version 2 config to version 3).
    fn dumped_runtimes(self) -> [&'static str; 4] {
        match self {
            Containerd::V2 => [
                "plugins",
                "io.containerd.cri.v1.runtime",
                "containerd",
                "runtimes",
            ],
            Containerd::V16 => [
                "plugins",
                "io.containerd.grpc.v1.cri",
                "containerd",
                "runtimes",
            ],
        }
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.env_remove("RUST_LOG").output().expect("run a command")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A temp dir with fake binaries in `from/` and the node's files under `root/`.
struct Node {
    _dir: tempfile::TempDir,
    from: PathBuf,
    root: PathBuf,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("from");
        let root = dir.path().join("root");
        fs::create_dir_all(&from).unwrap();
        fs::create_dir_all(&root).unwrap();
        for b in BINARIES {
            fs::write(from.join(b), format!("#!/bin/sh\necho fake {b}\n")).unwrap();
        }
        Node {
            _dir: dir,
            from,
            root,
        }
    }

    fn config(&self) -> PathBuf {
        self.root.join(CONFIG)
    }

    fn write_config(&self, text: &str) {
        fs::create_dir_all(self.config().parent().unwrap()).unwrap();
        fs::write(self.config(), text).unwrap();
    }

    fn rekindle(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rekindle"));
        cmd.args(args).arg("--root").arg(&self.root);
        if args.first() == Some(&"install") {
            cmd.arg("--from").arg(&self.from);
        }
        run(&mut cmd)
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.rekindle(args);
        assert!(
            out.status.success(),
            "rekindle {args:?}: {}\n{}",
            text(&out.stderr),
            text(&out.stdout)
        );
        text(&out.stdout)
    }

    /// Every path under root: its kind, mode and contents.
    fn snapshot(&self) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
        fn walk(dir: &Path, base: &Path, out: &mut BTreeMap<PathBuf, (u32, Vec<u8>)>) {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let meta = fs::symlink_metadata(&path).unwrap();
                let rel = path.strip_prefix(base).unwrap().to_path_buf();
                let mode = meta.permissions().mode();
                if meta.is_dir() {
                    out.insert(rel, (mode, Vec::new()));
                    walk(&path, base, out);
                } else if meta.file_type().is_symlink() {
                    let target = fs::read_link(&path).unwrap();
                    out.insert(rel, (mode, target.into_os_string().into_encoded_bytes()));
                } else {
                    out.insert(rel, (mode, fs::read(&path).unwrap()));
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.root, &self.root, &mut out);
        out
    }

    /// The edited config as `containerd config dump` reads it: the rekindle runtime's
    /// table.
    fn dumped_runtime(&self, containerd: Containerd, bin: &Path) -> toml::Table {
        let out = run(Command::new(bin)
            .arg("--config")
            .arg(self.config())
            .args(["config", "dump"]));
        assert!(
            out.status.success(),
            "{} config dump: {}",
            bin.display(),
            text(&out.stderr)
        );
        let stderr = text(&out.stderr);
        assert!(
            !stderr.contains("unknown key") && !stderr.contains("level=error"),
            "{} complains about the edited config:\n{stderr}",
            bin.display()
        );
        let dump: toml::Table = text(&out.stdout)
            .parse()
            .unwrap_or_else(|e| panic!("config dump is not TOML: {e}\n{}", text(&out.stdout)));
        let mut table = &dump;
        for key in containerd.dumped_runtimes() {
            table = table
                .get(key)
                .and_then(toml::Value::as_table)
                .unwrap_or_else(|| panic!("no {key} in the dump:\n{}", text(&out.stdout)));
        }
        let runtime = table
            .get("rekindle")
            .and_then(toml::Value::as_table)
            .unwrap_or_else(|| {
                panic!(
                    "containerd {containerd:?} does not see the rekindle runtime:\n{}",
                    text(&out.stdout)
                )
            });
        assert_eq!(
            runtime.get("runtime_type").and_then(toml::Value::as_str),
            Some(RUNTIME_TYPE),
            "{runtime:?}"
        );
        runtime.clone()
    }
}

fn default_config(bin: &Path) -> String {
    let out = run(Command::new(bin).args(["config", "default"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// The whole cycle on `original`, checked with `containerd` (`bin`, if there is one):
/// dry-run, install, install again, config dump, uninstall dry-run, uninstall, uninstall
/// again, purge. Returns the edited config and the runtime table containerd saw.
fn full_cycle(
    original: &str,
    containerd: Containerd,
    bin: Option<&Path>,
) -> (String, Option<toml::Table>) {
    let node = Node::new();
    node.write_config(original);
    let before = node.snapshot();

    // --dry-run: the diff and the files, nothing written.
    let out = node.ok(&["install", "--dry-run"]);
    assert!(out.contains("nothing was changed"), "{out}");
    assert!(
        out.contains(&format!("+++ {}", node.config().display())),
        "{out}"
    );
    assert!(out.contains("runtimes.rekindle]"), "{out}");
    for b in BINARIES {
        assert!(
            out.contains(&format!(
                "create   {}",
                node.root.join("usr/local/bin").join(b).display()
            )),
            "{out}"
        );
    }
    assert_eq!(node.snapshot(), before, "install --dry-run changed files");

    // install
    let out = node.ok(&["install"]);
    assert!(out.contains("systemctl restart containerd"), "{out}");
    let installed = fs::read_to_string(node.config()).unwrap();
    assert_ne!(installed, original);
    for b in BINARIES {
        let dest = node.root.join("usr/local/bin").join(b);
        assert_eq!(
            fs::read(&dest).unwrap(),
            fs::read(node.from.join(b)).unwrap()
        );
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o755
        );
    }
    for unit in UNITS {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../systemd")
            .join(unit.trim_start_matches("etc/systemd/system/"));
        assert_eq!(
            fs::read(node.root.join(unit)).unwrap(),
            fs::read(&repo).unwrap(),
            "{unit}"
        );
    }
    let agent_toml = node.root.join("etc/rekindle/agent.toml");
    assert_eq!(
        fs::metadata(&agent_toml).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // again: nothing to do
    let after_install = node.snapshot();
    let out = node.ok(&["install"]);
    assert!(out.contains("nothing to do"), "{out}");
    assert_eq!(
        node.snapshot(),
        after_install,
        "a second install changed files"
    );

    // the real containerd reads it
    let runtime = bin.map(|bin| node.dumped_runtime(containerd, bin));

    // uninstall --dry-run
    let out = node.ok(&["uninstall", "--dry-run"]);
    assert!(out.contains("nothing was changed"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("-") && l.contains("runtimes.rekindle]")),
        "{out}"
    );
    assert_eq!(
        node.snapshot(),
        after_install,
        "uninstall --dry-run changed files"
    );

    // uninstall: the config as it was, byte for byte; /etc/rekindle kept
    let out = node.ok(&["uninstall"]);
    assert!(out.contains("systemctl restart containerd"), "{out}");
    assert_eq!(fs::read_to_string(node.config()).unwrap(), original);
    for b in BINARIES {
        assert!(
            !node.root.join("usr/local/bin").join(b).exists(),
            "{b} left"
        );
    }
    for unit in UNITS {
        assert!(!node.root.join(unit).exists(), "{unit} left");
    }
    assert!(!node
        .root
        .join("etc/systemd/system/containerd.service.d")
        .exists());
    assert!(
        agent_toml.is_file(),
        "uninstall without --purge removed agent.toml"
    );
    let out = node.ok(&["uninstall"]);
    assert!(out.contains("nothing to do"), "{out}");

    // --purge: /etc/rekindle too
    let out = node.ok(&["uninstall", "--purge"]);
    assert!(out.contains("--purge"), "{out}");
    assert!(!node.root.join("etc/rekindle").exists());
    assert_eq!(fs::read_to_string(node.config()).unwrap(), original);
    (installed, runtime)
}

#[test]
fn containerd_2_default_config_round_trips_and_containerd_2_reads_the_runtime() {
    let Some(bin) = Containerd::V2.available("containerd 2.x default config") else {
        return;
    };
    let original = default_config(&bin);
    assert!(original.starts_with("version = 3\n"), "{original}");
    let (installed, _) = full_cycle(&original, Containerd::V2, Some(&bin));
    assert!(installed.contains(
        "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.rekindle]\n          runtime_type = 'io.containerd.rekindle.v2'\n"
    ), "{installed}");
}

#[test]
fn containerd_1_6_default_config_round_trips_and_containerd_1_6_reads_the_runtime() {
    let Some(bin) = Containerd::V16.available("containerd 1.6 default config") else {
        return;
    };
    let original = default_config(&bin);
    assert!(original.contains("\nversion = 2\n"), "{original}");
    let (installed, _) = full_cycle(&original, Containerd::V16, Some(&bin));
    assert!(installed.contains(
        "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.rekindle]\n          runtime_type = \"io.containerd.rekindle.v2\"\n"
    ), "{installed}");
}

#[test]
fn debians_packaged_containerd_1_6_config_gets_the_tables_it_lacks_and_back() {
    let Some(bin) = Containerd::V16.available("Debian's containerd 1.6 config") else {
        return;
    };
    // /etc/containerd/config.toml of Debian bookworm's containerd package: no runtimes.
    let packaged = cache().join("containerd-1.6/etc/containerd/config.toml");
    let original = fs::read_to_string(&packaged).unwrap();
    assert!(!original.contains("runtimes"), "{original}");
    full_cycle(&original, Containerd::V16, Some(&bin));
    // containerd 2.x migrates the same version 2 file.
    if let Some(bin2) = Containerd::V2.available("Debian's 1.6 config under containerd 2.x") {
        full_cycle(&original, Containerd::V2, Some(&bin2));
    }
}

/// A config as an operator keeps it: comments, odd spacing, systemd cgroups for runc.
const HAND_V2: &str = r#"# /etc/containerd/config.toml — edited by hand, keep the comments
version = 2
root = "/var/lib/containerd"   # default
oom_score = -999

[grpc]
  address = "/run/containerd/containerd.sock"

# ---- CRI ----
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.9"   # pinned by the platform team
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"

    # runc with the systemd cgroup driver, as the kubelet
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = true

# metrics last
[metrics]
  address = "127.0.0.1:1338"
"#;

const HAND_V3: &str = r#"# containerd 2.x, written by hand
version = 3

[plugins.'io.containerd.cri.v1.runtime'.containerd]
default_runtime_name = 'runc'

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
runtime_type = 'io.containerd.runc.v2'

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
BinaryName = '/usr/sbin/runc'   # Debian's
SystemdCgroup = true

[plugins.'io.containerd.cri.v1.images']
snapshotter = 'overlayfs'
"#;

#[test]
fn a_hand_written_v2_config_with_comments_round_trips_under_containerd_1_6_and_2() {
    for containerd in [Containerd::V16, Containerd::V2] {
        let bin = containerd.available("hand-written version 2 config: config dump");
        let (_, runtime) = full_cycle(HAND_V2, containerd, bin.as_deref());
        let Some(runtime) = runtime else { continue };
        // runc's systemd cgroup driver is copied, so the pods' cgroups match the node's.
        assert_eq!(
            runtime
                .get("options")
                .and_then(|o| o.get("SystemdCgroup"))
                .and_then(toml::Value::as_bool),
            Some(true),
            "{runtime:?}"
        );
    }
}

#[test]
fn a_hand_written_v3_config_round_trips_and_containerd_2_reads_it() {
    let bin = Containerd::V2.available("hand-written version 3 config: config dump");
    let (installed, runtime) = full_cycle(HAND_V3, Containerd::V2, bin.as_deref());
    if let Some(runtime) = runtime {
        let options = runtime.get("options").and_then(toml::Value::as_table);
        assert_eq!(
            options
                .and_then(|o| o.get("BinaryName"))
                .and_then(toml::Value::as_str),
            Some("/usr/sbin/runc"),
            "{runtime:?}"
        );
    }
    // Laid out as the file is: no indentation, literal quotes, next to runc.
    assert!(installed.contains(
        "SystemdCgroup = true\n\n# Added by `rekindle install`; `rekindle uninstall` removes this table.\n"
    ), "{installed}");
    assert!(installed.contains(
        "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.rekindle]\nruntime_type = 'io.containerd.rekindle.v2'\n"
    ), "{installed}");
}

#[test]
fn an_operators_edits_to_the_runtime_table_go_with_it_and_the_rest_stays() {
    let node = Node::new();
    node.write_config(HAND_V2);
    node.ok(&["install"]);
    let installed = fs::read_to_string(node.config()).unwrap();
    let edited = installed.replace(
        "runtime_type = \"io.containerd.rekindle.v2\"\n",
        "runtime_type = \"io.containerd.rekindle.v2\"\n      pod_annotations = [\"io.rekindle.*\"]   # added later\n",
    );
    assert_ne!(edited, installed);
    fs::write(node.config(), &edited).unwrap();
    // still installed as far as install is concerned
    assert!(node.ok(&["install"]).contains("nothing to do"));
    node.ok(&["uninstall"]);
    assert_eq!(fs::read_to_string(node.config()).unwrap(), HAND_V2);
}

#[test]
fn a_symlinked_config_is_edited_where_it_points_and_keeps_its_mode() {
    let node = Node::new();
    let real = node.root.join("etc/containerd/managed/config.toml");
    fs::create_dir_all(real.parent().unwrap()).unwrap();
    fs::write(&real, HAND_V2).unwrap();
    fs::set_permissions(&real, fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::symlink("managed/config.toml", node.config()).unwrap();
    node.ok(&["install"]);
    assert!(fs::symlink_metadata(node.config())
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(fs::read_to_string(&real)
        .unwrap()
        .contains("runtimes.rekindle]"));
    assert_eq!(
        fs::metadata(&real).unwrap().permissions().mode() & 0o777,
        0o640
    );
    node.ok(&["uninstall"]);
    assert!(fs::symlink_metadata(node.config())
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read_to_string(&real).unwrap(), HAND_V2);
}

#[test]
fn an_existing_agent_config_is_never_overwritten() {
    let node = Node::new();
    node.write_config(HAND_V2);
    let agent = node.root.join("etc/rekindle/agent.toml");
    fs::create_dir_all(agent.parent().unwrap()).unwrap();
    fs::write(&agent, "# mine\n").unwrap();
    let out = node.ok(&["install"]);
    assert!(out.contains("never overwritten"), "{out}");
    assert_eq!(fs::read_to_string(&agent).unwrap(), "# mine\n");
}

#[test]
fn without_a_config_the_containerd_version_decides_and_uninstall_deletes_the_file() {
    for (flag, containerd) in [("1.6", Containerd::V16), ("2.1", Containerd::V2)] {
        let node = Node::new();
        node.ok(&["install", "--containerd-version", flag]);
        let created = fs::read_to_string(node.config()).unwrap();
        let version = if containerd == Containerd::V2 { 3 } else { 2 };
        assert!(
            created.contains(&format!("\nversion = {version}\n")),
            "{created}"
        );
        if let Some(bin) = containerd.available("config created by install") {
            node.dumped_runtime(containerd, &bin);
        }
        // once there, the file's version decides: no flag needed
        assert!(node.ok(&["install"]).contains("nothing to do"));
        node.ok(&["uninstall"]);
        assert!(
            !node.config().exists(),
            "uninstall left the file install created"
        );
    }
}

#[test]
fn without_a_config_containerd_on_path_is_asked() {
    let Some(bin) = Containerd::V2.available("containerd --version on PATH") else {
        return;
    };
    let node = Node::new();
    let path_dir = node.root.parent().unwrap().join("path");
    fs::create_dir_all(&path_dir).unwrap();
    std::os::unix::fs::symlink(&bin, path_dir.join("containerd")).unwrap();
    let out = run(Command::new(env!("CARGO_BIN_EXE_rekindle"))
        .args(["install", "--dry-run", "--root"])
        .arg(&node.root)
        .arg("--from")
        .arg(&node.from)
        .env("PATH", &path_dir));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("+version = 3"), "{stdout}");
    assert!(stdout.contains("io.containerd.cri.v1.runtime"), "{stdout}");

    // no containerd on PATH, no flag: the error says what is needed
    let out = run(Command::new(env!("CARGO_BIN_EXE_rekindle"))
        .args(["install", "--root"])
        .arg(&node.root)
        .arg("--from")
        .arg(&node.from)
        .env("PATH", node.root.join("nowhere")));
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("does not exist") && err.contains("--containerd-version"),
        "{err}"
    );
    assert!(err.contains("containerd --version"), "{err}");
    assert!(
        !node.root.join("usr").exists(),
        "a failed install wrote files"
    );
}

#[test]
fn a_broken_config_is_refused_with_its_line_before_anything_is_written() {
    let node = Node::new();
    node.write_config("version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\"\n");
    let before = node.snapshot();
    let out = node.rekindle(&["install"]);
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "cannot parse {} at line 3",
            node.config().display()
        )),
        "{err}"
    );
    assert!(err.contains("fix the file or pass --config"), "{err}");
    assert_eq!(node.snapshot(), before);
    let out = node.rekindle(&["uninstall"]);
    assert_eq!(out.status.code(), Some(78), "{out:?}");
}

#[test]
fn a_missing_binary_names_the_directory_and_the_fix() {
    let node = Node::new();
    node.write_config(HAND_V2);
    fs::remove_file(node.from.join("rekindle-restored")).unwrap();
    let out = node.rekindle(&["install"]);
    assert_eq!(out.status.code(), Some(66), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("rekindle-restored does not exist") && err.contains("--from"),
        "{err}"
    );
    assert!(!node.root.join("usr").exists());
}

#[test]
fn the_cli_lists_install_and_uninstall() {
    let out = run(Command::new(env!("CARGO_BIN_EXE_rekindle")).arg("--help"));
    let help = text(&out.stdout);
    for sub in ["install", "uninstall"] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(sub)),
            "--help lacks {sub}:\n{help}"
        );
    }
}
