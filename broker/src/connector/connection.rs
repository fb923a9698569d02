//! One client connection on the runtime: its reader task decodes frames and hands each
//! message to the router; its writer task (`ConnOut::write_task`) sends what the direct path
//! could not. A malformed frame is answered with EPROTO; an oversized one closes the
//! connection. On disconnect, every service the client used gets a `disconnect` request so
//! its module can drop the client's state.
//!
//! A connection costs two small tasks and no thread. An idle one holds no read buffer:
//! reads go into a buffer of the worker thread's own, and only a frame split across reads
//! is kept by the connection until the rest arrives. Nothing here blocks: `Router::route`
//! never does.

use std::cell::Cell;
use std::sync::Arc;

use bytes::BytesMut;
use switchboard_protocol::{decode_frame, Errno, Flags, FrameError, FrameReader, Message, MsgType};
use tokio::io::Interest;
use tokio::net::UnixStream;

use crate::router::{self, ConnOut, Endpoint, Router};

/// What a read asks the socket for, at least.
const READ_CHUNK: usize = 64 << 10;
/// Below this much room the read buffer is renewed.
const MIN_ROOM: usize = 4 << 10;

thread_local! {
    /// The worker thread's read buffer, lent to one connection's read at a time.
    static SCRATCH: Cell<BytesMut> = Cell::new(BytesMut::new());
}

/// A connection's state across reads.
pub(super) struct Connection {
    pub router: Arc<Router>,
    pub ep: Arc<Endpoint>,
    pub stream: Arc<UnixStream>,
    pub out: Arc<ConnOut>,
    pub reader: FrameReader,
    /// The start of a frame whose rest has not arrived yet.
    pub partial: BytesMut,
    /// Services this client sent requests to: each gets `disconnect` when it leaves.
    pub used: Vec<String>,
}

/// What a read came to.
enum Read {
    More,
    Closed,
}

impl Connection {
    /// The reader task: frames in, messages routed, until end of file or a fatal frame.
    pub async fn serve(mut self) {
        loop {
            if self.stream.readable().await.is_err() {
                break;
            }
            if let Read::Closed = self.read() {
                break;
            }
        }
        self.leave();
    }

    /// Read what the socket has and route every whole frame in it.
    fn read(&mut self) -> Read {
        let from_scratch = self.partial.is_empty();
        let mut buf = if from_scratch { SCRATCH.take() } else { std::mem::take(&mut self.partial) };
        if buf.capacity() - buf.len() < MIN_ROOM {
            buf.reserve(READ_CHUNK);
        }
        // A read shorter than the room offered took all the socket had: the readiness is
        // cleared then and there (by answering "would block" to `try_io`), so the task waits
        // for the next message without first reading once more to see EAGAIN. Data or a
        // close that arrives meanwhile sets it again (tokio clears only the readiness it saw).
        let room = buf.capacity() - buf.len();
        let mut got = None;
        let read = self.stream.try_io(Interest::READABLE, || {
            let n = self.stream.try_read_buf(&mut buf)?;
            got = Some(n);
            if n > 0 && n < room {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        let outcome = match got.map_or(read, Ok) {
            Ok(0) => Read::Closed,
            Ok(_) => self.route_frames(&mut buf),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) => {
                Read::More
            }
            Err(_) => Read::Closed,
        };
        // A partial frame stays with the connection: split off the thread's buffer (which
        // goes back to the thread), or the connection's own buffer, kept with its room so
        // that a large frame grows in place. An idle connection keeps no buffer.
        if from_scratch {
            if !buf.is_empty() {
                self.partial = buf.split();
            }
            SCRATCH.set(buf);
        } else if !buf.is_empty() {
            self.partial = buf;
        }
        outcome
    }

    fn route_frames(&mut self, buf: &mut BytesMut) -> Read {
        router::hold();
        let outcome = loop {
            match self.reader.next_frame(buf) {
                Ok(None) => break Read::More,
                Ok(Some(body)) => match decode_frame(body) {
                    Ok(mut msg) => {
                        msg.cred = self.ep.cred;
                        let new_service = (msg.kind == MsgType::Request
                            && !self.used.iter().any(|s| s == msg.service()))
                        .then(|| msg.service().to_string());
                        if let (Some(_), Some(s)) = (self.router.route(&self.ep, msg), new_service) {
                            self.used.push(s);
                        }
                    }
                    Err(e) => reject(&self.ep, &self.out, &e),
                },
                Err(e) => {
                    reject(&self.ep, &self.out, &e);
                    buf.clear();
                    break Read::Closed;
                }
            }
        };
        router::flush();
        outcome
    }

    /// The client left (or was closed): retire its endpoint and tell the services it used.
    fn leave(self) {
        tracing::debug!(id = self.ep.id, "client disconnected");
        self.out.close();
        self.router.retire(&self.ep, "disconnected");
        router::hold();
        for service in self.used {
            let mut bye = Message::request(format!("{service}.disconnect"), bytes::Bytes::new());
            bye.flags = Flags::NO_RESPONSE;
            bye.cred = self.ep.cred;
            self.router.route(&self.ep, bye);
        }
        router::flush();
    }
}

/// Tell the client its frame was malformed. The broker cannot know the request's matchtag,
/// so the error response carries matchtag 0 (RFC 1 §6.3).
fn reject(ep: &Endpoint, out: &Arc<ConnOut>, e: &FrameError) {
    tracing::warn!(client = %ep.label, "malformed frame: {e}");
    let mut err =
        Message::request("", bytes::Bytes::new()).error_response(Errno::EPROTO, format!("malformed frame: {e}"));
    err.route.clear();
    out.enqueue(&err);
}
