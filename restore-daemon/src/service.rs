//! The daemon's operations: the store, the staging area, restore leases and counters,
//! behind one `handle(op)`. The socket side lives in `server`.
//!
//! Concurrency: each image has a read/write lock. Operations that change an image (store,
//! delete, stage, unstage, import, GC's deletes) hold it exclusively; those that only read
//! it (get, export, prepare_restore) share it, so an export does not hold up a restore.
//! Different images never wait for each other. File work runs on blocking threads.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rekindle_restore_api::{
    clip_reason, ApiError, Deleted, ErrorCode, Exported, GcDeleted, GcReport, GcSkipped, ImageInfo,
    ImageList, Manifest, Op, Prepared, Released, Reported, RestoreCount, Staged, Stats, Unstaged,
    PROTOCOL_VERSION, RESTORE_ENGINES, RESTORE_OUTCOMES,
};
use serde::Serialize;
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

use crate::gc;
use crate::host::{self, HostInfo};
use crate::stage::StageArea;
use crate::store::archive::DEFAULT_ZSTD_LEVEL;
use crate::store::{self, fsutil, manifest, validate_name, NewImage, Store};

/// Who is asking (from the socket's peer credentials).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub pid: Option<i32>,
}

impl Peer {
    /// Files a non-root client names must be its own.
    fn owner(&self) -> Option<u32> {
        (self.uid != 0).then_some(self.uid)
    }
}

/// A successful operation: its `ok` body, and the bytes it moved (for the log).
#[derive(Debug)]
pub struct Outcome {
    pub body: serde_json::Value,
    pub bytes: u64,
}

type OpResult = Result<Outcome, ApiError>;

fn outcome<T: Serialize>(body: T, bytes: u64) -> OpResult {
    serde_json::to_value(body)
        .map(|body| Outcome { body, bytes })
        .map_err(|e| internal(format!("cannot encode the response: {e}")))
}

fn internal(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Internal, msg)
}

fn api(e: store::Error) -> ApiError {
    ApiError::new(e.code(), e.to_string())
}

fn precondition(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::FailedPrecondition, msg)
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, store::Error> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(api),
        Err(e) => Err(internal(format!("a worker thread failed: {e}"))),
    }
}

#[derive(Debug, Clone)]
struct StagedImage {
    dir: PathBuf,
    bytes: u64,
    manifest: Arc<Manifest>,
}

#[derive(Debug, Clone)]
struct Lease {
    name: String,
    /// The lease's own decompressed copy; `None` when it uses the staged copy.
    dir: Option<PathBuf>,
    created: Instant,
}

#[derive(Debug, Default)]
struct State {
    staged: HashMap<String, StagedImage>,
    leases: HashMap<String, Lease>,
}

impl State {
    fn leases_of(&self, name: &str) -> usize {
        self.leases.values().filter(|l| l.name == name).count()
    }

    fn staged_leases_of(&self, name: &str) -> usize {
        self.leases
            .values()
            .filter(|l| l.name == name && l.dir.is_none())
            .count()
    }

    fn held(&self, name: &str) -> Option<&'static str> {
        if self.staged.contains_key(name) {
            Some("staged")
        } else if self.leases_of(name) > 0 {
            Some("leased")
        } else {
            None
        }
    }
}

/// Requests and failures, by op and by reason, and the restore outcomes the shim
/// reported, since the daemon started.
#[derive(Debug, Default)]
struct Counters {
    requests: BTreeMap<String, u64>,
    failures: BTreeMap<String, u64>,
    failures_by_op: BTreeMap<String, BTreeMap<String, u64>>,
    /// By (index in `RESTORE_ENGINES`, index in `RESTORE_OUTCOMES`): fallback order.
    restores: BTreeMap<(usize, usize), RestoreTally>,
}

#[derive(Debug, Default, Clone)]
struct RestoreTally {
    count: u64,
    /// Of the latest failure that gave a reason.
    last_reason: Option<String>,
    last_unix: u64,
}

/// The index of `value` in `allowed`, or `invalid_argument` naming the allowed values.
fn one_of(what: &str, value: &str, allowed: &[&str]) -> Result<usize, ApiError> {
    allowed.iter().position(|a| *a == value).ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidArgument,
            format!(
                "invalid {what} {value:?}: expected one of {}",
                allowed.join(", ")
            ),
        )
    })
}

/// What the daemon is configured with, besides its store and staging area.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A lease not released within this long is taken back (its copy deleted).
    pub lease_ttl: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            lease_ttl: Duration::from_secs(900),
        }
    }
}

pub struct Service {
    store: Arc<Store>,
    stage: StageArea,
    host: HostInfo,
    settings: Settings,
    state: Mutex<State>,
    locks: Mutex<HashMap<String, Arc<RwLock<()>>>>,
    counters: Mutex<Counters>,
    started: Instant,
}

impl Service {
    pub fn new(store: Store, stage: StageArea, host: HostInfo, settings: Settings) -> Self {
        Service {
            store: Arc::new(store),
            stage,
            host,
            settings,
            state: Mutex::default(),
            locks: Mutex::default(),
            counters: Mutex::default(),
            started: Instant::now(),
        }
    }

    pub fn host(&self) -> &HostInfo {
        &self.host
    }

    pub fn stage(&self) -> &StageArea {
        &self.stage
    }

    /// The staging area, to close it at shutdown.
    pub fn into_stage(self) -> StageArea {
        self.stage
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn image_lock(&self, name: &str) -> Arc<RwLock<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        // Forget the locks nobody holds or waits for.
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(name.to_string()).or_default().clone()
    }

    async fn write_lock(&self, name: &str) -> OwnedRwLockWriteGuard<()> {
        self.image_lock(name).write_owned().await
    }

    async fn read_lock(&self, name: &str) -> OwnedRwLockReadGuard<()> {
        self.image_lock(name).read_owned().await
    }

    /// Counts one request and, if it failed, why.
    pub fn record(&self, op: &str, failure: Option<ErrorCode>) {
        let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        *c.requests.entry(op.to_string()).or_default() += 1;
        if let Some(code) = failure {
            *c.failures.entry(code.to_string()).or_default() += 1;
            *c.failures_by_op
                .entry(op.to_string())
                .or_default()
                .entry(code.to_string())
                .or_default() += 1;
        }
    }

    fn info(&self, m: Manifest, last_used_unix: u64) -> ImageInfo {
        let state = self.state();
        ImageInfo {
            staged: state.staged.contains_key(&m.name),
            leases: state.leases_of(&m.name) as u32,
            manifest: m,
            last_used_unix,
        }
    }

    /// Runs one operation.
    pub async fn handle(&self, op: Op, peer: &Peer) -> OpResult {
        if let Some(name) = op.image_name() {
            validate_name(name).map_err(api)?;
        }
        match op {
            Op::StoreImage {
                name,
                source_dir,
                labels,
                spec_digest,
                replace,
            } => {
                let _guard = self.write_lock(&name).await;
                if replace {
                    let held = self.state().staged_leases_of(&name);
                    if held > 0 {
                        return Err(precondition(format!(
                            "the staged copy of image {name} is in use by {held} restore \
                             lease(s) and would change under them; release them \
                             (release_restore) or wait for them to expire, then replace"
                        )));
                    }
                }
                let store = self.store.clone();
                let meta = NewImage {
                    labels,
                    spec_digest,
                    criu_version: self.host.criu_version.clone(),
                    kernel_release: self.host.kernel_release.clone(),
                };
                let owner = peer.owner();
                let n = name.clone();
                let m = blocking(move || {
                    if replace {
                        store.replace_dir(&n, &source_dir, meta, owner)
                    } else {
                        store.store_dir(&n, &source_dir, meta, owner)
                    }
                })
                .await?;
                if replace {
                    self.restage(&name).await;
                }
                let bytes = m.total_size;
                let created = m.created_unix;
                outcome(self.info(m, created), bytes)
            }
            Op::ListImages {} => {
                let images = self.list().await?;
                let images = images
                    .into_iter()
                    .map(|(m, used)| self.info(manifest::summary(&m), used))
                    .collect();
                outcome(ImageList { images }, 0)
            }
            Op::GetImage { name } => {
                let _guard = self.read_lock(&name).await;
                let store = self.store.clone();
                let (m, used) = blocking(move || {
                    let m = store.get(&name)?;
                    let used = store.last_used(&m);
                    Ok((m, used))
                })
                .await?;
                outcome(self.info(m, used), 0)
            }
            Op::DeleteImage { name } => self.delete(name).await,
            Op::StageImage { name } => self.stage_image(name).await,
            Op::UnstageImage { name } => self.unstage(name).await,
            Op::PrepareRestore {
                name,
                allow_mismatch,
            } => self.prepare_restore(name, allow_mismatch).await,
            Op::ReleaseRestore { lease } => self.release(lease).await,
            Op::ExportImage {
                name,
                dest,
                zstd_level,
            } => {
                let _guard = self.read_lock(&name).await;
                let store = self.store.clone();
                let owner = peer.owner();
                let level = zstd_level.unwrap_or(DEFAULT_ZSTD_LEVEL);
                let path = dest.clone();
                let (m, bytes) = blocking(move || store.export(&name, &dest, level, owner)).await?;
                outcome(
                    Exported {
                        name: m.name,
                        path,
                        bytes,
                        file_count: m.file_count,
                    },
                    bytes,
                )
            }
            Op::ImportImage { path, name } => {
                let _guard = match &name {
                    Some(n) => Some(self.write_lock(n).await),
                    None => None,
                };
                let store = self.store.clone();
                let owner = peer.owner();
                let m = blocking(move || store.import(&path, name.as_deref(), owner)).await?;
                let bytes = m.total_size;
                let used = store::now_unix();
                outcome(self.info(m, used), bytes)
            }
            Op::Gc {
                max_bytes,
                max_age_secs,
                dry_run,
            } => self.gc(max_bytes, max_age_secs, dry_run).await,
            Op::Stats {} => self.stats().await,
            Op::ReportRestore {
                image,
                engine,
                outcome,
                reason,
            } => self.report_restore(image, &engine, &outcome, reason.as_deref()),
        }
    }

    /// Counts a restore outcome the shim reports (the image name, if any, was checked by
    /// `handle`; it need not exist) and logs it, failures at warn.
    fn report_restore(
        &self,
        image: Option<String>,
        engine: &str,
        result: &str,
        reason: Option<&str>,
    ) -> OpResult {
        let e = one_of("engine", engine, &RESTORE_ENGINES)?;
        let o = one_of("outcome", result, &RESTORE_OUTCOMES)?;
        let reason = reason.and_then(clip_reason);
        let failed = RESTORE_OUTCOMES[o] == "failed";
        let count = {
            let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
            let t = c.restores.entry((e, o)).or_default();
            t.count += 1;
            t.last_unix = store::now_unix();
            if failed && reason.is_some() {
                t.last_reason = reason.clone();
            }
            t.count
        };
        let image = image.as_deref().unwrap_or("");
        let reason = reason.as_deref().unwrap_or("");
        if failed {
            tracing::warn!(
                image,
                engine,
                outcome = result,
                reason,
                count,
                "restore reported"
            );
        } else {
            tracing::info!(
                image,
                engine,
                outcome = result,
                reason,
                count,
                "restore reported"
            );
        }
        outcome(Reported {}, 0)
    }

    async fn list(&self) -> Result<Vec<(Manifest, u64)>, ApiError> {
        let store = self.store.clone();
        blocking(move || {
            Ok(store
                .list()?
                .into_iter()
                .map(|m| {
                    let used = store.last_used(&m);
                    (m, used)
                })
                .collect())
        })
        .await
    }

    async fn delete(&self, name: String) -> OpResult {
        let _guard = self.write_lock(&name).await;
        let leases = self.state().leases_of(&name);
        if leases > 0 {
            return Err(precondition(format!(
                "image {name} is held by {leases} restore lease(s); release them \
                 (release_restore) or wait for them to expire first"
            )));
        }
        let store = self.store.clone();
        let n = name.clone();
        let mut freed = blocking(move || store.delete(&n)).await?;
        let staged = self.state().staged.remove(&name);
        if let Some(s) = staged {
            freed += s.bytes;
            blocking(move || {
                std::fs::remove_dir_all(&s.dir).map_err(store::Error::io(format!(
                    "cannot remove {}",
                    s.dir.display()
                )))
            })
            .await?;
        }
        outcome(
            Deleted {
                name,
                freed_bytes: freed,
            },
            freed,
        )
    }

    async fn stage_image(&self, name: String) -> OpResult {
        let _guard = self.write_lock(&name).await;
        let existing = self.state().staged.get(&name).cloned();
        let store = self.store.clone();
        if let Some(s) = existing {
            let n = name.clone();
            blocking(move || store.touch(&n)).await?;
            return outcome(
                Staged {
                    name,
                    dir: s.dir,
                    bytes: s.bytes,
                    already_staged: true,
                },
                0,
            );
        }
        let (dir, bytes) = self.stage_copy(&name).await?;
        let n = name.clone();
        blocking(move || store.touch(&n)).await?;
        outcome(
            Staged {
                name,
                dir,
                bytes,
                already_staged: false,
            },
            bytes,
        )
    }

    /// Decompresses image `name` into its staged directory and records it as staged
    /// (the caller holds the image's write lock). Returns the copy's directory and size.
    async fn stage_copy(&self, name: &str) -> Result<(PathBuf, u64), ApiError> {
        let store = self.store.clone();
        let dir = self.stage.staged_dir(name);
        let (n, d) = (name.to_string(), dir.clone());
        let (m, bytes) = blocking(move || store.extract(&n, &d)).await?;
        self.state().staged.insert(
            name.to_string(),
            StagedImage {
                dir: dir.clone(),
                bytes,
                manifest: Arc::new(m),
            },
        );
        Ok((dir, bytes))
    }

    /// After a replace: a staged copy of the old image is dropped and the new one
    /// staged in its place (the caller holds the image's write lock, and no lease
    /// holds the staged copy). A new copy that cannot be made leaves the image
    /// unstaged, with a warning: the replace itself stands.
    async fn restage(&self, name: &str) {
        let Some(old) = self.state().staged.remove(name) else {
            return;
        };
        let removed = blocking(move || {
            std::fs::remove_dir_all(&old.dir).map_err(store::Error::io(format!(
                "cannot remove {}",
                old.dir.display()
            )))
        })
        .await;
        match removed {
            Ok(()) => match self.stage_copy(name).await {
                Ok((_, bytes)) => {
                    tracing::info!(image = %name, bytes, "staged the replaced image anew")
                }
                Err(e) => tracing::warn!(
                    image = %name, error = %e.message,
                    "the replaced image is no longer staged: its new copy could not be made"
                ),
            },
            Err(e) => tracing::warn!(
                image = %name, error = %e.message,
                "the replaced image is no longer staged: its old copy could not be removed"
            ),
        }
    }

    async fn unstage(&self, name: String) -> OpResult {
        let _guard = self.write_lock(&name).await;
        let staged = {
            let mut state = self.state();
            let held = state.staged_leases_of(&name);
            if held > 0 {
                return Err(precondition(format!(
                    "the staged copy of image {name} is in use by {held} restore lease(s); \
                     release them (release_restore) or wait for them to expire first"
                )));
            }
            state.staged.remove(&name)
        };
        let Some(s) = staged else {
            if !self.store.exists(&name) {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!("image {name} does not exist"),
                ));
            }
            return outcome(
                Unstaged {
                    name,
                    was_staged: false,
                    freed_bytes: 0,
                },
                0,
            );
        };
        let dir = s.dir.clone();
        blocking(move || {
            std::fs::remove_dir_all(&dir)
                .map_err(store::Error::io(format!("cannot remove {}", dir.display())))
        })
        .await?;
        outcome(
            Unstaged {
                name,
                was_staged: true,
                freed_bytes: s.bytes,
            },
            s.bytes,
        )
    }

    async fn prepare_restore(&self, name: String, allow_mismatch: bool) -> OpResult {
        let _guard = self.read_lock(&name).await;
        let staged = self.state().staged.get(&name).cloned();
        let manifest = match &staged {
            Some(s) => s.manifest.clone(),
            None => {
                let store = self.store.clone();
                let n = name.clone();
                Arc::new(blocking(move || store.get(&n)).await?)
            }
        };
        let mismatch = host::mismatch(
            &name,
            manifest.criu_version.as_deref(),
            &manifest.kernel_release,
            &self.host,
        );
        if let Some(m) = &mismatch {
            if !allow_mismatch {
                return Err(precondition(format!(
                    "{m} (pass allow_mismatch to restore it anyway)"
                )));
            }
            tracing::warn!(image = %name, mismatch = %m, "restoring despite a CRIU/kernel mismatch");
        }
        let lease = fsutil::random_hex(16)
            .map_err(|e| internal(format!("cannot get random bytes: {e}")))?;
        let is_staged = staged.is_some();
        let (image_dir, own_dir, bytes) = match staged {
            Some(s) => (s.dir, None, 0),
            None => {
                let dir = self.stage.lease_dir(&lease);
                let store = self.store.clone();
                let (n, d) = (name.clone(), dir.clone());
                let (_, bytes) = blocking(move || store.extract(&n, &d)).await?;
                (dir.clone(), Some(dir), bytes)
            }
        };
        self.state().leases.insert(
            lease.clone(),
            Lease {
                name: name.clone(),
                dir: own_dir,
                created: Instant::now(),
            },
        );
        // Stamp the use for GC, off the restore's path.
        let store = self.store.clone();
        let n = name.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.touch(&n) {
                tracing::warn!(image = %n, error = %e, "cannot stamp last use");
            }
        });
        outcome(
            Prepared {
                staged: is_staged,
                image_dir,
                lease,
                mismatch,
            },
            bytes,
        )
    }

    async fn release(&self, lease: String) -> OpResult {
        if lease.is_empty() || lease.len() > 64 || !lease.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                format!("invalid lease {lease:?}"),
            ));
        }
        let Some(l) = self.state().leases.remove(&lease) else {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!(
                    "no restore lease {lease} (released already, or expired after {} s)",
                    self.settings.lease_ttl.as_secs()
                ),
            ));
        };
        let removed_dir = l.dir.is_some();
        if let Some(dir) = l.dir {
            blocking(move || {
                std::fs::remove_dir_all(&dir)
                    .map_err(store::Error::io(format!("cannot remove {}", dir.display())))
            })
            .await?;
        }
        outcome(
            Released {
                lease,
                name: l.name,
                removed_dir,
            },
            0,
        )
    }

    async fn gc(
        &self,
        max_bytes: Option<u64>,
        max_age_secs: Option<u64>,
        dry_run: bool,
    ) -> OpResult {
        let images = self.list().await?;
        let candidates: Vec<gc::Candidate> = {
            let state = self.state();
            images
                .iter()
                .map(|(m, used)| gc::Candidate {
                    name: m.name.clone(),
                    bytes: m.total_compressed_size,
                    last_used: *used,
                    held: state.held(&m.name),
                })
                .collect()
        };
        let total: u64 = candidates.iter().map(|c| c.bytes).sum();
        let plan = gc::plan(
            &candidates,
            store::now_unix(),
            max_bytes,
            max_age_secs.map(Duration::from_secs),
        );
        let mut skipped: Vec<GcSkipped> = plan
            .skipped
            .iter()
            .map(|(name, why)| GcSkipped {
                name: name.clone(),
                reason: why.to_string(),
            })
            .collect();
        let mut deleted = Vec::new();
        for (name, bytes, reason) in plan.delete {
            if dry_run {
                deleted.push(GcDeleted {
                    name,
                    bytes,
                    reason: reason.as_str().into(),
                });
                continue;
            }
            let _guard = self.write_lock(&name).await;
            // Staged or leased since the plan was made?
            if let Some(why) = self.state().held(&name) {
                skipped.push(GcSkipped {
                    name,
                    reason: why.into(),
                });
                continue;
            }
            let store = self.store.clone();
            let n = name.clone();
            match blocking(move || store.delete(&n)).await {
                Ok(freed) => {
                    tracing::info!(image = %name, bytes = freed, reason = reason.as_str(), "garbage-collected");
                    deleted.push(GcDeleted {
                        name,
                        bytes: freed,
                        reason: reason.as_str().into(),
                    });
                }
                Err(e) if e.code == ErrorCode::NotFound => {}
                Err(e) => {
                    tracing::warn!(image = %name, error = %e.message, "cannot garbage-collect");
                    skipped.push(GcSkipped {
                        name,
                        reason: format!("error: {}", e.message),
                    });
                }
            }
        }
        let freed: u64 = deleted.iter().map(|d| d.bytes).sum();
        let report = GcReport {
            kept: (images.len() - deleted.len()) as u32,
            kept_bytes: total.saturating_sub(freed),
            freed_bytes: freed,
            deleted,
            skipped,
            dry_run,
        };
        outcome(report, freed)
    }

    async fn stats(&self) -> OpResult {
        let images = self.list().await?;
        let (staged_images, staged_bytes, leases) = {
            let state = self.state();
            (
                state.staged.len() as u32,
                state.staged.values().map(|s| s.bytes).sum(),
                state.leases.len() as u32,
            )
        };
        let counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        outcome(
            Stats {
                version: env!("CARGO_PKG_VERSION").into(),
                protocol: PROTOCOL_VERSION,
                uptime_secs: self.started.elapsed().as_secs(),
                criu_version: self.host.criu_version.clone(),
                kernel_release: self.host.kernel_release.clone(),
                images: images.len() as u32,
                store_bytes: images.iter().map(|(m, _)| m.total_compressed_size).sum(),
                staged_images,
                staged_bytes,
                leases,
                requests: counters.requests.clone(),
                failures: counters.failures.clone(),
                failures_by_op: counters.failures_by_op.clone(),
                restores: counters
                    .restores
                    .iter()
                    .map(|(&(e, o), t)| RestoreCount {
                        engine: RESTORE_ENGINES[e].into(),
                        outcome: RESTORE_OUTCOMES[o].into(),
                        count: t.count,
                        last_reason: t.last_reason.clone(),
                        last_unix: Some(t.last_unix),
                    })
                    .collect(),
            },
            0,
        )
    }

    /// Takes back the leases older than `lease_ttl` (a shim that died mid-restore never
    /// releases its lease); returns how many.
    pub async fn expire_leases(&self) -> usize {
        let ttl = self.settings.lease_ttl;
        let expired: Vec<(String, Lease)> = {
            let mut state = self.state();
            let ids: Vec<String> = state
                .leases
                .iter()
                .filter(|(_, l)| l.created.elapsed() > ttl)
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| state.leases.remove(&id).map(|l| (id, l)))
                .collect()
        };
        let n = expired.len();
        for (id, l) in expired {
            tracing::warn!(lease = %id, image = %l.name, ttl_secs = ttl.as_secs(), "restore lease expired unreleased");
            if let Some(dir) = l.dir {
                let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    const ROOT: Peer = Peer { uid: 0, pid: None };

    struct Fixture {
        _dir: tempfile::TempDir,
        src: PathBuf,
        service: Service,
    }

    /// A service on a private store and staging area (no tmpfs mount), whose node runs
    /// CRIU `criu` on kernel `kernel`.
    fn fixture(criu: Option<&str>, kernel: &str, ttl: Duration) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("inventory.img"), b"inventory").unwrap();
        fs::write(src.join("pages-1.img"), vec![7u8; 1 << 20]).unwrap();
        let (store, _) = Store::open(&dir.path().join("store"), store::Limits::default()).unwrap();
        let stage = StageArea::open(&dir.path().join("stage"), false, None).unwrap();
        let host = HostInfo {
            criu_version: criu.map(str::to_string),
            kernel_release: kernel.into(),
        };
        let service = Service::new(store, stage, host, Settings { lease_ttl: ttl });
        Fixture {
            _dir: dir,
            src,
            service,
        }
    }

    async fn call<T: serde::de::DeserializeOwned>(s: &Service, op: Op) -> Result<T, ApiError> {
        s.handle(op, &ROOT)
            .await
            .map(|o| serde_json::from_value(o.body).unwrap())
    }

    fn store_op(f: &Fixture, name: &str) -> Op {
        Op::StoreImage {
            name: name.into(),
            source_dir: f.src.clone(),
            labels: BTreeMap::new(),
            spec_digest: None,
            replace: false,
        }
    }

    fn replace_op(f: &Fixture, name: &str) -> Op {
        Op::StoreImage {
            name: name.into(),
            source_dir: f.src.clone(),
            labels: BTreeMap::new(),
            spec_digest: None,
            replace: true,
        }
    }

    #[tokio::test]
    async fn a_replaced_staged_image_is_staged_anew_unless_a_lease_holds_it() {
        let f = fixture(Some("4.2.1"), "6.18.0", Duration::from_secs(60));
        let _: ImageInfo = call(&f.service, store_op(&f, "a")).await.unwrap();
        let e = call::<ImageInfo>(&f.service, store_op(&f, "a"))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::AlreadyExists);
        let s: Staged = call(&f.service, Op::StageImage { name: "a".into() })
            .await
            .unwrap();
        // A restore holds the staged copy: replacing it would change it under it.
        let p: Prepared = call(&f.service, prepare("a", false)).await.unwrap();
        assert!(p.staged);
        fs::write(f.src.join("inventory.img"), b"inventory, newer").unwrap();
        let e = call::<ImageInfo>(&f.service, replace_op(&f, "a"))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::FailedPrecondition);
        assert!(
            e.message.contains("1 restore lease(s)") && !e.message.contains("  "),
            "{}",
            e.message
        );
        assert_eq!(fs::read(s.dir.join("inventory.img")).unwrap(), b"inventory");
        let _: Released = call(&f.service, Op::ReleaseRestore { lease: p.lease })
            .await
            .unwrap();
        // Released: the replace goes through, and the next restore is of the new image,
        // from a staged copy.
        let _: ImageInfo = call(&f.service, replace_op(&f, "a")).await.unwrap();
        let p: Prepared = call(&f.service, prepare("a", false)).await.unwrap();
        assert!(p.staged, "the replaced image is no longer staged");
        assert_eq!(
            fs::read(p.image_dir.join("inventory.img")).unwrap(),
            b"inventory, newer"
        );
    }

    fn prepare(name: &str, allow_mismatch: bool) -> Op {
        Op::PrepareRestore {
            name: name.into(),
            allow_mismatch,
        }
    }

    #[tokio::test]
    async fn a_version_mismatch_is_a_failed_precondition_naming_both() {
        let f = fixture(Some("4.2.1"), "6.18.0", Duration::from_secs(60));
        let _: ImageInfo = call(&f.service, store_op(&f, "a")).await.unwrap();
        // The same image, seen by a node that has moved on.
        let store = f.service.store.clone();
        let mut other = fixture(Some("4.3.0"), "6.19.1", Duration::from_secs(60));
        other.service.store = store;
        let e = call::<Prepared>(&other.service, prepare("a", false))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::FailedPrecondition);
        for needle in [
            "CRIU 4.2.1",
            "CRIU 4.3.0",
            "kernel 6.18.0",
            "kernel 6.19.1",
            "allow_mismatch",
        ] {
            assert!(e.message.contains(needle), "{needle}: {}", e.message);
        }
        let p: Prepared = call(&other.service, prepare("a", true)).await.unwrap();
        assert!(p.mismatch.unwrap().contains("CRIU 4.3.0"));
        assert!(!p.staged);
        assert_eq!(
            fs::read(p.image_dir.join("inventory.img")).unwrap(),
            b"inventory"
        );
        // Same versions: no mismatch.
        let p: Prepared = call(&f.service, prepare("a", false)).await.unwrap();
        assert_eq!(p.mismatch, None);
    }

    #[tokio::test]
    async fn leases_expire_and_take_their_copy_with_them() {
        let f = fixture(Some("4.2.1"), "6.18.0", Duration::from_millis(1));
        let _: ImageInfo = call(&f.service, store_op(&f, "a")).await.unwrap();
        let p: Prepared = call(&f.service, prepare("a", false)).await.unwrap();
        assert!(p.image_dir.is_dir());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(f.service.expire_leases().await, 1);
        assert!(!p.image_dir.exists());
        let e = call::<Released>(&f.service, Op::ReleaseRestore { lease: p.lease })
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
        assert!(e.message.contains("expired"), "{}", e.message);
    }

    #[tokio::test]
    async fn staged_images_are_shared_and_counted() {
        let f = fixture(Some("4.2.1"), "6.18.0", Duration::from_secs(60));
        let _: ImageInfo = call(&f.service, store_op(&f, "a")).await.unwrap();
        let s: Staged = call(&f.service, Op::StageImage { name: "a".into() })
            .await
            .unwrap();
        let p1: Prepared = call(&f.service, prepare("a", false)).await.unwrap();
        let p2: Prepared = call(&f.service, prepare("a", false)).await.unwrap();
        assert!(p1.staged && p2.staged);
        assert_eq!(p1.image_dir, s.dir);
        assert_ne!(p1.lease, p2.lease);
        let info: ImageInfo = call(&f.service, Op::GetImage { name: "a".into() })
            .await
            .unwrap();
        assert!(info.staged);
        assert_eq!(info.leases, 2);
        f.service.record("prepare_restore", None);
        f.service
            .record("prepare_restore", Some(ErrorCode::Corrupt));
        let st: Stats = call(&f.service, Op::Stats {}).await.unwrap();
        assert_eq!(st.staged_images, 1);
        assert_eq!(st.staged_bytes, s.bytes);
        assert_eq!(st.leases, 2);
        assert_eq!(st.requests["prepare_restore"], 2);
        assert_eq!(st.failures["corrupt"], 1);
        assert_eq!(st.failures_by_op["prepare_restore"]["corrupt"], 1);
    }

    #[tokio::test]
    async fn gc_spares_staged_images() {
        let f = fixture(Some("4.2.1"), "6.18.0", Duration::from_secs(60));
        for n in ["a", "b"] {
            let _: ImageInfo = call(&f.service, store_op(&f, n)).await.unwrap();
        }
        let _: Staged = call(&f.service, Op::StageImage { name: "b".into() })
            .await
            .unwrap();
        let r: GcReport = call(
            &f.service,
            Op::Gc {
                max_bytes: Some(0),
                max_age_secs: None,
                dry_run: false,
            },
        )
        .await
        .unwrap();
        let deleted: Vec<_> = r.deleted.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(deleted, ["a"]);
        assert_eq!(r.skipped.len(), 1);
        assert_eq!(r.skipped[0].reason, "staged");
        assert_eq!(r.kept, 1);
    }

    fn report(image: Option<&str>, engine: &str, outcome: &str, reason: Option<&str>) -> Op {
        Op::ReportRestore {
            image: image.map(str::to_string),
            engine: engine.into(),
            outcome: outcome.into(),
            reason: reason.map(str::to_string),
        }
    }

    #[tokio::test]
    async fn restore_reports_are_counted_by_engine_and_outcome() {
        let f = fixture(Some("4.2.1"), "6.18.0", Duration::from_secs(60));
        let st: Stats = call(&f.service, Op::Stats {}).await.unwrap();
        assert!(st.restores.is_empty());
        // The image need not exist (deleted since, or never stored).
        for op in [
            report(Some("gone"), "runc", "ok", None),
            report(Some("gone"), "direct", "failed", Some("first")),
            report(None, "cold", "ok", Some("no checkpoint")),
            report(
                Some("gone"),
                "direct",
                "failed",
                Some("criu:\nrestore failed"),
            ),
            report(Some("gone"), "direct", "failed", None),
            report(None, "direct", "ok", None),
            report(None, "direct", "ok", None),
        ] {
            let _: Reported = call(&f.service, op).await.unwrap();
        }
        let st: Stats = call(&f.service, Op::Stats {}).await.unwrap();
        let rows: Vec<(&str, &str, u64, Option<&str>)> = st
            .restores
            .iter()
            .map(|r| {
                (
                    r.engine.as_str(),
                    r.outcome.as_str(),
                    r.count,
                    r.last_reason.as_deref(),
                )
            })
            .collect();
        // Fallback order; the latest reason kept (a report without one keeps it), on
        // one line; reasons of successes are logged, not kept.
        assert_eq!(
            rows,
            [
                ("direct", "ok", 2, None),
                ("direct", "failed", 3, Some("criu: restore failed")),
                ("runc", "ok", 1, None),
                ("cold", "ok", 1, None),
            ]
        );
        let now = store::now_unix();
        for r in &st.restores {
            let t = r.last_unix.unwrap();
            assert!(t <= now && t + 60 > now, "{r:?}");
        }
    }

    #[tokio::test]
    async fn restore_reports_are_validated() {
        let f = fixture(Some("4.2.1"), "6.18.0", Duration::from_secs(60));
        let e = call::<Reported>(&f.service, report(None, "criu", "ok", None))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert!(e.message.contains("\"criu\""), "{}", e.message);
        assert!(e.message.contains("direct, runc, cold"), "{}", e.message);
        let e = call::<Reported>(&f.service, report(None, "runc", "meh", None))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert!(e.message.contains("ok, failed"), "{}", e.message);
        let e = call::<Reported>(&f.service, report(Some("../etc"), "runc", "ok", None))
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert!(e.message.contains("invalid image name"), "{}", e.message);
        let st: Stats = call(&f.service, Op::Stats {}).await.unwrap();
        assert!(st.restores.is_empty(), "refused reports are not counted");
    }

    #[tokio::test]
    async fn restore_reasons_are_bounded() {
        let f = fixture(Some("4.2.1"), "6.18.0", Duration::from_secs(60));
        let long = "ß".repeat(1000);
        let _: Reported = call(
            &f.service,
            report(None, "runc", "failed", Some(&format!("x{long}"))),
        )
        .await
        .unwrap();
        let st: Stats = call(&f.service, Op::Stats {}).await.unwrap();
        let kept = st.restores[0].last_reason.as_deref().unwrap();
        assert!(kept.len() <= rekindle_restore_api::MAX_RESTORE_REASON_BYTES);
        assert!(kept.len() >= rekindle_restore_api::MAX_RESTORE_REASON_BYTES - 1);
        assert!(kept.starts_with("xß"));
    }
}
