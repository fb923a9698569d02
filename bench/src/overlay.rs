//! The `overlay-*` rows (issue 11): an instance of brokers joined in a tree (RFC 7), started
//! as an operator starts one, `switchboard --test-size N --config SITE` (its own processes;
//! the site file loads the native echo on every rank), measured against a raw libzmq floor
//! in the same run:
//!
//! - `overlay-zmq-seq` / `overlay-zmq-pipe`: the floor. A DEALER in this thread, a ROUTER
//!   echoing every message back from a thread and a ZeroMQ context of its own (as a second
//!   broker would), over loopback TCP with CURVE, as every link is (RFC 7 §3.4); the message
//!   is the exact frame the first link carries for the RPC rows' request, alone.
//! - `overlay-rpc-{seq,pipe}-{local,rank1,deepest}`: a client on rank 0 to `echo` by
//!   `nodeid`: rank 0 itself (no link: the broker's own cost), rank 1 (one link each way) and
//!   the deepest rank (the most links). Sequential, and `--window` in flight.
//! - `overlay-events`: events published by a client on the deepest rank, counted by a
//!   subscriber on every rank; the rate of events delivered on all of them.
//! - `overlay-start`: exec of `--test-size` to its address line (every rank `full`), and its
//!   stop by SIGINT; `overlay-load`: `modctl --rank all load` (when this modctl has `--rank`)
//!   and the same as `module.load` requests with nodeid 0..N-1 pipelined from one client;
//!   `overlay-rss`: VmRSS, RssAnon and PSS of each rank's process, idle after the start and
//!   after the rows, and the idle instance's CPU time and context switches.
//!
//! The rounds of the floor and the RPC rows are interleaved as in the main table; CPU time
//! and context switches per operation count this process and every rank's (`/proc/PID/stat`,
//! 10 ms ticks; `/proc/PID/task/*/status`). It asserts nothing: the target lines are
//! informational. The instance is stopped on every way out (`Instance`'s drop), and no rank
//! is left running if `--test-size` dies (`Instance::stop`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard::overlay::{Topology, LINK_HWM};
use switchboard_client::{Client, ClientError};
use switchboard_protocol::mgmt::{LoadArgs, RemoveArgs, TopicArgs};
use switchboard_protocol::{encode_frame_into, uri, Message, MsgType};

use crate::clients::proc_cpu;
use crate::measure::{
    pipelined_requests, round_trips, sequential_requests, windowed, BenchError, Result, Sample, Usage, RESPONSE_TIMEOUT,
};
use crate::report::thousands;
use crate::Opts;

/// Rank-to-rank RPC, pipelined, against the libzmq floor pipelined (issue 11).
pub const TARGET_PIPE_RATIO: f64 = 0.5;
/// A module loaded on every rank of the instance (issue 11).
pub const TARGET_LOAD_ALL: Duration = Duration::from_secs(1);
/// Every row of this group; `--only overlay` selects them all.
pub const IDS: [&str; 12] = [
    "overlay-start",
    "overlay-rss",
    "overlay-zmq-seq",
    "overlay-zmq-pipe",
    "overlay-rpc-seq-local",
    "overlay-rpc-seq-rank1",
    "overlay-rpc-seq-deepest",
    "overlay-rpc-pipe-local",
    "overlay-rpc-pipe-rank1",
    "overlay-rpc-pipe-deepest",
    "overlay-events",
    "overlay-load",
];
/// The events' topic, and what each subscriber subscribes to.
const EVENT_TOPIC: &str = "sbbench.overlay";
/// How long the brokers are left alone before their memory is read.
const SETTLE: Duration = Duration::from_millis(500);
/// Starts of the instance tried in all before the group gives up (a failed one is reported).
const START_TRIES: usize = 3;
/// How long the idle instance's CPU time is measured.
const IDLE: Duration = Duration::from_secs(2);
/// How many times one whole-instance operation (a load on every rank) is timed.
const LOAD_RUNS: usize = 5;

fn err(what: &'static str) -> impl Fn(std::io::Error) -> BenchError {
    move |e| BenchError(format!("{what}: {e}"))
}

fn zerr(what: &'static str) -> impl Fn(zmq::Error) -> BenchError {
    move |e| BenchError(format!("{what}: {e}"))
}

/// Whether any row of this group is wanted.
pub fn wanted(opts: &Opts) -> bool {
    IDS.iter().any(|id| opts.wants(id))
}

// ---------------------------------------------------------------------------------------
// The instance: `switchboard --test-size N` as its own process, with its N rank processes.

/// A running instance. Dropping it stops it (SIGINT to `--test-size`, which stops the ranks
/// leaves first), so no rank outlives the benchmark on an error.
pub struct Instance {
    child: Option<Child>,
    /// The instance's private folder, where rank R listens on `broker-R.sock`.
    dir: PathBuf,
    pub size: u32,
    /// Exec to the address line: every rank `full`.
    pub started: Duration,
}

impl Instance {
    pub fn start(switchboard: &Path, site: &Path, cache: &Path, size: u32, fanout: u32) -> Result<Instance> {
        let began = Instant::now();
        let mut child = Command::new(switchboard)
            .args(["--test-size", &size.to_string(), "--fanout", &fanout.to_string(), "--log", "error"])
            .arg("--config")
            .arg(site)
            .env("SWITCHBOARD_CACHE_DIR", cache)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| BenchError(format!("cannot start {} --test-size {size}: {e}", switchboard.display())))?;
        // Its log goes on to ours; its own lines and its ranks' start-up errors (they begin
        // `switchboard`, where log lines begin with a time) are kept to say why a start failed.
        let said = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut forward = None;
        if let Some(err) = child.stderr.take() {
            let said = said.clone();
            forward = Some(std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(std::result::Result::ok) {
                    eprintln!("{line}");
                    if line.starts_with("switchboard") && !line.contains(" is up; ") {
                        if let Ok(mut s) = said.lock() {
                            if !s.contains(&line) {
                                s.push(line);
                            }
                        }
                    }
                }
            }));
        }
        let mut line = String::new();
        let read = match child.stdout.take() {
            Some(out) => BufReader::new(out).read_line(&mut line).map(drop),
            None => Ok(()),
        };
        let started = began.elapsed();
        let mut instance = Instance { child: Some(child), dir: PathBuf::new(), size, started };
        read.map_err(err("reading --test-size's address"))?;
        let socket = uri::parse(line.trim());
        if !line.starts_with("local://") {
            // Reaped here, so that the drop has nothing left to signal.
            let status = instance.child.take().and_then(|mut c| c.wait().ok());
            // It stopped its ranks before it exited: the pipe has no writer left, and the
            // thread ends once it has taken in the last lines.
            if let Some(t) = forward {
                let _ = t.join();
            }
            let why = said.lock().map(|s| s.join("; ")).unwrap_or_default();
            return Err(BenchError(format!(
                "switchboard --test-size {size} did not start ({}): {}",
                status.map_or_else(|| "no exit status".to_string(), |s| s.to_string()),
                if why.is_empty() { "its log above says why" } else { &why }
            )));
        }
        instance.dir = socket.parent().map(Path::to_owned).unwrap_or_default();
        Ok(instance)
    }

    pub fn socket(&self, rank: u32) -> PathBuf {
        self.dir.join(format!("broker-{rank}.sock"))
    }

    pub fn uri(&self) -> String {
        uri::to_uri(&self.socket(0))
    }

    pub fn connect(&self, rank: u32) -> Result<Client> {
        Client::connect(&self.socket(rank)).map_err(|e| BenchError(format!("rank {rank}: {e}")))
    }

    /// The process of each rank: (rank, pid), in rank order.
    pub fn ranks(&self) -> Result<Vec<(u32, u32)>> {
        let parent = self.child.as_ref().map(Child::id).ok_or_else(|| BenchError("the instance is stopped".into()))?;
        let ranks = ranks_of(parent)?;
        if ranks.len() != self.size as usize {
            return Err(BenchError(format!("found {} rank processes of {}", ranks.len(), self.size)));
        }
        Ok(ranks)
    }

    /// CPU time and context switches of every rank process so far.
    fn usage(&self, pids: &[u32]) -> Result<Brokers> {
        let mut b = Brokers::default();
        for &pid in pids {
            b.cpu += proc_cpu(pid)?;
            b.csw += context_switches(pid);
        }
        Ok(b)
    }

    /// SIGINT, and the time until `--test-size` exited (every rank stopped, leaves first).
    ///
    /// `--test-size` installs its SIGINT handler only after it has printed the address, and
    /// a SIGINT before that kills it by default and leaves every rank running without it.
    /// So the signal waits until /proc says the handler is in place (`SigCgt`), and if the
    /// process still died by a signal, the ranks found before are stopped here.
    pub fn stop(&mut self) -> Result<Duration> {
        let Some(mut child) = self.child.take() else { return Ok(Duration::ZERO) };
        let pid = child.id();
        let ranks = ranks_of(pid).unwrap_or_default();
        let deadline = Instant::now() + RESPONSE_TIMEOUT;
        while !catches_sigint(pid) && Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Ok(Some(status)) = child.try_wait() {
            let orphans = stop_orphans(&ranks);
            return Err(BenchError(format!(
                "switchboard --test-size exited by itself ({status}; {orphans} of its ranks were still running)"
            )));
        }
        let began = Instant::now();
        // Our own child, not yet reaped (try_wait just saw it running).
        crate::signal(pid, rustix::process::Signal::INT);
        let status = child.wait().map_err(err("waiting for --test-size"))?;
        let took = began.elapsed();
        if status.success() {
            return Ok(took);
        }
        let orphans = stop_orphans(&ranks);
        Err(BenchError(format!(
            "switchboard --test-size exited with {status} when stopped{}",
            if orphans > 0 {
                format!(" (its {orphans} ranks were left running, and were stopped here)")
            } else {
                String::new()
            }
        )))
    }
}

/// The processes whose parent is `parent` and that have a `--rank R` argument: (rank, pid),
/// in rank order.
fn ranks_of(parent: u32) -> Result<Vec<(u32, u32)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").map_err(err("/proc"))?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        // A process that ends while /proc is read has no files any more: not one of ours.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let ppid = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid != Some(parent) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let rank = args
            .windows(2)
            .find(|w| w[0] == b"--rank")
            .and_then(|w| std::str::from_utf8(w[1]).ok()?.parse::<u32>().ok());
        if let Some(rank) = rank {
            out.push((rank, pid));
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Whether process `pid` has a handler for SIGINT (`SigCgt` in /proc/PID/status).
fn catches_sigint(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return false };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGINT - 1)) != 0)
}

/// SIGTERM the rank processes of an instance whose `--test-size` is gone, if they still run
/// as those ranks (a pid is checked against its `--rank` before it is signalled), and wait
/// for them; how many there were.
fn stop_orphans(ranks: &[(u32, u32)]) -> usize {
    let still = |rank: u32, pid: u32| {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
            c.split(|&b| b == 0)
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| w[0] == b"--rank" && w[1] == rank.to_string().as_bytes())
        })
    };
    let alive: Vec<(u32, u32)> = ranks.iter().copied().filter(|&(r, p)| still(r, p)).collect();
    for &(_, pid) in &alive {
        // A process of this benchmark's instance, checked just above.
        crate::signal(pid, rustix::process::Signal::TERM);
    }
    let deadline = Instant::now() + RESPONSE_TIMEOUT;
    while alive.iter().any(|&(r, p)| still(r, p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    alive.len()
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The site file every rank runs: the native echo (all ranks: `ranks` defaults to all).
fn site_text(echo_so: &Path) -> String {
    let abs = std::path::absolute(echo_so).unwrap_or_else(|_| echo_so.to_owned());
    format!("[[module]]\nname = \"echo\"\npath = \"{}\"\n", abs.display())
}

/// The rank processes' CPU time and context switches (all threads), so far or in an interval.
#[derive(Debug, Clone, Copy, Default)]
pub struct Brokers {
    pub cpu: Duration,
    pub csw: u64,
}

impl Brokers {
    fn since(self, before: Brokers) -> Brokers {
        Brokers { cpu: self.cpu.saturating_sub(before.cpu), csw: self.csw.saturating_sub(before.csw) }
    }
}

/// Voluntary and involuntary context switches of every thread of `pid` so far (a thread that
/// ended is not counted: the rows' brokers start none).
fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    let mut n = 0;
    for t in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(t.path().join("status")) else { continue };
        n += status
            .lines()
            .filter(|l| l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    n
}

// ---------------------------------------------------------------------------------------
// Memory.

/// Resident memory of the rank processes at one moment.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    /// VmRSS of each rank, in rank order, bytes.
    pub rss: Vec<u64>,
    pub anon: Vec<u64>,
    /// Proportional set size (`/proc/PID/smaps_rollup`): pages shared by several processes
    /// (the binary, the libraries) counted once in all; None where the kernel has no rollup.
    pub pss: Option<Vec<u64>>,
    pub threads: Vec<u64>,
}

impl Memory {
    fn read(ranks: &[(u32, u32)]) -> Result<Memory> {
        let mut m = Memory { pss: Some(Vec::new()), ..Memory::default() };
        for &(rank, pid) in ranks {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .map_err(|e| BenchError(format!("rank {rank}'s /proc/{pid}/status: {e}")))?;
            let field = |name: &str| -> Result<u64> {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name)?.split_whitespace().next()?.parse::<u64>().ok())
                    .ok_or_else(|| BenchError(format!("/proc/{pid}/status has no {name}")))
            };
            m.rss.push(field("VmRSS:")? * 1024);
            m.anon.push(field("RssAnon:")? * 1024);
            m.threads.push(field("Threads:")?);
            let pss = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok().and_then(|r| {
                r.lines().find_map(|l| l.strip_prefix("Pss:")?.split_whitespace().next()?.parse::<u64>().ok())
            });
            match (pss, &mut m.pss) {
                (Some(kib), Some(v)) => v.push(kib * 1024),
                _ => m.pss = None,
            }
        }
        Ok(m)
    }

    fn mean(v: &[u64]) -> f64 {
        v.iter().sum::<u64>() as f64 / v.len().max(1) as f64
    }
}

// ---------------------------------------------------------------------------------------
// The floor: raw libzmq DEALER -> ROUTER -> DEALER, CURVE, loopback TCP.

pub struct ZmqFloor {
    dealer: zmq::Socket,
    body: Vec<u8>,
    stopping: Arc<AtomicBool>,
    echo: Option<JoinHandle<()>>,
    /// Scratch message for receiving.
    reply: zmq::Message,
}

/// The options every overlay link has that bear on speed (RFC 7 §3.1).
fn link_options(sock: &zmq::Socket) -> zmq::Result<()> {
    sock.set_linger(0)?;
    sock.set_sndhwm(LINK_HWM)?;
    sock.set_rcvhwm(LINK_HWM)
}

impl ZmqFloor {
    /// A ROUTER echo on a thread and context of its own, and a DEALER here connected to it;
    /// one round trip has gone through (the CURVE handshake is done) when this returns.
    pub fn start(body: Vec<u8>) -> Result<ZmqFloor> {
        if zmq::has("curve") != Some(true) {
            return Err(BenchError("this libzmq has no CURVE (RFC 7 §9): install Debian's libzmq3-dev".into()));
        }
        let server = zmq::CurveKeyPair::new().map_err(zerr("curve key pair"))?;
        let client = zmq::CurveKeyPair::new().map_err(zerr("curve key pair"))?;
        let server_public = server.public_key;
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let (tx, rx) = std::sync::mpsc::channel::<std::result::Result<String, String>>();
        let echo = std::thread::Builder::new()
            .name("zmq-echo".into())
            .spawn(move || {
                let ctx = zmq::Context::new();
                let bound = (|| -> zmq::Result<(zmq::Socket, String)> {
                    let sock = ctx.socket(zmq::ROUTER)?;
                    link_options(&sock)?;
                    sock.set_router_mandatory(true)?;
                    sock.set_curve_server(true)?;
                    sock.set_curve_secretkey(&server.secret_key)?;
                    sock.set_rcvtimeo(100)?;
                    sock.bind("tcp://127.0.0.1:*")?;
                    let at = sock.get_last_endpoint()?.unwrap_or_default();
                    Ok((sock, at))
                })();
                let sock = match bound {
                    Ok((sock, at)) => {
                        let _ = tx.send(Ok(at));
                        sock
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                zmq_echo(&sock, &stop);
            })
            .map_err(err("the libzmq echo thread"))?;
        let at = rx
            .recv_timeout(RESPONSE_TIMEOUT)
            .map_err(|e| BenchError(format!("the libzmq echo thread: {e}")))?
            .map_err(|e| BenchError(format!("the libzmq echo's ROUTER: {e}")))?;
        let ctx = zmq::Context::new();
        let dealer = (|| -> zmq::Result<zmq::Socket> {
            let sock = ctx.socket(zmq::DEALER)?;
            link_options(&sock)?;
            sock.set_curve_serverkey(&server_public)?;
            sock.set_curve_publickey(&client.public_key)?;
            sock.set_curve_secretkey(&client.secret_key)?;
            sock.set_rcvtimeo(RESPONSE_TIMEOUT.as_millis() as i32)?;
            sock.connect(&at)?;
            Ok(sock)
        })()
        .map_err(zerr("the floor's DEALER"))?;
        let mut floor = ZmqFloor { dealer, body, stopping, echo: Some(echo), reply: zmq::Message::new() };
        floor.sequential(Duration::ZERO)?;
        Ok(floor)
    }

    fn recv(&mut self) -> Result<()> {
        match self.dealer.recv(&mut self.reply, 0) {
            Ok(()) if self.reply.len() == self.body.len() => Ok(()),
            Ok(()) => Err(BenchError(format!("libzmq echo: {} bytes back for {}", self.reply.len(), self.body.len()))),
            Err(zmq::Error::EAGAIN) => Err(BenchError(format!("libzmq echo: no answer in {RESPONSE_TIMEOUT:?}"))),
            Err(e) => Err(BenchError(format!("libzmq echo: {e}"))),
        }
    }

    fn send(&self) -> Result<()> {
        self.dealer.send(&self.body[..], 0).map_err(zerr("libzmq send"))
    }

    /// One message there and back, repeated for `dur` (at least once).
    pub fn sequential(&mut self, dur: Duration) -> Result<Sample> {
        round_trips(self, dur, |f| {
            f.send()?;
            f.recv()?;
            if *f.reply != f.body[..] {
                return Err(BenchError("libzmq echo: the message came back changed".into()));
            }
            Ok(())
        })
    }

    /// `window` messages in flight, one sent for each that comes back, for `dur`; what is in
    /// flight then is drained outside the measurement.
    pub fn pipelined(&mut self, window: usize, dur: Duration) -> Result<Sample> {
        windowed(self, window, dur, |f| f.send(), |f| f.recv())
    }
}

impl Drop for ZmqFloor {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(t) = self.echo.take() {
            let _ = t.join();
        }
    }
}

/// The ROUTER's loop: every message back to whoever sent it, until `stop`.
fn zmq_echo(sock: &zmq::Socket, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let mut id = zmq::Message::new();
        match sock.recv(&mut id, 0) {
            Ok(()) => {}
            Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => continue,
            Err(_) => return,
        }
        let mut body = zmq::Message::new();
        if !id.get_more() || sock.recv(&mut body, 0).is_err() {
            continue;
        }
        if sock.send(id, zmq::SNDMORE).is_err() || sock.send(body, 0).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Interleaved rows: the floor and RPC across the tree.

type Runner<'a> = Box<dyn FnMut(Duration) -> Result<Sample> + 'a>;

pub struct Row<'a> {
    pub id: &'static str,
    pub what: String,
    pub pipe: bool,
    /// Links crossed each way (None: the floor).
    pub links: Option<u32>,
    run: Runner<'a>,
    pub samples: Vec<Sample>,
    /// The rank processes during each sample.
    pub brokers: Vec<Brokers>,
    pub error: Option<String>,
}

impl Row<'_> {
    fn median(&self) -> Option<(Sample, Brokers)> {
        let mut v: Vec<(Sample, Brokers)> = self.samples.iter().copied().zip(self.brokers.iter().copied()).collect();
        v.sort_by(|a, b| a.0.rate().total_cmp(&b.0.rate()));
        v.get(v.len() / 2).copied()
    }
    fn best(&self) -> Option<f64> {
        self.samples.iter().map(Sample::rate).reduce(f64::max)
    }
}

// ---------------------------------------------------------------------------------------
// Events everywhere.

/// One round of events: published on one rank, delivered on every rank.
#[derive(Debug, Clone, Copy)]
pub struct EventRound {
    /// Events delivered on every rank within the round, and the round's length.
    pub sample: Sample,
    pub brokers: Brokers,
}

/// What the event rounds found.
pub struct Events {
    pub from: u32,
    pub window: u64,
    pub rounds: Vec<EventRound>,
    /// Events that arrived on some rank with a sequence number not above the last one.
    pub out_of_order: u64,
}

/// How the event rounds run.
#[derive(Clone, Copy)]
struct EventPlan {
    /// The publisher's rank.
    from: u32,
    /// Events published and not yet delivered on every rank, at most.
    window: u64,
    rounds: usize,
    dur: Duration,
    warmup: Duration,
}

/// A subscriber on each rank, a publisher on `plan.from`; `plan.rounds` rounds, each
/// publishing as fast as every rank takes them, at most `plan.window` ahead of the slowest.
fn events(inst: &Instance, pids: &[u32], payload: &Bytes, plan: &EventPlan) -> Result<Events> {
    let EventPlan { from, window, rounds, dur, warmup } = *plan;
    let mut subs = Vec::new();
    for r in 0..inst.size {
        let mut c = inst.connect(r)?;
        c.rpc("event.subscribe", &TopicArgs { topic: EVENT_TOPIC.into() })
            .map_err(|e| BenchError(format!("event.subscribe on rank {r}: {e}")))?;
        subs.push(c);
    }
    let mut publisher = inst.connect(from)?;
    let counts: Vec<AtomicU64> = (0..inst.size).map(|_| AtomicU64::new(0)).collect();
    let (stop, out_of_order, failed) = (AtomicBool::new(false), AtomicU64::new(0), Mutex::new(None::<String>));
    let min_count = || counts.iter().map(|c| c.load(Ordering::Acquire)).min().unwrap_or(0);
    let result = std::thread::scope(|s| -> Result<Events> {
        for (rank, (mut c, count)) in subs.into_iter().zip(&counts).enumerate() {
            let (stop, out_of_order, failed) = (&stop, &out_of_order, &failed);
            s.spawn(move || {
                let mut last = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    match c.recv_timeout(Some(Duration::from_millis(100))) {
                        Ok(m) if m.kind == MsgType::Event && m.topic == EVENT_TOPIC => {
                            if m.seq <= last {
                                out_of_order.fetch_add(1, Ordering::Relaxed);
                            }
                            last = m.seq;
                            count.fetch_add(1, Ordering::Release);
                        }
                        Ok(_) | Err(ClientError::Timeout) => {}
                        Err(e) => {
                            if let Ok(mut f) = failed.lock() {
                                f.get_or_insert(format!("the subscriber on rank {rank}: {e}"));
                            }
                            return;
                        }
                    }
                }
            });
        }
        let ev = Message::event(EVENT_TOPIC, payload.clone());
        let mut published = 0u64;
        let mut out = Events { from, window, rounds: Vec::new(), out_of_order: 0 };
        let run = |dur: Duration, published: &mut u64, publisher: &mut Client| -> Result<EventRound> {
            let before = inst.usage(pids)?;
            let usage = Usage::now();
            let start = Instant::now();
            let base = min_count();
            let mut delivered;
            loop {
                delivered = min_count();
                if start.elapsed() >= dur {
                    break;
                }
                // A broker that delivered an event twice must not make this wrap.
                let room = window.saturating_sub(published.saturating_sub(delivered)).min(32);
                if room == 0 {
                    std::thread::sleep(Duration::from_micros(100));
                    continue;
                }
                for _ in 0..room {
                    publisher.queue(&ev);
                }
                *published += room;
                publisher.flush()?;
            }
            let sample = usage.sample(delivered.saturating_sub(base), start.elapsed());
            let brokers = inst.usage(pids)?.since(before);
            // Drain what is in flight, outside the measurement; a lost event never arrives.
            let deadline = Instant::now() + RESPONSE_TIMEOUT;
            while min_count() < *published {
                if let Some(f) = failed.lock().ok().and_then(|f| f.clone()) {
                    return Err(BenchError(f));
                }
                if Instant::now() > deadline {
                    let got: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Acquire)).collect();
                    let short: Vec<String> = got
                        .iter()
                        .enumerate()
                        .filter(|(_, &n)| n < *published)
                        .map(|(r, n)| format!("rank {r}: {}", published.saturating_sub(*n)))
                        .collect();
                    return Err(BenchError(format!(
                        "events missing {RESPONSE_TIMEOUT:?} after the last was published ({})",
                        short.join(", ")
                    )));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(EventRound { sample, brokers })
        };
        let mut outcome = Ok(());
        if !warmup.is_zero() {
            outcome = run(warmup, &mut published, &mut publisher).map(drop);
        }
        for _ in 0..rounds {
            if outcome.is_err() {
                break;
            }
            match run(dur, &mut published, &mut publisher) {
                Ok(r) => out.rounds.push(r),
                Err(e) => outcome = Err(e),
            }
        }
        stop.store(true, Ordering::Relaxed);
        out.out_of_order = out_of_order.load(Ordering::Relaxed);
        outcome.map(|()| out)
    });
    drop(publisher);
    result
}

// ---------------------------------------------------------------------------------------
// A module on every rank.

/// Loads (and removes) on every rank, timed.
#[derive(Debug, Default)]
pub struct Loads {
    /// `modctl --rank all load`, when this modctl has `--rank` (None: it has not).
    pub modctl_all: Option<Vec<Duration>>,
    pub modctl_all_remove: Vec<Duration>,
    /// One `modctl load` on rank 0 alone: a modctl process's own cost.
    pub modctl_one: Vec<Duration>,
    /// `module.load` with nodeid 0..N-1, pipelined from one client on rank 0, and the removes.
    pub pipelined: Vec<Duration>,
    pub pipelined_remove: Vec<Duration>,
}

fn modctl_has_rank(modctl: &Path) -> bool {
    Command::new(modctl).arg("--help").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--rank"))
}

/// Run `modctl --uri URI ARGS...`, its output discarded; the time it took.
fn modctl(modctl: &Path, uri: &str, args: &[&str]) -> Result<Duration> {
    let began = Instant::now();
    let out = Command::new(modctl)
        .arg("--uri")
        .arg(uri)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| BenchError(format!("cannot run {}: {e}", modctl.display())))?;
    let took = began.elapsed();
    if !out.status.success() {
        return Err(BenchError(format!(
            "modctl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(took)
}

/// The same request to every rank, all in flight at once on `client`; the time until the
/// last answer. Any error answer fails it, naming the rank.
fn to_every_rank(client: &mut Client, size: u32, topic: &str, payload: &Bytes) -> Result<Duration> {
    let began = Instant::now();
    let mut tags = std::collections::HashMap::new();
    for rank in 0..size {
        let mut req = Message::request(topic, payload.clone());
        req.nodeid = rank;
        req.matchtag = client.next_matchtag();
        tags.insert(req.matchtag, rank);
        client.queue(&req);
    }
    client.flush()?;
    while !tags.is_empty() {
        let m = client.recv_timeout(Some(RESPONSE_TIMEOUT))?;
        if m.kind != MsgType::Response {
            continue;
        }
        let Some(rank) = tags.remove(&m.matchtag) else { continue };
        if m.is_error() {
            return Err(BenchError(format!("{topic} on rank {rank}: {}", m.errstr.as_deref().unwrap_or("(no text)"))));
        }
    }
    Ok(began.elapsed())
}

fn loads(inst: &Instance, modctl_bin: &Path, echo_so: &Path, runs: usize) -> Result<Loads> {
    let echo = std::path::absolute(echo_so).unwrap_or_else(|_| echo_so.to_owned()).display().to_string();
    let uri = inst.uri();
    let mut l = Loads::default();
    if modctl_has_rank(modctl_bin) {
        let mut all = Vec::new();
        for _ in 0..runs {
            all.push(modctl(modctl_bin, &uri, &["--rank", "all", "load", &echo, "--name", "sbload"])?);
            l.modctl_all_remove.push(modctl(modctl_bin, &uri, &["--rank", "all", "remove", "sbload"])?);
        }
        l.modctl_all = Some(all);
    }
    for _ in 0..if modctl_bin.is_file() { runs } else { 0 } {
        l.modctl_one.push(modctl(modctl_bin, &uri, &["load", &echo, "--name", "sbload1"])?);
        modctl(modctl_bin, &uri, &["remove", "sbload1"])?;
    }
    let mut client = inst.connect(0)?;
    let load = LoadArgs { path: echo.clone(), name: Some("sbload2".into()), ..Default::default() };
    let load = Message::encode_payload(&load).map_err(|e| BenchError(e.to_string()))?;
    let remove = RemoveArgs { name: "sbload2".into(), grace_ms: None, force: false };
    let remove = Message::encode_payload(&remove).map_err(|e| BenchError(e.to_string()))?;
    for _ in 0..runs {
        l.pipelined.push(to_every_rank(&mut client, inst.size, "module.load", &load)?);
        l.pipelined_remove.push(to_every_rank(&mut client, inst.size, "module.remove", &remove)?);
    }
    Ok(l)
}

// ---------------------------------------------------------------------------------------
// The whole group.

/// Everything measured, for the report.
pub struct Overlay<'a> {
    pub size: u32,
    pub fanout: u32,
    pub deepest: u32,
    pub depth: u32,
    pub body_len: usize,
    pub switchboard: String,
    pub starts: Vec<Duration>,
    /// Why each start that failed did (it was tried again).
    pub failed_starts: Vec<String>,
    pub stops: Vec<Duration>,
    pub idle: Option<Memory>,
    /// The rank processes' usage while nothing was asked of them, over the time given.
    pub idle_usage: Option<(Brokers, Duration)>,
    pub after: Option<Memory>,
    pub rows: Vec<Row<'a>>,
    pub events: Option<Events>,
    pub loads: Option<Loads>,
    pub modctl: String,
}

/// Run the wanted `overlay-*` rows against `switchboard --test-size` and print them.
pub fn run(opts: &Opts, switchboard: &Path, echo_so: &Path, payload: &Bytes) -> Result<()> {
    // sbbench holds a connection to every rank (the event subscribers) beside its floors and
    // the main table's broker: the same raise as the broker's own, which the ranks inherit.
    let _ = switchboard::runtime::raise_fd_limit();
    let size = if opts.quick { opts.overlay_size.min(16) } else { opts.overlay_size }.max(2);
    let fanout = opts.overlay_fanout.max(1);
    let topology = Topology { rank: 0, size, fanout };
    let deepest = (0..size).max_by_key(|&r| (topology.depth_of(r), r)).unwrap_or(0);
    let depth = topology.depth_of(deepest);
    let modctl_bin = switchboard.with_file_name("modctl");
    let dir = tempfile::Builder::new().prefix("sbbench-overlay").tempdir().map_err(err("temporary folder"))?;
    let site = dir.path().join("site.toml");
    std::fs::write(&site, site_text(echo_so)).map_err(err("the site file"))?;
    let cache = dir.path().join("cache");
    let (round, warmup, rounds) = (opts.round_time(), opts.warmup_time(), opts.rounds());
    let window = opts.window.max(1);

    // What the first link carries for the RPC rows' request: the floor sends exactly this.
    let mut probe = Message::request("echo.x", payload.clone());
    probe.nodeid = deepest;
    probe.matchtag = 1000;
    probe.route.push(1);
    let mut body = Vec::new();
    encode_frame_into(&probe, &mut body);

    let mut o = Overlay {
        size,
        fanout,
        deepest,
        depth,
        body_len: body.len(),
        switchboard: switchboard.display().to_string(),
        starts: Vec::new(),
        failed_starts: Vec::new(),
        stops: Vec::new(),
        idle: None,
        idle_usage: None,
        after: None,
        rows: Vec::new(),
        events: None,
        loads: None,
        modctl: modctl_bin.display().to_string(),
    };

    // Start (and stop) the instance a few times; the last one stays up for the other rows.
    let starts = if opts.wants("overlay-start") {
        if opts.quick {
            1
        } else {
            opts.overlay_starts.max(1)
        }
    } else {
        1
    };
    // A start that fails is tried again (at most START_TRIES in all) and counted, not timed.
    let start = |o: &mut Overlay| -> Result<Instance> {
        loop {
            match Instance::start(switchboard, &site, &cache, size, fanout) {
                Ok(inst) => {
                    o.starts.push(inst.started);
                    return Ok(inst);
                }
                Err(e) if o.failed_starts.len() + 1 < START_TRIES => o.failed_starts.push(e.0),
                Err(e) => return Err(e),
            }
        }
    };
    for _ in 1..starts {
        let mut inst = start(&mut o)?;
        o.stops.push(inst.stop()?);
    }
    let mut inst = start(&mut o)?;
    let ranks = inst.ranks()?;
    let pids: Vec<u32> = ranks.iter().map(|&(_, p)| p).collect();
    std::thread::sleep(SETTLE);
    o.idle = Some(Memory::read(&ranks)?);
    if opts.wants("overlay-rss") {
        let before = inst.usage(&pids)?;
        let began = Instant::now();
        std::thread::sleep(if opts.quick { SETTLE } else { IDLE });
        o.idle_usage = Some((inst.usage(&pids)?.since(before), began.elapsed()));
    }

    // The floor and RPC across the tree, interleaved.
    let mut rows: Vec<Row> = Vec::new();
    let mut add = |id: &'static str, what: String, pipe: bool, links: Option<u32>, run: Runner<'static>| {
        if opts.wants(id) {
            rows.push(Row { id, what, pipe, links, run, samples: Vec::new(), brokers: Vec::new(), error: None });
        }
    };
    if opts.wants("overlay-zmq-seq") {
        let mut f = ZmqFloor::start(body.clone())?;
        add(
            "overlay-zmq-seq",
            "floor: libzmq DEALER<->ROUTER, CURVE".into(),
            false,
            None,
            Box::new(move |d| f.sequential(d)),
        );
    }
    if opts.wants("overlay-zmq-pipe") {
        let mut g = ZmqFloor::start(body.clone())?;
        add(
            "overlay-zmq-pipe",
            format!("floor: libzmq, CURVE, {window} in flight"),
            true,
            None,
            Box::new(move |d| g.pipelined(window, d)),
        );
    }
    let targets = [
        ("overlay-rpc-seq-local", "overlay-rpc-pipe-local", 0u32),
        ("overlay-rpc-seq-rank1", "overlay-rpc-pipe-rank1", 1u32.min(size - 1)),
        ("overlay-rpc-seq-deepest", "overlay-rpc-pipe-deepest", deepest),
    ];
    for (seq_id, pipe_id, rank) in targets {
        let links = topology.depth_of(rank);
        let mut req = Message::request("echo.x", payload.clone());
        req.nodeid = rank;
        let name = format!("rank 0 -> echo on rank {rank} ({links} link{})", if links == 1 { "" } else { "s" });
        if opts.wants(seq_id) {
            let mut c = inst.connect(0)?;
            let r = req.clone();
            add(seq_id, name.clone(), false, Some(links), Box::new(move |d| sequential_requests(&mut c, &r, d)));
        }
        if opts.wants(pipe_id) {
            let mut c = inst.connect(0)?;
            let r = req.clone();
            let flush_every = opts.flush_every;
            add(
                pipe_id,
                format!("{name}, pipelined"),
                true,
                Some(links),
                Box::new(move |d| pipelined_requests(&mut c, r.clone(), window, flush_every, d)),
            );
        }
    }
    rows.sort_by_key(|r| r.pipe);
    for r_i in 0..rounds {
        for row in rows.iter_mut().filter(|r| r.error.is_none()) {
            if r_i == 0 && !warmup.is_zero() {
                if let Err(e) = (row.run)(warmup) {
                    row.error = Some(e.0);
                    continue;
                }
            }
            let before = inst.usage(&pids)?;
            match (row.run)(round) {
                Ok(s) => {
                    row.brokers.push(inst.usage(&pids)?.since(before));
                    if opts.verbose {
                        println!("  round {}  {:<26} {:>12.0}/s", r_i + 1, row.id, s.rate());
                    }
                    row.samples.push(s);
                }
                Err(e) => row.error = Some(e.0),
            }
        }
    }
    o.rows = rows;

    if opts.wants("overlay-events") {
        let plan = EventPlan { from: deepest, window: window as u64, rounds, dur: round, warmup };
        o.events = Some(events(&inst, &pids, payload, &plan)?);
    }
    if opts.wants("overlay-load") {
        o.loads = Some(loads(&inst, &modctl_bin, echo_so, if opts.quick { 1 } else { LOAD_RUNS })?);
    }
    std::thread::sleep(SETTLE);
    o.after = Some(Memory::read(&ranks)?);
    o.stops.push(inst.stop()?);
    report(opts, &o);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The report.

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn list(v: &[Duration]) -> String {
    v.iter().map(|d| format!("{:.0}", ms(*d))).collect::<Vec<_>>().join(" ")
}

fn verdict(pass: bool) -> &'static str {
    if pass {
        "PASS"
    } else {
        "MISS"
    }
}

fn report(opts: &Opts, o: &Overlay) {
    let mib = |b: f64| b / (1u64 << 20) as f64;
    println!();
    println!(
        "Overlay (issue 11): {} --test-size {} --fanout {} (its own processes), echo on every rank;",
        o.switchboard, o.size, o.fanout
    );
    println!(
        "deepest rank {} ({} links from rank 0); link message {} bytes (the request's frame, alone)",
        o.deepest, o.depth, o.body_len
    );
    if wanted_any(opts, &["overlay-start"]) && !o.starts.is_empty() {
        println!(
            "  start to every rank full, ms: median {:.0} ({}); stop (SIGINT, leaves first): median {:.0} ({})",
            ms(median(&o.starts)),
            list(&o.starts),
            ms(median(&o.stops)),
            list(&o.stops)
        );
    }
    for f in &o.failed_starts {
        println!("  a start FAILED and was tried again: {f}");
    }
    if opts.wants("overlay-rss") {
        for (label, m) in [("idle after start", &o.idle), ("after the rows below", &o.after)] {
            let Some(m) = m else { continue };
            let (lo, hi) = (m.rss.iter().min().copied().unwrap_or(0), m.rss.iter().max().copied().unwrap_or(0));
            println!(
                "  resident memory per broker, {label}: {:.1} MiB VmRSS (rank 0 {:.1}, min {:.1}, max {:.1}), \
                 anonymous {:.1} MiB, PSS {}, {:.1} threads; {} brokers {:.0} MiB VmRSS in all",
                mib(Memory::mean(&m.rss)),
                mib(m.rss.first().copied().unwrap_or(0) as f64),
                mib(lo as f64),
                mib(hi as f64),
                mib(Memory::mean(&m.anon)),
                m.pss.as_ref().map_or_else(|| "n/a".to_string(), |p| format!("{:.1} MiB", mib(Memory::mean(p)))),
                Memory::mean(&m.threads),
                m.rss.len(),
                mib(m.rss.iter().sum::<u64>() as f64)
            );
        }
    }

    if let (true, Some((b, over))) = (opts.wants("overlay-rss"), o.idle_usage) {
        let secs = over.as_secs_f64().max(1e-9);
        println!(
            "  idle: the {} brokers used {:.1}% of one CPU together ({:.0} us/s each) and switched {:.0} times/s \
             ({:.0} each), over {:.1} s",
            o.size,
            b.cpu.as_secs_f64() / secs * 100.0,
            b.cpu.as_secs_f64() * 1e6 / secs / o.size as f64,
            b.csw as f64 / secs,
            b.csw as f64 / secs / o.size as f64,
            secs
        );
    }

    if !o.rows.is_empty() {
        println!();
        println!(
            "  {:<25} {:<46} {:>10} {:>10} {:>8} {:>10} {:>8} {:>7}",
            "id", "path", "median/s", "best/s", "us/op", "cpu us/op", "csw/op", "vs zmq"
        );
        println!("  {}", "-".repeat(25 + 46 + 10 + 10 + 8 + 10 + 8 + 7 + 7));
        let floor_rate = |pipe: bool| {
            let id = if pipe { "overlay-zmq-pipe" } else { "overlay-zmq-seq" };
            o.rows.iter().find(|r| r.id == id).and_then(|r| r.median()).map(|(s, _)| s.rate())
        };
        for (i, r) in o.rows.iter().enumerate() {
            if i > 0 && o.rows[i - 1].pipe != r.pipe {
                println!();
            }
            if let Some(e) = &r.error {
                println!("  {:<25} {:<46} FAILED: {e}", r.id, r.what);
                continue;
            }
            let Some((s, brokers)) = r.median() else { continue };
            let rate = s.rate();
            let ops = s.ops.max(1) as f64;
            let ratio = floor_rate(r.pipe).map_or_else(|| "-".to_string(), |f| format!("{:.2}", rate / f));
            println!(
                "  {:<25} {:<46} {:>10} {:>10} {:>8.2} {:>10.2} {:>8.2} {:>7}",
                r.id,
                r.what,
                thousands(rate),
                thousands(r.best().unwrap_or(rate)),
                1e6 / rate,
                (s.cpu + brokers.cpu).as_secs_f64() * 1e6 / ops,
                (s.vcsw + s.ivcsw + brokers.csw) as f64 / ops,
                ratio
            );
        }
        println!("  cpu us/op, csw/op: CPU time and context switches of sbbench (client, floor threads) and of");
        println!("  every rank process (all threads) per round trip (/proc/PID/stat, 10 ms ticks;");
        println!("  /proc/PID/task/*/status); vs zmq: median / the libzmq floor's median (sequential, pipelined).");
        let per_link = |id_a: &str, id_b: &str| -> Option<f64> {
            let a = o.rows.iter().find(|r| r.id == id_a)?;
            let b = o.rows.iter().find(|r| r.id == id_b)?;
            let (sa, ca) = a.median()?;
            let (sb, cb) = b.median()?;
            let links = a.links?.checked_sub(b.links?).filter(|&l| l > 0)?;
            let per = |s: Sample, c: Brokers| (s.cpu + c.cpu).as_secs_f64() * 1e6 / s.ops.max(1) as f64;
            Some((per(sa, ca) - per(sb, cb)) / links as f64)
        };
        if let Some(c) = per_link("overlay-rpc-pipe-deepest", "overlay-rpc-pipe-rank1") {
            println!(
                "  CPU per link crossed both ways, pipelined ((deepest - rank 1) / {} links): {c:.2} us",
                o.depth.saturating_sub(1)
            );
        }
        if let Some(c) = per_link("overlay-rpc-pipe-rank1", "overlay-rpc-pipe-local") {
            println!("  CPU of the one link to rank 1 both ways, pipelined (rank 1 - local): {c:.2} us");
        }
        for (id, label) in [
            ("overlay-rpc-pipe-rank1", "rank 0 -> rank 1 RPC, pipelined"),
            ("overlay-rpc-pipe-deepest", "rank 0 -> deepest rank RPC, pipelined"),
        ] {
            let (Some(f), Some(r)) = (floor_rate(true), o.rows.iter().find(|r| r.id == id)) else { continue };
            let Some((s, _)) = r.median() else { continue };
            let links = r.links.unwrap_or(1).max(1);
            let per_round: Vec<String> = r
                .samples
                .iter()
                .zip(o.rows.iter().find(|x| x.id == "overlay-zmq-pipe").map_or(&[][..], |x| &x.samples[..]))
                .map(|(a, b)| format!("{:.2}", a.rate() * links as f64 / b.rate()))
                .collect();
            // Across several links the floor is as many libzmq links in a row, each round trip
            // crossing all of them on the same CPUs: the floor's rate / links.
            let chained = f / links as f64;
            let against = if links > 1 {
                format!("{links} libzmq links in a row (the floor / {links}, on the same CPUs)")
            } else {
                "the libzmq floor".to_string()
            };
            println!(
                "  {}  {label} >= {TARGET_PIPE_RATIO:.1} x {against}: {:.2} x ({} vs {}/s; round by round: {})",
                verdict(s.rate() / chained >= TARGET_PIPE_RATIO),
                s.rate() / chained,
                thousands(s.rate()),
                thousands(chained),
                per_round.join(" ")
            );
            if links > 1 {
                println!("        against one link's floor: {:.2} x", s.rate() / f);
            }
        }
    }

    if let Some(e) = &o.events {
        let mut v = e.rounds.clone();
        v.sort_by(|a, b| a.sample.rate().total_cmp(&b.sample.rate()));
        if let Some(m) = v.get(v.len() / 2) {
            let best = e.rounds.iter().map(|r| r.sample.rate()).fold(0.0, f64::max);
            let ops = m.sample.ops.max(1) as f64;
            println!();
            println!(
                "  overlay-events: published on rank {}, a subscriber on each of the {} ranks, at most {} ahead",
                e.from, o.size, e.window
            );
            println!(
                "    {} events/s delivered on every rank (median; best {}), {} deliveries/s",
                thousands(m.sample.rate()),
                thousands(best),
                thousands(m.sample.rate() * o.size as f64),
            );
            println!(
                "    per event: {:.1} us CPU in the brokers and {:.1} us in sbbench (publisher, {} subscriber \
                 threads); {:.1} context switches in the brokers, {:.1} in sbbench",
                m.brokers.cpu.as_secs_f64() * 1e6 / ops,
                m.sample.cpu.as_secs_f64() * 1e6 / ops,
                o.size,
                m.brokers.csw as f64 / ops,
                (m.sample.vcsw + m.sample.ivcsw) as f64 / ops
            );
            println!(
                "    every event reached every rank; {} arrived out of sequence order",
                thousands(e.out_of_order as f64)
            );
        }
    }

    if let Some(l) = &o.loads {
        println!();
        println!("  overlay-load (module.load of {} ranks' libecho.so as a new instance, then its remove):", o.size);
        match &l.modctl_all {
            Some(all) => {
                println!(
                    "    modctl --rank all load:   median {:.1} ms ({}); remove {:.1} ms",
                    ms(median(all)),
                    list(all),
                    ms(median(&l.modctl_all_remove))
                );
                println!(
                    "    {}  a load on all {} ranks with one modctl --rank all < {} ms: {:.1} ms",
                    verdict(median(all) < TARGET_LOAD_ALL),
                    o.size,
                    TARGET_LOAD_ALL.as_millis(),
                    ms(median(all))
                );
            }
            None if Path::new(&o.modctl).is_file() => {
                println!("    {} has no --rank: modctl --rank all not measured", o.modctl)
            }
            None => println!("    {} is not built (cargo build --release -p modctl): not measured", o.modctl),
        }
        println!(
            "    {} module.load, nodeid 0..{}, pipelined from one client: median {:.1} ms ({}); remove {:.1} ms",
            o.size,
            o.size - 1,
            ms(median(&l.pipelined)),
            l.pipelined.iter().map(|d| format!("{:.1}", ms(*d))).collect::<Vec<_>>().join(" "),
            ms(median(&l.pipelined_remove))
        );
        if !l.modctl_one.is_empty() {
            println!("    floor: one modctl load on rank 0 alone: median {:.1} ms", ms(median(&l.modctl_one)));
        }
        if l.modctl_all.is_none() {
            println!(
                "    {}  a load on all {} ranks (the pipelined requests modctl --rank all would send) < {} ms: {:.1} ms",
                verdict(median(&l.pipelined) < TARGET_LOAD_ALL),
                o.size,
                TARGET_LOAD_ALL.as_millis(),
                ms(median(&l.pipelined))
            );
        }
    }
    if wanted_any(opts, &["overlay-start"]) && !o.starts.is_empty() {
        println!(
            "  {}  start of {} brokers until every rank is full < {} ms: {:.0} ms (median)",
            verdict(median(&o.starts) < TARGET_LOAD_ALL),
            o.size,
            TARGET_LOAD_ALL.as_millis(),
            ms(median(&o.starts))
        );
    }
}

fn wanted_any(opts: &Opts, ids: &[&str]) -> bool {
    ids.iter().any(|id| opts.wants(id))
}
