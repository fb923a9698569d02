//! The fault and soak suite (issue 9): real brokers and real modules of every kind, left
//! idle past every timeout the broker has, made slower than those timeouts, killed, stopped
//! and churned mid-request, with requesters that must all be answered. Every test bounds
//! its own time and count so the suite stays a few minutes long in CI.

// Unsafe code here: limits a child's resources between fork and exec (`pre_exec`).
#![allow(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use switchboard_client::Client;
use switchboard_protocol::Message;
use switchboard_tests::{
    answers, bin, errtext, json, module, payload, python_path, row, rpc, script, wait_until, wasm_module, Broker,
    Signal, WAIT,
};

/// One module of each kind, all answering `NAME.sleep {ms}`.
struct Sleeper {
    name: &'static str,
    path: PathBuf,
    /// Load options that shorten the broker's timeouts for this kind.
    short: &'static [&'static str],
}

fn sleepers() -> Vec<Sleeper> {
    vec![
        Sleeper { name: "native", path: module("faulty"), short: &[] },
        Sleeper { name: "rustproc", path: bin("faulty"), short: &["--hello-timeout=1000"] },
        Sleeper { name: "pyproc", path: script("sleepy.py"), short: &["--hello-timeout=1000"] },
        Sleeper { name: "wasm", path: wasm_module("faulty"), short: &["--cpu-ms=200"] },
    ]
}

fn start_python_broker() -> Broker {
    Broker::start_env(&[], &[("PATH", &python_path())])
}

/// Load every kind, with its shortest timeouts if `short`; `instead` replaces those options
/// for the kinds it names.
fn load_all(b: &Broker, short: bool, instead: &[(&str, &str)]) -> Vec<Sleeper> {
    let all = sleepers();
    for s in &all {
        let given: Vec<&str> = instead.iter().filter(|(n, _)| *n == s.name).map(|(_, o)| *o).collect();
        let opts = match (given.is_empty(), short) {
            (false, _) => given,
            (true, true) => s.short.to_vec(),
            (true, false) => Vec::new(),
        };
        b.load(&s.path, Some(s.name), &opts);
    }
    all
}

/// The pid of a process module (None for the in-broker kinds).
fn pid(b: &Broker, name: &str) -> Option<u64> {
    row(&mut b.client(), name).and_then(|r| r["pid"].as_u64())
}

/// Every module answers `sleep {ms}` with success and is still listed as running, with
/// the same process as before.
fn all_serve(b: &Broker, all: &[Sleeper], pids: &[Option<u64>], ms: u64) {
    let mut c = b.client();
    for (s, before) in all.iter().zip(pids) {
        let r = rpc(&mut c, &format!("{}.sleep", s.name), json!({"ms": ms}));
        assert!(r.is_ok(), "{} did not answer after idling: {}\nlog:\n{}", s.name, errtext(&r), b.log());
        let listed = row(&mut c, s.name).expect("listed");
        assert_eq!(listed["state"], "running", "{}: {listed}", s.name);
        assert_eq!(pid(b, s.name), *before, "{} was restarted or replaced", s.name);
    }
    assert!(!b.log().contains("SIGKILL"), "the broker killed something:\n{}", b.log());
}

#[test]
fn modules_of_every_kind_serve_after_idling_past_their_shortened_timeouts() {
    let b = start_python_broker();
    let all = load_all(&b, true, &[]);
    let pids: Vec<_> = all.iter().map(|s| pid(&b, s.name)).collect();
    all_serve(&b, &all, &pids, 0);
    // Several times the 1 s hello timeout, the 200 ms CPU limit and the 1 s linger (a
    // process module used to be killed at hello timeout + linger).
    std::thread::sleep(Duration::from_secs(6));
    all_serve(&b, &all, &pids, 0);
}

#[test]
fn modules_of_every_kind_serve_after_idling_past_the_default_timeouts() {
    let b = start_python_broker();
    let all = load_all(&b, false, &[]);
    let pids: Vec<_> = all.iter().map(|s| pid(&b, s.name)).collect();
    // The default hello timeout is 10 s; a process module used to die about 11 s in.
    std::thread::sleep(Duration::from_secs(13));
    all_serve(&b, &all, &pids, 0);
}

#[test]
fn a_handler_slower_than_the_hello_timeout_is_served() {
    let b = start_python_broker();
    // WASM's CPU limit bounds a call's time in the guest: give it room for the sleep.
    let all = load_all(&b, true, &[("wasm", "--cpu-ms=5000")]);
    let pids: Vec<_> = all.iter().map(|s| pid(&b, s.name)).collect();
    // Every kind at once, each busy well past the 1 s hello timeout and the 1 s linger.
    let slow: Vec<_> = all
        .iter()
        .map(|s| {
            let (socket, topic) = (b.socket.clone(), format!("{}.sleep", s.name));
            std::thread::spawn(move || {
                let mut c = Client::connect(&socket).expect("connect");
                rpc(&mut c, &topic, json!({"ms": 2500})).map(|m| json(&m))
            })
        })
        .collect();
    for (s, t) in all.iter().zip(slow) {
        let r = t.join().expect("requester thread");
        assert!(r.is_ok(), "{}: the slow request failed: {r:?}\nlog:\n{}", s.name, b.log());
    }
    all_serve(&b, &all, &pids, 0);
}

/// Resident memory of process `pid` in bytes (VmRSS).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Threads of process `pid`.
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

#[test]
fn slow_subscribers_together_cannot_take_more_than_the_output_budget() {
    let b = Broker::start_with(&["--max-output-mb", "16"]);
    let base = rss(b.pid());
    // Eight subscribers that never read.
    let subscribers: Vec<_> = (0..8)
        .map(|_| {
            let mut c = b.client();
            rpc(&mut c, "event.subscribe", json!({"topic": "flood."})).expect("subscribe");
            c
        })
        .collect();
    // 256 events of 256 KiB: 64 MiB to each subscriber, 512 MiB in all without a budget.
    let mut publisher = b.client();
    let blob = "x".repeat(256 << 10);
    for i in 0..256 {
        let ev = Message::event("flood.data", payload(json!({"i": i, "blob": blob})));
        publisher.send(&ev).expect("publish");
    }
    // Everyone else is still served, and the broker's memory stayed near the budget.
    assert!(rpc(&mut b.client(), "broker.ping", json!({})).is_ok());
    assert!(b.wait_log("output budget is exceeded"), "no budget message in the log:\n{}", b.log());
    let grown = rss(b.pid()).saturating_sub(base);
    assert!(grown < 160 << 20, "the broker grew by {} MiB with a 16 MiB output budget", grown >> 20);
    drop(subscribers);
}

/// Set RLIMIT_NPROC of process `pid` (running as `uid`) to `n`. Root here may lack
/// CAP_SYS_RESOURCE, so the limit is set from a child running as the same uid.
fn set_thread_limit(pid: u32, uid: u32, n: usize) {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("true");
    cmd.uid(uid);
    // SAFETY: prlimit is async-signal-safe; it runs in the child after it became `uid`.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit { rlim_cur: n as u64, rlim_max: n as u64 };
            if libc::prlimit(pid as i32, libc::RLIMIT_NPROC, &limit, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = cmd.status().expect("set the broker's thread limit");
    assert!(status.success(), "prlimit failed: {status}");
}

#[test]
fn a_broker_that_may_start_no_more_threads_serves_every_client_and_refuses_a_module_clearly() {
    if !switchboard_tests::running_as_root() {
        eprintln!("skipped: needs root to run the broker under a thread limit as another uid");
        return;
    }
    let b = Broker::start_as_user(65534, &[]);
    let pid = b.pid();
    // Not one thread more than it has: clients cost none (RFC 1 §6.4), modules one each.
    let base = threads(pid);
    set_thread_limit(pid, 65534, base);
    let mut clients: Vec<Client> = (0..200).map(|_| Client::connect(&b.socket).expect("connect")).collect();
    for c in &mut clients {
        rpc(c, "broker.ping", json!({})).expect("every client is served");
    }
    assert_eq!(threads(pid), base, "clients took threads");
    // A module needs a thread: the load fails with a reason, and the broker goes on serving.
    // (Loading is for the instance owner: modctl runs as the broker's uid.)
    let load = {
        use std::os::unix::process::CommandExt;
        let child = std::process::Command::new(bin("modctl"))
            .args(["load", &module("echo").display().to_string()])
            .env("SWITCHBOARD_URI", format!("local://{}", b.socket.display()))
            .uid(65534)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run modctl");
        switchboard_tests::output_within(child, WAIT)
    };
    let text = String::from_utf8_lossy(&load.stderr);
    assert!(!load.status.success(), "a module was loaded with no thread to run it");
    assert!(text.contains("thread"), "the refusal does not say what was missing: {text}");
    assert!(rpc(&mut clients[0], "broker.ping", json!({})).is_ok(), "the broker serves after a refused load");
    drop(clients);
    let mut c = Client::connect(&b.socket).expect("connect after the others left");
    assert!(rpc(&mut c, "broker.ping", json!({})).is_ok(), "the broker is serving again");
}

/// Send `n` requests to `topic` at once on one connection (matchtags 1..=n).
fn pipeline(c: &mut Client, topic: &str, body: serde_json::Value, n: u32) {
    switchboard_tests::pipeline(c, (1..=n).map(|_| (topic, body.clone())));
}

/// Signal a module's child process, which the test found in module.list.
fn signal(pid: u64, sig: Signal) {
    switchboard_tests::signal(u32::try_from(pid).expect("a pid"), sig);
}

fn stats(b: &Broker, name: &str) -> serde_json::Value {
    json(&rpc(&mut b.client(), "module.stats", json!({"name": name})).expect("module.stats"))
}

#[test]
fn a_process_module_killed_with_a_hundred_requests_in_flight_answers_them_all() {
    let b = Broker::start();
    b.load(&bin("faulty"), None, &[]);
    let pid = pid(&b, "faulty").expect("a pid");
    let mut c = b.client();
    pipeline(&mut c, "faulty.sleep", json!({"ms": 50}), 100);
    assert!(wait_until(|| stats(&b, "faulty")["msgs_in"].as_u64() >= Some(2)));
    signal(pid, Signal::KILL);
    let got = answers(&mut c, 100);
    assert!(got.iter().all(|e| e == "ok" || e == "EHOSTUNREACH"), "{got:?}");
    assert!(got.iter().any(|e| e == "EHOSTUNREACH"), "the kill came too late to test anything: {got:?}");
    assert!(rpc(&mut b.client(), "broker.ping", json!({})).is_ok());
}

#[test]
fn a_stopped_process_module_is_removed_and_its_hundred_requesters_answered() {
    let b = Broker::start();
    b.load(&bin("faulty"), None, &[]);
    b.load(&module("echo"), None, &[]);
    let pid = pid(&b, "faulty").expect("a pid");
    signal(pid, Signal::STOP);
    let mut c = b.client();
    pipeline(&mut c, "faulty.sleep", json!({"ms": 1}), 100);
    // A stopped module holds up nobody else.
    assert!(rpc(&mut b.client(), "echo.x", json!({"still": "serving"})).is_ok());
    // It cannot hear its shutdown: the remove's grace runs out, SIGTERM (which a stopped
    // process does not act on), then SIGKILL.
    b.modctl_ok(&["remove", "faulty", "--grace", "300"]);
    let got = answers(&mut c, 100);
    assert!(got.iter().all(|e| e == "EHOSTUNREACH"), "{got:?}");
    let log = b.log();
    assert!(log.contains("sent SIGTERM") && log.contains("killed (SIGKILL)"), "the kills were not logged:\n{log}");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "the child was not reaped");
}

#[test]
fn five_hundred_clients_leaving_mid_request_leave_no_bookkeeping_behind() {
    let b = Broker::start();
    b.load(&module("faulty"), None, &[]);
    for i in 0..500u32 {
        let mut c = b.client();
        let mut req = Message::request("faulty.sleep", payload(json!({"ms": if i % 50 == 0 { 20 } else { 0 }})));
        req.matchtag = 1;
        c.send(&req).expect("send");
        // The client leaves without waiting for its answer.
    }
    // The module serves on; every request is answered (into the void) or dropped with its
    // client, and nothing is left counted.
    assert!(rpc(&mut b.client(), "faulty.sleep", json!({"ms": 0})).is_ok());
    assert!(
        wait_until(|| {
            let s = stats(&b, "faulty");
            s["pending"].as_u64() == Some(0) && s["queue"].as_u64() == Some(0)
        }),
        "in-flight bookkeeping did not return to zero: {}",
        stats(&b, "faulty")
    );
    assert!(stats(&b, "faulty")["msgs_in"].as_u64() >= Some(500));
}

/// Open file descriptors of process `pid`.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn module_churn_of_every_kind_returns_fds_threads_and_children_to_baseline() {
    let b = start_python_broker();
    let pid = b.pid();
    let all = sleepers();
    // One round first, so lazily made things (the WASM engine, compiled code, caches) exist.
    let round = |b: &Broker| {
        for s in &all {
            b.load(&s.path, Some(s.name), &[]);
            assert!(rpc(&mut b.client(), &format!("{}.sleep", s.name), json!({"ms": 0})).is_ok(), "{}", s.name);
            b.modctl_ok(&["remove", s.name]);
        }
    };
    round(&b);
    let settled = |b: &Broker| wait_until(|| switchboard_tests::children_of(b.pid()).is_empty());
    assert!(settled(&b));
    let (fd0, threads0) = (fds(pid), threads(pid));
    for _ in 0..10 {
        round(&b);
    }
    assert!(settled(&b), "children left: {:?}", switchboard_tests::children_of(pid));
    assert!(
        wait_until(|| fds(pid) <= fd0 && threads(pid) <= threads0),
        "fds {} (was {fd0}), threads {} (was {threads0})",
        fds(pid),
        threads(pid)
    );
    // No private copy of a native library is left where the broker makes them.
    let copies: Vec<_> = std::fs::read_dir(switchboard_protocol::uri::runtime_dir())
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten().flatten())
        .filter(|e| e.file_name().to_string_lossy().contains(&format!("-{pid}.so")))
        .map(|e| e.path())
        .collect();
    assert!(copies.is_empty(), "native copies left on disk: {copies:?}");
    assert!(b.modctl_ok(&["list"]).lines().count() <= 1, "modules left: {}", b.modctl_ok(&["list"]));
}

#[test]
fn ten_process_modules_cost_the_broker_no_thread() {
    const MODULES: usize = 10;
    let b = Broker::start();
    let pid = b.pid();
    let mut c = b.client();
    // One first, so that what the broker makes once, lazily (its coarse clock), exists.
    b.load(&bin("echo"), Some("first"), &[]);
    assert!(rpc(&mut c, "first.x", json!({})).is_ok());
    let base = threads(pid);
    let names: Vec<String> = (0..MODULES).map(|i| format!("pecho{i}")).collect();
    for name in &names {
        b.load(&bin("echo"), Some(name), &[]);
    }
    for (i, name) in names.iter().enumerate() {
        let answer = rpc(&mut c, &format!("{name}.x"), json!({ "i": i })).expect("every module answers");
        assert_eq!(json(&answer), json!({ "i": i }));
    }
    // Its socket, output and exit are tasks on the broker's runtime: no thread per module
    // (a load may use a thread while it runs, so the count is read once it has settled).
    assert!(
        wait_until(|| threads(pid) <= base),
        "{MODULES} process modules took {} threads more than the {base} before them",
        threads(pid).saturating_sub(base)
    );
    assert_eq!(switchboard_tests::children_of(pid).len(), MODULES + 1, "one child per module");
    for name in names.iter().chain([&"first".to_string()]) {
        b.modctl_ok(&["remove", name]);
    }
    assert!(switchboard_tests::children_of(pid).is_empty(), "removed means reaped");
    assert!(wait_until(|| threads(pid) <= base), "threads {} (was {base})", threads(pid));
}

#[test]
fn broker_sigterm_answers_every_requester_and_a_restart_serves_on_the_same_path() {
    let mut b = Broker::start();
    b.load(&module("faulty"), Some("nslow"), &[]);
    b.load(&bin("faulty"), Some("pslow"), &[]);
    let mut clients: Vec<_> = (0..10)
        .map(|i| {
            let mut c = b.client();
            let topic = if i % 2 == 0 { "nslow.sleep" } else { "pslow.sleep" };
            pipeline(&mut c, topic, json!({"ms": 300}), 5);
            c
        })
        .collect();
    assert!(wait_until(|| stats(&b, "nslow")["msgs_in"].as_u64() >= Some(1)));
    let status = b.terminate();
    assert!(status.success(), "the broker exited with {status}:\n{}", b.log());
    for c in &mut clients {
        let got = answers(c, 5);
        assert!(got.iter().all(|e| e == "ok" || e == "EHOSTUNREACH"), "{got:?}");
    }
    assert!(!b.socket.exists(), "the socket file was left behind");
    // A new broker on the same path serves.
    let mut again = std::process::Command::new(bin("switchboard"))
        .arg("--listen")
        .arg(&b.socket)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start switchboard again");
    let mut line = String::new();
    let stdout = again.stdout.take().expect("stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).expect("its address line");
    let served = Client::connect(&b.socket)
        .map_err(|e| e.to_string())
        .and_then(|mut c| rpc(&mut c, "broker.ping", json!({})).map_err(|e| e.to_string()));
    let _ = again.kill();
    let _ = again.wait();
    assert!(line.starts_with("local://") && served.is_ok(), "restart on the same path: {line:?} {served:?}");
}

/// A small seeded generator (xorshift64*), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// One frame that is wrong in some way, but never over the size limit (that ends the
/// connection, which is tested elsewhere): random bodies, short frames, header lengths past
/// the end, headers that are msgpack of the wrong shape, valid headers with bad fields.
fn bad_frame(rng: &mut Rng) -> Vec<u8> {
    let body: Vec<u8> = match rng.below(5) {
        0 => {
            let n = rng.below(64) as usize;
            rng.bytes(n)
        }
        1 => {
            let n = rng.below(4) as usize;
            rng.bytes(n)
        }
        2 => {
            let mut b = (rng.below(1 << 20) as u32 + 8).to_be_bytes().to_vec();
            let n = rng.below(32) as usize;
            b.extend(rng.bytes(n));
            b
        }
        3 => {
            // A header that is a msgpack array of random small values.
            let n = rng.below(14) as usize;
            let mut h = vec![0x90 | n as u8];
            for _ in 0..n {
                h.push(match rng.below(4) {
                    0 => rng.next() as u8 & 0x7f,
                    1 => 0xc0,
                    2 => 0xa1,
                    _ => 0xff,
                });
            }
            let mut b = (h.len() as u32).to_be_bytes().to_vec();
            b.extend(h);
            b
        }
        _ => {
            // A real request's frame with a few bytes flipped.
            let req = Message::request("echo.x", vec![0x80]);
            let mut f = switchboard_protocol::encode_frame(&req).to_vec().split_off(4);
            for _ in 0..1 + rng.below(3) {
                let i = rng.below(f.len() as u64) as usize;
                f[i] ^= 1 << rng.below(8);
            }
            f
        }
    };
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend(body);
    frame
}

#[test]
fn tens_of_thousands_of_malformed_frames_never_stop_the_broker() {
    use std::io::{Read, Write};
    let mut b = Broker::start();
    b.load(&module("echo"), None, &[]);
    let seed = 0x5eed_0000_0000_0009u64;
    let mut rng = Rng(seed);
    let mut sock = std::os::unix::net::UnixStream::connect(&b.socket).expect("connect");
    sock.set_read_timeout(Some(Duration::from_millis(1))).expect("timeout");
    let mut sink = vec![0u8; 1 << 16];
    let mut sent = 0;
    for batch in 0..200 {
        let mut out = Vec::new();
        for _ in 0..100 {
            out.extend(bad_frame(&mut rng));
        }
        sent += 100;
        if sock.write_all(&out).is_err() {
            // A frame the broker could not resynchronise after closed the connection: that
            // is allowed; carry on with a new one.
            sock = std::os::unix::net::UnixStream::connect(&b.socket).expect("reconnect");
            sock.set_read_timeout(Some(Duration::from_millis(1))).expect("timeout");
        }
        // Drain the EPROTO answers so the broker never sees us as a slow reader.
        while let Ok(n) = sock.read(&mut sink) {
            if n == 0 {
                break;
            }
        }
        assert!(b.alive(), "the broker died after batch {batch} (seed {seed:#x}):\n{}", b.log());
    }
    assert!(sent >= 20_000);
    // Well-formed requests are served, on a new connection and on a fresh one alike.
    let mut c = b.client();
    for i in 0..100 {
        assert_eq!(json(&rpc(&mut c, "echo.x", json!({"i": i})).expect("echo after the garbage")), json!({"i": i}));
    }
    assert!(b.alive());
}

/// When each of `n` answers arrived, counted from when the requests were sent.
fn arrivals(c: &mut Client, n: u32) -> Vec<Duration> {
    let start = std::time::Instant::now();
    let mut at = Vec::new();
    for _ in 0..n {
        let m = c.recv_timeout(Some(WAIT)).expect("an answer");
        assert!(!m.is_error(), "{m:?}");
        at.push(start.elapsed());
    }
    at
}

#[test]
fn slow_handlers_do_not_hold_back_the_answers_before_them() {
    let b = Broker::start();
    b.load(&module("faulty"), Some("native"), &[]);
    b.load(&bin("faulty"), Some("rustproc"), &[]);
    for name in ["native", "rustproc"] {
        let mut c = b.client();
        // Twenty requests queued at once, 100 ms of work each.
        pipeline(&mut c, &format!("{name}.sleep"), json!({"ms": 100}), 20);
        let at = arrivals(&mut c, 20);
        // Answers come as their handlers finish, not all together once the queue is empty:
        // the first arrives in the first half of the whole run, whatever the machine's speed.
        let (first, last) = (at[0], at[19]);
        assert!(first * 2 < last, "{name}: answers held back until the queue drained: {at:?}");
    }
}

#[test]
fn connections_past_the_limit_are_refused_and_their_places_come_back() {
    let b = Broker::start_env(&[], &[("SWITCHBOARD_MAX_CLIENTS", "3")]);
    let served: Vec<_> = (0..3)
        .map(|_| {
            let mut c = b.client();
            assert!(rpc(&mut c, "broker.ping", json!({})).is_ok());
            c
        })
        .collect();
    let refused = Client::connect(&b.socket)
        .map_err(|e| e.to_string())
        .and_then(|mut c| rpc(&mut c, "broker.ping", json!({})).map_err(|e| e.to_string()));
    let text = refused.expect_err("a fourth connection was served");
    assert!(text.contains("EAGAIN") || text.contains("too many connections"), "{text}");
    assert!(text.contains("at most 3"), "{text}");
    // They leave: their places are free again.
    drop(served);
    assert!(wait_until(|| {
        Client::connect(&b.socket).is_ok_and(|mut c| rpc(&mut c, "broker.ping", json!({})).is_ok())
    }));
}

/// Raise this process's open-file limit to at least `n` (within the hard limit); a broker
/// started afterwards inherits it.
fn raise_fd_limit(n: u64) -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit read and write the struct given.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        if limit.rlim_cur < n {
            limit.rlim_cur = n.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    limit.rlim_cur
}

#[test]
fn two_thousand_concurrent_clients_are_all_served_without_a_thread_more() {
    const CLIENTS: usize = 2000;
    // Each client is a socket here and one in the broker, plus what both had before.
    let limit = raise_fd_limit(2 * CLIENTS as u64 + 512);
    assert!(limit >= CLIENTS as u64 + 256, "the open-file limit ({limit}) is too low for {CLIENTS} clients");
    let b = Broker::start();
    b.load(&module("echo"), None, &[]);
    let pid = b.pid();
    let base = threads(pid);
    let mut clients: Vec<Client> = (0..CLIENTS).map(|_| b.client()).collect();
    // All in flight at once: a ping and an echo from every client, then every answer.
    for (i, c) in clients.iter_mut().enumerate() {
        for (tag, topic) in [(1, "broker.ping"), (2, "echo.echo")] {
            let mut req = Message::request(topic, payload(json!({ "client": i })));
            req.matchtag = tag;
            c.queue(&req);
        }
        c.flush().expect("send");
    }
    assert!(threads(pid) <= base, "the broker started threads for its clients: {} > {base}", threads(pid));
    for (i, c) in clients.iter_mut().enumerate() {
        for tag in [1, 2] {
            let answer = c.wait_response(tag, Some(WAIT)).unwrap_or_else(|e| panic!("client {i}, request {tag}: {e}"));
            assert_eq!(json(&answer)["client"], i, "client {i} got another's answer");
        }
    }
    assert!(threads(pid) <= base, "the broker started threads for its clients: {} > {base}", threads(pid));
    drop(clients);
    // They are all gone from the broker's books: a new client finds one connection (itself).
    let mut c = b.client();
    assert!(
        wait_until(|| { rpc(&mut c, "broker.info", json!({})).is_ok_and(|m| json(&m)["connections"] == 1) }),
        "broker.info: {:?}",
        rpc(&mut c, "broker.info", json!({})).map(|m| json(&m))
    );
}

#[test]
fn a_broker_out_of_file_descriptors_refuses_clients_with_a_reason_and_recovers() {
    let b = Broker::start();
    let pid = b.pid();
    // Room for about ten more descriptors than the broker has open now.
    let limit = (fds(pid) + 10) as u64;
    let rl = libc::rlimit { rlim_cur: limit, rlim_max: limit };
    // SAFETY: prlimit writes nothing back (old limit not asked for); lowering a limit of a
    // process of our own uid needs no privilege.
    let rc = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &rl, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let (mut served, mut refused) = (Vec::new(), Vec::new());
    for _ in 0..40 {
        let mut c = b.client();
        match rpc(&mut c, "broker.ping", json!({})) {
            Ok(_) => served.push(c),
            Err(e) => refused.push(e.to_string()),
        }
    }
    assert!(!served.is_empty() && !refused.is_empty(), "served {}, refused {refused:?}", served.len());
    for text in &refused {
        assert!(text.contains("EAGAIN") && text.contains("out of file descriptors"), "{text}");
    }
    assert!(b.log().contains("cannot accept a connection"), "the refusals were not logged:\n{}", b.log());
    // The served ones leave: their descriptors serve new clients.
    drop(served);
    assert!(wait_until(|| rpc(&mut b.client(), "broker.ping", json!({})).is_ok()));
}
