//! Opening native module libraries. Every library stays mapped for the life of the broker
//! (thread-local destructors make `dlclose` unsound). A file is read once, and what is
//! mapped is a private copy of exactly those bytes, removed as soon as it is mapped: so a
//! module file rewritten in place (a rebuild, a `cp` over it) can never change code that is
//! running, and a changed file is a new digest that maps anew. The same bytes loaded again
//! reuse their mapping.

use std::collections::HashMap;
use std::ffi::CStr;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
use parking_lot::Mutex;
use switchboard_module_api::abi::{SbModule, ABI_VERSION, ENTRY_SYMBOL};
use switchboard_module_api::uri::{private_dir, runtime_dir};

use super::MainFn;
use crate::digest::bytes_digest;
use crate::error::LoadError;

/// What a library's entry table said, and which file it came from.
#[derive(Clone)]
pub(super) struct OpenedLibrary {
    pub default_name: String,
    pub main: MainFn,
    pub digest: String,
    pub size: u64,
}

/// Mapped libraries by digest.
fn mapped() -> &'static Mutex<HashMap<String, OpenedLibrary>> {
    static MAPPED: OnceLock<Mutex<HashMap<String, OpenedLibrary>>> = OnceLock::new();
    MAPPED.get_or_init(Default::default)
}

pub(super) fn open(path: &Path) -> Result<OpenedLibrary, LoadError> {
    let bytes = std::fs::read(path).map_err(|e| LoadError::io(path, e))?;
    let digest = bytes_digest(&bytes);
    let mut mapped = mapped().lock();
    if let Some(lib) = mapped.get(&digest) {
        return Ok(lib.clone());
    }
    let copy = private_copy(path, &digest, &bytes)?;
    let lib = open_entry(path, &copy, digest.clone(), bytes.len() as u64);
    // Mapped (or refused): the copy has served its purpose either way.
    let _ = std::fs::remove_file(&copy);
    let lib = lib?;
    mapped.insert(digest, lib.clone());
    Ok(lib)
}

/// Write `bytes` to a new file in this user's private runtime directory.
fn private_copy(path: &Path, digest: &str, bytes: &[u8]) -> Result<PathBuf, LoadError> {
    let base = runtime_dir();
    let dir = base.join("native");
    for d in [&base, &dir] {
        private_dir(d, 0o700).map_err(|e| LoadError::io(d, e))?;
    }
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("module");
    let copy = dir.join(format!("{stem}-{}-{}.so", &digest[..16], std::process::id()));
    let _ = std::fs::remove_file(&copy);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .open(&copy)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| LoadError::io(&copy, e))?;
    Ok(copy)
}

fn open_entry(shown: &Path, open_path: &Path, digest: String, size: u64) -> Result<OpenedLibrary, LoadError> {
    // SAFETY: loading a native module runs its initialisers; native modules are trusted code
    // by definition (RFC 2 §2).
    let lib = unsafe { Library::open(Some(open_path), RTLD_NOW | RTLD_LOCAL) }
        .map_err(|e| LoadError::Open { path: shown.to_owned(), detail: e.to_string() })?;
    // Never dlclose (see the module doc).
    let lib: &'static Library = Box::leak(Box::new(lib));
    let entry = unsafe { lib.get::<unsafe extern "C" fn() -> *const SbModule>(ENTRY_SYMBOL.as_bytes()) }
        .map_err(|_| LoadError::NoEntry { path: shown.to_owned(), symbol: ENTRY_SYMBOL })?;
    let bad = |detail: &str| LoadError::BadTable { path: shown.to_owned(), detail: detail.to_string() };
    // SAFETY: the entry takes no arguments and returns a pointer to static data (RFC 2 §3).
    let table = unsafe { entry() };
    if table.is_null() {
        return Err(bad("the entry symbol returned NULL"));
    }
    // The first two u32 fields are the same in every ABI version: read them before the rest.
    let (abi, size_field) = unsafe { (*(table as *const u32), *(table as *const u32).add(1)) };
    if abi != ABI_VERSION {
        return Err(LoadError::AbiMismatch { path: shown.to_owned(), module: abi, broker: ABI_VERSION });
    }
    if (size_field as usize) < std::mem::size_of::<SbModule>() {
        return Err(bad(&format!(
            "table size {size_field} is smaller than ABI version 1's {}",
            std::mem::size_of::<SbModule>()
        )));
    }
    let table = unsafe { &*table };
    if table.name.is_null() {
        return Err(bad("the module name is NULL"));
    }
    let name = unsafe { CStr::from_ptr(table.name) }.to_str().map_err(|_| bad("the module name is not UTF-8"))?;
    crate::module::check_name(name).map_err(|e| bad(&e))?;
    let main = table.main.ok_or_else(|| bad("its main function is NULL"))?;
    Ok(OpenedLibrary { default_name: name.to_string(), main, digest, size })
}
