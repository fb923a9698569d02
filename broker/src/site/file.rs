//! The site file's TOML shape (RFC 4 §2): the keys, their types and defaults, as serde
//! reads them. Unknown keys are errors. Spans are kept where a later check must point at a
//! line. Turning this into a `Site` is `mod.rs`'s job.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub broker: Broker,
    pub overlay: Option<Spanned<Overlay>>,
    #[serde(default, rename = "module")]
    pub modules: Vec<Spanned<Module>>,
}

/// `[overlay]` (RFC 7 §2.2).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overlay {
    pub curve_cert: Spanned<String>,
    pub hosts: Spanned<Vec<Spanned<Host>>>,
    pub default_bind: Option<Spanned<String>>,
    pub default_connect: Option<Spanned<String>>,
    /// Any integer, so that one out of range is refused with the key's name (`overlay.rs`).
    pub default_port: Option<Spanned<i64>>,
    pub fanout: Option<Spanned<u32>>,
}

/// One rank's entry of `hosts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    pub host: String,
    pub bind: Option<String>,
    pub connect: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Broker {
    pub listen: Option<String>,
    #[serde(default)]
    pub allow_guests: bool,
    pub max_frame: Option<usize>,
    pub max_output_mb: Option<std::num::NonZeroUsize>,
    pub grace_ms: Option<u64>,
    #[serde(default)]
    pub search_path: Vec<String>,
    pub log: Option<String>,
    #[serde(default)]
    pub rc: Rc,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rc {
    pub start: Option<String>,
    pub stop: Option<String>,
    #[serde(default)]
    pub on_start_failure: OnStartFailure,
}

/// What a failing start script does to the broker.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnStartFailure {
    /// Stop the broker, exit status 1.
    #[default]
    Stop,
    /// Log it and keep running.
    Continue,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    #[default]
    Never,
    OnFailure,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Module {
    pub name: Option<Spanned<String>>,
    pub path: Spanned<String>,
    #[serde(default)]
    pub args: Vec<String>,
    pub config: Option<toml::Table>,
    #[serde(default)]
    pub requires: Vec<Spanned<String>>,
    #[serde(default)]
    pub after: Vec<Spanned<String>>,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub restart: Restart,
    pub max_restarts: Option<u32>,
    pub restart_delay_ms: Option<u64>,
    pub restart_max_delay_ms: Option<u64>,
    pub grace_ms: Option<u64>,
    /// The ranks it runs on (RFC 7 §7); default all.
    pub ranks: Option<Spanned<String>>,
    // Native modules: run in a host process of its own (RFC 4 §2.2, RFC 5 §9).
    #[serde(default)]
    pub isolated: bool,
    // Process modules (and isolated native ones).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub hello_timeout_ms: Option<u64>,
    // WASM modules.
    pub memory_mb: Option<u64>,
    pub cpu_ms: Option<u64>,
    #[serde(default)]
    pub dirs: Vec<Spanned<String>>,
}

fn yes() -> bool {
    true
}
