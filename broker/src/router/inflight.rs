//! The requests an endpoint was handed and has not finished answering. This is how the
//! broker keeps its two promises: every delivered request gets exactly one final response
//! (an error from `close` when the endpoint leaves first), and an endpoint may only send
//! responses to requests it was actually given (a forged route goes nowhere).

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use switchboard_module_api::proto::{Flags, MsgType, Route};
use switchboard_module_api::{Errno, Message};

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
type Map = HashMap<Key, Pending, BuildHasherDefault<rustc_hash::FxHasher>>;

#[derive(Default)]
pub struct Inflight {
    map: Mutex<Map>,
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
        let mut map = self.map.lock();
        map.entry((req.route.clone(), req.matchtag)).and_modify(|p| p.count += 1).or_insert_with(|| Pending {
            topic: req.topic.clone(),
            flags: req.flags,
            count: 1,
        });
    }

    /// A response the endpoint sent: true if it answers a request it was given. A streaming
    /// response keeps the request open until an error (ENODATA or other) ends it.
    pub fn retire(&self, resp: &Message) -> bool {
        debug_assert_eq!(resp.kind, MsgType::Response);
        let mut map = self.map.lock();
        let key = (resp.route.clone(), resp.matchtag);
        let Some(p) = map.get_mut(&key) else { return false };
        let stream_goes_on = p.flags.contains(Flags::STREAMING) && !resp.is_error();
        if !stream_goes_on {
            p.count -= 1;
            if p.count == 0 {
                map.remove(&key);
            }
        }
        true
    }

    /// Stop tracking a request that was not delivered after all (handed to a successor).
    /// False if it is not tracked (any more): `close` already answered it.
    pub fn forget(&self, req: &Message) -> bool {
        if !req.wants_response() {
            return true;
        }
        let mut map = self.map.lock();
        let key = (req.route.clone(), req.matchtag);
        let Some(p) = map.get_mut(&key) else { return false };
        p.count -= 1;
        if p.count == 0 {
            map.remove(&key);
        }
        true
    }

    /// How many requests it owes answers to.
    pub fn pending(&self) -> usize {
        self.map.lock().values().map(|p| p.count as usize).sum()
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
        let pending: Vec<(Key, Pending)> = self.map.lock().drain().collect();
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
