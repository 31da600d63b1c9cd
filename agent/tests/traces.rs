//! Trace readers: the real 199-row Azure 2021 slice, a hand-made 2019 day, and bad rows.

use std::path::PathBuf;

use rekindle_agent::policy::Trigger;
use rekindle_agent::trace::{self, Format, ReadOptions, TraceError, DEFAULT_MEMORY_MB};

fn slice() -> PathBuf {
    let dir = std::env::var_os("REKINDLE_TRACES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data"));
    let p = dir.join("azure2021/azure2021_invitro_first199.csv");
    assert!(
        p.exists(),
        "the real Azure 2021 slice is missing at {} (set REKINDLE_TRACES_DIR)",
        p.display()
    );
    p
}

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

#[test]
fn reads_the_real_azure_2021_slice() {
    let path = slice();
    assert_eq!(trace::detect(&path).unwrap(), Format::Azure2021);
    let t = trace::read(&[path], Format::Auto, &ReadOptions::default()).unwrap();
    // The README of the slice: 199 rows, 13 apps, 31 (app, func) pairs, ends 0.07–1260 s.
    assert_eq!(t.len(), 199);
    assert_eq!(t.apps.len(), 13);
    assert_eq!(t.functions.len(), 31);
    assert!(!t.synthetic);
    let v: Vec<_> = t.iter().collect();
    assert!(v.windows(2).all(|w| w[0].arrival <= w[1].arrival));
    // The first row: end 0.0795 s, duration 0.078 s.
    assert!((v[0].arrival - (0.079_490_900_039_672_85 - 0.078)).abs() < 1e-9);
    let last_end = v
        .iter()
        .map(|i| i.arrival + i.duration as f64)
        .fold(0.0, f64::max);
    assert!((last_end - 1260.0558).abs() < 0.01, "{last_end}");
    assert_eq!(t.horizon, 1320.0);
    // No memory in the 2021 format: the documented default.
    assert!(t
        .functions
        .iter()
        .all(|f| f.info.memory_mb == DEFAULT_MEMORY_MB && f.info.trigger.is_none()));
    // Round trip through the writer.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("copy.csv");
    t.write_azure2021(&mut std::fs::File::create(&out).unwrap())
        .unwrap();
    let back = trace::read(&[out], Format::Azure2021, &ReadOptions::default()).unwrap();
    assert_eq!(back.len(), 199);
    assert_eq!(back.functions.len(), 31);
}

#[test]
fn reads_a_2019_day_with_its_sibling_files() {
    let path = data("invocations_per_function_md.anon.d01.csv");
    assert_eq!(trace::detect(&path).unwrap(), Format::Azure2019);
    let opts = ReadOptions {
        seed: 3,
        ..Default::default()
    };
    let t = trace::read(std::slice::from_ref(&path), Format::Auto, &opts).unwrap();
    assert_eq!(t.functions.len(), 3);
    assert_eq!(t.apps.len(), 2);
    // 206 timer minutes, 60 × 5 burst, 3 queue.
    assert_eq!(t.len(), 206 + 300 + 3);
    assert_eq!(t.horizon, 86400.0);
    let v: Vec<_> = t.iter().collect();
    assert_eq!(v.len() as u64, t.len());
    assert!(v.windows(2).all(|w| w[0].arrival <= w[1].arrival));
    let timer = &t.functions[0];
    assert_eq!(timer.info.trigger, Some(Trigger::Timer));
    assert_eq!(timer.info.memory_mb, 180.0);
    assert_eq!(t.functions[2].info.memory_mb, DEFAULT_MEMORY_MB);
    // Durations from the percentiles file (seconds), 1 s where there is none.
    for inv in &v {
        let d = inv.duration as f64;
        match inv.function {
            0 => assert!((1.5..=2.5).contains(&d), "{d}"),
            1 => assert!((0.05..=0.4).contains(&d), "{d}"),
            _ => assert_eq!(d, 1.0),
        }
    }
    // Each minute's invocations stay in their minute.
    let burst: Vec<_> = v.iter().filter(|i| i.function == 1).collect();
    assert!(burst
        .iter()
        .all(|i| (600.0 * 60.0..660.0 * 60.0).contains(&i.arrival)));
    // Two days.
    let t2 = trace::read(&[path.clone(), path], Format::Azure2019, &opts).unwrap();
    assert_eq!(t2.len(), 2 * t.len());
    assert_eq!(t2.horizon, 2.0 * 86400.0);
    // Same seed, same expansion.
    let again: Vec<_> = trace::read(
        &[data("invocations_per_function_md.anon.d01.csv")],
        Format::Auto,
        &opts,
    )
    .unwrap()
    .iter()
    .collect();
    assert_eq!(again, v);
}

fn read_text(name: &str, text: &str) -> Result<trace::Trace, TraceError> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    trace::read(&[p], Format::Auto, &ReadOptions::default())
}

fn err(name: &str, text: &str) -> String {
    read_text(name, text).unwrap_err().to_string()
}

#[test]
fn bad_rows_are_reported_with_their_line_numbers() {
    let h = "app,func,end_timestamp,duration\n";
    let e = err("a.csv", &format!("{h}a,f,1.0,0.5\na,f,2.0,slow\n"));
    assert!(e.contains("a.csv:3:") && e.contains("duration"), "{e}");
    let e = err("b.csv", &format!("{h}a,f,1.0,-0.5\n"));
    assert!(
        e.contains("b.csv:2:") && e.contains("negative duration"),
        "{e}"
    );
    let e = err("c.csv", &format!("{h}a,f,1.0\n"));
    assert!(e.contains("c.csv:2:") && e.contains("expected 4"), "{e}");
    let e = err("d.csv", &format!("{h}a,f,5.0,10.0\n"));
    assert!(
        e.contains("d.csv:2:") && e.contains("before the trace start"),
        "{e}"
    );
    let e = err("e.csv", &format!("{h},f,5.0,1.0\n"));
    assert!(e.contains("e.csv:2:") && e.contains("empty app"), "{e}");
    let e = err("f.csv", &format!("{h}a,f,inf,1.0\n"));
    assert!(e.contains("not finite"), "{e}");
    let long = "x".repeat(70_000);
    let e = err("g.csv", &format!("{h}a,f,1.0,0.5\n{long}\n"));
    assert!(e.contains("g.csv:3:") && e.contains("longer than"), "{e}");
    // Blank lines are skipped, line numbers still count them; no header is fine.
    let t = read_text("h.csv", "a,f,1.0,0.5\n\nb,g,3.0,1.0\n").unwrap();
    assert_eq!(t.len(), 2);
    let e = err("i.csv", "a,f,1.0,0.5\n\nb,g,x,1.0\n");
    assert!(e.contains("i.csv:3:"), "{e}");
}

#[test]
fn bad_2019_rows_and_wrong_files_are_refused() {
    let mut hdr = "HashOwner,HashApp,HashFunction,Trigger".to_string();
    for m in 1..=1440 {
        hdr.push_str(&format!(",{m}"));
    }
    let zeros = vec!["0"; 1440].join(",");
    let ok = format!("o,a,f,http,{zeros}");
    let e = err(
        "invocations_per_function_md.anon.d09.csv",
        &format!("{hdr}\n{ok}\no,a,g,teleport,{zeros}\n"),
    );
    assert!(e.contains(":3:") && e.contains("unknown trigger"), "{e}");
    let bad = format!("o,a,f,http,{}", vec!["-1"; 1440].join(","));
    let e = err("x.csv", &format!("{hdr}\n{bad}\n"));
    assert!(e.contains("x.csv:2:") && e.contains("minute 1"), "{e}");
    let e = err("y.csv", &format!("{hdr}\no,a,f,http,1,2\n"));
    assert!(
        e.contains("y.csv:2:") && e.contains("expected 1444 fields"),
        "{e}"
    );
    let e = err(
        "function_durations_percentiles.anon.d01.csv",
        "HashOwner,HashApp,HashFunction,Average,Count\n",
    );
    assert!(e.contains("durations or memory file"), "{e}");
    let e = err("z.csv", "what,is,this\n1,2,3\n");
    assert!(e.contains("unknown format"), "{e}");
    let e = err("empty.csv", "");
    assert!(e.contains("empty file"), "{e}");
}
