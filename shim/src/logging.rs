//! The shim's log: containerd's log fifo (containerd copies it into its own log
//! as is), every line tagged with the shim's `namespace` and `id`.
//!
//! Why: containerd's log interleaves the lines of every shim on the node, and
//! `containerd_shim::logger` writes only the time, the level, the event's own
//! fields and the message; the `id` of the span an event runs in is lost on the
//! way (`tracing`'s `log` bridge). A shim serves one container, or the
//! containers of one pod (its `-id` is then the sandbox's), so the shim's id
//! names whose line it is.

use containerd_shim::logger::FifoLogger;
use log::kv::{self, Key, Value, VisitSource};
use log::{LevelFilter, Log, Metadata, Record};
use std::str::FromStr;

/// The level variable containerd's shims read (`containerd_shim::logger::LOG_ENV`).
const LEVEL_ENV: &str = containerd_shim::logger::LOG_ENV;

/// Opens containerd's log fifo for this shim (`namespace`, `id`: its flags) and
/// sends `log` records (hence `tracing` events) there. The level: `RUST_LOG`,
/// else `default_level`; at least debug with containerd's `-debug`.
pub fn init(debug: bool, default_level: &str, namespace: &str, id: &str) -> std::io::Result<()> {
    let inner = FifoLogger::new(namespace, id)?;
    log::set_boxed_logger(Box::new(Tagged {
        inner,
        namespace: namespace.to_string(),
        id: id.to_string(),
    }))
    .map_err(std::io::Error::other)?;
    log::set_max_level(level(
        debug,
        std::env::var(LEVEL_ENV).ok().as_deref(),
        default_level,
    ));
    Ok(())
}

/// The level `init` sets (containerd_shim's rule: an unreadable level is info).
fn level(debug: bool, env: Option<&str>, default_level: &str) -> LevelFilter {
    let level = LevelFilter::from_str(env.unwrap_or(default_level)).unwrap_or(LevelFilter::Info);
    if debug {
        level.max(LevelFilter::Debug)
    } else {
        level
    }
}

struct Tagged {
    inner: FifoLogger,
    namespace: String,
    id: String,
}

/// The shim's fields first, then the record's own.
struct Fields<'a> {
    namespace: &'a str,
    id: &'a str,
    record: &'a dyn kv::Source,
}

impl kv::Source for Fields<'_> {
    fn visit<'kvs>(&'kvs self, visitor: &mut dyn VisitSource<'kvs>) -> Result<(), kv::Error> {
        visitor.visit_pair(Key::from_str("namespace"), Value::from(self.namespace))?;
        visitor.visit_pair(Key::from_str("id"), Value::from(self.id))?;
        self.record.visit(visitor)
    }
}

impl Log for Tagged {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        let fields = Fields {
            namespace: &self.namespace,
            id: &self.id,
            record: record.key_values(),
        };
        self.inner.log(
            &Record::builder()
                .metadata(record.metadata().clone())
                .args(*record.args())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .key_values(&fields)
                .build(),
        );
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_from_env_default_and_debug_flag() {
        assert_eq!(level(false, None, "info"), LevelFilter::Info);
        assert_eq!(level(false, Some("warn"), "info"), LevelFilter::Warn);
        assert_eq!(level(false, Some("nonsense"), "info"), LevelFilter::Info);
        // -debug raises to debug, never lowers trace.
        assert_eq!(level(true, Some("warn"), "info"), LevelFilter::Debug);
        assert_eq!(level(true, Some("trace"), "info"), LevelFilter::Trace);
    }

    #[test]
    fn fields_come_first_then_the_records_own() {
        struct Collect(Vec<(String, String)>);
        impl<'kvs> VisitSource<'kvs> for Collect {
            fn visit_pair(&mut self, k: Key<'kvs>, v: Value<'kvs>) -> Result<(), kv::Error> {
                self.0.push((k.to_string(), v.to_string()));
                Ok(())
            }
        }
        let own: &[(&str, &str)] = &[("pid", "42")];
        let fields = Fields {
            namespace: "k8s.io",
            id: "fn-1",
            record: &own,
        };
        let mut seen = Collect(Vec::new());
        kv::Source::visit(&fields, &mut seen).unwrap();
        let pairs: Vec<(&str, &str)> = seen
            .0
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [("namespace", "k8s.io"), ("id", "fn-1"), ("pid", "42")]
        );
    }
}
