//! `Broker`: the library entry point. A program embeds Switchboard with
//! `Broker::builder()...start()`, and gets the same broker the `switchboard` binary runs:
//! a router, a module supervisor with its management service, and the local socket.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use switchboard_loaders::{LoadRequest, ModuleInfo, Registry, SearchPath};
use switchboard_protocol::mgmt::{ApplyReport, ModuleStatus};
use switchboard_protocol::{uri, Error, DEFAULT_MAX_FRAME};

use crate::connector::{ListenOptions, Listener};
use crate::overlay::{Overlay, OverlayConfig, OverlayError, Topology};
use crate::router::{Place, Router, DEFAULT_MAX_OUTPUT};
use crate::runtime::BrokerRuntime;
use crate::site::{apply_file, OverlaySite, Running, Site};
use crate::supervisor::{spawn_management, ModuleSpec, Supervisor};

/// Default time a module has to finalize after a shutdown request.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {path}: {source}")]
    Listen { path: PathBuf, source: std::io::Error },
    #[error("cannot start the broker: {0}")]
    Start(std::io::Error),
    #[error("cannot start the broker's I/O runtime: {0}")]
    Runtime(std::io::Error),
    #[error("module {module} from the configuration: {source}")]
    Module { module: String, source: Error },
    #[error("{0}")]
    Site(String),
    #[error("{0}")]
    Overlay(#[from] OverlayError),
}

#[derive(Debug, Clone)]
pub struct BrokerBuilder {
    /// A runtime lent by the embedding program; default: the broker builds its own.
    runtime: Option<tokio::runtime::Handle>,
    listen: Option<PathBuf>,
    allow_guests: bool,
    max_frame: usize,
    max_output: usize,
    grace: Duration,
    search_path: SearchPath,
    /// From a site file, started with `apply`.
    site: Option<Site>,
    /// Added one by one, loaded after the site's in this order.
    modules: Vec<LoadRequest>,
    /// `--rank`: this broker's rank in the site file's `[overlay]`, instead of its hostname's.
    rank: Option<u32>,
    /// An `[overlay]` from another file than the site's (`--test-size`): (file, table).
    overlay: Option<(PathBuf, OverlaySite)>,
    /// The native module host for isolated native modules; default: looked for (RFC 5 §9).
    native_host: Option<PathBuf>,
}

impl Default for BrokerBuilder {
    fn default() -> Self {
        BrokerBuilder {
            runtime: None,
            listen: None,
            allow_guests: false,
            max_frame: DEFAULT_MAX_FRAME,
            max_output: DEFAULT_MAX_OUTPUT,
            grace: DEFAULT_GRACE,
            search_path: SearchPath::default(),
            site: None,
            modules: Vec::new(),
            rank: None,
            overlay: None,
            native_host: None,
        }
    }
}

impl BrokerBuilder {
    /// Listen on `path` instead of the default socket.
    pub fn listen(mut self, path: impl Into<PathBuf>) -> Self {
        self.listen = Some(path.into());
        self
    }

    /// Run the broker's connections on this (multi-threaded) runtime instead of one of its
    /// own: for a program that already has one. Module threads are the broker's either way.
    pub fn runtime(mut self, handle: tokio::runtime::Handle) -> Self {
        self.runtime = Some(handle);
        self
    }

    /// This broker's rank in the site file's instance (RFC 7 §2.2), instead of the one its
    /// hostname has there.
    pub fn rank(mut self, rank: u32) -> Self {
        self.rank = Some(rank);
        self
    }

    /// Join the instance this `[overlay]` table (read from `file`) describes, whatever the
    /// site file says.
    pub fn overlay(mut self, file: &Path, table: OverlaySite) -> Self {
        self.overlay = Some((file.to_path_buf(), table));
        self
    }

    /// Let other local users connect as guests.
    pub fn allow_guests(mut self, yes: bool) -> Self {
        self.allow_guests = yes;
        self
    }

    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// Output queued for all clients together and not yet sent, in bytes, before the client
    /// with the most is disconnected (default 256 MiB; RFC 1 §6.4).
    pub fn max_output(mut self, bytes: usize) -> Self {
        self.max_output = bytes;
        self
    }

    /// The `switchboard-native-host` binary that runs isolated native modules (`modctl load
    /// --isolated`), for a program that does not keep it beside its own executable.
    /// Default: `$SWITCHBOARD_NATIVE_HOST`, else beside the running executable (RFC 5 §9).
    pub fn native_host(mut self, path: impl Into<PathBuf>) -> Self {
        self.native_host = Some(path.into());
        self
    }

    /// Default grace period for modules to finalize on remove.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Load this module at start (in the order given).
    pub fn module(mut self, request: LoadRequest) -> Self {
        self.modules.push(request);
        self
    }

    /// Where bare module names are looked up.
    pub fn search_path(mut self, search: SearchPath) -> Self {
        self.search_path = search;
        self
    }

    /// Take settings and modules from a site file; builder calls made before this are
    /// overridden where the file says otherwise. Its modules start in dependency order.
    pub fn site(mut self, site: &Site) -> Self {
        if let Some(l) = &site.listen {
            self.listen = Some(l.clone());
        }
        self.allow_guests |= site.allow_guests;
        if let Some(m) = site.max_frame {
            self.max_frame = m;
        }
        if let Some(m) = site.max_output {
            self.max_output = m;
        }
        if let Some(g) = site.grace {
            self.grace = g;
        }
        self.search_path = site.search_path.clone();
        self.site = Some(site.clone());
        self
    }

    /// Start listening, then start the site's modules (dependency order, independent ones
    /// in parallel), then the ones added with `module`. A module that fails to start stops
    /// the start and removes those already running.
    pub fn start(self) -> Result<Broker, BrokerError> {
        let table = self.overlay.clone().or_else(|| {
            let site = self.site.as_ref()?;
            Some((site.path.clone(), site.overlay.clone()?))
        });
        if let (None, Some(rank)) = (&table, self.rank) {
            return Err(BrokerError::Site(format!(
                "--rank {rank} names this broker's place in an instance, and there is none: give --config a \
                 site file with an [overlay] table (RFC 7 §2.2)"
            )));
        }
        let overlay =
            table.map(|(file, table)| overlay_config(&file, &table, self.rank, self.max_frame)).transpose()?;
        let place = overlay.as_ref().map_or(Place::STANDALONE, |o| Place { topology: o.topology, instance: true });
        // This rank's modules, checked before it listens or joins (a missing one is the file's
        // mistake, RFC 4 §5).
        let wanted = match &self.site {
            Some(site) => Some(site.wanted(place.rank()).map_err(|e| BrokerError::Site(e.to_string()))?),
            None => None,
        };
        let path = self.listen.unwrap_or_else(uri::default_socket_path);
        let path = std::path::absolute(&path).unwrap_or(path);
        let runtime = match self.runtime {
            Some(handle) => BrokerRuntime::Lent(handle),
            None => BrokerRuntime::build().map_err(BrokerError::Runtime)?,
        };
        let router = Arc::new(Router::at(place));
        let handle = runtime.handle();
        let entered = handle.enter();
        let mut registry = Registry::new(handle.clone());
        if let Some(host) = &self.native_host {
            registry.set_native_host(host.clone());
        }
        let supervisor = Supervisor::new(router.clone(), registry, self.grace);
        supervisor.set_search_path(self.search_path);
        let running = Arc::new(Running {
            site: self.site.clone(),
            listen: path.clone(),
            allow_guests: self.allow_guests,
            max_frame: self.max_frame,
            max_output: self.max_output,
            rank: place.rank(),
        });
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        router.set_management(tx);
        spawn_management(supervisor.clone(), router.clone(), rx, uri::to_uri(&path), running.clone());
        drop(entered);
        let listener = Listener::start(
            &handle,
            router.clone(),
            ListenOptions {
                path: path.clone(),
                allow_guests: self.allow_guests,
                max_frame: self.max_frame,
                max_output: self.max_output,
            },
        )
        .map_err(|source| BrokerError::Listen { path: path.clone(), source })?;
        let mut broker = Broker { router, supervisor, listener: Some(listener), path, running, runtime, overlay: None };
        if let Some(config) = overlay {
            match Overlay::start(config, broker.router.clone()) {
                Ok(o) => broker.overlay = Some(o),
                Err(e) => {
                    broker.shutdown();
                    return Err(e.into());
                }
            }
        }
        if let Some(wanted) = wanted {
            let report = broker
                .block_on(broker.supervisor.apply(&wanted, None, false))
                .map_err(|c| BrokerError::Site(c.to_string()));
            let failed = match report {
                Ok(r) => r.steps.into_iter().find(|s| !s.ok).map(|s| {
                    BrokerError::Site(format!(
                        "module {} from the configuration: {}",
                        s.name,
                        s.outcome.unwrap_or_default()
                    ))
                }),
                Err(e) => Some(e),
            };
            if let Some(e) = failed {
                broker.shutdown();
                return Err(e);
            }
        }
        for request in self.modules {
            let module = request.name.clone().unwrap_or_else(|| request.path.display().to_string());
            if let Err(source) = broker.load(request) {
                broker.shutdown();
                return Err(BrokerError::Module { module, source });
            }
        }
        Ok(broker)
    }
}

/// A running broker.
pub struct Broker {
    router: Arc<Router>,
    supervisor: Supervisor,
    listener: Option<Listener>,
    path: PathBuf,
    running: Arc<Running>,
    /// The links to the rest of the instance (RFC 7), if the site file has `[overlay]`.
    overlay: Option<Overlay>,
    /// Dropped last, after every module and connection task is done with it.
    runtime: BrokerRuntime,
}

/// The overlay `file`'s `[overlay]` table `o` asks for, with this broker's rank: `given`
/// (`--rank`) or the one its hostname has.
fn overlay_config(
    file: &Path,
    o: &OverlaySite,
    given: Option<u32>,
    max_frame: usize,
) -> Result<OverlayConfig, BrokerError> {
    let fail = |e: String| BrokerError::Site(format!("{}: [overlay]: {e}", file.display()));
    let rank = o.rank_of(&crate::overlay::hostname(), given).map_err(fail)?;
    let topology = Topology::new(rank, o.size(), o.fanout).map_err(|e| fail(e.to_string()))?;
    let me = &o.hosts[rank as usize];
    Ok(OverlayConfig {
        topology,
        hosts: o.hosts.iter().map(|h| h.host.clone()).collect(),
        bind: me.bind.clone(),
        connect: topology.parent().map(|p| o.hosts[p as usize].connect.clone()),
        cert: o.cert.clone(),
        // A frame body and ZeroMQ's own framing fit in a client's largest frame plus a margin.
        max_message: max_frame.saturating_add(64 << 10),
        hwm: crate::overlay::LINK_HWM,
        hold: crate::overlay::LINK_HWM as usize,
    })
}

impl Broker {
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder::default()
    }

    /// The socket clients connect to.
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// The URI for `SWITCHBOARD_URI`.
    pub fn uri(&self) -> String {
        uri::to_uri(&self.path)
    }

    /// The runtime the broker's connections run on.
    pub fn runtime(&self) -> tokio::runtime::Handle {
        self.runtime.handle()
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Wait for `work` on the broker's runtime. The blocking methods below use it; from a
    /// runtime's task (where a thread may not block on a runtime) the wait is on a thread of
    /// its own, which blocks the calling task: call them where blocking is acceptable.
    fn block_on<T: Send>(&self, work: impl std::future::Future<Output = T> + Send) -> T {
        let handle = self.runtime.handle();
        off_runtime(move || handle.block_on(work))
    }

    pub fn load(&self, request: LoadRequest) -> Result<ModuleInfo, Error> {
        self.block_on(self.supervisor.load(ModuleSpec { request, ..Default::default() }))
    }

    /// Load with broker-side settings (requirements, restart policy, grace).
    pub fn load_spec(&self, spec: ModuleSpec) -> Result<ModuleInfo, Error> {
        self.block_on(self.supervisor.load(spec))
    }

    /// Remove a module (refused while running modules require it).
    pub fn remove(&self, name: &str) -> Result<(), Error> {
        self.block_on(self.supervisor.remove(name, None, false))
    }

    /// Replace a module with a new instance of its file; no request fails because of it.
    pub fn reload(&self, name: &str) -> Result<ModuleInfo, Error> {
        self.block_on(self.supervisor.reload(name, None))
    }

    /// Bring the modules to what a site file says (default: the one the broker started with).
    pub fn apply(&self, site: Option<&Path>, dry_run: bool) -> Result<ApplyReport, Error> {
        self.block_on(apply_file(&self.supervisor, &self.running, site, dry_run))
    }

    pub fn list(&self) -> Vec<ModuleStatus> {
        self.block_on(self.supervisor.list())
    }

    /// Stop listening, then remove every module, last loaded first.
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// The links close last: until its modules are gone, the broker still answers the rest
    /// of the instance, and their lifecycle events still reach rank 0.
    fn stop(&mut self) {
        if let Some(mut l) = self.listener.take() {
            let (handle, supervisor) = (self.runtime.handle(), self.supervisor.clone());
            // The listener's stop waits for the accept task, which needs a free worker.
            off_runtime(move || {
                l.stop();
                handle.block_on(supervisor.remove_all());
            });
        }
        if let Some(mut o) = self.overlay.take() {
            o.stop();
        }
    }
}

/// Run `f` here, or on a thread of its own when this thread is a runtime's (which must not
/// block on a runtime, and may be the one worker the broker's tasks need).
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}
