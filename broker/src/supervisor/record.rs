//! One loaded module instance as the supervisor tracks it: what it is, where its mailbox
//! is, which lifecycle state it is in and why, and the running handle to reclaim it.

use std::time::Instant;

use parking_lot::{Condvar, Mutex};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use switchboard_loaders::{ModuleInfo, ModuleState, RunningModule};
use switchboard_module_api::mgmt::ModuleStatus;

use crate::router::{Endpoint, Mailbox};

pub struct ModuleRecord {
    pub info: ModuleInfo,
    pub endpoint: Arc<Endpoint>,
    pub mailbox: Arc<Mailbox>,
    pub life: Mutex<Life>,
    pub changed: Condvar,
    pub running: Mutex<Option<Box<dyn RunningModule>>>,
}

pub struct Life {
    pub state: ModuleState,
    pub reason: Option<String>,
    /// A remove is waiting for it to exit.
    pub removing: bool,
    /// It outlived its grace period in finalizing.
    pub stuck: bool,
}

impl ModuleRecord {
    pub fn new(info: ModuleInfo, endpoint: Arc<Endpoint>, mailbox: Arc<Mailbox>) -> Self {
        ModuleRecord {
            info,
            endpoint,
            mailbox,
            life: Mutex::new(Life { state: ModuleState::Init, reason: None, removing: false, stuck: false }),
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
        if let Some(r) = self.running.lock().take() {
            r.wait();
        }
    }

    pub fn status(&self) -> ModuleStatus {
        let life = self.life.lock();
        let pid = self.running.lock().as_ref().and_then(|r| r.pid());
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
        }
    }
}
