//! `Inbox`: a module's queue of messages from the broker. Any thread pushes; the module's
//! thread takes, blocking on a condition variable when it is empty. It never spins or
//! yields while it waits: on a busy machine a yield hands the core to somebody else, and a
//! module that is waiting has nothing to compute.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use switchboard_module_api::Message;

#[derive(Default)]
pub struct Inbox {
    state: Mutex<State>,
    ready: Condvar,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Message>,
    /// The module left: nothing more is accepted, and waiters return.
    closed: bool,
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
    /// Queue `msg`; gives it back if the inbox is closed.
    pub fn push(&self, msg: Message) -> Result<(), Message> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(msg);
        }
        st.queue.push_back(msg);
        let wake = st.waiting;
        drop(st);
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// The next message, waiting up to `timeout` (None = until one comes or the inbox closes).
    pub fn recv(&self, timeout: Option<Duration>) -> Result<Message, RecvError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.state.lock();
        loop {
            if let Some(m) = st.queue.pop_front() {
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
        match st.queue.pop_front() {
            Some(m) => Ok(Some(m)),
            None if st.closed => Err(RecvError::Closed),
            None => Ok(None),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.state.lock().queue.is_empty()
    }

    pub fn len(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// Refuse further messages, drop the queued ones, and wake the taker.
    pub fn close(&self) {
        let mut st = self.state.lock();
        st.closed = true;
        st.queue.clear();
        drop(st);
        self.ready.notify_all();
    }

    /// Drop what is queued (the module left; its requests are answered elsewhere).
    pub fn discard(&self) {
        self.state.lock().queue.clear();
    }
}
