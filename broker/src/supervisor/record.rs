//! One loaded module instance: what it is (its info), where its mailbox and endpoint are,
//! which lifecycle state it is in and why, and its error counters. What the supervisor's
//! owner task keeps beside it (the spec it runs with, its restart history, the handle that
//! reclaims it) is in `owner::Entry`, not here.
//!
//! The lifecycle state is a `watch` channel: the module's own thread reports states through
//! its port, and whoever waits for one (a load for `running`, a remove for a final state)
//! awaits the channel; nobody polls and nobody holds a lock while waiting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use switchboard_loaders::{ModuleInfo, ModuleState};
use tokio::sync::watch;

use crate::router::{Endpoint, Mailbox};

pub struct ModuleRecord {
    pub info: ModuleInfo,
    pub started: Instant,
    pub endpoint: Arc<Endpoint>,
    pub mailbox: Arc<Mailbox>,
    life: watch::Sender<Life>,
    /// Error responses it sent, and the last one (written by the module's thread).
    pub errors: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

#[derive(Debug, Clone)]
pub struct Life {
    pub state: ModuleState,
    pub reason: Option<String>,
    /// A remove (or a reload replacing it) asked it to stop.
    pub removing: bool,
    /// It outlived its grace period in finalizing.
    pub stuck: bool,
    /// It reached `running` once (a failure before that is a failed load, not a crash).
    pub ran: bool,
    /// When it reached a final state.
    pub ended: Option<Instant>,
}

impl ModuleRecord {
    pub fn new(info: ModuleInfo, endpoint: Arc<Endpoint>, mailbox: Arc<Mailbox>) -> Self {
        let life =
            Life { state: ModuleState::Init, reason: None, removing: false, stuck: false, ran: false, ended: None };
        ModuleRecord {
            info,
            started: Instant::now(),
            errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
            endpoint,
            mailbox,
            life: watch::Sender::new(life),
        }
    }

    pub fn name(&self) -> &str {
        &self.info.name
    }

    pub fn life(&self) -> Life {
        self.life.borrow().clone()
    }

    pub fn state(&self) -> ModuleState {
        self.life.borrow().state
    }

    /// Record a state the module reported. A final state is never left.
    pub fn set_state(&self, state: ModuleState, reason: Option<String>) {
        self.life.send_if_modified(|life| {
            if life.state.is_final() {
                return false;
            }
            life.state = state;
            life.ran |= state == ModuleState::Running;
            if state.is_final() {
                life.ended = Some(Instant::now());
            }
            if reason.is_some() {
                life.reason = reason;
            }
            true
        });
    }

    /// Mark it as asked to stop; false if it already was, or has ended.
    pub fn mark_removing(&self) -> bool {
        self.life.send_if_modified(|life| {
            let first = !life.state.is_final() && !life.removing;
            life.removing = true;
            first
        })
    }

    pub fn mark_stuck(&self) {
        self.life.send_modify(|life| life.stuck = true);
    }

    /// Wait until `done` holds of its life, up to `timeout`; the life as it then is.
    pub async fn wait_for(&self, timeout: Duration, done: impl Fn(&Life) -> bool) -> Life {
        let mut rx = self.life.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|l| done(l))).await;
        self.life()
    }

    /// Wait until its thread of control has ended, up to `timeout`.
    pub async fn wait_final(&self, timeout: Duration) -> bool {
        self.wait_for(timeout, |l| l.state.is_final()).await.state.is_final()
    }

    pub fn uptime(&self) -> Duration {
        self.life.borrow().ended.unwrap_or_else(Instant::now).duration_since(self.started)
    }

    pub fn error_count(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}
