//! An agent's invoke gateway and pool as the agent stories see them: requests through
//! the gateway (the function's answer checked), the pool's state, the agent's metrics,
//! and the story's end (the agent shut down, nothing of it left).
#![allow(dead_code)] // the agent stories only (the bench includes the harness too)

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{bail, ensure, Context as _, Result};
use rekindle_agent::daemon::Agent;
use rekindle_agent::driver::ContainerdDriver;
use rekindle_agent::gateway::{INSTANCE_HEADER, TIER_HEADER};
use rekindle_agent::pool::manager::PoolSnapshot;

/// A request the gateway answered: the tier that served it (`hot`, `cold`, ...) and
/// the instance (container id).
#[derive(Clone, Debug)]
pub struct Served {
    pub tier: String,
    pub instance: String,
}

/// `GET /invoke/<function><path>` through the gateway at `gw`: a 200 whose body is the
/// reference function's JSON with a plausible count, and the gateway's headers.
pub async fn invoke(gw: SocketAddr, function: &str, path: &str) -> Result<Served> {
    let (status, headers, body) =
        super::http::get_with_headers(gw, &format!("/invoke/{function}{path}")).await?;
    ensure!(status == 200, "gateway answered {status}: {body}");
    let json: serde_json::Value =
        serde_json::from_str(&body).with_context(|| format!("not JSON: {body:?}"))?;
    let count = json
        .get("count")
        .and_then(serde_json::Value::as_u64)
        .with_context(|| format!("no count in {json}"))?;
    ensure!((1..1000).contains(&count), "count {count}");
    let header = |name: &str| {
        headers
            .get(name)
            .cloned()
            .with_context(|| format!("no {name} header"))
    };
    Ok(Served {
        tier: header(TIER_HEADER)?,
        instance: header(INSTANCE_HEADER)?,
    })
}

/// `n` such requests at once, answers in the order they came.
pub async fn burst(gw: SocketAddr, function: &str, path: &str, n: usize) -> Result<Vec<Served>> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (function, path) = (function.to_string(), path.to_string());
        set.spawn(async move { invoke(gw, &function, &path).await });
    }
    let mut served = Vec::new();
    while let Some(r) = set.join_next().await {
        served.push(r??);
    }
    Ok(served)
}

/// The pool of the agent's (only) function.
pub fn pool(agent: &Agent) -> PoolSnapshot {
    agent.pool.snapshot().remove(0)
}

/// A line of story `story`'s log: `what` happened at `t0.elapsed()`, and the pool then.
pub fn show(story: &str, t0: Instant, what: &str, p: &PoolSnapshot) {
    eprintln!(
        "[{story}] {:>5.1}s {what}: hot {} (busy {}) warm {} starting {} image {:?}; plan \
         pre-warm {:.1}s ladder hot {:.1}s warm {:.1}s staged {:.1}s targets {:?}",
        t0.elapsed().as_secs_f64(),
        p.hot,
        p.busy,
        p.warm,
        p.starting,
        p.image,
        p.plan.pre_warm,
        p.plan.keep_alive.hot,
        p.plan.keep_alive.warm,
        p.plan.keep_alive.staged,
        p.plan.targets
    );
}

/// The samples of `metric{function="<function>",<label>="..."[,...]}` in a Prometheus
/// exposition, among the lines containing `also`, summed by that label's value (the
/// non-zero sums).
pub fn by_label(
    metrics: &str,
    metric: &str,
    function: &str,
    label: &str,
    also: &str,
) -> BTreeMap<String, u64> {
    let prefix = format!("{metric}{{function=\"{function}\",{label}=\"");
    let mut sums = BTreeMap::new();
    for (value, n) in metrics
        .lines()
        .filter(|l| l.contains(also))
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (value, rest) = rest.split_once('"')?;
            let n = rest.rsplit(' ').next()?.trim().parse::<f64>().ok()? as u64;
            Some((value.to_string(), n))
        })
    {
        *sums.entry(value).or_default() += n;
    }
    sums.retain(|_, n| *n > 0);
    sums
}

/// The end of an agent story: what the agent made put under the leak check, the agent
/// shut down with no instance of any function left, and then the story's `outcome`
/// (the pools' state after the shutdown is logged first, whatever the outcome).
pub async fn end_story(
    story: &str,
    ctx: &super::Ctx,
    driver: &ContainerdDriver,
    agent: Agent,
    adopted: &mut Vec<String>,
    t0: Instant,
    outcome: Result<()>,
) -> Result<()> {
    super::adopt_agent_instances(ctx, driver, &agent, adopted);
    let pool_handle = agent.pool.clone();
    agent.shutdown().await;
    let end = pool_handle.snapshot();
    for p in &end {
        show(story, t0, "after shutdown", p);
    }
    outcome?;
    for p in end {
        if p.hot + p.warm + p.busy + p.starting != 0 {
            bail!("instances left after shutdown: {p:?}");
        }
    }
    eprintln!(
        "[{story}] {} instances made and stopped in {:.1}s",
        adopted.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
