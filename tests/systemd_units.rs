//! The systemd units in systemd/ are valid: `systemd-analyze verify` passes on them, and
//! each has the keys it must.
//!
//! The service's ExecStart names /usr/local/bin/rekindle-restored, which a dev/CI machine
//! does not have (and verify checks that the command exists), so the units are copied
//! into a temp dir with ExecStart pointing at the binary cargo built. Run after
//! `cargo build --workspace --bins`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const SERVICE: &str = "rekindle-restored.service";
const MOUNT: &str = "run-criu.mount";
/// The oneshot unit that turns on cgroup favordynmods.
const FAVORDYNMODS: &str = "rekindle-favordynmods.service";
const INSTALLED_BINARY: &str = "/usr/local/bin/rekindle-restored";
const BINARY: &str = "rekindle-restored";

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd")
}

/// target/<profile>/: the test executable is target/<profile>/deps/systemd_units-<hash>.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("locating the test executable");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| panic!("no cargo profile dir above {}", exe.display()))
}

/// section -> key -> values (a key may repeat).
type Unit = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn parse_unit(text: &str) -> Unit {
    let mut unit = Unit::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            unit.entry(section.clone()).or_default();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a key=value line: {line:?}"));
        assert!(!section.is_empty(), "{line:?} comes before any [section]");
        unit.entry(section.clone())
            .or_default()
            .entry(key.trim().to_string())
            .or_default()
            .push(value.trim().to_string());
    }
    unit
}

fn values<'a>(unit: &'a Unit, section: &str, key: &str) -> &'a [String] {
    unit.get(section)
        .and_then(|s| s.get(key))
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// Space-separated list values of every occurrence of `key` (After=, Wants=, ...).
fn list(unit: &Unit, section: &str, key: &str) -> Vec<String> {
    values(unit, section, key)
        .iter()
        .flat_map(|v| v.split_whitespace().map(str::to_string))
        .collect()
}

fn single<'a>(unit: &'a Unit, section: &str, key: &str, file: &str) -> &'a str {
    match values(unit, section, key) {
        [v] => v,
        other => panic!("{file}: expected exactly one [{section}] {key}=, found {other:?}"),
    }
}

/// `systemd-escape --path`: the unit name a mount unit for `path` must have.
fn escape_path(path: &str) -> String {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        return "-".to_string();
    }
    let mut out = String::new();
    for (i, b) in trimmed.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b':' => {
                out.push(b as char)
            }
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

#[test]
fn mount_unit_has_required_keys() {
    let text = fs::read_to_string(units_dir().join(MOUNT)).expect("reading the mount unit");
    let unit = parse_unit(&text);
    let where_ = single(&unit, "Mount", "Where", MOUNT);
    assert_eq!(where_, "/run/criu", "{MOUNT}: Where=");
    assert_eq!(
        format!("{}.mount", escape_path(where_)),
        MOUNT,
        "systemd requires a mount unit's name to be its escaped Where= path"
    );
    assert_eq!(
        single(&unit, "Mount", "Type", MOUNT),
        "tmpfs",
        "{MOUNT}: Type="
    );
    single(&unit, "Mount", "What", MOUNT);
}

#[test]
fn the_favordynmods_unit_mounts_and_unmounts_in_a_private_namespace() {
    let text =
        fs::read_to_string(units_dir().join(FAVORDYNMODS)).expect("reading the favordynmods unit");
    let unit = parse_unit(&text);
    assert_eq!(single(&unit, "Service", "Type", FAVORDYNMODS), "oneshot");
    // A named hierarchy left mounted where runc sees it breaks every container start.
    assert_eq!(
        single(&unit, "Service", "PrivateMounts", FAVORDYNMODS),
        "yes"
    );
    let exec = single(&unit, "Service", "ExecStart", FAVORDYNMODS);
    assert!(
        exec.contains("favordynmods") && exec.contains("umount"),
        "{FAVORDYNMODS}: ExecStart={exec}"
    );
    assert_eq!(
        single(&unit, "Unit", "ConditionKernelVersion", FAVORDYNMODS),
        ">=6.18"
    );
}

#[test]
fn service_unit_has_required_keys() {
    let text = fs::read_to_string(units_dir().join(SERVICE)).expect("reading the service unit");
    let unit = parse_unit(&text);
    let exec = single(&unit, "Service", "ExecStart", SERVICE);
    assert!(
        exec.split_whitespace().next() == Some(INSTALLED_BINARY),
        "{SERVICE}: ExecStart= should run {INSTALLED_BINARY}, is {exec:?}"
    );
    assert_eq!(
        single(&unit, "Service", "Restart", SERVICE),
        "on-failure",
        "{SERVICE}: Restart="
    );
    for key in ["After", "Wants"] {
        assert!(
            list(&unit, "Unit", key).iter().any(|u| u == MOUNT),
            "{SERVICE}: [Unit] {key}= should name {MOUNT}, has {:?}",
            list(&unit, "Unit", key)
        );
    }
}

/// The service units and the binary each runs (ExecStart is rewritten to cargo's build).
const SERVICES: &[(&str, &str)] = &[
    (SERVICE, BINARY),
    ("rekindle-agent.service", "rekindle-agent"),
];
const DROP_IN: &str = "containerd.service.d/rekindle.conf";

#[test]
fn agent_unit_runs_after_containerd_and_the_restore_daemon() {
    let name = "rekindle-agent.service";
    let text = fs::read_to_string(units_dir().join(name)).expect("reading the agent unit");
    let unit = parse_unit(&text);
    let exec = single(&unit, "Service", "ExecStart", name);
    assert_eq!(
        exec.split_whitespace().next(),
        Some("/usr/local/bin/rekindle-agent"),
        "{name}: ExecStart="
    );
    assert_eq!(single(&unit, "Service", "Restart", name), "on-failure");
    for dep in ["containerd.service", SERVICE] {
        for key in ["After", "Wants"] {
            assert!(
                list(&unit, "Unit", key).iter().any(|u| u == dep),
                "{name}: [Unit] {key}= should name {dep}"
            );
        }
    }
}

#[test]
fn the_example_agent_config_is_one_the_agent_accepts() {
    let path = units_dir().join("agent.toml");
    let text = fs::read_to_string(&path).expect("reading systemd/agent.toml");
    let config = rekindle_agent::config::Config::from_toml(&text, &path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    config
        .validate()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(config.functions.len(), 1, "one example function");
    assert!(
        config.gateway_addr.is_some(),
        "the example serves the gateway"
    );
}

#[test]
fn containerd_drop_in_puts_criu_first_and_names_the_restore_daemon() {
    let text = fs::read_to_string(units_dir().join(DROP_IN)).expect("reading the drop-in");
    let unit = parse_unit(&text);
    let env = values(&unit, "Service", "Environment");
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .expect("the drop-in sets PATH");
    assert!(
        path.split(':').next() == Some("/usr/local/sbin"),
        "CRIU >= 4.2 in /usr/local/sbin must come first: PATH={path}"
    );
    assert!(
        env.iter()
            .any(|e| e == "REKINDLE_RESTORED_SOCKET=/run/rekindle/restored.sock"),
        "{env:?}"
    );
    for key in ["After", "Wants"] {
        for wanted in [MOUNT, FAVORDYNMODS] {
            assert!(
                list(&unit, "Unit", key).iter().any(|u| u == wanted),
                "{DROP_IN}: [Unit] {key}= should name {wanted}"
            );
        }
    }
}

#[test]
fn systemd_analyze_verify_passes() {
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    if !matches!(&analyze, Ok(o) if o.status.success()) {
        panic!(
            "systemd-analyze is not available ({analyze:?}); it comes with the `systemd` \
             Debian package (present on every Debian bookworm machine, not in \
             hack/setup.sh's PKGS): apt-get install systemd"
        );
    }

    let dir = tempfile::tempdir().expect("creating a temp dir");
    let mut files = Vec::new();
    for (name, bin) in SERVICES {
        let binary = profile_dir().join(bin);
        assert!(
            binary.is_file(),
            "{} is missing: run `cargo build --workspace --bins` before this test",
            binary.display()
        );
        let installed = format!("/usr/local/bin/{bin}");
        let text = fs::read_to_string(units_dir().join(name))
            .unwrap_or_else(|e| panic!("reading systemd/{name}: {e}"));
        let mut rewritten = 0;
        let out: Vec<String> = text
            .lines()
            .map(|line| match line.strip_prefix("ExecStart=") {
                Some(rest) => {
                    let rest = rest.strip_prefix(installed.as_str()).unwrap_or_else(|| {
                        panic!("{name}: ExecStart= does not run {installed}: {line}")
                    });
                    rewritten += 1;
                    format!("ExecStart={}{rest}", binary.display())
                }
                None => line.to_string(),
            })
            .collect();
        assert_eq!(rewritten, 1, "{name}: expected one ExecStart= line");
        let path = dir.path().join(name);
        fs::write(&path, out.join("\n") + "\n")
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        files.push(path);
    }
    for name in [MOUNT, FAVORDYNMODS] {
        let copy = dir.path().join(name);
        fs::copy(units_dir().join(name), &copy).expect("copying the unit");
        files.push(copy);
    }
    // The drop-in, on a stand-in containerd.service (a dev/CI machine has none), found
    // through the unit search path.
    let containerd = dir.path().join("containerd.service");
    fs::write(
        &containerd,
        "[Unit]\nDescription=stand-in for containerd\n[Service]\nExecStart=/bin/true\n",
    )
    .expect("writing the stand-in containerd.service");
    fs::create_dir(dir.path().join("containerd.service.d")).expect("drop-in dir");
    fs::copy(units_dir().join(DROP_IN), dir.path().join(DROP_IN)).expect("copying the drop-in");
    files.push(containerd);

    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&files)
        // Trailing ':' keeps the built-in search path after ours.
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.path().display()))
        .output()
        .expect("running systemd-analyze verify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // On some hosts verify also reports problems in other, unrelated system units: only
    // the lines naming ours count.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            [
                SERVICE,
                MOUNT,
                "rekindle",
                "run-criu",
                "favordynmods",
                "containerd.service",
            ]
            .iter()
            .any(|n| l.contains(n))
        })
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify {files:?} failed ({}); about our units: {ours:#?}\n\
         stdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
}
