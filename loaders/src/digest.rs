//! Content digest and size of a module file: how `list` and `info` identify what was loaded,
//! and how the native loader tells a changed file from the one it already mapped.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::LoadError;

/// Hex SHA-256 and size in bytes of the file at `path`.
pub fn file_digest(path: &Path) -> Result<(String, u64), LoadError> {
    let mut file = std::fs::File::open(path).map_err(|e| LoadError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| LoadError::io(path, e))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    let hex = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((hex, size))
}

/// Hex SHA-256 of `bytes`.
pub fn bytes_digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// `file_digest` remembered per path while the file's identity and times stay the same
/// (device, inode, size, modification and change time), so checking a site file's hundred
/// modules for changes does not read them all each time.
#[derive(Default)]
pub struct DigestCache {
    seen: parking_lot::Mutex<std::collections::HashMap<std::path::PathBuf, (Stamp, String)>>,
}

type Stamp = (u64, u64, u64, i64, i64, i64, i64);

impl DigestCache {
    pub fn digest(&self, path: &Path) -> Result<String, LoadError> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).map_err(|e| LoadError::io(path, e))?;
        let stamp = (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec());
        if let Some((s, d)) = self.seen.lock().get(path) {
            if *s == stamp {
                return Ok(d.clone());
            }
        }
        let (digest, _) = file_digest(path)?;
        self.seen.lock().insert(path.to_owned(), (stamp, digest.clone()));
        Ok(digest)
    }
}
