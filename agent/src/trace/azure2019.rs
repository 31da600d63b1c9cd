//! The Azure Functions Trace 2019 (Shahrad et al., ATC'20), one file per day:
//!
//! - `invocations_per_function_md.anon.dNN.csv`:
//!   `HashOwner,HashApp,HashFunction,Trigger,1,2,…,1440`, the invocations of each
//!   function in each minute of the day;
//! - `function_durations_percentiles.anon.dNN.csv`: `HashOwner,HashApp,HashFunction,
//!   Average,Count,Minimum,Maximum,percentile_Average_0,…_1,…_25,…_50,…_75,…_99,…_100`,
//!   execution times in milliseconds;
//! - `app_memory_percentiles.anon.dNN.csv`: `HashOwner,HashApp,SampleCount,
//!   AverageAllocatedMb,AverageAllocatedMb_pct1,…` per app.
//!
//! The counts are kept as they are (non-zero minutes only) and expanded while replaying:
//! a minute's `c` invocations are spread one per `60/c` seconds with a seeded jitter, each
//! with an execution time drawn from the function's percentiles (linear between them);
//! functions without a durations row run 1 s, apps without a memory row get
//! [`super::DEFAULT_MEMORY_MB`]. Several files are consecutive days.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{
    parse_f64, FunctionMeta, Interner, Invocation, Invocations, Lines, ReadOptions, Trace,
    TraceError, DEFAULT_MEMORY_MB,
};
use crate::policy::{FunctionInfo, Trigger};
use crate::rng::Rng;

const MINUTES: usize = 1440;
const PCTS: [f64; 7] = [0.0, 0.01, 0.25, 0.50, 0.75, 0.99, 1.0];

/// Non-zero per-minute counts, in minute order, and what is needed to expand them.
#[derive(Debug, Clone)]
pub struct MinuteCounts {
    /// (minute since the trace start, function, count), sorted by minute.
    entries: Vec<(u32, u32, u32)>,
    /// Execution-time percentiles per function, seconds (p0, p1, p25, p50, p75, p99, p100).
    durations: Vec<Option<[f32; 7]>>,
    seed: u64,
    total: u64,
}

impl MinuteCounts {
    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn iter(&self) -> MinuteIter<'_> {
        MinuteIter {
            counts: self,
            next: 0,
            buf: Vec::new(),
            pos: 0,
        }
    }
}

/// Expands [`MinuteCounts`] into invocations, a minute at a time.
pub struct MinuteIter<'a> {
    counts: &'a MinuteCounts,
    next: usize,
    buf: Vec<Invocation>,
    pos: usize,
}

impl Iterator for MinuteIter<'_> {
    type Item = Invocation;

    fn next(&mut self) -> Option<Invocation> {
        if self.pos < self.buf.len() {
            self.pos += 1;
            return Some(self.buf[self.pos - 1]);
        }
        let e = &self.counts.entries;
        if self.next >= e.len() {
            return None;
        }
        self.buf.clear();
        self.pos = 0;
        let minute = e[self.next].0;
        while self.next < e.len() && e[self.next].0 == minute {
            let (_, f, c) = e[self.next];
            let mut rng = Rng::derive(self.counts.seed ^ (minute as u64) << 20, f as u64);
            let pct = self.counts.durations[f as usize];
            for i in 0..c {
                let offset = 60.0 * (i as f64 + rng.f64()) / c as f64;
                let duration = match pct {
                    Some(p) => sample_percentiles(&p, rng.f64()),
                    None => 1.0,
                };
                self.buf.push(Invocation {
                    arrival: minute as f64 * 60.0 + offset,
                    duration,
                    function: f,
                });
            }
            self.next += 1;
        }
        self.buf.sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
        self.pos = 1;
        Some(self.buf[0])
    }
}

/// Inverse CDF through the percentile points, linear in between.
fn sample_percentiles(p: &[f32; 7], u: f64) -> f32 {
    for k in 1..PCTS.len() {
        if u <= PCTS[k] {
            let (q0, q1) = (PCTS[k - 1], PCTS[k]);
            let t = (u - q0) / (q1 - q0);
            return (p[k - 1] as f64 + t * (p[k] as f64 - p[k - 1] as f64)).max(0.0) as f32;
        }
    }
    p[6]
}

/// The sibling file of a 2019 invocations file (`invocations_per_function_md` replaced by
/// `stem`), if it exists.
fn sibling(path: &Path, stem: &str) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    if !name.contains("invocations_per_function_md") {
        return None;
    }
    let p = path.with_file_name(name.replace("invocations_per_function_md", stem));
    p.exists().then_some(p)
}

pub fn read_files(paths: &[PathBuf], opts: &ReadOptions) -> Result<Trace, TraceError> {
    let mut owners_apps = Interner::default(); // "owner/app"
    let mut funcs = Interner::default(); // "owner/app/function"
    let mut metas: Vec<FunctionMeta> = Vec::new();
    let mut entries: Vec<(u32, u32, u32)> = Vec::new();
    let mut total = 0u64;
    for (day, path) in paths.iter().enumerate() {
        let mut lines = Lines::open(path)?;
        let Some((_, header)) = lines.next_line()? else {
            return Err(TraceError::Format {
                path: path.clone(),
                message: "empty file".into(),
            });
        };
        let h: Vec<&str> = header.split(',').map(str::trim).collect();
        if h.len() != 4 + MINUTES
            || h[..4] != ["HashOwner", "HashApp", "HashFunction", "Trigger"]
            || h[4] != "1"
            || h[4 + MINUTES - 1] != "1440"
        {
            return Err(lines
                .error("header is not HashOwner,HashApp,HashFunction,Trigger,1,...,1440".into()));
        }
        while let Some((_, line)) = lines.next_line()? {
            let fields: Vec<&str> = line.split(',').collect();
            if fields.len() != 4 + MINUTES {
                return Err(lines.error(format!(
                    "expected {} fields, got {}",
                    4 + MINUTES,
                    fields.len()
                )));
            }
            let (owner, app, func) = (fields[0].trim(), fields[1].trim(), fields[2].trim());
            if owner.is_empty() || app.is_empty() || func.is_empty() {
                return Err(lines.error("empty owner, app or function id".into()));
            }
            let trigger = Trigger::parse(fields[3])
                .ok_or_else(|| lines.error(format!("unknown trigger {:?}", fields[3].trim())))?;
            let app_key = format!("{owner}/{app}");
            let a = owners_apps
                .get_or_insert(&app_key)
                .ok_or_else(|| lines.error("too many apps".into()))?;
            let key = format!("{owner}/{app}/{func}");
            let known = funcs.get(&key).is_some();
            let f = funcs
                .get_or_insert(&key)
                .ok_or_else(|| lines.error("too many functions".into()))?;
            if !known {
                metas.push(FunctionMeta {
                    app_name: app.to_string(),
                    name: func.to_string(),
                    info: FunctionInfo {
                        app: a,
                        memory_mb: DEFAULT_MEMORY_MB,
                        trigger: Some(trigger),
                    },
                });
            }
            for (m, field) in fields[4..].iter().enumerate() {
                let field = field.trim();
                if field == "0" || field.is_empty() {
                    continue;
                }
                let c: u32 = field.parse().map_err(|_| {
                    lines.error(format!(
                        "minute {}: count {field:?} is not a non-negative integer",
                        m + 1
                    ))
                })?;
                if c > 0 {
                    entries.push(((day * MINUTES + m) as u32, f, c));
                    total += c as u64;
                }
            }
        }
    }
    entries.sort_by_key(|&(m, f, _)| (m, f));

    // Durations and memory: from the first day's sibling files unless given.
    let first = &paths[0];
    let mut durations = vec![None; metas.len()];
    let dur_path = opts
        .durations
        .clone()
        .or_else(|| sibling(first, "function_durations_percentiles"));
    if let Some(p) = &dur_path {
        read_durations(p, &funcs, &mut durations)?;
    }
    let mem_path = opts
        .memory
        .clone()
        .or_else(|| sibling(first, "app_memory_percentiles"));
    if let Some(p) = &mem_path {
        let mem = read_memory(p)?;
        for (meta, app_key) in metas
            .iter_mut()
            .map(|m| {
                let k = owners_apps.names[m.info.app as usize].clone();
                (m, k)
            })
            .collect::<Vec<_>>()
        {
            if let Some(&mb) = mem.get(&app_key) {
                meta.info.memory_mb = mb;
            }
        }
    }
    let apps = owners_apps
        .names
        .iter()
        .map(|k| k.split('/').nth(1).unwrap_or(k).to_string())
        .collect();
    Ok(Trace {
        source: format!(
            "Azure Functions 2019 trace {} ({} day(s); durations {}, memory {})",
            first.display(),
            paths.len(),
            dur_path.map_or("absent: 1 s".into(), |p| p.display().to_string()),
            mem_path.map_or(format!("absent: {DEFAULT_MEMORY_MB} MB"), |p| p
                .display()
                .to_string()),
        ),
        synthetic: false,
        functions: metas,
        apps,
        invocations: Invocations::Minutes(MinuteCounts {
            entries,
            durations,
            seed: opts.seed,
            total,
        }),
        horizon: (paths.len() * MINUTES * 60) as f64,
    })
}

fn column(h: &[&str], name: &str, lines: &Lines) -> Result<usize, TraceError> {
    h.iter()
        .position(|c| *c == name)
        .ok_or_else(|| lines.error(format!("header has no column {name:?}")))
}

fn read_durations(
    path: &Path,
    funcs: &Interner,
    out: &mut [Option<[f32; 7]>],
) -> Result<(), TraceError> {
    let mut lines = Lines::open(path)?;
    let Some((_, header)) = lines.next_line()? else {
        return Ok(());
    };
    let h: Vec<&str> = header.split(',').map(str::trim).collect();
    let ids = [
        column(&h, "HashOwner", &lines)?,
        column(&h, "HashApp", &lines)?,
        column(&h, "HashFunction", &lines)?,
    ];
    let mut pcols = [0usize; 7];
    for (k, p) in ["0", "1", "25", "50", "75", "99", "100"].iter().enumerate() {
        pcols[k] = column(&h, &format!("percentile_Average_{p}"), &lines)?;
    }
    let width = h.len();
    while let Some((_, line)) = lines.next_line()? {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != width {
            return Err(lines.error(format!("expected {width} fields, got {}", fields.len())));
        }
        let key = format!(
            "{}/{}/{}",
            fields[ids[0]].trim(),
            fields[ids[1]].trim(),
            fields[ids[2]].trim()
        );
        let Some(f) = funcs.get(&key) else {
            continue; // a function never invoked in the given days
        };
        let mut p = [0f32; 7];
        for (k, &c) in pcols.iter().enumerate() {
            let ms = parse_f64(fields[c], "execution time").map_err(|m| lines.error(m))?;
            if ms < 0.0 {
                return Err(lines.error(format!("negative execution time {ms}")));
            }
            p[k] = (ms / 1000.0) as f32;
        }
        if p.windows(2).any(|w| w[1] < w[0]) {
            return Err(lines.error("execution-time percentiles are not increasing".into()));
        }
        out[f as usize] = Some(p);
    }
    Ok(())
}

fn read_memory(path: &Path) -> Result<HashMap<String, f64>, TraceError> {
    let mut lines = Lines::open(path)?;
    let mut out = HashMap::new();
    let Some((_, header)) = lines.next_line()? else {
        return Ok(out);
    };
    let h: Vec<&str> = header.split(',').map(str::trim).collect();
    let owner = column(&h, "HashOwner", &lines)?;
    let app = column(&h, "HashApp", &lines)?;
    let avg = column(&h, "AverageAllocatedMb", &lines)?;
    let width = h.len();
    while let Some((_, line)) = lines.next_line()? {
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != width {
            return Err(lines.error(format!("expected {width} fields, got {}", fields.len())));
        }
        let mb = parse_f64(fields[avg], "AverageAllocatedMb").map_err(|m| lines.error(m))?;
        if mb <= 0.0 {
            return Err(lines.error(format!("non-positive memory {mb}")));
        }
        out.insert(
            format!("{}/{}", fields[owner].trim(), fields[app].trim()),
            mb,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_sampling_is_piecewise_linear() {
        let p = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(sample_percentiles(&p, 0.0), 0.0);
        assert_eq!(sample_percentiles(&p, 0.5), 3.0);
        assert!((sample_percentiles(&p, 0.375) - 2.5).abs() < 1e-6);
        assert_eq!(sample_percentiles(&p, 1.0), 6.0);
    }
}
