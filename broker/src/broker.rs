//! `Broker`: the library entry point. A program embeds Switchboard with
//! `Broker::builder()...start()`, and gets the same broker the `switchboard` binary runs:
//! a router, a module supervisor with its management service, and the local socket.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use switchboard_loaders::{LoadRequest, ModuleInfo, Registry};
use switchboard_module_api::mgmt::ModuleStatus;
use switchboard_module_api::proto::DEFAULT_MAX_FRAME;
use switchboard_module_api::{uri, Error};

use crate::config::{Config, ModuleEntry};
use crate::connector::{ListenOptions, Listener};
use crate::router::Router;
use crate::supervisor::{spawn_management, Supervisor};

/// Default time a module has to finalize after a shutdown request.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {path}: {source}")]
    Listen { path: PathBuf, source: std::io::Error },
    #[error("cannot start the broker: {0}")]
    Start(std::io::Error),
    #[error("module {module} from the configuration: {source}")]
    Module { module: String, source: Error },
}

#[derive(Debug, Clone)]
pub struct BrokerBuilder {
    listen: Option<PathBuf>,
    allow_guests: bool,
    max_frame: usize,
    grace: Duration,
    modules: Vec<LoadRequest>,
}

impl Default for BrokerBuilder {
    fn default() -> Self {
        BrokerBuilder {
            listen: None,
            allow_guests: false,
            max_frame: DEFAULT_MAX_FRAME,
            grace: DEFAULT_GRACE,
            modules: Vec::new(),
        }
    }
}

impl BrokerBuilder {
    /// Listen on `path` instead of the default socket.
    pub fn listen(mut self, path: impl Into<PathBuf>) -> Self {
        self.listen = Some(path.into());
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

    /// Take settings and modules from a configuration file; builder calls made before this
    /// are overridden where the file says otherwise.
    pub fn config(mut self, config: &Config) -> Self {
        let b = &config.broker;
        if let Some(l) = &b.listen {
            self.listen = Some(l.clone());
        }
        self.allow_guests |= b.allow_guests;
        if let Some(m) = b.max_frame {
            self.max_frame = m;
        }
        if let Some(g) = b.grace_ms {
            self.grace = Duration::from_millis(g);
        }
        self.modules.extend(config.modules.iter().map(request_of));
        self
    }

    /// Start listening, then load the configured modules in order. A module that fails to
    /// load stops the start and unloads those already loaded.
    pub fn start(self) -> Result<Broker, BrokerError> {
        let path = self.listen.unwrap_or_else(uri::default_socket_path);
        let path = std::path::absolute(&path).unwrap_or(path);
        let router = Arc::new(Router::new());
        let supervisor = Supervisor::new(router.clone(), Registry::new(), self.grace);
        let (tx, rx) = crossbeam_channel::unbounded();
        router.set_management(tx);
        spawn_management(supervisor.clone(), router.clone(), rx, uri::to_uri(&path)).map_err(BrokerError::Start)?;
        let listener = Listener::start(
            router.clone(),
            ListenOptions { path: path.clone(), allow_guests: self.allow_guests, max_frame: self.max_frame },
        )
        .map_err(|source| BrokerError::Listen { path: path.clone(), source })?;
        let broker = Broker { router, supervisor, listener: Some(listener), path };
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

fn request_of(m: &ModuleEntry) -> LoadRequest {
    LoadRequest {
        path: m.path.clone(),
        name: m.name.clone(),
        args: m.args.clone(),
        config: m.config_msgpack().into(),
        ..Default::default()
    }
}

/// A running broker.
pub struct Broker {
    router: Arc<Router>,
    supervisor: Arc<Supervisor>,
    listener: Option<Listener>,
    path: PathBuf,
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

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    pub fn load(&self, request: LoadRequest) -> Result<ModuleInfo, Error> {
        self.supervisor.load(request)
    }

    pub fn remove(&self, name: &str) -> Result<(), Error> {
        self.supervisor.remove(name, None)
    }

    pub fn list(&self) -> Vec<ModuleStatus> {
        self.supervisor.list()
    }

    /// Stop listening, then remove every module, last loaded first.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(mut l) = self.listener.take() {
            l.stop();
            self.supervisor.remove_all();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}
