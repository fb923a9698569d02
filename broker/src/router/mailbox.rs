//! The broker side of a module's inbox: the channel its messages queue in, and its counters.
//! Which requests it owes answers to is the endpoint's `Inflight`, not the mailbox's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use switchboard_module_api::Message;

pub struct Mailbox {
    tx: Sender<Message>,
    rx: Receiver<Message>,
    pub msgs_in: AtomicU64,
    pub msgs_out: AtomicU64,
    /// Milliseconds since `epoch` of the last message in or out.
    last_active: AtomicU64,
    epoch: Instant,
}

impl Default for Mailbox {
    fn default() -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        Mailbox {
            tx,
            rx,
            msgs_in: AtomicU64::new(0),
            msgs_out: AtomicU64::new(0),
            last_active: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl Mailbox {
    /// The receiving end, for the module's `ModuleLink`.
    pub fn receiver(&self) -> Receiver<Message> {
        self.rx.clone()
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

    pub fn push(&self, msg: Message) {
        self.msgs_in.fetch_add(1, Ordering::Relaxed);
        self.touch();
        let _ = self.tx.send(msg);
    }

    /// The module sent a message.
    pub fn count_out(&self) {
        self.msgs_out.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }

    /// Ask the module to stop.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Message::control(switchboard_module_api::SHUTDOWN, bytes::Bytes::new()));
    }

    /// Drop whatever is queued (the module left; its requests are answered by `Inflight`).
    pub fn discard(&self) {
        while self.rx.try_recv().is_ok() {}
    }
}
