//! The end-to-end test harness: builds the real binaries and modules once, starts real
//! `switchboard` processes on temporary sockets, runs the real `modctl`, and compiles C
//! modules with the system compiler. No mocks: every test talks to a broker over its socket.

pub mod instance;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
pub use rustix::process::Signal;
use serde::Serialize;
use switchboard_client::{Client, ClientError};
use switchboard_protocol::Message;

/// How long any single wait in a test may take before the test fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(20);

/// Where the build puts binaries and libraries (target/debug).
pub fn target_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // This test binary lives in target/<profile>/deps/.
        let exe = std::env::current_exe().expect("current exe");
        let dir = exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf();
        build_artifacts();
        dir
    })
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").to_path_buf()
}

/// Build the broker, modctl and the modules these tests load, once per test binary. Cargo
/// waits on its own lock if another test binary is building at the same moment.
fn build_artifacts() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(repo_root())
        .args([
            "build",
            "-p",
            "switchboard",
            "-p",
            "modctl",
            "-p",
            "switchboard-echo",
            "-p",
            "switchboard-kvs",
            "-p",
            "switchboard-heartbeat",
            "-p",
            "switchboard-test-faulty",
            "-p",
            "switchboard-example-counter",
            "--lib",
            "--bins",
            "--examples",
        ])
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build of the test artifacts failed");
    // The same modules as WebAssembly components (the target is in rust-toolchain.toml).
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(repo_root())
        .args(["build", "--target", "wasm32-wasip2", "--lib"])
        .args(["-p", "switchboard-echo", "-p", "switchboard-kvs", "-p", "switchboard-test-faulty"])
        // A component of the world before `declare` (RFC 6 §2.2).
        .args(["-p", "switchboard-test-oldworld"])
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build of the WASM test modules failed");
}

/// The WASM component of a module built by this workspace, e.g. `wasm_module("echo")`.
pub fn wasm_module(name: &str) -> PathBuf {
    target_dir().parent().expect("target").join(format!("wasm32-wasip2/debug/{name}.wasm"))
}

/// The `bin` folder of a Python virtual environment with the module SDK installed: the
/// repository's `.venv` (which `.ci/run` makes), made or refreshed here on first use if it is
/// missing or holds another version of the SDK.
pub fn python_bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let venv = repo_root().join(".venv");
        let python = venv.join("bin/python3");
        // Ready when the SDK imports and is this checkout's (pip copies it: an older copy
        // would test an older SDK).
        let source = std::fs::read(repo_root().join("sdk/python/switchboard_module/__init__.py")).unwrap_or_default();
        let ready = |p: &Path| {
            Command::new(p)
                .args(["-c", "import switchboard_module, sys; sys.stdout.write(switchboard_module.__file__)"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| std::fs::read(String::from_utf8_lossy(&o.stdout).as_ref()).ok())
                .is_some_and(|installed| installed == source)
        };
        if !ready(&python) {
            let lock = repo_root().join("target/.venv-lock");
            let _ = std::fs::create_dir_all(repo_root().join("target"));
            // Several test binaries may get here at once: one makes the environment.
            let f = std::fs::File::create(&lock).expect("venv lock");
            f.lock().expect("lock the venv lock file");
            if !ready(&python) {
                let ok = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().is_ok_and(|s| s.success())
                    && Command::new(venv.join("bin/pip"))
                        .args(["install", "-q", "--force-reinstall"])
                        .arg(repo_root().join("sdk/python"))
                        .status()
                        .is_ok_and(|s| s.success());
                assert!(ok, "could not make the Python environment in {}", venv.display());
            }
        }
        venv.join("bin")
    })
}

/// PATH with the Python virtual environment first.
pub fn python_path() -> String {
    format!("{}:{}", python_bin_dir().display(), std::env::var("PATH").unwrap_or_default())
}

/// A test script in `tests/fixtures/scripts`.
pub fn script(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures/scripts").join(name)
}

pub fn bin(name: &str) -> PathBuf {
    target_dir().join(name)
}

/// The path of a module library built by this workspace, e.g. `module("echo")`.
pub fn module(name: &str) -> PathBuf {
    target_dir().join(format!("lib{name}.so"))
}

/// Compile `tests/c/<name>.c` into a shared object in `dir` with the system C compiler.
pub fn c_module(name: &str, dir: &Path) -> PathBuf {
    let root = repo_root();
    let out = dir.join(format!("lib{name}.so"));
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-shared", "-fPIC", "-Wall", "-Werror", "-I"])
        .arg(root.join("protocol/include"))
        .arg("-o")
        .arg(&out)
        .arg(root.join(format!("tests/c/{name}.c")))
        .status()
        .expect("run the C compiler");
    assert!(status.success(), "compiling tests/c/{name}.c failed");
    out
}

/// What `modctl info PATH` prints of a module's declarations (RFC 3 §6): its lines from
/// `methods:` on.
pub fn info_declared(b: &Broker, path: &Path) -> Vec<String> {
    let out = b.modctl_ok(&["info", path.to_str().expect("a UTF-8 path")]);
    out.lines().skip_while(|l| !l.starts_with("methods:")).map(String::from).collect()
}

/// A `switchboard` process on a socket in its own temporary directory.
pub struct Broker {
    child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    log: PathBuf,
}

impl Broker {
    pub fn start() -> Broker {
        Self::start_with(&[])
    }

    /// Start with extra command-line arguments; returns once the broker is listening.
    pub fn start_with(args: &[&str]) -> Broker {
        Self::spawn(args, &[])
    }

    /// Start as another user (root only), in a directory that user can write, admitting
    /// guests so the test (another uid to it) can connect.
    pub fn start_as_user(uid: u32, args: &[&str]) -> Broker {
        let mut all = vec!["--allow-guests"];
        all.extend_from_slice(args);
        Self::spawn_as(&all, &[], Some(uid))
    }

    /// Start with extra arguments and environment variables.
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Broker {
        Self::spawn(args, env)
    }

    /// Start with the Python virtual environment first on PATH, so `#!/usr/bin/env python3`
    /// modules find the SDK.
    pub fn start_python() -> Broker {
        Self::spawn(&[], &[("PATH", &python_path())])
    }

    /// Start on a site file, with the Python environment on PATH for script modules.
    pub fn start_site(file: &Path) -> Broker {
        Self::spawn(&["--config", &file.display().to_string()], &[("PATH", &python_path())])
    }

    /// Start with these arguments (a site file and more), the Python environment on PATH,
    /// as user `uid` if given (root only; guests admitted, as `start_as_user`).
    pub fn start_site_args(args: &[&str], uid: Option<u32>) -> Broker {
        let mut all = Vec::from(args);
        if uid.is_some() {
            all.push("--allow-guests");
        }
        Self::spawn_as(&all, &[("PATH", &python_path())], uid)
    }

    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Broker {
        Self::spawn_as(args, env, None)
    }

    fn spawn_as(args: &[&str], env: &[(&str, &str)], uid: Option<u32>) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("broker.sock");
        let log = dir.path().join("broker.log");
        let mut cmd = Command::new(bin("switchboard"));
        cmd.envs(env.iter().copied());
        if let Some(uid) = uid {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
            std::os::unix::process::CommandExt::uid(&mut cmd, uid);
        }
        // Compiled WASM code goes to the test's own cache unless the test names one.
        if !env.iter().any(|(k, _)| *k == "SWITCHBOARD_CACHE_DIR") {
            cmd.env("SWITCHBOARD_CACHE_DIR", dir.path().join("cache"));
        }
        let mut child = cmd
            .arg("--listen")
            .arg(&socket)
            .args(args)
            .env("SWITCHBOARD_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start switchboard");
        // The broker prints its URI on stdout once it listens.
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(WAIT).unwrap_or_default();
        let mut broker = Broker { child, dir, socket, log };
        if !line.starts_with("local://") {
            let _ = broker.child.kill();
            panic!("switchboard did not start: stdout {line:?}, log:\n{}", broker.log());
        }
        broker
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket).expect("connect to the broker")
    }

    /// Run `modctl` against this broker; a modctl that hangs fails the test after a minute.
    pub fn modctl(&self, args: &[&str]) -> Output {
        let child = Command::new(bin("modctl"))
            .args(args)
            .env("SWITCHBOARD_URI", format!("local://{}", self.socket.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run modctl");
        let out = output_within(child, 3 * WAIT);
        assert!(out.status.code().is_some(), "modctl {args:?} hung and was killed; broker log:\n{}", self.log());
        out
    }

    /// Run `modctl`, require success, return its stdout.
    pub fn modctl_ok(&self, args: &[&str]) -> String {
        let out = self.modctl(args);
        assert!(
            out.status.success(),
            "modctl {args:?} failed: {}\nbroker log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Load a module through the management protocol.
    pub fn load(&self, path: &Path, name: Option<&str>, args: &[&str]) {
        let mut cmd = vec!["load".to_string(), path.display().to_string()];
        if let Some(n) = name {
            cmd.push(format!("--name={n}"));
        }
        cmd.extend(args.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = cmd.iter().map(String::as_str).collect();
        self.modctl_ok(&refs);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the broker's log contains `needle`.
    pub fn wait_log(&self, needle: &str) -> bool {
        wait_until(|| self.log().contains(needle))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the broker process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        signal(self.child.id(), Signal::TERM);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "broker did not exit after SIGTERM; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pids of `pid`'s children, from /proc.
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // The fields after the command name: state, then ppid.
            stat.rsplit_once(") ").and_then(|(_, rest)| rest.split(' ').nth(1)?.parse::<u32>().ok()) == Some(pid)
        })
        .collect()
}

/// The output of `child` (spawned with piped stdout and stderr); killed with SIGKILL if it
/// has not exited within `limit`, so a test fails instead of hanging.
pub fn output_within(child: Child, limit: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if rx.recv_timeout(limit).is_err() {
            signal(pid, Signal::KILL);
        }
    });
    let out = child.wait_with_output().expect("wait for a child");
    let _ = tx.send(());
    out
}

/// Poll `cond` until it holds or `WAIT` passes.
pub fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// msgpack payload of a JSON value.
pub fn payload(v: serde_json::Value) -> Bytes {
    Bytes::from(rmp_serde::to_vec_named(&v).expect("encode"))
}

/// Decode a msgpack payload as JSON.
pub fn json(msg: &Message) -> serde_json::Value {
    rmp_serde::from_slice(&msg.payload).expect("payload is msgpack")
}

/// rpc with a JSON payload and a deadline, so no test can hang on a lost response.
pub fn rpc(client: &mut Client, topic: &str, body: serde_json::Value) -> Result<Message, ClientError> {
    client.rpc_raw(topic, payload(body), Some(WAIT))
}

/// The errno name of a failed rpc ("ENOSYS"), for assertions.
pub fn errno_of(r: &Result<Message, ClientError>) -> String {
    match r {
        Err(ClientError::Remote(e)) => e.errnum.name(),
        other => panic!("expected an error response, got {other:?}"),
    }
}

/// The error text of a failed rpc.
pub fn errtext(r: &Result<Message, ClientError>) -> String {
    match r {
        Err(ClientError::Remote(e)) => e.text.clone(),
        other => panic!("expected an error response, got {other:?}"),
    }
}

/// `module.list` as JSON rows.
pub fn list(client: &mut Client) -> Vec<serde_json::Value> {
    let r = rpc(client, "module.list", serde_json::json!({})).expect("module.list");
    json(&r)["modules"].as_array().cloned().unwrap_or_default()
}

/// The `module.list` row of `name`.
pub fn row(client: &mut Client, name: &str) -> Option<serde_json::Value> {
    list(client).into_iter().find(|m| m["name"] == name)
}

#[derive(Serialize)]
pub struct Empty {}

/// Send `sig` to process `pid` (a child or a module's process the test knows); a process that
/// is already gone is not an error here: the test's own assertions say what should have run.
pub fn signal(pid: u32, sig: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// Whether the tests run as root (some checks of who may do what only mean something as
/// another user).
pub fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Collect the answers to matchtags 1..=n on `c`: the errno name of each (or "ok"), in
/// order. A request left without an answer fails the test.
pub fn answers(c: &mut Client, n: u32) -> Vec<String> {
    (1..=n)
        .map(|tag| {
            let r = c.wait_response(tag, Some(WAIT));
            match &r {
                Ok(_) => "ok".to_string(),
                Err(ClientError::Remote(_)) => errno_of(&r),
                Err(e) => panic!("request {tag} got no answer: {e}"),
            }
        })
        .collect()
}

/// Send `requests` (topic, JSON body) at once on one connection, with matchtags 1, 2, ...
/// in order; `answers` collects what comes back.
pub fn pipeline<'a>(c: &mut Client, requests: impl IntoIterator<Item = (&'a str, serde_json::Value)>) {
    for (tag, (topic, body)) in (1..).zip(requests) {
        let mut req = Message::request(topic, payload(body));
        req.matchtag = tag;
        c.queue(&req);
    }
    c.flush().expect("send the requests");
}
