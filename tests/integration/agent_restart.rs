//! Issue #7's "the agent killed and restarted": the real `rekindle-agent` binary keeps
//! three hot instances of a function (`min_instances = 3`), one of them frozen behind
//! its back (as if it had just moved it to warm) and one whose process died; it is then
//! SIGKILLed, leaving its instances running, and started again with the same
//! configuration. The new run must rebuild its pools from containerd: the answering
//! instance and the frozen one adopted with the same processes, the dead one removed
//! (no orphan), the pool topped up to three by a restore, never past `max_instances`
//! (no double start), and what an interrupted start left without a container (a
//! network-namespace file, a log) swept. Every request is answered, and SIGTERM then
//! stops everything; the harness' leak check runs on every instance either run made.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use containerd_client::services::v1::{GetContainerRequest, ListContainersRequest};
use rekindle_agent::admin::{Client, ImageWhere, InstanceStatus, InvokeRequest, NodeStatus};

use crate::harness::client::{task_kill, task_pause, task_state};
use crate::harness::containerd::profile_dir;
use crate::harness::restore::{needs_rekindle, restore_story, FIXTURE_STATE_MB};
use crate::harness::{millis, secs, Ctx, IMAGE, NAMESPACE, SNAPSHOTTER};

const FUNCTION: &str = "restart-fn";
const AGENT_ID: &str = "it-agent-restart";
const OWNER_LABEL: &str = "io.rekindle.agent/owner";

/// The agent as a process of its own, killed on drop if still running.
struct AgentProcess {
    child: tokio::process::Child,
}

impl AgentProcess {
    fn start(config: &Path, log: &Path) -> Result<Self> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = tokio::process::Command::new(profile_dir()?.join("rekindle-agent"))
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info,rekindle_agent=debug")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .context("starting rekindle-agent (cargo build --workspace --bins first)")?;
        Ok(AgentProcess { child })
    }

    fn pid(&self) -> Result<i32> {
        Ok(self.child.id().context("the agent has exited")? as i32)
    }

    async fn signal_and_wait(mut self, signal: i32) -> Result<std::process::ExitStatus> {
        // SAFETY: kill(2) on our own child, still unreaped.
        if unsafe { libc::kill(self.pid()?, signal) } != 0 {
            bail!("kill: {}", std::io::Error::last_os_error());
        }
        tokio::time::timeout(Duration::from_secs(90), self.child.wait())
            .await
            .context("the agent did not exit within 90 s")?
            .context("waiting for the agent")
    }
}

/// Polls the admin API until `done` holds of its status (or `limit` passes).
async fn status_until(
    api: &Client,
    what: &str,
    limit: Duration,
    done: impl Fn(&NodeStatus) -> bool,
) -> Result<NodeStatus> {
    let until = Instant::now() + limit;
    loop {
        let last = match api.status().await {
            Ok(s) if done(&s) => return Ok(s),
            Ok(s) => format!("{:?}", mine(&s)),
            Err(e) => format!("admin API: {e}"),
        };
        if Instant::now() > until {
            bail!("{what}: not within {limit:?}; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The function's instances in a status: id → tier.
fn mine(s: &NodeStatus) -> BTreeMap<String, String> {
    s.instances
        .iter()
        .filter(|i: &&InstanceStatus| i.function == FUNCTION)
        .map(|i| (i.id.clone(), i.tier.clone()))
        .collect()
}

/// The containers in the namespace labelled with this story's agent id.
async fn labelled(ctx: &Ctx) -> Result<BTreeSet<String>> {
    let list = ctx
        .containers()
        .list(ctx.req(ListContainersRequest { filters: vec![] }))
        .await?
        .into_inner()
        .containers;
    Ok(list
        .into_iter()
        .filter(|c| c.labels.get(OWNER_LABEL).map(String::as_str) == Some(AGENT_ID))
        .map(|c| c.id)
        .collect())
}

async fn container_exists(ctx: &Ctx, id: &str) -> Result<bool> {
    match ctx
        .containers()
        .get(ctx.req(GetContainerRequest { id: id.to_string() }))
        .await
    {
        Ok(_) => Ok(true),
        Err(s) if s.code() == containerd_client::tonic::Code::NotFound => Ok(false),
        Err(s) => Err(s.into()),
    }
}

fn config_toml(ctx: &Ctx, restored_socket: &Path, store_as: &str) -> String {
    let dir = &ctx.paths().dir;
    let p = |name: &str| dir.join(name).display().to_string();
    format!(
        r#"
agent_id = "{AGENT_ID}"
metrics_addr = "127.0.0.1:0"
admin_socket = "{admin}"
hook_socket = "{hook}"
restored_socket = "{restored}"
containerd_address = "{containerd}"
containerd_namespace = "{NAMESPACE}"
policy = "fixed"
reconcile_interval_ms = 300
snapshotter = "{SNAPSHOTTER}"
runc_root = "{runc_root}"
instance_log_dir = "{logs}"
netns_dir = "{netns}"
log_format = "json"

[[function]]
name = "{FUNCTION}"
image_ref = "{IMAGE}"
port = 8080
env = ["STATE_MB={FIXTURE_STATE_MB}"]
memory_mb = 512
store_as = "{store_as}"
min_instances = 3
max_instances = 3
"#,
        admin = p("agent-restart-admin.sock"),
        hook = p("agent-restart-hook.sock"),
        restored = restored_socket.display(),
        containerd = ctx.paths().grpc.display(),
        runc_root = ctx.paths().runc_root.display(),
        logs = p("agent-restart-logs"),
        netns = p("agent-restart-netns"),
    )
}

#[test]
fn a_killed_agent_started_again_adopts_its_instances_and_removes_the_dead_one() {
    restore_story("agent-restart", |ctx, restored| async move {
        if let Some(skip) = needs_rekindle(&ctx, "agent-restart") {
            eprintln!("{skip}");
            return Ok(());
        }
        let dir = ctx.paths().dir.clone();
        let config = dir.join("agent-restart.toml");
        let store_as = ctx.new_id("restart-fn");
        std::fs::write(&config, config_toml(&ctx, &restored.socket, &store_as))?;
        let agent_log = dir.join("agent-restart.log");
        let api = Client::new(&dir.join("agent-restart-admin.sock"));
        let netns_dir = dir.join("agent-restart-netns");
        let log_dir = dir.join("agent-restart-logs");
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut track = |ctx: &Ctx, ids: &mut dyn Iterator<Item = &String>| {
            for id in ids {
                if seen.insert(id.clone()) {
                    ctx.adopt(id, &format!("/{NAMESPACE}/{id}"));
                }
            }
        };

        // 1. The first run: three hot instances, the first cold start checkpointed.
        let first = AgentProcess::start(&config, &agent_log)?;
        let s = status_until(
            &api,
            "three hot instances and a stored image",
            secs(120),
            |s| {
                mine(s).values().filter(|t| *t == "hot").count() == 3
                    && s.functions.iter().any(|f| {
                        f.name == FUNCTION && f.starting == 0 && f.image != ImageWhere::None
                    })
            },
        )
        .await;
        let s = match s {
            Ok(s) => s,
            Err(e) => {
                let log = std::fs::read_to_string(&agent_log).unwrap_or_default();
                bail!("{e:#}\nagent log tail:\n{}", tail(&log, 40));
            }
        };
        let before = mine(&s);
        track(&ctx, &mut before.keys());
        let ids: Vec<String> = before.keys().cloned().collect();
        let (alive, frozen, dead) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
        let pid_of = |id: String| {
            let ctx = ctx.clone();
            async move { Ok::<u32, anyhow::Error>(task_state(&ctx, &id).await?.pid) }
        };
        let alive_pid = pid_of(alive.clone()).await?;
        let frozen_pid = pid_of(frozen.clone()).await?;
        let answered = api.invoke(FUNCTION, &InvokeRequest::default()).await?;
        ensure!(answered.status == 200, "{answered:?}");

        // 2. Behind the agent's back: one instance frozen, one whose processes die; and
        //    what a start interrupted before its container would leave.
        task_pause(&ctx, &frozen).await?;
        task_kill(&ctx, &dead, libc::SIGKILL, true).await?;
        let until = Instant::now() + secs(30);
        while task_state(&ctx, &dead).await?.status
            != containerd_client::types::v1::Status::Stopped as i32
        {
            ensure!(Instant::now() < until, "{dead} did not stop after SIGKILL");
            tokio::time::sleep(millis(100)).await;
        }
        let stray_netns = netns_dir.join("rekindle-restart-fn-00000000deadbeef");
        let stray_log = log_dir.join("restart-fn-00000000deadbeef.log");
        std::fs::write(&stray_netns, b"")?;
        std::fs::write(&stray_log, b"")?;

        // 3. SIGKILL: nothing of the agent runs its clean-up; the instances stay.
        let status = first.signal_and_wait(libc::SIGKILL).await?;
        ensure!(
            status.code().is_none(),
            "the agent was not killed: {status}"
        );
        ensure!(
            labelled(&ctx).await? == ids.iter().cloned().collect::<BTreeSet<_>>(),
            "the instances did not outlive the agent"
        );

        // 4. The second run, same configuration.
        let second = AgentProcess::start(&config, &agent_log)?;
        let outcome = async {
            let s = status_until(&api, "the pool rebuilt and topped up", secs(120), |s| {
                let m = mine(s);
                m.len() == 3
                    && m.contains_key(&alive)
                    && m.contains_key(&frozen)
                    && !m.contains_key(&dead)
                    && s.functions
                        .iter()
                        .any(|f| f.name == FUNCTION && f.starting == 0)
            })
            .await?;
            let after = mine(&s);
            track(&ctx, &mut after.keys());
            eprintln!("[agent-restart] before {before:?}, after {after:?}");
            ensure!(
                pid_of(alive.clone()).await? == alive_pid,
                "{alive} is not the same process"
            );
            ensure!(
                pid_of(frozen.clone()).await? == frozen_pid,
                "{frozen} is not the same process"
            );
            ensure!(
                !container_exists(&ctx, &dead).await?,
                "the dead instance {dead} was left in containerd"
            );
            let topped_up: Vec<_> = after.keys().filter(|id| !ids.contains(id)).collect();
            ensure!(topped_up.len() == 1, "{after:?}");
            let new = s
                .instances
                .iter()
                .find(|i| &i.id == topped_up[0])
                .context("the new instance")?;
            ensure!(
                new.restored_from.as_deref() == Some(store_as.as_str()),
                "the new instance was not restored from the stored image: {new:?}"
            );
            // Exactly the pool's instances carry the agent's label: no orphan, no
            // double start.
            ensure!(
                labelled(&ctx).await? == after.keys().cloned().collect::<BTreeSet<_>>(),
                "containers {:?} vs the pool {after:?}",
                labelled(&ctx).await?
            );
            ensure!(!stray_netns.exists(), "{} left", stray_netns.display());
            ensure!(!stray_log.exists(), "{} left", stray_log.display());
            let log = std::fs::read_to_string(&agent_log)?;
            ensure!(
                log.contains("adopted an instance of an earlier run")
                    && log.contains("removing an instance of an earlier run"),
                "the decisions are not logged:\n{}",
                tail(&log, 40)
            );
            for _ in 0..5 {
                let r = api.invoke(FUNCTION, &InvokeRequest::default()).await?;
                ensure!(r.status == 200, "{r:?}");
            }
            Ok(())
        }
        .await;
        // 5. SIGTERM: the second run stops every instance, adopted ones included.
        let status = second.signal_and_wait(libc::SIGTERM).await?;
        if let Err(e) = outcome {
            let log = std::fs::read_to_string(&agent_log).unwrap_or_default();
            bail!("{e:#}\nagent log tail:\n{}", tail(&log, 60));
        }
        ensure!(status.success(), "the agent exited {status} at SIGTERM");
        ensure!(
            labelled(&ctx).await?.is_empty(),
            "left after SIGTERM: {:?}",
            labelled(&ctx).await?
        );
        let left: Vec<PathBuf> = std::fs::read_dir(&netns_dir)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        ensure!(left.is_empty(), "network namespaces left: {left:?}");
        Ok(())
    });
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
