//! Site files at scale (issue 5): how long `switchboard --config` takes from exec to all of
//! a 100-module file running (its address line is printed after that), the same modules
//! loaded one `module.load` at a time for comparison, how long `module.apply` takes for a
//! one-module change and for no change, and how long SIGTERM takes to remove them all. The
//! broker runs as its own process, as an operator starts it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchboard_client::Client;
use switchboard_protocol::mgmt::{ApplyArgs, ApplyReport, LoadArgs};

use crate::measure::{BenchError, Result};

/// One file's figures.
pub struct SiteTimes {
    pub what: String,
    pub modules: usize,
    pub start: Vec<Duration>,
    pub one_by_one: Duration,
    pub apply_one: Vec<Duration>,
    pub apply_none: Vec<Duration>,
    pub stop: Vec<Duration>,
}

/// The files measured: `n` native echoes, and a third each of native, process and WASM
/// echoes when those are built.
pub fn files(echo_so: &Path, process: Option<PathBuf>, wasm: Option<PathBuf>, n: usize) -> Vec<(String, Vec<PathBuf>)> {
    // The site file lives elsewhere: its paths must not be relative.
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_owned());
    let (echo_so, process, wasm) = (&abs(echo_so), process.as_deref().map(abs), wasm.as_deref().map(abs));
    let mut out = vec![(format!("{n} native echo"), vec![echo_so.to_owned(); n])];
    if let (Some(p), Some(w)) = (process, wasm) {
        let mix: Vec<PathBuf> = (0..n)
            .map(|i| match i % 3 {
                0 => echo_so.to_owned(),
                1 => p.clone(),
                _ => w.clone(),
            })
            .collect();
        out.push((format!("{n} mixed (native, process, wasm)"), mix));
    }
    out
}

pub fn measure(switchboard: &Path, what: &str, paths: &[PathBuf], rounds: usize) -> Result<SiteTimes> {
    let dir = tempfile::Builder::new().prefix("sbbench-site").tempdir().map_err(err)?;
    let site = dir.path().join("site.toml");
    let socket = dir.path().join("b.sock");
    let cache = dir.path().join("cache");
    let mut t = SiteTimes {
        what: what.to_string(),
        modules: paths.len(),
        start: Vec::new(),
        one_by_one: Duration::ZERO,
        apply_one: Vec::new(),
        apply_none: Vec::new(),
        stop: Vec::new(),
    };
    for round in 0..rounds.max(1) {
        std::fs::write(&site, file_text(paths, None)).map_err(err)?;
        let began = Instant::now();
        let mut broker = spawn(switchboard, Some(&site), &socket, &cache)?;
        t.start.push(began.elapsed());
        let mut client = Client::connect(&socket).map_err(|e| BenchError(e.to_string()))?;
        // Change one module's arguments: a reload of that one.
        std::fs::write(&site, file_text(paths, Some(round))).map_err(err)?;
        let (took, report) = apply(&mut client, &site)?;
        if report.steps.len() != 1 || !report.steps[0].ok {
            return Err(BenchError(format!("apply of a one-module change did {:?}", report.steps)));
        }
        t.apply_one.push(took);
        let (took, report) = apply(&mut client, &site)?;
        if !report.steps.is_empty() {
            return Err(BenchError(format!("a second apply did {:?}", report.steps)));
        }
        t.apply_none.push(took);
        t.stop.push(stop(&mut broker)?);
    }
    // The same modules one at a time, as a script of `modctl load` lines would.
    let mut broker = spawn(switchboard, None, &socket, &cache)?;
    let mut client = Client::connect(&socket).map_err(|e| BenchError(e.to_string()))?;
    let began = Instant::now();
    for (i, p) in paths.iter().enumerate() {
        let args = LoadArgs { path: p.display().to_string(), name: Some(format!("m{i}")), ..Default::default() };
        client.rpc("module.load", &args).map_err(|e| BenchError(format!("module.load {}: {e}", p.display())))?;
    }
    t.one_by_one = began.elapsed();
    stop(&mut broker)?;
    Ok(t)
}

fn file_text(paths: &[PathBuf], changed: Option<usize>) -> String {
    let mut s = String::new();
    for (i, p) in paths.iter().enumerate() {
        s += &format!("[[module]]\nname = \"m{i}\"\npath = \"{}\"\n", p.display());
        if i == 0 {
            if let Some(r) = changed {
                s += &format!("args = [\"round={r}\"]\n");
            }
        }
    }
    s
}

fn apply(client: &mut Client, site: &Path) -> Result<(Duration, ApplyReport)> {
    let began = Instant::now();
    let args = ApplyArgs { path: Some(site.display().to_string()), dry_run: false };
    let reply = client.rpc("module.apply", &args).map_err(|e| BenchError(format!("module.apply: {e}")))?;
    let took = began.elapsed();
    let report = reply.decode().map_err(|e| BenchError(format!("module.apply reply: {e}")))?;
    Ok((took, report))
}

/// Start the broker and wait for its address line (printed once every module runs).
fn spawn(switchboard: &Path, site: Option<&Path>, socket: &Path, cache: &Path) -> Result<Child> {
    let mut cmd = Command::new(switchboard);
    if let Some(s) = site {
        cmd.arg("--config").arg(s);
    }
    start_broker(cmd, socket, cache)
}

/// Run `cmd` (the `switchboard` binary, with whatever the caller added) on `socket`, with
/// its compiled-code cache in `cache`, and wait for its address line.
pub(crate) fn start_broker(mut cmd: Command, socket: &Path, cache: &Path) -> Result<Child> {
    let program = Path::new(cmd.get_program()).display().to_string();
    let mut child = cmd
        .arg("--listen")
        .arg(socket)
        .env("SWITCHBOARD_LOG", "warn")
        .env("SWITCHBOARD_CACHE_DIR", cache)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| BenchError(format!("cannot start {program}: {e}")))?;
    let mut line = String::new();
    let stdout = child.stdout.take().ok_or_else(|| BenchError("no stdout".into()))?;
    BufReader::new(stdout).read_line(&mut line).map_err(err)?;
    if !line.starts_with("local://") {
        let _ = child.kill();
        return Err(BenchError(format!("switchboard did not start: {line:?}")));
    }
    Ok(child)
}

/// SIGTERM, and the time until it exited (every module removed).
pub(crate) fn stop(child: &mut Child) -> Result<Duration> {
    let began = Instant::now();
    crate::signal(child.id(), rustix::process::Signal::TERM);
    child.wait().map_err(err)?;
    Ok(began.elapsed())
}

fn err(e: std::io::Error) -> BenchError {
    BenchError(e.to_string())
}
