//! Fuzz target `image_name`: see README.md and `rekindle_restore_daemon_fuzz::Harness::image_name`.
#![no_main]

use std::sync::{LazyLock, Mutex};

use libfuzzer_sys::fuzz_target;
use rekindle_restore_daemon_fuzz::Harness;

static HARNESS: LazyLock<Mutex<Harness>> = LazyLock::new(|| Mutex::new(Harness::new()));

fuzz_target!(|data: &[u8]| {
    // A panic (a failed invariant) poisons the lock, but libFuzzer stops there anyway.
    HARNESS.lock().unwrap().image_name(data);
});
