//! # switchboard-inbox
//!
//! `Inbox`: a module's queue of messages from the broker. Any thread pushes; the module's
//! thread takes, blocking on a condition variable when it is empty. A taker that is a task
//! on the broker's runtime (a process module's writer) awaits `recv_async` instead: a push
//! that finds it waiting wakes it through a `tokio::sync::Notify`, made on its first wait.
//! The blocking path never touches it beyond one atomic load when it wakes a sleeper.
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
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use switchboard_protocol::{Message, MsgType};
use tokio::sync::Notify;

mod sync;

use crate::sync::{AtomicI32, AtomicUsize, Condvar, Mutex, MutexGuard};

/// How long a busy module watches its queue before it sleeps.
#[cfg(not(feature = "loom"))]
const SPIN: Duration = Duration::from_micros(50);
/// Under loom, never: what the clock says must not decide a model's path.
#[cfg(feature = "loom")]
const SPIN: Duration = Duration::ZERO;
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
    /// Wakes a task waiting in `recv_async`; made by its first wait.
    task: OnceLock<Notify>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Message>,
    /// The module left: nothing more is accepted, and waiters return.
    closed: bool,
    /// A successor takes new requests: only responses, events and control messages are
    /// accepted (the instance may still be finalizing and waiting for answers).
    sealed: bool,
    /// The taker is blocked in `recv` or waiting in `recv_async`: a push must wake it.
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
    fn enqueue(&self, mut st: MutexGuard<'_, State>, msg: Message) {
        st.queue.push_back(msg);
        self.queued.store(st.queue.len(), Ordering::Release);
        let wake = st.waiting;
        drop(st);
        if wake {
            self.wake();
        }
    }

    /// Wake the taker, whichever way it waits.
    fn wake(&self) {
        if let Some(task) = self.task.get() {
            // Stored as a permit if the task is between its look at the queue and its wait.
            task.notify_one();
        }
        self.ready.notify_one();
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

    /// The next message, for a taker that is a task: waits without blocking its thread until
    /// one comes or the inbox closes. It neither watches nor spins (a runtime worker has
    /// other tasks to run). Cancel-safe: a message is only taken when it is returned.
    pub async fn recv_async(&self) -> Result<Message, RecvError> {
        let task = self.task.get_or_init(Notify::new);
        loop {
            {
                let mut st = self.state.lock();
                st.waiting = false;
                if let Some(m) = self.pop(&mut st) {
                    return Ok(m);
                }
                if st.closed {
                    return Err(RecvError::Closed);
                }
                st.waiting = true;
            }
            // A push between the unlock and this wait leaves a permit: nothing is missed.
            task.notified().await;
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
        if let Some(task) = self.task.get() {
            task.notify_one();
        }
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

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// On a thread: once a taker waits on `inbox` (so it must be woken), do `then` to it.
    fn once_waiting(inbox: &Arc<Inbox>, then: impl FnOnce(&Inbox) + Send + 'static) -> std::thread::JoinHandle<()> {
        let inbox = inbox.clone();
        std::thread::spawn(move || {
            while !inbox.state.lock().waiting {
                std::thread::yield_now();
            }
            then(&inbox);
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_task_waiting_on_an_inbox_is_woken_by_a_push_from_a_thread() {
        let inbox = Arc::new(Inbox::default());
        let pusher = once_waiting(&inbox, |inbox| {
            inbox.push(Message::request("x.first", bytes::Bytes::new())).expect("accepted");
        });
        let m = inbox.recv_async().await.expect("a message");
        assert_eq!(m.topic, "x.first");
        pusher.join().expect("pusher");
        assert!(!inbox.state.lock().waiting, "the taker is awake: pushes need not wake it");
        // What is queued is taken without waiting, in order.
        for t in ["x.a", "x.b"] {
            inbox.push(Message::request(t, bytes::Bytes::new())).expect("accepted");
        }
        assert_eq!(inbox.recv_async().await.map(|m| m.topic), Ok("x.a".to_string()));
        assert_eq!(inbox.recv_async().await.map(|m| m.topic), Ok("x.b".to_string()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn closing_an_inbox_ends_a_waiting_task() {
        let inbox = Arc::new(Inbox::default());
        let closer = once_waiting(&inbox, Inbox::close);
        assert_eq!(inbox.recv_async().await.map(|m| m.topic), Err(RecvError::Closed));
        closer.join().expect("closer");
    }
}

/// Model checks: loom runs each body under every interleaving of its threads (within its
/// default bounds). A wake-up that is lost leaves the taker waiting with nobody left to wake
/// it, which loom reports as a deadlock; a message lost or reordered fails an assertion.
#[cfg(all(test, feature = "loom"))]
mod models {
    use loom::sync::Arc;
    use loom::thread;

    use super::*;

    fn request(topic: &str) -> Message {
        Message::request(topic, bytes::Bytes::new())
    }

    fn spawn(inbox: &Arc<Inbox>, f: impl FnOnce(&Inbox) + Send + 'static) -> thread::JoinHandle<()> {
        let inbox = inbox.clone();
        thread::spawn(move || f(&inbox))
    }

    #[test]
    fn a_taker_gets_every_message_a_thread_pushes_in_order() {
        loom::model(|| {
            let inbox = Arc::new(Inbox::default());
            let pusher = spawn(&inbox, |inbox| {
                for t in ["x.a", "x.b"] {
                    assert!(inbox.push(request(t)).is_ok(), "an open inbox accepts");
                }
            });
            let got: Vec<String> = (0..2).map(|_| inbox.recv(None).expect("a message").topic).collect();
            assert_eq!(got, ["x.a", "x.b"]);
            pusher.join().expect("pusher");
        });
    }

    #[test]
    fn two_threads_pushing_at_once_wake_a_sleeping_taker_for_each_message() {
        loom::model(|| {
            let inbox = Arc::new(Inbox::default());
            let one = spawn(&inbox, |inbox| assert!(inbox.push(request("x.one")).is_ok()));
            let two = spawn(&inbox, |inbox| assert!(inbox.push(request("x.two")).is_ok()));
            let mut got: Vec<String> = (0..2).map(|_| inbox.recv(None).expect("a message").topic).collect();
            got.sort();
            assert_eq!(got, ["x.one", "x.two"]);
            one.join().expect("one");
            two.join().expect("two");
        });
    }

    #[test]
    fn closing_ends_a_waiting_taker_and_refuses_what_comes_after() {
        loom::model(|| {
            let inbox = Arc::new(Inbox::default());
            let closer = spawn(&inbox, Inbox::close);
            assert_eq!(inbox.recv(None).map(|m| m.topic), Err(RecvError::Closed));
            closer.join().expect("closer");
            assert!(inbox.push(request("x.late")).is_err(), "a closed inbox refuses");
        });
    }

    #[test]
    fn a_request_racing_a_seal_is_either_before_the_shutdown_or_refused() {
        loom::model(|| {
            let inbox = Arc::new(Inbox::default());
            let sealer = spawn(&inbox, |inbox| inbox.seal(Message::control("shutdown", bytes::Bytes::new())));
            let (tx, rx) = loom::sync::mpsc::channel();
            let sender = spawn(&inbox, move |inbox| {
                tx.send(inbox.push(request("x.req")).is_ok()).expect("report");
            });
            let mut taken = Vec::new();
            loop {
                let m = inbox.recv(None).expect("a message");
                let last = m.topic == "shutdown";
                taken.push(m.topic);
                if last {
                    break;
                }
            }
            sealer.join().expect("sealer");
            sender.join().expect("sender");
            let accepted = rx.recv().expect("the sender's report");
            let expected: &[&str] = if accepted { &["x.req", "shutdown"] } else { &["shutdown"] };
            assert_eq!(taken, expected, "an accepted request comes before the shutdown, a refused one never");
            assert_eq!(inbox.try_recv().map(|m| m.map(|m| m.topic)), Ok(None), "nothing after the shutdown");
        });
    }
}
