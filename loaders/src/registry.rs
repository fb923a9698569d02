//! The loader registry: reads a file's first bytes and hands it to the loader that
//! recognises it. Adding a module kind means registering a loader here, nothing else.
//!
//! It is made with the broker's tokio runtime, which the process loader runs its children's
//! I/O, exits and timers on (see `process`); the other kinds keep a thread per module.

use std::io::Read;
use std::path::Path;

use tokio::runtime::Handle;

use crate::error::LoadError;
use crate::module::{LoadRequest, LoadedModule, Loader, ModuleKind};
use crate::native::NativeLoader;
use crate::process::ProcessLoader;
use crate::wasm::WasmLoader;

/// How many leading bytes a loader gets to recognise a file.
const HEAD: usize = 256;

pub struct Registry {
    loaders: Vec<Box<dyn Loader>>,
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
                Box::new(ProcessLoader::new(runtime)),
            ],
        }
    }

    /// Add a loader; earlier loaders win when two recognise a file.
    pub fn register(&mut self, loader: Box<dyn Loader>) {
        self.loaders.push(loader);
    }

    /// Recognise and open `request.path` without starting it.
    pub fn load(&self, request: &LoadRequest) -> Result<Box<dyn LoadedModule>, LoadError> {
        self.loader_for(&request.path)?.load(request)
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
