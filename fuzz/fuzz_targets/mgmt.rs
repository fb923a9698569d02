//! Fuzz target `mgmt`: arbitrary bytes as the payload of a message, decoded the way the
//! broker and `modctl` decode it (`Message::decode`, i.e. rmp-serde) into every payload type
//! of the built-in services (`protocol/src/mgmt.rs`, RFC 3) and of the process-module
//! handshake (`protocol/src/handshake.rs`, RFC 5), and into a free-form `rmpv::Value`
//! (what `modctl` prints, and a module's `config`).
//!
//! Beyond "never panics, never hangs, never allocates without bound" it checks that whatever
//! decodes re-encodes (`Message::encode_payload`), that the re-encoding decodes again, and
//! that the encoding is then stable. The same bytes, as text, go through the two parsers of
//! names that `mgmt` has: `is_module_name` and `DirArgs::parse`.
//!
//! Run it with `cargo fuzz run -s none mgmt` from `fuzz/` (see docs/fuzzing.md).

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};
use switchboard_protocol::handshake::{Hello, Status, Welcome};
use switchboard_protocol::mgmt::{
    is_module_name, ApplyArgs, ApplyReport, ApplyStep, BrokerInfo, DirArgs, InfoArgs, LifecycleEvent, LoadArgs,
    ModuleDescription, ModuleList, ModuleStats, ModuleStatus, NameArgs, PublishArgs, PublishReply, RemoveArgs,
    ServiceArgs, TopicArgs, TraceArgs, TraceRecord,
};
use switchboard_protocol::Message;

/// Decode `msg`'s payload as a `T`; if it decodes, it must survive a round trip.
fn check<T: Serialize + DeserializeOwned>(msg: &Message, what: &str) {
    let Ok(value) = msg.decode::<T>() else { return };
    let encoded =
        Message::encode_payload(&value).unwrap_or_else(|e| panic!("{what}: a decoded value does not encode: {e}"));
    let again = Message::request("fuzz.mgmt", encoded.clone());
    let value2: T = again.decode().unwrap_or_else(|e| panic!("{what}: a re-encoded value does not decode: {e}"));
    let encoded2 = Message::encode_payload(&value2).expect("it encoded once");
    assert_eq!(encoded, encoded2, "{what}: the encoding of a decoded value is not stable");
}

fuzz_target!(|data: &[u8]| {
    let msg = Message::request("fuzz.mgmt", Bytes::copy_from_slice(data));

    // Requests the broker decodes from any client (RFC 3).
    check::<LoadArgs>(&msg, "LoadArgs");
    check::<DirArgs>(&msg, "DirArgs");
    check::<RemoveArgs>(&msg, "RemoveArgs");
    check::<NameArgs>(&msg, "NameArgs");
    check::<ApplyArgs>(&msg, "ApplyArgs");
    check::<TraceArgs>(&msg, "TraceArgs");
    check::<InfoArgs>(&msg, "InfoArgs");
    check::<ServiceArgs>(&msg, "ServiceArgs");
    check::<TopicArgs>(&msg, "TopicArgs");
    check::<PublishArgs>(&msg, "PublishArgs");

    // Responses and events that `modctl` and other clients decode from the broker.
    check::<ApplyStep>(&msg, "ApplyStep");
    check::<ApplyReport>(&msg, "ApplyReport");
    check::<ModuleStats>(&msg, "ModuleStats");
    check::<TraceRecord>(&msg, "TraceRecord");
    check::<LifecycleEvent>(&msg, "LifecycleEvent");
    check::<ModuleDescription>(&msg, "ModuleDescription");
    check::<ModuleStatus>(&msg, "ModuleStatus");
    check::<ModuleList>(&msg, "ModuleList");
    check::<BrokerInfo>(&msg, "BrokerInfo");
    check::<PublishReply>(&msg, "PublishReply");

    // The process-module handshake: hello and status come from a child process.
    check::<Welcome>(&msg, "Welcome");
    check::<Hello>(&msg, "Hello");
    check::<Status>(&msg, "Status");

    // Any payload: through serde, and through rmpv's own reader as `modctl` prints one.
    check::<rmpv::Value>(&msg, "rmpv::Value");
    let mut rest = data;
    if let Ok(v) = rmpv::decode::read_value(&mut rest) {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, &v).expect("a decoded value encodes");
        let back = rmpv::decode::read_value(&mut &out[..]).expect("a re-encoded value decodes");
        let mut out2 = Vec::new();
        rmpv::encode::write_value(&mut out2, &back).expect("it encoded once");
        assert_eq!(out, out2, "rmpv: the encoding of a decoded value is not stable");
    }

    // The same bytes as a name or a `--dir` spec.
    if let Ok(text) = std::str::from_utf8(data) {
        if is_module_name(text) {
            assert!(!text.contains('.') && (1..=64).contains(&text.len()));
        }
        if let Some(dir) = DirArgs::parse(text) {
            assert!(!dir.host.is_empty());
            assert!(dir.host.len() + dir.guest.as_ref().map_or(0, String::len) <= text.len());
        }
    }
});
