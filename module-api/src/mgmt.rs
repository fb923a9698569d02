//! Payloads of the built-in services (RFC 3), shared by the broker and its clients so that
//! both sides agree by construction. All are msgpack maps with these field names.

use serde::{Deserialize, Serialize};

/// `module.load` request.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct LoadArgs {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    /// The module's configuration table (a msgpack map); absent = empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<rmpv::Value>,
    /// Process modules: milliseconds the child has to say hello (default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hello_timeout_ms: Option<u64>,
    /// WASM modules: memory cap in MiB (default 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    /// WASM modules: CPU milliseconds one call may take (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
    /// WASM modules: host directories the module may open.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dirs: Vec<DirArgs>,
}

/// A directory a WASM module is granted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DirArgs {
    /// Path on the broker's host.
    pub host: String,
    /// Path the module opens it by (default: the same as `host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<String>,
    /// Read-write; read-only when false (the default).
    #[serde(default)]
    pub writable: bool,
}

/// `module.remove` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveArgs {
    pub name: String,
    /// How long the module may take to finalize, in milliseconds (default 5000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_ms: Option<u64>,
}

/// `module.info` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InfoArgs {
    pub path: String,
}

/// `module.load` and `module.info` response: what the module is, not how it is doing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ModuleDescription {
    pub name: String,
    pub kind: String,
    pub services: Vec<String>,
    pub path: String,
    pub digest: String,
    pub size: u64,
}

/// One row of `module.list`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ModuleStatus {
    pub name: String,
    pub kind: String,
    /// loading, init, running, finalizing, exited, failed
    pub state: String,
    /// Why it is failed, exited or stuck, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// It did not finish finalizing within its grace period.
    #[serde(default)]
    pub stuck: bool,
    pub services: Vec<String>,
    pub path: String,
    pub digest: String,
    pub size: u64,
    pub idle_ms: u64,
    pub msgs_in: u64,
    pub msgs_out: u64,
    pub queue: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// `module.list` response.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ModuleList {
    pub modules: Vec<ModuleStatus>,
}

/// `broker.info` response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BrokerInfo {
    pub version: String,
    pub rank: u32,
    pub pid: u32,
    pub uid: u32,
    pub uptime_ms: u64,
    pub modules: u32,
    pub uri: String,
}

/// `service.add` / `service.remove` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceArgs {
    pub service: String,
}

/// `event.subscribe` / `event.unsubscribe` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopicArgs {
    pub topic: String,
}

/// `event.publish` request: publish an event on the sender's behalf and learn its sequence.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishArgs {
    pub topic: String,
    /// The event's payload bytes (by convention a msgpack map).
    #[serde(with = "serde_bytes", default)]
    pub payload: Vec<u8>,
    #[serde(default)]
    pub private: bool,
}

/// `event.publish` response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishReply {
    pub seq: u32,
}
