//! Module-to-module rpc through a real broker: the deadline of `Handle::rpc` (ETIMEDOUT, a
//! late answer dropped), and calls that would deadlock refused with EDEADLK — a module
//! calling its own service (the handle), and a call back into a module that is waiting on
//! the caller (the broker's router, RFC 1 §8.10) — for native, WASM and process modules,
//! which all keep serving afterwards.
//!
//! Every module here is the `faulty` fixture: `call {topic, payload?, ms?, nodeid?}` is a
//! `Handle::rpc` (`rpc_raw_on` with a nodeid), `ignore` is never answered, `sleep {ms}`
//! answers late. A standalone broker is rank 0 of 1: a call by rank reaches rank 0, and only
//! rank 0 (multi-broker calls are in overlay.rs).

use serde_json::json;
use switchboard_tests::{bin, errno_of, errtext, json, module, rpc, script, wait_until, wasm_module, Broker};

/// Load the `faulty` fixture as `name`: "native", "wasm" or "process".
fn load(b: &Broker, kind: &str, name: &str) {
    let path = match kind {
        "native" => module("faulty"),
        "wasm" => wasm_module("faulty"),
        "process" => bin("faulty"),
        other => panic!("no kind {other}"),
    };
    let r = rpc(&mut b.client(), "module.load", json!({"path": path.display().to_string(), "name": name}));
    assert!(r.is_ok(), "loading {kind} {name}: {r:?}\nbroker log:\n{}", b.log());
}

/// `name.whoami` answers with its own name.
fn serves(b: &Broker, name: &str) {
    let r = rpc(&mut b.client(), &format!("{name}.whoami"), json!({}));
    assert_eq!(r.map(|m| json(&m)["name"].clone()).ok(), Some(json!(name)), "{name} stopped serving");
}

fn pending(b: &Broker, name: &str) -> u64 {
    let stats = json(&rpc(&mut b.client(), "module.stats", json!({"name": name})).expect("module.stats"));
    stats["pending"].as_u64().expect("pending")
}

/// `outer` calls `inner`, whose handler calls back into `outer` while `outer` waits: the
/// inner call is refused with EDEADLK, the refusal travels back as `outer`'s answer, both
/// keep serving, and once nothing is in flight the same call back is delivered as usual.
fn cycle_is_refused(b: &Broker, outer: &str, inner: &str) {
    let mut c = b.client();
    let back = format!("{outer}.whoami");
    let r =
        rpc(&mut c, &format!("{outer}.call"), json!({"topic": format!("{inner}.call"), "payload": {"topic": back}}));
    assert_eq!(errno_of(&r), "EDEADLK", "{r:?}\nbroker log:\n{}", b.log());
    assert_eq!(
        errtext(&r),
        format!("{back}: '{outer}' is waiting on '{inner}' (a call back into a waiting module would deadlock)")
    );
    serves(b, outer);
    serves(b, inner);
    // Nothing of the refused cycle is left in flight, so the same call back now goes through.
    assert!(wait_until(|| pending(b, inner) == 0 && pending(b, outer) == 0));
    let r = rpc(&mut c, &format!("{inner}.call"), json!({"topic": back})).expect("a call back with nobody waiting");
    assert_eq!(json(&r)["name"], json!(outer));
    let r = rpc(&mut c, &format!("{outer}.call"), json!({"topic": format!("{inner}.whoami")})).expect("outer to inner");
    assert_eq!(json(&r)["name"], json!(inner));
}

#[test]
fn two_native_modules_calling_each_other_get_edeadlk_and_keep_serving() {
    let b = Broker::start();
    load(&b, "native", "alpha");
    load(&b, "native", "beta");
    cycle_is_refused(&b, "alpha", "beta");
    cycle_is_refused(&b, "beta", "alpha");
}

#[test]
fn a_module_calling_its_own_services_gets_edeadlk_before_anything_is_sent() {
    let b = Broker::start();
    let mut c = b.client();
    for (kind, name) in [("native", "alpha"), ("wasm", "walpha"), ("process", "palpha")] {
        load(&b, kind, name);
        let own = format!("{name}.whoami");
        let r = rpc(&mut c, &format!("{name}.call"), json!({"topic": own}));
        assert_eq!(errno_of(&r), "EDEADLK", "{kind}: {r:?}");
        assert!(errtext(&r).starts_with(&format!("{own}: '{name}' would wait on itself")), "{kind}: {r:?}");
        // A service it added is its own too.
        let extra = format!("{name}-extra");
        rpc(&mut c, &format!("{name}.add_service"), json!({"topic": extra})).expect("add_service");
        let r = rpc(&mut c, &format!("{name}.call"), json!({"topic": format!("{extra}.whoami")}));
        assert_eq!(errno_of(&r), "EDEADLK", "{kind}: {r:?}");
        // The refused call never reached the broker, and the module serves both names.
        assert_eq!(pending(&b, name), 0, "{kind}");
        serves(&b, name);
        let r = rpc(&mut c, &format!("{extra}.whoami"), json!({})).expect("the added service");
        assert_eq!(json(&r)["name"], json!(name));
    }
}

#[test]
fn a_module_calls_a_rank_by_nodeid_and_its_own_service_only_elsewhere() {
    let b = Broker::start();
    let mut c = b.client();
    load(&b, "native", "target");
    for (kind, name) in [("native", "alpha"), ("wasm", "walpha"), ("process", "palpha")] {
        load(&b, kind, name);
        let call = format!("{name}.call");
        // nodeid 0 is this broker: the call is routed here by service.
        let r = rpc(&mut c, &call, json!({"topic": "target.whoami", "nodeid": 0})).expect("a call to rank 0");
        assert_eq!(json(&r)["name"], json!("target"), "{kind}");
        let r = rpc(&mut c, &call, json!({"topic": "broker.info", "nodeid": 0, "ms": 5000})).expect("broker.info");
        assert_eq!(json(&r)["rank"], json!(0), "{kind}");
        // A rank the instance does not have.
        let r = rpc(&mut c, &call, json!({"topic": "target.whoami", "nodeid": 3}));
        assert_eq!(errno_of(&r), "EHOSTUNREACH", "{kind}: {r:?}");
        assert!(errtext(&r).contains("no broker of rank 3"), "{kind}: {r:?}");
        // Its own service on its own rank (the handle asks broker.info which rank that is) would
        // come back to it; upstream of the root there is nobody.
        let own = format!("{name}.whoami");
        let r = rpc(&mut c, &call, json!({"topic": own, "nodeid": 0}));
        assert_eq!(errno_of(&r), "EDEADLK", "{kind}: {r:?}");
        let r = rpc(&mut c, &call, json!({"topic": own, "nodeid": 0xFFFF_FFFEu32}));
        assert_eq!(errno_of(&r), "EHOSTUNREACH", "{kind}: {r:?}");
        assert_eq!(errtext(&r), "no upstream broker: this broker is the root", "{kind}");
        serves(&b, name);
    }
}

#[test]
fn a_python_module_calls_a_rank_with_nodeid() {
    let b = Broker::start_python();
    let mut c = b.client();
    load(&b, "native", "target");
    b.load(&script("caller.py"), None, &[]);
    let r = rpc(&mut c, "caller.call", json!({"topic": "target.whoami", "nodeid": 0})).expect("a call to rank 0");
    assert_eq!(json(&r)["name"], json!("target"));
    assert_eq!(json(&rpc(&mut c, "caller.rank", json!({})).expect("rank")), json!(0));
    let r = rpc(&mut c, "caller.call", json!({"topic": "target.whoami", "nodeid": 3}));
    assert_eq!(errno_of(&r), "EHOSTUNREACH", "{r:?}");
    assert!(errtext(&r).contains("no broker of rank 3"), "{r:?}");
    // Its own service: on its own rank it would wait on itself; upstream of the root, nobody.
    let r = rpc(&mut c, "caller.call", json!({"topic": "caller.rank", "nodeid": 0}));
    assert_eq!(errno_of(&r), "EDEADLK", "{r:?}");
    let r = rpc(&mut c, "caller.call", json!({"topic": "caller.rank", "nodeid": 0xFFFF_FFFEu32}));
    assert_eq!(errtext(&r), "no upstream broker: this broker is the root", "{r:?}");
    let r = rpc(&mut c, "caller.call", json!({"topic": "target.whoami", "nodeid": -1}));
    assert_eq!(errno_of(&r), "EINVAL", "{r:?}");
    assert!(errtext(&r).contains("nodeid -1 is not a rank"), "{r:?}");
    // upstream=True: its own service is asked of the brokers above (none here), not refused.
    let r = rpc(&mut c, "caller.call", json!({"topic": "caller.rank", "upstream": true}));
    assert_eq!(errno_of(&r), "EHOSTUNREACH", "{r:?}");
    assert_eq!(errtext(&r), "no upstream broker: this broker is the root", "{r:?}");
    let r = rpc(&mut c, "caller.call", json!({"topic": "target.whoami", "nodeid": 0, "upstream": true}));
    assert_eq!(errno_of(&r), "EINVAL", "{r:?}");
    assert!(errtext(&r).contains("upstream=True goes with nodeid NODEID_ANY only"), "{r:?}");
}

/// An rpc to `never.ignore` with a short deadline of its own gives up, and one with the
/// module's deadline does too once the module sets it; a late answer after a give-up is
/// dropped and the next rpc gets its own answer.
fn deadlines_hold(b: &Broker, caller: &str) {
    let mut c = b.client();
    let call = format!("{caller}.call");
    let r = rpc(&mut c, &call, json!({"topic": "never.ignore", "ms": 200}));
    assert_eq!(errno_of(&r), "ETIMEDOUT", "{caller}: {r:?}");
    assert_eq!(errtext(&r), "no response from never.ignore within 200 ms");
    serves(b, caller);

    // Late: slow answers 1.5 s after the caller gave up at 0.2 s, while the caller waits for
    // its next answer (slow serves in order, so the late one comes first).
    let r = rpc(&mut c, &call, json!({"topic": "slow.sleep", "payload": {"ms": 1500}, "ms": 200}));
    assert_eq!(errno_of(&r), "ETIMEDOUT", "{caller}: {r:?}");
    let r = rpc(&mut c, &call, json!({"topic": "slow.whoami"})).expect("the rpc after a late answer");
    assert_eq!(json(&r)["name"], json!("slow"), "{caller} took the late answer for its own");
    // The late answer was routed and retired: slow owes nothing, and a call from slow back
    // to the caller (which no longer waits) is not taken for a cycle.
    assert!(wait_until(|| pending(b, "slow") == 0));
    let r = rpc(&mut c, "slow.call", json!({"topic": format!("{caller}.whoami")})).expect("slow to caller");
    assert_eq!(json(&r)["name"], json!(caller));
    serves(b, caller);
}

#[test]
fn an_rpc_past_its_deadline_gets_etimedout_and_its_late_answer_is_dropped() {
    let b = Broker::start();
    load(&b, "native", "alpha");
    load(&b, "native", "never");
    load(&b, "native", "slow");
    deadlines_hold(&b, "alpha");

    // The module's own deadline, for rpcs that name none.
    let mut c = b.client();
    rpc(&mut c, "alpha.rpc_timeout", json!({"ms": 300})).expect("rpc_timeout");
    let r = rpc(&mut c, "alpha.call", json!({"topic": "never.ignore"}));
    assert_eq!(errno_of(&r), "ETIMEDOUT", "{r:?}");
    assert_eq!(errtext(&r), "no response from never.ignore within 300 ms");
    serves(&b, "alpha");
    // never.ignore is still owed its answers: a requester giving up does not answer for it.
    assert_eq!(pending(&b, "never"), 2);
}

#[test]
fn deadlines_hold_in_wasm_and_process_modules() {
    let b = Broker::start();
    load(&b, "native", "never");
    load(&b, "native", "slow");
    load(&b, "wasm", "walpha");
    load(&b, "process", "palpha");
    deadlines_hold(&b, "walpha");
    deadlines_hold(&b, "palpha");
}

#[test]
fn a_cycle_through_a_wasm_module_gets_edeadlk() {
    let b = Broker::start();
    load(&b, "native", "alpha");
    load(&b, "wasm", "wbeta");
    // The WASM module waits in the host's request import; then it is the one calling back.
    cycle_is_refused(&b, "wbeta", "alpha");
    cycle_is_refused(&b, "alpha", "wbeta");
}

#[test]
fn a_cycle_through_a_process_module_gets_edeadlk() {
    let b = Broker::start();
    load(&b, "process", "pbeta");
    load(&b, "native", "alpha");
    load(&b, "wasm", "wgamma");
    cycle_is_refused(&b, "pbeta", "alpha");
    cycle_is_refused(&b, "alpha", "pbeta");
    cycle_is_refused(&b, "pbeta", "wgamma");
}

#[test]
fn a_client_waiting_on_a_module_may_be_called_back() {
    // Clients may be asynchronous: the rule is for modules only. A client that registered a
    // service calls alpha, whose handler calls that service: the call is delivered.
    let b = Broker::start();
    load(&b, "native", "alpha");
    let mut svc = b.client();
    rpc(&mut svc, "service.add", json!({"service": "desk"})).expect("service.add");
    let mut req = switchboard_protocol::Message::request(
        "alpha.call",
        switchboard_tests::payload(json!({"topic": "desk.ask", "payload": {"q": 1}})),
    );
    req.matchtag = 77;
    svc.send(&req).expect("send");
    let asked = svc.recv_timeout(Some(switchboard_tests::WAIT)).expect("desk.ask delivered to the client");
    assert_eq!(asked.topic, "desk.ask");
    svc.send(&asked.response(switchboard_tests::payload(json!({"a": 2})))).expect("answer");
    let answer = svc.recv_timeout(Some(switchboard_tests::WAIT)).expect("alpha's answer");
    assert_eq!((answer.matchtag, answer.errnum), (77, 0), "{answer:?}");
    assert_eq!(json(&answer), json!({"a": 2}));
}
