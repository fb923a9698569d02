//! # switchboard-bench
//!
//! `sbbench` measures Switchboard's message path and prints one table: the floors (a raw
//! Unix-socket echo with the broker's framing and no broker; a thread-to-thread channel
//! ping-pong), then RPC through an in-process broker: a client to the native `echo` module
//! and to `broker.ping`, sequential and pipelined, and module -> module RPC measured by the
//! `benchdriver` module. Ratios to the floors and the targets are printed beside
//! them. Groups of their own follow the table: module loading, many clients, the overlay
//! (`overlay`: an instance of brokers in a tree, against a raw libzmq floor), site files and
//! module churn. It measures; it asserts nothing (the exit status is 0 whether targets are
//! met or not, non-zero only when a benchmark could not run).
//!
//! The rounds of all benchmarks are interleaved (round 1 of each, then round 2 of each...),
//! so that noise from other work on the machine spreads over floors and broker alike; the
//! table shows the median and the best round.

pub mod churn;
pub mod clients;
pub mod fixture;
pub mod floors;
pub mod measure;
pub mod native_load;
pub mod overlay;
mod report;
pub mod site;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use fixture::{BrokerFixture, DriverBench};
use floors::{ChanEcho, RawEcho};
use measure::{client_pipelined, client_sequential, BenchError, Result, Sample};
use switchboard_client::Client;

/// The targets.
pub const TARGET_SEQ_RATIO: f64 = 0.6;
pub const TARGET_PIPELINED_RATE: f64 = 300_000.0;
/// Rust process echo, pipelined, against native echo (issue 3).
pub const TARGET_PROCESS_RATIO: f64 = 0.5;
/// WASM echo, pipelined, against native echo (issue 4).
pub const TARGET_WASM_RATIO: f64 = 0.7;
/// A WASM module's load with its compiled code cached (issue 4).
pub const TARGET_WARM_LOAD_MS: f64 = 5.0;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "sbbench",
    about = "Measure Switchboard's message path against a raw-socket and a channel floor",
    after_help = "Build first: cargo build --release --workspace && ./target/release/sbbench"
)]
pub struct Opts {
    /// A short smoke run: one round of 0.25 s per benchmark.
    #[arg(long)]
    pub quick: bool,
    /// Measured rounds per benchmark (the table shows the median and the best).
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Seconds per round.
    #[arg(long, default_value_t = 0.6)]
    pub secs: f64,
    /// Seconds of unmeasured warm-up before each benchmark's first round.
    #[arg(long, default_value_t = 0.2)]
    pub warmup: f64,
    /// Requests in flight in the pipelined benchmarks.
    #[arg(long, default_value_t = 1000)]
    pub window: usize,
    /// Pipelined socket clients write their queued requests once per this many responses.
    #[arg(long, default_value_t = 32)]
    pub flush_every: usize,
    /// Bytes of msgpack payload per request.
    #[arg(long, default_value_t = 16)]
    pub payload: usize,
    /// Run only the benchmarks whose id starts with one of these (comma-separated),
    /// e.g. `--only echo-seq,raw`.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Where libecho.so and libbenchdriver.so are (default: next to the executable).
    #[arg(long)]
    pub module_dir: Option<PathBuf>,
    /// Print every round's figure as it is measured.
    #[arg(short, long)]
    pub verbose: bool,
    /// Module churn: load, call, remove cycles per broker environment (`--quick`: 150).
    #[arg(long, default_value_t = 1500)]
    pub churn_cycles: usize,
    /// Module churn: one row per use, the broker's environment changed by `NAME=VALUE` and
    /// `-NAME` words, e.g. `--churn-env 'MALLOC_ARENA_MAX=1'` (default: `-MALLOC_ARENA_MAX`
    /// and `MALLOC_ARENA_MAX=<8 x cpus>`, glibc's own limit).
    #[arg(long, allow_hyphen_values = true)]
    pub churn_env: Vec<String>,
    /// The `switchboard` binary run by the site, churn and clients benchmarks (default:
    /// beside the modules).
    #[arg(long)]
    pub switchboard: Option<PathBuf>,
    /// Many clients: the most connected at once in `clients-connect` (steps 0, a tenth of
    /// it, all of it; `--quick`: at most 1,000).
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Many clients: how many `clients-active` drives at once (`--quick`: at most 100).
    #[arg(long, default_value_t = 1000)]
    pub active_clients: usize,
    /// Many clients: requests each `clients-active` client keeps in flight.
    #[arg(long, default_value_t = 10)]
    pub active_window: usize,
    /// Overlay: brokers in the `switchboard --test-size` instance (`--quick`: at most 16).
    #[arg(long, default_value_t = 64)]
    pub overlay_size: u32,
    /// Overlay: the tree's fanout.
    #[arg(long, default_value_t = 2)]
    pub overlay_fanout: u32,
    /// Overlay: how many times the instance is started for `overlay-start` (`--quick`: 1).
    #[arg(long, default_value_t = 3)]
    pub overlay_starts: usize,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    pub bench: bool,
}

impl Opts {
    pub(crate) fn round_time(&self) -> Duration {
        Duration::from_secs_f64(if self.quick { 0.25 } else { self.secs.max(0.01) })
    }
    pub(crate) fn warmup_time(&self) -> Duration {
        Duration::from_secs_f64(if self.quick { 0.05 } else { self.warmup.max(0.0) })
    }
    pub(crate) fn rounds(&self) -> usize {
        if self.quick {
            1
        } else {
            self.rounds.max(1)
        }
    }
    pub(crate) fn wants(&self, id: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| id.starts_with(p.as_str()))
    }
}

/// Sequential (one in flight) or pipelined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Seq,
    Pipe,
}

type Runner<'a> = Box<dyn FnMut(Duration) -> Result<Sample> + 'a>;

pub struct Bench<'a> {
    pub id: &'static str,
    pub what: &'static str,
    pub mode: Mode,
    run: Runner<'a>,
    pub samples: Vec<Sample>,
    pub error: Option<String>,
}

/// Parse the command line and run; the process exit status.
pub fn main() -> i32 {
    let opts = Opts::parse();
    match run(&opts) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("sbbench: {e}");
            2
        }
    }
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> BenchError {
    move |e| BenchError(format!("{what}: {e}"))
}

/// Run every wanted benchmark and print the report. `Ok(false)` if one of them failed.
pub fn run(opts: &Opts) -> Result<bool> {
    let payload = measure::payload(opts.payload);
    let window = opts.window.max(1);
    let flush_every = opts.flush_every;
    let modules = fixture::module_dir(opts.module_dir.as_deref())?;

    let raw_dir = tempfile::Builder::new().prefix("sbbench-raw").tempdir().map_err(io("temporary folder"))?;
    let raw = RawEcho::start(&raw_dir.path().join("raw.sock")).map_err(io("raw echo server"))?;
    let raw_client = || -> Result<Client> { Ok(Client::connect(raw.path())?) };
    let python = fixture::python_echo();
    let broker = BrokerFixture::start(&modules)?;
    // The same echo as the other kinds of module; a missing one is skipped and said so.
    let mut skipped = Vec::new();
    let mut extra = Vec::new();
    for (name, path, how) in [
        ("iecho", Some(broker.echo_so.clone()), "switchboard-native-host: cargo build --release -p switchboard"),
        ("pecho", fixture::process_echo(&modules), "the `echo` binary: cargo build --release --workspace"),
        ("pyecho", python, "the Python SDK in .venv: python3 -m venv .venv && .venv/bin/pip install ./sdk/python"),
        (
            "wecho",
            fixture::wasm_echo(&modules),
            "echo.wasm: cargo build --release --target wasm32-wasip2 -p switchboard-echo --lib",
        ),
    ] {
        match path {
            Some(p) => match broker.load_as(name, &p, name == "iecho") {
                Ok(()) => extra.push((name, p)),
                Err(e) => skipped.push(format!("{name}: {}", e.0)),
            },
            None => skipped.push(format!("{name}: not built; needs {how}")),
        }
    }

    let mut benches: Vec<Bench> = Vec::new();
    let mut add = |id: &'static str, what: &'static str, mode: Mode, run: Runner<'static>| {
        if opts.wants(id) {
            benches.push(Bench { id, what, mode, run, samples: Vec::new(), error: None });
        }
    };

    // Floors.
    let mut chan = ChanEcho::start(&payload).map_err(io("channel echo thread"))?;
    let mut chan2 = ChanEcho::start(&payload).map_err(io("channel echo thread"))?;
    add("chan-seq", "floor: channel ping-pong (2 threads)", Mode::Seq, Box::new(move |d| chan.sequential(d)));
    add("chan-pipe", "floor: channel, window in flight", Mode::Pipe, Box::new(move |d| chan2.pipelined(window, d)));
    let mut c = raw_client()?;
    let p = payload.clone();
    add(
        "raw-seq",
        "floor: raw socket echo (framing, no broker)",
        Mode::Seq,
        Box::new(move |d| client_sequential(&mut c, "echo.x", &p, d)),
    );
    let mut c = raw_client()?;
    let p = payload.clone();
    add(
        "raw-pipe",
        "floor: raw socket echo, pipelined",
        Mode::Pipe,
        Box::new(move |d| client_pipelined(&mut c, "echo.x", &p, window, flush_every, d)),
    );

    // Through the broker, from a client on its socket: native echo, broker.ping, and the same
    // echo as a Rust process, a Python process and a WASM component (those that loaded).
    for (module, topic, seq_id, pipe_id, seq_what, pipe_what) in [
        (
            "echo",
            "echo.x",
            "echo-seq",
            "echo-pipe",
            "client -> broker -> native echo",
            "client -> broker -> echo, pipelined",
        ),
        ("broker", "broker.ping", "ping-seq", "ping-pipe", "client -> broker.ping", "client -> broker.ping, pipelined"),
        (
            "iecho",
            "iecho.x",
            "iecho-seq",
            "iecho-pipe",
            "client -> broker -> isolated native echo",
            "isolated native echo, pipelined",
        ),
        (
            "pecho",
            "pecho.x",
            "pecho-seq",
            "pecho-pipe",
            "client -> broker -> Rust process echo",
            "Rust process echo, pipelined",
        ),
        (
            "pyecho",
            "pyecho.x",
            "pyecho-seq",
            "pyecho-pipe",
            "client -> broker -> Python echo",
            "Python process echo, pipelined",
        ),
        ("wecho", "wecho.x", "wecho-seq", "wecho-pipe", "client -> broker -> WASM echo", "WASM echo, pipelined"),
    ] {
        let loaded = matches!(module, "echo" | "broker") || extra.iter().any(|(n, _)| *n == module);
        if !loaded {
            continue;
        }
        let mut c = broker.connect()?;
        let p = payload.clone();
        add(seq_id, seq_what, Mode::Seq, Box::new(move |d| client_sequential(&mut c, topic, &p, d)));
        let mut c = broker.connect()?;
        let p = payload.clone();
        add(
            pipe_id,
            pipe_what,
            Mode::Pipe,
            Box::new(move |d| client_pipelined(&mut c, topic, &p, window, flush_every, d)),
        );
    }

    // Module -> module, measured inside the broker by benchdriver.
    for (target, seq_id, pipe_id, seq_what, pipe_what) in [
        (
            "echo.x",
            "mod-echo-seq",
            "mod-echo-pipe",
            "module -> native echo (rpc_raw)",
            "module -> echo, pipelined (send/recv)",
        ),
        (
            "broker.ping",
            "mod-ping-seq",
            "mod-ping-pipe",
            "module -> broker.ping (rpc_raw)",
            "module -> broker.ping, pipelined",
        ),
    ] {
        let mut b = DriverBench::new(broker.connect()?, target, 1, payload.clone());
        add(seq_id, seq_what, Mode::Seq, Box::new(move |d| b.run(d)));
        let mut b = DriverBench::new(broker.connect()?, target, window as u32, payload.clone());
        add(pipe_id, pipe_what, Mode::Pipe, Box::new(move |d| b.run(d)));
    }

    // All sequential benchmarks, then all pipelined ones, each group in the order above: a
    // broker figure runs right after the floor it is compared with.
    benches.sort_by_key(|b| b.mode == Mode::Pipe);
    if benches.is_empty()
        && !["site", "churn", "wasm-load", "native-load", "clients-connect", "clients-active"]
            .iter()
            .any(|id| opts.wants(id))
        && !overlay::wanted(opts)
    {
        return Err(BenchError(format!("--only {} matches no benchmark", opts.only.join(","))));
    }

    report::header(opts, &modules, &broker, &payload, window, flush_every);
    let (round, warmup, rounds) = (opts.round_time(), opts.warmup_time(), opts.rounds());
    for r in 0..rounds {
        for b in benches.iter_mut().filter(|b| b.error.is_none()) {
            if r == 0 && !warmup.is_zero() {
                if let Err(e) = (b.run)(warmup) {
                    b.error = Some(e.0);
                    continue;
                }
            }
            match (b.run)(round) {
                Ok(s) => {
                    if opts.verbose {
                        println!(
                            "  round {}  {:<14} {:>12.0}/s  ({} ops in {:.3} s)",
                            r + 1,
                            b.id,
                            s.rate(),
                            s.ops,
                            s.elapsed.as_secs_f64()
                        );
                    }
                    b.samples.push(s)
                }
                Err(e) => b.error = Some(e.0),
            }
        }
    }
    if opts.verbose {
        println!();
    }
    if !benches.is_empty() {
        report::table(&benches, window);
    }
    for s in &skipped {
        println!("  skipped  {s}");
    }
    let wasm = extra.iter().find(|(n, _)| *n == "wecho").map(|(_, p)| p.clone());
    if let (Some(path), true) = (wasm, opts.wants("wasm-load")) {
        report::wasm_loads(&fixture::wasm_loads(&broker, &path, if opts.quick { 3 } else { 10 })?);
    }
    if opts.wants("native-load") {
        native_load::report(&native_load::measure(&broker, opts)?, &broker.echo_so);
    }
    let switchboard = opts.switchboard.clone().unwrap_or_else(|| modules.join("switchboard"));
    if opts.wants("clients-connect") || opts.wants("clients-active") {
        clients::run(opts, &switchboard, &broker.echo_so, &payload)?;
    }
    if overlay::wanted(opts) {
        overlay::run(opts, &switchboard, &broker.echo_so, &payload)?;
    }
    if opts.wants("site") {
        let files = site::files(
            &broker.echo_so,
            fixture::process_echo(&modules),
            fixture::wasm_echo(&modules),
            if opts.quick { 20 } else { 100 },
        );
        let mut rows = Vec::new();
        for (what, paths) in files {
            rows.push(site::measure(&switchboard, &what, &paths, if opts.quick { 1 } else { 3 })?);
        }
        report::site(&rows);
    }
    if opts.wants("churn") {
        let (kinds, missing) =
            churn::kinds(&broker.echo_so, fixture::process_echo(&modules), fixture::wasm_echo(&modules));
        let variants = if opts.churn_env.is_empty() {
            churn::Variant::defaults()
        } else {
            opts.churn_env.iter().map(|s| churn::Variant::parse(s)).collect::<Result<_>>()?
        };
        let cycles = if opts.quick { 150 } else { opts.churn_cycles.max(1) };
        let mut rows = Vec::new();
        for v in &variants {
            rows.push(churn::measure(&switchboard, v, &kinds, cycles, cycles.div_ceil(6))?);
        }
        report::churn(&rows, &kinds, &missing);
    }
    let ok = benches.iter().all(|b| b.error.is_none());
    drop(benches);
    drop(broker);
    drop(raw);
    Ok(ok)
}

/// Send `sig` to process `pid`, one the benchmark started; one already gone is no error.
pub(crate) fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}
