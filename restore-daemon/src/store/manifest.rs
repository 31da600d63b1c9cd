//! Manifests: parsing and bounds. Pure: no I/O. A manifest read from the store or from an
//! archive is untrusted; nothing in it is used before it passes [`validate`].

use std::collections::{BTreeMap, HashSet};

use rekindle_restore_api::{FileEntry, Manifest, MANIFEST_FORMAT};

use super::codec::max_compressed_size;
use super::name::validate_name;
use super::{Limits, LAST_USED_FILE, MANIFEST_FILE};

/// Longest relative path of an image file.
pub const MAX_PATH_LEN: usize = 1024;
/// Longest component of such a path: stored as `<component>.lz4`, it must fit in a file
/// name (NAME_MAX, 255 bytes on Linux).
pub const MAX_COMPONENT_LEN: usize = 255 - ".lz4".len();
/// Deepest directory nesting inside an image.
pub const MAX_DEPTH: usize = 8;
/// Labels per image, and their sizes.
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_KEY_LEN: usize = 253;
pub const MAX_LABEL_VALUE_LEN: usize = 1024;
/// Longest version strings and digests.
pub const MAX_SHORT_STRING: usize = 256;

/// Parses and validates a manifest; the error is the reason, for a `corrupt` error that
/// names `manifest.json`.
pub fn parse(bytes: &[u8], limits: &Limits) -> Result<Manifest, String> {
    if bytes.len() as u64 > limits.max_manifest_bytes {
        return Err(format!(
            "{} bytes, more than the limit of {}",
            bytes.len(),
            limits.max_manifest_bytes
        ));
    }
    let m: Manifest = serde_json::from_slice(bytes).map_err(|e| format!("not a manifest: {e}"))?;
    validate(&m, limits)?;
    Ok(m)
}

/// A path inside an image: relative, `/`-separated, no `.`/`..`/empty components, no NUL
/// or backslash, bounded length and depth.
pub fn validate_rel_path(path: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("invalid file path {path:?}: {why}"));
    if path.is_empty() {
        return bad("empty");
    }
    if path.len() > MAX_PATH_LEN {
        return bad(&format!("longer than {MAX_PATH_LEN} bytes"));
    }
    if path.starts_with('/') {
        return bad("absolute");
    }
    if path.contains('\0') || path.contains('\\') {
        return bad("contains NUL or a backslash");
    }
    if path.chars().any(char::is_control) {
        return bad("contains a control character");
    }
    let mut depth = 0;
    for c in path.split('/') {
        match c {
            "" => return bad("empty component"),
            "." | ".." => return bad("contains \".\" or \"..\""),
            c if c.len() > MAX_COMPONENT_LEN => {
                return bad(&format!(
                    "a component is longer than {MAX_COMPONENT_LEN} bytes"
                ))
            }
            _ => depth += 1,
        }
    }
    if depth > MAX_DEPTH {
        return bad(&format!("nested deeper than {MAX_DEPTH}"));
    }
    Ok(())
}

/// Checks that the files `paths` (all of them also in `set`) can be stored side by side
/// in an image directory, as `<path>.lz4` next to the image's own files: no path may
/// also be a directory of another ("a", "a/b"), nor may a stored name be ("a",
/// "a.lz4/b"), and no directory may take the name of `manifest.json` or `last-used`.
pub fn validate_layout<'a>(
    paths: impl Iterator<Item = &'a str>,
    set: &HashSet<&str>,
) -> Result<(), String> {
    for path in paths {
        if let Some((top, _)) = path.split_once('/') {
            if top == MANIFEST_FILE || top == LAST_USED_FILE {
                return Err(format!(
                    "{path}: a directory {top} would take the name of the image's own {top}"
                ));
            }
        }
        let mut prefix = path;
        while let Some(i) = prefix.rfind('/') {
            prefix = &prefix[..i];
            if set.contains(prefix) {
                return Err(format!("{prefix} is both a file and a directory"));
            }
            if let Some(file) = prefix.strip_suffix(".lz4").filter(|f| set.contains(f)) {
                return Err(format!(
                    "{prefix} is both the stored file of {file} and a directory"
                ));
            }
        }
    }
    Ok(())
}

/// Label keys like Kubernetes': letters, digits, `.`, `_`, `-`, `/`; values printable.
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!("{} labels, at most {MAX_LABELS}", labels.len()));
    }
    for (k, v) in labels {
        if k.is_empty()
            || k.len() > MAX_LABEL_KEY_LEN
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
        {
            return Err(format!(
                "invalid label key {k:?} (1-{MAX_LABEL_KEY_LEN} of [a-zA-Z0-9._/-])"
            ));
        }
        if v.len() > MAX_LABEL_VALUE_LEN || v.chars().any(char::is_control) {
            return Err(format!(
                "invalid value of label {k:?} (at most {MAX_LABEL_VALUE_LEN} bytes, no control characters)"
            ));
        }
    }
    Ok(())
}

/// Short identifiers (versions, kernel releases, digests): printable ASCII, no spaces.
pub fn validate_short(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_SHORT_STRING || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "invalid {what} {s:?} (1-{MAX_SHORT_STRING} printable ASCII characters, no spaces)"
        ));
    }
    Ok(())
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Everything a manifest must satisfy before any of it is used.
pub fn validate(m: &Manifest, limits: &Limits) -> Result<(), String> {
    if m.format != MANIFEST_FORMAT {
        return Err(format!(
            "manifest format {} is not the supported {MANIFEST_FORMAT}",
            m.format
        ));
    }
    validate_name(&m.name).map_err(|e| e.to_string())?;
    if let Some(v) = &m.criu_version {
        validate_short("CRIU version", v)?;
    }
    validate_short("kernel release", &m.kernel_release)?;
    if let Some(d) = &m.spec_digest {
        validate_short("spec digest", d)?;
    }
    validate_labels(&m.labels)?;
    if m.files.is_empty() {
        return Err("lists no files".into());
    }
    if m.files.len() as u64 > u64::from(limits.max_files) {
        return Err(format!(
            "lists {} files, more than the limit of {}",
            m.files.len(),
            limits.max_files
        ));
    }
    if m.file_count as usize != m.files.len() {
        return Err(format!(
            "file_count is {} but {} files are listed",
            m.file_count,
            m.files.len()
        ));
    }
    let mut total = 0u64;
    let mut total_compressed = 0u64;
    let mut paths = HashSet::with_capacity(m.files.len());
    for f in &m.files {
        validate_entry(f, limits)?;
        if !paths.insert(f.path.as_str()) {
            return Err(format!("lists {} twice", f.path));
        }
        // Checked, not saturating: sizes that overflow must not add up to a total_size
        // of u64::MAX (and then overflow where the totals are recomputed).
        total = total
            .checked_add(f.size)
            .ok_or("the file sizes add up to more than 2^64 bytes")?;
        total_compressed = total_compressed
            .checked_add(f.compressed_size)
            .ok_or("the compressed sizes add up to more than 2^64 bytes")?;
    }
    validate_layout(m.files.iter().map(|f| f.path.as_str()), &paths)?;
    if total > limits.max_total_bytes {
        return Err(format!(
            "files total {total} bytes, more than the limit of {}",
            limits.max_total_bytes
        ));
    }
    if total != m.total_size {
        return Err(format!(
            "total_size is {} but the files add up to {total}",
            m.total_size
        ));
    }
    if total_compressed != m.total_compressed_size {
        return Err(format!(
            "total_compressed_size is {} but the files add up to {total_compressed}",
            m.total_compressed_size
        ));
    }
    Ok(())
}

fn validate_entry(f: &FileEntry, limits: &Limits) -> Result<(), String> {
    validate_rel_path(&f.path)?;
    if f.size > limits.max_total_bytes {
        return Err(format!(
            "{}: {} bytes, more than the limit of {}",
            f.path, f.size, limits.max_total_bytes
        ));
    }
    if f.compressed_size > max_compressed_size(f.size) {
        return Err(format!(
            "{}: compressed size {} is impossible for {} bytes",
            f.path, f.compressed_size, f.size
        ));
    }
    if !is_sha256_hex(&f.sha256) {
        return Err(format!(
            "{}: sha256 {:?} is not 64 lowercase hex digits",
            f.path, f.sha256
        ));
    }
    if let Some(c) = f.compressed_sha256.as_deref().filter(|c| !is_sha256_hex(c)) {
        return Err(format!(
            "{}: compressed_sha256 {c:?} is not 64 lowercase hex digits",
            f.path
        ));
    }
    Ok(())
}

/// Recomputes the totals from the file list.
pub fn fill_totals(m: &mut Manifest) {
    m.file_count = m.files.len() as u32;
    m.total_size = m.files.iter().map(|f| f.size).sum();
    m.total_compressed_size = m.files.iter().map(|f| f.compressed_size).sum();
}

/// The manifest without its file list (what `list_images` shows).
pub fn summary(m: &Manifest) -> Manifest {
    Manifest {
        files: Vec::new(),
        ..m.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_files: 4,
            max_total_bytes: 1 << 20,
            max_manifest_bytes: 64 << 10,
        }
    }

    fn entry(path: &str, size: u64) -> FileEntry {
        FileEntry {
            path: path.into(),
            size,
            compressed_size: size / 2,
            sha256: "ab".repeat(32),
            compressed_sha256: None,
        }
    }

    fn manifest(files: Vec<FileEntry>) -> Manifest {
        let mut m = Manifest {
            format: MANIFEST_FORMAT,
            name: "fn-1".into(),
            created_unix: 1_700_000_000,
            criu_version: Some("4.2.1".into()),
            kernel_release: "6.18.0".into(),
            spec_digest: Some("sha256:abc".into()),
            labels: BTreeMap::from([("function".into(), "hello".into())]),
            file_count: 0,
            total_size: 0,
            total_compressed_size: 0,
            files,
        };
        fill_totals(&mut m);
        m
    }

    fn reason(m: &Manifest) -> String {
        validate(m, &limits()).unwrap_err()
    }

    #[test]
    fn a_good_manifest_round_trips_through_json() {
        let m = manifest(vec![entry("inventory.img", 10), entry("pages-1.img", 4096)]);
        validate(&m, &limits()).unwrap();
        let json = serde_json::to_vec(&m).unwrap();
        assert_eq!(parse(&json, &limits()).unwrap(), m);
    }

    #[test]
    fn bounds_are_enforced() {
        let five = (0..5).map(|i| entry(&format!("f{i}"), 1)).collect();
        assert!(reason(&manifest(five)).contains("more than the limit of 4"));
        let big = manifest(vec![entry("a", 1 << 19), entry("b", (1 << 19) + 1)]);
        assert!(reason(&big).contains("more than the limit"));
        assert!(reason(&manifest(vec![])).contains("no files"));
        let huge = vec![b' '; 65 << 10];
        assert!(parse(&huge, &limits())
            .unwrap_err()
            .contains("more than the limit"));
    }

    #[test]
    fn totals_must_add_up() {
        let mut m = manifest(vec![entry("a", 10)]);
        m.total_size = 9;
        assert!(reason(&m).contains("total_size"));
        let mut m = manifest(vec![entry("a", 10)]);
        m.file_count = 2;
        assert!(reason(&m).contains("file_count"));
        let mut m = manifest(vec![entry("a", 10)]);
        m.total_compressed_size += 1;
        assert!(reason(&m).contains("total_compressed_size"));
    }

    #[test]
    fn bad_paths_are_refused() {
        for p in [
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "",
            "a\\b",
            "a\nb",
            "a/b/c/d/e/f/g/h/i",
        ] {
            assert!(
                reason(&manifest(vec![entry(p, 1)])).contains("invalid file path"),
                "{p:?}"
            );
        }
        validate_rel_path("sub/dir/pages-1.img").unwrap();
        // A component past NAME_MAX once ".lz4" is added failed the write as an internal
        // error (ENAMETOOLONG); found by the archive_import fuzzer. (Regression.)
        let longest = "c".repeat(MAX_COMPONENT_LEN);
        validate_rel_path(&format!("a/{longest}")).unwrap();
        let e = validate_rel_path(&format!("a/{longest}c/b")).unwrap_err();
        assert!(e.contains("component is longer than 251"), "{e}");
        let e = validate_rel_path(&"\u{fffd}".repeat(100)).unwrap_err();
        assert!(e.contains("component is longer"), "{e}");
        let dup = manifest(vec![entry("a", 1), entry("a", 1)]);
        assert!(reason(&dup).contains("twice"));
        let clash = manifest(vec![entry("a", 1), entry("a/b", 1)]);
        assert!(reason(&clash).contains("both a file and a directory"));
        // Stored as "a.lz4", "a" clashes with the directory "a.lz4" (regression).
        let clash = manifest(vec![entry("a", 1), entry("a.lz4/b", 1)]);
        assert!(reason(&clash).contains("stored file of a"));
        let clash = manifest(vec![entry("a.lz4/b/c", 1), entry("a", 1)]);
        assert!(reason(&clash).contains("stored file of a"));
        for reserved in ["manifest.json/x", "last-used/x"] {
            let clash = manifest(vec![entry(reserved, 1)]);
            assert!(reason(&clash).contains("image's own"), "{reserved}");
        }
        // Names that merely look alike are fine.
        let fine = manifest(vec![
            entry("a", 1),
            entry("a.lz4", 1),
            entry("b.lz4.d/c", 1),
            entry("d/manifest.json", 1),
        ]);
        validate(&fine, &limits()).unwrap();
    }

    #[test]
    fn bad_fields_are_refused() {
        let mut m = manifest(vec![entry("a", 10)]);
        m.files[0].sha256 = "AB".repeat(32);
        assert!(reason(&m).contains("sha256"));
        let mut m = manifest(vec![entry("a", 10)]);
        m.files[0].compressed_size = 1 << 30;
        fill_totals(&mut m);
        assert!(reason(&m).contains("impossible"));
        let mut m = manifest(vec![entry("a", 10)]);
        m.name = "../evil".into();
        assert!(reason(&m).contains("invalid image name"));
        let mut m = manifest(vec![entry("a", 10)]);
        m.format = 2;
        assert!(reason(&m).contains("format 2"));
        let mut m = manifest(vec![entry("a", 10)]);
        m.kernel_release = "6.1 evil".into();
        assert!(reason(&m).contains("kernel release"));
        let mut m = manifest(vec![entry("a", 10)]);
        m.labels.insert("bad key".into(), "v".into());
        assert!(reason(&m).contains("label key"));
    }

    #[test]
    fn sizes_that_overflow_are_refused() {
        // With no practical bound on the total (max_total_bytes = u64::MAX), two files
        // of 2^63 bytes saturated to a total of u64::MAX that matched a forged
        // total_size, and fill_totals then overflowed. (Regression.)
        let unbounded = Limits {
            max_total_bytes: u64::MAX,
            ..limits()
        };
        let mut m = manifest(vec![entry("a", 1)]);
        m.files = vec![entry("a", 1 << 63), entry("b", 1 << 63)];
        m.file_count = 2;
        m.total_size = u64::MAX;
        m.total_compressed_size = 1 << 63;
        let e = validate(&m, &unbounded).unwrap_err();
        assert!(e.contains("more than 2^64"), "{e}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let m = manifest(vec![entry("a", 10)]);
        let mut v = serde_json::to_value(&m).unwrap();
        v["extra"] = serde_json::json!(1);
        let e = parse(&serde_json::to_vec(&v).unwrap(), &limits()).unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
    }
}
