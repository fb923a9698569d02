//! Clocks for bookkeeping on the message path. `now_ms` is coarse: reading it is one atomic
//! load, where a real clock read costs tens of nanoseconds (a system call on some machines);
//! a background thread advances it every 5 ms while it is read, and sleeps (parked) after a
//! second in which nobody read it, so an idle process is not woken 200 times a second; the
//! first read after that sets it from the real clock and wakes the thread. The broker uses it
//! for idle times and the module hosts for output holds (`Hold`). `precise_ms` reads the real
//! clock, for processes that should not start a clock thread (the process-module SDK).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;
use std::time::{Duration, Instant};

const RESOLUTION: Duration = Duration::from_millis(5);
/// Ticks without a read before the clock thread parks (one second).
const IDLE_TICKS: u32 = 200;

static NOW_MS: AtomicU64 = AtomicU64::new(0);
/// Set by a read, cleared by each tick: whether anyone read since.
static READ: AtomicBool = AtomicBool::new(false);
/// The clock thread is parked (or about to be): a reader must set the time and wake it.
static PARKED: AtomicBool = AtomicBool::new(false);

struct Coarse {
    epoch: Instant,
    thread: Option<Thread>,
}

impl Coarse {
    fn elapsed_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// Milliseconds since this process's coarse clock started, to within 5 ms.
pub fn now_ms() -> u64 {
    static CLOCK: OnceLock<Coarse> = OnceLock::new();
    let clock = CLOCK.get_or_init(|| {
        let epoch = Instant::now();
        let thread = std::thread::Builder::new()
            .name("coarse-clock".into())
            .stack_size(64 * 1024)
            .spawn(move || tick(epoch))
            .ok()
            .map(|h| h.thread().clone());
        Coarse { epoch, thread }
    });
    let Some(thread) = &clock.thread else {
        // No thread could be started: read the real clock every time.
        return clock.elapsed_ms();
    };
    if PARKED.load(Ordering::SeqCst) {
        // The clock sleeps: set it before anyone can see it awake, then wake it. Every reader
        // that finds it parked sets it, so none reads the time it parked at.
        NOW_MS.fetch_max(clock.elapsed_ms(), Ordering::SeqCst);
        if PARKED.swap(false, Ordering::SeqCst) {
            thread.unpark();
        }
    }
    if !READ.load(Ordering::Relaxed) {
        READ.store(true, Ordering::SeqCst);
    }
    NOW_MS.load(Ordering::SeqCst)
}

/// The clock thread: advance every 5 ms while read; park after a second unread.
fn tick(epoch: Instant) {
    let mut unread = 0;
    loop {
        NOW_MS.fetch_max(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        if READ.swap(false, Ordering::SeqCst) {
            unread = 0;
        } else {
            unread += 1;
        }
        if unread >= IDLE_TICKS {
            PARKED.store(true, Ordering::SeqCst);
            // A read between the swap above and the store just now saw PARKED false and
            // will not wake us: look once more.
            if !READ.load(Ordering::SeqCst) {
                while PARKED.load(Ordering::SeqCst) {
                    std::thread::park();
                }
            }
            PARKED.store(false, Ordering::SeqCst);
            unread = 0;
            continue;
        }
        std::thread::sleep(RESOLUTION);
    }
}

/// Milliseconds since the first call, read from the monotonic clock.
pub fn precise_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_sleeps_when_unread_and_is_right_again_at_the_next_read() {
        let start = now_ms();
        let t0 = Instant::now();
        // Unread for longer than the idle second, the thread parks (other tests in this
        // process may read it meanwhile: wait for it, up to 10 s).
        let deadline = t0 + Duration::from_secs(10);
        while !PARKED.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(PARKED.load(Ordering::SeqCst), "the clock thread did not park");
        let waited = t0.elapsed().as_millis() as u64;
        let later = now_ms();
        assert!(
            later + 5 >= start + waited,
            "{start} then {later} after {waited} ms: the first read after parking is stale"
        );
        std::thread::sleep(Duration::from_millis(50));
        assert!(now_ms() >= later + 40, "the clock did not run again after the read that woke it");
    }
}
