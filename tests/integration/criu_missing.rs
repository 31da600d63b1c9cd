//! Issue #7's "CRIU missing or failing": a node whose CRIU is gone. The story's own
//! containerd gives its shims `REKINDLE_CRIU=/nonexistent/criu`, and its rekindle-restored
//! has `criu_binary = "/nonexistent/criu"`. The agent (in-process, the gateway's path
//! through the admin API) must report the fast path unavailable — in `rekindle status`
//! with the reason and the fix, and as `rekindle_fast_path_available 0` — and still serve
//! every request by cold start, then hot; it plans no checkpoint and refuses one asked
//! for with the reason. A checkpoint sent to the shim anyway (containerd's
//! Tasks.Checkpoint) fails with an error naming CRIU, and the function keeps running and
//! counting: nothing is lost. Nothing leaks (harness leak check, rekindle-restored's own
//! check, the story's containerd stopped and checked).

use std::sync::{Mutex, PoisonError};

use anyhow::{bail, ensure, Context as _, Result};
use rekindle_agent::admin::{Client, ClientError, InvokeRequest};
use rekindle_agent::config::{Config, FunctionConfig, PolicyName};
use rekindle_agent::daemon::Agent;
use rekindle_agent::driver::{ContainerdDriver, InstanceDriver};

use crate::harness::restore::RestoreDaemon;
use crate::harness::restore::{needs_rekindle, FIXTURE_STATE_MB};
use crate::harness::{
    adopt_agent_instances, agent_config, http, millis, own_containerd_with_env, secs, try_story_on,
    Ctx, IMAGE,
};

const FUNCTION: &str = "nocriu-fn";
const NO_CRIU: &str = "/nonexistent/criu";

async fn story(ctx: Ctx) -> Result<()> {
    if let Some(skip) = needs_rekindle(&ctx, "criu-missing") {
        eprintln!("{skip}");
        return Ok(());
    }
    let dir = ctx.paths().dir.clone();
    let restored_socket = dir.join("restored-nocriu.sock");
    let daemon = RestoreDaemon::start_with_config(
        &restored_socket,
        &format!("criu_binary = \"{NO_CRIU}\"\n"),
    )?;
    let outcome = with_daemon(&ctx, &daemon).await;
    let log = daemon.handle.log_tail(30);
    // stop_and_check runs a runtime of its own: not on this one's thread.
    let left = tokio::task::spawn_blocking(move || daemon.stop_and_check()).await?;
    match outcome {
        Err(e) => bail!("{e:#}\n--- rekindle-restored log ---\n{log}"),
        Ok(()) if !left.is_empty() => bail!("rekindle-restored after the story: {left:?}"),
        Ok(()) => Ok(()),
    }
}

async fn with_daemon(ctx: &Ctx, daemon: &RestoreDaemon) -> Result<()> {
    let stats = daemon.handle.client().stats().await?;
    ensure!(
        stats.criu_version.is_none(),
        "rekindle-restored found a CRIU at {NO_CRIU}: {stats:?}"
    );
    let mut f = FunctionConfig::new(FUNCTION, IMAGE, 8080);
    f.env = vec![format!("STATE_MB={FIXTURE_STATE_MB}")];
    f.memory_mb = 512;
    f.store_as = Some(ctx.new_id("nocriu"));
    f.max_instances = 2;
    let config = Config {
        policy: PolicyName::Fixed,
        // Reconciles often: a checkpoint would be planned right after the cold start.
        reconcile_interval_ms: 200,
        functions: vec![f.clone()],
        ..agent_config(ctx, "criu-missing", &daemon.handle.socket)
    };
    config.validate()?;
    let admin = config.admin_socket.clone();
    let agent = Agent::start(&config).await?;
    // The agent's own driver settings: discover() finds its instances.
    let driver = ContainerdDriver::connect(config.driver_config()).await?;
    let api = Client::new(&admin);
    let outcome = async {
        // 1. Reported: status (reason and fix) and /metrics.
        let s = api.status().await?;
        ensure!(!s.fast_path.available, "{:?}", s.fast_path);
        let why = s.fast_path.reason.clone().unwrap_or_default();
        ensure!(
            why.contains("no working CRIU") && why.contains("criu_binary"),
            "{why}"
        );
        let (code, metrics) = http::get(agent.metrics_addr.port(), "/metrics", secs(5)).await?;
        ensure!(code == 200, "/metrics answered {code}");
        ensure!(
            metrics.contains("rekindle_fast_path_available 0"),
            "no rekindle_fast_path_available 0 in:\n{metrics}"
        );

        // 2. Served: a cold start, then the same instance hot, counting on.
        let first = api.invoke(FUNCTION, &InvokeRequest::default()).await?;
        adopt_agent_instances(ctx, &driver, &agent, &mut Vec::new());
        ensure!(first.status == 200 && first.tier == "cold", "{first:?}");
        let c1 = http::count_in(&first.body)?;
        let second = api.invoke(FUNCTION, &InvokeRequest::default()).await?;
        ensure!(
            second.status == 200 && second.tier == "hot" && http::count_in(&second.body)? == c1 + 1,
            "{first:?} then {second:?}"
        );

        // 3. No checkpoint planned over several reconciles, one asked for refused.
        tokio::time::sleep(millis(1500)).await;
        let (_, metrics) = http::get(agent.metrics_addr.port(), "/metrics", secs(5)).await?;
        ensure!(
            !metrics.contains("action=\"checkpoint\""),
            "a checkpoint was attempted without CRIU:\n{metrics}"
        );
        match api.checkpoint(FUNCTION, &Default::default()).await {
            Err(ClientError::Refused {
                status: 503,
                message,
                ..
            }) => ensure!(
                message.contains("fast path is unavailable") && message.contains("CRIU"),
                "{message}"
            ),
            other => bail!("a checkpoint without CRIU was not refused: {other:?}"),
        }
        ensure!(
            daemon.handle.client().list_images().await?.is_empty(),
            "an image was stored without CRIU"
        );

        // 4. Failing: the shim asked to checkpoint anyway names CRIU; the function runs on.
        let found = driver.discover().await?;
        ensure!(found.len() == 1, "{found:?}");
        let inst = found[0].instance.clone();
        let e = driver
            .checkpoint(&inst, &inst.store_as, false)
            .await
            .err()
            .context("a checkpoint without CRIU succeeded")?;
        let msg = e.to_string();
        eprintln!("[criu-missing] checkpoint through containerd: {msg}");
        ensure!(
            msg.contains(NO_CRIU)
                && msg.contains("REKINDLE_CRIU")
                && msg.contains("FailedPrecondition"),
            "the error does not name the missing CRIU and the fix: {msg}"
        );
        let third = api.invoke(FUNCTION, &InvokeRequest::default()).await?;
        ensure!(
            third.status == 200 && third.instance == first.instance,
            "{third:?}"
        );
        ensure!(
            http::count_in(&third.body)? == c1 + 2,
            "the function lost its state: {third:?}"
        );
        Ok(())
    }
    .await;
    agent.shutdown().await;
    outcome
}

#[test]
fn without_criu_the_fast_path_is_reported_unavailable_and_cold_starts_still_serve() {
    let (cd, on) = own_containerd_with_env(&[
        ("REKINDLE_CRIU", NO_CRIU),
        // No other story's rekindle-restored: this story's own (see `story`).
        (
            "REKINDLE_RESTORED_SOCKET",
            "/run/rekindle/it-nocriu-unused.sock",
        ),
    ])
    .unwrap_or_else(|e| panic!("own containerd: {e:#}"));
    let cd = Mutex::new(cd);
    let outcome = try_story_on("criu-missing", &on, story);
    let leaked = cd.lock().unwrap_or_else(PoisonError::into_inner).shutdown();
    if let Err(report) = outcome {
        panic!("{report}");
    }
    assert!(
        leaked.is_empty(),
        "LEAK after stopping the story's containerd:\n  {}",
        leaked.join("\n  ")
    );
}
