//! The `clients-*` rows (issue 10): many clients on one broker, which runs as its own
//! process (the real `switchboard` binary) so that its threads and resident memory are its
//! own, read from `/proc/PID/task` and `/proc/PID/status`.
//!
//! - `clients-connect`: 0, then a tenth of `--clients`, then `--clients` (10,000) clients
//!   connected at once. At each step: how long the new clients took to connect, how long one
//!   `broker.ping` across all of them takes (every client sends, then every answer is read),
//!   and the broker's threads and resident memory once they are idle. A client the broker
//!   refuses (the broker before issue 10 has a connection limit) is counted, not an error.
//! - `clients-active`: `--active-clients` (1,000) clients each keeping `--active-window` (10)
//!   requests in flight to the native echo module, for the usual rounds, against one client
//!   with echo-pipe's window and loop on the same broker in the same rounds.
//!
//! The clients are non-blocking sockets driven by epoll from one thread (`clients-connect`)
//! or one thread per CPU (`clients-active`): the benchmark needs no thread per client, only a
//! descriptor, and raises its own `RLIMIT_NOFILE` soft limit to the hard limit (the broker
//! inherits it). It asserts nothing: the target lines are informational.

// Unsafe code here: drives thousands of sockets through raw epoll, and reads clock ticks.
#![allow(unsafe_code)]

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use switchboard_client::Client;
use switchboard_protocol::{
    decode_frame, encode_frame_into, mgmt::LoadArgs, FrameReader, Message, MsgType, DEFAULT_MAX_FRAME,
};

use crate::churn::Broker;
use crate::measure::{client_pipelined, BenchError, Result, Sample, Usage, RESPONSE_TIMEOUT};
use crate::report::thousands;
use crate::Opts;

/// Resident memory an idle connection may cost the broker (issue 10).
pub const TARGET_RSS_PER_CONNECTION: f64 = 8.0 * 1024.0;
/// Descriptors the benchmark keeps for itself beyond one per client.
const FD_RESERVE: u64 = 128;
/// `broker.ping` rounds across all clients at each step, after the first.
const PING_ROUNDS: usize = 3;
/// How long the broker is left alone before its memory and threads are read.
const SETTLE: Duration = Duration::from_millis(300);

fn io_err(what: &'static str) -> impl Fn(io::Error) -> BenchError {
    move |e| BenchError(format!("{what}: {e}"))
}

/// Run the wanted `clients-*` rows against `switchboard` (the binary) and print them.
pub fn run(opts: &Opts, switchboard: &Path, echo_so: &Path, payload: &Bytes) -> Result<()> {
    // The same raise as the broker's own; the broker started here inherits it.
    let fds = switchboard::runtime::raise_fd_limit().unwrap_or(u64::MAX);
    if opts.wants("clients-connect") {
        let max = if opts.quick { opts.clients.min(1000) } else { opts.clients };
        report_connections(&connections(switchboard, max, fds)?);
    }
    if opts.wants("clients-active") {
        let clients = if opts.quick { opts.active_clients.min(100) } else { opts.active_clients };
        report_active(&active(opts, switchboard, echo_so, payload, clients.max(1))?);
    }
    Ok(())
}

/// Start `switchboard` on a socket of its own, logging only errors (a broker that refuses
/// thousands of clients warns about each).
fn start_broker(switchboard: &Path, dir: &Path) -> Result<(Broker, std::path::PathBuf)> {
    let socket = dir.join("b.sock");
    let mut cmd = Command::new(switchboard);
    cmd.args(["--log", "error"]).env_remove("SWITCHBOARD_MAX_CLIENTS");
    let broker = Broker::start(cmd, &socket, &dir.join("cache"))?;
    Ok((broker, socket))
}

// ---------------------------------------------------------------------------------------
// The broker process as /proc shows it.

/// The broker's threads and resident memory at one moment.
#[derive(Debug, Clone, Default)]
pub struct ProcPoint {
    pub threads: u64,
    /// Threads by name (`/proc/PID/task/TID/comm`), most numerous first.
    pub names: Vec<(String, u64)>,
    /// VmRSS and RssAnon, in bytes.
    pub rss: u64,
    pub rss_anon: u64,
    /// utime + stime of the whole process so far.
    pub cpu: Duration,
}

impl ProcPoint {
    pub fn read(pid: u32) -> Result<ProcPoint> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(io_err("broker status"))?;
        let kib = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.split_whitespace().next()?.parse::<u64>().ok())
                .map(|k| k * 1024)
                .ok_or_else(|| BenchError(format!("/proc/{pid}/status has no {name}")))
        };
        let mut names: Vec<(String, u64)> = Vec::new();
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(io_err("broker threads"))?;
        for task in tasks.flatten() {
            // A thread that ends while it is listed has no comm any more: not counted.
            let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) else { continue };
            let comm = comm.trim().to_string();
            match names.iter_mut().find(|(n, _)| *n == comm) {
                Some((_, k)) => *k += 1,
                None => names.push((comm, 1)),
            }
        }
        names.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Ok(ProcPoint {
            threads: names.iter().map(|(_, k)| k).sum(),
            names,
            rss: kib("VmRSS:")?,
            rss_anon: kib("RssAnon:")?,
            cpu: proc_cpu(pid)?,
        })
    }

    /// `sb-io 2, switchboard 1, ...`.
    pub fn names_line(&self) -> String {
        self.names.iter().map(|(n, k)| format!("{n} {k}")).collect::<Vec<_>>().join(", ")
    }
}

/// CPU time (user + system) of process `pid` so far, from /proc/PID/stat.
pub(crate) fn proc_cpu(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(io_err("broker stat"))?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let field = |i: usize| rest.split_whitespace().nth(i).and_then(|v| v.parse::<u64>().ok());
    let ticks = field(11).zip(field(12)).map(|(u, s)| u + s);
    // SAFETY: sysconf has no side effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks
        .map(|t| Duration::from_secs_f64(t as f64 / hz as f64))
        .ok_or_else(|| BenchError(format!("/proc/{pid}/stat: no utime and stime")))
}

// ---------------------------------------------------------------------------------------
// Non-blocking clients and epoll.

/// An epoll instance; the token of each socket is its index in the caller's slice.
struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    fn new() -> Result<Epoll> {
        // SAFETY: epoll_create1 returns a new descriptor or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io_err("epoll_create1")(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Epoll { fd, events: vec![libc::epoll_event { events: 0, u64: 0 }; 1024] })
    }

    fn ctl(&self, op: i32, fd: RawFd, events: u32, token: usize) -> Result<()> {
        let mut ev = libc::epoll_event { events, u64: token as u64 };
        // SAFETY: `ev` outlives the call; the kernel copies it.
        if unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) } < 0 {
            return Err(io_err("epoll_ctl")(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Wait up to `timeout` for events; (token, events) of each, in `self.ready()`.
    fn wait(&mut self, timeout: Duration) -> Result<usize> {
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: the kernel writes at most `events.len()` entries into the buffer.
        let n =
            unsafe { libc::epoll_wait(self.fd.as_raw_fd(), self.events.as_mut_ptr(), self.events.len() as i32, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok(0) } else { Err(io_err("epoll_wait")(e)) };
        }
        Ok(n as usize)
    }

    fn ready(&self, i: usize) -> (usize, u32) {
        let ev = self.events[i];
        (ev.u64 as usize, ev.events)
    }
}

const IN: u32 = libc::EPOLLIN as u32;
const OUT: u32 = libc::EPOLLOUT as u32;
const HUP_ERR: u32 = (libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLRDHUP) as u32;

/// One client: a non-blocking socket with its unparsed input and unsent output.
struct Conn {
    stream: UnixStream,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    next_tag: u32,
    /// Registered for EPOLLOUT too (output is waiting for room).
    want_out: bool,
    /// Why the broker no longer serves it, once it does not.
    gone: Option<String>,
    /// Requests sent and not yet answered.
    in_flight: usize,
}

impl Conn {
    /// A blocking connect (it waits while the listen backlog is full), then non-blocking.
    fn connect(path: &Path) -> io::Result<Conn> {
        let stream = UnixStream::connect(path)?;
        stream.set_nonblocking(true)?;
        Ok(Conn {
            stream,
            rbuf: BytesMut::new(),
            wbuf: Vec::new(),
            next_tag: 1,
            want_out: false,
            gone: None,
            in_flight: 0,
        })
    }

    fn queue(&mut self, req: &mut Message) {
        req.matchtag = self.next_tag;
        self.next_tag = self.next_tag.wrapping_add(1).max(1);
        encode_frame_into(req, &mut self.wbuf);
        self.in_flight += 1;
    }

    /// Write what the socket takes now; keep the rest and ask for EPOLLOUT until it is out.
    /// A write error leaves the output queued: the read side sees why (refusal, EOF).
    fn flush(&mut self, epoll: &Epoll, token: usize) -> Result<()> {
        while !self.wbuf.is_empty() {
            match (&self.stream).write(&self.wbuf) {
                Ok(n) => drop(self.wbuf.drain(..n)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let want = !self.wbuf.is_empty();
        if want != self.want_out {
            self.want_out = want;
            let events = if want { IN | OUT } else { IN };
            epoll.ctl(libc::EPOLL_CTL_MOD, self.stream.as_raw_fd(), events, token)?;
        }
        Ok(())
    }

    /// Read everything the socket has now into `rbuf`; false once the broker has closed it.
    fn fill(&mut self, scratch: &mut [u8]) -> bool {
        loop {
            match (&self.stream).read(scratch) {
                Ok(0) => return false,
                Ok(n) => self.rbuf.extend_from_slice(&scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
    }

    fn next_message(&mut self, reader: &FrameReader) -> Result<Option<Message>> {
        let body = reader.next_frame(&mut self.rbuf).map_err(|e| BenchError(format!("bad frame: {e}")))?;
        body.map(|b| decode_frame(b).map_err(|e| BenchError(format!("bad frame: {e}")))).transpose()
    }
}

/// The refusal a control message with an errno carries (RFC 1 §5), if it is one.
fn refusal(msg: &Message) -> Option<String> {
    (msg.kind == MsgType::Control && msg.is_error())
        .then(|| msg.errstr.clone().unwrap_or_else(|| format!("refused with errno {}", msg.errnum)))
}

// ---------------------------------------------------------------------------------------
// clients-connect

/// One step: the clients connected at once, and the broker with them.
#[derive(Debug, Clone, Default)]
pub struct Step {
    pub clients: usize,
    /// Clients that answered, and why the first of the others was not served.
    pub served: usize,
    pub refused: Option<String>,
    /// The connects made at this step (from the previous step's count to this one).
    pub connect: Duration,
    pub connects: usize,
    /// The first `broker.ping` across all of them (the broker may still be accepting).
    pub first_ping: Duration,
    /// Later pings across all of them.
    pub pings: Vec<Duration>,
    pub broker: ProcPoint,
}

pub struct Connections {
    pub steps: Vec<Step>,
    /// The clients asked for, and the soft RLIMIT_NOFILE that was reached.
    pub wanted: usize,
    pub fd_limit: u64,
    pub switchboard: String,
}

/// Connect up to `max` clients in three steps (0, max/10, max) and measure each.
pub fn connections(switchboard: &Path, max: usize, fd_limit: u64) -> Result<Connections> {
    let open = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    let room = fd_limit.saturating_sub(open + FD_RESERVE) as usize;
    let wanted = max;
    let max = max.min(room).max(1);
    let dir = tempfile::Builder::new().prefix("sbbench-clients").tempdir().map_err(io_err("temporary folder"))?;
    let (mut broker, socket) = start_broker(switchboard, dir.path())?;
    let pid = broker.pid()?;
    let mut epoll = Epoll::new()?;
    let reader = FrameReader::new(DEFAULT_MAX_FRAME);
    let mut scratch = vec![0u8; 64 << 10];
    let mut conns: Vec<Conn> = Vec::new();
    let mut steps = Vec::new();
    let mut tag = 0u32;
    let mut targets = vec![0, max / 10, max];
    targets.dedup();
    for target in targets {
        let mut step = Step { clients: target, ..Step::default() };
        let began = Instant::now();
        let before = conns.len();
        while conns.len() < target {
            let c = Conn::connect(&socket)
                .map_err(|e| BenchError(format!("client {} of {target} could not connect: {e}", conns.len() + 1)))?;
            conns.push(c);
        }
        step.connect = began.elapsed();
        step.connects = target - before;
        for (i, c) in conns.iter().enumerate().skip(before) {
            epoll.ctl(libc::EPOLL_CTL_ADD, c.stream.as_raw_fd(), IN, i)?;
        }
        if target > 0 {
            tag += 1;
            step.first_ping = ping_all(&mut conns, &mut epoll, &reader, &mut scratch, tag)?;
            for _ in 0..PING_ROUNDS {
                tag += 1;
                step.pings.push(ping_all(&mut conns, &mut epoll, &reader, &mut scratch, tag)?);
            }
        }
        step.served = conns.iter().filter(|c| c.gone.is_none()).count();
        step.refused = conns.iter().find_map(|c| c.gone.clone());
        std::thread::sleep(SETTLE);
        step.broker = ProcPoint::read(pid)?;
        steps.push(step);
    }
    drop(conns);
    broker.stop()?;
    Ok(Connections { steps, wanted, fd_limit, switchboard: switchboard.display().to_string() })
}

/// One `broker.ping` from every client still served (all sent, then all read); its wall time.
fn ping_all(
    conns: &mut [Conn],
    epoll: &mut Epoll,
    reader: &FrameReader,
    scratch: &mut [u8],
    tag: u32,
) -> Result<Duration> {
    let mut ping = Message::request("broker.ping", Bytes::from_static(&[0x80]));
    let began = Instant::now();
    let mut waiting = 0usize;
    for (i, c) in conns.iter_mut().enumerate().filter(|(_, c)| c.gone.is_none()) {
        c.next_tag = tag;
        c.queue(&mut ping);
        c.flush(epoll, i)?;
        waiting += 1;
    }
    let total = waiting;
    let mut last_event = Instant::now();
    while waiting > 0 {
        let n = epoll.wait(Duration::from_millis(100))?;
        if n == 0 {
            if last_event.elapsed() > RESPONSE_TIMEOUT {
                return Err(BenchError(format!(
                    "broker.ping: {waiting} of {total} clients unanswered after {RESPONSE_TIMEOUT:?}"
                )));
            }
            continue;
        }
        last_event = Instant::now();
        for k in 0..n {
            let (i, events) = epoll.ready(k);
            let c = &mut conns[i];
            if c.gone.is_some() {
                continue;
            }
            if events & OUT != 0 {
                c.flush(epoll, i)?;
            }
            if events & (IN | HUP_ERR) == 0 {
                continue;
            }
            let open = c.fill(scratch);
            while let Some(msg) = c.next_message(reader)? {
                if let Some(why) = refusal(&msg) {
                    c.gone.get_or_insert(why);
                } else if msg.kind == MsgType::Response && msg.matchtag == tag {
                    if msg.is_error() {
                        return Err(BenchError(format!("broker.ping: {}", msg.errstr.unwrap_or_default())));
                    }
                    c.in_flight = 0;
                    waiting -= 1;
                }
            }
            if !open {
                c.gone.get_or_insert_with(|| "the broker closed the connection".into());
            }
            if c.gone.is_some() {
                if c.in_flight > 0 {
                    c.in_flight = 0;
                    waiting -= 1;
                }
                epoll.ctl(libc::EPOLL_CTL_DEL, c.stream.as_raw_fd(), 0, i)?;
            }
        }
    }
    Ok(began.elapsed())
}

fn report_connections(r: &Connections) {
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!();
    println!("Many clients (clients-connect; {} as its own process, each client one idle socket", r.switchboard);
    println!("of this process, driven by epoll from one thread; soft RLIMIT_NOFILE {}):", r.fd_limit);
    println!(
        "  {:>8} {:>8} {:>11} {:>12} {:>12} {:>8} {:>9} {:>9}",
        "clients", "served", "connect ms", "1st ping ms", "ping ms", "threads", "RSS MiB", "anon MiB"
    );
    for s in &r.steps {
        let ping = if s.pings.is_empty() { "-".to_string() } else { format!("{:.1}", ms(median(&s.pings))) };
        let (connect, first) = if s.clients == 0 {
            ("-".to_string(), "-".to_string())
        } else {
            (format!("{:.1}", ms(s.connect)), format!("{:.1}", ms(s.first_ping)))
        };
        println!(
            "  {:>8} {:>8} {:>11} {:>12} {:>12} {:>8} {:>9.1} {:>9.1}",
            thousands(s.clients as f64),
            thousands(s.served as f64),
            connect,
            first,
            ping,
            s.broker.threads,
            mib(s.broker.rss),
            mib(s.broker.rss_anon)
        );
    }
    if r.steps.last().is_some_and(|s| s.clients < r.wanted) {
        println!(
            "  (asked for {} clients; the descriptors left allow {})",
            thousands(r.wanted as f64),
            r.steps.last().map_or(0, |s| s.clients)
        );
    }
    println!("  connect: the connects of that step (from the previous step's count), each returns once the");
    println!("  broker's listen backlog has it; 1st ping: one broker.ping from every client, sent all, then");
    println!("  all answers read (it includes accepting what the backlog still held); ping: median of {PING_ROUNDS}");
    println!("  more. Threads and memory of the broker process once idle, from /proc/PID.");
    for s in r.steps.iter().filter(|s| s.refused.is_some()) {
        println!(
            "  at {}: {} not served: {}",
            thousands(s.clients as f64),
            thousands((s.clients - s.served) as f64),
            s.refused.as_deref().unwrap_or("")
        );
    }
    let (Some(first), Some(last)) = (r.steps.first(), r.steps.last()) else { return };
    if let Some(s) = r.steps.iter().rev().find(|s| s.clients > 0) {
        println!("  threads at {}: {}", thousands(s.clients as f64), s.broker.names_line());
    }
    println!("  threads at 0: {}", first.broker.names_line());
    let total: Duration = r.steps.iter().map(|s| s.connect).sum();
    let connects: usize = r.steps.iter().map(|s| s.connects).sum();
    if connects > 0 {
        println!(
            "  {} connects in {:.1} ms ({:.1} us each)",
            thousands(connects as f64),
            ms(total),
            total.as_secs_f64() * 1e6 / connects as f64
        );
    }
    if last.served > 0 {
        let per = |a: u64, b: u64| (a as f64 - b as f64) / last.served as f64;
        let rss = per(last.broker.rss, first.broker.rss);
        let anon = per(last.broker.rss_anon, first.broker.rss_anon);
        println!(
            "  resident memory per served connection, 0 -> {}: {:.1} KiB (anonymous {:.1} KiB)",
            thousands(last.served as f64),
            rss / 1024.0,
            anon / 1024.0
        );
        let verdict = if rss <= TARGET_RSS_PER_CONNECTION { "PASS" } else { "MISS" };
        println!("  {verdict}  resident memory per idle connection <= 8 KiB: {:.1} KiB", rss / 1024.0);
    }
    let threads: Vec<String> = r.steps.iter().map(|s| s.broker.threads.to_string()).collect();
    let same = r.steps.iter().all(|s| s.broker.threads == first.broker.threads);
    let all_served = r.steps.iter().all(|s| s.served == s.clients);
    println!(
        "  {}  broker threads the same at {}: {}",
        if same { "PASS" } else { "MISS" },
        r.steps.iter().map(|s| thousands(s.clients as f64)).collect::<Vec<_>>().join(", "),
        threads.join(", ")
    );
    println!(
        "  {}  every client served: {} of {}",
        if all_served { "PASS" } else { "MISS" },
        thousands(last.served as f64),
        thousands(last.clients as f64)
    );
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// clients-active

/// One round of many clients or of one: the bench's own usage, and the broker's CPU time.
#[derive(Debug, Clone, Copy)]
pub struct Round {
    pub sample: Sample,
    pub broker_cpu: Duration,
}

pub struct Active {
    pub clients: usize,
    pub window: usize,
    pub threads: usize,
    pub many: Vec<Round>,
    /// One client with echo-pipe's window and loop.
    pub one: Vec<Round>,
    pub one_window: usize,
    /// The broker while the many clients were connected, after the last round.
    pub broker: ProcPoint,
    pub switchboard: String,
}

/// `clients` clients with `--active-window` requests each in flight to a native echo, against
/// one client with `--window` in flight, round for round.
pub fn active(opts: &Opts, switchboard: &Path, echo_so: &Path, payload: &Bytes, clients: usize) -> Result<Active> {
    let dir = tempfile::Builder::new().prefix("sbbench-active").tempdir().map_err(io_err("temporary folder"))?;
    let (mut broker, socket) = start_broker(switchboard, dir.path())?;
    let pid = broker.pid()?;
    let mut one = Client::connect(&socket)?;
    let echo = std::path::absolute(echo_so).unwrap_or_else(|_| echo_so.to_owned());
    let load = LoadArgs { path: echo.display().to_string(), name: Some("echo".into()), ..Default::default() };
    one.rpc("module.load", &load).map_err(|e| BenchError(format!("module.load {}: {e}", echo.display())))?;
    let mut conns = Vec::with_capacity(clients);
    for i in 0..clients {
        let c = Conn::connect(&socket)
            .map_err(|e| BenchError(format!("active client {} of {clients} could not connect: {e}", i + 1)))?;
        conns.push(c);
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(clients);
    let window = opts.active_window.max(1);
    let (one_window, flush_every) = (opts.window.max(1), opts.flush_every);
    let mut r = Active {
        clients,
        window,
        threads,
        many: Vec::new(),
        one: Vec::new(),
        one_window,
        broker: ProcPoint::default(),
        switchboard: switchboard.display().to_string(),
    };
    let timed = |run: &mut dyn FnMut() -> Result<Sample>| -> Result<Round> {
        let cpu = proc_cpu(pid)?;
        let sample = run()?;
        Ok(Round { sample, broker_cpu: proc_cpu(pid)?.saturating_sub(cpu) })
    };
    let (round, warmup) = (opts.round_time(), opts.warmup_time());
    for r_i in 0..opts.rounds() + 1 {
        // Round 0 is the warm-up, unless there is none.
        let dur = if r_i == 0 { warmup } else { round };
        if dur.is_zero() {
            continue;
        }
        let one_round = timed(&mut || client_pipelined(&mut one, "echo.x", payload, one_window, flush_every, dur))?;
        let many_round = timed(&mut || drive_all(&mut conns, threads, window, "echo.x", payload, dur))?;
        if r_i > 0 {
            r.one.push(one_round);
            r.many.push(many_round);
        }
        if opts.verbose {
            println!(
                "  round {r_i}  clients-active  one {:>10.0}/s  many {:>10.0}/s",
                one_round.sample.rate(),
                many_round.sample.rate()
            );
        }
    }
    r.broker = ProcPoint::read(pid)?;
    drop(conns);
    drop(one);
    broker.stop()?;
    Ok(r)
}

/// Every client keeps `window` requests in flight for `dur`, over `threads` threads each with
/// its share of the clients; what is in flight at the end is drained outside the measurement.
fn drive_all(
    conns: &mut [Conn],
    threads: usize,
    window: usize,
    topic: &str,
    payload: &Bytes,
    dur: Duration,
) -> Result<Sample> {
    let usage = Usage::now();
    let share = conns.len().div_ceil(threads.max(1)).max(1);
    let barrier = Barrier::new(conns.len().div_ceil(share));
    let results: Vec<Result<(u64, Duration)>> = std::thread::scope(|s| {
        let handles: Vec<_> = conns
            .chunks_mut(share)
            .map(|chunk| {
                let barrier = &barrier;
                s.spawn(move || drive(chunk, window, topic, payload, dur, barrier))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(BenchError("a client thread panicked".into()))))
            .collect()
    });
    let (mut ops, mut elapsed) = (0, Duration::ZERO);
    for r in results {
        let (o, e) = r?;
        ops += o;
        elapsed = elapsed.max(e);
    }
    Ok(usage.sample(ops, elapsed))
}

/// One thread's clients: `window` requests each in flight until `dur` has passed.
fn drive(
    conns: &mut [Conn],
    window: usize,
    topic: &str,
    payload: &Bytes,
    dur: Duration,
    barrier: &Barrier,
) -> Result<(u64, Duration)> {
    let mut epoll = Epoll::new()?;
    let reader = FrameReader::new(DEFAULT_MAX_FRAME);
    let mut scratch = vec![0u8; 64 << 10];
    let mut req = Message::request(topic, payload.clone());
    for (i, c) in conns.iter_mut().enumerate() {
        c.want_out = false;
        epoll.ctl(libc::EPOLL_CTL_ADD, c.stream.as_raw_fd(), IN, i)?;
    }
    barrier.wait();
    let began = Instant::now();
    let mut in_flight = 0usize;
    for (i, c) in conns.iter_mut().enumerate() {
        for _ in 0..window {
            c.queue(&mut req);
        }
        in_flight += window;
        c.flush(&epoll, i)?;
    }
    let (mut ops, mut elapsed) = (0u64, None);
    let mut last_event = Instant::now();
    while in_flight > 0 {
        let n = epoll.wait(Duration::from_millis(50))?;
        if elapsed.is_none() && began.elapsed() >= dur {
            elapsed = Some(began.elapsed());
        }
        if n == 0 {
            if last_event.elapsed() > RESPONSE_TIMEOUT {
                return Err(BenchError(format!("{topic}: {in_flight} requests unanswered after {RESPONSE_TIMEOUT:?}")));
            }
            continue;
        }
        last_event = Instant::now();
        for k in 0..n {
            let (i, events) = epoll.ready(k);
            let c = &mut conns[i];
            if events & OUT != 0 {
                c.flush(&epoll, i)?;
            }
            if events & (IN | HUP_ERR) == 0 {
                continue;
            }
            let open = c.fill(&mut scratch);
            while let Some(msg) = c.next_message(&reader)? {
                if let Some(why) = refusal(&msg) {
                    return Err(BenchError(format!("an active client was refused: {why}")));
                }
                if msg.kind != MsgType::Response {
                    continue;
                }
                if msg.is_error() {
                    return Err(BenchError(format!("{topic}: error response: {}", msg.errstr.unwrap_or_default())));
                }
                if msg.payload != *payload {
                    return Err(BenchError(format!("{topic}: the response payload is not the request's")));
                }
                c.in_flight -= 1;
                in_flight -= 1;
                if elapsed.is_none() {
                    ops += 1;
                    c.queue(&mut req);
                    in_flight += 1;
                }
            }
            if !open {
                return Err(BenchError("the broker closed an active client's connection".into()));
            }
            c.flush(&epoll, i)?;
        }
    }
    Ok((ops, elapsed.unwrap_or_else(|| began.elapsed())))
}

fn report_active(a: &Active) {
    let median_round = |v: &[Round]| -> Option<Round> {
        let mut v = v.to_vec();
        v.sort_by(|x, y| x.sample.rate().total_cmp(&y.sample.rate()));
        v.get(v.len() / 2).copied()
    };
    let best = |v: &[Round]| v.iter().map(|r| r.sample.rate()).fold(0.0, f64::max);
    let (Some(one), Some(many)) = (median_round(&a.one), median_round(&a.many)) else { return };
    println!();
    println!(
        "Active clients (clients-active; {} as its own process with the native echo loaded; rounds: {}):",
        a.switchboard,
        a.many.len()
    );
    println!("  {:<54} {:>12} {:>12} {:>14}", "", "median/s", "best/s", "broker cpu us");
    let row = |what: String, m: Round, b: f64| {
        println!(
            "  {what:<54} {:>12} {:>12} {:>14.2}",
            thousands(m.sample.rate()),
            thousands(b),
            m.broker_cpu.as_secs_f64() * 1e6 / m.sample.ops.max(1) as f64
        );
    };
    row(format!("1 client, {} in flight (echo-pipe's loop)", a.one_window), one, best(&a.one));
    row(
        format!(
            "{} clients x {} in flight ({} client threads, epoll)",
            thousands(a.clients as f64),
            a.window,
            a.threads
        ),
        many,
        best(&a.many),
    );
    println!("  broker cpu us: the broker process's CPU time per request (/proc/PID/stat, 10 ms ticks).");
    println!(
        "  many / one: {:.2} x (median / median; round by round: {})",
        many.sample.rate() / one.sample.rate(),
        a.many
            .iter()
            .zip(&a.one)
            .map(|(m, o)| format!("{:.2}", m.sample.rate() / o.sample.rate()))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "  broker threads with the {} clients connected: {} ({})",
        thousands(a.clients as f64),
        a.broker.threads,
        a.broker.names_line()
    );
}
