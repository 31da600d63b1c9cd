//! The spec's cgroup limits and device rules, written by the shim.
//!
//! The direct engine restores with CRIU told to ignore cgroups, so nothing
//! else creates the container's cgroups or writes its limits: this module does
//! what runc 1.1's cgroup v1 "fs" manager (and, for the mapping, its v2 "fs2"
//! manager) does. Limits always come from the OCI spec (or a Task.Update),
//! never from the checkpoint image, which is untrusted.
//!
//! The work is split in two:
//! - pure mapping, [`writes`] and [`device_rules`]: which file gets which
//!   value, in which order, and which values are refused;
//! - I/O, [`hierarchies`], [`create`], [`apply`] and [`remove`].
//!
//! Ignored, as runc 1.1 ignores them: kernel and kernel TCP memory, cpu burst,
//! `memory.useHierarchy` / `checkBeforeUpdate`; on cgroup v2 also swappiness,
//! `disableOOMKiller` and the network (net_cls/net_prio) settings, which have
//! no v2 files.

use std::collections::HashMap;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType, LinuxResources, LinuxThrottleDevice};
use tracing::{debug, warn};

use crate::cgroups::unescape_mountinfo;

/// Which cgroup file layout the limits are written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// cgroup v1: one hierarchy per (group of) controller(s); also the
    /// "hybrid" layout, where cgroup2 is mounted but holds no controllers.
    V1,
    /// cgroup v2 only: one unified hierarchy holding every controller.
    V2,
}

/// One value to write into one file of the container's cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    /// The v1 controller whose hierarchy holds the file ("memory", "cpu",
    /// "cpuset", "pids", "blkio", "hugetlb", "net_cls", "net_prio", "rdma"),
    /// or "" for the cgroup2 unified hierarchy.
    pub controller: &'static str,
    /// The file name inside the cgroup directory.
    pub file: String,
    /// What to write.
    pub value: String,
}

/// A mounted cgroup hierarchy, from mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where it is mounted, e.g. "/sys/fs/cgroup/cpu,cpuacct".
    pub mount_point: PathBuf,
    /// The cgroup mounted there (mountinfo's root field, "/" outside a cgroup
    /// namespace or bind mount).
    pub root: PathBuf,
    /// v1: its controllers from the super options ("cpu", "cpuacct",
    /// "name=systemd"); empty for cgroup2.
    pub controllers: Vec<String>,
    /// Whether this is the cgroup2 (unified) hierarchy.
    pub v2: bool,
}

/// Why a cgroup could not be created or its resources not applied.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A value of the spec the kernel (or runc) would refuse.
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    /// Something the direct engine cannot do (yet); the caller falls back to
    /// a runc restore.
    #[error("not supported by the direct engine: {0}")]
    Unsupported(String),
    /// A cgroupsPath that is not a plain cgroupfs absolute path.
    #[error("invalid cgroupsPath {path:?}: {reason}")]
    CgroupsPath { path: String, reason: &'static str },
    /// A limit is set for a controller no hierarchy holds.
    #[error("cgroup controller {controller:?} is not mounted: cannot write {value:?} to {file}")]
    NotMounted {
        controller: String,
        file: String,
        value: String,
    },
    /// `dirs` does not match `hierarchies` one to one.
    #[error("{dirs} cgroup directories for {hierarchies} hierarchies")]
    Mismatch { dirs: usize, hierarchies: usize },
    #[error("create cgroup {}: {source}", path.display())]
    Create { path: PathBuf, source: io::Error },
    #[error("read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("write {value:?} to {}: {source}", path.display())]
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// runc 1.1's default device allow list (libcontainer/specconv
/// AllowedDevices), appended after the spec's own rules as runc does.
pub const DEFAULT_ALLOWED_DEVICES: [&str; 11] = [
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",    // /dev/null
    "c 1:8 rwm",    // /dev/random
    "c 1:7 rwm",    // /dev/full
    "c 5:0 rwm",    // /dev/tty
    "c 1:5 rwm",    // /dev/zero
    "c 1:9 rwm",    // /dev/urandom
    "c 136:* rwm",  // /dev/pts/*
    "c 5:2 rwm",    // /dev/ptmx
    "c 10:200 rwm", // /dev/net/tun
];

/// The v1 device cgroup rules, in the order to write them: deny everything
/// ("a"), then the spec's `linux.resources.devices` in order, then runc's
/// default allow list. `true` means devices.allow, `false` devices.deny.
///
/// Rules are rendered as given (type default "a", major/minor default "*",
/// access default "rwm"); [`writes`] with [`Layout::V1`] is what refuses the
/// ones the kernel cannot take, and [`apply`] calls it first.
pub fn device_rules(res: Option<&LinuxResources>) -> Vec<(bool, String)> {
    let mut rules = vec![(false, "a".to_string())];
    if let Some(devices) = res.and_then(|r| r.devices().as_ref()) {
        rules.extend(devices.iter().map(|d| (d.allow(), device_rule(d))));
    }
    rules.extend(
        DEFAULT_ALLOWED_DEVICES
            .iter()
            .map(|r| (true, r.to_string())),
    );
    rules
}

fn device_rule(d: &LinuxDeviceCgroup) -> String {
    let num = |n: Option<i64>| n.map_or_else(|| "*".to_string(), |n| n.to_string());
    format!(
        "{} {}:{} {}",
        d.typ().unwrap_or_default().as_str(),
        num(d.major()),
        num(d.minor()),
        d.access().as_deref().unwrap_or("rwm")
    )
}

fn check_device(i: usize, d: &LinuxDeviceCgroup) -> Result<(), Error> {
    let field = format!("linux.resources.devices[{i}]");
    match d.typ().unwrap_or_default() {
        LinuxDeviceType::A | LinuxDeviceType::B | LinuxDeviceType::C => {}
        t => {
            return Err(invalid(
                field,
                format!(
                    "device type {:?} cannot be used in a device cgroup",
                    t.as_str()
                ),
            ))
        }
    }
    if d.major().is_some_and(|n| n < 0) || d.minor().is_some_and(|n| n < 0) {
        return Err(invalid(field, "negative major or minor"));
    }
    if let Some(access) = d.access() {
        let ok = !access.is_empty()
            && access.len() <= 3
            && access.chars().all(|c| matches!(c, 'r' | 'w' | 'm'))
            && access
                .chars()
                .collect::<std::collections::HashSet<_>>()
                .len()
                == access.len();
        if !ok {
            return Err(invalid(
                field,
                format!("access {access:?} is not made of r, w, m"),
            ));
        }
    }
    Ok(())
}

/// The files to write for `res`, in order.
///
/// Mirrors runc 1.1 (`0` or absent means "leave as is", `-1` unlimited) and
/// refuses what the kernel or runc would refuse, naming the spec field.
///
/// On v1, memory.limit_in_bytes comes before memory.memsw.limit_in_bytes and
/// cpu.cfs_period_us before cpu.cfs_quota_us; the kernel refuses the first of
/// a pair when the new value does not fit the old second one, and [`apply`]
/// then writes the pair the other way round (what runc achieves by reading the
/// current limit first).
///
/// On v2, device rules need an eBPF program, which the direct engine does not
/// install yet: a spec with device rules is [`Error::Unsupported`], and
/// [`apply`] refuses v2 altogether because runc's default allow list would
/// need one too.
pub fn writes(res: &LinuxResources, layout: Layout) -> Result<Vec<Write>, Error> {
    match layout {
        Layout::V1 => writes_v1(res),
        Layout::V2 => writes_v2(res),
    }
}

struct Out(Vec<Write>);

impl Out {
    fn push(&mut self, controller: &'static str, file: impl Into<String>, value: impl ToString) {
        self.0.push(Write {
            controller,
            file: file.into(),
            value: value.to_string(),
        });
    }
}

/// Memory values checked: (limit, swap, reservation), 0 = unset, -1 = unlimited.
fn memory(res: &LinuxResources) -> Result<(i64, i64, i64), Error> {
    let Some(m) = res.memory() else {
        return Ok((0, 0, 0));
    };
    let limit = m.limit().unwrap_or(0);
    let swap = m.swap().unwrap_or(0);
    let reservation = m.reservation().unwrap_or(0);
    for (name, v) in [
        ("limit", limit),
        ("swap", swap),
        ("reservation", reservation),
    ] {
        if v < -1 {
            return Err(invalid(
                format!("linux.resources.memory.{name}"),
                format!("{v} (must be -1 for unlimited or a number of bytes)"),
            ));
        }
    }
    if swap > 0 {
        if limit <= 0 {
            return Err(invalid(
                "linux.resources.memory.swap",
                "a swap limit needs a memory limit",
            ));
        }
        if swap < limit {
            return Err(invalid(
                "linux.resources.memory.swap",
                format!("{swap} is below the memory limit {limit} (swap counts memory+swap)"),
            ));
        }
    }
    Ok((limit, swap, reservation))
}

fn swappiness(res: &LinuxResources) -> Result<Option<u64>, Error> {
    match res.memory().as_ref().and_then(|m| m.swappiness()) {
        // Go's int64(-1) read as an unsigned number: runc's "unset".
        None | Some(u64::MAX) => Ok(None),
        Some(v) if v <= 100 => Ok(Some(v)),
        Some(v) => Err(invalid(
            "linux.resources.memory.swappiness",
            format!("{v} (valid range is 0-100)"),
        )),
    }
}

/// CPU values checked: (shares, quota, period), 0 = unset.
fn cpu(res: &LinuxResources) -> Result<(u64, i64, u64), Error> {
    let Some(c) = res.cpu() else {
        return Ok((0, 0, 0));
    };
    let shares = c.shares().unwrap_or(0);
    let quota = c.quota().unwrap_or(0);
    let period = c.period().unwrap_or(0);
    // The kernel clamps shares to 2..=262144 and runc refuses what it clamped.
    if shares != 0 && !(2..=262_144).contains(&shares) {
        return Err(invalid(
            "linux.resources.cpu.shares",
            format!("{shares} (valid range is 2-262144)"),
        ));
    }
    if quota < -1 || (1..1000).contains(&quota) {
        return Err(invalid(
            "linux.resources.cpu.quota",
            format!("{quota} (must be -1 for unlimited or at least 1000 µs)"),
        ));
    }
    if period != 0 && !(1000..=1_000_000).contains(&period) {
        return Err(invalid(
            "linux.resources.cpu.period",
            format!("{period} (valid range is 1000-1000000 µs)"),
        ));
    }
    if let Some(idle) = c.idle() {
        if idle != 0 && idle != 1 {
            return Err(invalid(
                "linux.resources.cpu.idle",
                format!("{idle} (must be 0 or 1)"),
            ));
        }
    }
    Ok((shares, quota, period))
}

fn cpuset_list(field: &'static str, v: &str) -> Result<(), Error> {
    if v.chars()
        .all(|c| c.is_ascii_digit() || c == ',' || c == '-')
    {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("{v:?} is not a list like \"0-2,4\""),
        ))
    }
}

fn cpusets(res: &LinuxResources) -> Result<(Option<&str>, Option<&str>), Error> {
    let Some(c) = res.cpu() else {
        return Ok((None, None));
    };
    let cpus = c.cpus().as_deref().filter(|s| !s.is_empty());
    let mems = c.mems().as_deref().filter(|s| !s.is_empty());
    if let Some(v) = cpus {
        cpuset_list("linux.resources.cpu.cpus", v)?;
    }
    if let Some(v) = mems {
        cpuset_list("linux.resources.cpu.mems", v)?;
    }
    Ok((cpus, mems))
}

/// runc's "0 unset, -1 or any other negative max" becomes "0 unset, -1 max",
/// other negatives refused (a typo there should not lift the limit).
fn pids(res: &LinuxResources) -> Result<Option<String>, Error> {
    match res.pids().as_ref().map(|p| p.limit()) {
        None | Some(0) => Ok(None),
        Some(-1) => Ok(Some("max".to_string())),
        Some(n) if n > 0 => Ok(Some(n.to_string())),
        Some(n) => Err(invalid(
            "linux.resources.pids.limit",
            format!("{n} (must be -1 for unlimited or a positive number)"),
        )),
    }
}

fn weight(field: &'static str, w: Option<u16>) -> Result<Option<u16>, Error> {
    match w {
        None | Some(0) => Ok(None),
        Some(w) if (10..=1000).contains(&w) => Ok(Some(w)),
        Some(w) => Err(invalid(field, format!("{w} (valid range is 10-1000)"))),
    }
}

fn device_numbers(field: &str, major: i64, minor: i64) -> Result<(), Error> {
    if major < 0 || minor < 0 {
        return Err(invalid(
            field,
            format!("negative device number {major}:{minor}"),
        ));
    }
    Ok(())
}

type Throttles<'a> = [(&'static str, &'static str, &'a [LinuxThrottleDevice]); 4];

fn throttles(res: &LinuxResources) -> Result<Throttles<'_>, Error> {
    let io = res.block_io().as_ref();
    let get = |f: fn(&oci_spec::runtime::LinuxBlockIo) -> &Option<Vec<LinuxThrottleDevice>>| {
        io.and_then(|b| f(b).as_deref()).unwrap_or(&[])
    };
    let all: Throttles = [
        (
            "throttleReadBpsDevice",
            "read_bps",
            get(|b| b.throttle_read_bps_device()),
        ),
        (
            "throttleWriteBpsDevice",
            "write_bps",
            get(|b| b.throttle_write_bps_device()),
        ),
        (
            "throttleReadIOPSDevice",
            "read_iops",
            get(|b| b.throttle_read_iops_device()),
        ),
        (
            "throttleWriteIOPSDevice",
            "write_iops",
            get(|b| b.throttle_write_iops_device()),
        ),
    ];
    for (name, _, devs) in &all {
        for d in devs.iter() {
            device_numbers(
                &format!("linux.resources.blockIO.{name}"),
                d.major(),
                d.minor(),
            )?;
        }
    }
    Ok(all)
}

fn hugepages(res: &LinuxResources) -> Result<Vec<(&str, i64)>, Error> {
    let mut out = Vec::new();
    for h in res.hugepage_limits().as_deref().unwrap_or(&[]) {
        let size = h.page_size().as_str();
        let digits = size.trim_end_matches(['K', 'M', 'G', 'B']);
        let unit = &size[digits.len()..];
        if digits.is_empty()
            || !digits.chars().all(|c| c.is_ascii_digit())
            || !matches!(unit, "KB" | "MB" | "GB")
        {
            return Err(invalid(
                "linux.resources.hugepageLimits.pageSize",
                format!("{size:?} is not a size like \"2MB\""),
            ));
        }
        if h.limit() < 0 {
            return Err(invalid(
                "linux.resources.hugepageLimits.limit",
                format!("{} for {size} is negative", h.limit()),
            ));
        }
        out.push((size, h.limit()));
    }
    Ok(out)
}

/// A word the kernel parses out of a line: no separators, no path tricks.
fn word(field: &str, v: &str) -> Result<(), Error> {
    if v.is_empty()
        || v.chars()
            .any(|c| c.is_whitespace() || c == '/' || c == '\0')
    {
        return Err(invalid(field, format!("{v:?} is not a plain name")));
    }
    Ok(())
}

fn rdma(res: &LinuxResources) -> Result<Vec<String>, Error> {
    let Some(map) = res.rdma() else {
        return Ok(Vec::new());
    };
    let mut devices: Vec<_> = map.iter().collect();
    devices.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::new();
    for (device, limits) in devices {
        word("linux.resources.rdma", device)?;
        let mut line = device.clone();
        if let Some(n) = limits.hca_handles() {
            line += &format!(" hca_handle={n}");
        }
        if let Some(n) = limits.hca_objects() {
            line += &format!(" hca_object={n}");
        }
        if line.len() > device.len() {
            out.push(line);
        }
    }
    Ok(out)
}

fn unified(res: &LinuxResources) -> Result<Vec<(&str, &str)>, Error> {
    let mut out: Vec<(&str, &str)> = res
        .unified()
        .iter()
        .flat_map(HashMap::iter)
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    out.sort();
    for (k, _) in &out {
        let field = format!("linux.resources.unified[{k:?}]");
        if k.is_empty() || k.contains('/') || k.contains("..") || k.contains('\0') {
            return Err(invalid(field, "must be a file name"));
        }
        if !matches!(k.split_once('.'), Some((c, p)) if !c.is_empty() && !p.is_empty()) {
            return Err(invalid(field, "must be CONTROLLER.PARAMETER"));
        }
        // Membership and structure, not resources: writing them would move
        // processes or kill them.
        if matches!(
            *k,
            "cgroup.procs"
                | "cgroup.threads"
                | "cgroup.kill"
                | "cgroup.subtree_control"
                | "cgroup.type"
        ) {
            return Err(invalid(field, "is not a resource"));
        }
    }
    Ok(out)
}

fn network(res: &LinuxResources) -> Result<(Option<u32>, Vec<String>), Error> {
    let Some(n) = res.network() else {
        return Ok((None, Vec::new()));
    };
    let mut prios = Vec::new();
    for p in n.priorities().as_deref().unwrap_or(&[]) {
        word("linux.resources.network.priorities.name", p.name())?;
        prios.push(format!("{} {}", p.name(), p.priority()));
    }
    Ok((n.class_id().filter(|&c| c != 0), prios))
}

fn writes_v1(res: &LinuxResources) -> Result<Vec<Write>, Error> {
    for (i, d) in res.devices().as_deref().unwrap_or(&[]).iter().enumerate() {
        check_device(i, d)?;
    }
    if res.unified().as_ref().is_some_and(|u| !u.is_empty()) {
        return Err(Error::Unsupported(
            "linux.resources.unified needs cgroup v2".to_string(),
        ));
    }
    let mut out = Out(Vec::new());

    // runc's v1 order: cpuset, (devices,) memory, cpu, pids, blkio, hugetlb,
    // net_cls, net_prio, rdma.
    let (cpus, mems) = cpusets(res)?;
    if let Some(v) = cpus {
        out.push("cpuset", "cpuset.cpus", v);
    }
    if let Some(v) = mems {
        out.push("cpuset", "cpuset.mems", v);
    }

    let (limit, mut swap, reservation) = memory(res)?;
    // runc: an unlimited memory with no swap setting lifts the swap limit too.
    if limit == -1 && swap == 0 {
        swap = -1;
    }
    if limit != 0 {
        out.push("memory", "memory.limit_in_bytes", limit);
    }
    if swap != 0 {
        out.push("memory", "memory.memsw.limit_in_bytes", swap);
    }
    if reservation != 0 {
        out.push("memory", "memory.soft_limit_in_bytes", reservation);
    }
    if res.memory().as_ref().and_then(|m| m.disable_oom_killer()) == Some(true) {
        out.push("memory", "memory.oom_control", 1);
    }
    if let Some(v) = swappiness(res)? {
        out.push("memory", "memory.swappiness", v);
    }

    let (shares, quota, period) = cpu(res)?;
    if shares != 0 {
        out.push("cpu", "cpu.shares", shares);
    }
    if period != 0 {
        out.push("cpu", "cpu.cfs_period_us", period);
    }
    if quota != 0 {
        out.push("cpu", "cpu.cfs_quota_us", quota);
    }
    if let Some(c) = res.cpu() {
        let rt_period = c.realtime_period().unwrap_or(0);
        let rt_runtime = c.realtime_runtime().unwrap_or(0);
        if rt_runtime < -1 {
            return Err(invalid(
                "linux.resources.cpu.realtimeRuntime",
                format!("{rt_runtime} (must be -1 for unlimited or µs)"),
            ));
        }
        if rt_period != 0 && rt_runtime > 0 && rt_runtime as u64 > rt_period {
            return Err(invalid(
                "linux.resources.cpu.realtimeRuntime",
                format!("{rt_runtime} exceeds the realtime period {rt_period}"),
            ));
        }
        if rt_period != 0 {
            out.push("cpu", "cpu.rt_period_us", rt_period);
        }
        if rt_runtime != 0 {
            out.push("cpu", "cpu.rt_runtime_us", rt_runtime);
        }
        if let Some(idle) = c.idle() {
            out.push("cpu", "cpu.idle", idle);
        }
    }

    if let Some(v) = pids(res)? {
        out.push("pids", "pids.max", v);
    }

    if let Some(b) = res.block_io() {
        if let Some(w) = weight("linux.resources.blockIO.weight", b.weight())? {
            out.push("blkio", "blkio.weight", w);
        }
        if let Some(w) = weight("linux.resources.blockIO.leafWeight", b.leaf_weight())? {
            out.push("blkio", "blkio.leaf_weight", w);
        }
        for d in b.weight_device().as_deref().unwrap_or(&[]) {
            let field = "linux.resources.blockIO.weightDevice";
            device_numbers(field, d.major(), d.minor())?;
            if let Some(w) = weight(field, d.weight())? {
                let v = format!("{}:{} {w}", d.major(), d.minor());
                out.push("blkio", "blkio.weight_device", v);
            }
            if let Some(w) = weight(field, d.leaf_weight())? {
                let v = format!("{}:{} {w}", d.major(), d.minor());
                out.push("blkio", "blkio.leaf_weight_device", v);
            }
        }
    }
    for (_, kind, devs) in throttles(res)? {
        for d in devs {
            let v = format!("{}:{} {}", d.major(), d.minor(), d.rate());
            out.push("blkio", format!("blkio.throttle.{kind}_device"), v);
        }
    }

    for (size, limit) in hugepages(res)? {
        out.push("hugetlb", format!("hugetlb.{size}.limit_in_bytes"), limit);
    }

    let (class_id, prios) = network(res)?;
    if let Some(id) = class_id {
        out.push("net_cls", "net_cls.classid", id);
    }
    for p in prios {
        out.push("net_prio", "net_prio.ifpriomap", p);
    }

    for line in rdma(res)? {
        out.push("rdma", "rdma.max", line);
    }
    Ok(out.0)
}

/// runc's `numToStr`: 0 unset, -1 "max".
fn v2_num(v: i64) -> Option<String> {
    match v {
        0 => None,
        -1 => Some("max".to_string()),
        v => Some(v.to_string()),
    }
}

fn writes_v2(res: &LinuxResources) -> Result<Vec<Write>, Error> {
    if res.devices().as_ref().is_some_and(|d| !d.is_empty()) {
        return Err(Error::Unsupported(
            "device cgroup rules on cgroup v2 need an eBPF program, which the direct engine does not install yet"
                .to_string(),
        ));
    }
    let mut out = Out(Vec::new());

    // runc's fs2 order: pids, memory, io, cpu, cpuset, hugetlb, rdma, unified.
    if let Some(v) = pids(res)? {
        out.push("", "pids.max", v);
    }

    let (limit, swap, reservation) = memory(res)?;
    // runc's ConvertMemorySwapToCgroupV2Value: v1's memory+swap becomes swap
    // alone; unlimited memory with no swap setting lifts swap too.
    let swap_max = match (limit, swap) {
        (-1, 0) => Some("max".to_string()),
        (_, 0) => None,
        (_, -1) => Some("max".to_string()),
        (limit, swap) => Some((swap - limit).to_string()),
    };
    if let Some(v) = swap_max {
        out.push("", "memory.swap.max", v);
    }
    if let Some(v) = v2_num(limit) {
        out.push("", "memory.max", v);
    }
    if let Some(v) = v2_num(reservation) {
        out.push("", "memory.low", v);
    }

    if let Some(b) = res.block_io() {
        if let Some(w) = weight("linux.resources.blockIO.weight", b.weight())? {
            // runc's ConvertBlkIOToIOWeightValue: 10..1000 onto 1..10000.
            let v = 1 + (u64::from(w) - 10) * 9999 / 990;
            out.push("", "io.weight", v);
        }
        weight("linux.resources.blockIO.leafWeight", b.leaf_weight())?;
        for d in b.weight_device().as_deref().unwrap_or(&[]) {
            let field = "linux.resources.blockIO.weightDevice";
            device_numbers(field, d.major(), d.minor())?;
            weight(field, d.leaf_weight())?;
            // Only BFQ has per-device weights; apply skips it when absent, as runc.
            if let Some(w) = weight(field, d.weight())? {
                let v = format!("{}:{} {w}", d.major(), d.minor());
                out.push("", "io.bfq.weight", v);
            }
        }
    }
    for (_, kind, devs) in throttles(res)? {
        let key = match kind {
            "read_bps" => "rbps",
            "write_bps" => "wbps",
            "read_iops" => "riops",
            _ => "wiops",
        };
        for d in devs {
            let v = format!("{}:{} {key}={}", d.major(), d.minor(), d.rate());
            out.push("", "io.max", v);
        }
    }

    let (shares, quota, period) = cpu(res)?;
    if let Some(c) = res.cpu() {
        if c.realtime_period().unwrap_or(0) != 0 || c.realtime_runtime().unwrap_or(0) != 0 {
            return Err(Error::Unsupported(
                "linux.resources.cpu.realtimeRuntime/realtimePeriod: no realtime group scheduling on cgroup v2"
                    .to_string(),
            ));
        }
    }
    if shares != 0 {
        // runc's ConvertCPUSharesToCgroupV2Value: 2..262144 onto 1..10000.
        out.push("", "cpu.weight", 1 + ((shares - 2) * 9999) / 262_142);
    }
    if quota != 0 || period != 0 {
        let mut v = if quota > 0 {
            quota.to_string()
        } else {
            "max".to_string()
        };
        if period != 0 {
            v += &format!(" {period}");
        }
        out.push("", "cpu.max", v);
    }
    if let Some(idle) = res.cpu().as_ref().and_then(|c| c.idle()) {
        out.push("", "cpu.idle", idle);
    }

    let (cpus, mems) = cpusets(res)?;
    if let Some(v) = cpus {
        out.push("", "cpuset.cpus", v);
    }
    if let Some(v) = mems {
        out.push("", "cpuset.mems", v);
    }

    for (size, limit) in hugepages(res)? {
        out.push("", format!("hugetlb.{size}.max"), limit);
    }

    for line in rdma(res)? {
        out.push("", "rdma.max", line);
    }

    // Last, so that it overrides the typed fields, as runc.
    for (k, v) in unified(res)? {
        out.push("", k, v);
    }
    Ok(out.0)
}

/// Super options of a v1 cgroup mount that are not controllers.
const NOT_CONTROLLERS: [&str; 8] = [
    "rw",
    "ro",
    "xattr",
    "noprefix",
    "clone_children",
    "cpuset_v2_mode",
    "favordynmods",
    "none",
];

/// The cgroup hierarchies in a mountinfo text. A hierarchy mounted more than
/// once is listed once: its mount of the root cgroup if any, else the first.
pub fn parse_hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    let mut found: Vec<(String, Hierarchy)> = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut right = right.split_whitespace();
        let (Some(fstype), Some(_source), Some(opts)) = (right.next(), right.next(), right.next())
        else {
            continue;
        };
        let unified = match fstype {
            "cgroup" => false,
            "cgroup2" => true,
            _ => continue,
        };
        let left: Vec<&str> = left.split_whitespace().collect();
        let (Some(dev), Some(root), Some(mount_point)) = (left.get(2), left.get(3), left.get(4))
        else {
            continue;
        };
        let controllers = if unified {
            Vec::new()
        } else {
            opts.split(',')
                .filter(|o| !NOT_CONTROLLERS.contains(o))
                .filter(|o| !o.contains('=') || o.starts_with("name="))
                .map(str::to_string)
                .collect()
        };
        let h = Hierarchy {
            mount_point: PathBuf::from(unescape_mountinfo(mount_point)),
            root: PathBuf::from(unescape_mountinfo(root)),
            controllers,
            v2: unified,
        };
        match found.iter_mut().find(|(d, _)| d == dev) {
            Some((_, old)) => {
                if old.root != Path::new("/") && h.root == Path::new("/") {
                    *old = h;
                }
            }
            None => found.push((dev.to_string(), h)),
        }
    }
    found.into_iter().map(|(_, h)| h).collect()
}

/// Every mounted cgroup hierarchy of this process's mount namespace: each v1
/// hierarchy with its controllers, and the cgroup2 one.
pub fn hierarchies() -> io::Result<Vec<Hierarchy>> {
    Ok(parse_hierarchies(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

/// V1 when any v1 hierarchy holds a controller (legacy or hybrid), else V2.
pub fn layout(hierarchies: &[Hierarchy]) -> Layout {
    let v1 = hierarchies
        .iter()
        .any(|h| !h.v2 && h.controllers.iter().any(|c| !c.starts_with("name=")));
    if v1 {
        Layout::V1
    } else {
        Layout::V2
    }
}

/// The components of a cgroupfs-style absolute cgroupsPath ("/a/b").
fn components(cgroups_path: &str) -> Result<Vec<&str>, Error> {
    let err = |reason| Error::CgroupsPath {
        path: cgroups_path.to_string(),
        reason,
    };
    let Some(rel) = cgroups_path.strip_prefix('/') else {
        return Err(err(
            "not an absolute cgroupfs path (systemd slices are not supported)",
        ));
    };
    if rel.is_empty() {
        return Err(err("the root cgroup cannot be the container's"));
    }
    let parts: Vec<&str> = rel.split('/').collect();
    if parts
        .iter()
        .any(|c| c.is_empty() || *c == "." || *c == "..")
    {
        return Err(err("empty, \".\" or \"..\" component"));
    }
    if parts.iter().any(|c| c.contains('\0')) {
        return Err(err("NUL byte"));
    }
    Ok(parts)
}

fn read_trimmed(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })
}

fn write_file(path: &Path, value: &str) -> io::Result<()> {
    // No O_CREAT: a misspelt file must fail, not be created.
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
}

fn write_err(path: &Path, value: &str, source: io::Error) -> Error {
    Error::Write {
        path: path.to_path_buf(),
        value: value.to_string(),
        source,
    }
}

/// An empty v1 cpuset refuses tasks (ENOSPC): fill it from its parent.
fn cpuset_copy_if_empty(dir: &Path) -> Result<(), Error> {
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let path = dir.join(file);
        if !read_trimmed(&path)?.is_empty() {
            continue;
        }
        let value = read_trimmed(&parent.join(file))?;
        write_file(&path, &value).map_err(|e| write_err(&path, &value, e))?;
    }
    Ok(())
}

/// Creates `<mount point>/<cgroups_path>` in every hierarchy, parents first,
/// and returns them in the order of `hierarchies`. A level already there is
/// kept. On v1 cpuset, each level whose cpus or mems are empty gets its
/// parent's. On failure, what this call created is removed again.
///
/// `cgroups_path` must be cgroupfs-style ("/default/fn-1"): systemd's
/// "slice:prefix:name" and ".", ".." or empty components are refused.
pub fn create(hierarchies: &[Hierarchy], cgroups_path: &str) -> Result<Vec<PathBuf>, Error> {
    let parts = components(cgroups_path)?;
    let mut created: Vec<PathBuf> = Vec::new();
    let mut dirs = Vec::with_capacity(hierarchies.len());
    let result = (|| {
        for h in hierarchies {
            let cpuset = !h.v2 && h.controllers.iter().any(|c| c == "cpuset");
            let mut dir = h.mount_point.clone();
            for part in &parts {
                dir.push(part);
                match std::fs::create_dir(&dir) {
                    Ok(()) => created.push(dir.clone()),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(source) => return Err(Error::Create { path: dir, source }),
                }
                if cpuset {
                    cpuset_copy_if_empty(&dir)?;
                }
            }
            dirs.push(dir);
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(dirs),
        Err(e) => {
            created.reverse();
            remove(&created);
            Err(e)
        }
    }
}

/// A value that asks for no limit: a hierarchy or file lacking it is fine.
fn is_unlimited(value: &str) -> bool {
    value == "-1" || value == "max"
}

/// Pairs the kernel checks against each other: when the first is refused
/// (EINVAL) because the new value does not fit the old second one, the
/// second is written first (memsw >= limit, quota vs the parent's on a new
/// period).
const PAIRS: [(&str, &str); 2] = [
    ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"),
    ("cpu.cfs_period_us", "cpu.cfs_quota_us"),
];

/// Writes one value, with runc's fallbacks for files a kernel may lack.
fn write_one(dir: &Path, w: &Write) -> Result<(), Error> {
    let path = dir.join(&w.file);
    match write_file(&path, &w.value) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let bfq = match w.file.as_str() {
                // No CFQ any more: BFQ's files, as runc detects them.
                "blkio.weight" => Some("blkio.bfq.weight"),
                "blkio.weight_device" => Some("blkio.bfq.weight_device"),
                _ => None,
            };
            if let Some(bfq) = bfq {
                let path = dir.join(bfq);
                return write_file(&path, &w.value).map_err(|e| write_err(&path, &w.value, e));
            }
            if is_unlimited(&w.value)
                || w.file == "memory.swap.max"
                || (w.file == "cpu.idle" && w.value == "0")
            {
                // No swap accounting, no cpu.idle (older kernels): nothing to
                // lift, disable or clear.
                debug!(file = %path.display(), value = %w.value, "cgroup file absent, unlimited anyway");
                return Ok(());
            }
            if w.file == "io.bfq.weight" {
                warn!(file = %path.display(), value = %w.value, "no BFQ: per-device io weight skipped, as runc does");
                return Ok(());
            }
            Err(write_err(&path, &w.value, e))
        }
        Err(e) => Err(write_err(&path, &w.value, e)),
    }
}

fn dir_for<'a>(
    hierarchies: &[Hierarchy],
    dirs: &'a [PathBuf],
    controller: &str,
) -> Option<&'a Path> {
    hierarchies
        .iter()
        .zip(dirs)
        .find(|(h, _)| {
            if controller.is_empty() {
                h.v2
            } else {
                !h.v2 && h.controllers.iter().any(|c| c == controller)
            }
        })
        .map(|(_, d)| d.as_path())
}

/// Applies the spec's resources to the dirs [`create`] returned (one per
/// hierarchy, same order): v1 device rules first ([`device_rules`]), then
/// [`writes`] for the layout of `hierarchies`. A limit for a controller no
/// hierarchy holds is an error; an unlimited value for one is skipped.
///
/// Device rules start with "deny all", which is right for a fresh cgroup;
/// on a Task.Update, pass the container's full resources (with the spec's
/// devices), or rules the spec granted would be lost.
///
/// cgroup v2 is refused: runc confines devices there with an eBPF program
/// (even with no rules in the spec, for its default allow list), which the
/// direct engine does not install yet.
pub fn apply(
    hierarchies: &[Hierarchy],
    dirs: &[PathBuf],
    res: Option<&LinuxResources>,
) -> Result<(), Error> {
    write_all(hierarchies, dirs, res, true)
}

/// Task.Update: the limits in `res`, leaving the device rules as they are —
/// as `runc update` does (an update carries no device list, and applying an
/// empty one would take away the devices the spec allowed).
pub fn update(
    hierarchies: &[Hierarchy],
    dirs: &[PathBuf],
    res: &LinuxResources,
) -> Result<(), Error> {
    let mut res = res.clone();
    res.set_devices(None);
    write_all(hierarchies, dirs, Some(&res), false)
}

fn write_all(
    hierarchies: &[Hierarchy],
    dirs: &[PathBuf],
    res: Option<&LinuxResources>,
    devices: bool,
) -> Result<(), Error> {
    if dirs.len() != hierarchies.len() {
        return Err(Error::Mismatch {
            dirs: dirs.len(),
            hierarchies: hierarchies.len(),
        });
    }
    let layout = layout(hierarchies);
    if layout == Layout::V2 {
        return Err(Error::Unsupported(
            "device confinement on cgroup v2 needs an eBPF program, which the direct engine does not install yet"
                .to_string(),
        ));
    }
    let default = LinuxResources::default();
    // First: it validates the device rules too.
    let writes = writes(res.unwrap_or(&default), layout)?;

    if devices {
        let Some(devices) = dir_for(hierarchies, dirs, "devices") else {
            return Err(Error::NotMounted {
                controller: "devices".to_string(),
                file: "devices.deny".to_string(),
                value: "a".to_string(),
            });
        };
        for (allow, rule) in device_rules(res) {
            let path = devices.join(if allow {
                "devices.allow"
            } else {
                "devices.deny"
            });
            write_file(&path, &rule).map_err(|e| write_err(&path, &rule, e))?;
        }
    }

    let mut i = 0;
    while i < writes.len() {
        let w = &writes[i];
        let controller = w.controller;
        let Some(dir) = dir_for(hierarchies, dirs, controller) else {
            if is_unlimited(&w.value) {
                debug!(controller, file = %w.file, "controller not mounted, value unlimited anyway");
                i += 1;
                continue;
            }
            let controller = if controller.is_empty() {
                "cgroup2"
            } else {
                controller
            };
            return Err(Error::NotMounted {
                controller: controller.to_string(),
                file: w.file.clone(),
                value: w.value.clone(),
            });
        };
        let partner = writes
            .get(i + 1)
            .filter(|next| PAIRS.iter().any(|(a, b)| *a == w.file && *b == next.file));
        match (write_one(dir, w), partner) {
            (Ok(()), _) => i += 1,
            (Err(Error::Write { source, .. }), Some(next))
                if source.raw_os_error() == Some(libc::EINVAL) =>
            {
                write_one(dir, next)?;
                write_one(dir, w)?;
                i += 2;
            }
            (Err(e), _) => return Err(e),
        }
    }
    Ok(())
}

/// Removes the cgroup dirs (not their parents, which others may share), best
/// effort: a dir whose last task is still exiting is busy for a moment, so
/// EBUSY is retried briefly; failures are logged.
pub fn remove(dirs: &[PathBuf]) {
    for dir in dirs {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match std::fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    warn!(error = %e, cgroup = %dir.display(), "remove the container's cgroup");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(json: &str) -> LinuxResources {
        serde_json::from_str(json).unwrap()
    }

    fn pairs(w: &[Write]) -> Vec<(&str, &str, &str)> {
        w.iter()
            .map(|w| (w.controller, w.file.as_str(), w.value.as_str()))
            .collect()
    }

    fn field_of(e: Error) -> String {
        match e {
            Error::Invalid { field, .. } => field,
            e => panic!("not Invalid: {e}"),
        }
    }

    #[test]
    fn empty_resources_write_nothing() {
        assert!(writes(&res("{}"), Layout::V1).unwrap().is_empty());
        assert!(writes(&res("{}"), Layout::V2).unwrap().is_empty());
    }

    #[test]
    fn v1_mapping_and_order() {
        let r = res(r#"{
            "memory": {"limit": 1000000, "swap": 2000000, "reservation": 500000,
                       "kernel": 1, "kernelTCP": 1, "swappiness": 10, "disableOOMKiller": true},
            "cpu": {"shares": 512, "quota": 50000, "period": 100000,
                    "realtimeRuntime": 1000, "realtimePeriod": 2000, "cpus": "0-1", "mems": "0"},
            "pids": {"limit": 42},
            "blockIO": {"weight": 500, "leafWeight": 300,
                        "weightDevice": [{"major": 8, "minor": 0, "weight": 200, "leafWeight": 100}],
                        "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1024}],
                        "throttleWriteIOPSDevice": [{"major": 8, "minor": 16, "rate": 10}]},
            "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}],
            "network": {"classID": 1048577, "priorities": [{"name": "eth0", "priority": 5}]},
            "rdma": {"mlx5_1": {"hcaHandles": 3, "hcaObjects": 10000}}
        }"#);
        assert_eq!(
            pairs(&writes(&r, Layout::V1).unwrap()),
            vec![
                ("cpuset", "cpuset.cpus", "0-1"),
                ("cpuset", "cpuset.mems", "0"),
                ("memory", "memory.limit_in_bytes", "1000000"),
                ("memory", "memory.memsw.limit_in_bytes", "2000000"),
                ("memory", "memory.soft_limit_in_bytes", "500000"),
                ("memory", "memory.oom_control", "1"),
                ("memory", "memory.swappiness", "10"),
                ("cpu", "cpu.shares", "512"),
                ("cpu", "cpu.cfs_period_us", "100000"),
                ("cpu", "cpu.cfs_quota_us", "50000"),
                ("cpu", "cpu.rt_period_us", "2000"),
                ("cpu", "cpu.rt_runtime_us", "1000"),
                ("pids", "pids.max", "42"),
                ("blkio", "blkio.weight", "500"),
                ("blkio", "blkio.leaf_weight", "300"),
                ("blkio", "blkio.weight_device", "8:0 200"),
                ("blkio", "blkio.leaf_weight_device", "8:0 100"),
                ("blkio", "blkio.throttle.read_bps_device", "8:0 1024"),
                ("blkio", "blkio.throttle.write_iops_device", "8:16 10"),
                ("hugetlb", "hugetlb.2MB.limit_in_bytes", "4194304"),
                ("net_cls", "net_cls.classid", "1048577"),
                ("net_prio", "net_prio.ifpriomap", "eth0 5"),
                ("rdma", "rdma.max", "mlx5_1 hca_handle=3 hca_object=10000"),
            ]
        );
    }

    #[test]
    fn v2_mapping_and_order() {
        let r = res(r#"{
            "memory": {"limit": 1000000, "swap": 3000000, "reservation": 500000,
                       "swappiness": 10, "disableOOMKiller": true},
            "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"},
            "pids": {"limit": 42},
            "blockIO": {"weight": 500,
                        "weightDevice": [{"major": 8, "minor": 0, "weight": 200}],
                        "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1024}],
                        "throttleWriteIOPSDevice": [{"major": 8, "minor": 16, "rate": 10}]},
            "hugepageLimits": [{"pageSize": "1GB", "limit": 0}],
            "network": {"classID": 7},
            "unified": {"memory.high": "900000", "cpu.max": "10000 100000"}
        }"#);
        assert_eq!(
            pairs(&writes(&r, Layout::V2).unwrap()),
            vec![
                ("", "pids.max", "42"),
                ("", "memory.swap.max", "2000000"),
                ("", "memory.max", "1000000"),
                ("", "memory.low", "500000"),
                ("", "io.weight", "4950"),
                ("", "io.bfq.weight", "8:0 200"),
                ("", "io.max", "8:0 rbps=1024"),
                ("", "io.max", "8:16 wiops=10"),
                ("", "cpu.weight", "39"),
                ("", "cpu.max", "50000 100000"),
                ("", "cpuset.cpus", "0-1"),
                ("", "cpuset.mems", "0"),
                ("", "hugetlb.1GB.max", "0"),
                ("", "cpu.max", "10000 100000"),
                ("", "memory.high", "900000"),
            ]
        );
    }

    #[test]
    fn cpu_weight_formula() {
        for (shares, weight) in [(2, 1), (1024, 39), (262_144, 10000)] {
            let r = res(&format!(r#"{{"cpu": {{"shares": {shares}}}}}"#));
            let w = writes(&r, Layout::V2).unwrap();
            assert_eq!(w[0].value, weight.to_string(), "shares {shares}");
        }
    }

    #[test]
    fn special_values() {
        // Unlimited memory lifts swap too; -1 pids is "max" on both.
        let r = res(r#"{"memory": {"limit": -1}, "pids": {"limit": -1}}"#);
        assert_eq!(
            pairs(&writes(&r, Layout::V1).unwrap()),
            vec![
                ("memory", "memory.limit_in_bytes", "-1"),
                ("memory", "memory.memsw.limit_in_bytes", "-1"),
                ("pids", "pids.max", "max"),
            ]
        );
        assert_eq!(
            pairs(&writes(&r, Layout::V2).unwrap()),
            vec![
                ("", "pids.max", "max"),
                ("", "memory.swap.max", "max"),
                ("", "memory.max", "max"),
            ]
        );
        // Swap equal to the limit disables swap on v2.
        let r = res(r#"{"memory": {"limit": 100, "swap": 100}}"#);
        assert_eq!(writes(&r, Layout::V2).unwrap()[0].value, "0");
        // Unlimited quota; period alone.
        let r = res(r#"{"cpu": {"quota": -1}}"#);
        assert_eq!(writes(&r, Layout::V2).unwrap()[0].value, "max");
        assert_eq!(writes(&r, Layout::V1).unwrap()[0].value, "-1");
        let r = res(r#"{"cpu": {"period": 50000}}"#);
        assert_eq!(writes(&r, Layout::V2).unwrap()[0].value, "max 50000");
        // 0 means unset; swappiness u64::MAX is Go's -1, unset.
        let r = res(
            r#"{"pids": {"limit": 0}, "memory": {"limit": 0, "swappiness": 18446744073709551615},
                        "cpu": {"shares": 0, "cpus": ""}}"#,
        );
        assert!(writes(&r, Layout::V1).unwrap().is_empty());
    }

    #[test]
    fn rejections_name_the_field() {
        let cases = [
            (r#"{"pids": {"limit": -2}}"#, "linux.resources.pids.limit"),
            (
                r#"{"memory": {"limit": -5}}"#,
                "linux.resources.memory.limit",
            ),
            (
                r#"{"memory": {"swap": 100}}"#,
                "linux.resources.memory.swap",
            ),
            (
                r#"{"memory": {"limit": 200, "swap": 100}}"#,
                "linux.resources.memory.swap",
            ),
            (
                r#"{"memory": {"swappiness": 101}}"#,
                "linux.resources.memory.swappiness",
            ),
            (r#"{"cpu": {"shares": 1}}"#, "linux.resources.cpu.shares"),
            (
                r#"{"cpu": {"shares": 262145}}"#,
                "linux.resources.cpu.shares",
            ),
            (r#"{"cpu": {"quota": 500}}"#, "linux.resources.cpu.quota"),
            (r#"{"cpu": {"quota": -3}}"#, "linux.resources.cpu.quota"),
            (
                r#"{"cpu": {"quota": 50000, "period": 10}}"#,
                "linux.resources.cpu.period",
            ),
            (r#"{"cpu": {"cpus": "0-1\n"}}"#, "linux.resources.cpu.cpus"),
            (r#"{"cpu": {"mems": "0 1"}}"#, "linux.resources.cpu.mems"),
            (
                r#"{"blockIO": {"weight": 5}}"#,
                "linux.resources.blockIO.weight",
            ),
            (
                r#"{"blockIO": {"throttleReadBpsDevice": [{"major": -1, "minor": 0, "rate": 1}]}}"#,
                "linux.resources.blockIO.throttleReadBpsDevice",
            ),
            (
                r#"{"hugepageLimits": [{"pageSize": "../2MB", "limit": 1}]}"#,
                "linux.resources.hugepageLimits.pageSize",
            ),
            (
                r#"{"hugepageLimits": [{"pageSize": "2MB", "limit": -1}]}"#,
                "linux.resources.hugepageLimits.limit",
            ),
            (
                r#"{"network": {"priorities": [{"name": "eth0 1\nlo", "priority": 1}]}}"#,
                "linux.resources.network.priorities.name",
            ),
        ];
        for (json, field) in cases {
            for layout in [Layout::V1, Layout::V2] {
                if layout == Layout::V2 && (json.contains("network") || json.contains("swappiness"))
                {
                    continue; // ignored on v2, as runc
                }
                let e = writes(&res(json), layout).expect_err(json);
                assert_eq!(field_of(e), field, "{json} {layout:?}");
            }
        }
        let e = writes(
            &res(r#"{"cpu": {"realtimeRuntime": 3000, "realtimePeriod": 2000}}"#),
            Layout::V1,
        );
        assert_eq!(
            field_of(e.unwrap_err()),
            "linux.resources.cpu.realtimeRuntime"
        );
    }

    #[test]
    fn unified_keys() {
        for key in [
            "../memory.max",
            "a/b",
            "memory..max",
            "",
            "nodot",
            "cgroup.procs",
            "cgroup.kill",
        ] {
            let r = res(&format!(r#"{{"unified": {{"{key}": "1"}}}}"#));
            assert!(
                matches!(writes(&r, Layout::V2), Err(Error::Invalid { .. })),
                "{key:?}"
            );
        }
        let r = res(r#"{"unified": {"memory.high": "1"}}"#);
        assert!(matches!(writes(&r, Layout::V1), Err(Error::Unsupported(_))));
    }

    #[test]
    fn v2_refuses_device_rules_and_realtime() {
        let r = res(r#"{"devices": [{"allow": false, "access": "rwm"}]}"#);
        let e = writes(&r, Layout::V2).unwrap_err();
        assert!(
            matches!(e, Error::Unsupported(_)) && e.to_string().contains("eBPF"),
            "{e}"
        );
        let r = res(r#"{"cpu": {"realtimeRuntime": 1000}}"#);
        assert!(matches!(writes(&r, Layout::V2), Err(Error::Unsupported(_))));
    }

    #[test]
    fn device_rules_order_and_rendering() {
        let r = res(r#"{"devices": [
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rw"},
            {"allow": true, "type": "b", "major": 8},
            {"allow": false, "type": "c", "minor": 3, "access": "w"}
        ]}"#);
        let rules = device_rules(Some(&r));
        let mut want = vec![
            (false, "a".to_string()),
            (false, "a *:* rwm".to_string()),
            (true, "c 10:229 rw".to_string()),
            (true, "b 8:* rwm".to_string()),
            (false, "c *:3 w".to_string()),
        ];
        want.extend(
            DEFAULT_ALLOWED_DEVICES
                .iter()
                .map(|d| (true, d.to_string())),
        );
        assert_eq!(rules, want);
        assert!(writes(&r, Layout::V1).unwrap().is_empty());

        let none = device_rules(None);
        assert_eq!(none.len(), 1 + DEFAULT_ALLOWED_DEVICES.len());
        assert_eq!(none[0], (false, "a".to_string()));
        assert_eq!(none[3], (true, "c 1:3 rwm".to_string()));
    }

    #[test]
    fn v1_refuses_bad_device_rules() {
        for dev in [
            r#"{"allow": true, "type": "p"}"#,
            r#"{"allow": true, "type": "c", "major": -1}"#,
            r#"{"allow": true, "access": "rwx"}"#,
            r#"{"allow": true, "access": ""}"#,
            r#"{"allow": true, "access": "rr"}"#,
        ] {
            let r = res(&format!(r#"{{"devices": [{dev}]}}"#));
            let e = writes(&r, Layout::V1).expect_err(dev);
            assert_eq!(field_of(e), "linux.resources.devices[0]", "{dev}");
        }
    }

    #[test]
    fn mountinfo_parsing() {
        let mi = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset,clone_children
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,release_agent=/x,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
90 80 0:31 /kubepods /run/x\\040y/cpuset rw - cgroup cgroup rw,cpuset
";
        let h = parse_hierarchies(mi);
        let brief: Vec<(&str, Vec<&str>, bool)> = h
            .iter()
            .map(|h| {
                (
                    h.mount_point.to_str().unwrap(),
                    h.controllers.iter().map(String::as_str).collect(),
                    h.v2,
                )
            })
            .collect();
        assert_eq!(
            brief,
            vec![
                ("/sys/fs/cgroup/cpu,cpuacct", vec!["cpu", "cpuacct"], false),
                ("/sys/fs/cgroup/cpuset", vec!["cpuset"], false),
                ("/sys/fs/cgroup/systemd", vec!["name=systemd"], false),
                ("/sys/fs/cgroup/unified", vec![], true),
            ]
        );
        assert_eq!(layout(&h), Layout::V1);
        assert_eq!(layout(&h[3..]), Layout::V2);
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        // A second mount of a hierarchy is used when the first is not its root.
        let h = parse_hierarchies(
            "90 80 0:31 /k /run/c rw - cgroup cgroup rw,cpuset\n91 80 0:31 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset\n",
        );
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].mount_point, Path::new("/sys/fs/cgroup/cpuset"));
    }

    #[test]
    fn cgroups_path_forms() {
        for bad in [
            "",
            "/",
            "default/fn",
            "system.slice:cri:fn",
            "/a//b",
            "/a/../b",
            "/a/.",
            "/a/",
        ] {
            assert!(
                matches!(create(&[], bad), Err(Error::CgroupsPath { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(
            components("/default/fn-1").unwrap(),
            vec!["default", "fn-1"]
        );
    }

    #[test]
    fn create_rolls_back_and_apply_checks_lengths() {
        let tmp = tempfile::tempdir().unwrap();
        let ok = Hierarchy {
            mount_point: tmp.path().join("ok"),
            root: "/".into(),
            controllers: vec!["pids".into()],
            v2: false,
        };
        std::fs::create_dir(&ok.mount_point).unwrap();
        let missing = Hierarchy {
            mount_point: tmp.path().join("missing"),
            ..ok.clone()
        };
        let e = create(&[ok.clone(), missing], "/a/b").unwrap_err();
        assert!(matches!(e, Error::Create { .. }), "{e}");
        assert!(!ok.mount_point.join("a").exists());
        assert!(matches!(
            apply(&[ok], &[], None),
            Err(Error::Mismatch { .. })
        ));
    }

    /// Removes the test's cgroups even when an assertion fails.
    struct Cleanup(Vec<PathBuf>);

    impl Drop for Cleanup {
        fn drop(&mut self) {
            remove(&self.0);
            // create made the single level under each mount point.
        }
    }

    #[test]
    fn root_creates_applies_and_removes_a_real_cgroup() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let hs = hierarchies().unwrap();
        if layout(&hs) != Layout::V1 {
            eprintln!("skipped: the direct engine applies resources on cgroup v1 only");
            return;
        }
        let path = format!("/rekindle-test-resources-{}", std::process::id());
        let dirs = create(&hs, &path).unwrap();
        let cleanup = Cleanup(dirs.clone());
        let r = res(r#"{
            "memory": {"limit": 67108864},
            "cpu": {"shares": 512},
            "pids": {"limit": 42},
            "devices": [
                {"allow": false, "access": "rwm"},
                {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rwm"}
            ]
        }"#);
        apply(&hs, &dirs, Some(&r)).unwrap();

        let read = |ctrl: &str, file: &str| {
            let p = Path::new("/sys/fs/cgroup")
                .join(ctrl)
                .join(&path[1..])
                .join(file);
            std::fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
                .trim()
                .to_string()
        };
        assert_eq!(read("memory", "memory.limit_in_bytes"), "67108864");
        assert_eq!(read("cpu", "cpu.shares"), "512");
        assert_eq!(read("pids", "pids.max"), "42");
        let list = read("devices", "devices.list");
        for rule in ["c 10:229 rwm", "c 1:3 rwm", "c 136:* rwm", "c *:* m"] {
            assert!(list.lines().any(|l| l == rule), "{rule} not in {list}");
        }
        assert!(!list.contains("a *:* rwm"), "{list}");
        if let Some(cpuset) = dir_for(&hs, &dirs, "cpuset") {
            assert!(!read_trimmed(&cpuset.join("cpuset.cpus"))
                .unwrap()
                .is_empty());
        }

        // Later updates: down, then up past the old memsw, which the kernel
        // refuses unless the pair is written the other way round.
        let down = res(r#"{"memory": {"limit": 33554432, "swap": 33554432}}"#);
        apply(&hs, &dirs, Some(&down)).unwrap();
        assert_eq!(read("memory", "memory.limit_in_bytes"), "33554432");
        assert_eq!(read("memory", "memory.memsw.limit_in_bytes"), "33554432");
        let up = res(r#"{"memory": {"limit": 268435456, "swap": 536870912},
                         "cpu": {"quota": 20000, "period": 50000}}"#);
        apply(&hs, &dirs, Some(&up)).unwrap();
        assert_eq!(read("memory", "memory.limit_in_bytes"), "268435456");
        assert_eq!(read("memory", "memory.memsw.limit_in_bytes"), "536870912");
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "20000");
        assert_eq!(read("cpu", "cpu.cfs_period_us"), "50000");

        drop(cleanup);
        for d in &dirs {
            assert!(!d.exists(), "{} left behind", d.display());
        }
    }
}
