//! The pool manager's I/O: the policy fed with what the node sees, [`super::decide`]
//! every reconcile interval, its actions carried out through the instance driver, and the
//! instances handed to the invoke gateway (hot → warm → restore → cold).
//!
//! Clocks: the agent's clock is real seconds since the manager started; the policy's is
//! that times `time_scale` (policies plan per one-minute interval, so a scale of 60 makes
//! a real second a policy minute — for tests and demos; 1 in production).
//!
//! Concurrency: the state is one mutex, never held across an await. An instance under an
//! action or serving a request is marked busy, so it gets one action at a time; instance
//! starts (the pool's and the requests') share a semaphore of `max_parallel_starts`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};

use super::{
    decide, make_room, real_plan, Action, FunctionView, ImageState, InstanceView, Loaded,
    PlanBounds, StartWhy,
};
use crate::config::FunctionConfig;
use crate::driver::{FunctionSpec, Instance, InstanceDriver, Response};
use crate::metrics::{self, FunctionPoolStats, Metrics, StartTier};
use crate::policy::{FunctionId, FunctionInfo, Plan, Policy, Trigger, INTERVAL};

/// Bytes in the MB of `memory_mb` and `memory_budget_mb` (the cgroup limit is
/// `memory_mb << 20`).
const MIB: f64 = 1_048_576.0;

/// How the manager runs.
pub struct PoolOptions {
    /// Policy seconds per real second.
    pub time_scale: f64,
    /// Node memory budget, MB.
    pub memory_budget_mb: Option<f64>,
    pub max_parallel_starts: usize,
    /// The policy (the same code the simulator replays).
    pub policy: Box<dyn Policy + Send>,
}

#[derive(Debug)]
struct Slot {
    inst: Instance,
    loaded: Loaded,
    busy: bool,
    idle_since: f64,
    prewarmed: bool,
}

#[derive(Debug)]
struct FnRt {
    cfg: FunctionConfig,
    spec: FunctionSpec,
    image: ImageState,
    image_busy: bool,
    slots: Vec<Slot>,
    starting_hot: u32,
    starting_warm: u32,
    last_invoked: Option<f64>,
    last_end: Option<f64>,
    pending_load: Option<f64>,
    plan: Plan,
    rr: usize,
    /// Requests since the policy's last tick (its current interval), and what its
    /// forecaster expects for that interval.
    window_arrivals: u64,
    forecast: Option<f64>,
}

impl FnRt {
    fn view(&self) -> FunctionView {
        FunctionView {
            name: self.cfg.name.clone(),
            memory_mb: self.cfg.memory_mb as f64,
            image: self.image,
            image_busy: self.image_busy,
            instances: self
                .slots
                .iter()
                .map(|s| InstanceView {
                    id: s.inst.id.clone(),
                    loaded: s.loaded,
                    busy: s.busy,
                    idle_since: s.idle_since,
                    prewarmed: s.prewarmed,
                })
                .collect(),
            starting_hot: self.starting_hot,
            starting_warm: self.starting_warm,
            last_invoked: self.last_invoked,
            last_end: self.last_end,
            pending_load: self.pending_load,
            plan: self.plan,
            max_instances: self.cfg.max_instances,
        }
    }

    fn bounds(&self) -> PlanBounds {
        PlanBounds {
            min_instances: self.cfg.min_instances,
            max_instances: self.cfg.max_instances,
            keep_alive_min: self.cfg.keep_alive_min_secs,
            keep_alive_max: self.cfg.keep_alive_max_secs,
        }
    }

    fn slot(&mut self, id: &str) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.inst.id == id)
    }

    fn take_slot(&mut self, id: &str) -> Option<Slot> {
        let k = self.slots.iter().position(|s| s.inst.id == id)?;
        Some(self.slots.remove(k))
    }
}

struct State {
    fns: Vec<FnRt>,
    by_name: HashMap<String, usize>,
    /// Policy time of the next policy tick.
    next_tick: f64,
}

struct Shared {
    driver: Arc<dyn InstanceDriver>,
    policy: Mutex<Box<dyn Policy + Send>>,
    state: Mutex<State>,
    metrics: Arc<Metrics>,
    starts: Semaphore,
    epoch: Instant,
    time_scale: f64,
    budget_mb: Option<f64>,
    closing: AtomicBool,
    ops: AtomicUsize,
    ops_done: Notify,
    made: Mutex<Vec<String>>,
    /// The last starts served to requests, newest last (the admin API's status).
    recent: Mutex<VecDeque<RecentStart>>,
}

/// How many starts [`PoolManager::recent_starts`] remembers.
pub const RECENT_STARTS: usize = 256;

/// One request's start, as the gateway reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecentStart {
    pub function: String,
    pub tier: StartTier,
    /// Arrival to an instance ready to take the request, seconds.
    pub latency_secs: f64,
    /// Real seconds since the manager started.
    pub at: f64,
}

/// One loaded instance, for observers (the admin API's status).
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceSnapshot {
    pub function: String,
    pub id: String,
    pub loaded: Loaded,
    pub busy: bool,
    /// Seconds since it is idle (or loaded); 0 while busy.
    pub idle_secs: f64,
    /// The image it was restored from; `None`: cold-started.
    pub restored_from: Option<String>,
}

/// Why an operator's request on the pools (the admin API) was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error("no function {0:?} is registered")]
    UnknownFunction(String),
    #[error("a function {0:?} is registered already")]
    Exists(String),
    #[error("function {function:?}: store_as {store_as:?} is function {other:?}'s too")]
    ImageTaken {
        function: String,
        store_as: String,
        other: String,
    },
    #[error("{0:?} has no idle running or frozen instance to checkpoint: invoke it first")]
    NoInstance(String),
    #[error("{function:?} has no instance {instance:?}")]
    NoSuchInstance { function: String, instance: String },
    #[error("instance {instance:?} of {function:?} is busy (serving a request or under an action): try again")]
    Busy { function: String, instance: String },
    #[error("a checkpoint, stage or unstage of {0:?}'s image is in flight: try again")]
    ImageBusy(String),
    #[error("checkpointing {instance:?} of {function:?} failed: {cause}")]
    Checkpoint {
        function: String,
        instance: String,
        cause: String,
    },
    #[error("the agent is shutting down")]
    ShuttingDown,
}

/// What [`PoolManager::checkpoint`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpointed {
    pub instance: String,
    pub image: String,
    pub kept_running: bool,
    pub secs: f64,
}

/// Counts an operation in flight (a request, an action) until dropped.
struct OpGuard(Arc<Shared>);

impl OpGuard {
    fn new(s: &Arc<Shared>) -> Self {
        s.ops.fetch_add(1, Ordering::SeqCst);
        OpGuard(s.clone())
    }
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        if self.0.ops.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.ops_done.notify_waiters();
        }
    }
}

/// One function's pool, for observers (tests, logs).
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSnapshot {
    pub function: String,
    /// Running instances (busy ones included), frozen ones, busy ones.
    pub hot: u32,
    pub warm: u32,
    pub busy: u32,
    pub starting: u32,
    pub image: ImageState,
    /// The plan in force, real seconds.
    pub plan: Plan,
}

/// A request served by the gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    pub response: Response,
    pub tier: StartTier,
    pub instance: String,
}

/// Why the gateway could not serve a request.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("no function {0:?} is registered")]
    UnknownFunction(String),
    #[error("no instance of {function:?} could serve the request: {last}")]
    Failed { function: String, last: String },
    #[error("the node's memory budget has no room for another instance of {0:?}")]
    Budget(String),
    #[error("the agent is shutting down")]
    ShuttingDown,
}

/// The pool manager. Cheap to clone (shared state).
#[derive(Clone)]
pub struct PoolManager {
    s: Arc<Shared>,
}

enum Acquired {
    Got(Instance, StartTier, f64),
    Wait,
}

impl PoolManager {
    pub fn new(
        driver: Arc<dyn InstanceDriver>,
        functions: &[FunctionConfig],
        opts: PoolOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut policy = opts.policy;
        let mut fns = Vec::new();
        let mut by_name = HashMap::new();
        for (i, cfg) in functions.iter().enumerate() {
            let id = i as FunctionId;
            policy.register(
                id,
                &FunctionInfo {
                    app: id,
                    memory_mb: cfg.memory_mb as f64,
                    trigger: Some(Trigger::Http),
                },
            );
            let mut rt = FnRt {
                cfg: cfg.clone(),
                spec: cfg.spec(),
                image: ImageState::None,
                image_busy: false,
                slots: Vec::new(),
                starting_hot: 0,
                starting_warm: 0,
                last_invoked: None,
                last_end: None,
                pending_load: None,
                plan: Plan::default(),
                rr: 0,
                window_arrivals: 0,
                forecast: None,
            };
            rt.plan = real_plan(&policy.plan(id, 0.0), opts.time_scale, &rt.bounds());
            by_name.insert(cfg.name.clone(), i);
            fns.push(rt);
        }
        metrics.pool.set_node(
            opts.memory_budget_mb.map(|mb| (mb * MIB) as u64),
            INTERVAL / opts.time_scale.max(f64::MIN_POSITIVE),
        );
        PoolManager {
            s: Arc::new(Shared {
                driver,
                policy: Mutex::new(policy),
                state: Mutex::new(State {
                    fns,
                    by_name,
                    next_tick: INTERVAL,
                }),
                metrics,
                starts: Semaphore::new(opts.max_parallel_starts.max(1)),
                epoch: Instant::now(),
                time_scale: opts.time_scale,
                budget_mb: opts.memory_budget_mb,
                closing: AtomicBool::new(false),
                ops: AtomicUsize::new(0),
                ops_done: Notify::new(),
                made: Mutex::new(Vec::new()),
                recent: Mutex::new(VecDeque::with_capacity(RECENT_STARTS)),
            }),
        }
    }

    /// Marks functions whose image already is in the store (e.g. after a restart of
    /// the agent), so their next start is a restore. `staged`: decompressed in memory.
    pub fn set_image(&self, function: &str, staged: bool) {
        let mut st = self.s.state.lock().unwrap();
        if let Some(&i) = st.by_name.get(function) {
            st.fns[i].image = if staged {
                ImageState::Staged
            } else {
                ImageState::Disk
            };
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.s.metrics
    }

    /// Real seconds since the manager started.
    fn now(&self) -> f64 {
        self.s.epoch.elapsed().as_secs_f64()
    }

    fn policy_time(&self, real: f64) -> f64 {
        real * self.s.time_scale
    }

    /// Every instance id the manager has made so far (for leak checks).
    pub fn instances_made(&self) -> Vec<String> {
        self.s.made.lock().unwrap().clone()
    }

    pub fn snapshot(&self) -> Vec<PoolSnapshot> {
        let st = self.s.state.lock().unwrap();
        st.fns
            .iter()
            .enumerate()
            .filter(|(i, f)| st.by_name.get(&f.cfg.name) == Some(i))
            .map(|(_, f)| PoolSnapshot {
                function: f.cfg.name.clone(),
                hot: f.slots.iter().filter(|s| s.loaded == Loaded::Hot).count() as u32,
                warm: f.slots.iter().filter(|s| s.loaded == Loaded::Warm).count() as u32,
                busy: f.slots.iter().filter(|s| s.busy).count() as u32,
                starting: f.starting_hot + f.starting_warm,
                image: f.image,
                plan: f.plan,
            })
            .collect()
    }

    /// One reconcile: the policy's plans (ticking it when an interval has passed), the
    /// decisions, the actions spawned. Returns the actions.
    pub fn reconcile(&self) -> Vec<Action> {
        if self.s.closing.load(Ordering::SeqCst) {
            return Vec::new();
        }
        let now = self.now();
        let pnow = self.policy_time(now);
        let mut st = self.s.state.lock().unwrap();
        {
            let mut policy = self.s.policy.lock().unwrap();
            let ticked = pnow >= st.next_tick;
            if ticked {
                policy.tick(pnow);
                while st.next_tick <= pnow {
                    st.next_tick += INTERVAL;
                }
            }
            for (i, f) in st.fns.iter_mut().enumerate() {
                let p = policy.plan(i as FunctionId, pnow);
                f.plan = real_plan(&p, self.s.time_scale, &f.bounds());
                if ticked {
                    // A new interval: the policy counted the arrivals of the last one
                    // (it saw each in on_arrival) and forecast this one.
                    f.window_arrivals = 0;
                }
                f.forecast = policy.arrival_forecast(i as FunctionId);
            }
        }
        let views: Vec<FunctionView> = st.fns.iter().map(FnRt::view).collect();
        let actions = decide(now, &views, self.s.budget_mb);
        for a in &actions {
            self.claim(&mut st, a);
        }
        self.publish(&st);
        drop(st);
        for a in &actions {
            let me = self.clone();
            let guard = OpGuard::new(&self.s);
            let a = a.clone();
            tokio::spawn(async move {
                me.act(a).await;
                drop(guard);
            });
        }
        actions
    }

    /// Marks what an action works on, before it is spawned.
    fn claim(&self, st: &mut State, a: &Action) {
        let f = &mut st.fns[a.function()];
        match a {
            Action::Checkpoint { instance, .. } => {
                f.image_busy = true;
                if let Some(s) = f.slot(instance) {
                    s.busy = true;
                }
            }
            Action::Freeze { instance, .. } | Action::Thaw { instance, .. } => {
                if let Some(s) = f.slot(instance) {
                    s.busy = true;
                }
            }
            Action::Stop { .. } => {}
            Action::Start { into, why, .. } => {
                match into {
                    Loaded::Hot => f.starting_hot += 1,
                    Loaded::Warm => f.starting_warm += 1,
                }
                if *why == StartWhy::PreWarm {
                    f.pending_load = None;
                }
            }
            Action::Stage { .. } | Action::Unstage { .. } => f.image_busy = true,
        }
    }

    fn publish(&self, st: &State) {
        let m = &self.s.metrics;
        for f in &st.fns {
            let n = &f.cfg.name;
            let hot = f.slots.iter().filter(|s| s.loaded == Loaded::Hot).count();
            let warm = f.slots.len() - hot;
            m.set_pool(n, "hot", hot as i64);
            m.set_pool(n, "warm", warm as i64);
            m.set_pool(n, "staged", (f.image == ImageState::Staged) as i64);
            m.set_pool(n, "disk", (f.image != ImageState::None) as i64);
            m.set_target(n, "hot", f.plan.targets.hot as i64);
            m.set_target(n, "warm", f.plan.targets.warm as i64);
            m.set_target(n, "staged", f.plan.targets.staged as i64);
            m.pool.set_function(
                n,
                FunctionPoolStats {
                    forecast_arrivals: f.forecast,
                    observed_arrivals: f.window_arrivals,
                    // What make_room and decide count against the budget.
                    memory_bytes: (f.view().memory_now() * MIB) as u64,
                },
            );
        }
    }

    async fn act(&self, a: Action) {
        let fi = a.function();
        let (name, spec, store_as) = {
            let st = self.s.state.lock().unwrap();
            let f = &st.fns[fi];
            (f.cfg.name.clone(), f.spec.clone(), f.spec.store_as.clone())
        };
        let d = &self.s.driver;
        let ok = match &a {
            Action::Checkpoint { instance, .. } => {
                let inst = self.instance(fi, instance);
                let r = match &inst {
                    Some(i) => d.checkpoint(i, &store_as).await.map_err(|e| e.to_string()),
                    None => Err("instance gone".into()),
                };
                let mut st = self.s.state.lock().unwrap();
                let f = &mut st.fns[fi];
                f.image_busy = false;
                if r.is_ok() {
                    f.image = ImageState::Disk;
                }
                if let Some(s) = f.slot(instance) {
                    s.busy = false;
                }
                log_result(&name, &a, &r);
                r.is_ok()
            }
            Action::Freeze { instance, .. } | Action::Thaw { instance, .. } => {
                let freeze = matches!(a, Action::Freeze { .. });
                let Some(inst) = self.instance(fi, instance) else {
                    return;
                };
                let r = if freeze {
                    d.freeze(&inst).await
                } else {
                    d.thaw(&inst).await
                }
                .map_err(|e| e.to_string());
                let failed = {
                    let mut st = self.s.state.lock().unwrap();
                    let f = &mut st.fns[fi];
                    match &r {
                        Ok(()) => {
                            if let Some(s) = f.slot(instance) {
                                s.busy = false;
                                s.loaded = if freeze { Loaded::Warm } else { Loaded::Hot };
                            }
                            None
                        }
                        // In doubt about its state: it goes.
                        Err(_) => f.take_slot(instance),
                    }
                };
                if let Some(s) = failed {
                    self.stop_instance(&name, s.inst).await;
                }
                log_result(&name, &a, &r);
                r.is_ok()
            }
            Action::Stop { instance, .. } => {
                let slot = {
                    let mut st = self.s.state.lock().unwrap();
                    let f = &mut st.fns[fi];
                    match f.slot(instance) {
                        Some(s) if !s.busy => f.take_slot(instance),
                        _ => None, // taken by a request meanwhile
                    }
                };
                match slot {
                    Some(s) => self.stop_instance(&name, s.inst).await,
                    None => return,
                }
            }
            Action::Start { into, why, .. } => {
                let r = self.start_for_pool(fi, &spec, *into).await;
                let (ok, leftover) = {
                    let mut st = self.s.state.lock().unwrap();
                    let f = &mut st.fns[fi];
                    match into {
                        Loaded::Hot => f.starting_hot -= 1,
                        Loaded::Warm => f.starting_warm -= 1,
                    }
                    match r {
                        Ok(inst) if self.s.closing.load(Ordering::SeqCst) => (true, Some(inst)),
                        Ok(inst) => {
                            f.slots.push(Slot {
                                inst,
                                loaded: *into,
                                busy: false,
                                idle_since: self.now(),
                                prewarmed: *why == StartWhy::PreWarm,
                            });
                            (true, None)
                        }
                        Err(e) => {
                            tracing::warn!(function = %name, error = %e, "pool start failed");
                            (false, None)
                        }
                    }
                };
                if let Some(inst) = leftover {
                    self.stop_instance(&name, inst).await;
                }
                ok
            }
            Action::Stage { .. } | Action::Unstage { .. } => {
                let stage = matches!(a, Action::Stage { .. });
                let r = if stage {
                    d.stage(&store_as).await.map(|_| ())
                } else {
                    d.unstage(&store_as).await
                }
                .map_err(|e| e.to_string());
                let mut st = self.s.state.lock().unwrap();
                let f = &mut st.fns[fi];
                f.image_busy = false;
                if r.is_ok() {
                    f.image = if stage {
                        ImageState::Staged
                    } else {
                        ImageState::Disk
                    };
                }
                log_result(&name, &a, &r);
                r.is_ok()
            }
        };
        self.s.metrics.action(&name, a.name(), ok);
    }

    fn instance(&self, fi: usize, id: &str) -> Option<Instance> {
        let mut st = self.s.state.lock().unwrap();
        st.fns[fi].slot(id).map(|s| s.inst.clone())
    }

    /// A background start: restore when there is an image, else cold start; frozen
    /// after when it is for the warm tier.
    async fn start_for_pool(
        &self,
        fi: usize,
        spec: &FunctionSpec,
        into: Loaded,
    ) -> Result<Instance, String> {
        let _permit = self.s.starts.acquire().await.map_err(|e| e.to_string())?;
        let image = self.s.state.lock().unwrap().fns[fi].image;
        let d = &self.s.driver;
        let r = match image {
            ImageState::None => d.cold_start(spec).await,
            _ => d.restore(spec, &spec.store_as).await,
        };
        let inst = r.map_err(|e| e.to_string())?;
        self.s.made.lock().unwrap().push(inst.id.clone());
        if into == Loaded::Warm {
            if let Err(e) = d.freeze(&inst).await {
                self.stop_instance(&spec.name, inst).await;
                return Err(e.to_string());
            }
        }
        Ok(inst)
    }

    async fn stop_instance(&self, function: &str, inst: Instance) -> bool {
        let id = inst.id.clone();
        match self.s.driver.stop(inst).await {
            Ok(()) => {
                tracing::debug!(function, instance = %id, "stopped");
                true
            }
            Err(e) => {
                tracing::warn!(function, instance = %id, error = %e, "stop failed");
                false
            }
        }
    }

    /// Serves one request through the gateway: an instance from the fastest path
    /// (hot → warm → restore from the staged image or from disk → cold start), `GET path`
    /// on it, its answer. Any failure falls back to the next path and is counted.
    pub async fn invoke(&self, function: &str, path: &str) -> Result<Served, InvokeError> {
        if self.s.closing.load(Ordering::SeqCst) {
            return Err(InvokeError::ShuttingDown);
        }
        let _guard = OpGuard::new(&self.s);
        let arrival = Instant::now();
        let now = self.now();
        let (fi, timeout) = {
            let mut st = self.s.state.lock().unwrap();
            let Some(&fi) = st.by_name.get(function) else {
                return Err(InvokeError::UnknownFunction(function.to_string()));
            };
            st.fns[fi].last_invoked = Some(now);
            st.fns[fi].window_arrivals += 1;
            let t = Duration::from_secs_f64(st.fns[fi].cfg.invoke_timeout_secs);
            (fi, t)
        };
        self.s
            .policy
            .lock()
            .unwrap()
            .on_arrival(fi as FunctionId, self.policy_time(now));
        let deadline = arrival + timeout;
        let mut last = String::from("no instance");
        let mut skip_loaded = false;
        let result = loop {
            if Instant::now() >= deadline {
                break Err(InvokeError::Failed {
                    function: function.into(),
                    last: format!("{last} (gave up after {timeout:?})"),
                });
            }
            let (inst, tier, latency) = match self.acquire(fi, function, skip_loaded).await {
                Ok(Acquired::Got(i, t, l)) => (i, t, l),
                Ok(Acquired::Wait) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Err(e) => break Err(e),
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let began = Instant::now();
            match self.s.driver.invoke(&inst, path, left).await {
                Ok(response) => {
                    self.s.metrics.start(function, tier, latency);
                    self.note_start(function, tier, latency);
                    self.release(fi, &inst.id, began.elapsed().as_secs_f64());
                    break Ok(Served {
                        response,
                        tier,
                        instance: inst.id,
                    });
                }
                Err(e) => {
                    self.s.metrics.failure(function, tier, "invoke");
                    last = e.to_string();
                    tracing::warn!(function, tier = tier.name(), error = %e, "invoke failed; falling back");
                    let slot = self.s.state.lock().unwrap().fns[fi].take_slot(&inst.id);
                    if let Some(s) = slot {
                        self.stop_instance(function, s.inst).await;
                    }
                    // The next attempt starts a new instance rather than trying another
                    // loaded one.
                    skip_loaded = true;
                }
            }
        };
        if result.is_err() {
            // The request ended without an answer; the policy still sees its end.
            self.s.policy.lock().unwrap().on_end(
                fi as FunctionId,
                self.policy_time(self.now()),
                0.0,
            );
        }
        result
    }

    /// The request's instance is free again.
    fn release(&self, fi: usize, id: &str, exec_secs: f64) {
        let now = self.now();
        let mut st = self.s.state.lock().unwrap();
        let f = &mut st.fns[fi];
        if let Some(s) = f.slot(id) {
            s.busy = false;
            s.idle_since = now;
            s.prewarmed = false;
        }
        f.last_end = Some(now);
        if f.plan.pre_warm > 0.0 {
            f.pending_load = Some(now + f.plan.pre_warm);
        }
        drop(st);
        self.s.policy.lock().unwrap().on_end(
            fi as FunctionId,
            self.policy_time(now),
            exec_secs * self.s.time_scale,
        );
    }

    /// An instance for a request, by the fastest path that works.
    async fn acquire(
        &self,
        fi: usize,
        function: &str,
        skip_loaded: bool,
    ) -> Result<Acquired, InvokeError> {
        let arrival = Instant::now();
        // Hot: an idle running instance, round robin.
        let warm = {
            let mut st = self.s.state.lock().unwrap();
            let f = &mut st.fns[fi];
            let n = f.slots.len();
            if !skip_loaded && n > 0 {
                let start = f.rr % n;
                for k in 0..n {
                    let j = (start + k) % n;
                    let s = &mut f.slots[j];
                    if !s.busy && s.loaded == Loaded::Hot {
                        s.busy = true;
                        f.rr = j + 1;
                        let inst = s.inst.clone();
                        return Ok(Acquired::Got(inst, StartTier::Hot, secs(arrival)));
                    }
                }
            }
            if skip_loaded {
                None
            } else {
                f.slots
                    .iter_mut()
                    .find(|s| !s.busy && s.loaded == Loaded::Warm)
                    .map(|s| {
                        s.busy = true;
                        s.inst.clone()
                    })
            }
        };
        // Warm: thaw a frozen one.
        if let Some(inst) = warm {
            match self.s.driver.thaw(&inst).await {
                Ok(()) => {
                    let mut st = self.s.state.lock().unwrap();
                    if let Some(s) = st.fns[fi].slot(&inst.id) {
                        s.loaded = Loaded::Hot;
                    }
                    return Ok(Acquired::Got(inst, StartTier::Warm, secs(arrival)));
                }
                Err(e) => {
                    self.s
                        .metrics
                        .failure(function, StartTier::Warm, metrics::reason(&e));
                    tracing::warn!(function, error = %e, "thaw failed; falling back");
                    let slot = self.s.state.lock().unwrap().fns[fi].take_slot(&inst.id);
                    if let Some(s) = slot {
                        self.stop_instance(function, s.inst).await;
                    }
                }
            }
        }
        // A new instance: room (max_instances, memory budget) first.
        let (spec, image) = {
            let mut st = self.s.state.lock().unwrap();
            let views: Vec<FunctionView> = st.fns.iter().map(FnRt::view).collect();
            let f = &st.fns[fi];
            if f.slots.len() as u32 + f.starting_hot + f.starting_warm >= f.cfg.max_instances {
                return Ok(Acquired::Wait);
            }
            let mut evict = Vec::new();
            if let Some(budget) = self.s.budget_mb {
                if !make_room(&views, budget, f.cfg.memory_mb as f64, &mut evict) {
                    let busy_elsewhere = views.iter().any(|v| v.instances.iter().any(|i| i.busy));
                    if busy_elsewhere {
                        // Room may come when a request ends.
                        return Ok(Acquired::Wait);
                    }
                    self.s.metrics.failure(function, StartTier::Cold, "budget");
                    return Err(InvokeError::Budget(function.into()));
                }
            }
            for a in &evict {
                self.claim(&mut st, a);
            }
            let f = &mut st.fns[fi];
            f.starting_hot += 1;
            let out = (f.spec.clone(), f.image);
            drop(st);
            for a in evict {
                let me = self.clone();
                let guard = OpGuard::new(&self.s);
                tokio::spawn(async move {
                    me.act(a).await;
                    drop(guard);
                });
            }
            out
        };
        let r = self.start_for_request(fi, function, &spec, image).await;
        let closing = self.s.closing.load(Ordering::SeqCst);
        {
            let mut st = self.s.state.lock().unwrap();
            let f = &mut st.fns[fi];
            f.starting_hot -= 1;
            if let (Ok((inst, _)), false) = (&r, closing) {
                f.slots.push(Slot {
                    inst: inst.clone(),
                    loaded: Loaded::Hot,
                    busy: true,
                    idle_since: self.now(),
                    prewarmed: false,
                });
            }
        }
        match r {
            Ok((inst, _)) if closing => {
                self.stop_instance(function, inst).await;
                Err(InvokeError::ShuttingDown)
            }
            Ok((inst, tier)) => Ok(Acquired::Got(inst, tier, secs(arrival))),
            Err(last) => Err(InvokeError::Failed {
                function: function.into(),
                last,
            }),
        }
    }

    /// Restore (staged, then disk), falling back to a cold start.
    async fn start_for_request(
        &self,
        _fi: usize,
        function: &str,
        spec: &FunctionSpec,
        image: ImageState,
    ) -> Result<(Instance, StartTier), String> {
        let _permit = self.s.starts.acquire().await.map_err(|e| e.to_string())?;
        let d = &self.s.driver;
        let restore_tier = match image {
            ImageState::Staged => Some(StartTier::RestoreStaged),
            ImageState::Disk => Some(StartTier::RestoreDisk),
            ImageState::None => None,
        };
        if let Some(tier) = restore_tier {
            match d.restore(spec, &spec.store_as).await {
                Ok(i) => {
                    self.s.made.lock().unwrap().push(i.id.clone());
                    return Ok((i, tier));
                }
                Err(e) => {
                    self.s.metrics.failure(function, tier, metrics::reason(&e));
                    tracing::warn!(function, error = %e, "restore failed; cold start instead");
                }
            }
        }
        match d.cold_start(spec).await {
            Ok(i) => {
                self.s.made.lock().unwrap().push(i.id.clone());
                Ok((i, StartTier::Cold))
            }
            Err(e) => {
                self.s
                    .metrics
                    .failure(function, StartTier::Cold, metrics::reason(&e));
                Err(e.to_string())
            }
        }
    }

    fn note_start(&self, function: &str, tier: StartTier, latency_secs: f64) {
        let mut r = self.s.recent.lock().unwrap();
        if r.len() == RECENT_STARTS {
            r.pop_front();
        }
        r.push_back(RecentStart {
            function: function.to_string(),
            tier,
            latency_secs,
            at: self.now(),
        });
    }

    /// The last [`RECENT_STARTS`] starts served to requests, oldest first.
    pub fn recent_starts(&self) -> Vec<RecentStart> {
        self.s.recent.lock().unwrap().iter().cloned().collect()
    }

    /// Real seconds since the manager started (the clock of [`RecentStart::at`]).
    pub fn uptime_secs(&self) -> f64 {
        self.now()
    }

    /// The registered functions' configurations, in registration order.
    pub fn functions(&self) -> Vec<FunctionConfig> {
        let st = self.s.state.lock().unwrap();
        st.fns
            .iter()
            .enumerate()
            .filter(|(i, f)| st.by_name.get(&f.cfg.name) == Some(i))
            .map(|(_, f)| f.cfg.clone())
            .collect()
    }

    /// Every loaded instance of the registered functions.
    pub fn instances(&self) -> Vec<InstanceSnapshot> {
        let now = self.now();
        let st = self.s.state.lock().unwrap();
        let mut out = Vec::new();
        for (i, f) in st.fns.iter().enumerate() {
            if st.by_name.get(&f.cfg.name) != Some(&i) {
                continue;
            }
            for s in &f.slots {
                out.push(InstanceSnapshot {
                    function: f.cfg.name.clone(),
                    id: s.inst.id.clone(),
                    loaded: s.loaded,
                    busy: s.busy,
                    idle_secs: if s.busy {
                        0.0
                    } else {
                        (now - s.idle_since).max(0.0)
                    },
                    restored_from: s.inst.restored_from.clone(),
                });
            }
        }
        out
    }

    /// Registers a function while the agent runs (the caller has validated `cfg`, as the
    /// configuration loader does). It starts with no image: the caller tells
    /// [`PoolManager::set_image`] when the store has one.
    pub fn add_function(&self, cfg: FunctionConfig) -> Result<(), ManageError> {
        if self.s.closing.load(Ordering::SeqCst) {
            return Err(ManageError::ShuttingDown);
        }
        let now = self.now();
        // Lock order as in reconcile: state, then policy.
        let mut st = self.s.state.lock().unwrap();
        if st.by_name.contains_key(&cfg.name) {
            return Err(ManageError::Exists(cfg.name));
        }
        let live = |i: usize, f: &FnRt| st.by_name.get(&f.cfg.name) == Some(&i);
        if let Some(other) = st
            .fns
            .iter()
            .enumerate()
            .find(|(i, f)| live(*i, f) && f.spec.store_as == cfg.store_as())
        {
            return Err(ManageError::ImageTaken {
                function: cfg.name.clone(),
                store_as: cfg.store_as().to_string(),
                other: other.1.cfg.name.clone(),
            });
        }
        // Ids are indices into `fns`, which only grows (removed functions stay as
        // tombstones), so the indices actions and requests hold stay valid.
        let fi = st.fns.len();
        let id = fi as FunctionId;
        let mut policy = self.s.policy.lock().unwrap();
        policy.register(
            id,
            &FunctionInfo {
                app: id,
                memory_mb: cfg.memory_mb as f64,
                trigger: Some(Trigger::Http),
            },
        );
        let mut rt = FnRt {
            cfg: cfg.clone(),
            spec: cfg.spec(),
            image: ImageState::None,
            image_busy: false,
            slots: Vec::new(),
            starting_hot: 0,
            starting_warm: 0,
            last_invoked: None,
            last_end: None,
            pending_load: None,
            plan: Plan::default(),
            rr: 0,
            window_arrivals: 0,
            forecast: None,
        };
        rt.plan = real_plan(
            &policy.plan(id, self.policy_time(now)),
            self.s.time_scale,
            &rt.bounds(),
        );
        drop(policy);
        st.by_name.insert(cfg.name.clone(), fi);
        st.fns.push(rt);
        tracing::info!(function = %cfg.name, image_ref = %cfg.image_ref, "function registered");
        Ok(())
    }

    /// Unregisters a function: no new request or pool action reaches it; the requests
    /// and starts in flight end (up to `grace`); then every instance of it is stopped
    /// and its staged image unstaged (the image stays in the store). Returns the
    /// instances stopped.
    pub async fn remove_function(&self, name: &str, grace: Duration) -> Result<usize, ManageError> {
        let _guard = OpGuard::new(&self.s);
        let fi = {
            let mut st = self.s.state.lock().unwrap();
            let fi = st
                .by_name
                .remove(name)
                .ok_or_else(|| ManageError::UnknownFunction(name.to_string()))?;
            // A tombstone: no target, no start, no image action from decide.
            let f = &mut st.fns[fi];
            f.cfg.min_instances = 0;
            f.cfg.max_instances = 0;
            f.pending_load = None;
            fi
        };
        let until = Instant::now() + grace;
        loop {
            let in_flight = {
                let st = self.s.state.lock().unwrap();
                let f = &st.fns[fi];
                f.starting_hot + f.starting_warm > 0
                    || f.image_busy
                    || f.slots.iter().any(|s| s.busy)
            };
            if !in_flight || Instant::now() >= until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (slots, staged) = {
            let mut st = self.s.state.lock().unwrap();
            let f = &mut st.fns[fi];
            let staged = f.image == ImageState::Staged;
            // Nothing more happens to the image through this tombstone.
            f.image = ImageState::None;
            f.image_busy = true;
            (
                std::mem::take(&mut f.slots),
                staged.then(|| f.spec.store_as.clone()),
            )
        };
        let n = slots.len();
        for s in slots {
            self.stop_instance(name, s.inst).await;
        }
        if let Some(image) = staged {
            if let Err(e) = self.s.driver.unstage(&image).await {
                tracing::warn!(function = name, image, error = %e, "unstage failed");
            }
        }
        tracing::info!(function = name, instances = n, "function unregistered");
        Ok(n)
    }

    /// Checkpoints an idle instance of `function` (the one named, else a running one,
    /// else a frozen one) into the store under its `store_as`, through the driver as the
    /// pool's own checkpoints go; then leaves it in the pool, or stops it unless
    /// `keep_running`.
    pub async fn checkpoint(
        &self,
        function: &str,
        instance: Option<&str>,
        keep_running: bool,
    ) -> Result<Checkpointed, ManageError> {
        if self.s.closing.load(Ordering::SeqCst) {
            return Err(ManageError::ShuttingDown);
        }
        let _guard = OpGuard::new(&self.s);
        let (fi, inst, store_as) = {
            let mut st = self.s.state.lock().unwrap();
            let fi = *st
                .by_name
                .get(function)
                .ok_or_else(|| ManageError::UnknownFunction(function.to_string()))?;
            let f = &mut st.fns[fi];
            if f.image_busy {
                return Err(ManageError::ImageBusy(function.to_string()));
            }
            let k = match instance {
                Some(id) => {
                    let k = f
                        .slots
                        .iter()
                        .position(|s| s.inst.id == id)
                        .ok_or_else(|| ManageError::NoSuchInstance {
                            function: function.to_string(),
                            instance: id.to_string(),
                        })?;
                    if f.slots[k].busy {
                        return Err(ManageError::Busy {
                            function: function.to_string(),
                            instance: id.to_string(),
                        });
                    }
                    k
                }
                None => f
                    .slots
                    .iter()
                    .position(|s| !s.busy && s.loaded == Loaded::Hot)
                    .or_else(|| f.slots.iter().position(|s| !s.busy))
                    .ok_or_else(|| ManageError::NoInstance(function.to_string()))?,
            };
            f.image_busy = true;
            f.slots[k].busy = true;
            (fi, f.slots[k].inst.clone(), f.spec.store_as.clone())
        };
        let began = Instant::now();
        let r = self.s.driver.checkpoint(&inst, &store_as).await;
        let secs = began.elapsed().as_secs_f64();
        let stop = {
            let now = self.now();
            let mut st = self.s.state.lock().unwrap();
            let f = &mut st.fns[fi];
            f.image_busy = false;
            if r.is_ok() && f.image == ImageState::None {
                f.image = ImageState::Disk;
            }
            if r.is_ok() && !keep_running {
                f.take_slot(&inst.id)
            } else {
                if let Some(s) = f.slot(&inst.id) {
                    s.busy = false;
                    s.idle_since = now;
                }
                None
            }
        };
        self.s.metrics.action(function, "checkpoint", r.is_ok());
        if let Some(s) = stop {
            self.stop_instance(function, s.inst).await;
        }
        match r {
            Ok(()) => {
                tracing::info!(function, instance = %inst.id, image = %store_as, secs, keep_running, "checkpointed on request");
                Ok(Checkpointed {
                    instance: inst.id,
                    image: store_as,
                    kept_running: keep_running,
                    secs,
                })
            }
            Err(e) => Err(ManageError::Checkpoint {
                function: function.to_string(),
                instance: inst.id,
                cause: e.to_string(),
            }),
        }
    }

    /// Reconciles every `interval` until `stop` says so.
    pub async fn run(&self, interval: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let actions = self.reconcile();
                    if !actions.is_empty() {
                        tracing::debug!(?actions, "reconcile");
                    }
                }
                _ = stop.changed() => break,
            }
            if *stop.borrow() {
                break;
            }
        }
    }

    /// Refuses new requests, waits (up to `grace`) for the requests and actions in
    /// flight, then stops every instance and unstages the images it staged. Returns the
    /// number of instances stopped.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.s.closing.store(true, Ordering::SeqCst);
        let until = Instant::now() + grace;
        while self.s.ops.load(Ordering::SeqCst) > 0 && Instant::now() < until {
            let wait = self.s.ops_done.notified();
            if self.s.ops.load(Ordering::SeqCst) == 0 {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), wait).await;
        }
        let (slots, staged) = {
            let mut st = self.s.state.lock().unwrap();
            let mut all = Vec::new();
            let mut staged = Vec::new();
            for f in &mut st.fns {
                for s in f.slots.drain(..) {
                    all.push((f.cfg.name.clone(), s.inst));
                }
                if f.image == ImageState::Staged {
                    staged.push(f.spec.store_as.clone());
                    f.image = ImageState::Disk;
                }
            }
            (all, staged)
        };
        let n = slots.len();
        for (name, inst) in slots {
            self.stop_instance(&name, inst).await;
        }
        for image in staged {
            if let Err(e) = self.s.driver.unstage(&image).await {
                tracing::warn!(image, error = %e, "unstage at shutdown failed");
            }
        }
        n
    }
}

fn secs(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

fn log_result(function: &str, a: &Action, r: &Result<(), String>) {
    match r {
        Ok(()) => tracing::info!(function, action = a.name(), "pool action done"),
        Err(e) => tracing::warn!(function, action = a.name(), error = %e, "pool action failed"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;
    use crate::driver::{Cause, DriverError, Op, StageOutcome, TaskState};
    use crate::policy::fixed::FixedKeepAlive;

    /// A driver without containers: restores fail when told to.
    #[derive(Default)]
    struct Fake {
        fail_restore: AtomicBool,
        next: AtomicU32,
        stopped: AtomicU32,
    }

    impl Fake {
        fn instance(&self, f: &FunctionSpec, from: Option<&str>) -> Instance {
            Instance {
                id: format!("{}-{}", f.name, self.next.fetch_add(1, Ordering::SeqCst)),
                function: f.name.clone(),
                pid: 1,
                port: f.port,
                netns: None,
                restored_from: from.map(str::to_string),
                store_as: f.store_as.clone(),
            }
        }
    }

    #[async_trait::async_trait]
    impl InstanceDriver for Fake {
        async fn cold_start(&self, f: &FunctionSpec) -> Result<Instance, DriverError> {
            Ok(self.instance(f, None))
        }
        async fn restore(&self, f: &FunctionSpec, image: &str) -> Result<Instance, DriverError> {
            if self.fail_restore.load(Ordering::SeqCst) {
                return Err(DriverError {
                    op: Op::Restore,
                    function: f.name.clone(),
                    instance: None,
                    image: Some(image.into()),
                    cause: Cause::Invalid("no such image".into()),
                });
            }
            Ok(self.instance(f, Some(image)))
        }
        async fn checkpoint(&self, _: &Instance, _: &str) -> Result<(), DriverError> {
            Ok(())
        }
        async fn freeze(&self, _: &Instance) -> Result<(), DriverError> {
            Ok(())
        }
        async fn thaw(&self, _: &Instance) -> Result<(), DriverError> {
            Ok(())
        }
        async fn state(&self, _: &Instance) -> Result<TaskState, DriverError> {
            Ok(TaskState::Running)
        }
        async fn stop(&self, _: Instance) -> Result<(), DriverError> {
            self.stopped.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        async fn stage(&self, _: &str) -> Result<StageOutcome, DriverError> {
            Ok(StageOutcome {
                bytes: 1,
                already_staged: false,
            })
        }
        async fn unstage(&self, _: &str) -> Result<(), DriverError> {
            Ok(())
        }
        async fn invoke(
            &self,
            i: &Instance,
            path: &str,
            _: Duration,
        ) -> Result<Response, DriverError> {
            // Long enough for concurrent requests to overlap.
            tokio::time::sleep(Duration::from_millis(30)).await;
            Ok(Response {
                status: 200,
                body: format!("{} {path}", i.id),
            })
        }
    }

    fn manager(fake: Arc<Fake>) -> PoolManager {
        PoolManager::new(
            fake,
            &[FunctionConfig::new("f", "img", 8080)],
            PoolOptions {
                time_scale: 1.0,
                memory_budget_mb: None,
                max_parallel_starts: 2,
                policy: Box::new(FixedKeepAlive::ten_minutes()),
            },
            Arc::new(Metrics::new()),
        )
    }

    #[tokio::test]
    async fn a_failed_restore_falls_back_to_a_cold_start_and_is_counted() {
        let fake = Arc::new(Fake::default());
        fake.fail_restore.store(true, Ordering::SeqCst);
        let pool = manager(fake.clone());
        pool.set_image("f", false);
        let s = pool.invoke("f", "/x").await.unwrap();
        assert_eq!(s.tier, StartTier::Cold);
        assert_eq!(s.response.body, "f-0 /x");
        let s = pool.invoke("f", "/").await.unwrap();
        assert_eq!((s.tier, s.instance.as_str()), (StartTier::Hot, "f-0"));
        let text = pool.metrics().encode();
        assert!(
            text.contains("rekindle_start_failures_total{function=\"f\",tier=\"restore_disk\",reason=\"invalid\"} 1"),
            "{text}"
        );
        assert!(matches!(
            pool.invoke("g", "/").await,
            Err(InvokeError::UnknownFunction(_))
        ));
        assert_eq!(pool.shutdown(Duration::from_secs(1)).await, 1);
        assert_eq!(fake.stopped.load(Ordering::SeqCst), 1);
        assert!(matches!(
            pool.invoke("f", "/").await,
            Err(InvokeError::ShuttingDown)
        ));
    }

    /// /metrics: the arrivals of the current window next to the Rekindle policy's
    /// forecast for it, and the memory budget with what the pool holds against it.
    #[tokio::test]
    async fn arrivals_forecast_and_budget_use_are_published() {
        let metrics = Arc::new(Metrics::new());
        // 20 policy seconds per real second: a window (one policy minute) is 3 s.
        let pool = PoolManager::new(
            Arc::new(Fake::default()),
            &[FunctionConfig::new("f", "img", 8080)],
            PoolOptions {
                time_scale: 20.0,
                memory_budget_mb: Some(1024.0),
                max_parallel_starts: 2,
                policy: crate::sim::RunOptions::new(1).policy(crate::policy::PolicyKind::Rekindle),
            },
            metrics.clone(),
        );
        for _ in 0..6 {
            pool.invoke("f", "/").await.unwrap();
        }
        pool.reconcile();
        let t = metrics.encode();
        for want in [
            "rekindle_observed_arrivals{function=\"f\"} 6\n",
            "rekindle_forecast_window_seconds 3.0\n",
            "rekindle_memory_budget_bytes 1073741824\n",
            // One instance of memory_mb 256; no image staged yet.
            "rekindle_pool_memory_bytes{function=\"f\"} 268435456\n",
        ] {
            assert!(t.contains(want), "{want} missing in:\n{t}");
        }
        // No interval has ended: nothing forecast yet.
        assert!(!t.contains("rekindle_forecast_arrivals{"), "{t}");

        // The window ends: the policy saw 6 arrivals in it (dense enough to be forecast
        // per minute) and forecasts the next one; the count starts again.
        tokio::time::sleep(Duration::from_millis(3100)).await;
        pool.reconcile();
        let p = metrics.pool.function("f").unwrap();
        assert_eq!(p.observed_arrivals, 0);
        let forecast = p.forecast_arrivals.expect("a forecast after the window");
        assert!(forecast > 0.0 && forecast <= 6.0, "forecast {forecast}");
        pool.invoke("f", "/").await.unwrap();
        pool.reconcile();
        let t = metrics.encode();
        assert!(
            t.contains("rekindle_observed_arrivals{function=\"f\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains(&format!(
                "rekindle_forecast_arrivals{{function=\"f\"}} {}",
                metrics
                    .pool
                    .function("f")
                    .unwrap()
                    .forecast_arrivals
                    .unwrap()
            )),
            "{t}"
        );
        pool.shutdown(Duration::from_secs(1)).await;
    }

    /// The admin API's operations: a function registered while running serves requests,
    /// is checkpointed on request and, removed, has its instances stopped.
    #[tokio::test]
    async fn functions_are_added_checkpointed_and_removed_while_running() {
        let fake = Arc::new(Fake::default());
        let pool = manager(fake.clone());
        let mut g = FunctionConfig::new("g", "img", 8080);
        g.store_as = Some("f".into());
        assert!(matches!(
            pool.add_function(g),
            Err(ManageError::ImageTaken { .. })
        ));
        assert!(matches!(
            pool.add_function(FunctionConfig::new("f", "img", 1)),
            Err(ManageError::Exists(_))
        ));
        pool.add_function(FunctionConfig::new("g", "img", 8080))
            .unwrap();
        let names: Vec<String> = pool.functions().into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["f", "g"]);
        assert!(matches!(
            pool.checkpoint("g", None, true).await,
            Err(ManageError::NoInstance(_))
        ));
        let s = pool.invoke("g", "/").await.unwrap();
        assert_eq!((s.tier, s.instance.as_str()), (StartTier::Cold, "g-0"));
        let recent = pool.recent_starts();
        assert_eq!(recent.len(), 1);
        assert_eq!(
            (recent[0].function.as_str(), recent[0].tier),
            ("g", StartTier::Cold)
        );
        let c = pool.checkpoint("g", None, true).await.unwrap();
        assert_eq!((c.instance.as_str(), c.image.as_str()), ("g-0", "g"));
        let snap = pool.snapshot();
        assert_eq!(
            (snap[1].function.as_str(), snap[1].image),
            ("g", ImageState::Disk)
        );
        assert_eq!(pool.instances().len(), 1);
        assert_eq!(
            pool.remove_function("g", Duration::from_secs(1))
                .await
                .unwrap(),
            1
        );
        assert_eq!(fake.stopped.load(Ordering::SeqCst), 1);
        assert_eq!(pool.snapshot().len(), 1);
        assert!(pool.instances().is_empty());
        assert!(matches!(
            pool.invoke("g", "/").await,
            Err(InvokeError::UnknownFunction(_))
        ));
        // Nothing starts for the removed function any more.
        assert!(pool.reconcile().iter().all(|a| a.function() == 0));
        // Registered again: a new function, with the requests it gets.
        pool.add_function(FunctionConfig::new("g", "img", 8080))
            .unwrap();
        assert_eq!(pool.invoke("g", "/").await.unwrap().tier, StartTier::Cold);
        assert_eq!(pool.shutdown(Duration::from_secs(1)).await, 1);
    }

    #[tokio::test]
    async fn the_first_cold_start_is_checkpointed_and_the_next_start_restores() {
        let fake = Arc::new(Fake::default());
        let pool = manager(fake.clone());
        let s = pool.invoke("f", "/").await.unwrap();
        assert_eq!(s.tier, StartTier::Cold);
        let actions = pool.reconcile();
        assert!(
            matches!(actions.as_slice(), [Action::Checkpoint { .. }]),
            "{actions:?}"
        );
        // The checkpoint runs in a task of its own; the instance is busy meanwhile.
        for _ in 0..100 {
            if pool.snapshot()[0].image != ImageState::None && pool.snapshot()[0].busy == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(pool.snapshot()[0].image, ImageState::Disk);
        // Two at once: one hot, one restored from disk.
        let (a, b) = tokio::join!(pool.invoke("f", "/"), pool.invoke("f", "/"));
        let mut tiers = [a.unwrap().tier, b.unwrap().tier];
        tiers.sort_by_key(|t| t.name());
        assert_eq!(tiers, [StartTier::Hot, StartTier::RestoreDisk]);
        assert_eq!(pool.shutdown(Duration::from_secs(1)).await, 2);
    }
}
