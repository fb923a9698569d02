//! C module authors' path (issue 12, RFC 2 §7): the example module `examples/c/calc/calc.c`,
//! built with the system C compiler against the system msgpack-c found by pkg-config, exactly
//! as RFC 2 tells authors to, then loaded into a real broker and called by a client and by
//! `modctl`: it decodes a msgpack request map, encodes an answer map, and answers bad input
//! with EPROTO naming the field.

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use serde_json::json;
use switchboard_protocol::{Flags, Message};
use switchboard_tests::{errno_of, errtext, json, payload, repo_root, rpc, Broker, WAIT};

/// pkg-config's compile and link flags for msgpack-c. Its pkg-config name is `msgpack` in
/// Debian 12's libmsgpack-dev (msgpack-c 4) and `msgpack-c` from msgpack-c 6 on (Debian 13's
/// libmsgpack-c-dev); `.ci/run` installs whichever the machine's Debian has.
fn msgpack_flags() -> Vec<String> {
    for name in ["msgpack-c", "msgpack"] {
        let out = Command::new("pkg-config").args(["--cflags", "--libs", name]).output();
        if let Some(out) = out.ok().filter(|o| o.status.success()) {
            return String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect();
        }
    }
    panic!(
        "msgpack-c is not installed, or pkg-config cannot find it: on Debian 12 \
         `apt install libmsgpack-dev pkg-config` (Debian 13: libmsgpack-c-dev), or run .ci/run"
    );
}

/// Compile `examples/c/calc/calc.c` into `dir/libcalc.so` with RFC 2 §7's command line.
fn calc_module(dir: &Path) -> PathBuf {
    let root = repo_root();
    let out = dir.join("libcalc.so");
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-shared", "-fPIC", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(root.join("protocol/include"))
        .arg("-o")
        .arg(&out)
        .arg(root.join("examples/c/calc/calc.c"))
        .args(msgpack_flags())
        .status()
        .expect("run the C compiler");
    assert!(status.success(), "compiling examples/c/calc/calc.c against msgpack-c failed");
    out
}

/// A running broker with the calc example loaded.
fn broker_with_calc() -> Broker {
    let b = Broker::start();
    let lib = calc_module(b.dir.path());
    let out = b.modctl_ok(&["load", lib.to_str().unwrap()]);
    assert!(out.contains("loaded calc (native, services: calc)"), "{out}");
    assert!(b.wait_log("calc module running"));
    b
}

fn raw(
    c: &mut switchboard_client::Client,
    topic: &str,
    bytes: &'static [u8],
) -> Result<Message, switchboard_client::ClientError> {
    c.rpc_raw(topic, Bytes::from_static(bytes), Some(WAIT))
}

#[test]
fn the_c_example_decodes_a_msgpack_map_and_answers_one() {
    let b = broker_with_calc();
    let mut c = b.client();
    assert_eq!(json(&rpc(&mut c, "calc.add", json!({"a": 2, "b": 3})).unwrap()), json!({"sum": 5}));
    // Negative numbers, the extremes of i64, and fields it does not know (ignored).
    assert_eq!(json(&rpc(&mut c, "calc.add", json!({"b": 3, "a": -10, "note": "x"})).unwrap()), json!({"sum": -7}));
    let r = rpc(&mut c, "calc.add", json!({"a": i64::MAX, "b": i64::MIN})).unwrap();
    assert_eq!(json(&r), json!({"sum": -1}));
    // Through modctl, as an operator would call it.
    let out = b.modctl_ok(&["rpc", "calc.add", r#"{"a": 40, "b": 2}"#]);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap(), json!({"sum": 42}), "{out}");
    // RFC 3 §5.1's conventions: ping echoes, an unknown method is ENOSYS naming it.
    let out = b.modctl_ok(&["ping", "calc", "--count", "2"]);
    assert_eq!(out.lines().filter(|l| l.starts_with("calc.ping: seq=")).count(), 2, "{out}");
    let r = rpc(&mut c, "calc.mul", json!({"a": 2, "b": 3}));
    assert_eq!(
        (errno_of(&r).as_str(), errtext(&r).as_str()),
        ("ENOSYS", "service 'calc' has no method 'mul' (its methods: add)")
    );
    // A second instance of the same library under another name answers its own service.
    b.load(&b.dir.path().join("libcalc.so"), Some("calc2"), &[]);
    assert_eq!(json(&rpc(&mut c, "calc2.add", json!({"a": 1, "b": 1})).unwrap()), json!({"sum": 2}));
    assert_eq!(errtext(&rpc(&mut c, "calc2.x", json!({}))), "service 'calc2' has no method 'x' (its methods: add)");
    // It stops on shutdown: remove is clean, and its service is gone.
    b.modctl_ok(&["remove", "calc"]);
    assert_eq!(errno_of(&rpc(&mut c, "calc.add", json!({"a": 2, "b": 3}))), "ENOSYS");
}

#[test]
fn malformed_requests_to_the_c_example_are_eproto_naming_the_field() {
    let b = broker_with_calc();
    let mut c = b.client();
    let eproto = |r: Result<Message, _>| {
        assert_eq!(errno_of(&r), "EPROTO", "{r:?}");
        errtext(&r).strip_prefix("calc.add: malformed request: ").map(String::from).unwrap_or_else(|| errtext(&r))
    };
    let cases = [
        (json!({"a": "2", "b": 3}), "a: expected an integer, got a string"),
        (json!({"a": 2, "b": 2.5}), "b: expected an integer, got a float"),
        (json!({"a": 2, "b": null}), "b: expected an integer, got nil"),
        (json!({"a": 2, "b": [3]}), "b: expected an integer, got an array"),
        (json!({"a": u64::MAX, "b": 0}), "a: 18446744073709551615 does not fit in a 64-bit signed integer"),
        (json!({"a": 2}), "missing field `b`"),
        (json!({"A": 2, "B": 3}), "missing field `a`"),
        (json!([2, 3]), "expected a map, got an array"),
        (json!("2 + 3"), "expected a map, got a string"),
    ];
    for (body, why) in cases {
        assert_eq!(eproto(rpc(&mut c, "calc.add", body.clone())), why, "{body}");
    }
    // Payloads that are not msgpack at all, or end early, or are empty.
    assert_eq!(eproto(raw(&mut c, "calc.add", b"\xc1")), "the payload is not msgpack");
    assert_eq!(eproto(raw(&mut c, "calc.add", b"\x82\xa1a\x02\xa1")), "the payload is truncated msgpack");
    assert_eq!(eproto(raw(&mut c, "calc.add", b"")), "expected a map, got an empty payload");
    // A sum that does not fit is not a protocol error but a bad argument.
    let r = rpc(&mut c, "calc.add", json!({"a": i64::MAX, "b": 1}));
    assert_eq!(
        (errno_of(&r).as_str(), errtext(&r).as_str()),
        ("EINVAL", "9223372036854775807 + 1 does not fit in 64 bits")
    );
    // modctl shows the same error on one line, with exit status 1.
    let out = b.modctl(&["rpc", "calc.add", r#"{"a": 2, "b": "three"}"#]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("EPROTO") && err.contains("calc.add: malformed request: b: expected an integer, got a string"),
        "{err}"
    );
    // None of it hurt the module.
    assert_eq!(json(&rpc(&mut c, "calc.add", json!({"a": 2, "b": 3})).unwrap()), json!({"sum": 5}));
    let s: serde_json::Value = serde_json::from_str(&b.modctl_ok(&["stats", "calc", "--json"])).unwrap();
    assert_eq!(s["state"], "running", "{s}");
    assert_eq!(s["errors"], 14, "{s}");
    assert!(s["last_error"].as_str().unwrap().contains("EPROTO: calc.add: malformed request: b:"), "{s}");
}

#[test]
fn the_c_example_ends_a_stream_it_answers() {
    let b = broker_with_calc();
    let mut c = b.client();
    let mut req = Message::request("calc.add", payload(json!({"a": 2, "b": 3})));
    req.matchtag = 7;
    req.flags = Flags::STREAMING;
    c.send(&req).unwrap();
    let first = c.recv_timeout(Some(WAIT)).unwrap();
    assert_eq!((first.matchtag, first.errnum), (7, 0));
    assert!(first.flags.contains(Flags::STREAMING));
    assert_eq!(json(&first), json!({"sum": 5}));
    let end = c.recv_timeout(Some(WAIT)).unwrap();
    assert_eq!((end.matchtag, end.errnum), (7, 61), "ENODATA ends the stream");
    // An error ends a stream by itself: one EPROTO, nothing after it.
    let mut bad = Message::request("calc.add", payload(json!({"a": 2})));
    bad.matchtag = 8;
    bad.flags = Flags::STREAMING;
    c.send(&bad).unwrap();
    let r = c.recv_timeout(Some(WAIT)).unwrap();
    assert_eq!((r.matchtag, r.errnum), (8, 71), "EPROTO");
    assert!(r.flags.contains(Flags::STREAMING));
    assert!(c.recv_timeout(Some(std::time::Duration::from_millis(300))).is_err(), "nothing follows an error");
}

/// The declarations in calc's module table, as `module.info` and `module.list` give them.
fn calc_declares() -> serde_json::Value {
    json!({
        "methods": [{
            "name": "add",
            "guest": false,
            "doc": "the sum of `a` and `b` (64-bit signed integers), as `sum`; EINVAL if it does not fit",
        }],
        "otherwise": false,
        "events": [{"name": "calc.overflow", "doc": "an add did not fit in 64 bits: `{a, b}`"}],
    })
}

#[test]
fn the_c_examples_table_declares_its_method_and_event_without_running_it() {
    let b = Broker::start();
    let lib = calc_module(b.dir.path());
    let path = lib.to_str().unwrap();
    // modctl info, for people: the method as SERVICE.NAME with its callers, then the event.
    let lines = switchboard_tests::info_declared(&b, &lib);
    assert_eq!(
        lines,
        [
            "methods:  calc.add  owner  the sum of `a` and `b` (64-bit signed integers), as `sum`; EINVAL if it does not fit",
            "events:   calc.overflow  an add did not fit in 64 bits: `{a, b}`",
        ]);
    assert!(!b.log().contains("calc module running"), "info must not run the module");
    // module.info as a client sees it, and module.list once it is loaded.
    let mut c = b.client();
    let info = json(&rpc(&mut c, "module.info", json!({"path": path})).unwrap());
    assert_eq!(info["declares"], calc_declares(), "{info}");
    b.load(&lib, None, &[]);
    let listed: serde_json::Value = serde_json::from_str(&b.modctl_ok(&["list", "--json"])).unwrap();
    assert_eq!(listed[0]["declares"], calc_declares(), "{listed}");
    // What it answers to calc.methods is made from the same arrays.
    assert_eq!(json(&rpc(&mut c, "calc.methods", json!({})).unwrap()), calc_declares());
    // The event it declares is the one it publishes.
    let mut watcher = b.client();
    rpc(&mut watcher, "event.subscribe", json!({"topic": "calc."})).unwrap();
    assert_eq!(errno_of(&rpc(&mut c, "calc.add", json!({"a": i64::MAX, "b": 2}))), "EINVAL");
    let ev = watcher.recv_timeout(Some(WAIT)).unwrap();
    assert_eq!((ev.topic.as_str(), json(&ev)), ("calc.overflow", json!({"a": i64::MAX, "b": 2})));
}

#[test]
fn a_module_table_of_the_old_layout_loads_and_declares_nothing() {
    let b = Broker::start();
    let old = switchboard_tests::c_module("oldtable", b.dir.path());
    let lines = switchboard_tests::info_declared(&b, &old);
    assert_eq!(lines, ["methods:  none declared", "events:   none declared"]);
    assert_eq!(b.modctl_ok(&["load", old.to_str().unwrap()]), "loaded oldtable (native, services: oldtable)\n");
    let mut c = b.client();
    assert_eq!(json(&rpc(&mut c, "oldtable.anything", json!({"x": 1})).unwrap()), json!({"x": 1}));
    let listed: serde_json::Value = serde_json::from_str(&b.modctl_ok(&["list", "--json"])).unwrap();
    assert_eq!(listed[0]["declares"], json!({"methods": [], "otherwise": false, "events": []}), "{listed}");
    b.modctl_ok(&["remove", "oldtable"]);

    // A table that declares a method twice is malformed: refused, naming it.
    let bad = switchboard_tests::c_module("baddecl", b.dir.path());
    let out = b.modctl(&["load", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "modctl: load {}: ENOEXEC: {} has a malformed module table: method 'get' is declared twice\n",
            bad.display(),
            bad.display()
        )
    );
    // The broker's log says it too, for an operator who did not run the load.
    assert!(b.wait_log("module.load refused: ENOEXEC:"), "{}", b.log());
    assert!(b.log().contains("method 'get' is declared twice"), "{}", b.log());
}

#[test]
fn modctl_methods_shows_a_c_tables_declarations_though_the_module_never_answers_for_them() {
    let b = Broker::start();
    let declared = switchboard_tests::c_module("declared", b.dir.path());
    b.modctl_ok(&["load", declared.to_str().unwrap()]);
    // The module answers `declared.methods` with the request's own (empty) payload, which is
    // no list of methods: what it declares in its table is what modctl shows.
    let shown: serde_json::Value = serde_json::from_str(&b.modctl_ok(&["methods", "declared", "--json"])).unwrap();
    assert_eq!(
        shown,
        json!({
            "methods": [
                {"name": "count", "guest": false, "doc": "owners only"},
                {"name": "hello", "guest": true, "doc": "answer with the request's payload"},
            ],
            "otherwise": false,
            "events": [{"name": "declared.greeted", "doc": "after each hello"}],
        })
    );

    // A module that declares nothing is asked, and an answer that is no list is said to be
    // the module's, not the broker's.
    let echo = switchboard_tests::c_module("echo", b.dir.path());
    b.modctl_ok(&["load", echo.to_str().unwrap(), "--name", "cecho"]);
    let out = b.modctl(&["methods", "cecho"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(
            "modctl: cecho.methods: the module's answer is not a list of methods (RFC 3 §5.1), and it declares none in its file: "
        ),
        "{err}"
    );
}
