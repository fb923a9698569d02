//! The overlay thread (RFC 7 §3, §5): the one owner of this broker's ZeroMQ sockets (the
//! ROUTER its children connect to, the DEALER to its parent, their monitors and the ZAP
//! handler) and of everything known about its links and its subtree's health. It polls the
//! sockets and a wake-up; what arrives on a link is routed by `Router::route` on this
//! thread, as a connection's reader routes what a client sends; what the router sends on a
//! link comes here as a `Command`. It never blocks but in its poll, and it never waits for
//! the runtime.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use switchboard_protocol::{decode_header, encode_frame_into, Errno, FrameError, Message, MsgType, FRAME_PREFIX};

use super::health::{Health, State, States};
use super::outbox::{self, Command, Control, LinkOut, Peer};
use super::peer_address;
use super::Topology;
use crate::router::{self, broker_cred, Endpoint, Router, Sink};

/// Messages taken from one source before looking at the others.
const BATCH: usize = 512;
/// A link message holds the frames a pass sends one peer, up to about this many bytes (it is
/// sent once it reaches them; one frame larger than this goes alone): §3.2.
const LINK_BATCH_BYTES: usize = 16 << 10;
/// The link format (§3.2), which a hello names: a link message is a run of whole RFC 1
/// frames. Version 1 carried one frame body per message.
const LINK_VERSION: u32 = 2;
/// How soon a link message that found its link full is tried again.
const HOLD_RETRY_MS: i64 = 5;
/// How often a parent tells each child it is there (`overlay.alive`, §3.6).
const ALIVE_EVERY: Duration = Duration::from_secs(2);
/// A child that hears nothing from its parent this long on a connection drops it and makes
/// a new one (§3.6): the parent may have given the connection's place to another.
const SILENT: Duration = Duration::from_secs(10);
/// A rank that connects again 3 times within this while its link is up is reported as
/// probably two brokers of one rank (each displaces the other every `SILENT` or sooner).
const REJOINS_WITHIN: Duration = Duration::from_secs(60);
/// How often a child not yet welcomed says hello again.
const HELLO_AGAIN: Duration = Duration::from_secs(1);

/// Monitor events (libzmq's `ZMQ_EVENT_*`).
pub(super) const EV_ACCEPTED: u16 = 0x0020;
pub(super) const EV_DISCONNECTED: u16 = 0x0200;
pub(super) const EV_HANDSHAKE_FAILED_NO_DETAIL: u16 = 0x0800;
pub(super) const EV_HANDSHAKE_SUCCEEDED: u16 = 0x1000;
pub(super) const EV_HANDSHAKE_FAILED_PROTOCOL: u16 = 0x2000;
pub(super) const EV_HANDSHAKE_FAILED_AUTH: u16 = 0x4000;

/// `overlay.hello`'s payload (§3.3).
#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    rank: u32,
    size: u32,
    fanout: u32,
    version: u32,
}

/// `overlay.refused`'s payload.
#[derive(Debug, Serialize, Deserialize)]
struct Refused {
    reason: String,
}

/// `overlay.health`'s payload (§6.1).
#[derive(Debug, Serialize, Deserialize)]
struct HealthReport {
    states: States,
}

/// The ROUTER side: this broker's children.
pub(super) struct Down {
    pub sock: zmq::Socket,
    pub monitor: zmq::Socket,
    /// The ZAP handler's socket (RFC 27): who may connect.
    pub zap: zmq::Socket,
    /// Children whose links are up: their endpoint and the descriptor their hello came on.
    links: rustc_hash::FxHashMap<u32, (Arc<Endpoint>, Option<i32>)>,
    /// How many times each address was refused by ZAP (logged at 1, 2, 4, 8, ...).
    refused: HashMap<String, u64>,
    /// Handshakes that failed before ZAP was asked (a peer with another server key).
    failed: u64,
    /// Connections accepted and not yet closed: their descriptor and peer's address. Keyed
    /// by descriptor, so no larger than the descriptor limit.
    accepted: rustc_hash::FxHashMap<i32, String>,
    /// The local port the ROUTER listens on (0: unknown), which its connections share.
    port: u16,
    /// A handshake failure (event, code) whose connection's close names who it was.
    failing: Option<(u16, u32)>,
    /// Per rank: since when, and how many times, it connected again with its link up.
    rejoins: rustc_hash::FxHashMap<u32, (Instant, u32)>,
    /// When the children were last told this broker is there.
    alive_at: Instant,
}

impl Down {
    /// `bound`: the endpoint `sock` listens on, as libzmq reports it (`tcp://IP:PORT`).
    pub fn new(sock: zmq::Socket, monitor: zmq::Socket, zap: zmq::Socket, bound: Option<&str>) -> Down {
        let port = bound.and_then(|at| at.rsplit(':').next()).and_then(|p| p.parse().ok()).unwrap_or(0);
        Down {
            sock,
            monitor,
            zap,
            links: Default::default(),
            refused: HashMap::new(),
            failed: 0,
            accepted: Default::default(),
            failing: None,
            port,
            rejoins: Default::default(),
            alive_at: Instant::now(),
        }
    }
}

/// The DEALER side: the link to the parent.
pub(super) struct Up {
    pub sock: zmq::Socket,
    pub monitor: zmq::Socket,
    pub parent: u32,
    /// Where the parent listens, as connected to.
    uri: String,
    link: Option<Arc<Endpoint>>,
    /// When the last hello went out on the present connection (None: not connected).
    hello_at: Option<Instant>,
    /// When the parent was last heard from on the present connection (or it was made).
    heard: Instant,
    /// Connections refused or closed by the parent before a welcome.
    refusals: u64,
}

impl Up {
    pub fn new(sock: zmq::Socket, monitor: zmq::Socket, parent: u32, uri: String) -> Up {
        Up { sock, monitor, parent, uri, link: None, hello_at: None, heard: Instant::now(), refusals: 0 }
    }
}

pub(super) struct Io {
    pub router: Arc<Router>,
    pub topology: Topology,
    pub hosts: Vec<String>,
    /// The instance's public key (32 bytes), the only one the ZAP handler admits.
    pub public_key: Vec<u8>,
    pub control: Control,
    /// The commands taken from `control`'s queue, being worked through.
    pub incoming: Vec<Command>,
    pub wake: UnixStream,
    pub down: Option<Down>,
    pub up: Option<Up>,
    pub health: Health,
    /// By peer rank: the endpoint of its last lost link and why it was lost, for what was
    /// still on its way to it.
    pub lost: rustc_hash::FxHashMap<u32, (u64, String)>,
    /// What was last reported up (or, at rank 0, published).
    pub reported: States,
    /// What this pass sends each peer, by peer.
    pub outgoing: Vec<(Peer, Outgoing)>,
    /// How many link messages may wait for a full link (§3.5).
    pub hold: usize,
}

/// The frames this pass sends one peer, sent as one link message at the end of the pass or
/// once they reach `LINK_BATCH_BYTES` (§3.2), and the requests among them: noted in flight on
/// the link once sent, answered with EHOSTUNREACH if the send fails.
#[derive(Default)]
pub(super) struct Outgoing {
    frames: Vec<u8>,
    requests: Vec<Message>,
    /// The frames that want no answer (responses, events): counted in the log if dropped.
    others: usize,
    /// Link messages that found the link full, oldest first: sent before anything else.
    held: std::collections::VecDeque<Vec<u8>>,
}

/// Which sockets the last poll found readable: only those are read (each read of an empty
/// ZeroMQ socket costs libzmq system calls).
#[derive(Clone, Copy)]
struct Ready {
    children: bool,
    down_monitor: bool,
    zap: bool,
    parent: bool,
    up_monitor: bool,
}

impl Ready {
    const ALL: Ready = Ready { children: true, down_monitor: true, zap: true, parent: true, up_monitor: true };
}

impl Io {
    pub fn run(mut self) {
        outbox::own_sends_here(&self.control);
        let mut own = Vec::new();
        let mut ready = Ready::ALL;
        loop {
            self.control.wake.disarm();
            let Some(mut more) = self.commands() else { return self.stop() };
            router::hold();
            if ready.down_monitor || ready.up_monitor {
                self.monitors();
            }
            if ready.children {
                more |= self.read_children();
            }
            if ready.parent {
                more |= self.read_parent();
            }
            router::flush();
            // What this thread's own routing sent on a link (a message relayed from one link
            // to another, an answer from a built-in service).
            while outbox::take_own_sends(&mut own) {
                own.drain(..).for_each(|cmd| self.command(cmd));
            }
            if ready.zap {
                self.zap();
            }
            self.watch_parent();
            self.keep_alive();
            self.report_health();
            // What this pass has for each peer, a link message each.
            self.flush();
            let timeout = match (more, self.holding()) {
                (true, _) => 0,
                // A full link is tried again soon.
                (false, true) => HOLD_RETRY_MS,
                (false, false) => HELLO_AGAIN.as_millis() as i64,
            };
            ready = self.poll(timeout);
        }
    }

    /// What the rest of the broker sent since the last pass: Some(false), or None when the
    /// thread is to stop.
    fn commands(&mut self) -> Option<bool> {
        self.control.take(&mut self.incoming);
        let mut incoming = std::mem::take(&mut self.incoming);
        let mut stop = false;
        for cmd in incoming.drain(..) {
            match cmd {
                Command::Stop => stop = true,
                cmd => self.command(cmd),
            }
        }
        self.incoming = incoming;
        (!stop).then_some(false)
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Send { peer, link, msg } => self.send(peer, link, msg),
            Command::Status(req) => {
                let mut tree = self.health.status(&self.hosts);
                // Its own state is its subtree's; a broker cut off from its parent says so.
                if let Some(parent) = self.up.as_ref().filter(|u| u.link.is_none()).map(|u| u.parent) {
                    let state = self.router.link_state(parent);
                    tree.reason = Some(format!("the link to its parent, rank {parent}, is {state}"));
                }
                crate::services::reply(&self.router, &req, &tree);
            }
            Command::Stop => {}
            #[cfg(test)]
            Command::Pause(until) => {
                let _ = until.recv();
            }
        }
    }

    fn poll(&mut self, timeout: i64) -> Ready {
        let mut items: smallvec::SmallVec<[zmq::PollItem; 6]> = smallvec::SmallVec::new();
        items.push(zmq::PollItem::from_fd(self.wake.as_raw_fd(), zmq::POLLIN));
        if let Some(d) = &self.down {
            items.push(d.sock.as_poll_item(zmq::POLLIN));
            items.push(d.monitor.as_poll_item(zmq::POLLIN));
            items.push(d.zap.as_poll_item(zmq::POLLIN));
        }
        if let Some(u) = &self.up {
            items.push(u.sock.as_poll_item(zmq::POLLIN));
            items.push(u.monitor.as_poll_item(zmq::POLLIN));
        }
        if let Err(e) = zmq::poll(&mut items, timeout) {
            if e != zmq::Error::EINTR {
                tracing::error!("the overlay's poll failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
            return Ready::ALL;
        }
        if items[0].is_readable() {
            let mut sink = [0u8; 64];
            while matches!((&self.wake).read(&mut sink), Ok(n) if n > 0) {}
        }
        let readable = |i: usize| items.get(i).is_some_and(|it| it.is_readable());
        let up = if self.down.is_some() { 4 } else { 1 };
        Ready {
            children: self.down.is_some() && readable(1),
            down_monitor: self.down.is_some() && readable(2),
            zap: self.down.is_some() && readable(3),
            parent: self.up.is_some() && readable(up),
            up_monitor: self.up.is_some() && readable(up + 1),
        }
    }

    fn stop(&mut self) {
        self.flush();
        let why = "is gone (this broker is stopping)";
        for (rank, (ep, _)) in self.down.as_mut().map(|d| std::mem::take(&mut d.links)).unwrap_or_default() {
            self.lose(rank, &ep, why);
        }
        if let Some((parent, ep)) = self.up.as_mut().and_then(|u| Some((u.parent, u.link.take()?))) {
            self.lose(parent, &ep, why);
        }
    }

    // ------------------------------------------------------------ sending

    /// Send `msg` on the link to `peer` at the end of this pass, if `link` is still that
    /// link's endpoint. Requests are noted in flight on the link once sent (`flush_to`), on
    /// this thread, which also retires them when their responses come back and answers them
    /// when the link is lost: the record has one owner.
    fn send(&mut self, peer: Peer, link: u64, msg: Message) {
        let current = match peer {
            Peer::Child(r) => self.down.as_ref().and_then(|d| d.links.get(&r)).map(|(ep, _)| ep.id),
            Peer::Parent(_) => self.up.as_ref().and_then(|u| u.link.as_ref()).map(|ep| ep.id),
        };
        if current != Some(link) {
            // The link was lost since the router chose it; its requests were answered then,
            // and this one now.
            let why = self.lost.get(&peer.rank()).filter(|(id, _)| *id == link).map(|(_, why)| why.as_str());
            let text = format!("rank {} {} before answering {}", peer.rank(), why.unwrap_or("is lost"), msg.topic);
            return self.router.respond_error(&msg, Errno::EHOSTUNREACH, text);
        }
        let i = match self.outgoing.iter().position(|(p, _)| *p == peer) {
            Some(i) => i,
            None => {
                self.outgoing.push((peer, Outgoing::default()));
                self.outgoing.len() - 1
            }
        };
        let out = &mut self.outgoing[i].1;
        encode_frame_into(&msg, &mut out.frames);
        if msg.wants_response() {
            out.requests.push(msg);
        } else {
            out.others += 1;
        }
        if out.frames.len() >= LINK_BATCH_BYTES {
            self.flush_to(i);
        }
    }

    /// Send every peer what this pass has for it.
    fn flush(&mut self) {
        for i in 0..self.outgoing.len() {
            self.flush_to(i);
        }
    }

    /// Send `outgoing[i]`'s frames as one link message, without waiting, after the link
    /// messages that found its link full before. One that finds it full now waits with them
    /// (§3.5), its requests in flight; past `hold` waiting, its requests are answered
    /// with EHOSTUNREACH and the rest dropped.
    fn flush_to(&mut self, i: usize) {
        let peer = self.outgoing[i].0;
        let mut full = false;
        while let Some(held) = self.outgoing[i].1.held.front() {
            match self.send_on(peer, held) {
                Some(Ok(())) => {
                    self.outgoing[i].1.held.pop_front();
                }
                Some(Err(zmq::Error::EAGAIN)) => {
                    full = true;
                    break;
                }
                failed => {
                    // The link is lost (what waited went with it, `discard_outgoing`) or the
                    // socket is gone.
                    let why = self.send_failed(peer, failed);
                    let dropped = std::mem::take(&mut self.outgoing[i].1.held).len();
                    if dropped > 0 {
                        tracing::warn!(
                            "{dropped} link messages waiting for rank {} were dropped: it {why}",
                            peer.rank()
                        );
                    }
                    break;
                }
            }
        }
        let out = &self.outgoing[i].1;
        if out.frames.is_empty() {
            return;
        }
        let sent =
            if full || !out.held.is_empty() { Some(Err(zmq::Error::EAGAIN)) } else { self.send_on(peer, &out.frames) };
        let out = &mut self.outgoing[i].1;
        let (mut requests, others) = (std::mem::take(&mut out.requests), std::mem::take(&mut out.others));
        let why = match sent {
            Some(Ok(())) => {
                out.frames.clear();
                // One large frame leaves a large buffer: it is not kept.
                if out.frames.capacity() > 4 * LINK_BATCH_BYTES {
                    out.frames = Vec::new();
                }
                None
            }
            Some(Err(zmq::Error::EAGAIN)) if out.held.len() < self.hold => {
                out.held.push_back(std::mem::take(&mut out.frames));
                self.router.full_links().waited.fetch_add(1, Ordering::Relaxed);
                None
            }
            failed => {
                out.frames.clear();
                Some(self.send_failed(peer, failed))
            }
        };
        match why {
            None => {
                if let Some(ep) = self.link(peer) {
                    requests.iter().for_each(|req| ep.inflight.track(req));
                }
            }
            Some(why) => {
                let refused = (requests.len() + others) as u64;
                self.router.full_links().dropped.fetch_add(refused, Ordering::Relaxed);
                for req in requests.drain(..) {
                    self.router.respond_error(&req, Errno::EHOSTUNREACH, format!("rank {} {why}", peer.rank()));
                }
                if others > 0 {
                    tracing::warn!("{others} responses or events to rank {} were dropped: it {why}", peer.rank());
                }
            }
        }
        // The vector's buffer is kept for the next pass.
        requests.clear();
        self.outgoing[i].1.requests = requests;
    }

    /// One link message to `peer`, without waiting (None: no such socket).
    fn send_on(&self, peer: Peer, frames: &[u8]) -> Option<zmq::Result<()>> {
        match peer {
            Peer::Child(r) => self.down.as_ref().map(|d| send_to_child(&d.sock, r, frames)),
            Peer::Parent(_) => self.up.as_ref().map(|u| u.sock.send(frames, zmq::DONTWAIT)),
        }
    }

    /// What a failed send to `peer` says of it ("is lost (not connected)"); a child found not
    /// connected is lost.
    fn send_failed(&mut self, peer: Peer, failed: Option<zmq::Result<()>>) -> String {
        match failed {
            Some(Ok(())) => String::new(),
            None => "is unreachable (no socket)".to_string(),
            Some(Err(zmq::Error::EHOSTUNREACH)) => {
                if let Peer::Child(r) = peer {
                    self.child_lost(r, "is lost (not connected)");
                }
                "is lost (not connected)".to_string()
            }
            Some(Err(zmq::Error::EAGAIN)) => {
                format!("is not taking messages (its link is full: {} link messages wait for it)", self.hold)
            }
            Some(Err(e)) => format!("could not be sent a message: {e}"),
        }
    }

    /// The endpoint of the link to `peer`, if it is up.
    fn link(&self, peer: Peer) -> Option<Arc<Endpoint>> {
        match peer {
            Peer::Child(r) => self.down.as_ref().and_then(|d| d.links.get(&r)).map(|(ep, _)| ep.clone()),
            Peer::Parent(_) => self.up.as_ref().and_then(|u| u.link.clone()),
        }
    }

    /// Whether a link message waits for a full link (the loop then looks again soon).
    fn holding(&self) -> bool {
        self.outgoing.iter().any(|(_, out)| !out.held.is_empty())
    }

    /// Answer the requests this pass had for `peer` (its link is lost) and send it nothing:
    /// neither those nor what waited for the link (whose requests the link's loss answers).
    fn discard_outgoing(&mut self, peer: u32, reason: &str) {
        let Some((p, out)) = self.outgoing.iter_mut().find(|(p, _)| p.rank() == peer) else { return };
        let p = *p;
        out.frames.clear();
        out.others = 0;
        let held = std::mem::take(&mut out.held).len();
        if held > 0 {
            tracing::warn!("{held} link messages waiting for rank {} were dropped: it {reason}", p.rank());
        }
        let requests = std::mem::take(&mut out.requests);
        for req in requests {
            let text = format!("rank {} {reason} before answering {}", p.rank(), req.topic);
            self.router.respond_error(&req, Errno::EHOSTUNREACH, text);
        }
    }

    /// `msg` alone on the link to `peer`, without waiting, after what this pass already has
    /// for it (None: no such socket).
    fn send_raw(&mut self, peer: Peer, msg: &Message) -> Option<zmq::Result<()>> {
        if let Some(i) = self.outgoing.iter().position(|(p, _)| *p == peer) {
            self.flush_to(i);
        }
        let mut buf = Vec::with_capacity(128);
        encode_frame_into(msg, &mut buf);
        self.send_on(peer, &buf)
    }

    /// Send a control message to `peer`; false if it could not be sent.
    fn control_to(&mut self, peer: Peer, topic: &str, payload: &impl Serialize) -> bool {
        let Ok(payload) = Message::encode_payload(payload) else { return false };
        match self.send_raw(peer, &Message::control(topic, payload)) {
            Some(Ok(())) => true,
            Some(Err(e)) => {
                tracing::debug!("{topic} to rank {} not sent: {e}", peer.rank());
                false
            }
            None => false,
        }
    }

    // ------------------------------------------------------------ receiving

    /// Route what the children sent. True if there may be more.
    fn read_children(&mut self) -> bool {
        let mut frames = 0;
        while frames < BATCH {
            let Some(d) = &self.down else { return false };
            let Some(id) = next(&d.sock, "the children") else { return false };
            let mut body = zmq::Message::new();
            if !id.get_more() || d.sock.recv(&mut body, zmq::DONTWAIT).is_err() {
                continue;
            }
            if body.get_more() {
                // One part after the routing id (§3.2): a peer that sends more is not ours.
                // The rest of its parts are read and the whole message dropped.
                let mut more = true;
                while more {
                    let mut part = zmq::Message::new();
                    if d.sock.recv(&mut part, zmq::DONTWAIT).is_err() {
                        break;
                    }
                    more = part.get_more();
                }
                tracing::warn!("a message of several parts from {:?} was dropped", String::from_utf8_lossy(&id));
                continue;
            }
            // The routing id is the rank in canonical decimal ("3", not "03"): replies go to
            // that id, so any other spelling could never be answered.
            let Some(rank) = canonical_rank(&id) else {
                tracing::warn!("a peer with routing id {:?} is not a rank: ignored", String::from_utf8_lossy(&id));
                continue;
            };
            let fd = body.gets("__fd").and_then(|f| f.parse::<i32>().ok());
            for msg in LinkFrames::new(&body, rank) {
                frames += 1;
                if msg.kind == MsgType::Control {
                    self.child_control(rank, fd, msg);
                    continue;
                }
                match self.down.as_ref().and_then(|d| d.links.get(&rank)) {
                    Some((ep, _)) => {
                        let ep = ep.clone();
                        self.router.route(&ep, msg);
                    }
                    None => {
                        tracing::debug!(topic = %msg.topic, "a message from rank {rank} before its hello was dropped")
                    }
                }
            }
        }
        true
    }

    /// Route what the parent sent. True if there may be more.
    fn read_parent(&mut self) -> bool {
        let mut frames = 0;
        while frames < BATCH {
            let Some(u) = &self.up else { return false };
            let Some(body) = next(&u.sock, "the parent") else { return false };
            let parent = u.parent;
            if let Some(u) = &mut self.up {
                u.heard = Instant::now();
            }
            for msg in LinkFrames::new(&body, parent) {
                frames += 1;
                if msg.kind == MsgType::Control {
                    self.parent_control(msg);
                    continue;
                }
                match self.up.as_ref().and_then(|u| u.link.clone()) {
                    Some(ep) => {
                        self.router.route(&ep, msg);
                    }
                    None => {
                        tracing::debug!(topic = %msg.topic, "a message from the parent before its welcome was dropped")
                    }
                }
            }
        }
        true
    }

    // ------------------------------------------------------------ hello, health

    fn child_control(&mut self, rank: u32, fd: Option<i32>, msg: Message) {
        match msg.topic.as_str() {
            "overlay.hello" => {
                // A restarted child's new connection may reuse its old descriptor: take in
                // the old one's disconnect first.
                self.monitors();
                let hello: Hello = match msg.decode() {
                    Ok(h) => h,
                    Err(e) => return self.refuse(rank, format!("a malformed hello: {e}")),
                };
                let t = self.topology;
                let why = if hello.rank != rank {
                    Some(format!("it says it is rank {} but connected as {rank}", hello.rank))
                } else if !t.children().any(|c| c == rank) {
                    Some(format!("rank {rank} is not a child of rank {}", t.rank))
                } else if hello.size != t.size || hello.fanout != t.fanout {
                    Some(format!(
                        "its instance has size {} and fanout {}, this one {} and {}",
                        hello.size, hello.fanout, t.size, t.fanout
                    ))
                } else if hello.version != LINK_VERSION {
                    Some(format!("it speaks overlay version {}, this broker {LINK_VERSION}", hello.version))
                } else {
                    None
                };
                if let Some(why) = why {
                    return self.refuse(rank, why);
                }
                let known = self.down.as_ref().and_then(|d| d.links.get(&rank)).map(|(_, at)| *at);
                match known {
                    // The same connection says hello again (its first welcome was slow to
                    // arrive): welcome it again, nothing more.
                    Some(at) if at.is_some() && at == fd => {
                        self.welcome(rank);
                        return;
                    }
                    Some(_) => {
                        self.child_lost(rank, "is lost (it connected again)");
                        self.note_rejoin(rank);
                    }
                    None => {}
                }
                let ep = self.link_endpoint(Peer::Child(rank));
                self.router.link_up(rank, ep.id);
                if let Some(d) = &mut self.down {
                    d.links.insert(rank, (ep, fd));
                }
                self.health.child_up(rank);
                tracing::info!("rank {rank} joined");
                self.welcome(rank);
            }
            "overlay.health" => match msg.decode::<HealthReport>() {
                Ok(report) => self.health.child_report(rank, report.states),
                Err(e) => tracing::warn!("a malformed overlay.health from rank {rank} was ignored: {e}"),
            },
            other => tracing::debug!("ignoring control message {other} from rank {rank}"),
        }
    }

    /// A rank that keeps connecting again while its link is up is most likely two brokers
    /// started with the same rank, each taking the other's place: say so.
    fn note_rejoin(&mut self, rank: u32) {
        let Some(d) = &mut self.down else { return };
        let now = Instant::now();
        let (since, n) = d.rejoins.entry(rank).or_insert((now, 0));
        if now.duration_since(*since) > REJOINS_WITHIN {
            (*since, *n) = (now, 0);
        }
        *n += 1;
        if *n >= 3 && n.is_power_of_two() {
            tracing::error!(
                "rank {rank} connected again {n} times in {} s while its link was up: are two brokers started as rank {rank}?",
                REJOINS_WITHIN.as_secs()
            );
        }
    }

    fn welcome(&mut self, rank: u32) {
        let t = self.topology;
        let me = Hello { rank: t.rank, size: t.size, fanout: t.fanout, version: LINK_VERSION };
        self.control_to(Peer::Child(rank), "overlay.welcome", &me);
    }

    fn refuse(&mut self, rank: u32, why: String) {
        // The refused child says hello every second: log the 1st, 2nd, 4th, ... time.
        if self.health.child_refused(rank, &why).is_power_of_two() {
            tracing::error!("refused rank {rank}: {why}");
        }
        self.control_to(Peer::Child(rank), "overlay.refused", &Refused { reason: why });
    }

    fn parent_control(&mut self, msg: Message) {
        let Some(parent) = self.up.as_ref().map(|u| u.parent) else { return };
        match msg.topic.as_str() {
            // A welcome while the link is up answers a hello repeated before the first welcome
            // came (a new connection is always seen disconnecting first, in `monitors`).
            "overlay.welcome" if self.up.as_ref().is_some_and(|u| u.link.is_some()) => {
                tracing::debug!("rank {parent} welcomed this broker again (a repeated hello): nothing changes");
            }
            "overlay.welcome" => {
                let ep = self.link_endpoint(Peer::Parent(parent));
                self.router.link_up(parent, ep.id);
                if let Some(u) = &mut self.up {
                    u.link = Some(ep);
                    u.hello_at = None;
                }
                tracing::info!("joined the instance through rank {parent}");
                self.reported.clear();
                self.health.touch();
            }
            "overlay.refused" => {
                let why = msg.decode::<Refused>().map(|r| r.reason).unwrap_or_else(|e| e.to_string());
                tracing::error!("rank {parent} refused this broker: {why}");
            }
            // Heard: `read_parent` noted it.
            "overlay.alive" => {}
            other => tracing::debug!("ignoring control message {other} from the parent"),
        }
    }

    fn link_endpoint(&self, peer: Peer) -> Arc<Endpoint> {
        let out = Arc::new(LinkOut { peer, control: self.control.clone() });
        self.router.add_endpoint(Sink::Link(out), broker_cred(), format!("rank {}", peer.rank()), None)
    }

    fn child_lost(&mut self, rank: u32, reason: &str) {
        let Some((ep, _)) = self.down.as_mut().and_then(|d| d.links.remove(&rank)) else { return };
        tracing::warn!("rank {rank} {reason}");
        self.lose(rank, &ep, reason);
        self.health.child_lost(rank);
    }

    fn parent_lost(&mut self, reason: &str) {
        let Some(u) = &mut self.up else { return };
        u.hello_at = None;
        let parent = u.parent;
        if let Some(ep) = u.link.take() {
            tracing::warn!("rank {parent} (the parent) {reason}; reconnecting");
            self.lose(parent, &ep, reason);
        }
    }

    /// The link to `peer`, endpoint `ep`, is lost: the router answers what is in flight on
    /// it, and what the broker still sends it is answered with `reason` (`send`).
    fn lose(&mut self, peer: u32, ep: &Endpoint, reason: &str) {
        self.discard_outgoing(peer, reason);
        self.lost.insert(peer, (ep.id, reason.to_string()));
        self.router.link_lost(peer, ep, reason);
    }

    /// A child connected but not welcomed says hello again now and then (its first may have
    /// gone out before the parent could read it). A connection on which the parent has said
    /// nothing for `SILENT` (it says `overlay.alive` every `ALIVE_EVERY`) is dropped for a new
    /// one: the parent no longer reads it (another broker of this rank took its place, §3.3),
    /// though ZeroMQ's heartbeats still pass.
    fn watch_parent(&mut self) {
        let Some(u) = &self.up else { return };
        let connected = u.link.is_some() || u.hello_at.is_some();
        if connected && u.heard.elapsed() >= SILENT {
            let why = format!(
                "is lost (it said nothing for {} s on this connection: another broker of rank {} may have taken its place)",
                SILENT.as_secs(),
                self.topology.rank
            );
            self.parent_lost(&why);
            return self.reconnect();
        }
        if u.link.is_none() && u.hello_at.is_some_and(|at| at.elapsed() >= HELLO_AGAIN) {
            self.hello();
        }
    }

    /// Drop the connection to the parent and make a new one.
    fn reconnect(&mut self) {
        let Some(u) = &mut self.up else { return };
        u.hello_at = None;
        u.heard = Instant::now();
        if let Err(e) = u.sock.disconnect(&u.uri).and_then(|()| u.sock.connect(&u.uri)) {
            tracing::error!("cannot connect to the parent at {} again: {e}", u.uri);
        }
    }

    /// Tell every child whose link is up that this broker is there, every `ALIVE_EVERY`.
    fn keep_alive(&mut self) {
        let Some(d) = &mut self.down else { return };
        if d.alive_at.elapsed() < ALIVE_EVERY {
            return;
        }
        d.alive_at = Instant::now();
        let children: smallvec::SmallVec<[u32; 8]> = d.links.keys().copied().collect();
        for rank in children {
            self.control_to(Peer::Child(rank), "overlay.alive", &std::collections::BTreeMap::<String, u32>::new());
        }
    }

    fn hello(&mut self) {
        let t = self.topology;
        let Some(parent) = self.up.as_ref().map(|u| u.parent) else { return };
        let hello = Hello { rank: t.rank, size: t.size, fanout: t.fanout, version: LINK_VERSION };
        self.control_to(Peer::Parent(parent), "overlay.hello", &hello);
        if let Some(u) = &mut self.up {
            u.hello_at = Some(Instant::now());
        }
    }

    /// Tell the parent (or, at rank 0, the instance) what changed in this subtree.
    fn report_health(&mut self) {
        if !self.health.take_changed() {
            return;
        }
        let states = self.health.states();
        if states == self.reported {
            return;
        }
        if self.topology.rank == 0 {
            for (&r, &s) in &states {
                // The first view is where rank 0 starts from, not a change (§6.2).
                if !self.reported.is_empty() && self.reported.get(&r) != Some(&s) {
                    self.publish_rank(r, s);
                }
            }
        } else if let Some(parent) = self.up.as_ref().filter(|u| u.link.is_some()).map(|u| u.parent) {
            if !self.control_to(Peer::Parent(parent), "overlay.health", &HealthReport { states: states.clone() }) {
                // Not sent (the link is full or going): try again on the next pass.
                self.health.touch();
                return;
            }
        } else {
            // Reported when the parent link comes up (`touch`).
            return;
        }
        self.reported = states;
    }

    /// Rank 0's `overlay.rank.N` event (§6.2).
    fn publish_rank(&self, r: u32, s: State) {
        #[derive(Serialize)]
        struct RankEvent<'a> {
            rank: u32,
            state: &'a str,
        }
        if let Ok(payload) = Message::encode_payload(&RankEvent { rank: r, state: s.name() }) {
            let mut ev = Message::event(format!("overlay.rank.{r}"), payload);
            ev.cred = broker_cred();
            self.router.publish(ev);
        }
    }

    // ------------------------------------------------------------ monitors, ZAP

    fn monitors(&mut self) {
        while let Some((event, value)) = self.down.as_ref().and_then(|d| monitor_event(&d.monitor)) {
            let fd = value as i32;
            match event {
                EV_ACCEPTED => {
                    if let Some(d) = &mut self.down {
                        // A number libzmq reused: what it named before is gone.
                        d.accepted.remove(&fd);
                        if let Some(address) = peer_address::of(fd, d.port) {
                            d.accepted.insert(fd, address);
                        }
                    }
                }
                EV_DISCONNECTED => {
                    let gone = self
                        .down
                        .as_ref()
                        .and_then(|d| d.links.iter().find(|(_, (_, at))| *at == Some(fd)).map(|(r, _)| *r));
                    if let Some(rank) = gone {
                        self.child_lost(rank, "is lost (its connection closed)");
                    }
                    if let Some(d) = &mut self.down {
                        let from = d.accepted.remove(&fd);
                        if let Some((event, code)) = d.failing.take() {
                            d.failed += 1;
                            if d.failed.is_power_of_two() {
                                let from = from.as_deref().unwrap_or("an address libzmq did not give");
                                tracing::warn!(
                                    "refused a peer from {from} whose CURVE handshake failed (event {event:#x}, code \
                                     {code:#x}): it does not hold the instance certificate ({} times)",
                                    d.failed
                                );
                            }
                        }
                    }
                }
                // ZAP refused it, and said who (`zap` below).
                EV_HANDSHAKE_FAILED_AUTH => {}
                // The peer's keys do not match the instance's. libzmq gives only a code here;
                // the connection's close, which follows at once, gives its descriptor.
                _ => {
                    if let Some(d) = &mut self.down {
                        d.failing = Some((event, value));
                    }
                }
            }
        }
        while let Some((event, value)) = self.up.as_ref().and_then(|u| monitor_event(&u.monitor)) {
            let welcomed = self.up.as_ref().is_some_and(|u| u.link.is_some() || u.hello_at.is_some());
            match event {
                EV_HANDSHAKE_SUCCEEDED => {
                    if let Some(u) = &mut self.up {
                        u.heard = Instant::now();
                    }
                    self.hello();
                }
                EV_DISCONNECTED if welcomed => self.parent_lost("is lost (its connection closed)"),
                // Closed before the handshake ended, or refused in it: the parent does not
                // take this broker's keys.
                _ => {
                    if let Some(u) = &mut self.up {
                        u.refusals += 1;
                        if u.refusals.is_power_of_two() {
                            tracing::error!(
                                "rank {} refused the connection before the handshake ended (event {event:#x}, \
                                 {value:#x}): check that this broker's certificate is the instance's ({} times)",
                                u.parent,
                                u.refusals
                            );
                        }
                    }
                }
            }
        }
    }

    /// Answer ZAP requests (RFC 27): admit a CURVE client only if it holds the instance key.
    fn zap(&mut self) {
        let Some(d) = &mut self.down else { return };
        while let Ok(frames) = d.zap.recv_multipart(zmq::DONTWAIT) {
            // version, request id, domain, address, routing id, mechanism, credentials...
            if frames.len() < 6 {
                continue;
            }
            let address = String::from_utf8_lossy(&frames[3]).into_owned();
            let ok = frames[5] == b"CURVE" && frames.get(6).is_some_and(|k| *k == self.public_key);
            let (code, text): (&[u8], &[u8]) =
                if ok { (b"200", b"OK") } else { (b"400", b"not the instance certificate") };
            let reply: [&[u8]; 6] = [b"1.0", &frames[1], code, text, b"", b""];
            if let Err(e) = d.zap.send_multipart(reply, 0) {
                tracing::error!("the ZAP handler could not answer: {e}");
            }
            if !ok {
                // Bounded: a scan from many addresses cannot grow it for ever.
                if d.refused.len() >= 1024 && !d.refused.contains_key(&address) {
                    d.refused.clear();
                }
                let n = d.refused.entry(address.clone()).or_insert(0);
                *n += 1;
                if n.is_power_of_two() {
                    tracing::warn!(
                        "refused a peer from {address}: it does not hold the instance certificate ({n} times)"
                    );
                }
            }
        }
    }
}

/// The next frame on `sock`, if one is there (an error other than EAGAIN is logged).
fn next(sock: &zmq::Socket, from: &str) -> Option<zmq::Message> {
    let mut frame = zmq::Message::new();
    match sock.recv(&mut frame, zmq::DONTWAIT) {
        Ok(()) => Some(frame),
        Err(zmq::Error::EAGAIN) => None,
        Err(e) => {
            tracing::error!("receiving from {from} failed: {e}");
            None
        }
    }
}

/// The messages in a link message from rank `from` (§3.2): a run of whole RFC 1 frames. A
/// frame whose body is malformed is logged and skipped; one whose length runs past the end of
/// the link message ends the run, logged (what follows it cannot be found).
struct LinkFrames<'a> {
    rest: &'a [u8],
    from: u32,
}

impl<'a> LinkFrames<'a> {
    fn new(body: &'a [u8], from: u32) -> Self {
        LinkFrames { rest: body, from }
    }
}

impl Iterator for LinkFrames<'_> {
    type Item = Message;

    fn next(&mut self) -> Option<Message> {
        while !self.rest.is_empty() {
            let left = self.rest.len();
            let Some((len, tail)) = self.rest.split_first_chunk::<FRAME_PREFIX>() else {
                tracing::warn!(
                    "a malformed message from rank {} was dropped: {left} bytes, no frame length",
                    self.from
                );
                self.rest = &[];
                return None;
            };
            let needed = u32::from_be_bytes(*len) as usize;
            let Some((frame, tail)) = tail.split_at_checked(needed) else {
                let e = FrameError::Incomplete { needed, left: left - FRAME_PREFIX };
                tracing::warn!("a malformed message from rank {} was dropped: {e}", self.from);
                self.rest = &[];
                return None;
            };
            self.rest = tail;
            match decode_body(frame) {
                Ok(msg) => return Some(msg),
                Err(e) => tracing::warn!("a malformed message from rank {} was dropped: {e}", self.from),
            }
        }
        None
    }
}

/// What `decode_frame` reads from a frame body, with the same checks, but with the header read
/// where it lies: only the payload is copied out of the ZeroMQ message, which is freed with
/// it. (A copy of the whole body, which the payload then shared, cost two allocations.)
fn decode_body(body: &[u8]) -> Result<Message, FrameError> {
    let len = body.len();
    let Some((hlen, rest)) = body.split_first_chunk::<4>() else { return Err(FrameError::TooShort { len }) };
    let hlen = u32::from_be_bytes(*hlen) as usize;
    let Some((header, payload)) = rest.split_at_checked(hlen) else {
        return Err(FrameError::HeaderOverrun { hlen, len });
    };
    let payload = if payload.is_empty() { Bytes::new() } else { Bytes::copy_from_slice(payload) };
    Ok(decode_header(header, payload)?)
}

/// A routing id that is a rank in canonical decimal: digits only, no leading zero, no sign
/// (checked without allocating; this runs for every message from a child).
fn canonical_rank(id: &[u8]) -> Option<u32> {
    let canonical = id.iter().all(u8::is_ascii_digit) && (id.len() == 1 || id.first() != Some(&b'0'));
    std::str::from_utf8(id).ok().filter(|_| canonical)?.parse().ok()
}

fn send_to_child(sock: &zmq::Socket, rank: u32, body: &[u8]) -> zmq::Result<()> {
    // The child's routing id: its rank in decimal, written without allocating.
    let (mut id, mut at, mut n) = ([0u8; 10], 10, rank);
    loop {
        at -= 1;
        id[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    sock.send(&id[at..], zmq::SNDMORE | zmq::DONTWAIT)?;
    sock.send(body, zmq::DONTWAIT)
}

/// The next event on a monitor socket: (event, value), where value is a descriptor or an errno.
fn monitor_event(monitor: &zmq::Socket) -> Option<(u16, u32)> {
    let frames = monitor.recv_multipart(zmq::DONTWAIT).ok()?;
    let head = frames.first().filter(|f| f.len() >= 6)?;
    let event = u16::from_ne_bytes([head[0], head[1]]);
    let value = u32::from_ne_bytes([head[2], head[3], head[4], head[5]]);
    Some((event, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_protocol::{decode_frame, encode_body_into};

    fn body(msg: &Message) -> Vec<u8> {
        let mut out = Vec::new();
        encode_body_into(msg, &mut out);
        out
    }

    fn request(topic: &str, tag: u32) -> Message {
        let mut req = Message::request(topic, Bytes::from_static(b"\x91\xa3abc"));
        req.route = switchboard_protocol::Route::from_slice(&[3, 9]);
        req.matchtag = tag;
        req.nodeid = 1;
        req
    }

    #[test]
    fn a_body_decodes_as_decode_frame_reads_it() {
        let empty = Message::request("echo.y", Bytes::new()).error_response(Errno::EIO, "no");
        for msg in [request("echo.x", 7), empty] {
            let b = body(&msg);
            let ours = decode_body(&b).expect("decodes");
            assert_eq!(ours, decode_frame(Bytes::from(b)).expect("decodes"));
            assert_eq!(ours, msg);
        }
    }

    #[test]
    fn a_link_message_is_read_as_the_run_of_frames_it_holds() {
        let msgs: Vec<Message> = (1..=3).map(|tag| request(&format!("echo.m{tag}"), tag)).collect();
        let mut link = Vec::new();
        msgs.iter().for_each(|m| encode_frame_into(m, &mut link));
        assert_eq!(LinkFrames::new(&link, 1).collect::<Vec<_>>(), msgs);

        // A frame whose body is malformed is skipped; the frames after it are still read.
        let mut bad = Vec::new();
        encode_frame_into(&msgs[0], &mut bad);
        bad[FRAME_PREFIX + 4] = 0xc1;
        encode_frame_into(&msgs[1], &mut bad);
        assert_eq!(LinkFrames::new(&bad, 1).collect::<Vec<_>>(), msgs[1..2]);

        // A length that runs past the end ends the run: what was before it is read.
        let mut cut = link.clone();
        cut.truncate(link.len() - 1);
        assert_eq!(LinkFrames::new(&cut, 1).collect::<Vec<_>>(), msgs[..2]);
        assert_eq!(LinkFrames::new(&[0, 0], 1).count(), 0);
        assert_eq!(LinkFrames::new(&[], 1).count(), 0);
    }

    #[test]
    fn only_a_canonical_decimal_routing_id_is_a_rank() {
        for (id, rank) in [("0", Some(0)), ("3", Some(3)), ("4294967295", Some(u32::MAX))] {
            assert_eq!(canonical_rank(id.as_bytes()), rank, "{id}");
        }
        for id in ["", "03", "00", "+3", "-1", " 3", "3 ", "4294967296", "x", "\u{663}"] {
            assert_eq!(canonical_rank(id.as_bytes()), None, "{id:?}");
        }
    }

    #[test]
    fn a_malformed_body_is_refused_as_decode_frame_refuses_it() {
        let good = body(&Message::request("echo.x", Bytes::from_static(b"\xc0")));
        let mut overrun = good.clone();
        overrun[..4].copy_from_slice(&(good.len() as u32).to_be_bytes());
        let mut bad_header = good.clone();
        bad_header[4] = 0xc1;
        for b in [&good[..3], &overrun[..], &bad_header[..], &[0, 0, 0, 0][..]] {
            let ours = decode_body(b).expect_err("refused");
            assert_eq!(ours, decode_frame(Bytes::copy_from_slice(b)).expect_err("refused"));
        }
    }
}
