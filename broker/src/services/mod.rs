//! The broker's built-in services (RFC 3): `broker`, `service`, `event` are answered inline
//! on the thread that routed the request (they are cheap and never block); `module` and
//! `broker.info` go to the supervisor's thread. This file decides which, and who may call.

mod event;
mod service;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use switchboard_protocol::{Errno, Message};

use crate::router::Router;

/// A service the broker answers itself.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Builtin {
    Broker,
    Service,
    Event,
    Module,
    /// `overlay.status` (RFC 7 §6.3).
    Overlay,
}

impl Builtin {
    pub const ALL: [Builtin; 5] =
        [Builtin::Broker, Builtin::Service, Builtin::Event, Builtin::Module, Builtin::Overlay];

    pub fn service(self) -> &'static str {
        match self {
            Builtin::Broker => "broker",
            Builtin::Service => "service",
            Builtin::Event => "event",
            Builtin::Module => "module",
            Builtin::Overlay => "overlay",
        }
    }
}

/// Answer (or forward) a request addressed to a built-in service.
pub(crate) fn handle(router: &Router, builtin: Builtin, msg: Message) {
    let owner_only =
        matches!(builtin, Builtin::Module) || (builtin == Builtin::Service && msg.method() != "disconnect");
    if owner_only && !msg.cred.is_owner() {
        let text = format!("{} is for the instance owner only", msg.topic);
        return router.respond_error(&msg, Errno::EPERM, text);
    }
    match (builtin, msg.method()) {
        (Builtin::Broker, "ping") => router.respond(&msg, msg.payload.clone()),
        (Builtin::Broker, "info") | (Builtin::Module, _) => router.to_management(msg),
        (Builtin::Service, m) => service::handle(router, m, &msg),
        (Builtin::Event, m) => event::handle(router, m, &msg),
        (Builtin::Overlay, "status") => router.to_overlay(msg),
        (b, m) => {
            let text = format!("service '{}' has no method '{m}'", b.service());
            router.respond_error(&msg, Errno::ENOSYS, text)
        }
    }
}

/// Decode a request payload, answering EPROTO for the caller when it does not fit.
pub(crate) fn decode<T: DeserializeOwned>(router: &Router, msg: &Message) -> Option<T> {
    match msg.decode::<T>() {
        Ok(v) => Some(v),
        Err(e) => {
            router.respond_error(msg, Errno::EPROTO, format!("{}: malformed request payload: {e}", msg.topic));
            None
        }
    }
}

/// Respond with `value` as a msgpack map.
pub(crate) fn reply<T: Serialize>(router: &Router, msg: &Message, value: &T) {
    match Message::encode_payload(value) {
        Ok(p) => router.respond(msg, p),
        Err(e) => router.respond_error(msg, Errno::EPROTO, format!("could not encode the response: {e}")),
    }
}

/// An empty map: the payload of a response that says only "done".
pub(crate) fn empty() -> Bytes {
    Bytes::from_static(&[0x80])
}
