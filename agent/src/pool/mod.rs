//! The pool manager: per registered function, its instances by tier, and what to do to
//! them.
//!
//! This module holds the pure part: given the pools as they are ([`FunctionView`]) and
//! each function's [`Plan`] (from the same [`crate::policy::Policy`] the simulator
//! replays, converted to real seconds by [`real_plan`]), [`decide`] returns the
//! [`Action`]s that move the pools towards the plan. [`manager`] does the I/O: it feeds the
//! policy the observed arrivals and ends, calls [`decide`] every reconcile interval and
//! carries the actions out through the [`crate::driver::InstanceDriver`]; the invoke
//! gateway ([`crate::gateway`]) takes instances from it.
//!
//! Tiers, live: **hot** = running (idle or serving); **warm** = frozen (cgroup freezer);
//! **staged** = the function's checkpoint image decompressed in memory by
//! rekindle-restored; **disk** = the image only on disk; **cold** = no image yet.
//!
//! The rules [`decide`] applies, per function (the semantics of [`Plan`], as the
//! simulator implements them):
//! 1. No image yet and an idle hot instance: checkpoint it into the store (under the
//!    function's `store_as`), so the next start is a restore.
//! 2. Each idle instance follows the keep-alive ladder from the moment it became idle:
//!    hot for `keep_alive.hot`, then warm (frozen) for `keep_alive.warm`, then stopped.
//!    With a positive `pre_warm` an instance is stopped as soon as it is idle, and the
//!    function is loaded again `pre_warm` after that end (pre-warm: `1 + pre_warm_extra`
//!    instances, within `max_instances`), then follows the ladder from its load.
//! 3. Targets are floors: idle instances are held hot (thawing warm ones if needed) until
//!    `targets.hot` instances are hot (busy ones count), then warm (freezing hot ones)
//!    until `targets.warm` are; what is still missing is started (restored when the image
//!    exists, else cold-started), never beyond `max_instances` (starts in flight count).
//! 4. The image is staged while `targets.staged` says so or while the function is within
//!    its keep-alive window since its last end; unstaged otherwise.
//! 5. Memory budget ([`make_room`]): when what the pools would hold exceeds the node's
//!    budget, idle instances and staged images are released **least recently invoked
//!    function first** (warm instances before hot ones, then its staged image), and
//!    starts that still do not fit are dropped. Least recently invoked is the simplest
//!    faithful stand-in for "smallest expected cost of a miss": a function's hazard of a
//!    request falls with the time since its last one. (The Rekindle policy also fits its
//!    *targets* to the same budget by expected miss cost per MB, [`crate::sizing::fit_budget`];
//!    this rule is the hard cap on what is actually held.) Busy instances are never
//!    released, and a request's own start is admitted only if [`make_room`] finds room.
//! 6. One action at a time per instance (busy instances are left alone) and per image.
//! 7. Memory per instance is what [`charged_memory_mb`] says: `memory_mb`, or the measured
//!    p90 of the function's instances when that is more.
//! 8. Under node pressure ([`pressure`]) the manager drops the speculative actions
//!    ([`hold_back`]): pre-warm loads, starts for warm targets, stages.
//!
//! The gateway's requests are admitted by [`admission`] (serve on an idle instance, start
//! one within `max_instances` and the budget, queue with a bounded wait, or refuse), also
//! pure; the manager waits.

pub mod admission;
pub mod manager;
pub mod pressure;

use std::collections::HashSet;

use crate::policy::{KeepAlive, Plan, Tier, TierTargets};

/// Memory a staged image holds, as a fraction of an instance's (the simulator's
/// [`crate::sim::DEFAULT_MEMORY_FACTORS`]).
pub const STAGED_MEMORY_FACTOR: f64 = crate::sim::DEFAULT_MEMORY_FACTORS[2];

/// What a loaded instance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Loaded {
    /// Running.
    Hot,
    /// Frozen.
    Warm,
}

/// Where the function's checkpoint image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageState {
    /// None yet: the next start without an instance is a cold start.
    None,
    /// On disk (LZ4) in rekindle-restored's store.
    Disk,
    /// Decompressed in memory as well.
    Staged,
}

/// One instance, as [`decide`] sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceView {
    pub id: String,
    pub loaded: Loaded,
    /// Serving a request or under an action: left alone, counted as hot.
    pub busy: bool,
    /// Real seconds (agent clock) since when it is idle (or loaded).
    pub idle_since: f64,
    /// Loaded by a pre-warm and not used since: follows the ladder from its load even
    /// when the plan has a pre-warm.
    pub prewarmed: bool,
}

/// One function's pool, as [`decide`] sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionView {
    pub name: String,
    pub memory_mb: f64,
    pub image: ImageState,
    /// A checkpoint, stage or unstage of the image is in flight.
    pub image_busy: bool,
    pub instances: Vec<InstanceView>,
    /// Starts in flight (a request's own, or the pool's), by the tier they will land in.
    pub starting_hot: u32,
    pub starting_warm: u32,
    /// Real seconds of the last request's arrival and of the last end.
    pub last_invoked: Option<f64>,
    pub last_end: Option<f64>,
    /// When the function is to be loaded again (pre-warm), real seconds.
    pub pending_load: Option<f64>,
    /// The policy's plan in real seconds, clamped ([`real_plan`]).
    pub plan: Plan,
    pub max_instances: u32,
}

impl FunctionView {
    fn loaded_count(&self) -> u32 {
        self.instances.len() as u32 + self.starting_hot + self.starting_warm
    }

    /// Memory held now (instances, starts in flight, the staged image), MB.
    pub fn memory_now(&self) -> f64 {
        self.loaded_count() as f64 * self.memory_mb
            + if self.image == ImageState::Staged {
                self.memory_mb * STAGED_MEMORY_FACTOR
            } else {
                0.0
            }
    }
}

/// Why the pool starts an instance in the background.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartWhy {
    /// The plan's targets want more instances than there are.
    Target,
    /// The plan's pre-warm is due.
    PreWarm,
}

/// What the pool manager is to do. `function` indexes the views given to [`decide`].
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Checkpoint {
        function: usize,
        instance: String,
    },
    /// A new instance (restore from the image if there is one, else cold start), left
    /// in `into`.
    Start {
        function: usize,
        into: Loaded,
        why: StartWhy,
    },
    Freeze {
        function: usize,
        instance: String,
    },
    Thaw {
        function: usize,
        instance: String,
    },
    Stop {
        function: usize,
        instance: String,
    },
    Stage {
        function: usize,
    },
    Unstage {
        function: usize,
    },
}

impl Action {
    pub fn function(&self) -> usize {
        match self {
            Action::Checkpoint { function, .. }
            | Action::Start { function, .. }
            | Action::Freeze { function, .. }
            | Action::Thaw { function, .. }
            | Action::Stop { function, .. }
            | Action::Stage { function }
            | Action::Unstage { function } => *function,
        }
    }

    fn instance(&self) -> Option<&str> {
        match self {
            Action::Checkpoint { instance, .. }
            | Action::Freeze { instance, .. }
            | Action::Thaw { instance, .. }
            | Action::Stop { instance, .. } => Some(instance),
            _ => None,
        }
    }

    /// Short name, for the metrics' `action` label and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Checkpoint { .. } => "checkpoint",
            Action::Start { .. } => "start",
            Action::Freeze { .. } => "freeze",
            Action::Thaw { .. } => "thaw",
            Action::Stop { .. } => "stop",
            Action::Stage { .. } => "stage",
            Action::Unstage { .. } => "unstage",
        }
    }
}

/// Per-function bounds the agent puts on a policy's plan.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanBounds {
    pub min_instances: u32,
    pub max_instances: u32,
    /// Bounds on the keep-alive window (hot + warm + staged), real seconds.
    pub keep_alive_min: f64,
    pub keep_alive_max: f64,
}

/// A policy's plan (policy seconds) in real seconds (`time_scale` policy seconds per real
/// second), with the function's bounds: the window cut to `keep_alive_max` from its tail
/// (staged first, then warm, then hot) or stretched to `keep_alive_min` (hot longer);
/// `min_instances ≤ targets.hot`, `targets.hot + targets.warm ≤ max_instances`.
pub fn real_plan(p: &Plan, time_scale: f64, b: &PlanBounds) -> Plan {
    let s = time_scale.max(f64::MIN_POSITIVE);
    let mut ka = KeepAlive {
        hot: p.keep_alive.hot / s,
        warm: p.keep_alive.warm / s,
        staged: p.keep_alive.staged / s,
    };
    let mut excess = ka.window() - b.keep_alive_max;
    for part in [&mut ka.staged, &mut ka.warm, &mut ka.hot] {
        if excess <= 0.0 {
            break;
        }
        let cut = part.min(excess);
        *part -= cut;
        excess -= cut;
    }
    if ka.window() < b.keep_alive_min {
        ka.hot += b.keep_alive_min - ka.window();
    }
    let hot = p.targets.hot.max(b.min_instances).min(b.max_instances);
    let warm = p.targets.warm.min(b.max_instances - hot);
    Plan {
        pre_warm: p.pre_warm / s,
        pre_warm_extra: p.pre_warm_extra.min(b.max_instances.saturating_sub(1)),
        keep_alive: ka,
        targets: TierTargets {
            hot,
            warm,
            staged: p.targets.staged,
        },
    }
}

/// The tier the ladder puts an idle instance in (`None`: stop it).
fn ladder_tier(plan: &Plan, i: &InstanceView, now: f64) -> Option<Loaded> {
    if plan.pre_warm > 0.0 && !i.prewarmed {
        return None;
    }
    match plan.keep_alive.tier_at((now - i.idle_since).max(0.0)) {
        Tier::Hot => Some(Loaded::Hot),
        Tier::Warm => Some(Loaded::Warm),
        _ => None,
    }
}

/// Whether the function's image should be staged now.
fn want_staged(f: &FunctionView, now: f64) -> bool {
    if f.image == ImageState::None {
        return false;
    }
    f.plan.targets.staged
        || f.last_end
            .is_some_and(|e| now - e < f.plan.pre_warm + f.plan.keep_alive.window())
}

/// The actions that move the pools towards their plans; see the module documentation
/// for the rules. Pure: `now` is the agent clock in real seconds.
pub fn decide(now: f64, fns: &[FunctionView], budget_mb: Option<f64>) -> Vec<Action> {
    let mut actions = Vec::new();
    for (fi, f) in fns.iter().enumerate() {
        decide_one(now, fi, f, &mut actions);
    }
    if let Some(budget) = budget_mb {
        enforce_budget(fns, budget, &mut actions);
    }
    actions
}

fn decide_one(now: f64, fi: usize, f: &FunctionView, out: &mut Vec<Action>) {
    let plan = &f.plan;
    let busy = f.instances.iter().filter(|i| i.busy).count() as u32;
    let mut idle: Vec<&InstanceView> = f.instances.iter().filter(|i| !i.busy).collect();
    // Most recently idle first: they are the ones the ladder keeps longest.
    idle.sort_by(|a, b| b.idle_since.total_cmp(&a.idle_since));

    // 1. Checkpoint an idle hot instance when there is no image.
    let mut checkpointing = None;
    if f.image == ImageState::None && !f.image_busy {
        if let Some(i) = idle.iter().find(|i| i.loaded == Loaded::Hot) {
            out.push(Action::Checkpoint {
                function: fi,
                instance: i.id.clone(),
            });
            checkpointing = Some(i.id.clone());
        }
    }

    // 3. Pin idle instances to the targets, the rest follow the ladder (2.).
    let mut hot_have = busy + f.starting_hot;
    let mut warm_have = f.starting_warm;
    let mut placed: Vec<(&InstanceView, Option<Loaded>)> = Vec::new();
    let mut pinned: HashSet<&str> = HashSet::new();
    for pass in [Loaded::Hot, Loaded::Warm] {
        let (want, have) = match pass {
            Loaded::Hot => (plan.targets.hot, &mut hot_have),
            Loaded::Warm => (plan.targets.warm, &mut warm_have),
        };
        // Prefer instances already in the tier (no action needed).
        let mut order: Vec<&InstanceView> = idle
            .iter()
            .copied()
            .filter(|i| !pinned.contains(i.id.as_str()))
            .collect();
        order.sort_by_key(|i| i.loaded != pass);
        for i in order {
            if *have >= want {
                break;
            }
            pinned.insert(&i.id);
            placed.push((i, Some(pass)));
            *have += 1;
        }
    }
    for i in &idle {
        if !pinned.contains(i.id.as_str()) {
            // The ladder only goes down: a frozen instance is thawed by a target or a
            // request, not by the ladder.
            let to = match ladder_tier(plan, i, now) {
                Some(Loaded::Hot) if i.loaded == Loaded::Warm => Some(Loaded::Warm),
                t => t,
            };
            placed.push((i, to));
        }
    }
    for (i, to) in placed {
        if checkpointing.as_deref() == Some(i.id.as_str()) {
            continue;
        }
        let (function, instance) = (fi, i.id.clone());
        match (i.loaded, to) {
            (Loaded::Hot, Some(Loaded::Warm)) => out.push(Action::Freeze { function, instance }),
            (Loaded::Warm, Some(Loaded::Hot)) => out.push(Action::Thaw { function, instance }),
            (_, None) => out.push(Action::Stop { function, instance }),
            _ => {}
        }
    }

    // Starts: targets still missing, then a due pre-warm; never beyond max_instances.
    let stops = out
        .iter()
        .filter(|a| matches!(a, Action::Stop { function, .. } if *function == fi))
        .count() as u32;
    let mut room = f
        .max_instances
        .saturating_sub(f.loaded_count().saturating_sub(stops));
    for (into, missing) in [
        (Loaded::Hot, plan.targets.hot.saturating_sub(hot_have)),
        (Loaded::Warm, plan.targets.warm.saturating_sub(warm_have)),
    ] {
        for _ in 0..missing.min(room) {
            out.push(Action::Start {
                function: fi,
                into,
                why: StartWhy::Target,
            });
            room -= 1;
        }
    }
    if f.pending_load.is_some_and(|t| t <= now) && f.loaded_count() == 0 && room > 0 {
        let first = plan.keep_alive.first_tier();
        let into = match first {
            Tier::Hot => Some(Loaded::Hot),
            Tier::Warm => Some(Loaded::Warm),
            _ => None,
        };
        if let Some(into) = into {
            if f.image != ImageState::None {
                for _ in 0..(1 + plan.pre_warm_extra).min(room) {
                    out.push(Action::Start {
                        function: fi,
                        into,
                        why: StartWhy::PreWarm,
                    });
                }
            }
        }
    }

    // 4. The staged image.
    if !f.image_busy {
        let want = want_staged(f, now);
        match f.image {
            ImageState::Disk if want => out.push(Action::Stage { function: fi }),
            ImageState::Staged if !want => out.push(Action::Unstage { function: fi }),
            _ => {}
        }
    }
}

/// Memory the pools would hold once `actions` are done, per function, MB.
fn projected(fns: &[FunctionView], actions: &[Action]) -> Vec<f64> {
    fns.iter()
        .enumerate()
        .map(|(fi, f)| {
            let mut n = f.loaded_count() as f64;
            for a in actions.iter().filter(|a| a.function() == fi) {
                match a {
                    Action::Stop { .. } => n -= 1.0,
                    Action::Start { .. } => n += 1.0,
                    _ => {}
                }
            }
            let staged = if staged_after(f, fi, actions) {
                STAGED_MEMORY_FACTOR
            } else {
                0.0
            };
            f.memory_mb * (n + staged)
        })
        .collect()
}

/// Whether `f` (index `fi`) holds a staged image once `actions` are done.
fn staged_after(f: &FunctionView, fi: usize, actions: &[Action]) -> bool {
    let mut staged = f.image == ImageState::Staged;
    for a in actions.iter().filter(|a| a.function() == fi) {
        match a {
            Action::Stage { .. } => staged = true,
            Action::Unstage { .. } => staged = false,
            _ => {}
        }
    }
    staged
}

/// Functions, least recently invoked first (never-invoked ones first of all).
fn lru_order(fns: &[FunctionView]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..fns.len()).collect();
    order.sort_by(|&a, &b| {
        let t = |i: usize| fns[i].last_invoked.unwrap_or(f64::NEG_INFINITY);
        t(a).total_cmp(&t(b))
    });
    order
}

/// Releases (adds to `actions`) idle instances and staged images, least recently invoked
/// function first, until what the pools would hold plus `need_mb` fits `budget_mb`.
/// Returns whether it fits. Instances under an action, busy ones and images being
/// staged or checkpointed are not released.
pub fn make_room(
    fns: &[FunctionView],
    budget_mb: f64,
    need_mb: f64,
    actions: &mut Vec<Action>,
) -> bool {
    let mut total: f64 = projected(fns, actions).iter().sum::<f64>() + need_mb;
    if total <= budget_mb + 1e-9 {
        return true;
    }
    for fi in lru_order(fns) {
        let f = &fns[fi];
        let stopping: HashSet<String> = actions
            .iter()
            .filter(|a| matches!(a, Action::Stop { .. }) && a.function() == fi)
            .filter_map(|a| a.instance().map(str::to_string))
            .collect();
        let mut idle: Vec<&InstanceView> = f
            .instances
            .iter()
            .filter(|i| !i.busy && !stopping.contains(&i.id))
            .collect();
        // Warm before hot; within a tier, the longest idle first.
        idle.sort_by(|a, b| {
            (a.loaded == Loaded::Hot)
                .cmp(&(b.loaded == Loaded::Hot))
                .then(a.idle_since.total_cmp(&b.idle_since))
        });
        for i in idle {
            if total <= budget_mb + 1e-9 {
                return true;
            }
            // Replace whatever else was planned for it (a freeze, thaw or checkpoint).
            actions.retain(|a| a.instance() != Some(i.id.as_str()));
            actions.push(Action::Stop {
                function: fi,
                instance: i.id.clone(),
            });
            total -= f.memory_mb;
        }
        if total <= budget_mb + 1e-9 {
            return true;
        }
        // Not while its starts run: a restore from the staged copy holds it (the daemon
        // refuses the unstage, and the memory stays).
        if staged_after(f, fi, actions) && !f.image_busy && f.starting_hot + f.starting_warm == 0 {
            actions.retain(|a| !(matches!(a, Action::Stage { .. }) && a.function() == fi));
            if f.image == ImageState::Staged {
                actions.push(Action::Unstage { function: fi });
            }
            total -= f.memory_mb * STAGED_MEMORY_FACTOR;
        }
    }
    total <= budget_mb + 1e-9
}

/// Node pressure ([`pressure`]): drops the speculative actions — pre-warm starts, starts
/// for warm targets (the forecast's upper quantile) and stages of images — and keeps
/// what the minimum and the forecast need (starts for hot targets), stops, freezes,
/// thaws, checkpoints and unstages. Returns how many it dropped.
pub fn hold_back(actions: &mut Vec<Action>) -> usize {
    let before = actions.len();
    actions.retain(|a| {
        !matches!(
            a,
            Action::Start {
                why: StartWhy::PreWarm,
                ..
            } | Action::Start {
                into: Loaded::Warm,
                ..
            } | Action::Stage { .. }
        )
    });
    before - actions.len()
}

/// Drops what needs the fast path (CRIU, rekindle-restored) while it is unavailable:
/// checkpoints and stages could only fail. Returns how many.
pub fn without_fast_path(actions: &mut Vec<Action>) -> usize {
    let before = actions.len();
    actions.retain(|a| !matches!(a, Action::Checkpoint { .. } | Action::Stage { .. }));
    before - actions.len()
}

/// Memory one instance of a function is charged in the budget, MB: its configured
/// `memory_mb`, or the 90th percentile of its instances' measured cgroup memory when
/// that is more. Never less than configured: the cgroup limit is `memory_mb`, so an
/// instance may grow to it while it serves, and the budget must hold that.
pub fn charged_memory_mb(configured_mb: f64, measured_p90_mb: Option<f64>) -> f64 {
    measured_p90_mb
        .filter(|m| m.is_finite())
        .map_or(configured_mb, |m| configured_mb.max(m))
}

/// Rule 5 on the reconcile's own actions: release by [`make_room`], then drop the
/// background starts (and stages) that still do not fit.
fn enforce_budget(fns: &[FunctionView], budget_mb: f64, actions: &mut Vec<Action>) {
    if make_room(fns, budget_mb, 0.0, actions) {
        return;
    }
    while projected(fns, actions).iter().sum::<f64>() > budget_mb + 1e-9 {
        let Some(k) = actions
            .iter()
            .rposition(|a| matches!(a, Action::Start { .. } | Action::Stage { .. }))
        else {
            break;
        };
        actions.remove(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(hot: f64, warm: f64, staged: f64) -> Plan {
        Plan {
            pre_warm: 0.0,
            pre_warm_extra: 0,
            keep_alive: KeepAlive { hot, warm, staged },
            targets: TierTargets::default(),
        }
    }

    fn inst(id: &str, loaded: Loaded, busy: bool, idle_since: f64) -> InstanceView {
        InstanceView {
            id: id.into(),
            loaded,
            busy,
            idle_since,
            prewarmed: false,
        }
    }

    fn func(image: ImageState, instances: Vec<InstanceView>, plan: Plan) -> FunctionView {
        FunctionView {
            name: "f".into(),
            memory_mb: 100.0,
            image,
            image_busy: false,
            instances,
            starting_hot: 0,
            starting_warm: 0,
            last_invoked: Some(0.0),
            last_end: Some(0.0),
            pending_load: None,
            plan,
            max_instances: 10,
        }
    }

    fn stop(i: &str) -> Action {
        Action::Stop {
            function: 0,
            instance: i.into(),
        }
    }

    #[test]
    fn a_cold_started_instance_is_checkpointed_once() {
        let mut f = func(
            ImageState::None,
            vec![inst("a", Loaded::Hot, false, 0.0)],
            plan(10.0, 0.0, 0.0),
        );
        let a = decide(1.0, std::slice::from_ref(&f), None);
        assert_eq!(
            a,
            vec![Action::Checkpoint {
                function: 0,
                instance: "a".into()
            }]
        );
        f.image_busy = true;
        assert!(decide(1.0, &[f], None).is_empty());
    }

    #[test]
    fn idle_instances_follow_the_ladder_hot_warm_stopped() {
        let mut f = func(
            ImageState::Disk,
            vec![
                inst("new", Loaded::Hot, false, 9.0),
                inst("mid", Loaded::Hot, false, 6.0),
                inst("old", Loaded::Warm, false, 0.0),
                inst("busy", Loaded::Hot, true, 0.0),
            ],
            plan(2.0, 5.0, 0.0),
        );
        f.last_end = Some(9.0);
        let a = decide(10.0, &[f], None);
        assert!(a.contains(&Action::Freeze {
            function: 0,
            instance: "mid".into()
        }));
        assert!(a.contains(&stop("old")));
        assert!(!a.iter().any(|x| x.instance() == Some("new")), "{a:?}");
        assert!(!a.iter().any(|x| x.instance() == Some("busy")), "{a:?}");
        // Within the window (ends at 0 + 7 s): the image is staged.
        assert!(a.contains(&Action::Stage { function: 0 }), "{a:?}");
    }

    #[test]
    fn targets_pin_thaw_and_start() {
        let mut p = plan(0.0, 0.0, 0.0);
        p.targets = TierTargets {
            hot: 3,
            warm: 1,
            staged: true,
        };
        let f = func(
            ImageState::Staged,
            vec![
                inst("w1", Loaded::Warm, false, 0.0),
                inst("busy", Loaded::Hot, true, 0.0),
            ],
            p,
        );
        let a = decide(100.0, &[f], None);
        // busy counts as hot; w1 thawed; one more hot and one warm started.
        assert!(a.contains(&Action::Thaw {
            function: 0,
            instance: "w1".into()
        }));
        let starts: Vec<_> = a
            .iter()
            .filter_map(|x| match x {
                Action::Start { into, why, .. } => Some((*into, *why)),
                _ => None,
            })
            .collect();
        assert_eq!(
            starts,
            vec![
                (Loaded::Hot, StartWhy::Target),
                (Loaded::Warm, StartWhy::Target)
            ]
        );
        assert!(!a.contains(&Action::Unstage { function: 0 }));
    }

    #[test]
    fn starts_never_exceed_max_instances_and_count_those_in_flight() {
        let mut p = plan(0.0, 0.0, 0.0);
        p.targets.hot = 5;
        let mut f = func(ImageState::Disk, vec![inst("b", Loaded::Hot, true, 0.0)], p);
        f.max_instances = 3;
        f.starting_hot = 1;
        let a = decide(1.0, &[f], None);
        let n = a
            .iter()
            .filter(|x| matches!(x, Action::Start { .. }))
            .count();
        assert_eq!(n, 1, "{a:?}");
    }

    #[test]
    fn pre_warm_unloads_at_once_and_loads_when_due() {
        let mut p = plan(5.0, 0.0, 0.0);
        p.pre_warm = 30.0;
        let mut f = func(
            ImageState::Disk,
            vec![inst("a", Loaded::Hot, false, 0.0)],
            p,
        );
        let a = decide(1.0, std::slice::from_ref(&f), None);
        assert!(a.contains(&stop("a")), "{a:?}");
        f.instances.clear();
        f.pending_load = Some(30.0);
        assert!(!decide(29.0, std::slice::from_ref(&f), None)
            .iter()
            .any(|x| matches!(x, Action::Start { .. })));
        let a = decide(30.5, std::slice::from_ref(&f), None);
        assert!(a.contains(&Action::Start {
            function: 0,
            into: Loaded::Hot,
            why: StartWhy::PreWarm
        }));
        // A pre-warmed instance follows the ladder from its load.
        f.pending_load = None;
        f.instances = vec![InstanceView {
            prewarmed: true,
            ..inst("p", Loaded::Hot, false, 30.5)
        }];
        assert!(!decide(32.0, std::slice::from_ref(&f), None).contains(&stop("p")));
        assert!(decide(36.0, &[f], None).contains(&stop("p")));
    }

    #[test]
    fn a_pre_warm_loads_the_burst_s_instances_within_max_instances() {
        let mut p = plan(5.0, 0.0, 0.0);
        p.pre_warm = 30.0;
        p.pre_warm_extra = 2;
        let mut f = func(ImageState::Disk, vec![], p);
        f.pending_load = Some(30.0);
        let starts = |f: &FunctionView| {
            decide(30.5, std::slice::from_ref(f), None)
                .iter()
                .filter(|a| {
                    matches!(
                        a,
                        Action::Start {
                            why: StartWhy::PreWarm,
                            into: Loaded::Hot,
                            ..
                        }
                    )
                })
                .count()
        };
        assert_eq!(starts(&f), 3);
        f.max_instances = 2;
        assert_eq!(starts(&f), 2);
    }

    #[test]
    fn the_image_is_unstaged_after_the_window() {
        let f = func(ImageState::Staged, vec![], plan(1.0, 1.0, 3.0));
        assert!(decide(4.0, std::slice::from_ref(&f), None).is_empty());
        assert_eq!(
            decide(5.5, &[f], None),
            vec![Action::Unstage { function: 0 }]
        );
    }

    #[test]
    fn the_budget_releases_the_least_recently_invoked_first() {
        let keep = plan(100.0, 100.0, 100.0);
        let mut old = func(
            ImageState::Staged,
            vec![
                inst("o-hot", Loaded::Hot, false, 5.0),
                inst("o-warm", Loaded::Warm, false, 5.0),
                inst("o-busy", Loaded::Hot, true, 5.0),
            ],
            keep,
        );
        old.last_invoked = Some(1.0);
        let mut recent = func(
            ImageState::Disk,
            vec![inst("r-hot", Loaded::Hot, false, 9.0)],
            keep,
        );
        recent.last_invoked = Some(9.0);
        let fns = [old, recent];
        // Holding: old 3×100 + 60 staged, recent 100 (+60 when it stages) = 520.
        let a = decide(10.0, &fns, None);
        assert_eq!(a, vec![Action::Stage { function: 1 }]);
        // Budget 300: o-warm, then o-hot, then old's image go; recent keeps everything.
        let a = decide(10.0, &fns, Some(300.0));
        assert!(a.contains(&Action::Stop {
            function: 0,
            instance: "o-warm".into()
        }));
        assert!(a.contains(&Action::Stop {
            function: 0,
            instance: "o-hot".into()
        }));
        assert!(a.contains(&Action::Unstage { function: 0 }));
        assert!(a.contains(&Action::Stage { function: 1 }), "{a:?}");
        assert!(projected(&fns, &a).iter().sum::<f64>() <= 300.0);
        // Budget 150: busy o-busy (100) stays; recent's hot goes too, its stage is dropped.
        let a = decide(10.0, &fns, Some(150.0));
        assert!(a.contains(&Action::Stop {
            function: 1,
            instance: "r-hot".into()
        }));
        assert!(!a.contains(&Action::Stage { function: 1 }), "{a:?}");
        assert!(projected(&fns, &a).iter().sum::<f64>() <= 150.0);
    }

    #[test]
    fn a_request_start_is_admitted_only_with_room() {
        let mut f = func(
            ImageState::Disk,
            vec![inst("busy", Loaded::Hot, true, 0.0)],
            plan(10.0, 0.0, 0.0),
        );
        f.instances.push(inst("idle", Loaded::Hot, false, 0.0));
        let mut a = Vec::new();
        assert!(make_room(std::slice::from_ref(&f), 200.0, 100.0, &mut a));
        assert_eq!(a, vec![stop("idle")]);
        let mut a = Vec::new();
        assert!(!make_room(&[f], 150.0, 100.0, &mut a));
    }

    /// A staged image whose function has starts in flight (restores holding it) is not
    /// counted as memory that an unstage frees: rekindle-restored would refuse.
    #[test]
    fn a_staged_image_in_use_by_starts_is_not_unstaged_for_room() {
        let mut f = func(ImageState::Staged, vec![], plan(10.0, 0.0, 0.0));
        f.starting_hot = 1;
        let mut a = Vec::new();
        // 100 starting + 60 staged + 100 needed: 260 > 200, and nothing can go.
        assert!(!make_room(std::slice::from_ref(&f), 200.0, 100.0, &mut a));
        assert!(a.is_empty(), "{a:?}");
        assert!(!a.contains(&Action::Unstage { function: 0 }), "{a:?}");
        // Without starts: 60 staged + 100 needed > 150 fits once unstaged.
        f.starting_hot = 0;
        let mut a = Vec::new();
        assert!(make_room(&[f], 150.0, 100.0, &mut a));
        assert_eq!(a, vec![Action::Unstage { function: 0 }]);
    }

    #[test]
    fn pressure_holds_back_only_speculative_work() {
        let mut p = plan(10.0, 0.0, 0.0);
        p.targets = TierTargets {
            hot: 2,
            warm: 2,
            staged: true,
        };
        let mut f = func(
            ImageState::Disk,
            vec![inst("old", Loaded::Hot, false, 0.0)],
            p,
        );
        f.plan.keep_alive = KeepAlive::hot(1.0);
        let mut a = decide(5.0, &[f], None);
        let start = |into| Action::Start {
            function: 0,
            into,
            why: StartWhy::Target,
        };
        assert!(a.contains(&start(Loaded::Warm)), "{a:?}");
        assert!(a.contains(&Action::Stage { function: 0 }), "{a:?}");
        let dropped = hold_back(&mut a);
        // The second hot instance the forecast needs still starts; the warm ones and the
        // stage wait.
        assert_eq!(dropped, 3, "{a:?}");
        assert_eq!(a, vec![start(Loaded::Hot)]);
        // A due pre-warm is speculative too; a stop is not.
        let mut pw = plan(5.0, 0.0, 0.0);
        pw.pre_warm = 30.0;
        let mut g = func(ImageState::Disk, vec![], pw);
        g.pending_load = Some(30.0);
        g.image_busy = true;
        let mut a = decide(31.0, &[g], None);
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(hold_back(&mut a), 1);
        let mut a = vec![stop("x"), Action::Unstage { function: 0 }];
        assert_eq!(hold_back(&mut a), 0);
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn measured_memory_is_charged_when_it_exceeds_the_declaration() {
        assert_eq!(charged_memory_mb(256.0, None), 256.0);
        assert_eq!(charged_memory_mb(256.0, Some(120.0)), 256.0);
        assert_eq!(charged_memory_mb(256.0, Some(300.0)), 300.0);
        assert_eq!(charged_memory_mb(256.0, Some(f64::NAN)), 256.0);
        // The budget then counts it: two 100 MB-declared instances measured at 150 MB do
        // not fit 250 MB, and the least recently invoked one's idle instance goes.
        let keep = plan(100.0, 0.0, 0.0);
        let mut a = func(
            ImageState::Disk,
            vec![inst("a", Loaded::Hot, false, 5.0)],
            keep,
        );
        a.last_invoked = Some(1.0);
        a.image_busy = true; // no stage in the way
        let mut b = func(
            ImageState::Disk,
            vec![inst("b", Loaded::Hot, false, 5.0)],
            keep,
        );
        b.last_invoked = Some(2.0);
        b.image_busy = true;
        let declared = [a.clone(), b.clone()];
        assert!(decide(6.0, &declared, Some(250.0)).is_empty());
        a.memory_mb = charged_memory_mb(100.0, Some(150.0));
        b.memory_mb = charged_memory_mb(100.0, Some(150.0));
        let acts = decide(6.0, &[a, b], Some(250.0));
        assert_eq!(acts, vec![stop("a")]);
    }

    #[test]
    fn real_plan_scales_and_bounds() {
        let b = PlanBounds {
            min_instances: 1,
            max_instances: 3,
            keep_alive_min: 1.0,
            keep_alive_max: 5.0,
        };
        let p = Plan {
            pre_warm: 120.0,
            pre_warm_extra: 5,
            keep_alive: KeepAlive {
                hot: 240.0,
                warm: 60.0,
                staged: 600.0,
            },
            targets: TierTargets {
                hot: 0,
                warm: 7,
                staged: false,
            },
        };
        let r = real_plan(&p, 60.0, &b);
        assert_eq!(r.pre_warm, 2.0);
        // A pre-warm loads at most max_instances.
        assert_eq!(r.pre_warm_extra, 2);
        assert_eq!(
            (r.keep_alive.hot, r.keep_alive.warm, r.keep_alive.staged),
            (4.0, 1.0, 0.0)
        );
        assert_eq!((r.targets.hot, r.targets.warm), (1, 2));
        let r = real_plan(&Plan::default(), 1.0, &b);
        assert_eq!(r.keep_alive.hot, 1.0);
    }
}
