//! Where a message is routed (RFC 1 §8). The routing table maps services to their owners
//! and endpoints to their sinks; `Router::route` is called synchronously by whichever thread
//! received the message (a connection reader, a module thread), so a message crosses no
//! extra thread on its way. The router never blocks and never drops a request silently:
//! an unroutable request gets an error response, and so does a module's call back into a
//! module that is waiting on it (EDEADLK, RFC 1 §8.10).

mod across;
mod batch;
mod budget;
mod conn_out;
mod inflight;
mod mailbox;
mod trace;

pub use across::{FullLinks, Place, Way};
pub use batch::{flush, hold};
pub use budget::{OutputBudget, DEFAULT_MAX_OUTPUT};
pub use conn_out::ConnOut;
pub use inflight::Inflight;
pub use mailbox::Mailbox;

use self::across::EventOrder;
use self::trace::{Dir, Tracers};

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;
use switchboard_protocol::{Cred, Errno, Flags, Message, MsgType, MAX_ROUTE};

use crate::overlay::{Control, LinkOut, Peer};
use crate::services::{self, Builtin};

/// Identifies a connection or a module for the route stack. Never reused.
pub type EndpointId = u64;

/// Where messages for an endpoint go.
#[derive(Clone)]
pub enum Sink {
    Conn(Arc<ConnOut>),
    Module(Arc<Mailbox>),
    /// A link to another broker of the instance (RFC 7 §4.1).
    Link(Arc<LinkOut>),
}

/// A connection or a module, as the router knows it.
pub struct Endpoint {
    pub id: EndpointId,
    pub sink: Sink,
    pub cred: Cred,
    /// "client pid 12 uid 0", "module 'kvs'": for messages and logs.
    pub label: String,
    /// The module's name, for a module's endpoint (what `module.trace` matches).
    pub module: Option<String>,
    /// Requests it was handed and has not finished answering.
    pub inflight: Inflight,
    /// The instance that replaces this one (a reload): requests this one's inbox refuses,
    /// and those it leaves queued, go there.
    pub successor: OnceLock<Arc<Endpoint>>,
}

/// Who answers a service.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Owner {
    Builtin(Builtin),
    Endpoint(EndpointId),
}

#[derive(Default)]
struct Table {
    /// Keyed by the broker's own counter: a fast non-cryptographic hash will do (every
    /// response looks its next hop up here).
    endpoints: rustc_hash::FxHashMap<EndpointId, Arc<Endpoint>>,
    services: HashMap<String, Owner>,
    /// (topic prefix, subscriber)
    subscriptions: Vec<(String, EndpointId)>,
    /// The links to the parent and children, by the peer's rank; absent: never up.
    links: rustc_hash::FxHashMap<u32, LinkSlot>,
    /// Services whose module left, and how (`module 'kvs' failed (...)`), until a module
    /// provides them again: what ENOSYS for them adds. At most `GONE` of them.
    gone: HashMap<String, String>,
}

/// The most services `Table::gone` remembers; when full, it starts again.
const GONE: usize = 1024;

impl Table {
    /// `text` (an ENOSYS for `msg`'s service), and how the module that provided the service
    /// left, if one did: `no service 'kvs' (...): module 'kvs' failed (...)`.
    fn and_how_it_left(&self, msg: &Message, text: String) -> String {
        match self.gone.get(msg.service()) {
            Some(how) => format!("{text}: {how}"),
            None => text,
        }
    }

    /// The endpoint of the link to `peer` if it is up; else whether it is `lost` (up once)
    /// or `offline` (never), as RFC 7 §4.2's errors say.
    fn link(&self, peer: u32) -> Result<Arc<Endpoint>, &'static str> {
        match self.links.get(&peer) {
            Some(LinkSlot::Up(id)) => self.endpoints.get(id).cloned().ok_or("lost"),
            Some(LinkSlot::Lost) => Err("lost"),
            None => Err("offline"),
        }
    }
}

/// A link as routing sees it.
#[derive(Clone, Copy)]
enum LinkSlot {
    Up(EndpointId),
    Lost,
}

pub struct Router {
    table: RwLock<Table>,
    next_id: AtomicU64,
    place: Place,
    events: EventOrder,
    full_links: FullLinks,
    /// The overlay thread, for `overlay.status` (absent for a standalone broker).
    overlay: OnceLock<Control>,
    /// The supervisor's queue, for `module.*` and `broker.info`.
    management: OnceLock<tokio::sync::mpsc::UnboundedSender<Message>>,
    tracers: Tracers,
}

/// An `event.subscribe` that came over a link from another broker.
#[derive(Debug, thiserror::Error)]
#[error("subscriptions do not cross links (RFC 7 §4.5): subscribe on the broker you are connected to, which receives every event of the instance")]
pub struct NotHere;

/// Why a service could not be registered.
#[derive(Debug, thiserror::Error)]
#[error("service '{service}' is already provided by {owner}")]
pub struct ServiceTaken {
    pub service: String,
    pub owner: String,
}

impl Default for Router {
    fn default() -> Self {
        Self::new()
    }
}

impl Router {
    /// A standalone broker's router.
    pub fn new() -> Self {
        Self::at(Place::STANDALONE)
    }

    /// The router of the broker at `place` in an instance.
    pub fn at(place: Place) -> Self {
        let mut table = Table::default();
        for b in Builtin::ALL {
            table.services.insert(b.service().to_string(), Owner::Builtin(b));
        }
        Router {
            table: RwLock::new(table),
            next_id: AtomicU64::new(1),
            place,
            events: EventOrder::default(),
            full_links: FullLinks::default(),
            overlay: OnceLock::new(),
            management: OnceLock::new(),
            tracers: Tracers::default(),
        }
    }

    pub fn place(&self) -> &Place {
        &self.place
    }

    /// The link to `peer` as RFC 7 §4.2 names it: `up`, `lost` (up once) or `offline` (never).
    pub fn link_state(&self, peer: u32) -> &'static str {
        self.table.read().link(peer).map_or_else(|state| state, |_| "up")
    }

    /// Events numbered by rank 0 that never reached this broker's subscribers.
    pub fn events_lost(&self) -> u64 {
        self.events.lost()
    }

    /// How this broker's links met a full queue (RFC 7 §3.5).
    pub fn full_links(&self) -> &FullLinks {
        &self.full_links
    }

    pub(crate) fn set_overlay(&self, control: Control) {
        let _ = self.overlay.set(control);
    }

    /// Hand an `overlay.status` request to the overlay thread; a standalone broker answers it.
    pub(crate) fn to_overlay(&self, msg: Message) {
        let Some(control) = self.overlay.get() else {
            let me = switchboard_protocol::mgmt::OverlayStatus {
                rank: 0,
                state: "full".into(),
                host: crate::overlay::hostname(),
                reason: None,
                children: Vec::new(),
            };
            return services::reply(self, &msg, &me);
        };
        if let Err(msg) = control.status(msg) {
            self.respond_error(&msg, Errno::EHOSTUNREACH, "this broker's overlay has stopped");
        }
    }

    pub(crate) fn set_management(&self, tx: tokio::sync::mpsc::UnboundedSender<Message>) {
        let _ = self.management.set(tx);
    }

    // ------------------------------------------------------------ endpoints and services

    /// A connection, or (with `module`) a module instance.
    pub fn add_endpoint(&self, sink: Sink, cred: Cred, label: String, module: Option<String>) -> Arc<Endpoint> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let ep = Arc::new(Endpoint {
            id,
            sink,
            cred,
            label,
            // Only a module is asked whether it holds a request from another module (§8.10).
            inflight: Inflight::new(module.is_some()),
            module,
            successor: OnceLock::new(),
        });
        self.table.write().endpoints.insert(id, ep.clone());
        ep
    }

    /// Clients connected now.
    pub fn connections(&self) -> usize {
        self.table.read().endpoints.values().filter(|e| matches!(e.sink, Sink::Conn(_))).count()
    }

    /// Forget an endpoint with its services and subscriptions.
    pub fn remove_endpoint(&self, id: EndpointId) {
        self.unregister(id, None);
    }

    /// `remove_endpoint`, in the same step remembering each of its services as gone `how`
    /// (for ENOSYS, `Table::and_how_it_left`) when given.
    fn unregister(&self, id: EndpointId, how: Option<String>) {
        let mut t = self.table.write();
        t.endpoints.remove(&id);
        let mut left = Vec::new();
        t.services.retain(|s, o| {
            let theirs = *o == Owner::Endpoint(id);
            if theirs && how.is_some() {
                left.push(s.clone());
            }
            !theirs
        });
        if let Some(how) = how {
            if t.gone.len() + left.len() > GONE {
                t.gone.clear();
            }
            for s in left {
                t.gone.insert(s, how.clone());
            }
        }
        t.subscriptions.retain(|(_, s)| *s != id);
        drop(t);
        self.tracers.remove_endpoint(id);
    }

    /// The endpoint left (`reason`: "exited", "disconnected", ...): no new message reaches
    /// it, and every request it owed an answer gets an EHOSTUNREACH error response.
    pub fn retire(&self, ep: &Endpoint, reason: &str) {
        let how = matches!(ep.sink, Sink::Module(_)).then(|| format!("{} {reason}", ep.label));
        self.unregister(ep.id, how);
        if let (Sink::Module(m), Some(next)) = (&ep.sink, ep.successor.get()) {
            // Requests it never took are its successor's; its inbox is sealed, so no more come.
            for msg in m.take_all() {
                if msg.kind == MsgType::Request && ep.inflight.forget(&msg) {
                    self.deliver_traced(next, msg);
                }
            }
        }
        let errors = ep.inflight.close(&ep.label, reason);
        if let Sink::Module(m) = &ep.sink {
            m.close();
        }
        for err in errors {
            self.route_response(err);
        }
    }

    /// The link to `peer` is up, as endpoint `ep` (RFC 7 §4.1).
    pub(crate) fn link_up(&self, peer: u32, ep: EndpointId) {
        self.table.write().links.insert(peer, LinkSlot::Up(ep));
        // The first time the parent is reached: the events published while joining go up.
        if Some(peer) == self.place.topology.parent() {
            if let Some(up) = self.link_to(Some(peer)) {
                self.events.joined(|msg| self.deliver(&up, msg));
            }
        }
    }

    /// The link to `peer` is lost: every request in flight across it is answered.
    pub(crate) fn link_lost(&self, peer: u32, ep: &Endpoint, reason: &str) {
        self.table.write().links.insert(peer, LinkSlot::Lost);
        self.retire(ep, reason);
    }

    /// Every link is lost (the overlay thread ended without retiring them).
    pub(crate) fn drop_links(&self, reason: &str) {
        let up: Vec<(u32, Arc<Endpoint>)> = {
            let t = self.table.read();
            t.links
                .iter()
                .filter_map(|(&peer, l)| match l {
                    LinkSlot::Up(id) => Some((peer, t.endpoints.get(id)?.clone())),
                    LinkSlot::Lost => None,
                })
                .collect()
        };
        for (peer, ep) in up {
            self.link_lost(peer, &ep, reason);
        }
    }

    /// Register all of `services` for `id`, or none of them.
    pub fn add_services(&self, id: EndpointId, services: &[String]) -> Result<(), ServiceTaken> {
        let mut t = self.table.write();
        for s in services {
            if let Some(owner) = t.services.get(s) {
                return Err(ServiceTaken { service: s.clone(), owner: describe_owner(&t, *owner) });
            }
        }
        for s in services {
            t.services.insert(s.clone(), Owner::Endpoint(id));
            t.gone.remove(s);
        }
        Ok(())
    }

    /// Hand every service of `old` to `new` and register `services` for `new`, in one step:
    /// a request is routed to one or the other, never to neither. Fails, changing nothing, if
    /// another endpoint owns one of `services`.
    pub fn transfer_services(&self, old: EndpointId, new: EndpointId, services: &[String]) -> Result<(), ServiceTaken> {
        let mut t = self.table.write();
        for s in services {
            match t.services.get(s) {
                Some(Owner::Endpoint(o)) if *o == old => {}
                Some(owner) => return Err(ServiceTaken { service: s.clone(), owner: describe_owner(&t, *owner) }),
                None => {}
            }
        }
        t.services.retain(|_, o| *o != Owner::Endpoint(old));
        for s in services {
            t.services.insert(s.clone(), Owner::Endpoint(new));
            t.gone.remove(s);
        }
        Ok(())
    }

    /// Remove `service` if `id` owns it.
    pub(crate) fn remove_service(&self, id: EndpointId, service: &str) -> Result<(), Errno> {
        let mut t = self.table.write();
        match t.services.get(service) {
            None => Err(Errno::ENOENT),
            Some(Owner::Endpoint(o)) if *o == id => {
                t.services.remove(service);
                Ok(())
            }
            Some(_) => Err(Errno::EPERM),
        }
    }

    /// Subscribe endpoint `id` to events whose topic starts with `prefix`. A link cannot
    /// subscribe: every event already goes down every child link (RFC 7 §4.5).
    pub(crate) fn subscribe(&self, id: EndpointId, prefix: &str) -> Result<(), NotHere> {
        let mut t = self.table.write();
        if t.endpoints.get(&id).is_some_and(|e| matches!(e.sink, Sink::Link(_))) {
            return Err(NotHere);
        }
        if !t.subscriptions.iter().any(|(p, s)| *s == id && p == prefix) {
            t.subscriptions.push((prefix.to_string(), id));
        }
        Ok(())
    }

    pub(crate) fn unsubscribe(&self, id: EndpointId, prefix: &str) -> bool {
        let mut t = self.table.write();
        let before = t.subscriptions.len();
        t.subscriptions.retain(|(p, s)| !(*s == id && p == prefix));
        t.subscriptions.len() != before
    }

    fn endpoint(&self, id: EndpointId) -> Option<Arc<Endpoint>> {
        self.table.read().endpoints.get(&id).cloned()
    }

    // ------------------------------------------------------------ routing

    /// Route a message that entered the broker from endpoint `from`, its credentials
    /// already stamped. For a request delivered to an endpoint, returns that endpoint.
    pub fn route(&self, from: &Endpoint, mut msg: Message) -> Option<EndpointId> {
        if self.tracers.active() {
            if let Some(module) = &from.module {
                self.trace(module, Dir::Out, &msg);
            }
        }
        match msg.kind {
            MsgType::Request => {
                if msg.route.len() >= MAX_ROUTE {
                    msg.route.push(from.id);
                    let text = format!("route stack of {} entries is too deep", msg.route.len() - 1);
                    self.respond_error(&msg, Errno::EPROTO, text);
                    return None;
                }
                msg.route.push(from.id);
                self.route_request(from, msg)
            }
            MsgType::Response => {
                // Only an answer to a request it was given: a made-up route goes nowhere.
                if from.inflight.retire(&msg) {
                    self.route_response(msg);
                } else {
                    tracing::debug!(from = %from.label, topic = %msg.topic, matchtag = msg.matchtag, "dropping a response that answers no request given to its sender");
                }
                None
            }
            MsgType::Event => {
                match &from.sink {
                    Sink::Link(l) if matches!(l.peer, Peer::Parent(_)) => self.event_from_parent(msg),
                    _ => {
                        self.publish(msg);
                    }
                }
                None
            }
            MsgType::Control => {
                tracing::debug!(topic = %msg.topic, "ignoring a control message from an endpoint");
                None
            }
        }
    }

    fn route_request(&self, from: &Endpoint, mut msg: Message) -> Option<EndpointId> {
        let owner = {
            let t = self.table.read();
            let owner = || match t.services.get(msg.service()) {
                None => None,
                Some(Owner::Builtin(b)) => Some(Err(*b)),
                Some(Owner::Endpoint(id)) => t.endpoints.get(id).map(|e| Ok(e.clone())),
            };
            let mut local = None;
            match across::decide(&self.place, &msg, || {
                local = owner();
                local.is_some()
            }) {
                Way::Here if local.is_none() => owner(),
                Way::Here => local,
                Way::Fail(errnum, text) => {
                    let text = if errnum == Errno::ENOSYS { t.and_how_it_left(&msg, text) } else { text };
                    drop(t);
                    self.respond_error(&msg, errnum, text);
                    return None;
                }
                Way::Link { peer, nodeid, clear_upstream } => {
                    let link = t.link(peer);
                    drop(t);
                    let link = match link {
                        Ok(link) => link,
                        Err(state) => {
                            let text = match msg.nodeid {
                                n if n == peer => format!("rank {peer} is {state}"),
                                n if n < self.place.topology.size => {
                                    format!("rank {n} is unreachable: the link to rank {peer} is {state}")
                                }
                                _ => format!("no upstream broker to ask: the link to rank {peer} is {state}"),
                            };
                            self.respond_error(&msg, Errno::EHOSTUNREACH, text);
                            return None;
                        }
                    };
                    msg.nodeid = nodeid;
                    if clear_upstream {
                        msg.flags = msg.flags.without(Flags::UPSTREAM);
                    }
                    self.deliver(&link, msg);
                    return Some(link.id);
                }
            }
        };
        match owner {
            None => {
                let text = self.table.read().and_how_it_left(&msg, across::no_service(&self.place, &msg));
                self.respond_error(&msg, Errno::ENOSYS, text);
                None
            }
            Some(Err(builtin)) => {
                services::handle(self, builtin, msg);
                None
            }
            Some(Ok(ep)) => {
                if let Some(text) = call_back_into_waiting(from, &ep, &msg) {
                    self.respond_error(&msg, Errno::EDEADLK, text);
                    return None;
                }
                self.deliver(&ep, msg);
                Some(ep.id)
            }
        }
    }

    /// Send a response back along its route stack.
    pub fn route_response(&self, mut msg: Message) {
        let Some(hop) = msg.route.pop() else {
            tracing::debug!(topic = %msg.topic, "dropping a response with an empty route stack");
            return;
        };
        match self.endpoint(hop) {
            Some(ep) => self.deliver(&ep, msg),
            // The requester is gone; nobody is waiting.
            None => {
                tracing::trace!(topic = %msg.topic, "dropping a response for a departed endpoint")
            }
        }
    }

    /// Publish an event for the instance: rank 0 numbers it and hands it to its subscribers
    /// and down every link (RFC 7 §4.5); another rank sends it up to be numbered, and it comes
    /// back down. Returns its number, or 0 where rank 0 will number it.
    pub fn publish(&self, mut msg: Message) -> u32 {
        if !self.place.is_root() {
            msg.seq = 0;
            let Some(msg) = self.events.hold_until_joined(msg) else {
                return 0;
            };
            match self.link_to(self.place.topology.parent()) {
                Some(up) => self.deliver(&up, msg),
                None => {
                    let lost = self.events.count_lost(1);
                    if lost.is_power_of_two() {
                        tracing::warn!(topic = %msg.topic, "an event was lost: the link to the parent is down ({lost} events lost so far)");
                    }
                }
            }
            return 0;
        }
        let _order = self.events.publishing.lock();
        msg.seq = self.events.number();
        self.fan_out(msg)
    }

    /// An event from the parent: already numbered; check its number, then hand it on.
    fn event_from_parent(&self, msg: Message) {
        let _order = self.events.publishing.lock();
        self.events.arrived(msg.seq);
        self.fan_out(msg);
    }

    /// The endpoint of the link to `peer`, if that link is up.
    fn link_to(&self, peer: Option<u32>) -> Option<Arc<Endpoint>> {
        self.table.read().link(peer?).ok()
    }

    /// Deliver a numbered event to every matching subscriber here and down every child link.
    fn fan_out(&self, msg: Message) -> u32 {
        let sinks: Vec<Arc<Endpoint>> = {
            let t = self.table.read();
            let mut ids: Vec<EndpointId> =
                t.subscriptions.iter().filter(|(p, _)| msg.topic.starts_with(p.as_str())).map(|(_, id)| *id).collect();
            ids.sort_unstable();
            ids.dedup();
            ids.iter()
                .filter_map(|id| t.endpoints.get(id))
                .filter(|e| {
                    !msg.flags.contains(Flags::PRIVATE) || e.cred.is_owner() || e.cred.userid == msg.cred.userid
                })
                .cloned()
                .chain(t.links.iter().filter_map(|(&peer, l)| match l {
                    LinkSlot::Up(id) if self.place.topology.parent() != Some(peer) => t.endpoints.get(id).cloned(),
                    _ => None,
                }))
                .collect()
        };
        let seq = msg.seq;
        if let Some((last, rest)) = sinks.split_last() {
            for s in rest {
                self.deliver(s, msg.clone());
            }
            self.deliver(last, msg);
        }
        seq
    }

    fn deliver(&self, ep: &Endpoint, msg: Message) {
        if self.tracers.active() {
            if let Some(module) = &ep.module {
                self.trace(module, Dir::In, &msg);
            }
        }
        self.deliver_traced(ep, msg);
    }

    /// `deliver` for a message already traced on its way in (one handed to a successor).
    fn deliver_traced(&self, ep: &Endpoint, msg: Message) {
        match &ep.sink {
            Sink::Conn(c) => {
                ep.inflight.track(&msg);
                c.enqueue(&msg);
            }
            // Noted in flight only once the inbox has taken it, in the same step: a request
            // the inbox refuses was never this endpoint's.
            Sink::Module(m) => {
                if let Err(msg) = m.push_with(msg, |m| ep.inflight.track(m)) {
                    match ep.successor.get() {
                        // Sealed for a reload: the new instance answers it.
                        Some(next) => return self.deliver_traced(next, *msg),
                        // Closed: the endpoint left; the sweep below answers it.
                        None => ep.inflight.track(&msg),
                    }
                }
            }
            // The overlay thread notes a request in flight on the link as it sends it
            // (`overlay::io`): it is the one that retires it and answers it if the link is lost.
            Sink::Link(l) => {
                if let Err(msg) = l.enqueue(ep.id, msg) {
                    let text = format!("rank {} is unreachable: this broker's overlay has stopped", l.peer.rank());
                    self.respond_error(&msg, Errno::EHOSTUNREACH, text);
                }
                return;
            }
        }
        // Pairs with `Inflight::close`: either its sweep saw what we tracked, or we see
        // that the endpoint left and sweep ourselves.
        if ep.inflight.is_closed() {
            if let Sink::Module(m) = &ep.sink {
                m.close();
            }
            for err in ep.inflight.sweep() {
                self.route_response(err);
            }
        }
    }

    /// Stream `req`'s sender a copy of each message to or from the modules it names, until it
    /// disconnects. The first response (an empty map) says the trace is running.
    pub fn start_trace(&self, req: &Message, args: switchboard_protocol::mgmt::TraceArgs) {
        if !req.flags.contains(Flags::STREAMING) {
            return self.respond_error(req, Errno::EPROTO, "module.trace needs a streaming request (flag 0x02)");
        }
        match self.tracers.add(req.clone(), args) {
            // The first of many responses: not `respond`, which would end the stream.
            Ok(()) if req.wants_response() => self.route_response(req.response(bytes::Bytes::from_static(&[0x80]))),
            Ok(()) => {}
            Err(e) => self.respond_error(req, Errno::EINVAL, e),
        }
    }

    fn trace(&self, module: &str, dir: Dir, msg: &Message) {
        let records = self.tracers.records(module, dir, msg);
        if !records.is_empty() {
            Tracers::emitting(|| records.into_iter().for_each(|r| self.route_response(r)));
        }
    }

    /// Answer `req` (whose route already ends with its sender) with an error, if it wants one.
    pub fn respond_error(&self, req: &Message, errnum: Errno, text: impl Into<String>) {
        if req.wants_response() {
            self.route_response(req.error_response(errnum, text));
        }
    }

    /// Answer `req` with a payload, if it wants a response. This is the whole answer: a
    /// STREAMING request also gets the ENODATA that ends its stream (RFC 1 §8.7).
    pub fn respond(&self, req: &Message, payload: bytes::Bytes) {
        if req.wants_response() {
            self.route_response(req.response(payload));
            if req.flags.contains(Flags::STREAMING) {
                self.route_response(req.error_response(Errno::ENODATA, "end of stream"));
            }
        }
    }

    pub(crate) fn to_management(&self, msg: Message) {
        match self.management.get() {
            Some(tx) => {
                if let Err(e) = tx.send(msg) {
                    self.respond_error(&e.0, Errno::ENOSYS, "the module supervisor is not running");
                }
            }
            None => self.respond_error(&msg, Errno::ENOSYS, "the module supervisor is not running"),
        }
    }

    /// Send a request as the broker itself to endpoint `to` (not routed by service name) and
    /// wait up to `timeout` for its response. For the supervisor, which asks modules things
    /// (`config-update`).
    pub fn call(
        &self,
        to: &Endpoint,
        mut req: Message,
        timeout: std::time::Duration,
    ) -> Result<Message, switchboard_protocol::Error> {
        let mailbox = Arc::new(Mailbox::default());
        let me = self.add_endpoint(Sink::Module(mailbox.clone()), broker_cred(), "the broker".to_string(), None);
        req.cred = me.cred;
        req.matchtag = 1;
        req.route.push(me.id);
        self.deliver(to, req);
        flush();
        let got = mailbox.inbox().recv(Some(timeout));
        self.retire(&me, "gave up");
        match got {
            Ok(r) if r.is_error() => {
                let errnum = Errno(r.errnum);
                Err(switchboard_protocol::Error::new(errnum, r.errstr.clone().unwrap_or_else(|| errnum.to_string())))
            }
            Ok(r) => Ok(r),
            Err(_) => Err(switchboard_protocol::Error::new(
                Errno::ETIMEDOUT,
                format!("no answer within {} ms", timeout.as_millis()),
            )),
        }
    }

    /// How many endpoints and services the table holds.
    pub fn counts(&self) -> (usize, usize) {
        let t = self.table.read();
        (t.endpoints.len(), t.services.len())
    }
}

/// The credentials of what the broker itself sends (lifecycle events, `config-update`
/// requests): its own uid, as the instance owner.
pub fn broker_cred() -> Cred {
    Cred { userid: rustix::process::getuid().as_raw(), rolemask: switchboard_protocol::ROLE_OWNER }
}

/// RFC 1 §8.10: module `from` asks module `to` for an answer while `to` has a request
/// without STREAMING in flight at `from`. `to` is most likely blocked waiting for that answer
/// (every module SDK's rpc blocks), so it would never serve this request, and `from` would
/// wait on it for ever: the text of the EDEADLK answer instead of a delivery. Clients are
/// left alone (they may be asynchronous), and so is a module's request to itself. One
/// lookup in `from`'s in-flight counts, which are almost always empty or small.
fn call_back_into_waiting(from: &Endpoint, to: &Endpoint, msg: &Message) -> Option<String> {
    let (Some(caller), Some(waiting)) = (&from.module, &to.module) else { return None };
    if from.id == to.id || !msg.wants_response() || !from.inflight.holds_request_from(to.id) {
        return None;
    }
    Some(format!(
        "{}: '{waiting}' is waiting on '{caller}' (a call back into a waiting module would deadlock)",
        msg.topic
    ))
}

fn describe_owner(t: &Table, owner: Owner) -> String {
    match owner {
        Owner::Builtin(_) => "the broker itself".to_string(),
        Owner::Endpoint(id) => t.endpoints.get(&id).map_or_else(|| format!("endpoint {id}"), |e| e.label.clone()),
    }
}
