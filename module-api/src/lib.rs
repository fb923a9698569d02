//! # switchboard-module-api
//!
//! Everything a Switchboard module author or client program depends on, and nothing of the
//! broker itself:
//!
//! - [`proto`]: the message type, header codec and framing (RFC 1). No I/O.
//! - [`Handle`], [`Actor`], [`Methods`], [`export_module!`]: writing a module, once, for
//!   every kind.
//! - [`abi`], [`native`]: the native-module C ABI (RFC 2) as `#[repr(C)]` types, and the
//!   Rust side of it; `include/switchboard.h` is its C twin.
//! - [`process`], [`handshake`]: the same `Actor` run as a child process (RFC 5).
//! - `wasm` (wasm targets only): the same `Actor` as a WebAssembly component (RFC 6);
//!   `wit/world.wit` is its WIT world.
//! - [`client`]: a blocking connector to a broker's local socket.
//! - [`mgmt`]: payloads of the built-in services (RFC 3), shared by broker and clients.
//! - [`uri`]: where the broker's socket is.
//! - [`ranks`]: sets of broker ranks (`all`, `1-7,9`) for addressing several brokers (RFC 7).

// Lets paths generated for module crates (`::switchboard_module_api::...`) work here too.
extern crate self as switchboard_module_api;

pub mod abi;
mod actor;
#[cfg(unix)]
pub mod client;
pub mod clock;
mod error;
mod handle;
pub mod handshake;
mod link;
pub mod mgmt;
pub mod native;
#[cfg(unix)]
pub mod process;
pub mod proto;
pub mod ranks;
#[cfg(unix)]
pub mod uri;
#[cfg(target_family = "wasm")]
pub mod wasm;

pub use actor::{decode_request, run_actor, Actor, IntoHandler, IntoReply, Methods, Reply};
#[cfg(unix)]
pub use client::{Client, ClientError, RankReply};
pub use error::Error;
pub use handle::{Handle, SHUTDOWN};
pub use link::{Hold, Level, Link, LinkError, MAX_HOLD_MS};
pub use proto::{Errno, Message};
/// Any msgpack value, for payloads of no fixed shape.
pub use rmpv::Value;
