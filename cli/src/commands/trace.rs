//! `trace`: a streaming `module.trace` request; one line per message that passes.

use std::io::Write;

use switchboard_client::Client;
use switchboard_protocol::mgmt::{TraceArgs, TraceRecord};
use switchboard_protocol::{Flags, Message, MsgType};

use crate::{json, CliError, Context};

pub fn trace(
    client: &mut Client,
    names: Vec<String>,
    topic: Option<String>,
    types: Vec<String>,
    count: Option<u64>,
    as_json: bool,
) -> Result<(), CliError> {
    let what = if names.is_empty() { "every module".to_string() } else { names.join(", ") };
    let args = TraceArgs { names, topic, types };
    let payload = Message::encode_payload(&args).map_err(|e| CliError::Usage(e.to_string()))?;
    let mut req = Message::request("module.trace", payload);
    req.flags = req.flags.with(Flags::STREAMING);
    req.matchtag = client.next_matchtag();
    client.send(&req).doing("trace")?;
    let mut seen = 0u64;
    let mut started = false;
    let mut out = std::io::stdout().lock();
    while count.is_none_or(|c| seen < c) {
        let msg = client.recv().doing("trace")?;
        if msg.kind != MsgType::Response || msg.matchtag != req.matchtag {
            continue;
        }
        if msg.is_error() {
            let text = msg.errstr.clone().unwrap_or_default();
            let name = switchboard_protocol::Errno(msg.errnum).name();
            return Err(CliError::Usage(format!("trace: {name}: {text}")));
        }
        if !started {
            // The first response says the trace runs.
            started = true;
            eprintln!("tracing {what}");
            continue;
        }
        let Ok(r) = msg.decode::<TraceRecord>() else { continue };
        seen += 1;
        let _ = if as_json { writeln!(out, "{}", record_json(&r)) } else { writeln!(out, "{}", line(&r)) };
        let _ = out.flush();
    }
    Ok(())
}

/// `12:00:01.234567 kvs <- request kvs.get #5 {"key":"a"}`
fn line(r: &TraceRecord) -> String {
    let secs = r.time_us / 1_000_000;
    let time = format!("{:02}:{:02}:{:02}.{:06}", secs / 3600 % 24, secs / 60 % 60, secs % 60, r.time_us % 1_000_000);
    let arrow = if r.dir == "in" { "<-" } else { "->" };
    let error = if r.errnum != 0 {
        format!(" error {} {}", r.errnum, r.errstr.as_deref().unwrap_or(""))
    } else {
        String::new()
    };
    let more = if (r.payload.len() as u64) < r.size { format!(" ...({} bytes)", r.size) } else { String::new() };
    let body = if r.payload.is_empty() { String::new() } else { format!(" {}", json::render(&r.payload)) };
    format!("{time} {} {arrow} {} {} #{}{error}{body}{more}", r.module, r.kind, r.topic, r.matchtag)
}

fn record_json(r: &TraceRecord) -> serde_json::Value {
    serde_json::json!({
        "time_us": r.time_us,
        "module": r.module,
        "dir": r.dir,
        "type": r.kind,
        "topic": r.topic,
        "matchtag": r.matchtag,
        "userid": r.userid,
        "errnum": r.errnum,
        "errstr": r.errstr,
        "size": r.size,
        "payload": json::render(&r.payload),
    })
}
