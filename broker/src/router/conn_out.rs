//! The sending half of a client connection. Any thread may enqueue a frame; it is written
//! straight to the socket without blocking when the socket has room, and otherwise handed to
//! the connection's writer thread, so a slow reader never stalls a module. A client that
//! lets more than `max_buffer` bytes pile up is disconnected.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use switchboard_module_api::proto::encode_frame_into;
use switchboard_module_api::Message;

use super::batch;

pub struct ConnOut {
    stream: UnixStream,
    state: Mutex<OutState>,
    wake: Condvar,
    max_buffer: usize,
    label: String,
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
    pub fn start(stream: UnixStream, max_buffer: usize, label: String) -> std::io::Result<Arc<ConnOut>> {
        let conn = Arc::new(ConnOut { stream, state: Mutex::default(), wake: Condvar::new(), max_buffer, label });
        let c = conn.clone();
        std::thread::Builder::new().name("conn-writer".into()).stack_size(64 * 1024).spawn(move || c.writer())?;
        Ok(conn)
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Append a frame for `msg`; write it now unless this thread holds output.
    pub fn enqueue(self: &Arc<Self>, msg: &Message) {
        let mut st = self.state.lock();
        if st.closed {
            return;
        }
        encode_frame_into(msg, &mut st.buf);
        if st.buf.len() > self.max_buffer {
            tracing::warn!(client = %self.label, bytes = st.buf.len(), "client is not reading its messages; disconnecting it");
            self.close_locked(&mut st);
            return;
        }
        if batch::defer(self) {
            self.flush_locked(&mut st);
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
        st.closed = true;
        st.buf = Vec::new();
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
            Ok(n) if n == st.buf.len() => st.buf.clear(),
            Ok(n) => {
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
                    Ok(n) => off += n,
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
