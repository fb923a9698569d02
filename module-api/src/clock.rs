//! Clocks for bookkeeping on the message path. `now_ms` is coarse: reading it is one atomic
//! load, where a real clock read costs tens of nanoseconds (a system call on some machines);
//! a background thread advances it every 5 ms. The broker uses it for idle times and the
//! module hosts for output holds (`Hold`). `precise_ms` reads the real clock, for processes
//! that should not start a clock thread (the process-module SDK).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const RESOLUTION: Duration = Duration::from_millis(5);

static NOW_MS: AtomicU64 = AtomicU64::new(0);

/// Milliseconds since this process's coarse clock started, to within 5 ms.
pub fn now_ms() -> u64 {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let epoch = Instant::now();
        let _ = std::thread::Builder::new().name("coarse-clock".into()).stack_size(64 * 1024).spawn(move || loop {
            NOW_MS.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
            std::thread::sleep(RESOLUTION);
        });
    });
    NOW_MS.load(Ordering::Relaxed)
}

/// Milliseconds since the first call, read from the monotonic clock.
pub fn precise_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}
