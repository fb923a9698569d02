//! The loader interface of the design brief (RFC 2 §1): what every module kind provides,
//! and what the broker hands a module when it runs. Nothing here knows any particular kind.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use switchboard_protocol::declare::Declarations;
use switchboard_protocol::{Level, Message};

use crate::error::LoadError;
use crate::inbox::Inbox;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModuleKind {
    Native,
    Wasm,
    Process,
}

impl ModuleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ModuleKind::Native => "native",
            ModuleKind::Wasm => "wasm",
            ModuleKind::Process => "process",
        }
    }
}

impl fmt::Display for ModuleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lifecycle of a module instance (RFC 2 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModuleState {
    Loading,
    Init,
    Running,
    Finalizing,
    Exited,
    Failed,
}

impl ModuleState {
    pub fn as_str(self) -> &'static str {
        match self {
            ModuleState::Loading => "loading",
            ModuleState::Init => "init",
            ModuleState::Running => "running",
            ModuleState::Finalizing => "finalizing",
            ModuleState::Exited => "exited",
            ModuleState::Failed => "failed",
        }
    }

    /// Exited or failed: the module's thread of control has ended.
    pub fn is_final(self) -> bool {
        matches!(self, ModuleState::Exited | ModuleState::Failed)
    }
}

/// How a module's thread of control ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    /// Returned cleanly (after a shutdown request, or on its own).
    Exited,
    /// Panicked, trapped, crashed, returned an error, or failed its handshake.
    Failed(String),
}

/// What `modctl load` asked for.
#[derive(Debug, Clone, Default)]
pub struct LoadRequest {
    pub path: PathBuf,
    /// Instance name; the module's default name when None.
    pub name: Option<String>,
    pub args: Vec<String>,
    /// The module's configuration table, a msgpack map (empty = none).
    pub config: Bytes,
    /// Only describe the module (`module.info`): a loader may skip what running needs.
    pub inspect_only: bool,
    /// Process modules: environment variables set for the child, on top of the broker's.
    pub env: Vec<(String, String)>,
    /// Process modules: how long the child has to say hello (default 10 s).
    pub hello_timeout: Option<std::time::Duration>,
    /// WASM modules: what the sandbox allows.
    pub sandbox: Sandbox,
    /// Native modules: run the library in a host process of its own (`native::isolated`),
    /// seen by the broker as a process module, so that a crash fails only this module.
    pub isolated: bool,
}

/// A WASM module's allowances (RFC 6 §4). Nothing is granted by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sandbox {
    /// Memory cap in bytes (default 64 MiB).
    pub memory: Option<u64>,
    /// CPU time one call may take (default 1 s).
    pub cpu: Option<std::time::Duration>,
    /// Host directories the module may open.
    pub dirs: Vec<DirGrant>,
}

impl Sandbox {
    /// The largest memory cap a module may be given, in MiB (1 TiB).
    pub const MAX_MEMORY_MB: u64 = 1 << 20;

    /// A memory cap given in MiB, in bytes; None above `MAX_MEMORY_MB`.
    pub fn memory_from_mb(mb: u64) -> Option<u64> {
        (mb <= Self::MAX_MEMORY_MB).then_some(mb << 20)
    }
}

/// One preopened directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGrant {
    pub host: PathBuf,
    /// The path the module sees.
    pub guest: String,
    pub writable: bool,
}

/// What a loaded-but-not-started module is: `module.info` shows exactly this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    /// Instance name (the request's `name`, else the module's default name).
    pub name: String,
    /// Services it will own; the first is its name.
    pub services: Vec<String>,
    pub kind: ModuleKind,
    /// A native library run in a host process of its own (`kind` stays `Native`).
    pub isolated: bool,
    pub path: PathBuf,
    /// Hex SHA-256 of the file.
    pub digest: String,
    pub size: u64,
    /// What the file declares about itself (methods, events): from the native table, the
    /// process hello or the WASM `declare` export; empty when it declares nothing.
    pub declares: Declarations,
}

impl ModuleInfo {
    /// What every loader reports: the instance name is the request's `name`, else the
    /// module's own `default_name`; it must be a valid name, and it is the module's service.
    pub fn new(
        request: &LoadRequest,
        default_name: String,
        kind: ModuleKind,
        digest: String,
        size: u64,
    ) -> Result<Self, LoadError> {
        let name = request.name.clone().unwrap_or(default_name);
        check_name(&name).map_err(LoadError::BadName)?;
        Ok(ModuleInfo {
            services: vec![name.clone()],
            name,
            kind,
            isolated: request.isolated,
            path: request.path.clone(),
            digest,
            size,
            declares: Declarations::default(),
        })
    }
}

/// The broker's side of a running module: where its output goes and where it reports.
/// Implemented by the broker; a loader calls it from the module's own thread (native, WASM)
/// or its tasks on the broker's runtime (process). No method blocks.
pub trait BrokerPort: Send + Sync {
    /// Route a message sent by the module. Never blocks. On the module's thread, output may be
    /// held back after `hold` until `flush`.
    fn send(&self, msg: Message);
    /// Hold this thread's output to sockets until `flush` (more input is queued: batch).
    fn hold(&self);
    /// Push out held output and stop holding. Call before blocking.
    fn flush(&self);
    fn set_state(&self, state: ModuleState);
    fn log(&self, level: Level, text: &str);
    /// The module's thread of control ended. The last call a loader makes.
    fn exited(&self, status: ExitStatus);
}

/// A module's connection to the broker, handed to `LoadedModule::run`.
pub struct ModuleLink {
    pub name: String,
    pub args: Vec<String>,
    pub config: Bytes,
    /// Messages for the module, in order; a `shutdown` control message asks it to stop.
    pub inbox: Arc<Inbox>,
    pub port: Arc<dyn BrokerPort>,
}

pub trait Loader: Send + Sync {
    fn kind(&self) -> ModuleKind;
    /// Cheap recognition from the file's name and first bytes (like binfmt_misc).
    fn recognizes(&self, path: &std::path::Path, head: &[u8]) -> bool;
    /// Open and inspect without starting.
    fn load(&self, request: &LoadRequest) -> Result<Box<dyn LoadedModule>, LoadError>;
}

pub trait LoadedModule: Send {
    fn info(&self) -> &ModuleInfo;
    /// Start the module's thread of control. It must end with `link.port.exited(..)`.
    fn run(self: Box<Self>, link: ModuleLink) -> Result<Box<dyn RunningModule>, LoadError>;
}

/// A started module. The broker asks it to stop with a `shutdown` message in its inbox (the
/// same for every kind); this trait is what remains kind-specific.
pub trait RunningModule: Send + Sync {
    /// The grace period passed: force the module to stop if this kind can (process: SIGTERM,
    /// then SIGKILL after `grace`; wasm: interrupt). Returns false when it cannot (native: a
    /// thread cannot be killed).
    fn terminate(&self, grace: std::time::Duration) -> bool;
    /// OS process id, for process modules.
    fn pid(&self) -> Option<u32> {
        None
    }
    /// What the module uses, as far as its kind can tell.
    fn usage(&self) -> Usage {
        Usage::default()
    }
    /// Reclaim what is left once the module has reported `exited`: join its thread (native,
    /// WASM); nothing for a process module, whose task reaped the child before reporting.
    fn wait(self: Box<Self>);
}

/// Resources a running module holds (`module.stats`); None where its kind cannot tell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// WASM: the instance's linear memory, in bytes.
    pub memory_bytes: Option<u64>,
    /// Process: CPU time used (user + system), in milliseconds.
    pub cpu_ms: Option<u64>,
    /// Process: resident set size, in bytes.
    pub rss_bytes: Option<u64>,
}

/// A module or service name: 1 to 64 of `[A-Za-z0-9_-]`. No dots: the service is the part
/// of a topic before the first dot.
pub fn check_name(name: &str) -> Result<(), String> {
    if switchboard_protocol::mgmt::is_module_name(name) {
        Ok(())
    } else {
        Err(format!("invalid name '{name}': use 1 to 64 letters, digits, '_' or '-'"))
    }
}
