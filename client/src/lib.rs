//! The client connector: a blocking connection to a broker's local socket (RFC 1 §6), for
//! `modctl`, scripts and programs. Requests get matchtags; `rpc` waits for the matching
//! response and keeps whatever else arrives for `recv`. A request goes to the broker of any
//! rank of the instance with `rpc_on` (RFC 7 §4.2), and the same request to many ranks at
//! once, pipelined on this one connection, with `rpc_ranks`.

// Unsafe code here: reads into a buffer's spare capacity without zeroing it first.
#![allow(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use thiserror::Error;

use switchboard_protocol::uri;
use switchboard_protocol::Error as RemoteError;
use switchboard_protocol::{
    decode_frame, encode_frame_into, FrameError, FrameReader, Message, MsgType, DEFAULT_MAX_FRAME, NODEID_ANY,
};

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

/// One rank's answer to [`Client::rpc_ranks`].
#[derive(Debug)]
pub struct RankReply {
    pub rank: u32,
    /// From the request's write to its response's arrival (zero when it got none).
    pub elapsed: Duration,
    /// The response; an error response is `Err(Remote)`, no response by the deadline
    /// `Err(Timeout)`.
    pub result: Result<Message, ClientError>,
}

/// How many requests `rpc_ranks` keeps in flight at once: more ranks than that are sent as
/// answers come back, so a huge rank list cannot pile up unbounded output either way.
const RANKS_IN_FLIGHT: usize = 1024;

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
        Ok(Self::over(stream, path))
    }

    fn over(stream: UnixStream, path: &Path) -> Client {
        Client {
            stream,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: Vec::with_capacity(64 * 1024),
            reader: FrameReader::new(DEFAULT_MAX_FRAME),
            pending: VecDeque::new(),
            next_tag: 1,
            path: path.to_owned(),
            read_timeout: None,
        }
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
        self.rpc_raw_on(NODEID_ANY, topic, payload, timeout)
    }

    /// `rpc_raw` with a msgpack payload made from `value`.
    pub fn rpc<T: Serialize + ?Sized>(&mut self, topic: &str, value: &T) -> Result<Message, ClientError> {
        self.rpc_on(NODEID_ANY, topic, value)
    }

    /// `rpc_raw` to the broker of rank `nodeid` (RFC 7 §4.2): the request crosses the tree
    /// to that broker and is routed there by service. `NODEID_ANY` is `rpc_raw`;
    /// `NODEID_UPSTREAM` is this broker's parent. A rank the instance does not have, or
    /// cannot reach now, is an EHOSTUNREACH error response.
    pub fn rpc_raw_on(
        &mut self,
        nodeid: u32,
        topic: &str,
        payload: Bytes,
        timeout: Option<Duration>,
    ) -> Result<Message, ClientError> {
        let tag = self.queue_request(nodeid, topic, payload);
        self.flush()?;
        self.wait_response(tag, timeout)
    }

    /// `rpc_raw_on` with a msgpack payload made from `value`, waiting for ever.
    pub fn rpc_on<T: Serialize + ?Sized>(
        &mut self,
        nodeid: u32,
        topic: &str,
        value: &T,
    ) -> Result<Message, ClientError> {
        let payload = Message::encode_payload(value).map_err(|e| ClientError::Payload(e.to_string()))?;
        self.rpc_raw_on(nodeid, topic, payload, None)
    }

    /// Queue a request to rank `nodeid` (`NODEID_ANY`: wherever the service is) and return
    /// its matchtag; `flush` writes it, `wait_response` waits for its answer. For a caller
    /// that keeps several requests in flight on this connection.
    pub fn queue_request(&mut self, nodeid: u32, topic: &str, payload: Bytes) -> u32 {
        let mut req = Message::request(topic, payload);
        req.nodeid = nodeid;
        req.matchtag = self.next_matchtag();
        self.queue(&req);
        req.matchtag
    }

    /// The same request to the broker of each of `ranks`, all in flight at once on this
    /// connection (each with its own matchtag; at most 1024 at a time, the next sent as
    /// answers come), answers taken in whatever order they arrive. One reply per entry of
    /// `ranks`, in that order. `timeout` bounds the whole call: a rank not answered by then
    /// gets `Err(Timeout)` (its late response, if it comes, is kept for `recv` like any
    /// message nobody waits for). `Err` for the whole call only when the connection fails.
    pub fn rpc_ranks(
        &mut self,
        ranks: &[u32],
        topic: &str,
        payload: Bytes,
        timeout: Option<Duration>,
    ) -> Result<Vec<RankReply>, ClientError> {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut replies: Vec<Option<RankReply>> = ranks.iter().map(|_| None).collect();
        // matchtag -> (index in `ranks`, when it was sent)
        let mut waiting: HashMap<u32, (usize, Instant)> = HashMap::new();
        let mut next = 0;
        loop {
            if next < ranks.len() && waiting.len() < RANKS_IN_FLIGHT {
                let sent = Instant::now();
                while next < ranks.len() && waiting.len() < RANKS_IN_FLIGHT {
                    let tag = self.queue_request(ranks[next], topic, payload.clone());
                    waiting.insert(tag, (next, sent));
                    next += 1;
                }
                self.flush()?;
            }
            if waiting.is_empty() {
                break;
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                break;
            }
            match self.read_message(left) {
                Ok(msg) if msg.kind == MsgType::Response && waiting.contains_key(&msg.matchtag) => {
                    if let Some((i, sent)) = waiting.remove(&msg.matchtag) {
                        let elapsed = sent.elapsed();
                        replies[i] = Some(RankReply { rank: ranks[i], elapsed, result: into_result(msg) });
                    }
                }
                Ok(msg) => self.pending.push_back(msg),
                Err(ClientError::Timeout) => {}
                Err(e) => return Err(e),
            }
        }
        // What is left got no answer in time (or was never sent: the deadline came first).
        Ok(replies
            .into_iter()
            .zip(ranks)
            .map(|(r, &rank)| {
                r.unwrap_or(RankReply { rank, elapsed: Duration::ZERO, result: Err(ClientError::Timeout) })
            })
            .collect())
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

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_protocol::{encode_frame, Errno};

    /// A broker on the other end of a socket pair that reads `n` requests before it answers
    /// any, then answers them last first: rank 3 with EHOSTUNREACH, rank 9 never.
    /// Its end of the socket stays open until the test joins it.
    fn fake_broker(n: usize) -> (Client, std::thread::JoinHandle<(Vec<Message>, UnixStream)>) {
        let (ours, mut theirs) = UnixStream::pair().expect("socketpair");
        let broker = std::thread::spawn(move || {
            let (mut buf, reader, mut got) = (BytesMut::new(), FrameReader::new(DEFAULT_MAX_FRAME), Vec::new());
            while got.len() < n {
                let mut chunk = [0u8; 4096];
                let k = theirs.read(&mut chunk).expect("read");
                assert!(k > 0, "the client closed early");
                buf.extend_from_slice(&chunk[..k]);
                while let Some(body) = reader.next_frame(&mut buf).expect("frame") {
                    got.push(decode_frame(body).expect("message"));
                }
            }
            // Something nobody asked for comes first: it is kept for recv.
            theirs.write_all(&encode_frame(&Message::event("ev", Bytes::new()))).expect("write");
            for req in got.iter().rev() {
                let answer = match req.nodeid {
                    3 => req.error_response(Errno::EHOSTUNREACH, "no rank 3"),
                    9 => continue,
                    n => req.response(Message::encode_payload(&n).expect("encode")),
                };
                theirs.write_all(&encode_frame(&answer)).expect("write");
            }
            (got, theirs)
        });
        (Client::over(ours, Path::new("pair")), broker)
    }

    #[test]
    fn rpc_ranks_sends_every_request_before_any_answer_and_reports_each_rank_in_order() {
        let (mut c, broker) = fake_broker(4);
        let ranks = [0, 3, 9, 5];
        let replies = c.rpc_ranks(&ranks, "module.list", Bytes::new(), Some(Duration::from_millis(500))).expect("rpc");
        let (sent, _) = broker.join().expect("the fake broker");
        assert_eq!(sent.iter().map(|m| m.nodeid).collect::<Vec<_>>(), ranks);
        let mut tags: Vec<u32> = sent.iter().map(|m| m.matchtag).collect();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), 4, "each request has its own matchtag");
        assert_eq!(replies.iter().map(|r| r.rank).collect::<Vec<_>>(), ranks);
        let answered = |i: usize| replies[i].result.as_ref().ok().and_then(|m| m.decode::<u32>().ok());
        assert_eq!((answered(0), answered(3)), (Some(0), Some(5)));
        assert_eq!(
            replies[1].result.as_ref().err().and_then(|e| e.remote()).map(|e| e.errnum),
            Some(Errno::EHOSTUNREACH)
        );
        assert!(matches!(replies[2].result, Err(ClientError::Timeout)), "{:?}", replies[2].result);
        // The event that came in between waits for recv.
        assert_eq!(c.recv_timeout(Some(Duration::ZERO)).expect("event").topic, "ev");
    }

    #[test]
    fn rpc_on_sets_the_nodeid() {
        let (mut c, broker) = fake_broker(1);
        let r = c.rpc_raw_on(7, "broker.info", Bytes::new(), Some(Duration::from_secs(5))).expect("rpc");
        assert_eq!(r.decode::<u32>().expect("payload"), 7);
        assert_eq!(broker.join().expect("the fake broker").0[0].nodeid, 7);
    }
}
