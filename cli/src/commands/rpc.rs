//! `rpc` and `ping`: call any service, on the broker modctl is connected to or (the `_on`
//! forms) on each rank of `--rank` at once.

use std::time::{Duration, Instant};

use switchboard_module_api::Client;

use super::ranks::{self, Failures};
use crate::{json, CliError, Context};

pub fn rpc(client: &mut Client, topic: &str, payload: Option<&str>, timeout_ms: Option<u64>) -> Result<(), CliError> {
    let payload = json::payload(payload)?;
    let reply = client.rpc_raw(topic, payload, timeout_ms.map(Duration::from_millis)).doing(topic)?;
    println!("{}", serde_json::to_string_pretty(&json::render(&reply.payload)).unwrap_or_default());
    Ok(())
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
