//! `module.trace` (RFC 3 §3.14): copies of the messages that pass to and from modules,
//! streamed to whoever asked, filtered by module name, topic glob and type. Names are
//! matched when a message passes, so a trace may name a module that is not loaded yet.
//!
//! When nobody traces, the cost on the message path is one relaxed atomic load. A trace
//! record is never itself traced (a module tracing itself would loop).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;
use switchboard_protocol::mgmt::{TraceArgs, TraceRecord};
use switchboard_protocol::{Message, MsgType};

use super::EndpointId;

/// How much of a payload a record carries.
const PAYLOAD_PREFIX: usize = 256;

#[derive(Default)]
pub struct Tracers {
    active: AtomicBool,
    list: RwLock<Vec<Tracer>>,
}

struct Tracer {
    /// The `module.trace` request: its route leads back to the tracer.
    request: Message,
    names: Vec<String>,
    topic: Option<String>,
    /// Bit `1 << kind as u8` for each type wanted; 0: all.
    types: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    In,
    Out,
}

thread_local! {
    /// Set while this thread routes a trace record.
    static EMITTING: Cell<bool> = const { Cell::new(false) };
}

impl Tracers {
    #[inline]
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Start a trace for `request` (which must want a streaming response).
    pub fn add(&self, request: Message, args: TraceArgs) -> Result<(), String> {
        const KINDS: [MsgType; 4] = [MsgType::Request, MsgType::Response, MsgType::Event, MsgType::Control];
        let mut types = 0u8;
        for t in &args.types {
            let kind = KINDS
                .into_iter()
                .find(|k| k.as_str() == t.as_str())
                .ok_or_else(|| format!("unknown message type '{t}' (request, response, event, control)"))?;
            types |= kind as u8;
        }
        let mut list = self.list.write();
        list.push(Tracer { request, names: args.names, topic: args.topic, types });
        self.active.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// The endpoint `id` left: end the traces it asked for.
    pub fn remove_endpoint(&self, id: EndpointId) {
        if !self.active() {
            return;
        }
        let mut list = self.list.write();
        list.retain(|t| t.request.route.last() != Some(&id));
        self.active.store(!list.is_empty(), Ordering::Relaxed);
    }

    /// The trace responses `msg` (passing `dir` module `module`) calls for.
    pub fn records(&self, module: &str, dir: Dir, msg: &Message) -> Vec<Message> {
        if EMITTING.with(Cell::get) {
            return Vec::new();
        }
        let list = self.list.read();
        let mut out = Vec::new();
        let mut payload = None;
        for t in list.iter() {
            let wanted = (t.names.is_empty() || t.names.iter().any(|n| n == module))
                && (t.types == 0 || t.types & msg.kind as u8 != 0)
                && t.topic.as_deref().is_none_or(|g| glob(g.as_bytes(), msg.topic.as_bytes()));
            if !wanted {
                continue;
            }
            let p = payload.get_or_insert_with(|| record(module, dir, msg));
            out.push(t.request.response(p.clone()));
        }
        out
    }

    /// Run `f` (which routes trace records) with tracing of its messages off.
    pub fn emitting(f: impl FnOnce()) {
        EMITTING.with(|e| e.set(true));
        f();
        EMITTING.with(|e| e.set(false));
    }
}

fn record(module: &str, dir: Dir, msg: &Message) -> bytes::Bytes {
    let r = TraceRecord {
        time_us: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64),
        module: module.to_string(),
        dir: if dir == Dir::In { "in" } else { "out" }.to_string(),
        kind: msg.kind.as_str().to_string(),
        topic: msg.topic.clone(),
        matchtag: msg.matchtag,
        userid: msg.cred.userid,
        errnum: msg.errnum,
        errstr: msg.errstr.clone(),
        size: msg.payload.len() as u64,
        payload: msg.payload[..msg.payload.len().min(PAYLOAD_PREFIX)].to_vec(),
    };
    Message::encode_payload(&r).unwrap_or_default()
}

/// `*` matches any run of bytes, `?` any one byte, anything else itself.
pub fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("kvs.*", "kvs.get", true),
            ("kvs.*", "kvs", false),
            ("*.get", "kvs.get", true),
            ("k?s.get", "kvs.get", true),
            ("*", "", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("kvs.get", "kvs.gets", false),
        ] {
            assert_eq!(glob(p.as_bytes(), t.as_bytes()), want, "{p} ~ {t}");
        }
    }
}
