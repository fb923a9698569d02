//! What one measurement is, and the two client loops every socket benchmark shares:
//! sequential round trips and a pipelined window, both over `switchboard_client::Client`,
//! so the raw-socket floor and the broker paths run exactly the same client code (the
//! `*_requests` forms take a whole request, e.g. one with a `nodeid` for the overlay rows).

// Unsafe code here: reads its own CPU time (`getrusage`).
#![allow(unsafe_code)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_client::{Client, ClientError};
use switchboard_protocol::{Message, MsgType};

/// How long a benchmark waits for any one response before it calls the run failed.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The cost of one measured interval.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Round trips completed in the interval.
    pub ops: u64,
    pub elapsed: Duration,
    /// CPU time of the whole process (client, broker, modules, floor threads).
    pub cpu: Duration,
    /// Context switches of the whole process, voluntary (blocking waits) and not.
    pub vcsw: u64,
    pub ivcsw: u64,
}

impl Sample {
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Process-wide resource counters, for CPU time and context switches per operation.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    cpu: Duration,
    vcsw: u64,
    ivcsw: u64,
}

impl Usage {
    pub fn now() -> Usage {
        // SAFETY: getrusage only writes the struct it is given.
        let ru = unsafe {
            let mut ru: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_SELF, &mut ru);
            ru
        };
        let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
        Usage { cpu: tv(ru.ru_utime) + tv(ru.ru_stime), vcsw: ru.ru_nvcsw as u64, ivcsw: ru.ru_nivcsw as u64 }
    }

    /// The sample of `ops` operations in `elapsed`, from `self` until now.
    pub fn sample(&self, ops: u64, elapsed: Duration) -> Sample {
        let end = Usage::now();
        Sample {
            ops,
            elapsed,
            cpu: end.cpu.saturating_sub(self.cpu),
            vcsw: end.vcsw.saturating_sub(self.vcsw),
            ivcsw: end.ivcsw.saturating_sub(self.ivcsw),
        }
    }
}

/// A small msgpack payload of exactly `len` bytes (at least 5): the map `{"d": <bin>}`.
pub fn payload(len: usize) -> Bytes {
    let n = len.max(5) - 5;
    let n = n.min(255);
    let mut p = vec![0x81, 0xa1, b'd', 0xc4, n as u8];
    p.extend((0..n).map(|i| (i as u8).wrapping_mul(31)));
    Bytes::from(p)
}

#[derive(Debug)]
pub struct BenchError(pub String);

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<ClientError> for BenchError {
    fn from(e: ClientError) -> Self {
        BenchError(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, BenchError>;

/// Sequential RPCs to `topic` for `dur`: one request, wait for its response, repeat.
/// Each response must carry the request's payload back (echo and `broker.ping` both do).
pub fn client_sequential(client: &mut Client, topic: &str, payload: &Bytes, dur: Duration) -> Result<Sample> {
    let usage = Usage::now();
    let start = Instant::now();
    let mut ops = 0u64;
    loop {
        let resp = client.rpc_raw(topic, payload.clone(), Some(RESPONSE_TIMEOUT))?;
        if resp.payload != *payload {
            return Err(BenchError(format!("{topic}: the response payload is not the request's")));
        }
        ops += 1;
        let elapsed = start.elapsed();
        if elapsed >= dur {
            return Ok(usage.sample(ops, elapsed));
        }
    }
}

/// Sequential RPCs of `req` (its topic, payload and nodeid; a fresh matchtag each) for `dur`:
/// one request, wait for its response, repeat. Each response must carry the payload back.
pub fn sequential_requests(client: &mut Client, req: &Message, dur: Duration) -> Result<Sample> {
    let mut req = req.clone();
    let usage = Usage::now();
    let start = Instant::now();
    let mut ops = 0u64;
    loop {
        req.matchtag = client.next_matchtag();
        client.send(&req)?;
        let resp = client.wait_response(req.matchtag, Some(RESPONSE_TIMEOUT))?;
        if resp.payload != req.payload {
            return Err(BenchError(format!("{}: the response payload is not the request's", req.topic)));
        }
        ops += 1;
        let elapsed = start.elapsed();
        if elapsed >= dur {
            return Ok(usage.sample(ops, elapsed));
        }
    }
}

/// Pipelined RPCs to `topic` for `dur` with `window` requests in flight: queue `window`
/// requests (distinct matchtags) and flush; then queue one more for each response that
/// arrives, writing the queued ones out every `flush_every` responses (one `write` per batch,
/// as a client that reads many responses per `read` would). Completions are counted until
/// `dur` has passed; the requests still in flight are then drained, outside the measurement.
pub fn client_pipelined(
    client: &mut Client,
    topic: &str,
    payload: &Bytes,
    window: usize,
    flush_every: usize,
    dur: Duration,
) -> Result<Sample> {
    pipelined_requests(client, Message::request(topic, payload.clone()), window, flush_every, dur)
}

/// Round trips one after another for `dur` (at least one): `round_trip` makes one on `t`.
/// For the floors, whose send and receive are their own.
pub fn round_trips<T>(t: &mut T, dur: Duration, mut round_trip: impl FnMut(&mut T) -> Result<()>) -> Result<Sample> {
    let usage = Usage::now();
    let start = Instant::now();
    let mut ops = 0u64;
    loop {
        round_trip(t)?;
        ops += 1;
        let elapsed = start.elapsed();
        if elapsed >= dur {
            return Ok(usage.sample(ops, elapsed));
        }
    }
}

/// `window` messages in flight on `t`, one sent for each that comes back, counted for `dur`;
/// what is in flight then is drained outside the measurement. For the floors.
pub fn windowed<T>(
    t: &mut T,
    window: usize,
    dur: Duration,
    mut send: impl FnMut(&mut T) -> Result<()>,
    mut recv: impl FnMut(&mut T) -> Result<()>,
) -> Result<Sample> {
    let window = window.max(1);
    let usage = Usage::now();
    let start = Instant::now();
    for _ in 0..window {
        send(t)?;
    }
    let (mut in_flight, mut ops, mut result) = (window, 0u64, None);
    while in_flight > 0 {
        recv(t)?;
        in_flight -= 1;
        if result.is_some() {
            continue;
        }
        ops += 1;
        send(t)?;
        in_flight += 1;
        if ops.is_multiple_of(64) {
            let elapsed = start.elapsed();
            if elapsed >= dur {
                result = Some(usage.sample(ops, elapsed));
            }
        }
    }
    Ok(result.unwrap_or_else(|| usage.sample(ops, start.elapsed())))
}

/// `client_pipelined` of the request `req` (its topic, payload and nodeid; a fresh matchtag
/// each).
pub fn pipelined_requests(
    client: &mut Client,
    mut req: Message,
    window: usize,
    flush_every: usize,
    dur: Duration,
) -> Result<Sample> {
    let window = window.max(1);
    // Never hold back so many that nothing is left in flight.
    let flush_every = flush_every.clamp(1, window);
    let usage = Usage::now();
    let start = Instant::now();
    for _ in 0..window {
        req.matchtag = client.next_matchtag();
        client.queue(&req);
    }
    client.flush()?;
    let mut in_flight = window;
    let mut unflushed = 0usize;
    let mut ops = 0u64;
    let mut result: Option<Sample> = None;
    while in_flight > 0 {
        let resp = client.recv_timeout(Some(RESPONSE_TIMEOUT))?;
        if resp.kind != MsgType::Response {
            continue;
        }
        if resp.is_error() {
            return Err(BenchError(format!(
                "{}: error response: {}",
                req.topic,
                resp.errstr.as_deref().unwrap_or("(no text)")
            )));
        }
        in_flight -= 1;
        if result.is_some() {
            continue;
        }
        ops += 1;
        req.matchtag = client.next_matchtag();
        client.queue(&req);
        in_flight += 1;
        unflushed += 1;
        if unflushed >= flush_every {
            client.flush()?;
            unflushed = 0;
        }
        if ops.is_multiple_of(64) {
            let elapsed = start.elapsed();
            if elapsed >= dur {
                result = Some(usage.sample(ops, elapsed));
                client.flush()?;
            }
        }
    }
    Ok(result.unwrap_or_else(|| usage.sample(ops, start.elapsed())))
}
