//! The Azure Functions Invocation Trace 2021 (Zhang et al., SOSP'21): one row per
//! invocation, `app,func,end_timestamp,duration` — ids are hashes (`func` unique only
//! within its app), `end_timestamp` is seconds from the trace start, `duration` seconds.
//! The arrival is `end_timestamp − duration`. The header is optional; the columns may
//! come in any order when it is present.

use std::path::Path;

use super::{
    parse_f64, FunctionMeta, Interner, Invocation, Invocations, Lines, Trace, TraceError,
    DEFAULT_MEMORY_MB,
};
use crate::policy::FunctionInfo;

/// An arrival earlier than the trace start by more than this (seconds) is an error; less
/// is rounding in the trace and is clamped to 0.
const NEGATIVE_TOLERANCE: f64 = 1.0;

pub fn read_file(path: &Path) -> Result<Trace, TraceError> {
    let mut lines = Lines::open(path)?;
    let mut apps = Interner::default();
    let mut funcs = Interner::default();
    let mut fn_app: Vec<u32> = Vec::new();
    let mut fn_name: Vec<String> = Vec::new();
    let mut invocations = Vec::new();
    let mut cols = [0usize, 1, 2, 3];
    let mut first = true;
    while let Some((_, line)) = lines.next_line()? {
        let fields: Vec<&str> = line.split(',').collect();
        if first {
            first = false;
            if fields.iter().any(|f| f.trim() == "end_timestamp") {
                for (k, name) in ["app", "func", "end_timestamp", "duration"]
                    .iter()
                    .enumerate()
                {
                    cols[k] = fields
                        .iter()
                        .position(|f| f.trim() == *name)
                        .ok_or_else(|| lines.error(format!("header has no column {name:?}")))?;
                }
                continue;
            }
        }
        let want = cols.iter().max().expect("four columns") + 1;
        if fields.len() < want {
            return Err(lines.error(format!(
                "expected {want} comma-separated fields (app,func,end_timestamp,duration), got {}",
                fields.len()
            )));
        }
        let app = fields[cols[0]].trim();
        let func = fields[cols[1]].trim();
        if app.is_empty() || func.is_empty() {
            return Err(lines.error("empty app or func id".into()));
        }
        let end = parse_f64(fields[cols[2]], "end_timestamp").map_err(|m| lines.error(m))?;
        let duration = parse_f64(fields[cols[3]], "duration").map_err(|m| lines.error(m))?;
        if duration < 0.0 {
            return Err(lines.error(format!("negative duration {duration}")));
        }
        let mut arrival = end - duration;
        if arrival < -NEGATIVE_TOLERANCE {
            return Err(lines.error(format!(
                "arrival (end_timestamp {end} − duration {duration}) is before the trace start"
            )));
        }
        arrival = arrival.max(0.0);
        let a = apps
            .get_or_insert(app)
            .ok_or_else(|| lines.error("too many apps".into()))?;
        // func ids are unique only within an app.
        let key = format!("{app}/{func}");
        let known = funcs.get(&key).is_some();
        let f = funcs
            .get_or_insert(&key)
            .ok_or_else(|| lines.error("too many functions".into()))?;
        if !known {
            fn_app.push(a);
            fn_name.push(func.to_string());
        }
        invocations.push(Invocation {
            arrival,
            duration: duration as f32,
            function: f,
        });
    }
    invocations.sort_by(|a, b| a.arrival.total_cmp(&b.arrival));
    let horizon = invocations
        .iter()
        .map(|i| i.arrival + i.duration as f64)
        .fold(0.0, f64::max);
    let functions = fn_app
        .iter()
        .zip(fn_name)
        .map(|(&app, name)| FunctionMeta {
            app_name: apps.names[app as usize].clone(),
            name,
            info: FunctionInfo {
                app,
                memory_mb: DEFAULT_MEMORY_MB,
                trigger: None,
            },
        })
        .collect();
    Ok(Trace {
        source: format!("Azure Functions 2021 trace {}", path.display()),
        synthetic: false,
        functions,
        apps: apps.names,
        invocations: Invocations::List(invocations),
        horizon: (horizon / 60.0).ceil() * 60.0,
    })
}
