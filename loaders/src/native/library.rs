//! Opening native module libraries. Every library stays mapped for the life of the broker
//! (thread-local destructors make `dlclose` unsound). A file is read once, and what is
//! mapped is a private copy of exactly those bytes, removed as soon as it is mapped: so a
//! module file rewritten in place (a rebuild, a `cp` over it) can never change code that is
//! running, and a changed file is a new digest that maps anew. The same bytes loaded again
//! reuse their mapping, so every instance of them (under any name, from any path) shares the
//! library's statics.
//!
//! A file already read is not read again while its stamp (device, inode, size, times; see
//! `crate::digest`) is the one it was read under: its digest is remembered, and the digest
//! names the mapping. A rebuilt file has a new stamp, so it is read, hashed and mapped anew;
//! `digest` is always the SHA-256 of the bytes that run. This module does not decide what a
//! module may do once mapped, and never unmaps.

// Unsafe code here: opens a shared library and reads its module table.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::CStr;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
use parking_lot::Mutex;
use switchboard_protocol::abi::{declarations_from_abi, SbModule, ABI_VERSION, ENTRY_SYMBOL, SB_MODULE_SIZE_V1_0};
use switchboard_protocol::declare::Declarations;
use switchboard_protocol::uri::{private_dir, runtime_dir};

use super::MainFn;
use crate::digest::{DigestCache, FileRead};
use crate::error::LoadError;

/// What a library's entry table said, and which file it came from.
#[derive(Clone)]
pub(super) struct OpenedLibrary {
    pub default_name: String,
    pub main: MainFn,
    pub digest: String,
    pub size: u64,
    /// What the table declares (RFC 2 §3.1), copied out of it.
    pub declares: Declarations,
}

/// Mapped libraries by digest.
fn mapped() -> &'static Mutex<HashMap<String, OpenedLibrary>> {
    static MAPPED: OnceLock<Mutex<HashMap<String, OpenedLibrary>>> = OnceLock::new();
    MAPPED.get_or_init(Default::default)
}

/// Digests of the module files read so far, by path, under their stamps.
fn seen() -> &'static DigestCache {
    static SEEN: OnceLock<DigestCache> = OnceLock::new();
    SEEN.get_or_init(DigestCache::default)
}

pub(super) fn open(path: &Path) -> Result<OpenedLibrary, LoadError> {
    open_with(path, seen())
}

/// `open`, remembering digests in `seen`.
fn open_with(path: &Path, seen: &DigestCache) -> Result<OpenedLibrary, LoadError> {
    // A file unchanged since it was read: its digest names the mapping, nothing to read.
    if let Some(digest) = seen.lookup(path)? {
        if let Some(lib) = mapped().lock().get(&digest) {
            return Ok(lib.clone());
        }
    }
    let FileRead { bytes, digest } = seen.read(path)?;
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
    // SAFETY: RFC 2 §3 gives the entry symbol this type; a library that lies is not a module
    // anyone could load safely, and native modules are trusted code.
    let entry = unsafe { lib.get::<unsafe extern "C" fn() -> *const SbModule>(ENTRY_SYMBOL.as_bytes()) }
        .map_err(|_| LoadError::NoEntry { path: shown.to_owned(), symbol: ENTRY_SYMBOL })?;
    let bad = |detail: &str| LoadError::BadTable { path: shown.to_owned(), detail: detail.to_string() };
    // SAFETY: the entry takes no arguments and returns a pointer to static data (RFC 2 §3).
    let table = unsafe { entry() };
    if table.is_null() {
        return Err(bad("the entry symbol returned NULL"));
    }
    // The first two u32 fields are the same in every ABI version: read them before the rest.
    // SAFETY: `table` is non-null and points to the module's static table (RFC 2 §3), which
    // starts with these two u32s in every version.
    let (abi, size_field) = unsafe { (*(table as *const u32), *(table as *const u32).add(1)) };
    if abi != ABI_VERSION {
        return Err(LoadError::AbiMismatch { path: shown.to_owned(), module: abi, broker: ABI_VERSION });
    }
    // A table built before the declarations were appended is 24 bytes: it still loads.
    if size_field < SB_MODULE_SIZE_V1_0 {
        return Err(bad(&format!("table size {size_field} is smaller than ABI version 1's {SB_MODULE_SIZE_V1_0}")));
    }
    // SAFETY: the table holds at least version 1's first fields (checked above), read in
    // place without claiming the fields after them, and is static in the library, which is
    // never unmapped.
    let (name_ptr, main) = unsafe { ((&raw const (*table).name).read(), (&raw const (*table).main).read()) };
    if name_ptr.is_null() {
        return Err(bad("the module name is NULL"));
    }
    // SAFETY: `name` is non-null and, by RFC 2 §3, a NUL-terminated string in static data.
    let name = unsafe { CStr::from_ptr(name_ptr) }.to_str().map_err(|_| bad("the module name is not UTF-8"))?;
    crate::module::check_name(name).map_err(|e| bad(&e))?;
    let main = main.ok_or_else(|| bad("its main function is NULL"))?;
    // SAFETY: the table's first `size_field` bytes are its own (RFC 2 §3.4), and what its
    // declaration fields point to is static data in the library (RFC 2 §3.1).
    let declares = unsafe { declarations_from_abi(table, size_field) }.map_err(|e| bad(&e.to_string()))?;
    Ok(OpenedLibrary { default_name: name.to_string(), main, digest, size, declares })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::Duration;

    use super::*;
    use crate::digest::bytes_digest;
    use crate::digest::tests::{wait_for_a_new_tick, TempDir};

    /// Compile a minimal module named `name` whose `main` returns `code` into `dir/file`,
    /// with the system C compiler (as the end-to-end tests do).
    fn c_module(dir: &Path, file: &str, name: &str, code: i32) -> PathBuf {
        let src = dir.join(format!("{file}.c"));
        std::fs::write(
            &src,
            format!(
                "#include \"switchboard.h\"\n\
                 static int32_t run(const sb_host *host) {{ (void)host; return {code}; }}\n\
                 static const sb_module module = {{ .abi_version = SB_ABI_VERSION, .size = sizeof(sb_module),\n\
                     .name = \"{name}\", .main = run }};\n\
                 const sb_module *switchboard_module_entry(void) {{ return &module; }}\n"
            ),
        )
        .unwrap();
        let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocol/include");
        let out = dir.join(file);
        let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
            .args(["-shared", "-fPIC", "-Wall", "-Werror", "-I"])
            .arg(&include)
            .arg("-o")
            .arg(&out)
            .arg(&src)
            .status()
            .expect("run the C compiler");
        assert!(status.success(), "compiling {} failed", src.display());
        out
    }

    fn sha256_of(path: &Path) -> String {
        bytes_digest(&std::fs::read(path).unwrap())
    }

    /// What the library's `main` returns (the test modules never look at the host table).
    fn call_main(lib: &OpenedLibrary) -> i32 {
        // SAFETY: the test modules' `main` only returns a constant; it never reads `host`.
        unsafe { (lib.main)(std::ptr::null()) }
    }

    #[test]
    fn a_file_loaded_again_unchanged_is_not_read_again() {
        let dir = TempDir::new("native-same");
        let so = c_module(&dir.0, "libsame.so", "same", 7);
        let seen = DigestCache::new(Duration::ZERO);
        let first = open_with(&so, &seen).unwrap();
        let again = open_with(&so, &seen).unwrap();
        assert_eq!(seen.reads(), 1);
        assert_eq!(first.digest, sha256_of(&so));
        assert_eq!(again.digest, first.digest);
        assert_eq!(again.main as usize, first.main as usize, "one mapping for the same bytes");
        assert_eq!(again.default_name, "same");
    }

    #[test]
    fn a_rebuilt_file_is_mapped_anew_and_the_running_code_is_untouched() {
        let dir = TempDir::new("native-rebuilt");
        let a = c_module(&dir.0, "a.so", "rebuilt_a", 11);
        let b = c_module(&dir.0, "b.so", "rebuilt_b", 22);
        let (bytes_a, bytes_b) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let so = dir.0.join("librebuilt.so");
        std::fs::write(&so, &bytes_a).unwrap();
        let seen = DigestCache::new(Duration::ZERO);
        let lib_a = open_with(&so, &seen).unwrap();
        assert_eq!((lib_a.default_name.as_str(), call_main(&lib_a)), ("rebuilt_a", 11));

        // Rewritten in place (same inode), as `cp` over it does.
        let ino = std::fs::metadata(&so).unwrap().ino();
        wait_for_a_new_tick(&so);
        std::fs::write(&so, &bytes_b).unwrap();
        assert_eq!(std::fs::metadata(&so).unwrap().ino(), ino);
        let lib_b = open_with(&so, &seen).unwrap();
        assert_eq!(seen.reads(), 2);
        assert_eq!(lib_b.digest, sha256_of(&so));
        assert_ne!(lib_b.digest, lib_a.digest);
        assert_eq!((lib_b.default_name.as_str(), call_main(&lib_b)), ("rebuilt_b", 22));
        // What was mapped from the old bytes still runs the old code.
        assert_eq!(call_main(&lib_a), 11);

        // Replaced by a rename (a new inode), as linkers do: the old bytes, their mapping.
        let tmp = dir.0.join("librebuilt.so.tmp");
        std::fs::write(&tmp, &bytes_a).unwrap();
        std::fs::rename(&tmp, &so).unwrap();
        let lib_a2 = open_with(&so, &seen).unwrap();
        assert_eq!(seen.reads(), 3);
        assert_eq!(lib_a2.digest, sha256_of(&so));
        assert_eq!(lib_a2.digest, lib_a.digest);
        assert_eq!(lib_a2.main as usize, lib_a.main as usize);
        assert_eq!(call_main(&lib_b), 22);
    }
}
