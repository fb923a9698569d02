//! # switchboard-module-api
//!
//! Everything a Switchboard module author or client program depends on, and nothing of the
//! broker itself:
//!
//! - [`proto`]: the message type, header codec and framing (RFC 1). No I/O.
//! - [`abi`]: the native-module C ABI (RFC 2) as `#[repr(C)]` types; `include/switchboard.h`
//!   is its C twin.
//! - [`Handle`], [`Actor`], [`Methods`], [`export_module!`]: writing a module.
//! - [`process`]: the same `Actor` run as a child process (RFC 5).
//! - [`client`]: a blocking connector to a broker's local socket.
//! - [`handshake`]: the control messages of a process module's handshake (RFC 5).
//! - [`mgmt`]: payloads of the built-in services (RFC 3), shared by broker and clients.
//! - [`uri`]: where the broker's socket is.

pub mod abi;
mod actor;
pub mod client;
mod error;
mod handle;
pub mod handshake;
mod link;
pub mod mgmt;
pub mod native;
pub mod process;
pub mod proto;
pub mod uri;

pub use actor::{run_actor, Actor, IntoReply, Methods, Reply};
pub use client::{Client, ClientError};
pub use error::Error;
pub use handle::{Handle, SHUTDOWN};
pub use link::{Level, Link, LinkError};
pub use proto::{Errno, Message};
/// Any msgpack value, for payloads of no fixed shape.
pub use rmpv::Value;
