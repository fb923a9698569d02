//! A running process module as three tasks on the broker's runtime, and no thread:
//!
//! - the **reader** routes what the child writes to its socket (`BrokerPort::send`, which
//!   never blocks), holding the output of one read's frames and flushing it before it
//!   awaits the next read; it ends when the socket does or a frame is malformed;
//! - the **writer** awaits the module's inbox (`Inbox::recv_async`) and writes what it takes
//!   to the socket, batched while more is queued;
//! - the **keeper** owns the child: it awaits its exit, sends every signal (each one logged),
//!   and keeps the timers: a remove's SIGTERM-to-SIGKILL grace, and the `LINGER` a child
//!   gets after its socket ended. Once the child is reaped it lets the reader finish (at
//!   most `LINGER`: a grandchild holding the socket must not keep it waiting), ends the
//!   writer, and reports how the child ended: exactly one `exited`, after every frame the
//!   child wrote has been routed. Its last act is that report.
//!
//! Its stdout and stderr are two more tasks (`output`). Commands reach the keeper over a
//! channel (`ProcessRunning::terminate`), so the supervisor never waits on a child.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rustix::process::Signal;
use switchboard_protocol::handshake::{Status, HELLO, STATUS};
use switchboard_protocol::{decode_frame, encode_frame_into, FrameReader, Level, Message, MsgType, DEFAULT_MAX_FRAME};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::child::{describe_status, Child, READ_CHUNK};
use super::output::Output;
use super::reaper::Process;
use crate::inbox::Inbox;
use crate::module::{BrokerPort, ExitStatus, ModuleLink, ModuleState};

/// How long a child that closed its socket may linger before it is killed.
const LINGER: Duration = Duration::from_secs(1);
/// The writer stops taking more from the inbox for one write past this many bytes.
const WRITE_BATCH: usize = 256 << 10;
/// A write buffer grown past this (a large message) is let go once written.
const KEEP_WRITE_BUF: usize = 1 << 20;

/// The supervisor's handle on a running process module.
pub struct ProcessRunning {
    pid: u32,
    orders: mpsc::UnboundedSender<Order>,
    /// Set by the keeper once the child is reaped: its pid may then be another process's.
    reaped: Arc<AtomicBool>,
}

enum Order {
    /// SIGTERM now, SIGKILL after this grace if it is still there.
    Terminate(Duration),
}

impl ProcessRunning {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the child is still unreaped (so `pid` is still the child's).
    pub fn is_alive(&self) -> bool {
        !self.reaped.load(Ordering::Acquire)
    }

    /// Ask the keeper to escalate: SIGTERM now, SIGKILL after `grace`, each one logged.
    /// Never blocks; nothing is sent once the child is reaped.
    pub fn escalate(&self, grace: Duration) {
        let _ = self.orders.send(Order::Terminate(grace));
    }
}

/// Start the module's tasks on the runtime this thread is in (`Handle::enter`, or a task).
pub fn start(child: Child, link: ModuleLink) -> ProcessRunning {
    let Child { process, socket, leftover, output } = child;
    let ModuleLink { inbox, port, .. } = link;
    output.attach(port.clone());
    let (read, write) = socket.into_split();
    let reader = tokio::spawn(read_loop(read, leftover, port.clone()));
    let writer = tokio::spawn(write_loop(write, inbox.clone()));
    let (orders, orders_rx) = mpsc::unbounded_channel();
    let reaped = Arc::new(AtomicBool::new(false));
    let pid = process.id();
    let keeper = Keeper {
        process,
        reader: Some(reader),
        writer,
        orders: orders_rx,
        inbox,
        output,
        port,
        reaped: reaped.clone(),
        violation: None,
        killed: false,
    };
    tokio::spawn(keeper.run());
    ProcessRunning { pid, orders, reaped }
}

/// How the reader ended.
enum Ended {
    /// The socket ended (closed, or failed with the reason given).
    Closed(String),
    /// The child broke the framing; the reason is logged and the child is to be killed.
    Malformed(String),
}

struct Keeper {
    process: Process,
    /// Until it has ended.
    reader: Option<JoinHandle<Ended>>,
    writer: JoinHandle<()>,
    orders: mpsc::UnboundedReceiver<Order>,
    inbox: Arc<Inbox>,
    output: Arc<Output>,
    port: Arc<dyn BrokerPort>,
    reaped: Arc<AtomicBool>,
    /// Why the bridge killed the child, if it did: the failure's reason.
    violation: Option<String>,
    /// SIGKILL was sent: nothing more is.
    killed: bool,
}

impl Keeper {
    async fn run(mut self) {
        // Armed by a remove's SIGTERM (the grace until SIGKILL), and by the socket's end.
        let mut escalation: Option<(Instant, Duration)> = None;
        let mut linger: Option<(Instant, String)> = None;
        let status = loop {
            tokio::select! {
                biased;
                status = self.process.wait() => break status,
                ended = join(&mut self.reader) => {
                    self.reader = None;
                    if let Some(how) = self.reader_ended(ended) {
                        linger = Some((Instant::now() + LINGER, how));
                    }
                }
                Some(Order::Terminate(grace)) = self.orders.recv() => {
                    if !self.killed && self.process.signal(Signal::TERM) {
                        self.port.log(Level::Warn, "did not exit within its grace period after shutdown; sent SIGTERM");
                        escalation.get_or_insert((Instant::now() + grace, grace));
                    }
                }
                () = at(escalation.map(|(when, _)| when)) => {
                    let grace = escalation.take().map_or(0, |(_, grace)| grace.as_millis());
                    self.kill(format!("still running {grace} ms after SIGTERM; killed (SIGKILL)"), false);
                }
                () = at(linger.as_ref().map(|(when, _)| *when)) => {
                    let how = linger.take().map(|(_, how)| how).unwrap_or_default();
                    let ms = LINGER.as_millis();
                    self.kill(format!("{how} but was still running {ms} ms later; killed (SIGKILL)"), true);
                }
            }
        };
        self.reaped.store(true, Ordering::Release);
        // Route what the child wrote last; a grandchild holding the socket open must not
        // keep the report waiting.
        if let Some(mut reader) = self.reader.take() {
            match tokio::time::timeout(LINGER, join_one(&mut reader)).await {
                Ok(ended) => {
                    self.reader_ended(ended);
                }
                Err(_) => reader.abort(),
            }
        }
        // The child is gone: the writer has nobody to write to.
        self.inbox.close();
        self.writer.abort();
        let exit = match (self.violation.take(), status) {
            (Some(v), _) => ExitStatus::Failed(v),
            (None, Ok(s)) if s.success() => ExitStatus::Exited,
            (None, Ok(s)) => {
                let tail = self.output.last_words().await;
                let how = describe_status(s);
                ExitStatus::Failed(if tail.is_empty() { how } else { format!("{how}: {tail}") })
            }
            (None, Err(e)) => ExitStatus::Failed(format!("could not be waited for: {e}")),
        };
        self.port.exited(exit);
    }

    /// The reader ended: a malformed frame is a violation (logged, the child killed); a
    /// socket that ended is returned, for the lingering child's reason.
    fn reader_ended(&mut self, ended: Ended) -> Option<String> {
        match ended {
            Ended::Malformed(why) => {
                self.port.log(Level::Error, &why);
                self.violation.get_or_insert(why);
                self.killed |= self.process.signal(Signal::KILL);
                None
            }
            Ended::Closed(how) => Some(how),
        }
    }

    /// SIGKILL unless it was sent already, logged at ERROR with `why`; with `fails`, `why`
    /// is the failure's reason (unless an earlier violation is).
    fn kill(&mut self, why: String, fails: bool) {
        if self.killed || !self.process.signal(Signal::KILL) {
            return;
        }
        self.killed = true;
        self.port.log(Level::Error, &why);
        if fails {
            self.violation.get_or_insert(why);
        }
    }
}

/// The reader's end, once; pending for ever after (or if there is none).
async fn join(reader: &mut Option<JoinHandle<Ended>>) -> Ended {
    match reader {
        Some(handle) => join_one(handle).await,
        None => std::future::pending().await,
    }
}

async fn join_one(reader: &mut JoinHandle<Ended>) -> Ended {
    reader.await.unwrap_or_else(|e| Ended::Closed(format!("its socket's reader ended ({e})")))
}

/// Ready at `when`; never without one.
async fn at(when: Option<Instant>) {
    match when {
        Some(when) => tokio::time::sleep_until(when).await,
        None => std::future::pending().await,
    }
}

async fn read_loop(mut socket: OwnedReadHalf, mut buf: BytesMut, port: Arc<dyn BrokerPort>) -> Ended {
    let reader = FrameReader::new(DEFAULT_MAX_FRAME);
    loop {
        if let Err(e) = route_frames(&reader, &mut buf, &*port) {
            let why = format!("sent a malformed frame ({e}); killed");
            return Ended::Malformed(why);
        }
        // No read timeout: silence is not an end (RFC 5 §5).
        if buf.capacity() - buf.len() < READ_CHUNK / 16 {
            buf.reserve(READ_CHUNK);
        }
        match socket.read_buf(&mut buf).await {
            Ok(0) => return Ended::Closed("closed its socket".into()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                let why = format!("its socket could not be read from ({e})");
                port.log(Level::Warn, &why);
                return Ended::Closed(why);
            }
        }
    }
}

/// Route every whole frame in `buf`, holding their output to clients until the last is
/// routed. Never awaits: the hold is this worker thread's until the flush.
fn route_frames(reader: &FrameReader, buf: &mut BytesMut, port: &dyn BrokerPort) -> Result<(), String> {
    port.hold();
    let routed = loop {
        match reader.next_frame(buf) {
            Ok(None) => break Ok(()),
            Ok(Some(body)) => match decode_frame(body) {
                Ok(msg) if msg.kind == MsgType::Control => control(port, &msg),
                Ok(msg) => port.send(msg),
                Err(e) => break Err(e.to_string()),
            },
            Err(e) => break Err(e.to_string()),
        }
    };
    port.flush();
    routed
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

async fn write_loop(mut socket: OwnedWriteHalf, inbox: Arc<Inbox>) {
    let mut buf = Vec::new();
    while let Ok(first) = inbox.recv_async().await {
        encode_frame_into(&first, &mut buf);
        while buf.len() < WRITE_BATCH {
            match inbox.try_recv() {
                Ok(Some(m)) => encode_frame_into(&m, &mut buf),
                _ => break,
            }
        }
        if socket.write_all(&buf).await.is_err() {
            return;
        }
        buf.clear();
        if buf.capacity() > KEEP_WRITE_BUF {
            buf = Vec::new();
        }
    }
}
