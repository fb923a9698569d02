//! The `native-load` rows: how long loading and removing a native module (`libecho.so`)
//! takes, measured around the in-process `Broker::load` / `Broker::remove` (the broker's own
//! time, no socket), for a file the broker has not seen (new bytes, or known bytes at a new
//! path) and for one it has (the fixture's own `libecho.so`, loaded again under another name
//! after each remove); then the same warm load and remove as `module.load` / `module.remove`
//! requests over the socket. Two floors run in
//! the same rounds: starting a thread and waiting until it runs (the least a native load
//! does: every module has a thread of its own), and a `broker.ping` round trip.
//!
//! It owns the copies of `libecho.so` it makes (in a temporary folder, gone when it ends) and
//! the module instances it loads (all removed before it returns). It does not touch the
//! modules the fixture loaded, and it asserts nothing: the target line is informational.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use switchboard::LoadRequest;
use switchboard_client::Client;
use switchboard_protocol::mgmt::{LoadArgs, RemoveArgs};

use crate::fixture::BrokerFixture;
use crate::measure::{BenchError, Result, RESPONSE_TIMEOUT};
use crate::Opts;

/// A warm native load (a file the broker has seen, unchanged) in the broker, in ms (issue 10).
pub const TARGET_WARM_NATIVE_LOAD_MS: f64 = 0.1;

/// Warm loads (and removes, pings, thread starts) per round.
const WARM_PER_ROUND: usize = 40;
/// Loads of known bytes at a path not seen before, per round.
const NEW_PATH_PER_ROUND: usize = 4;
/// How old a file must be before the broker trusts its stamp instead of reading it
/// (`switchboard_loaders::digest::SETTLE`): a warm load of a younger file reads it.
const SETTLE: Duration = Duration::from_secs(3);

/// Every timing, in the order taken.
#[derive(Debug, Default)]
pub struct NativeLoads {
    /// A file whose bytes were never loaded: read, hash, private copy, `dlopen`.
    pub new_bytes: Vec<Duration>,
    /// A new file (new path, new inode) with bytes already mapped.
    pub new_path: Vec<Duration>,
    /// The same path again, after a remove.
    pub warm: Vec<Duration>,
    /// Removing a running instance.
    pub remove: Vec<Duration>,
    /// `module.load` of the warm path over the socket (request to response).
    pub rpc_warm: Vec<Duration>,
    /// `module.remove` over the socket.
    pub rpc_remove: Vec<Duration>,
    /// Floor: spawn a thread and wait for it to say it runs.
    pub thread: Vec<Duration>,
    /// Floor: one `broker.ping` round trip over the socket.
    pub ping: Vec<Duration>,
}

fn err(what: &str) -> impl Fn(std::io::Error) -> BenchError + '_ {
    move |e| BenchError(format!("native-load: {what}: {e}"))
}

/// Run the rounds: each takes one new-bytes load, a few new-path loads, then warm loads,
/// removes, pings and thread starts interleaved, so that machine noise falls on all alike.
pub fn measure(fixture: &BrokerFixture, opts: &Opts) -> Result<NativeLoads> {
    let dir = tempfile::Builder::new().prefix("sbbench-native").tempdir().map_err(err("temporary folder"))?;
    let bytes = std::fs::read(&fixture.echo_so).map_err(err("reading libecho.so"))?;
    // The fixture loaded it as `echo`: a file the broker has seen. A file just built is not
    // yet trusted by its stamp; wait until it would be, as any file a site loads again is.
    let warm_so = fixture.echo_so.clone();
    let meta = std::fs::metadata(&warm_so).map_err(err("libecho.so"))?;
    let changed = UNIX_EPOCH + Duration::new(meta.ctime().max(meta.mtime()).max(0) as u64, 999_999_999);
    let age = changed.elapsed().unwrap_or_default();
    std::thread::sleep((SETTLE + Duration::from_millis(100)).saturating_sub(age));
    let mut client = fixture.connect()?;
    let mut out = NativeLoads::default();
    // Read once more now that it is settled; not counted.
    load(fixture, "nl-warm", &warm_so)?;
    remove(fixture, "nl-warm")?;
    for round in 0..opts.rounds() {
        // Trailing bytes after the ELF data change the digest and nothing else.
        let mut fresh = bytes.clone();
        fresh.extend_from_slice(format!("sbbench native-load {} {round}", std::process::id()).as_bytes());
        let path = dir.path().join(format!("libecho-new{round}.so"));
        std::fs::write(&path, &fresh).map_err(err("writing a changed copy of libecho.so"))?;
        out.new_bytes.push(load(fixture, "nl-new", &path)?);
        out.remove.push(remove(fixture, "nl-new")?);
        for i in 0..NEW_PATH_PER_ROUND {
            let path = dir.path().join(format!("libecho-r{round}-{i}.so"));
            std::fs::write(&path, &bytes).map_err(err("copying libecho.so"))?;
            out.new_path.push(load(fixture, "nl-path", &path)?);
            out.remove.push(remove(fixture, "nl-path")?);
        }
        for _ in 0..WARM_PER_ROUND {
            out.warm.push(load(fixture, "nl-warm", &warm_so)?);
            out.remove.push(remove(fixture, "nl-warm")?);
            out.rpc_warm.push(rpc_load(&mut client, "nl-rpc", &warm_so)?);
            out.rpc_remove.push(rpc_remove(&mut client, "nl-rpc")?);
            out.thread.push(thread_start()?);
            out.ping.push(ping(&mut client)?);
        }
    }
    Ok(out)
}

fn load(fixture: &BrokerFixture, name: &str, path: &Path) -> Result<Duration> {
    let request = LoadRequest {
        path: path.to_owned(),
        name: Some(name.into()),
        config: Bytes::from_static(&[0x80]),
        ..Default::default()
    };
    let start = Instant::now();
    fixture
        .broker()
        .load(request)
        .map_err(|e| BenchError(format!("native-load: cannot load {}: {e}", path.display())))?;
    Ok(start.elapsed())
}

fn remove(fixture: &BrokerFixture, name: &str) -> Result<Duration> {
    let start = Instant::now();
    fixture.broker().remove(name).map_err(|e| BenchError(format!("native-load: cannot remove {name}: {e}")))?;
    Ok(start.elapsed())
}

fn rpc_load(client: &mut Client, name: &str, path: &Path) -> Result<Duration> {
    let args = LoadArgs { path: path.display().to_string(), name: Some(name.into()), ..Default::default() };
    let start = Instant::now();
    client.rpc("module.load", &args)?;
    Ok(start.elapsed())
}

fn rpc_remove(client: &mut Client, name: &str) -> Result<Duration> {
    let args = RemoveArgs { name: name.into(), grace_ms: None, force: false };
    let start = Instant::now();
    client.rpc("module.remove", &args)?;
    Ok(start.elapsed())
}

fn ping(client: &mut Client) -> Result<Duration> {
    let start = Instant::now();
    client.rpc_raw("broker.ping", Bytes::from_static(&[0x80]), Some(RESPONSE_TIMEOUT))?;
    Ok(start.elapsed())
}

/// Spawn a thread and wait until it runs; its join is not counted (a load does not wait for
/// its module's thread to end).
fn thread_start() -> Result<Duration> {
    let (tx, rx) = mpsc::sync_channel::<()>(1);
    let start = Instant::now();
    let t = std::thread::Builder::new()
        .name("sbbench-floor".into())
        .spawn(move || {
            let _ = tx.send(());
        })
        .map_err(err("starting a thread"))?;
    rx.recv().map_err(|_| BenchError("native-load: the floor thread ended without running".into()))?;
    let took = start.elapsed();
    let _ = t.join();
    Ok(took)
}

/// The median of `v` in milliseconds (NaN when empty).
fn median_ms(v: &[Duration]) -> f64 {
    let mut v: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The printed section: medians, their ratio to the floors, and the target.
pub fn report(n: &NativeLoads, echo_so: &Path) {
    let name = echo_so.file_name().map_or_else(|| PathBuf::from("libecho.so"), PathBuf::from);
    let (thread, ping) = (median_ms(&n.thread), median_ms(&n.ping));
    println!();
    println!("Native module loading ({}, wall time; medians, in ms):", name.display());
    println!("  {:<58} {:>8} {:>6} {:>10} {:>8}", "", "median", "n", "/ thread", "/ ping");
    let row = |what: &str, v: &[Duration]| {
        let m = median_ms(v);
        println!("  {what:<58} {m:>8.3} {:>6} {:>9.1}x {:>7.1}x", v.len(), m / thread, m / ping);
    };
    row("first load, bytes never loaded (Broker::load)", &n.new_bytes);
    row("first load, new path, bytes already loaded (Broker::load)", &n.new_path);
    row("warm load, same path after a remove (Broker::load)", &n.warm);
    row("remove (Broker::remove)", &n.remove);
    row("warm load over the socket (module.load request)", &n.rpc_warm);
    row("remove over the socket (module.remove request)", &n.rpc_remove);
    row("floor: start a thread and wait until it runs", &n.thread);
    row("floor: broker.ping round trip", &n.ping);
    let warm = median_ms(&n.warm);
    let verdict = if warm <= TARGET_WARM_NATIVE_LOAD_MS { "PASS" } else { "MISS" };
    println!("  {verdict}  warm native load in the broker <= {TARGET_WARM_NATIVE_LOAD_MS} ms: {warm:.3} ms");
}
