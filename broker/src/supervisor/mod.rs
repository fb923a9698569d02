//! Where a module is loaded, started, listed and removed. The supervisor owns the module
//! records; loaders turn files into modules, the router moves their messages, and the
//! supervisor ties the two together and enforces the lifecycle (RFC 2 §4): names and
//! services are unique, a remove waits for the module to finalize up to a grace period, and
//! a module that leaves running by any path has its services and requests retired.

mod management;
mod port;
mod record;

pub use management::spawn_management;

use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use switchboard_loaders::{LoadRequest, ModuleInfo, ModuleKind, ModuleLink, ModuleState, Registry};
use switchboard_module_api::mgmt::ModuleStatus;
use switchboard_module_api::proto::{Cred, ROLE_OWNER, ROLE_USER};
use switchboard_module_api::{Errno, Error};

use self::port::ModulePort;
use self::record::ModuleRecord;
use crate::router::{Mailbox, Router, Sink};

/// How long `load` waits for a module to reach `running` before answering anyway.
const START_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Supervisor {
    router: Arc<Router>,
    registry: Registry,
    /// In load order.
    modules: Mutex<Vec<Arc<ModuleRecord>>>,
    /// Serialises loads, so a name check and its registration are one step.
    loading: Mutex<()>,
    grace: Duration,
    me: Weak<Supervisor>,
}

impl Supervisor {
    pub fn new(router: Arc<Router>, registry: Registry, grace: Duration) -> Arc<Self> {
        Arc::new_cyclic(|me| Supervisor {
            router,
            registry,
            modules: Mutex::new(Vec::new()),
            loading: Mutex::new(()),
            grace,
            me: me.clone(),
        })
    }

    fn find(&self, name: &str) -> Option<Arc<ModuleRecord>> {
        self.modules.lock().iter().find(|r| r.name() == name).cloned()
    }

    fn forget(&self, rec: &Arc<ModuleRecord>) {
        self.modules.lock().retain(|r| !Arc::ptr_eq(r, rec));
    }

    /// Inspect a module file without starting it.
    pub fn info(&self, request: &LoadRequest) -> Result<ModuleInfo, Error> {
        let loaded = self.registry.load(request).map_err(|e| Error::new(e.errno(), e.to_string()))?;
        Ok(loaded.info().clone())
    }

    /// Load and start a module; returns once it is running (or failed to start).
    pub fn load(&self, mut request: LoadRequest) -> Result<ModuleInfo, Error> {
        if request.config.is_empty() {
            // A module always gets a map, if an empty one (RFC 2 §3).
            request.config = bytes::Bytes::from_static(&[0x80]);
        }
        let _serial = self.loading.lock();
        let loaded = self.registry.load(&request).map_err(|e| Error::new(e.errno(), e.to_string()))?;
        let info = loaded.info().clone();
        if let Some(old) = self.find(&info.name) {
            if !old.state().is_final() {
                return Err(Error::new(
                    Errno::EEXIST,
                    format!(
                        "a module named '{}' is already loaded ({}); remove it first or load this one with --name",
                        info.name,
                        old.state().as_str()
                    ),
                ));
            }
            // A dead instance only keeps its name for `list`; the new one replaces it.
            self.forget(&old);
            old.reclaim();
        }
        let mailbox = Arc::new(Mailbox::default());
        // SAFETY: getuid cannot fail.
        let cred = Cred { userid: unsafe { libc::getuid() }, rolemask: ROLE_OWNER | ROLE_USER };
        let label = format!("module '{}'", info.name);
        let endpoint = self.router.add_endpoint(Sink::Module(mailbox.clone()), cred, label);
        if let Err(taken) = self.router.add_services(endpoint.id, &info.services) {
            self.router.remove_endpoint(endpoint.id);
            return Err(Error::new(Errno::EEXIST, taken.to_string()));
        }
        let rec = Arc::new(ModuleRecord::new(info.clone(), endpoint.clone(), mailbox.clone()));
        self.modules.lock().push(rec.clone());
        let link = ModuleLink {
            name: info.name.clone(),
            args: request.args.clone(),
            config: request.config.clone(),
            inbox: mailbox.inbox(),
            port: Arc::new(ModulePort {
                router: self.router.clone(),
                record: rec.clone(),
                supervisor: self.me.clone(),
            }),
        };
        match loaded.run(link) {
            Ok(running) => *rec.running.lock() = Some(running),
            Err(e) => {
                // Requests may already have been routed to it: answer them.
                self.router.retire(&endpoint, "could not be started");
                self.forget(&rec);
                return Err(Error::new(e.errno(), e.to_string()));
            }
        }
        tracing::info!(module = %info.name, kind = %info.kind, path = %info.path.display(), "module loaded");
        self.await_start(&rec)?;
        Ok(info)
    }

    /// Wait for `running`; a module that fails while starting fails the load.
    fn await_start(&self, rec: &Arc<ModuleRecord>) -> Result<(), Error> {
        let mut life = rec.life.lock();
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        while life.state == ModuleState::Init {
            if rec.changed.wait_until(&mut life, deadline).timed_out() {
                break;
            }
        }
        if life.state.is_final() {
            let reason = life.reason.clone().unwrap_or_else(|| "it exited while starting".to_string());
            drop(life);
            self.forget(rec);
            rec.reclaim();
            return Err(Error::new(Errno::EIO, format!("module '{}' failed to start: {reason}", rec.name())));
        }
        Ok(())
    }

    /// Ask a module to stop and wait for it to finalize, up to `grace` (default: the
    /// broker's). A module that outlives it is reported stuck and left detached.
    pub fn remove(&self, name: &str, grace: Option<Duration>) -> Result<(), Error> {
        let rec = self.find(name).ok_or_else(|| Error::new(Errno::ENOENT, format!("no module named '{name}'")))?;
        let grace = grace.unwrap_or(self.grace);
        {
            let mut life = rec.life.lock();
            if !life.state.is_final() && !life.removing {
                life.removing = true;
                rec.mailbox.shutdown();
            }
        }
        let mut stopped = rec.wait_final(grace);
        if !stopped {
            let forced = rec.running.lock().as_ref().is_some_and(|r| r.terminate(grace));
            // It escalates to SIGKILL after `grace`; allow for the reaping after that.
            stopped = forced && rec.wait_final(grace + Duration::from_secs(2));
        }
        if stopped {
            self.forget(&rec);
            rec.reclaim();
            tracing::info!(module = %name, "module removed");
            return Ok(());
        }
        // Detach it: no requester may wait on it forever. Its services are withdrawn, what it
        // owes is answered with an error, and whatever it sends from now on is dropped.
        rec.life.lock().stuck = true;
        self.router.retire(&rec.endpoint, "is stuck finalizing");
        let why = match rec.info.kind {
            ModuleKind::Native => "a native module's thread cannot be killed, so it stays listed until it returns",
            _ => "it did not stop when forced either, so it stays listed until it does",
        };
        Err(Error::new(
            Errno::ETIMEDOUT,
            format!(
                "module '{name}' is stuck: it did not finish finalizing within {} ms of the shutdown request; \
                 its services are withdrawn and its pending requests failed, but {why}",
                grace.as_millis()
            ),
        ))
    }

    /// Called by a module's port when its thread of control ended.
    fn on_exit(&self, rec: &Arc<ModuleRecord>) {
        if rec.life.lock().removing {
            self.forget(rec);
        }
    }

    pub fn list(&self) -> Vec<ModuleStatus> {
        self.modules.lock().iter().map(|r| r.status()).collect()
    }

    pub fn count(&self) -> usize {
        self.modules.lock().len()
    }

    /// Remove every module, last loaded first.
    pub fn remove_all(&self) {
        let names: Vec<String> = self.modules.lock().iter().rev().map(|r| r.name().to_string()).collect();
        for name in names {
            if let Err(e) = self.remove(&name, None) {
                tracing::warn!(module = %name, "{e}");
            }
        }
    }
}
