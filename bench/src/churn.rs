//! Module churn (issue 9): the broker's resident memory and thread count over many cycles of
//! load a module, call it once, remove it, rotating a native (`libecho.so`), a process (the
//! `echo` binary) and a WASM (`echo.wasm`) echo. The broker runs as its own process (the real
//! `switchboard` binary, as an operator starts it), once per environment variant, so that
//! allocator settings (`MALLOC_ARENA_MAX`, ...) can be compared side by side in one run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_client::Client;
use switchboard_protocol::mgmt::{LoadArgs, RemoveArgs};

use crate::measure::{BenchError, Result, RESPONSE_TIMEOUT};
use crate::site;

/// What the broker's environment is changed to for one row: `NAME=VALUE` sets a variable,
/// `-NAME` removes it; several are separated by spaces.
#[derive(Debug, Clone)]
pub struct Variant {
    pub label: String,
    set: Vec<(String, String)>,
    unset: Vec<String>,
}

impl Variant {
    pub fn parse(spec: &str) -> Result<Variant> {
        let mut v = Variant { label: String::new(), set: Vec::new(), unset: Vec::new() };
        let mut label = Vec::new();
        for word in spec.split_whitespace() {
            if let Some(name) = word.strip_prefix('-').filter(|n| !n.is_empty()) {
                v.unset.push(name.to_string());
                label.push(format!("{name} unset"));
            } else if let Some((name, value)) = word.split_once('=').filter(|(n, _)| !n.is_empty()) {
                v.set.push((name.to_string(), value.to_string()));
                label.push(word.to_string());
            } else {
                return Err(BenchError(format!("--churn-env {spec:?}: {word:?} is neither NAME=VALUE nor -NAME")));
            }
        }
        v.label = if label.is_empty() { "(inherited environment)".into() } else { label.join(" ") };
        Ok(v)
    }

    /// The rows of every run unless `--churn-env` says otherwise: the broker as shipped (its
    /// own arena limit) and glibc's default limit of 8 arenas per CPU, which an environment
    /// variable restores because the user's `MALLOC_ARENA_MAX` wins over the broker's.
    pub fn defaults() -> Vec<Variant> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        ["-MALLOC_ARENA_MAX".to_string(), format!("MALLOC_ARENA_MAX={}", 8 * cpus)]
            .iter()
            .filter_map(|s| Variant::parse(s).ok())
            .collect()
    }
}

/// The broker's resident memory and threads after `cycles` cycles.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub cycles: usize,
    pub rss: u64,
    pub threads: u64,
}

/// One variant's run.
pub struct ChurnRow {
    pub label: String,
    /// Right after start, before any cycle.
    pub idle: Point,
    /// Unmeasured cycles before `points[0]` (each kind loaded a few times: the WASM compile
    /// and other one-time costs are not churn).
    pub warmup: usize,
    /// From the first measured cycle (`cycles == 0`) to the last, every `every` cycles.
    pub points: Vec<Point>,
    /// Wall time of the measured cycles.
    pub elapsed: Duration,
}

impl ChurnRow {
    pub fn start(&self) -> Option<Point> {
        self.points.first().copied()
    }
    pub fn end(&self) -> Option<Point> {
        self.points.last().copied()
    }
    /// Resident bytes added per 1,000 measured cycles, start to end.
    pub fn growth_per_1000(&self) -> Option<f64> {
        let (s, e) = (self.start()?, self.end()?);
        let n = e.cycles.checked_sub(s.cycles).filter(|n| *n > 0)?;
        Some((e.rss as f64 - s.rss as f64) * 1000.0 / n as f64)
    }
    pub fn cycles_per_sec(&self) -> f64 {
        self.end().map_or(0, |e| e.cycles) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The echo module of each kind that is built, as absolute paths; what is missing, with the
/// command that builds it.
pub fn kinds(echo_so: &Path, process: Option<PathBuf>, wasm: Option<PathBuf>) -> (Vec<PathBuf>, Vec<String>) {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    let mut have = vec![abs(echo_so)];
    let mut missing = Vec::new();
    match process {
        Some(p) => have.push(abs(&p)),
        None => missing.push("process echo: cargo build --release --workspace".to_string()),
    }
    match wasm {
        Some(w) => have.push(abs(&w)),
        None => missing
            .push("echo.wasm: cargo build --release --target wasm32-wasip2 -p switchboard-echo --lib".to_string()),
    }
    (have, missing)
}

/// Start `switchboard` with `variant`'s environment, run `cycles` cycles over `modules` in
/// turn (after a few unmeasured ones), sampling every `every` cycles, and stop it.
pub fn measure(
    switchboard: &Path,
    variant: &Variant,
    modules: &[PathBuf],
    cycles: usize,
    every: usize,
) -> Result<ChurnRow> {
    if modules.is_empty() {
        return Err(BenchError("module churn: no module to load".into()));
    }
    let dir = tempfile::Builder::new().prefix("sbbench-churn").tempdir().map_err(err)?;
    let socket = dir.path().join("b.sock");
    let mut broker = Broker::spawn(switchboard, variant, &socket, &dir.path().join("cache"))?;
    let mut client = Client::connect(&socket)?;
    let idle = broker.point(0)?;
    let warmup = 3 * modules.len();
    for i in 0..warmup {
        cycle(&mut client, &modules[i % modules.len()])?;
    }
    let every = every.max(1);
    let mut points = vec![broker.point(0)?];
    let began = Instant::now();
    for i in 0..cycles {
        cycle(&mut client, &modules[(warmup + i) % modules.len()])?;
        if (i + 1) % every == 0 || i + 1 == cycles {
            points.push(broker.point(i + 1)?);
        }
    }
    let elapsed = began.elapsed();
    drop(client);
    broker.stop()?;
    Ok(ChurnRow { label: variant.label.clone(), idle, warmup, points, elapsed })
}

/// Load `path` as `churn`, call it once, remove it.
fn cycle(client: &mut Client, path: &Path) -> Result<()> {
    let what = |op: &str, e: &dyn std::fmt::Display| BenchError(format!("churn: {op} {}: {e}", path.display()));
    let load = LoadArgs { path: path.display().to_string(), name: Some("churn".into()), ..Default::default() };
    client.rpc("module.load", &load).map_err(|e| what("module.load", &e))?;
    let payload = Bytes::from_static(&[0x81, 0xa1, b'n', 0x01]);
    let reply = client.rpc_raw("churn.x", payload.clone(), Some(RESPONSE_TIMEOUT)).map_err(|e| what("call", &e))?;
    if reply.payload != payload {
        return Err(what("call", &"the echo answered with another payload"));
    }
    let remove = RemoveArgs { name: "churn".into(), grace_ms: None, force: false };
    client.rpc("module.remove", &remove).map_err(|e| what("module.remove", &e))?;
    Ok(())
}

/// The broker's process; killed if dropped before `stop`. The `clients` rows run one too.
pub(crate) struct Broker(Option<Child>);

impl Broker {
    /// Start it and wait for its address line.
    fn spawn(switchboard: &Path, variant: &Variant, socket: &Path, cache: &Path) -> Result<Broker> {
        let mut cmd = Command::new(switchboard);
        for name in &variant.unset {
            cmd.env_remove(name);
        }
        cmd.envs(variant.set.iter().map(|(k, v)| (k, v)));
        Broker::start(cmd, socket, cache)
    }

    /// Run `cmd` (the `switchboard` binary and any arguments) on `socket` as
    /// `site::start_broker` does, and wait for its address line.
    pub(crate) fn start(cmd: Command, socket: &Path, cache: &Path) -> Result<Broker> {
        site::start_broker(cmd, socket, cache).map(|child| Broker(Some(child)))
    }

    fn child(&mut self) -> Result<&mut Child> {
        self.0.as_mut().ok_or_else(|| BenchError("switchboard has stopped".into()))
    }

    /// Its process id, while it runs.
    pub(crate) fn pid(&mut self) -> Result<u32> {
        Ok(self.child()?.id())
    }

    /// Its resident memory and thread count now, from /proc/PID/status.
    fn point(&mut self, cycles: usize) -> Result<Point> {
        let pid = self.child()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(err)?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.split_whitespace().next()?.parse().ok())
                .ok_or_else(|| BenchError(format!("/proc/{pid}/status has no {name}")))
        };
        Ok(Point { cycles, rss: field("VmRSS:")? * 1024, threads: field("Threads:")? })
    }

    /// SIGTERM, and wait for it to exit.
    pub(crate) fn stop(mut self) -> Result<()> {
        let mut child = self.0.take().ok_or_else(|| BenchError("switchboard has stopped".into()))?;
        site::stop(&mut child).map(drop)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn err(e: std::io::Error) -> BenchError {
    BenchError(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_parse() {
        let v = Variant::parse("MALLOC_ARENA_MAX=2 -FOO").map_err(|e| e.0);
        let v = v.as_ref().map(|v| (v.set.clone(), v.unset.clone()));
        assert_eq!(v, Ok((vec![("MALLOC_ARENA_MAX".into(), "2".into())], vec!["FOO".into()])));
        assert!(Variant::parse("=1").is_err());
        assert_eq!(Variant::parse("").map(|v| v.label).map_err(|e| e.0), Ok("(inherited environment)".into()));
        assert_eq!(Variant::defaults().len(), 2);
    }
}
