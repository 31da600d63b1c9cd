//! The invoke gateway under a bounded concurrent load (issue #6's edge-box gateway):
//! `rekindle_agent::daemon::Agent` runs in-process against the private containerd and a
//! rekindle-restored of the story's own, with the reference function registered (own
//! network namespace) at most 2 instances, a queue of 8 and the fixed keep-alive policy
//! (no background starts to blur the count). 40 POSTs with bodies of distinct sizes hit
//! its cold function at once on loopback. Every request is answered: 200 with the
//! function's JSON (its `body_bytes` the size sent: the body reached it) and the tier and
//! instance headers (plus the start's duration when one was made for it), or 503 with
//! `Retry-After` and the reason; the two add up to 40. At most 2 instances ever existed
//! (the agent made exactly 2, and its pool never held more), `/metrics` counts the
//! refusals by reason as the clients saw them. Then: a POST served hot (no start
//! header), passthrough GET, 405 for GET on the invoke path, 413 past `max_body_bytes`;
//! a second function's queued request refused with `queue_timeout` once its 100 ms wait
//! is over; shutdown stops every instance and the harness' leak check runs on each.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use rekindle_agent::config::{Config, FunctionConfig, PolicyName};
use rekindle_agent::daemon::Agent;
use rekindle_agent::driver::{ContainerdDriver, NetMode};

use crate::harness::gateway::{by_label, end_story};
use crate::harness::restore::{needs_rekindle, restore_story, FIXTURE_STATE_MB};
use crate::harness::{adopt_agent_instances, agent_config, IMAGE};

/// The story's name, in its log lines.
const STORY: &str = "agent-gateway";
const FUNCTION: &str = "gw-fn";
/// A second function, of one instance and a 100 ms queue wait: shorter than its start.
const IMPATIENT: &str = "gw-impatient";
const MAX_INSTANCES: u32 = 2;
const MAX_QUEUE: u32 = 8;
const REQUESTS: usize = 40;
const MAX_BODY: usize = 4096;

use crate::harness::http::Answer;

/// One HTTP/1.1 request (connection closed after).
async fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Result<Answer> {
    let mut raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    crate::harness::http::exchange(addr, &raw, Duration::from_secs(180)).await
}

/// What one POST of the burst got.
#[derive(Debug)]
enum Outcome {
    Served {
        tier: String,
        instance: String,
        started: bool,
        queued: bool,
    },
    Refused(String),
}

/// A POST of `size` bytes to `function`: checks the answer is the function's (with the
/// body's size) or a clear refusal.
async fn post_to(gw: SocketAddr, function: &str, size: usize) -> Result<Outcome> {
    let body = vec![b'x'; size];
    let a = request(gw, "POST", &format!("/invoke/{function}"), &body).await?;
    match a.status {
        200 => {
            let json: serde_json::Value =
                serde_json::from_str(&a.body).with_context(|| format!("not JSON: {:?}", a.body))?;
            ensure!(
                json["body_bytes"] == size && json["count"].as_u64().is_some_and(|c| c >= 1),
                "the function did not get the {size}-byte body: {json}"
            );
            let tier = a.headers.get("x-rekindle-tier").context("no tier header")?;
            let instance = a
                .headers
                .get("x-rekindle-instance")
                .context("no instance header")?;
            let started = a.headers.contains_key("x-rekindle-start-ms");
            ensure!(
                started == matches!(tier.as_str(), "cold" | "restore_staged" | "restore_disk"),
                "start header {started} for tier {tier}"
            );
            Ok(Outcome::Served {
                tier: tier.clone(),
                instance: instance.clone(),
                started,
                queued: a.headers.contains_key("x-rekindle-queue-ms"),
            })
        }
        503 => {
            let reason = a
                .headers
                .get("x-rekindle-refused")
                .context("a 503 without x-rekindle-refused")?;
            ensure!(
                a.headers
                    .get("retry-after")
                    .is_some_and(|v| v.parse::<u64>().is_ok_and(|s| s >= 1)),
                "a 503 without Retry-After: {:?}",
                a.headers
            );
            ensure!(
                a.body.contains(&format!("reason: {reason}")),
                "the 503's body does not say why: {:?}",
                a.body
            );
            Ok(Outcome::Refused(reason.clone()))
        }
        s => bail!("answered {s}: {}", a.body),
    }
}

async fn post(gw: SocketAddr, size: usize) -> Result<Outcome> {
    post_to(gw, FUNCTION, size).await
}

#[test]
fn the_gateway_serves_or_refuses_every_request_of_a_burst_within_the_pool_limit() {
    restore_story(STORY, |ctx, restored| async move {
        if let Some(skip) = needs_rekindle(&ctx, STORY) {
            eprintln!("{skip}");
            return Ok(());
        }
        let mut f = FunctionConfig::new(FUNCTION, IMAGE, 8080);
        f.env = vec![format!("STATE_MB={FIXTURE_STATE_MB}")];
        f.memory_mb = 512;
        f.store_as = Some(ctx.new_id("gw-fn"));
        f.netns = NetMode::Own;
        f.max_instances = MAX_INSTANCES;
        f.max_queue = MAX_QUEUE;
        // Long enough for two cold starts on a busy 2-CPU box: the queued requests are
        // served, not timed out.
        f.max_queue_wait_secs = 120.0;
        f.invoke_timeout_secs = 150.0;
        f.max_body_bytes = MAX_BODY;
        let mut impatient = FunctionConfig::new(IMPATIENT, IMAGE, 8080);
        impatient.env = f.env.clone();
        impatient.memory_mb = 512;
        impatient.store_as = Some(ctx.new_id("gw-impatient"));
        impatient.max_instances = 1;
        impatient.max_queue_wait_secs = 0.1;
        let config = Config {
            gateway_addr: Some("127.0.0.1:0".parse()?),
            policy: PolicyName::Fixed,
            reconcile_interval_ms: 200,
            max_parallel_starts: 2,
            functions: vec![f, impatient],
            ..agent_config(&ctx, STORY, &restored.socket)
        };
        config.validate()?;
        let paths_driver = ContainerdDriver::connect(config.driver_config()).await?;
        let mut adopted = Vec::new();

        let agent = Agent::start(&config).await?;
        let gw = agent.gateway_addr.context("the gateway listens")?;
        let t0 = Instant::now();
        let outcome = async {
            // The pool's own count, sampled through the burst.
            let peak = Arc::new(AtomicU32::new(0));
            let done = Arc::new(AtomicBool::new(false));
            let sampler = {
                let (pool, peak, done) = (agent.pool.clone(), peak.clone(), done.clone());
                tokio::spawn(async move {
                    while !done.load(Ordering::SeqCst) {
                        let p = pool.snapshot().remove(0);
                        peak.fetch_max(p.hot + p.warm + p.starting, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            };

            // 1. The burst: 40 POSTs at once, bodies of 100..140 bytes.
            let mut set = tokio::task::JoinSet::new();
            for i in 0..REQUESTS {
                set.spawn(post(gw, 100 + i));
            }
            let mut outcomes = Vec::new();
            while let Some(r) = set.join_next().await {
                outcomes.push(r??);
            }
            done.store(true, Ordering::SeqCst);
            sampler.await?;
            adopt_agent_instances(&ctx, &paths_driver, &agent, &mut adopted);
            let mut tiers: BTreeMap<String, u64> = BTreeMap::new();
            let mut refused: BTreeMap<String, u64> = BTreeMap::new();
            let mut instances = std::collections::BTreeSet::new();
            let (mut started, mut queued) = (0, 0);
            for o in &outcomes {
                match o {
                    Outcome::Served {
                        tier,
                        instance,
                        started: s,
                        queued: q,
                    } => {
                        *tiers.entry(tier.clone()).or_default() += 1;
                        instances.insert(instance.clone());
                        started += *s as u32;
                        queued += *q as u32;
                    }
                    Outcome::Refused(r) => *refused.entry(r.clone()).or_default() += 1,
                }
            }
            let served: u64 = tiers.values().sum();
            let n_refused: u64 = refused.values().sum();
            eprintln!(
                "[agent-gateway] {:>5.1}s burst of {REQUESTS}: served {served} {tiers:?} by \
                 {} instances ({started} started for their request, {queued} queued first), \
                 refused {n_refused} {refused:?}; pool peak {}",
                t0.elapsed().as_secs_f64(),
                instances.len(),
                peak.load(Ordering::SeqCst)
            );
            ensure!(
                served + n_refused == REQUESTS as u64,
                "{served} served + {n_refused} refused != {REQUESTS}"
            );
            ensure!(
                peak.load(Ordering::SeqCst) <= MAX_INSTANCES,
                "the pool held {} instances",
                peak.load(Ordering::SeqCst)
            );
            let made = agent.pool.instances_made();
            ensure!(
                made.len() as u32 <= MAX_INSTANCES && instances.len() as u32 <= MAX_INSTANCES,
                "{} instances made ({made:?}), {} served",
                made.len(),
                instances.len()
            );
            ensure!(
                started as usize == made.len(),
                "{started} requests say a start was made for them, {} were made",
                made.len()
            );
            // The queue worked both ways: some waited and were served, the rest of the
            // burst (more than max_instances + max_queue) was refused.
            ensure!(queued >= 1, "no request was served from the queue");
            ensure!(
                served > u64::from(MAX_INSTANCES) && n_refused >= 1,
                "served {served}, refused {n_refused}"
            );
            ensure!(
                refused
                    .keys()
                    .all(|r| r == "queue_full" || r == "queue_timeout"),
                "{refused:?}"
            );

            // 2. /metrics counts the refusals and the starts as the clients saw them.
            let m = request(agent.metrics_addr, "GET", "/metrics", b"").await?;
            ensure!(m.status == 200, "/metrics answered {}", m.status);
            let got = by_label(
                &m.body,
                "rekindle_gateway_refused_total",
                FUNCTION,
                "reason",
                "",
            );
            ensure!(
                got == refused,
                "/metrics refusals {got:?} != seen {refused:?}"
            );
            let got = by_label(&m.body, "rekindle_starts_total", FUNCTION, "tier", "");
            ensure!(got == tiers, "/metrics starts {got:?} != seen {tiers:?}");

            // 3. The pool is idle now: a POST is served hot, no start made for it.
            match post(gw, 7).await? {
                Outcome::Served {
                    tier,
                    started: false,
                    ..
                } if tier == "hot" || tier == "warm" => {}
                o => bail!("after the burst: {o:?}"),
            }
            // Passthrough: the function's own GET /.
            let a = request(gw, "GET", &format!("/invoke/{FUNCTION}/"), b"").await?;
            ensure!(a.status == 200, "passthrough GET answered {}", a.status);
            let json: serde_json::Value = serde_json::from_str(&a.body)?;
            ensure!(json["count"].as_u64().is_some_and(|c| c >= 1), "{json}");
            let a = request(gw, "GET", &format!("/invoke/{FUNCTION}"), b"").await?;
            ensure!(
                a.status == 405 && a.headers.get("allow").map(String::as_str) == Some("POST"),
                "GET on the invoke path answered {} {:?}",
                a.status,
                a.headers
            );
            let a = request(
                gw,
                "POST",
                &format!("/invoke/{FUNCTION}"),
                &[b'y'; MAX_BODY + 1],
            )
            .await?;
            ensure!(
                a.status == 413,
                "a body past max_body_bytes got {}",
                a.status
            );
            let a = request(gw, "POST", "/invoke/no-such-fn", b"{}").await?;
            ensure!(a.status == 404, "an unknown function got {}", a.status);

            // 4. The queue's wait is bounded: two POSTs at once on a cold function of one
            // instance whose requests may wait 100 ms — less than its start takes.
            let (a, b) = tokio::join!(post_to(gw, IMPATIENT, 10), async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                post_to(gw, IMPATIENT, 20).await
            });
            match (a?, b?) {
                (Outcome::Served { tier, .. }, Outcome::Refused(r))
                    if tier == "cold" && r == "queue_timeout" => {}
                other => bail!("two POSTs on {IMPATIENT}: {other:?}"),
            }
            let m = request(agent.metrics_addr, "GET", "/metrics", b"").await?;
            let got = by_label(
                &m.body,
                "rekindle_gateway_refused_total",
                IMPATIENT,
                "reason",
                "",
            );
            ensure!(
                got == BTreeMap::from([("queue_timeout".to_string(), 1)]),
                "/metrics refusals of {IMPATIENT}: {got:?}"
            );
            adopt_agent_instances(&ctx, &paths_driver, &agent, &mut adopted);
            Ok(())
        }
        .await;
        end_story(STORY, &ctx, &paths_driver, agent, &mut adopted, t0, outcome).await
    });
}
