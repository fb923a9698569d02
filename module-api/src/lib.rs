//! # switchboard-module-api
//!
//! Writing a Switchboard module in Rust: the one crate a module author's `Cargo.toml` names.
//! Write an [`Actor`] with a [`Methods`] table, export it with [`export_module!`], and the same
//! code builds as a native library (RFC 2), a child process (RFC 5) or a WebAssembly component
//! (RFC 6). The module talks to its broker through its [`Handle`].
//!
//! - [`Actor`], [`Methods`], [`Reply`], [`IntoReply`], [`decode_request`]: a module's state and
//!   its method table, with typed or raw handlers.
//! - [`Handle`]: receive, send, respond, rpc (to any rank), publish, subscribe, log.
//! - [`Message`], [`Errno`], [`Error`], [`Level`], [`Value`]: what handlers take and return,
//!   from [`protocol`], the wire definitions this crate shares with the broker and clients.
//!
//! The plumbing `export_module!` expands to (the C ABI entry, the process `main`, the WIT
//! exports) and what the broker's module hosts share with modules (`Link`, `Hold`, `clock`)
//! are public only for those expansions and hosts, and hidden from the documentation.

// Lets paths generated for module crates (`::switchboard_module_api::...`) work here too.
extern crate self as switchboard_module_api;

mod actor;
#[doc(hidden)]
pub mod clock;
mod handle;
mod link;
#[doc(hidden)]
pub mod native;
#[cfg(unix)]
#[doc(hidden)]
pub mod process;
#[cfg(target_family = "wasm")]
#[doc(hidden)]
pub mod wasm;

pub use actor::{decode_request, Actor, IntoHandler, IntoReply, Methods, Reply};
pub use handle::Handle;
pub use link::LinkError;
/// Any msgpack value, for payloads of no fixed shape.
pub use rmpv::Value;
pub use switchboard_protocol as protocol;
pub use switchboard_protocol::{Errno, Error, Level, Message};

/// For the code `export_module!` expands to and for the broker's module hosts; not part of
/// the author API.
#[doc(hidden)]
pub use {
    actor::run_actor,
    link::{Hold, Link, MAX_HOLD_MS},
    switchboard_protocol::abi,
};
