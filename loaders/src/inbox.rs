//! `Inbox`: a module's queue of messages from the broker. Any thread pushes; the module's
//! thread takes, blocking on a condition variable when it is empty.
//!
//! Waking a sleeping thread costs several microseconds (more when it is on another core of
//! a virtual machine), as much as everything else on a message's way through the broker. So
//! a module whose messages have lately been arriving within `SPIN` of each other (a client
//! calling it back to back) watches the queue for up to `SPIN` before it sleeps, and takes
//! the next message without being woken. A module that waits longer sleeps at once: an idle
//! module costs nothing. A watch that comes to nothing (the sender shares our core, or the
//! pace slowed) stops the watching for a while. It never yields: on a busy machine a yield
//! hands the core to somebody else.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use switchboard_module_api::proto::MsgType;
use switchboard_module_api::Message;

/// How long a busy module watches its queue before it sleeps.
const SPIN: Duration = Duration::from_micros(50);
/// After a watch that came to nothing, this many waits sleep at once.
const BACKOFF: i32 = 32;

#[derive(Default)]
pub struct Inbox {
    state: Mutex<State>,
    ready: Condvar,
    /// The queue's length, readable without the lock (for the watch before sleeping).
    queued: AtomicUsize,
    /// Positive: watch before sleeping. Each short wait adds one (up to 1), a long one
    /// stops the watching, a watch that came to nothing sets it to -BACKOFF.
    pace: AtomicI32,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Message>,
    /// The module left: nothing more is accepted, and waiters return.
    closed: bool,
    /// A successor takes new requests: only responses, events and control messages are
    /// accepted (the instance may still be finalizing and waiting for answers).
    sealed: bool,
    /// The taker is blocked in `recv`: a push must wake it.
    waiting: bool,
}

/// Why `recv` returned without a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvError {
    Timeout,
    Closed,
}

impl Inbox {
    /// Queue `msg`; it comes back if the inbox is closed, or sealed and `msg` is a request.
    pub fn push(&self, msg: Message) -> Result<(), Box<Message>> {
        self.push_with(msg, |_| {})
    }

    /// `push`, calling `accepted` on `msg` under the queue's lock once it is known to be
    /// accepted and before the module can take it (the broker notes a request in flight so).
    pub fn push_with(&self, msg: Message, accepted: impl FnOnce(&Message)) -> Result<(), Box<Message>> {
        let st = self.state.lock();
        if st.closed || (st.sealed && msg.kind == MsgType::Request) {
            return Err(Box::new(msg));
        }
        accepted(&msg);
        self.enqueue(st, msg);
        Ok(())
    }

    /// Queue `last` (a shutdown request) and refuse every request after it, in one step: what
    /// was queued before it is this instance's to answer, what comes after is its successor's.
    pub fn seal(&self, last: Message) {
        let mut st = self.state.lock();
        st.sealed = true;
        if !st.closed {
            self.enqueue(st, last);
        }
    }

    /// Append `msg` under the lock `st` holds, and wake the taker if it sleeps.
    fn enqueue(&self, mut st: parking_lot::MutexGuard<'_, State>, msg: Message) {
        st.queue.push_back(msg);
        self.queued.store(st.queue.len(), Ordering::Release);
        let wake = st.waiting;
        drop(st);
        if wake {
            self.ready.notify_one();
        }
    }

    fn pop(&self, st: &mut State) -> Option<Message> {
        let m = st.queue.pop_front()?;
        self.queued.store(st.queue.len(), Ordering::Release);
        Some(m)
    }

    /// Watch the queue for up to `SPIN` (bounded by `deadline`); true if something came.
    fn watch(&self, deadline: Option<Instant>) -> bool {
        let start = Instant::now();
        let until = deadline.map_or(start + SPIN, |d| d.min(start + SPIN));
        let mut spins = 0u32;
        loop {
            if self.queued.load(Ordering::Acquire) > 0 {
                return true;
            }
            std::hint::spin_loop();
            spins += 1;
            // Reading the clock costs more than a spin: look at it now and then.
            if spins.is_multiple_of(64) && Instant::now() >= until {
                return false;
            }
        }
    }

    /// The next message, waiting up to `timeout` (None = until one comes or the inbox closes).
    pub fn recv(&self, timeout: Option<Duration>) -> Result<Message, RecvError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.state.lock();
        if let Some(m) = self.pop(&mut st) {
            return Ok(m);
        }
        let began = Instant::now();
        let mut watched = false;
        if self.pace.load(Ordering::Relaxed) > 0 && !st.closed {
            drop(st);
            if !self.watch(deadline) {
                self.pace.store(-BACKOFF, Ordering::Relaxed);
            }
            watched = true;
            st = self.state.lock();
        }
        loop {
            if let Some(m) = self.pop(&mut st) {
                if !watched {
                    let pace = self.pace.load(Ordering::Relaxed);
                    let next = if began.elapsed() < SPIN { (pace + 1).min(1) } else { pace.min(0) };
                    self.pace.store(next, Ordering::Relaxed);
                }
                return Ok(m);
            }
            if st.closed {
                return Err(RecvError::Closed);
            }
            st.waiting = true;
            let timed_out = match deadline {
                Some(d) => self.ready.wait_until(&mut st, d).timed_out(),
                None => {
                    self.ready.wait(&mut st);
                    false
                }
            };
            st.waiting = false;
            if timed_out && st.queue.is_empty() {
                return Err(if st.closed { RecvError::Closed } else { RecvError::Timeout });
            }
        }
    }

    /// The next message if one is queued.
    pub fn try_recv(&self) -> Result<Option<Message>, RecvError> {
        let mut st = self.state.lock();
        match self.pop(&mut st) {
            Some(m) => Ok(Some(m)),
            None if st.closed => Err(RecvError::Closed),
            None => Ok(None),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Refuse further messages, drop the queued ones, and wake the taker.
    pub fn close(&self) {
        let mut st = self.state.lock();
        st.closed = true;
        st.queue.clear();
        self.queued.store(0, Ordering::Release);
        drop(st);
        self.ready.notify_all();
    }

    /// Take everything queued, leaving the inbox as it is otherwise (a reload hands what the
    /// old instance never took to the new one).
    pub fn take_all(&self) -> Vec<Message> {
        let mut st = self.state.lock();
        self.queued.store(0, Ordering::Release);
        st.queue.drain(..).collect()
    }

    /// Drop what is queued (the module left; its requests are answered elsewhere).
    pub fn discard(&self) {
        let mut st = self.state.lock();
        st.queue.clear();
        self.queued.store(0, Ordering::Release);
    }
}
