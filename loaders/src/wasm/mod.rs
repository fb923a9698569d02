//! The WASM loader (RFC 6): a WebAssembly component (`\0asm`) run by wasmtime on a thread of
//! its own inside the broker, sandboxed: no filesystem, network or environment unless the
//! load grants a directory, memory capped, CPU per message bounded by epoch interruption.
//! A module that traps, overruns its budget or exhausts its memory fails alone.

mod cache;
mod host;
mod run;
mod runtime;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use switchboard_protocol::declare::{Declarations, EventDecl, MethodDecl};
use wasmtime::component::{Instance, ResourceTable};
use wasmtime::Store;
use wasmtime_wasi::{FsPerms, WasiCtx};

use self::host::{HostState, Limits, WasmWorld, WitDeclarations};
use crate::digest::bytes_digest;
use crate::error::LoadError;
use crate::module::{LoadRequest, LoadedModule, Loader, ModuleInfo, ModuleKind, ModuleLink, RunningModule};

/// Memory a module may use when the load names no other cap.
pub const DEFAULT_MEMORY: u64 = 64 << 20;
/// CPU time one call into a module may take when the load names no other deadline.
pub const DEFAULT_CPU: Duration = Duration::from_secs(1);

pub use self::cache::CacheOutcome;

#[derive(Default)]
pub struct WasmLoader;

impl WasmLoader {
    pub fn new() -> Self {
        WasmLoader
    }
}

struct WasmLoaded {
    info: ModuleInfo,
    store: Store<HostState>,
    world: WasmWorld,
    kill: Arc<AtomicBool>,
}

impl Loader for WasmLoader {
    fn kind(&self) -> ModuleKind {
        ModuleKind::Wasm
    }

    fn recognizes(&self, _path: &Path, head: &[u8]) -> bool {
        head.starts_with(b"\0asm")
    }

    fn load(&self, request: &LoadRequest) -> Result<Box<dyn LoadedModule>, LoadError> {
        let path = &request.path;
        let bytes = std::fs::read(path).map_err(|e| LoadError::io(path, e))?;
        let digest = bytes_digest(&bytes);
        let rt = runtime::get().map_err(|detail| LoadError::Start { name: path.display().to_string(), detail })?;
        let bad = |detail: String| LoadError::Wasm { path: path.clone(), detail };
        let (component, _) = cache::load_or_compile(&rt.engine, &bytes, &digest).map_err(bad)?;
        let pre = rt
            .linker
            .instantiate_pre(&component)
            .map_err(|e| bad(format!("it needs imports this broker does not provide: {e}")))?;
        let pre = host::WasmWorldPre::new(pre)
            .map_err(|e| bad(format!("it does not export the switchboard:module world (RFC 6): {e}")))?;
        let sandbox = &request.sandbox;
        let memory = sandbox.memory.unwrap_or(DEFAULT_MEMORY);
        let cpu = sandbox.cpu.unwrap_or(DEFAULT_CPU);
        let mut wasi = WasiCtx::builder();
        // No network of any kind: no sockets, no name lookup (the address check denies all too).
        wasi.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
        for dir in &sandbox.dirs {
            let perms = if dir.writable { FsPerms::ReadWrite } else { FsPerms::ReadOnly };
            wasi.preopened_dir(&dir.host, &dir.guest, perms)
                .map_err(|e| LoadError::Io { path: dir.host.clone(), source: std::io::Error::other(e.to_string()) })?;
        }
        let state = HostState::new(wasi.build(), ResourceTable::new(), Limits::new(memory as usize));
        let mut store = Store::new(&rt.engine, state);
        store.limiter(|s| &mut s.limits);
        let kill = Arc::new(AtomicBool::new(false));
        run::install_deadline(&mut store, kill.clone());
        run::arm_deadline(&mut store, cpu);
        let failed =
            |store: &Store<HostState>, e| bad(format!("it failed to instantiate: {}", run::describe_error(store, &e)));
        let instance = pre.instance_pre().instantiate(&mut store).map_err(|e| failed(&store, e))?;
        let world = WasmWorld::new(&mut store, &instance).map_err(|e| failed(&store, e))?;
        let described = world
            .call_describe(&mut store)
            .map_err(|e| bad(format!("describe failed: {}", run::describe_error(&store, &e))))?;
        let declares = declared(&mut store, &instance).map_err(bad)?;
        let info = ModuleInfo::new(request, described.name, ModuleKind::Wasm, digest, bytes.len() as u64)?;
        Ok(Box::new(WasmLoaded { info: ModuleInfo { declares, ..info }, store, world, kill }))
    }
}

impl LoadedModule for WasmLoaded {
    fn info(&self) -> &ModuleInfo {
        &self.info
    }

    fn run(self: Box<Self>, link: ModuleLink) -> Result<Box<dyn RunningModule>, LoadError> {
        let WasmLoaded { info, store, world, kill } = *self;
        run::start(store, world, link, kill)
            .map_err(|e| LoadError::Start { name: info.name, detail: e.to_string() })
            .map(|r| Box::new(r) as Box<dyn RunningModule>)
    }
}

/// What the component declares through its `declare` export (RFC 6 §2.2), checked; nothing
/// when it has no such export (built against 0.2.0 before `declare` was added).
fn declared(store: &mut Store<HostState>, instance: &Instance) -> Result<Declarations, String> {
    if instance.get_func(&mut *store, "declare").is_none() {
        return Ok(Declarations::default());
    }
    let declare = instance
        .get_typed_func::<(), (WitDeclarations,)>(&mut *store, "declare")
        .map_err(|e| format!("its declare export is not the world's (RFC 6 §2.2): {e}"))?;
    let (d,) =
        declare.call(&mut *store, ()).map_err(|e| format!("declare failed: {}", run::describe_error(store, &e)))?;
    Declarations {
        methods: d.methods.into_iter().map(|m| MethodDecl { name: m.name, guest: m.guest, doc: m.doc }).collect(),
        otherwise: d.otherwise,
        events: d.events.into_iter().map(|e| EventDecl { name: e.name, doc: e.doc }).collect(),
    }
    .checked()
    .map_err(|e| format!("declare returned a malformed declaration: {e}"))
}

/// Compile (or fetch from the cache) a component file without running it: how long a
/// load spends before instantiation, for the benchmark.
pub fn precompile(path: &Path) -> Result<CacheOutcome, LoadError> {
    let bytes = std::fs::read(path).map_err(|e| LoadError::io(path, e))?;
    let rt = runtime::get().map_err(|detail| LoadError::Start { name: path.display().to_string(), detail })?;
    cache::load_or_compile(&rt.engine, &bytes, &bytes_digest(&bytes))
        .map(|(_, outcome)| outcome)
        .map_err(|detail| LoadError::Wasm { path: path.to_owned(), detail })
}
