//! The module side of a process module (RFC 5): a `Link` over the socket the broker passed
//! as an inherited file descriptor, and the `main` a module binary runs. The same `Actor`
//! that `export_module!` exports as a native library runs here as a child process.

// Unsafe code here: takes ownership of the socket descriptor the broker passed (RFC 5 §2).
#![allow(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::actor::{run_actor, Actor};
use crate::handle::Handle;
use crate::link::{Hold, Link, LinkError};
use switchboard_protocol::handshake::{Hello, Status, Welcome, FD_ENV, HELLO, PROTOCOL, STATUS, WELCOME};
use switchboard_protocol::{
    decode_frame, encode_frame_into, FrameReader, Level, Message, MsgType, DEFAULT_MAX_FRAME, SHUTDOWN,
};

struct ProcessLink {
    stream: UnixStream,
    reader: FrameReader,
    rbuf: BytesMut,
    wbuf: RefCell<Vec<u8>>,
    /// More input is already buffered: hold output until the next blocking read, or for at
    /// most MAX_HOLD_MS.
    holding: Cell<bool>,
    hold: Hold,
    read_timeout: Option<Duration>,
    running: bool,
}

impl ProcessLink {
    fn new(stream: UnixStream) -> Self {
        ProcessLink {
            stream,
            reader: FrameReader::new(DEFAULT_MAX_FRAME),
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: RefCell::new(Vec::with_capacity(64 * 1024)),
            holding: Cell::new(false),
            hold: Hold::precise(),
            read_timeout: None,
            running: false,
        }
    }

    fn flush(&self) -> Result<(), LinkError> {
        let mut w = self.wbuf.borrow_mut();
        if w.is_empty() {
            return Ok(());
        }
        let r = (&self.stream).write_all(&w);
        w.clear();
        r.map_err(|_| LinkError::Closed)
    }

    fn control(&self, topic: &str, body: &impl serde::Serialize) -> Result<(), LinkError> {
        let payload = Message::encode_payload(body).map_err(|e| LinkError::Refused(e.to_string()))?;
        self.send(&Message::control(topic, payload))
    }

    /// The next frame, blocking up to `timeout`; `Ok(None)` on timeout.
    fn read_message(&mut self, timeout: Option<Duration>) -> Result<Option<Message>, LinkError> {
        loop {
            match self.reader.next_frame(&mut self.rbuf) {
                Ok(Some(body)) => {
                    // Another whole frame already here: batch our output.
                    let more = self.reader.has_frame(&self.rbuf);
                    self.holding.set(more);
                    if self.hold.flush_now(more) {
                        self.flush()?;
                    }
                    return decode_frame(body).map(Some).map_err(|e| LinkError::Refused(e.to_string()));
                }
                Ok(None) => {}
                Err(e) => return Err(LinkError::Refused(e.to_string())),
            }
            self.holding.set(false);
            self.flush()?;
            self.hold.flushed();
            let timeout = timeout.map(|t| t.max(Duration::from_micros(1)));
            if timeout != self.read_timeout {
                self.stream.set_read_timeout(timeout).map_err(|_| LinkError::Closed)?;
                self.read_timeout = timeout;
            }
            if self.rbuf.capacity() - self.rbuf.len() < 4096 {
                self.rbuf.reserve(64 * 1024);
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(LinkError::Closed),
                Ok(n) => self.rbuf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return Ok(None)
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Err(LinkError::Closed),
            }
        }
    }
}

impl Link for ProcessLink {
    fn recv(&mut self, timeout: Option<Duration>) -> Result<Option<Message>, LinkError> {
        if !self.running {
            self.running = true;
            self.control(STATUS, &Status { state: "running".into() })?;
        }
        let msg = self.read_message(timeout)?;
        if let Some(m) = &msg {
            if m.kind == MsgType::Control && m.topic == SHUTDOWN {
                self.control(STATUS, &Status { state: "finalizing".into() })?;
            }
        }
        Ok(msg)
    }

    fn send(&self, msg: &Message) -> Result<(), LinkError> {
        encode_frame_into(msg, &mut self.wbuf.borrow_mut());
        if self.holding.get() {
            Ok(())
        } else {
            self.flush()
        }
    }

    /// Log lines go to stderr, which the broker logs under the module's name.
    fn log(&self, level: Level, text: &str) {
        eprintln!("{}: {text}", level.tag());
    }
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// The `main` of a module binary: handshake on the inherited socket, then run `A` until
/// shutdown. Exit status 0 on a clean stop, 1 on an error, 101 on a panic.
pub fn run<A: Actor>(default_name: &str) -> ExitCode {
    let Some(fd) = std::env::var(FD_ENV).ok().and_then(|v| v.parse::<i32>().ok()) else {
        eprintln!(
            "{default_name} is a Switchboard module: load it into a broker with `modctl load {}`",
            std::env::args().next().unwrap_or_default()
        );
        return ExitCode::from(2);
    };
    // SAFETY: the broker passed this descriptor for us alone (RFC 5 §2).
    let mut link = ProcessLink::new(unsafe { UnixStream::from_raw_fd(fd) });
    let welcome = match link.read_message(None) {
        Ok(Some(m)) if m.kind == MsgType::Control && m.topic == WELCOME => m.decode::<Welcome>().ok(),
        _ => None,
    };
    let Some(welcome) = welcome else {
        link.log(Level::Error, "the broker did not send a welcome");
        return ExitCode::from(1);
    };
    let declares = A::methods().describe();
    if link.control(HELLO, &Hello { protocol: PROTOCOL, name: default_name.to_string(), declares }).is_err() {
        return ExitCode::from(1);
    }
    if welcome.describe {
        return ExitCode::SUCCESS;
    }
    let mut config = Vec::new();
    let _ = rmpv::encode::write_value(&mut config, &welcome.config);
    let name = welcome.name.unwrap_or_else(|| default_name.to_string());
    let handle = Handle::new(Box::new(link), name, welcome.args, Bytes::from(config));
    match catch_unwind(AssertUnwindSafe(|| run_actor::<A>(&handle))) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            handle.log(Level::Error, &e.to_string());
            ExitCode::from(1)
        }
        Err(p) => {
            handle.log(Level::Error, &format!("panicked: {}", panic_text(&*p)));
            ExitCode::from(101)
        }
    }
}
