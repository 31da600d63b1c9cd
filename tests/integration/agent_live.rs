//! The live agent (issue #4's live check): `rekindle_agent::daemon::Agent` runs in-process
//! against the private containerd and a rekindle-restored of the story's own, with the
//! reference function registered (own network namespace), Rekindle's policy, a policy
//! clock 60× faster than real time (a real second is a policy minute) and a 3 s cap on
//! the keep-alive window. A bursty pattern goes through its invoke gateway: one request
//! (a cold start, after which the agent checkpoints the function into the store), a burst
//! of concurrent requests (served hot or by restores: the pool scales up), an idle spell
//! longer than the keep-alive (the pool demotes to the policy's targets), a second burst (no cold start). Every
//! request is answered 200 with the function's counter; `/metrics` counts the starts by
//! tier exactly as the gateway reported them; shutdown stops every instance, and the
//! harness' leak check runs on each instance the agent made.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use rekindle_agent::config::{Config, FunctionConfig, PolicyName};
use rekindle_agent::daemon::Agent;
use rekindle_agent::driver::{ContainerdDriver, NetMode};
use rekindle_agent::pool::ImageState;

use crate::harness::gateway::{burst, by_label, end_story, invoke, pool, show};
use crate::harness::restore::{needs_rekindle, restore_story, FIXTURE_STATE_MB};
use crate::harness::{adopt_agent_instances, agent_config, IMAGE};

const FUNCTION: &str = "live-fn";
const BURST: usize = 4;
/// What each request of a burst asks the function: held 300 ms, so that they overlap
/// (with an instant `GET /`, one hot instance served a whole burst in turn on a loaded
/// 2-core machine, and nothing scaled up).
const BURST_REQUEST: &str = "/sleep/300";

/// The story's name, in its log lines.
const STORY: &str = "agent-live";

#[test]
fn the_live_agent_serves_a_bursty_function_and_moves_its_pool() {
    restore_story(STORY, |ctx, restored| async move {
        if let Some(skip) = needs_rekindle(&ctx, STORY) {
            eprintln!("{skip}");
            return Ok(());
        }
        let store_as = ctx.new_id("live-fn");
        let mut f = FunctionConfig::new(FUNCTION, IMAGE, 8080);
        f.env = vec![format!("STATE_MB={FIXTURE_STATE_MB}")];
        f.memory_mb = 512;
        f.cpu_shares = Some(512);
        f.store_as = Some(store_as.clone());
        f.netns = NetMode::Own;
        f.max_instances = BURST as u32;
        f.keep_alive_max_secs = 3.0;
        let config = Config {
            gateway_addr: Some("127.0.0.1:0".parse()?),
            policy: PolicyName::Rekindle,
            reconcile_interval_ms: 200,
            time_scale: 60.0,
            memory_budget_mb: Some(4096),
            max_parallel_starts: 2,
            // This machine's measured restore latencies (hack/bench.sh's output).
            tier_latencies: Some(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench-results/restore.json"),
            ),
            functions: vec![f],
            ..agent_config(&ctx, STORY, &restored.socket)
        };
        config.validate()?;
        // The agent's driver settings, for the instances' cgroups paths (leak check).
        let paths_driver = ContainerdDriver::connect(config.driver_config()).await?;
        let mut adopted = Vec::new();

        let agent = Agent::start(&config).await?;
        let gw = agent.gateway_addr.context("the gateway listens")?;
        let t0 = Instant::now();
        let outcome = async {
            let mut seen: Vec<String> = Vec::new();
            show(STORY, t0, "registered", &pool(&agent));

            // 1. The first request: a cold start; then the agent checkpoints the function.
            let first = invoke(gw, FUNCTION, "/").await?.tier;
            seen.push(first.clone());
            ensure!(first == "cold", "the first request was served {first}");
            adopt_agent_instances(&ctx, &paths_driver, &agent, &mut adopted);
            let until = Instant::now() + Duration::from_secs(40);
            while pool(&agent).image == ImageState::None {
                ensure!(Instant::now() < until, "no checkpoint image within 40 s");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            show(STORY, t0, "checkpointed", &pool(&agent));

            // 2. A burst: served hot or by restores, never cold; the pool scales up (the
            // concurrent requests are served by several instances at once).
            let served = burst(gw, FUNCTION, BURST_REQUEST, BURST).await?;
            adopt_agent_instances(&ctx, &paths_driver, &agent, &mut adopted);
            let tiers: Vec<String> = served.iter().map(|s| s.tier.clone()).collect();
            let instances: std::collections::BTreeSet<&String> =
                served.iter().map(|s| &s.instance).collect();
            show(
                STORY,
                t0,
                &format!("burst 1 served {tiers:?} by {} instances", instances.len()),
                &pool(&agent),
            );
            ensure!(
                !tiers.iter().any(|t| t == "cold"),
                "a cold start in burst 1: {tiers:?}"
            );
            let peak = instances.len() as u32;
            ensure!(peak >= 2, "the pool did not scale up: {served:?}");
            seen.extend(tiers);

            // 3. Idle past the keep-alive (3 s cap; Rekindle's plan may unload sooner, by a
            // pre-warm delay): by then the pool has demoted to its targets.
            let idle_from = Instant::now();
            let mut lowest = peak;
            while idle_from.elapsed() < Duration::from_secs(5) {
                tokio::time::sleep(Duration::from_millis(250)).await;
                adopt_agent_instances(&ctx, &paths_driver, &agent, &mut adopted);
                let p = pool(&agent);
                lowest = lowest.min(p.hot + p.warm);
            }
            let demoted = pool(&agent);
            show(
                STORY,
                t0,
                &format!("after 5 s idle (fewest loaded {lowest})"),
                &demoted,
            );
            ensure!(
                demoted.hot + demoted.warm < peak
                    && demoted.hot + demoted.warm
                        <= demoted.plan.targets.hot + demoted.plan.targets.warm
                    && demoted.starting == 0,
                "no demotion to the targets after 5 s of idle: {demoted:?}"
            );
            ensure!(demoted.image != ImageState::None, "{demoted:?}");

            // 4. A second burst: no cold start (the image is there).
            let served = burst(gw, FUNCTION, BURST_REQUEST, BURST).await?;
            adopt_agent_instances(&ctx, &paths_driver, &agent, &mut adopted);
            let tiers: Vec<String> = served.into_iter().map(|s| s.tier).collect();
            show(
                STORY,
                t0,
                &format!("burst 2 served {tiers:?}"),
                &pool(&agent),
            );
            ensure!(
                !tiers.iter().any(|t| t == "cold"),
                "a cold start in burst 2: {tiers:?}"
            );
            seen.extend(tiers);

            // 5. /metrics counts the starts by tier as the gateway reported them.
            let (status, _, text) =
                crate::harness::http::get_with_headers(agent.metrics_addr, "/metrics").await?;
            ensure!(status == 200, "/metrics answered {status}");
            let mut want: BTreeMap<String, u64> = BTreeMap::new();
            for t in &seen {
                *want.entry(t.clone()).or_default() += 1;
            }
            let got = by_label(&text, "rekindle_starts_total", FUNCTION, "tier", "");
            eprintln!("[agent-live] starts seen {want:?}; /metrics {got:?}");
            ensure!(got == want, "/metrics {got:?} != seen {want:?}\n{text}");
            for name in [
                "rekindle_pool_instances{",
                "rekindle_pool_target{",
                "rekindle_start_latency_seconds_bucket{",
                "rekindle_pool_actions_total{",
            ] {
                ensure!(text.contains(name), "/metrics lacks {name}\n{text}");
            }
            ensure!(
                text.contains("action=\"checkpoint\",outcome=\"ok\"} 1"),
                "one checkpoint:\n{text}"
            );
            // 6. The start-up timeline (eBPF first schedule → the gateway's first
            // answer) of the instances started for requests, end to end.
            if text.contains("rekindle_bpf_loaded 1") {
                let timelines: u64 = text
                    .lines()
                    .filter(|l| {
                        l.starts_with("rekindle_function_startup_seconds_count{")
                            && l.contains(&format!("function=\"{FUNCTION}\""))
                    })
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                    .sum();
                eprintln!("[agent-live] start-up timelines recorded: {timelines}");
                ensure!(
                    timelines > 0,
                    "no start-up timeline for the starts made for requests:\n{text}"
                );
            } else {
                eprintln!(
                    "[agent-live] eBPF not loaded here: the start-up timeline is not checked"
                );
            }
            Ok(())
        }
        .await;
        end_story(STORY, &ctx, &paths_driver, agent, &mut adopted, t0, outcome).await
    });
}
