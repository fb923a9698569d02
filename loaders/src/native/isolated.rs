//! Isolated native modules: a native library run in a host process of its own (the
//! `switchboard-native-host` binary), which the broker starts and supervises as a process
//! module (RFC 5 §9), so a crash in the library fails only that module.
//!
//! This file owns both ends' native-specific parts: where the broker finds the host binary
//! (`locate`), and what the host does (`serve`): read the welcome on the inherited socket,
//! open the library with the in-broker loader's own code (`library::open`: the same ABI
//! checks and the same error text, sent back as a `refuse`), say hello, and run the module's
//! `main` with the in-broker `SbHost` (`host::run`) over a `BrokerPort` that writes RFC 1
//! frames to the socket and an `Inbox` that a reader thread fills from it. It must not grow
//! an ABI check or an `SbHost` of its own: those live in `library` and `host`, once.

// Unsafe code here: takes ownership of the socket descriptor the broker passed (RFC 5 §2).
#![allow(unsafe_code)]

use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::ThreadId;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use switchboard_protocol::handshake::{
    Hello, Refuse, Status, Welcome, FD_ENV, HELLO, PROTOCOL, REFUSE, STATUS, WELCOME,
};
use switchboard_protocol::{decode_frame, encode_frame_into, FrameReader, Level, Message, MsgType, DEFAULT_MAX_FRAME};
use thiserror::Error;

use super::{host, library};
use crate::error::LoadError;
use crate::inbox::Inbox;
use crate::module::{BrokerPort, ExitStatus, ModuleLink, ModuleState};

/// The host binary's file name, looked for beside the running broker.
pub const HOST_BINARY: &str = "switchboard-native-host";
/// Environment variable naming the host binary, over the default place.
pub const HOST_ENV: &str = "SWITCHBOARD_NATIVE_HOST";

/// Where the native module host is, to run `module` isolated: `configured` (the broker's
/// `native_host` option) if given, else `$SWITCHBOARD_NATIVE_HOST` if set, else beside the
/// running executable (and, for a program Cargo put in `target/*/deps` or
/// `target/*/examples`, one folder up, where Cargo puts the workspace's binaries). The file
/// must be executable; the error says where it was looked for and how to say where it is.
pub fn locate(configured: Option<&Path>, module: &Path) -> Result<PathBuf, LoadError> {
    let missing =
        |host: PathBuf, why: &str| LoadError::NoNativeHost { path: module.to_owned(), host, why: why.to_string() };
    let explicit = configured.map(Path::to_path_buf).or_else(|| std::env::var_os(HOST_ENV).map(PathBuf::from));
    let candidates = match explicit {
        Some(host) => vec![host],
        None => {
            let exe = std::env::current_exe().map_err(|e| {
                missing(PathBuf::from(HOST_BINARY), &format!("could not be looked for beside the broker ({e})"))
            })?;
            let dir = exe.parent().unwrap_or(Path::new("/"));
            let mut c = vec![dir.join(HOST_BINARY)];
            if dir.file_name().is_some_and(|n| n == "deps" || n == "examples") {
                if let Some(up) = dir.parent() {
                    c.push(up.join(HOST_BINARY));
                }
            }
            c
        }
    };
    let mut first_failure = None;
    for host in candidates {
        match std::fs::metadata(&host) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => return Ok(host),
            Ok(_) => first_failure = first_failure.or(Some((host, "is not an executable file"))),
            Err(_) => first_failure = first_failure.or(Some((host, "does not exist"))),
        }
    }
    let (host, why) = first_failure.unwrap_or((PathBuf::from(HOST_BINARY), "was not found"));
    Err(missing(host, why))
}

/// Why the host could not serve its broker at all (a refused library is not one of these:
/// it is told to the broker as a `refuse`, and the host exits 1).
#[derive(Debug, Error)]
pub enum HostError {
    #[error(
        "it runs a native module for a Switchboard broker (modctl load --isolated) and is started by the broker; {FD_ENV} is not set"
    )]
    NotStartedByBroker,
    #[error("{FD_ENV}={0} is not a file descriptor number")]
    BadFd(String),
    #[error("the broker did not send a welcome: {0}")]
    NoWelcome(String),
    #[error("could not write to the broker's socket: {0}")]
    Socket(#[source] std::io::Error),
}

/// The native module host's body: serve the library at `library` to the broker on the
/// inherited socket until the module's `main` returns. The exit status: 0 when it returned
/// cleanly, 1 when it failed or the library was refused (the reason on stderr, which the
/// broker keeps as the failure's last words).
pub fn serve(library: &Path) -> Result<u8, HostError> {
    let fd = std::env::var(FD_ENV).map_err(|_| HostError::NotStartedByBroker)?;
    let fd: i32 = fd.parse().map_err(|_| HostError::BadFd(fd.clone()))?;
    // SAFETY: the broker passed this descriptor for this process alone (RFC 5 §2), and
    // nothing else in the host takes ownership of it.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let mut reader = FrameStream::new(stream.try_clone().map_err(HostError::Socket)?);
    let welcome = match reader.next() {
        Ok(Some(m)) if m.kind == MsgType::Control && m.topic == WELCOME => {
            m.decode::<Welcome>().map_err(|e| HostError::NoWelcome(format!("a malformed welcome: {e}")))?
        }
        Ok(Some(m)) => return Err(HostError::NoWelcome(format!("a {} '{}' came first", m.kind.as_str(), m.topic))),
        Ok(None) => return Err(HostError::NoWelcome("the socket closed".into())),
        Err(e) => return Err(HostError::NoWelcome(e)),
    };
    let port = Arc::new(SocketPort::new(stream));
    let lib = match library::open(library) {
        Ok(lib) => lib,
        Err(e) => {
            port.control(REFUSE, &Refuse { errno: e.errno().0, text: e.to_string() })?;
            return Ok(1);
        }
    };
    // What the library's table declares travels in the hello, so `module.list` shows an
    // isolated module's methods and events as it shows an in-broker one's.
    let hello = Hello { protocol: PROTOCOL, name: lib.default_name.clone(), declares: lib.declares.clone() };
    port.control(HELLO, &hello)?;
    if welcome.describe {
        return Ok(0);
    }
    let mut config = Vec::new();
    let _ = rmpv::encode::write_value(&mut config, &welcome.config);
    let inbox = Arc::new(Inbox::default());
    let feed = inbox.clone();
    std::thread::Builder::new()
        .name("broker-reader".into())
        .spawn(move || {
            // Until the broker closes the socket (or sends what does not decode): then the
            // module's next recv returns ECONNRESET and it leaves.
            while let Ok(Some(m)) = reader.next() {
                if feed.push(m).is_err() {
                    break;
                }
            }
            feed.close();
        })
        .map_err(HostError::Socket)?;
    let link = ModuleLink {
        name: welcome.name.unwrap_or(lib.default_name),
        args: welcome.args,
        config: Bytes::from(config),
        inbox,
        port: port.clone(),
    };
    host::run(lib.main, link);
    let status = port.status.lock().take();
    Ok(match status {
        Some(ExitStatus::Exited) => 0,
        Some(ExitStatus::Failed(reason)) => {
            let said = port.last_error.lock().take();
            if said.as_deref() != Some(reason.as_str()) {
                eprintln!("error: {reason}");
            }
            1
        }
        None => 1,
    })
}

/// RFC 1 frames read from the broker's socket.
struct FrameStream {
    stream: UnixStream,
    frames: FrameReader,
    buf: BytesMut,
}

impl FrameStream {
    fn new(stream: UnixStream) -> Self {
        FrameStream { stream, frames: FrameReader::new(DEFAULT_MAX_FRAME), buf: BytesMut::with_capacity(64 << 10) }
    }

    /// The next message; None when the socket closed; Err(why) for what does not decode.
    fn next(&mut self) -> Result<Option<Message>, String> {
        loop {
            match self.frames.next_frame(&mut self.buf) {
                Ok(Some(body)) => return decode_frame(body).map(Some).map_err(|e| e.to_string()),
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
            let mut chunk = [0u8; 64 << 10];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Ok(None),
            }
        }
    }
}

/// The broker, as the module's `SbHost` sees it: frames written to the socket. Output of the
/// module's thread is held while more input is queued (`hold`, as `host` decides, the same
/// rule as in the broker, RFC 2 §5) and written at `flush`; a send from any other thread
/// writes at once, after what is held, so order is kept.
struct SocketPort {
    stream: UnixStream,
    out: Mutex<Out>,
    status: Mutex<Option<ExitStatus>>,
    /// The last error line logged: not repeated as the failure's reason.
    last_error: Mutex<Option<String>>,
}

struct Out {
    buf: Vec<u8>,
    /// The thread whose output is being held.
    holder: Option<ThreadId>,
    /// A write failed: the broker is gone, and the reader will close the inbox.
    broken: bool,
}

/// A write buffer grown past this (a large message) is let go once written.
const KEEP_BUF: usize = 1 << 20;

impl SocketPort {
    fn new(stream: UnixStream) -> Self {
        SocketPort {
            stream,
            out: Mutex::new(Out { buf: Vec::with_capacity(64 << 10), holder: None, broken: false }),
            status: Mutex::new(None),
            last_error: Mutex::new(None),
        }
    }

    /// A control message, written at once (the handshake's and the status reports).
    fn control(&self, topic: &str, body: &impl serde::Serialize) -> Result<(), HostError> {
        let payload = Message::encode_payload(body)
            .map_err(|e| HostError::Socket(std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())))?;
        let mut out = self.out.lock();
        encode_frame_into(&Message::control(topic, payload), &mut out.buf);
        self.write(&mut out);
        if out.broken {
            return Err(HostError::Socket(std::io::Error::from(std::io::ErrorKind::BrokenPipe)));
        }
        Ok(())
    }

    fn write(&self, out: &mut Out) {
        if !out.buf.is_empty() && !out.broken && (&self.stream).write_all(&out.buf).is_err() {
            out.broken = true;
        }
        out.buf.clear();
        if out.buf.capacity() > KEEP_BUF {
            out.buf = Vec::with_capacity(64 << 10);
        }
    }
}

impl BrokerPort for SocketPort {
    fn send(&self, msg: Message) {
        let mut out = self.out.lock();
        encode_frame_into(&msg, &mut out.buf);
        if out.holder != Some(std::thread::current().id()) {
            self.write(&mut out);
        }
    }

    fn hold(&self) {
        self.out.lock().holder = Some(std::thread::current().id());
    }

    fn flush(&self) {
        let mut out = self.out.lock();
        out.holder = None;
        self.write(&mut out);
    }

    fn set_state(&self, state: ModuleState) {
        let state = match state {
            ModuleState::Running => "running",
            ModuleState::Finalizing => "finalizing",
            _ => return,
        };
        // Behind whatever is held, like every other message.
        if let Ok(payload) = Message::encode_payload(&Status { state: state.into() }) {
            self.send(Message::control(STATUS, payload));
        }
    }

    /// To stderr, which the broker logs under the module's name at the level the prefix
    /// says (RFC 5 §6).
    fn log(&self, level: Level, text: &str) {
        for line in text.lines() {
            eprintln!("{}: {line}", level.tag());
        }
        if level == Level::Error {
            *self.last_error.lock() = Some(text.to_string());
        }
    }

    fn exited(&self, status: ExitStatus) {
        self.flush();
        *self.status.lock() = Some(status);
    }
}
