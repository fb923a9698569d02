//! `rpc` and `ping`: call any service.

use std::time::{Duration, Instant};

use switchboard_module_api::Client;

use crate::{json, CliError, Context};

pub fn rpc(client: &mut Client, topic: &str, payload: Option<&str>, timeout_ms: Option<u64>) -> Result<(), CliError> {
    let payload = json::payload(payload)?;
    let reply = client.rpc_raw(topic, payload, timeout_ms.map(Duration::from_millis)).doing(topic)?;
    println!("{}", serde_json::to_string_pretty(&json::render(&reply.payload)).unwrap_or_default());
    Ok(())
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
