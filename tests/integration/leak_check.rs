//! The harness checks itself: a leak check that never fires would make every other
//! story's "left nothing behind" worthless.

use std::process::Command;

use crate::harness::{millis, try_story, NAMESPACE};

#[test]
fn the_leak_check_catches_a_process_a_cgroup_and_a_mount_left_behind() {
    let id = format!("leakcheck-{}", std::process::id());
    let cgroups_path = format!("/{NAMESPACE}/{id}");
    // A cgroup for it, in whichever hierarchy this machine has (v1 pids, or v2).
    let hierarchy = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
        .into_iter()
        .find(|h| std::path::Path::new(h).is_dir())
        .expect("no cgroup hierarchy");
    let cgroup = std::path::Path::new(hierarchy).join(cgroups_path.trim_start_matches('/'));
    let mut sleeper = None;
    let mut mount_point = None;

    let outcome = try_story("leak-check", |ctx| {
        ctx.adopt(&id, &cgroups_path);
        ctx.set_leak_grace(millis(300));
        // A process naming the container, like a shim left running.
        let child = Command::new("/bin/sh")
            .args(["-c", "sleep 60; true", &id])
            .spawn()
            .expect("spawn sleeper");
        sleeper = Some(child);
        std::fs::create_dir_all(&cgroup).expect("mkdir cgroup");
        // A mount under its io directory.
        let mp = ctx.paths().io.join(&id).join("rootfs");
        std::fs::create_dir_all(&mp).expect("mkdir mount point");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "leaktest"])
            .arg(&mp)
            .status()
            .expect("mount")
            .success();
        assert!(ok, "mount tmpfs on {}", mp.display());
        mount_point = Some(mp);
        async { Ok(()) }
    });

    if let Some(mut child) = sleeper {
        let _ = child.kill();
        let _ = child.wait();
    }
    let message = match outcome {
        Ok(()) => panic!("the leak check let a process, a cgroup and a mount through"),
        Err(report) => report,
    };
    for needle in ["LEAK", "process", "cgroup left", "mount left"] {
        assert!(
            message.contains(needle),
            "no {needle:?} in the leak report:\n{message}"
        );
    }
    // And it removed what it reported.
    let mp = mount_point.expect("mount point");
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(&mp.display().to_string());
    assert!(
        !mounted,
        "{} still mounted after the leak check",
        mp.display()
    );
    assert!(
        !cgroup.exists(),
        "{} still there after the leak check",
        cgroup.display()
    );
}
