//! The module search path: how a bare module name (`kvs`: a valid module name, so no `/`
//! and no `.`) becomes a file, as a shell finds a command on `PATH`. Each folder is tried in order for `NAME.so`,
//! `libNAME.so`, `NAME.wasm` and an executable `NAME`; the first that exists wins.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::LoadError;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchPath {
    pub dirs: Vec<PathBuf>,
}

impl SearchPath {
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        SearchPath { dirs }
    }

    /// A module reference that is a valid module name (`kvs`, `my-mod`) is a name to look
    /// up; anything else (`./kvs`, `libkvs.so`, `/opt/m/kvs.wasm`) is a path.
    pub fn is_bare(reference: &Path) -> bool {
        reference.to_str().is_some_and(switchboard_protocol::mgmt::is_module_name)
    }

    /// The file a bare name stands for; a path is returned as it is.
    pub fn resolve(&self, reference: &Path) -> Result<PathBuf, LoadError> {
        if !Self::is_bare(reference) {
            return Ok(reference.to_owned());
        }
        let name = reference.to_string_lossy();
        for dir in &self.dirs {
            for candidate in [format!("{name}.so"), format!("lib{name}.so"), format!("{name}.wasm")] {
                let p = dir.join(candidate);
                if p.is_file() {
                    return Ok(p);
                }
            }
            let p = dir.join(&*name);
            if std::fs::metadata(&p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0) {
                return Ok(p);
            }
        }
        Err(LoadError::NotOnSearchPath { name: name.into_owned(), dirs: self.dirs.clone() })
    }
}

/// The instance name a file suggests when none is given: the file name without its folder,
/// a `lib` prefix on a `.so`, and its extension (`libkvs.so`, `kvs.wasm`, `kvs.py`: `kvs`).
pub fn name_from_path(path: &Path) -> String {
    let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let (stem, ext) = match file.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s.to_string(), e),
        _ => (file.clone(), ""),
    };
    match (ext, stem.strip_prefix("lib")) {
        ("so", Some(s)) if !s.is_empty() => s.to_string(),
        _ => stem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_paths() {
        assert_eq!(name_from_path(Path::new("/a/libkvs.so")), "kvs");
        assert_eq!(name_from_path(Path::new("kvs.wasm")), "kvs");
        assert_eq!(name_from_path(Path::new("/x/handler.py")), "handler");
        assert_eq!(name_from_path(Path::new("/x/echo")), "echo");
        assert_eq!(name_from_path(Path::new("/x/lib.so")), "lib");
    }

    #[test]
    fn finds_the_first_match_in_order() {
        let a = std::env::temp_dir().join(format!("sb-search-a-{}", std::process::id()));
        let b = std::env::temp_dir().join(format!("sb-search-b-{}", std::process::id()));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(b.join("libm1.so"), b"x").unwrap();
        std::fs::write(a.join("m1.wasm"), b"x").unwrap();
        std::fs::write(a.join("plain"), b"#!/bin/sh\n").unwrap();
        let sp = SearchPath::new(vec![a.clone(), b.clone()]);
        assert_eq!(sp.resolve(Path::new("m1")).unwrap(), a.join("m1.wasm"));
        // Not executable: not a module.
        assert!(sp.resolve(Path::new("plain")).is_err());
        std::fs::set_permissions(a.join("plain"), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(sp.resolve(Path::new("plain")).unwrap(), a.join("plain"));
        assert_eq!(sp.resolve(Path::new("./m1")).unwrap(), PathBuf::from("./m1"));
        assert_eq!(sp.resolve(Path::new("m1.wasm")).unwrap(), PathBuf::from("m1.wasm"));
        let err = sp.resolve(Path::new("nope")).unwrap_err().to_string();
        assert!(err.contains("nope") && err.contains(&a.display().to_string()), "{err}");
        let _ = std::fs::remove_dir_all(&a);
        let _ = std::fs::remove_dir_all(&b);
    }
}
