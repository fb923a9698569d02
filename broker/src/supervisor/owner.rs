//! The supervisor's state and its one owner: a task on the runtime that holds every module
//! entry (in load order), the names being worked on, the search path and the start groups,
//! and runs the commands sent to it one after another. A command is a closure over `Owner`
//! (`Supervisor::with`); it runs to completion without waiting on anything: no module, no
//! timer, no lock held by someone else. Everything that waits (a module starting, finalizing,
//! a grace period, a restart's back-off) waits in the task of the operation that asked for
//! it, and comes back to the owner with another command.
//!
//! Why the old deadlocks cannot happen: a module's thread never takes a lock of the
//! supervisor. When it exits, its port sends a command (an unbounded send, which never
//! waits) and returns; listing, reclaiming, reloading and restarting are commands in the
//! same queue, so an exit is handled before or after them, never in the middle. The
//! supervisor has no lock of its own left. A command may take the router's locks and a
//! connection's output lock (registering a module, publishing a lifecycle event), which are
//! never held while waiting on anything, and may hand work to the blocking pool (reclaiming
//! an ended module); `stats` reads two small `/proc` files on it. A command that panics (a
//! bug) is logged and the owner goes on.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use switchboard_loaders::{RunningModule, SearchPath};
use switchboard_protocol::mgmt::{ModuleStats, ModuleStatus};
use switchboard_protocol::{Errno, Error};
use tokio::sync::{mpsc, oneshot};

use super::record::ModuleRecord;
use super::spec::ModuleSpec;

/// A command for the owner: runs on its task with the state to itself. Must not block.
pub(super) type Command = Box<dyn FnOnce(&mut Owner) + Send>;

/// A module as the owner keeps it: the instance, and what it runs with.
pub(super) struct Entry {
    pub rec: Arc<ModuleRecord>,
    /// What it was asked to run as; `configure` updates the config in place.
    pub spec: ModuleSpec,
    pub history: History,
    /// The handle that joins its thread or reaps its process; None before it runs and
    /// after it was reclaimed.
    pub running: Option<Box<dyn RunningModule>>,
}

/// Carried from one instance to the next by restarts and reloads.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub restarts: u32,
    pub last_failure: Option<String>,
    /// Modules started together (one level of an apply) share a group; each load by hand is
    /// a group of its own. Removal goes group by group in reverse, a group in parallel.
    pub start_group: u64,
}

/// A claimed name: the token of the operation holding it, and those waiting in line.
struct Busy {
    holder: u64,
    waiting: VecDeque<(u64, oneshot::Sender<()>)>,
}

#[derive(Default)]
pub(super) struct Owner {
    pub modules: Vec<Entry>,
    /// Names a remove, reload, restart or configure is working on ("" for an apply): who
    /// holds each, and the operations waiting their turn.
    busy: HashMap<String, Busy>,
    pub search: SearchPath,
    next_group: u64,
}

/// The owner's task: commands in order until every sender is gone.
pub(super) async fn run(mut owner: Owner, mut commands: mpsc::UnboundedReceiver<Command>) {
    while let Some(command) = commands.recv().await {
        // A bug in one command must not end the owner, and with it every module operation:
        // it is logged, and the state is as the command left it.
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| command(&mut owner)));
        if done.is_err() {
            tracing::error!("a supervisor command panicked (a bug; see above); the supervisor goes on");
        }
    }
}

impl Owner {
    pub fn find(&self, name: &str) -> Option<&Entry> {
        self.modules.iter().find(|e| e.rec.name() == name)
    }

    pub fn find_mut(&mut self, name: &str) -> Option<&mut Entry> {
        self.modules.iter_mut().find(|e| e.rec.name() == name)
    }

    /// The entry of this very instance, if it is still the one listed under its name.
    pub fn entry_of(&mut self, rec: &Arc<ModuleRecord>) -> Option<&mut Entry> {
        self.modules.iter_mut().find(|e| Arc::ptr_eq(&e.rec, rec))
    }

    pub fn live(&self, name: &str) -> Result<&Entry, Error> {
        self.find(name).ok_or_else(|| no_module(name))
    }

    pub fn live_mut(&mut self, name: &str) -> Result<&mut Entry, Error> {
        self.find_mut(name).ok_or_else(|| no_module(name))
    }

    /// Drop `rec`'s entry; its running handle, for the caller to reclaim off the owner.
    pub fn forget(&mut self, rec: &Arc<ModuleRecord>) -> Option<Box<dyn RunningModule>> {
        let at = self.modules.iter().position(|e| Arc::ptr_eq(&e.rec, rec))?;
        self.modules.remove(at).running
    }

    /// Put `entry` in the place of the entry with its name, or last; the handle of the one
    /// it replaced, for the caller to reclaim.
    pub fn install(&mut self, entry: Entry) -> Option<Box<dyn RunningModule>> {
        match self.find_mut(entry.rec.name()) {
            Some(slot) => std::mem::replace(slot, entry).running,
            None => {
                self.modules.push(entry);
                None
            }
        }
    }

    pub fn new_start_group(&mut self) -> u64 {
        self.next_group += 1;
        self.next_group
    }

    /// Running modules that require `name`.
    pub fn dependents(&self, name: &str) -> Vec<String> {
        self.modules
            .iter()
            .filter(|e| !e.rec.state().is_final() && e.spec.requires.iter().any(|q| q == name))
            .map(|e| e.rec.name().to_string())
            .collect()
    }

    /// Take `key` for the operation `token` now, or (with `queue`) when its holder lets go:
    /// `Ok(None)` when taken now, `Ok(Some(turn))` to wait for, EBUSY when it is held and the
    /// caller does not queue.
    pub fn claim(&mut self, key: &str, token: u64, queue: bool) -> Result<Option<oneshot::Receiver<()>>, Error> {
        match self.busy.get_mut(key) {
            None => {
                self.busy.insert(key.to_string(), Busy { holder: token, waiting: VecDeque::new() });
                Ok(None)
            }
            Some(busy) if queue => {
                let (tx, rx) = oneshot::channel();
                busy.waiting.push_back((token, tx));
                Ok(Some(rx))
            }
            Some(_) => Err(busy(key)),
        }
    }

    /// Operation `token` is done with `key`: if it holds it, the next operation still
    /// waiting takes it; if it was waiting in line (it gave up), it leaves the line; else
    /// (it was refused) nothing changes.
    pub fn release(&mut self, key: &str, token: u64) {
        let Some(busy) = self.busy.get_mut(key) else { return };
        if busy.holder != token {
            busy.waiting.retain(|(t, _)| *t != token);
            return;
        }
        while let Some((next, turn)) = busy.waiting.pop_front() {
            if turn.send(()).is_ok() {
                busy.holder = next;
                return;
            }
        }
        self.busy.remove(key);
    }

    pub fn list(&self) -> Vec<ModuleStatus> {
        self.modules.iter().map(Entry::status).collect()
    }
}

fn no_module(name: &str) -> Error {
    Error::new(Errno::ENOENT, format!("no module named '{name}'"))
}

/// What an operation on a name another operation is working on is told.
pub(super) fn busy(name: &str) -> Error {
    Error::new(
        Errno::EBUSY,
        format!("module '{name}' is being removed, reloaded, restarted or reconfigured; try again"),
    )
}

impl Entry {
    pub fn status(&self) -> ModuleStatus {
        let (rec, life) = (&self.rec, self.rec.life());
        let mailbox = &rec.mailbox;
        ModuleStatus {
            name: rec.info.name.clone(),
            kind: rec.info.kind.to_string(),
            isolated: rec.info.isolated,
            state: life.state.as_str().to_string(),
            reason: life.reason,
            stuck: life.stuck,
            services: rec.info.services.clone(),
            path: rec.info.path.display().to_string(),
            digest: rec.info.digest.clone(),
            size: rec.info.size,
            idle_ms: mailbox.idle_ms(),
            msgs_in: mailbox.msgs_in.load(std::sync::atomic::Ordering::Relaxed),
            msgs_out: mailbox.msgs_out.load(std::sync::atomic::Ordering::Relaxed),
            queue: mailbox.queue_depth() as u64,
            pid: self.running.as_ref().and_then(|r| r.pid()),
            restarts: self.history.restarts,
            last_failure: self.history.last_failure.clone(),
            requires: self.spec.requires.clone(),
            declares: rec.info.declares.clone(),
        }
    }

    pub fn stats(&self) -> ModuleStats {
        let status = self.status();
        let usage = self.running.as_ref().map(|r| r.usage()).unwrap_or_default();
        let rec = &self.rec;
        ModuleStats {
            name: status.name,
            kind: status.kind,
            isolated: status.isolated,
            state: status.state,
            uptime_ms: rec.uptime().as_millis() as u64,
            msgs_in: status.msgs_in,
            msgs_out: status.msgs_out,
            errors: rec.error_count(),
            last_error: rec.last_error.lock().clone().or_else(|| self.history.last_failure.clone()),
            queue: status.queue,
            pending: rec.endpoint.inflight.pending() as u64,
            restarts: self.history.restarts,
            last_failure: self.history.last_failure.clone(),
            memory_bytes: usage.memory_bytes,
            cpu_ms: usage.cpu_ms,
            rss_bytes: usage.rss_bytes,
            pid: status.pid,
        }
    }
}
