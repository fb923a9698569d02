//! `Process`: a child process whose exit is awaited on the broker's runtime, and the only way
//! the loader signals it. It owns the child from spawn to reaping, so a signal can never reach
//! a recycled pid: through a pidfd (Linux 5.3 and later) a signal reaches this process or
//! none; without one (older kernels) it is sent only while the child is unreaped, and only
//! this `Process` reaps it. Its exit is a pidfd turning readable, or a SIGCHLD followed by a
//! `try_wait`: no thread waits for it.
//!
//! It must not be dropped unreaped on purpose: dropping it kills the child with SIGKILL and
//! reaps it on the dropping thread (a backstop for a runtime that shuts down under it, and
//! for a start that fails half-way), which blocks that thread for as long as the kernel takes
//! to end a killed process.

// Unsafe code here: registers a pidfd with the runtime.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::OwnedFd;
use std::process::ExitStatus;

use rustix::process::{Pid, PidfdFlags, Signal};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// How the child's exit is noticed.
enum Exit {
    /// Readable once the process has exited; also what signals are sent through.
    Pidfd(AsyncFd<OwnedFd>),
    /// Kernels without pidfds: every SIGCHLD the broker gets, then `try_wait`.
    Sigchld(tokio::signal::unix::Signal),
}

pub struct Process {
    child: std::process::Child,
    exit: Exit,
    /// Set once reaped: nothing is signalled after.
    status: Option<ExitStatus>,
}

impl Process {
    /// Watch `child` from the runtime this thread is in (a task, or `Handle::enter`). If it
    /// cannot be watched, the child is killed and reaped, and the error says why.
    pub fn watch(child: std::process::Child) -> io::Result<Process> {
        Self::watch_with(child, true)
    }

    /// `watch`, with or without trying a pidfd first (tests take the SIGCHLD path).
    pub(super) fn watch_with(mut child: std::process::Child, pidfd: bool) -> io::Result<Process> {
        let opened = if pidfd {
            rustix::process::pidfd_open(Pid::from_child(&child), PidfdFlags::empty())
        } else {
            Err(rustix::io::Errno::NOSYS)
        };
        let exit = match opened {
            // SAFETY: the `OwnedFd` moves into the `AsyncFd`, which alone closes it: the
            // descriptor stays open and the same until the `AsyncFd` is dropped.
            Ok(fd) => unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
                .map(Exit::Pidfd)
                .map_err(io::Error::from),
            // No pidfds here (or none left): SIGCHLD tells of every child's exit.
            Err(_) => tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).map(Exit::Sigchld),
        };
        match exit {
            Ok(exit) => Ok(Process { child, exit, status: None }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Send `sig` unless the child is already reaped; true if it was sent.
    pub fn signal(&self, sig: Signal) -> bool {
        if self.status.is_some() {
            return false;
        }
        match &self.exit {
            Exit::Pidfd(fd) => rustix::process::pidfd_send_signal(fd.get_ref(), sig).is_ok(),
            // Unreaped, and only we reap it: the pid is still this child's.
            Exit::Sigchld(_) => rustix::process::kill_process(Pid::from_child(&self.child), sig).is_ok(),
        }
    }

    /// Wait for the child to exit and reap it. Cancel-safe; once reaped, returns its status
    /// again at once.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.status {
                return Ok(status);
            }
            if let Some(status) = self.child.try_wait()? {
                self.status = Some(status);
                return Ok(status);
            }
            match &mut self.exit {
                Exit::Pidfd(fd) => fd.readable().await?.clear_ready(),
                Exit::Sigchld(sigchld) => {
                    if sigchld.recv().await.is_none() {
                        return Err(io::Error::other("the runtime stopped listening for SIGCHLD"));
                    }
                }
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.status.is_none() {
            self.signal(Signal::KILL);
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    fn sleeper() -> std::process::Child {
        std::process::Command::new("sleep").arg("600").spawn().expect("start sleep")
    }

    async fn terminated(pidfd: bool) {
        let mut p = Process::watch_with(sleeper(), pidfd).expect("watch");
        let pid = p.id();
        assert!(p.signal(Signal::TERM));
        let status = p.wait().await.expect("wait");
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        // Reaped: nothing more is sent, and it is no child of ours any more.
        assert!(!p.signal(Signal::KILL));
        assert!(reaped(pid));
    }

    /// No child `pid` is left to wait for (it was reaped, not left a zombie).
    fn reaped(pid: u32) -> bool {
        let pid = Pid::from_raw(pid as i32).expect("a child's pid is positive");
        matches!(
            rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG),
            Err(rustix::io::Errno::CHILD)
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_signalled_child_is_reaped_through_a_pidfd() {
        terminated(true).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_signalled_child_is_reaped_on_sigchld_without_a_pidfd() {
        terminated(false).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_dropped_process_is_killed_and_reaped() {
        let p = Process::watch(sleeper()).expect("watch");
        let pid = p.id();
        drop(p);
        assert!(reaped(pid), "the child was left unreaped");
    }
}
