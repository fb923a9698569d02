//! The loader registry: reads a file's first bytes and hands it to the loader that
//! recognises it. Adding a module kind means registering a loader here, nothing else.
//!
//! It is made with the broker's tokio runtime, which the process loader runs its children's
//! I/O, exits and timers on (see `process`); the other kinds keep a thread per module.
//!
//! A request marked `isolated` must name a file the native loader recognises; it is then
//! run by the process loader in the native module host (`native::isolated`), which this
//! registry locates (`set_native_host`, else `native::isolated::locate`'s defaults).

use std::io::Read;
use std::path::{Path, PathBuf};

use tokio::runtime::Handle;

use crate::error::LoadError;
use crate::module::{LoadRequest, LoadedModule, Loader, ModuleKind};
use crate::native::{isolated, NativeLoader};
use crate::process::ProcessLoader;
use crate::wasm::WasmLoader;

/// How many leading bytes a loader gets to recognise a file.
const HEAD: usize = 256;

pub struct Registry {
    loaders: Vec<Box<dyn Loader>>,
    /// Runs isolated native modules in the native module host.
    isolated: ProcessLoader,
    /// Where the native module host is, when the embedding program says.
    native_host: Option<PathBuf>,
}

impl Registry {
    /// Every loader this build has; process modules run on `runtime` (multi-threaded, with
    /// I/O and time enabled: the broker's own).
    pub fn new(runtime: Handle) -> Self {
        // Native first: a shared object has an execute bit too.
        Registry {
            loaders: vec![
                Box::new(NativeLoader::new()),
                Box::new(WasmLoader::new()),
                Box::new(ProcessLoader::new(runtime.clone())),
            ],
            isolated: ProcessLoader::new(runtime),
            native_host: None,
        }
    }

    /// Run isolated native modules with the host binary at `path` instead of looking for
    /// it (`native::isolated::locate`).
    pub fn set_native_host(&mut self, path: PathBuf) {
        self.native_host = Some(path);
    }

    /// Add a loader; earlier loaders win when two recognise a file.
    pub fn register(&mut self, loader: Box<dyn Loader>) {
        self.loaders.push(loader);
    }

    /// Recognise and open `request.path` without starting it.
    /// With `request.isolated`, a native library runs in the native module host; any other
    /// kind is refused before anything is started. A native library only described
    /// (`inspect_only`) is opened in the host too when there is one (RFC 3 §3.11).
    pub fn load(&self, request: &LoadRequest) -> Result<Box<dyn LoadedModule>, LoadError> {
        let loader = self.loader_for(&request.path)?;
        if request.inspect_only && loader.kind() == ModuleKind::Native {
            // Describing a library runs its code (its constructors, its entry): in the native
            // module host when there is one, so that a library that crashes as it is opened
            // fails the inspection, not the broker.
            if let Ok(host) = isolated::locate(self.native_host.as_deref(), &request.path) {
                return self.isolated.load_isolated(request, &host);
            }
        }
        if !request.isolated {
            return loader.load(request);
        }
        if loader.kind() != ModuleKind::Native {
            return Err(LoadError::NotIsolable { path: request.path.clone(), kind: loader.kind() });
        }
        let host = isolated::locate(self.native_host.as_deref(), &request.path)?;
        self.isolated.load_isolated(request, &host)
    }

    /// Which kind of module the file at `path` is, from its name and first bytes only.
    pub fn kind(&self, path: &Path) -> Result<ModuleKind, LoadError> {
        Ok(self.loader_for(path)?.kind())
    }

    fn loader_for(&self, path: &Path) -> Result<&dyn Loader, LoadError> {
        let head = read_head(path)?;
        self.loaders
            .iter()
            .find(|l| l.recognizes(path, &head))
            .map(|l| &**l)
            .ok_or_else(|| LoadError::NotRecognized { path: path.to_owned(), what: describe(&head) })
    }
}

fn read_head(path: &Path) -> Result<Vec<u8>, LoadError> {
    let meta = std::fs::metadata(path).map_err(|e| LoadError::io(path, e))?;
    if meta.is_dir() {
        return Err(LoadError::NotRecognized { path: path.to_owned(), what: "it is a directory".into() });
    }
    let mut head = Vec::with_capacity(HEAD);
    std::fs::File::open(path)
        .and_then(|f| f.take(HEAD as u64).read_to_end(&mut head))
        .map_err(|e| LoadError::io(path, e))?;
    Ok(head)
}

/// A few words on what a file that no loader took looks like.
fn describe(head: &[u8]) -> String {
    if head.is_empty() {
        "it is empty".into()
    } else if head.starts_with(b"\x7fELF") {
        "it is an ELF file but not a shared object named *.so".into()
    } else if std::str::from_utf8(head).is_ok() || head.iter().all(|b| b.is_ascii()) {
        "it is a text file".into()
    } else {
        let hex: Vec<String> = head.iter().take(4).map(|b| format!("{b:02x}")).collect();
        format!("unknown data starting {}", hex.join(" "))
    }
}
