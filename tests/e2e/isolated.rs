//! Isolated native modules (RFC 5 §9) through a real broker, the real `switchboard-native-host`
//! and real `.so` files (Rust and C, the same files the in-broker tests load): a crash
//! mid-request fails only that module (its requesters get EHOSTUNREACH, `modctl list` shows
//! the signal, the broker and its other modules keep serving), a site file's restart policy
//! starts it again, it answers like the in-broker module, and `--isolated` on anything but a
//! native library, or a library the in-broker loader refuses, is refused the same way.
//! Every wait is bounded (`WAIT`); nothing here times anything.

use std::path::Path;

use serde_json::json;
use switchboard_tests::{
    answers, bin, c_module, errno_of, errtext, json, list, module, row, rpc, script, wait_until, Broker,
};

/// The module's row of `module.list`, which must exist.
fn status(b: &Broker, name: &str) -> serde_json::Value {
    row(&mut b.client(), name).unwrap_or_else(|| panic!("'{name}' is not listed; log:\n{}", b.log()))
}

fn pid_of(b: &Broker, name: &str) -> u32 {
    status(b, name)["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).expect("an isolated module has a pid")
}

#[test]
fn a_segfault_mid_request_fails_only_the_isolated_module() {
    let b = Broker::start();
    b.modctl_ok(&["load", &module("faulty").display().to_string(), "--isolated"]);
    b.load(&module("echo"), None, &[]);
    let row = status(&b, "faulty");
    assert_eq!((row["kind"].as_str(), row["isolated"].as_bool()), (Some("native"), Some(true)), "{row}");
    let pid = pid_of(&b, "faulty");
    assert_ne!(pid, b.pid(), "the library runs in a process of its own");

    // One request answered, then the crash while more wait behind it: the crashing request
    // and every one queued behind it are answered EHOSTUNREACH. (An answer sent just before
    // the crash, while more input was queued, may have been held for batching and die with
    // the process, RFC 5 §9: so the one that must succeed is answered first.)
    let mut c = b.client();
    assert!(rpc(&mut c, "faulty.sleep", json!({"ms": 1})).is_ok());
    let mut requests = vec![("faulty.segfault", json!({}))];
    requests.extend((0..8).map(|_| ("faulty.sleep", json!({"ms": 1}))));
    switchboard_tests::pipeline(&mut c, requests.iter().map(|(t, b)| (*t, b.clone())));
    let got = answers(&mut c, requests.len() as u32);
    assert!(got.iter().all(|e| e == "EHOSTUNREACH"), "{got:?}");

    // The broker and its other modules serve on; the module is failed with its signal.
    assert!(rpc(&mut b.client(), "echo.x", json!({"still": "serving"})).is_ok(), "log:\n{}", b.log());
    assert!(rpc(&mut b.client(), "broker.ping", json!({})).is_ok());
    assert!(wait_until(|| status(&b, "faulty")["state"] == "failed"), "{}", status(&b, "faulty"));
    let reason = status(&b, "faulty")["reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("killed by signal 11 (SIGSEGV)"), "{reason}");
    let table = b.modctl_ok(&["list"]);
    let line = table.lines().find(|l| l.starts_with("faulty ")).expect("faulty's row");
    assert!(line.contains("native (isolated)") && line.contains("SIGSEGV"), "{table}");
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the host process was not reaped");
    // A later request is refused at once, not left waiting.
    let r = rpc(&mut b.client(), "faulty.whoami", json!({}));
    assert_eq!(errno_of(&r), "ENOSYS", "a failed module answered");
    // The error says what became of the module that provided the service.
    assert!(
        errtext(&r).ends_with(": module 'faulty' failed (was killed by signal 11 (SIGSEGV))"),
        "{}\n{}",
        errtext(&r),
        b.log()
    );
    // Its name can be loaded again, and the new instance serves.
    b.modctl_ok(&["load", &module("faulty").display().to_string(), "--isolated"]);
    assert!(rpc(&mut b.client(), "faulty.whoami", json!({})).is_ok());
}

#[test]
fn an_abort_is_reported_with_its_signal_and_answers_its_requester() {
    let b = Broker::start();
    b.modctl_ok(&["load", &module("faulty").display().to_string(), "--isolated", "--name", "fa"]);
    let r = rpc(&mut b.client(), "fa.abort", json!({}));
    assert_eq!(errno_of(&r), "EHOSTUNREACH", "{}", errtext(&r));
    assert!(errtext(&r).contains("signal 6 (SIGABRT)"), "{}", errtext(&r));
    assert!(wait_until(|| status(&b, "fa")["state"] == "failed"));
    assert!(rpc(&mut b.client(), "broker.ping", json!({})).is_ok());
}

#[test]
fn isolated_echo_rust_and_c_answer_as_in_the_broker() {
    let b = Broker::start();
    let out = b.modctl_ok(&["load", &module("echo").display().to_string(), "--isolated", "--name", "iecho"]);
    assert_eq!(out.trim(), "loaded iecho (native (isolated), services: iecho)");
    let body = json!({"n": 7, "s": "isolated"});
    let r = rpc(&mut b.client(), "iecho.anything", body.clone()).expect("an answer");
    assert_eq!(json(&r), body);
    let ping = b.modctl_ok(&["ping", "iecho", "--count", "2"]);
    assert_eq!(ping.lines().count(), 2, "{ping}");
    // It declares what the same file declares in the broker.
    b.load(&module("echo"), None, &[]);
    let (isolated, in_broker) = (status(&b, "iecho")["declares"].clone(), status(&b, "echo")["declares"].clone());
    assert_eq!(isolated["otherwise"], true, "{isolated}");
    assert_eq!(isolated, in_broker);
    // Every view of it says so: stats and the Prometheus exposition too.
    let stats = b.modctl_ok(&["stats", "iecho"]);
    assert!(stats.lines().any(|l| l.starts_with("kind") && l.ends_with("native (isolated)")), "{stats}");
    let prom = b.modctl_ok(&["list", "--format", "prometheus"]);
    let info = |name: &str| {
        prom.lines()
            .find(|l| l.starts_with("switchboard_module_info{") && l.contains(&format!("module=\"{name}\"")))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no info sample for {name}: {prom}"))
    };
    assert!(info("iecho").contains("isolated=\"true\""), "{prom}");
    assert!(info("echo").contains("isolated=\"false\""), "{prom}");

    // The name, arguments and configuration reach the library as in the broker.
    let faulty = module("faulty").display().to_string();
    b.modctl_ok(&["load", &faulty, "--isolated", "--name", "f2", "one", "two"]);
    let who = json(&rpc(&mut b.client(), "f2.whoami", json!({})).expect("whoami"));
    assert_eq!(who, json!({"name": "f2", "args": ["one", "two"]}));
    let methods = status(&b, "f2")["declares"]["methods"].clone();
    assert!(methods.as_array().is_some_and(|m| m.iter().any(|m| m["name"] == "segfault")), "{methods}");

    // A C module, compiled as for the broker, unchanged.
    let c_echo = c_module("echo", b.dir.path());
    b.modctl_ok(&["load", &c_echo.display().to_string(), "--isolated", "--name", "cecho"]);
    let r = rpc(&mut b.client(), "cecho.x", json!({"from": "c"})).expect("the C echo answers");
    assert_eq!(json(&r), json!({"from": "c"}));

    // Removing it ends the host process cleanly.
    let pid = pid_of(&b, "iecho");
    b.modctl_ok(&["remove", "iecho"]);
    assert!(list(&mut b.client()).iter().all(|m| m["name"] != "iecho"));
    assert!(wait_until(|| !Path::new(&format!("/proc/{pid}")).exists()), "the host process was not reaped");
    assert!(!b.log().contains("SIGKILL"), "the host needed killing:\n{}", b.log());
}

#[test]
fn isolated_is_refused_for_other_kinds_and_for_a_library_the_broker_refuses() {
    let b = Broker::start();
    let wasm = switchboard_tests::wasm_module("echo");
    let out = b.modctl(&["load", &wasm.display().to_string(), "--isolated"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is a wasm module: only native modules (*.so) can be loaded isolated"), "{err}");
    let out = b.modctl(&["load", &bin("faulty").display().to_string(), "--isolated"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is a process module: only native modules") && err.contains("EINVAL"), "{err}");
    let out = b.modctl(&["load", &script("sleepy.py").display().to_string(), "--isolated"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(list(&mut b.client()).is_empty(), "a refused load left something behind");

    // A library with the wrong ABI: the same words whether the broker or the host opens it.
    let bad = c_module("badabi", b.dir.path()).display().to_string();
    let in_broker = b.modctl(&["load", &bad]);
    let isolated = b.modctl(&["load", &bad, "--isolated"]);
    assert_eq!(in_broker.status.code(), Some(1));
    let (a, i) = (String::from_utf8_lossy(&in_broker.stderr), String::from_utf8_lossy(&isolated.stderr));
    assert!(a.contains("ABI version 2") && a.contains("ENOEXEC"), "{a}");
    assert_eq!(a, i, "the isolated refusal differs from the in-broker one");
    assert!(list(&mut b.client()).is_empty());
    assert!(rpc(&mut b.client(), "broker.ping", json!({})).is_ok());
}

#[test]
fn a_missing_native_host_is_a_clear_error() {
    let b = Broker::start_env(&[], &[("SWITCHBOARD_NATIVE_HOST", "/nonexistent/switchboard-native-host")]);
    let out = b.modctl(&["load", &module("echo").display().to_string(), "--isolated"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("ENOENT")
            && err.contains("the native module host /nonexistent/switchboard-native-host does not exist")
            && err.contains("SWITCHBOARD_NATIVE_HOST"),
        "{err}"
    );
    assert!(list(&mut b.client()).is_empty());
    // In the broker it still loads.
    b.load(&module("echo"), None, &[]);
}

#[test]
fn a_site_file_isolated_module_is_restarted_by_its_policy_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site.toml");
    let text = format!(
        "[[module]]\npath = \"{faulty}\"\nisolated = true\nrestart = \"on-failure\"\nrestart_delay_ms = 50\n\n\
         [[module]]\npath = \"{echo}\"\n",
        faulty = module("faulty").display(),
        echo = module("echo").display(),
    );
    std::fs::write(&site, text).unwrap();
    let b = Broker::start_site(&site);
    let running = || row(&mut b.client(), "faulty").is_some_and(|r| r["state"] == "running");
    assert!(wait_until(running), "the site's faulty did not start; log:\n{}", b.log());
    assert_eq!(status(&b, "faulty")["isolated"], true);
    let first = pid_of(&b, "faulty");

    let r = rpc(&mut b.client(), "faulty.segfault", json!({}));
    assert_eq!(errno_of(&r), "EHOSTUNREACH", "{}", errtext(&r));
    assert!(rpc(&mut b.client(), "echo.x", json!({})).is_ok());
    let restarted = wait_until(|| {
        let s = status(&b, "faulty");
        s["state"] == "running" && s["restarts"] == 1
    });
    let s = status(&b, "faulty");
    assert!(restarted, "not restarted: {s}\nlog:\n{}", b.log());
    assert!(s["last_failure"].as_str().unwrap_or_default().contains("SIGSEGV"), "{s}");
    assert_eq!(s["isolated"], true, "the restart runs it isolated again: {s}");
    assert_ne!(pid_of(&b, "faulty"), first, "a new host process");
    assert!(rpc(&mut b.client(), "faulty.whoami", json!({})).is_ok());
}

#[test]
fn describing_a_library_that_crashes_when_opened_fails_only_the_description() {
    let b = Broker::start();
    let lib = c_module("crashinit", b.dir.path());
    let out = b.modctl(&["info", lib.to_str().unwrap()]);
    assert!(!out.status.success(), "the description succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SIGSEGV"), "{err}");
    // The library was opened in the native module host: the broker is alive and serving.
    assert!(rpc(&mut b.client(), "broker.ping", json!({})).is_ok(), "the broker died describing a library");
    assert!(wait_until(|| switchboard_tests::children_of(b.pid()).is_empty()), "the host process is gone");
}
