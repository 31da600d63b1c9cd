//! Invocation traces: the two public Azure Functions formats, read from a file the user
//! names, into one in-memory form the simulator replays.
//!
//! - Azure Functions Invocation Trace 2021 ([`azure2021`]): one row per invocation,
//!   `app,func,end_timestamp,duration` (seconds; arrival = end − duration).
//! - Azure Functions Trace 2019 ([`azure2019`]): per function and day, the invocation
//!   count of each of the 1440 minutes (`HashOwner,HashApp,HashFunction,Trigger,1..1440`),
//!   with optional execution-time percentiles per function and allocated-memory
//!   percentiles per app in sibling files.
//!
//! Reading is streaming and bounded: lines longer than [`MAX_LINE`] bytes are refused,
//! ids are interned once, a 2021 invocation takes 16 bytes, and a 2019 trace is kept as
//! its non-zero minute counts (12 bytes each), expanded into invocations only while
//! replaying. Every bad row is reported with its file and line number.

pub mod azure2019;
pub mod azure2021;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::policy::{FunctionId, FunctionInfo, Secs};

/// Longest line accepted (a 2019 invocation row is ~8 KB at most; a 2021 row ~150 bytes).
pub const MAX_LINE: usize = 64 * 1024;
/// Most distinct functions accepted in one trace.
pub const MAX_FUNCTIONS: usize = 2_000_000;
/// Memory assumed for a function whose trace says nothing about memory, MB: about the
/// median of the apps' average allocated memory in the Azure 2019 trace (Shahrad et al.,
/// Fig. 8: half of the apps allocate at most ~150 MB).
pub const DEFAULT_MEMORY_MB: f64 = 150.0;

/// One invocation: 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Invocation {
    /// Arrival, seconds since the trace start.
    pub arrival: Secs,
    /// Execution time, seconds.
    pub duration: f32,
    pub function: FunctionId,
}

/// A function of a trace.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionMeta {
    pub app_name: String,
    pub name: String,
    pub info: FunctionInfo,
}

/// The invocations, in arrival order.
#[derive(Debug, Clone)]
pub enum Invocations {
    /// Every invocation, sorted by arrival.
    List(Vec<Invocation>),
    /// Per-minute counts, expanded while iterating (Azure 2019).
    Minutes(azure2019::MinuteCounts),
}

/// A trace: its functions, its invocations, and where it came from.
#[derive(Debug, Clone)]
pub struct Trace {
    /// What this is ("Azure 2021 trace FILE", "synthetic, seed 1, ...").
    pub source: String,
    pub synthetic: bool,
    pub functions: Vec<FunctionMeta>,
    pub apps: Vec<String>,
    pub invocations: Invocations,
    /// Length of the trace, seconds (the end of its last minute).
    pub horizon: Secs,
}

impl Trace {
    /// The invocations in arrival order.
    pub fn iter(&self) -> Box<dyn Iterator<Item = Invocation> + '_> {
        match &self.invocations {
            Invocations::List(v) => Box::new(v.iter().copied()),
            Invocations::Minutes(m) => Box::new(m.iter()),
        }
    }

    /// Number of invocations.
    pub fn len(&self) -> u64 {
        match &self.invocations {
            Invocations::List(v) => v.len() as u64,
            Invocations::Minutes(m) => m.total(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Write the trace in the Azure 2021 format (`app,func,end_timestamp,duration`).
    pub fn write_azure2021(&self, out: &mut dyn io::Write) -> io::Result<()> {
        writeln!(out, "app,func,end_timestamp,duration")?;
        for inv in self.iter() {
            let f = &self.functions[inv.function as usize];
            writeln!(
                out,
                "{},{},{:.3},{:.3}",
                f.app_name,
                f.name,
                inv.arrival + inv.duration as f64,
                inv.duration
            )?;
        }
        Ok(())
    }
}

/// A trace file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}:{line}: {message}", .path.display())]
    Row {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("{}: {message}", .path.display())]
    Format { path: PathBuf, message: String },
}

/// The trace formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Decide from the file's header.
    Auto,
    /// Azure Functions Invocation Trace 2021.
    Azure2021,
    /// Azure Functions Trace 2019 (invocations per function per minute).
    Azure2019,
}

/// Options of [`read`].
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// 2019: execution-time percentiles (default: the sibling
    /// `function_durations_percentiles.anon.dNN.csv`, if present).
    pub durations: Option<PathBuf>,
    /// 2019: app memory percentiles (default: the sibling
    /// `app_memory_percentiles.anon.dNN.csv`, if present).
    pub memory: Option<PathBuf>,
    /// Seed of the 2019 expansion (where in its minute each invocation falls, and its
    /// execution time drawn from the function's percentiles).
    pub seed: u64,
}

/// Read one trace (several files for 2019: consecutive days).
pub fn read(paths: &[PathBuf], format: Format, opts: &ReadOptions) -> Result<Trace, TraceError> {
    let first = paths.first().ok_or_else(|| TraceError::Format {
        path: PathBuf::new(),
        message: "no trace file given".into(),
    })?;
    let format = match format {
        Format::Auto => detect(first)?,
        f => f,
    };
    match format {
        Format::Azure2021 => {
            if paths.len() > 1 {
                return Err(TraceError::Format {
                    path: paths[1].clone(),
                    message: "the 2021 format is one file; give one --trace".into(),
                });
            }
            azure2021::read_file(first)
        }
        Format::Azure2019 => azure2019::read_files(paths, opts),
        Format::Auto => unreachable!("resolved above"),
    }
}

/// Tell the format from the header line.
pub fn detect(path: &Path) -> Result<Format, TraceError> {
    let mut lines = Lines::open(path)?;
    let Some((_, header)) = lines.next_line()? else {
        return Err(TraceError::Format {
            path: path.into(),
            message: "empty file".into(),
        });
    };
    let h = header.to_ascii_lowercase();
    if h.starts_with("hashowner,hashapp,hashfunction,trigger") {
        Ok(Format::Azure2019)
    } else if h.starts_with("hashowner,hashapp,hashfunction,average")
        || h.starts_with("hashowner,hashapp,samplecount")
    {
        Err(TraceError::Format {
            path: path.into(),
            message: "this is a 2019 durations or memory file; give the invocations file \
                      (invocations_per_function_md.anon.dNN.csv) as --trace, and this one \
                      with --durations/--memory"
                .into(),
        })
    } else if h.contains("end_timestamp") || header.split(',').count() == 4 {
        Ok(Format::Azure2021)
    } else {
        Err(TraceError::Format {
            path: path.into(),
            message: format!(
                "unknown format (header {:?}); expected the Azure 2021 \
                 `app,func,end_timestamp,duration` or the 2019 \
                 `HashOwner,HashApp,HashFunction,Trigger,1..1440` invocations file",
                truncate(&header, 80)
            ),
        })
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Bounded line reader with line numbers.
pub(crate) struct Lines {
    path: PathBuf,
    reader: BufReader<File>,
    line: u64,
    buf: Vec<u8>,
}

impl Lines {
    pub(crate) fn open(path: &Path) -> Result<Self, TraceError> {
        let file = File::open(path).map_err(|source| TraceError::Io {
            path: path.into(),
            source,
        })?;
        Ok(Lines {
            path: path.into(),
            reader: BufReader::with_capacity(1 << 16, file),
            line: 0,
            buf: Vec::new(),
        })
    }

    /// The next non-empty line (without its line ending), with its number.
    pub(crate) fn next_line(&mut self) -> Result<Option<(u64, String)>, TraceError> {
        loop {
            self.buf.clear();
            let n = (&mut self.reader)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut self.buf)
                .map_err(|source| TraceError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            if n == 0 {
                return Ok(None);
            }
            self.line += 1;
            if self.buf.len() > MAX_LINE {
                return Err(self.error(format!("line longer than {MAX_LINE} bytes")));
            }
            while matches!(self.buf.last(), Some(b'\n' | b'\r')) {
                self.buf.pop();
            }
            if self.buf.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            let s = std::str::from_utf8(&self.buf)
                .map_err(|_| self.error("not UTF-8 text".to_string()))?;
            return Ok(Some((self.line, s.to_string())));
        }
    }

    pub(crate) fn error(&self, message: String) -> TraceError {
        TraceError::Row {
            path: self.path.clone(),
            line: self.line,
            message,
        }
    }
}

/// Interns names into dense indices.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    map: HashMap<String, u32>,
    pub(crate) names: Vec<String>,
}

impl Interner {
    pub(crate) fn get_or_insert(&mut self, name: &str) -> Option<u32> {
        if let Some(&i) = self.map.get(name) {
            return Some(i);
        }
        if self.names.len() >= MAX_FUNCTIONS {
            return None;
        }
        let i = self.names.len() as u32;
        self.map.insert(name.to_string(), i);
        self.names.push(name.to_string());
        Some(i)
    }

    pub(crate) fn get(&self, name: &str) -> Option<u32> {
        self.map.get(name).copied()
    }
}

pub(crate) fn parse_f64(field: &str, what: &str) -> Result<f64, String> {
    let v: f64 = field
        .trim()
        .parse()
        .map_err(|_| format!("{what} {:?} is not a number", truncate(field, 40)))?;
    if !v.is_finite() {
        return Err(format!("{what} {v} is not finite"));
    }
    Ok(v)
}
