//! A coarse clock for bookkeeping on the message path (a module's idle time): reading it is
//! one atomic load, where a real clock read costs a system call's worth on some machines.
//! A background thread advances it every few milliseconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const RESOLUTION: Duration = Duration::from_millis(5);

static NOW_MS: AtomicU64 = AtomicU64::new(0);

/// Milliseconds since the broker's clock started, to within a few milliseconds.
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
