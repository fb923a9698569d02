//! The one wasmtime engine and linker all WASM modules share, and the epoch ticker that
//! gives every call a CPU deadline.

use std::sync::OnceLock;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine};

use super::host::{HostState, WasmWorld};

/// How often the engine's epoch advances: the granularity of CPU deadlines.
pub const TICK: Duration = Duration::from_millis(5);

pub struct Runtime {
    pub engine: Engine,
    pub linker: Linker<HostState>,
}

/// The shared runtime, made on first use.
pub fn get() -> Result<&'static Runtime, String> {
    static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| make().map_err(|e| format!("cannot start the WASM runtime: {e}")))
        .as_ref()
        .map_err(Clone::clone)
}

fn make() -> wasmtime::Result<Runtime> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    let engine = Engine::new(&config)?;
    let mut linker = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    WasmWorld::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
    let ticker = engine.weak();
    std::thread::Builder::new()
        .name("wasm-epoch".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            while let Some(engine) = ticker.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(TICK);
            }
        })
        .map_err(|e| wasmtime::format_err!("cannot start the epoch ticker: {e}"))?;
    Ok(Runtime { engine, linker })
}
