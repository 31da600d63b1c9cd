//! What a new shim server starts before containerd's Create reaches it.
//!
//! containerd runs `shim start`, which forks the server, then connects and sends
//! Create: ~1.5 ms here, and the restore's critical path. The bundle's spec is
//! there from the start, so when it names a stored image the server asks
//! rekindle-restored for it and starts the direct engine's preparation at once.

use std::{path::Path, sync::Arc};

use containerd_shim::io::Stdio;
use tracing::warn;

use crate::{
    annotations::RestorePolicy,
    container::{Container, Direct},
    direct::Tell,
    stdio::Owner,
    task::{owner, release_lease, restored_client, spawn_preparation},
};

/// What rekindle-restored answered, or why it did not.
type Answer = std::result::Result<rekindle_restore_api::Prepared, rekindle_restore_api::Error>;

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
    answer: Option<tokio::task::JoinHandle<Answer>>,
    pub(crate) direct: Option<EarlyDirect>,
}

/// The direct engine's preparation started before Create, on stdio pipes made
/// for what containerd asks for almost always (stdout and stderr, no stdin, no
/// terminal, owned by root) and connected to its fifos at Create; a Create that
/// asks for anything else cancels it and prepares anew.
pub(crate) struct EarlyDirect {
    io: Arc<crate::stdio::ChildIo>,
    tell: Option<Tell>,
    preparing: Option<crate::container::Preparing>,
}

impl Early {
    /// Starts what `spec` (the one in `bundle`) allows for container `id`, if it
    /// names an image. Must run on the runtime. Annotations that are bad start
    /// nothing: Create reads them again and reports them.
    pub fn start(
        bundle: &Path,
        spec: &oci_spec::runtime::Spec,
        id: &str,
        namespace: &str,
    ) -> Option<Self> {
        let image = RestorePolicy::from_annotations(spec.annotations().as_ref())
            .ok()?
            .image?;
        let name = image.clone();
        let answer =
            tokio::spawn(async move { restored_client().prepare_restore(&name, false).await });
        Some(Early {
            id: id.to_string(),
            image,
            answer: Some(answer),
            direct: EarlyDirect::start(bundle, spec, id, namespace),
        })
    }

    /// The answer, if the request ran to one.
    pub(crate) async fn answer(mut self) -> Option<Answer> {
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
async fn release_answer(answer: tokio::task::JoinHandle<Answer>) {
    if let Ok(Ok(p)) = answer.await {
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
        namespace: &str,
    ) -> Option<Self> {
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
        let io = match crate::stdio::pipes(&owner, &stdio) {
            Ok(io) => io,
            Err(e) => {
                warn!(error = %e, "stdio pipes for an early preparation");
                return None;
            }
        };
        let span = tracing::info_span!("early", id = %id);
        let (tell, preparing) = spawn_preparation(
            bundle,
            spec,
            cgroups_path.unwrap_or_default(),
            io.clone(),
            span,
        );
        Some(EarlyDirect {
            io,
            tell: Some(tell),
            preparing: Some(preparing),
        })
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
        let preparing = self.preparing.take()?;
        c.direct = Some(Direct::Preparing(preparing));
        self.tell.take()
    }

    /// Tells the preparation there is nothing to restore and waits for it to undo
    /// itself.
    pub(crate) async fn cancel(mut self) {
        if let Some(tell) = self.tell.take() {
            let _ = tell.send(None);
        }
        if let Some(p) = self.preparing.take() {
            let _ = p.handle.await;
        }
    }
}

impl Drop for EarlyDirect {
    fn drop(&mut self) {
        // Told None, the preparation undoes itself on the runtime.
        if let Some(tell) = self.tell.take() {
            let _ = tell.send(None);
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
