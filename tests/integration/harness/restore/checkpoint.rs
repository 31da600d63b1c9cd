//! Checkpoints through containerd: `Tasks.Checkpoint` with runc's options, the
//! containerd leases that keep their content, and content reads and writes.

use std::collections::HashMap;
use std::fs;
use std::io::Read as _;
use std::path::Path;

use anyhow::{bail, Context as _, Result};
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::{
    CheckpointTaskRequest, GetRequest, PauseTaskRequest, ResumeTaskRequest, WriteAction,
    WriteContentRequest,
};
use containerd_client::tonic::Request;
use containerd_client::types::v1::Status;
use containerd_client::types::Descriptor;
use oci_spec::runtime::Spec;
use prost::Message as _;
use prost_types::Any;
use sha2::Digest as _;

use super::super::client::bounded;
use super::super::{secs, Ctx, RPC_TIMEOUT};
use super::{CHECKPOINT_CONFIG_MEDIA_TYPE, CHECKPOINT_MEDIA_TYPE, CHECKPOINT_OPTIONS_TYPE};

/// `containerd.runc.v1.CheckpointOptions` (containerd's `runc/options/oci.proto`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckpointOptions {
    #[prost(bool, tag = "1")]
    pub exit: bool,
    #[prost(bool, tag = "2")]
    pub open_tcp: bool,
    #[prost(bool, tag = "3")]
    pub external_unix_sockets: bool,
    #[prost(bool, tag = "4")]
    pub terminal: bool,
    #[prost(bool, tag = "5")]
    pub file_locks: bool,
    #[prost(string, repeated, tag = "6")]
    pub empty_namespaces: Vec<String>,
    #[prost(string, tag = "7")]
    pub cgroups_mode: String,
    #[prost(string, tag = "8")]
    pub image_path: String,
    #[prost(string, tag = "9")]
    pub work_path: String,
}

/// What `Tasks.Checkpoint` wrote: the CRIU image (a tar) and the container's spec, in
/// containerd's content store, held by a containerd lease until [`Checkpoint::release`].
pub struct Checkpoint {
    pub lease: String,
    pub descriptors: Vec<Descriptor>,
}

impl Checkpoint {
    /// The CRIU image, as `Tasks.Create` wants it.
    pub fn criu(&self) -> Result<&Descriptor> {
        self.descriptors
            .iter()
            .find(|d| d.media_type == CHECKPOINT_MEDIA_TYPE)
            .with_context(|| format!("no {CHECKPOINT_MEDIA_TYPE} in {:?}", self.descriptors))
    }

    /// The container's OCI spec as the checkpoint recorded it (what `ctr container
    /// restore` recreates the container with).
    pub async fn spec(&self, ctx: &Ctx) -> Result<Spec> {
        let d = self
            .descriptors
            .iter()
            .find(|d| d.media_type == CHECKPOINT_CONFIG_MEDIA_TYPE)
            .with_context(|| {
                format!(
                    "no {CHECKPOINT_CONFIG_MEDIA_TYPE} in {:?}",
                    self.descriptors
                )
            })?;
        let any = Any::decode(read_content(ctx, &d.digest).await?.as_slice())
            .context("the checkpoint's config is not a protobuf Any")?;
        serde_json::from_slice(&any.value).with_context(|| {
            format!(
                "the checkpoint's config ({}) is not an OCI spec",
                any.type_url
            )
        })
    }

    /// Deletes the lease: containerd may collect the content.
    pub async fn release(self, ctx: &Ctx) -> Result<()> {
        delete_lease(ctx, &self.lease).await
    }
}

/// `Tasks.Checkpoint` of `id` with `containerd.runc.v1.CheckpointOptions`, as
/// containerd's Go client calls it: the task is paused first (unless it is already),
/// and resumed afterwards, the checkpoint's content held by a new lease. With
/// `opts.exit`, the resume fails (the task has stopped), as it does for the Go client,
/// which ignores it.
pub async fn checkpoint(ctx: &Ctx, id: &str, opts: CheckpointOptions) -> Result<Checkpoint> {
    let lease = create_lease(ctx).await?;
    let status = bounded(
        "Tasks.Get",
        RPC_TIMEOUT,
        ctx.tasks().get(ctx.req(GetRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        })),
    )
    .await?
    .into_inner()
    .process
    .context("Tasks.Get without process")?
    .status();
    let pause = status != Status::Paused;
    if pause {
        bounded(
            "Tasks.Pause",
            RPC_TIMEOUT,
            ctx.tasks().pause(ctx.req(PauseTaskRequest {
                container_id: id.to_string(),
            })),
        )
        .await?;
    }
    let exit = opts.exit;
    let mut req = ctx.req(CheckpointTaskRequest {
        container_id: id.to_string(),
        parent_checkpoint: String::new(),
        options: Some(Any {
            type_url: CHECKPOINT_OPTIONS_TYPE.to_string(),
            value: opts.encode_to_vec(),
        }),
    });
    with_lease(&mut req, &lease);
    let result = bounded("Tasks.Checkpoint", secs(60), ctx.tasks().checkpoint(req)).await;
    if pause {
        let resumed = bounded(
            "Tasks.Resume",
            RPC_TIMEOUT,
            ctx.tasks().resume(ctx.req(ResumeTaskRequest {
                container_id: id.to_string(),
            })),
        )
        .await;
        if let (Err(e), false, Ok(_)) = (&resumed, exit, &result) {
            bail!("resuming {id} after its checkpoint: {e:#}");
        }
    }
    match result {
        Ok(r) => Ok(Checkpoint {
            lease,
            descriptors: r.into_inner().descriptors,
        }),
        Err(e) => {
            let _ = delete_lease(ctx, &lease).await;
            Err(e)
        }
    }
}

fn with_lease<T>(req: &mut Request<T>, lease: &str) {
    req.metadata_mut()
        .insert("containerd-lease", lease.parse().expect("ascii lease id"));
}

async fn create_lease(ctx: &Ctx) -> Result<String> {
    use containerd_client::services::v1::CreateRequest;
    let r = bounded(
        "Leases.Create",
        RPC_TIMEOUT,
        LeasesClient::new(ctx.channel()).create(ctx.req(CreateRequest {
            id: ctx.new_id("rekindle-it-lease"),
            labels: HashMap::new(),
        })),
    )
    .await?;
    Ok(r.into_inner()
        .lease
        .context("Leases.Create without lease")?
        .id)
}

async fn delete_lease(ctx: &Ctx, lease: &str) -> Result<()> {
    use containerd_client::services::v1::DeleteRequest;
    bounded(
        "Leases.Delete",
        RPC_TIMEOUT,
        // Collected before the answer, as the agent does: a checkpoint of the same
        // container soon after must not meet this one's content (containerd 1.6).
        LeasesClient::new(ctx.channel()).delete(ctx.req(DeleteRequest {
            id: lease.to_string(),
            sync: true,
        })),
    )
    .await?;
    Ok(())
}

/// A blob of containerd's content store.
pub async fn read_content(ctx: &Ctx, digest: &str) -> Result<Vec<u8>> {
    ctx.read_blob(digest).await
}

/// Writes `data` into containerd's content store (held by a new lease, returned with
/// the descriptor): how a checkpoint that came from elsewhere gets there.
pub async fn write_content(
    ctx: &Ctx,
    media_type: &str,
    data: &[u8],
) -> Result<(Descriptor, String)> {
    let lease = create_lease(ctx).await?;
    let digest = format!("sha256:{}", hex(&sha2::Sha256::digest(data)));
    let total = data.len() as i64;
    let reference = format!("rekindle-it-{}", &digest[7..23]);
    const CHUNK: usize = 1 << 20;
    let mut requests: Vec<WriteContentRequest> = data
        .chunks(CHUNK)
        .enumerate()
        .map(|(i, c)| WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: reference.clone(),
            total,
            expected: digest.clone(),
            offset: (i * CHUNK) as i64,
            data: c.to_vec(),
            labels: HashMap::new(),
        })
        .collect();
    requests.push(WriteContentRequest {
        action: WriteAction::Commit as i32,
        r#ref: reference,
        total,
        expected: digest.clone(),
        offset: total,
        data: Vec::new(),
        labels: HashMap::new(),
    });
    let mut req = ctx.req(containerd_client::tonic::codegen::tokio_stream::iter(
        requests,
    ));
    with_lease(&mut req, &lease);
    let written = async {
        let mut responses = bounded(
            "Content.Write",
            RPC_TIMEOUT,
            ContentClient::new(ctx.channel()).write(req),
        )
        .await?
        .into_inner();
        while bounded("Content.Write stream", RPC_TIMEOUT, responses.message())
            .await?
            .is_some()
        {}
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = written {
        let _ = delete_lease(ctx, &lease).await;
        return Err(e);
    }
    Ok((
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size: total,
            annotations: HashMap::new(),
        },
        lease,
    ))
}

/// Deletes a lease made by [`write_content`].
pub async fn release_lease(ctx: &Ctx, lease: &str) -> Result<()> {
    delete_lease(ctx, lease).await
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A CRIU image directory as a tar (what containerd keeps a checkpoint as), with `cut`
/// applied to each file's bytes on the way.
pub fn tar_dir(dir: &Path, cut: impl Fn(&str, Vec<u8>) -> Vec<u8>) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut names: Vec<_> = fs::read_dir(dir)?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let mut data = Vec::new();
        fs::File::open(dir.join(&name))?.read_to_end(&mut data)?;
        let data = cut(&name, data);
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append_data(&mut h, &name, data.as_slice())?;
    }
    Ok(b.into_inner()?)
}
