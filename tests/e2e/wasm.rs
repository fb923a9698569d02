//! WASM modules through a real broker: Rust actors built as components, the compiled-code
//! cache, and hostile modules (an infinite loop, a memory bomb, a trap, a file opened
//! without a grant) that fail alone while the broker keeps serving.

use serde_json::json;
use switchboard_tests::{errno_of, errtext, json, module, row, rpc, wait_until, wasm_module, Broker};

fn load_wasm(b: &Broker, name: &str, file: &str, extra: serde_json::Value) -> Result<(), String> {
    let mut body = json!({"path": wasm_module(file).display().to_string(), "name": name});
    if let (Some(m), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    rpc(&mut b.client(), "module.load", body).map(drop).map_err(|e| e.to_string())
}

#[test]
fn one_rust_source_runs_as_a_component_with_the_same_answers() {
    let b = Broker::start();
    b.load(&module("echo"), None, &[]);
    b.load(&wasm_module("echo"), Some("wecho"), &[]);
    b.load(&wasm_module("kvs"), Some("wkvs"), &[]);
    let mut c = b.client();
    for body in [json!({}), json!({"a": [1, 2, {"b": null}]}), json!({"s": "x".repeat(10_000)})] {
        assert_eq!(json(&rpc(&mut c, "echo.x", body.clone()).unwrap()), body);
        assert_eq!(json(&rpc(&mut c, "wecho.x", body.clone()).unwrap()), body);
    }
    let r = row(&mut c, "wecho").unwrap();
    assert_eq!((r["kind"].as_str(), r["state"].as_str()), (Some("wasm"), Some("running")));

    let mut watcher = b.client();
    rpc(&mut watcher, "event.subscribe", json!({"topic": "kvs.changed"})).unwrap();
    rpc(&mut c, "wkvs.put", json!({"key": "k", "value": {"deep": [1, 2]}})).unwrap();
    assert_eq!(json(&rpc(&mut c, "wkvs.get", json!({"key": "k"})).unwrap()), json!({"deep": [1, 2]}));
    assert_eq!(errno_of(&rpc(&mut c, "wkvs.get", json!({"key": "nope"}))), "ENOENT");
    let ev = watcher.recv_timeout(Some(switchboard_tests::WAIT)).unwrap();
    assert_eq!(json(&ev), json!({"key": "k", "op": "put"}));
    b.modctl_ok(&["remove", "wecho"]);
    b.modctl_ok(&["remove", "wkvs"]);
}

#[test]
fn info_describes_a_component_without_starting_it() {
    let b = Broker::start();
    let info: serde_json::Value =
        serde_json::from_str(&b.modctl_ok(&["info", "--json", wasm_module("kvs").to_str().unwrap()])).unwrap();
    assert_eq!((info["name"].as_str(), info["kind"].as_str()), (Some("kvs"), Some("wasm")));
    assert!(switchboard_tests::list(&mut b.client()).is_empty());
}

#[test]
fn a_component_declares_what_the_same_rust_source_declares_natively() {
    let b = Broker::start();
    let info = |path: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(&b.modctl_ok(&["info", "--json", path.to_str().unwrap()])).unwrap()
    };
    // Through the WIT `declare` export, exactly what the native table says (the test of the
    // native kvs checks that against the source).
    let (wasm, native) = (info(&wasm_module("kvs")), info(&module("kvs")));
    assert_eq!(wasm["declares"], native["declares"]);
    assert_eq!(
        wasm["declares"]["events"],
        json!([{"name": "kvs.changed", "doc": "a key was put or deleted: `{key, op}`, op `put` or `delete`"}])
    );
    assert_eq!(wasm["declares"]["methods"].as_array().map(Vec::len), Some(4), "{wasm}");
    let out = b.modctl_ok(&["info", wasm_module("kvs").to_str().unwrap()]);
    assert!(out.contains("\nmethods:  kvs.delete  owner  remove `key`"), "{out}");
    assert!(
        out.ends_with("\nevents:   kvs.changed  a key was put or deleted: `{key, op}`, op `put` or `delete`\n"),
        "{out}"
    );
    // Loaded, the component is listed with them and answers the same to kvs.methods.
    load_wasm(&b, "kvs", "kvs", json!({})).unwrap();
    let mut c = b.client();
    assert_eq!(row(&mut c, "kvs").expect("listed")["declares"], native["declares"]);
    assert_eq!(json(&rpc(&mut c, "kvs.methods", json!({})).unwrap()), native["declares"]);
}

#[test]
fn a_component_built_before_declare_existed_loads_runs_and_declares_nothing() {
    let b = Broker::start();
    let old = wasm_module("oldworld");
    let lines = switchboard_tests::info_declared(&b, &old);
    assert_eq!(lines, ["methods:  none declared", "events:   none declared"]);
    assert_eq!(b.modctl_ok(&["load", old.to_str().unwrap()]), "loaded oldworld (wasm, services: oldworld)\n");
    let mut c = b.client();
    assert_eq!(json(&rpc(&mut c, "oldworld.anything", json!({"x": [1, 2]})).unwrap()), json!({"x": [1, 2]}));
    let listed = row(&mut c, "oldworld").expect("listed");
    assert_eq!(listed["declares"], json!({"methods": [], "otherwise": false, "events": []}), "{listed}");
    b.modctl_ok(&["remove", "oldworld"]);
}

#[test]
fn compiled_code_is_cached_and_a_damaged_entry_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let b = Broker::start_env(&[], &[("SWITCHBOARD_CACHE_DIR", cache.to_str().unwrap())]);
    let compiled = |b: &Broker| b.log().matches("compiled a WASM component").count();
    load_wasm(&b, "e1", "echo", json!({})).unwrap();
    assert_eq!(compiled(&b), 1);
    load_wasm(&b, "e2", "echo", json!({})).unwrap();
    assert_eq!(compiled(&b), 1, "the second load came from the cache");
    // Damage the entry: it is noticed, ignored and rebuilt.
    let entry = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .expect("a cache entry");
    let mut bytes = std::fs::read(&entry).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&entry, bytes).unwrap();
    load_wasm(&b, "e3", "echo", json!({})).unwrap();
    assert_eq!(compiled(&b), 2);
    assert!(b.log().contains("ignoring a stale or damaged compiled-code cache entry"));
    let mut c = b.client();
    for name in ["e1", "e2", "e3"] {
        assert_eq!(json(&rpc(&mut c, &format!("{name}.x"), json!({"n": name})).unwrap()), json!({"n": name}));
    }
}

fn failed_with(b: &Broker, name: &str, needle: &str) {
    let mut c = b.client();
    assert!(wait_until(|| row(&mut c, name).is_some_and(|r| r["state"] == "failed")), "{}", b.log());
    let reason = row(&mut c, name).unwrap()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains(needle), "{reason}");
}

#[test]
fn an_infinite_loop_is_interrupted_at_its_cpu_deadline() {
    let b = Broker::start();
    b.load(&module("echo"), None, &[]);
    load_wasm(&b, "spinner", "faulty", json!({"cpu_ms": 200})).unwrap();
    let mut c = b.client();
    let r = rpc(&mut c, "spinner.spin", json!({}));
    assert_eq!(errno_of(&r), "EHOSTUNREACH");
    assert!(errtext(&r).contains("CPU deadline of 200 ms"), "{}", errtext(&r));
    failed_with(&b, "spinner", "exceeded its CPU deadline of 200 ms");
    rpc(&mut c, "echo.x", json!({"still": "serving"})).unwrap();
}

#[test]
fn a_memory_bomb_hits_its_cap() {
    let b = Broker::start();
    load_wasm(&b, "bomb", "faulty", json!({"memory_mb": 32})).unwrap();
    let mut c = b.client();
    // Within the cap it works.
    assert_eq!(json(&rpc(&mut c, "bomb.hog", json!({"mb": 4})).unwrap()), json!(4 << 20));
    let r = rpc(&mut c, "bomb.hog", json!({"mb": 200}));
    assert_eq!(errno_of(&r), "EHOSTUNREACH");
    failed_with(&b, "bomb", "exceeded its memory limit of 32 MiB");
    rpc(&mut c, "broker.ping", json!({})).unwrap();
}

#[test]
fn a_trap_fails_the_module_with_its_panic_message() {
    let b = Broker::start();
    load_wasm(&b, "trapper", "faulty", json!({})).unwrap();
    let mut c = b.client();
    let r = rpc(&mut c, "trapper.panic", json!({}));
    assert_eq!(errno_of(&r), "EHOSTUNREACH");
    failed_with(&b, "trapper", "told to panic");
    failed_with(&b, "trapper", "trapped");
}

#[test]
fn a_malformed_frame_fails_the_module_that_sent_it() {
    let b = Broker::start();
    load_wasm(&b, "garbler", "faulty", json!({})).unwrap();
    let mut c = b.client();
    // The good frame before the bad one was sent: the request has its answer.
    let r = rpc(&mut c, "garbler.garbage", json!({}));
    assert!(r.is_ok(), "{r:?}");
    failed_with(&b, "garbler", "it sent a malformed frame (frame 2 of a send-all)");
    failed_with(&b, "garbler", "unknown message type 3");
    assert_eq!(errno_of(&rpc(&mut c, "garbler.whoami", json!({}))), "ENOSYS");
    rpc(&mut c, "broker.ping", json!({})).unwrap();
}

#[test]
fn files_are_out_of_reach_without_a_grant_and_readable_with_one() {
    let b = Broker::start();
    let shared = b.dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("motd.txt"), "hello from the host").unwrap();
    let inside = shared.join("motd.txt").display().to_string();
    load_wasm(&b, "jailed", "faulty", json!({})).unwrap();
    let mut c = b.client();
    let r = rpc(&mut c, "jailed.read", json!({"path": inside}));
    assert_eq!(errno_of(&r), "EPERM");
    assert_eq!(row(&mut c, "jailed").unwrap()["state"], "running", "a refused open is not a failure");

    let grant = json!({"dirs": [{"host": shared.display().to_string(), "guest": "/data"}]});
    load_wasm(&b, "granted", "faulty", grant).unwrap();
    let text = json(&rpc(&mut c, "granted.read", json!({"path": "/data/motd.txt"})).unwrap());
    assert_eq!(text, json!("hello from the host"));
    // Read-only: the grant does not let it escape the directory either.
    assert_eq!(errno_of(&rpc(&mut c, "granted.read", json!({"path": "/etc/passwd"}))), "EPERM");
}

#[test]
fn a_component_calls_other_services() {
    let b = Broker::start();
    b.load(&module("echo"), None, &[]);
    load_wasm(&b, "caller", "faulty", json!({})).unwrap();
    let mut c = b.client();
    assert_eq!(json(&rpc(&mut c, "caller.rpc", json!({"topic": "echo.x"})).unwrap()), json!({"topic": "echo.x"}));
    assert_eq!(errno_of(&rpc(&mut c, "caller.rpc", json!({"topic": "nowhere.x"}))), "ENOSYS");
    // The world's request has no flags: an UPSTREAM call is refused, not sent without its flag.
    let r = rpc(&mut c, "caller.call", json!({"topic": "echo.x", "upstream": true}));
    assert_eq!(errno_of(&r), "ENOSYS", "{r:?}");
    assert!(errtext(&r).contains("rpc_upstream is not available to a WASM module"), "{r:?}");
    // A request that waits a long time for its answer does not count against the CPU deadline.
    b.load(&module("faulty"), Some("slow"), &[]);
    load_wasm(&b, "patient", "faulty", json!({"cpu_ms": 100})).unwrap();
    let r = rpc(&mut c, "patient.rpc", json!({"topic": "slow.sleep", "ms": 500}));
    assert!(r.is_ok(), "{r:?}");
}

#[test]
fn many_requests_in_flight_are_answered_in_batches_each_with_its_own_payload() {
    let b = Broker::start();
    b.load(&wasm_module("echo"), Some("wecho"), &[]);
    let mut c = b.client();
    for i in 0..500u32 {
        let mut req = switchboard_protocol::Message::request("wecho.x", switchboard_tests::payload(json!({"i": i})));
        req.matchtag = 1 + i;
        c.queue(&req);
    }
    c.flush().unwrap();
    let mut seen = vec![false; 500];
    for _ in 0..500 {
        let r = c.recv_timeout(Some(switchboard_tests::WAIT)).unwrap();
        let i = (r.matchtag - 1) as usize;
        assert_eq!(json(&r), json!({"i": i}));
        assert!(!std::mem::replace(&mut seen[i], true), "answered twice: {i}");
    }
    assert!(b.log().contains("module loaded module=wecho"));
}
