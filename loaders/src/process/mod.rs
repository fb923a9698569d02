//! The process loader (RFC 5): any executable file or `#!` script runs as a child process,
//! speaking the local-socket framing on an inherited socket. The OS process is the
//! isolation: a child that crashes, hangs or writes garbage is killed and reaped, and the
//! broker keeps serving everyone else.
//!
//! # On the broker's runtime, not on threads of its own
//!
//! The loader is given the broker's tokio runtime (`ProcessLoader::new(handle)`, through
//! `Registry::new(handle)`); a process module costs tasks on it and no thread: its socket's
//! reader and writer, its stdout and stderr, and a keeper that awaits its exit (a pidfd, or
//! SIGCHLD where the kernel has none) and keeps its timers (`child`, `bridge`, `output`,
//! `reaper`). The hello timeout, a remove's SIGTERM-to-SIGKILL grace and the linger after
//! the socket ended are timers there. The `Loader` and `RunningModule` calls stay
//! synchronous:
//!
//! - `load` forks on the calling thread, then waits (blocking that thread) for the
//!   handshake, which runs as a task. Call it from a thread that may block (the supervisor
//!   uses the runtime's blocking pool), never from a task: a worker blocked on it is one
//!   the handshake cannot use, and past `hello_timeout` + `HANDSHAKE_SLACK` the load fails.
//! - `run` spawns the tasks and returns; `terminate` hands the keeper an order and returns;
//!   `wait` has nothing left to do (the keeper's `exited` report comes after the child is
//!   reaped and its tasks have ended, and is its last act).
//! - A loaded module that is never run (`module.info`, a refused name) is dismissed by a
//!   task: its socket closed, the child reaped, killed first if it lingers a second.

mod bridge;
mod child;
mod output;
mod reaper;

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use tokio::runtime::Handle;

use crate::digest::file_digest;
use crate::error::LoadError;
use crate::module::{LoadRequest, LoadedModule, Loader, ModuleInfo, ModuleKind, ModuleLink, RunningModule, Usage};

use self::bridge::ProcessRunning;
use self::child::Child;

/// How long a child has to say hello when the request names no other limit.
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a child that said hello but is not run has to leave once its socket is closed.
const DISMISS_GRACE: Duration = Duration::from_secs(1);
/// How much longer than the hello timeout `load` waits for the handshake task to answer at
/// all (a runtime with no worker free to run it).
const HANDSHAKE_SLACK: Duration = Duration::from_secs(5);

pub struct ProcessLoader {
    runtime: Handle,
}

impl ProcessLoader {
    /// A loader whose modules run as tasks on `runtime` (multi-threaded, with I/O and time).
    pub fn new(runtime: Handle) -> Self {
        ProcessLoader { runtime }
    }
}

struct ProcessLoaded {
    info: ModuleInfo,
    runtime: Handle,
    /// Taken by `run`; a module that is never run (`module.info`, a failed load) is dismissed.
    child: Option<Child>,
}

impl Drop for ProcessLoaded {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            dismiss(&self.runtime, child);
        }
    }
}

/// Dismiss `child` in the background (a runtime that is shutting down drops the task, and
/// with it the child, killed and reaped by `Process`'s drop).
fn dismiss(runtime: &Handle, child: Child) {
    runtime.spawn(child.dismiss(DISMISS_GRACE));
}

impl Loader for ProcessLoader {
    fn kind(&self) -> ModuleKind {
        ModuleKind::Process
    }

    /// A `#!` script, or any file with an execute bit (native libraries are claimed first).
    fn recognizes(&self, path: &Path, head: &[u8]) -> bool {
        head.starts_with(b"#!")
            || std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }

    fn load(&self, request: &LoadRequest) -> Result<Box<dyn LoadedModule>, LoadError> {
        let argv: Vec<OsString> = request.args.iter().map(OsString::from).collect();
        self.start(request, &request.path, &argv, ModuleKind::Process)
    }
}

impl ProcessLoader {
    /// Run the native library `request.path` in the native module host `host`
    /// (`crate::native::isolated`): a process module to the broker, listed as `kind`
    /// native. The host is given the library's path as its one argument; the module's own
    /// arguments travel in the welcome, as for every process module.
    pub(crate) fn load_isolated(&self, request: &LoadRequest, host: &Path) -> Result<Box<dyn LoadedModule>, LoadError> {
        self.start(request, host, &[OsString::from(&request.path)], ModuleKind::Native)
    }

    /// Start `program` with `argv` for `request`, and wait for its handshake.
    fn start(
        &self,
        request: &LoadRequest,
        program: &Path,
        argv: &[OsString],
        kind: ModuleKind,
    ) -> Result<Box<dyn LoadedModule>, LoadError> {
        let (digest, size) = file_digest(&request.path)?;
        let timeout = request.hello_timeout.unwrap_or(DEFAULT_HELLO_TIMEOUT);
        let child = {
            let _runtime = self.runtime.enter();
            Child::spawn(request, program, argv)?
        };
        // The handshake is a task; this thread waits for its outcome.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let for_task = request.clone();
        let runtime = self.runtime.clone();
        self.runtime.spawn(async move {
            let outcome = child.handshake(&for_task, timeout).await;
            if let Err(std::sync::mpsc::TrySendError::Disconnected(Ok((child, _)))) = tx.try_send(outcome) {
                // Nobody waits for it any more: it must not outlive the abandoned load.
                dismiss(&runtime, child);
            }
        });
        let (child, hello) = rx.recv_timeout(timeout + HANDSHAKE_SLACK).map_err(|e| LoadError::Start {
            name: request.path.display().to_string(),
            detail: format!("the broker's runtime did not run its handshake ({e})"),
        })??;
        let info = match ModuleInfo::new(request, hello.name, kind, digest, size) {
            Ok(info) => ModuleInfo { declares: hello.declares, ..info },
            Err(e) => {
                // An invalid name: the child must not outlive the refusal.
                dismiss(&self.runtime, child);
                return Err(e);
            }
        };
        Ok(Box::new(ProcessLoaded { info, runtime: self.runtime.clone(), child: Some(child) }))
    }
}

impl LoadedModule for ProcessLoaded {
    fn info(&self) -> &ModuleInfo {
        &self.info
    }

    fn run(mut self: Box<Self>, link: ModuleLink) -> Result<Box<dyn RunningModule>, LoadError> {
        let name = self.info.name.clone();
        let child = self.child.take().ok_or_else(|| LoadError::Start { name, detail: "already run".into() })?;
        let _runtime = self.runtime.enter();
        Ok(Box::new(bridge::start(child, link)))
    }
}

// The bridge's handle is what the supervisor holds.
impl RunningModule for ProcessRunning {
    fn terminate(&self, grace: Duration) -> bool {
        self.escalate(grace);
        true
    }

    fn pid(&self) -> Option<u32> {
        Some(ProcessRunning::pid(self))
    }

    fn usage(&self) -> Usage {
        // Once reaped, the pid may be somebody else's.
        self.is_alive().then(|| proc_usage(ProcessRunning::pid(self))).flatten().unwrap_or_default()
    }

    /// Nothing to wait for: the keeper reports `exited` after the child is reaped and the
    /// other tasks have ended, as its last act.
    fn wait(self: Box<Self>) {}
}

/// CPU time and resident size of process `pid` from /proc (None once it is gone).
fn proc_usage(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: count fields after it.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // Fields 14 and 15 of proc(5) (utime, stime) are the 12th and 13th after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let (hz, page) = (rustix::param::clock_ticks_per_second(), rustix::param::page_size() as u64);
    Some(Usage { memory_bytes: None, cpu_ms: Some(ticks * 1000 / hz.max(1)), rss_bytes: Some(pages * page.max(1)) })
}
