//! Module lifecycle through a real broker and `modctl`: load, list, call, remove; the
//! shipped modules; a module written in C; instances under several names; module-to-module
//! rpc and events; remove of a module that will not stop.

use std::time::Duration;

use serde_json::json;
use switchboard_tests::{c_module, errno_of, errtext, json, module, row, rpc, wait_until, Broker, WAIT};

#[test]
fn load_list_call_remove() {
    let b = Broker::start();
    let out = b.modctl_ok(&["load", module("echo").to_str().unwrap()]);
    assert!(out.contains("loaded echo"), "{out}");
    let mut c = b.client();
    let r = rpc(&mut c, "echo.hello", json!({"x": [1, 2, 3]})).unwrap();
    assert_eq!(json(&r), json!({"x": [1, 2, 3]}));

    let rows: serde_json::Value = serde_json::from_str(&b.modctl_ok(&["list", "--json"])).unwrap();
    let echo = &rows[0];
    assert_eq!(echo["name"], "echo");
    assert_eq!(echo["kind"], "native");
    assert_eq!(echo["state"], "running");
    assert_eq!(echo["services"], json!(["echo"]));
    assert_eq!(echo["digest"].as_str().unwrap().len(), 64);
    assert!(echo["size"].as_u64().unwrap() > 0);
    assert_eq!(echo["msgs_in"], 1);
    assert_eq!(echo["msgs_out"], 1);

    let table = b.modctl_ok(&["list"]);
    let header = table.lines().next().unwrap();
    for col in ["NAME", "KIND", "SERVICES", "DIGEST", "SIZE", "IDLE", "IN", "OUT", "STATE"] {
        assert!(header.contains(col), "{header}");
    }
    assert!(table.lines().nth(1).unwrap().starts_with("echo "), "{table}");

    b.modctl_ok(&["remove", "echo"]);
    assert!(row(&mut c, "echo").is_none());
    assert_eq!(errno_of(&rpc(&mut c, "echo.hello", json!({}))), "ENOSYS");
    // Removing it again names the problem.
    let out = b.modctl(&["remove", "echo"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no module named 'echo'"));
}

#[test]
fn info_describes_a_module_without_starting_it() {
    let b = Broker::start();
    let info: serde_json::Value =
        serde_json::from_str(&b.modctl_ok(&["info", "--json", module("kvs").to_str().unwrap()])).unwrap();
    assert_eq!(info["name"], "kvs");
    assert_eq!(info["kind"], "native");
    assert_eq!(info["services"], json!(["kvs"]));
    let mut c = b.client();
    assert!(row(&mut c, "kvs").is_none(), "info must not load the module");
    assert_eq!(errno_of(&rpc(&mut c, "kvs.list", json!({}))), "ENOSYS");
}

#[test]
fn a_rust_modules_methods_and_events_are_known_without_running_it() {
    let b = Broker::start();
    let kvs = module("kvs");
    let path = kvs.to_str().unwrap();
    let lines = switchboard_tests::info_declared(&b, &kvs);
    assert_eq!(
        lines,
        [
            "methods:  kvs.delete  owner  remove `key` and publish kvs.changed; ENOENT if there is none",
            "          kvs.get     owner  the value of `key`; ENOENT if there is none",
            "          kvs.list    owner  every key, as `keys`",
            "          kvs.put     owner  set `key` to `value` (any msgpack value) and publish kvs.changed",
            "events:   kvs.changed  a key was put or deleted: `{key, op}`, op `put` or `delete`",
        ]
    );
    let method = |name: &str, doc: &str| json!({"name": name, "guest": false, "doc": doc});
    let declared = json!({
        "methods": [
            method("delete", "remove `key` and publish kvs.changed; ENOENT if there is none"),
            method("get", "the value of `key`; ENOENT if there is none"),
            method("list", "every key, as `keys`"),
            method("put", "set `key` to `value` (any msgpack value) and publish kvs.changed"),
        ],
        "otherwise": false,
        "events": [{"name": "kvs.changed", "doc": "a key was put or deleted: `{key, op}`, op `put` or `delete`"}],
    });
    let mut c = b.client();
    assert_eq!(json(&rpc(&mut c, "module.info", json!({"path": path})).unwrap())["declares"], declared);
    assert!(row(&mut c, "kvs").is_none(), "info must not load the module");
    // Loaded: module.list carries the same, and the running module answers the same.
    b.load(&kvs, None, &[]);
    assert_eq!(row(&mut c, "kvs").expect("listed")["declares"], declared);
    assert_eq!(json(&rpc(&mut c, "kvs.methods", json!({})).unwrap()), declared);
    // echo declares no method but a catch-all handler.
    let lines = switchboard_tests::info_declared(&b, &module("echo"));
    assert_eq!(
        lines,
        ["methods:  echo.*  anyone  a catch-all handler answers every method", "events:   none declared"]
    );
}

#[test]
fn kvs_stores_values_and_announces_every_write() {
    let b = Broker::start();
    b.load(&module("kvs"), None, &[]);
    let mut watcher = b.client();
    rpc(&mut watcher, "event.subscribe", json!({"topic": "kvs.changed"})).unwrap();
    let mut c = b.client();
    let value = json!({"nested": [1, "two", {"three": 3.5}], "flag": true});
    rpc(&mut c, "kvs.put", json!({"key": "a", "value": value})).unwrap();
    rpc(&mut c, "kvs.put", json!({"key": "b", "value": 7})).unwrap();
    assert_eq!(json(&rpc(&mut c, "kvs.get", json!({"key": "a"})).unwrap()), value);
    assert_eq!(json(&rpc(&mut c, "kvs.list", json!({})).unwrap()), json!({"keys": ["a", "b"]}));
    rpc(&mut c, "kvs.delete", json!({"key": "a"})).unwrap();
    let missing = rpc(&mut c, "kvs.get", json!({"key": "a"}));
    assert_eq!(errno_of(&missing), "ENOENT");
    assert!(errtext(&missing).contains("no key 'a'"));
    assert_eq!(errno_of(&rpc(&mut c, "kvs.delete", json!({"key": "a"}))), "ENOENT");
    assert_eq!(errno_of(&rpc(&mut c, "kvs.put", json!({"nokey": 1}))), "EPROTO");
    assert_eq!(errno_of(&rpc(&mut c, "kvs.nomethod", json!({}))), "ENOSYS");

    let events: Vec<serde_json::Value> = (0..3).map(|_| json(&watcher.recv_timeout(Some(WAIT)).unwrap())).collect();
    assert_eq!(
        events,
        vec![json!({"key": "a", "op": "put"}), json!({"key": "b", "op": "put"}), json!({"key": "a", "op": "delete"})]
    );
}

#[test]
fn heartbeat_publishes_at_the_period_it_was_given() {
    let b = Broker::start();
    let mut sub = b.client();
    rpc(&mut sub, "event.subscribe", json!({"topic": "heartbeat.pulse"})).unwrap();
    b.load(&module("heartbeat"), None, &["period=0.05"]);
    let counts: Vec<u64> =
        (0..3).map(|_| json(&sub.recv_timeout(Some(WAIT)).unwrap())["count"].as_u64().unwrap()).collect();
    assert_eq!(counts, vec![1, 2, 3]);
    let bad = b.modctl(&["load", module("heartbeat").to_str().unwrap(), "--name", "hb2", "period=never"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("failed to start") && err.contains("period=never"), "{err}");
}

#[test]
fn one_file_runs_as_independent_instances_under_different_names() {
    let b = Broker::start();
    b.load(&module("faulty"), Some("left"), &["side=l"]);
    b.load(&module("faulty"), Some("right"), &["side=r"]);
    let mut c = b.client();
    assert_eq!(json(&rpc(&mut c, "left.whoami", json!({})).unwrap()), json!({"name": "left", "args": ["side=l"]}));
    assert_eq!(json(&rpc(&mut c, "right.whoami", json!({})).unwrap()), json!({"name": "right", "args": ["side=r"]}));
    // Independent state: only `left` subscribes.
    rpc(&mut c, "left.subscribe", json!({"topic": "news"})).unwrap();
    rpc(&mut c, "event.publish", json!({"topic": "news.today", "payload": []})).unwrap();
    assert!(wait_until(|| json(&rpc(&mut c, "left.events", json!({})).unwrap()) == json!(["news.today"])));
    assert_eq!(json(&rpc(&mut c, "right.events", json!({})).unwrap()), json!([]));
    b.modctl_ok(&["remove", "left"]);
    assert_eq!(json(&rpc(&mut c, "right.whoami", json!({})).unwrap())["name"], "right");
}

#[test]
fn modules_call_each_other() {
    let b = Broker::start();
    b.load(&module("echo"), None, &[]);
    b.load(&module("faulty"), None, &[]);
    let mut c = b.client();
    let r = rpc(&mut c, "faulty.rpc", json!({"topic": "echo.x"})).unwrap();
    assert_eq!(json(&r), json!({"topic": "echo.x"}));
    let r = rpc(&mut c, "faulty.rpc", json!({"topic": "gone.x"}));
    assert_eq!(errno_of(&r), "ENOSYS");
}

#[test]
fn every_module_answers_ping() {
    let b = Broker::start();
    b.load(&module("kvs"), None, &[]);
    let out = b.modctl_ok(&["ping", "kvs", "--count", "2"]);
    assert_eq!(out.lines().filter(|l| l.starts_with("kvs.ping: seq=")).count(), 2, "{out}");
}

#[test]
fn a_module_written_in_c_loads_and_answers() {
    let b = Broker::start();
    let lib = c_module("echo", b.dir.path());
    b.load(&lib, None, &[]);
    let mut c = b.client();
    let r = rpc(&mut c, "cecho.anything", json!({"from": "c"})).unwrap();
    assert_eq!(json(&r), json!({"from": "c"}));
    assert!(b.wait_log("c echo module running"));
    b.modctl_ok(&["remove", "cecho"]);
    assert_eq!(errno_of(&rpc(&mut c, "cecho.x", json!({}))), "ENOSYS");
}

#[test]
fn remove_of_a_module_that_ignores_shutdown_reports_it_stuck() {
    let b = Broker::start();
    b.load(&module("faulty"), None, &["hang-on-shutdown=3"]);
    let mut waiting = b.client();
    let out = b.modctl(&["remove", "faulty", "--grace", "300"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ETIMEDOUT") && err.contains("stuck"), "{err}");
    let mut c = b.client();
    let r = row(&mut c, "faulty").expect("still listed");
    assert_eq!(r["state"], "finalizing");
    assert_eq!(r["stuck"], true);
    assert!(b.modctl_ok(&["list"]).contains("finalizing (stuck)"));
    // Its service is withdrawn: nobody can end up waiting on it.
    assert_eq!(errno_of(&rpc(&mut waiting, "faulty.whoami", json!({}))), "ENOSYS");
    // Once it does return, it is gone.
    assert!(wait_until(|| row(&mut c, "faulty").is_none()));
}

#[test]
fn shutdown_removes_modules_in_reverse_load_order() {
    let mut b = Broker::start();
    b.load(&module("echo"), None, &[]);
    b.load(&module("kvs"), None, &[]);
    b.load(&module("faulty"), None, &[]);
    let status = b.terminate();
    assert!(status.success());
    let log = b.log();
    let pos =
        |m: &str| log.find(&format!("module removed module={m}")).unwrap_or_else(|| panic!("{m} not removed:\n{log}"));
    assert!(pos("faulty") < pos("kvs") && pos("kvs") < pos("echo"), "{log}");
}

#[test]
fn the_embedding_example_runs() {
    let out = std::process::Command::new(switchboard_tests::target_dir().join("examples/embed"))
        .output()
        .expect("run the embed example");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("echo answered: {\"hello\":\"from the agent\"}"), "{stdout}");
}

#[test]
fn a_slow_handler_delays_only_its_own_module() {
    let b = Broker::start();
    b.load(&module("faulty"), None, &[]);
    b.load(&module("echo"), None, &[]);
    let mut slow = b.client();
    let req = switchboard_protocol::Message::request("faulty.sleep", switchboard_tests::payload(json!({"ms": 3000})));
    let mut req = req;
    req.matchtag = 3;
    slow.send(&req).unwrap();
    let mut c = b.client();
    rpc(&mut c, "echo.x", json!({})).unwrap();
    // echo answered while faulty's handler is still sleeping.
    assert!(slow.recv_timeout(Some(Duration::from_millis(1))).is_err(), "faulty answered before echo");
    slow.wait_response(3, Some(WAIT)).unwrap();
}

#[test]
fn the_bundled_configuration_starts_the_example_modules() {
    let config = switchboard_tests::repo_root().join("etc/switchboard.toml");
    let b = Broker::start_with(&["--config", config.to_str().unwrap()]);
    let mut c = b.client();
    let names: Vec<String> =
        switchboard_tests::list(&mut c).iter().map(|m| format!("{}:{}", m["name"], m["state"])).collect();
    assert_eq!(names, vec![r#""echo":"running""#, r#""kvs":"running""#, r#""heartbeat":"running""#]);
    rpc(&mut c, "kvs.put", json!({"key": "k", "value": 1})).unwrap();
}

#[test]
fn configuration_errors_name_the_file_and_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("b.sock");
    let cases = [
        ("[broker]\nallow_guest = true\n", "unknown field `allow_guest`"),
        ("[[module]]\nname = \"x\"\n", "missing field `path`"),
        ("[[module]]\npath = \"missing.so\"\n", "missing.so: no such file"),
    ];
    for (i, (text, expect)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&file, text).unwrap();
        let out = std::process::Command::new(switchboard_tests::bin("switchboard"))
            .args(["--config", file.to_str().unwrap(), "--listen", socket.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(file.file_name().unwrap().to_str().unwrap()) || err.contains("missing.so"), "{err}");
        assert!(err.contains(expect), "{err}");
        assert!(!socket.exists(), "a failed start leaves no socket behind");
    }
}

#[test]
fn the_readme_first_module_compiles_as_written_and_takes_its_request_typed() {
    // The README's first Rust block is examples/counter/src/lib.rs, byte for byte, and the
    // workspace builds that crate.
    let readme = std::fs::read_to_string(switchboard_tests::repo_root().join("README.md")).expect("README");
    let from = readme.find("## Writing a first module").expect("the section");
    let block = readme[from..].split("```rust\n").nth(1).and_then(|b| b.split("```\n").next()).expect("a rust block");
    let crate_src =
        std::fs::read_to_string(switchboard_tests::repo_root().join("examples/counter/src/lib.rs")).expect("lib.rs");
    assert_eq!(block, crate_src, "the README's first module and examples/counter differ");
    let b = Broker::start();
    b.load(&module("counter"), None, &[]);
    let mut c = b.client();
    assert_eq!(json(&rpc(&mut c, "counter.incr", json!({"by": 2})).expect("incr")), json!(2));
    assert_eq!(json(&rpc(&mut c, "counter.incr", json!({"by": 3})).expect("incr")), json!(5));
    // A request that does not fit is answered by the library, naming the field; the count stays.
    let bad = rpc(&mut c, "counter.incr", json!({"by": "x"}));
    assert_eq!(errno_of(&bad), "EPROTO");
    assert!(errtext(&bad).starts_with("counter.incr: malformed request: by: "), "{}", errtext(&bad));
    let missing = rpc(&mut c, "counter.incr", json!({}));
    assert!(errtext(&missing).contains("missing field `by`"), "{}", errtext(&missing));
    assert_eq!(json(&rpc(&mut c, "counter.incr", json!({"by": 1})).expect("incr")), json!(6));
    // An unknown method is told which methods there are.
    let r = rpc(&mut c, "counter.decr", json!({}));
    assert_eq!(errtext(&r), "service 'counter' has no method 'decr' (its methods: incr)");
}
