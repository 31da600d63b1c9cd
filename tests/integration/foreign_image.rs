//! An image checkpointed on another node — another kernel, or another CRIU — arrives as
//! such images do: exported there (`rekindle image export`), imported here (`rekindle
//! image import`). A restore of it through containerd is refused at Tasks.Create with an
//! error naming both sides, rekindle-restored counts the refusal, and with
//! `io.rekindle.fallback=cold` the same instance cold-starts instead. Nothing is left
//! behind: the harness checks containers after the story, and the daemon holds no lease.
//!
//! The "other node" is this one's export with the manifest changed, re-packed the way
//! the exporter writes an archive (restore-daemon/src/store/archive.rs): a
//! zstd-compressed tar whose first entry is `manifest.json` (the manifest as
//! `serde_json::to_vec_pretty` writes it), then `image/<path>.lz4` for every file, as
//! exported. No digest covers the manifest (its files' checksums cover their bytes,
//! and import verifies every one of them), so that archive is one a node with the
//! other kernel or CRIU would have written, and import checks it in full.
//! zstd is the `zstd` command's (the test crate does not link the zstd library).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use containerd_client::tonic::Code;
use rekindle_restore_api::{Client, ImageInfo, Manifest, Stats};

use crate::harness::restore::{
    fixture_image, needs_rekindle, restore_story, FunctionSpec, Restored, FALLBACK_ANNOTATION,
    IMAGE_ANNOTATION,
};
use crate::harness::{grpc_code, secs, Ctx, NAMESPACE};

/// The name the stories store the fixture under.
const FN_IMAGE: &str = "python-fn";

/// What the other node differed in.
#[derive(Clone, Copy, Debug)]
enum Foreign {
    Kernel,
    Criu,
}

impl Foreign {
    /// A plausible value of another node's that is not this one's.
    fn other_than(self, here: &str) -> String {
        let candidates: &[&str] = match self {
            // Debian bullseye's and bookworm's kernels.
            Foreign::Kernel => &["5.10.0-35-amd64", "6.1.0-37-amd64"],
            // Debian's own CRIU (which Rekindle never uses), and the one before 4.2.
            Foreign::Criu => &["3.17.1", "4.1.1"],
        };
        candidates
            .iter()
            .find(|c| **c != here)
            .expect("two distinct candidates")
            .to_string()
    }

    /// This node's value, as the daemon reports it.
    fn here(self, stats: &Stats) -> Result<String> {
        match self {
            Foreign::Kernel => Ok(stats.kernel_release.clone()),
            Foreign::Criu => stats
                .criu_version
                .clone()
                .context("rekindle-restored cannot tell this node's CRIU version"),
        }
    }

    /// Makes `m` the other node's.
    fn apply(self, m: &mut Manifest, value: &str) {
        match self {
            Foreign::Kernel => m.kernel_release = value.to_string(),
            Foreign::Criu => m.criu_version = Some(value.to_string()),
        }
    }

    /// The image's value in `m`.
    fn of(self, m: &Manifest) -> Option<String> {
        match self {
            Foreign::Kernel => Some(m.kernel_release.clone()),
            Foreign::Criu => m.criu_version.clone(),
        }
    }

    /// What `host::mismatch` says of it.
    fn cause(self, image: &str, here: &str) -> String {
        match self {
            Foreign::Kernel => {
                format!("it was made on kernel {image}, this node runs kernel {here}")
            }
            Foreign::Criu => format!("it was made with CRIU {image}, this node runs CRIU {here}"),
        }
    }
}

#[test]
fn an_image_checkpointed_on_another_kernel_is_refused_naming_both() {
    restore_story("foreign-kernel", |ctx, restored| async move {
        if let Some(skip) = needs_rekindle(&ctx, "foreign-kernel") {
            eprintln!("{skip}");
            return Ok(());
        }
        foreign_image_story(&ctx, &restored, Foreign::Kernel, "fn-other-kernel").await
    });
}

#[test]
fn an_image_made_by_another_criu_version_is_refused_naming_both() {
    restore_story("foreign-criu", |ctx, restored| async move {
        if let Some(skip) = needs_rekindle(&ctx, "foreign-criu") {
            eprintln!("{skip}");
            return Ok(());
        }
        foreign_image_story(&ctx, &restored, Foreign::Criu, "fn-other-criu").await
    });
}

async fn foreign_image_story(
    ctx: &Ctx,
    restored: &Restored,
    foreign: Foreign,
    name: &str,
) -> Result<()> {
    let client = restored.client();
    fixture_image(ctx, restored, FN_IMAGE).await?;
    let stats = client.stats().await?;
    let here = foreign.here(&stats)?;
    let there = foreign.other_than(&here);
    let native = client.get_image(FN_IMAGE).await?;
    assert_eq!(
        foreign.of(&native.manifest).as_deref(),
        Some(here.as_str()),
        "the fixture was made on this node: {:?}",
        native.manifest
    );

    // The other node exports the image...
    let dir = restored
        .store
        .parent()
        .context("the daemon's directory")?
        .to_path_buf();
    let exported = dir.join(format!("{FN_IMAGE}.tar.zst"));
    let shipped = dir.join(format!("{name}.tar.zst"));
    restored
        .cli(&["export", FN_IMAGE, &exported.display().to_string()])
        .await?;
    {
        let (src, dest, there) = (exported.clone(), shipped.clone(), there.clone());
        tokio::task::spawn_blocking(move || {
            rewrite_manifest(&src, &dest, |m| foreign.apply(m, &there))
        })
        .await??;
    }
    // ...and this one imports it, checking every file against the manifest.
    restored
        .cli(&["import", &shipped.display().to_string(), "--name", name])
        .await
        .context("importing the other node's archive")?;
    let out = restored.cli(&["inspect", name, "--output", "json"]).await?;
    let imported: ImageInfo =
        serde_json::from_str(&out).map_err(|e| anyhow::anyhow!("{e}: {out}"))?;
    assert_eq!(
        foreign.of(&imported.manifest).as_deref(),
        Some(there.as_str()),
        "the import kept what the other node recorded: {:?}",
        imported.manifest
    );
    assert_eq!(
        imported.manifest.files, native.manifest.files,
        "the same files and checksums"
    );
    std::fs::remove_file(&exported)?;
    std::fs::remove_file(&shipped)?;

    let cause = foreign.cause(&there, &here);
    let refusals_before = refusals(&client).await?;

    // Without a fallback: Tasks.Create fails (the shim prepares the image there),
    // naming the image and both sides. The instance's id is kept for the retry.
    let id = ctx.new_id("foreign");
    ctx.adopt(&id, &format!("/{NAMESPACE}/{id}"));
    let instance = || {
        FunctionSpec::new("foreign")
            .id(&id)
            .own_netns()
            .annotate(IMAGE_ANNOTATION, name)
    };
    let err = match instance().create(ctx).await {
        Err(e) => e,
        Ok(f) => {
            f.destroy().await?;
            bail!("Tasks.Create of {id} from {name} ({cause}) succeeded; it should be refused");
        }
    };
    let message = format!("{err:#}");
    eprintln!("[rekindle-it] {name}: Tasks.Create refused: {message}");
    for part in [
        format!("prepare image {name} for restore"),
        "failed_precondition".to_string(),
        format!("image {name}: {cause}"),
        "allow_mismatch".to_string(),
    ] {
        assert!(
            message.contains(&part),
            "the error should say {part:?}: {message}"
        );
    }
    assert_eq!(
        grpc_code(&err),
        Some(Code::FailedPrecondition),
        "the node, not the request, must change: {message}"
    );

    // Counted: one refused prepare_restore, as failed_precondition.
    let after_refusal = refusals(&client).await?;
    assert_eq!(
        after_refusal,
        refusals_before + 1,
        "rekindle-restored counts the refusal as a failed_precondition prepare_restore: {:?}",
        client.stats().await?
    );
    assert_no_leases(&client, "after the refused Tasks.Create").await?;

    // Asked to, the same instance cold-starts: a fresh counter, not the image's.
    let f = instance()
        .annotate(FALLBACK_ANNOTATION, "cold")
        .create(ctx)
        .await
        .context("Tasks.Create with io.rekindle.fallback=cold")?;
    assert_eq!(f.id, id, "the same instance");
    f.start()
        .await
        .context("Tasks.Start with io.rekindle.fallback=cold")?;
    f.wait_serving(secs(30)).await?;
    assert_eq!(
        f.count().await?,
        1,
        "with io.rekindle.fallback=cold the instance cold-starts: a fresh counter"
    );
    assert_eq!(
        refusals(&client).await?,
        after_refusal + 1,
        "the fallback's refusal is counted too: {:?}",
        client.stats().await?
    );
    assert_no_leases(&client, "with the cold-started instance running").await?;
    f.destroy().await?;

    // The image itself is whole: only the mismatch stood in the way.
    let p = client.prepare_restore(name, true).await?;
    assert_eq!(
        p.mismatch.as_deref(),
        Some(format!("image {name}: {cause}").as_str()),
        "{p:?}"
    );
    client.release_restore(&p.lease).await?;
    assert_no_leases(&client, "after the story").await?;
    client.delete_image(name).await?;
    Ok(())
}

/// How many prepare_restore requests the daemon refused as failed_precondition.
async fn refusals(client: &Client) -> Result<u64> {
    let stats = client.stats().await?;
    Ok(stats
        .failures_by_op
        .get("prepare_restore")
        .and_then(|m| m.get("failed_precondition"))
        .copied()
        .unwrap_or(0))
}

async fn assert_no_leases(client: &Client, when: &str) -> Result<()> {
    let stats = client.stats().await?;
    assert_eq!(
        stats.leases, 0,
        "rekindle-restored holds no restore lease {when}: {stats:?}"
    );
    Ok(())
}

/// Re-packs the export archive `src` as `dest` with its manifest edited by `edit`: the
/// entries in their order and with their headers, `manifest.json` re-encoded as the
/// exporter encodes it, zstd level 3 as `rekindle image export` writes by default.
fn rewrite_manifest(src: &Path, dest: &Path, edit: impl FnOnce(&mut Manifest)) -> Result<()> {
    let out = Command::new("zstd")
        .args(["-d", "-q", "-c"])
        .arg(src)
        .output()
        .context("running zstd -d (is zstd installed?)")?;
    if !out.status.success() {
        bail!(
            "zstd -d {} exited with {}: {}",
            src.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tar_path = PathBuf::from(format!("{}.tar", dest.display()));
    let mut builder = tar::Builder::new(std::fs::File::create(&tar_path)?);
    let mut archive = tar::Archive::new(&out.stdout[..]);
    let mut edit = Some(edit);
    for (i, entry) in archive.entries()?.enumerate() {
        let mut entry = entry?;
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let mut header = entry.header().clone();
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        if i == 0 {
            if path != "manifest.json" {
                bail!(
                    "{}: the first entry is {path}, not manifest.json",
                    src.display()
                );
            }
            let mut m: Manifest = serde_json::from_slice(&data)
                .with_context(|| format!("the manifest of {}", src.display()))?;
            (edit.take().expect("one manifest"))(&mut m);
            data = serde_json::to_vec_pretty(&m)?;
            header.set_size(data.len() as u64);
        }
        builder.append_data(&mut header, &path, &data[..])?;
    }
    builder.into_inner()?.sync_all()?;
    let status = Command::new("zstd")
        .args(["-q", "-3", "--rm", "-o"])
        .arg(dest)
        .arg(&tar_path)
        .status()
        .context("running zstd")?;
    if !status.success() {
        let _ = std::fs::remove_file(&tar_path);
        bail!("zstd -o {} exited with {status}", dest.display());
    }
    Ok(())
}
