//! # switchboard-loaders
//!
//! Turns a file on disk into a running actor module, whatever its kind. The broker sees only
//! the interface in [`module`]; each loader lives in its own folder and is found through the
//! [`Registry`] by the file's first bytes, so a new kind never touches the broker.
//!
//! - [`module`]: `Loader`, `LoadedModule`, `RunningModule`, `ModuleLink`, `BrokerPort` and
//!   the data they exchange (`ModuleInfo`, `ModuleState`, `ExitStatus`).
//! - [`inbox`]: a module's message queue (the `switchboard-inbox` crate, model-checked with
//!   loom there): a native or WASM module's thread blocks on it, a process module's writer
//!   task awaits it.
//! - [`error`]: `LoadError`, each variant a sentence an operator can act on.
//! - [`registry`]: picks the loader for a file.
//! - [`search`]: the module search path (bare names to files).
//! - [`digest`]: content digest and size of a module file.
//! - [`native`]: ELF shared objects speaking the C ABI of RFC 2.
//! - [`process`]: executables and scripts run as child processes (RFC 5).
//! - [`wasm`]: WebAssembly components run by wasmtime, sandboxed (RFC 6).

pub mod digest;
pub mod error;
pub use switchboard_inbox as inbox;
pub mod module;
pub mod native;
pub mod process;
pub mod registry;
pub mod search;
pub mod wasm;

pub use error::LoadError;
pub use inbox::Inbox;
pub use module::{
    check_name, BrokerPort, DirGrant, ExitStatus, LoadRequest, LoadedModule, Loader, ModuleInfo, ModuleKind,
    ModuleLink, ModuleState, RunningModule, Sandbox, Usage,
};
pub use registry::Registry;
pub use search::SearchPath;
