//! How clients reach the broker. `local` is the Unix-domain socket of RFC 1 §6 (modctl,
//! scripts, programs); a ZeroMQ connector for remote peers will sit beside it. A connector
//! turns bytes into messages, stamps credentials and hands each message to the router; it
//! must not route or answer anything itself.

mod local;
mod peercred;

pub use local::{ListenOptions, Listener};
