//! A stored image's restores get faster once one has run: the first restore of an
//! image records the pages its function touches first (its working set, one file per
//! image in the shim's working-sets dir), and the next restore has CRIU's lazy-pages
//! daemon copy them in before the function resumes, instead of one page fault at a
//! time. The function answers from its checkpoint's state either way.
//!
//! The shims inherit containerd's environment: the harness points
//! `REKINDLE_WORKING_SETS` into the private containerd's temp dir, shared by the
//! stories of one run, so this one uses an image name of its own and removes its
//! working set at the end.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::harness::restore::{
    fixture_image, needs_rekindle, restore_story, FunctionSpec, FIXTURE_COUNT, IMAGE_ANNOTATION,
};

/// The shims' working-sets dir: the harness gives containerd one in its temp dir.
fn working_sets_dir(ctx: &crate::harness::Ctx) -> PathBuf {
    ctx.paths().dir.join("working-sets")
}

/// How long the first restore's task waits between its create and its start:
/// ten times the lazy-pages daemon's default hold-back.
const HELD_BEFORE_START: Duration = Duration::from_millis(500);

/// How long after its start the first restore's function gets its first request:
/// four times the lazy-pages daemon's default hold-back.
const FIRST_REQUEST_AFTER_START: Duration = Duration::from_millis(200);

/// Fewer pages than this in the first restore's working set: the recording missed
/// the first request.
const MIN_WORKING_SET_PAGES: usize = 64;

/// The story's working set goes, whatever the story's outcome.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn the_second_restore_of_a_stored_image_prefetches_what_the_first_touched() {
    restore_story("working-set", |ctx, restored| async move {
        if let Some(skip) = needs_rekindle(&ctx, "working-set") {
            eprintln!("{skip}");
            return Ok(());
        }
        let off = |var: &str, value: &str| std::env::var(var).is_ok_and(|v| v == value);
        if off("REKINDLE_RESTORE_ENGINE", "runc")
            || off("REKINDLE_LAZY_PAGES", "0")
            || off("REKINDLE_WORKING_SET", "0")
        {
            eprintln!("[rekindle-it] working-set: skipped, working sets are off in this run");
            return Ok(());
        }
        let name = format!("python-fn-ws-{}", std::process::id());
        let file = working_sets_dir(&ctx).join(&name);
        let _ = std::fs::remove_file(&file);
        let _gone = RemoveOnDrop(file.clone());
        fixture_image(&ctx, &restored, &name).await?;

        // First restore: nothing to prefetch, its page faults are recorded. Its task
        // waits well past the lazy-pages daemon's hold-back (REKINDLE_LAZY_PAGES_DELAY_MS,
        // 50 ms) before its start, as a pooled instance does: the shim restores it
        // at Create and holds it stopped until Start, and the hold-back counts from
        // its resume, not from the end of that restore (CRIU patch 0005). And its
        // first request comes well after the resume, as on a loaded machine: the
        // hold-back starts at the function's first fault (patch 0021), not at the
        // resume. Counted from either, the daemon had sent every page before the
        // request, and nothing was recorded.
        let f = FunctionSpec::new("ws-first")
            .own_netns()
            .annotate(IMAGE_ANNOTATION, &name)
            .create(&ctx)
            .await?;
        tokio::time::sleep(HELD_BEFORE_START).await;
        f.start().await?;
        tokio::time::sleep(FIRST_REQUEST_AFTER_START).await;
        assert_eq!(f.count().await?, FIXTURE_COUNT + 1);
        // Saved once the lazy-pages daemon has sent the last page.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !file.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The state whole, as the daemon sent it in the background (read only now:
        // read before, it would all have been faulted in, and recorded).
        f.state_intact().await?;
        let first_id = f.id.clone();
        f.destroy().await?;
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("the first restore's working set {}", file.display()))?;
        let mut lines = text.lines();
        let header = lines.next().unwrap_or_default();
        assert!(
            header.starts_with("# image "),
            "{} begins with the image's dump: {header:?}",
            file.display()
        );
        let pages = lines
            .filter(|l| u64::from_str_radix(l, 16).is_ok_and(|a| a % 4096 == 0))
            .count();
        // A restored CPython answering its first request touches hundreds of pages
        // (~400 here); a record of a handful means the daemon had sent them before
        // the function ran.
        assert!(
            pages >= MIN_WORKING_SET_PAGES,
            "{} lists {pages} pages, fewer than the {MIN_WORKING_SET_PAGES} a first request touches: {text:?}",
            file.display()
        );
        let recorded = ctx
            .paths()
            .log_lines_mentioning(&["working set: recorded".to_string()], 50);
        assert!(
            recorded.contains(&name),
            "the shim says it recorded the working set of {name}: {recorded}"
        );

        // Second restore: the working set is copied in before the function resumes.
        let g = FunctionSpec::new("ws-second")
            .own_netns()
            .annotate(IMAGE_ANNOTATION, &name)
            .create(&ctx)
            .await?;
        g.start().await?;
        assert_eq!(
            g.count().await?,
            FIXTURE_COUNT + 1,
            "the prefetched restore answers from the checkpoint's state"
        );
        // And whole: the working set copied in, the rest faulted in or sent after.
        g.state_intact().await?;
        let second_id = g.id.clone();
        g.destroy().await?;
        // Both restores' CRIU logs were kept once their containers were gone
        // (REKINDLE_CRIU_LOGS_DIR, set by the harness).
        for id in [&first_id, &second_id] {
            let kept = ctx
                .paths()
                .dir
                .join("criu-logs")
                .join(crate::harness::NAMESPACE);
            let found = std::fs::read_dir(&kept)
                .with_context(|| format!("kept CRIU logs in {}", kept.display()))?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{id}-")))
                });
            let Some(dir) = found else {
                bail!("no CRIU logs of {id} kept in {}", kept.display());
            };
            for log in ["restore.log", "lazy-pages.log"] {
                assert!(dir.join(log).is_file(), "{} lacks {log}", dir.display());
            }
        }
        let said = ctx
            .paths()
            .log_lines_mentioning(&["prefetching working set".to_string()], 50);
        if !said.contains(&file.display().to_string()) {
            bail!(
                "the shim does not say it prefetched {}: {said}",
                file.display()
            );
        }
        Ok(())
    });
}
