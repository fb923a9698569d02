//! One loaded module instance as the supervisor tracks it: what it is and what it was
//! asked to run as (its spec), where its mailbox is, which lifecycle state it is in and
//! why, its counters and restart history, and the running handle to reclaim it.

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use switchboard_loaders::{ModuleInfo, ModuleState, RunningModule};
use switchboard_module_api::mgmt::{ModuleStats, ModuleStatus};

use super::spec::ModuleSpec;
use crate::router::{Endpoint, Mailbox};

pub struct ModuleRecord {
    pub info: ModuleInfo,
    /// What it was asked to run as; `configure` updates the config in place.
    pub spec: Mutex<ModuleSpec>,
    pub started: Instant,
    pub endpoint: Arc<Endpoint>,
    pub mailbox: Arc<Mailbox>,
    pub life: Mutex<Life>,
    pub changed: Condvar,
    pub running: Mutex<Option<Box<dyn RunningModule>>>,
    /// Error responses it sent, and the last one.
    pub errors: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    pub history: Mutex<History>,
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

pub struct Life {
    pub state: ModuleState,
    pub reason: Option<String>,
    /// A remove is waiting for it to exit.
    pub removing: bool,
    /// It outlived its grace period in finalizing.
    pub stuck: bool,
    /// It reached `running` once (a failure before that is a failed load, not a crash).
    pub ran: bool,
    /// When it reached a final state.
    pub ended: Option<Instant>,
}

impl ModuleRecord {
    pub fn new(info: ModuleInfo, spec: ModuleSpec, endpoint: Arc<Endpoint>, mailbox: Arc<Mailbox>) -> Self {
        ModuleRecord {
            info,
            spec: Mutex::new(spec),
            started: Instant::now(),
            errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
            history: Mutex::new(History::default()),
            endpoint,
            mailbox,
            life: Mutex::new(Life {
                state: ModuleState::Init,
                reason: None,
                removing: false,
                stuck: false,
                ran: false,
                ended: None,
            }),
            changed: Condvar::new(),
            running: Mutex::new(None),
        }
    }

    pub fn name(&self) -> &str {
        &self.info.name
    }

    pub fn state(&self) -> ModuleState {
        self.life.lock().state
    }

    /// Record a state the module reported. A final state is never left.
    pub fn set_state(&self, state: ModuleState, reason: Option<String>) {
        let mut life = self.life.lock();
        if life.state.is_final() {
            return;
        }
        life.state = state;
        life.ran |= state == ModuleState::Running;
        if state.is_final() {
            life.ended = Some(Instant::now());
        }
        if reason.is_some() {
            life.reason = reason;
        }
        self.changed.notify_all();
    }

    /// Wait until the module's thread of control has ended, up to `timeout`.
    pub fn wait_final(&self, timeout: std::time::Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut life = self.life.lock();
        while !life.state.is_final() {
            if self.changed.wait_until(&mut life, deadline).timed_out() {
                return life.state.is_final();
            }
        }
        true
    }

    /// Join the thread / reap the process, once it has ended.
    pub fn reclaim(&self) {
        // Not under the lock: joining may take a while, and `status` takes the lock.
        let running = self.running.lock().take();
        if let Some(r) = running {
            r.wait();
        }
    }

    pub fn status(&self) -> ModuleStatus {
        let pid = self.running.lock().as_ref().and_then(|r| r.pid());
        let life = self.life.lock();
        let history = self.history.lock().clone();
        let requires = self.spec.lock().requires.clone();
        ModuleStatus {
            name: self.info.name.clone(),
            kind: self.info.kind.to_string(),
            state: life.state.as_str().to_string(),
            reason: life.reason.clone(),
            stuck: life.stuck,
            services: self.info.services.clone(),
            path: self.info.path.display().to_string(),
            digest: self.info.digest.clone(),
            size: self.info.size,
            idle_ms: self.mailbox.idle_ms(),
            msgs_in: self.mailbox.msgs_in.load(Ordering::Relaxed),
            msgs_out: self.mailbox.msgs_out.load(Ordering::Relaxed),
            queue: self.mailbox.queue_depth() as u64,
            pid,
            restarts: history.restarts,
            last_failure: history.last_failure,
            requires,
        }
    }

    pub fn stats(&self) -> ModuleStats {
        let status = self.status();
        let usage = self.running.lock().as_ref().map(|r| r.usage()).unwrap_or_default();
        let history = self.history.lock().clone();
        ModuleStats {
            name: status.name,
            kind: status.kind,
            state: status.state,
            uptime_ms: self.life.lock().ended.unwrap_or_else(Instant::now).duration_since(self.started).as_millis()
                as u64,
            msgs_in: status.msgs_in,
            msgs_out: status.msgs_out,
            errors: self.errors.load(Ordering::Relaxed),
            last_error: self.last_error.lock().clone().or_else(|| history.last_failure.clone()),
            queue: status.queue,
            pending: self.endpoint.inflight.pending() as u64,
            restarts: history.restarts,
            last_failure: history.last_failure,
            memory_bytes: usage.memory_bytes,
            cpu_ms: usage.cpu_ms,
            rss_bytes: usage.rss_bytes,
            pid: status.pid,
        }
    }
}
