//! The scheduler hook's answers as pure functions of (node snapshot, tier latencies,
//! request): no clock, no I/O.
//!
//! - **Tier**: hot when an idle running instance exists (running minus busy: a busy
//!   instance, hot or warm, is not counted idle), else warm when a frozen instance exists,
//!   else a restore from the staged image, else from the image on disk, else a cold start.
//! - **Expected start**: the p50 of that tier in the [`LatencyTable`] the agent's pool
//!   policy plans with (the daemon passes its `RunOptions::latencies`; the source is in
//!   [`LatencyTable::source`] and in `NodeState.latency_source`).
//! - **Free memory**: the node memory budget (`memory_budget_mb`) minus what every pool
//!   holds (instances, starts in flight, staged images: [`FunctionSnapshot::used_bytes`]);
//!   without a budget, the kernel's `MemAvailable` as the snapshot gives it.
//! - **Fits**: a hot or warm start takes no new memory; a restore or cold start needs
//!   `max(request.memory_bytes, the function's memory_mb)` free. CPU: the request must not
//!   exceed the node's CPUs × 1000 (the agent does not account CPU per instance yet).
//! - **Score** ([`score`]): 0 when the request does not fit or the function is unknown,
//!   else `100 - round(100 · ln(1 + ms) / ln(1 + 10 000))`, clamped to 1..=100: strictly
//!   decreasing in the expected latency on a log scale (hot 100, 5 ms 81, 37 ms 61,
//!   200 ms 42, 1 s 25, ≥ 10 s 1).

use crate::pool::{ImageState, STAGED_MEMORY_FACTOR};
use crate::sim::LatencyTable;

use super::pb;

const MB: f64 = 1024.0 * 1024.0;

/// Latency (ms) at which the score reaches its floor of 1.
pub const SCORE_FLOOR_MS: f64 = 10_000.0;

/// One function's pool, as the hook sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSnapshot {
    pub function: String,
    /// The instance's memory (its cgroup limit, what the budget counts), MB.
    pub memory_mb: f64,
    /// Running instances (busy ones included), frozen ones, busy ones, starts in flight.
    pub hot: u32,
    pub warm: u32,
    pub busy: u32,
    pub starting: u32,
    pub image: ImageState,
}

impl FunctionSnapshot {
    /// The tier a start would use now.
    pub fn tier(&self) -> pb::Tier {
        if self.hot > self.busy {
            pb::Tier::Hot
        } else if self.warm > 0 {
            pb::Tier::Warm
        } else {
            match self.image {
                ImageState::Staged => pb::Tier::RestoreStaged,
                ImageState::Disk => pb::Tier::RestoreDisk,
                ImageState::None => pb::Tier::Cold,
            }
        }
    }

    /// Memory the pool holds now: instances, starts in flight and the staged image (as
    /// [`crate::pool::FunctionView::memory_now`] counts it), bytes.
    pub fn used_bytes(&self) -> u64 {
        let loaded = (self.hot + self.warm + self.starting) as f64 * self.memory_mb;
        let staged = if self.image == ImageState::Staged {
            self.memory_mb * STAGED_MEMORY_FACTOR
        } else {
            0.0
        };
        ((loaded + staged) * MB).round() as u64
    }
}

/// The node, as the hook sees it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NodeSnapshot {
    pub functions: Vec<FunctionSnapshot>,
    /// The node memory budget of the pools, bytes (`memory_budget_mb`).
    pub memory_budget_bytes: Option<u64>,
    /// The kernel's MemAvailable, bytes: free memory when there is no budget.
    pub available_bytes: Option<u64>,
    /// The node's CPUs × 1000 (unknown: CPU requests always fit).
    pub cpu_capacity_millis: Option<u64>,
}

impl NodeSnapshot {
    pub fn function(&self, name: &str) -> Option<&FunctionSnapshot> {
        self.functions.iter().find(|f| f.function == name)
    }

    /// Budget minus the pools; without a budget, MemAvailable (0 if unknown).
    pub fn free_memory_bytes(&self) -> u64 {
        match self.memory_budget_bytes {
            Some(b) => b.saturating_sub(self.functions.iter().map(|f| f.used_bytes()).sum::<u64>()),
            None => self.available_bytes.unwrap_or(0),
        }
    }
}

/// The p50 start latency of a tier, ms (0 for UNKNOWN_FUNCTION).
pub fn expected_start_ms(tier: pb::Tier, lat: &LatencyTable) -> f64 {
    match tier {
        pb::Tier::Hot => lat.hot.p50_ms,
        pb::Tier::Warm => lat.warm.p50_ms,
        pb::Tier::RestoreStaged => lat.staged.p50_ms,
        pb::Tier::RestoreDisk => lat.disk.p50_ms,
        pb::Tier::Cold => lat.cold.p50_ms,
        pb::Tier::Unspecified | pb::Tier::UnknownFunction => 0.0,
    }
}

/// 0 when the request does not fit; else 1..=100, decreasing in `expected_ms` (log scale,
/// 100 at 0 ms, 1 from [`SCORE_FLOOR_MS`] on).
pub fn score(expected_ms: f64, fits: bool) -> u32 {
    if !fits {
        return 0;
    }
    let ms = if expected_ms.is_finite() {
        expected_ms.max(0.0)
    } else {
        SCORE_FLOOR_MS
    };
    let s = 100.0 - (100.0 * (1.0 + ms).ln() / (1.0 + SCORE_FLOOR_MS).ln()).round();
    s.clamp(1.0, 100.0) as u32
}

/// Where the instance to place would start on this node, and how well it fits.
pub fn placement(
    node: &NodeSnapshot,
    lat: &LatencyTable,
    req: &pb::PlacementRequest,
) -> pb::PlacementResponse {
    let free = node.free_memory_bytes();
    let Some(f) = node.function(&req.function) else {
        return pb::PlacementResponse {
            tier: pb::Tier::UnknownFunction as i32,
            expected_start_ms: 0.0,
            free_memory_bytes: free,
            score: 0,
            reason: format!(
                "function {:?} is not registered on this node: it cannot start here",
                req.function
            ),
        };
    };
    let tier = f.tier();
    let ms = expected_start_ms(tier, lat);
    let mut why = match tier {
        pb::Tier::Hot => format!("{} idle running instance(s)", f.hot - f.busy),
        pb::Tier::Warm => format!("{} frozen instance(s): a thaw", f.warm),
        pb::Tier::RestoreStaged => "a restore from the staged image".to_string(),
        pb::Tier::RestoreDisk => "a restore from the image on disk".to_string(),
        _ => "no checkpoint image yet: a cold start".to_string(),
    };
    why.push_str(&format!(", p50 {ms} ms"));
    let mut fits = true;
    if !matches!(tier, pb::Tier::Hot | pb::Tier::Warm) {
        let need = req.memory_bytes.max((f.memory_mb * MB).round() as u64);
        if need > free {
            fits = false;
            why.push_str(&format!(
                "; does not fit: needs {need} bytes of memory, {free} free"
            ));
        }
    }
    if let Some(cap) = node.cpu_capacity_millis {
        if req.cpu_millis > cap {
            fits = false;
            why.push_str(&format!(
                "; does not fit: {} CPU millis requested, the node has {cap}",
                req.cpu_millis
            ));
        }
    }
    pb::PlacementResponse {
        tier: tier as i32,
        expected_start_ms: ms,
        free_memory_bytes: free,
        score: score(ms, fits),
        reason: why,
    }
}

/// The node's state for `WatchNode`, without `generated_at` (the caller's clock).
pub fn node_state(node: &NodeSnapshot, lat: &LatencyTable) -> pb::NodeState {
    pb::NodeState {
        functions: node
            .functions
            .iter()
            .map(|f| {
                let tier = f.tier();
                pb::FunctionState {
                    function: f.function.clone(),
                    tier: tier as i32,
                    expected_start_ms: expected_start_ms(tier, lat),
                    hot: f.hot,
                    warm: f.warm,
                    busy: f.busy,
                    starting: f.starting,
                    memory_bytes: f.used_bytes(),
                }
            })
            .collect(),
        free_memory_bytes: node.free_memory_bytes(),
        memory_budget_bytes: node.memory_budget_bytes.unwrap_or(0),
        generated_at: None,
        latency_source: lat.source.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn f(name: &str, hot: u32, warm: u32, busy: u32, image: ImageState) -> FunctionSnapshot {
        FunctionSnapshot {
            function: name.into(),
            memory_mb: 256.0,
            hot,
            warm,
            busy,
            starting: 0,
            image,
        }
    }

    fn node(fns: Vec<FunctionSnapshot>) -> NodeSnapshot {
        NodeSnapshot {
            functions: fns,
            memory_budget_bytes: Some(4 * GIB),
            available_bytes: Some(123),
            cpu_capacity_millis: Some(2000),
        }
    }

    fn req(function: &str, memory_bytes: u64) -> pb::PlacementRequest {
        pb::PlacementRequest {
            function: function.into(),
            cpu_millis: 500,
            memory_bytes,
        }
    }

    fn tier(r: &pb::PlacementResponse) -> pb::Tier {
        pb::Tier::try_from(r.tier).unwrap()
    }

    #[test]
    fn tiers_fastest_first() {
        let lat = LatencyTable::placeholder();
        let cases = [
            (f("a", 1, 1, 0, ImageState::Staged), pb::Tier::Hot, 0.0),
            // the only running instance is busy: the frozen one is next
            (f("a", 1, 1, 1, ImageState::Staged), pb::Tier::Warm, 5.0),
            (
                f("a", 1, 0, 1, ImageState::Staged),
                pb::Tier::RestoreStaged,
                37.0,
            ),
            (
                f("a", 0, 0, 0, ImageState::Disk),
                pb::Tier::RestoreDisk,
                200.0,
            ),
            (f("a", 0, 0, 0, ImageState::None), pb::Tier::Cold, 1000.0),
        ];
        for (fs, want, ms) in cases {
            let r = placement(&node(vec![fs.clone()]), &lat, &req("a", 0));
            assert_eq!(tier(&r), want, "{fs:?}: {}", r.reason);
            assert_eq!(r.expected_start_ms, ms);
            assert!(r.score > 0, "{r:?}");
        }
    }

    #[test]
    fn score_is_monotone_in_latency_and_zero_when_not_fitting() {
        assert_eq!(score(0.0, true), 100);
        assert_eq!(score(0.0, false), 0);
        assert_eq!(score(SCORE_FLOOR_MS, true), 1);
        assert_eq!(score(1e9, true), 1);
        assert_eq!(score(f64::NAN, true), 1);
        let mut last = 101;
        for ms in [0.0, 1.0, 5.0, 37.0, 135.0, 200.0, 1000.0, 3000.0, 10_000.0] {
            let s = score(ms, true);
            assert!(s <= last && (1..=100).contains(&s), "{ms} ms: {s}");
            last = s;
        }
        // the placeholder tiers are strictly ordered
        let lat = LatencyTable::placeholder();
        let s: Vec<u32> = [
            pb::Tier::Hot,
            pb::Tier::Warm,
            pb::Tier::RestoreStaged,
            pb::Tier::RestoreDisk,
            pb::Tier::Cold,
        ]
        .iter()
        .map(|&t| score(expected_start_ms(t, &lat), true))
        .collect();
        assert_eq!(s, vec![100, 81, 61, 42, 25]);
    }

    #[test]
    fn free_memory_is_the_budget_minus_the_pools() {
        let mut a = f("a", 2, 1, 0, ImageState::Staged);
        a.starting = 1;
        let n = node(vec![a.clone(), f("b", 0, 0, 0, ImageState::Disk)]);
        let used = (4.0 * 256.0 + 256.0 * STAGED_MEMORY_FACTOR) * MB;
        assert_eq!(a.used_bytes(), used.round() as u64);
        assert_eq!(n.free_memory_bytes(), 4 * GIB - used.round() as u64);
        // over budget: 0, not an underflow
        let mut big = node(vec![f("c", 40, 0, 0, ImageState::None)]);
        assert_eq!(big.free_memory_bytes(), 0);
        // no budget: the kernel's MemAvailable
        big.memory_budget_bytes = None;
        assert_eq!(big.free_memory_bytes(), 123);
    }

    #[test]
    fn a_request_that_does_not_fit_scores_zero_unless_an_instance_is_loaded() {
        let lat = LatencyTable::placeholder();
        // 16 × 256 MB = the whole 4 GiB budget
        let full = |fs: FunctionSnapshot| {
            let mut n = node(vec![fs, f("filler", 16, 0, 16, ImageState::None)]);
            n.functions[1].hot = 16;
            n
        };
        let r = placement(&full(f("a", 0, 0, 0, ImageState::Disk)), &lat, &req("a", 1));
        assert_eq!(tier(&r), pb::Tier::RestoreDisk);
        assert_eq!((r.score, r.free_memory_bytes), (0, 0));
        assert!(r.reason.contains("does not fit"), "{}", r.reason);
        // a frozen instance holds its memory already
        let r = placement(&full(f("a", 0, 1, 0, ImageState::Disk)), &lat, &req("a", 1));
        assert_eq!((tier(&r), r.score), (pb::Tier::Warm, 81));
        // the request's memory counts when larger than the function's own
        let n = node(vec![f("a", 0, 0, 0, ImageState::None)]);
        assert!(placement(&n, &lat, &req("a", 4 * GIB)).score > 0);
        assert_eq!(placement(&n, &lat, &req("a", 4 * GIB + 1)).score, 0);
        // CPU beyond the node's
        let mut r2 = req("a", 0);
        r2.cpu_millis = 2001;
        let r = placement(&n, &lat, &r2);
        assert_eq!(r.score, 0);
        assert!(r.reason.contains("CPU"), "{}", r.reason);
    }

    #[test]
    fn an_unknown_function_cannot_start_here() {
        let lat = LatencyTable::placeholder();
        let r = placement(&node(vec![]), &lat, &req("nope", 0));
        assert_eq!(tier(&r), pb::Tier::UnknownFunction);
        assert_eq!(r.score, 0);
        assert_eq!(r.free_memory_bytes, 4 * GIB);
        assert!(r.reason.contains("not registered"), "{}", r.reason);
    }

    #[test]
    fn node_state_lists_every_function() {
        let lat = LatencyTable::placeholder();
        let n = node(vec![
            f("a", 1, 0, 0, ImageState::Disk),
            f("b", 0, 0, 0, ImageState::None),
        ]);
        let s = node_state(&n, &lat);
        assert_eq!(s.functions.len(), 2);
        assert_eq!(s.functions[0].tier, pb::Tier::Hot as i32);
        assert_eq!(s.functions[1].tier, pb::Tier::Cold as i32);
        assert_eq!(s.functions[1].expected_start_ms, 1000.0);
        assert_eq!(s.memory_budget_bytes, 4 * GIB);
        assert_eq!(s.free_memory_bytes, 4 * GIB - 256 * (1 << 20));
        assert_eq!(s.latency_source, lat.source);
    }
}
