//! Content digest and size of a module file: how `list` and `info` identify what was loaded,
//! and how the native loader and `apply` tell a changed file from one already read.
//!
//! [`DigestCache`] remembers a file's digest under its [`Stamp`] (device, inode, size,
//! modification and change time to the nanosecond), so that a file already read is not read
//! and hashed again while it is unchanged. A digest it gives is always the SHA-256 of the
//! file's current bytes: an entry is used only while the file's stamp is the one it was read
//! under, and it is kept only when nothing can change the file without changing the stamp
//! (see [`Stamp::settled`]). It never trusts a path alone, and never guesses: when in doubt it
//! reads the file.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
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

/// What identifies a file's content without reading it: which file (device, inode) and the
/// marks every write leaves (size, modification and change time, in nanoseconds). A file
/// rewritten in place gets a new change time (and usually size); a file replaced by a rename
/// (what linkers and `cp --remove-destination` do) is another inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Change time (set by every write, rename or `chmod`, never by `touch -d`), nanoseconds
    /// since the epoch.
    pub ctime_ns: i128,
}

impl Stamp {
    pub fn of(m: &std::fs::Metadata) -> Stamp {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        }
    }

    /// Whether, seen at `now`, the file was last written at least `settle` earlier: then a
    /// later write must give it a later time, so the same stamp means the same bytes. A
    /// younger file may still be written within the same tick of the file system's clock
    /// (a coarse clock; whole seconds on some file systems) and keep its stamp.
    pub fn settled(&self, now: SystemTime, settle: Duration) -> bool {
        let Ok(now) = now.duration_since(UNIX_EPOCH) else {
            return false;
        };
        let newest = self.mtime_ns.max(self.ctime_ns);
        newest + settle.as_nanos() as i128 <= now.as_nanos() as i128
    }
}

/// How long after its last write a file's stamp is trusted: more than any file system's
/// time granularity (2 s on FAT, 1 s on ext3, a clock tick elsewhere).
pub const SETTLE: Duration = Duration::from_secs(3);

/// How many files a cache remembers; past that the least recently used is forgotten (it is
/// only read again when next asked for).
pub const CAPACITY: usize = 512;

/// A file read in full: its bytes and their digest.
pub struct FileRead {
    pub bytes: Vec<u8>,
    /// Hex SHA-256 of `bytes`.
    pub digest: String,
}

struct Entry {
    stamp: Stamp,
    digest: String,
    /// When it was last used (the cache's own counter), for eviction.
    used: u64,
}

#[derive(Default)]
struct Entries {
    by_path: HashMap<PathBuf, Entry>,
    clock: u64,
}

/// File digests remembered per path under the file's [`Stamp`] (see the module doc).
pub struct DigestCache {
    entries: Mutex<Entries>,
    settle: Duration,
    reads: AtomicU64,
}

impl Default for DigestCache {
    fn default() -> Self {
        DigestCache::new(SETTLE)
    }
}

impl DigestCache {
    /// A cache that trusts a file's stamp once its last write is `settle` old (`SETTLE` in
    /// the broker; tests may use less, and then must make sure a rewrite changes the stamp).
    pub fn new(settle: Duration) -> Self {
        DigestCache { entries: Mutex::default(), settle, reads: AtomicU64::new(0) }
    }

    /// Hex SHA-256 of the file at `path`: remembered if the file is unchanged, else read.
    pub fn digest(&self, path: &Path) -> Result<String, LoadError> {
        match self.lookup(path)? {
            Some(d) => Ok(d),
            None => Ok(self.read(path)?.digest),
        }
    }

    /// The digest remembered for `path`, if the file there has the stamp it was read under
    /// (one `stat`, no read). None when it was never read, was forgotten, or changed.
    pub fn lookup(&self, path: &Path) -> Result<Option<String>, LoadError> {
        let stamp = Stamp::of(&std::fs::metadata(path).map_err(|e| LoadError::io(path, e))?);
        let mut entries = self.entries.lock();
        entries.clock += 1;
        let now = entries.clock;
        Ok(entries.by_path.get_mut(path).filter(|e| e.stamp == stamp).map(|e| {
            e.used = now;
            e.digest.clone()
        }))
    }

    /// Read the file at `path` in full and hash it; remember the digest when the file did
    /// not change while being read and its stamp is settled.
    pub fn read(&self, path: &Path) -> Result<FileRead, LoadError> {
        self.read_at(path, SystemTime::now())
    }

    /// `read`, judging the stamp as if it were `now` (taken before the file is opened).
    fn read_at(&self, path: &Path, now: SystemTime) -> Result<FileRead, LoadError> {
        let io = |e| LoadError::io(path, e);
        let mut file = std::fs::File::open(path).map_err(io)?;
        let before = Stamp::of(&file.metadata().map_err(io)?);
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let after = Stamp::of(&file.metadata().map_err(io)?);
        self.reads.fetch_add(1, Ordering::Relaxed);
        let digest = bytes_digest(&bytes);
        let whole = before == after && before.size == bytes.len() as u64;
        let mut entries = self.entries.lock();
        if whole && before.settled(now, self.settle) {
            entries.clock += 1;
            let used = entries.clock;
            if entries.by_path.len() >= CAPACITY && !entries.by_path.contains_key(path) {
                let oldest = entries.by_path.iter().min_by_key(|(_, e)| e.used).map(|(p, _)| p.clone());
                if let Some(p) = oldest {
                    entries.by_path.remove(&p);
                }
            }
            entries.by_path.insert(path.to_owned(), Entry { stamp: before, digest: digest.clone(), used });
        } else {
            // Changing, or too young to trust: whatever was remembered is stale.
            entries.by_path.remove(path);
        }
        Ok(FileRead { bytes, digest })
    }

    /// How many times a file was read in full (`read`, or `digest` without a remembered
    /// digest): how tests and diagnostics tell a remembered digest from a read.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// How many files are remembered.
    pub fn len(&self) -> usize {
        self.entries.lock().by_path.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;

    /// A folder of its own under the system's temporary folder, removed when dropped.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(what: &str) -> TempDir {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("sb-{what}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("make a temporary folder");
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Wait until a file written now would get a later change time than `path` has (the file
    /// system's clock is coarse): after this, a rewrite of `path` must change its stamp.
    pub(crate) fn wait_for_a_new_tick(path: &Path) {
        let old = Stamp::of(&std::fs::metadata(path).unwrap()).ctime_ns;
        let probe = path.with_extension("probe");
        for _ in 0..10_000 {
            std::fs::write(&probe, b"x").unwrap();
            if Stamp::of(&std::fs::metadata(&probe).unwrap()).ctime_ns > old {
                let _ = std::fs::remove_file(&probe);
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("the file system's clock did not move in 10,000 tries");
    }

    fn sha256_of(path: &Path) -> String {
        bytes_digest(&std::fs::read(path).unwrap())
    }

    /// A file in a folder of its own holding `content`, digested once by a cache that trusts
    /// any stamp (the tests that change the file make sure its stamp changes).
    fn digested_once(what: &str, content: &[u8]) -> (TempDir, PathBuf, DigestCache, String) {
        let dir = TempDir::new(what);
        let f = dir.0.join("m.so");
        std::fs::write(&f, content).unwrap();
        let cache = DigestCache::new(Duration::ZERO);
        let digest = cache.digest(&f).unwrap();
        assert_eq!(digest, sha256_of(&f));
        (dir, f, cache, digest)
    }

    /// The file was changed: the cache must read it again and give the new bytes' digest.
    fn assert_read_again(cache: &DigestCache, f: &Path, old: &str) {
        let reads = cache.reads();
        let new = cache.digest(f).unwrap();
        assert_eq!(cache.reads(), reads + 1);
        assert_ne!(new, old);
        assert_eq!(new, sha256_of(f));
    }

    #[test]
    fn the_same_file_twice_is_read_once() {
        let (_dir, f, cache, first) = digested_once("digest-same", b"first content");
        assert_eq!(cache.digest(&f).unwrap(), first);
        assert_eq!(cache.reads(), 1);
    }

    #[test]
    fn a_file_rewritten_in_place_is_read_again() {
        let (_dir, f, cache, a) = digested_once("digest-inplace", b"content A");
        let ino = std::fs::metadata(&f).unwrap().ino();
        // Same size, same inode: only the times tell.
        wait_for_a_new_tick(&f);
        std::fs::OpenOptions::new().write(true).open(&f).unwrap().write_all_at(b"content B", 0).unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().ino(), ino);
        assert_read_again(&cache, &f, &a);
        // A different size is a change even within one tick.
        let b = sha256_of(&f);
        std::fs::write(&f, b"content B, longer").unwrap();
        assert_read_again(&cache, &f, &b);
    }

    #[test]
    fn a_file_replaced_by_a_rename_is_read_again() {
        let (dir, f, cache, a) = digested_once("digest-rename", b"content A");
        let new = dir.0.join("m.so.tmp");
        std::fs::write(&new, b"content B").unwrap();
        std::fs::rename(&new, &f).unwrap();
        assert_read_again(&cache, &f, &a);
    }

    #[test]
    fn a_file_written_within_the_settle_time_is_not_remembered() {
        let dir = TempDir::new("digest-young");
        let f = dir.0.join("m.so");
        std::fs::write(&f, b"young").unwrap();
        // An hour: the file was certainly written more recently than that.
        let cache = DigestCache::new(Duration::from_secs(3600));
        assert_eq!(cache.digest(&f).unwrap(), sha256_of(&f));
        assert_eq!(cache.lookup(&f).unwrap(), None);
        cache.digest(&f).unwrap();
        assert_eq!(cache.reads(), 2);
        // Judged from two hours on, the same file is settled and remembered.
        let later = SystemTime::now() + Duration::from_secs(7200);
        let read = cache.read_at(&f, later).unwrap();
        assert_eq!(cache.lookup(&f).unwrap(), Some(read.digest));
    }

    #[test]
    fn settled_compares_the_newest_time_with_now_less_the_settle_time() {
        let s = Stamp { dev: 1, ino: 2, size: 3, mtime_ns: 10_000_000_000, ctime_ns: 20_000_000_000 };
        let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
        assert!(!s.settled(at(21), Duration::from_secs(2)));
        assert!(s.settled(at(22), Duration::from_secs(2)));
        // A modification time set into the future (touch -d) counts too.
        let future = Stamp { mtime_ns: 100_000_000_000, ..s };
        assert!(!future.settled(at(50), Duration::from_secs(2)));
        assert!(!s.settled(UNIX_EPOCH - Duration::from_secs(1), Duration::ZERO));
    }

    #[test]
    fn the_least_recently_used_file_is_forgotten_past_the_capacity() {
        let dir = TempDir::new("digest-bound");
        let cache = DigestCache::new(Duration::ZERO);
        let paths: Vec<PathBuf> = (0..=CAPACITY).map(|i| dir.0.join(format!("m{i}.so"))).collect();
        for (i, p) in paths.iter().enumerate() {
            std::fs::write(p, format!("file {i}")).unwrap();
        }
        for p in &paths[..CAPACITY] {
            cache.digest(p).unwrap();
        }
        assert_eq!(cache.len(), CAPACITY);
        // Use the first again: the second is now the least recently used.
        assert!(cache.lookup(&paths[0]).unwrap().is_some());
        cache.digest(&paths[CAPACITY]).unwrap();
        assert_eq!(cache.len(), CAPACITY);
        assert!(cache.lookup(&paths[0]).unwrap().is_some());
        assert!(cache.lookup(&paths[1]).unwrap().is_none());
        assert!(cache.lookup(&paths[CAPACITY]).unwrap().is_some());
    }
}
