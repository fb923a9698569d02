//! The client connector: a blocking connection to a broker's local socket (RFC 1 §6), for
//! `modctl`, scripts and programs. Requests get matchtags; `rpc` waits for the matching
//! response and keeps whatever else arrives for `recv`.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use thiserror::Error;

use crate::error::Error as RemoteError;
use crate::proto::{decode_frame, encode_frame_into, FrameError, FrameReader, Message, MsgType, DEFAULT_MAX_FRAME};
use crate::uri;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("no broker is listening at {path} ({source}); start one with `switchboard`, or set SWITCHBOARD_URI to its socket")]
    NoBroker { path: PathBuf, source: io::Error },
    #[error("the broker closed the connection")]
    Closed,
    #[error("the broker refused this connection: {0}")]
    Refused(RemoteError),
    #[error("i/o error talking to the broker: {0}")]
    Io(#[from] io::Error),
    #[error("the broker sent a bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("timed out waiting for the broker")]
    Timeout,
    #[error("{0}")]
    Remote(RemoteError),
    #[error("payload: {0}")]
    Payload(String),
}

impl ClientError {
    /// The remote errno, if this is an error response.
    pub fn remote(&self) -> Option<&RemoteError> {
        match self {
            ClientError::Remote(e) | ClientError::Refused(e) => Some(e),
            _ => None,
        }
    }
}

pub struct Client {
    stream: UnixStream,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    reader: FrameReader,
    pending: VecDeque<Message>,
    next_tag: u32,
    path: PathBuf,
    /// The socket's read timeout as last set, to skip redundant setsockopt calls.
    read_timeout: Option<Duration>,
}

impl Client {
    /// Connect to `SWITCHBOARD_URI`, or the default socket.
    pub fn connect_default() -> Result<Self, ClientError> {
        Self::connect(&uri::resolve())
    }

    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream =
            UnixStream::connect(path).map_err(|source| ClientError::NoBroker { path: path.to_owned(), source })?;
        Ok(Client {
            stream,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: Vec::with_capacity(64 * 1024),
            reader: FrameReader::new(DEFAULT_MAX_FRAME),
            pending: VecDeque::new(),
            next_tag: 1,
            path: path.to_owned(),
            read_timeout: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A fresh matchtag (never 0).
    pub fn next_matchtag(&mut self) -> u32 {
        let t = self.next_tag;
        self.next_tag = t.wrapping_add(1).max(1);
        t
    }

    /// Queue a message; it is written by `flush` (or the next `send`).
    pub fn queue(&mut self, msg: &Message) {
        encode_frame_into(msg, &mut self.wbuf);
    }

    pub fn flush(&mut self) -> Result<(), ClientError> {
        if !self.wbuf.is_empty() {
            let r = self.stream.write_all(&self.wbuf);
            self.wbuf.clear();
            if let Err(e) = r {
                // A broker that refused us wrote why before closing: report that.
                if let Err(refused @ ClientError::Refused(_)) = self.read_message(Some(Duration::from_millis(100))) {
                    return Err(refused);
                }
                return Err(self.closed_or(e));
            }
        }
        Ok(())
    }

    pub fn send(&mut self, msg: &Message) -> Result<(), ClientError> {
        self.queue(msg);
        self.flush()
    }

    /// The next message from the broker, waiting up to `timeout` (None = forever).
    pub fn recv_timeout(&mut self, timeout: Option<Duration>) -> Result<Message, ClientError> {
        if let Some(m) = self.pending.pop_front() {
            return Ok(m);
        }
        self.read_message(timeout)
    }

    pub fn recv(&mut self) -> Result<Message, ClientError> {
        self.recv_timeout(None)
    }

    fn read_message(&mut self, timeout: Option<Duration>) -> Result<Message, ClientError> {
        loop {
            if let Some(body) = self.reader.next_frame(&mut self.rbuf)? {
                let msg = decode_frame(body)?;
                // A control message with an errno is the broker refusing us (RFC 1 §5).
                if msg.kind == MsgType::Control && msg.is_error() {
                    if let Some(e) = RemoteError::from_response(&msg) {
                        return Err(ClientError::Refused(e));
                    }
                }
                return Ok(msg);
            }
            // The socket API has no zero timeout: the shortest it takes is a microsecond.
            let timeout = timeout.map(|t| t.max(Duration::from_micros(1)));
            if timeout != self.read_timeout {
                self.stream.set_read_timeout(timeout)?;
                self.read_timeout = timeout;
            }
            if self.rbuf.capacity() - self.rbuf.len() < 4096 {
                self.rbuf.reserve(64 * 1024);
            }
            let n = {
                let spare = self.rbuf.spare_capacity_mut();
                // SAFETY: read() only writes initialised bytes into the slice it is given.
                let spare = unsafe { &mut *(spare as *mut [std::mem::MaybeUninit<u8>] as *mut [u8]) };
                match self.stream.read(spare) {
                    Ok(n) => n,
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                        return Err(ClientError::Timeout)
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(self.closed_or(e)),
                }
            };
            if n == 0 {
                return Err(ClientError::Closed);
            }
            // SAFETY: `n` bytes were just written by read().
            unsafe { self.rbuf.set_len(self.rbuf.len() + n) };
        }
    }

    fn closed_or(&self, e: io::Error) -> ClientError {
        match e.kind() {
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof => {
                ClientError::Closed
            }
            _ => ClientError::Io(e),
        }
    }

    /// Send a request and wait for its response; an error response is `Err(Remote)`.
    pub fn rpc_raw(&mut self, topic: &str, payload: Bytes, timeout: Option<Duration>) -> Result<Message, ClientError> {
        let mut req = Message::request(topic, payload);
        req.matchtag = self.next_matchtag();
        self.send(&req)?;
        self.wait_response(req.matchtag, timeout)
    }

    /// `rpc_raw` with a msgpack payload made from `value`.
    pub fn rpc<T: Serialize + ?Sized>(&mut self, topic: &str, value: &T) -> Result<Message, ClientError> {
        let payload = Message::encode_payload(value).map_err(|e| ClientError::Payload(e.to_string()))?;
        self.rpc_raw(topic, payload, None)
    }

    /// Wait for the response with `matchtag`, keeping other messages for `recv`.
    pub fn wait_response(&mut self, matchtag: u32, timeout: Option<Duration>) -> Result<Message, ClientError> {
        if let Some(i) = self.pending.iter().position(|m| m.kind == MsgType::Response && m.matchtag == matchtag) {
            return into_result(self.pending.remove(i).ok_or(ClientError::Closed)?);
        }
        loop {
            let msg = self.read_message(timeout)?;
            if msg.kind == MsgType::Response && msg.matchtag == matchtag {
                return into_result(msg);
            }
            self.pending.push_back(msg);
        }
    }
}

fn into_result(msg: Message) -> Result<Message, ClientError> {
    match RemoteError::from_response(&msg) {
        Some(e) => Err(ClientError::Remote(e)),
        None => Ok(msg),
    }
}
