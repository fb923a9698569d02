//! The broker side of the WIT world (RFC 6): the `host` interface a module imports, its
//! store state (WASI context, limits, the module's mailbox), and the memory limiter.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::inbox::{Inbox, RecvError};
use bytes::Bytes;
use switchboard_protocol::{frames, Cred, Errno, Flags, FrameError, Level, Message, MsgType, Route, NODEID_ANY};
use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::runtime::TICK;
use crate::module::BrokerPort;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../protocol/wit",
        // The exports every module has; `declare`, which components built before it was
        // added lack, is looked up on its own (`super::declared`).
        world: "module-base",
        // A malformed frame is the module's fault: it fails the module, not the call.
        imports: { "switchboard:module/host.send-all": trappable },
    });
}

pub use bindings::switchboard::module::types::{Declarations as WitDeclarations, Failure, Message as WitMessage};
use bindings::switchboard::module::{host, types};
pub use bindings::{ModuleBase as WasmWorld, ModuleBasePre as WasmWorldPre};

/// Memory cap for one module, remembering when it was hit (for the failure reason).
pub struct Limits {
    memory: usize,
    pub hit: Option<String>,
    /// Linear memory granted so far, in bytes, readable from other threads (`module.stats`).
    pub used: Arc<AtomicU64>,
}

impl Limits {
    pub fn new(memory: usize) -> Self {
        Limits { memory, hit: None, used: Arc::default() }
    }
}

impl ResourceLimiter for Limits {
    fn memory_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory {
            self.hit = Some(format!(
                "it exceeded its memory limit of {} MiB (asked for {} MiB)",
                self.memory >> 20,
                desired.div_ceil(1 << 20)
            ));
            return Ok(false);
        }
        self.used.fetch_add(desired.saturating_sub(current) as u64, Ordering::Relaxed);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// How a module broke the interface. The host call that found it traps, and the module fails
/// with this as its reason.
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    #[error("it sent a malformed frame (frame {number} of a send-all): {source}")]
    Frame { number: usize, source: FrameError },
}

/// Everything a module's store holds.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limits: Limits,
    /// Set when the module starts running; `describe` has no broker to talk to.
    pub port: Option<Arc<dyn BrokerPort>>,
    pub inbox: Option<Arc<Inbox>>,
    /// Messages that arrived while `request` waited, delivered next.
    pub deferred: VecDeque<Message>,
    next_tag: u32,
    /// Matchtags of `request`s that timed out, oldest first: their late responses are
    /// dropped when a later `request` meets them.
    abandoned: VecDeque<u32>,
    /// Epoch ticks spent blocked in `request`, not running: they do not count against the
    /// CPU deadline.
    pub blocked_ticks: u64,
    /// The last error the module logged (a panic message, typically).
    pub last_error: Option<String>,
    /// The CPU deadline of the current call, for the failure reason.
    pub cpu: Duration,
    /// Set when the module broke the interface: the failure reason.
    pub fault: Option<Fault>,
}

impl HostState {
    pub fn new(wasi: WasiCtx, table: ResourceTable, limits: Limits) -> Self {
        HostState {
            wasi,
            table,
            limits,
            port: None,
            inbox: None,
            deferred: VecDeque::new(),
            next_tag: 1,
            abandoned: VecDeque::new(),
            blocked_ticks: 0,
            last_error: None,
            cpu: Duration::ZERO,
            fault: None,
        }
    }

    fn port(&self) -> Result<&Arc<dyn BrokerPort>, Failure> {
        self.port
            .as_ref()
            .ok_or_else(|| Failure { errnum: Errno::EAGAIN.0, text: "the module is not running yet".into() })
    }
}

impl HostState {
    /// A matchtag for `request`: 1, 2, 3, ..., skipping 0 and tags still abandoned.
    fn next_matchtag(&mut self) -> u32 {
        loop {
            let tag = self.next_tag;
            self.next_tag = tag.wrapping_add(1).max(1);
            if !self.abandoned.contains(&tag) {
                return tag;
            }
        }
    }

    /// The request with matchtag `tag` timed out: drop its response when it comes.
    fn abandon(&mut self, tag: u32) {
        if self.abandoned.len() == MAX_ABANDONED {
            self.abandoned.pop_front();
        }
        self.abandoned.push_back(tag);
    }

    /// Whether `m` is the late response of a request that timed out (forgotten as it is seen).
    fn is_late(&mut self, m: &Message) -> bool {
        if m.kind != MsgType::Response || self.abandoned.is_empty() {
            return false;
        }
        match self.abandoned.iter().position(|t| *t == m.matchtag) {
            Some(i) => {
                self.abandoned.remove(i);
                true
            }
            None => false,
        }
    }
}

/// How many matchtags of timed-out requests a module's store remembers.
const MAX_ABANDONED: usize = 1024;

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

pub fn to_wit(m: Message) -> WitMessage {
    WitMessage {
        kind: m.kind as u8,
        flags: m.flags.0,
        topic: m.topic,
        matchtag: m.matchtag,
        nodeid: m.nodeid,
        userid: m.cred.userid,
        rolemask: m.cred.rolemask,
        errnum: m.errnum,
        errstr: m.errstr,
        seq: m.seq,
        route: m.route.into_vec(),
        payload: m.payload.to_vec(),
    }
}

fn from_wit(m: WitMessage) -> Result<Message, Failure> {
    let invalid = |text: &str| Failure { errnum: Errno::EINVAL.0, text: text.to_string() };
    let kind = MsgType::from_u8(m.kind).ok_or_else(|| invalid("unknown message kind"))?;
    if m.flags & !Flags::ALL.0 != 0 {
        return Err(invalid("unknown flag bits"));
    }
    Ok(Message {
        kind,
        flags: Flags(m.flags),
        topic: m.topic,
        matchtag: m.matchtag,
        nodeid: m.nodeid,
        cred: Cred { userid: m.userid, rolemask: m.rolemask },
        errnum: m.errnum,
        errstr: m.errstr,
        seq: m.seq,
        route: Route::from_vec(m.route),
        payload: m.payload.into(),
    })
}

impl types::Host for HostState {}

impl host::Host for HostState {
    fn send(&mut self, msg: WitMessage) -> Result<(), Failure> {
        let msg = from_wit(msg)?;
        self.port()?.send(msg);
        Ok(())
    }

    fn send_all(&mut self, batch: Vec<u8>) -> wasmtime::Result<Result<(), Failure>> {
        let port = match self.port() {
            Ok(port) => port.clone(),
            Err(f) => return Ok(Err(f)),
        };
        for (i, msg) in frames(Bytes::from(batch)).enumerate() {
            match msg {
                Ok(msg) => port.send(msg),
                Err(source) => {
                    let fault = Fault::Frame { number: i + 1, source };
                    let trap = wasmtime::format_err!("{fault}");
                    self.fault = Some(fault);
                    return Err(trap);
                }
            }
        }
        Ok(Ok(()))
    }

    fn request(&mut self, topic: String, payload: Vec<u8>, timeout_ms: Option<u32>) -> Result<WitMessage, Failure> {
        self.request_on(NODEID_ANY, topic, payload, timeout_ms)
    }

    fn request_on(
        &mut self,
        nodeid: u32,
        topic: String,
        payload: Vec<u8>,
        timeout_ms: Option<u32>,
    ) -> Result<WitMessage, Failure> {
        let port = self.port()?.clone();
        let inbox =
            self.inbox.clone().ok_or_else(|| Failure { errnum: Errno::EAGAIN.0, text: "not running".into() })?;
        let tag = self.next_matchtag();
        let mut req = Message::request(topic.clone(), payload);
        req.nodeid = nodeid;
        req.matchtag = tag;
        port.send(req);
        port.flush();
        let start = Instant::now();
        let deadline = timeout_ms.map(|ms| start + Duration::from_millis(ms as u64));
        let result = loop {
            let got = inbox.recv(deadline.map(|d| d.saturating_duration_since(Instant::now())));
            match got {
                Ok(m) if m.kind == MsgType::Response && m.matchtag == tag => {
                    break match m.errnum {
                        0 => Ok(to_wit(m)),
                        e => Err(Failure { errnum: e, text: m.errstr.unwrap_or_default() }),
                    }
                }
                // The answer to a request that gave up: nobody wants it.
                Ok(m) if self.is_late(&m) => {}
                Ok(m) => self.deferred.push_back(m),
                Err(RecvError::Timeout) => {
                    self.abandon(tag);
                    let ms = timeout_ms.unwrap_or_default();
                    break Err(Failure {
                        errnum: Errno::ETIMEDOUT.0,
                        text: format!("no response from {topic} within {ms} ms"),
                    });
                }
                Err(RecvError::Closed) => {
                    break Err(Failure { errnum: Errno::ECONNRESET.0, text: "the broker closed the link".into() })
                }
            }
        };
        // Waiting is not computing: give the time back to the CPU deadline.
        self.blocked_ticks += (start.elapsed().as_nanos() / TICK.as_nanos()) as u64 + 1;
        result
    }

    fn publish(&mut self, topic: String, payload: Vec<u8>) -> Result<(), Failure> {
        self.port()?.send(Message::event(topic, payload));
        Ok(())
    }

    fn subscribe(&mut self, prefix: String) -> Result<(), Failure> {
        #[derive(serde::Serialize)]
        struct Topic<'a> {
            topic: &'a str,
        }
        let payload = Message::encode_payload(&Topic { topic: &prefix })
            .map_err(|e| Failure { errnum: Errno::EINVAL.0, text: e.to_string() })?;
        host::Host::request(self, "event.subscribe".into(), payload.to_vec(), None).map(drop)
    }

    fn log(&mut self, level: u8, text: String) {
        let level = match level {
            0..=3 => Level::Error,
            4 => Level::Warn,
            5 | 6 => Level::Info,
            _ => Level::Debug,
        };
        if level == Level::Error {
            self.last_error = Some(text.clone());
        }
        if let Some(p) = &self.port {
            p.log(level, &text);
        }
    }
}
