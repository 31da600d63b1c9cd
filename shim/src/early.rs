//! What a new shim server starts before containerd's Create reaches it.
//!
//! containerd runs `shim start`, which forks the server, then connects and sends
//! Create: ~1.5 ms here, and the restore's critical path. The bundle's spec is
//! there from the start, so when it names a stored image the server asks
//! rekindle-restored for it and starts the direct engine's preparation at once.

use std::{path::Path, sync::Arc};

use containerd_shim::io::Stdio;
use containerd_shim::{asynchronous::monitor::monitor_subscribe, monitor::Topic};
use tracing::warn;

use crate::{
    annotations::RestorePolicy,
    container::{Container, Direct},
    direct::{ImageTell, Tell},
    stdio::Owner,
    task::{owner, release_lease, restored_client, spawn_preparation},
};

/// What rekindle-restored answered, or why it did not.
type Answer = std::result::Result<rekindle_restore_api::Prepared, rekindle_restore_api::Error>;

/// The answer, and the preparation's [`ImageTell`] if the answer did not tell it.
type Answered = (Answer, Option<ImageTell>);

/// What a new shim server starts for the container it was started for, when the
/// bundle's spec names a stored image (`io.rekindle.image`), before containerd's
/// Create arrives (~1.5 ms later here): it asks rekindle-restored for the image and
/// starts the direct engine's preparation (`criu swrk`, the cgroups), so that
/// Create finds both under way instead of starting them on the restore's path.
/// Create takes it (`TaskService::take_early`); what nobody takes (Create fails,
/// restores containerd's checkpoint instead, or never comes) is undone: the
/// image's lease released, the preparation cancelled.
pub struct Early {
    pub(crate) id: String,
    pub(crate) image: String,
    answer: Option<tokio::task::JoinHandle<Answered>>,
    pub(crate) direct: Option<EarlyDirect>,
}

/// The direct engine's preparation started before Create, on stdio pipes made
/// for what containerd asks for almost always (stdout and stderr, no stdin, no
/// terminal, owned by root) and connected to its fifos at Create; a Create that
/// asks for anything else cancels it and prepares anew.
pub(crate) struct EarlyDirect {
    io: Arc<dyn runc::io::Io>,
    tell: Option<Tell>,
    handle: Option<tokio::task::JoinHandle<crate::container::Preparation>>,
}

/// What the server starts for the direct engine before its runtime exists (see
/// [`before_runtime`]): the container's stdio pipes and, on them, `criu swrk`.
pub struct BeforeRuntime {
    io: Arc<dyn runc::io::Io>,
    started: Option<crate::direct::Started>,
}

/// The image `spec` names, if the annotations are good (bad ones start nothing:
/// Create reads them again and reports them).
fn named_image(spec: &oci_spec::runtime::Spec) -> Option<String> {
    RestorePolicy::from_annotations(spec.annotations().as_ref())
        .ok()?
        .image
}

/// The first thing a new shim server does, before its runtime and threads exist,
/// when the bundle's spec names a stored image the direct engine can restore into
/// container `id`: makes the stdio pipes of what Create nearly always asks for and
/// starts `criu swrk` on them (see [`crate::direct::start_swrk_now`]).
pub fn before_runtime(
    spec: &oci_spec::runtime::Spec,
    id: &str,
    namespace: &str,
) -> Option<BeforeRuntime> {
    named_image(spec)?;
    if !crate::direct::enabled() {
        return None;
    }
    let cgroups_path = crate::container::spec_cgroups_path(spec);
    let stdio = expected();
    crate::direct::check_eligible(
        spec,
        EXPECTED_SYSTEMD_CGROUP,
        stdio.terminal,
        cgroups_path.as_deref(),
    )
    .ok()?;
    let owner = Owner {
        container_id: id.to_string(),
        namespace: namespace.to_string(),
        uid: EXPECTED_IO_OWNER.0,
        gid: EXPECTED_IO_OWNER.1,
    };
    // A failure here is reported by the runtime's own attempt, after the logger is up.
    let piped = crate::stdio::piped(&owner, &stdio).ok()?;
    let fds = [
        piped.stdin.as_ref().and_then(|p| p.rd.try_clone().ok()),
        piped.stdout.as_ref().and_then(|p| p.try_clone_wr()),
        piped.stderr.as_ref().and_then(|p| p.try_clone_wr()),
    ];
    let started = crate::direct::start_swrk_now(spec, fds);
    if started.is_some() {
        // swrk holds the write ends now (as `Io::close_after_start`).
        for p in [&piped.stdout, &piped.stderr].into_iter().flatten() {
            p.close_wr();
        }
    }
    Some(BeforeRuntime {
        io: Arc::new(piped),
        started,
    })
}

impl Early {
    /// Starts what `spec` (the one in `bundle`) allows for container `id`, if it
    /// names an image, with what [`before_runtime`] started. Must run on the
    /// runtime, before the reaper.
    pub async fn start(
        bundle: &Path,
        spec: &oci_spec::runtime::Spec,
        id: &str,
        before: Option<BeforeRuntime>,
    ) -> Option<Self> {
        let image = named_image(spec)?;
        let mut direct = match before {
            Some(mut b) => {
                if let Some(s) = b.started.as_mut() {
                    // Before the reaper runs, so that swrk's exit cannot be missed.
                    if let Ok(sub) = monitor_subscribe(Topic::Pid).await {
                        s.watch(sub);
                    }
                }
                Some(EarlyDirect::start(bundle, spec, id, b))
            }
            None => None,
        };
        // The preparation learns the image with the answer, and starts CRIU on it
        // before Create arrives.
        let image_tell = direct
            .as_mut()
            .and_then(|d| d.tell.as_mut())
            .and_then(Tell::take_image);
        let name = image.clone();
        let answer = tokio::spawn(async move {
            let answer = restored_client().prepare_restore(&name, false).await;
            let untold = match (&answer, image_tell) {
                (Ok(p), Some(tx)) => {
                    let _ = tx.send(crate::direct::Source::stored(&name, &p.image_dir));
                    None
                }
                (_, tx) => tx,
            };
            (answer, untold)
        });
        Some(Early {
            id: id.to_string(),
            image,
            answer: Some(answer),
            direct,
        })
    }

    /// The answer, if the request ran to one, and the preparation's [`ImageTell`]
    /// if the answer did not tell it (it failed).
    pub(crate) async fn answer(mut self) -> Option<Answered> {
        self.answer.take()?.await.ok()
    }

    /// Undoes what nobody took, and waits for that.
    pub async fn release(mut self) {
        if let Some(d) = self.direct.take() {
            d.cancel().await;
        }
        if let Some(h) = self.answer.take() {
            release_answer(h).await;
        }
    }
}

/// Releases the lease of an answer no Create took.
async fn release_answer(answer: tokio::task::JoinHandle<Answered>) {
    if let Ok((Ok(p), _)) = answer.await {
        release_lease(&p.lease).await;
    }
}

/// The Create an early preparation is made for: what containerd nearly always
/// asks — stdout and stderr, no stdin, no terminal —, pipes owned by root
/// (IoUid, IoGid), cgroupfs. Only which streams are named counts.
fn expected() -> Stdio {
    Stdio {
        stdout: "-".into(),
        stderr: "-".into(),
        ..Default::default()
    }
}
const EXPECTED_IO_OWNER: (u32, u32) = (0, 0);
const EXPECTED_SYSTEMD_CGROUP: bool = false;

/// Which streams `s` names, and whether it is a terminal.
fn streams(s: &Stdio) -> (bool, bool, bool, bool) {
    (
        !s.stdin.is_empty(),
        !s.stdout.is_empty(),
        !s.stderr.is_empty(),
        s.terminal,
    )
}

impl EarlyDirect {
    fn start(
        bundle: &Path,
        spec: &oci_spec::runtime::Spec,
        id: &str,
        before: BeforeRuntime,
    ) -> Self {
        let cgroups_path = crate::container::spec_cgroups_path(spec);
        let span = tracing::info_span!("early", id = %id);
        let (tell, handle) = spawn_preparation(
            bundle,
            spec,
            cgroups_path.unwrap_or_default(),
            before.io.clone(),
            before.started,
            span,
        );
        EarlyDirect {
            io: before.io,
            tell: Some(tell),
            handle: Some(handle),
        }
    }

    /// Whether container `c` (as Create describes it) is what this was prepared for.
    pub(crate) fn fits(&self, c: &Container) -> bool {
        streams(&c.init.stdio) == streams(&expected())
            && (c.options.io_uid, c.options.io_gid) == EXPECTED_IO_OWNER
            && c.options.systemd_cgroup == EXPECTED_SYSTEMD_CGROUP
    }

    /// Takes this preparation over for container `c`: its pipes connected to the
    /// fifos Create names. `None`: they could not be (the restore goes through runc,
    /// which reports the same fifo).
    pub(crate) async fn adopt(mut self, c: &mut Container, namespace: &str) -> Option<Tell> {
        let owner = owner(c, namespace);
        if let Err(e) = c.init.io.connect(&owner, &c.init.stdio, &self.io).await {
            warn!(error = %e, "stdio for the direct engine; restore by runc");
            c.init.io.abort().await;
            c.init.io = Default::default();
            self.cancel().await;
            return None;
        }
        let handle = self.handle.take()?;
        c.direct = Some(Direct::Preparing(handle));
        self.tell.take()
    }

    /// Tells the preparation there is nothing to restore (drops its Tell) and waits
    /// for it to undo itself.
    pub(crate) async fn cancel(mut self) {
        drop(self.tell.take());
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }
}

impl Drop for Early {
    fn drop(&mut self) {
        if let Some(h) = self.answer.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(release_answer(h));
            }
        }
    }
}
