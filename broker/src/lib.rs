//! # switchboard
//!
//! The broker: routes messages by service name to actor modules loaded and removed at
//! runtime. A library first (`Broker::builder()...start()`); the `switchboard` binary is a
//! thin main around it. That binary limits glibc to 2 malloc arenas (unless `MALLOC_ARENA_MAX`
//! is set); a program embedding `Broker` keeps its own process's allocator and settings.
//!
//! - [`broker`]: `Broker` and its builder, the embedding API.
//! - [`router`]: where a message is routed: the service table, endpoints, event fan-out.
//! - [`connector`]: how clients reach the broker (the local Unix socket).
//! - [`runtime`]: the tokio runtime the connections run on.
//! - [`services`]: the built-in services `broker`, `service`, `event`, `module`.
//! - [`supervisor`]: where a module is loaded, started, reloaded, restarted and removed,
//!   and where a set of modules is brought to what a site file says (`apply`).
//! - [`site`]: the site file: reading and checking it, applying it, rc scripts.

pub mod broker;
pub mod connector;
pub mod router;
pub mod runtime;
pub mod services;
pub mod site;
pub mod supervisor;

pub use broker::{Broker, BrokerBuilder, BrokerError};
pub use site::Site;
pub use supervisor::{ModuleSpec, RestartPolicy};
pub use switchboard_loaders::LoadRequest;
