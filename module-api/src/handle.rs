//! `Handle`: a module's low-level view of the broker (Flux's `flux_t`): receive, send,
//! respond, blocking rpc (with a deadline, to any rank of the instance), publish, subscribe,
//! its own name, rank, arguments and configuration.
//!
//! A handle belongs to the module's thread. It holds no broker state: everything it does is a
//! message on its `Link`. What it remembers for itself: the services it added (a blocking rpc
//! to one of them would wait on itself, EDEADLK), its broker's rank once asked, its rpc
//! deadline, and the matchtags of rpcs that gave up (their late responses are dropped, never
//! handed to `recv`).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use crate::link::{Link, LinkError};
use switchboard_protocol::{Errno, Error, Flags, Level, Message, MsgType, NODEID_ANY, NODEID_UPSTREAM};

/// How long `Handle::rpc` waits for its response unless the module or the call says
/// otherwise (`Handle::set_rpc_timeout`, `Handle::rpc_timeout`).
const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// How many matchtags of rpcs that gave up are remembered (oldest forgotten first). A
/// response that arrives later than that many further give-ups reaches `recv` as a response
/// to nothing, which `run_actor` ignores.
const MAX_ABANDONED: usize = 1024;

pub struct Handle {
    link: RefCell<Box<dyn Link>>,
    name: String,
    args: Vec<String>,
    /// Replaced by a `config-update` the actor accepts.
    config: RefCell<Bytes>,
    /// Messages that arrived while `rpc` waited for its response, delivered next by `recv`.
    deferred: RefCell<VecDeque<Message>>,
    next_tag: Cell<u32>,
    /// The deadline of an rpc that names none (None: wait for ever).
    rpc_timeout: Cell<Option<Duration>>,
    /// Services added with `add_service` (besides `name`): the module answers them itself.
    services: RefCell<Vec<String>>,
    /// Matchtags of rpcs that gave up, oldest first: their responses are dropped on arrival.
    abandoned: RefCell<VecDeque<u32>>,
    /// This broker's rank, from `broker.info`, once `rank` has asked (it never changes).
    rank: Cell<Option<u32>>,
}

impl Handle {
    pub fn new(link: Box<dyn Link>, name: String, args: Vec<String>, config: Bytes) -> Self {
        Handle {
            link: RefCell::new(link),
            name,
            args,
            config: RefCell::new(config),
            deferred: RefCell::new(VecDeque::new()),
            next_tag: Cell::new(1),
            rpc_timeout: Cell::new(Some(DEFAULT_RPC_TIMEOUT)),
            services: RefCell::new(Vec::new()),
            abandoned: RefCell::new(VecDeque::new()),
            rank: Cell::new(None),
        }
    }

    /// This instance's name, which is also its service.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// The `key=value` argument named `key`, if given.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args.iter().find_map(|a| a.strip_prefix(key)?.strip_prefix('='))
    }

    /// The raw configuration table (a msgpack map).
    pub fn config_raw(&self) -> Bytes {
        self.config.borrow().clone()
    }

    /// The configuration table decoded into `T`.
    pub fn config<T: DeserializeOwned>(&self) -> Result<T, Error> {
        Ok(rmp_serde::from_slice(&self.config.borrow())?)
    }

    /// Replace the configuration table; returns the one it replaces.
    pub(crate) fn replace_config(&self, config: Bytes) -> Bytes {
        self.config.replace(config)
    }

    pub fn log(&self, level: Level, text: &str) {
        self.link.borrow().log(level, text)
    }

    /// The next message, waiting forever. `Err` only when the broker closed the link.
    pub fn recv(&self) -> Result<Message, LinkError> {
        loop {
            if let Some(m) = self.recv_timeout(None)? {
                return Ok(m);
            }
        }
    }

    /// The next message, waiting up to `timeout` (None = forever). A late response to an
    /// rpc that gave up is dropped here, never returned.
    pub fn recv_timeout(&self, timeout: Option<Duration>) -> Result<Option<Message>, LinkError> {
        if let Some(m) = self.deferred.borrow_mut().pop_front() {
            return Ok(Some(m));
        }
        // The clock is read only if a late answer has to be skipped (rare): this is the
        // message path, and a clock read costs tens of nanoseconds.
        let mut left = timeout;
        let mut started: Option<Instant> = None;
        loop {
            match self.link.borrow_mut().recv(left)? {
                Some(m) if self.is_late(&m) => {
                    let since = *started.get_or_insert_with(Instant::now);
                    left = timeout.map(|t| t.saturating_sub(since.elapsed()));
                }
                got => return Ok(got),
            }
        }
    }

    pub fn send(&self, msg: &Message) -> Result<(), LinkError> {
        self.link.borrow().send(msg)
    }

    /// Respond to `req` with `value` as a msgpack payload. Does nothing for a request that
    /// asked for no response.
    pub fn respond<T: Serialize + ?Sized>(&self, req: &Message, value: &T) -> Result<(), Error> {
        self.respond_raw(req, Message::encode_payload(value)?)
    }

    pub fn respond_raw(&self, req: &Message, payload: Bytes) -> Result<(), Error> {
        if !req.wants_response() {
            return Ok(());
        }
        self.send(&req.response(payload)).map_err(link_err)
    }

    pub fn respond_error(&self, req: &Message, errnum: Errno, text: &str) -> Result<(), Error> {
        if !req.wants_response() {
            return Ok(());
        }
        self.send(&req.error_response(errnum, text)).map_err(link_err)
    }

    /// Send a request to `topic` and wait for its response, at most the module's rpc deadline
    /// (30 s unless `set_rpc_timeout` changed it). Other messages
    /// that arrive meanwhile are kept for `recv`. An error response becomes `Err`; so does
    /// the deadline passing (ETIMEDOUT), and a call that would deadlock (EDEADLK: a service
    /// this module owns, or, from the broker, a module that is itself waiting on this one).
    ///
    /// While it waits the module serves nothing: a handler that calls a service which calls
    /// back into this module would wait for ever without these checks (RFC 2 §3.6).
    pub fn rpc<T: Serialize + ?Sized>(&self, topic: &str, value: &T) -> Result<Message, Error> {
        self.rpc_raw(topic, Message::encode_payload(value)?, None)
    }

    /// `rpc` with its own deadline for this call (`Duration::MAX`: wait for ever).
    pub fn rpc_timeout<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
        timeout: Duration,
    ) -> Result<Message, Error> {
        self.rpc_raw(topic, Message::encode_payload(value)?, Some(timeout))
    }

    /// `rpc` with a raw payload; `timeout` None is the module's rpc deadline.
    pub fn rpc_raw(&self, topic: &str, payload: Bytes, timeout: Option<Duration>) -> Result<Message, Error> {
        self.rpc_raw_on(NODEID_ANY, topic, payload, timeout)
    }

    /// `rpc` to the broker of rank `nodeid` (RFC 7 §4.2): the request crosses the tree to
    /// that broker and is routed there by service, so a module on rank 3 reads rank 0's kvs
    /// with `rpc_on(0, "kvs.get", ...)`. `NODEID_ANY` is `rpc`; `NODEID_UPSTREAM` is this
    /// broker's parent. A rank the instance does not have, or cannot reach now, answers
    /// EHOSTUNREACH. A call to a service this module owns is EDEADLK when it would come back
    /// to this very module (`nodeid` ANY or this broker's rank), and allowed to another rank.
    pub fn rpc_on<T: Serialize + ?Sized>(&self, nodeid: u32, topic: &str, value: &T) -> Result<Message, Error> {
        self.rpc_raw_on(nodeid, topic, Message::encode_payload(value)?, None)
    }

    /// `rpc_on` with a raw payload and a deadline (None: the module's rpc deadline;
    /// `Duration::MAX`: for ever).
    pub fn rpc_raw_on(
        &self,
        nodeid: u32,
        topic: &str,
        payload: Bytes,
        timeout: Option<Duration>,
    ) -> Result<Message, Error> {
        self.call(nodeid, Flags::default(), topic, payload, timeout)
    }

    /// `rpc` served by the nearest broker upstream of this one that owns the service (NODEID_ANY
    /// with the UPSTREAM flag, RFC 7 §4.2), even when this broker has an owner: a module loaded
    /// on every rank asks its ancestors' instances with `rpc_upstream("kvs.get", ...)`. ENOSYS
    /// when none on the way to the root has it; EHOSTUNREACH at the root. Native and process
    /// modules only: in a WASM module it is ENOSYS (RFC 6's request import has no flags).
    pub fn rpc_upstream<T: Serialize + ?Sized>(&self, topic: &str, value: &T) -> Result<Message, Error> {
        self.call(NODEID_ANY, Flags::UPSTREAM, topic, Message::encode_payload(value)?, None)
    }

    fn call(
        &self,
        nodeid: u32,
        flags: Flags,
        topic: &str,
        payload: Bytes,
        timeout: Option<Duration>,
    ) -> Result<Message, Error> {
        let mut req = Message::request(topic, payload);
        req.nodeid = nodeid;
        req.flags = flags;
        let service = req.service();
        let owned = service == self.name || self.services.borrow().iter().any(|s| s == service);
        if owned && !flags.contains(Flags::UPSTREAM) && self.comes_back(nodeid)? {
            return Err(Error::new(
                Errno::EDEADLK,
                format!(
                    "{topic}: '{}' would wait on itself (a blocking rpc to a service the module owns would deadlock)",
                    self.name
                ),
            ));
        }
        let timeout = timeout.or(self.rpc_timeout.get());
        // None: no deadline (for ever, or too far away to name).
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let tag = self.next_matchtag();
        req.matchtag = tag;
        if let Some(answer) = self.link.borrow_mut().request(&req, deadline.and(timeout)) {
            return answer;
        }
        self.send(&req).map_err(link_err)?;
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                self.abandon(tag);
                let ms = timeout.unwrap_or_default().as_millis();
                return Err(Error::new(Errno::ETIMEDOUT, format!("no response from {topic} within {ms} ms")));
            }
            // Read the link directly: deferred messages were already seen.
            let Some(msg) = self.link.borrow_mut().recv(left).map_err(link_err)? else {
                continue;
            };
            if msg.kind == MsgType::Response && msg.matchtag == tag {
                return match Error::from_response(&msg) {
                    Some(e) => Err(e),
                    None => Ok(msg),
                };
            }
            if !self.is_late(&msg) {
                self.deferred.borrow_mut().push_back(msg);
            }
        }
    }

    /// Whether a request with `nodeid` for one of this module's own services would be routed
    /// to this module: ANY finds the local owner first; a rank is this module's only if it is
    /// this broker's (asked once); UPSTREAM never is.
    fn comes_back(&self, nodeid: u32) -> Result<bool, Error> {
        match nodeid {
            NODEID_ANY => Ok(true),
            NODEID_UPSTREAM => Ok(false),
            n => Ok(n == self.rank()?),
        }
    }

    /// The rank of this module's broker in its instance (RFC 7; 0 for a standalone broker),
    /// asked of `broker.info` the first time and remembered.
    pub fn rank(&self) -> Result<u32, Error> {
        if let Some(r) = self.rank.get() {
            return Ok(r);
        }
        let info: BrokerRank = self.rpc("broker.info", &())?.decode()?;
        self.rank.set(Some(info.rank));
        Ok(info.rank)
    }

    /// Wait at most `timeout` in every later rpc that names no deadline of its own; None
    /// waits for ever. The default is 30 s.
    pub fn set_rpc_timeout(&self, timeout: Option<Duration>) {
        self.rpc_timeout.set(timeout);
    }

    /// Publish an event (fire and forget; the broker assigns its sequence number).
    pub fn publish<T: Serialize + ?Sized>(&self, topic: &str, value: &T) -> Result<(), Error> {
        self.send(&Message::event(topic, Message::encode_payload(value)?)).map_err(link_err)
    }

    /// Receive events whose topic starts with `prefix`.
    pub fn subscribe(&self, prefix: &str) -> Result<(), Error> {
        self.rpc("event.subscribe", &TopicArg { topic: prefix }).map(drop)
    }

    pub fn unsubscribe(&self, prefix: &str) -> Result<(), Error> {
        self.rpc("event.unsubscribe", &TopicArg { topic: prefix }).map(drop)
    }

    /// Answer `service` too (its requests reach this module's methods as usual). EEXIST
    /// when another endpoint owns it.
    pub fn add_service(&self, service: &str) -> Result<(), Error> {
        self.rpc("service.add", &ServiceArg { service })?;
        self.services.borrow_mut().push(service.to_string());
        Ok(())
    }

    pub fn remove_service(&self, service: &str) -> Result<(), Error> {
        self.rpc("service.remove", &ServiceArg { service })?;
        self.services.borrow_mut().retain(|s| s != service);
        Ok(())
    }

    /// Send a request that wants no response.
    pub fn notify<T: Serialize + ?Sized>(&self, topic: &str, value: &T) -> Result<(), Error> {
        let mut req = Message::request(topic, Message::encode_payload(value)?);
        req.flags = Flags::NO_RESPONSE;
        self.send(&req).map_err(link_err)
    }

    /// A matchtag for an rpc: 1, 2, 3, ..., skipping 0 and tags of rpcs still abandoned.
    fn next_matchtag(&self) -> u32 {
        loop {
            let tag = self.next_tag.get();
            self.next_tag.set(tag.wrapping_add(1).max(1));
            let abandoned = self.abandoned.borrow();
            if abandoned.is_empty() || !abandoned.contains(&tag) {
                return tag;
            }
        }
    }

    /// The rpc with matchtag `tag` gave up: drop its response when it comes.
    fn abandon(&self, tag: u32) {
        let mut abandoned = self.abandoned.borrow_mut();
        if abandoned.len() == MAX_ABANDONED {
            abandoned.pop_front();
        }
        abandoned.push_back(tag);
    }

    /// Whether `msg` is the late response of an rpc that gave up (forgotten as it is seen:
    /// an rpc's response is final).
    fn is_late(&self, msg: &Message) -> bool {
        if msg.kind != MsgType::Response {
            return false;
        }
        let mut abandoned = self.abandoned.borrow_mut();
        if abandoned.is_empty() {
            return false;
        }
        match abandoned.iter().position(|t| *t == msg.matchtag) {
            Some(i) => {
                abandoned.remove(i);
                true
            }
            None => false,
        }
    }
}

/// The part of `broker.info`'s answer the handle reads.
#[derive(serde::Deserialize)]
struct BrokerRank {
    rank: u32,
}

#[derive(Serialize)]
struct TopicArg<'a> {
    topic: &'a str,
}

#[derive(Serialize)]
struct ServiceArg<'a> {
    service: &'a str,
}

fn link_err(e: LinkError) -> Error {
    Error::new(Errno::ECONNRESET, e.to_string())
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;

    /// A link whose inbox the test fills; `recv` on an empty inbox waits out its timeout
    /// (a closed link when there is none, so no test can hang).
    #[derive(Default, Clone)]
    struct Script {
        inbox: Rc<RefCell<VecDeque<Message>>>,
        sent: Rc<RefCell<Vec<Message>>>,
    }

    impl Link for Script {
        fn recv(&mut self, timeout: Option<Duration>) -> Result<Option<Message>, LinkError> {
            if let Some(m) = self.inbox.borrow_mut().pop_front() {
                return Ok(Some(m));
            }
            match timeout {
                Some(t) => {
                    std::thread::sleep(t.min(Duration::from_millis(200)));
                    Ok(None)
                }
                None => Err(LinkError::Closed),
            }
        }
        fn send(&self, msg: &Message) -> Result<(), LinkError> {
            self.sent.borrow_mut().push(msg.clone());
            Ok(())
        }
        fn log(&self, _: Level, _: &str) {}
    }

    fn handle() -> (Handle, Script) {
        let s = Script::default();
        (Handle::new(Box::new(s.clone()), "me".into(), Vec::new(), Bytes::new()), s)
    }

    fn response(tag: u32) -> Message {
        let mut req = Message::request("other.x", Bytes::new());
        req.matchtag = tag;
        req.response(Bytes::from_static(&[0xc0]))
    }

    #[test]
    fn an_rpc_to_its_own_services_is_refused_before_sending() {
        let (h, s) = handle();
        let e = h.rpc("me.get", &()).unwrap_err();
        assert_eq!(e.errnum, Errno::EDEADLK);
        assert!(e.text.starts_with("me.get: 'me' would wait on itself"), "{e}");
        h.services.borrow_mut().push("extra".into());
        assert_eq!(h.rpc_timeout("extra", &(), Duration::from_secs(1)).unwrap_err().errnum, Errno::EDEADLK);
        assert!(s.sent.borrow().is_empty());
    }

    #[test]
    fn an_rpc_gives_up_at_its_deadline_and_its_late_response_is_dropped() {
        let (h, s) = handle();
        let e = h.rpc_timeout("other.x", &(), Duration::from_millis(30)).unwrap_err();
        assert_eq!(e.errnum, Errno::ETIMEDOUT);
        assert_eq!(e.text, "no response from other.x within 30 ms");
        assert_eq!(s.sent.borrow()[0].matchtag, 1);
        // The late answer (tag 1) comes before the next rpc's (tag 2), and again after.
        s.inbox.borrow_mut().extend([response(1), response(2)]);
        assert_eq!(h.rpc("other.x", &()).unwrap().matchtag, 2);
        assert!(h.deferred.borrow().is_empty());
        h.set_rpc_timeout(Some(Duration::from_millis(10)));
        assert_eq!(h.rpc("other.x", &()).unwrap_err().errnum, Errno::ETIMEDOUT);
        let event = Message::event("ev", Bytes::new());
        s.inbox.borrow_mut().extend([response(3), event]);
        assert_eq!(h.recv_timeout(Some(Duration::ZERO)).unwrap().map(|m| m.kind), Some(MsgType::Event));
        // A response to nothing it abandoned still reaches recv (the module's own requests).
        s.inbox.borrow_mut().push_back(response(3));
        assert_eq!(h.recv_timeout(Some(Duration::ZERO)).unwrap().map(|m| m.matchtag), Some(3));
    }

    #[test]
    fn an_rpc_to_a_rank_carries_its_nodeid_and_reaches_its_own_service_only_on_other_ranks() {
        let (h, s) = handle();
        // broker.info (tag 1) says rank 2; the call to rank 0 is tag 2.
        let mut info = Message::request("broker.info", Bytes::new());
        info.matchtag = 1;
        let info = info.response(Message::encode_payload(&serde_json::json!({"rank": 2, "size": 4})).unwrap());
        s.inbox.borrow_mut().extend([info, response(2)]);
        assert_eq!(h.rpc_on(0, "me.get", &()).unwrap().matchtag, 2);
        {
            let sent = s.sent.borrow();
            assert_eq!((sent[0].topic.as_str(), sent[0].nodeid), ("broker.info", NODEID_ANY));
            assert_eq!((sent[1].topic.as_str(), sent[1].nodeid), ("me.get", 0));
        }
        // Its own service on its own rank would come back to it; the rank is not asked again.
        let e = h.rpc_on(2, "me.get", &()).unwrap_err();
        assert_eq!(e.errnum, Errno::EDEADLK);
        assert_eq!(s.sent.borrow().len(), 2);
        assert_eq!(h.rank(), Ok(2));
        // Another service on its own rank, and its own service upstream, are sent.
        s.inbox.borrow_mut().extend([response(3), response(4)]);
        assert_eq!(h.rpc_on(2, "other.x", &()).unwrap().matchtag, 3);
        assert_eq!(h.rpc_raw_on(NODEID_UPSTREAM, "me.get", Bytes::new(), None).unwrap().matchtag, 4);
        assert_eq!(s.sent.borrow()[3].nodeid, NODEID_UPSTREAM);
        // ANY finds the local owner first: refused as before, without asking anything.
        assert_eq!(h.rpc_on(NODEID_ANY, "me.get", &()).unwrap_err().errnum, Errno::EDEADLK);
        assert_eq!(s.sent.borrow().len(), 4);
    }

    #[test]
    fn a_tag_still_abandoned_is_not_reused() {
        let (h, _) = handle();
        h.abandon(2);
        assert_eq!(h.next_matchtag(), 1);
        assert_eq!(h.next_matchtag(), 3);
    }
}
