//! The broker side of a module's inbox: the channel, the requests the module has not yet
//! answered, and its counters. It guarantees that every request delivered to a module gets
//! exactly one final response: from the module, or an error from `close` when the module
//! leaves running by any path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use switchboard_module_api::proto::{Flags, MsgType, Route};
use switchboard_module_api::{Errno, Message};

/// A request awaiting its final response: who asked (route) and with which matchtag.
type InflightKey = (Route, u32);

pub struct Mailbox {
    name: String,
    tx: Sender<Message>,
    rx: Receiver<Message>,
    inflight: Mutex<HashMap<InflightKey, String>>,
    closed: AtomicBool,
    /// Why the module left running, for the errors `close` sends.
    exit_reason: Mutex<String>,
    pub msgs_in: AtomicU64,
    pub msgs_out: AtomicU64,
    /// Milliseconds since `epoch` of the last message in or out.
    last_active: AtomicU64,
    epoch: Instant,
}

impl Mailbox {
    pub fn new(name: &str) -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        Mailbox {
            name: name.to_string(),
            tx,
            rx,
            inflight: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            exit_reason: Mutex::new(String::new()),
            msgs_in: AtomicU64::new(0),
            msgs_out: AtomicU64::new(0),
            last_active: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The receiving end, for the module's `ModuleLink`.
    pub fn receiver(&self) -> Receiver<Message> {
        self.rx.clone()
    }

    /// The module left running or was detached: nothing more is delivered to or from it.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    pub fn queue_depth(&self) -> usize {
        self.rx.len()
    }

    pub fn idle_ms(&self) -> u64 {
        (self.epoch.elapsed().as_millis() as u64).saturating_sub(self.last_active.load(Ordering::Relaxed))
    }

    fn touch(&self) {
        self.last_active.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Queue `msg` for the module. Returns the error responses owed if the module had
    /// already left (the caller routes them).
    pub fn deliver(&self, msg: Message) -> Vec<Message> {
        if msg.wants_response() {
            self.inflight.lock().insert((msg.route.clone(), msg.matchtag), msg.topic.clone());
        }
        self.msgs_in.fetch_add(1, Ordering::Relaxed);
        self.touch();
        let _ = self.tx.send(msg);
        // Pairs with the store in `close`: either close's sweep sees our message, or we see
        // the flag and sweep ourselves.
        if self.closed.load(Ordering::SeqCst) {
            self.sweep()
        } else {
            Vec::new()
        }
    }

    /// The module sent `msg`: count it, and retire the request it answers.
    pub fn sent(&self, msg: &Message) {
        self.msgs_out.fetch_add(1, Ordering::Relaxed);
        self.touch();
        let last_of_stream = !msg.flags.contains(Flags::STREAMING) || msg.is_error();
        if msg.kind == MsgType::Response && last_of_stream {
            self.inflight.lock().remove(&(msg.route.clone(), msg.matchtag));
        }
    }

    /// Ask the module to stop.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Message::control(switchboard_module_api::SHUTDOWN, bytes::Bytes::new()));
    }

    /// The module left running: nothing more will be delivered. Returns an error response
    /// for every request it had not answered.
    pub fn close(&self, reason: &str) -> Vec<Message> {
        *self.exit_reason.lock() = reason.to_string();
        self.closed.store(true, Ordering::SeqCst);
        self.sweep()
    }

    fn sweep(&self) -> Vec<Message> {
        while self.rx.try_recv().is_ok() {}
        let reason = self.exit_reason.lock().clone();
        let pending: Vec<(InflightKey, String)> = self.inflight.lock().drain().collect();
        pending
            .into_iter()
            .map(|((route, matchtag), topic)| {
                let mut req = Message::request(topic, bytes::Bytes::new());
                req.route = route;
                req.matchtag = matchtag;
                req.error_response(
                    Errno::EHOSTUNREACH,
                    format!("module '{}' {reason} before answering {}", self.name, req.topic),
                )
            })
            .collect()
    }
}
