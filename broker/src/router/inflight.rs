//! The requests an endpoint was handed and has not finished answering. This is how the
//! broker keeps its two promises: every delivered request gets exactly one final response
//! (an error from `close` when the endpoint leaves first), and an endpoint may only send
//! responses to requests it was actually given (a forged route goes nowhere). It also counts
//! the blocking-style requests (wanting one response, not STREAMING) by the endpoint that
//! sent them, so the router can tell at the cost of one lookup whether an endpoint is
//! waiting on this one (RFC 1 §8.10); only a module's endpoint is ever asked, so only its
//! record counts them.
//!
//! Every request delivered is tracked here and retired by another thread, so neither step
//! allocates in steady state: the topic an error response would need is shared from a few
//! recent ones (`Topics`) rather than copied per request.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use switchboard_protocol::{Errno, Flags, Message, MsgType, Route};

use super::EndpointId;

/// A request awaiting its final response: who asked (route) and with which matchtag.
type Key = (Route, u32);

struct Pending {
    /// For the error response `sweep` makes if the endpoint leaves first.
    topic: Arc<str>,
    flags: Flags,
    /// A careless requester may reuse a matchtag while the first is outstanding: each copy
    /// still gets its answer.
    count: u32,
}

/// Keys are the broker's own small integers: a fast non-cryptographic hash will do.
type Fx = BuildHasherDefault<rustc_hash::FxHasher>;

/// How many topics `Topics` keeps.
const TOPICS: usize = 8;

/// The topics of recent requests, shared by their `Pending` entries: a request whose topic is
/// here costs a reference count, not an allocation. At most `TOPICS`, the oldest replaced.
#[derive(Default)]
struct Topics {
    recent: Vec<Arc<str>>,
    /// Where the next new topic goes once `recent` is full.
    next: usize,
}

impl Topics {
    fn get(&mut self, topic: &str) -> Arc<str> {
        if let Some(t) = self.recent.iter().find(|t| ***t == *topic) {
            return t.clone();
        }
        let t: Arc<str> = Arc::from(topic);
        if self.recent.len() < TOPICS {
            self.recent.push(t.clone());
        } else {
            self.recent[self.next] = t.clone();
            self.next = (self.next + 1) % TOPICS;
        }
        t
    }
}

#[derive(Default)]
struct Tracked {
    map: HashMap<Key, Pending, Fx>,
    /// Requests without STREAMING in `map`, by the endpoint that sent them (the last entry of
    /// their route): who is (probably) blocked waiting on this endpoint. No zero counts.
    /// Kept only when `senders` (a module's endpoint).
    by_sender: HashMap<EndpointId, u32, Fx>,
    senders: bool,
    topics: Topics,
}

impl Tracked {
    fn count_sender(&mut self, route: &Route, flags: Flags) {
        if !self.senders {
            return;
        }
        if let (false, Some(&sender)) = (flags.contains(Flags::STREAMING), route.last()) {
            *self.by_sender.entry(sender).or_insert(0) += 1;
        }
    }

    fn uncount_sender(&mut self, route: &Route, flags: Flags) {
        if !self.senders {
            return;
        }
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

pub struct Inflight {
    tracked: Mutex<Tracked>,
    closed: AtomicBool,
    /// "failed (told to panic)", "disconnected", ...: why the endpoint left.
    reason: Mutex<String>,
}

impl Default for Inflight {
    /// A record that counts senders (`holds_request_from` answers).
    fn default() -> Self {
        Inflight::new(true)
    }
}

impl Inflight {
    /// A record; `senders`: count requests by sender, for `holds_request_from` (which only a
    /// module's endpoint is asked; without them it always says no).
    pub fn new(senders: bool) -> Self {
        Inflight {
            tracked: Mutex::new(Tracked { senders, ..Tracked::default() }),
            closed: AtomicBool::new(false),
            reason: Mutex::new(String::new()),
        }
    }

    /// Note a request that is about to be delivered.
    pub fn track(&self, req: &Message) {
        if !req.wants_response() {
            return;
        }
        let mut t = self.tracked.lock();
        let t = &mut *t;
        // Counted by the flags of the first copy, as `finish` uncounts it.
        let flags = match t.map.entry((req.route.clone(), req.matchtag)) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                e.get_mut().count += 1;
                e.get().flags
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Pending { topic: t.topics.get(&req.topic), flags: req.flags, count: 1 }).flags
            }
        };
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
            let mut req = Message::request(&*p.topic, bytes::Bytes::new());
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
    fn without_senders_nothing_is_counted_and_everything_is_answered() {
        let inflight = Inflight::new(false);
        let a = req(&[7], 1, Flags::default());
        inflight.track(&a);
        assert!(!inflight.holds_request_from(7));
        assert!(inflight.tracked.lock().by_sender.is_empty());
        assert!(inflight.retire(&a.response(bytes::Bytes::new())));
        assert_eq!(inflight.pending(), 0);
    }

    #[test]
    fn topics_are_shared_and_the_sweep_answers_with_each_requests_own() {
        let inflight = Inflight::default();
        for tag in 1..=3 {
            inflight.track(&req(&[8], tag, Flags::default()));
        }
        {
            let t = inflight.tracked.lock();
            let shared: Vec<&Arc<str>> = t.map.values().map(|p| &p.topic).collect();
            assert!(shared.windows(2).all(|w| Arc::ptr_eq(w[0], w[1])), "one copy of a repeated topic");
        }
        // More distinct topics than are kept: each entry still holds its own.
        for (i, tag) in (0..(TOPICS as u32 + 3)).zip(1..) {
            let mut m = req(&[7], tag, Flags::default());
            m.topic = format!("svc.m{i}");
            inflight.track(&m);
        }
        assert_eq!(inflight.tracked.lock().topics.recent.len(), TOPICS);
        let mut errors = inflight.close("module 'b'", "exited");
        errors.sort_by_key(|e| (e.route[0], e.matchtag));
        assert_eq!(errors.len(), 3 + TOPICS + 3);
        for (i, e) in errors.iter().filter(|e| e.route[0] == 7).enumerate() {
            assert_eq!(e.topic, format!("svc.m{i}"));
        }
        assert!(errors.iter().filter(|e| e.route[0] == 8).all(|e| e.topic == "b.x"));
    }

    #[test]
    fn close_forgets_every_sender() {
        let inflight = Inflight::default();
        inflight.track(&req(&[7], 1, Flags::default()));
        assert_eq!(inflight.close("module 'b'", "exited").len(), 1);
        assert!(!inflight.holds_request_from(7));
    }
}
