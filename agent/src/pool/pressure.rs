//! Node pressure: Linux PSI (`/proc/pressure/{cpu,memory}`, kernel ≥ 4.20 with
//! `CONFIG_PSI`) read by the node collector, and the pure gate that tells the pool
//! manager to hold back speculative work while the node is under pressure.
//!
//! PSI's "some" line is the share of wall time in which at least one task stalled on the
//! resource; `avg10` is its 10-second average, in percent. It measures the contention
//! itself (run-queue waits, reclaim stalls) rather than a utilisation proxy, node-wide,
//! so it also sees pressure from work that is not a function instance.
//!
//! Under pressure the manager keeps the starts that the minimum and the forecast need
//! (hot targets) and drops the speculative ones ([`super::hold_back`]): pre-warm loads,
//! starts for warm targets (sized from the forecast's upper quantile) and stages of
//! images. Without PSI (an older kernel, `psi=0`) the gate never closes.

use std::fs;
use std::path::Path;

/// PSI, as the node collector reads it.
#[derive(Debug, thiserror::Error)]
pub enum PressureError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no \"some avg10=\" in {path}: {text:?}")]
    Format { path: String, text: String },
}

/// One PSI file's `some` line, percentages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PsiSome {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
}

/// Parses the `some` line of a PSI file (`some avg10=5.44 avg60=18.07 avg300=18.40
/// total=3802751963`); `None` when it has none.
pub fn parse_psi_some(text: &str) -> Option<PsiSome> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    let field = |key: &str| -> Option<f64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))?
            .parse()
            .ok()
    };
    Some(PsiSome {
        avg10: field("avg10")?,
        avg60: field("avg60")?,
        avg300: field("avg300")?,
    })
}

/// The node's pressure now: PSI "some" avg10, percent.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NodePressure {
    pub cpu_some_pct: f64,
    pub memory_some_pct: f64,
}

/// Reads `cpu` and `memory` under `dir` (`/proc/pressure`).
pub fn read_node_pressure(dir: &Path) -> Result<NodePressure, PressureError> {
    let read = |name: &str| -> Result<PsiSome, PressureError> {
        let p = dir.join(name);
        let path = p.display().to_string();
        let text = fs::read_to_string(&p).map_err(|source| PressureError::Io {
            path: path.clone(),
            source,
        })?;
        parse_psi_some(&text).ok_or(PressureError::Format { path, text })
    };
    Ok(NodePressure {
        cpu_some_pct: read("cpu")?.avg10,
        memory_some_pct: read("memory")?.avg10,
    })
}

/// When the node counts as under pressure (PSI "some" avg10, percent; above 100: never).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PressureThresholds {
    pub cpu_some_pct: f64,
    pub memory_some_pct: f64,
}

impl Default for PressureThresholds {
    /// CPU: 90 % of the time something waits for a CPU — a saturated node, not a busy
    /// one (a build on two cores sits at 20–60 %). Memory: 20 % of the time something
    /// stalls in reclaim — pre-warming more would only add to the thrashing.
    fn default() -> Self {
        PressureThresholds {
            cpu_some_pct: 90.0,
            memory_some_pct: 20.0,
        }
    }
}

/// Fraction of a threshold under which pressure must fall before the gate opens again,
/// so that avg10 hovering at a threshold does not flip it every reconcile.
pub const RELEASE_FRACTION: f64 = 0.75;

/// The gate, with hysteresis: closes when a resource reaches its threshold, opens when
/// every resource is below [`RELEASE_FRACTION`] of its threshold.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PressureGate {
    held: bool,
}

impl PressureGate {
    /// Updates with the latest reading (`None`: PSI unavailable — open) and returns
    /// whether speculative work is held back now.
    pub fn update(&mut self, p: Option<NodePressure>, t: &PressureThresholds) -> bool {
        let Some(p) = p else {
            self.held = false;
            return false;
        };
        let over = |v: f64, limit: f64, frac: f64| v >= limit * frac;
        self.held = if self.held {
            over(p.cpu_some_pct, t.cpu_some_pct, RELEASE_FRACTION)
                || over(p.memory_some_pct, t.memory_some_pct, RELEASE_FRACTION)
        } else {
            over(p.cpu_some_pct, t.cpu_some_pct, 1.0)
                || over(p.memory_some_pct, t.memory_some_pct, 1.0)
        };
        self.held
    }

    pub fn held(&self) -> bool {
        self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What this kernel's (6.18) /proc/pressure files held during a CI run.
    const CPU: &str = "some avg10=5.44 avg60=18.07 avg300=18.40 total=3802751963\n\
                       full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
    const MEMORY: &str = "some avg10=0.00 avg60=0.00 avg300=0.00 total=3718311\n\
                          full avg10=0.00 avg60=0.00 avg300=0.00 total=1647308\n";
    /// Kernels before 5.13 have no "full" line in the cpu file.
    const CPU_OLD: &str = "some avg10=91.20 avg60=40.00 avg300=12.5 total=12\n";

    #[test]
    fn parses_real_psi_files() {
        assert_eq!(
            parse_psi_some(CPU),
            Some(PsiSome {
                avg10: 5.44,
                avg60: 18.07,
                avg300: 18.40
            })
        );
        assert_eq!(parse_psi_some(MEMORY).map(|s| s.avg10), Some(0.0));
        assert_eq!(parse_psi_some(CPU_OLD).map(|s| s.avg300), Some(12.5));
        assert_eq!(
            parse_psi_some("full avg10=1.00 avg60=0 avg300=0 total=0\n"),
            None
        );
        assert_eq!(parse_psi_some("some avg10=x avg60=0 avg300=0\n"), None);
        assert_eq!(parse_psi_some(""), None);
    }

    #[test]
    fn reads_a_pressure_directory_and_names_what_is_wrong() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cpu"), CPU_OLD).unwrap();
        std::fs::write(d.path().join("memory"), MEMORY).unwrap();
        let p = read_node_pressure(d.path()).unwrap();
        assert_eq!(
            p,
            NodePressure {
                cpu_some_pct: 91.2,
                memory_some_pct: 0.0
            }
        );
        std::fs::write(d.path().join("memory"), "garbage\n").unwrap();
        let e = read_node_pressure(d.path()).unwrap_err();
        assert!(matches!(e, PressureError::Format { .. }), "{e}");
        let e = read_node_pressure(&d.path().join("absent")).unwrap_err();
        assert!(matches!(e, PressureError::Io { .. }), "{e}");
    }

    #[test]
    fn this_kernels_psi_parses_when_present() {
        let dir = Path::new("/proc/pressure");
        if dir.join("cpu").exists() {
            let p = read_node_pressure(dir).expect("PSI files parse");
            assert!((0.0..=100.0).contains(&p.cpu_some_pct), "{p:?}");
            assert!((0.0..=100.0).contains(&p.memory_some_pct), "{p:?}");
        }
    }

    #[test]
    fn the_gate_closes_at_a_threshold_and_opens_well_below_it() {
        let t = PressureThresholds::default();
        let mut g = PressureGate::default();
        let p = |cpu, memory| {
            Some(NodePressure {
                cpu_some_pct: cpu,
                memory_some_pct: memory,
            })
        };
        assert!(!g.update(p(50.0, 5.0), &t));
        assert!(g.update(p(50.0, 20.0), &t), "memory at its threshold");
        // Hysteresis: still held at 80 % of the threshold, open below 75 %.
        assert!(g.update(p(50.0, 16.0), &t));
        assert!(!g.update(p(50.0, 14.0), &t));
        assert!(g.update(p(95.0, 0.0), &t), "cpu over its threshold");
        assert!(g.held());
        // PSI gone (or unreadable): never held.
        assert!(!g.update(None, &t));
        // Thresholds above 100 % disable a resource.
        let off = PressureThresholds {
            cpu_some_pct: 101.0,
            memory_some_pct: 101.0,
        };
        assert!(!g.update(p(100.0, 100.0), &off));
    }
}
