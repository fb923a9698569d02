//! Payloads of the built-in services (RFC 3), shared by the broker and its clients so that
//! both sides agree by construction. All are msgpack maps with these field names.

use serde::{Deserialize, Serialize};

/// `SERVICE.methods`'s response (RFC 3 §5.1) and the `declares` of `module.info` and
/// `module.list`: what a module declares about itself.
pub use crate::declare::{Declarations, EventDecl, MethodDecl};

/// A valid module or service name: 1 to 64 of `[A-Za-z0-9_-]` (no dots: the service is the
/// part of a topic before the first dot). In `module.load`'s `path`, such a reference is a
/// bare name looked up on the broker's search path; anything else is a path.
pub fn is_module_name(reference: &str) -> bool {
    (1..=64).contains(&reference.len())
        && reference.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

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
    /// Native modules: run the library in a host process of its own (RFC 5 §9), so that a
    /// crash fails only this module.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub isolated: bool,
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

impl DirArgs {
    /// `HOST[:GUEST][:rw|:ro]` (read-only unless `:rw`), the host path as written: the
    /// notation of `modctl load --dir` and a site file's `dirs`. None when HOST is empty.
    pub fn parse(spec: &str) -> Option<DirArgs> {
        let (rest, writable) = match spec.strip_suffix(":rw") {
            Some(r) => (r, true),
            None => (spec.strip_suffix(":ro").unwrap_or(spec), false),
        };
        let (host, guest) = match rest.split_once(':') {
            Some((h, g)) => (h, Some(g.to_string())),
            None => (rest, None),
        };
        (!host.is_empty()).then(|| DirArgs { host: host.to_string(), guest, writable })
    }
}

/// `module.remove` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveArgs {
    pub name: String,
    /// How long the module may take to finalize, in milliseconds (default 5000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_ms: Option<u64>,
    /// Remove it even if running modules require it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// `module.reload` and `module.stats` request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NameArgs {
    pub name: String,
}

/// `module.apply` request.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ApplyArgs {
    /// The site file, absolute; absent: the file the broker was started with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Only say what would be done.
    #[serde(default)]
    pub dry_run: bool,
}

/// One step of an apply: `action` is load, reload, configure, update or remove.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApplyStep {
    pub action: String,
    pub name: String,
    /// Why: "not loaded", "the file changed", "not in the file", ...
    pub why: String,
    /// What happened, when it was carried out: "ok", "skipped: ...", or the error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// It was carried out and succeeded.
    #[serde(default)]
    pub ok: bool,
}

/// `module.apply` response.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ApplyReport {
    pub path: String,
    pub dry_run: bool,
    /// In the order they are carried out: removals first, then by start level.
    pub steps: Vec<ApplyStep>,
    /// Modules already as the file says.
    pub unchanged: Vec<String>,
    /// Broker settings that differ from the file and only a restart applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs_restart: Vec<String>,
}

/// `module.stats` response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ModuleStats {
    pub name: String,
    pub kind: String,
    /// A native module run in a host process of its own (`module.load`'s `isolated`).
    #[serde(default)]
    pub isolated: bool,
    pub state: String,
    pub uptime_ms: u64,
    pub msgs_in: u64,
    pub msgs_out: u64,
    /// Error responses it sent.
    pub errors: u64,
    /// The last error response it sent, or the last failure of an earlier instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub queue: u64,
    /// Requests it was handed and has not answered.
    pub pending: u64,
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// WASM: linear memory in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Process: CPU time in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
    /// Process: resident set size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// `module.trace` request (streaming).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct TraceArgs {
    /// Module names to trace; empty: every module. A name need not be loaded yet.
    #[serde(default)]
    pub names: Vec<String>,
    /// Only topics matching this glob (`*` any run of characters, `?` one character).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Only these message types ("request", "response", "event", "control"); empty: all.
    #[serde(default)]
    pub types: Vec<String>,
}

/// One streamed `module.trace` response: a message that passed to or from a module.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TraceRecord {
    /// Microseconds since the Unix epoch.
    pub time_us: u64,
    pub module: String,
    /// "in" (to the module) or "out" (from it).
    pub dir: String,
    /// "request", "response", "event" or "control".
    #[serde(rename = "type")]
    pub kind: String,
    pub topic: String,
    pub matchtag: u32,
    pub userid: u32,
    pub errnum: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errstr: Option<String>,
    /// The payload's size; `payload` holds at most its first 256 bytes.
    pub size: u64,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// The payload of a `module.lifecycle.NAME` event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LifecycleEvent {
    pub name: String,
    /// loaded, reloaded, configured, failed, restarted, gave-up, removed, exited
    pub event: String,
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
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
    /// A native module run in a host process of its own (`kind` stays `native`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub isolated: bool,
    pub services: Vec<String>,
    pub path: String,
    pub digest: String,
    pub size: u64,
    /// What the file declares about itself (methods, events), read without running it.
    #[serde(default)]
    pub declares: Declarations,
}

/// One row of `module.list`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ModuleStatus {
    pub name: String,
    pub kind: String,
    /// A native module run in a host process of its own (`kind` stays `native`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub isolated: bool,
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
    /// Times its restart policy started it again.
    #[serde(default)]
    pub restarts: u32,
    /// Why it (or an earlier instance) last failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// Modules it requires.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
    /// What its file declares (methods, events), as `module.info` gives it.
    #[serde(default)]
    pub declares: Declarations,
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
    /// Clients connected to the local socket, the requester included.
    #[serde(default)]
    pub connections: u32,
    /// Brokers in the instance (RFC 7); 1 for a standalone broker.
    #[serde(default = "one")]
    pub size: u32,
    /// The k of the k-ary tree (RFC 7 §1).
    #[serde(default = "one")]
    pub fanout: u32,
    /// This broker's parent's rank; absent at rank 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<u32>,
    /// The link to the parent: `up`, `lost` or `offline` (RFC 7 §4.2); absent at rank 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_link: Option<String>,
    /// This broker's children's ranks, whether their links are up or not.
    #[serde(default)]
    pub children: Vec<u32>,
    /// Events numbered by rank 0 that never reached this broker (RFC 7 §4.5).
    #[serde(default)]
    pub events_lost: u64,
    /// Link messages that found their link full and waited for it (RFC 7 §3.5).
    #[serde(default)]
    pub link_waits: u64,
    /// Messages refused or dropped because their link was full beyond what may wait for it
    /// (RFC 7 §3.5).
    #[serde(default)]
    pub link_drops: u64,
}

fn one() -> u32 {
    1
}

/// `overlay.status` response (RFC 7 §6.3): a rank of the tree and, recursively, its subtree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayStatus {
    pub rank: u32,
    /// `full`, `partial`, `lost` or `offline` (RFC 7 §6.1).
    pub state: String,
    /// The host the site file names for this rank.
    pub host: String,
    /// Why a `lost` rank is lost, and since when ("link lost 12 s ago").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub children: Vec<OverlayStatus>,
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
