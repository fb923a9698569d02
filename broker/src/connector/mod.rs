//! How clients reach the broker. The local Unix socket of RFC 1 §6 (modctl, scripts,
//! programs): `listener` binds it and admits clients, `connection` reads each one's frames;
//! both run as tasks on the broker's runtime. A ZeroMQ connector for remote peers will sit
//! beside them. A connector turns bytes into messages, stamps credentials and hands each
//! message to the router; it must not route or answer anything itself.

mod connection;
mod listener;

pub use listener::{ListenOptions, Listener};
