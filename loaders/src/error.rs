//! `LoadError`: why a file could not become a running module, in words an operator can act
//! on, each with the errno the management protocol answers with.

use std::path::PathBuf;

use switchboard_protocol::Errno;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("{path}: no such file")]
    NotFound { path: PathBuf },
    #[error(
        "no module '{name}' on the search path ({}); give a path (with a '/' or an extension) or add its folder to search_path",
        dirs_text(dirs)
    )]
    NotOnSearchPath { name: String, dirs: Vec<PathBuf> },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "{path} is not a module: {what}; no loader recognises it (native modules are ELF shared objects named *.so)"
    )]
    NotRecognized { path: PathBuf, what: String },
    #[error("{path} could not be opened as a shared library: {detail}")]
    Open { path: PathBuf, detail: String },
    #[error("{path} is not a Switchboard module: it has no `{symbol}` symbol")]
    NoEntry { path: PathBuf, symbol: &'static str },
    #[error("{path} was built for native module ABI version {module}, but this broker speaks version {broker}; rebuild it against this switchboard-module-api")]
    AbiMismatch { path: PathBuf, module: u32, broker: u32 },
    #[error("{path} has a malformed module table: {detail}")]
    BadTable { path: PathBuf, detail: String },
    #[error("{path} did not say hello within {ms} ms of starting; it was killed{}", tail_text(tail))]
    HelloTimeout { path: PathBuf, ms: u64, tail: String },
    #[error("{path}: {detail}")]
    Handshake { path: PathBuf, detail: String },
    #[error("{path}: {detail}")]
    Wasm { path: PathBuf, detail: String },
    #[error("invalid module name: {0}")]
    BadName(String),
    #[error("could not start module {name}: {detail}")]
    Start { name: String, detail: String },
    #[error("{path} is a {kind} module: only native modules (*.so) can be loaded isolated{}", isolated_hint(kind))]
    NotIsolable { path: PathBuf, kind: crate::module::ModuleKind },
    #[error(
        "cannot run {path} isolated: the native module host {} {}; it is built beside the switchboard binary (cargo build -p switchboard), or set {} or the broker's native_host option to where it is",
        host.display(), why, crate::native::isolated::HOST_ENV
    )]
    NoNativeHost { path: PathBuf, host: PathBuf, why: String },
    /// A module (the native module host) refused to run, saying why: its words, verbatim.
    #[error("{text}")]
    Refused { errno: u32, text: String },
}

impl LoadError {
    /// The errno a `module.load` error response carries.
    pub fn errno(&self) -> Errno {
        match self {
            LoadError::NotFound { .. } | LoadError::NotOnSearchPath { .. } => Errno::ENOENT,
            LoadError::Io { .. } => Errno::EIO,
            LoadError::NotRecognized { .. }
            | LoadError::Open { .. }
            | LoadError::NoEntry { .. }
            | LoadError::AbiMismatch { .. }
            | LoadError::BadTable { .. } => Errno::ENOEXEC,
            LoadError::BadName(_) => Errno::EINVAL,
            LoadError::HelloTimeout { .. } => Errno::ETIMEDOUT,
            LoadError::Wasm { .. } => Errno::ENOEXEC,
            LoadError::Handshake { .. } => Errno::EPROTO,
            LoadError::Start { .. } => Errno::EIO,
            LoadError::NotIsolable { .. } => Errno::EINVAL,
            LoadError::NoNativeHost { .. } => Errno::ENOENT,
            LoadError::Refused { errno, .. } => Errno(*errno),
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::NotFound {
            LoadError::NotFound { path: path.to_owned() }
        } else {
            LoadError::Io { path: path.to_owned(), source }
        }
    }
}

/// " (its last output: ...)" when the child printed something, else "".
fn tail_text(tail: &str) -> String {
    if tail.is_empty() {
        " (expected a 'hello' control message on fd 3; it printed nothing)".to_string()
    } else {
        format!(" (expected a 'hello' control message on fd 3; its last output: {tail})")
    }
}

/// Why another kind needs no isolating, or cannot have it.
fn isolated_hint(kind: &crate::module::ModuleKind) -> &'static str {
    match kind {
        crate::module::ModuleKind::Process => " (a process module runs in a process of its own already)",
        crate::module::ModuleKind::Wasm => " (a WASM module runs in wasmtime's sandbox, inside the broker)",
        crate::module::ModuleKind::Native => "",
    }
}

fn dirs_text(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        return "it is empty".to_string();
    }
    dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
}
