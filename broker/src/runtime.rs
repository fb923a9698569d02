//! The broker's runtime: a tokio multi-threaded runtime whose workers (one per CPU, named
//! `sb-io`) run every connection's tasks, the accept task, the supervisor's owner and its
//! operations (with their grace and back-off timers), the management service, and process
//! modules' socket, output and child tasks. A broker builds its own, or runs on one an
//! embedding program lends it (`BrokerBuilder::runtime`). The crate's docs (`lib.rs`) list
//! every thread and what each task owns.
//!
//! What may run on it: code that does not block; blocking work goes to its blocking pool.
//! Module handlers never run on it: a native or WASM module keeps its own thread and reaches
//! the runtime only through non-blocking calls (`ConnOut::enqueue` writes or hands over, a
//! `Notify` wakes a task, a command is sent to the supervisor).

use tokio::runtime::Handle;

/// Clients cost the broker a file descriptor each and no thread: raise this process's soft
/// limit on open files to its hard limit, as servers commonly do (systemd's default soft
/// limit of 1024 would otherwise be the connection limit). Children inherit it. The soft
/// limit afterwards; None when it is unlimited.
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let from = limit.current;
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!("open-file limit stays at {from:?}: {e}");
            return from;
        }
    }
    limit.current
}

/// A runtime as the broker builds its own: for a program (the `switchboard` binary) that
/// wants it before the broker starts, to lend it with `BrokerBuilder::runtime`.
pub fn build() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("sb-io").build()
}

/// The runtime a broker runs on: its own, or a program's.
pub(crate) enum BrokerRuntime {
    Owned(Option<tokio::runtime::Runtime>),
    Lent(Handle),
}

impl BrokerRuntime {
    /// A new runtime of the broker's own.
    pub fn build() -> std::io::Result<BrokerRuntime> {
        Ok(BrokerRuntime::Owned(Some(build()?)))
    }

    pub fn handle(&self) -> Handle {
        match self {
            BrokerRuntime::Owned(Some(r)) => r.handle().clone(),
            BrokerRuntime::Owned(None) => unreachable!("the runtime is only taken when the broker is dropped"),
            BrokerRuntime::Lent(h) => h.clone(),
        }
    }
}

impl Drop for BrokerRuntime {
    fn drop(&mut self) {
        if let BrokerRuntime::Owned(runtime) = self {
            if let Some(runtime) = runtime.take() {
                // Dropped inside some runtime's task a blocking shutdown would panic: let the
                // workers end in the background there.
                if Handle::try_current().is_ok() {
                    runtime.shutdown_background();
                } else {
                    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
                }
            }
        }
    }
}
