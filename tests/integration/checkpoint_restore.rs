//! A function container is checkpointed and comes back with its memory: through
//! containerd's own checkpoint/restore calls, and from rekindle-restored's image store
//! (`io.rekindle.image`), twice at once, as a normal task, across export and import —
//! and when a restore cannot happen, the user is told why, nothing is left behind, and
//! `io.rekindle.fallback=cold` still gets the request a function (cold-started).
//!
//! Restored instances from one image all listen on the port their checkpoint had: the
//! stories that restore from the store give each instance a network namespace of its own
//! (see `harness::restore`), so two of them can run at the same time, and reach them
//! from inside that namespace. Each such story has a rekindle-restored of its own.

use anyhow::Context as _;
use containerd_client::tonic::Code;
use containerd_client::types::v1::Status;
use rekindle_restore_api::{Client, ImageInfo};
use std::os::unix::fs::MetadataExt as _;

use crate::harness::restore::{
    checkpoint, fixture_image, get_in_netns, needs_rekindle, release_lease, restore_story,
    restore_story_daemon_down, tar_dir, write_content, CheckpointOptions, FunctionSpec,
    CHECKPOINT_MEDIA_TYPE, FALLBACK_ANNOTATION, FIXTURE_COUNT, FIXTURE_STATE_MB, IMAGE_ANNOTATION,
    REPLACE_ANNOTATION, STORE_AS_ANNOTATION,
};
use crate::harness::{grpc_code, http, metrics, millis, secs, story, Ctx, NAMESPACE};

/// The name the stories store the fixture under.
const FN_IMAGE: &str = "python-fn";

/// Which engine restored a task: runc keeps a state dir for the containers it
/// runs; the shim's direct engine restores through libcriu and runc knows
/// nothing of them.
fn restored_by_runc(ctx: &Ctx, id: &str) -> bool {
    ctx.paths()
        .runc_root
        .join(NAMESPACE)
        .join(id)
        .join("state.json")
        .exists()
}

/// Starts `f`, created from the fixture's image, and checks it was restored by the
/// direct engine, answers from the image's state, and that what it writes reaches
/// containerd's fifos (through the pipes the shim handed to CRIU): its init's pid.
async fn start_restored_directly(
    ctx: &Ctx,
    f: &crate::harness::restore::Function,
) -> anyhow::Result<u32> {
    let pid = f.start().await?;
    assert!(
        !restored_by_runc(ctx, &f.id),
        "{} restored by the direct engine",
        f.id
    );
    // The shim tags its lines with its id: the restore's line is found by it, as
    // `journalctl -u containerd | grep` would.
    assert!(
        ctx.paths()
            .shim_line(&f.id, "restored by the direct engine")
            .is_some(),
        "containerd's log has the shim's `restored by the direct engine` line tagged id={:?}",
        f.id
    );
    assert_eq!(
        f.count().await?,
        FIXTURE_COUNT + 1,
        "from the image's state"
    );
    let line = format!("{}-restored-says-hello", f.id);
    let (status, body) = f.get(&format!("/log/{line}"), secs(10)).await?;
    assert_eq!(status, 200, "GET /log: {body}");
    f.stdout.wait_for(&line, secs(10)).await?;
    f.stderr.wait_for(&line, secs(10)).await?;
    Ok(pid)
}

#[test]
fn a_function_checkpointed_through_containerd_is_restored_and_keeps_counting() {
    story("checkpoint-restore", |ctx| async move {
        let f = ctx.start_function("ckpt").await?;
        let port = f.port();
        assert_eq!(http::count(port, secs(5)).await?, 1);
        assert_eq!(http::count(port, secs(5)).await?, 2);
        let (_, body) = http::get(port, "/", secs(5)).await?;
        let before: serde_json::Value = serde_json::from_str(&body)?;
        assert_eq!(before["count"], 3, "{before}");

        // As containerd's Go client checkpoints: pause, Tasks.Checkpoint with runc's
        // CheckpointOptions, resume. containerd keeps the CRIU image and the spec.
        let ck = checkpoint(&ctx, &f.id, CheckpointOptions::default()).await?;
        let criu = ck.criu()?.clone();
        assert!(
            criu.size > 8 << 20,
            "the CRIU image of a function with ~48 MB of state is only {} bytes",
            criu.size
        );
        let spec = ck.spec(&ctx).await?;
        assert_eq!(
            f.state().await?.status(),
            Status::Running,
            "the function runs on after its checkpoint"
        );

        // The original goes away; `ctr container restore --live` then recreates the
        // container from the checkpoint's spec and creates its task with the checkpoint.
        let id = f.id.clone();
        let exited = f.wait_in_background(secs(30));
        f.kill(libc::SIGKILL, false).await?;
        exited.await??;
        f.delete().await?;

        let r = FunctionSpec::new("ckpt")
            .id(&id)
            .port(port)
            .with_spec(spec)
            .restore_from(&criu)
            .create(&ctx)
            .await?;
        let pid = r.start().await?;
        assert!(pid > 0, "Tasks.Start of a restore reports the restored pid");
        assert!(
            !restored_by_runc(&ctx, &r.id),
            "containerd's own checkpoint is restored by the direct engine, not runc"
        );
        let after = r.call().await?;
        assert_eq!(
            after["count"], 4,
            "the restored function answers from its pre-checkpoint state: {after}"
        );
        assert_eq!(after["checksum"], before["checksum"], "its ~48 MB of state");
        // Every byte of it, each page read back (with lazy pages, each served by CRIU's
        // lazy-pages daemon: on its fault, or in the daemon's copy in the background).
        r.state_intact().await?;
        assert_eq!(after["pid"], before["pid"], "its pid inside the container");
        assert_eq!(r.count().await?, 5, "and keeps counting");
        assert_eq!(r.status().await?, Status::Running);

        let exited = r.wait_in_background(secs(30));
        r.kill(libc::SIGTERM).await?;
        assert_eq!(
            exited.await??,
            0,
            "the restored function exits 0 on SIGTERM"
        );
        assert_eq!(r.delete().await?, 0);
        ck.release(&ctx).await?;
        Ok(())
    });
}

#[test]
fn one_stored_image_is_restored_twice_at_the_same_time() {
    restore_story("restore-twice", |ctx, restored| async move {
        if let Some(skip) = needs_rekindle(&ctx, "restore-twice") {
            eprintln!("{skip}");
            return Ok(());
        }
        fixture_image(&ctx, &restored, FN_IMAGE).await?;
        // Staged: both restores read the same decompressed copy in memory.
        let staged = restored.client().stage_image(FN_IMAGE).await?;
        assert!(staged.bytes > 8 << 20, "{staged:?}");

        // Each instance in a network namespace of its own: both listen on the port the
        // checkpointed process had bound.
        let instance = || {
            FunctionSpec::new("twice")
                .own_netns()
                .annotate(IMAGE_ANNOTATION, FN_IMAGE)
        };
        let (a, b) = tokio::try_join!(instance().create(&ctx), instance().create(&ctx))?;
        tokio::try_join!(a.start(), b.start())?;
        for f in [&a, &b] {
            let given = f.netns.as_ref().expect("own netns").inode()?;
            assert_eq!(
                f.netns_inode()?,
                given,
                "{} was restored into the network namespace its container names",
                f.id
            );
        }
        assert_ne!(a.netns_inode()?, b.netns_inode()?);
        assert_eq!(
            a.count().await?,
            FIXTURE_COUNT + 1,
            "first instance, first request"
        );
        assert_eq!(
            b.count().await?,
            FIXTURE_COUNT + 1,
            "second instance, first request"
        );
        assert_eq!(
            a.count().await?,
            FIXTURE_COUNT + 2,
            "the instances count apart"
        );
        assert_eq!(
            b.count().await?,
            FIXTURE_COUNT + 2,
            "the instances count apart"
        );

        // Leases are released once CRIU no longer reads the image: with lazy
        // pages, when the daemon has sent the last page, shortly after the restore.
        let mut stats = restored.client().stats().await?;
        for _ in 0..100 {
            if stats.leases == 0 {
                break;
            }
            tokio::time::sleep(millis(100)).await;
            stats = restored.client().stats().await?;
        }
        assert_eq!(
            stats.leases, 0,
            "both restores released their leases: {stats:?}"
        );
        assert_eq!(stats.staged_images, 1, "{stats:?}");

        tokio::try_join!(a.destroy(), b.destroy())?;
        restored.client().unstage_image(FN_IMAGE).await?;
        Ok(())
    });
}

/// The shim starts a restore's preparation before containerd's Create reaches it,
/// on stdio pipes owned by root; a Create whose options give the pipes another
/// owner gets a preparation of its own, and the restored process writes to pipes
/// that owner holds.
#[test]
fn a_create_that_differs_from_what_the_shim_prepared_before_it_is_prepared_anew() {
    restore_story("io-owner", |ctx, restored| async move {
        if let Some(skip) = needs_rekindle(&ctx, "io-owner") {
            eprintln!("{skip}");
            return Ok(());
        }
        fixture_image(&ctx, &restored, FN_IMAGE).await?;
        restored.client().stage_image(FN_IMAGE).await?;
        const OWNER: u32 = 4242;
        let f = FunctionSpec::new("io-owner")
            .own_netns()
            .io_owner(OWNER, OWNER)
            .annotate(IMAGE_ANNOTATION, FN_IMAGE)
            .create(&ctx)
            .await?;
        let pid = start_restored_directly(&ctx, &f).await?;
        for fd in [1, 2] {
            let link = format!("/proc/{pid}/fd/{fd}");
            let target = std::fs::read_link(&link)?;
            assert!(
                target.to_string_lossy().starts_with("pipe:"),
                "{link} -> {}",
                target.display()
            );
            let meta = std::fs::metadata(&link)?;
            assert_eq!(
                (meta.uid(), meta.gid()),
                (OWNER, OWNER),
                "{link}: the pipe belongs to IoUid:IoGid"
            );
        }
        f.destroy().await?;
        restored.client().unstage_image(FN_IMAGE).await?;
        Ok(())
    });
}

/// The mounts CRIU rebuilds for a restored container are the ones runc made for a
/// cold-started container of the same function: the same mount points, file systems,
/// read-only flags and options, and the same content in its tmpfs mounts (/dev's nodes,
/// the cgroup hierarchies' directories). The shim's CRIU has that content extracted by
/// its tmpfs helper while it makes the next mounts (hack/criu-patches/0002, 0014).
#[test]
fn a_restored_function_has_the_mounts_of_a_cold_started_one() {
    restore_story("mounts", |ctx, restored| async move {
        if let Some(skip) = needs_rekindle(&ctx, "mounts") {
            eprintln!("{skip}");
            return Ok(());
        }
        fixture_image(&ctx, &restored, FN_IMAGE).await?;
        restored.client().stage_image(FN_IMAGE).await?;
        let cold = FunctionSpec::new("mounts-cold")
            .own_netns()
            .create(&ctx)
            .await?;
        let cold_pid = cold.start().await?;
        cold.wait_serving(secs(30)).await?;
        let f = FunctionSpec::new("mounts-restored")
            .own_netns()
            .annotate(IMAGE_ANNOTATION, FN_IMAGE)
            .create(&ctx)
            .await?;
        let pid = start_restored_directly(&ctx, &f).await?;
        assert_eq!(
            mounts_of(pid, &f.id)?,
            mounts_of(cold_pid, &cold.id)?,
            "mounts of the restored container (left) and of a cold-started one (right)"
        );
        // The spec asks for a cgroup namespace: the restored container has its own, as
        // the cold-started one has (its cgroup mounts then show its own cgroups).
        let cgroupns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/cgroup"));
        let host = cgroupns("self")?;
        assert_ne!(
            cgroupns(&cold_pid.to_string())?,
            host,
            "cold start: own cgroupns"
        );
        assert_ne!(cgroupns(&pid.to_string())?, host, "restored: own cgroupns");
        for dir in ["dev", "sys/fs/cgroup", "proc/acpi", "sys/firmware"] {
            assert_eq!(
                entries_of(pid, dir)?,
                entries_of(cold_pid, dir)?,
                "/{dir} of the restored container (left) and of a cold-started one (right)"
            );
        }
        tokio::try_join!(cold.destroy(), f.destroy())?;
        restored.client().unstage_image(FN_IMAGE).await?;
        Ok(())
    });
}

/// The mounts container `id` (init `pid`) has, sorted: mount point, root (the
/// container's id in it as `<id>`: its cgroup mounts show its own cgroup), file
/// system, per-mount options and superblock options. Two kinds are compared in part
/// only:
/// - the root's superblock options name its snapshot's layers, which differ from one
///   container to the next: only ro/rw is kept of those;
/// - runc masks files (/proc/keys, ...) with a bind of /dev/null; a checkpoint
///   records those as external mounts of /dev/null (runc's checkpoint does the same)
///   and a restore binds the host's: only the mount point, that it is /dev/null and
///   ro/rw are kept of those.
fn mounts_of(pid: u32, id: &str) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let mut mounts = text
        .lines()
        .map(|line| {
            let (left, right) = line
                .split_once(" - ")
                .with_context(|| format!("mountinfo line {line:?}"))?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            anyhow::ensure!(
                left.len() >= 6 && right.len() >= 3,
                "mountinfo line {line:?}"
            );
            let (root, mount_point, options) = (left[3], left[4], left[5]);
            let (fs, super_options) = (right[0], right[2]);
            let ro_rw = |o: &str| o.split(',').next().unwrap_or_default().to_string();
            Ok(if root == "/null" {
                format!("{mount_point} /dev/null {}", ro_rw(options))
            } else if fs == "overlay" {
                format!("{mount_point} {fs} {options} {}", ro_rw(super_options))
            } else {
                let root = root.replace(id, "<id>");
                format!("{mount_point} {root} {fs} {options} {super_options}")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    mounts.sort();
    Ok(mounts)
}

/// What `dir` holds as `pid` sees it: each entry's name, mode, owner and device.
fn entries_of(pid: u32, dir: &str) -> anyhow::Result<Vec<String>> {
    let path = format!("/proc/{pid}/root/{dir}");
    let mut entries = std::fs::read_dir(&path)
        .with_context(|| format!("reading {path}"))?
        .map(|e| {
            let e = e?;
            let m = std::fs::symlink_metadata(e.path())?;
            Ok(format!(
                "{} {:o} {}:{} {:x}",
                e.file_name().to_string_lossy(),
                m.mode(),
                m.uid(),
                m.gid(),
                m.rdev()
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    entries.sort();
    Ok(entries)
}

#[test]
fn a_restored_function_is_a_normal_task_and_can_be_checkpointed_again() {
    restore_story("restored-task", |ctx, restored| async move {
        if let Some(skip) = needs_rekindle(&ctx, "restored-task") {
            eprintln!("{skip}");
            return Ok(());
        }
        fixture_image(&ctx, &restored, FN_IMAGE).await?;
        let events = crate::harness::restore::TaskEvents::subscribe(&ctx).await?;

        // From the LZ4 store on disk; its next checkpoints go to the store as well,
        // each replacing the one before.
        let f = FunctionSpec::new("restored")
            .own_netns()
            .annotate(IMAGE_ANNOTATION, FN_IMAGE)
            .annotate(STORE_AS_ANNOTATION, "python-fn-2")
            .annotate(REPLACE_ANNOTATION, "true")
            .create(&ctx)
            .await?;
        assert_eq!(f.status().await?, Status::Created);
        let pid = f.start().await?;
        assert!(
            !restored_by_runc(&ctx, &f.id),
            "a stored image is restored by the direct engine"
        );
        let state = f.state().await?;
        assert_eq!(state.status(), Status::Running);
        assert_eq!(state.pid, pid, "Tasks.Get and Tasks.Start agree on the pid");
        let pids = f.pids().await?;
        assert!(
            pids.iter().any(|p| p.pid == pid),
            "Tasks.ListPids {pids:?} lacks the restored init {pid}"
        );
        assert_eq!(f.count().await?, FIXTURE_COUNT + 1);

        // exec
        let (status, out) = f.exec("cmdline", &["/bin/cat", "/proc/1/cmdline"]).await?;
        assert_eq!(status, 0, "exec in a restored container: {out:?}");
        assert!(out.contains("python3"), "pid 1 of the container: {out:?}");
        // Its UTS namespace is the checkpointed one: the hostname of the container
        // the fixture was checkpointed from (its id), not this one's.
        let (status, out) = f
            .exec("hostname", &["/bin/cat", "/proc/sys/kernel/hostname"])
            .await?;
        assert_eq!(status, 0, "{out:?}");
        let fixture = restored.client().get_image(FN_IMAGE).await?;
        let source = fixture
            .manifest
            .labels
            .get("container")
            .expect("the shim labels a stored checkpoint with its container");
        assert_eq!(out.trim(), &source[..source.len().min(63)]);
        assert_ne!(
            out.trim(),
            f.id,
            "a restored container keeps the hostname it had"
        );

        // stats: the restored memory is the container's
        let all = f.metrics().await?;
        let m = all
            .iter()
            .find(|m| m.id == f.id)
            .ok_or_else(|| anyhow::anyhow!("Tasks.Metrics has no entry for {}", f.id))?;
        let summary = metrics::decode(m.data.as_ref().expect("metric data"))?;
        assert!(
            summary.memory_usage > FIXTURE_STATE_MB << 20,
            "a restored function's {FIXTURE_STATE_MB} MB of state is charged to its cgroup: \
             {summary:?}"
        );

        // update: new limits reach the container's cgroups; its device rules stay
        let cgroup = |controller: &str, file: &str| {
            std::fs::read_to_string(format!(
                "/sys/fs/cgroup/{controller}/{NAMESPACE}/{}/{file}",
                f.id
            ))
            .unwrap_or_default()
        };
        let devices = cgroup("devices", "devices.list");
        f.update(serde_json::json!({"memory": {"limit": 512u64 << 20}, "pids": {"limit": 100}}))
            .await?;
        assert_eq!(
            cgroup("memory", "memory.limit_in_bytes").trim(),
            "536870912"
        );
        assert_eq!(cgroup("pids", "pids.max").trim(), "100");
        assert_eq!(
            cgroup("devices", "devices.list"),
            devices,
            "Tasks.Update leaves the device rules alone"
        );

        // pause / resume: a request waits for the resume, then is answered in order
        f.pause().await?;
        assert_eq!(f.status().await?, Status::Paused);
        let (netns, port) = (f.netns.clone().expect("own netns"), f.port);
        let pending =
            tokio::spawn(async move { get_in_netns(netns.path(), port, "/", secs(30)).await });
        tokio::time::sleep(millis(700)).await;
        assert!(!pending.is_finished(), "a paused function answered");
        f.resume().await?;
        assert_eq!(f.status().await?, Status::Running);
        let (code, body) = tokio::time::timeout(secs(10), pending).await???;
        assert_eq!(code, 200, "{body}");
        assert!(
            body.contains(&format!("\"count\": {}", FIXTURE_COUNT + 2)),
            "the held request: {body}"
        );

        // checkpointed again (stored as python-fn-2 by the shim), and runs on
        let ck = f.checkpoint(CheckpointOptions::default()).await?;
        ck.release(&ctx).await?;
        assert_eq!(f.status().await?, Status::Running);
        assert_eq!(f.count().await?, FIXTURE_COUNT + 3);
        let second = restored.client().get_image("python-fn-2").await?;
        assert_eq!(
            second.manifest.labels.get("container"),
            Some(&f.id),
            "{second:?}"
        );

        // Checkpointed once more: python-fn-2 is replaced (the container's replace
        // annotation); restored below.
        let ck = f.checkpoint(CheckpointOptions::default()).await?;
        ck.release(&ctx).await?;
        assert_eq!(f.count().await?, FIXTURE_COUNT + 4);

        // kill, wait, delete
        let id = f.id.clone();
        let exited = f.wait_in_background(secs(30));
        f.kill(libc::SIGTERM).await?;
        assert_eq!(exited.await??, 0, "exit status of the restored function");
        assert_eq!(f.delete().await?, 0, "exit status reported by Tasks.Delete");

        // events: the task's own, the exec's, and the pause/resume around the checkpoint
        // (containerd's runc shim publishes no /tasks/checkpointed either)
        let expected = [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/exit",
            "/tasks/paused",
            "/tasks/resumed",
            "/tasks/paused",
            "/tasks/resumed",
            "/tasks/paused",
            "/tasks/resumed",
            "/tasks/exit",
            "/tasks/delete",
        ];
        let seen = events.wait_for(&id, &expected).await?;
        let mut rest = seen.iter();
        for topic in expected {
            assert!(
                rest.any(|s| s == topic),
                "task events of {id}: expected {expected:?} in this order, containerd published \
                 {seen:?}"
            );
        }

        // The last checkpoint restores too, staged this time, from where it was: the
        // replaced image (the one before it would answer FIXTURE_COUNT + 3).
        restored.client().stage_image("python-fn-2").await?;
        let g = FunctionSpec::new("restored-again")
            .own_netns()
            .annotate(IMAGE_ANNOTATION, "python-fn-2")
            .create(&ctx)
            .await?;
        g.start().await?;
        assert_eq!(g.count().await?, FIXTURE_COUNT + 4);
        g.destroy().await?;
        restored.client().unstage_image("python-fn-2").await?;
        Ok(())
    });
}

#[test]
fn when_the_direct_engine_fails_runc_restores_the_same_image() {
    restore_story("direct-fails", |ctx, restored| async move {
        if let Some(skip) = needs_rekindle(&ctx, "direct-fails") {
            eprintln!("{skip}");
            return Ok(());
        }
        fixture_image(&ctx, &restored, FN_IMAGE).await?;
        let f = FunctionSpec::new("direct-fails")
            .own_netns()
            .annotate(IMAGE_ANNOTATION, FN_IMAGE)
            .create(&ctx)
            .await?;
        // The direct engine restored the tree at Create with a `criu swrk` in the
        // instance's cgroups, and holds it there stopped until Start; that swrk dies
        // (as under memory pressure) before Start.
        let swrk = criu_swrk_in_cgroup_of(&f.id).await?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(swrk),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        // A tree it held is killed with it, not let go to run before Start.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let left = pids_in_cgroup_of(&f.id);
            if left.is_empty() {
                break;
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "5 s after its criu swrk died, {left:?} still run in {}'s cgroups before Start",
                f.id
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // The killed criu's mount-namespace yard is in the bundle's work dir (CRIU
        // patch 0019), not in the host's /tmp: gone with the bundle (the final leak
        // check), though criu never got to remove it.
        let work = ctx.paths().bundle(NAMESPACE, &f.id).join("direct-work");
        let yards: Vec<String> = std::fs::read_dir(&work)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".criu.mntns."))
            .collect();
        anyhow::ensure!(
            yards.len() == 1,
            "one mount-namespace yard of the killed criu in {}, found {yards:?}",
            work.display()
        );
        f.start().await?;
        assert!(
            restored_by_runc(&ctx, &f.id),
            "after the direct engine failed, runc restored the container"
        );
        assert_eq!(
            f.count().await?,
            FIXTURE_COUNT + 1,
            "from the image's state"
        );
        let said = ctx
            .paths()
            .log_lines_mentioning(&["direct restore failed".to_string()], 5);
        assert!(
            said.contains("trying runc restore"),
            "the shim logs the fast path's failure and the next path: {said:?}"
        );
        // ... and rekindle-restored counts both attempts.
        let client = restored.client();
        let failed = counted_restores(&client, "direct", "failed").await?;
        assert_eq!(failed.count, 1, "{failed:?}");
        let reason = failed.last_reason.unwrap_or_default();
        assert!(
            reason.contains("criu restore"),
            "the counted reason: {reason:?}"
        );
        let ok = counted_restores(&client, "runc", "ok").await?;
        assert_eq!(ok.count, 1, "{ok:?}");
        f.destroy().await?;
        Ok(())
    });
}

/// A stored image whose tmpfs archives reach outside their mount (`../` names: an image
/// crafted with a consistent manifest, so only the extraction can tell) is refused: the
/// direct engine's tmpfs helper refuses the archive and CRIU's restore fails where it
/// waits for that answer (CRIU patch 0014 sends the archives ahead and waits before the
/// mount tree is assembled), counted with the helper's reason; `runc restore`, tried
/// next, fails on the same archive (its CRIU extracts with rekindle-criu-tar, which
/// refuses it too); Start says so, and nothing of either attempt is left (the story's
/// leak check).
#[test]
fn a_stored_image_whose_tmpfs_archive_escapes_its_mount_is_refused() {
    restore_story("hostile-tmpfs", |ctx, restored| async move {
        if let Some(skip) = needs_rekindle(&ctx, "hostile-tmpfs") {
            eprintln!("{skip}");
            return Ok(());
        }
        fixture_image(&ctx, &restored, FN_IMAGE).await?;
        let client = restored.client();
        // The crafted image: the fixture's files, each tmpfs archive replaced.
        let dir = tempfile::Builder::new()
            .prefix("hostile-")
            .tempdir_in(restored.store.parent().context("the daemon's directory")?)?;
        let p = client.prepare_restore(FN_IMAGE, false).await?;
        let mut replaced = 0;
        for e in std::fs::read_dir(&p.image_dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let dest = dir.path().join(&name);
            if name.starts_with("tmpfs-dev-") && name.ends_with(".tar.gz.img") {
                std::fs::write(&dest, escaping_tar_gz()?)?;
                replaced += 1;
            } else {
                std::fs::copy(e.path(), &dest)?;
            }
        }
        client.release_restore(&p.lease).await?;
        assert!(replaced > 0, "the fixture has tmpfs archives to replace");
        const HOSTILE: &str = "python-fn-hostile-tmpfs";
        client
            .store_image(HOSTILE, dir.path(), Default::default(), None)
            .await?;

        let f = FunctionSpec::new("hostile-tmpfs")
            .own_netns()
            .annotate(IMAGE_ANNOTATION, HOSTILE)
            .create(&ctx)
            .await?;
        let err = match f.start().await {
            Err(e) => format!("{e:#}"),
            Ok(_) => anyhow::bail!("Tasks.Start of {} from a hostile image succeeded", f.id),
        };
        assert!(
            err.contains("Can't restore tmpfs content"),
            "Start names the tmpfs restore: {err}"
        );
        let failed = counted_restores(&client, "direct", "failed").await?;
        let reason = failed.last_reason.unwrap_or_default();
        assert!(
            reason.contains("tmpfs helper") && reason.contains("refused"),
            "the counted reason names the helper's refusal: {reason:?}"
        );
        assert_ne!(f.status().await?, Status::Running);
        f.delete().await?;
        client.delete_image(HOSTILE).await?;
        Ok(())
    });
}

/// What rekindle-restored counted of `engine`'s restores with `outcome`, once it has
/// counted one: the shim reports in the background, so it is asked for up to 5 s.
async fn counted_restores(
    client: &Client,
    engine: &str,
    outcome: &str,
) -> anyhow::Result<rekindle_restore_api::RestoreCount> {
    let mut restores = Vec::new();
    for _ in 0..50 {
        restores = client.stats().await?.restores;
        if let Some(r) = restores
            .iter()
            .find(|r| r.engine == engine && r.outcome == outcome)
        {
            return Ok(r.clone());
        }
        tokio::time::sleep(millis(100)).await;
    }
    anyhow::bail!("no {engine} restore counted as {outcome} within 5 s: {restores:?}")
}

/// A gzip'd tar whose one member is `../rekindle-escaped`: written as the archive's
/// bytes (the tar crate refuses to build such a name), compressed by `gzip`.
fn escaping_tar_gz() -> anyhow::Result<Vec<u8>> {
    let mut header = tar::Header::new_old();
    let name = b"../rekindle-escaped";
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_mode(0o644);
    header.set_size(1);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut raw = Vec::new();
    raw.extend_from_slice(header.as_bytes());
    let mut data = [0u8; 512];
    data[0] = b'x';
    raw.extend_from_slice(&data);
    raw.extend_from_slice(&[0u8; 1024]);
    let mut gzip = std::process::Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running gzip")?;
    std::io::Write::write_all(gzip.stdin.as_mut().context("gzip's stdin")?, &raw)?;
    drop(gzip.stdin.take());
    let out = gzip.wait_with_output()?;
    anyhow::ensure!(out.status.success(), "gzip exited with {}", out.status);
    Ok(out.stdout)
}

/// The pid of the `criu swrk` in the container's cgroups once the shim's direct
/// engine holds the restored tree there, stopped before it resumes (it restores
/// ahead, at Create, and Create answers meanwhile, so it is looked for a while).
/// Waiting for the held tree tells swrk apart from the tree's root, which is a
/// fork of swrk (same name, same command line) until CRIU's restorer is done.
async fn criu_swrk_in_cgroup_of(id: &str) -> anyhow::Result<i32> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(pid) = find_criu_swrk_holding_a_tree(id)? {
            return Ok(pid);
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "after 10 s, no criu swrk in the cgroups of {id} holding a stopped tree: did the direct engine restore it ahead?"
            )
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn find_criu_swrk_holding_a_tree(id: &str) -> anyhow::Result<Option<i32>> {
    let (mut criu, mut held) = (Vec::new(), false);
    for p in processes_in_cgroups_of(id)?
        .into_iter()
        .filter(|p| p.in_all)
    {
        if p.comm == "criu" {
            criu.push(p.pid);
        } else if p.state == Some('t') {
            held = true;
        }
    }
    Ok(match (held, criu.as_slice()) {
        (true, [swrk]) => Some(*swrk),
        _ => None,
    })
}

/// The live processes in any of the container's cgroups.
fn pids_in_cgroup_of(id: &str) -> Vec<i32> {
    processes_in_cgroups_of(id)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.state != Some('Z'))
        .map(|p| p.pid)
        .collect()
}

struct CgroupProcess {
    pid: i32,
    comm: String,
    /// The state letter of /proc/<pid>/stat ('t' traced and stopped, 'Z' zombie, ...).
    state: Option<char>,
    /// In the container's cgroup in every hierarchy, not only in some.
    in_all: bool,
}

/// The processes in at least one of the container's cgroups.
fn processes_in_cgroups_of(id: &str) -> anyhow::Result<Vec<CgroupProcess>> {
    let ours = format!("/{NAMESPACE}/{id}");
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if !cgroup.lines().any(|l| l.ends_with(&ours)) {
            continue;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        out.push(CgroupProcess {
            pid,
            comm: comm.trim_end().to_string(),
            state: stat.rfind(')').and_then(|i| stat[i + 2..].chars().next()),
            in_all: cgroup.lines().all(|l| l.ends_with(&ours)),
        });
    }
    Ok(out)
}

/// Seconds a failing restore may take to fail at Start (a good one of the fixture takes
/// well under one).
const START_BOUND: u64 = 10;

/// Where a failed restore surfaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FailsAt {
    Create,
    Start,
}

/// One failure, both ways: without a fallback the restore fails at `fails_at` with an
/// error that contains every one of `names` (and the container can be deleted); with
/// `io.rekindle.fallback=cold` the same container cold-starts and answers its first
/// request with 1. Returns the error's text.
async fn refused_then_cold_start(
    ctx: &Ctx,
    instance: impl Fn() -> FunctionSpec,
    fails_at: FailsAt,
    names: &[&str],
) -> anyhow::Result<String> {
    let err = match (instance().create(ctx).await, fails_at) {
        (Err(e), FailsAt::Create) => e,
        (Ok(f), FailsAt::Start) => match f.start_within(secs(START_BOUND)).await {
            Err(e) => {
                assert_ne!(f.status().await?, Status::Running);
                f.delete().await?;
                e
            }
            Ok(pid) => anyhow::bail!("the restore was expected to fail, but {pid} runs"),
        },
        (Ok(f), FailsAt::Create) => {
            let id = f.id.clone();
            f.destroy().await?;
            anyhow::bail!("Tasks.Create of {id} was expected to fail");
        }
        (Err(e), FailsAt::Start) => {
            return Err(
                e.context("Tasks.Create was expected to succeed (the restore fails at Start)")
            )
        }
    };
    let message = format!("{err:#}");
    for name in names {
        assert!(
            message.contains(name),
            "the error should name {name:?}: {message}"
        );
    }

    let f = instance()
        .annotate(FALLBACK_ANNOTATION, "cold")
        .create(ctx)
        .await
        .context("Tasks.Create with io.rekindle.fallback=cold")?;
    f.start()
        .await
        .context("Tasks.Start with io.rekindle.fallback=cold")?;
    f.wait_serving(secs(30)).await?;
    assert_eq!(
        f.count().await?,
        1,
        "with io.rekindle.fallback=cold the function cold-starts: a fresh counter"
    );
    f.destroy().await?;
    Ok(message)
}

/// The daemon counted the failure of `op` with `code`.
async fn assert_counted(client: &Client, op: &str, code: &str) -> anyhow::Result<()> {
    let stats = client.stats().await?;
    let n = stats
        .failures_by_op
        .get(op)
        .and_then(|m| m.get(code))
        .copied()
        .unwrap_or(0);
    assert!(
        n >= 1,
        "rekindle-restored did not count a {code} {op}: {stats:?}"
    );
    Ok(())
}

#[test]
fn restoring_an_image_that_is_not_in_the_store_says_so() {
    restore_story("restore-missing-image", |ctx, restored| async move {
        if let Some(skip) = needs_rekindle(&ctx, "restore-missing-image") {
            eprintln!("{skip}");
            return Ok(());
        }
        let instance = || {
            FunctionSpec::new("missing")
                .own_netns()
                .annotate(IMAGE_ANNOTATION, "no-such-image")
        };
        refused_then_cold_start(
            &ctx,
            instance,
            FailsAt::Create,
            &["no-such-image", "not_found"],
        )
        .await?;
        // ...and as a NotFound, for clients that look at the code.
        let err = match instance().create(&ctx).await {
            Err(e) => e,
            Ok(f) => {
                f.destroy().await?;
                anyhow::bail!("restoring a missing image succeeded");
            }
        };
        assert_eq!(grpc_code(&err), Some(Code::NotFound), "{err:#}");
        assert_counted(&restored.client(), "prepare_restore", "not_found").await?;
        Ok(())
    });
}

#[test]
fn a_corrupted_stored_image_is_refused_naming_the_file() {
    restore_story("restore-corrupt-image", |ctx, restored| async move {
        if let Some(skip) = needs_rekindle(&ctx, "restore-corrupt-image") {
            eprintln!("{skip}");
            return Ok(());
        }
        fixture_image(&ctx, &restored, FN_IMAGE).await?;
        let info = restored.client().get_image(FN_IMAGE).await?;
        let pages = info
            .manifest
            .files
            .iter()
            .max_by_key(|f| f.compressed_size)
            .expect("an image has files")
            .path
            .clone();
        // One byte flipped in the middle of the stored LZ4 frame of the biggest file.
        let path = restored.stored_file(FN_IMAGE, &pages);
        let mut bytes = std::fs::read(&path)?;
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&path, bytes)?;

        let instance = || {
            FunctionSpec::new("corrupt")
                .own_netns()
                .annotate(IMAGE_ANNOTATION, FN_IMAGE)
        };
        let stored = format!("{pages}.lz4");
        refused_then_cold_start(
            &ctx,
            instance,
            FailsAt::Create,
            &[FN_IMAGE, &stored, "corrupt"],
        )
        .await?;
        assert_counted(&restored.client(), "prepare_restore", "corrupt").await?;
        Ok(())
    });
}

#[test]
fn with_rekindle_restored_down_a_restore_names_its_socket() {
    restore_story_daemon_down("restore-daemon-down", |ctx, socket| async move {
        if let Some(skip) = needs_rekindle(&ctx, "restore-daemon-down") {
            eprintln!("{skip}");
            return Ok(());
        }
        let instance = || {
            FunctionSpec::new("nodaemon")
                .own_netns()
                .annotate(IMAGE_ANNOTATION, FN_IMAGE)
        };
        let socket = socket.display().to_string();
        refused_then_cold_start(
            &ctx,
            instance,
            FailsAt::Create,
            &[&socket, "is rekindle-restored running?"],
        )
        .await?;
        Ok(())
    });
}

#[test]
fn a_truncated_checkpoint_fails_the_restore_with_criu_s_reason() {
    restore_story("restore-truncated-checkpoint", |ctx, restored| async move {
        if let Some(skip) = needs_rekindle(&ctx, "restore-truncated-checkpoint") {
            eprintln!("{skip}");
            return Ok(());
        }
        // A checkpoint in containerd's content store whose biggest file (the memory
        // pages) was cut in half, as by a full disk or an interrupted copy.
        fixture_image(&ctx, &restored, FN_IMAGE).await?;
        let client = restored.client();
        let prepared = client.prepare_restore(FN_IMAGE, false).await?;
        let biggest = std::fs::read_dir(&prepared.image_dir)?
            .flatten()
            .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .expect("files in the image");
        let tar = tar_dir(&prepared.image_dir, |name, mut data| {
            if name == biggest {
                data.truncate(data.len() / 2);
            }
            data
        });
        client.release_restore(&prepared.lease).await?;
        let (truncated, lease) = write_content(&ctx, CHECKPOINT_MEDIA_TYPE, &tar?).await?;

        let instance = || {
            FunctionSpec::new("truncated")
                .own_netns()
                .restore_from(&truncated)
        };
        let message =
            refused_then_cold_start(&ctx, instance, FailsAt::Start, &["criu restore", "CRIU"])
                .await;
        release_lease(&ctx, &lease).await?;
        eprintln!(
            "[rekindle-it] truncated checkpoint ({biggest}): {}",
            message?
        );
        Ok(())
    });
}

#[test]
fn an_image_exported_deleted_and_imported_back_restores() {
    restore_story("restore-export-import", |ctx, restored| async move {
        if let Some(skip) = needs_rekindle(&ctx, "restore-export-import") {
            eprintln!("{skip}");
            return Ok(());
        }
        fixture_image(&ctx, &restored, FN_IMAGE).await?;
        let inspect = |out: String| -> anyhow::Result<ImageInfo> {
            serde_json::from_str(&out).map_err(|e| anyhow::anyhow!("{e}: {out}"))
        };
        let before = inspect(
            restored
                .cli(&["inspect", FN_IMAGE, "--output", "json"])
                .await?,
        )?;

        let archive = restored.store.with_file_name("python-fn.tar.zst");
        let archive_arg = archive.display().to_string();
        restored
            .cli(&["export", FN_IMAGE, archive_arg.as_str()])
            .await?;
        restored.cli(&["remove", FN_IMAGE]).await?;
        let listed: Vec<ImageInfo> =
            serde_json::from_str(&restored.cli(&["list", "--output", "json"]).await?)?;
        assert!(
            listed.iter().all(|i| i.manifest.name != FN_IMAGE),
            "{FN_IMAGE} still listed after remove: {listed:?}"
        );
        restored.cli(&["import", archive_arg.as_str()]).await?;
        let after = inspect(
            restored
                .cli(&["inspect", FN_IMAGE, "--output", "json"])
                .await?,
        )?;
        assert_eq!(
            after.manifest.files, before.manifest.files,
            "every file and checksum"
        );
        assert_eq!(after.manifest.criu_version, before.manifest.criu_version);
        assert_eq!(
            after.manifest.kernel_release,
            before.manifest.kernel_release
        );

        let f = FunctionSpec::new("imported")
            .own_netns()
            .annotate(IMAGE_ANNOTATION, FN_IMAGE)
            .create(&ctx)
            .await?;
        f.start().await?;
        assert_eq!(f.count().await?, FIXTURE_COUNT + 1);
        f.destroy().await?;
        std::fs::remove_file(&archive)?;
        Ok(())
    });
}
