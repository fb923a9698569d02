//! `benchdriver`: the benchmark's probe inside the broker. `benchdriver.run {target, count,
//! window, payload}` sends `count` requests to the topic `target` from this module's own
//! thread and answers with the time that took, so `sbbench` can measure module -> module RPC
//! without a socket in the way:
//!
//! - `window` 1 (the default): `count` sequential `Handle::rpc_raw` calls;
//! - `window` N > 1: pipelined: N requests sent with `Handle::send` under distinct matchtags,
//!   then one more sent each time a response arrives (`Handle::recv`), until `count` came back.
//!
//! The reply is `{elapsed_ns, completed}`. The first error response ends the run and is
//! returned as the error of `benchdriver.run`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use switchboard_module_api::protocol::MsgType;
use switchboard_module_api::{export_module, Actor, Errno, Error, Handle, Message, Methods};

/// Matchtags of pipelined requests start here, far from the handle's own counter (which
/// `rpc_raw` uses and which starts at 1).
const TAG_BASE: u32 = 0x4000_0000;
/// Most requests one pipelined run may send (their matchtags must stay distinct).
const MAX_PIPELINED: u64 = 0x3fff_ffff;
/// How long one request may go unanswered before the run gives up.
const PER_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
struct RunArgs {
    target: String,
    count: u64,
    #[serde(default = "one")]
    window: u32,
    #[serde(default, with = "serde_bytes")]
    payload: Vec<u8>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Serialize)]
struct RunReply {
    elapsed_ns: u64,
    completed: u64,
}

pub struct BenchDriver;

impl Actor for BenchDriver {
    fn init(_handle: &Handle) -> Result<Self, Error> {
        Ok(BenchDriver)
    }

    fn methods() -> Methods<Self> {
        Methods::new().on("run", |_: &mut BenchDriver, h: &Handle, msg: &Message| {
            let args: RunArgs = msg.decode()?;
            run(h, args)
        })
    }
}

fn run(h: &Handle, args: RunArgs) -> Result<RunReply, Error> {
    if args.target.split_once('.').is_none_or(|(s, _)| s == h.name()) {
        return Err(Error::invalid(format!("target '{}' must be service.method of another service", args.target)));
    }
    if args.window == 0 {
        return Err(Error::invalid("window must be at least 1"));
    }
    let payload = Bytes::from(args.payload);
    let start = Instant::now();
    let completed = if args.window == 1 {
        sequential(h, &args.target, &payload, args.count)?
    } else {
        pipelined(h, &args.target, &payload, args.count, args.window)?
    };
    Ok(RunReply { elapsed_ns: start.elapsed().as_nanos() as u64, completed })
}

fn sequential(h: &Handle, target: &str, payload: &Bytes, count: u64) -> Result<u64, Error> {
    for _ in 0..count {
        h.rpc_raw(target, payload.clone(), Some(PER_REQUEST_TIMEOUT))?;
    }
    Ok(count)
}

fn pipelined(h: &Handle, target: &str, payload: &Bytes, count: u64, window: u32) -> Result<u64, Error> {
    if count > MAX_PIPELINED {
        return Err(Error::invalid(format!("count {count} is more than {MAX_PIPELINED}")));
    }
    let link = |e| Error::new(Errno::ECONNRESET, format!("{e}"));
    let mut req = Message::request(target, payload.clone());
    let mut sent = 0u64;
    let mut completed = 0u64;
    while sent < count.min(window as u64) {
        req.matchtag = TAG_BASE + sent as u32;
        h.send(&req).map_err(link)?;
        sent += 1;
    }
    while completed < count {
        let Some(m) = h.recv_timeout(Some(PER_REQUEST_TIMEOUT)).map_err(link)? else {
            return Err(Error::new(
                Errno::ETIMEDOUT,
                format!("{completed} of {count} responses from {target}, then none for 30 s"),
            ));
        };
        match m.kind {
            MsgType::Response if m.matchtag.wrapping_sub(TAG_BASE) < sent as u32 => {
                if let Some(e) = Error::from_response(&m) {
                    return Err(e);
                }
                completed += 1;
                if sent < count {
                    req.matchtag = TAG_BASE + sent as u32;
                    h.send(&req).map_err(link)?;
                    sent += 1;
                }
            }
            MsgType::Control if m.topic == switchboard_module_api::protocol::SHUTDOWN => {
                return Err(Error::new(
                    Errno::ECANCELED,
                    "the broker asked benchdriver to stop in the middle of a run",
                ));
            }
            // Nothing else is expected while the benchmark runs; drop it.
            _ => {}
        }
    }
    Ok(completed)
}

export_module!(BenchDriver, name = "benchdriver");
