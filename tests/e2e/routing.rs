//! Routing through a real broker: requests by service, errors for what cannot be routed,
//! responses by route, events by prefix, clients as services, streaming.

use std::time::Duration;

use serde_json::json;
use switchboard_protocol::{Flags, Message, MsgType};
use switchboard_tests::{errno_of, errtext, json, module, payload, rpc, Broker, WAIT};

#[test]
fn broker_ping_echoes_its_payload() {
    let b = Broker::start();
    let mut c = b.client();
    let r = rpc(&mut c, "broker.ping", json!({"seq": 42})).unwrap();
    assert_eq!(json(&r), json!({"seq": 42}));
    assert_eq!(r.kind, MsgType::Response);
}

#[test]
fn unknown_service_gets_enosys_naming_it() {
    let b = Broker::start();
    let mut c = b.client();
    let r = rpc(&mut c, "nosuch.method", json!({}));
    assert_eq!(errno_of(&r), "ENOSYS");
    assert!(errtext(&r).contains("'nosuch'"), "{}", errtext(&r));
    // The connection keeps working.
    rpc(&mut c, "broker.ping", json!({})).unwrap();
}

#[test]
fn unknown_method_of_a_builtin_gets_enosys() {
    let b = Broker::start();
    let mut c = b.client();
    assert_eq!(errno_of(&rpc(&mut c, "broker.frobnicate", json!({}))), "ENOSYS");
}

#[test]
fn request_for_another_rank_gets_ehostunreach() {
    let b = Broker::start();
    let mut c = b.client();
    let mut req = Message::request("broker.ping", payload(json!({})));
    req.matchtag = 9;
    req.nodeid = 3;
    c.send(&req).unwrap();
    let r = c.wait_response(9, Some(WAIT));
    assert_eq!(errno_of(&r), "EHOSTUNREACH");
}

#[test]
fn echo_module_answers_with_the_payload_and_matchtags_pair_pipelined_responses() {
    let b = Broker::start();
    b.load(&module("echo"), None, &[]);
    let mut c = b.client();
    // 200 requests in flight at once; every response must carry its own request's payload.
    for i in 0..200u32 {
        let mut req = Message::request("echo.any", payload(json!({"i": i})));
        req.matchtag = 1000 + i;
        c.queue(&req);
    }
    c.flush().unwrap();
    let mut seen = [false; 200];
    for _ in 0..200 {
        let r = c.recv_timeout(Some(WAIT)).unwrap();
        let i = (r.matchtag - 1000) as usize;
        assert_eq!(json(&r), json!({"i": i}));
        assert!(!seen[i], "duplicate response for {i}");
        seen[i] = true;
    }
}

#[test]
fn no_response_flag_gets_no_response_even_for_errors() {
    let b = Broker::start();
    let mut c = b.client();
    let mut req = Message::request("nosuch.x", payload(json!({})));
    req.flags = Flags::NO_RESPONSE;
    req.matchtag = 1;
    c.send(&req).unwrap();
    // The next thing this client receives is the ping's response, not an error for `nosuch`.
    let r = rpc(&mut c, "broker.ping", json!({"after": true})).unwrap();
    assert_eq!(json(&r), json!({"after": true}));
    assert!(c.recv_timeout(Some(Duration::from_millis(200))).is_err());
}

#[test]
fn events_reach_every_subscriber_whose_prefix_matches_once() {
    let b = Broker::start();
    let mut sub1 = b.client();
    let mut sub2 = b.client();
    let mut other = b.client();
    rpc(&mut sub1, "event.subscribe", json!({"topic": "alpha."})).unwrap();
    rpc(&mut sub1, "event.subscribe", json!({"topic": "alpha.b"})).unwrap();
    rpc(&mut sub2, "event.subscribe", json!({"topic": "alpha.beta"})).unwrap();
    rpc(&mut other, "event.subscribe", json!({"topic": "gamma"})).unwrap();
    let mut publisher = b.client();
    let p1 = rpc(&mut publisher, "event.publish", json!({"topic": "alpha.beta", "payload": []})).unwrap();
    // An event message needs no service: the broker sequences and fans it out.
    publisher.send(&Message::event("alpha.zeta", payload(json!({"n": 2})))).unwrap();
    let e1 = sub1.recv_timeout(Some(WAIT)).unwrap();
    assert_eq!((e1.kind, e1.topic.as_str()), (MsgType::Event, "alpha.beta"));
    assert_eq!(e1.seq, json(&p1)["seq"].as_u64().unwrap() as u32);
    let e2 = sub1.recv_timeout(Some(WAIT)).unwrap();
    assert_eq!(e2.topic, "alpha.zeta");
    assert!(e2.seq > e1.seq, "sequence numbers increase");
    assert_eq!(json(&e2), json!({"n": 2}));
    let only = sub2.recv_timeout(Some(WAIT)).unwrap();
    assert_eq!(only.topic, "alpha.beta");
    // sub1 subscribed twice with matching prefixes but got each event once; `other` got none.
    assert!(sub1.recv_timeout(Some(Duration::from_millis(200))).is_err());
    assert!(sub2.recv_timeout(Some(Duration::from_millis(100))).is_err());
    assert!(other.recv_timeout(Some(Duration::from_millis(100))).is_err());
    // Unsubscribing stops delivery; unsubscribing again is ENOENT.
    rpc(&mut sub2, "event.unsubscribe", json!({"topic": "alpha.beta"})).unwrap();
    assert_eq!(errno_of(&rpc(&mut sub2, "event.unsubscribe", json!({"topic": "alpha.beta"}))), "ENOENT");
    rpc(&mut publisher, "event.publish", json!({"topic": "alpha.beta", "payload": []})).unwrap();
    assert!(sub2.recv_timeout(Some(Duration::from_millis(200))).is_err());
}

#[test]
fn a_client_can_provide_a_service_and_only_it_can_remove_it() {
    let b = Broker::start();
    let mut provider = b.client();
    let mut caller = b.client();
    rpc(&mut provider, "service.add", json!({"service": "calc"})).unwrap();
    assert_eq!(errno_of(&rpc(&mut caller, "service.add", json!({"service": "calc"}))), "EEXIST");
    assert_eq!(errno_of(&rpc(&mut caller, "service.add", json!({"service": "module"}))), "EEXIST");
    assert_eq!(errno_of(&rpc(&mut caller, "service.remove", json!({"service": "calc"}))), "EPERM");
    assert_eq!(errno_of(&rpc(&mut caller, "service.add", json!({"service": "bad.name"}))), "EINVAL");

    let mut req = Message::request("calc.double", payload(json!({"x": 21})));
    req.matchtag = 5;
    caller.send(&req).unwrap();
    let got = provider.recv_timeout(Some(WAIT)).unwrap();
    assert_eq!((got.kind, got.topic.as_str()), (MsgType::Request, "calc.double"));
    assert!(got.cred.is_owner(), "the broker stamped the caller's credentials");
    provider.send(&got.response(payload(json!({"y": 42})))).unwrap();
    let r = caller.wait_response(5, Some(WAIT)).unwrap();
    assert_eq!(json(&r), json!({"y": 42}));

    rpc(&mut provider, "service.remove", json!({"service": "calc"})).unwrap();
    assert_eq!(errno_of(&rpc(&mut caller, "calc.double", json!({}))), "ENOSYS");
}

#[test]
fn a_providers_services_go_away_when_it_disconnects() {
    let b = Broker::start();
    let mut provider = b.client();
    rpc(&mut provider, "service.add", json!({"service": "ephemeral"})).unwrap();
    drop(provider);
    let mut c = b.client();
    assert!(switchboard_tests::wait_until(|| {
        matches!(rpc(&mut c, "ephemeral.x", json!({})), Err(ref e) if e.remote().is_some_and(|e| e.errnum.name() == "ENOSYS"))
    }));
}

#[test]
fn streaming_responses_end_with_enodata() {
    let b = Broker::start();
    b.load(&module("faulty"), None, &[]);
    let mut c = b.client();
    let mut req = Message::request("faulty.stream", payload(json!({"n": 5})));
    req.matchtag = 77;
    req.flags = Flags::STREAMING;
    c.send(&req).unwrap();
    for seq in 0..5 {
        let r = c.recv_timeout(Some(WAIT)).unwrap();
        assert_eq!(r.matchtag, 77);
        assert!(r.flags.contains(Flags::STREAMING));
        assert_eq!(r.errnum, 0);
        assert_eq!(json(&r), json!({"seq": seq}));
    }
    let end = c.recv_timeout(Some(WAIT)).unwrap();
    assert_eq!((end.matchtag, end.errnum), (77, 61), "ENODATA ends the stream");
    // The stream is over for the broker too: the module owes nothing, so removing it is clean.
    b.modctl_ok(&["remove", "faulty"]);
}

#[test]
fn broker_info_reports_the_process_and_its_modules() {
    let b = Broker::start();
    b.load(&module("echo"), None, &[]);
    let mut c = b.client();
    let info = json(&rpc(&mut c, "broker.info", json!({})).unwrap());
    assert_eq!(info["pid"], b.pid());
    assert_eq!(info["modules"], 1);
    assert_eq!(info["rank"], 0);
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["uri"], format!("local://{}", b.socket.display()));
}

#[test]
fn a_module_can_answer_an_extra_service_until_it_leaves() {
    let b = Broker::start();
    b.load(&module("faulty"), None, &[]);
    let mut c = b.client();
    rpc(&mut c, "faulty.add_service", json!({"topic": "helper"})).unwrap();
    assert_eq!(json(&rpc(&mut c, "helper.whoami", json!({})).unwrap())["name"], "faulty");
    assert_eq!(
        errno_of(&rpc(&mut c, "faulty.add_service", json!({"topic": "kvs2"})).map(|_| ()).and_then(|_| rpc(
            &mut c,
            "faulty.add_service",
            json!({"topic": "kvs2"})
        ))),
        "EEXIST"
    );
    b.modctl_ok(&["remove", "faulty"]);
    assert_eq!(errno_of(&rpc(&mut c, "helper.whoami", json!({}))), "ENOSYS");
}

#[test]
fn a_handler_that_answers_a_streaming_request_once_ends_the_stream() {
    let b = Broker::start();
    b.load(&module("echo"), None, &[]);
    let mut c = b.client();
    let mut req = Message::request("echo.x", payload(json!({"once": true})));
    req.matchtag = 5;
    req.flags = Flags::STREAMING;
    c.send(&req).unwrap();
    let first = c.recv_timeout(Some(WAIT)).unwrap();
    assert_eq!((first.matchtag, first.errnum), (5, 0));
    assert_eq!(json(&first), json!({"once": true}));
    let end = c.recv_timeout(Some(WAIT)).unwrap();
    assert_eq!((end.matchtag, end.errnum), (5, 61), "ENODATA ends it");
    // Nothing is left owed: removing echo sends no late EHOSTUNREACH.
    b.modctl_ok(&["remove", "echo"]);
    assert!(c.recv_timeout(Some(Duration::from_millis(300))).is_err());
}
