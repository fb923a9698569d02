//! `rpc` and `ping`: call any service, on the broker modctl is connected to or (the `_on`
//! forms) on each rank of `--rank` at once; `rpc --stream` prints each response of a
//! streaming request (RFC 1 §8.7) as it comes, until ENODATA ends the stream.

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_client::{Client, ClientError};
use switchboard_protocol::{Errno, Flags, Message, MsgType, NODEID_ANY};

use super::ranks::{self, Failures};
use crate::{json, CliError, Context};

/// The most ranks `rpc --stream --rank` follows at once: every stream stays open until it
/// ends, so all requests are in flight together (`rpc_ranks` sends at most this many at a
/// time too).
const MAX_STREAMS: usize = 1024;

pub fn rpc(client: &mut Client, topic: &str, payload: Option<&str>, timeout_ms: Option<u64>) -> Result<(), CliError> {
    let payload = json::payload(payload)?;
    let reply = client.rpc_raw(topic, payload, timeout_ms.map(Duration::from_millis)).map_err(|e| match e {
        ClientError::Timeout => CliError::Timeout { what: topic.to_string(), ms: timeout_ms.unwrap_or_default() },
        source => CliError::Broker { what: topic.to_string(), source },
    })?;
    println!("{}", serde_json::to_string_pretty(&json::render(&reply.payload)).unwrap_or_default());
    Ok(())
}

/// Queue a request with STREAMING set to rank `nodeid` (`NODEID_ANY`: wherever the service
/// is); its matchtag.
fn queue_streaming(client: &mut Client, nodeid: u32, topic: &str, payload: Bytes) -> u32 {
    let mut req = Message::request(topic, payload);
    req.flags = req.flags.with(Flags::STREAMING);
    req.nodeid = nodeid;
    req.matchtag = client.next_matchtag();
    client.queue(&req);
    req.matchtag
}

/// How a stream's response ends it, if it does: ENODATA is the normal end (`Some(Ok)`), any
/// other error response an error (`Some(Err)`); a success goes on (`None`).
fn end_of(msg: &Message) -> Option<Result<(), switchboard_protocol::Error>> {
    let e = switchboard_protocol::Error::from_response(msg)?;
    Some(if e.errnum == Errno::ENODATA { Ok(()) } else { Err(e) })
}

/// Write `line` and a line feed; false if the reader went away (`| head`): stop quietly.
fn write_line(out: &mut impl Write, line: std::fmt::Arguments) -> Result<bool, CliError> {
    match out.write_fmt(line).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(CliError::Output { what: "standard output".into(), source: e }),
    }
}

/// `rpc --stream`: one streaming request; each response is printed as one line of JSON as it
/// arrives, until ENODATA ends the stream (Ok) or another error response does (that error).
/// `timeout_ms` bounds the wait for each response, from the request or the previous response.
pub fn stream(
    client: &mut Client,
    topic: &str,
    payload: Option<&str>,
    timeout_ms: Option<u64>,
) -> Result<(), CliError> {
    let payload = json::payload(payload)?;
    let tag = queue_streaming(client, NODEID_ANY, topic, payload);
    client.flush().doing(topic)?;
    let timeout = timeout_ms.map(Duration::from_millis);
    let mut deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let mut out = std::io::stdout().lock();
    loop {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let msg = match left {
            Some(Duration::ZERO) => Err(ClientError::Timeout),
            left => client.recv_timeout(left),
        };
        let msg = msg.map_err(|e| match e {
            ClientError::Timeout => CliError::Timeout { what: topic.to_string(), ms: timeout_ms.unwrap_or_default() },
            source => CliError::Broker { what: topic.to_string(), source },
        })?;
        if msg.kind != MsgType::Response || msg.matchtag != tag {
            continue;
        }
        match end_of(&msg) {
            Some(Ok(())) => return Ok(()),
            Some(Err(e)) => return Err(CliError::Broker { what: topic.to_string(), source: ClientError::Remote(e) }),
            None => {
                if !write_line(&mut out, format_args!("{}", json::render(&msg.payload)))? {
                    return Ok(());
                }
                deadline = timeout.and_then(|t| Instant::now().checked_add(t));
            }
        }
    }
}

/// `rpc --stream` on each of `ranks`: the streaming request to every rank at once, each
/// response printed as `rank N: JSON` as it arrives (ranks interleave), until every rank's
/// stream has ended. A rank whose stream ends with an error other than ENODATA, or that sends
/// nothing for `timeout_ms`, fails on its own line.
pub fn stream_on(
    client: &mut Client,
    ranks: &[u32],
    topic: &str,
    payload: Option<&str>,
    timeout_ms: Option<u64>,
) -> Result<(), CliError> {
    if ranks.len() > MAX_STREAMS {
        return Err(CliError::Usage(format!(
            "rpc --stream follows at most {MAX_STREAMS} ranks at once, not {}: name fewer with --rank",
            ranks.len()
        )));
    }
    let payload = json::payload(payload)?;
    let timeout = timeout_ms.map(Duration::from_millis);
    // matchtag -> (rank, when its request or last response was seen)
    let mut open: HashMap<u32, (u32, Instant)> = HashMap::with_capacity(ranks.len());
    let sent = Instant::now();
    for &rank in ranks {
        let tag = queue_streaming(client, rank, topic, payload.clone());
        open.insert(tag, (rank, sent));
    }
    client.flush().doing(topic)?;
    let mut failures = Failures::new(topic, ranks.len());
    let mut out = std::io::stdout().lock();
    while !open.is_empty() {
        let left = timeout.map(|t| {
            let oldest = open.values().map(|&(_, seen)| seen).min().unwrap_or(sent);
            (oldest + t).saturating_duration_since(Instant::now())
        });
        if let (Some(Duration::ZERO), Some(t)) = (left, timeout) {
            // The ranks that have been quiet for the whole timeout fail, in rank order.
            let mut quiet: Vec<(u32, u32)> = open
                .iter()
                .filter(|(_, &(_, seen))| seen.elapsed() >= t)
                .map(|(&tag, &(rank, _))| (rank, tag))
                .collect();
            quiet.sort_unstable();
            for (rank, tag) in quiet {
                open.remove(&tag);
                let ms = timeout_ms.unwrap_or_default();
                failures.fail(rank, &format!("no response within {ms} ms (--timeout {ms})"));
            }
            continue;
        }
        let msg = match client.recv_timeout(left) {
            Ok(msg) => msg,
            Err(ClientError::Timeout) => continue,
            Err(source) => return Err(CliError::Broker { what: topic.to_string(), source }),
        };
        if msg.kind != MsgType::Response {
            continue;
        }
        let Some(entry) = open.get_mut(&msg.matchtag) else { continue };
        let rank = entry.0;
        match end_of(&msg) {
            Some(end) => {
                open.remove(&msg.matchtag);
                if let Err(e) = end {
                    failures.fail(rank, &e.to_string());
                }
            }
            None => {
                entry.1 = Instant::now();
                if !write_line(&mut out, format_args!("rank {rank}: {}", json::render(&msg.payload)))? {
                    return Ok(());
                }
            }
        }
    }
    failures.finish()
}

/// `rpc` on each of `ranks`: `rank N: JSON` per rank, the response on one line. The timeout
/// bounds the whole call.
pub fn rpc_on(
    client: &mut Client,
    ranks: &[u32],
    topic: &str,
    payload: Option<&str>,
    timeout_ms: Option<u64>,
) -> Result<(), CliError> {
    let payload = json::payload(payload)?;
    let answers = ranks::each_raw(client, ranks, topic, topic, payload, timeout_ms.map(Duration::from_millis))?;
    let mut failures = Failures::new(topic, ranks.len());
    for (rank, reply) in answers.into_iter().filter_map(|a| failures.take(a)) {
        println!("rank {rank}: {}", json::render(&reply.payload));
    }
    failures.finish()
}

pub fn ping(client: &mut Client, service: &str, count: u32) -> Result<(), CliError> {
    let topic = format!("{service}.ping");
    for seq in 0..count {
        let payload = json::payload(Some(&format!("{{\"seq\":{seq}}}")))?;
        let start = Instant::now();
        client.rpc_raw(&topic, payload, None).doing(&topic)?;
        println!("{topic}: seq={seq} time={:.3} ms", start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(())
}

/// `ping` on each of `ranks`: each round pings every rank at once and prints
/// `rank N: SERVICE.ping: seq=I time=T ms` per rank, T from the write to that rank's answer.
pub fn ping_on(client: &mut Client, ranks: &[u32], service: &str, count: u32) -> Result<(), CliError> {
    let topic = format!("{service}.ping");
    let mut failures = Failures::new(&topic, ranks.len());
    for seq in 0..count {
        let payload = json::payload(Some(&format!("{{\"seq\":{seq}}}")))?;
        for a in ranks::each_raw(client, ranks, &topic, &topic, payload, None)? {
            let ms = a.elapsed.as_secs_f64() * 1e3;
            if let Some((rank, _)) = failures.take(a) {
                println!("rank {rank}: {topic}: seq={seq} time={ms:.3} ms");
            }
        }
    }
    failures.finish()
}
