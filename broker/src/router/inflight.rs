//! The requests an endpoint was handed and has not finished answering. This is how the
//! broker keeps its two promises: every delivered request gets exactly one final response
//! (an error from `close` when the endpoint leaves first), and an endpoint may only send
//! responses to requests it was actually given (a forged route goes nowhere). It also counts
//! the blocking-style requests (wanting one response, not STREAMING) by the endpoint that
//! sent them, so the router can tell at the cost of one lookup whether an endpoint is
//! waiting on this one (RFC 1 §8.10).

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use switchboard_protocol::{Errno, Flags, Message, MsgType, Route};

use super::EndpointId;

/// A request awaiting its final response: who asked (route) and with which matchtag.
type Key = (Route, u32);

struct Pending {
    topic: String,
    flags: Flags,
    /// A careless requester may reuse a matchtag while the first is outstanding: each copy
    /// still gets its answer.
    count: u32,
}

/// Keys are the broker's own small integers: a fast non-cryptographic hash will do.
type Fx = BuildHasherDefault<rustc_hash::FxHasher>;

#[derive(Default)]
struct Tracked {
    map: HashMap<Key, Pending, Fx>,
    /// Requests without STREAMING in `map`, by the endpoint that sent them (the last entry of
    /// their route): who is (probably) blocked waiting on this endpoint. No zero counts.
    by_sender: HashMap<EndpointId, u32, Fx>,
}

impl Tracked {
    fn count_sender(&mut self, route: &Route, flags: Flags) {
        if let (false, Some(&sender)) = (flags.contains(Flags::STREAMING), route.last()) {
            *self.by_sender.entry(sender).or_insert(0) += 1;
        }
    }

    fn uncount_sender(&mut self, route: &Route, flags: Flags) {
        if let (false, Some(sender)) = (flags.contains(Flags::STREAMING), route.last()) {
            if let Some(n) = self.by_sender.get_mut(sender) {
                *n -= 1;
                if *n == 0 {
                    self.by_sender.remove(sender);
                }
            }
        }
    }

    /// One of the requests under `key` is finished (answered, or handed on).
    fn finish(&mut self, key: &Key) -> bool {
        let Some(p) = self.map.get_mut(key) else { return false };
        let flags = p.flags;
        p.count -= 1;
        if p.count == 0 {
            self.map.remove(key);
        }
        self.uncount_sender(&key.0, flags);
        true
    }
}

#[derive(Default)]
pub struct Inflight {
    tracked: Mutex<Tracked>,
    closed: AtomicBool,
    /// "failed (told to panic)", "disconnected", ...: why the endpoint left.
    reason: Mutex<String>,
}

impl Inflight {
    /// Note a request that is about to be delivered.
    pub fn track(&self, req: &Message) {
        if !req.wants_response() {
            return;
        }
        let mut t = self.tracked.lock();
        // Counted by the flags of the first copy, as `finish` uncounts it.
        let flags = t
            .map
            .entry((req.route.clone(), req.matchtag))
            .and_modify(|p| p.count += 1)
            .or_insert_with(|| Pending { topic: req.topic.clone(), flags: req.flags, count: 1 })
            .flags;
        t.count_sender(&req.route, flags);
    }

    /// A response the endpoint sent: true if it answers a request it was given. A streaming
    /// response keeps the request open until an error (ENODATA or other) ends it.
    pub fn retire(&self, resp: &Message) -> bool {
        debug_assert_eq!(resp.kind, MsgType::Response);
        let mut t = self.tracked.lock();
        let key = (resp.route.clone(), resp.matchtag);
        let Some(p) = t.map.get_mut(&key) else { return false };
        if p.flags.contains(Flags::STREAMING) && !resp.is_error() {
            // The stream goes on.
            return true;
        }
        // One lookup on this path: finish the entry found rather than looking it up again.
        let flags = p.flags;
        p.count -= 1;
        if p.count == 0 {
            t.map.remove(&key);
        }
        t.uncount_sender(&key.0, flags);
        true
    }

    /// Stop tracking a request that was not delivered after all (handed to a successor).
    /// False if it is not tracked (any more): `close` already answered it.
    pub fn forget(&self, req: &Message) -> bool {
        if !req.wants_response() {
            return true;
        }
        self.tracked.lock().finish(&(req.route.clone(), req.matchtag))
    }

    /// How many requests it owes answers to.
    pub fn pending(&self) -> usize {
        self.tracked.lock().map.values().map(|p| p.count as usize).sum()
    }

    /// Whether endpoint `sender` has a request without STREAMING here that is not yet
    /// answered: it is waiting on this endpoint, if it waits for its answers.
    pub fn holds_request_from(&self, sender: EndpointId) -> bool {
        let t = self.tracked.lock();
        !t.by_sender.is_empty() && t.by_sender.contains_key(&sender)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// The endpoint left (`reason`, e.g. "failed (it panicked)"): error responses for
    /// everything it still owed. Nothing tracked after this survives: a deliverer that
    /// tracked a request concurrently sees `is_closed` and calls `sweep`.
    pub fn close(&self, name: &str, reason: &str) -> Vec<Message> {
        *self.reason.lock() = format!("{name} {reason}");
        self.closed.store(true, Ordering::SeqCst);
        self.sweep()
    }

    /// Error responses for whatever is tracked now (after `close`).
    pub fn sweep(&self) -> Vec<Message> {
        let pending: Vec<(Key, Pending)> = {
            let mut t = self.tracked.lock();
            t.by_sender.clear();
            t.map.drain().collect()
        };
        if pending.is_empty() {
            return Vec::new();
        }
        let who = self.reason.lock().clone();
        let mut errors = Vec::new();
        for ((route, matchtag), p) in pending {
            let mut req = Message::request(p.topic, bytes::Bytes::new());
            req.route = route;
            req.matchtag = matchtag;
            req.flags = p.flags;
            let err = req.error_response(Errno::EHOSTUNREACH, format!("{who} before answering {}", req.topic));
            errors.extend(std::iter::repeat_n(err, p.count as usize));
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(from: &[u64], tag: u32, flags: Flags) -> Message {
        let mut m = Message::request("b.x", bytes::Bytes::new());
        m.route = Route::from_slice(from);
        m.matchtag = tag;
        m.flags = flags;
        m
    }

    #[test]
    fn requests_are_counted_by_sender_until_answered() {
        let inflight = Inflight::default();
        let (a1, a2) = (req(&[7], 1, Flags::default()), req(&[9, 7], 2, Flags::default()));
        inflight.track(&a1);
        inflight.track(&a1); // a careless requester reusing its matchtag
        inflight.track(&a2);
        inflight.track(&req(&[8], 1, Flags::STREAMING));
        inflight.track(&req(&[6], 1, Flags::NO_RESPONSE));
        assert!(inflight.holds_request_from(7));
        assert!(!inflight.holds_request_from(9), "only the last hop is the one waiting");
        assert!(!inflight.holds_request_from(8), "a streaming requester is not blocked");
        assert!(!inflight.holds_request_from(6));
        assert!(inflight.retire(&a1.response(bytes::Bytes::new())));
        assert!(inflight.forget(&a2));
        assert!(inflight.holds_request_from(7));
        assert!(inflight.retire(&a1.error_response(Errno::EIO, "x")));
        assert!(!inflight.holds_request_from(7));
        assert!(inflight.tracked.lock().by_sender.is_empty());
    }

    #[test]
    fn close_forgets_every_sender() {
        let inflight = Inflight::default();
        inflight.track(&req(&[7], 1, Flags::default()));
        assert_eq!(inflight.close("module 'b'", "exited").len(), 1);
        assert!(!inflight.holds_request_from(7));
    }
}
