//! `event pub` and `event sub`.

use std::io::Write;

use switchboard_client::Client;
use switchboard_protocol::mgmt::{PublishArgs, PublishReply, TopicArgs};
use switchboard_protocol::MsgType;

use crate::{json, CliError, Context};

pub fn publish(client: &mut Client, topic: &str, payload: Option<&str>) -> Result<(), CliError> {
    let args = PublishArgs { topic: topic.to_string(), payload: json::payload(payload)?.to_vec(), private: false };
    let reply = client.rpc("event.publish", &args).doing(format!("publish {topic}"))?;
    if let Ok(r) = reply.decode::<PublishReply>() {
        println!("published {topic} seq={}", r.seq);
    }
    Ok(())
}

pub fn subscribe(client: &mut Client, topics: &[String], count: Option<u64>) -> Result<(), CliError> {
    for t in topics {
        client.rpc("event.subscribe", &TopicArgs { topic: t.clone() }).doing(format!("subscribe {t}"))?;
    }
    let mut seen = 0u64;
    let mut out = std::io::stdout().lock();
    while count.is_none_or(|c| seen < c) {
        let msg = client.recv().doing("receive events")?;
        if msg.kind != MsgType::Event {
            continue;
        }
        seen += 1;
        let _ = writeln!(out, "{} {}", msg.topic, json::render(&msg.payload));
        let _ = out.flush();
    }
    Ok(())
}
