//! Compiled code on disk, so a second load of the same file does not recompile. An entry is
//! keyed by the file's digest, the wasmtime version and the engine's settings, and carries
//! a checksum of its own bytes: an entry that is stale, truncated or altered is ignored and
//! rebuilt, never handed to wasmtime unchecked.

// Unsafe code here: loads precompiled components, which wasmtime cannot check.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::Mutex;

use wasmtime::component::Component;
use wasmtime::Engine;

use crate::digest::bytes_digest;

/// Whether a load found its compiled code in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    /// Compiled now (and stored, if the cache directory is usable).
    Compiled,
}

/// `$XDG_CACHE_HOME/switchboard/wasm`, else `~/.cache/switchboard/wasm`, else a folder in
/// the runtime directory; `SWITCHBOARD_CACHE_DIR` overrides all three.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SWITCHBOARD_CACHE_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".cache")));
    match base {
        Some(b) => b.join("switchboard").join("wasm"),
        None => switchboard_protocol::uri::runtime_dir().join("wasm-cache"),
    }
}

fn key(engine: &Engine, digest: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{}-{}-{:016x}", &digest[..32], env!("CARGO_PKG_VERSION"), h.finish())
}

/// The lock that makes loads of one file at the same moment (a site starting many instances
/// of it) compile it once: the first compiles, the others wait and find it in the cache.
fn in_flight(digest: &str) -> Arc<Mutex<()>> {
    static FLIGHTS: OnceLock<Mutex<HashMap<String, Weak<Mutex<()>>>>> = OnceLock::new();
    let mut flights = FLIGHTS.get_or_init(Default::default).lock();
    if let Some(lock) = flights.get(digest).and_then(Weak::upgrade) {
        return lock;
    }
    flights.retain(|_, w| w.strong_count() > 0);
    let lock = Arc::new(Mutex::new(()));
    flights.insert(digest.to_string(), Arc::downgrade(&lock));
    lock
}

/// The component for `bytes`, from the cache when a sound entry is there.
pub fn load_or_compile(engine: &Engine, bytes: &[u8], digest: &str) -> Result<(Component, CacheOutcome), String> {
    let flight = in_flight(digest);
    let _one_at_a_time = flight.lock();
    let dir = cache_dir();
    // Only a directory nobody else can write to is trusted to hold compiled code.
    let usable = switchboard_protocol::uri::private_dir(&dir, 0o700).is_ok();
    let key = key(engine, digest);
    let (code, sum) = (dir.join(format!("{key}.cwasm")), dir.join(format!("{key}.sha256")));
    if let (true, Ok(compiled), Ok(expected)) = (usable, std::fs::read(&code), std::fs::read_to_string(&sum)) {
        if bytes_digest(&compiled) == expected.trim() {
            // SAFETY: these bytes are exactly what `Component::serialize` wrote for this
            // engine configuration (the checksum proves they were not changed since), in a
            // directory only this user can write.
            if let Ok(c) = unsafe { Component::deserialize(engine, &compiled) } {
                tracing::debug!(digest = &digest[..16], "compiled code from the cache");
                return Ok((c, CacheOutcome::Hit));
            }
        }
        tracing::warn!(digest = &digest[..16], "ignoring a stale or damaged compiled-code cache entry");
    }
    let start = std::time::Instant::now();
    let component =
        Component::new(engine, bytes).map_err(|e| format!("it is not a valid WebAssembly component: {e}"))?;
    tracing::info!(digest = &digest[..16], ms = start.elapsed().as_millis() as u64, "compiled a WASM component");
    if let (true, Ok(compiled)) = (usable, component.serialize()) {
        let _ = store(&dir, &key, &compiled);
    }
    Ok((component, CacheOutcome::Compiled))
}

/// Write an entry atomically: the code, then its checksum (which makes it valid).
fn store(dir: &std::path::Path, key: &str, compiled: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{key}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, compiled)?;
    std::fs::rename(&tmp, dir.join(format!("{key}.cwasm")))?;
    let tmp = dir.join(format!("{key}.sha256.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes_digest(compiled))?;
    std::fs::rename(&tmp, dir.join(format!("{key}.sha256")))
}
