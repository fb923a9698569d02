//! `ModulePort`: the broker's implementation of a module's `BrokerPort`. Output from the
//! module is stamped with the instance owner's credentials and routed on the module's own
//! thread; the exit report retires the module's endpoint, answers what it left unanswered,
//! and tells the supervisor's owner (a command: the module's thread never waits on it).

use std::sync::Arc;

use switchboard_loaders::{BrokerPort, ExitStatus, ModuleState};
use switchboard_protocol::{Errno, Level, Message, MsgType};

use super::record::ModuleRecord;
use super::Supervisor;
use crate::router::{self, Router};

pub struct ModulePort {
    pub router: Arc<Router>,
    pub record: Arc<ModuleRecord>,
    pub supervisor: Supervisor,
}

impl BrokerPort for ModulePort {
    fn send(&self, mut msg: Message) {
        // Modules run as the broker: they are the instance owner, as their endpoint says.
        msg.cred = self.record.endpoint.cred;
        if self.record.endpoint.inflight.is_closed() {
            // Detached as stuck: its requesters were already answered.
            tracing::debug!(module = %self.record.name(), topic = %msg.topic, "dropping output of a detached module");
            return;
        }
        self.record.mailbox.count_out();
        if msg.kind == MsgType::Response && msg.is_error() && Errno(msg.errnum) != Errno::ENODATA {
            self.record.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let text = msg.errstr.as_deref().unwrap_or("");
            *self.record.last_error.lock() = Some(format!("{}: {}: {text}", msg.topic, Errno(msg.errnum).name()));
        }
        self.router.route(&self.record.endpoint, msg);
    }

    fn hold(&self) {
        router::hold();
    }

    fn flush(&self) {
        router::flush();
    }

    fn set_state(&self, state: ModuleState) {
        self.record.set_state(state, None);
        tracing::debug!(module = %self.record.name(), state = state.as_str(), "module state");
    }

    fn log(&self, level: Level, text: &str) {
        let module = self.record.name();
        match level {
            Level::Error => tracing::error!(module, "{text}"),
            Level::Warn => tracing::warn!(module, "{text}"),
            Level::Info => tracing::info!(module, "{text}"),
            Level::Debug => tracing::debug!(module, "{text}"),
        }
    }

    fn exited(&self, status: ExitStatus) {
        router::flush();
        let rec = &self.record;
        let (state, reason, verb) = match status {
            ExitStatus::Exited => (ModuleState::Exited, None, "exited".to_string()),
            ExitStatus::Failed(r) => (ModuleState::Failed, Some(r.clone()), format!("failed ({r})")),
        };
        match &reason {
            Some(r) => tracing::error!(module = %rec.name(), "module failed: {r}"),
            None => tracing::info!(module = %rec.name(), "module exited"),
        }
        // Record the outcome first, so a requester that hears of it finds it in `list`; then
        // no new requests may reach it; then answer every one it did not.
        rec.set_state(state, reason);
        self.router.retire(&rec.endpoint, &verb);
        router::flush();
        self.supervisor.exited(rec.clone());
    }
}
