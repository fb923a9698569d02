//! The broker under test: started in this process on a temporary socket, with the native
//! `echo` and `benchdriver` modules loaded from the build's own target directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use switchboard::{Broker, LoadRequest};
use switchboard_client::Client;

use crate::measure::{BenchError, Result, Sample, Usage};

/// The folder the native modules were built into: `--module-dir`, else
/// `SBBENCH_MODULE_DIR`, else the running executable's folder (target/<profile>/), or its
/// parent when that folder is `deps/` (as for `cargo bench`).
pub fn module_dir(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(d) = given {
        return Ok(d.to_owned());
    }
    if let Some(d) = std::env::var_os("SBBENCH_MODULE_DIR") {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe().map_err(|e| BenchError(format!("cannot tell where sbbench runs from: {e}")))?;
    let dir = exe.parent().ok_or_else(|| BenchError("the executable has no folder".into()))?;
    Ok(if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir).to_owned()
    } else {
        dir.to_owned()
    })
}

/// `lib<name>.so` in `dir` or in `dir/deps`, the newer if both are there (`cargo bench`
/// rebuilds the copy in deps/ and leaves an older one in `dir`).
pub fn find_module(dir: &Path, name: &str) -> Result<PathBuf> {
    let file = format!("lib{name}.so");
    [dir.join(&file), dir.join("deps").join(&file)]
        .into_iter()
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max_by_key(|(t, _)| *t)
        .map(|(_, p)| p)
        .ok_or_else(|| {
            BenchError(format!(
                "no {file} in {} (nor in its deps/): build the modules first with \
                 `cargo build --release --workspace`, or point --module-dir at them",
                dir.display()
            ))
        })
}

pub struct BrokerFixture {
    // Dropped in this order: the broker (it removes its socket), then the folder.
    broker: Option<Broker>,
    _dir: tempfile::TempDir,
    pub echo_so: PathBuf,
    pub driver_so: PathBuf,
}

impl BrokerFixture {
    pub fn start(modules: &Path) -> Result<BrokerFixture> {
        let echo_so = find_module(modules, "echo")?;
        let driver_so = find_module(modules, "benchdriver")?;
        let dir = tempfile::Builder::new()
            .prefix("sbbench")
            .tempdir()
            .map_err(|e| BenchError(format!("cannot make a temporary folder: {e}")))?;
        let broker = Broker::builder()
            .listen(dir.path().join("broker.sock"))
            .start()
            .map_err(|e| BenchError(format!("cannot start the broker: {e}")))?;
        for path in [&echo_so, &driver_so] {
            broker
                .load(LoadRequest { path: path.clone(), config: Bytes::from_static(&[0x80]), ..Default::default() })
                .map_err(|e| BenchError(format!("cannot load {}: {e}", path.display())))?;
        }
        Ok(BrokerFixture { broker: Some(broker), _dir: dir, echo_so, driver_so })
    }

    pub fn broker(&self) -> &Broker {
        self.broker.as_ref().expect("running")
    }

    /// Load one more module under `name` (the process and WASM echo rows).
    pub fn load(&self, name: &str, path: &Path) -> Result<()> {
        self.load_as(name, path, false)
    }

    /// `load`, the native library run in the native module host with `isolated` (the
    /// isolated echo row; the host is found beside this executable, as beside the broker).
    pub fn load_as(&self, name: &str, path: &Path, isolated: bool) -> Result<()> {
        self.broker()
            .load(LoadRequest {
                path: path.to_owned(),
                name: Some(name.to_string()),
                config: Bytes::from_static(&[0x80]),
                isolated,
                ..Default::default()
            })
            .map(drop)
            .map_err(|e| BenchError(format!("cannot load {}: {e}", path.display())))
    }

    pub fn connect(&self) -> Result<Client> {
        let path = self.broker.as_ref().expect("running").socket_path();
        Ok(Client::connect(path)?)
    }
}

impl Drop for BrokerFixture {
    fn drop(&mut self) {
        if let Some(b) = self.broker.take() {
            b.shutdown();
        }
    }
}

#[derive(Serialize)]
struct RunArgs<'a> {
    target: &'a str,
    count: u64,
    window: u32,
    #[serde(with = "serde_bytes")]
    payload: &'a [u8],
}

#[derive(Deserialize)]
struct RunReply {
    elapsed_ns: u64,
    completed: u64,
}

/// Module -> module RPC, measured by `benchdriver` inside the broker. The count for each
/// run is chosen from the rate the previous run reached, so that it lasts about `dur`.
pub struct DriverBench {
    client: Client,
    target: String,
    window: u32,
    payload: Bytes,
    /// Requests per second last seen; None before the first run.
    rate: Option<f64>,
}

impl DriverBench {
    pub fn new(client: Client, target: &str, window: u32, payload: Bytes) -> Self {
        DriverBench { client, target: target.to_string(), window, payload, rate: None }
    }

    fn once(&mut self, count: u64) -> Result<Sample> {
        let args = RunArgs { target: &self.target, count, window: self.window, payload: &self.payload };
        let body = rmp_serde::to_vec_named(&args).map_err(|e| BenchError(e.to_string()))?;
        // Generous: a run is sized to a second or so, but the machine may be busy.
        let timeout = Duration::from_secs(120);
        let usage = Usage::now();
        let resp = self.client.rpc_raw("benchdriver.run", body.into(), Some(timeout))?;
        let reply: RunReply = resp.decode().map_err(|e| BenchError(format!("benchdriver.run answered oddly: {e}")))?;
        let s = usage.sample(reply.completed, Duration::from_nanos(reply.elapsed_ns));
        self.rate = Some(s.rate());
        Ok(s)
    }

    pub fn run(&mut self, dur: Duration) -> Result<Sample> {
        if self.rate.is_none() {
            // Calibrate with a short run.
            self.once(1000.max(self.window as u64 * 2))?;
        }
        let rate = self.rate.unwrap_or(10_000.0);
        let count = ((rate * dur.as_secs_f64()) as u64).max(self.window as u64 * 2);
        self.once(count)
    }
}

/// The echo module built as a process module: the `echo` binary beside `libecho.so`.
pub fn process_echo(modules: &Path) -> Option<PathBuf> {
    Some(modules.join("echo")).filter(|p| p.is_file())
}

/// The echo module built as a WASM component: `target/wasm32-wasip2/<profile>/echo.wasm`
/// beside `target/<profile>/`.
pub fn wasm_echo(modules: &Path) -> Option<PathBuf> {
    let profile = modules.file_name()?;
    Some(modules.parent()?.join("wasm32-wasip2").join(profile).join("echo.wasm")).filter(|p| p.is_file())
}

/// The Python echo module, if the repository's `.venv` has the SDK; puts the environment
/// first on PATH so the script's `#!/usr/bin/env python3` finds it.
pub fn python_echo() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    let venv_bin = root.join(".venv/bin");
    let ok = std::process::Command::new(venv_bin.join("python3"))
        .args(["-c", "import switchboard_module"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return None;
    }
    let path = format!("{}:{}", venv_bin.display(), std::env::var("PATH").unwrap_or_default());
    // Set before any module thread exists that could read the environment.
    std::env::set_var("PATH", path);
    Some(root.join("bench/python/echo.py"))
}

/// Resident memory of this process, in bytes (from /proc/self/statm).
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// How long loading a WASM module takes, cold (compiling) and warm (compiled code from the
/// cache), and how much memory a loaded instance adds.
pub struct WasmLoads {
    pub cold: Vec<Duration>,
    pub warm: Vec<Duration>,
    /// Resident bytes added per loaded instance, over `warm.len()` instances.
    pub per_instance: u64,
}

/// Load `path` cold 3 times (each with an empty cache), then `n` times warm, keeping the
/// warm instances loaded to measure their memory, then remove them all.
pub fn wasm_loads(fixture: &BrokerFixture, path: &Path, n: usize) -> Result<WasmLoads> {
    let dir = tempfile::Builder::new().prefix("sbbench-cache").tempdir().map_err(|e| BenchError(e.to_string()))?;
    let broker = fixture.broker();
    let timed = |name: &str| -> Result<Duration> {
        let start = std::time::Instant::now();
        fixture.load(name, path)?;
        Ok(start.elapsed())
    };
    let mut cold = Vec::new();
    for i in 0..3 {
        // A cache folder of its own: nothing to find, everything to compile.
        std::env::set_var("SWITCHBOARD_CACHE_DIR", dir.path().join(format!("cold{i}")));
        cold.push(timed(&format!("wcold{i}"))?);
        let _ = broker.remove(&format!("wcold{i}"));
    }
    // The last cold load left its compiled code: every load from here on finds it.
    std::env::set_var("SWITCHBOARD_CACHE_DIR", dir.path().join("cold2"));
    let before = resident_bytes();
    let mut warm = Vec::new();
    for i in 0..n {
        warm.push(timed(&format!("wwarm{i}"))?);
    }
    let per_instance = resident_bytes().saturating_sub(before) / n.max(1) as u64;
    for i in 0..n {
        let _ = broker.remove(&format!("wwarm{i}"));
    }
    std::env::remove_var("SWITCHBOARD_CACHE_DIR");
    Ok(WasmLoads { cold, warm, per_instance })
}
