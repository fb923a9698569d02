//! The process loader (RFC 5): any executable file or `#!` script runs as a child process,
//! speaking the local-socket framing on an inherited socket. The OS process is the
//! isolation: a child that crashes, hangs or writes garbage is killed and reaped, and the
//! broker keeps serving everyone else.

mod bridge;
mod child;
mod output;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use crate::digest::file_digest;
use crate::error::LoadError;
use crate::module::{LoadRequest, LoadedModule, Loader, ModuleInfo, ModuleKind, ModuleLink, RunningModule, Usage};

use self::child::Child;

/// How long a child has to say hello when the request names no other limit.
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct ProcessLoader;

impl ProcessLoader {
    pub fn new() -> Self {
        ProcessLoader
    }
}

struct ProcessLoaded {
    info: ModuleInfo,
    /// Taken by `run`; a module that is never run (`module.info`, a failed load) is dismissed.
    child: Option<Child>,
}

impl Drop for ProcessLoaded {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            child.dismiss(Duration::from_secs(1));
        }
    }
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
        let (digest, size) = file_digest(&request.path)?;
        let timeout = request.hello_timeout.unwrap_or(DEFAULT_HELLO_TIMEOUT);
        let (child, hello) = Child::start(request, timeout)?;
        let info = match ModuleInfo::new(request, hello.name, ModuleKind::Process, digest, size) {
            Ok(info) => info,
            Err(e) => {
                // An invalid name: the child must not outlive the refusal.
                child.dismiss(Duration::from_secs(1));
                return Err(e);
            }
        };
        Ok(Box::new(ProcessLoaded { info, child: Some(child) }))
    }
}

impl LoadedModule for ProcessLoaded {
    fn info(&self) -> &ModuleInfo {
        &self.info
    }

    fn run(mut self: Box<Self>, link: ModuleLink) -> Result<Box<dyn RunningModule>, LoadError> {
        let name = self.info.name.clone();
        let child =
            self.child.take().ok_or_else(|| LoadError::Start { name: name.clone(), detail: "already run".into() })?;
        bridge::start(child, link)
            .map(|r| Box::new(r) as Box<dyn RunningModule>)
            .map_err(|e| LoadError::Start { name, detail: e.to_string() })
    }
}

pub(crate) use bridge::ProcessRunning;

// The bridge's handle is what the supervisor holds.
impl RunningModule for ProcessRunning {
    fn terminate(&self, grace: Duration) -> bool {
        self.escalate(grace);
        true
    }

    fn pid(&self) -> Option<u32> {
        Some(self.guard.pid())
    }

    fn usage(&self) -> Usage {
        proc_usage(self.guard.pid()).unwrap_or_default()
    }

    fn wait(self: Box<Self>) {
        self.join();
    }
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
    // SAFETY: sysconf has no preconditions.
    let (hz, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    Some(Usage {
        memory_bytes: None,
        cpu_ms: Some(ticks * 1000 / hz.max(1) as u64),
        rss_bytes: Some(pages * page.max(1) as u64),
    })
}
