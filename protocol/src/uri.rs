//! Where the broker's local socket is (RFC 1 §7). A broker listens on `--listen PATH` or the
//! default path; a client connects to `SWITCHBOARD_URI` if set, else the same default path.
//! Both use the functions here, so they agree on the default.

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
        None => PathBuf::from(format!("/tmp/switchboard-{}", rustix::process::getuid().as_raw())),
    }
}

/// Make sure `dir` is this user's own: create it with `mode` if it is missing; if it exists it
/// must be a directory owned by this user that nobody else can write to (so nobody can plant
/// a socket or a library in it). An existing directory keeps its mode. The error names what
/// is wrong, not the directory: the caller says which one.
pub fn private_dir(dir: &std::path::Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if !dir.exists() {
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)?;
        }
        match std::fs::DirBuilder::new().mode(mode).create(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    let meta = std::fs::symlink_metadata(dir)?;
    let me = rustix::process::getuid().as_raw();
    let refuse = |why: &str| {
        Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, format!("{why}; refusing to use it")))
    };
    if !meta.is_dir() {
        return refuse("not a directory");
    }
    if meta.uid() != me {
        return refuse(&format!("owned by uid {}, not by this user (uid {me})", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return refuse("writable by other users");
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::private_dir;

    #[test]
    fn private_dir_creates_with_the_mode_and_leaves_an_existing_mode_alone() {
        let base = std::env::temp_dir().join(format!("sb-private-dir-{}", std::process::id()));
        let made = base.join("made");
        private_dir(&made, 0o700).unwrap();
        assert_eq!(std::fs::metadata(&made).unwrap().permissions().mode() & 0o777, 0o700);
        // An existing directory a broker opened to guests keeps its 0711.
        std::fs::set_permissions(&made, std::fs::Permissions::from_mode(0o711)).unwrap();
        private_dir(&made, 0o700).unwrap();
        assert_eq!(std::fs::metadata(&made).unwrap().permissions().mode() & 0o777, 0o711);
        // One that others can write to is refused.
        std::fs::set_permissions(&made, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = private_dir(&made, 0o700).unwrap_err();
        assert!(err.to_string().contains("writable by other users"), "{err}");
        std::fs::remove_dir_all(&base).unwrap();
    }
}
