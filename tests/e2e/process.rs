//! Process modules through a real broker: Rust and Python modules as child processes, the
//! handshake and its failures, a child killed mid-request, shutdown escalation to SIGKILL,
//! garbage on the socket. Every child is reaped.

use std::time::Duration;

use serde_json::json;
use switchboard_module_api::Message;
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
    // SAFETY: signalling the module's child process.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
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
