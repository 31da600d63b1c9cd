//! Whether this node's fast path — checkpoints and restores, which need CRIU and
//! rekindle-restored — works, as rekindle-restored reports it. When it does not (CRIU
//! missing or broken, the daemon down), the agent says so (log, `/metrics`, admin
//! status), starts instances cold, and stops planning checkpoints and stages that could
//! only fail; when it comes back, so does the fast path. The same loop keeps the pools'
//! view of the functions' images in line with the store's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::pool::manager::PoolManager;

/// Bound on one probe of rekindle-restored.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The fast path's state and, when it is unavailable, why and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FastPath {
    pub available: bool,
    /// The CRIU version rekindle-restored runs, when it could tell.
    pub criu_version: Option<String>,
    /// Why it is unavailable, with the fix.
    pub reason: Option<String>,
}

impl FastPath {
    /// What rekindle-restored's stats (or the failure to get them) say. Pure.
    pub fn judge(stats: Result<&rekindle_restore_api::Stats, String>, socket: &Path) -> FastPath {
        match stats {
            Err(e) => FastPath {
                available: false,
                criu_version: None,
                reason: Some(format!(
                    "rekindle-restored is not reachable on {}: {e}: start it \
                     (`systemctl start rekindle-restored`), or set restored_socket to the \
                     socket it listens on",
                    socket.display()
                )),
            },
            Ok(s) => match &s.criu_version {
                Some(v) => FastPath {
                    available: true,
                    criu_version: Some(v.clone()),
                    reason: None,
                },
                None => FastPath {
                    available: false,
                    criu_version: None,
                    reason: Some(
                        "rekindle-restored found no working CRIU (`criu --version` of its \
                         criu_binary failed or it is missing): install CRIU 4.2 or later \
                         (`hack/setup.sh` builds it into /usr/local/sbin), or set criu_binary \
                         in /etc/rekindle/restored.toml, then restart rekindle-restored"
                            .into(),
                    ),
                },
            },
        }
    }

    /// Asks rekindle-restored on `socket`.
    pub async fn probe(socket: &Path) -> FastPath {
        let client = rekindle_restore_api::Client::new(socket);
        let stats = match tokio::time::timeout(PROBE_TIMEOUT, client.stats()).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
        };
        FastPath::judge(stats.as_ref().map_err(Clone::clone), socket)
    }
}

/// The images in rekindle-restored's store (name → staged), or `None` when it cannot
/// tell now.
async fn store_images(socket: &Path) -> Option<HashMap<String, bool>> {
    let client = rekindle_restore_api::Client::new(socket);
    match tokio::time::timeout(PROBE_TIMEOUT, client.list_images()).await {
        Ok(Ok(list)) => Some(
            list.into_iter()
                .map(|i| (i.manifest.name, i.staged))
                .collect(),
        ),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "listing the store's images");
            None
        }
        Err(_) => None,
    }
}

/// One look at rekindle-restored on `socket`: the fast path's state, told to the pool
/// and `/metrics`, a change logged (a warning with the reason when it goes, info when it
/// comes back; `last` is the state seen before, `None` at start); and the images in the
/// store, which the pools' image state follows (an operator's `rekindle image rm`, a GC,
/// a restarted daemon that staged nothing yet).
pub async fn refresh(pool: &PoolManager, socket: &Path, last: &mut Option<bool>) {
    let fp = FastPath::probe(socket).await;
    if *last != Some(fp.available) {
        if fp.available {
            tracing::info!(criu_version = ?fp.criu_version, "fast path available");
        } else {
            tracing::warn!(
                reason = fp.reason.as_deref().unwrap_or(""),
                "fast path UNAVAILABLE: instances start cold until it is back"
            );
        }
        *last = Some(fp.available);
    }
    pool.metrics().set_fast_path(fp.available);
    pool.set_fast_path(fp);
    let ops = pool.image_ops();
    if let Some(images) = store_images(socket).await {
        pool.sync_images(&images, ops);
    }
}

/// [`refresh`] every `every`, and at once when an image operation failed, until `stop`;
/// `last` as the agent's start-up [`refresh`] left it.
pub async fn watch(
    pool: PoolManager,
    socket: PathBuf,
    every: Duration,
    mut last: Option<bool>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = pool.resync_wanted() => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            break;
        }
        refresh(&pool, &socket, &mut last).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(criu: Option<&str>) -> rekindle_restore_api::Stats {
        rekindle_restore_api::Stats {
            version: "0.1.0".into(),
            protocol: 1,
            uptime_secs: 1,
            criu_version: criu.map(str::to_string),
            kernel_release: "6.18.0".into(),
            images: 0,
            store_bytes: 0,
            staged_images: 0,
            staged_bytes: 0,
            leases: 0,
            requests: Default::default(),
            failures: Default::default(),
            failures_by_op: Default::default(),
            restores: Vec::new(),
        }
    }

    #[test]
    fn criu_missing_or_the_daemon_down_make_it_unavailable_with_the_fix() {
        let socket = Path::new("/run/rekindle/restored.sock");
        let ok = FastPath::judge(Ok(&stats(Some("4.2.1"))), socket);
        assert!(ok.available && ok.reason.is_none());
        assert_eq!(ok.criu_version.as_deref(), Some("4.2.1"));

        let no_criu = FastPath::judge(Ok(&stats(None)), socket);
        assert!(!no_criu.available);
        let why = no_criu.reason.unwrap();
        assert!(
            why.contains("no working CRIU") && why.contains("hack/setup.sh"),
            "{why}"
        );

        let down = FastPath::judge(Err("connection refused".into()), socket);
        assert!(!down.available);
        let why = down.reason.unwrap();
        assert!(
            why.contains("/run/rekindle/restored.sock")
                && why.contains("connection refused")
                && why.contains("systemctl start rekindle-restored"),
            "{why}"
        );
    }
}
