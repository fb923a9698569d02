//! `Actor`: the high-level way to write a module. An author names handlers in a method
//! table; `run_actor` receives, dispatches, responds, ticks and shuts down. It is the same
//! loop for every module kind: only the `Link` under the `Handle` differs.
//!
//! A handler takes its request in one of two forms (`IntoHandler`): typed, as any
//! `Deserialize` type the library decodes from the payload (a payload that does not fit is
//! answered EPROTO naming the method and the field, and the handler never runs), or raw, as
//! the `&Message` itself (for raw payloads, streaming, credentials).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::handle::Handle;
use switchboard_protocol::declare::{Declarations, EventDecl, MethodDecl};
use switchboard_protocol::{Errno, Error, Flags, Level, Message, MsgType, SHUTDOWN};

/// What a handler hands back.
pub enum Reply {
    /// Respond with this raw payload.
    Payload(Bytes),
    /// Respond with this error.
    Error(Error),
    /// The handler responded itself (or will: streaming), or no response is due.
    Done,
}

/// Anything a handler may return: `Result<T: Serialize, Error>` or a `Reply`.
pub trait IntoReply {
    fn into_reply(self) -> Reply;
}

impl IntoReply for Reply {
    fn into_reply(self) -> Reply {
        self
    }
}

impl<T: Serialize> IntoReply for Result<T, Error> {
    fn into_reply(self) -> Reply {
        match self.and_then(|v| Ok(Message::encode_payload(&v)?)) {
            Ok(p) => Reply::Payload(p),
            Err(e) => Reply::Error(e),
        }
    }
}

type Handler<A> = Box<dyn Fn(&mut A, &Handle, &Message) -> Reply>;

/// A function `Methods::on` takes as a handler: `Fn(&mut A, &Handle, T) -> R` with `T:
/// Deserialize` (typed: the request's payload decoded), or `Fn(&mut A, &Handle, &Message) ->
/// R` (raw), where `R` is `Result<impl Serialize, Error>` or a `Reply`. `Form` tells the two
/// apart; authors never name it. A closure must name its argument types (`|c: &mut Counter,
/// _: &Handle, req: Incr|`); a method (`Self::get`) needs nothing.
pub trait IntoHandler<A, Form> {
    #[doc(hidden)]
    fn into_handler(self) -> Handler<A>;
}

/// The raw form's marker.
#[doc(hidden)]
pub struct Raw;

/// The typed form's marker.
#[doc(hidden)]
pub struct Typed<T>(PhantomData<fn() -> T>);

impl<A, R, F> IntoHandler<A, Raw> for F
where
    R: IntoReply,
    F: Fn(&mut A, &Handle, &Message) -> R + 'static,
{
    fn into_handler(self) -> Handler<A> {
        Box::new(move |a, h, m| self(a, h, m).into_reply())
    }
}

impl<A, R, T, F> IntoHandler<A, Typed<T>> for F
where
    R: IntoReply,
    T: DeserializeOwned,
    F: Fn(&mut A, &Handle, T) -> R + 'static,
{
    fn into_handler(self) -> Handler<A> {
        Box::new(move |a, h, m| match decode_request(m) {
            Ok(req) => self(a, h, req).into_reply(),
            Err(e) => Reply::Error(e),
        })
    }
}

/// A request's payload as `T`, or EPROTO naming the topic and, when it is one, the field:
/// `kvs.get: malformed request: key: invalid type: integer `3`, expected a string`.
pub fn decode_request<T: DeserializeOwned>(msg: &Message) -> Result<T, Error> {
    let mut de = rmp_serde::Deserializer::new(&msg.payload[..]);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let at = match e.path().to_string() {
            p if p == "." => String::new(),
            p => format!("{p}: "),
        };
        Error::new(Errno::EPROTO, format!("{}: malformed request: {at}{}", msg.topic, e.inner()))
    })
}

struct Method<A> {
    handler: Handler<A>,
    guest: bool,
    doc: String,
}

/// An actor's method table: method name (the part of the topic after the service) to
/// handler, and the events the actor publishes. What it declares is known without running
/// the module (`module.info`, RFC 3 §3.11): every kind's export reads it from here.
pub struct Methods<A> {
    table: HashMap<String, Method<A>>,
    /// Answers methods the table does not name.
    otherwise: Option<Method<A>>,
    /// The method `doc` describes: the one added last.
    last: Option<String>,
    /// Declared events: topic and doc.
    events: Vec<EventDecl>,
    /// Methods added again under a name already in the table (the later one handles it):
    /// declared too, so that the broker refuses the module naming the mistake
    /// (`method 'get' is declared twice`) instead of one handler silently replacing another.
    twice: Vec<MethodDecl>,
}

impl<A> Default for Methods<A> {
    fn default() -> Self {
        Methods { table: HashMap::new(), otherwise: None, last: None, events: Vec::new(), twice: Vec::new() }
    }
}

impl<A: 'static> Methods<A> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Handle `service.name`, typed or raw (`IntoHandler`); only the instance owner may call it.
    pub fn on<Form>(self, name: &str, f: impl IntoHandler<A, Form>) -> Self {
        self.add(name, f.into_handler(), false)
    }

    /// Handle `service.name`; guests (other local users) may call it too.
    pub fn on_guest<Form>(self, name: &str, f: impl IntoHandler<A, Form>) -> Self {
        self.add(name, f.into_handler(), true)
    }

    /// Handle every method the table does not name (guests included: check `msg.cred`).
    pub fn otherwise<Form>(mut self, f: impl IntoHandler<A, Form>) -> Self {
        self.otherwise = Some(Method { handler: f.into_handler(), guest: true, doc: String::new() });
        self.last = None;
        self
    }

    /// One line saying what the method added last does, for `SERVICE.methods` and `modctl
    /// methods` (RFC 3 §5.1): `.on("get", Self::get).doc("the value of a key")`.
    pub fn doc(mut self, text: &str) -> Self {
        if let Some(m) = self.last.as_ref().and_then(|n| self.table.get_mut(n)) {
            m.doc = text.to_string();
        }
        self
    }

    /// Declare an event the actor publishes: its whole topic and one line saying when and
    /// with what payload (`.event("kvs.changed", "a key was put or deleted: {key, op}")`).
    /// A declaration only: publishing is still `Handle::publish`. A `doc` after it documents
    /// nothing (the event has its own).
    pub fn event(mut self, topic: &str, doc: &str) -> Self {
        self.events.push(EventDecl { name: topic.to_string(), doc: doc.to_string() });
        self.last = None;
        self
    }

    /// What the table declares, as `SERVICE.methods` answers it and `module.info` shows it:
    /// methods and events in byte order of their names.
    pub fn describe(&self) -> Declarations {
        let mut methods: Vec<MethodDecl> = self
            .table
            .iter()
            .map(|(name, m)| MethodDecl { name: name.clone(), guest: m.guest, doc: m.doc.clone() })
            .chain(self.twice.iter().cloned())
            .collect();
        methods.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        let mut events = self.events.clone();
        events.sort_by(|a, b| a.name.cmp(&b.name));
        Declarations { methods, otherwise: self.otherwise.is_some(), events }
    }

    fn add(mut self, name: &str, handler: Handler<A>, guest: bool) -> Self {
        if let Some(earlier) = self.table.insert(name.to_string(), Method { handler, guest, doc: String::new() }) {
            self.twice.push(MethodDecl { name: name.to_string(), guest: earlier.guest, doc: earlier.doc });
        }
        self.last = Some(name.to_string());
        self
    }
}

/// A module written as handlers. Every method but `methods` has a default.
pub trait Actor: Sized + 'static {
    /// Build the actor from the handle's arguments and configuration. An `Err` fails the load.
    fn init(handle: &Handle) -> Result<Self, Error>;

    fn methods() -> Methods<Self>;

    /// An event matching one of the module's subscriptions.
    fn event(&mut self, _handle: &Handle, _msg: &Message) {}

    /// A client that used this service disconnected (Flux's `service.disconnect`): drop its state.
    /// `msg.route` and `msg.cred` identify the client.
    fn disconnect(&mut self, _handle: &Handle, _msg: &Message) {}

    /// How often `tick` runs; None = never.
    fn tick_interval(&self) -> Option<Duration> {
        None
    }

    fn tick(&mut self, _handle: &Handle) {}

    /// The site's configuration table changed (`modctl apply`, `modctl config reload`):
    /// `handle.config()` already returns the new one. An `Err` keeps the old table and is
    /// the answer the broker gets. Not overriding it answers ENOSYS, and the broker reloads
    /// the module instead.
    fn reconfigure(&mut self, handle: &Handle) -> Result<(), Error> {
        Err(Error::new(Errno::ENOSYS, format!("module '{}' does not take a config-update", handle.name())))
    }

    /// The broker asked the module to stop. It may still send and receive here.
    fn shutdown(&mut self, _handle: &Handle) {}
}

/// Run `A` on `handle` until shutdown. `Err` means the module failed (the reason is logged).
pub fn run_actor<A: Actor>(handle: &Handle) -> Result<(), Error> {
    let mut actor = A::init(handle)?;
    let methods = A::methods();
    let mut next_tick = actor.tick_interval().map(|p| Instant::now() + p);
    loop {
        let timeout = next_tick.map(|t| t.saturating_duration_since(Instant::now()));
        let msg = match handle.recv_timeout(timeout) {
            Ok(Some(m)) => m,
            Ok(None) => {
                actor.tick(handle);
                next_tick = actor.tick_interval().map(|p| Instant::now() + p);
                continue;
            }
            // The broker is gone: nothing left to serve.
            Err(_) => return Ok(()),
        };
        match msg.kind {
            MsgType::Request => dispatch(&mut actor, &methods, handle, &msg),
            MsgType::Event => actor.event(handle, &msg),
            MsgType::Control if msg.topic == SHUTDOWN => {
                actor.shutdown(handle);
                return Ok(());
            }
            // A response to a request the module sent with `send` and did not wait for (the
            // handle already dropped late answers of rpcs that gave up), or a control message
            // for a later protocol revision: nothing to do.
            MsgType::Response | MsgType::Control => {}
        }
    }
}

/// `SERVICE.config-update` (RFC 3 §5.2): the payload is the new table; the actor takes it
/// or the old one stays.
fn reconfigure<A: Actor>(actor: &mut A, h: &Handle, msg: &Message) -> Result<(), Error> {
    if !msg.cred.is_owner() {
        return Err(Error::new(Errno::EPERM, format!("{} is for the instance owner only", msg.topic)));
    }
    if rmpv::decode::read_value(&mut &msg.payload[..]).map_or(true, |v| !v.is_map()) {
        return Err(Error::new(Errno::EPROTO, "config-update: the payload must be a msgpack map"));
    }
    let old = h.replace_config(msg.payload.clone());
    actor.reconfigure(h).inspect_err(|_| {
        h.replace_config(old);
    })
}

pub(crate) fn dispatch<A: Actor>(actor: &mut A, methods: &Methods<A>, h: &Handle, msg: &Message) {
    let method = msg.method();
    if method == "disconnect" {
        actor.disconnect(h, msg);
        return;
    }
    // `config-update` is the helper's unless the table names it (a catch-all does not).
    let reply = if method == "config-update" && !methods.table.contains_key(method) {
        match reconfigure(actor, h, msg) {
            Ok(()) => Reply::Payload(Bytes::from_static(&[0x80])),
            Err(e) => Reply::Error(e),
        }
    } else if method == "methods" && !methods.table.contains_key(method) {
        // What the table declares (RFC 3 §5.1), a catch-all or not; guests may ask.
        Ok(methods.describe()).into_reply()
    } else {
        match methods.table.get(method).or(methods.otherwise.as_ref()) {
            // Every module answers `ping` (as Flux's do) unless it defines its own.
            None if method == "ping" => Reply::Payload(msg.payload.clone()),
            None => {
                let mut known: Vec<&str> = methods.table.keys().map(String::as_str).collect();
                known.sort_unstable();
                let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
                let text = format!("service '{}' has no method '{method}' (its methods: {known})", h.name());
                Reply::Error(Error::new(Errno::ENOSYS, text))
            }
            Some(m) if !m.guest && !msg.cred.is_owner() => {
                Reply::Error(Error::new(Errno::EPERM, format!("{} is for the instance owner only", msg.topic)))
            }
            Some(m) => (m.handler)(actor, h, msg),
        }
    };
    let sent = match reply {
        // A handler that answers a streaming request once has said all it will: end the
        // stream (RFC 1), or the requester and the broker would wait for more.
        Reply::Payload(p) if msg.flags.contains(Flags::STREAMING) => {
            h.respond_raw(msg, p).and_then(|()| h.respond_error(msg, Errno::ENODATA, "end of stream"))
        }
        Reply::Payload(p) => h.respond_raw(msg, p),
        Reply::Error(e) => h.respond_error(msg, e.errnum, &e.text),
        Reply::Done => Ok(()),
    };
    if let Err(e) = sent {
        h.log(Level::Warn, &format!("could not respond to {}: {e}", msg.topic));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Spec {
        size_gb: u64,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Create {
        name: String,
        spec: Spec,
    }

    fn req(v: serde_json::Value) -> Message {
        Message::request("res.create", Bytes::from(rmp_serde::to_vec_named(&v).unwrap()))
    }

    #[test]
    fn a_method_added_twice_is_declared_twice_so_the_broker_refuses_it() {
        let methods = Methods::<()>::new()
            .on("get", |_: &mut (), _: &Handle, _: &Message| Reply::Done)
            .on("get", |_: &mut (), _: &Handle, _: &Message| Reply::Done);
        let declared = methods.describe();
        assert_eq!(declared.methods.len(), 2);
        assert_eq!(declared.checked().unwrap_err().to_string(), "method 'get' is declared twice");
    }

    #[test]
    fn a_request_that_does_not_fit_is_eproto_naming_the_method_and_the_field() {
        let ok: Create = decode_request(&req(serde_json::json!({"name": "v", "spec": {"size_gb": 10}}))).unwrap();
        assert_eq!(ok.spec.size_gb, 10);
        let e =
            decode_request::<Create>(&req(serde_json::json!({"name": "v", "spec": {"size_gb": "ten"}}))).unwrap_err();
        assert_eq!(e.errnum, Errno::EPROTO);
        // rmp_serde names the msgpack type it found where a number was wanted.
        assert!(e.text.starts_with("res.create: malformed request: spec.size_gb: wrong msgpack marker"), "{}", e.text);
        let e = decode_request::<Create>(&req(serde_json::json!({"spec": {"size_gb": 1}}))).unwrap_err();
        assert!(e.text.contains("missing field `name`"), "{}", e.text);
        let e = decode_request::<Create>(&Message::request("res.create", Bytes::from_static(b"\xc1"))).unwrap_err();
        assert!(e.text.starts_with("res.create: malformed request: "), "{}", e.text);
    }
}
