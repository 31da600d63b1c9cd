//! The node image (`hack/build-node-image.sh`, what `deploy/node-daemonset.yaml` runs):
//! imported into a private containerd (no registry), its binaries run as containers
//! with the runc runtime (`io.containerd.runc.v2`), the way the kubelet would start the
//! DaemonSet's containers.
//!
//! Checks: both names (`docker.io/rekindle/node:<version>` and `:latest`) are imported;
//! `rekindle-restored --version`, `rekindle-agent --help`, `rekindle --version` and
//! `criu --version` (4.2.1, the build `hack/setup.sh` installs) run; `ldd` finds every
//! library of every binary inside the image; `criu check` passes in a privileged
//! container (as the DaemonSet's containers are); the image and the commands
//! `deploy/node-daemonset.yaml` names are in the archive. After each container: the harness's
//! leak check (no process, mount, cgroup, runc state or shim socket left), and after
//! containerd stops, nothing under its temp dir.
//!
//! Skipped (with the reason printed) when the archive is missing: build it with
//! `bash hack/build-node-image.sh` (hack/test.sh does not: it would need a release build).
//! Run as root:
//! `cargo test --test node_image` (`REKINDLE_CONTAINERD=1.6` for containerd 1.6).

#[allow(dead_code, unused_imports)]
#[path = "integration/harness/mod.rs"]
mod harness;

use std::path::PathBuf;
use std::process::Output;

use harness::containerd::{cache_dir, PrivateContainerd, Version};
use harness::leaks;

const NAMESPACE: &str = "rekindle-node-image";
const REPOSITORY: &str = "docker.io/rekindle/node";
const BINARIES: [&str; 7] = [
    "/usr/local/bin/containerd-shim-rekindle-v2",
    "/usr/local/bin/rekindle-criu-tar",
    "/usr/local/bin/rekindle-restored",
    "/usr/local/bin/rekindle-agent",
    "/usr/local/bin/rekindle",
    "/usr/local/bin/rekindle-extender",
    "/usr/local/sbin/criu",
];

/// `REKINDLE_NODE_IMAGE`, else the release image hack/build-node-image.sh
/// writes (hack/test.sh points this at the image it packs from the debug
/// build it just made, so CI needs no release build).
fn archive() -> PathBuf {
    std::env::var_os("REKINDLE_NODE_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("images/rekindle-node.oci.tar"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `args` in a fresh container of the node image (`ctr run --rm`, runc runtime,
/// FIFOs and runc state in containerd's temp dir), then checks nothing of it is left.
/// Returns (exit success, stdout + stderr).
///
/// The command's output goes to a file in a directory bind-mounted from the host, not
/// through ctr's stdio: `ctr run --rm` with containerd's runc shim sometimes loses the
/// tail of the output of a process that exits at once (seen once in CI: 3.6 KB of
/// `rekindle-agent --help`'s 7.6 KB, exit status 0).
fn run(
    cd: &PrivateContainerd,
    image: &str,
    n: usize,
    privileged: bool,
    args: &[&str],
) -> (bool, String) {
    let id = format!("rk-node-{}-{n}", std::process::id());
    let out_dir = cd.paths.dir.join(format!("out-{id}"));
    std::fs::create_dir_all(&out_dir).expect("create the output dir");
    let mut cmd = cd.ctr(NAMESPACE);
    cmd.args(["run", "--rm", "--snapshotter", harness::SNAPSHOTTER])
        .arg("--fifo-dir")
        .arg(&cd.paths.io)
        .arg("--runc-root")
        .arg(&cd.paths.runc_root)
        .arg("--mount")
        .arg(format!(
            "type=bind,src={},dst=/rk-out,options=rbind:rw",
            out_dir.display()
        ));
    if privileged {
        cmd.arg("--privileged");
    }
    cmd.arg(image)
        .arg(&id)
        .args(["/bin/sh", "-c", "exec \"$@\" >/rk-out/output 2>&1", "sh"])
        .args(args);
    // bounded: a hung container fails the test (containerd's shutdown then cleans up)
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(cmd.output()));
    let out = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .unwrap_or_else(|_| panic!("`ctr run {id} {}` took over 120 s", args.join(" ")))
        .expect("running ctr run");
    let ok = out.status.success();
    let said = std::fs::read_to_string(out_dir.join("output")).unwrap_or_default() + &text(&out);
    eprintln!(
        "$ ctr run {image} {id} {} -> {}\n{said}",
        args.join(" "),
        out.status
    );

    let target = leaks::Target {
        paths: &cd.paths,
        namespace: NAMESPACE,
        id: &id,
        cgroups_path: format!("/{NAMESPACE}/{id}"),
    };
    let left = leaks::find(&target);
    if !left.is_empty() {
        leaks::clean(&target);
        panic!(
            "LEAK after `{}` in {id}:\n  {}",
            args.join(" "),
            left.join("\n  ")
        );
    }
    (ok, said)
}

#[test]
fn the_node_image_runs_its_binaries() {
    let tar = archive();
    if !tar.is_file() {
        println!(
            "SKIPPED: {} does not exist; build it with `bash hack/build-node-image.sh`",
            tar.display()
        );
        eprintln!(
            "SKIPPED: {} missing (bash hack/build-node-image.sh)",
            tar.display()
        );
        return;
    }
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED: needs root (a private containerd and runc)");
        return;
    }
    let version = Version::from_env().expect("REKINDLE_CONTAINERD");
    let mut cd = PrivateContainerd::start(version).expect("starting a private containerd");
    cd.import_image_into(NAMESPACE, &tar)
        .expect("importing the node image");

    // both names, one manifest
    let out = cd
        .ctr(NAMESPACE)
        .args(["images", "ls"])
        .output()
        .expect("ctr images ls");
    let listing = text(&out);
    let names: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(REPOSITORY))
        .collect();
    let want_version = format!("{REPOSITORY}:{}", env!("CARGO_PKG_VERSION"));
    let latest = format!("{REPOSITORY}:latest");
    assert!(
        names.contains(&want_version.as_str()) && names.contains(&latest.as_str()),
        "want {want_version} and {latest} after the import, got:\n{listing}"
    );
    let digests: std::collections::BTreeSet<&str> = listing
        .lines()
        .filter(|l| l.starts_with(REPOSITORY))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("sha256:")))
        .collect();
    assert_eq!(
        digests.len(),
        1,
        "both names should be one manifest:\n{listing}"
    );

    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };

    let (ok, out) = run(
        &cd,
        &latest,
        next(),
        false,
        &["/usr/local/bin/rekindle-restored", "--version"],
    );
    assert!(
        ok && out.trim() == format!("rekindle-restored {}", env!("CARGO_PKG_VERSION")),
        "{out}"
    );

    let (ok, out) = run(
        &cd,
        &latest,
        next(),
        false,
        &["/usr/local/bin/rekindle-agent", "--help"],
    );
    assert!(
        ok && out.contains("Rekindle's per-node agent") && out.contains("--containerd-address"),
        "{out}"
    );

    let (ok, out) = run(
        &cd,
        &want_version,
        next(),
        false,
        &["/usr/local/bin/rekindle", "--version"],
    );
    assert!(
        ok && out.trim() == format!("rekindle {}", env!("CARGO_PKG_VERSION")),
        "{out}"
    );

    // found on the image's PATH, as the shim and rekindle-restored find it
    let (ok, out) = run(&cd, &latest, next(), false, &["criu", "--version"]);
    assert!(
        ok && out.lines().any(|l| l.trim() == "Version: 4.2.1"),
        "{out}"
    );

    let script = format!(
        "for f in {}; do echo \"== $f\"; ldd \"$f\" || exit 1; done",
        BINARIES.join(" ")
    );
    let (ok, out) = run(&cd, &latest, next(), false, &["/bin/sh", "-c", &script]);
    assert!(ok, "ldd failed in the image:\n{out}");
    for b in BINARIES {
        assert!(
            out.contains(&format!("== {b}")),
            "no ldd output for {b}:\n{out}"
        );
    }
    assert!(
        !out.contains("not found"),
        "a library is missing in the image:\n{out}"
    );
    assert!(
        out.contains("libcriu.so.2 => /usr/local/lib/libcriu.so.2"),
        "{out}"
    );

    // deploy/node-daemonset.yaml names this image and binaries that are in it
    let manifest = include_str!("../deploy/node-daemonset.yaml");
    let mut images = Vec::new();
    let mut commands = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("image:") {
            images.push(rest.split('#').next().unwrap_or("").trim().to_string());
        }
        if let Some(rest) = line.strip_prefix("command: [\"") {
            commands.push(rest.split('"').next().unwrap_or("").to_string());
        }
    }
    assert!(
        !images.is_empty() && images.len() == commands.len(),
        "{images:?} {commands:?}"
    );
    for (image, command) in images.iter().zip(&commands) {
        assert!(
            names.contains(&image.as_str()),
            "the DaemonSet runs {image}, the archive holds {names:?}"
        );
        let (ok, out) = run(&cd, image, next(), false, &[command, "--version"]);
        assert!(
            ok && out.trim().ends_with(env!("CARGO_PKG_VERSION")),
            "{command}: {out}"
        );
    }

    // privileged, like the DaemonSet's containers
    let (ok, out) = run(
        &cd,
        &latest,
        next(),
        true,
        &["/usr/local/sbin/criu", "check"],
    );
    assert!(
        ok && out.contains("Looks good"),
        "criu check in a privileged container:\n{out}"
    );

    let _ = cd
        .ctr(NAMESPACE)
        .args(["images", "rm", &latest, &want_version])
        .output();
    leaks::remove_empty_namespace_cgroups(NAMESPACE);
    let leaked = cd.shutdown();
    assert!(
        leaked.is_empty(),
        "left after containerd stopped:\n  {}",
        leaked.join("\n  ")
    );
}
