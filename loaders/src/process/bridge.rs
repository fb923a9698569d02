//! A running process module: a reader thread (socket -> broker), a writer thread (inbox ->
//! socket) and a reaper thread that waits for the child, retires the bridge and reports how
//! the child ended. Exactly one `exited` report, after the child is reaped and every frame it
//! wrote has been routed.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::inbox::Inbox;
use bytes::BytesMut;
use parking_lot::Mutex;
use switchboard_module_api::handshake::{Status, HELLO, STATUS};
use switchboard_module_api::proto::{decode_frame, encode_frame_into, FrameReader, MsgType, DEFAULT_MAX_FRAME};
use switchboard_module_api::{Level, Message};

use super::child::{describe_status, Child, Guard};
use crate::module::{BrokerPort, ExitStatus, ModuleLink, ModuleState};

/// How long a child that closed its socket may linger before it is killed.
const LINGER: Duration = Duration::from_secs(1);

pub struct ProcessRunning {
    pub guard: Arc<Guard>,
    port: Arc<dyn BrokerPort>,
    reaper: Mutex<Option<JoinHandle<()>>>,
}

impl ProcessRunning {
    /// SIGTERM now, SIGKILL after `grace` if it is still there; each one logged.
    pub fn escalate(&self, grace: Duration) {
        if !self.guard.signal(libc::SIGTERM) {
            return;
        }
        self.port.log(Level::Warn, "did not exit within its grace period after shutdown; sent SIGTERM");
        let (guard, port) = (self.guard.clone(), self.port.clone());
        let kill = move || {
            std::thread::sleep(grace);
            if guard.signal(libc::SIGKILL) {
                let ms = grace.as_millis();
                port.log(Level::Error, &format!("still running {ms} ms after SIGTERM; killed (SIGKILL)"));
            }
        };
        if let Err(e) = std::thread::Builder::new().name("mod-kill".into()).spawn(kill) {
            // No thread for the timer: kill now rather than never.
            self.guard.signal(libc::SIGKILL);
            self.port.log(Level::Error, &format!("killed (SIGKILL) at once: no thread for its SIGTERM grace ({e})"));
        }
    }

    pub fn join(&self) {
        if let Some(t) = self.reaper.lock().take() {
            let _ = t.join();
        }
    }
}

/// Why the bridge killed the child, if it did.
type Violation = Arc<Mutex<Option<String>>>;

pub fn start(child: Child, link: ModuleLink) -> std::io::Result<ProcessRunning> {
    let Child { process, socket, leftover, guard, output } = child;
    // Shared so that a start that fails half-way can still kill and reap the child.
    let process = Arc::new(Mutex::new(Some(process)));
    let inbox = link.inbox.clone();
    match spawn_threads(&process, &socket, leftover, &guard, output, link) {
        Ok(running) => Ok(running),
        Err(e) => {
            // Undo: nothing of the module may outlive a start that failed. The reader, if it
            // started, ends with the socket, the writer with the inbox.
            inbox.close();
            guard.signal(libc::SIGKILL);
            let _ = socket.shutdown(std::net::Shutdown::Both);
            if let Some(mut p) = process.lock().take() {
                let _ = guard.reap(&mut p);
            }
            Err(e)
        }
    }
}

fn spawn_threads(
    process: &Arc<Mutex<Option<std::process::Child>>>,
    socket: &UnixStream,
    leftover: BytesMut,
    guard: &Arc<Guard>,
    output: Arc<super::output::Output>,
    link: ModuleLink,
) -> std::io::Result<ProcessRunning> {
    let ModuleLink { inbox, port, .. } = link;
    output.attach(port.clone());
    let violation: Violation = Arc::default();
    let log_port = port.clone();

    let reader = {
        let (socket, port, guard, violation) = (socket.try_clone()?, port.clone(), guard.clone(), violation.clone());
        std::thread::Builder::new()
            .name("mod-reader".into())
            .spawn(move || read_loop(socket, leftover, &*port, &guard, &violation))?
    };
    let writer = {
        let socket = socket.try_clone()?;
        let inbox = inbox.clone();
        std::thread::Builder::new().name("mod-writer".into()).spawn(move || write_loop(socket, &inbox))?
    };
    let reaper = {
        let (guard, process, socket) = (guard.clone(), process.clone(), socket.try_clone()?);
        std::thread::Builder::new().name("mod-reaper".into()).spawn(move || {
            let Some(mut process) = process.lock().take() else { return };
            let status = guard.reap(&mut process);
            // Let the reader route what the child wrote last; a grandchild holding the
            // socket open must not keep us waiting.
            let deadline = std::time::Instant::now() + LINGER;
            while !reader.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            let _ = socket.shutdown(std::net::Shutdown::Both);
            let _ = reader.join();
            // The child is gone: the writer has nobody to write to.
            inbox.close();
            let _ = writer.join();
            let exit = match (violation.lock().take(), status) {
                (Some(v), _) => ExitStatus::Failed(v),
                (None, Ok(s)) if s.success() => ExitStatus::Exited,
                (None, Ok(s)) => {
                    let tail = output.last_words();
                    let how = describe_status(s);
                    ExitStatus::Failed(if tail.is_empty() { how } else { format!("{how}: {tail}") })
                }
                (None, Err(e)) => ExitStatus::Failed(format!("could not be waited for: {e}")),
            };
            port.exited(exit);
        })?
    };
    Ok(ProcessRunning { guard: guard.clone(), port: log_port, reaper: Mutex::new(Some(reaper)) })
}

fn read_loop(mut socket: UnixStream, mut buf: BytesMut, port: &dyn BrokerPort, guard: &Guard, violation: &Violation) {
    let reader = FrameReader::new(DEFAULT_MAX_FRAME);
    let mut chunk = vec![0u8; 64 * 1024];
    // How the socket ended, for the reason if the child then lingers.
    let mut ended = "closed its socket".to_string();
    'read: loop {
        port.hold();
        loop {
            match reader.next_frame(&mut buf) {
                Ok(None) => break,
                Ok(Some(body)) => match decode_frame(body) {
                    Ok(msg) if msg.kind == MsgType::Control => control(port, &msg),
                    Ok(msg) => port.send(msg),
                    Err(e) => {
                        misbehaved(port, guard, violation, format!("sent a malformed frame ({e}); killed"));
                        break 'read;
                    }
                },
                Err(e) => {
                    misbehaved(port, guard, violation, format!("sent a malformed frame ({e}); killed"));
                    break 'read;
                }
            }
        }
        port.flush();
        // No read timeout is set (the handshake cleared its own): silence is not an end.
        match socket.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                ended = format!("its socket could not be read from ({e})");
                port.log(Level::Warn, &ended);
                break;
            }
        }
    }
    port.flush();
    // The child's socket ended: it has nothing more to say. If it lingers, end it.
    let deadline = std::time::Instant::now() + LINGER;
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        if guard.is_reaped() {
            return;
        }
    }
    if guard.signal(libc::SIGKILL) {
        let why = format!("{ended} but was still running {} ms later; killed (SIGKILL)", LINGER.as_millis());
        port.log(Level::Error, &why);
        violation.lock().get_or_insert(why);
    }
}

fn misbehaved(port: &dyn BrokerPort, guard: &Guard, violation: &Violation, why: String) {
    port.log(Level::Error, &why);
    *violation.lock() = Some(why);
    guard.signal(libc::SIGKILL);
}

fn control(port: &dyn BrokerPort, msg: &Message) {
    match msg.topic.as_str() {
        STATUS => match msg.decode::<Status>().map(|s| s.state) {
            Ok(s) if s == "running" => port.set_state(ModuleState::Running),
            Ok(s) if s == "finalizing" => port.set_state(ModuleState::Finalizing),
            // init and exited are implied by the process itself.
            Ok(_) => {}
            Err(e) => port.log(Level::Warn, &format!("malformed status report: {e}")),
        },
        HELLO => {}
        other => port.log(Level::Debug, &format!("ignoring control message '{other}'")),
    }
}

fn write_loop(mut socket: UnixStream, inbox: &Inbox) {
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Ok(first) = inbox.recv(None) {
        encode_frame_into(&first, &mut buf);
        while buf.len() < 256 * 1024 {
            match inbox.try_recv() {
                Ok(Some(m)) => encode_frame_into(&m, &mut buf),
                _ => break,
            }
        }
        if socket.write_all(&buf).is_err() {
            return;
        }
        buf.clear();
    }
}
