//! Where a module is loaded, started, reloaded, restarted, listed and removed. The
//! supervisor owns the module records; loaders turn files into modules, the router moves
//! their messages, and the supervisor ties the two together and enforces the lifecycle
//! (RFC 2 §4, RFC 3): names and services are unique, requirements run first and are not
//! removed from under their dependents, a remove waits for the module to finalize up to a
//! grace period, a reload hands every request the old instance did not take to the new
//! one, a failed module is restarted as its policy says, and a module that leaves running
//! by any path has its services and requests retired.
//!
//! It does not read site files (`crate::site` turns them into `ModuleSpec`s) and does not
//! decode management requests (`management`).

mod management;
mod order;
mod plan;
mod port;
mod record;
mod spec;

pub use management::spawn_management;
pub use order::{levels, Cycle, Node};
pub use spec::{Change, ModuleSpec, RestartPolicy};

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use switchboard_loaders::digest::DigestCache;
use switchboard_loaders::SearchPath;
use switchboard_loaders::{LoadRequest, LoadedModule, ModuleInfo, ModuleKind, ModuleLink, ModuleState, Registry};
use switchboard_module_api::mgmt::{LifecycleEvent, ModuleStats, ModuleStatus};
use switchboard_module_api::proto::{Cred, ROLE_OWNER, ROLE_USER};
use switchboard_module_api::{Errno, Error, Message};

use self::port::ModulePort;
use self::record::{History, ModuleRecord};
use crate::router::{Mailbox, Router, Sink};

/// How long `load` waits for a module to reach `running` before answering anyway.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a module has to answer a `config-update`.
const CONFIGURE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Supervisor {
    router: Arc<Router>,
    registry: Registry,
    /// In load order (a reloaded or restarted module keeps its place).
    modules: Mutex<Vec<Arc<ModuleRecord>>>,
    /// Serialises the name check and registration of a new instance.
    loading: Mutex<()>,
    /// One `apply` at a time (SIGHUP and `modctl apply` may come together).
    applying: Mutex<()>,
    next_group: std::sync::atomic::AtomicU64,
    /// Names a remove, reload, restart or configure is working on: one at a time each.
    busy: Mutex<HashSet<String>>,
    search: RwLock<SearchPath>,
    /// File digests for `apply`'s change check.
    digests: DigestCache,
    grace: Duration,
    me: Weak<Supervisor>,
}

/// A name marked busy until dropped.
struct Claim<'a> {
    sup: &'a Supervisor,
    name: String,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.sup.busy.lock().remove(&self.name);
    }
}

fn error(e: switchboard_loaders::LoadError) -> Error {
    Error::new(e.errno(), e.to_string())
}

impl Supervisor {
    pub fn new(router: Arc<Router>, registry: Registry, grace: Duration) -> Arc<Self> {
        Arc::new_cyclic(|me| Supervisor {
            router,
            registry,
            modules: Mutex::new(Vec::new()),
            loading: Mutex::new(()),
            applying: Mutex::new(()),
            next_group: std::sync::atomic::AtomicU64::new(1),
            busy: Mutex::new(HashSet::new()),
            search: RwLock::new(SearchPath::default()),
            digests: DigestCache::default(),
            grace,
            me: me.clone(),
        })
    }

    /// Where bare module names (`kvs`) are looked up.
    pub fn set_search_path(&self, search: SearchPath) {
        *self.search.write() = search;
    }

    fn find(&self, name: &str) -> Option<Arc<ModuleRecord>> {
        self.modules.lock().iter().find(|r| r.name() == name).cloned()
    }

    fn find_live(&self, name: &str) -> Result<Arc<ModuleRecord>, Error> {
        self.find(name).ok_or_else(|| Error::new(Errno::ENOENT, format!("no module named '{name}'")))
    }

    fn forget(&self, rec: &Arc<ModuleRecord>) {
        self.modules.lock().retain(|r| !Arc::ptr_eq(r, rec));
    }

    /// Put `rec` in the place of the record with its name, or last.
    fn install(&self, rec: Arc<ModuleRecord>) {
        let mut modules = self.modules.lock();
        match modules.iter_mut().find(|r| r.name() == rec.name()) {
            Some(slot) => *slot = rec,
            None => modules.push(rec),
        }
    }

    fn claim(&self, name: &str) -> Result<Claim<'_>, Error> {
        if !self.busy.lock().insert(name.to_string()) {
            return Err(Error::new(
                Errno::EBUSY,
                format!("module '{name}' is being removed, reloaded, restarted or reconfigured; try again"),
            ));
        }
        Ok(Claim { sup: self, name: name.to_string() })
    }

    /// Running modules that require `name`.
    pub fn dependents(&self, name: &str) -> Vec<String> {
        self.modules
            .lock()
            .iter()
            .filter(|r| !r.state().is_final() && r.spec.lock().requires.iter().any(|q| q == name))
            .map(|r| r.name().to_string())
            .collect()
    }

    /// Resolve a bare name on the search path and give the module a config map.
    fn prepare(&self, request: &mut LoadRequest) -> Result<(), Error> {
        request.path = self.search.read().resolve(&request.path).map_err(error)?;
        if request.config.is_empty() {
            // A module always gets a map, if an empty one (RFC 2 §3).
            request.config = bytes::Bytes::from_static(&[0x80]);
        }
        Ok(())
    }

    /// Resolve, check and open a module file without starting it: what every load, reload
    /// and `info` does first. Load options of the wrong kind are refused before the file is
    /// opened (a process child started, a library mapped).
    fn open(&self, request: &mut LoadRequest) -> Result<Box<dyn LoadedModule>, Error> {
        self.prepare(request)?;
        let kind = self.registry.kind(&request.path).map_err(error)?;
        check_options(kind, request)?;
        self.registry.load(request).map_err(error)
    }

    /// Inspect a module file without starting it.
    pub fn info(&self, request: &LoadRequest) -> Result<ModuleInfo, Error> {
        Ok(self.open(&mut request.clone())?.info().clone())
    }

    /// Load and start a module; returns once it is running (or failed to start).
    pub fn load(&self, spec: ModuleSpec) -> Result<ModuleInfo, Error> {
        self.load_in_group(spec, self.new_start_group())
    }

    /// Load as one of a group started together (see `History::start_group`).
    fn load_in_group(&self, spec: ModuleSpec, start_group: u64) -> Result<ModuleInfo, Error> {
        // Loading a name whose instance is dead replaces it: not while a restart of it runs.
        let dead = spec.request.name.as_deref().filter(|n| self.find(n).is_some_and(|r| r.state().is_final()));
        let _claim = match dead {
            Some(n) => Some(self.claim_waiting(n)?),
            None => None,
        };
        self.start(spec, History { start_group, ..History::default() }, "loaded")
    }

    /// `claim`, waiting up to the start timeout for whoever holds the name.
    fn claim_waiting(&self, name: &str) -> Result<Claim<'_>, Error> {
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        loop {
            match self.claim(name) {
                Ok(c) => return Ok(c),
                Err(e) if std::time::Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn new_start_group(&self) -> u64 {
        self.next_group.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn start(&self, mut spec: ModuleSpec, history: History, event: &str) -> Result<ModuleInfo, Error> {
        let loaded = self.open(&mut spec.request)?;
        let info = loaded.info().clone();
        spec.request.name = Some(info.name.clone());
        self.check_requires(&info.name, &spec)?;
        let rec = self.register(&info, spec, history, None)?;
        self.run(loaded, &rec, false)?;
        self.announce(&info.name, event, &info.services, None);
        Ok(info)
    }

    fn check_requires(&self, name: &str, spec: &ModuleSpec) -> Result<(), Error> {
        let missing: Vec<&str> = spec
            .requires
            .iter()
            .filter(|q| !self.find(q).is_some_and(|r| r.state() == ModuleState::Running))
            .map(String::as_str)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(Error::new(
            Errno::ENOENT,
            format!("module '{name}' requires {}, which {} not running", quoted(&missing), is_are(missing.len())),
        ))
    }

    /// Give a new instance its endpoint, services and record. With `replacing`, the services
    /// of that (running) instance pass to the new one in the same step, and what the old one
    /// leaves queued will follow.
    fn register(
        &self,
        info: &ModuleInfo,
        spec: ModuleSpec,
        history: History,
        replacing: Option<&Arc<ModuleRecord>>,
    ) -> Result<Arc<ModuleRecord>, Error> {
        let serial = self.loading.lock();
        let mut dead = None;
        if let Some(old) = self.find(&info.name) {
            let replaced = replacing.is_some_and(|r| Arc::ptr_eq(r, &old));
            if !replaced && !old.state().is_final() {
                return Err(Error::new(
                    Errno::EEXIST,
                    format!(
                        "a module named '{}' is already loaded ({}); remove it first, reload it, or load this one with --name",
                        info.name,
                        old.state().as_str()
                    ),
                ));
            }
            if !replaced {
                // A dead instance only kept its name for `list`; the new one takes its place.
                dead = Some(old);
            }
        }
        let mailbox = Arc::new(Mailbox::default());
        // SAFETY: getuid cannot fail.
        let cred = Cred { userid: unsafe { libc::getuid() }, rolemask: ROLE_OWNER | ROLE_USER };
        let label = format!("module '{}'", info.name);
        let endpoint = self.router.add_endpoint(Sink::Module(mailbox.clone()), cred, label, Some(info.name.clone()));
        let services = match replacing {
            Some(old) => self.router.transfer_services(old.endpoint.id, endpoint.id, &info.services),
            None => self.router.add_services(endpoint.id, &info.services),
        };
        if let Err(taken) = services {
            self.router.remove_endpoint(endpoint.id);
            return Err(Error::new(Errno::EEXIST, taken.to_string()));
        }
        if let Some(old) = replacing {
            let _ = old.endpoint.successor.set(endpoint.clone());
        }
        let rec = Arc::new(ModuleRecord::new(info.clone(), spec, endpoint, mailbox));
        *rec.history.lock() = history;
        self.install(rec.clone());
        drop(serial);
        if let Some(d) = dead {
            d.reclaim();
        }
        Ok(rec)
    }

    /// Start a registered instance and wait for it to run. On failure the record is
    /// forgotten, or with `keep` left listed as failed (a reload's new instance: the old one
    /// is gone, and the name must stay visible with its reason).
    fn run(&self, loaded: Box<dyn LoadedModule>, rec: &Arc<ModuleRecord>, keep: bool) -> Result<(), Error> {
        let request = rec.spec.lock().request.clone();
        let link = ModuleLink {
            name: rec.name().to_string(),
            args: request.args,
            config: request.config,
            inbox: rec.mailbox.inbox(),
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
                self.router.retire(&rec.endpoint, "could not be started");
                rec.set_state(ModuleState::Failed, Some(e.to_string()));
                if !keep {
                    self.forget(rec);
                }
                return Err(error(e));
            }
        }
        let info = &rec.info;
        tracing::info!(module = %info.name, kind = %info.kind, path = %info.path.display(), "module loaded");
        self.await_start(rec, keep)
    }

    /// Wait for `running`; a module that fails while starting fails the load.
    fn await_start(&self, rec: &Arc<ModuleRecord>, keep: bool) -> Result<(), Error> {
        let mut life = rec.life.lock();
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        while life.state == ModuleState::Init {
            if rec.changed.wait_until(&mut life, deadline).timed_out() {
                break;
            }
        }
        // One that ran and failed at once is a crash, for `on_exit` and its restart policy.
        if life.state.is_final() && !life.ran {
            let reason = life.reason.clone().unwrap_or_else(|| "it exited while starting".to_string());
            drop(life);
            if !keep {
                self.forget(rec);
                rec.reclaim();
            }
            return Err(Error::new(Errno::EIO, format!("module '{}' failed to start: {reason}", rec.name())));
        }
        Ok(())
    }

    /// Replace a module with a new instance of `spec` (default: the one it runs with, file
    /// read anew). The new file is checked before the old instance is touched; from then on
    /// requests queue for the new instance, the old one answers what it had already taken
    /// and finalizes, and the new one starts with the queue.
    pub fn reload(&self, name: &str, spec: Option<ModuleSpec>) -> Result<ModuleInfo, Error> {
        let old = self.find_live(name)?;
        let _claim = self.claim(name)?;
        let mut spec = spec.unwrap_or_else(|| old.spec.lock().clone());
        spec.request.name = Some(name.to_string());
        let loaded = self.open(&mut spec.request)?;
        let info = loaded.info().clone();
        self.check_requires(name, &spec)?;
        let history = old.history.lock().clone();
        if old.state().is_final() {
            let rec = self.register(&info, spec, history, None)?;
            self.run(loaded, &rec, false)?;
        } else {
            let grace = old.spec.lock().grace.unwrap_or(self.grace);
            let rec = self.register(&info, spec, history, Some(&old))?;
            if let Err(e) = self.stop(&old, grace, true) {
                tracing::warn!(module = %name, "reload: {}", e.text);
            }
            self.run(loaded, &rec, true)?;
        }
        tracing::info!(module = %name, "module reloaded");
        self.announce(name, "reloaded", &info.services, None);
        Ok(info)
    }

    /// Hand a running module a new configuration table as a `NAME.config-update` request.
    /// Ok(false) if it has no such method (ENOSYS): the caller reloads it instead.
    pub fn configure(&self, name: &str, config: bytes::Bytes) -> Result<bool, Error> {
        let rec = self.find_live(name)?;
        let _claim = self.claim(name)?;
        let req = Message::request(format!("{name}.config-update"), config.clone());
        match self.router.call(&rec.endpoint, req, CONFIGURE_TIMEOUT) {
            Ok(_) => {
                rec.spec.lock().request.config = config;
                self.announce(name, "configured", &rec.info.services, None);
                Ok(true)
            }
            Err(e) if e.errnum == Errno::ENOSYS => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Change a module's broker-side settings (requires, after, restart, grace) in place.
    pub fn update_settings(&self, name: &str, want: &ModuleSpec) -> Result<(), Error> {
        let rec = self.find_live(name)?;
        let mut spec = rec.spec.lock();
        spec.requires = want.requires.clone();
        spec.after = want.after.clone();
        spec.restart = want.restart;
        spec.grace = want.grace;
        Ok(())
    }

    /// Ask a module to stop and wait for it to finalize, up to `grace` (default: its own,
    /// else the broker's). Refused while running modules require it, unless `force`. A
    /// module that outlives its grace is reported stuck and left detached.
    pub fn remove(&self, name: &str, grace: Option<Duration>, force: bool) -> Result<(), Error> {
        let rec = self.find_live(name)?;
        if !force {
            let dependents = self.dependents(name);
            if !dependents.is_empty() {
                return Err(Error::new(
                    Errno::EBUSY,
                    format!(
                        "module '{name}' is required by {}, which {} running; remove {} first, or use --force",
                        quoted(&dependents),
                        is_are(dependents.len()),
                        if dependents.len() == 1 { "it" } else { "them" }
                    ),
                ));
            }
        }
        let _claim = self.claim(name)?;
        let grace = grace.or(rec.spec.lock().grace).unwrap_or(self.grace);
        self.stop(&rec, grace, false)?;
        self.forget(&rec);
        rec.reclaim();
        tracing::info!(module = %name, "module removed");
        self.announce(name, "removed", &rec.info.services, None);
        Ok(())
    }

    /// Send the shutdown request and wait for the module's thread to end; force it after
    /// `grace`; detach it if even that fails. With `for_successor`, its inbox is sealed so
    /// that requests go to the instance replacing it.
    fn stop(&self, rec: &Arc<ModuleRecord>, grace: Duration, for_successor: bool) -> Result<(), Error> {
        {
            let mut life = rec.life.lock();
            if !life.state.is_final() && !life.removing {
                life.removing = true;
                if for_successor {
                    rec.mailbox.shutdown_for_successor();
                } else {
                    rec.mailbox.shutdown();
                }
            }
        }
        let mut stopped = rec.wait_final(grace);
        if !stopped {
            let forced = rec.running.lock().as_ref().is_some_and(|r| r.terminate(grace));
            // It escalates to SIGKILL after `grace`; allow for the reaping after that.
            stopped = forced && rec.wait_final(grace + Duration::from_secs(2));
        }
        if stopped {
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
                "module '{}' is stuck: it did not finish finalizing within {} ms of the shutdown request; \
                 its services are withdrawn and its pending requests failed, but {why}",
                rec.name(),
                grace.as_millis()
            ),
        ))
    }

    /// Called by a module's port when its thread of control ended.
    fn on_exit(&self, rec: &Arc<ModuleRecord>) {
        let (removing, ran, reason) = {
            let life = rec.life.lock();
            (life.removing, life.ran, (life.state == ModuleState::Failed).then(|| life.reason.clone()))
        };
        if removing {
            self.forget(rec);
            return;
        }
        let Some(reason) = reason else {
            // It returned on its own: nobody asked it to stop.
            self.announce(rec.name(), "exited", &rec.info.services, None);
            return;
        };
        let reason = reason.unwrap_or_else(|| "it failed".to_string());
        rec.history.lock().last_failure = Some(reason.clone());
        self.announce(rec.name(), "failed", &rec.info.services, Some(&reason));
        // A module that never ran failed its load, and whoever loaded it was told.
        if !ran {
            return;
        }
        let policy = rec.spec.lock().restart;
        let done = rec.history.lock().restarts;
        match policy.delay(done) {
            Some(delay) => {
                let Some(sup) = self.me.upgrade() else { return };
                let again = rec.clone();
                let spawned =
                    std::thread::Builder::new().name("restart".into()).spawn(move || sup.restart_later(again, delay));
                if let Err(e) = spawned {
                    tracing::error!(module = %rec.name(), "cannot schedule a restart: {e}");
                }
            }
            None if policy != RestartPolicy::Never => self.give_up(rec),
            None => {}
        }
    }

    fn give_up(&self, rec: &Arc<ModuleRecord>) {
        let restarts = rec.history.lock().restarts;
        let text = format!("gave up after {restarts} restart{}", if restarts == 1 { "" } else { "s" });
        tracing::error!(module = %rec.name(), "{text}");
        self.announce(rec.name(), "gave-up", &rec.info.services, Some(&text));
    }

    /// Start a failed module again after `delay`, and again with a longer delay while the
    /// start fails, as its policy allows. Cancelled when the module was removed, reloaded
    /// or loaded anew meanwhile.
    fn restart_later(&self, old: Arc<ModuleRecord>, mut delay: Duration) {
        let name = old.name().to_string();
        let still_listed = || self.find(&name).is_some_and(|r| Arc::ptr_eq(&r, &old));
        loop {
            std::thread::sleep(delay);
            // A reload or remove of the name may be under way: wait for it; if it replaced
            // or removed the failed instance, the restart is cancelled.
            let _claim = loop {
                if !still_listed() {
                    return;
                }
                match self.claim(&name) {
                    Ok(c) => break c,
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            };
            if !still_listed() {
                return;
            }
            let mut history = old.history.lock().clone();
            history.restarts += 1;
            tracing::info!(module = %name, restart = history.restarts, "restarting module");
            let spec = old.spec.lock().clone();
            let failure = match self.start(spec, history.clone(), "restarted") {
                Ok(_) => return,
                Err(e) => e.text,
            };
            tracing::error!(module = %name, "restart failed: {failure}");
            history.last_failure = Some(failure);
            *old.history.lock() = history.clone();
            if self.find(&name).is_none() {
                self.install(old.clone());
            }
            match old.spec.lock().restart.delay(history.restarts) {
                Some(d) => delay = d,
                None => return self.give_up(&old),
            }
        }
    }

    /// Publish `module.lifecycle.NAME` (RFC 3 §5).
    fn announce(&self, name: &str, event: &str, services: &[String], reason: Option<&str>) {
        let body = LifecycleEvent {
            name: name.to_string(),
            event: event.to_string(),
            services: services.to_vec(),
            reason: reason.map(str::to_string),
        };
        let Ok(payload) = Message::encode_payload(&body) else { return };
        let mut msg = Message::event(format!("module.lifecycle.{name}"), payload);
        msg.cred = crate::router::broker_cred();
        self.router.publish(msg);
        crate::router::flush();
    }

    pub fn list(&self) -> Vec<ModuleStatus> {
        self.modules.lock().iter().map(|r| r.status()).collect()
    }

    pub fn stats(&self, name: &str) -> Result<ModuleStats, Error> {
        Ok(self.find_live(name)?.stats())
    }

    pub fn count(&self) -> usize {
        self.modules.lock().len()
    }

    /// Remove every module, last started first; modules started together go together.
    pub fn remove_all(&self) {
        let names: Vec<String> = self.modules.lock().iter().rev().map(|r| r.name().to_string()).collect();
        for (name, outcome) in names.iter().zip(self.remove_many(&names)) {
            if let Err(e) = outcome {
                tracing::warn!(module = %name, "{e}");
            }
        }
    }
}

/// Load options of one kind given for a module of another are a mistake, not a no-op.
fn check_options(kind: ModuleKind, r: &LoadRequest) -> Result<(), Error> {
    let mut wrong: Vec<&str> = Vec::new();
    if kind != ModuleKind::Process {
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
            "{} is a {} module: {} do{} not apply to it (env and hello_timeout_ms are for process modules; memory_mb, cpu_ms and dirs for wasm)",
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
