//! Fixed keep-alive: after each invocation, keep the instance hot for a fixed window, then
//! unload it. Shahrad et al. (ATC'20, §4.1) describe this as the state of the practice:
//! AWS Lambda keeps an instance for 10 minutes, Azure Functions for 20. No pre-warming.

use super::{FunctionId, FunctionInfo, Plan, Policy, Secs};

#[derive(Debug, Clone)]
pub struct FixedKeepAlive {
    keep_alive: Secs,
}

impl FixedKeepAlive {
    pub fn new(keep_alive: Secs) -> Self {
        FixedKeepAlive { keep_alive }
    }

    /// The industry baseline of the issue: 10 minutes.
    pub fn ten_minutes() -> Self {
        Self::new(600.0)
    }
}

impl Policy for FixedKeepAlive {
    fn name(&self) -> String {
        format!("fixed-{}min", (self.keep_alive / 60.0).round())
    }

    fn describe(&self) -> String {
        format!(
            "keep hot {:.0} s after each invocation, no pre-warming",
            self.keep_alive
        )
    }

    fn register(&mut self, _f: FunctionId, _info: &FunctionInfo) {}

    fn on_arrival(&mut self, _f: FunctionId, _at: Secs) {}

    fn on_end(&mut self, _f: FunctionId, _at: Secs, _exec: Secs) {}

    fn plan(&mut self, _f: FunctionId, _now: Secs) -> Plan {
        Plan::windows(0.0, self.keep_alive)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_hot_for_the_window_and_never_pre_warms() {
        let mut p = FixedKeepAlive::ten_minutes();
        p.register(
            0,
            &FunctionInfo {
                app: 0,
                memory_mb: 128.0,
                trigger: None,
            },
        );
        for i in 0..5 {
            p.on_arrival(0, i as f64 * 420.0);
            p.on_end(0, i as f64 * 420.0 + 1.0, 1.0);
            let plan = p.plan(0, i as f64 * 420.0 + 1.0);
            assert_eq!(plan.pre_warm, 0.0);
            assert_eq!(plan.keep_alive.hot, 600.0);
            assert_eq!(plan.keep_alive.window(), 600.0);
            assert_eq!(plan.targets.hot, 0);
        }
        assert_eq!(p.name(), "fixed-10min");
    }
}
