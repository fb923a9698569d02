//! Where a module is loaded, started, reloaded, restarted, listed and removed. Loaders turn
//! files into modules, the router moves their messages, and the supervisor ties the two
//! together and enforces the lifecycle (RFC 2 §4, RFC 3): names and services are unique,
//! requirements run first and are not removed from under their dependents, a remove waits
//! for the module to finalize up to a grace period, a reload hands every request the old
//! instance did not take to the new one, a failed module is restarted as its policy says,
//! and a module that leaves running by any path has its services and requests retired.
//!
//! How it is built: one task owns the state (`owner`); `Supervisor` is a handle that sends it
//! commands. An operation (`lifecycle`: load, reload, remove, configure, restart; `plan`:
//! apply) is an async function on the runtime that asks the owner for what it needs, waits
//! for modules and timers itself, and tells the owner what changed. Work that blocks (reading
//! and opening a module file, starting it, joining its thread) runs on the runtime's blocking
//! pool, never on the owner or a worker (`stats` reading a process module's `/proc` files
//! aside). Work the pool could not take is refused (EAGAIN) and never runs later.
//!
//! It does not read site files (`crate::site` turns them into `ModuleSpec`s) and does not
//! decode management requests (`management`).

mod lifecycle;
mod management;
mod order;
mod owner;
mod plan;
mod port;
mod record;
mod spec;

#[cfg(test)]
mod tests;

pub use management::spawn_management;
pub use order::{levels, Cycle, Node};
pub use plan::ApplyError;
pub use spec::{Change, ModuleSpec, RestartPolicy};

use std::sync::Arc;
use std::time::Duration;

use switchboard_loaders::digest::DigestCache;
use switchboard_loaders::{LoadRequest, LoadedModule, ModuleInfo, ModuleKind, Registry, SearchPath};
use switchboard_protocol::mgmt::{ModuleStats, ModuleStatus};
use switchboard_protocol::{Errno, Error};
use tokio::sync::mpsc;

use self::owner::{Command, Owner};
use crate::router::Router;

/// A handle to the supervisor: cheap to clone, every clone reaches the same owner.
#[derive(Clone)]
pub struct Supervisor {
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
}

/// What every operation reads and nobody changes.
struct Shared {
    router: Arc<Router>,
    registry: Registry,
    /// File digests for `apply`'s change check.
    digests: DigestCache,
    grace: Duration,
}

/// A name an operation holds, or waits in line for, until dropped (see `Owner::claim`). It
/// exists before the claim is sent, so an operation dropped at any point lets go of the name
/// or leaves the line: the release follows the claim in the owner's queue.
struct Claim {
    sup: Supervisor,
    key: String,
    token: u64,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let (key, token) = (std::mem::take(&mut self.key), self.token);
        self.sup.tell(move |o| o.release(&key, token));
    }
}

/// Tells apart the operations that claim names.
static NEXT_TOKEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn error(e: switchboard_loaders::LoadError) -> Error {
    Error::new(e.errno(), e.to_string())
}

fn gone() -> Error {
    Error::new(Errno::EIO, "the broker is shutting down")
}

impl Supervisor {
    /// Start the owner task on the current runtime.
    pub fn new(router: Arc<Router>, registry: Registry, grace: Duration) -> Supervisor {
        let (commands, rx) = mpsc::unbounded_channel();
        tokio::spawn(owner::run(Owner::default(), rx));
        let shared = Arc::new(Shared { router, registry, digests: DigestCache::default(), grace });
        Supervisor { commands, shared }
    }

    /// Run `f` on the owner with the state to itself; its result.
    async fn with<R: Send + 'static>(&self, f: impl FnOnce(&mut Owner) -> R + Send + 'static) -> Result<R, Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tell(move |o| {
            let _ = tx.send(f(o));
        });
        rx.await.map_err(|_| gone())
    }

    /// Send `f` to the owner without waiting for it (from any thread: never blocks).
    fn tell(&self, f: impl FnOnce(&mut Owner) + Send + 'static) {
        let _ = self.commands.send(Box::new(f));
    }

    /// Take `key` (a module's name; "" for an apply): now, else EBUSY; with `queue`, when
    /// the operation holding it is done.
    async fn claim(&self, key: &str, queue: bool) -> Result<Claim, Error> {
        let token = NEXT_TOKEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let claim = Claim { sup: self.clone(), key: key.to_string(), token };
        let k = key.to_string();
        let turn = self.with(move |o| o.claim(&k, token, queue)).await??;
        if let Some(turn) = turn {
            turn.await.map_err(|_| gone())?;
        }
        Ok(claim)
    }

    /// Where bare module names (`kvs`) are looked up.
    pub fn set_search_path(&self, search: SearchPath) {
        self.tell(move |o| o.search = search);
    }

    /// Resolve, check and open a module file without starting it: what every load, reload
    /// and `info` does first, on the blocking pool. Load options of the wrong kind are
    /// refused before the file is opened (a process child started, a library mapped).
    async fn open(&self, request: &mut LoadRequest) -> Result<Box<dyn LoadedModule>, Error> {
        let search = self.with(|o| o.search.clone()).await?;
        let shared = self.shared.clone();
        let mut r = request.clone();
        let (resolved, loaded) = blocking(move || {
            r.path = search.resolve(&r.path).map_err(error)?;
            if r.config.is_empty() {
                // A module always gets a map, if an empty one (RFC 2 §3).
                r.config = bytes::Bytes::from_static(&[0x80]);
            }
            let kind = shared.registry.kind(&r.path).map_err(error)?;
            check_options(kind, &r)?;
            let loaded = shared.registry.load(&r).map_err(error)?;
            Ok((r, loaded))
        })
        .await?;
        *request = resolved;
        Ok(loaded)
    }

    /// Inspect a module file without starting it.
    pub async fn info(&self, request: &LoadRequest) -> Result<ModuleInfo, Error> {
        Ok(self.open(&mut request.clone()).await?.info().clone())
    }

    /// Change a module's broker-side settings (requires, after, restart, grace) in place.
    pub async fn update_settings(&self, name: &str, want: &ModuleSpec) -> Result<(), Error> {
        let (name, want) = (name.to_string(), want.clone());
        self.with(move |o| {
            let spec = &mut o.live_mut(&name)?.spec;
            spec.requires = want.requires;
            spec.after = want.after;
            spec.restart = want.restart;
            spec.grace = want.grace;
            Ok(())
        })
        .await?
    }

    pub async fn list(&self) -> Vec<ModuleStatus> {
        self.with(|o| o.list()).await.unwrap_or_default()
    }

    pub async fn stats(&self, name: &str) -> Result<ModuleStats, Error> {
        let name = name.to_string();
        self.with(move |o| o.live(&name).map(|e| e.stats())).await?
    }

    pub async fn count(&self) -> usize {
        self.with(|o| o.modules.len()).await.unwrap_or(0)
    }

    /// Remove every module, last started first; modules started together go together.
    pub async fn remove_all(&self) {
        let names: Vec<String> =
            self.with(|o| o.modules.iter().rev().map(|e| e.rec.name().to_string()).collect()).await.unwrap_or_default();
        for (name, outcome) in names.iter().zip(self.remove_many(&names).await) {
            if let Err(e) = outcome {
                tracing::warn!(module = %name, "{e}");
            }
        }
    }
}

/// Run blocking work on the runtime's blocking pool; a panic in it is an error, not a crash,
/// and so is a pool that cannot start a thread for it (tokio panics then).
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
    // tokio queues the work before it finds it has no thread for it: refused work must not
    // run later, when a thread comes (a module started that nobody lists).
    let refused = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let r = refused.clone();
    let guarded = move || {
        if r.load(std::sync::atomic::Ordering::Acquire) {
            return Err(Error::new(Errno::EAGAIN, "refused earlier"));
        }
        work()
    };
    let Some(task) = try_spawn_blocking(guarded) else {
        refused.store(true, std::sync::atomic::Ordering::Release);
        return Err(Error::new(
            Errno::EAGAIN,
            "the broker could not start a thread for this work (is it at its thread limit, RLIMIT_NPROC?); try again later",
        ));
    };
    task.await.unwrap_or_else(|e| {
        let why = if e.is_panic() { "panicked" } else { "was cancelled" };
        Err(Error::new(Errno::EIO, format!("the broker's work on a module file {why}; see its log")))
    })
}

/// `spawn_blocking`, or None when the pool has no thread for `work` and cannot start one
/// (tokio panics then, with the work already queued: it runs once a thread is free).
fn try_spawn_blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<tokio::task::JoinHandle<T>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tokio::task::spawn_blocking(work))).ok()
}

/// Every operation at once, a task each; their outcomes in order. One that panics (a bug)
/// is an EIO error saying `what` panicked.
async fn in_parallel<T: Send + 'static>(
    what: &str,
    operations: impl IntoIterator<Item = impl std::future::Future<Output = Result<T, Error>> + Send + 'static>,
) -> Vec<Result<T, Error>> {
    let tasks: Vec<_> = operations.into_iter().map(tokio::spawn).collect();
    let mut outcomes = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await.unwrap_or_else(|_| Err(Error::new(Errno::EIO, format!("the {what} panicked")))));
    }
    outcomes
}

/// Load options of one kind given for a module of another are a mistake, not a no-op.
fn check_options(kind: ModuleKind, r: &LoadRequest) -> Result<(), Error> {
    let mut wrong: Vec<&str> = Vec::new();
    // An isolated native module is a process to the broker: env and hello_timeout_ms apply
    // to its host process. `isolated` on another kind is the registry's refusal.
    if kind != ModuleKind::Process && !(kind == ModuleKind::Native && r.isolated) {
        if !r.env.is_empty() {
            wrong.push("env");
        }
        if r.hello_timeout.is_some() {
            wrong.push("hello_timeout_ms");
        }
    }
    if kind != ModuleKind::Wasm {
        if r.sandbox.memory.is_some() {
            wrong.push("memory_mb");
        }
        if r.sandbox.cpu.is_some() {
            wrong.push("cpu_ms");
        }
        if !r.sandbox.dirs.is_empty() {
            wrong.push("dirs");
        }
    }
    if wrong.is_empty() {
        return Ok(());
    }
    Err(Error::new(
        Errno::EINVAL,
        format!(
            "{} is a {} module: {} do{} not apply to it (env and hello_timeout_ms are for process modules and isolated native ones; memory_mb, cpu_ms and dirs for wasm)",
            r.path.display(),
            kind,
            wrong.join(", "),
            if wrong.len() == 1 { "es" } else { "" }
        ),
    ))
}

/// `'a'`, `'a' and 'b'`, `'a', 'b' and 'c'`.
pub(crate) fn quoted<S: AsRef<str>>(names: &[S]) -> String {
    let q: Vec<String> = names.iter().map(|n| format!("'{}'", n.as_ref())).collect();
    match q.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => q.join(""),
    }
}

fn is_are(n: usize) -> &'static str {
    if n == 1 {
        "is"
    } else {
        "are"
    }
}
