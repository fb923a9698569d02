//! Opening native module libraries. Every library stays mapped for the life of the broker
//! (thread-local destructors make `dlclose` unsound). The same file opened again reuses its
//! mapping; a *changed* file at a path already mapped is copied under its digest and the
//! copy opened, because `dlopen` of a path it already knows returns the old mapping.

use std::collections::HashMap;
use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
use parking_lot::Mutex;
use switchboard_module_api::abi::{SbModule, ABI_VERSION, ENTRY_SYMBOL};

use super::MainFn;
use crate::digest::file_digest;
use crate::error::LoadError;

/// What a library's entry table said, and which file it came from.
#[derive(Clone)]
pub(super) struct OpenedLibrary {
    pub default_name: String,
    pub main: MainFn,
    pub digest: String,
    pub size: u64,
}

/// Mapped libraries by canonical path, each with the digests mapped from it.
fn mapped() -> &'static Mutex<HashMap<PathBuf, Vec<OpenedLibrary>>> {
    static MAPPED: OnceLock<Mutex<HashMap<PathBuf, Vec<OpenedLibrary>>>> = OnceLock::new();
    MAPPED.get_or_init(Default::default)
}

pub(super) fn open(path: &Path) -> Result<OpenedLibrary, LoadError> {
    let canonical = std::fs::canonicalize(path).map_err(|e| LoadError::io(path, e))?;
    let (digest, size) = file_digest(&canonical)?;
    let mut mapped = mapped().lock();
    let versions = mapped.entry(canonical.clone()).or_default();
    if let Some(lib) = versions.iter().find(|l| l.digest == digest) {
        return Ok(lib.clone());
    }
    // A new file, or a changed one at a known path: the latter must be opened from a copy.
    let open_path = if versions.is_empty() { canonical.clone() } else { copy_for_reload(&canonical, &digest)? };
    let lib = open_entry(path, &open_path, digest, size)?;
    versions.push(lib.clone());
    Ok(lib)
}

fn copy_for_reload(path: &Path, digest: &str) -> Result<PathBuf, LoadError> {
    let dir = switchboard_module_api::uri::runtime_dir().join("native");
    std::fs::create_dir_all(&dir).map_err(|e| LoadError::io(&dir, e))?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("module");
    let copy = dir.join(format!("{stem}-{}.so", &digest[..16]));
    std::fs::copy(path, &copy).map_err(|e| LoadError::io(&copy, e))?;
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
    Ok(OpenedLibrary { default_name: name.to_string(), main: table.main, digest, size })
}
