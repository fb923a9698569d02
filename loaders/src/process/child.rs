//! Starting a module's child process: the inherited socket on fd 3, the welcome, the hello
//! with its timeout, and a guard that signals the child only while it is unreaped (so a
//! recycled pid is never hit).

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use parking_lot::Mutex;
use switchboard_module_api::handshake::{Hello, Welcome, FD_ENV, HELLO, PROTOCOL, WELCOME};
use switchboard_module_api::proto::{decode_frame, encode_frame, FrameReader, MsgType, DEFAULT_MAX_FRAME};
use switchboard_module_api::Message;

use super::output::Output;
use crate::error::LoadError;
use crate::module::LoadRequest;

/// The descriptor number the child finds its socket on.
pub const CHILD_FD: i32 = 3;

/// Signals a child only while it has not been reaped.
pub struct Guard {
    pid: u32,
    reaped: Mutex<bool>,
}

impl Guard {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn is_reaped(&self) -> bool {
        *self.reaped.lock()
    }

    /// Send `sig` unless the child is already reaped; true if it was sent.
    pub fn signal(&self, sig: i32) -> bool {
        let reaped = self.reaped.lock();
        if *reaped {
            return false;
        }
        // SAFETY: the pid is our unreaped child, so it cannot have been recycled.
        unsafe { libc::kill(self.pid as i32, sig) == 0 }
    }

    /// Wait for the child, marking it reaped under the lock `signal` takes.
    pub fn reap(&self, child: &mut std::process::Child) -> std::io::Result<std::process::ExitStatus> {
        // Block without the lock, then take it to mark the pid gone. `try_wait` after `wait`
        // is what actually reaps, under the lock.
        loop {
            // SAFETY: waitid with WNOWAIT only observes; the child stays a zombie until reaped.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            let rc =
                unsafe { libc::waitid(libc::P_PID, self.pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT) };
            if rc == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        let mut reaped = self.reaped.lock();
        let status = child.wait();
        *reaped = true;
        status
    }
}

/// A started child that said hello.
pub struct Child {
    pub process: std::process::Child,
    pub socket: UnixStream,
    /// Frames the child sent after its hello, before the bridge started.
    pub leftover: BytesMut,
    pub guard: Arc<Guard>,
    pub output: Arc<Output>,
}

impl Child {
    /// Spawn the file with its socket on fd 3, send the welcome and wait for the hello.
    pub fn start(request: &LoadRequest, timeout: Duration) -> Result<(Child, Hello), LoadError> {
        let path = &request.path;
        let (socket, theirs) = UnixStream::pair().map_err(|e| LoadError::io(path, e))?;
        let fd = theirs.as_raw_fd();
        let mut cmd = Command::new(path);
        cmd.args(&request.args)
            .envs(request.env.iter().map(|(k, v)| (k, v)))
            .env(FD_ENV, CHILD_FD.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: only async-signal-safe calls between fork and exec.
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
        let mut process = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => LoadError::Handshake {
                path: path.clone(),
                detail: "it is not executable (chmod +x it, or check its #! line)".into(),
            },
            _ => LoadError::Handshake { path: path.clone(), detail: format!("could not start it: {e}") },
        })?;
        drop(theirs);
        let output = Output::capture(&mut process);
        let guard = Arc::new(Guard { pid: process.id(), reaped: Mutex::new(false) });
        let mut child = Child { process, socket, leftover: BytesMut::new(), guard, output };
        match child.handshake(request, timeout) {
            Ok(hello) => Ok((child, hello)),
            Err(detail) => Err(child.abandon(path, detail, timeout)),
        }
    }

    fn handshake(&mut self, request: &LoadRequest, timeout: Duration) -> Result<Hello, HandshakeError> {
        let config = rmpv::decode::read_value(&mut &request.config[..]).unwrap_or(rmpv::Value::Map(Vec::new()));
        let welcome = Welcome {
            protocol: PROTOCOL,
            name: request.name.clone(),
            args: request.args.clone(),
            config,
            describe: request.inspect_only,
        };
        let payload = Message::encode_payload(&welcome).map_err(|e| HandshakeError::Protocol(e.to_string()))?;
        // A child that exits at once may already be gone: its missing hello is the error.
        let _ = (&self.socket).write_all(&encode_frame(&Message::control(WELCOME, payload)));
        let deadline = Instant::now() + timeout;
        let reader = FrameReader::new(DEFAULT_MAX_FRAME);
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match reader.next_frame(&mut self.leftover) {
                Ok(Some(body)) => {
                    let msg = decode_frame(body)
                        .map_err(|e| HandshakeError::Protocol(format!("sent a malformed frame: {e}")))?;
                    if msg.kind != MsgType::Control || msg.topic != HELLO {
                        return Err(HandshakeError::Protocol(format!(
                            "sent a {} '{}' before its hello",
                            msg.kind.as_str(),
                            msg.topic
                        )));
                    }
                    let hello: Hello =
                        msg.decode().map_err(|e| HandshakeError::Protocol(format!("sent a malformed hello: {e}")))?;
                    if hello.protocol != PROTOCOL {
                        return Err(HandshakeError::Protocol(format!(
                            "speaks handshake protocol {}, this broker speaks {PROTOCOL}",
                            hello.protocol
                        )));
                    }
                    // The handshake's deadline ends with it: from here on the module may be
                    // silent, or busy on one request, for as long as it likes (RFC 5 §3).
                    self.socket.set_read_timeout(None).map_err(|e| {
                        HandshakeError::Protocol(format!("could not clear its socket's read timeout: {e}"))
                    })?;
                    return Ok(hello);
                }
                Ok(None) => {}
                Err(e) => return Err(HandshakeError::Protocol(format!("sent a bad frame: {e}"))),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(HandshakeError::Timeout);
            }
            let _ = self.socket.set_read_timeout(Some(left));
            match self.socket.read(&mut chunk) {
                Ok(0) => return Err(HandshakeError::Closed),
                Ok(n) => self.leftover.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Err(HandshakeError::Closed),
            }
        }
    }

    /// Kill and reap a child whose handshake failed; say what went wrong.
    fn abandon(mut self, path: &std::path::Path, why: HandshakeError, timeout: Duration) -> LoadError {
        self.guard.signal(libc::SIGKILL);
        let status = self.guard.reap(&mut self.process).ok();
        let how = status.map(describe_status).unwrap_or_default();
        let detail = match why {
            HandshakeError::Timeout => {
                let tail = self.output.last_line();
                return LoadError::HelloTimeout { path: path.to_owned(), ms: timeout.as_millis() as u64, tail };
            }
            HandshakeError::Closed => format!("it {how} before saying hello"),
            HandshakeError::Protocol(p) => format!("it {p}; killed"),
        };
        let tail = self.output.last_words();
        let detail = if tail.is_empty() { detail } else { format!("{detail}; its last output: {tail}") };
        LoadError::Handshake { path: path.to_owned(), detail }
    }

    /// Close the socket and reap the child, killing it if it does not leave within `grace`.
    pub fn dismiss(mut self, grace: Duration) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.process.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.guard.signal(libc::SIGKILL);
        let _ = self.guard.reap(&mut self.process);
    }
}

pub enum HandshakeError {
    Timeout,
    Closed,
    Protocol(String),
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
