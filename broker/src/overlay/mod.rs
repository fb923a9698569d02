//! Brokers of one instance joined in a tree (RFC 7). `Overlay::start` opens this broker's
//! links (a ZeroMQ ROUTER for its children, a DEALER to its parent, both CURVE) and hands
//! them to the overlay thread; routing across links is the router's (`router::across`).
//!
//! - [`topology`]: the tree's arithmetic: parent, children, subtree, next hop.
//! - [`cert`]: the instance certificate, `switchboard keygen`'s file.
//! - `outbox`: how the broker hands the overlay thread messages and requests.
//! - `io`: the overlay thread: sockets, hello, liveness, ZAP, health.
//! - `health`: the states of a subtree's ranks, for `overlay.status`.
//! - `peer_address`: who a refused peer is (its address, from its descriptor).

pub mod cert;
mod health;
mod io;
mod outbox;
mod peer_address;
pub mod topology;

#[cfg(test)]
mod tests;

pub use cert::{CertError, Certificate};
pub use outbox::{Control, LinkOut, Peer};
pub use topology::{NextHop, Topology, TopologyError};

use std::sync::Arc;

use crate::router::Router;

/// High-water mark of every link, each way, in link messages (RFC 7 §3.5).
pub const LINK_HWM: i32 = 10_000;
/// ZeroMQ heartbeats on every link: a peer silent this long is disconnected (§3.6).
const HEARTBEAT_IVL_MS: i32 = 2_000;
const HEARTBEAT_TIMEOUT_MS: i32 = 6_000;

/// What a broker needs to take its place in an instance.
#[derive(Debug, Clone)]
pub struct OverlayConfig {
    pub topology: Topology,
    /// By rank: the host names `overlay.status` shows.
    pub hosts: Vec<String>,
    /// Where this broker listens for its children (None: it has none).
    pub bind: Option<String>,
    /// Where its parent listens (None at rank 0).
    pub connect: Option<String>,
    pub cert: Certificate,
    /// The largest message a link takes, in bytes (`ZMQ_MAXMSGSIZE`): the broker's largest
    /// frame. A peer that announces a larger one is disconnected before it is read, during
    /// the CURVE handshake too.
    pub max_message: usize,
    /// Every link's high-water mark, each way, in link messages (`LINK_HWM`; §3.5).
    pub hwm: i32,
    /// How many link messages may wait in the broker for a full link (`LINK_HWM`; §3.5).
    pub hold: usize,
}

/// Why the overlay could not start.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("this libzmq was built without CURVE, which every link needs: install a libzmq built with libsodium (Debian: libzmq5)")]
    NoCurve,
    #[error("cannot listen for rank {rank}'s children on {uri}: {source}")]
    Bind { rank: u32, uri: String, source: zmq::Error },
    #[error("cannot connect to the parent at {uri}: {source}")]
    Connect { uri: String, source: zmq::Error },
    #[error("cannot set up the overlay's sockets: {0}")]
    Socket(#[from] zmq::Error),
    #[error("cannot start the overlay thread: {0}")]
    Thread(std::io::Error),
}

/// The running overlay: its thread and the handle the router sends it work through.
pub struct Overlay {
    control: Control,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Where the children connect, as bound (a `:0` port resolved).
    bound: Option<String>,
}

impl Overlay {
    /// Open the links and start the overlay thread. A bind error is reported here; a parent
    /// not up yet is not an error (the link comes up when it is).
    pub fn start(config: OverlayConfig, router: Arc<Router>) -> Result<Overlay, OverlayError> {
        if zmq::has("curve") != Some(true) {
            return Err(OverlayError::NoCurve);
        }
        let ctx = zmq::Context::new();
        let t = config.topology;
        let secret = config.cert.secret.as_str();
        let public = config.cert.public.as_str();
        let public_key = zmq::z85_decode(public).map_err(|_| OverlayError::Socket(zmq::Error::EINVAL))?;
        let mut bound = None;
        let down = match &config.bind {
            Some(uri) => {
                // The ZAP handler first, so that no connection is admitted without it.
                let zap = ctx.socket(zmq::REP)?;
                zap.set_linger(0)?;
                zap.bind("inproc://zeromq.zap.01")?;
                let sock = ctx.socket(zmq::ROUTER)?;
                common_options(&sock, &config)?;
                sock.set_router_mandatory(true)?;
                sock.set_router_handover(true)?;
                sock.set_curve_server(true)?;
                sock.set_curve_secretkey(secret.as_bytes())?;
                sock.set_zap_domain("switchboard")?;
                let events = io::EV_ACCEPTED
                    | io::EV_DISCONNECTED
                    | io::EV_HANDSHAKE_FAILED_AUTH
                    | io::EV_HANDSHAKE_FAILED_PROTOCOL
                    | io::EV_HANDSHAKE_FAILED_NO_DETAIL;
                let monitor = monitor(&ctx, &sock, "inproc://overlay-down", events)?;
                sock.bind(uri).map_err(|source| OverlayError::Bind { rank: t.rank, uri: uri.clone(), source })?;
                bound = sock.get_last_endpoint()?.ok();
                Some(io::Down::new(sock, monitor, zap, bound.as_deref()))
            }
            None => None,
        };
        let up = match (&config.connect, t.parent()) {
            (Some(uri), Some(parent)) => {
                let sock = ctx.socket(zmq::DEALER)?;
                common_options(&sock, &config)?;
                sock.set_identity(t.rank.to_string().as_bytes())?;
                sock.set_immediate(true)?;
                sock.set_reconnect_ivl(100)?;
                sock.set_reconnect_ivl_max(2_000)?;
                sock.set_curve_serverkey(public.as_bytes())?;
                sock.set_curve_publickey(public.as_bytes())?;
                sock.set_curve_secretkey(secret.as_bytes())?;
                let events = io::EV_DISCONNECTED
                    | io::EV_HANDSHAKE_SUCCEEDED
                    | io::EV_HANDSHAKE_FAILED_AUTH
                    | io::EV_HANDSHAKE_FAILED_PROTOCOL
                    | io::EV_HANDSHAKE_FAILED_NO_DETAIL;
                let monitor = monitor(&ctx, &sock, "inproc://overlay-up", events)?;
                sock.connect(uri).map_err(|source| OverlayError::Connect { uri: uri.clone(), source })?;
                Some(io::Up::new(sock, monitor, parent, uri.clone()))
            }
            _ => None,
        };
        let (wake, wake_rx) = outbox::Wake::pair().map_err(OverlayError::Thread)?;
        let control = Control::new(wake);
        router.set_overlay(control.clone());
        let io = io::Io {
            router,
            topology: t,
            hosts: config.hosts,
            public_key,
            control: control.clone(),
            incoming: Vec::new(),
            wake: wake_rx,
            down,
            up,
            health: health::Health::new(t),
            lost: Default::default(),
            reported: Default::default(),
            outgoing: Vec::new(),
            hold: config.hold,
        };
        let (queue, router) = (control.clone(), io.router.clone());
        let thread = std::thread::Builder::new()
            .name("sb-overlay".into())
            .spawn(move || {
                // The context lives as long as its sockets, on this thread.
                let _ctx = ctx;
                let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| io.run()));
                // Nothing more is taken: what is sent to a link from now on is handed back to
                // the router, which answers it (`LinkOut::enqueue`). What was waiting (and what
                // this thread sent itself, if it failed mid-pass) was never sent: its requests
                // are answered here.
                let (mut left, mut own) = (queue.close(), Vec::new());
                outbox::take_own_sends(&mut own);
                for cmd in left.drain(..).chain(own) {
                    let unreachable = switchboard_protocol::Errno::EHOSTUNREACH;
                    match cmd {
                        outbox::Command::Status(req) => {
                            router.respond_error(&req, unreachable, "the overlay has stopped")
                        }
                        outbox::Command::Send { peer, msg, .. } => router.respond_error(
                            &msg,
                            unreachable,
                            format!("rank {} is unreachable: this broker's overlay has stopped", peer.rank()),
                        ),
                        _ => {}
                    }
                }
                // The answers above went to connections as held output.
                crate::router::flush();
                if let Err(panic) = ended {
                    let why =
                        panic.downcast_ref::<&str>().copied().or(panic.downcast_ref::<String>().map(|s| s.as_str()));
                    tracing::error!(
                        "the overlay thread failed ({}); this broker is cut off from the instance",
                        why.unwrap_or("a panic")
                    );
                    // Its links: every request in flight across them is answered.
                    router.drop_links("is unreachable: this broker's overlay thread failed");
                    crate::router::flush();
                }
            })
            .map_err(OverlayError::Thread)?;
        Ok(Overlay { control, thread: Some(thread), bound })
    }

    /// The address this broker's children connect to, with the port it was given.
    pub fn bound(&self) -> Option<&str> {
        self.bound.as_deref()
    }

    /// Have the thread stop reading and sending until the returned sender sends or is dropped.
    #[cfg(test)]
    pub(crate) fn pause(&self) -> std::sync::mpsc::Sender<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        let _ = self.control.send(outbox::Command::Pause(rx));
        tx
    }

    /// Close the links (every request in flight across them is answered) and end the thread.
    pub fn stop(&mut self) {
        let _ = self.control.send(outbox::Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A socket that receives `sock`'s monitor `events`, published at `at`.
fn monitor(ctx: &zmq::Context, sock: &zmq::Socket, at: &str, events: u16) -> zmq::Result<zmq::Socket> {
    sock.monitor(at, i32::from(events))?;
    let monitor = ctx.socket(zmq::PAIR)?;
    monitor.connect(at)?;
    Ok(monitor)
}

fn common_options(sock: &zmq::Socket, config: &OverlayConfig) -> zmq::Result<()> {
    sock.set_linger(0)?;
    sock.set_maxmsgsize(i64::try_from(config.max_message).unwrap_or(i64::MAX))?;
    sock.set_sndhwm(config.hwm)?;
    sock.set_rcvhwm(config.hwm)?;
    sock.set_heartbeat_ivl(HEARTBEAT_IVL_MS)?;
    sock.set_heartbeat_timeout(HEARTBEAT_TIMEOUT_MS)?;
    Ok(())
}

/// This machine's name, as `hosts` entries and `overlay.status` use it.
pub fn hostname() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}
