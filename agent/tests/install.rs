//! `rekindle install` / `rekindle uninstall` as an operator runs them, with `--root` a temp
//! dir: on real containerd configs (`containerd config default` of containerd 2.x and 1.6,
//! and Debian's packaged 1.6 config, from hack/setup.sh's cache) and on hand-written ones
//! with comments. Install then uninstall gives back the config byte for byte; --dry-run and
//! a second install change nothing; and the real containerd reads the edited config
//! (`containerd --config <edited> config dump` shows the rekindle runtime).
//!
//! runc's options (a systemd cgroup driver, a BinaryName) go where each containerd passes
//! them to the shim: on config version 3 (containerd 2.x) into the runtime's `options`
//! table, on versions 2 and 1 (containerd 1.x, whose CRI passes only the table's
//! `ConfigPath`) into /etc/rekindle/runtime-options.toml, which the table names. That the
//! shim then gets them is tests/cri.rs's part.
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
const UNITS: [&str; 5] = [
    "etc/systemd/system/rekindle-restored.service",
    "etc/systemd/system/rekindle-agent.service",
    "etc/systemd/system/run-criu.mount",
    "etc/systemd/system/rekindle-favordynmods.service",
    "etc/systemd/system/containerd.service.d/rekindle.conf",
];
const CONFIG: &str = "etc/containerd/config.toml";
/// The runtime options file (containerd 1.x), under root.
const OPTIONS_FILE: &str = "etc/rekindle/runtime-options.toml";
/// The runtime table's `ConfigPath` for it, as the node sees it.
const CONFIG_PATH: &str = "/etc/rekindle/runtime-options.toml";
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

    fn options_file(&self) -> PathBuf {
        self.root.join(OPTIONS_FILE)
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
            !stderr.contains("unknown key")
                && !stderr.contains("level=error")
                && !stderr.contains("level=warn"),
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

/// What [`full_cycle`] saw.
struct Cycle {
    /// The config as install left it.
    installed: String,
    /// The rekindle runtime's table in containerd's `config dump`, with a containerd.
    runtime: Option<toml::Table>,
    /// The runtime options file install wrote, if any.
    options_file: Option<String>,
}

/// The whole cycle on `original`, checked with `containerd` (`bin`, if there is one):
/// dry-run, install, install again, config dump, uninstall dry-run, uninstall, uninstall
/// again, purge. The runtime options file is written exactly when the config names it
/// (`ConfigPath`), shown by the dry run, and removed by uninstall.
fn full_cycle(original: &str, containerd: Containerd, bin: Option<&Path>) -> Cycle {
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
    let dry_run = out;
    let dry_run_shows_the_file =
        dry_run.contains(&format!("+++ {}", node.options_file().display()));

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
    let names_the_file = installed.contains(&format!("ConfigPath = \"{CONFIG_PATH}\""))
        || installed.contains(&format!("ConfigPath = '{CONFIG_PATH}'"));
    let options_file = fs::read_to_string(node.options_file()).ok();
    assert_eq!(
        options_file.is_some(),
        names_the_file,
        "the options file is written exactly when the config names it:\n{installed}"
    );
    assert_eq!(dry_run_shows_the_file, names_the_file, "dry run vs install");
    if let Some(text) = &options_file {
        assert_eq!(
            fs::metadata(node.options_file())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o644
        );
        assert!(
            text.starts_with("# Written by `rekindle install`"),
            "{text}"
        );
        // The dry run showed the file: every line of it in its diff.
        for line in text.lines() {
            assert!(
                dry_run.lines().any(|l| l == format!("+{line}")),
                "{line:?} not in the dry run:\n{dry_run}"
            );
        }
    }

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
    if options_file.is_some() {
        assert!(
            out.contains(&format!(
                "remove   {} (as rekindle install wrote it)",
                node.options_file().display()
            )),
            "{out}"
        );
    }
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
    assert!(
        !node.options_file().exists(),
        "uninstall left the options file"
    );
    let out = node.ok(&["uninstall"]);
    assert!(out.contains("nothing to do"), "{out}");

    // --purge: /etc/rekindle too
    let out = node.ok(&["uninstall", "--purge"]);
    assert!(out.contains("--purge"), "{out}");
    assert!(!node.root.join("etc/rekindle").exists());
    assert_eq!(fs::read_to_string(node.config()).unwrap(), original);
    Cycle {
        installed,
        runtime,
        options_file,
    }
}

/// The runtime table's `options` as containerd's `config dump` shows them.
fn dumped_options(runtime: &toml::Table) -> toml::Table {
    runtime
        .get("options")
        .and_then(toml::Value::as_table)
        .cloned()
        .unwrap_or_else(|| panic!("no options in {runtime:?}"))
}

/// `options` is exactly `ConfigPath` naming the runtime options file.
fn assert_only_config_path(options: &toml::Table) {
    assert_eq!(
        options.keys().collect::<Vec<_>>(),
        ["ConfigPath"],
        "{options:?}"
    );
    assert_eq!(
        options.get("ConfigPath").and_then(toml::Value::as_str),
        Some(CONFIG_PATH)
    );
}

/// The keys of the runtime options file (what the shim reads), comments aside.
fn file_settings(text: &str) -> toml::Table {
    text.parse()
        .unwrap_or_else(|e| panic!("the options file is not TOML: {e}\n{text}"))
}

#[test]
fn containerd_2_default_config_round_trips_and_containerd_2_reads_the_runtime() {
    let Some(bin) = Containerd::V2.available("containerd 2.x default config") else {
        return;
    };
    let original = default_config(&bin);
    assert!(original.starts_with("version = 3\n"), "{original}");
    let Cycle {
        installed,
        options_file,
        ..
    } = full_cycle(&original, Containerd::V2, Some(&bin));
    assert!(installed.contains(
        "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.rekindle]\n          runtime_type = 'io.containerd.rekindle.v2'\n"
    ), "{installed}");
    // runc's options are the defaults: nothing to copy.
    assert!(!installed.contains("rekindle.options"), "{installed}");
    assert_eq!(options_file, None);
}

#[test]
fn containerd_1_6_default_config_round_trips_and_containerd_1_6_reads_the_runtime() {
    let Some(bin) = Containerd::V16.available("containerd 1.6 default config") else {
        return;
    };
    let original = default_config(&bin);
    assert!(original.contains("\nversion = 2\n"), "{original}");
    let Cycle {
        installed,
        options_file,
        ..
    } = full_cycle(&original, Containerd::V16, Some(&bin));
    assert!(installed.contains(
        "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.rekindle]\n          runtime_type = \"io.containerd.rekindle.v2\"\n"
    ), "{installed}");
    // runc's options are the defaults (SystemdCgroup = false, BinaryName = ""): nothing to
    // copy, no table, no file.
    assert!(!installed.contains("rekindle.options"), "{installed}");
    assert_eq!(options_file, None);
}

/// containerd 1.6's default config as the Kubernetes setup guides change it (runc with the
/// systemd cgroup driver): the rekindle runtime's options table is only `ConfigPath`, the
/// driver is in the file it names, and containerd 1.6 reads the table without a warning.
#[test]
fn containerd_1_6_default_config_with_systemd_cgroups_gets_config_path_and_the_file() {
    let Some(bin) = Containerd::V16.available("containerd 1.6 default config, systemd cgroups")
    else {
        return;
    };
    let default = default_config(&bin);
    let original = default.replace("SystemdCgroup = false", "SystemdCgroup = true");
    assert_ne!(original, default, "no SystemdCgroup in:\n{default}");
    let Cycle {
        installed,
        runtime,
        options_file,
    } = full_cycle(&original, Containerd::V16, Some(&bin));
    assert!(installed.contains(
        "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.rekindle.options]\n            ConfigPath = \"/etc/rekindle/runtime-options.toml\"\n"
    ), "{installed}");
    assert_only_config_path(&dumped_options(&runtime.unwrap()));
    let settings = file_settings(&options_file.unwrap());
    assert_eq!(settings.len(), 1, "{settings:?}");
    assert_eq!(settings["SystemdCgroup"].as_bool(), Some(true));
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
        let Cycle {
            runtime,
            options_file,
            ..
        } = full_cycle(HAND_V2, containerd, bin.as_deref());
        // runc's systemd cgroup driver is copied, so the pods' cgroups match the node's: to
        // the file, since containerd 1.x passes the shim only the table's ConfigPath
        // (containerd 2.x, migrating the file, reads a ConfigPath too).
        let settings = file_settings(&options_file.expect("no options file"));
        assert_eq!(settings.len(), 1, "{settings:?}");
        assert_eq!(settings["SystemdCgroup"].as_bool(), Some(true));
        if let Some(runtime) = runtime {
            assert_only_config_path(&dumped_options(&runtime));
        }
    }
}

#[test]
fn a_hand_written_v3_config_round_trips_and_containerd_2_reads_it() {
    let bin = Containerd::V2.available("hand-written version 3 config: config dump");
    let Cycle {
        installed,
        runtime,
        options_file,
    } = full_cycle(HAND_V3, Containerd::V2, bin.as_deref());
    // containerd 2.x passes the table to the shim: runc's options stay in it, no file.
    assert_eq!(options_file, None);
    assert!(!installed.contains("ConfigPath"), "{installed}");
    if let Some(runtime) = runtime {
        let options = dumped_options(&runtime);
        assert_eq!(
            options.get("BinaryName").and_then(toml::Value::as_str),
            Some("/usr/sbin/runc"),
            "{runtime:?}"
        );
        assert_eq!(
            options.get("SystemdCgroup").and_then(toml::Value::as_bool),
            Some(true),
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
fn an_edited_options_file_is_kept_by_install_and_uninstall_and_a_lost_one_comes_back() {
    let node = Node::new();
    node.write_config(HAND_V2);
    node.ok(&["install"]);
    let ours = fs::read_to_string(node.options_file()).unwrap();

    // Gone: install puts it back (the config is as it should be already).
    fs::remove_file(node.options_file()).unwrap();
    let out = node.ok(&["install"]);
    assert!(
        out.contains(&format!("create   {}", node.options_file().display())),
        "{out}"
    );
    assert_eq!(fs::read_to_string(node.options_file()).unwrap(), ours);

    // Edited by an operator: install keeps it, says so, and says what it would write.
    let edited = format!("{ours}BinaryName = \"/opt/crun\"   # ours\n");
    fs::write(node.options_file(), &edited).unwrap();
    let out = node.ok(&["install"]);
    assert!(out.contains("nothing to do"), "{out}");
    let line = out
        .lines()
        .find(|l| l.contains(OPTIONS_FILE))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.starts_with("  keep ")
            && line.contains("never overwritten")
            && line.contains("SystemdCgroup = true"),
        "{line}"
    );
    assert_eq!(fs::read_to_string(node.options_file()).unwrap(), edited);
    let out = node.ok(&["install", "--dry-run"]);
    assert!(
        !out.contains(&format!("+++ {}", node.options_file().display())),
        "{out}"
    );

    // uninstall keeps it too, and says so; the config comes back all the same.
    let out = node.ok(&["uninstall"]);
    assert!(
        out.contains(&format!(
            "keep     {} (not as rekindle install writes it",
            node.options_file().display()
        )),
        "{out}"
    );
    assert_eq!(fs::read_to_string(node.options_file()).unwrap(), edited);
    assert_eq!(fs::read_to_string(node.config()).unwrap(), HAND_V2);

    // --purge takes it with /etc/rekindle.
    let out = node.ok(&["uninstall", "--purge"]);
    assert!(out.contains("--purge"), "{out}");
    assert!(!node.root.join("etc/rekindle").exists());
}

#[test]
fn an_options_file_install_did_not_ask_for_is_left_alone() {
    // A version 3 config: install writes no file, so an operator's file there is theirs.
    let node = Node::new();
    node.write_config(HAND_V3);
    fs::create_dir_all(node.options_file().parent().unwrap()).unwrap();
    fs::write(node.options_file(), "SystemdCgroup = true\n").unwrap();
    let out = node.ok(&["install"]);
    assert!(!out.contains(OPTIONS_FILE), "{out}");
    let out = node.ok(&["uninstall"]);
    assert!(
        out.contains(&format!("keep     {}", node.options_file().display())),
        "{out}"
    );
    assert_eq!(
        fs::read_to_string(node.options_file()).unwrap(),
        "SystemdCgroup = true\n"
    );
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
