//! The broker under test: started in this process on a temporary socket, with the native
//! `echo` and `benchdriver` modules loaded from the build's own target directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use switchboard::{Broker, LoadRequest};
use switchboard_module_api::Client;

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
