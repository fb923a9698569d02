//! How the rest of the broker hands the overlay thread work: a queue of `Command`s and a
//! wake-up the thread polls beside its ZeroMQ sockets. The queue is a vector under a lock that
//! the thread swaps whole for an empty one of its own, so that in steady state nothing
//! allocates (a channel's blocks did, and cost glibc a consolidation each, measured). `LinkOut` is a link's sink in the
//! routing table (what `Router::deliver` calls for a message that leaves by a link); `Control`
//! is the broker's handle on the thread. Any thread may use either; neither ever blocks.
//! The wake-up is written only when the thread may be asleep, so a burst costs one write.

use std::cell::RefCell;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use switchboard_protocol::Message;

use crate::router::EndpointId;

/// The two ends of a link, seen from this broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Parent(u32),
    Child(u32),
}

impl Peer {
    pub fn rank(self) -> u32 {
        match self {
            Peer::Parent(r) | Peer::Child(r) => r,
        }
    }
}

/// Work for the overlay thread.
pub(crate) enum Command {
    /// Send `msg` on the link whose endpoint is `link` (to `peer`).
    Send { peer: Peer, link: EndpointId, msg: Message },
    /// Answer this `overlay.status` request.
    Status(Message),
    /// Close the sockets and end the thread.
    Stop,
    /// Read and send nothing until this sender is dropped or sends (a peer that does not
    /// read its link, for tests).
    #[cfg(test)]
    Pause(std::sync::mpsc::Receiver<()>),
}

/// Wakes the overlay thread from its poll.
pub(crate) struct Wake {
    stream: UnixStream,
    /// True from the first wake-up written until the thread has looked at its channel.
    armed: AtomicBool,
}

impl Wake {
    /// The waker, and the end the thread polls.
    pub(crate) fn pair() -> std::io::Result<(Arc<Wake>, UnixStream)> {
        let (tx, rx) = UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        Ok((Arc::new(Wake { stream: tx, armed: AtomicBool::new(false) }), rx))
    }

    pub(crate) fn wake(&self) {
        if !self.armed.swap(true, Ordering::SeqCst) {
            // A full socket buffer means a wake-up is already pending: nothing is lost.
            let _ = (&self.stream).write(&[1]);
        }
    }

    /// The thread is about to look at its channel: wake-ups from now on must be written.
    pub(crate) fn disarm(&self) {
        self.armed.store(false, Ordering::SeqCst);
    }
}

/// What waits for the thread.
struct Queue {
    commands: Vec<Command>,
    /// False once the thread has ended: nothing more is taken.
    open: bool,
}

/// A handle for sending the overlay thread commands.
#[derive(Clone)]
pub struct Control {
    queue: Arc<Mutex<Queue>>,
    pub(crate) wake: Arc<Wake>,
}

impl Control {
    pub(crate) fn new(wake: Arc<Wake>) -> Control {
        Control { queue: Arc::new(Mutex::new(Queue { commands: Vec::new(), open: true })), wake }
    }

    /// Hand the thread `cmd`; it comes back if the thread has ended (the broker is stopping,
    /// or the thread failed).
    pub(crate) fn send(&self, cmd: Command) -> Result<(), Box<Command>> {
        let Some(cmd) = keep_if_own(&self.wake, cmd) else { return Ok(()) };
        {
            let mut q = self.queue.lock();
            if !q.open {
                return Err(Box::new(cmd));
            }
            q.commands.push(cmd);
        }
        self.wake.wake();
        Ok(())
    }

    /// For the thread: swap what waits into `into` (empty; its buffer goes to the queue).
    pub(crate) fn take(&self, into: &mut Vec<Command>) {
        std::mem::swap(&mut self.queue.lock().commands, into);
    }

    /// For the thread, as it ends: take nothing more; what was waiting is returned.
    pub(crate) fn close(&self) -> Vec<Command> {
        let mut q = self.queue.lock();
        q.open = false;
        std::mem::take(&mut q.commands)
    }

    /// Have the thread answer an `overlay.status` request; the request comes back if it has
    /// ended.
    pub fn status(&self, req: Message) -> Result<(), Box<Message>> {
        match self.send(Command::Status(req)).map_err(|c| *c) {
            Err(Command::Status(req)) => Err(Box::new(req)),
            _ => Ok(()),
        }
    }
}

thread_local! {
    /// On an overlay thread: what it sent itself while routing (a message relayed from one
    /// link to another), with the identity of its wake-up. Kept here for it to send in its
    /// loop, instead of going through its own channel and waking itself.
    static OWN: RefCell<Option<(usize, Vec<Command>)>> = const { RefCell::new(None) };
}

/// This thread is the overlay thread of `control`.
pub(crate) fn own_sends_here(control: &Control) {
    OWN.with(|o| *o.borrow_mut() = Some((Arc::as_ptr(&control.wake) as usize, Vec::new())));
}

/// Move what this (overlay) thread sent itself since the last call into `into` (empty; its
/// buffer is swapped in, so neither side allocates again). False if there was nothing.
pub(crate) fn take_own_sends(into: &mut Vec<Command>) -> bool {
    OWN.with(|o| match o.borrow_mut().as_mut() {
        Some((_, q)) if !q.is_empty() => {
            std::mem::swap(q, into);
            true
        }
        _ => false,
    })
}

/// `cmd` kept for this thread if it is the overlay thread `wake` belongs to (None); else `cmd`.
/// Events always take the shared queue: rank 0 numbers them and hands them to every link
/// under one lock, and they must reach the sockets in that order whichever thread published
/// them (RFC 7 §4.5); the thread sends its own list after the queue.
fn keep_if_own(wake: &Arc<Wake>, cmd: Command) -> Option<Command> {
    if matches!(&cmd, Command::Send { msg, .. } if msg.kind == switchboard_protocol::MsgType::Event) {
        return Some(cmd);
    }
    OWN.with(|o| match o.borrow_mut().as_mut() {
        Some((id, q)) if *id == Arc::as_ptr(wake) as usize => {
            q.push(cmd);
            None
        }
        _ => Some(cmd),
    })
}

/// A link's sink in the routing table.
pub struct LinkOut {
    pub peer: Peer,
    pub(crate) control: Control,
}

impl LinkOut {
    /// Hand `msg` to the thread for the link whose endpoint is `link`; it comes back if the
    /// thread has ended, for the caller to answer.
    pub fn enqueue(&self, link: EndpointId, msg: Message) -> Result<(), Box<Message>> {
        match self.control.send(Command::Send { peer: self.peer, link, msg }).map_err(|c| *c) {
            Err(Command::Send { msg, .. }) => Err(Box::new(msg)),
            _ => Ok(()),
        }
    }
}
