//! The agent's admin API as an operator meets it (issue #6's `rekindle` CLI, issue #4's
//! "functions registered via the API"): `rekindle_agent::daemon::Agent` runs in-process
//! against the private containerd and a rekindle-restored of the story's own, with no
//! function in its configuration and its admin socket in the story's directory. Through
//! the API: a function is added (bad and duplicate tables are refused with the reason),
//! listed, invoked (a cold start, then hot: the function's counter counts on), checkpointed
//! on request (the image is then in rekindle-restored's store), shown by status (its
//! instance, its image, the start latencies by tier), and removed (its instance stopped).
//! The `rekindle` binary itself is driven against the live agent: `functions ls` and
//! `status` with `--output json` (parsed), `invoke` (the function's answer on stdout), and
//! as a non-root user (refused, with the fix). The pool never reconciles during the story
//! (an hour's interval), so every start and checkpoint is the API's. Shutdown stops
//! everything; the harness' leak check runs on each instance the agent made.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context as _, Result};
use rekindle_agent::admin::{CheckpointRequest, Client, ClientError, InvokeRequest};
use rekindle_agent::config::{Config, PolicyName};
use rekindle_agent::daemon::Agent;
use rekindle_agent::driver::ContainerdDriver;

use crate::harness::containerd::profile_dir;
use crate::harness::http::count_in;
use crate::harness::restore::{needs_rekindle, restore_story, FIXTURE_STATE_MB};
use crate::harness::{adopt_agent_instances, agent_config, IMAGE};

const FUNCTION: &str = "admin-fn";

/// Runs `target/<profile>/rekindle --socket <socket> args...` (as `uid`, if given):
/// exit status, stdout, stderr.
async fn cli(socket: &Path, args: &[&str], uid: Option<u32>) -> Result<(i32, String, String)> {
    let mut cmd = std::process::Command::new(profile_dir()?.join("rekindle"));
    cmd.arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("RUST_LOG");
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let out = tokio::process::Command::from(cmd)
        .output()
        .await
        .context("running rekindle (cargo build --workspace --bins first)")?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

async fn cli_json(socket: &Path, args: &[&str]) -> Result<serde_json::Value> {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let (code, out, err) = cli(socket, &all, None).await?;
    ensure!(code == 0, "rekindle {args:?} exited {code}: {err}");
    serde_json::from_str(&out).with_context(|| format!("rekindle {args:?}: not JSON: {out}"))
}

#[test]
fn functions_are_added_invoked_checkpointed_shown_and_removed_through_the_admin_api() {
    restore_story("agent-admin", |ctx, restored| async move {
        if let Some(skip) = needs_rekindle(&ctx, "agent-admin") {
            eprintln!("{skip}");
            return Ok(());
        }
        let config = Config {
            policy: PolicyName::Fixed,
            // The pool acts only when asked, in this story.
            reconcile_interval_ms: 3_600_000,
            memory_budget_mb: Some(4096),
            ..agent_config(&ctx, "agent-admin", &restored.socket)
        };
        config.validate()?;
        let socket: PathBuf = config.admin_socket.clone();
        let functions_dir = config.functions_dir.clone();
        let paths_driver = ContainerdDriver::connect(config.driver_config()).await?;
        let mut adopted = Vec::new();
        let store_as = ctx.new_id("admin-fn");

        let agent = Agent::start(&config).await?;
        let api = Client::new(&socket);
        let outcome = async {
            let mode = std::fs::metadata(&socket)?.permissions().mode() & 0o777;
            ensure!(mode == 0o600, "admin socket mode {mode:o}");
            ensure!(
                api.functions().await?.is_empty(),
                "functions before any add"
            );

            // 1. functions add: checked as agent.toml's tables are.
            let table = serde_json::json!({
                "name": FUNCTION,
                "image_ref": IMAGE,
                "port": 8080,
                "env": [format!("STATE_MB={FIXTURE_STATE_MB}")],
                "memory_mb": 512,
                "store_as": store_as,
                "max_instances": 2,
            });
            let mut bad = table.clone();
            bad["port"] = 0.into();
            match api.add_function(&bad).await {
                Err(ClientError::Refused {
                    status: 400,
                    message,
                    ..
                }) => ensure!(message.contains("port is 0"), "{message}"),
                other => bail!("a function on port 0 was not refused: {other:?}"),
            }
            let added = api.add_function(&table).await?;
            ensure!(
                added.name == FUNCTION && added.source == "api" && added.persisted,
                "{added:?}"
            );
            // Kept for the next start: its table in functions_dir.
            let (kept, problems) = rekindle_agent::admin::persist::load(&functions_dir);
            ensure!(problems.is_empty(), "{problems:?}");
            ensure!(
                kept.len() == 1 && kept[0].name == FUNCTION && kept[0].store_as() == store_as,
                "{kept:?}"
            );
            match api.add_function(&table).await {
                Err(ClientError::Refused { status: 409, .. }) => {}
                other => bail!("a second add was not refused as a conflict: {other:?}"),
            }

            // 2. `rekindle functions ls --output json`, the binary against the live agent.
            let ls = cli_json(&socket, &["functions", "ls"]).await?;
            let listed = ls
                .as_array()
                .context("functions ls is an array")?
                .iter()
                .find(|f| f["name"] == FUNCTION)
                .with_context(|| format!("{FUNCTION} not listed: {ls}"))?;
            ensure!(listed["spec"]["image_ref"] == IMAGE, "{listed}");
            ensure!(listed["spec"]["store_as"] == store_as.as_str(), "{listed}");
            ensure!(listed["image"] == "none", "{listed}");
            let (code, text, err) = cli(&socket, &["functions"], None).await?;
            ensure!(code == 0 && text.starts_with("NAME"), "{code} {text} {err}");
            ensure!(!text.contains("(until restart)"), "{text}");

            // 3. invoke through the API: a cold start, then the same instance hot.
            let first = api.invoke(FUNCTION, &InvokeRequest::default()).await?;
            adopt_agent_instances(&ctx, &paths_driver, &agent, &mut adopted);
            eprintln!(
                "[agent-admin] first invoke: {} by {} in {:.2}s",
                first.tier, first.instance, first.secs
            );
            ensure!(first.status == 200, "{first:?}");
            ensure!(first.tier == "cold", "{first:?}");
            let c1 = count_in(&first.body)?;
            let second = api.invoke(FUNCTION, &InvokeRequest::default()).await?;
            ensure!(
                second.tier == "hot" && second.instance == first.instance,
                "{second:?}"
            );
            ensure!(
                count_in(&second.body)? == c1 + 1,
                "{first:?} then {second:?}"
            );
            // A body goes to the function's handler (POST invoke_path), as the gateway's
            // POST /invoke/<function>; --path with a method is the passthrough.
            let posted = api
                .invoke(
                    FUNCTION,
                    &InvokeRequest {
                        body: Some("{\"n\": 1}".into()),
                        ..InvokeRequest::default()
                    },
                )
                .await?;
            let v: serde_json::Value = serde_json::from_str(&posted.body)?;
            ensure!(
                posted.status == 200 && v["body_bytes"] == 8 && v["count"] == c1 + 2,
                "{posted:?}"
            );
            let got = api
                .invoke(
                    FUNCTION,
                    &InvokeRequest {
                        path: Some("/".into()),
                        ..InvokeRequest::default()
                    },
                )
                .await?;
            ensure!(count_in(&got.body)? == c1 + 3, "{got:?}");
            // The binary: the function's answer on stdout.
            let body = ctx.paths().dir.join("agent-admin-body.json");
            std::fs::write(&body, "[1, 2, 3]")?;
            let data = format!("@{}", body.display());
            let (code, out, err) =
                cli(&socket, &["invoke", FUNCTION, "--data", &data], None).await?;
            ensure!(code == 0, "rekindle invoke exited {code}: {err}");
            let v: serde_json::Value = serde_json::from_str(out.trim())?;
            ensure!(v["count"] == c1 + 4 && v["body_bytes"] == 9, "{out}");
            ensure!(err.contains("served hot by"), "{err}");

            // 4. checkpoint on request: the image is in rekindle-restored's store.
            let cp = api
                .checkpoint(
                    FUNCTION,
                    &CheckpointRequest {
                        instance: None,
                        keep_running: true,
                        replace: false,
                    },
                )
                .await?;
            eprintln!(
                "[agent-admin] checkpointed {} into {} in {:.2}s",
                cp.instance, cp.image, cp.secs
            );
            ensure!(
                cp.instance == first.instance && cp.image == store_as,
                "{cp:?}"
            );
            let image = rekindle_restore_api::Client::new(&restored.socket)
                .get_image(&store_as)
                .await
                .context("the checkpoint is not in rekindle-restored's store")?;
            ensure!(image.manifest.file_count > 0, "{image:?}");

            // 4b. once more: refused (409) before anything is dumped, unless --replace;
            // with it the stored image is the newer checkpoint (the counter moved on).
            let (code, _, err) =
                cli(&socket, &["checkpoint", FUNCTION, "--keep-running"], None).await?;
            ensure!(
                code != 0 && err.contains("--replace"),
                "rekindle checkpoint of a function that has an image: exit {code}: {err}"
            );
            let restored_client = rekindle_restore_api::Client::new(&restored.socket);
            let kept = restored_client.get_image(&store_as).await?;
            ensure!(
                kept.manifest == image.manifest,
                "a refused checkpoint changed the image"
            );
            api.invoke(
                FUNCTION,
                &InvokeRequest {
                    path: Some("/".into()),
                    ..InvokeRequest::default()
                },
            )
            .await?;
            let (code, _, err) = cli(
                &socket,
                &["checkpoint", FUNCTION, "--keep-running", "--replace"],
                None,
            )
            .await?;
            ensure!(
                code == 0,
                "rekindle checkpoint --replace exited {code}: {err}"
            );
            let replaced = restored_client.get_image(&store_as).await?;
            ensure!(
                replaced.manifest.files != image.manifest.files,
                "rekindle checkpoint --replace left the old image"
            );

            // 5. status: the instance, the image, latencies by tier; API and binary agree.
            let st = api.status().await?;
            let f = st
                .functions
                .iter()
                .find(|f| f.name == FUNCTION)
                .context("function in status")?;
            ensure!(f.instances.hot == 1 && f.busy == 0, "{f:?}");
            ensure!(f.image.name() == "disk", "{f:?}");
            ensure!(
                st.instances.len() == 1 && st.instances[0].id == first.instance,
                "{:?}",
                st.instances
            );
            ensure!(
                st.images
                    .iter()
                    .any(|i| i.name == store_as && i.function == FUNCTION),
                "{:?}",
                st.images
            );
            ensure!(st.restored.reachable, "{:?}", st.restored);
            ensure!(
                st.memory.budget_bytes == Some(4096 << 20) && st.memory.used_bytes == 512 << 20,
                "{:?}",
                st.memory
            );
            let tiers: Vec<&str> = st.start_latencies.iter().map(|t| t.tier.as_str()).collect();
            ensure!(tiers == ["hot", "cold"], "{:?}", st.start_latencies);
            let js = cli_json(&socket, &["status"]).await?;
            ensure!(js["instances"][0]["id"] == first.instance.as_str(), "{js}");
            ensure!(js["instances"][0]["tier"] == "hot", "{js}");
            ensure!(
                js["images"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|i| i["name"] == store_as.as_str())),
                "{js}"
            );
            ensure!(js["start_latencies"][1]["tier"] == "cold", "{js}");
            let (code, text, err) = cli(&socket, &["status"], None).await?;
            ensure!(code == 0, "rekindle status exited {code}: {err}");
            eprintln!("[agent-admin] rekindle status:\n{text}");
            for needle in ["POOLS", &first.instance, &store_as, "RECENT STARTS"] {
                ensure!(text.contains(needle), "{needle} missing in:\n{text}");
            }

            // 6. Not root: the socket refuses, and the CLI says why and what to do.
            let (code, _, err) = cli(&socket, &["status"], Some(65534)).await?;
            ensure!(code == 69, "as nobody: exit {code}: {err}");
            ensure!(err.contains("root"), "{err}");

            // 7. functions rm: its instance stopped, gone from status.
            let removed = api.remove_function(FUNCTION).await?;
            ensure!(removed.instances_stopped == 1, "{removed:?}");
            let st = api.status().await?;
            ensure!(
                st.functions.is_empty() && st.instances.is_empty(),
                "{:?} {:?}",
                st.functions,
                st.instances
            );
            match api.invoke(FUNCTION, &InvokeRequest::default()).await {
                Err(ClientError::Refused { status: 404, .. }) => {}
                other => bail!("a removed function was invoked: {other:?}"),
            }
            let (code, _, err) = cli(&socket, &["functions", "rm", FUNCTION], None).await?;
            ensure!(code == 1 && err.contains("no function"), "{code}: {err}");
            ensure!(
                rekindle_agent::admin::persist::load(&functions_dir)
                    .0
                    .is_empty(),
                "its file is left after functions rm"
            );
            // Added again, for the restart below.
            api.add_function(&table).await?;
            Ok(())
        }
        .await;
        adopt_agent_instances(&ctx, &paths_driver, &agent, &mut adopted);
        let pool = agent.pool.clone();
        agent.shutdown().await;
        outcome?;
        ensure!(pool.instances().is_empty(), "{:?}", pool.instances());
        ensure!(!socket.exists(), "the admin socket is left after shutdown");
        // The agent is gone: the CLI names the socket and how to start the agent.
        let (code, _, err) = cli(&socket, &["status"], None).await?;
        ensure!(code == 69, "exit {code}: {err}");
        ensure!(
            err.contains(&socket.display().to_string())
                && err.contains("systemctl start rekindle-agent"),
            "{err}"
        );
        eprintln!(
            "[agent-admin] {} instance(s) made and stopped",
            adopted.len()
        );

        // 8. Restarted, the agent serves the function the API registered (its file read
        //    back), as `api` and persisted; removed again, its file goes.
        let agent = Agent::start(&config).await?;
        let api = Client::new(&socket);
        let again = async {
            let fs = api.functions().await?;
            ensure!(
                fs.len() == 1 && fs[0].name == FUNCTION && fs[0].source == "api" && fs[0].persisted,
                "after a restart: {fs:?}"
            );
            ensure!(fs[0].spec.store_as == store_as, "{:?}", fs[0].spec);
            api.remove_function(FUNCTION).await?;
            ensure!(
                !rekindle_agent::admin::persist::path_of(&functions_dir, FUNCTION).exists(),
                "its file is left after functions rm"
            );
            Ok(())
        }
        .await;
        agent.shutdown().await;
        again
    });
}
