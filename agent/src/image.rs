//! `rekindle image ...`: the checkpoint images in rekindle-restored's store, through
//! its socket (`rekindle_restore_api::Client`). Tables for people, `--output json` for
//! scripts (the daemon's `ok` body as is).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use rekindle_restore_api::{Client, GcReport, ImageInfo, Stats};
use serde::Serialize;

use crate::ctl::Output;
use crate::Error;

#[derive(Debug, Clone, Subcommand)]
pub enum ImageCommand {
    /// List images: size on disk, compression, whether staged in memory, last use.
    #[command(visible_alias = "ls")]
    List,
    /// Show an image's manifest: versions, labels, every file with its checksum.
    Inspect {
        /// Image name.
        image: String,
    },
    /// Export an image as one zstd-compressed tar archive, to ship it to another node.
    Export {
        /// Image name.
        image: String,
        /// Where to write it (must not exist).
        file: PathBuf,
        /// zstd level, 1-19.
        #[arg(long, value_name = "N", default_value_t = 3)]
        zstd_level: i32,
    },
    /// Import an archive written by `rekindle image export` (validated before it is stored).
    Import {
        /// The exported file.
        file: PathBuf,
        /// Store it under this name instead of the one in the archive.
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// Remove an image from the store (and its staged copy).
    #[command(visible_alias = "rm")]
    Remove {
        /// Image name.
        image: String,
    },
    /// Keep an image decompressed in memory, so that restores need no decompression.
    Stage {
        /// Image name.
        image: String,
    },
    /// Drop an image's staged copy from memory.
    Unstage {
        /// Image name.
        image: String,
    },
    /// Delete images unused for longer than --max-age, then least-recently-used ones
    /// until the store fits --max-bytes. Staged or leased images are kept.
    Gc {
        /// Size budget for the store (compressed), e.g. 20G, 512M, 1048576.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        max_bytes: Option<u64>,
        /// Age limit since last use, e.g. 7d, 12h, 30m, 90s.
        #[arg(long, value_name = "AGE", value_parser = parse_age)]
        max_age: Option<u64>,
        /// Show what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show rekindle-restored's counters: store and staging usage, requests and failures
    /// by op, and the restore outcomes the shim reported (by engine: direct, runc, cold).
    Stats,
}

impl ImageCommand {
    pub fn name(&self) -> &'static str {
        match self {
            ImageCommand::List => "image list",
            ImageCommand::Inspect { .. } => "image inspect",
            ImageCommand::Export { .. } => "image export",
            ImageCommand::Import { .. } => "image import",
            ImageCommand::Remove { .. } => "image remove",
            ImageCommand::Stage { .. } => "image stage",
            ImageCommand::Unstage { .. } => "image unstage",
            ImageCommand::Gc { .. } => "image gc",
            ImageCommand::Stats => "image stats",
        }
    }
}

/// `20G`, `512M`, `4k`, `1048576` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult: u64 = match c.to_ascii_lowercase() {
                'k' => 1 << 10,
                'm' => 1 << 20,
                'g' => 1 << 30,
                't' => 1 << 40,
                _ => return Err(format!("unknown unit in {s:?} (use K, M, G or T)")),
            };
            (&s[..i], mult)
        }
        _ => (s, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a size like 20G, 512M or 1048576"))
}

/// `7d`, `12h`, `30m`, `90s`, `90` (seconds).
pub fn parse_age(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, mult) = match s.chars().last() {
        Some('d') => (&s[..s.len() - 1], 86_400),
        Some('h') => (&s[..s.len() - 1], 3_600),
        Some('m') => (&s[..s.len() - 1], 60),
        Some('s') => (&s[..s.len() - 1], 1),
        _ => (s, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not an age like 7d, 12h, 30m or 90s"))
}

/// 1.5 GiB, 300 KiB, 12 B.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `3m ago`, `2h ago`, `5d ago`.
pub fn human_age(then: u64, now: u64) -> String {
    let s = now.saturating_sub(then);
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// Left-aligned columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn ratio(original: u64, compressed: u64) -> String {
    if compressed == 0 {
        "-".into()
    } else {
        format!("{:.2}x", original as f64 / compressed as f64)
    }
}

pub fn list_table(images: &[ImageInfo], now: u64) -> String {
    let rows: Vec<Vec<String>> = images
        .iter()
        .map(|i| {
            let m = &i.manifest;
            vec![
                m.name.clone(),
                m.file_count.to_string(),
                human_bytes(m.total_size),
                human_bytes(m.total_compressed_size),
                ratio(m.total_size, m.total_compressed_size),
                if i.staged { "yes" } else { "no" }.into(),
                i.leases.to_string(),
                m.criu_version.clone().unwrap_or_else(|| "?".into()),
                human_age(m.created_unix, now),
                human_age(i.last_used_unix, now),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "FILES",
            "SIZE",
            "ON DISK",
            "RATIO",
            "STAGED",
            "LEASES",
            "CRIU",
            "CREATED",
            "LAST USED",
        ],
        &rows,
    )
}

pub fn inspect_text(i: &ImageInfo, now: u64) -> String {
    let m = &i.manifest;
    let mut out = String::new();
    let mut kv = |k: &str, v: String| out.push_str(&format!("{k:<15} {v}\n"));
    kv("Name:", m.name.clone());
    kv(
        "Created:",
        format!("{} ({})", m.created_unix, human_age(m.created_unix, now)),
    );
    kv("Last used:", human_age(i.last_used_unix, now));
    kv(
        "CRIU:",
        m.criu_version.clone().unwrap_or_else(|| "unknown".into()),
    );
    kv("Kernel:", m.kernel_release.clone());
    kv(
        "Spec digest:",
        m.spec_digest.clone().unwrap_or_else(|| "-".into()),
    );
    kv(
        "Size:",
        format!(
            "{} in {} files, {} on disk ({})",
            human_bytes(m.total_size),
            m.file_count,
            human_bytes(m.total_compressed_size),
            ratio(m.total_size, m.total_compressed_size)
        ),
    );
    kv("Staged:", if i.staged { "yes" } else { "no" }.into());
    kv("Leases:", i.leases.to_string());
    let labels = if m.labels.is_empty() {
        "-".to_string()
    } else {
        m.labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    kv("Labels:", labels);
    out.push('\n');
    let rows: Vec<Vec<String>> = m
        .files
        .iter()
        .map(|f| {
            vec![
                f.path.clone(),
                f.size.to_string(),
                f.compressed_size.to_string(),
                f.sha256.clone(),
            ]
        })
        .collect();
    out.push_str(&table(&["PATH", "SIZE", "COMPRESSED", "SHA256"], &rows));
    out
}

pub fn gc_text(r: &GcReport) -> String {
    let mut out = String::new();
    let verb = if r.dry_run { "would delete" } else { "deleted" };
    if r.deleted.is_empty() {
        out.push_str(&format!(
            "nothing to delete; {} images kept ({})\n",
            r.kept,
            human_bytes(r.kept_bytes)
        ));
    } else {
        let rows: Vec<Vec<String>> = r
            .deleted
            .iter()
            .map(|d| vec![d.name.clone(), human_bytes(d.bytes), d.reason.clone()])
            .collect();
        out.push_str(&table(&["NAME", "SIZE", "REASON"], &rows));
        out.push_str(&format!(
            "{verb} {} images ({}); {} kept ({})\n",
            r.deleted.len(),
            human_bytes(r.freed_bytes),
            r.kept,
            human_bytes(r.kept_bytes)
        ));
    }
    for s in &r.skipped {
        out.push_str(&format!("kept {}: {}\n", s.name, s.reason));
    }
    out
}

/// `45s`, `12m`, `3h 5m`, `2d 4h`.
pub fn human_duration(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86_399 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// The restore outcomes the shim reported, as a table (ENGINE, OUTCOME, COUNT,
/// LAST SEEN, LAST REASON).
pub fn restores_table(st: &Stats, now: u64) -> String {
    if st.restores.is_empty() {
        return "no restores reported\n".into();
    }
    let rows: Vec<Vec<String>> = st
        .restores
        .iter()
        .map(|r| {
            vec![
                r.engine.clone(),
                r.outcome.clone(),
                r.count.to_string(),
                r.last_unix
                    .map(|t| human_age(t, now))
                    .unwrap_or_else(|| "-".into()),
                r.last_reason.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        &["ENGINE", "OUTCOME", "COUNT", "LAST SEEN", "LAST REASON"],
        &rows,
    )
}

pub fn stats_text(st: &Stats, now: u64) -> String {
    let mut out = String::new();
    let mut kv = |k: &str, v: String| out.push_str(&format!("{k:<15} {v}\n"));
    kv(
        "Daemon:",
        format!(
            "rekindle-restored {} (protocol v{}), up {}",
            st.version,
            st.protocol,
            human_duration(st.uptime_secs)
        ),
    );
    kv(
        "CRIU:",
        st.criu_version.clone().unwrap_or_else(|| "unknown".into()),
    );
    kv("Kernel:", st.kernel_release.clone());
    kv(
        "Images:",
        format!("{} ({} on disk)", st.images, human_bytes(st.store_bytes)),
    );
    kv(
        "Staged:",
        format!(
            "{} ({} in memory)",
            st.staged_images,
            human_bytes(st.staged_bytes)
        ),
    );
    kv("Leases:", st.leases.to_string());
    out.push('\n');
    if st.requests.is_empty() {
        out.push_str("no requests\n");
    } else {
        let rows: Vec<Vec<String>> = st
            .requests
            .iter()
            .map(|(op, n)| {
                let by = st.failures_by_op.get(op);
                let failed: u64 = by.map(|m| m.values().sum()).unwrap_or(0);
                let reasons = by
                    .filter(|m| !m.is_empty())
                    .map(|m| {
                        m.iter()
                            .map(|(code, n)| format!("{code}={n}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_else(|| "-".into());
                vec![op.clone(), n.to_string(), failed.to_string(), reasons]
            })
            .collect();
        out.push_str(&table(&["OP", "REQUESTS", "FAILED", "REASONS"], &rows));
    }
    out.push('\n');
    out.push_str(&restores_table(st, now));
    out
}

/// The daemon needs absolute paths; a relative one is the caller's.
fn absolute(p: &Path) -> Result<PathBuf, Error> {
    std::path::absolute(p).map_err(|e| Error::Usage(format!("{}: {e}", p.display())))
}

fn print<T: Serialize>(
    output: Output,
    value: &T,
    text: impl FnOnce() -> String,
) -> Result<(), Error> {
    let s = match output {
        Output::Json => {
            serde_json::to_string_pretty(value).map_err(|e| Error::Usage(e.to_string()))? + "\n"
        }
        Output::Text => text(),
    };
    io::stdout()
        .write_all(s.as_bytes())
        .map_err(|e| Error::Usage(format!("cannot write to stdout: {e}")))
}

/// Runs one `rekindle image` subcommand against rekindle-restored on `socket`.
pub async fn run(cmd: &ImageCommand, socket: &Path, output: Output) -> Result<(), Error> {
    let client = Client::new(socket);
    let now = now_unix();
    match cmd {
        ImageCommand::List => {
            let images = client.list_images().await?;
            print(output, &images, || {
                if images.is_empty() {
                    "no images\n".into()
                } else {
                    list_table(&images, now)
                }
            })
        }
        ImageCommand::Inspect { image } => {
            let info = client.get_image(image).await?;
            print(output, &info, || inspect_text(&info, now))
        }
        ImageCommand::Export {
            image,
            file,
            zstd_level,
        } => {
            let dest = absolute(file)?;
            let progress = (output == Output::Text).then(|| {
                eprintln!("exporting {image} to {} ...", dest.display());
                crate::ctl::Progress::start(format!("exporting {image}"))
            });
            let e = client.export_image(image, &dest, Some(*zstd_level)).await;
            if let Some(p) = progress {
                p.done();
            }
            let e = e?;
            print(output, &e, || {
                format!(
                    "exported {} ({} files) to {}: {}\n",
                    e.name,
                    e.file_count,
                    e.path.display(),
                    human_bytes(e.bytes)
                )
            })
        }
        ImageCommand::Import { file, name } => {
            let path = absolute(file)?;
            let progress = (output == Output::Text).then(|| {
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                eprintln!("importing {} ({}) ...", path.display(), human_bytes(size));
                crate::ctl::Progress::start(format!("importing {}", path.display()))
            });
            let info = client.import_image(&path, name.clone()).await;
            if let Some(p) = progress {
                p.done();
            }
            let info = info?;
            print(output, &info, || {
                let m = &info.manifest;
                format!(
                    "imported {}: {} files, {} ({} on disk)\n",
                    m.name,
                    m.file_count,
                    human_bytes(m.total_size),
                    human_bytes(m.total_compressed_size)
                )
            })
        }
        ImageCommand::Remove { image } => {
            let d = client.delete_image(image).await?;
            print(output, &d, || {
                format!(
                    "removed {} (freed {})\n",
                    d.name,
                    human_bytes(d.freed_bytes)
                )
            })
        }
        ImageCommand::Stage { image } => {
            let s = client.stage_image(image).await?;
            print(output, &s, || {
                if s.already_staged {
                    format!("{} was staged already at {}\n", s.name, s.dir.display())
                } else {
                    format!(
                        "staged {} at {} ({} in memory)\n",
                        s.name,
                        s.dir.display(),
                        human_bytes(s.bytes)
                    )
                }
            })
        }
        ImageCommand::Unstage { image } => {
            let u = client.unstage_image(image).await?;
            print(output, &u, || {
                if u.was_staged {
                    format!(
                        "unstaged {} (freed {})\n",
                        u.name,
                        human_bytes(u.freed_bytes)
                    )
                } else {
                    format!("{} was not staged\n", u.name)
                }
            })
        }
        ImageCommand::Gc {
            max_bytes,
            max_age,
            dry_run,
        } => {
            if max_bytes.is_none() && max_age.is_none() {
                return Err(Error::Usage(
                    "image gc needs --max-bytes or --max-age (or both)".into(),
                ));
            }
            let r = client.gc(*max_bytes, *max_age, *dry_run).await?;
            print(output, &r, || gc_text(&r))
        }
        ImageCommand::Stats => {
            let st = client.stats().await?;
            print(output, &st, || stats_text(&st, now))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use clap::Parser;
    use rekindle_restore_api::{FileEntry, Manifest, RestoreCount, MANIFEST_FORMAT};

    use super::*;

    fn info() -> ImageInfo {
        ImageInfo {
            manifest: Manifest {
                format: MANIFEST_FORMAT,
                name: "hello-fn".into(),
                created_unix: 1000,
                criu_version: Some("4.2.1".into()),
                kernel_release: "6.18.0".into(),
                spec_digest: None,
                labels: BTreeMap::from([("function".into(), "hello".into())]),
                file_count: 1,
                total_size: 3 << 20,
                total_compressed_size: 1 << 20,
                files: vec![FileEntry {
                    path: "pages-1.img".into(),
                    size: 3 << 20,
                    compressed_size: 1 << 20,
                    sha256: "ab".repeat(32),
                    compressed_sha256: None,
                }],
            },
            staged: true,
            leases: 0,
            last_used_unix: 1000 + 3600,
        }
    }

    #[test]
    fn sizes_and_ages_parse() {
        assert_eq!(parse_size("20G").unwrap(), 20 << 30);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert!(parse_size("12X").is_err());
        assert!(parse_size("G").is_err());
        assert_eq!(parse_age("7d").unwrap(), 7 * 86_400);
        assert_eq!(parse_age("30m").unwrap(), 1800);
        assert_eq!(parse_age("90").unwrap(), 90);
        assert!(parse_age("soon").is_err());
    }

    #[test]
    fn sizes_and_ages_read_well() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
        assert_eq!(human_bytes(1536 << 20), "1.5 GiB");
        assert_eq!(human_age(0, 30), "30s ago");
        assert_eq!(human_age(0, 7200), "2h ago");
        assert_eq!(human_age(0, 3 * 86_400), "3d ago");
    }

    #[test]
    fn the_list_is_a_table() {
        let t = list_table(&[info()], 1000 + 7200);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("NAME      FILES  SIZE"), "{t}");
        assert!(lines[1].starts_with("hello-fn  1      3.0 MiB"), "{t}");
        assert!(
            lines[1].contains("3.00x") && lines[1].contains("yes"),
            "{t}"
        );
        assert!(lines[1].ends_with("1h ago"), "{t}");
    }

    #[test]
    fn inspect_shows_versions_labels_and_files() {
        let t = inspect_text(&info(), 5000);
        for needle in [
            "hello-fn",
            "4.2.1",
            "6.18.0",
            "function=hello",
            "pages-1.img",
            &"ab".repeat(32),
        ] {
            assert!(t.contains(needle), "{needle}: {t}");
        }
    }

    fn stats() -> Stats {
        Stats {
            version: "0.1.0".into(),
            protocol: 1,
            uptime_secs: 2 * 3600 + 5 * 60,
            criu_version: Some("4.2.1".into()),
            kernel_release: "6.18.0".into(),
            images: 3,
            store_bytes: 120 << 20,
            staged_images: 1,
            staged_bytes: 300 << 20,
            leases: 0,
            requests: BTreeMap::from([
                ("prepare_restore".into(), 12),
                ("report_restore".into(), 14),
            ]),
            failures: BTreeMap::from([("corrupt".into(), 1)]),
            failures_by_op: BTreeMap::from([(
                "prepare_restore".into(),
                BTreeMap::from([("corrupt".into(), 1)]),
            )]),
            restores: vec![
                RestoreCount {
                    engine: "direct".into(),
                    outcome: "ok".into(),
                    count: 11,
                    last_reason: None,
                    last_unix: Some(10_000 - 180),
                },
                RestoreCount {
                    engine: "direct".into(),
                    outcome: "failed".into(),
                    count: 2,
                    last_reason: Some("criu: restore failed (see restore.log)".into()),
                    last_unix: Some(10_000 - 7200),
                },
                RestoreCount {
                    engine: "runc".into(),
                    outcome: "ok".into(),
                    count: 2,
                    last_reason: None,
                    last_unix: Some(10_000 - 7200),
                },
            ],
        }
    }

    #[test]
    fn stats_show_counters_and_restores_by_engine() {
        let t = stats_text(&stats(), 10_000);
        for needle in [
            "rekindle-restored 0.1.0 (protocol v1), up 2h 5m",
            "3 (120.0 MiB on disk)",
            "1 (300.0 MiB in memory)",
            "prepare_restore  12        1       corrupt=1",
            "report_restore   14        0       -",
            "ENGINE  OUTCOME  COUNT  LAST SEEN  LAST REASON",
            "direct  ok       11     3m ago     -",
            "direct  failed   2      2h ago     criu: restore failed (see restore.log)",
            "runc    ok       2      2h ago     -",
        ] {
            assert!(t.contains(needle), "{needle}:\n{t}");
        }
        let mut empty = stats();
        empty.restores.clear();
        assert!(stats_text(&empty, 10_000).ends_with("no restores reported\n"));
    }

    #[test]
    fn image_stats_parses() {
        let cli = crate::ctl::Cli::try_parse_from(["rekindle", "image", "stats"]).unwrap();
        assert_eq!(cli.command.name(), "image stats");
        let cli =
            crate::ctl::Cli::try_parse_from(["rekindle", "image", "stats", "--output", "json"])
                .unwrap();
        assert_eq!(cli.output, Output::Json);
    }
}
