//! The sending half of a client connection. Any thread may enqueue a frame; it is written
//! straight to the socket without blocking when the socket has room, and otherwise handed to
//! the connection's writer thread, so a slow reader never stalls a module. A client that
//! lets more than `max_buffer` bytes pile up is disconnected; what every connection has
//! unsent is charged to the broker-wide `OutputBudget`.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::{Condvar, Mutex};
use switchboard_module_api::proto::encode_frame_into;
use switchboard_module_api::Message;

use super::batch;
use super::budget::OutputBudget;

pub struct ConnOut {
    stream: UnixStream,
    state: Mutex<OutState>,
    wake: Condvar,
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
    /// The writer thread owns the socket's write side until it empties `buf`.
    writer_busy: bool,
    closed: bool,
}

impl ConnOut {
    /// Wrap the write side of `stream` and start its writer thread.
    pub fn start(
        stream: UnixStream,
        max_buffer: usize,
        label: String,
        budget: Arc<OutputBudget>,
    ) -> std::io::Result<Arc<ConnOut>> {
        let conn = Arc::new(ConnOut {
            stream,
            state: Mutex::default(),
            wake: Condvar::new(),
            max_buffer,
            label,
            budget,
            budget_id: OnceLock::new(),
            charged: AtomicUsize::new(0),
        });
        let c = conn.clone();
        std::thread::Builder::new().name("conn-writer".into()).stack_size(64 * 1024).spawn(move || c.writer())?;
        let _ = conn.budget_id.set(conn.budget.register(&conn));
        Ok(conn)
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
        // SAFETY: shutting down our own socket; wakes the reader thread with EOF.
        unsafe { libc::shutdown(self.fd(), libc::SHUT_RDWR) };
        self.wake.notify_one();
    }

    fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    fn flush_locked(&self, st: &mut OutState) {
        if st.writer_busy || st.closed || st.buf.is_empty() {
            return;
        }
        match send(self.fd(), &st.buf, libc::MSG_DONTWAIT) {
            Ok(n) if n == st.buf.len() => {
                self.release(n);
                st.buf.clear();
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

    /// The writer thread: blocking writes of whatever the direct path could not send.
    fn writer(self: Arc<Self>) {
        let mut spare = Vec::new();
        loop {
            let mut st = self.state.lock();
            while !st.writer_busy && !st.closed {
                self.wake.wait(&mut st);
            }
            if st.closed {
                return;
            }
            if st.buf.is_empty() {
                st.writer_busy = false;
                continue;
            }
            std::mem::swap(&mut st.buf, &mut spare);
            drop(st);
            let mut off = 0;
            while off < spare.len() {
                match send(self.fd(), &spare[off..], 0) {
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
            // Frames queued while we wrote are in `buf`; loop to write them in order.
            let mut st = self.state.lock();
            if st.buf.is_empty() {
                st.writer_busy = false;
            }
        }
    }
}

fn send(fd: RawFd, buf: &[u8], flags: i32) -> std::io::Result<usize> {
    // SAFETY: `buf` is valid for its length; MSG_NOSIGNAL turns a closed peer into EPIPE.
    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), flags | libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
