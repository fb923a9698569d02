//! Process modules through a real broker: Rust and Python modules as child processes, the
//! handshake and its failures, a child killed mid-request, shutdown escalation to SIGKILL,
//! garbage on the socket. Every child is reaped.

use std::time::Duration;

use serde_json::json;
use switchboard_protocol::Message;
use switchboard_tests::{bin, errno_of, errtext, json, module, payload, row, rpc, script, wait_until, Broker, WAIT};

/// The process is gone (reaped, not a zombie).
fn gone(pid: u64) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn pid_of(b: &Broker, name: &str) -> u64 {
    row(&mut b.client(), name).expect("listed")["pid"].as_u64().expect("a pid")
}

#[test]
fn one_rust_source_runs_as_native_and_as_process_with_the_same_answers() {
    let b = Broker::start();
    b.load(&module("echo"), None, &[]);
    b.load(&bin("echo"), Some("pecho"), &[]);
    let mut c = b.client();
    for body in [json!({}), json!({"a": [1, 2, {"b": null}]}), json!({"s": "x".repeat(10_000)})] {
        let native = json(&rpc(&mut c, "echo.x", body.clone()).unwrap());
        let process = json(&rpc(&mut c, "pecho.x", body.clone()).unwrap());
        assert_eq!(native, body);
        assert_eq!(process, body);
    }
    let r = row(&mut c, "pecho").unwrap();
    assert_eq!((r["kind"].as_str(), r["state"].as_str()), (Some("process"), Some("running")));
    let pid = r["pid"].as_u64().unwrap();
    assert!(!gone(pid));
    assert_eq!(switchboard_tests::children_of(b.pid()), vec![pid as u32], "the module is the broker's child");
    assert!(row(&mut c, "echo").unwrap()["pid"].is_null());
    b.modctl_ok(&["remove", "pecho"]);
    assert!(wait_until(|| gone(pid)), "the child was reaped");
}

#[test]
fn info_of_a_process_module_leaves_no_process_running() {
    let b = Broker::start();
    let info: serde_json::Value =
        serde_json::from_str(&b.modctl_ok(&["info", "--json", bin("faulty").to_str().unwrap()])).unwrap();
    assert_eq!((info["name"].as_str(), info["kind"].as_str()), (Some("faulty"), Some("process")));
    // The describe run's child is gone: the broker has no children left.
    assert!(wait_until(|| switchboard_tests::children_of(b.pid()).is_empty()));
}

#[test]
fn a_child_killed_mid_request_fails_its_requesters_at_once() {
    let b = Broker::start();
    b.load(&bin("faulty"), None, &[]);
    b.load(&module("echo"), None, &[]);
    let pid = pid_of(&b, "faulty");
    let mut c = b.client();
    let mut req = Message::request("faulty.sleep", payload(json!({"ms": 60_000})));
    req.matchtag = 11;
    c.send(&req).unwrap();
    // Let the request reach the child, then kill it.
    assert!(wait_until(|| row(&mut b.client(), "faulty").unwrap()["msgs_in"].as_u64() >= Some(1)));
    std::thread::sleep(Duration::from_millis(100));
    switchboard_tests::signal(pid as u32, switchboard_tests::Signal::KILL);
    let r = c.wait_response(11, Some(WAIT));
    assert_eq!(errno_of(&r), "EHOSTUNREACH");
    assert!(errtext(&r).contains("killed by signal 9 (SIGKILL)"), "{}", errtext(&r));
    let r = row(&mut b.client(), "faulty").unwrap();
    assert_eq!(r["state"], "failed");
    assert!(r["reason"].as_str().unwrap().contains("SIGKILL"));
    assert!(gone(pid));
    rpc(&mut b.client(), "echo.x", json!({"still": "serving"})).unwrap();
}

#[test]
fn a_child_that_exits_fails_with_its_status_and_its_last_words() {
    let b = Broker::start();
    b.load(&bin("faulty"), None, &[]);
    let mut c = b.client();
    let r = rpc(&mut c, "faulty.panic", json!({}));
    assert_eq!(errno_of(&r), "EHOSTUNREACH");
    let text = errtext(&r);
    assert!(text.contains("exited with status 101") && text.contains("told to panic"), "{text}");
}

#[test]
fn a_child_that_ignores_shutdown_and_sigterm_is_killed_and_reaped() {
    let b = Broker::start_python();
    b.load(&script("stubborn.py"), None, &[]);
    let pid = pid_of(&b, "stubborn");
    b.modctl_ok(&["remove", "stubborn", "--grace", "300"]);
    assert!(gone(pid), "removed means reaped");
    assert!(b.log().contains("was killed by signal 9 (SIGKILL)"), "{}", b.log());
    // Each signal is logged under the module's name: SIGTERM at WARN, SIGKILL at ERROR with
    // its reason.
    let log = b.log();
    let line = |text: &str| log.lines().find(|l| l.contains(text)).unwrap_or_default().to_string();
    let term = line("did not exit within its grace period after shutdown; sent SIGTERM");
    assert!(term.contains("WARN") && term.contains("stubborn"), "SIGTERM logged at WARN:\n{log}");
    let kill = line("still running 300 ms after SIGTERM; killed (SIGKILL)");
    assert!(kill.contains("ERROR") && kill.contains("stubborn"), "SIGKILL logged at ERROR:\n{log}");
    assert!(switchboard_tests::children_of(b.pid()).is_empty(), "children left");
}

#[test]
fn a_child_that_never_says_hello_is_killed_and_the_load_says_what_was_missing() {
    let b = Broker::start();
    let mut c = b.client();
    let r =
        rpc(&mut c, "module.load", json!({"path": script("mute.sh").display().to_string(), "hello_timeout_ms": 300}));
    assert_eq!(errno_of(&r), "ETIMEDOUT");
    let text = errtext(&r);
    assert!(text.contains("did not say hello within 300 ms") && text.contains("'hello' control message"), "{text}");
    assert!(text.contains("it will never say hello"), "its last output is quoted: {text}");
    assert!(switchboard_tests::list(&mut c).is_empty());
    assert!(wait_until(|| switchboard_tests::children_of(b.pid()).is_empty()));
}

#[test]
fn a_child_that_dies_before_hello_explains_why() {
    let b = Broker::start_python();
    let out = b.modctl(&["load", script("crash_early.py").to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("exited with status 3 before saying hello"), "{err}");
    assert!(err.contains("permission denied"), "{err}");
}

#[test]
fn a_child_that_writes_garbage_is_disconnected_and_killed() {
    for (arg, why) in [("", "malformed frame"), ("oversized", "exceeds the limit")] {
        let b = Broker::start_python();
        b.load(&script("garbage.py"), None, &[arg]);
        let pid = pid_of(&b, "garbage");
        let mut c = b.client();
        assert!(wait_until(|| row(&mut c, "garbage").unwrap()["state"] == "failed"), "{}", b.log());
        let reason = row(&mut c, "garbage").unwrap()["reason"].as_str().unwrap().to_string();
        assert!(reason.contains(why) && reason.contains("killed"), "{reason}");
        assert!(b.log().contains(why));
        assert!(gone(pid));
        rpc(&mut c, "broker.ping", json!({})).unwrap();
    }
}

#[test]
fn a_childs_output_goes_to_the_broker_log_under_its_name() {
    let b = Broker::start_python();
    b.load(&switchboard_tests::repo_root().join("examples/python/resource_handler/handler.py"), None, &[]);
    assert!(b.wait_log("resource handler resources ready"));
    let log = b.log();
    let line = log.lines().find(|l| l.contains("resource handler resources ready")).unwrap();
    assert!(line.contains("module=\"resources\"") || line.contains("module=resources"), "{line}");
}

#[test]
fn a_python_modules_declarations_come_in_its_hello() {
    let b = Broker::start_python();
    let handler = switchboard_tests::repo_root().join("examples/python/resource_handler/handler.py");
    let path = handler.to_str().unwrap();
    let lines = switchboard_tests::info_declared(&b, &handler);
    assert_eq!(
        lines,
        [
            "methods:  resources.create  owner   make resource `name` with `spec`; EEXIST if it exists",
            "          resources.delete  owner   remove resource `name`; ENOENT if there is none",
            "          resources.modify  owner   merge `spec` into resource `name`'s and bump its version",
            "          resources.probe   anyone  the health of resource `name`, or of every resource without one",
            "events:   resources.changed  a resource was created, modified or deleted: {op, name, version}",
        ]
    );
    let mut c = b.client();
    let declared = json(&rpc(&mut c, "module.info", json!({"path": path})).unwrap())["declares"].clone();
    assert_eq!(declared["methods"].as_array().map(Vec::len), Some(4), "{declared}");
    assert_eq!(
        declared["methods"][3],
        json!({"name": "probe", "guest": true, "doc": "the health of resource `name`, or of every resource without one"})
    );
    // The describe run's child is gone; loaded, the module is listed with the same, and
    // answers the same to resources.methods.
    assert!(wait_until(|| switchboard_tests::children_of(b.pid()).is_empty()));
    b.load(&handler, None, &[]);
    assert_eq!(row(&mut c, "resources").expect("listed")["declares"], declared);
    assert_eq!(json(&rpc(&mut c, "resources.methods", json!({})).unwrap()), declared);
}

#[test]
fn a_python_module_that_declares_a_method_or_event_twice_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let b = Broker::start_python();
    for (what, body) in [
        (
            "method 'x' is declared twice",
            "@mod.method(\"x\")\ndef one(req):\n    return 1\n\n@mod.method(\"x\")\ndef two(req):\n    return 2\n",
        ),
        (
            "event 'twice.e' is declared twice",
            "mod.publishes(\"twice.e\", \"first\")\nmod.publishes(\"twice.e\", \"second\")\n",
        ),
    ] {
        let script = python_module(
            dir.path(),
            "twice.py",
            &format!("from switchboard_module import Module\nmod = Module(\"twice\")\n{body}\nmod.run()\n"),
        );
        let out = b.modctl(&["load", script.to_str().unwrap()]);
        assert!(!out.status.success(), "{what}: loaded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("EPROTO") && err.contains(&format!("sent a malformed hello: {what}")), "{err}");
    }
    assert!(wait_until(|| switchboard_tests::children_of(b.pid()).is_empty()), "a refused module's process is gone");
}

#[test]
fn the_python_resource_handler_works_through_the_broker() {
    let b = Broker::start_python();
    let handler = switchboard_tests::repo_root().join("examples/python/resource_handler/handler.py");
    let mut watcher = b.client();
    rpc(&mut watcher, "event.subscribe", json!({"topic": "resources.changed"})).unwrap();
    b.load(&handler, None, &["limit=2"]);
    let mut c = b.client();
    let created = json(&rpc(&mut c, "resources.create", json!({"name": "vol1", "spec": {"size_gb": 10}})).unwrap());
    assert_eq!((created["name"].as_str(), created["version"].as_u64()), (Some("vol1"), Some(1)));
    assert_eq!(errno_of(&rpc(&mut c, "resources.create", json!({"name": "vol1"}))), "EEXIST");
    let modified = json(&rpc(&mut c, "resources.modify", json!({"name": "vol1", "spec": {"size_gb": 20}})).unwrap());
    assert_eq!(modified["spec"], json!({"size_gb": 20}));
    assert_eq!(modified["version"], 2);
    rpc(&mut c, "resources.create", json!({"name": "vol2"})).unwrap();
    let full = rpc(&mut c, "resources.create", json!({"name": "vol3"}));
    assert_eq!(errno_of(&full), "EINVAL");
    assert!(errtext(&full).contains("at most 2"));
    let probe = json(&rpc(&mut c, "resources.probe", json!({})).unwrap());
    assert_eq!(probe["resources"].as_array().unwrap().len(), 2);
    rpc(&mut c, "resources.delete", json!({"name": "vol1"})).unwrap();
    assert_eq!(errno_of(&rpc(&mut c, "resources.probe", json!({"name": "vol1"}))), "ENOENT");
    assert_eq!(errno_of(&rpc(&mut c, "resources.create", json!({}))), "EINVAL");
    assert_eq!(errno_of(&rpc(&mut c, "resources.nosuch", json!({}))), "ENOSYS");
    let ops: Vec<String> = (0..4)
        .map(|_| {
            let e = json(&watcher.recv_timeout(Some(WAIT)).unwrap());
            format!("{}:{}", e["op"].as_str().unwrap(), e["name"].as_str().unwrap())
        })
        .collect();
    assert_eq!(ops, ["create:vol1", "modify:vol1", "create:vol2", "delete:vol1"]);
    let pid = pid_of(&b, "resources");
    b.modctl_ok(&["remove", "resources"]);
    assert!(gone(pid));
}

#[test]
fn a_process_module_refused_for_its_name_leaves_no_process_behind() {
    let b = Broker::start();
    let r =
        rpc(&mut b.client(), "module.load", json!({"path": bin("faulty").display().to_string(), "name": "bad.name"}));
    assert_eq!(errno_of(&r), "EINVAL");
    assert!(wait_until(|| switchboard_tests::children_of(b.pid()).is_empty()));
}

/// Write an executable Python module `name` into `dir`. It runs with the SDK of this working
/// tree (PYTHONPATH, see `python_broker`), so the tests check `sdk/python` as it is here.
fn python_module(dir: &std::path::Path, name: &str, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/usr/bin/env python3\n{body}")).expect("write the module");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// A broker whose Python modules import `sdk/python` from this working tree (the `.venv`
/// provides msgpack), with extra command-line arguments.
fn python_broker(args: &[&str]) -> Broker {
    let sdk = switchboard_tests::repo_root().join("sdk/python");
    Broker::start_env(args, &[("PATH", &switchboard_tests::python_path()), ("PYTHONPATH", sdk.to_str().unwrap())])
}

/// CLOCK_MONOTONIC in seconds: the clock of Python's `time.monotonic()`, so the test and a
/// module can order events between them without comparing durations.
fn monotonic() -> f64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// A Python module whose `work` takes 100 ms and answers `{"i", "started"}`, `started` being
/// when its handler began (time.monotonic); with an argument, it appends "done I" to that
/// file as its handler returns.
const SLOW_PY: &str = r#"
import time
from switchboard_module import Module

mod = Module("slow")


@mod.method("work")
def work(req):
    started = time.monotonic()
    time.sleep(0.1)
    if mod.args:
        with open(mod.args[0], "a") as f:
            f.write(f"done {req.payload['i']}\n")
    return {"i": req.payload["i"], "started": started}


if __name__ == "__main__":
    mod.run()
"#;

#[test]
fn a_python_module_sends_each_answer_when_its_handler_returns() {
    let dir = tempfile::tempdir().unwrap();
    let b = python_broker(&[]);
    b.load(&python_module(dir.path(), "slow.py", SLOW_PY), None, &[]);
    let mut c = b.client();
    // Twenty requests at once: the module has all of them to read before it answers one.
    for i in 0..20u32 {
        let mut req = Message::request("slow.work", payload(json!({"i": i})));
        req.matchtag = i + 1;
        c.queue(&req);
    }
    c.flush().unwrap();
    // (when the test received it, when its handler started)
    let mut answers = Vec::new();
    for _ in 0..20 {
        let m = c.recv_timeout(Some(WAIT)).expect("an answer");
        let received = monotonic();
        assert_eq!(m.errnum, 0, "{:?}", m.errstr);
        let v = json(&m);
        assert_eq!(v["i"].as_u64(), Some(u64::from(m.matchtag) - 1));
        answers.push((received, v["started"].as_f64().unwrap()));
    }
    // In the order the handlers ran.
    answers.sort_by(|a, b| a.1.total_cmp(&b.1));
    // Only order between the module's clock and the test's (the same clock), no durations:
    // each answer was here before the handler three places after its own even began. An
    // SDK that holds answers while more requests are buffered sends them together when it
    // runs out of input (with all twenty read at once, after the last handler).
    for k in 0..answers.len() - 3 {
        assert!(
            answers[k].0 < answers[k + 3].1,
            "answer {k} waited while later handlers ran (received, handler started): {answers:?}"
        );
    }
}

#[test]
fn broker_sigterm_with_python_requests_in_flight_answers_every_one_the_module_finished() {
    let dir = tempfile::tempdir().unwrap();
    let done = dir.path().join("done.log");
    let script = python_module(dir.path(), "slow.py", SLOW_PY);
    // A short grace period: the module is sent SIGTERM while it still has requests to run.
    let site = dir.path().join("site.toml");
    std::fs::write(
        &site,
        format!(
            "[broker]\ngrace_ms = 500\n\n[[module]]\nname = \"slow\"\npath = \"{}\"\nargs = [\"{}\"]\n",
            script.display(),
            done.display()
        ),
    )
    .unwrap();
    let mut b = python_broker(&["--config", site.to_str().unwrap()]);
    let mut c = b.client();
    const N: u32 = 30;
    for i in 0..N {
        let mut req = Message::request("slow.work", payload(json!({"i": i})));
        req.matchtag = i + 1;
        c.queue(&req);
    }
    c.flush().unwrap();
    let finished = || -> Vec<u64> {
        std::fs::read_to_string(&done)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("done ")?.parse().ok())
            .collect()
    };
    assert!(wait_until(|| finished().len() >= 2), "the module started working; log:\n{}", b.log());
    assert!(b.terminate().success(), "{}", b.log());
    // The broker is gone; what it sent the client is still to be read.
    let mut answered = Vec::new();
    for _ in 0..N {
        let m = c.recv_timeout(Some(WAIT)).expect("every requester is answered");
        if m.errnum == 0 {
            answered.push(json(&m)["i"].as_u64().unwrap());
        } else {
            assert_eq!(m.errnum, 113, "EHOSTUNREACH for what the module did not finish: {:?}", m.errstr);
        }
    }
    answered.sort_unstable();
    let finished = finished();
    assert!(finished.len() < N as usize, "the module was stopped mid-work: {finished:?}\n{}", b.log());
    assert!(b.log().contains("sent SIGTERM"), "{}", b.log());
    // Requests are run in order; every one the module finished reached its requester.
    assert_eq!(finished, (0..finished.len() as u64).collect::<Vec<_>>());
    assert_eq!(answered, finished, "answered with success exactly what the module finished");
}

#[test]
fn a_python_rpc_to_itself_is_edeadlk_and_to_a_silent_service_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let script = python_module(
        dir.path(),
        "caller.py",
        r#"
from switchboard_module import Module

mod = Module("caller", rpc_timeout=0.3)


@mod.on_init
def init(m):
    m.add_service("calleralias")


@mod.method("call")
def call(req):
    # {"topic": T} with the module's default timeout, or {"topic": T, "timeout": S}.
    p = req.payload
    if "timeout" in p:
        return mod.rpc(p["topic"], {}, timeout=p["timeout"])
    return mod.rpc(p["topic"], {})


if __name__ == "__main__":
    mod.run()
"#,
    );
    let b = python_broker(&[]);
    b.load(&script, None, &[]);
    let mut c = b.client();
    // A service that never answers: a client that registers it and does not read.
    let mut mute = b.client();
    rpc(&mut mute, "service.add", json!({"service": "mute"})).unwrap();

    for topic in ["caller.x", "calleralias.y"] {
        let r = rpc(&mut c, "caller.call", json!({"topic": topic, "timeout": 60}));
        assert_eq!(errno_of(&r), "EDEADLK", "{topic}");
        assert!(errtext(&r).contains(&format!("{topic}: 'caller' would wait on itself")), "{}", errtext(&r));
    }
    // The module's default (rpc_timeout=0.3), then a per-call one.
    let r = rpc(&mut c, "caller.call", json!({"topic": "mute.wait"}));
    assert_eq!(errno_of(&r), "ETIMEDOUT");
    assert_eq!(errtext(&r), "no response from mute.wait within 0.3 s");
    let r = rpc(&mut c, "caller.call", json!({"topic": "mute.wait", "timeout": 0.2}));
    assert_eq!(errno_of(&r), "ETIMEDOUT");
    assert_eq!(errtext(&r), "no response from mute.wait within 0.2 s");

    // The module still serves, and a late answer to a call it gave up on is not taken for
    // the answer to the next one.
    let mut req = Message::request("caller.call", payload(json!({"topic": "mute.wait", "timeout": 60})));
    req.matchtag = 77;
    c.send(&req).unwrap();
    let mut late = Vec::new();
    while late.len() < 3 {
        let m = mute.recv_timeout(Some(WAIT)).expect("the requests reach the silent service");
        assert_eq!(m.topic, "mute.wait");
        late.push(m);
    }
    for (n, m) in late.iter().enumerate() {
        mute.send(&m.response(payload(json!({"answer": n})))).unwrap();
    }
    let r = c.wait_response(77, Some(WAIT)).expect("the third call's own answer");
    assert_eq!(json(&r), json!({"answer": 2}));
}
