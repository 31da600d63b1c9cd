//! The agent's instance driver (`rekindle_agent::driver::ContainerdDriver`) against the
//! private containerd and a rekindle-restored of the story's own: the operations the pool
//! manager will make, in the order of the tiers. A function is cold-started, counts,
//! is checkpointed into the store (and keeps running), is stopped; its image is staged;
//! two instances are restored from it and count on from the checkpoint, each in its own
//! network namespace; one is frozen (no answer, state Paused) and thawed (answers again);
//! both are stopped and the image unstaged. A restore of an image the store does not
//! have fails naming the operation, and leaves nothing behind. The harness' leak check
//! (processes, mounts — the network namespaces' bind mounts included —, cgroups, runc
//! state, shim sockets, tasks, containers, snapshots) runs on every instance afterwards.

use anyhow::{bail, ensure, Context as _, Result};
use rekindle_agent::driver::{
    Cause, ContainerdConfig, ContainerdDriver, DriverError, FunctionSpec, Instance, InstanceDriver,
    NetMode, Op, TaskState,
};

use crate::harness::restore::{needs_rekindle, restore_story, FIXTURE_STATE_MB};
use crate::harness::{millis, secs, Ctx, IMAGE, NAMESPACE, SNAPSHOTTER};

/// `GET /` on an instance: the function's invocation counter.
async fn count(driver: &dyn InstanceDriver, i: &Instance) -> Result<u64> {
    let r = driver.invoke(i, "/", secs(10)).await?;
    ensure!(
        r.status == 200,
        "GET / on {} answered {}: {}",
        i.id,
        r.status,
        r.body
    );
    let json: serde_json::Value = serde_json::from_str(&r.body)
        .with_context(|| format!("GET / on {}: not JSON: {:?}", i.id, r.body))?;
    json.get("count")
        .and_then(serde_json::Value::as_u64)
        .with_context(|| format!("GET / on {}: no numeric \"count\" in {json}", i.id))
}

/// Puts an instance under the harness' clean-up and leak check.
fn track(ctx: &Ctx, driver: &ContainerdDriver, i: &Instance) {
    ctx.adopt(&i.id, &driver.cgroups_path(&i.id));
}

/// After `stop`: containerd no longer knows the instance, and its network namespace and
/// log are gone.
async fn assert_gone(driver: &ContainerdDriver, i: &Instance) -> Result<()> {
    match driver.state(i).await {
        Err(e) if e.is_not_found() => {}
        other => bail!("{} after stop: Tasks.Get gave {other:?}", i.id),
    }
    if let Some(ns) = &i.netns {
        ensure!(!ns.exists(), "{} still exists after stop", ns.display());
    }
    let log = driver.log_path(&i.id);
    ensure!(!log.exists(), "{} still exists after stop", log.display());
    Ok(())
}

#[test]
fn the_agent_driver_cold_starts_checkpoints_restores_freezes_and_stops_a_function() {
    restore_story("agent-driver", |ctx, restored| async move {
        if let Some(skip) = needs_rekindle(&ctx, "agent-driver") {
            eprintln!("{skip}");
            return Ok(());
        }
        let mut config = ContainerdConfig::new(&ctx.paths().grpc, NAMESPACE);
        config.restored_socket = restored.socket.clone();
        config.snapshotter = SNAPSHOTTER.to_string();
        config.runc_root = Some(ctx.paths().runc_root.clone());
        config.log_dir = ctx.paths().dir.join("agent-logs");
        // netns_dir: the default, /run/netns (rekindle-<id>).
        let driver = ContainerdDriver::connect(config).await?;
        let d: &dyn InstanceDriver = &driver;

        let store_as = ctx.new_id("agent-fn");
        let f = FunctionSpec {
            name: "agent-fn".to_string(),
            image_ref: IMAGE.to_string(),
            env: vec![format!("STATE_MB={FIXTURE_STATE_MB}")],
            port: 8080,
            memory_limit_bytes: 512 << 20,
            cpu_shares: Some(512),
            store_as: store_as.clone(),
            netns: NetMode::Own,
            ready_path: "/healthz".to_string(),
        };

        // Cold start: answers, in a network namespace of its own.
        let t = std::time::Instant::now();
        let cold = d.cold_start(&f).await?;
        let cold_ms = t.elapsed().as_millis();
        track(&ctx, &driver, &cold);
        let ns = cold
            .netns
            .clone()
            .context("a cold start with NetMode::Own has a netns")?;
        ensure!(
            ns.starts_with("/run/netns") && ns.exists(),
            "netns {}",
            ns.display()
        );
        ensure!(cold.pid > 0 && cold.restored_from.is_none(), "{cold:?}");
        assert_eq!(d.state(&cold).await?, TaskState::Running);
        assert_eq!(count(d, &cold).await?, 1);
        assert_eq!(count(d, &cold).await?, 2);

        // Checkpoint into the store under the function's store_as; the instance runs on.
        let wrong = d.checkpoint(&cold, "some-other-name", false).await;
        ensure!(
            matches!(
                &wrong,
                Err(DriverError {
                    op: Op::Checkpoint,
                    ..
                })
            ),
            "a checkpoint under another name than the container's store-as is refused: {wrong:?}"
        );
        d.checkpoint(&cold, &store_as, false).await?;
        let stored = restored.client().get_image(&store_as).await?;
        eprintln!(
            "[agent-driver] stored {store_as}: {} files, {} bytes ({} on disk)",
            stored.manifest.file_count,
            stored.manifest.total_size,
            stored.manifest.total_compressed_size
        );
        assert_eq!(d.state(&cold).await?, TaskState::Running);
        assert_eq!(
            count(d, &cold).await?,
            3,
            "the checkpointed instance runs on"
        );
        // Once more, without replace: refused before anything is dumped.
        let again = d.checkpoint(&cold, &store_as, false).await;
        ensure!(
            matches!(
                &again,
                Err(DriverError {
                    cause: Cause::ImageExists(_),
                    ..
                })
            ),
            "a second checkpoint without replace: {again:?}"
        );
        d.stop(cold.clone()).await?;
        assert_gone(&driver, &cold).await?;

        // Staged, then two restores at once: each counts on from the checkpoint (2).
        let staged = d.stage(&store_as).await?;
        ensure!(staged.bytes > 0 && !staged.already_staged, "{staged:?}");
        let t = std::time::Instant::now();
        let (a, b) = tokio::try_join!(d.restore(&f, &store_as), d.restore(&f, &store_as))?;
        eprintln!(
            "[agent-driver] cold start to ready {cold_ms} ms; two staged restores to ready {} ms",
            t.elapsed().as_millis()
        );
        track(&ctx, &driver, &a);
        track(&ctx, &driver, &b);
        ensure!(a.netns.is_some() && a.netns != b.netns, "{a:?} / {b:?}");
        ensure!(
            a.restored_from.as_deref() == Some(store_as.as_str()),
            "{a:?}"
        );
        assert_eq!(count(d, &a).await?, 3, "first restore, first request");
        assert_eq!(count(d, &b).await?, 3, "second restore, first request");

        // Warm: frozen, it answers nothing; thawed, it answers again.
        d.freeze(&a).await?;
        assert_eq!(d.state(&a).await?, TaskState::Paused);
        // /healthz counts nothing: the request the frozen process left in its backlog
        // is answered after the thaw without moving the counter.
        let frozen = d.invoke(&a, "/healthz", millis(300)).await;
        ensure!(frozen.is_err(), "a frozen instance answered: {frozen:?}");
        assert_eq!(count(d, &b).await?, 4, "the other instance is not frozen");
        d.thaw(&a).await?;
        assert_eq!(d.state(&a).await?, TaskState::Running);
        assert_eq!(count(d, &a).await?, 4, "thawed, it counts on");

        // A frozen instance stops as well as a running one.
        d.freeze(&b).await?;
        let (sa, sb) = (a.clone(), b.clone());
        tokio::try_join!(d.stop(sa), d.stop(sb))?;
        assert_gone(&driver, &a).await?;
        assert_gone(&driver, &b).await?;
        d.unstage(&store_as).await?;

        // A restore that cannot happen names its operation, image and instance, and
        // leaves nothing (the harness checks the instance it names).
        let missing = d.restore(&f, "no-such-image").await;
        let e = match missing {
            Ok(i) => {
                track(&ctx, &driver, &i);
                bail!("a restore of an image the store lacks succeeded: {i:?}");
            }
            Err(e) => e,
        };
        eprintln!("[agent-driver] expected failure: {e}");
        ensure!(
            e.op == Op::Restore && e.image.as_deref() == Some("no-such-image"),
            "{e:?}"
        );
        let id = e.instance.clone().context("the error names the instance")?;
        ctx.adopt(&id, &driver.cgroups_path(&id));
        ensure!(
            !std::path::Path::new(&format!("/run/netns/rekindle-{id}")).exists(),
            "the failed restore's network namespace was removed"
        );
        Ok(())
    });
}
