//! The process-module handshake (RFC 5): the control messages a broker and a module that
//! runs as a child process exchange on the inherited socket, before and around the ordinary
//! message traffic. Pure data, shared by the broker's process loader and the module SDKs.

use serde::{Deserialize, Serialize};

use crate::declare::Declarations;

/// Environment variable naming the inherited socket's file descriptor in a process module.
pub const FD_ENV: &str = "SWITCHBOARD_MODULE_FD";
/// The handshake protocol version.
pub const PROTOCOL: u32 = 1;

/// Control topics of the handshake.
pub const WELCOME: &str = "welcome";
pub const HELLO: &str = "hello";
pub const STATUS: &str = "status";
/// Module -> broker, instead of `hello`: the module cannot run (RFC 5 §3).
pub const REFUSE: &str = "refuse";

/// Broker -> module, first on the socket: who the module is and what it was given.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Welcome {
    pub protocol: u32,
    /// The instance name, when the operator chose one; else the module uses its own.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    /// The configuration table (a map).
    #[serde(default = "empty_map")]
    pub config: rmpv::Value,
    /// Only describe yourself: say hello, then exit (for `module.info`).
    #[serde(default)]
    pub describe: bool,
}

fn empty_map() -> rmpv::Value {
    rmpv::Value::Map(Vec::new())
}

/// Module -> broker, first on the socket: the module's own name and protocol.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    pub protocol: u32,
    /// The module's default name (used when the welcome named none).
    pub name: String,
    /// What it declares about itself (methods, events); absent: nothing.
    #[serde(default)]
    pub declares: Declarations,
}

/// Module -> broker: a lifecycle state it entered: `running` once initialised,
/// `finalizing` once it received `shutdown`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub state: String,
}

/// Module -> broker, in place of the hello: the module cannot run, and says why. The load
/// fails with `errno` and exactly `text` (the native module host sends the in-broker
/// loader's refusal of a library this way, so the operator reads the same words).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Refuse {
    pub errno: u32,
    pub text: String,
}
