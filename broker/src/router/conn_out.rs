//! The sending half of a client connection. Any thread may enqueue a frame: a module thread,
//! a connection's task on the runtime, a supervisor task. A frame is written straight
//! to the socket without blocking when the socket has room; what the socket does not take is
//! left for the connection's writer task, which waits on the runtime for the socket to drain,
//! so a slow reader never stalls a module and costs no thread. A client that lets more than
//! `max_buffer` bytes pile up is disconnected; what every connection has unsent is charged to
//! the broker-wide `OutputBudget`.
//!
//! This file does not read from the socket (the connector's reader task does) and never
//! blocks: the only wait is the writer task's, on the runtime.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;
use switchboard_protocol::{encode_frame_into, Message};
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::Notify;

use super::batch;
use super::budget::OutputBudget;

/// An empty buffer keeps at most this much room: what a burst grew it to beyond this goes
/// back to the allocator, so an idle connection holds no more than this. Keeping this much
/// (rather than nothing) spares a busy connection a run of reallocations per burst (a
/// batch of 512 responses, about 25 KB, grew it from 8 bytes in 13 steps).
const KEEP_BUFFER: usize = 16 << 10;

pub struct ConnOut {
    stream: Arc<UnixStream>,
    state: Mutex<OutState>,
    /// Wakes the writer task: there is output the direct path could not send, or the
    /// connection closed.
    wake: Notify,
    max_buffer: usize,
    label: String,
    budget: Arc<OutputBudget>,
    /// This connection's key in the budget's registry.
    budget_id: OnceLock<u64>,
    /// Bytes queued and not yet taken by the socket (the part charged to the budget).
    charged: AtomicUsize,
}

#[derive(Default)]
struct OutState {
    buf: Vec<u8>,
    /// The writer task owns the socket's write side until it empties `buf`.
    writer_busy: bool,
    closed: bool,
}

impl ConnOut {
    /// Wrap the write side of `stream`. The caller runs `write_task` on the runtime.
    pub fn new(stream: Arc<UnixStream>, max_buffer: usize, label: String, budget: Arc<OutputBudget>) -> Arc<ConnOut> {
        let conn = Arc::new(ConnOut {
            stream,
            state: Mutex::default(),
            wake: Notify::new(),
            max_buffer,
            label,
            budget,
            budget_id: OnceLock::new(),
            charged: AtomicUsize::new(0),
        });
        let _ = conn.budget_id.set(conn.budget.register(&conn));
        conn
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Bytes queued for this client and not yet taken by its socket.
    pub fn unsent(&self) -> usize {
        self.charged.load(Ordering::Relaxed)
    }

    /// The socket took `n` bytes (or they were dropped): give them back to the budget. Never
    /// gives back more than was charged, so a write that races a close counts once.
    fn release(&self, n: usize) {
        let taken = self.charged.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| Some(c - n.min(c)));
        if let Ok(before) = taken {
            self.budget.release(n.min(before));
        }
    }

    /// Append a frame for `msg`; write it now unless this thread holds output.
    pub fn enqueue(self: &Arc<Self>, msg: &Message) {
        let mut st = self.state.lock();
        if st.closed {
            return;
        }
        let before = st.buf.len();
        encode_frame_into(msg, &mut st.buf);
        let added = st.buf.len() - before;
        self.charged.fetch_add(added, Ordering::Relaxed);
        let over_budget = self.budget.charge(added);
        if self.unsent() > self.max_buffer {
            tracing::warn!(client = %self.label, bytes = self.unsent(), "client is not reading its messages; disconnecting it");
            self.close_locked(&mut st);
            return;
        }
        if batch::defer(self) {
            self.flush_locked(&mut st);
        }
        drop(st);
        if over_budget {
            self.budget.shed();
        }
    }

    /// Write what is buffered, as far as the socket takes it without blocking.
    pub fn flush(&self) {
        let mut st = self.state.lock();
        self.flush_locked(&mut st);
    }

    /// Stop sending: no more frames are queued and the peer sees end of file.
    pub fn close(&self) {
        let mut st = self.state.lock();
        self.close_locked(&mut st);
    }

    fn close_locked(&self, st: &mut OutState) {
        if !st.closed {
            if let Some(id) = self.budget_id.get() {
                self.budget.forget(*id);
            }
        }
        st.closed = true;
        st.buf = Vec::new();
        self.release(usize::MAX);
        // Both directions: the reader task sees end of file, a blocked write fails.
        let _ = rustix::net::shutdown(&*self.stream, rustix::net::Shutdown::Both);
        self.wake.notify_one();
    }

    fn flush_locked(&self, st: &mut OutState) {
        if st.writer_busy || st.closed || st.buf.is_empty() {
            return;
        }
        match send(&self.stream, &st.buf) {
            Ok(n) if n == st.buf.len() => {
                self.release(n);
                st.buf.clear();
                st.buf.shrink_to(KEEP_BUFFER);
            }
            Ok(n) => {
                self.release(n);
                st.buf.drain(..n);
                st.writer_busy = true;
                self.wake.notify_one();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                st.writer_busy = true;
                self.wake.notify_one();
            }
            Err(_) => self.close_locked(st),
        }
    }

    /// The writer task: writes, as the socket drains, whatever the direct path could not
    /// send; ends when the connection closes.
    pub async fn write_task(self: Arc<Self>) {
        let mut spare = Vec::new();
        loop {
            // `Notify` keeps a wake given while nobody waits, so none is lost between the
            // check and the wait.
            loop {
                {
                    let st = self.state.lock();
                    if st.closed {
                        return;
                    }
                    if st.writer_busy {
                        break;
                    }
                }
                self.wake.notified().await;
            }
            {
                let mut st = self.state.lock();
                if st.buf.is_empty() {
                    st.writer_busy = false;
                    continue;
                }
                std::mem::swap(&mut st.buf, &mut spare);
            }
            let mut off = 0;
            while off < spare.len() {
                // A close shuts the socket down, which fails this write: the task ends.
                let sent = self.stream.async_io(Interest::WRITABLE, || send(&self.stream, &spare[off..])).await;
                match sent {
                    Ok(n) => {
                        self.release(n);
                        off += n;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        self.close();
                        return;
                    }
                }
            }
            spare.clear();
            spare.shrink_to(KEEP_BUFFER);
            // Frames queued while we wrote are in `buf`; loop to write them in order.
            let mut st = self.state.lock();
            if st.buf.is_empty() {
                st.writer_busy = false;
            }
        }
    }
}

/// One non-blocking send; a closed peer is EPIPE, never SIGPIPE.
fn send(stream: &UnixStream, buf: &[u8]) -> std::io::Result<usize> {
    rustix::net::send(stream, buf, rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL)
        .map_err(std::io::Error::from)
}
