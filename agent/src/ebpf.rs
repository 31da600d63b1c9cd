//! The node collector: per-function CPU time, run-queue latency, page faults, exec/exit
//! counts and start-up timelines from the eBPF probes ([`rekindle::bpf`]), and memory and
//! block I/O from the cgroup files, exported as the `rekindle_function_*` metrics (see
//! [`crate::metrics`]).
//!
//! At start-up the agent loads the probes; if that fails (no privileges, no kernel BTF,
//! the verifier) it logs one warning with the reason, sets `rekindle_bpf_loaded 0`, and
//! goes on with cgroup statistics alone.
//!
//! The driver tells the collector about each instance it starts through [`StartWatch`]
//! (its [`crate::driver::StartHook`]), after Tasks.Create made the instance's cgroup and
//! before Tasks.Start runs it: the cgroup is watched from then on, so the probes see the
//! instance's first schedule and count its start. Then every interval
//! [`NodeCollector::collect`]:
//!
//! - takes the instances registered since the last pass;
//! - lists the instances' cgroups: the driver puts instance `<id>` in cgroup
//!   `/<namespace>/<id>` (`ContainerdDriver::cgroups_path`), so the instances are the
//!   directories under `<namespace>` in the cgroup2 hierarchy and, on a v1 host, in the
//!   memory and blkio controllers'; an instance id is `<function>-<16 hex>` (the
//!   function's name reduced as the driver does), which names its function;
//! - watches each instance it did not know yet (one the agent did not start, or
//!   started before the probes were loaded) by its cgroup v2 id (the inode of its
//!   directory under the cgroup2 mount, which runc and the shim also create on a v1
//!   hybrid host: see `bpf/README.md`); reads the counters of every watched one and adds
//!   what grew since the last read to its function's totals; an instance whose cgroup
//!   went away is read a last time and unwatched, so the totals keep what it did;
//! - closes start-up timelines: the gateway reports the first answer of an instance
//!   started for a request ([`NodeMetrics::first_response`]), and the time from the
//!   instance's first schedule to that answer goes into
//!   `rekindle_function_startup_seconds{function,tier}`;
//! - sums the instances' memory (`memory.usage_in_bytes` on v1, `memory.current` on v2)
//!   and adds what their block I/O counters grew (`blkio.throttle.io_service_bytes` and
//!   `io_serviced` on v1, `io.stat` on v2) to their function's totals.
//!
//! - keeps each function's last [`MEMORY_SAMPLES`] per-instance memory reads and
//!   publishes their 90th percentile: the memory one instance of it takes, which the
//!   pool manager charges in its budget when it exceeds the configured `memory_mb`.
//!   Per-instance reads rather than the function's sum over its instance count: the
//!   listing and the pool's count disagree while instances start and stop, and a
//!   distribution per instance shows what one instance needs at its peak;
//! - reads the node's pressure (PSI, `/proc/pressure/{cpu,memory}`) for the pool
//!   manager's gate ([`crate::pool::pressure`]); without PSI it says so once.
//!
//! An instance found by listing (not registered) is counted from when the collector
//! first saw it: at most one interval of its start is missed, and it has no timeline.
//! Its I/O counts from its cgroup's creation (the cgroup files count from there).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rekindle::bpf::{cgroup2_root, cgroup_id_of, monotonic_ns, CgroupId, CgroupStats, Probes};
use tokio::sync::watch;

use crate::driver::StartHook;
use crate::metrics::{FunctionNodeStats, IoStats, NodeMetrics, StartTier};
use crate::pool::pressure::read_node_pressure;

/// Per-instance memory reads kept per function (one per instance per pass: with a
/// pass every 1–5 s, the last minute or so of a few instances).
pub const MEMORY_SAMPLES: usize = 64;

/// Where the kernel publishes PSI.
pub const PSI_DIR: &str = "/proc/pressure";

/// The 90th percentile of memory reads, bytes; `None` without any.
pub fn memory_p90(samples: &VecDeque<u64>) -> Option<u64> {
    if samples.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = samples.iter().map(|&b| b as f64).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    Some(crate::forecast::exec::quantile_sorted(&v, 0.9).round() as u64)
}

/// Where the cgroup hierarchies the collector reads are mounted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupLayout {
    /// The cgroup2 mount (`/sys/fs/cgroup` on a v2 host, `/sys/fs/cgroup/unified` on a
    /// v1 hybrid one): cgroup ids for eBPF, and `memory.current` / `io.stat` when there
    /// is no v1 memory / blkio controller.
    pub v2_root: Option<PathBuf>,
    /// The cgroup v1 memory controller's mount (`/sys/fs/cgroup/memory`), if any.
    pub v1_memory_root: Option<PathBuf>,
    /// The cgroup v1 blkio controller's mount (`/sys/fs/cgroup/blkio`), if any.
    pub v1_blkio_root: Option<PathBuf>,
}

impl CgroupLayout {
    /// This host's layout, from `/proc/self/mountinfo`.
    pub fn detect() -> CgroupLayout {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        CgroupLayout {
            v2_root: cgroup2_root().ok(),
            v1_memory_root: v1_controller_root_in(&mountinfo, "memory"),
            v1_blkio_root: v1_controller_root_in(&mountinfo, "blkio"),
        }
    }
}

/// The mount point of the cgroup v1 hierarchy that has `controller`.
fn v1_controller_root_in(mountinfo: &str, controller: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut r = right.split(' ');
        let (fstype, super_opts) = (r.next()?, r.nth(1)?);
        (fstype == "cgroup" && super_opts.split(',').any(|o| o == controller))
            .then(|| left.split(' ').nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// Block I/O from cgroup v1's `blkio.throttle.io_service_bytes` and
/// `blkio.throttle.io_serviced` (`<major>:<minor> <Read|Write|Sync|Async|Discard|Total>
/// <n>` per device, then `Total <n>`): the Read and Write lines summed over devices.
///
/// On kernels from 6.9 on, blk-throttle is set up for a disk only once some cgroup has a
/// throttle limit on it; until then these files stay at `Total 0`.
pub fn parse_blkio_v1(service_bytes: &str, serviced: &str) -> IoStats {
    let read_write = |text: &str| {
        let mut rw = [0u64; 2];
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let (Some(_device), Some(op), Some(n)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match op {
                "Read" => rw[0] += n,
                "Write" => rw[1] += n,
                _ => {}
            }
        }
        rw
    };
    let [read_bytes, write_bytes] = read_write(service_bytes);
    let [read_ops, write_ops] = read_write(serviced);
    IoStats {
        read_bytes,
        write_bytes,
        read_ops,
        write_ops,
    }
}

/// Block I/O from cgroup v2's `io.stat` (`<major>:<minor> rbytes=.. wbytes=.. rios=..
/// wios=.. dbytes=.. dios=..` per device, other keys possible): summed over devices.
pub fn parse_io_stat(text: &str) -> IoStats {
    let mut io = IoStats::default();
    for line in text.lines() {
        for kv in line.split_whitespace().skip(1) {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let Ok(n) = v.parse::<u64>() else { continue };
            match k {
                "rbytes" => io.read_bytes += n,
                "wbytes" => io.write_bytes += n,
                "rios" => io.read_ops += n,
                "wios" => io.write_ops += n,
                _ => {}
            }
        }
    }
    io
}

/// The instance-id prefix the driver derives from a function's name (`new_id` in
/// `driver/containerd.rs`): characters container ids do not allow become `-`, at most
/// 40 of them, leading `-_.` dropped, `fn` if nothing is left.
pub fn id_prefix(function: &str) -> String {
    let name: String = function
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let name = name.trim_start_matches(['-', '_', '.']);
    if name.is_empty() { "fn" } else { name }.to_string()
}

/// `<prefix>-<16 hex>` → `<prefix>`.
fn instance_prefix(id: &str) -> Option<&str> {
    let (prefix, hex) = id.rsplit_once('-')?;
    (hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(prefix)
}

/// An instance the driver registered just before starting it.
struct Registered {
    instance: String,
    function: String,
    dir: PathBuf,
    cgroup: CgroupId,
    at_ns: u64,
}

/// Watches a new instance's cgroup with the eBPF probes when the driver is about to
/// start it ([`StartHook::before_start`]), and hands it to the collector's next pass.
/// Does nothing when the probes are not loaded.
pub struct StartWatch {
    probes: Option<Arc<Probes>>,
    v2_root: Option<PathBuf>,
    registered: Mutex<Vec<Registered>>,
}

impl StartWatch {
    fn take(&self) -> Vec<Registered> {
        std::mem::take(&mut self.registered.lock().unwrap())
    }
}

impl StartHook for StartWatch {
    fn before_start(&self, function: &str, instance: &str, cgroups_path: &str) {
        let (Some(probes), Some(v2)) = (&self.probes, &self.v2_root) else {
            return;
        };
        let dir = v2.join(cgroups_path.trim_start_matches('/'));
        let cgroup = match cgroup_id_of(&dir) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(%function, %instance, error = %e, "no cgroup v2 directory to watch");
                return;
            }
        };
        // Taken before the timeline restarts: every first schedule it records is later.
        // Restarted rather than only watched: the collector may have found the cgroup
        // since Tasks.Create made it, and what ran then (runc's init, CRIU's swrk) is
        // not the start.
        let at_ns = monotonic_ns();
        if let Err(e) = probes.restart_timeline(cgroup) {
            tracing::warn!(%function, %instance, error = %e, "cannot watch a new instance's cgroup with eBPF");
            return;
        }
        self.registered.lock().unwrap().push(Registered {
            instance: instance.to_string(),
            function: function.to_string(),
            dir,
            cgroup,
            at_ns,
        });
    }
}

/// An instance's start-up as the collector knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeline {
    pub function: String,
    /// When the driver registered it (just before Tasks.Start), `CLOCK_MONOTONIC` ns.
    pub registered_ns: u64,
    /// When a task of its cgroup first ran after that (eBPF).
    pub first_sched_ns: Option<u64>,
    /// When a task of its cgroup first exec'd after that (eBPF).
    pub first_exec_ns: Option<u64>,
    /// The agent's receipt of its first answer, and how it was started.
    pub first_response: Option<(StartTier, u64)>,
}

struct Watched {
    function: String,
    /// Its cgroup v2 directory: gone when the instance is.
    dir: PathBuf,
    cgroup: CgroupId,
    last: CgroupStats,
    /// When the driver registered it; `None` for one found by listing.
    registered_ns: Option<u64>,
    first_response: Option<(StartTier, u64)>,
}

/// Reads the probes and the cgroup files; see the module doc.
pub struct NodeCollector {
    probes: Option<Arc<Probes>>,
    start_watch: Arc<StartWatch>,
    layout: CgroupLayout,
    /// The instances' parent cgroup, relative to a hierarchy's root (the namespace).
    parent: PathBuf,
    /// Instance-id prefix → function name.
    functions: HashMap<String, String>,
    /// By instance id.
    watched: HashMap<String, Watched>,
    /// Block I/O counters of each instance at the last pass, by instance id.
    io_last: HashMap<String, IoStats>,
    /// eBPF counters and block I/O summed per function (memory is filled in per
    /// collection).
    totals: BTreeMap<String, FunctionNodeStats>,
    metrics: Arc<NodeMetrics>,
    warned_watch: bool,
    /// Recent per-instance memory reads, by function.
    memory_samples: HashMap<String, VecDeque<u64>>,
    /// PSI's directory (`None`: not read).
    pressure_dir: Option<PathBuf>,
    warned_pressure: bool,
}

impl NodeCollector {
    /// Loads the probes (logging one warning if that fails) for the instances of
    /// `functions` in cgroup `/<namespace>/<id>`, on this host's cgroup layout.
    pub fn start<'a>(
        namespace: &str,
        functions: impl IntoIterator<Item = &'a str>,
        metrics: Arc<NodeMetrics>,
    ) -> NodeCollector {
        let probes = match Probes::load() {
            Ok(p) => {
                tracing::info!("eBPF probes loaded: per-function CPU, run-queue latency, page faults, exec/exit, start-up");
                Some(p)
            }
            Err(e) => {
                // The message names the cause and says the agent continues on cgroup
                // statistics alone.
                tracing::warn!("{e}");
                None
            }
        };
        Self::new(
            probes,
            CgroupLayout::detect(),
            namespace,
            functions,
            metrics,
        )
    }

    /// A collector with the given probes (`None`: cgroup statistics alone) and layout.
    pub fn new<'a>(
        probes: Option<Probes>,
        layout: CgroupLayout,
        namespace: &str,
        functions: impl IntoIterator<Item = &'a str>,
        metrics: Arc<NodeMetrics>,
    ) -> NodeCollector {
        metrics.set_bpf_loaded(probes.is_some());
        let probes = probes.map(Arc::new);
        let functions: HashMap<String, String> = functions
            .into_iter()
            .map(|f| (id_prefix(f), f.to_string()))
            .collect();
        let totals = functions
            .values()
            .map(|f| (f.clone(), FunctionNodeStats::default()))
            .collect();
        let c = NodeCollector {
            start_watch: Arc::new(StartWatch {
                probes: probes.clone(),
                v2_root: layout.v2_root.clone(),
                registered: Mutex::new(Vec::new()),
            }),
            probes,
            layout,
            parent: PathBuf::from(namespace.trim_start_matches('/')),
            functions,
            watched: HashMap::new(),
            io_last: HashMap::new(),
            totals,
            metrics,
            warned_watch: false,
            memory_samples: HashMap::new(),
            pressure_dir: Some(PathBuf::from(PSI_DIR)),
            warned_pressure: false,
        };
        c.metrics.set_functions(c.totals.clone());
        c
    }

    /// Reads PSI from `dir` instead of [`PSI_DIR`] (`None`: not at all).
    pub fn with_pressure_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.pressure_dir = dir;
        self
    }

    pub fn bpf_loaded(&self) -> bool {
        self.probes.is_some()
    }

    /// What the driver calls before each Tasks.Start
    /// ([`crate::driver::InstanceDriver::set_start_hook`]).
    pub fn start_hook(&self) -> Arc<StartWatch> {
        self.start_watch.clone()
    }

    /// The start-up of a watched instance so far (as of the last pass).
    pub fn timeline(&self, instance: &str) -> Option<Timeline> {
        let w = self.watched.get(instance)?;
        Some(Timeline {
            function: w.function.clone(),
            registered_ns: w.registered_ns?,
            first_sched_ns: w.last.first_sched_ns,
            first_exec_ns: w.last.first_exec_ns,
            first_response: w.first_response,
        })
    }

    /// The instances now: id → function, from the cgroup directories.
    fn instances(&self) -> HashMap<String, String> {
        let roots = [
            &self.layout.v2_root,
            &self.layout.v1_memory_root,
            &self.layout.v1_blkio_root,
        ];
        let mut out = HashMap::new();
        for root in roots.into_iter().flatten() {
            let Ok(dir) = fs::read_dir(root.join(&self.parent)) else {
                continue;
            };
            for e in dir.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let Some(id) = e.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if let Some(f) = instance_prefix(&id).and_then(|p| self.functions.get(p)) {
                    out.insert(id, f.clone());
                }
            }
        }
        out
    }

    fn instance_dir(&self, root: &Path, id: &str) -> PathBuf {
        root.join(&self.parent).join(id)
    }

    fn memory_bytes(&self, id: &str) -> Option<u64> {
        let read = |p: PathBuf| fs::read_to_string(p).ok()?.trim().parse::<u64>().ok();
        match (&self.layout.v1_memory_root, &self.layout.v2_root) {
            (Some(v1), _) => read(self.instance_dir(v1, id).join("memory.usage_in_bytes")),
            (None, Some(v2)) => read(self.instance_dir(v2, id).join("memory.current")),
            (None, None) => None,
        }
    }

    /// The instance's block I/O counters: from the v1 blkio controller where it is
    /// mounted, else from `io.stat` in the cgroup2 hierarchy (present when the io
    /// controller is enabled there).
    fn io_stats(&self, id: &str) -> Option<IoStats> {
        match (&self.layout.v1_blkio_root, &self.layout.v2_root) {
            (Some(v1), _) => {
                let dir = self.instance_dir(v1, id);
                let bytes = fs::read_to_string(dir.join("blkio.throttle.io_service_bytes")).ok()?;
                let ops = fs::read_to_string(dir.join("blkio.throttle.io_serviced")).ok()?;
                Some(parse_blkio_v1(&bytes, &ops))
            }
            (None, Some(v2)) => {
                let text = fs::read_to_string(self.instance_dir(v2, id).join("io.stat")).ok()?;
                Some(parse_io_stat(&text))
            }
            (None, None) => None,
        }
    }

    /// One collection: take the registered instances, watch the others, read the
    /// counters, close start-up timelines, sum memory and I/O, publish.
    pub fn collect(&mut self) {
        // Before listing: a registered instance's cgroup exists from its registration.
        for r in self.start_watch.take() {
            let w = self.watched.entry(r.instance).or_insert_with(|| Watched {
                function: r.function,
                dir: r.dir,
                cgroup: r.cgroup,
                last: CgroupStats::default(),
                registered_ns: None,
                first_response: None,
            });
            // Found by listing before: its counters (and `last`) go on.
            w.registered_ns = Some(r.at_ns);
            w.first_response = None;
        }
        let instances = self.instances();
        let responses = self.metrics.take_responses();
        if let Some(probes) = &self.probes {
            // Instances not registered: watch their cgroup v2 directory.
            for (id, function) in &instances {
                if self.watched.contains_key(id) {
                    continue;
                }
                let Some(v2) = &self.layout.v2_root else {
                    break;
                };
                let dir = v2.join(&self.parent).join(id);
                let cgroup = match cgroup_id_of(&dir) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(instance = %id, error = %e, "no cgroup v2 directory yet");
                        continue;
                    }
                };
                if let Err(e) = probes.watch(cgroup) {
                    if !self.warned_watch {
                        tracing::warn!(instance = %id, error = %e, "cannot watch an instance's cgroup with eBPF");
                        self.warned_watch = true;
                    }
                    continue;
                }
                self.watched.insert(
                    id.clone(),
                    Watched {
                        function: function.clone(),
                        dir,
                        cgroup,
                        last: CgroupStats::default(),
                        registered_ns: None,
                        first_response: None,
                    },
                );
            }
            // Every watched one: what grew.
            for (id, w) in &mut self.watched {
                match probes.read(w.cgroup) {
                    Ok(Some(now)) => {
                        let t = self.totals.entry(w.function.clone()).or_default();
                        add_delta(t, &w.last, &now);
                        w.last = now;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::debug!(instance = %id, error = %e, "reading eBPF counters"),
                }
            }
            // Start-up timelines: first schedule (read just above, after the answer was
            // recorded) → first answer.
            for r in responses {
                let Some(w) = self.watched.get_mut(&r.instance) else {
                    continue;
                };
                let (Some(registered), None) = (w.registered_ns, w.first_response) else {
                    continue;
                };
                let Some(sched) = w.last.first_sched_ns.filter(|&s| s <= r.at_ns) else {
                    tracing::debug!(instance = %r.instance, "an answer without a first schedule before it");
                    continue;
                };
                w.first_response = Some((r.tier, r.at_ns));
                let secs = (r.at_ns - sched) as f64 / 1e9;
                self.metrics.observe_startup(&w.function, r.tier, secs);
                tracing::debug!(
                    function = %w.function, instance = %r.instance, tier = r.tier.name(),
                    first_schedule_ms = (sched.saturating_sub(registered)) as f64 / 1e6,
                    first_response_ms = (r.at_ns - registered) as f64 / 1e6,
                    "start-up timeline (from just before Tasks.Start)"
                );
            }
            // The gone ones (counted above a last time).
            let gone: Vec<String> = self
                .watched
                .iter()
                .filter(|(_, w)| !w.dir.exists())
                .map(|(id, _)| id.clone())
                .collect();
            for id in gone {
                if let Some(w) = self.watched.remove(&id) {
                    let _ = probes.unwatch(w.cgroup);
                }
            }
        }
        // Block I/O: what each instance's counters grew since the last pass.
        for (id, function) in &instances {
            let Some(now) = self.io_stats(id) else {
                continue;
            };
            let last = self.io_last.insert(id.clone(), now).unwrap_or_default();
            let t = self.totals.entry(function.clone()).or_default();
            t.io.add(&now.since(&last));
        }
        self.io_last.retain(|id, _| instances.contains_key(id));

        let mut out = self.totals.clone();
        for s in out.values_mut() {
            s.memory_bytes = 0;
        }
        for (id, function) in &instances {
            if let Some(b) = self.memory_bytes(id) {
                out.entry(function.clone()).or_default().memory_bytes += b;
                let q = self.memory_samples.entry(function.clone()).or_default();
                if q.len() == MEMORY_SAMPLES {
                    q.pop_front();
                }
                q.push_back(b);
            }
        }
        for (function, s) in out.iter_mut() {
            s.instance_memory_p90_bytes = self.memory_samples.get(function).and_then(memory_p90);
        }
        self.metrics.set_functions(out);
        self.read_pressure();
    }

    fn read_pressure(&mut self) {
        let Some(dir) = &self.pressure_dir else {
            return;
        };
        match read_node_pressure(dir) {
            Ok(p) => self.metrics.set_pressure(Some(p)),
            Err(e) => {
                if !self.warned_pressure {
                    tracing::warn!(error = %e, "no node pressure (PSI): speculative pre-warming is never held back");
                    self.warned_pressure = true;
                }
                self.metrics.set_pressure(None);
            }
        }
    }

    /// Collects every `interval` until `stop` turns true; unwatches every cgroup then.
    pub async fn run(mut self, interval: Duration, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.collect(),
                r = stop.changed() => if r.is_err() || *stop.borrow() { break },
            }
        }
        if let Some(p) = &self.probes {
            let registered = self.start_watch.take();
            for c in self
                .watched
                .values()
                .map(|w| w.cgroup)
                .chain(registered.iter().map(|r| r.cgroup))
            {
                let _ = p.unwatch(c);
            }
        }
    }
}

fn add_delta(t: &mut FunctionNodeStats, last: &CgroupStats, now: &CgroupStats) {
    let d = |a: u64, b: u64| b.saturating_sub(a);
    t.cpu_ns += d(last.cpu_ns, now.cpu_ns);
    t.runq_count += d(last.runq_count, now.runq_count);
    t.runq_total_ns += d(last.runq_total_ns, now.runq_total_ns);
    for (i, b) in t.runq_hist.iter_mut().enumerate() {
        *b += d(last.runq_latency_hist[i], now.runq_latency_hist[i]);
    }
    t.faults_minor += d(last.faults_minor, now.faults_minor);
    t.faults_major += d(last.faults_major, now.faults_major);
    t.execs += d(last.execs, now.execs);
    t.exits += d(last.exits, now.exits);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn ids_name_their_function() {
        assert_eq!(id_prefix("hello world/ü"), "hello-world--");
        assert_eq!(id_prefix("---"), "fn");
        assert_eq!(instance_prefix("hello-0123456789abcdef"), Some("hello"));
        assert_eq!(instance_prefix("a-b-0123456789abcdef"), Some("a-b"));
        assert_eq!(instance_prefix("hello-123"), None);
        assert_eq!(instance_prefix("hello"), None);
    }

    #[test]
    fn finds_the_v1_controllers() {
        let hybrid = "\
34 33 0:29 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 33 0:30 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
36 33 0:31 / /sys/fs/cgroup/memory rw,nosuid shared:14 - cgroup cgroup rw,memory
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
";
        assert_eq!(
            v1_controller_root_in(hybrid, "memory"),
            Some("/sys/fs/cgroup/memory".into())
        );
        assert_eq!(
            v1_controller_root_in(hybrid, "blkio"),
            Some("/sys/fs/cgroup/blkio".into())
        );
        let v2 = "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(v1_controller_root_in(v2, "memory"), None);
        assert_eq!(v1_controller_root_in(v2, "blkio"), None);
    }

    /// Read on this machine (kernel 6.18, cgroup v1 blkio, virtio disk 254:0) from a
    /// cgroup in which `dd` wrote, then read, 1 MiB with O_DIRECT in 64 KiB blocks.
    const V1_IO_SERVICE_BYTES: &str = "\
254:0 Read 1048576
254:0 Write 1048576
254:0 Sync 2097152
254:0 Async 0
254:0 Discard 0
254:0 Total 2097152
Total 2097152
";
    const V1_IO_SERVICED: &str = "\
254:0 Read 16
254:0 Write 16
254:0 Sync 32
254:0 Async 0
254:0 Discard 0
254:0 Total 32
Total 32
";
    /// The example `io.stat` of the kernel's cgroup v2 documentation
    /// (Documentation/admin-guide/cgroup-v2.rst, "IO Interface Files"): two devices.
    const V2_IO_STAT: &str = "\
8:16 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0
8:0 rbytes=90430464 wbytes=299008000 rios=8950 wios=1252 dbytes=50331648 dios=3021
";

    #[test]
    fn parses_v1_blkio_throttle_files() {
        assert_eq!(
            parse_blkio_v1(V1_IO_SERVICE_BYTES, V1_IO_SERVICED),
            IoStats {
                read_bytes: 1048576,
                write_bytes: 1048576,
                read_ops: 16,
                write_ops: 16,
            }
        );
        // What a cgroup without I/O (or a disk blk-throttle is not set up for) shows.
        assert_eq!(parse_blkio_v1("Total 0\n", "Total 0\n"), IoStats::default());
        // Two devices are summed; Sync/Async/Total are not added again.
        let two = format!("{V1_IO_SERVICE_BYTES}8:0 Read 10\n8:0 Write 20\n8:0 Total 30\n");
        let io = parse_blkio_v1(&two, "");
        assert_eq!((io.read_bytes, io.write_bytes), (1048586, 1048596));
    }

    #[test]
    fn parses_v2_io_stat() {
        assert_eq!(
            parse_io_stat(V2_IO_STAT),
            IoStats {
                read_bytes: 1459200 + 90430464,
                write_bytes: 314773504 + 299008000,
                read_ops: 192 + 8950,
                write_ops: 353 + 1252,
            }
        );
        assert_eq!(parse_io_stat(""), IoStats::default());
        // io.cost and other controllers add keys; they are skipped.
        let io = parse_io_stat(
            "8:0 rbytes=5 wbytes=6 rios=1 wios=2 dbytes=0 dios=0 cost.vrate=135.25 cost.usage=8\n",
        );
        assert_eq!((io.read_bytes, io.write_ops), (5, 2));
    }

    /// Without eBPF: `rekindle_bpf_loaded 0`, memory from the cgroup files, and none of
    /// the eBPF families.
    #[test]
    fn without_bpf_memory_comes_from_the_cgroup_files() {
        let tmp = tempfile::tempdir().unwrap();
        let v1 = tmp.path().join("memory");
        let inst = |id: &str, bytes: u64| {
            let d = v1.join("k8s.io").join(id);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("memory.usage_in_bytes"), format!("{bytes}\n")).unwrap();
        };
        inst("hello-0123456789abcdef", 1000);
        inst("hello-fedcba9876543210", 234);
        inst("other-thing", 99); // not an instance id
        inst("bye-0000000000000000", 7); // not a registered function
        let blkio = tmp.path().join("blkio");
        let d = blkio.join("k8s.io/hello-0123456789abcdef");
        fs::create_dir_all(&d).unwrap();
        fs::write(
            d.join("blkio.throttle.io_service_bytes"),
            V1_IO_SERVICE_BYTES,
        )
        .unwrap();
        fs::write(d.join("blkio.throttle.io_serviced"), V1_IO_SERVICED).unwrap();
        let m = Metrics::new();
        let mut c = NodeCollector::new(
            None,
            CgroupLayout {
                v2_root: Some(tmp.path().join("no-unified")),
                v1_memory_root: Some(v1.clone()),
                v1_blkio_root: Some(blkio.clone()),
            },
            "k8s.io",
            ["hello", "idle"],
            m.node.clone(),
        );
        assert!(!c.bpf_loaded());
        c.collect();
        let t = m.encode();
        assert!(t.contains("rekindle_bpf_loaded 0\n"), "{t}");
        assert!(
            t.contains("rekindle_function_memory_bytes{function=\"hello\"} 1234\n"),
            "{t}"
        );
        assert!(
            t.contains("rekindle_function_memory_bytes{function=\"idle\"} 0\n"),
            "{t}"
        );
        for want in [
            "rekindle_function_io_bytes_total{function=\"hello\",direction=\"read\"} 1048576\n",
            "rekindle_function_io_bytes_total{function=\"hello\",direction=\"write\"} 1048576\n",
            "rekindle_function_io_operations_total{function=\"hello\",direction=\"write\"} 16\n",
            "rekindle_function_io_bytes_total{function=\"idle\",direction=\"read\"} 0\n",
        ] {
            assert!(t.contains(want), "{want} missing in:\n{t}");
        }
        assert!(!t.contains("bye"), "{t}");
        assert!(!t.contains("rekindle_function_cpu_seconds"), "{t}");
        assert!(!t.contains("rekindle_function_page_faults"), "{t}");
        assert!(!t.contains("rekindle_function_startup_seconds"), "{t}");

        // The start hook does nothing without probes, and no answer is kept.
        c.start_hook().before_start(
            "hello",
            "hello-fedcba9876543210",
            "/k8s.io/hello-fedcba9876543210",
        );
        m.node
            .first_response("hello-fedcba9876543210", StartTier::Cold, monotonic_ns());
        assert!(m.node.take_responses().is_empty());

        // An instance gone: its memory is no longer counted; its I/O stays in the total.
        fs::remove_dir_all(v1.join("k8s.io/hello-0123456789abcdef")).unwrap();
        fs::remove_dir_all(&d).unwrap();
        c.collect();
        let hello = m.node.function("hello").unwrap();
        assert_eq!(hello.memory_bytes, 234);
        assert_eq!(hello.io.read_bytes, 1048576);
        assert!(c.timeline("hello-fedcba9876543210").is_none());
    }

    /// Memory per instance: the 90th percentile of the per-instance reads, not the sum;
    /// and PSI from the pressure directory, or none (said once) without it.
    #[test]
    fn memory_per_instance_and_node_pressure_are_published() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("unified");
        let set = |id: &str, mb: u64| {
            let d = root.join("k8s.io").join(id);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("memory.current"), format!("{}\n", mb << 20)).unwrap();
        };
        let psi = tmp.path().join("pressure");
        fs::create_dir_all(&psi).unwrap();
        fs::write(
            psi.join("cpu"),
            "some avg10=95.10 avg60=50.00 avg300=10.00 total=1\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        )
        .unwrap();
        fs::write(
            psi.join("memory"),
            "some avg10=1.50 avg60=0.00 avg300=0.00 total=2\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        )
        .unwrap();
        let m = Metrics::new();
        let mut c = NodeCollector::new(
            None,
            CgroupLayout {
                v2_root: Some(root.clone()),
                v1_memory_root: None,
                v1_blkio_root: None,
            },
            "k8s.io",
            ["hello"],
            m.node.clone(),
        )
        .with_pressure_dir(Some(psi.clone()));
        // Nine instances at 100 MB, one just restored at 10 MB, one at 300 MB.
        for i in 0..9 {
            set(&format!("hello-{i:016x}"), 100);
        }
        set("hello-00000000000000aa", 10);
        set("hello-00000000000000bb", 300);
        c.collect();
        let hello = m.node.function("hello").unwrap();
        assert_eq!(hello.memory_bytes, (9 * 100 + 10 + 300) << 20);
        // p90 of 11 reads: between the 100s and the 300 (linear interpolation).
        assert_eq!(hello.instance_memory_p90_bytes, Some(100 << 20));
        let p = m.node.pressure().expect("PSI read");
        assert_eq!((p.cpu_some_pct, p.memory_some_pct), (95.1, 1.5));
        let t = m.encode();
        for want in [
            "rekindle_node_pressure{resource=\"cpu\"} 95.1\n",
            "rekindle_node_pressure{resource=\"memory\"} 1.5\n",
            "rekindle_function_instance_memory_bytes{function=\"hello\"} 104857600\n",
        ] {
            assert!(t.contains(want), "{want} missing in:\n{t}");
        }
        // The window keeps the last reads: the big ones take over.
        for _ in 0..(MEMORY_SAMPLES / 11 + 1) {
            for i in 0..9 {
                set(&format!("hello-{i:016x}"), 400);
            }
            c.collect();
        }
        assert_eq!(
            m.node.function("hello").unwrap().instance_memory_p90_bytes,
            Some(400 << 20)
        );
        // No PSI: nothing published, and the manager's gate stays open.
        fs::remove_dir_all(&psi).unwrap();
        c.collect();
        assert_eq!(m.node.pressure(), None);
        assert!(!m.encode().contains("rekindle_node_pressure"));
    }

    #[test]
    fn memory_p90_interpolates_and_is_none_without_reads() {
        assert_eq!(memory_p90(&VecDeque::new()), None);
        assert_eq!(memory_p90(&VecDeque::from(vec![7])), Some(7));
        let v: VecDeque<u64> = (1..=11).map(|x| x * 10).collect();
        assert_eq!(memory_p90(&v), Some(100));
    }

    /// A cgroup v2 host (no v1 controllers): memory from `memory.current`, I/O from
    /// `io.stat`, counted as it grows and kept when the instance goes.
    #[test]
    fn on_cgroup_v2_memory_and_io_come_from_the_unified_files() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("k8s.io/hello-0123456789abcdef");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("memory.current"), "4096\n").unwrap();
        fs::write(d.join("io.stat"), V2_IO_STAT).unwrap();
        let m = Metrics::new();
        let mut c = NodeCollector::new(
            None,
            CgroupLayout {
                v2_root: Some(tmp.path().to_path_buf()),
                v1_memory_root: None,
                v1_blkio_root: None,
            },
            "/k8s.io",
            ["hello"],
            m.node.clone(),
        );
        c.collect();
        let first = parse_io_stat(V2_IO_STAT);
        let hello = m.node.function("hello").unwrap();
        assert_eq!((hello.memory_bytes, hello.io), (4096, first));
        // The counters grow by 1000 read bytes and 1 read: the total follows.
        fs::write(
            d.join("io.stat"),
            V2_IO_STAT
                .replace("rbytes=1459200", "rbytes=1460200")
                .replace("rios=192", "rios=193"),
        )
        .unwrap();
        c.collect();
        let io = m.node.function("hello").unwrap().io;
        assert_eq!(
            (io.read_bytes, io.read_ops, io.write_bytes),
            (
                first.read_bytes + 1000,
                first.read_ops + 1,
                first.write_bytes
            )
        );
        fs::remove_dir_all(&d).unwrap();
        c.collect();
        let hello = m.node.function("hello").unwrap();
        assert_eq!((hello.memory_bytes, hello.io), (0, io));
        let t = m.encode();
        assert!(
            t.contains(&format!(
                "rekindle_function_io_operations_total{{function=\"hello\",direction=\"read\"}} {}\n",
                first.read_ops + 1
            )),
            "{t}"
        );
    }
}
