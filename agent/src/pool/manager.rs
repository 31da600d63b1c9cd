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
//!
//! Requests: [`super::admission`] decides under the lock, so an idle instance or the room
//! for a start goes to one request only. A queued request waits on a oneshot channel;
//! whatever frees an instance or room (a request's end, a stop, a failed start, any pool
//! action) hands it to the oldest waiter under the same lock. A waiter that gives up
//! (timeout, or its future dropped) leaves the queue under the lock, and gives back a
//! grant it was sent meanwhile: no request is served twice, no reservation is lost.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::Method;
use tokio::sync::{oneshot, Notify, Semaphore};

use super::admission::{self, Admission, Counts, Limits, Refusal, Room};
use super::pressure::{PressureGate, PressureThresholds};
use super::{
    charged_memory_mb, decide, hold_back, make_room, real_plan, without_fast_path, Action,
    FunctionView, ImageState, InstanceView, Loaded, PlanBounds, StartWhy,
};
use crate::config::FunctionConfig;
use crate::driver::{
    Cause, ForwardError, ForwardRequest, ForwardResponse, Found, FunctionSpec, Instance,
    InstanceDriver, Response, TaskState,
};
use crate::fast_path::FastPath;
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
    /// Node pressure (PSI, from the node collector) at which speculative work waits.
    pub pressure: PressureThresholds,
}

#[derive(Debug)]
struct Slot {
    inst: Instance,
    loaded: Loaded,
    busy: bool,
    /// Claimed by a stop (an eviction): its memory is released already as far as the
    /// plans and the budget are concerned, and whatever waits for the room waits for
    /// the stop itself.
    stopping: bool,
    idle_since: f64,
    prewarmed: bool,
}

#[derive(Debug)]
struct FnRt {
    cfg: FunctionConfig,
    spec: FunctionSpec,
    image: ImageState,
    image_busy: bool,
    /// An unstage is claimed: the staged copy counts as released (as a stopping slot)
    /// until it is done or, failed, until what was to use the room has given it back.
    unstaging: bool,
    /// A stage is claimed: the copy counts as held from the claim on, so no start takes
    /// the room it will use.
    staging: bool,
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
    /// What one instance is charged in the budget, MB ([`charged_memory_mb`]), and
    /// what the policy was last told.
    charged_mb: f64,
    /// The execution time the policy predicts, policy seconds.
    exec: Option<f64>,
}

impl FnRt {
    fn new(cfg: &FunctionConfig) -> Self {
        FnRt {
            cfg: cfg.clone(),
            spec: cfg.spec(),
            image: ImageState::None,
            image_busy: false,
            unstaging: false,
            staging: false,
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
            charged_mb: cfg.memory_mb as f64,
            exec: None,
        }
    }

    fn view(&self) -> FunctionView {
        FunctionView {
            name: self.cfg.name.clone(),
            memory_mb: self.charged_mb,
            image: if self.staging {
                ImageState::Staged
            } else if self.unstaging && self.image == ImageState::Staged {
                ImageState::Disk
            } else {
                self.image
            },
            image_busy: self.image_busy,
            instances: self
                .slots
                .iter()
                .filter(|s| !s.stopping)
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
    /// The requests waiting for an instance, per function index, oldest first.
    queues: HashMap<usize, VecDeque<Waiter>>,
    next_waiter: u64,
    /// Whether node pressure holds back speculative work.
    gate: PressureGate,
}

/// A queued request.
struct Waiter {
    id: u64,
    tx: oneshot::Sender<Grant>,
}

/// What a request is given: an instance (marked busy for it), the room to start one
/// (counted in `starting_hot` for it), or a refusal.
#[derive(Debug)]
enum Grant {
    Hot(Instance),
    Warm(Instance),
    /// A start, after these releases (claimed already) are done.
    Start(Vec<Action>),
    Refused(Refusal),
}

enum Step<'a> {
    Now(Grant),
    Wait(Ticket<'a>),
}

/// A request's place in its function's queue, until it has its grant or gives up.
struct Ticket<'a> {
    pool: &'a PoolManager,
    fi: usize,
    id: u64,
    /// `None` once the grant is taken.
    rx: Option<oneshot::Receiver<Grant>>,
}

impl Ticket<'_> {
    /// Leaves the queue (under the lock); `false` when the waiter was not in it any
    /// more: its grant was sent.
    fn leave(st: &mut State, fi: usize, id: u64) -> bool {
        let Some(q) = st.queues.get_mut(&fi) else {
            return false;
        };
        match q.iter().position(|w| w.id == id) {
            Some(k) => {
                q.remove(k);
                true
            }
            None => false,
        }
    }

    /// The grant, or a refusal (`queue_timeout`) at `until`.
    async fn wait(mut self, until: Instant) -> Grant {
        let rx = self.rx.as_mut().expect("a fresh ticket");
        match tokio::time::timeout_at(until.into(), rx).await {
            Ok(Ok(g)) => {
                self.rx = None;
                g
            }
            // Dropped unsent: the queue was emptied by the shutdown.
            Ok(Err(_)) => {
                self.rx = None;
                Grant::Refused(Refusal::ShuttingDown)
            }
            Err(_) => {
                let mut st = self.pool.s.state.lock().unwrap();
                let mut rx = self.rx.take().expect("a fresh ticket");
                if Self::leave(&mut st, self.fi, self.id) {
                    Grant::Refused(Refusal::QueueTimeout)
                } else {
                    // Sent just now, under the lock we hold: take it rather than lose it.
                    rx.try_recv()
                        .unwrap_or(Grant::Refused(Refusal::QueueTimeout))
                }
            }
        }
    }
}

impl Drop for Ticket<'_> {
    /// The request gave up before its grant (its future dropped): out of the queue, and
    /// a grant sent meanwhile given back.
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let evict = {
            let mut st = self.pool.s.state.lock().unwrap();
            let mut evict = Vec::new();
            if !Self::leave(&mut st, self.fi, self.id) {
                if let Ok(g) = rx.try_recv() {
                    evict = PoolManager::give_back(&mut st, self.fi, g);
                }
            }
            evict.extend(self.pool.pump_locked(&mut st, self.fi));
            evict
        };
        self.pool.spawn_actions(evict);
    }
}

/// An instance a request got.
struct Got {
    inst: Instance,
    tier: StartTier,
    /// From the request's arrival to the instance ready, seconds.
    latency: f64,
    /// How long the start made for it took (restore or cold start), if one was.
    start: Option<Duration>,
    /// How long it waited in the queue, if it did.
    queued: Option<Duration>,
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
    pressure: PressureThresholds,
    closing: AtomicBool,
    ops: AtomicUsize,
    ops_done: Notify,
    made: Mutex<Vec<String>>,
    /// Whether checkpoints and restores work ([`crate::fast_path`]); starts are cold and
    /// no checkpoint or stage is planned while not.
    fast_path: Mutex<FastPath>,
    /// Asks [`crate::fast_path::watch`] to read the store's images again now (after an
    /// image operation failed: the agent's view may be stale).
    resync: Notify,
    /// Image operations finished so far: a list of the store's images taken before one
    /// finished is stale ([`PoolManager::sync_images`]).
    image_ops: AtomicUsize,
    /// The last starts served to requests, newest last (the admin API's status).
    recent: Mutex<VecDeque<RecentStart>>,
}

/// What [`PoolManager::adopt`] did with the instances an earlier run left.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Adopted {
    /// Joined the pools: instance id and tier.
    pub adopted: Vec<(String, Loaded)>,
    /// Stopped and removed: instance id and why.
    pub removed: Vec<(String, String)>,
}

/// Bound on the ready check of an instance found running at start-up.
const ADOPT_READY_TIMEOUT: Duration = Duration::from_secs(3);

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
    #[error(
        "{function:?}'s image {image:?} exists already: rekindle checkpoint --replace replaces it"
    )]
    ImageExists { function: String, image: String },
    #[error("checkpointing {instance:?} of {function:?} failed: {cause}")]
    Checkpoint {
        function: String,
        instance: String,
        cause: String,
    },
    #[error("the agent is shutting down")]
    ShuttingDown,
    #[error("no checkpoint: the fast path is unavailable: {0}")]
    NoFastPath(String),
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

/// A `GET` served by [`PoolManager::invoke`].
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    pub response: Response,
    pub tier: StartTier,
    pub instance: String,
}

/// A request served by [`PoolManager::forward`] (the gateway).
#[derive(Debug, Clone)]
pub struct Forwarded {
    /// The instance's whole answer.
    pub response: ForwardResponse,
    pub tier: StartTier,
    pub instance: String,
    /// How long the start made for this request took (restore or cold start, from the
    /// admission that reserved it to the instance answering its ready path, waiting for
    /// a start slot included); `None` when an instance already loaded served it.
    pub start: Option<Duration>,
    /// How long it waited in the function's queue, if it did.
    pub queued: Option<Duration>,
}

/// A function's settings the gateway applies itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayLimits {
    pub invoke_path: String,
    pub max_body_bytes: usize,
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
    /// Every instance the pool allows is busy and the queue is full, or the request
    /// waited as long as it may.
    #[error("{function:?}: {reason}")]
    Refused { function: String, reason: Refusal },
    #[error("the agent is shutting down")]
    ShuttingDown,
}

impl InvokeError {
    /// Why the request was refused without being served (the gateway's 503), if it was.
    pub fn refusal(&self) -> Option<Refusal> {
        match self {
            InvokeError::Budget(_) => Some(Refusal::Budget),
            InvokeError::Refused { reason, .. } => Some(*reason),
            InvokeError::ShuttingDown => Some(Refusal::ShuttingDown),
            _ => None,
        }
    }
}

/// The pool manager. Cheap to clone (shared state).
#[derive(Clone)]
pub struct PoolManager {
    s: Arc<Shared>,
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
            let mut rt = FnRt::new(cfg);
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
                    queues: HashMap::new(),
                    next_waiter: 0,
                    gate: PressureGate::default(),
                }),
                metrics,
                starts: Semaphore::new(opts.max_parallel_starts.max(1)),
                epoch: Instant::now(),
                time_scale: opts.time_scale,
                budget_mb: opts.memory_budget_mb,
                pressure: opts.pressure,
                closing: AtomicBool::new(false),
                ops: AtomicUsize::new(0),
                ops_done: Notify::new(),
                made: Mutex::new(Vec::new()),
                fast_path: Mutex::new(FastPath {
                    available: true,
                    criu_version: None,
                    reason: None,
                }),
                resync: Notify::new(),
                image_ops: AtomicUsize::new(0),
                recent: Mutex::new(VecDeque::with_capacity(RECENT_STARTS)),
            }),
        }
    }

    /// Marks functions whose image already is in the store (e.g. after a restart of
    /// the agent), so their next start is a restore. `staged`: decompressed in memory.
    pub fn set_image(&self, function: &str, staged: bool) {
        let mut st = self.s.state.lock().unwrap();
        self.s.image_ops.fetch_add(1, Ordering::SeqCst);
        if let Some(&i) = st.by_name.get(function) {
            st.fns[i].image = if staged {
                ImageState::Staged
            } else {
                ImageState::Disk
            };
        }
    }

    /// What the fast-path probe found ([`crate::fast_path::watch`]).
    pub fn set_fast_path(&self, fp: FastPath) {
        *self.s.fast_path.lock().unwrap() = fp;
    }

    /// The functions' images as rekindle-restored holds them (name → staged), which wins
    /// over the agent's view: an image removed by an operator or a GC, or unstaged by a
    /// restart of the daemon, is no longer restored from (and the next cold start is
    /// checkpointed again). Functions with an image operation in flight are left alone.
    /// `ops_before`: [`PoolManager::image_ops`] before the list was asked for; if an
    /// image operation finished since, the list may predate it and is not applied.
    pub fn sync_images(&self, images: &HashMap<String, bool>, ops_before: usize) {
        let mut st = self.s.state.lock().unwrap();
        if self.s.image_ops.load(Ordering::SeqCst) != ops_before {
            return;
        }
        for f in st.fns.iter_mut().filter(|f| !f.image_busy) {
            let now = match images.get(&f.spec.store_as) {
                None => ImageState::None,
                Some(true) => ImageState::Staged,
                Some(false) => ImageState::Disk,
            };
            if now != f.image {
                tracing::info!(
                    function = %f.cfg.name,
                    image = %f.spec.store_as,
                    was = ?f.image,
                    now = ?now,
                    "image state taken from rekindle-restored"
                );
                f.image = now;
            }
        }
    }

    /// How many image operations (checkpoint, stage, unstage) have finished.
    pub fn image_ops(&self) -> usize {
        self.s.image_ops.load(Ordering::SeqCst)
    }

    /// Resolves when an image operation failed since the last call (see
    /// [`PoolManager::sync_images`]).
    pub async fn resync_wanted(&self) {
        self.s.resync.notified().await
    }

    pub fn fast_path(&self) -> FastPath {
        self.s.fast_path.lock().unwrap().clone()
    }

    fn fast_path_available(&self) -> bool {
        self.s.fast_path.lock().unwrap().available
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.s.metrics
    }

    /// Takes over what an earlier run of the agent left in containerd (it was killed,
    /// or restarted while its instances ran), before the first reconcile so nothing is
    /// started twice: a running instance of a registered function that answers its
    /// ready path joins the pool hot, a frozen one warm; the rest (a function no longer
    /// registered or stored under another name, a task stopped, never started or gone,
    /// an instance not answering, one past `max_instances`) is stopped with everything it
    /// holds. Each decision is logged with its reason and counted
    /// (`rekindle_pool_actions_total{action="adopt"|"discard"}`).
    pub async fn adopt(&self, found: Vec<Found>) -> Adopted {
        let mut out = Adopted::default();
        for Found { instance, state } in found {
            let id = instance.id.clone();
            let function = instance.function.clone();
            let keep = self.adoptable(&instance, state).await;
            let kept = match keep {
                Ok(loaded) => {
                    let now = self.now();
                    let mut st = self.s.state.lock().unwrap();
                    let fi = st.by_name.get(&function).copied();
                    match fi {
                        Some(fi)
                            if (st.fns[fi].slots.len() as u32) < st.fns[fi].cfg.max_instances =>
                        {
                            st.fns[fi].slots.push(Slot {
                                inst: instance.clone(),
                                loaded,
                                busy: false,
                                stopping: false,
                                idle_since: now,
                                prewarmed: false,
                            });
                            Ok(loaded)
                        }
                        _ => Err("past the function's max_instances".to_string()),
                    }
                }
                Err(why) => Err(why),
            };
            match kept {
                Ok(loaded) => {
                    tracing::info!(
                        %function, instance = %id, pid = instance.pid, tier = ?loaded,
                        "adopted an instance of an earlier run"
                    );
                    self.s.metrics.action(&function, "adopt", true);
                    self.s.made.lock().unwrap().push(id.clone());
                    out.adopted.push((id, loaded));
                }
                Err(why) => {
                    tracing::info!(
                        %function, instance = %id, state = ?state,
                        "removing an instance of an earlier run: {why}"
                    );
                    let stopped = self.stop_instance(&function, instance).await;
                    self.s.metrics.action(&function, "discard", stopped);
                    out.removed.push((id, why));
                }
            }
        }
        let st = self.s.state.lock().unwrap();
        self.publish(&st);
        out
    }

    /// Whether an instance found in containerd can serve as it is, and in which tier.
    async fn adoptable(&self, inst: &Instance, state: Option<TaskState>) -> Result<Loaded, String> {
        let (ready_path, store_as) = {
            let st = self.s.state.lock().unwrap();
            let Some(&fi) = st.by_name.get(&inst.function) else {
                return Err("its function is not registered".into());
            };
            let f = &st.fns[fi];
            (f.spec.ready_path.clone(), f.spec.store_as.clone())
        };
        if inst.store_as != store_as {
            return Err(format!(
                "it stores its checkpoints as {:?}, the function now as {store_as:?}",
                inst.store_as
            ));
        }
        match state {
            Some(TaskState::Running) => {
                match self
                    .s
                    .driver
                    .invoke(inst, &ready_path, ADOPT_READY_TIMEOUT)
                    .await
                {
                    Ok(r) if r.status == 200 => Ok(Loaded::Hot),
                    Ok(r) => Err(format!("GET {ready_path} answered {}", r.status)),
                    Err(e) => Err(format!("GET {ready_path} failed: {e}")),
                }
            }
            // Frozen by the earlier run (warm), or caught mid-freeze: thawed on demand.
            Some(TaskState::Paused | TaskState::Pausing) => Ok(Loaded::Warm),
            Some(s) => Err(format!("its task is {s:?}")),
            None => Err("it has no task".into()),
        }
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
            // Memory per instance as measured (the node collector's p90 per instance):
            // charged from now on when it exceeds memory_mb, and the policy told so it
            // fits its targets to the budget with it too.
            for (i, f) in st.fns.iter_mut().enumerate() {
                let measured = self
                    .s
                    .metrics
                    .node
                    .function(&f.cfg.name)
                    .and_then(|n| n.instance_memory_p90_bytes)
                    .map(|b| b as f64 / MIB);
                let charged = charged_memory_mb(f.cfg.memory_mb as f64, measured);
                if (charged - f.charged_mb).abs() >= 1.0 {
                    tracing::info!(
                        function = %f.cfg.name,
                        memory_mb = f.cfg.memory_mb,
                        charged_mb = charged,
                        "memory per instance charged as measured"
                    );
                    f.charged_mb = charged;
                    policy.register(
                        i as FunctionId,
                        &FunctionInfo {
                            app: i as FunctionId,
                            memory_mb: charged,
                            trigger: Some(Trigger::Http),
                        },
                    );
                }
            }
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
                f.exec = policy.exec_estimate(i as FunctionId);
            }
        }
        let views: Vec<FunctionView> = st.fns.iter().map(FnRt::view).collect();
        let mut actions = decide(now, &views, self.s.budget_mb);
        let was_held = st.gate.held();
        let held = st
            .gate
            .update(self.s.metrics.node.pressure(), &self.s.pressure);
        if held != was_held {
            tracing::info!(
                held,
                pressure = ?self.s.metrics.node.pressure(),
                "node pressure: speculative pool work {}",
                if held { "held back" } else { "resumed" }
            );
        }
        if held {
            let n = hold_back(&mut actions);
            if n > 0 {
                tracing::debug!(actions = n, "held back under node pressure");
            }
        }
        self.s.metrics.pool.set_hold_back(held);
        if !self.fast_path_available() {
            let n = without_fast_path(&mut actions);
            if n > 0 {
                tracing::debug!(actions = n, "checkpoints and stages dropped: no fast path");
            }
        }
        for a in &actions {
            self.claim(&mut st, a);
        }
        self.publish(&st);
        drop(st);
        self.spawn_actions(actions.clone());
        // A safety net: anything freed that no event handed to the queues.
        self.pump_all();
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
            Action::Stop { instance, .. } => {
                // Reserved for the stop: no request takes it meanwhile.
                if let Some(s) = f.slot(instance) {
                    s.busy = true;
                    s.stopping = true;
                }
            }
            Action::Start { into, why, .. } => {
                match into {
                    Loaded::Hot => f.starting_hot += 1,
                    Loaded::Warm => f.starting_warm += 1,
                }
                if *why == StartWhy::PreWarm {
                    f.pending_load = None;
                }
            }
            Action::Stage { .. } => {
                f.image_busy = true;
                f.staging = true;
            }
            Action::Unstage { .. } => {
                f.image_busy = true;
                f.unstaging = true;
            }
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
                    // Policy seconds to real ones.
                    exec_secs: f.exec.map(|e| e / self.s.time_scale),
                },
            );
        }
    }

    /// Carries out one action; whether it did what it set out to.
    async fn act(&self, a: Action) -> bool {
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
                    Some(i) => d
                        .checkpoint(i, &store_as, false)
                        .await
                        .map_err(|e| e.to_string()),
                    None => Err("instance gone".into()),
                };
                {
                    let mut st = self.s.state.lock().unwrap();
                    self.s.image_ops.fetch_add(1, Ordering::SeqCst);
                    let f = &mut st.fns[fi];
                    f.image_busy = false;
                    if r.is_ok() {
                        f.image = ImageState::Disk;
                    }
                    if let Some(s) = f.slot(instance) {
                        s.busy = false;
                    }
                }
                if r.is_err() {
                    // E.g. the image exists already (stored behind the agent's back).
                    self.s.resync.notify_one();
                }
                log_result(&name, &a, &r);
                r.is_ok()
            }
            Action::Freeze { instance, .. } | Action::Thaw { instance, .. } => {
                let freeze = matches!(a, Action::Freeze { .. });
                let Some(inst) = self.instance(fi, instance) else {
                    return false;
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
                    // Claimed (busy) for the stop: no request has it.
                    f.take_slot(instance)
                };
                match slot {
                    Some(s) => self.stop_instance(&name, s.inst).await,
                    None => return false,
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
                                stopping: false,
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
                {
                    let mut st = self.s.state.lock().unwrap();
                    self.s.image_ops.fetch_add(1, Ordering::SeqCst);
                    let f = &mut st.fns[fi];
                    f.staging = false;
                    if r.is_ok() || stage {
                        f.image_busy = false;
                        f.unstaging = false;
                    }
                    // A failed unstage stays claimed (still counted as released, no
                    // other image operation) until the caller has given back what was
                    // to use the room: see settle_releases.
                    if r.is_ok() {
                        f.image = if stage {
                            ImageState::Staged
                        } else {
                            ImageState::Disk
                        };
                    }
                }
                if r.is_err() {
                    // Removed from the store behind the agent's back, or the daemon
                    // restarted: what rekindle-restored holds decides.
                    self.s.resync.notify_one();
                }
                log_result(&name, &a, &r);
                r.is_ok()
            }
        };
        self.s.metrics.action(&name, a.name(), ok);
        // Whatever it did may free an instance or room for a queued request.
        self.pump_all();
        ok
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
            ImageState::Disk | ImageState::Staged if self.fast_path_available() => {
                let r = d.restore(spec, &spec.store_as).await;
                if r.is_err() {
                    self.s.resync.notify_one();
                }
                r
            }
            _ => d.cold_start(spec).await,
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

    /// Serves one request through the gateway: an instance admitted by
    /// [`super::admission`] (an idle hot one, a warm one thawed, a new one restored from
    /// the staged image or from disk or cold-started, or the next one freed while the
    /// request waits in the function's queue), `req` forwarded to it, its whole answer.
    /// A failure before the request reached an instance, or on a method safe to repeat
    /// (RFC 9110 §9.2.2), falls back to another instance; every failure is counted.
    pub async fn forward(
        &self,
        function: &str,
        req: ForwardRequest,
    ) -> Result<Forwarded, InvokeError> {
        let _guard = OpGuard::new(&self.s);
        let arrival = Instant::now();
        let now = self.now();
        let (fi, timeout, max_response) = {
            let mut st = self.s.state.lock().unwrap();
            let Some(&fi) = st.by_name.get(function) else {
                return Err(InvokeError::UnknownFunction(function.to_string()));
            };
            if self.s.closing.load(Ordering::SeqCst) {
                self.s
                    .metrics
                    .refused(function, Refusal::ShuttingDown.label());
                return Err(InvokeError::ShuttingDown);
            }
            let f = &mut st.fns[fi];
            f.last_invoked = Some(now);
            f.window_arrivals += 1;
            let t = Duration::from_secs_f64(f.cfg.invoke_timeout_secs);
            (fi, t, f.cfg.max_response_bytes)
        };
        self.s
            .policy
            .lock()
            .unwrap()
            .on_arrival(fi as FunctionId, self.policy_time(now));
        let deadline = arrival + timeout;
        let repeatable = matches!(
            req.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
        let mut last = String::from("no instance");
        let mut queued: Option<Duration> = None;
        let result = loop {
            if Instant::now() >= deadline {
                break Err(InvokeError::Failed {
                    function: function.into(),
                    last: format!("{last} (gave up after {timeout:?})"),
                });
            }
            let got = match self.acquire(fi, function, deadline).await {
                Ok(g) => g,
                Err(e) => break Err(e),
            };
            if let Some(q) = got.queued {
                queued = Some(queued.unwrap_or_default() + q);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let began = Instant::now();
            match self
                .s
                .driver
                .forward(&got.inst, req.clone(), left, max_response)
                .await
            {
                Ok(response) => {
                    self.s.metrics.start(function, got.tier, got.latency);
                    self.note_start(function, got.tier, got.latency);
                    self.release(fi, &got.inst.id, began.elapsed().as_secs_f64());
                    break Ok(Forwarded {
                        response,
                        tier: got.tier,
                        instance: got.inst.id,
                        start: got.start,
                        queued,
                    });
                }
                Err(ForwardError::TooLarge { limit, .. }) => {
                    // The instance answered: it is fine and serves the next request.
                    self.s.metrics.start(function, got.tier, got.latency);
                    self.release(fi, &got.inst.id, began.elapsed().as_secs_f64());
                    break Err(InvokeError::Failed {
                        function: function.into(),
                        last: format!("its answer exceeds max_response_bytes ({limit})"),
                    });
                }
                Err(e) => {
                    let sent = !matches!(e, ForwardError::NotSent(_));
                    self.s.metrics.failure(function, got.tier, "invoke");
                    last = e.to_string();
                    tracing::warn!(function, tier = got.tier.name(), sent, error = %e, "invoke failed");
                    // In doubt about the instance: it goes, and its room is for the next.
                    let slot = self.s.state.lock().unwrap().fns[fi].take_slot(&got.inst.id);
                    self.pump(fi);
                    if let Some(s) = slot {
                        self.stop_in_background(function, s.inst);
                    }
                    if sent && !repeatable {
                        // It may have run: not again.
                        break Err(InvokeError::Failed {
                            function: function.into(),
                            last,
                        });
                    }
                }
            }
        };
        if let Err(e) = &result {
            if let Some(r) = e.refusal() {
                self.s.metrics.refused(function, r.label());
            }
            // The request ended without an answer; the policy still sees its end, but
            // no execution time.
            self.s
                .policy
                .lock()
                .unwrap()
                .on_abandon(fi as FunctionId, self.policy_time(self.now()));
        }
        result
    }

    /// What the gateway needs of a function before it reads a request's body: its
    /// handler path and body limit. `None`: no such function.
    pub fn gateway_limits(&self, function: &str) -> Option<GatewayLimits> {
        let st = self.s.state.lock().unwrap();
        let f = &st.fns[*st.by_name.get(function)?];
        Some(GatewayLimits {
            invoke_path: f.cfg.invoke_path.clone(),
            max_body_bytes: f.cfg.max_body_bytes,
        })
    }

    /// `GET path` through [`Self::forward`] (no headers, no body): the status and the
    /// body as text.
    pub async fn invoke(&self, function: &str, path: &str) -> Result<Served, InvokeError> {
        let f = self
            .forward(
                function,
                ForwardRequest {
                    method: Method::GET,
                    path: path.to_string(),
                    headers: hyper::HeaderMap::new(),
                    body: hyper::body::Bytes::new(),
                },
            )
            .await?;
        Ok(Served {
            response: Response {
                status: f.response.status.as_u16(),
                body: String::from_utf8_lossy(&f.response.body).into_owned(),
            },
            tier: f.tier,
            instance: f.instance,
        })
    }

    fn stop_in_background(&self, function: &str, inst: Instance) {
        let me = self.clone();
        let guard = OpGuard::new(&self.s);
        let function = function.to_string();
        tokio::spawn(async move {
            me.stop_instance(&function, inst).await;
            drop(guard);
        });
    }

    /// The request's instance is free again: to the oldest queued request, if any.
    fn release(&self, fi: usize, id: &str, exec_secs: f64) {
        let now = self.now();
        // The policy hears of the end first, and the pre-warm below follows the plan as of
        // this end: the last reconcile's plan may predate the idle time this request's
        // arrival recorded, and a pre-warm scheduled from it was lost when that plan had
        // none. (The policy is locked alone here; reconcile locks state, then policy.)
        let plan = {
            let mut policy = self.s.policy.lock().unwrap();
            let pnow = self.policy_time(now);
            policy.on_end(fi as FunctionId, pnow, exec_secs * self.s.time_scale);
            policy.plan(fi as FunctionId, pnow)
        };
        let mut st = self.s.state.lock().unwrap();
        let f = &mut st.fns[fi];
        f.plan = real_plan(&plan, self.s.time_scale, &f.bounds());
        if let Some(s) = f.slot(id) {
            s.busy = false;
            s.idle_since = now;
            s.prewarmed = false;
        }
        f.last_end = Some(now);
        if f.plan.pre_warm > 0.0 {
            f.pending_load = Some(now + f.plan.pre_warm);
        }
        let evict = self.pump_locked(&mut st, fi);
        drop(st);
        self.spawn_actions(evict);
    }

    /// The function's pool and queue for [`admission`], and its limits.
    fn counts(st: &State, fi: usize) -> (Counts, Limits) {
        let f = &st.fns[fi];
        let idle = |l: Loaded| f.slots.iter().filter(|s| !s.busy && s.loaded == l).count() as u32;
        (
            Counts {
                idle_hot: idle(Loaded::Hot),
                idle_warm: idle(Loaded::Warm),
                loaded: f.slots.len() as u32,
                starting: f.starting_hot + f.starting_warm,
                queued: st.queues.get(&fi).map_or(0, |q| q.len() as u32),
            },
            Limits {
                max_instances: f.cfg.max_instances,
                max_queue: f.cfg.max_queue,
            },
        )
    }

    /// Whether the memory budget has room for one more instance of the function, and
    /// what to release for it (into `evict`).
    fn room(&self, st: &State, fi: usize, evict: &mut Vec<Action>) -> Room {
        let Some(budget) = self.s.budget_mb else {
            return Room::Fits;
        };
        let views: Vec<FunctionView> = st.fns.iter().map(FnRt::view).collect();
        if make_room(&views, budget, st.fns[fi].charged_mb, evict) {
            return Room::Fits;
        }
        evict.clear();
        let in_flight = views
            .iter()
            .any(|v| v.starting_hot + v.starting_warm > 0 || v.instances.iter().any(|i| i.busy));
        if in_flight {
            Room::Later
        } else {
            Room::Never
        }
    }

    /// Carries out a serve or start admission under the lock: the instance marked busy
    /// (so nobody else gets it), or the start counted (so nobody else takes its room)
    /// and the releases it needs claimed.
    fn reserve(&self, st: &mut State, fi: usize, a: Admission, evict: &[Action]) -> Grant {
        match a {
            Admission::Hot | Admission::Warm => {
                let want = if a == Admission::Hot {
                    Loaded::Hot
                } else {
                    Loaded::Warm
                };
                let f = &mut st.fns[fi];
                let n = f.slots.len();
                let start = if n > 0 { f.rr % n } else { 0 };
                // Round robin over the idle instances of the tier.
                for k in 0..n {
                    let j = (start + k) % n;
                    let s = &mut f.slots[j];
                    if !s.busy && s.loaded == want {
                        s.busy = true;
                        f.rr = j + 1;
                        let inst = s.inst.clone();
                        return if want == Loaded::Hot {
                            Grant::Hot(inst)
                        } else {
                            Grant::Warm(inst)
                        };
                    }
                }
                unreachable!("admission counted an idle {want:?} instance")
            }
            Admission::Start => {
                for a in evict {
                    self.claim(st, a);
                }
                st.fns[fi].starting_hot += 1;
                Grant::Start(evict.to_vec())
            }
            Admission::Refuse(r) => Grant::Refused(r),
            Admission::Queue | Admission::Wait => unreachable!("not a reservation: {a:?}"),
        }
    }

    /// Undoes a grant nobody took (its request gave up).
    /// Returns the releases the grant carried (claimed: they are carried out anyway).
    fn give_back(st: &mut State, fi: usize, g: Grant) -> Vec<Action> {
        let f = &mut st.fns[fi];
        match g {
            Grant::Hot(i) | Grant::Warm(i) => {
                if let Some(s) = f.slot(&i.id) {
                    s.busy = false;
                }
                Vec::new()
            }
            Grant::Start(evict) => {
                f.starting_hot -= 1;
                evict
            }
            Grant::Refused(_) => Vec::new(),
        }
    }

    /// Hands what has freed up to the function's queue, oldest request first, under the
    /// lock. Returns the releases to spawn (after the lock).
    fn pump_locked(&self, st: &mut State, fi: usize) -> Vec<Action> {
        let mut spawn = Vec::new();
        while let Some(q) = st.queues.get_mut(&fi) {
            // Requests that gave up (their future dropped) leave no reservation behind.
            while q.front().is_some_and(|w| w.tx.is_closed()) {
                q.pop_front();
            }
            if q.is_empty() {
                break;
            }
            let (c, l) = Self::counts(st, fi);
            let mut evict = Vec::new();
            let a = admission::dispatch(&c, &l, || self.room(st, fi, &mut evict));
            if a == Admission::Wait {
                break;
            }
            let grant = self.reserve(st, fi, a, &evict);
            let w = st
                .queues
                .get_mut(&fi)
                .and_then(VecDeque::pop_front)
                .expect("a waiter");
            // The releases go with the grant: its request carries them out before it
            // starts (or, given back, they are spawned here).
            if let Err(g) = w.tx.send(grant) {
                spawn.extend(Self::give_back(st, fi, g));
            }
            let released = !evict.is_empty();
            // The releases take effect later: make_room would count them again.
            if released {
                break;
            }
        }
        spawn
    }

    /// [`Self::pump_locked`] for one function.
    fn pump(&self, fi: usize) {
        let evict = {
            let mut st = self.s.state.lock().unwrap();
            self.pump_locked(&mut st, fi)
        };
        self.spawn_actions(evict);
    }

    /// [`Self::pump_locked`] for every function with a queue: room freed by one
    /// function's instances may be another's.
    fn pump_all(&self) {
        let evict = {
            let mut st = self.s.state.lock().unwrap();
            let queued: Vec<usize> = st
                .queues
                .iter()
                .filter(|(_, q)| !q.is_empty())
                .map(|(fi, _)| *fi)
                .collect();
            let mut all = Vec::new();
            for fi in queued {
                all.extend(self.pump_locked(&mut st, fi));
            }
            all
        };
        self.spawn_actions(evict);
    }

    /// Spawns actions already claimed.
    /// Runs the actions concurrently, except that starts (and the rest) wait until the
    /// releases of the same batch (stops, unstages) are done: the memory budget holds
    /// for what the node really uses, not only for what the pools count.
    fn spawn_actions(&self, actions: Vec<Action>) {
        if actions.is_empty() {
            return;
        }
        let me = self.clone();
        let guard = OpGuard::new(&self.s);
        tokio::spawn(async move {
            let (releases, rest): (Vec<_>, Vec<_>) = actions
                .into_iter()
                .partition(|a| matches!(a, Action::Stop { .. } | Action::Unstage { .. }));
            let released = me.run_all(releases.clone()).await;
            let rest = if released {
                rest
            } else {
                // A release failed (an unstage refused while a restore holds the
                // image, a stop that failed): the memory the starts and stages were
                // to use may still be held. They are dropped; the next reconcile
                // plans again from what is there.
                let (dropped, kept): (Vec<_>, Vec<_>) = rest
                    .into_iter()
                    .partition(|a| matches!(a, Action::Start { .. } | Action::Stage { .. }));
                if !dropped.is_empty() {
                    tracing::debug!(actions = dropped.len(), "starts dropped: a release failed");
                }
                let mut st = me.s.state.lock().unwrap();
                for a in &dropped {
                    Self::unclaim(&mut st, a);
                }
                Self::settle_releases(&mut st, &releases);
                kept
            };
            me.run_all(rest).await;
            me.pump_all();
            drop(guard);
        });
    }

    /// Undoes [`Self::claim`] of a start or a stage that will not run.
    fn unclaim(st: &mut State, a: &Action) {
        let f = &mut st.fns[a.function()];
        match a {
            Action::Start { into, .. } => match into {
                Loaded::Hot => f.starting_hot -= 1,
                Loaded::Warm => f.starting_warm -= 1,
            },
            Action::Stage { .. } => {
                f.image_busy = false;
                f.staging = false;
            }
            _ => {}
        }
    }

    /// After a batch of releases: a failed unstage is no longer counted as released
    /// (its image is held after all). Call under the same lock as the give-back of what
    /// was to use its room, so the count never shows both.
    fn settle_releases(st: &mut State, releases: &[Action]) {
        for a in releases {
            if let Action::Unstage { function } = a {
                let f = &mut st.fns[*function];
                if f.unstaging {
                    f.unstaging = false;
                    f.image_busy = false;
                }
            }
        }
    }

    /// Runs the actions concurrently; whether all of them succeeded.
    async fn run_all(&self, actions: Vec<Action>) -> bool {
        let tasks: Vec<_> = actions
            .into_iter()
            .map(|a| {
                let me = self.clone();
                tokio::spawn(async move { me.act(a).await })
            })
            .collect();
        let mut ok = true;
        for t in tasks {
            ok &= t.await.unwrap_or(false);
        }
        ok
    }

    /// An instance for a request: served, started or waited for, as admission says.
    async fn acquire(
        &self,
        fi: usize,
        function: &str,
        deadline: Instant,
    ) -> Result<Got, InvokeError> {
        let arrival = Instant::now();
        loop {
            let step = {
                let mut st = self.s.state.lock().unwrap();
                let (c, l) = Self::counts(&st, fi);
                let mut evict = Vec::new();
                let a = admission::admit(&c, &l, || self.room(&st, fi, &mut evict));
                if a == Admission::Queue {
                    let (tx, rx) = oneshot::channel();
                    st.next_waiter += 1;
                    let id = st.next_waiter;
                    st.queues
                        .entry(fi)
                        .or_default()
                        .push_back(Waiter { id, tx });
                    Step::Wait(Ticket {
                        pool: self,
                        fi,
                        id,
                        rx: Some(rx),
                    })
                } else {
                    Step::Now(self.reserve(&mut st, fi, a, &evict))
                }
            };
            let mut queued = None;
            let grant = match step {
                Step::Now(g) => g,
                Step::Wait(ticket) => {
                    // Cheap, and covers anything freed between the count and the queue.
                    self.pump(fi);
                    let max_wait = {
                        let st = self.s.state.lock().unwrap();
                        Duration::from_secs_f64(st.fns[fi].cfg.max_queue_wait_secs)
                    };
                    let began = Instant::now();
                    let g = ticket.wait(deadline.min(began + max_wait)).await;
                    queued = Some(began.elapsed());
                    g
                }
            };
            match grant {
                Grant::Hot(inst) => {
                    return Ok(Got {
                        inst,
                        tier: StartTier::Hot,
                        latency: secs(arrival),
                        start: None,
                        queued,
                    })
                }
                Grant::Warm(inst) => match self.s.driver.thaw(&inst).await {
                    Ok(()) => {
                        let mut st = self.s.state.lock().unwrap();
                        if let Some(s) = st.fns[fi].slot(&inst.id) {
                            s.loaded = Loaded::Hot;
                        }
                        return Ok(Got {
                            inst,
                            tier: StartTier::Warm,
                            latency: secs(arrival),
                            start: None,
                            queued,
                        });
                    }
                    Err(e) => {
                        self.s
                            .metrics
                            .failure(function, StartTier::Warm, metrics::reason(&e));
                        tracing::warn!(function, error = %e, "thaw failed; falling back");
                        let slot = self.s.state.lock().unwrap().fns[fi].take_slot(&inst.id);
                        self.pump(fi);
                        if let Some(s) = slot {
                            self.stop_instance(function, s.inst).await;
                        }
                    }
                },
                Grant::Start(evict) => {
                    // The instances and images released to make room go first: the
                    // start waits for them (its memory is not there twice).
                    if !evict.is_empty() {
                        let _guard = OpGuard::new(&self.s);
                        if !self.run_all(evict.clone()).await {
                            // The room is not there after all: back to admission.
                            tracing::debug!(function, "a release for a request's start failed");
                            {
                                let mut st = self.s.state.lock().unwrap();
                                st.fns[fi].starting_hot -= 1;
                                Self::settle_releases(&mut st, &evict);
                            }
                            self.pump_all();
                            if Instant::now() >= deadline {
                                return Err(InvokeError::Budget(function.into()));
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    }
                    let began = Instant::now();
                    let (inst, tier) = self.start_reserved(fi, function).await?;
                    return Ok(Got {
                        inst,
                        tier,
                        latency: secs(arrival),
                        start: Some(began.elapsed()),
                        queued,
                    });
                }
                Grant::Refused(Refusal::Budget) => {
                    return Err(InvokeError::Budget(function.into()))
                }
                Grant::Refused(Refusal::ShuttingDown) => return Err(InvokeError::ShuttingDown),
                Grant::Refused(reason) => {
                    return Err(InvokeError::Refused {
                        function: function.into(),
                        reason,
                    })
                }
            }
        }
    }

    /// The start a request was admitted to (counted in `starting_hot` already): its
    /// instance, busy with the request, or why none.
    async fn start_reserved(
        &self,
        fi: usize,
        function: &str,
    ) -> Result<(Instance, StartTier), InvokeError> {
        let (spec, image) = {
            let st = self.s.state.lock().unwrap();
            (st.fns[fi].spec.clone(), st.fns[fi].image)
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
                    stopping: false,
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
            Ok(r) => Ok(r),
            Err(last) => {
                // Its room is free again.
                self.pump(fi);
                Err(InvokeError::Failed {
                    function: function.into(),
                    last,
                })
            }
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
        if let Some(tier) = restore_tier.filter(|&tier| {
            // Counted as the restore it would have been: the request wanted it.
            let available = self.fast_path_available();
            if !available {
                self.s
                    .metrics
                    .failure(function, tier, "fast_path_unavailable");
            }
            available
        }) {
            match d.restore(spec, &spec.store_as).await {
                Ok(i) => {
                    self.s.made.lock().unwrap().push(i.id.clone());
                    return Ok((i, tier));
                }
                Err(e) => {
                    self.s.metrics.failure(function, tier, metrics::reason(&e));
                    tracing::warn!(function, error = %e, "restore failed; cold start instead");
                    self.s.resync.notify_one();
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
        let mut rt = FnRt::new(&cfg);
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
        replace: bool,
    ) -> Result<Checkpointed, ManageError> {
        if self.s.closing.load(Ordering::SeqCst) {
            return Err(ManageError::ShuttingDown);
        }
        let fp = self.fast_path();
        if !fp.available {
            return Err(ManageError::NoFastPath(fp.reason.unwrap_or_default()));
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
        let r = self.s.driver.checkpoint(&inst, &store_as, replace).await;
        let secs = began.elapsed().as_secs_f64();
        // Refused because the image exists (which the agent may not have known).
        let exists = matches!(&r, Err(e) if matches!(e.cause, Cause::ImageExists(_)));
        let stop = {
            let now = self.now();
            let mut st = self.s.state.lock().unwrap();
            self.s.image_ops.fetch_add(1, Ordering::SeqCst);
            let f = &mut st.fns[fi];
            f.image_busy = false;
            if (r.is_ok() || exists) && f.image == ImageState::None {
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
            Err(_) if exists => Err(ManageError::ImageExists {
                function: function.to_string(),
                image: store_as,
            }),
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
        // Queued requests are refused now rather than left to wait out the grace.
        {
            let mut st = self.s.state.lock().unwrap();
            for (_, q) in st.queues.iter_mut() {
                for w in q.drain(..) {
                    let _ = w.tx.send(Grant::Refused(Refusal::ShuttingDown));
                }
            }
        }
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

    /// A driver without containers: restores fail when told to, and the next forwards
    /// when told to (before or after the request is sent).
    #[derive(Default)]
    struct Fake {
        fail_restore: AtomicBool,
        next: AtomicU32,
        stopped: AtomicU32,
        /// Instances existing now, and at most.
        live: AtomicU32,
        peak: AtomicU32,
        /// How long a forwarded request takes, ms (0: 30).
        serve_ms: std::sync::atomic::AtomicU64,
        fail_unsent: AtomicU32,
        fail_sent: AtomicU32,
    }

    fn take_one(n: &AtomicU32) -> bool {
        n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |k| k.checked_sub(1))
            .is_ok()
    }

    impl Fake {
        fn instance(&self, f: &FunctionSpec, from: Option<&str>) -> Instance {
            let live = self.live.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(live, Ordering::SeqCst);
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
        async fn checkpoint(&self, _: &Instance, _: &str, _: bool) -> Result<(), DriverError> {
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
            self.live.fetch_sub(1, Ordering::SeqCst);
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
        async fn forward(
            &self,
            i: &Instance,
            req: ForwardRequest,
            _: Duration,
            limit: usize,
        ) -> Result<ForwardResponse, ForwardError> {
            let failed = || DriverError {
                op: Op::Invoke,
                function: i.function.clone(),
                instance: Some(i.id.clone()),
                image: None,
                cause: Cause::Invalid("told to fail".into()),
            };
            if take_one(&self.fail_unsent) {
                return Err(ForwardError::NotSent(failed()));
            }
            if take_one(&self.fail_sent) {
                return Err(ForwardError::Failed(failed()));
            }
            let ms = match self.serve_ms.load(Ordering::SeqCst) {
                0 => 30,
                ms => ms,
            };
            tokio::time::sleep(Duration::from_millis(ms)).await;
            let body = format!("{} {}", i.id, req.path);
            if body.len() > limit {
                return Err(ForwardError::TooLarge {
                    instance: i.id.clone(),
                    limit,
                });
            }
            let mut headers = hyper::HeaderMap::new();
            headers.insert("x-method", req.method.as_str().parse().unwrap());
            headers.insert("x-body-bytes", req.body.len().into());
            Ok(ForwardResponse {
                status: hyper::StatusCode::OK,
                headers,
                body: body.into(),
            })
        }
    }

    fn manager(fake: Arc<Fake>) -> PoolManager {
        manager_of(fake, FunctionConfig::new("f", "img", 8080))
    }

    fn manager_of(fake: Arc<Fake>, f: FunctionConfig) -> PoolManager {
        PoolManager::new(
            fake,
            &[f],
            PoolOptions {
                time_scale: 1.0,
                memory_budget_mb: None,
                max_parallel_starts: 2,
                policy: Box::new(FixedKeepAlive::ten_minutes()),
                pressure: PressureThresholds::default(),
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

    /// An earlier run's instances: the answering and the frozen ones join the pool (and
    /// serve the next request without a start), the rest is stopped with its reason;
    /// shutdown stops the adopted ones too.
    #[tokio::test]
    async fn instances_of_an_earlier_run_are_adopted_or_removed() {
        let fake = Arc::new(Fake::default());
        let mut cfg = FunctionConfig::new("f", "img", 8080);
        cfg.max_instances = 2;
        let pool = manager_of(fake.clone(), cfg);
        let inst = |id: &str, function: &str, store_as: &str| Instance {
            id: id.into(),
            function: function.into(),
            pid: 7,
            port: 8080,
            netns: None,
            restored_from: None,
            store_as: store_as.into(),
        };
        let found = vec![
            Found {
                instance: inst("f-run", "f", "f"),
                state: Some(TaskState::Running),
            },
            Found {
                instance: inst("f-frozen", "f", "f"),
                state: Some(TaskState::Paused),
            },
            Found {
                instance: inst("f-stopped", "f", "f"),
                state: Some(TaskState::Stopped),
            },
            Found {
                instance: inst("f-notask", "f", "f"),
                state: None,
            },
            Found {
                instance: inst("g-1", "g", "g"),
                state: Some(TaskState::Running),
            },
            Found {
                instance: inst("f-renamed", "f", "old"),
                state: Some(TaskState::Running),
            },
            Found {
                instance: inst("f-extra", "f", "f"),
                state: Some(TaskState::Running),
            },
        ];
        let a = pool.adopt(found).await;
        assert_eq!(
            a.adopted,
            vec![
                ("f-run".to_string(), Loaded::Hot),
                ("f-frozen".to_string(), Loaded::Warm)
            ]
        );
        let removed: Vec<&str> = a.removed.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(
            removed,
            ["f-stopped", "f-notask", "g-1", "f-renamed", "f-extra"]
        );
        let why = |id: &str| a.removed.iter().find(|r| r.0 == id).unwrap().1.clone();
        assert!(why("f-stopped").contains("Stopped"), "{}", why("f-stopped"));
        assert!(why("g-1").contains("not registered"), "{}", why("g-1"));
        assert!(why("f-renamed").contains("\"old\""), "{}", why("f-renamed"));
        assert!(
            why("f-extra").contains("max_instances"),
            "{}",
            why("f-extra")
        );
        assert_eq!(fake.stopped.load(Ordering::SeqCst), 5);
        let text = pool.metrics().encode();
        assert!(
            text.contains(
                "rekindle_pool_actions_total{function=\"f\",action=\"adopt\",outcome=\"ok\"} 2"
            ),
            "{text}"
        );
        // The adopted hot instance serves, no start.
        let s = pool.invoke("f", "/").await.unwrap();
        assert_eq!((s.tier, s.instance.as_str()), (StartTier::Hot, "f-run"));
        assert_eq!(fake.next.load(Ordering::SeqCst), 0, "nothing started");
        assert_eq!(
            pool.instances_made(),
            vec!["f-run".to_string(), "f-frozen".to_string()]
        );
        assert_eq!(pool.shutdown(Duration::from_secs(1)).await, 2);
    }

    /// Without the fast path (CRIU missing, rekindle-restored down) a function with a
    /// stored image starts cold, counted as the restore it wanted; checkpoints are
    /// neither planned nor accepted; when it is back, restores are.
    #[tokio::test]
    async fn without_the_fast_path_starts_are_cold_and_nothing_is_checkpointed() {
        let fake = Arc::new(Fake::default());
        let pool = manager(fake.clone());
        pool.set_image("f", false);
        pool.set_fast_path(FastPath {
            available: false,
            criu_version: None,
            reason: Some("no CRIU".into()),
        });
        let s = pool.invoke("f", "/").await.unwrap();
        assert_eq!(s.tier, StartTier::Cold);
        let text = pool.metrics().encode();
        assert!(
            text.contains("rekindle_start_failures_total{function=\"f\",tier=\"restore_disk\",reason=\"fast_path_unavailable\"} 1"),
            "{text}"
        );
        match pool.checkpoint("f", None, true, false).await {
            Err(ManageError::NoFastPath(why)) => assert_eq!(why, "no CRIU"),
            other => panic!("{other:?}"),
        }
        assert!(pool
            .reconcile()
            .iter()
            .all(|a| !matches!(a, Action::Checkpoint { .. } | Action::Stage { .. })));
        pool.set_fast_path(FastPath {
            available: true,
            criu_version: Some("4.2.1".into()),
            reason: None,
        });
        // The hot instance is busy-free: a second concurrent request restores.
        let (a, b) = tokio::join!(pool.invoke("f", "/"), pool.invoke("f", "/"));
        let tiers = [a.unwrap().tier, b.unwrap().tier];
        assert!(tiers.contains(&StartTier::RestoreDisk), "{tiers:?}");
        pool.shutdown(Duration::from_secs(1)).await;
    }

    /// The store decides which images exist: removed behind the agent's back → the next
    /// start is cold (no doomed restore); staged by someone else → a staged restore; a
    /// list taken before an image operation finished is not applied.
    #[tokio::test]
    async fn the_image_state_follows_the_store() {
        let fake = Arc::new(Fake::default());
        let pool = manager(fake.clone());
        pool.set_image("f", false);
        let ops = pool.image_ops();
        pool.sync_images(&HashMap::new(), ops);
        assert_eq!(pool.snapshot()[0].image, ImageState::None);
        let s = pool.invoke("f", "/").await.unwrap();
        assert_eq!(s.tier, StartTier::Cold, "no restore of a removed image");
        let ops = pool.image_ops();
        pool.sync_images(&HashMap::from([("f".to_string(), true)]), ops);
        assert_eq!(pool.snapshot()[0].image, ImageState::Staged);
        // Stale: an image operation finished after the list was asked for.
        let ops = pool.image_ops();
        pool.set_image("f", false);
        pool.sync_images(&HashMap::new(), ops);
        assert_eq!(pool.snapshot()[0].image, ImageState::Disk);
        pool.shutdown(Duration::from_secs(1)).await;
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
                pressure: PressureThresholds::default(),
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

    /// What the live node measures feeds the pool: request durations the policy's
    /// execution-time estimate (outliers and failed requests left out), the collector's
    /// memory per instance the budget, PSI the pressure gate.
    #[tokio::test]
    async fn measured_durations_memory_and_pressure_feed_the_pool() {
        let metrics = Arc::new(Metrics::new());
        let fake = Arc::new(Fake::default());
        let pool = PoolManager::new(
            fake.clone(),
            &[FunctionConfig::new("f", "img", 8080)],
            PoolOptions {
                time_scale: 1.0,
                memory_budget_mb: Some(1024.0),
                max_parallel_starts: 2,
                policy: crate::sim::RunOptions::new(1).policy(crate::policy::PolicyKind::Rekindle),
                pressure: PressureThresholds::default(),
            },
            metrics.clone(),
        );
        // Ten requests of 50 ms and two stuck ones of 500 ms.
        for ms in [50, 50, 50, 50, 500, 50, 50, 50, 50, 500, 50, 50] {
            fake.serve_ms.store(ms, Ordering::SeqCst);
            pool.invoke("f", "/").await.unwrap();
        }
        pool.reconcile();
        let exec = metrics
            .pool
            .function("f")
            .unwrap()
            .exec_secs
            .expect("estimated");
        // The plain mean would be 125 ms.
        assert!((0.045..0.09).contains(&exec), "exec {exec}");
        let t = metrics.encode();
        assert!(
            t.contains("rekindle_exec_seconds{function=\"f\"} 0.0"),
            "{t}"
        );
        // One instance, declared 256 MB, measured at 300 MB per instance: charged 300.
        assert!(
            t.contains("rekindle_pool_memory_bytes{function=\"f\"} 268435456\n"),
            "{t}"
        );
        metrics.node.set_functions(
            [(
                "f".to_string(),
                crate::metrics::FunctionNodeStats {
                    instance_memory_p90_bytes: Some(300 << 20),
                    ..Default::default()
                },
            )]
            .into(),
        );
        pool.reconcile();
        assert_eq!(
            metrics.pool.function("f").unwrap().memory_bytes,
            300 << 20,
            "{}",
            metrics.encode()
        );
        // A request that fails after it was sent (a POST: not repeated) teaches no
        // duration.
        fake.fail_sent.store(1, Ordering::SeqCst);
        let post = ForwardRequest {
            method: Method::POST,
            path: "/".into(),
            headers: hyper::HeaderMap::new(),
            body: hyper::body::Bytes::new(),
        };
        assert!(pool.forward("f", post).await.is_err());
        pool.reconcile();
        assert_eq!(metrics.pool.function("f").unwrap().exec_secs, Some(exec));
        // Pressure: held back at the threshold, resumed well below it; without PSI, never.
        let psi = |cpu| {
            Some(crate::pool::pressure::NodePressure {
                cpu_some_pct: cpu,
                memory_some_pct: 0.0,
            })
        };
        assert!(metrics.encode().contains("rekindle_pressure_hold_back 0\n"));
        metrics.node.set_pressure(psi(95.0));
        pool.reconcile();
        assert!(metrics.pool.hold_back());
        assert!(metrics.encode().contains("rekindle_pressure_hold_back 1\n"));
        metrics.node.set_pressure(psi(60.0));
        pool.reconcile();
        assert!(!metrics.pool.hold_back());
        metrics.node.set_pressure(None);
        pool.reconcile();
        assert!(!metrics.pool.hold_back());
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
            pool.checkpoint("g", None, true, false).await,
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
        let c = pool.checkpoint("g", None, true, false).await.unwrap();
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

    fn post(body: &'static [u8]) -> ForwardRequest {
        ForwardRequest {
            method: Method::POST,
            path: "/invoke".into(),
            headers: hyper::HeaderMap::new(),
            body: hyper::body::Bytes::from_static(body),
        }
    }

    fn limited(max_instances: u32, max_queue: u32, wait_secs: f64) -> FunctionConfig {
        let mut f = FunctionConfig::new("f", "img", 8080);
        f.max_instances = max_instances;
        f.max_queue = max_queue;
        f.max_queue_wait_secs = wait_secs;
        f
    }

    /// Ten POSTs at once on a cold function of at most 2 instances and a queue of 3: two
    /// starts, three requests served as the instances free up (hot, after waiting), five
    /// refused at once; none lost, no third instance.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cold_burst_starts_at_most_max_instances_and_queues_the_rest() {
        let fake = Arc::new(Fake::default());
        fake.serve_ms.store(100, Ordering::SeqCst);
        let pool = manager_of(fake.clone(), limited(2, 3, 10.0));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let p = pool.clone();
            set.spawn(async move { p.forward("f", post(b"hello")).await });
        }
        let (mut tiers, mut refused) = (Vec::new(), Vec::new());
        while let Some(r) = set.join_next().await {
            match r.unwrap() {
                Ok(s) => {
                    assert_eq!(s.response.headers["x-body-bytes"], "5");
                    assert_eq!(s.response.headers["x-method"], "POST");
                    assert_eq!(s.start.is_some(), s.tier == StartTier::Cold);
                    assert_eq!(s.queued.is_some(), s.tier == StartTier::Hot, "{s:?}");
                    tiers.push(s.tier);
                }
                Err(e) => refused.push(e.refusal()),
            }
        }
        tiers.sort_by_key(|t| t.name());
        assert_eq!(
            tiers,
            [
                StartTier::Cold,
                StartTier::Cold,
                StartTier::Hot,
                StartTier::Hot,
                StartTier::Hot
            ]
        );
        assert_eq!(refused, vec![Some(Refusal::QueueFull); 5]);
        assert_eq!(fake.peak.load(Ordering::SeqCst), 2);
        assert_eq!(pool.instances_made().len(), 2);
        let t = pool.metrics().encode();
        assert!(
            t.contains("rekindle_gateway_refused_total{function=\"f\",reason=\"queue_full\"} 5"),
            "{t}"
        );
        let p = &pool.snapshot()[0];
        assert_eq!((p.busy, p.starting), (0, 0), "{p:?}");
        assert_eq!(pool.shutdown(Duration::from_secs(1)).await, 2);
        assert_eq!(fake.live.load(Ordering::SeqCst), 0);
    }

    /// A request waits at most max_queue_wait_secs; one that gives up (its future
    /// dropped) leaves nothing reserved; the shutdown refuses the queue at once.
    #[tokio::test]
    async fn queued_requests_time_out_give_up_cleanly_and_are_refused_at_shutdown() {
        let fake = Arc::new(Fake::default());
        fake.serve_ms.store(300, Ordering::SeqCst);
        let pool = manager_of(fake.clone(), limited(1, 5, 0.05));
        let p = pool.clone();
        let first = tokio::spawn(async move { p.forward("f", post(b"")).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let began = Instant::now();
        let e = pool.forward("f", post(b"")).await.unwrap_err();
        assert_eq!(e.refusal(), Some(Refusal::QueueTimeout), "{e}");
        assert!(began.elapsed() < Duration::from_millis(250));
        // Gives up while queued.
        let gave_up =
            tokio::time::timeout(Duration::from_millis(20), pool.forward("f", post(b""))).await;
        assert!(gave_up.is_err());
        assert_eq!(first.await.unwrap().unwrap().tier, StartTier::Cold);
        // Nothing is left reserved: the instance serves the next request at once.
        let s = pool.forward("f", post(b"")).await.unwrap();
        assert_eq!((s.tier, s.queued), (StartTier::Hot, None));
        let p = &pool.snapshot()[0];
        assert_eq!((p.busy, p.starting), (0, 0), "{p:?}");
        assert!(pool
            .metrics()
            .encode()
            .contains("rekindle_gateway_refused_total{function=\"f\",reason=\"queue_timeout\"} 1"));

        // One busy, one queued with a long wait: the shutdown refuses the queued one.
        let pool = manager_of(fake.clone(), limited(1, 5, 30.0));
        let p = pool.clone();
        let busy = tokio::spawn(async move { p.forward("f", post(b"")).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let p = pool.clone();
        let queued = tokio::spawn(async move { p.forward("f", post(b"")).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let stopped = pool.shutdown(Duration::from_secs(5)).await;
        let e = queued.await.unwrap().unwrap_err();
        assert_eq!(e.refusal(), Some(Refusal::ShuttingDown), "{e}");
        assert!(busy.await.unwrap().is_ok());
        assert_eq!(stopped, 1);
    }

    /// A failure before the request reached the instance goes to another instance; one
    /// after is not repeated for a POST (it may have run), but is for a GET.
    #[tokio::test]
    async fn only_unsent_or_repeatable_requests_are_tried_again() {
        let fake = Arc::new(Fake::default());
        let pool = manager(fake.clone());
        fake.fail_sent.store(1, Ordering::SeqCst);
        let e = pool.forward("f", post(b"x")).await.unwrap_err();
        assert!(matches!(e, InvokeError::Failed { .. }), "{e}");
        fake.fail_unsent.store(1, Ordering::SeqCst);
        let s = pool.forward("f", post(b"x")).await.unwrap();
        assert_eq!(s.response.status, 200);
        fake.fail_sent.store(1, Ordering::SeqCst);
        assert_eq!(pool.invoke("f", "/").await.unwrap().response.status, 200);
        // Every failed instance was stopped; one is left.
        pool.shutdown(Duration::from_secs(1)).await;
        assert_eq!(fake.live.load(Ordering::SeqCst), 0);
        assert_eq!(fake.stopped.load(Ordering::SeqCst), 4);
    }
}
