//! Starting a module's child process: the inherited socket on fd 3, the welcome, and the
//! hello within its timeout (a timer on the runtime), then dismissing a child that never
//! runs. What is started is owned here until the bridge takes it; a start that fails at any
//! step leaves nothing behind (the child killed and reaped, every descriptor closed).
//!
//! `spawn` runs on the loading thread (it forks); everything that waits is async and runs
//! as a task on the broker's runtime. Nothing here signals a child except through
//! `Process`.

// Unsafe code here: sets up the child between fork and exec (`pre_exec`).
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rustix::process::Signal;
use switchboard_protocol::handshake::{Hello, Refuse, Welcome, FD_ENV, HELLO, PROTOCOL, REFUSE, WELCOME};
use switchboard_protocol::{decode_frame, encode_frame, FrameReader, Message, MsgType, DEFAULT_MAX_FRAME};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::net::UnixStream;
use tokio::time::Instant;

use super::output::Output;
use super::reaper::Process;
use crate::error::LoadError;
use crate::module::LoadRequest;

/// The descriptor number the child finds its socket on.
pub const CHILD_FD: i32 = 3;
/// What a socket read asks for, at least.
pub const READ_CHUNK: usize = 64 << 10;

/// A started child: its process, the broker's end of its socket, and its output.
pub struct Child {
    pub process: Process,
    pub socket: UnixStream,
    /// Bytes the child sent after its hello, before the bridge started.
    pub leftover: BytesMut,
    pub output: Arc<Output>,
}

impl Child {
    /// Start `program` (the module file itself, or the native module host that runs it) with
    /// `argv`, its socket on fd 3 and its output piped to the log. Call within the broker's
    /// runtime (`Handle::enter`): the socket, the pipes and the child's exit are registered
    /// with it here, so that a failure to do so is this load's error.
    pub fn spawn(request: &LoadRequest, program: &Path, argv: &[OsString]) -> Result<Child, LoadError> {
        let path = &request.path;
        let setup = |what: &str, e: std::io::Error| LoadError::Io {
            path: path.clone(),
            source: std::io::Error::new(e.kind(), format!("could not {what}: {e}")),
        };
        // Both ends close on exec: the child gets its own as fd 3 (below), no other child
        // the broker starts gets either.
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| setup("make its socket pair", e))?;
        ours.set_nonblocking(true).map_err(|e| setup("set up its socket", e))?;
        let socket = UnixStream::from_std(ours).map_err(|e| setup("watch its socket", e))?;
        let fd = theirs.as_raw_fd();
        let mut cmd = Command::new(program);
        cmd.args(argv)
            .envs(request.env.iter().map(|(k, v)| (k, v)))
            .env(FD_ENV, CHILD_FD.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec, on a
        // descriptor that stays open in the parent until the spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                if fd == CHILD_FD {
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
                } else if libc::dup2(fd, CHILD_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut started = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => LoadError::Handshake {
                path: path.clone(),
                detail: "it is not executable (chmod +x it, or check its #! line)".into(),
            },
            _ => LoadError::Handshake { path: path.clone(), detail: format!("could not start it: {e}") },
        })?;
        drop(theirs);
        let (stdout, stderr) = (started.stdout.take(), started.stderr.take());
        // From here a failure kills and reaps the child (`Process` does, or its drop).
        let process = Process::watch(started).map_err(|e| setup("watch for its exit", e))?;
        let output = match (stdout.map(pipe_of), stderr.map(pipe_of)) {
            (Some(Ok(out)), Some(Ok(err))) => Output::capture(out, err),
            (Some(Err(e)), _) | (_, Some(Err(e))) => return Err(setup("read its output", e)),
            _ => return Err(setup("read its output", std::io::Error::other("no pipe"))),
        };
        Ok(Child { process, socket, leftover: BytesMut::new(), output })
    }

    /// Send the welcome and wait up to `timeout` for the hello. On failure the child is
    /// killed and reaped, and the error says how it ended and what it printed last.
    pub async fn handshake(mut self, request: &LoadRequest, timeout: Duration) -> Result<(Child, Hello), LoadError> {
        let deadline = Instant::now() + timeout;
        let greeted = match welcome(request) {
            Ok(welcome) => tokio::time::timeout_at(deadline, self.greet(&welcome)).await,
            Err(e) => Ok(Err(e)),
        };
        match greeted {
            Ok(Ok(hello)) => Ok((self, hello)),
            Ok(Err(HandshakeError::Refused(r))) => {
                // It said why it cannot run, in words meant for the operator: those words.
                self.process.signal(Signal::KILL);
                let _ = self.process.wait().await;
                let errno = if r.errno == 0 { switchboard_protocol::Errno::EPROTO.0 } else { r.errno };
                Err(LoadError::Refused { errno, text: r.text })
            }
            Ok(Err(why)) => Err(self.abandon(&request.path, why, timeout).await),
            Err(_elapsed) => Err(self.abandon(&request.path, HandshakeError::Timeout, timeout).await),
        }
    }

    /// The welcome out, the hello in; the deadline is the caller's.
    async fn greet(&mut self, welcome: &[u8]) -> Result<Hello, HandshakeError> {
        // A child that exits at once may already be gone: its missing hello is the error.
        let _ = self.socket.write_all(welcome).await;
        let reader = FrameReader::new(DEFAULT_MAX_FRAME);
        loop {
            match reader.next_frame(&mut self.leftover) {
                Ok(Some(body)) => return hello_of(body),
                Ok(None) => {}
                Err(e) => return Err(HandshakeError::Protocol(format!("sent a bad frame: {e}"))),
            }
            self.leftover.reserve(READ_CHUNK);
            match self.socket.read_buf(&mut self.leftover).await {
                Ok(0) => return Err(HandshakeError::Closed),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Err(HandshakeError::Closed),
            }
        }
    }

    /// Kill and reap a child whose handshake failed; say what went wrong.
    async fn abandon(mut self, path: &Path, why: HandshakeError, timeout: Duration) -> LoadError {
        self.process.signal(Signal::KILL);
        let how = self.process.wait().await.map(describe_status).unwrap_or_default();
        let detail = match why {
            HandshakeError::Timeout => {
                let tail = self.output.last_line().await;
                return LoadError::HelloTimeout { path: path.to_owned(), ms: timeout.as_millis() as u64, tail };
            }
            HandshakeError::Closed => format!("it {how} before saying hello"),
            HandshakeError::Protocol(p) => format!("it {p}; killed"),
            HandshakeError::Refused(r) => r.text,
        };
        let tail = self.output.last_words().await;
        let detail = if tail.is_empty() { detail } else { format!("{detail}; its last output: {tail}") };
        LoadError::Handshake { path: path.to_owned(), detail }
    }

    /// Close the socket and reap the child, killing it if it does not leave within `grace`
    /// (a child that said hello but never runs: no log line, RFC 5 §5).
    pub async fn dismiss(self, grace: Duration) {
        let Child { mut process, socket, .. } = self;
        drop(socket);
        if tokio::time::timeout(grace, process.wait()).await.is_err() {
            process.signal(Signal::KILL);
            let _ = process.wait().await;
        }
    }
}

/// A child's pipe end as the runtime reads it.
fn pipe_of(end: impl Into<OwnedFd>) -> std::io::Result<pipe::Receiver> {
    pipe::Receiver::from_owned_fd(end.into())
}

/// The welcome frame for `request` (RFC 5 §3).
fn welcome(request: &LoadRequest) -> Result<Vec<u8>, HandshakeError> {
    let config = rmpv::decode::read_value(&mut &request.config[..]).unwrap_or(rmpv::Value::Map(Vec::new()));
    let welcome = Welcome {
        protocol: PROTOCOL,
        name: request.name.clone(),
        args: request.args.clone(),
        config,
        describe: request.inspect_only,
    };
    let payload = Message::encode_payload(&welcome).map_err(|e| HandshakeError::Protocol(e.to_string()))?;
    Ok(encode_frame(&Message::control(WELCOME, payload)))
}

/// The hello in the child's first frame.
fn hello_of(body: bytes::Bytes) -> Result<Hello, HandshakeError> {
    let msg = decode_frame(body).map_err(|e| HandshakeError::Protocol(format!("sent a malformed frame: {e}")))?;
    if msg.kind == MsgType::Control && msg.topic == REFUSE {
        let refuse: Refuse =
            msg.decode().map_err(|e| HandshakeError::Protocol(format!("sent a malformed refuse: {e}")))?;
        return Err(HandshakeError::Refused(refuse));
    }
    if msg.kind != MsgType::Control || msg.topic != HELLO {
        return Err(HandshakeError::Protocol(format!("sent a {} '{}' before its hello", msg.kind.as_str(), msg.topic)));
    }
    let mut hello: Hello =
        msg.decode().map_err(|e| HandshakeError::Protocol(format!("sent a malformed hello: {e}")))?;
    if hello.protocol != PROTOCOL {
        return Err(HandshakeError::Protocol(format!(
            "speaks handshake protocol {}, this broker speaks {PROTOCOL}",
            hello.protocol
        )));
    }
    // What it declares is shown as it is by module.info: it must pass the rules of RFC 5 §3.
    hello.declares = std::mem::take(&mut hello.declares)
        .checked()
        .map_err(|e| HandshakeError::Protocol(format!("sent a malformed hello: {e}")))?;
    // The handshake's deadline ends with it: from here on the module may be silent, or busy
    // on one request, for as long as it likes (RFC 5 §3).
    Ok(hello)
}

pub enum HandshakeError {
    Timeout,
    Closed,
    Protocol(String),
    /// It sent `refuse` instead of hello (RFC 5 §3).
    Refused(Refuse),
}

/// "exited with status 3", "was killed by signal 9 (SIGKILL)".
pub fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig} ({})", signal_name(sig)),
        _ => "ended".to_string(),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}
