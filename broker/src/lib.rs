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
//! - [`overlay`]: brokers of one instance in a tree (RFC 7): the certificate, the links to
//!   the parent and children and the thread that owns them, the subtree's health.
//! - [`runtime`]: the tokio runtime the connections, the supervisor and the management
//!   service run on.
//! - [`services`]: the built-in services `broker`, `service`, `event`, `module`.
//! - [`supervisor`]: where a module is loaded, started, reloaded, restarted and removed,
//!   and where a set of modules is brought to what a site file says (`apply`).
//! - [`site`]: the site file: reading and checking it, applying it, rc scripts.
//!
//! ## Threads and tasks
//!
//! Which threads a broker has, and why:
//! - **The runtime's workers** (`sb-io`, one per CPU; [`runtime`]): every client
//!   connection, the accept loop, the supervisor and the management service run here as
//!   tasks. Nothing on them blocks. A broker has the same threads with 0, 1,000 or 10,000
//!   clients connected.
//! - **The runtime's blocking pool**: work that must block, and only that: reading, hashing
//!   and opening a module file, starting a module, joining an ended module's thread, a
//!   `config-update` call. Its threads come and go with that work (idle ones end after 10 s).
//! - **One thread per module** (native and WASM: the module's own; process modules: none in
//!   the broker, their child is a process of its own). A handler may block: that is the
//!   module author's contract.
//! - In a broker of an instance (RFC 7), **the overlay thread** (`sb-overlay`; [`overlay`]),
//!   which owns the ZeroMQ sockets of its links and routes what arrives on them, and
//!   libzmq's own I/O thread. A standalone broker has neither.
//! - The `switchboard` binary's main thread, which waits for signals the runtime hands it.
//!
//! What each task owns:
//! - A connection's **reader task** owns its read side, its partial frame and the list of
//!   services it used; its **writer task** owns the socket's write side while output waits
//!   for room (`router::ConnOut`).
//! - The **accept task** owns the listening socket and the count of connections.
//! - The **supervisor's owner task** owns every module's entry (spec, history, running
//!   handle), the names being worked on and the search path; operations ask it by command
//!   (`supervisor`), so there is no lock to order.
//! - The **management task** owns the management queue and starts a task per request.
//! - The **overlay thread** owns the links' sockets, which link is up as which endpoint,
//!   and what the children report of their subtrees; the router hands it what leaves by a
//!   link through a channel (`overlay::LinkOut`).
//!
//! What a module thread may do on the runtime: route (`Router::route` never blocks), enqueue
//! output to a connection (a non-blocking send, else a hand-over to the writer task), wake a
//! task, and send the supervisor a command (an unbounded send). It must not wait for a task:
//! the runtime's threads are few, and a module's thread is its own.

pub mod broker;
pub mod connector;
pub mod overlay;
pub mod router;
pub mod runtime;
pub mod services;
pub mod site;
pub mod supervisor;

pub use broker::{Broker, BrokerBuilder, BrokerError};
pub use site::Site;
pub use supervisor::{ModuleSpec, RestartPolicy};
pub use switchboard_loaders::LoadRequest;
