//! `switchboard --test-size N` (RFC 7 §2.3): an instance of N brokers on this machine, for
//! development, demonstrations and benchmarks, as `flux start --test-size` starts one. This
//! process makes a fresh certificate and an `[overlay]` file on loopback ports in a private
//! temporary directory, starts each rank as a child `switchboard --rank R`, prints rank 0's
//! address once every rank is `full`, and on SIGINT or SIGTERM stops them, leaves first.
//! It is not a broker itself; it never routes a message.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use switchboard::overlay::{Certificate, Topology};
use switchboard_client::Client;
use switchboard_protocol::{mgmt::OverlayStatus, uri};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// What the command line asked for.
pub struct TestSize {
    pub size: u32,
    pub fanout: u32,
    /// The site file whose modules (and other settings) every rank uses.
    pub config: Option<PathBuf>,
    pub log: Option<String>,
}

/// How long the whole instance may take to become `full`.
fn start_limit(size: u32) -> Duration {
    Duration::from_secs(30) + Duration::from_millis(250) * size
}

pub fn run(t: TestSize) -> ExitCode {
    // Signals are watched from the start: a SIGINT while the ranks start, or right after the
    // address is printed, stops them instead of leaving them orphaned.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchboard --test-size: {e}");
            return ExitCode::FAILURE;
        }
    };
    let signals = {
        let _entered = runtime.enter();
        (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    };
    let (Ok(int), Ok(term)) = signals else {
        eprintln!("switchboard --test-size: cannot watch signals");
        return ExitCode::FAILURE;
    };
    let dir = std::env::temp_dir().join(format!("switchboard-instance-{}", std::process::id()));
    let result = start(&t, &dir);
    let code = match result {
        Ok(mut children) => {
            let code = runtime.block_on(wait_for_signal(&mut children, int, term));
            stop(&t, children);
            code
        }
        Err((e, children)) => {
            eprintln!("switchboard --test-size: {e}");
            stop(&t, children);
            ExitCode::FAILURE
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    code
}

type Started = Result<Vec<Child>, (String, Vec<Child>)>;

fn start(t: &TestSize, dir: &Path) -> Started {
    let fail = |e: String| Err((e, Vec::new()));
    if t.size == 0 || t.fanout == 0 {
        return fail("--test-size and --fanout must be at least 1".into());
    }
    if let Err(e) = uri::private_dir(dir, 0o700) {
        return fail(format!("cannot make {}: {e}", dir.display()));
    }
    let cert = dir.join("curve.cert");
    if let Err(e) = Certificate::generate().and_then(|c| c.write(&cert, &switchboard::overlay::hostname())) {
        return fail(e.to_string());
    }
    let overlay = dir.join("overlay.toml");
    let table = match overlay_table(t.size, t.fanout) {
        Ok(table) => table,
        Err(e) => return fail(format!("cannot find free ports: {e}")),
    };
    if let Err(e) = std::fs::write(&overlay, table) {
        return fail(format!("cannot write {}: {e}", overlay.display()));
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return fail(format!("cannot find this program: {e}")),
    };
    let mut children = Vec::with_capacity(t.size as usize);
    for rank in 0..t.size {
        let mut cmd = Command::new(&exe);
        if let Some(c) = &t.config {
            cmd.arg("--config").arg(c);
        }
        cmd.arg("--overlay-site").arg(&overlay).arg("--rank").arg(rank.to_string());
        cmd.arg("--listen").arg(socket(dir, rank));
        // Rank 0 logs as asked; the others only what goes wrong, unless asked otherwise.
        match (&t.log, rank) {
            (Some(l), _) => cmd.arg("--log").arg(l),
            (None, 0) => cmd.arg("--log").arg("info"),
            (None, _) => cmd.arg("--log").arg("warn"),
        };
        cmd.stdin(Stdio::null()).stdout(if rank == 0 { Stdio::piped() } else { Stdio::null() });
        // Its own process group: a Ctrl-C at the terminal reaches this process alone, which
        // stops the ranks deepest first.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        match cmd.spawn() {
            Ok(c) => children.push(c),
            Err(e) => return Err((format!("cannot start rank {rank}: {e}"), children)),
        }
    }
    let deadline = Instant::now() + start_limit(t.size);
    if let Err(e) = wait_listening(&mut children[0], deadline) {
        return Err((e, children));
    }
    if let Err(e) = wait_full(&socket(dir, 0), t.size, deadline) {
        return Err((e, children));
    }
    let address = uri::to_uri(&socket(dir, 0));
    eprintln!("switchboard: an instance of {} brokers is up; rank 0 is SWITCHBOARD_URI={address}", t.size);
    println!("{address}");
    Ok(children)
}

fn socket(dir: &Path, rank: u32) -> PathBuf {
    dir.join(format!("broker-{rank}.sock"))
}

/// The `[overlay]` file: every rank on 127.0.0.1, a port free a moment ago for each rank with
/// children, the certificate beside it. Each port's listener is held until all are chosen, so
/// no two ranks get the same one.
fn overlay_table(size: u32, fanout: u32) -> std::io::Result<String> {
    let topology = Topology { rank: 0, size, fanout };
    let mut hosts = String::new();
    let mut held = Vec::new();
    for r in 0..size {
        if topology.children_of(r).next().is_some() {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            let port = listener.local_addr()?.port();
            held.push(listener);
            let at = format!("tcp://127.0.0.1:{port}");
            hosts.push_str(&format!("  {{ host = \"127.0.0.1\", bind = \"{at}\", connect = \"{at}\" }},\n"));
        } else {
            hosts.push_str("  { host = \"127.0.0.1\" },\n");
        }
    }
    Ok(format!("[overlay]\ncurve_cert = \"curve.cert\"\nfanout = {fanout}\nhosts = [\n{hosts}]\n"))
}

/// Rank 0 prints its address once it listens.
fn wait_listening(rank0: &mut Child, deadline: Instant) -> Result<(), String> {
    let Some(out) = rank0.stdout.take() else { return Err("rank 0 has no output".into()) };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(line) if line.starts_with("local://") => Ok(()),
        Ok(_) => Err("rank 0 did not start (its log says why)".into()),
        Err(_) => Err("rank 0 did not start in time".into()),
    }
}

/// Poll rank 0's `overlay.status` until every rank is `full`.
fn wait_full(rank0: &Path, size: u32, deadline: Instant) -> Result<(), String> {
    let mut client = Client::connect(rank0).map_err(|e| format!("cannot reach rank 0: {e}"))?;
    let mut full = 0;
    while Instant::now() < deadline {
        let status = client
            .rpc("overlay.status", &std::collections::BTreeMap::<String, u8>::new())
            .map_err(|e| e.to_string())?;
        let tree: OverlayStatus = status.decode().map_err(|e| e.to_string())?;
        full = count_full(&tree);
        if full == size {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("only {full} of {size} ranks were full in time"))
}

fn count_full(t: &OverlayStatus) -> u32 {
    u32::from(t.state == "full") + t.children.iter().map(count_full).sum::<u32>()
}

/// Until SIGINT or SIGTERM (one that came while the ranks started counts).
async fn wait_for_signal(children: &mut [Child], mut int: Signal, mut term: Signal) -> ExitCode {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut reported = vec![false; children.len()];
    loop {
        tokio::select! {
            _ = int.recv() => return ExitCode::SUCCESS,
            _ = term.recv() => return ExitCode::SUCCESS,
            _ = tick.tick() => {
                for (rank, c) in children.iter_mut().enumerate() {
                    if let (Ok(Some(status)), false) = (c.try_wait(), reported[rank]) {
                        eprintln!("switchboard --test-size: rank {rank} exited ({status})");
                        reported[rank] = true;
                    }
                }
            }
        }
    }
}

/// SIGTERM each level of the tree, deepest first, and wait for it (SIGKILL after 10 s).
fn stop(t: &TestSize, mut children: Vec<Child>) {
    let topology = Topology { rank: 0, size: t.size, fanout: t.fanout.max(1) };
    let n = children.len() as u32;
    let deepest = (0..n).map(|r| topology.depth_of(r)).max().unwrap_or(0);
    for depth in (0..=deepest).rev() {
        let level: Vec<usize> = (0..n).filter(|&r| topology.depth_of(r) == depth).map(|r| r as usize).collect();
        for &r in &level {
            // One that has exited (and may have been reaped already, its pid free for reuse)
            // is not signalled.
            if !matches!(children[r].try_wait(), Ok(None)) {
                continue;
            }
            // A child of ours that has not been reaped (try_wait just found it running), so
            // the pid is still its own.
            if let Some(pid) = i32::try_from(children[r].id()).ok().and_then(rustix::process::Pid::from_raw) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for &r in &level {
            while matches!(children[r].try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if matches!(children[r].try_wait(), Ok(None)) {
                let _ = children[r].kill();
                let _ = children[r].wait();
            }
        }
    }
}
