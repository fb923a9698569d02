//! `Link`: how a `Handle` reaches its broker. One implementation per module kind (native: the
//! C ABI host table; process and wasm kinds add theirs), so `Handle` and `Actor` are written once.

use std::cell::Cell;
use std::time::Duration;

use switchboard_protocol::{Level, Message};

/// The longest a module's output may be held back to be written with what follows, in
/// milliseconds of the hold's clock (a coarse clock ticks every 5 ms: then up to 5 ms).
pub const MAX_HOLD_MS: u64 = 1;

/// Output batching with a bound. A module thread that takes a message while more are queued
/// may hold its output to write it in one go, but not past `MAX_HOLD_MS`: a slow handler
/// after fast ones must not keep their answers waiting (RFC 2 §5).
pub struct Hold {
    since: Cell<Option<u64>>,
    now_ms: fn() -> u64,
}

impl Hold {
    /// A hold timed by the coarse clock (one atomic load a message): for module hosts.
    pub fn coarse() -> Self {
        Hold { since: Cell::new(None), now_ms: crate::clock::now_ms }
    }

    /// A hold timed by the real clock: for a process that should not start a clock thread.
    pub fn precise() -> Self {
        Hold { since: Cell::new(None), now_ms: crate::clock::precise_ms }
    }

    /// A message was taken; `more` says whether others are already queued behind it. True
    /// when the output held so far must be written now: nothing more is queued, or the
    /// hold began `MAX_HOLD_MS` or more ago (the hold then begins again).
    pub fn flush_now(&self, more: bool) -> bool {
        if !more {
            self.since.set(None);
            return true;
        }
        let now = (self.now_ms)();
        match self.since.get() {
            Some(t) if now.saturating_sub(t) < MAX_HOLD_MS => false,
            Some(_) => {
                self.since.set(Some(now));
                true
            }
            None => {
                self.since.set(Some(now));
                false
            }
        }
    }

    /// Output was written for another reason (the thread is about to block).
    pub fn flushed(&self) {
        self.since.set(None);
    }
}

/// Why a link stopped working: the broker is gone or refused what was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the broker closed the link")]
    Closed,
    #[error("the broker refused the message: {0}")]
    Refused(String),
}

/// The module side of a module's connection to its broker.
pub trait Link {
    /// Next message, waiting up to `timeout` (None = forever); `Ok(None)` when it passed.
    fn recv(&mut self, timeout: Option<Duration>) -> Result<Option<Message>, LinkError>;
    fn send(&self, msg: &Message) -> Result<(), LinkError>;
    fn log(&self, level: Level, text: &str);
    /// A link that can make a whole request itself (the WASM host's `request`) does it
    /// here; the default is None, and `Handle::rpc` sends and receives. `timeout` is the
    /// rpc's deadline (None: wait for ever); when it passes the answer is ETIMEDOUT
    /// `no response from TOPIC within N ms`, and the link drops the response if it comes
    /// later. `Handle::rpc` has already refused a call to the module's own services.
    fn request(&mut self, _req: &Message, _timeout: Option<Duration>) -> Option<Result<Message, crate::Error>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_held_while_more_is_queued_but_not_past_max_hold() {
        let hold = Hold::precise();
        assert!(hold.flush_now(false), "nothing queued: write now");
        assert!(!hold.flush_now(true), "more queued: the hold begins");
        std::thread::sleep(Duration::from_millis(2 * MAX_HOLD_MS));
        assert!(hold.flush_now(true), "held for longer than MAX_HOLD_MS: write now");
        hold.flushed();
        assert!(!hold.flush_now(true), "after a flush the hold begins again");
    }
}
