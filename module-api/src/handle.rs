//! `Handle`: a module's low-level view of the broker (Flux's `flux_t`): receive, send,
//! respond, blocking rpc, publish, subscribe, its own name, arguments and configuration.
//!
//! A handle belongs to the module's thread. It holds no broker state: everything it does is a
//! message on its `Link`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use crate::error::Error;
use crate::link::{Level, Link, LinkError};
use crate::proto::{Errno, Flags, Message, MsgType};

/// The control topic the broker sends to ask a module to stop (RFC 1 §5).
pub const SHUTDOWN: &str = "shutdown";

pub struct Handle {
    link: RefCell<Box<dyn Link>>,
    name: String,
    args: Vec<String>,
    /// Replaced by a `config-update` the actor accepts.
    config: RefCell<Bytes>,
    /// Messages that arrived while `rpc` waited for its response, delivered next by `recv`.
    deferred: RefCell<VecDeque<Message>>,
    next_tag: Cell<u32>,
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

    /// The next message, waiting up to `timeout` (None = forever).
    pub fn recv_timeout(&self, timeout: Option<Duration>) -> Result<Option<Message>, LinkError> {
        if let Some(m) = self.deferred.borrow_mut().pop_front() {
            return Ok(Some(m));
        }
        self.link.borrow_mut().recv(timeout)
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

    /// Send a request to `topic` and wait for its response; other messages that arrive
    /// meanwhile are kept for `recv`. An error response becomes `Err`.
    pub fn rpc<T: Serialize + ?Sized>(&self, topic: &str, value: &T) -> Result<Message, Error> {
        self.rpc_raw(topic, Message::encode_payload(value)?, None)
    }

    /// `rpc` with a raw payload and an optional deadline (ETIMEDOUT when it passes).
    pub fn rpc_raw(&self, topic: &str, payload: Bytes, timeout: Option<Duration>) -> Result<Message, Error> {
        let tag = self.next_matchtag();
        let mut req = Message::request(topic, payload);
        req.matchtag = tag;
        if let Some(answer) = self.link.borrow_mut().request(&req, timeout) {
            return answer;
        }
        self.send(&req).map_err(link_err)?;
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                return Err(Error::new(Errno::ETIMEDOUT, format!("no response from {topic}")));
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
            self.deferred.borrow_mut().push_back(msg);
        }
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
        self.rpc("service.add", &ServiceArg { service }).map(drop)
    }

    pub fn remove_service(&self, service: &str) -> Result<(), Error> {
        self.rpc("service.remove", &ServiceArg { service }).map(drop)
    }

    /// Send a request that wants no response.
    pub fn notify<T: Serialize + ?Sized>(&self, topic: &str, value: &T) -> Result<(), Error> {
        let mut req = Message::request(topic, Message::encode_payload(value)?);
        req.flags = Flags::NO_RESPONSE;
        self.send(&req).map_err(link_err)
    }

    fn next_matchtag(&self) -> u32 {
        let tag = self.next_tag.get();
        self.next_tag.set(tag.wrapping_add(1).max(1));
        tag
    }
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
