//! The broker side of a module's inbox: the queue its messages wait in, and its counters.
//! Which requests it owes answers to is the endpoint's `Inflight`, not the mailbox's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use switchboard_loaders::Inbox;
use switchboard_protocol::Message;

use switchboard_module_api::clock;

pub struct Mailbox {
    inbox: Arc<Inbox>,
    pub msgs_in: AtomicU64,
    pub msgs_out: AtomicU64,
    /// `clock::now_ms()` of the last message in or out.
    last_active: AtomicU64,
}

impl Default for Mailbox {
    fn default() -> Self {
        // A new module has been idle since now, not since the broker started.
        Mailbox {
            inbox: Arc::default(),
            msgs_in: AtomicU64::new(0),
            msgs_out: AtomicU64::new(0),
            last_active: AtomicU64::new(clock::now_ms()),
        }
    }
}

impl Mailbox {
    /// The module's end, for its `ModuleLink`.
    pub fn inbox(&self) -> Arc<Inbox> {
        self.inbox.clone()
    }

    pub fn queue_depth(&self) -> usize {
        self.inbox.len()
    }

    pub fn idle_ms(&self) -> u64 {
        clock::now_ms().saturating_sub(self.last_active.load(Ordering::Relaxed))
    }

    fn touch(&self) {
        let now = clock::now_ms();
        // Skip the store (and the cache-line traffic) when nothing changed.
        if self.last_active.load(Ordering::Relaxed) != now {
            self.last_active.store(now, Ordering::Relaxed);
        }
    }

    /// Queue `msg`; it comes back when the inbox is closed (the endpoint's in-flight record
    /// answers the sender) or sealed for a successor (the router hands it on).
    pub fn push(&self, msg: Message) -> Result<(), Box<Message>> {
        self.push_with(msg, |_| {})
    }

    /// `push`, with `accepted` called once it is accepted, before the module can take it.
    pub fn push_with(&self, msg: Message, accepted: impl FnOnce(&Message)) -> Result<(), Box<Message>> {
        self.inbox.push_with(msg, accepted)?;
        self.msgs_in.fetch_add(1, Ordering::Relaxed);
        self.touch();
        Ok(())
    }

    /// The module sent a message.
    pub fn count_out(&self) {
        self.msgs_out.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }

    /// Ask the module to stop.
    pub fn shutdown(&self) {
        let _ = self.inbox.push(Self::shutdown_message());
    }

    /// Ask the module to stop, and refuse requests from now on: its successor takes them.
    pub fn shutdown_for_successor(&self) {
        self.inbox.seal(Self::shutdown_message());
    }

    /// What is queued and not yet taken.
    pub fn take_all(&self) -> Vec<Message> {
        self.inbox.take_all()
    }

    fn shutdown_message() -> Message {
        Message::control(switchboard_protocol::SHUTDOWN, bytes::Bytes::new())
    }

    /// The module left or was detached: refuse and drop whatever comes.
    pub fn close(&self) {
        self.inbox.close();
    }
}
