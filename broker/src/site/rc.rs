//! rc scripts (RFC 4 §6): a start script run once the site's modules are up, a stop script
//! run before they are removed. Each gets the broker's address in `SWITCHBOARD_URI` and the
//! broker's own folder first on `PATH` (where `modctl` is installed beside it), so plain
//! shell lines of `modctl` work. A script without its execute bit is run by `/bin/sh`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum RcError {
    #[error("rc script {}: cannot run it: {source}", path.display())]
    Spawn { path: PathBuf, source: std::io::Error },
    #[error("rc script {} failed ({status})", path.display())]
    Failed { path: PathBuf, status: std::process::ExitStatus },
    #[error("rc script {} was interrupted: the broker was told to stop", path.display())]
    Interrupted { path: PathBuf },
}

/// Run `script` to completion with the broker at `uri`; its output goes to the broker's
/// stderr. If `stop` completes first, the script and every process it started (its process
/// group) are killed, and the script reaped.
pub async fn run_script(script: &Path, uri: &str, stop: impl std::future::Future<Output = ()>) -> Result<(), RcError> {
    let executable = std::fs::metadata(script).is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
    let mut cmd = if executable {
        Command::new(script)
    } else {
        let mut c = Command::new("/bin/sh");
        c.arg(script);
        c
    };
    cmd.env("SWITCHBOARD_URI", uri);
    // Its output goes to the broker's log stream: the broker's stdout carries only its
    // address line (RFC 1 §7.2).
    cmd.stdout(std::process::Stdio::from(std::io::stderr()));
    if let Some(dir) = std::env::current_exe().ok().as_deref().and_then(Path::parent) {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let dirs = std::iter::once(dir.to_owned()).chain(std::env::split_paths(&path));
        if let Ok(joined) = std::env::join_paths(dirs) {
            cmd.env("PATH", joined);
        }
    }
    if let Some(dir) = script.parent() {
        cmd.current_dir(dir);
    }
    let spawn_error = |source| RcError::Spawn { path: script.to_owned(), source };
    // A group of its own, so that a stop reaches what the script started too.
    cmd.process_group(0);
    let mut child = cmd.spawn().map_err(spawn_error)?;
    let status = tokio::select! {
        status = child.wait() => status.map_err(spawn_error)?,
        () = stop => {
            if let Some(pgid) = child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32)) {
                let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
            }
            let _ = child.kill().await;
            return Err(RcError::Interrupted { path: script.to_owned() });
        }
    };
    if status.success() {
        Ok(())
    } else {
        Err(RcError::Failed { path: script.to_owned(), status })
    }
}
