//! The floors the broker is measured against, in the same process and the same run:
//!
//! - `RawEcho`: a Unix-socket server with the broker's framing and no broker. One thread per
//!   connection reads frames (`FrameReader` + `decode_frame`), answers each with the same
//!   payload as a response (`encode_frame_into`), and writes all the answers to one read in
//!   one `write`, as the broker's connection reader does with `hold`/`flush`. Clients talk to
//!   it with `switchboard_client::Client`, exactly as they talk to the broker.
//! - `ChanEcho`: a thread answering `Message`s over crossbeam channels, one message each way
//!   per round trip: the cost of two thread hand-offs and nothing else.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use crossbeam_channel::{Receiver, Sender};
use switchboard_protocol::{decode_frame, encode_frame_into, FrameReader, Message, MsgType, DEFAULT_MAX_FRAME};

use crate::measure::{round_trips, windowed, BenchError, Result, Sample, RESPONSE_TIMEOUT};

// ------------------------------------------------------------------ raw socket echo

pub struct RawEcho {
    path: PathBuf,
    stopping: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl RawEcho {
    pub fn start(path: &Path) -> std::io::Result<RawEcho> {
        let listener = UnixListener::bind(path)?;
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let accept = std::thread::Builder::new().name("raw-accept".into()).spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let _ = std::thread::Builder::new().name("raw-echo".into()).spawn(move || serve(stream));
            }
        })?;
        Ok(RawEcho { path: path.to_owned(), stopping, accept: Some(accept) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RawEcho {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the blocked accept with a connection it will see and drop.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One connection: frames in, the same messages back as responses, until end of file.
fn serve(mut stream: UnixStream) {
    let reader = FrameReader::new(DEFAULT_MAX_FRAME);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut scratch = vec![0u8; 64 * 1024];
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        let n = match stream.read(&mut scratch) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        buf.extend_from_slice(&scratch[..n]);
        loop {
            match reader.next_frame(&mut buf) {
                Ok(Some(body)) => match decode_frame(body) {
                    Ok(msg) => encode_frame_into(&msg.response(msg.payload.clone()), &mut out),
                    Err(_) => return,
                },
                Ok(None) => break,
                Err(_) => return,
            }
        }
        if !out.is_empty() {
            if stream.write_all(&out).is_err() {
                return;
            }
            out.clear();
        }
    }
}

// ------------------------------------------------------------------ channel ping-pong

pub struct ChanEcho {
    tx: Option<Sender<Message>>,
    rx: Receiver<Message>,
    thread: Option<JoinHandle<()>>,
    request: Message,
}

impl ChanEcho {
    pub fn start(payload: &Bytes) -> std::io::Result<ChanEcho> {
        let (req_tx, req_rx) = crossbeam_channel::unbounded::<Message>();
        let (resp_tx, resp_rx) = crossbeam_channel::unbounded::<Message>();
        let thread = std::thread::Builder::new().name("chan-echo".into()).spawn(move || {
            for m in req_rx {
                if resp_tx.send(m.response(m.payload.clone())).is_err() {
                    return;
                }
            }
        })?;
        Ok(ChanEcho {
            tx: Some(req_tx),
            rx: resp_rx,
            thread: Some(thread),
            request: Message::request("echo.x", payload.clone()),
        })
    }

    fn send(&self, m: Message) -> Result<()> {
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(m).ok())
            .ok_or_else(|| BenchError("the channel echo thread is gone".into()))
    }

    fn recv(&self) -> Result<Message> {
        let m = self.rx.recv_timeout(RESPONSE_TIMEOUT).map_err(|e| BenchError(format!("channel echo: {e}")))?;
        if m.kind != MsgType::Response {
            return Err(BenchError("channel echo: not a response".into()));
        }
        Ok(m)
    }

    /// One message there, one back, repeated for `dur`.
    pub fn sequential(&mut self, dur: Duration) -> Result<Sample> {
        round_trips(self, dur, |e| {
            e.request.matchtag = e.request.matchtag.wrapping_add(1);
            e.send(e.request.clone())?;
            e.recv().map(drop)
        })
    }

    /// `window` messages in flight, one sent for each that comes back, for `dur`.
    pub fn pipelined(&mut self, window: usize, dur: Duration) -> Result<Sample> {
        windowed(self, window, dur, |e| e.send(e.request.clone()), |e| e.recv().map(drop))
    }
}

impl Drop for ChanEcho {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
