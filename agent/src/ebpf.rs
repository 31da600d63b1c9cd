//! The node collector: per-function CPU time, run-queue latency, page faults and
//! exec/exit counts from the eBPF probes ([`rekindle::bpf`]), and memory from the
//! cgroup files, exported as the `rekindle_function_*` metrics (see [`crate::metrics`]).
//!
//! At start-up the agent loads the probes; if that fails (no privileges, no kernel BTF,
//! the verifier) it logs one warning with the reason, sets `rekindle_bpf_loaded 0`, and
//! goes on with cgroup statistics alone. Then every interval [`NodeCollector::collect`]:
//!
//! - lists the instances' cgroups: the driver puts instance `<id>` in cgroup
//!   `/<namespace>/<id>` (`ContainerdDriver::cgroups_path`), so the instances are the
//!   directories under `<namespace>` in the cgroup2 hierarchy and, on a v1 host, in the
//!   memory controller's; an instance id is `<function>-<16 hex>` (the function's name
//!   reduced as the driver does), which names its function;
//! - watches each new instance's cgroup v2 id (the inode of its directory under the
//!   cgroup2 mount, which runc also creates on a v1 hybrid host: see `bpf/README.md`),
//!   reads the counters of every watched one and adds what grew since the last read to
//!   its function's totals; an instance whose cgroup went away is read a last time and
//!   unwatched, so the totals keep what it did;
//! - sums the instances' memory (`memory.usage_in_bytes` on v1, `memory.current` on v2).
//!
//! Counting starts when the collector first sees a cgroup: what an instance did before
//! (at most one interval of its start) is not counted.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rekindle::bpf::{cgroup2_root, cgroup_id_of, CgroupId, CgroupStats, Probes};
use tokio::sync::watch;

use crate::metrics::{FunctionNodeStats, NodeMetrics};

/// Where the cgroup hierarchies the collector reads are mounted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupLayout {
    /// The cgroup2 mount (`/sys/fs/cgroup` on a v2 host, `/sys/fs/cgroup/unified` on a
    /// v1 hybrid one): cgroup ids for eBPF, and `memory.current` when there is no v1
    /// memory controller.
    pub v2_root: Option<PathBuf>,
    /// The cgroup v1 memory controller's mount (`/sys/fs/cgroup/memory`), if any.
    pub v1_memory_root: Option<PathBuf>,
}

impl CgroupLayout {
    /// This host's layout, from `/proc/self/mountinfo`.
    pub fn detect() -> CgroupLayout {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        CgroupLayout {
            v2_root: cgroup2_root().ok(),
            v1_memory_root: v1_memory_root_in(&mountinfo),
        }
    }
}

/// The mount point of the cgroup v1 hierarchy that has the memory controller.
fn v1_memory_root_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut r = right.split(' ');
        let (fstype, super_opts) = (r.next()?, r.nth(1)?);
        (fstype == "cgroup" && super_opts.split(',').any(|o| o == "memory"))
            .then(|| left.split(' ').nth(4).map(PathBuf::from))
            .flatten()
    })
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

struct Watched {
    function: String,
    cgroup: CgroupId,
    last: CgroupStats,
}

/// Reads the probes and the cgroup files; see the module doc.
pub struct NodeCollector {
    probes: Option<Probes>,
    layout: CgroupLayout,
    /// The instances' parent cgroup, relative to a hierarchy's root (the namespace).
    parent: PathBuf,
    /// Instance-id prefix → function name.
    functions: HashMap<String, String>,
    /// By instance id.
    watched: HashMap<String, Watched>,
    /// eBPF counters summed per function (memory is filled in per collection).
    totals: BTreeMap<String, FunctionNodeStats>,
    metrics: Arc<NodeMetrics>,
    warned_watch: bool,
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
                tracing::info!("eBPF probes loaded: per-function CPU, run-queue latency, page faults, exec/exit");
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
        let functions: HashMap<String, String> = functions
            .into_iter()
            .map(|f| (id_prefix(f), f.to_string()))
            .collect();
        let totals = functions
            .values()
            .map(|f| (f.clone(), FunctionNodeStats::default()))
            .collect();
        let c = NodeCollector {
            probes,
            layout,
            parent: PathBuf::from(namespace.trim_start_matches('/')),
            functions,
            watched: HashMap::new(),
            totals,
            metrics,
            warned_watch: false,
        };
        c.metrics.set_functions(c.totals.clone());
        c
    }

    pub fn bpf_loaded(&self) -> bool {
        self.probes.is_some()
    }

    /// The instances now: id → function, from the cgroup directories.
    fn instances(&self) -> HashMap<String, String> {
        let roots = [&self.layout.v2_root, &self.layout.v1_memory_root];
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

    fn memory_bytes(&self, id: &str) -> Option<u64> {
        let read = |p: PathBuf| fs::read_to_string(p).ok()?.trim().parse::<u64>().ok();
        let dir = |root: &Path| root.join(&self.parent).join(id);
        match (&self.layout.v1_memory_root, &self.layout.v2_root) {
            (Some(v1), _) => read(dir(v1).join("memory.usage_in_bytes")),
            (None, Some(v2)) => read(dir(v2).join("memory.current")),
            (None, None) => None,
        }
    }

    /// One collection: watch new instances, read the counters, sum memory, publish.
    pub fn collect(&mut self) {
        let instances = self.instances();
        if let Some(probes) = &self.probes {
            // New instances: watch their cgroup v2 directory.
            for (id, function) in &instances {
                if self.watched.contains_key(id) {
                    continue;
                }
                let Some(v2) = &self.layout.v2_root else {
                    break;
                };
                let cgroup = match cgroup_id_of(v2.join(&self.parent).join(id)) {
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
                        cgroup,
                        last: CgroupStats::default(),
                    },
                );
            }
            // Every watched one: what grew; the gone ones a last time.
            let mut gone = Vec::new();
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
                if !instances.contains_key(id) {
                    gone.push(id.clone());
                }
            }
            for id in gone {
                if let Some(w) = self.watched.remove(&id) {
                    let _ = probes.unwatch(w.cgroup);
                }
            }
        }
        let mut out = self.totals.clone();
        for s in out.values_mut() {
            s.memory_bytes = 0;
        }
        for (id, function) in &instances {
            if let Some(b) = self.memory_bytes(id) {
                out.entry(function.clone()).or_default().memory_bytes += b;
            }
        }
        self.metrics.set_functions(out);
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
            for w in self.watched.values() {
                let _ = p.unwatch(w.cgroup);
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
    fn finds_the_v1_memory_controller() {
        let hybrid = "\
34 33 0:29 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 33 0:30 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
36 33 0:31 / /sys/fs/cgroup/memory rw,nosuid shared:14 - cgroup cgroup rw,memory
";
        assert_eq!(
            v1_memory_root_in(hybrid),
            Some("/sys/fs/cgroup/memory".into())
        );
        assert_eq!(
            v1_memory_root_in("30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"),
            None
        );
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
        let m = Metrics::new();
        let mut c = NodeCollector::new(
            None,
            CgroupLayout {
                v2_root: Some(tmp.path().join("no-unified")),
                v1_memory_root: Some(v1.clone()),
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
        assert!(!t.contains("bye"), "{t}");
        assert!(!t.contains("rekindle_function_cpu_seconds"), "{t}");
        assert!(!t.contains("rekindle_function_page_faults"), "{t}");

        // An instance gone: its memory is no longer counted.
        fs::remove_dir_all(v1.join("k8s.io/hello-0123456789abcdef")).unwrap();
        c.collect();
        assert_eq!(m.node.function("hello").unwrap().memory_bytes, 234);
    }
}
