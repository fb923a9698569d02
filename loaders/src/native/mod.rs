//! The native loader: ELF shared objects exporting the C ABI of RFC 2, run on a thread of
//! their own inside the broker. Trusted code: no isolation. A library is never unloaded, and
//! the same bytes are mapped once: instances of one file (under two names, or copied to two
//! paths) share its statics, each on its own thread. A file loaded again unchanged is not
//! read again (`library`). The same library can also run isolated, in a host process of
//! its own that the broker supervises as a process module (`isolated`), with this loader's
//! own ABI check and `SbHost`.

// Unsafe code here: calls a module's `main` through the C ABI.
#![allow(unsafe_code)]

mod host;
pub mod isolated;
mod library;

use std::path::Path;
use std::thread::JoinHandle;

use parking_lot::Mutex;
use switchboard_protocol::abi::SbHost;

use crate::error::LoadError;
use crate::module::{LoadRequest, LoadedModule, Loader, ModuleInfo, ModuleKind, ModuleLink, RunningModule};

/// ELF `e_type` of a shared object.
const ET_DYN: u16 = 3;

#[derive(Default)]
pub struct NativeLoader;

impl NativeLoader {
    pub fn new() -> Self {
        NativeLoader
    }
}

type MainFn = unsafe extern "C" fn(*const SbHost) -> i32;

struct NativeLoaded {
    info: ModuleInfo,
    main: MainFn,
}

struct NativeRunning {
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Loader for NativeLoader {
    fn kind(&self) -> ModuleKind {
        ModuleKind::Native
    }

    /// An ELF shared object (`e_type` ET_DYN) whose file name has `.so` in it. The name
    /// matters: a position-independent executable is ET_DYN too, and belongs to the process
    /// loader.
    fn recognizes(&self, path: &Path, head: &[u8]) -> bool {
        let elf_dyn = head.len() >= 18 && head.starts_with(b"\x7fELF") && {
            // e_type is at offset 16, in the file's byte order (EI_DATA at offset 5).
            let t = [head[16], head[17]];
            let e_type = if head[5] == 2 { u16::from_be_bytes(t) } else { u16::from_le_bytes(t) };
            e_type == ET_DYN
        };
        let named_so =
            path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".so") || n.contains(".so."));
        elf_dyn && named_so
    }

    fn load(&self, request: &LoadRequest) -> Result<Box<dyn LoadedModule>, LoadError> {
        let lib = library::open(&request.path)?;
        Ok(Box::new(NativeLoaded {
            info: ModuleInfo {
                declares: lib.declares,
                ..ModuleInfo::new(request, lib.default_name, ModuleKind::Native, lib.digest, lib.size)?
            },
            main: lib.main,
        }))
    }
}

impl LoadedModule for NativeLoaded {
    fn info(&self) -> &ModuleInfo {
        &self.info
    }

    fn run(self: Box<Self>, link: ModuleLink) -> Result<Box<dyn RunningModule>, LoadError> {
        let name = link.name.clone();
        let main = self.main;
        let thread = std::thread::Builder::new()
            .name(format!("mod:{name}"))
            .spawn(move || host::run(main, link))
            .map_err(|e| LoadError::Start { name, detail: e.to_string() })?;
        Ok(Box::new(NativeRunning { thread: Mutex::new(Some(thread)) }))
    }
}

impl RunningModule for NativeRunning {
    fn terminate(&self, _grace: std::time::Duration) -> bool {
        false
    }

    fn wait(self: Box<Self>) {
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}
