//! Where the broker's local socket is: `SWITCHBOARD_URI` if set, else the default path
//! (RFC 1 §7). The broker and every client use this one function, so they always agree.

use std::path::PathBuf;

/// The environment variable that tells clients where the broker listens.
pub const URI_ENV: &str = "SWITCHBOARD_URI";

/// The default socket path: `$XDG_RUNTIME_DIR/switchboard/broker.sock`, or
/// `/tmp/switchboard-<uid>/broker.sock` when there is no runtime directory.
pub fn default_socket_path() -> PathBuf {
    runtime_dir().join("broker.sock")
}

/// The per-user directory the default socket lives in (the broker creates it mode 0700).
pub fn runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("switchboard"),
        // SAFETY: getuid cannot fail.
        None => PathBuf::from(format!("/tmp/switchboard-{}", unsafe { libc::getuid() })),
    }
}

/// Parse a URI: `local:///path/to.sock`, `local://relative`, or a plain path.
pub fn parse(uri: &str) -> PathBuf {
    PathBuf::from(uri.strip_prefix("local://").unwrap_or(uri))
}

/// The socket a client should connect to: `SWITCHBOARD_URI`, else the default path.
pub fn resolve() -> PathBuf {
    match std::env::var(URI_ENV) {
        Ok(u) if !u.is_empty() => parse(&u),
        _ => default_socket_path(),
    }
}

/// The URI form of a socket path, as put in `SWITCHBOARD_URI`.
pub fn to_uri(path: &std::path::Path) -> String {
    format!("local://{}", path.display())
}
