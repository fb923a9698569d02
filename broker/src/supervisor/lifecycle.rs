//! The operations on one module: load, reload, configure, remove, and what follows an exit
//! (a restart with back-off, or giving up). Each is an async function that asks the owner
//! for what it needs and tells it what changed (`Supervisor::with`), and does its waiting
//! (a module starting or finalizing, a grace period, a back-off) itself, on timers.

use std::sync::Arc;
use std::time::Duration;

use switchboard_loaders::{LoadedModule, ModuleInfo, ModuleKind, ModuleLink, ModuleState, RunningModule};
use switchboard_protocol::{mgmt::LifecycleEvent, Cred, Errno, Error, Message, ROLE_OWNER, ROLE_USER};

use super::owner::{busy, Entry, History, Owner};
use super::port::ModulePort;
use super::record::ModuleRecord;
use super::{blocking, error, is_are, quoted, try_spawn_blocking, ModuleSpec, RestartPolicy, Supervisor};
use crate::router::{Mailbox, Sink};

/// How long `load` waits for a module to reach `running` before answering anyway.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a module has to answer a `config-update`.
const CONFIGURE_TIMEOUT: Duration = Duration::from_secs(10);
/// After SIGKILL, how long the reaping may take.
const REAP_TIME: Duration = Duration::from_secs(2);

impl Supervisor {
    /// Load and start a module; returns once it is running (or failed to start).
    pub async fn load(&self, spec: ModuleSpec) -> Result<ModuleInfo, Error> {
        let group = self.with(Owner::new_start_group).await?;
        self.load_in_group(spec, group).await
    }

    /// Load as one of a group started together (see `History::start_group`).
    pub(super) async fn load_in_group(&self, spec: ModuleSpec, start_group: u64) -> Result<ModuleInfo, Error> {
        // Loading a name whose instance is dead replaces it: not while a restart of it runs.
        let dead = match spec.request.name.clone() {
            Some(n) => self.with(move |o| o.find(&n).is_some_and(|e| e.rec.state().is_final())).await?,
            None => false,
        };
        let _claim = match (&spec.request.name, dead) {
            (Some(n), true) => {
                Some(tokio::time::timeout(START_TIMEOUT, self.claim(n, true)).await.map_err(|_| busy(n))??)
            }
            _ => None,
        };
        self.start(spec, History { start_group, ..History::default() }, "loaded").await
    }

    async fn start(&self, mut spec: ModuleSpec, history: History, event: &str) -> Result<ModuleInfo, Error> {
        let loaded = self.open(&mut spec.request).await?;
        let info = loaded.info().clone();
        spec.request.name = Some(info.name.clone());
        self.check_requires(&info.name, &spec).await?;
        let (rec, _) = self.register(&info, spec, history, None).await?;
        self.run(loaded, &rec, false).await?;
        self.announce(&info.name, event, &info.services, None);
        Ok(info)
    }

    async fn check_requires(&self, name: &str, spec: &ModuleSpec) -> Result<(), Error> {
        let requires = spec.requires.clone();
        let missing: Vec<String> = self
            .with(move |o| {
                requires
                    .into_iter()
                    .filter(|q| !o.find(q).is_some_and(|e| e.rec.state() == ModuleState::Running))
                    .collect()
            })
            .await?;
        if missing.is_empty() {
            return Ok(());
        }
        Err(Error::new(
            Errno::ENOENT,
            format!("module '{name}' requires {}, which {} not running", quoted(&missing), is_are(missing.len())),
        ))
    }

    /// Give a new instance its endpoint, services and entry, in one command. With
    /// `replacing`, the services of that (running) instance pass to the new one in the same
    /// step, and what the old one leaves queued will follow.
    async fn register(
        &self,
        info: &ModuleInfo,
        spec: ModuleSpec,
        history: History,
        replacing: Option<Arc<ModuleRecord>>,
    ) -> Result<(Arc<ModuleRecord>, Option<Box<dyn RunningModule>>), Error> {
        let router = self.shared.router.clone();
        let info = info.clone();
        let (rec, dead, replaced) = self
            .with(move |o| {
                let mut dead = false;
                if let Some(old) = o.find(&info.name) {
                    let replaced = replacing.as_ref().is_some_and(|r| Arc::ptr_eq(r, &old.rec));
                    if !replaced && !old.rec.state().is_final() {
                        return Err(Error::new(
                            Errno::EEXIST,
                            format!(
                                "a module named '{}' is already loaded ({}); remove it first, reload it, or load this one under another name (--name)",
                                info.name,
                                old.rec.state().as_str()
                            ),
                        ));
                    }
                    // A dead instance only kept its name for `list`; the new one takes its place.
                    dead = !replaced;
                }
                let mailbox = Arc::new(Mailbox::default());
                let cred = Cred { userid: rustix::process::getuid().as_raw(), rolemask: ROLE_OWNER | ROLE_USER };
                let label = format!("module '{}'", info.name);
                let endpoint = router.add_endpoint(Sink::Module(mailbox.clone()), cred, label, Some(info.name.clone()));
                let services = match &replacing {
                    Some(old) => router.transfer_services(old.endpoint.id, endpoint.id, &info.services),
                    None => router.add_services(endpoint.id, &info.services),
                };
                if let Err(taken) = services {
                    router.remove_endpoint(endpoint.id);
                    return Err(Error::new(Errno::EEXIST, taken.to_string()));
                }
                if let Some(old) = &replacing {
                    let _ = old.endpoint.successor.set(endpoint.clone());
                }
                let rec = Arc::new(ModuleRecord::new(info, endpoint, mailbox));
                let replaced = o.install(Entry { rec: rec.clone(), spec, history, running: None });
                Ok((rec, dead, replaced))
            })
            .await??;
        // A dead instance is reclaimed now; one being reloaded is the reload's to stop.
        if dead {
            reclaim(replaced);
            return Ok((rec, None));
        }
        Ok((rec, replaced))
    }

    /// Start a registered instance and wait for it to run. On failure the entry is
    /// forgotten, or with `keep` left listed as failed (a reload's new instance: the old one
    /// is gone, and the name must stay visible with its reason).
    async fn run(&self, loaded: Box<dyn LoadedModule>, rec: &Arc<ModuleRecord>, keep: bool) -> Result<(), Error> {
        let r = rec.clone();
        let request = self.with(move |o| o.entry_of(&r).map(|e| e.spec.request.clone())).await?;
        let Some(request) = request else {
            return Err(Error::new(Errno::ENOENT, format!("module '{}' was removed while it started", rec.name())));
        };
        let link = ModuleLink {
            name: rec.name().to_string(),
            args: request.args,
            config: request.config,
            inbox: rec.mailbox.inbox(),
            port: Arc::new(ModulePort {
                router: self.shared.router.clone(),
                record: rec.clone(),
                supervisor: self.clone(),
            }),
        };
        match blocking(move || loaded.run(link).map_err(error)).await {
            Ok(running) => {
                let r = rec.clone();
                // Forgotten meanwhile (removed while it started): reclaim it here.
                let orphan = self
                    .with(move |o| match o.entry_of(&r) {
                        Some(e) => {
                            e.running = Some(running);
                            None
                        }
                        None => Some(running),
                    })
                    .await?;
                reclaim(orphan);
            }
            Err(e) => {
                // Requests may already have been routed to it: answer them.
                self.shared.router.retire(&rec.endpoint, "could not be started");
                rec.set_state(ModuleState::Failed, Some(e.text.clone()));
                if !keep {
                    let r = rec.clone();
                    self.with(move |o| o.forget(&r)).await?;
                }
                return Err(e);
            }
        }
        let info = &rec.info;
        tracing::info!(module = %info.name, kind = %info.kind, path = %info.path.display(), "module loaded");
        self.await_start(rec, keep).await
    }

    /// Wait for `running`; a module that fails while starting fails the load.
    async fn await_start(&self, rec: &Arc<ModuleRecord>, keep: bool) -> Result<(), Error> {
        let life = rec.wait_for(START_TIMEOUT, |l| l.state != ModuleState::Init).await;
        // One that ran and failed at once is a crash, for `on_exit` and its restart policy.
        if life.state.is_final() && !life.ran {
            let reason = life.reason.unwrap_or_else(|| "it exited while starting".to_string());
            if !keep {
                let r = rec.clone();
                reclaim(self.with(move |o| o.forget(&r)).await?);
            }
            return Err(Error::new(Errno::EIO, format!("module '{}' failed to start: {reason}", rec.name())));
        }
        Ok(())
    }

    /// Replace a module with a new instance of `spec` (default: the one it runs with, file
    /// read anew). The new file is checked before the old instance is touched; from then on
    /// requests queue for the new instance, the old one answers what it had already taken
    /// and finalizes, and the new one starts with the queue.
    pub async fn reload(&self, name: &str, spec: Option<ModuleSpec>) -> Result<ModuleInfo, Error> {
        let n = name.to_string();
        self.with(move |o| o.live(&n).map(|_| ())).await??;
        let _claim = self.claim(name, false).await?;
        let n = name.to_string();
        let (old, old_spec, history) =
            self.with(move |o| o.live(&n).map(|e| (e.rec.clone(), e.spec.clone(), e.history.clone()))).await??;
        let mut spec = spec.unwrap_or_else(|| old_spec.clone());
        spec.request.name = Some(name.to_string());
        let loaded = self.open(&mut spec.request).await?;
        let info = loaded.info().clone();
        self.check_requires(name, &spec).await?;
        if old.state().is_final() {
            let (rec, _) = self.register(&info, spec, history, None).await?;
            self.run(loaded, &rec, false).await?;
        } else {
            let grace = old_spec.grace.unwrap_or(self.shared.grace);
            let (rec, old_running) = self.register(&info, spec, history, Some(old.clone())).await?;
            // The old instance is no longer listed: its handle is the reload's, to force it
            // if need be and reclaim it once it stopped.
            match self.stop(&old, grace, true, old_running.as_deref()).await {
                Ok(()) => reclaim(old_running),
                // Stuck: joining it could take a thread forever; its handle is let go.
                Err(e) => tracing::warn!(module = %name, "reload: {}", e.text),
            }
            self.run(loaded, &rec, true).await?;
        }
        tracing::info!(module = %name, "module reloaded");
        self.announce(name, "reloaded", &info.services, None);
        Ok(info)
    }

    /// Hand a running module a new configuration table as a `NAME.config-update` request.
    /// Ok(false) if it has no such method (ENOSYS): the caller reloads it instead.
    pub async fn configure(&self, name: &str, config: bytes::Bytes) -> Result<bool, Error> {
        let n = name.to_string();
        let rec = self.with(move |o| o.live(&n).map(|e| e.rec.clone())).await??;
        let _claim = self.claim(name, false).await?;
        let req = Message::request(format!("{name}.config-update"), config.clone());
        let (router, endpoint) = (self.shared.router.clone(), rec.endpoint.clone());
        match blocking(move || router.call(&endpoint, req, CONFIGURE_TIMEOUT)).await {
            Ok(_) => {
                let r = rec.clone();
                self.with(move |o| {
                    if let Some(e) = o.entry_of(&r) {
                        e.spec.request.config = config;
                    }
                })
                .await?;
                self.announce(name, "configured", &rec.info.services, None);
                Ok(true)
            }
            Err(e) if e.errnum == Errno::ENOSYS => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Ask a module to stop and wait for it to finalize, up to `grace` (default: its own,
    /// else the broker's). Refused while running modules require it, unless `force`. A
    /// module that outlives its grace is reported stuck and left detached.
    pub async fn remove(&self, name: &str, grace: Option<Duration>, force: bool) -> Result<(), Error> {
        let n = name.to_string();
        let (rec, own_grace, dependents) =
            self.with(move |o| o.live(&n).map(|e| (e.rec.clone(), e.spec.grace, o.dependents(&n)))).await??;
        if !force && !dependents.is_empty() {
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
        let _claim = self.claim(name, false).await?;
        let grace = grace.or(own_grace).unwrap_or(self.shared.grace);
        self.stop(&rec, grace, false, None).await?;
        let r = rec.clone();
        reclaim(self.with(move |o| o.forget(&r)).await?);
        tracing::info!(module = %name, "module removed");
        self.announce(name, "removed", &rec.info.services, None);
        Ok(())
    }

    /// Send the shutdown request and wait for the module's thread to end; force it after
    /// `grace`; detach it if even that fails. With `for_successor`, its inbox is sealed so
    /// that requests go to the instance replacing it. `handle` forces it when it is no longer
    /// listed (a reload's old instance); else the owner's entry does.
    async fn stop(
        &self,
        rec: &Arc<ModuleRecord>,
        grace: Duration,
        for_successor: bool,
        handle: Option<&dyn RunningModule>,
    ) -> Result<(), Error> {
        if rec.mark_removing() {
            if for_successor {
                rec.mailbox.shutdown_for_successor();
            } else {
                rec.mailbox.shutdown();
            }
        }
        let mut stopped = rec.wait_final(grace).await;
        if !stopped {
            let forced = match handle {
                Some(h) => h.terminate(grace),
                None => {
                    let r = rec.clone();
                    self.with(move |o| terminate(o, &r, grace)).await?
                }
            };
            // It escalates to SIGKILL after `grace`; allow for the reaping after that.
            stopped = forced && rec.wait_final(grace + REAP_TIME).await;
        }
        if stopped {
            return Ok(());
        }
        // Detach it: no requester may wait on it forever. Its services are withdrawn, what it
        // owes is answered with an error, and whatever it sends from now on is dropped.
        rec.mark_stuck();
        self.shared.router.retire(&rec.endpoint, "is stuck finalizing");
        let why = match rec.info.kind {
            ModuleKind::Native if !rec.info.isolated => {
                "a native module's thread cannot be killed, so it stays listed until it returns"
            }
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

    /// A module's thread of control ended (its port says so from the module's thread): a
    /// command for the owner, which decides what follows.
    pub(super) fn exited(&self, rec: Arc<ModuleRecord>) {
        let sup = self.clone();
        self.tell(move |o| sup.on_exit(o, &rec));
    }

    /// On the owner: forget a removed module, announce an exit or a failure, and schedule a
    /// restart as the policy says.
    fn on_exit(&self, o: &mut Owner, rec: &Arc<ModuleRecord>) {
        let life = rec.life();
        if life.removing {
            // Asked to stop: its remove goes on (or, if it gave up on it as stuck, is over);
            // whichever of the two comes first forgets and reclaims it.
            reclaim(o.forget(rec));
            return;
        }
        if life.state != ModuleState::Failed {
            // It returned on its own: nobody asked it to stop.
            self.announce(rec.name(), "exited", &rec.info.services, None);
            return;
        }
        let reason = life.reason.unwrap_or_else(|| "it failed".to_string());
        // Announced whether or not it is still listed: a failed start may have forgotten it.
        self.announce(rec.name(), "failed", &rec.info.services, Some(&reason));
        let Some(entry) = o.entry_of(rec) else { return };
        entry.history.last_failure = Some(reason);
        let (policy, done) = (entry.spec.restart, entry.history.restarts);
        // A module that never ran failed its load, and whoever loaded it was told.
        if !life.ran {
            return;
        }
        match policy.delay(done) {
            Some(delay) => {
                tokio::spawn(self.clone().restart_later(rec.clone(), delay));
            }
            None if policy != RestartPolicy::Never => self.give_up(rec, done),
            None => {}
        }
    }

    fn give_up(&self, rec: &ModuleRecord, restarts: u32) {
        let text = format!("gave up after {restarts} restart{}", if restarts == 1 { "" } else { "s" });
        tracing::error!(module = %rec.name(), "{text}");
        self.announce(rec.name(), "gave-up", &rec.info.services, Some(&text));
    }

    /// Start a failed module again after `delay`, and again with a longer delay while the
    /// start fails, as its policy allows. Cancelled when the module was removed, reloaded
    /// or loaded anew meanwhile.
    async fn restart_later(self, old: Arc<ModuleRecord>, mut delay: Duration) {
        let name = old.name().to_string();
        loop {
            tokio::time::sleep(delay).await;
            // A reload or remove of the name may be under way: wait for it; if it replaced
            // or removed the failed instance, the restart is cancelled.
            let Ok(_claim) = self.claim(&name, true).await else { return };
            let o2 = old.clone();
            let Ok(Some((spec, mut history))) =
                self.with(move |o| o.entry_of(&o2).map(|e| (e.spec.clone(), e.history.clone()))).await
            else {
                return;
            };
            history.restarts += 1;
            tracing::info!(module = %name, restart = history.restarts, "restarting module");
            let failure = match self.start(spec.clone(), history.clone(), "restarted").await {
                Ok(_) => return,
                Err(e) => e.text,
            };
            tracing::error!(module = %name, "restart failed: {failure}");
            history.last_failure = Some(failure);
            let (o2, h2) = (old.clone(), history.clone());
            // A start that failed after replacing the failed instance forgot its own entry:
            // the failed instance is listed again (its handle was reclaimed then).
            let policy = self
                .with(move |o| {
                    let name = o2.name().to_string();
                    if o.find(&name).is_none() {
                        o.modules.push(Entry { rec: o2.clone(), spec, history: h2.clone(), running: None });
                    }
                    // Another instance took the name meanwhile (a load): it is not ours.
                    let entry = o.entry_of(&o2)?;
                    entry.history = h2;
                    Some(entry.spec.restart)
                })
                .await;
            match policy {
                Ok(Some(p)) => match p.delay(history.restarts) {
                    Some(d) => delay = d,
                    None => return self.give_up(&old, history.restarts),
                },
                _ => return,
            }
        }
    }

    /// Publish `module.lifecycle.NAME` (RFC 3 §5).
    pub(super) fn announce(&self, name: &str, event: &str, services: &[String], reason: Option<&str>) {
        let body = LifecycleEvent {
            name: name.to_string(),
            event: event.to_string(),
            services: services.to_vec(),
            reason: reason.map(str::to_string),
        };
        let Ok(payload) = Message::encode_payload(&body) else { return };
        let mut msg = Message::event(format!("module.lifecycle.{name}"), payload);
        msg.cred = crate::router::broker_cred();
        self.shared.router.publish(msg);
        crate::router::flush();
    }
}

/// On the owner: ask a module's process to stop (SIGTERM, SIGKILL after `grace`); false if
/// it cannot be forced (a native thread) or is no longer listed.
fn terminate(o: &mut Owner, rec: &Arc<ModuleRecord>, grace: Duration) -> bool {
    o.entry_of(rec).and_then(|e| e.running.as_ref()).is_some_and(|r| r.terminate(grace))
}

/// Join a module's thread or reap its process, on the blocking pool: it has ended, or is
/// ending.
pub(super) fn reclaim(running: Option<Box<dyn RunningModule>>) {
    let Some(r) = running else { return };
    if try_spawn_blocking(move || r.wait()).is_none() {
        tracing::warn!("no thread to reclaim an ended module now (thread limit?); it is reclaimed when one is free");
    }
}
