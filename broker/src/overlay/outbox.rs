//! How the rest of the broker hands the overlay thread work: a channel of `Command`s and a
//! wake-up the thread polls beside its ZeroMQ sockets. `LinkOut` is a link's sink in the
//! routing table (what `Router::deliver` calls for a message that leaves by a link); `Control`
//! is the broker's handle on the thread. Any thread may use either; neither ever blocks.
//! The wake-up is written only when the thread may be asleep, so a burst costs one write.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::Sender;
use switchboard_module_api::Message;

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

/// A handle for sending the overlay thread commands.
#[derive(Clone)]
pub struct Control {
    pub(crate) tx: Sender<Command>,
    pub(crate) wake: Arc<Wake>,
}

impl Control {
    /// Hand the thread `cmd`; it comes back if the thread has ended (the broker is stopping,
    /// or the thread failed).
    pub(crate) fn send(&self, cmd: Command) -> Result<(), Box<Command>> {
        self.tx.send(cmd).map_err(|e| Box::new(e.0))?;
        self.wake.wake();
        Ok(())
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
