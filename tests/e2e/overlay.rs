//! Brokers in a tree (RFC 7), end to end: real `switchboard` processes joined over real
//! ZeroMQ CURVE links on loopback TCP, clients on their local sockets. Requests by rank, ANY
//! and UPSTREAM across the tree; events from a leaf in one order everywhere; a broker killed
//! with requests in flight through it, and its return; a peer with another certificate.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use switchboard_client::{Client, ClientError};
use switchboard_protocol::{Flags, Message, NODEID_ANY, NODEID_UPSTREAM};
use switchboard_tests::instance::{all_states, Instance};
use switchboard_tests::{errno_of, errtext, json, module, payload, wait_until, WAIT};

/// A request with `nodeid` and `flags`, and its response.
fn rpc_at(c: &mut Client, nodeid: u32, flags: Flags, topic: &str, body: Value) -> Result<Message, ClientError> {
    let tag = send_at(c, nodeid, flags, topic, payload(body));
    c.wait_response(tag, Some(WAIT))
}

fn send_at(c: &mut Client, nodeid: u32, flags: Flags, topic: &str, body: Bytes) -> u32 {
    let mut req = Message::request(topic, body);
    req.nodeid = nodeid;
    req.flags = flags;
    req.matchtag = c.next_matchtag();
    c.send(&req).expect("send");
    req.matchtag
}

/// The rank of the broker that served `broker.info`.
fn rank_of(r: Result<Message, ClientError>) -> u64 {
    json(&r.expect("broker.info"))["rank"].as_u64().expect("rank")
}

/// The faulty test module on every rank.
fn faulty_everywhere() -> String {
    format!("[[module]]\npath = \"{}\"\nranks = \"all\"\n", module("faulty").display())
}

#[test]
fn a_request_reaches_every_rank_by_nodeid_from_the_root_and_from_a_leaf() {
    let inst = Instance::start(16, 2, &faulty_everywhere());
    for from in [0, 15] {
        let mut c = inst.client(from);
        for to in 0..16u32 {
            let info = json(&rpc_at(&mut c, to, Flags::default(), "broker.info", json!({})).expect("broker.info"));
            assert_eq!(info["rank"], json!(to), "broker.info from rank {from} with nodeid {to}");
            // Where it stands in the tree (fanout 2): its parent and its children.
            let parent = if to == 0 { Value::Null } else { json!((to - 1) / 2) };
            let children: Vec<u32> = [2 * to + 1, 2 * to + 2].into_iter().filter(|c| *c < 16).collect();
            assert_eq!((&info["size"], &info["parent"], &info["children"]), (&json!(16), &parent, &json!(children)));
            assert_eq!(info["parent_link"], if to == 0 { Value::Null } else { json!("up") });
            // A module's service on that rank answers too (the module asks its own broker).
            let r = rpc_at(&mut c, to, Flags::default(), "faulty.call", json!({"topic": "broker.info"}));
            assert_eq!(json(&r.expect("faulty.call"))["rank"], json!(to));
            // And a module addresses a rank as a client does: rank `to`'s asks rank 15 - to.
            let r =
                rpc_at(&mut c, to, Flags::default(), "faulty.call", json!({"topic": "broker.info", "nodeid": 15 - to}));
            assert_eq!(json(&r.expect("faulty.call with nodeid"))["rank"], json!(15 - to));
        }
        let r = rpc_at(&mut c, 16, Flags::default(), "broker.info", json!({}));
        assert_eq!(errno_of(&r), "EHOSTUNREACH");
        assert!(errtext(&r).contains("no rank 16: the instance has 16 brokers"), "{}", errtext(&r));
    }
}

#[test]
fn any_falls_through_to_the_nearest_ancestor_that_owns_the_service_and_upstream_skips_this_broker() {
    // faulty on ranks 0 and 1 only; rank 7's ancestors are 3, 1 and 0.
    let modules = format!("[[module]]\npath = \"{}\"\nranks = \"0-1\"\n", module("faulty").display());
    let inst = Instance::start(16, 2, &modules);
    let mut leaf = inst.client(7);
    let served_by = |c: &mut Client, flags| {
        let r = rpc_at(c, NODEID_ANY, flags, "faulty.call", json!({"topic": "broker.info"}));
        json(&r.expect("faulty.call"))["rank"].as_u64()
    };
    assert_eq!(served_by(&mut leaf, Flags::default()), Some(1));
    let mut one = inst.client(1);
    assert_eq!(served_by(&mut one, Flags::default()), Some(1));
    assert_eq!(served_by(&mut one, Flags::UPSTREAM), Some(0), "UPSTREAM skips rank 1's own faulty");
    // A module asks the nearest instance of its own service upstream: rank 1's faulty reaches
    // rank 0's, which asks its own broker (never EDEADLK: the request never comes back).
    let r = rpc_at(
        &mut one,
        1,
        Flags::default(),
        "faulty.call",
        json!({"topic": "faulty.call", "payload": {"topic": "broker.info"}, "upstream": true}),
    );
    assert_eq!(json(&r.expect("faulty.call upstream"))["rank"], json!(0));
    // At the root there is nothing upstream.
    let mut root = inst.client(0);
    let r = rpc_at(&mut root, 0, Flags::default(), "faulty.call", json!({"topic": "faulty.x", "upstream": true}));
    assert_eq!(errno_of(&r), "EHOSTUNREACH", "{r:?}");
    // NODEID_UPSTREAM: the parent itself.
    assert_eq!(rank_of(rpc_at(&mut leaf, NODEID_UPSTREAM, Flags::default(), "broker.info", json!({}))), 3);
    // Nobody owns it: ENOSYS from the root; the root has nothing upstream.
    let r = rpc_at(&mut leaf, NODEID_ANY, Flags::default(), "nosuch.thing", json!({}));
    assert_eq!(errno_of(&r), "ENOSYS");
    assert!(errtext(&r).contains("on the way to the root"), "{}", errtext(&r));
    let r = rpc_at(&mut root, NODEID_ANY, Flags::UPSTREAM, "broker.info", json!({}));
    assert_eq!(errno_of(&r), "EHOSTUNREACH");
}

#[test]
fn events_published_on_a_leaf_reach_every_rank_in_one_order() {
    let inst = Instance::start(16, 2, &faulty_everywhere());
    for r in 0..16 {
        let mut c = inst.client(r);
        rpc_at(&mut c, r, Flags::default(), "faulty.subscribe", json!({"topic": "test."})).expect("subscribe");
    }
    // Three publishers interleaved: a leaf and an interior rank (whose events rank 0 numbers
    // on its overlay thread) and rank 0 itself (numbered on a connection's thread).
    let (mut leaf, mut mid, mut root) = (inst.client(15), inst.client(3), inst.client(0));
    for i in 0..30 {
        let c = match i % 3 {
            0 => &mut leaf,
            1 => &mut mid,
            _ => &mut root,
        };
        let ev = Message::event(format!("test.{i}"), Bytes::from_static(&[0x80]));
        c.send(&ev).expect("publish");
    }
    let mut orders = Vec::new();
    for r in 0..16 {
        let mut c = inst.client(r);
        let mut got = Vec::new();
        let ok = wait_until(|| {
            let r = rpc_at(&mut c, r, Flags::default(), "faulty.events", json!({})).expect("events");
            got = serde_json::from_value::<Vec<String>>(json(&r)).unwrap_or_default();
            got.len() >= 30
        });
        assert!(ok, "rank {r} got {got:?}");
        orders.push(got);
    }
    for (r, o) in orders.iter().enumerate() {
        assert_eq!(o, &orders[0], "rank {r}'s order differs from rank 0's");
    }
    // And no rank saw a number skipped: nothing was lost or reordered on the way.
    for r in 0..16 {
        let mut c = inst.client(r);
        let info = json(&rpc_at(&mut c, r, Flags::default(), "broker.info", json!({})).expect("broker.info"));
        assert_eq!(info["events_lost"], json!(0), "rank {r}: {info}");
    }
}

#[test]
fn killing_an_interior_broker_answers_every_request_through_it_and_it_rejoins_when_restarted() {
    let mut inst = Instance::start(7, 2, &faulty_everywhere());
    let mut watch = inst.client(0);
    rpc_at(&mut watch, 0, Flags::default(), "event.subscribe", json!({"topic": "overlay.rank.1"})).expect("subscribe");
    // Rank 1's children are 3 and 4. 100 slow requests from rank 0 to rank 3, through 1.
    let mut c = inst.client(0);
    let tags: Vec<u32> = (0..100)
        .map(|_| send_at(&mut c, 3, Flags::default(), "faulty.sleep", payload(json!({"ms": 60_000}))))
        .collect();
    // Once rank 3's module has them all (one running, the rest queued), cut the path.
    let mut three = inst.client(3);
    let arrived = wait_until(|| {
        let r = rpc_at(&mut three, 3, Flags::default(), "module.stats", json!({"name": "faulty"}));
        r.is_ok_and(|m| json(&m)["pending"] == json!(100))
    });
    assert!(arrived, "the 100 requests did not all reach rank 3's module");
    inst.kill(1);
    for tag in tags {
        let r = c.wait_response(tag, Some(WAIT));
        assert_eq!(errno_of(&r), "EHOSTUNREACH");
        let text = errtext(&r);
        assert!(text.contains("rank 1 is lost") && text.contains("before answering faulty.sleep"), "{text}");
    }
    let states = all_states(&inst.status());
    for (r, s) in &states {
        let want = if [1, 3, 4].contains(r) {
            "lost"
        } else if *r == 0 {
            "partial"
        } else {
            "full"
        };
        assert_eq!(s, want, "rank {r} in {states:?}");
    }
    // A new request for that subtree fails at once, naming the lost link.
    let r = rpc_at(&mut c, 4, Flags::default(), "broker.info", json!({}));
    assert_eq!(errno_of(&r), "EHOSTUNREACH");
    assert!(errtext(&r).contains("the link to rank 1 is lost"), "{}", errtext(&r));
    // Ranks 3 and 4 keep serving their own clients, and say they are cut off.
    let info = json(&rpc_at(&mut three, 3, Flags::default(), "broker.info", json!({})).expect("broker.info"));
    assert_eq!((&info["rank"], &info["parent_link"]), (&json!(3), &json!("lost")), "{info}");
    let own = json(&rpc_at(&mut three, 3, Flags::default(), "overlay.status", json!({})).expect("status"));
    assert_eq!(own["reason"], json!("the link to its parent, rank 1, is lost"), "{own}");
    inst.restart(1);
    inst.wait_full();
    assert_eq!(rank_of(rpc_at(&mut c, 4, Flags::default(), "broker.info", json!({}))), 4);
    // Rank 0 said so as it happened: lost, then full again.
    let mut seen = Vec::new();
    while !seen.ends_with(&["full".to_string()]) || !seen.contains(&"lost".to_string()) {
        let ev = watch.recv_timeout(Some(WAIT)).expect("an overlay.rank.1 event");
        assert_eq!(ev.topic, "overlay.rank.1");
        seen.push(json(&ev)["state"].as_str().unwrap_or("").to_string());
    }
    assert_eq!(seen.first().map(String::as_str), Some("lost"), "{seen:?}");
}

#[test]
fn test_size_starts_an_instance_that_is_full_and_stops_it_leaves_first() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(switchboard_tests::bin("switchboard"))
        .args(["--test-size", "5", "--fanout", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start switchboard --test-size");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read the address");
    let socket = line.trim().strip_prefix("local://").expect("a local:// address").to_string();
    let mut c = Client::connect(std::path::Path::new(&socket)).expect("connect to rank 0");
    let tree = json(&rpc_at(&mut c, 0, Flags::default(), "overlay.status", json!({})).expect("status"));
    let states = all_states(&tree);
    assert_eq!(states.len(), 5, "{tree:#}");
    assert!(states.iter().all(|(_, s)| s == "full"), "{tree:#}");
    assert_eq!(rank_of(rpc_at(&mut c, 4, Flags::default(), "broker.info", json!({}))), 4);
    let ranks = switchboard_tests::children_of(child.id());
    assert_eq!(ranks.len(), 5, "one process per rank");
    switchboard_tests::signal(child.id(), switchboard_tests::Signal::INT);
    let out = switchboard_tests::output_within(child, WAIT);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    // Leaves first: rank 0 saw its children go, and no rank ever lost its parent.
    assert!(log.contains("rank 1 is lost") && log.contains("rank 2 is lost"), "{log}");
    assert!(!log.contains("(the parent)"), "a rank outlived its parent:\n{log}");
    for pid in ranks {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "rank process {pid} outlived the stop");
    }
    assert!(!std::path::Path::new(&socket).exists(), "the instance's directory was not removed");
}

#[test]
fn a_peer_without_the_instance_certificate_is_refused_and_nothing_it_sends_is_routed() {
    let mut inst = Instance::start(3, 2, "");
    inst.kill(2);
    // An impostor for rank 2: the same site file but another key pair.
    let rogue_dir = tempfile::tempdir().expect("tempdir");
    let cert = rogue_dir.path().join("other.cert");
    switchboard_tests::instance::keygen(&cert);
    let text = std::fs::read_to_string(&inst.site)
        .expect("site")
        .replace("curve_cert = \"cert\"", &format!("curve_cert = \"{}\"", cert.display()));
    let site = rogue_dir.path().join("site.toml");
    std::fs::write(&site, text).expect("write");
    let rogue =
        switchboard_tests::Broker::start_site_args(&["--config", &site.display().to_string(), "--rank", "2"], None);
    // Rank 0 says who it refused (best effort, RFC 7 §3.4: the rogue keeps trying, so one of
    // its refusals names it).
    let named = |l: &str| l.contains("refused a peer from 127.0.0.1:") && l.contains("whose CURVE handshake failed");
    assert!(wait_until(|| inst.broker(0).log().lines().any(named)), "rank 0's log:\n{}", inst.broker(0).log());
    assert!(rogue.wait_log("check that this broker's certificate is the instance's"), "its log:\n{}", rogue.log());
    // Rank 0 never counts it in, and nothing it sends reaches rank 0.
    let states = all_states(&inst.status());
    assert!(states.contains(&(2, "lost".to_string())), "{states:?}");
    let mut c = rogue.client();
    let r = rpc_at(&mut c, 0, Flags::default(), "broker.info", json!({}));
    assert_eq!(errno_of(&r), "EHOSTUNREACH");
    assert!(errtext(&r).contains("rank 0 is offline"), "{}", errtext(&r));
    let mut root = inst.client(0);
    let r = rpc_at(&mut root, 2, Flags::default(), "broker.info", json!({}));
    assert_eq!(errno_of(&r), "EHOSTUNREACH");
}

#[test]
fn a_guest_stays_a_guest_on_another_rank() {
    if !switchboard_tests::running_as_root() {
        eprintln!("skipped: needs root to run the brokers as another user, so that this test is a guest");
        return;
    }
    let inst = Instance::start_as(3, 2, "", Some(65534));
    let mut guest = inst.client(1);
    // Allowed to anyone, on the far rank.
    assert_eq!(rank_of(rpc_at(&mut guest, 2, Flags::default(), "broker.info", json!({}))), 2);
    // Owner-only on rank 0: the credentials rank 1 stamped travel with the request.
    let r = rpc_at(&mut guest, 0, Flags::default(), "module.list", json!({}));
    assert_eq!(errno_of(&r), "EPERM", "{r:?}");
    assert!(errtext(&r).contains("for the instance owner only"), "{}", errtext(&r));
}

#[test]
fn a_client_that_knows_the_public_key_but_not_the_secret_one_is_refused_by_zap() {
    let inst = Instance::start(3, 2, "");
    let text = std::fs::read_to_string(inst.dir.path().join("cert")).expect("certificate");
    let public =
        text.lines().find_map(|l| l.trim().strip_prefix("public-key = ")).expect("public-key").trim_matches('"');
    let site = std::fs::read_to_string(&inst.site).expect("site");
    let at = site
        .lines()
        .find_map(|l| l.split("connect = \"").nth(1))
        .expect("rank 0's connect")
        .trim_end_matches(|c| c != '"');
    let at = at.trim_end_matches('"');
    // A DEALER with a key pair of its own, claiming to be rank 2, told the instance's public key.
    let ctx = zmq::Context::new();
    let d = ctx.socket(zmq::DEALER).expect("socket");
    let own = zmq::CurveKeyPair::new().expect("keys");
    d.set_linger(0).expect("linger");
    d.set_identity(b"2").expect("identity");
    d.set_curve_serverkey(public.as_bytes()).expect("server key");
    d.set_curve_publickey(&own.public_key).expect("public key");
    d.set_curve_secretkey(&own.secret_key).expect("secret key");
    d.connect(at).expect("connect");
    let hello = b"\x00\x00\x00\x00"; // never routed whatever it is
    d.send(&hello[..], zmq::DONTWAIT).ok();
    assert!(
        inst.broker(0).wait_log("refused a peer from 127.0.0.1: it does not hold the instance certificate"),
        "rank 0's log:\n{}",
        inst.broker(0).log()
    );
    // The real rank 2 is still rank 2.
    let mut c = inst.client(0);
    assert_eq!(rank_of(rpc_at(&mut c, 2, Flags::default(), "broker.info", json!({}))), 2);
}

#[test]
fn a_broker_refuses_to_start_on_an_overlay_table_with_a_mistake_and_says_where() {
    use std::process::{Command, Stdio};
    // What `switchboard ARGS` says on its way out; it must not start.
    let refused = |args: &[&str]| {
        let child = Command::new(switchboard_tests::bin("switchboard"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start switchboard");
        let out = switchboard_tests::output_within(child, WAIT);
        assert!(!out.status.success(), "switchboard {args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("cert");
    switchboard_tests::instance::keygen(&cert);
    let good = "[overlay]\ncurve_cert = \"cert\"\nhosts = [\n  { host = \"a\", bind = \"tcp://127.0.0.1:1\" },\n  { host = \"b\" },\n]\n";
    let cases: &[(String, &[&str], u32, &str)] = &[
        (good.replace("hosts", "fanout = 2\nport = 3\nhosts"), &["--rank", "0"], 0o600, "unknown field `port`"),
        (good.to_string(), &["--rank", "2"], 0o600, "rank 2 is out of range: the instance has 2 brokers"),
        (
            good.replace("bind = \"tcp://127.0.0.1:1\"", "bind = \"\""),
            &["--rank", "1"],
            0o600,
            "rank 0 has children but no bind address",
        ),
        (good.to_string(), &["--rank", "0"], 0o644, "is readable by others (mode 0644); chmod 600 it"),
        (good.to_string(), &[], 0o600, "give the broker --rank N"),
    ];
    let site = dir.path().join("site.toml").display().to_string();
    let sock = dir.path().join("b.sock").display().to_string();
    for (text, args, mode, want) in cases {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cert, std::fs::Permissions::from_mode(*mode)).expect("chmod");
        std::fs::write(&site, text).expect("write");
        let err = refused(&[&["--config", &site, "--listen", &sock], *args].concat());
        assert!(err.contains(want), "wanted {want:?} in:\n{err}");
        assert!(err.contains("site.toml"), "the file is not named:\n{err}");
    }
    // Options that only an instance has are refused where there is none, or made otherwise.
    let plain = dir.path().join("plain.toml");
    std::fs::write(&plain, "").expect("write");
    let plain = plain.display().to_string();
    let cases: &[(&[&str], &str)] = &[
        (&["--config", &plain, "--listen", &sock, "--rank", "1"], "--rank 1 names this broker's place in an instance"),
        (&["--listen", &sock, "--fanout", "3"], "--fanout K is the fanout of a --test-size N tree"),
        (&["--config", &site, "--test-size", "2"], "--test-size makes the instance's [overlay] table itself"),
    ];
    for (args, want) in cases {
        let err = refused(args);
        assert!(err.contains(want), "{args:?}: wanted {want:?} in:\n{err}");
    }
}

#[test]
fn links_outlive_quiet_and_handlers_slower_than_every_link_timeout() {
    // The link timeouts (RFC 7 §3.3, §3.6): hello again 1 s, ZeroMQ heartbeat 2 s and its
    // timeout 6 s, a parent's overlay.alive 2 s and a child's silence limit 10 s.
    let inst = Instance::start(3, 2, &faulty_everywhere());
    let mut c = inst.client(0);
    // A handler on rank 2 busy for 12 s while nothing else crosses the link.
    let r = rpc_at(&mut c, 2, Flags::default(), "faulty.sleep", json!({"ms": 12_000}));
    assert!(r.is_ok(), "{r:?}");
    // Then 12 s of quiet.
    std::thread::sleep(Duration::from_secs(12));
    for to in 0..3 {
        assert_eq!(rank_of(rpc_at(&mut c, to, Flags::default(), "broker.info", json!({}))), u64::from(to));
    }
    assert!(all_states(&inst.status()).iter().all(|(_, s)| s == "full"));
    for r in 0..3 {
        let log = inst.broker(r).log();
        assert!(!log.contains("is lost"), "rank {r} lost a link while quiet:\n{log}");
    }
}

#[test]
fn a_restarted_root_is_joined_again_by_its_children_and_events_flow_again() {
    let mut inst = Instance::start(3, 2, &faulty_everywhere());
    let mut two = inst.client(2);
    rpc_at(&mut two, 2, Flags::default(), "faulty.subscribe", json!({"topic": "after."})).expect("subscribe");
    inst.kill(0);
    let mut one = inst.client(1);
    let ok = wait_until(|| {
        let r = rpc_at(&mut one, 0, Flags::default(), "broker.info", json!({}));
        r.is_err() && errtext(&r).contains("rank 0 is lost")
    });
    assert!(ok, "rank 1 never saw rank 0 go; its log:\n{}", inst.broker(1).log());
    // Rank 1 still serves its own clients.
    assert_eq!(rank_of(rpc_at(&mut one, 1, Flags::default(), "broker.info", json!({}))), 1);
    inst.restart(0);
    inst.wait_full();
    assert_eq!(rank_of(rpc_at(&mut one, 2, Flags::default(), "broker.info", json!({}))), 2);
    one.send(&Message::event("after.restart", Bytes::from_static(&[0x80]))).expect("publish");
    let ok = wait_until(|| {
        let r = rpc_at(&mut two, 2, Flags::default(), "faulty.events", json!({})).expect("events");
        json(&r).as_array().is_some_and(|a| a.iter().any(|e| e == "after.restart"))
    });
    assert!(ok, "an event from rank 1 did not reach rank 2 after the root came back");
}

#[test]
fn a_module_loaded_with_rank_all_answers_on_every_rank_and_is_removed_from_all() {
    let mut inst = Instance::start(8, 2, "");
    let b = inst.broker(0);
    let echo = module("echo").display().to_string();
    let out = b.modctl_ok(&["--rank", "all", "load", &echo, "--name", "e2"]);
    for r in 0..8 {
        assert!(out.contains(&format!("rank {r}: loaded e2")), "{out}");
    }
    let mut c = inst.client(5);
    for r in 0..8 {
        let got = rpc_at(&mut c, r, Flags::default(), "e2.anything", json!({"from": 5})).expect("e2 on a rank");
        assert_eq!(json(&got), json!({"from": 5}));
    }
    let table = b.modctl_ok(&["--rank", "all", "list"]);
    assert!(table.starts_with("RANK"), "{table}");
    assert_eq!(table.lines().filter(|l| l.contains(" e2 ")).count(), 8, "{table}");
    // A list of ranks: those ranks and no others.
    let table = b.modctl_ok(&["--rank", "1-3,6", "list"]);
    let mut ranks: Vec<&str> =
        table.lines().filter(|l| l.contains(" e2 ")).filter_map(|l| l.split_whitespace().next()).collect();
    ranks.sort_unstable();
    assert_eq!(ranks, ["1", "2", "3", "6"], "{table}");
    let out = b.modctl_ok(&["--rank", "4-5", "reload", "e2"]);
    assert!(out.contains("rank 4:") && out.contains("rank 5:") && !out.contains("rank 0:"), "{out}");
    let tree = b.modctl_ok(&["overlay", "status"]);
    assert!(tree.starts_with("0 127.0.0.1: full"), "{tree}");
    assert!(tree.contains("└─ 7 127.0.0.1: full"), "{tree}");
    // A failure on some ranks: those are named, the others done, the exit status 1.
    inst.kill(6);
    let out = inst.broker(0).modctl(&["--rank", "all", "remove", "e2"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rank 6: remove e2: EHOSTUNREACH"), "{err}");
    assert!(err.contains("failed on rank 6 (1 of 8)"), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().filter(|l| l.contains("removed e2")).count(), 7, "{stdout}");
    for r in [0, 1, 2, 3, 4, 5, 7] {
        let gone = rpc_at(&mut c, r, Flags::default(), "e2.anything", json!({}));
        assert_eq!(errno_of(&gone), "ENOSYS", "rank {r}");
    }
    // All or nothing, when asked: the ranks that loaded it remove it again.
    let out = inst.broker(0).modctl(&["--rank", "all", "load", &echo, "--name", "e3", "--rollback"]);
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().filter(|l| l.contains("removed e3 (rolled back)")).count(), 7, "{stdout}");
    for r in [0, 1, 2, 3, 4, 5, 7] {
        let gone = rpc_at(&mut c, r, Flags::default(), "e3.anything", json!({}));
        assert_eq!(errno_of(&gone), "ENOSYS", "rank {r}");
    }
    // Removing what is not there, when that is fine: only the dead rank 6 fails.
    let out = inst.broker(0).modctl(&["--rank", "all", "remove", "e3", "--missing-ok"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().filter(|l| l.ends_with(": e3 was not loaded")).count(), 7, "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("failed on rank 6 (1 of 8)"));
}

#[test]
fn config_reload_in_an_instance_brings_every_rank_to_its_part_of_the_site_file() {
    let modules = format!("[[module]]\npath = \"{}\"\nranks = \"0-1\"\n", module("echo").display());
    let inst = Instance::start(4, 2, &modules);
    let mut c = inst.client(0);
    let serves = |c: &mut Client, r: u32| rpc_at(c, r, Flags::default(), "echo.x", json!({})).is_ok();
    assert_eq!((0..4).map(|r| serves(&mut c, r)).collect::<Vec<_>>(), [true, true, false, false]);
    let text = std::fs::read_to_string(&inst.site).expect("site").replace("ranks = \"0-1\"", "ranks = \"2-3\"");
    std::fs::write(&inst.site, text).expect("rewrite the site file");
    // In an instance, apply and config reload go to every rank without being told.
    let out = inst.broker(0).modctl_ok(&["config", "reload"]);
    assert!(out.contains("rank 0:") && out.contains("rank 3:"), "{out}");
    assert_eq!((0..4).map(|r| serves(&mut c, r)).collect::<Vec<_>>(), [false, false, true, true], "{out}");
    // `modctl apply` of another file likewise.
    let other = inst.dir.path().join("other.toml");
    let text = std::fs::read_to_string(&inst.site).expect("site").replace("ranks = \"2-3\"", "ranks = \"1\"");
    std::fs::write(&other, text).expect("write the other file");
    let out = inst.broker(0).modctl_ok(&["apply", &other.display().to_string()]);
    assert!(out.contains("rank 1:") && out.contains("rank 2:"), "{out}");
    assert_eq!((0..4).map(|r| serves(&mut c, r)).collect::<Vec<_>>(), [false, true, false, false], "{out}");
}

#[test]
fn events_a_stopped_broker_missed_are_counted_and_logged_when_it_returns() {
    let inst = Instance::start(3, 2, &faulty_everywhere());
    let mut two = inst.client(2);
    rpc_at(&mut two, 2, Flags::default(), "faulty.subscribe", json!({"topic": "gap."})).expect("subscribe");
    let mut root = inst.client(0);
    root.send(&Message::event("gap.before", Bytes::from_static(&[0x80]))).expect("publish");
    let events = |c: &mut Client| {
        let r = rpc_at(c, 2, Flags::default(), "faulty.events", json!({})).expect("events");
        serde_json::from_value::<Vec<String>>(json(&r)).unwrap_or_default()
    };
    assert!(wait_until(|| events(&mut two) == ["gap.before"]), "{:?}", events(&mut two));
    // Rank 2 stopped (not killed) until rank 0 counts its link lost, and three events then.
    let pid = inst.broker(2).pid();
    switchboard_tests::signal(pid, switchboard_tests::Signal::STOP);
    let lost = wait_until(|| all_states(&inst.status()).contains(&(2, "lost".to_string())));
    if !lost {
        switchboard_tests::signal(pid, switchboard_tests::Signal::CONT);
    }
    assert!(lost, "rank 0 never found the stopped rank 2 lost");
    for i in 0..3 {
        root.send(&Message::event(format!("gap.missed{i}"), Bytes::from_static(&[0x80]))).expect("publish");
    }
    switchboard_tests::signal(pid, switchboard_tests::Signal::CONT);
    inst.wait_full();
    root.send(&Message::event("gap.after", Bytes::from_static(&[0x80]))).expect("publish");
    assert!(wait_until(|| events(&mut two).len() >= 2), "{:?}", events(&mut two));
    assert_eq!(events(&mut two), ["gap.before", "gap.after"]);
    let info = json(&rpc_at(&mut two, 2, Flags::default(), "broker.info", json!({})).expect("broker.info"));
    assert!(info["events_lost"].as_u64().is_some_and(|n| n >= 3), "{info}");
    assert!(inst.broker(2).log().contains("were lost on the way from rank 0"), "{}", inst.broker(2).log());
}

#[test]
fn a_leaf_killed_and_restarted_under_load_leaves_no_request_unanswered() {
    let mut inst = Instance::start(3, 2, &faulty_everywhere());
    let socket = inst.broker(0).socket.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let (flag, count) = (stop.clone(), answered.clone());
    // Rank 0's client keeps 20 requests in flight to rank 2, each answered before the next.
    let load = std::thread::spawn(move || {
        let mut c = Client::connect(&socket).expect("connect");
        let (mut sent, mut ok, mut unreachable) = (0u64, 0u64, 0u64);
        let mut tags = std::collections::VecDeque::new();
        while !flag.load(Ordering::Relaxed) || !tags.is_empty() {
            while tags.len() < 20 && !flag.load(Ordering::Relaxed) {
                tags.push_back(send_at(&mut c, 2, Flags::default(), "faulty.sleep", payload(json!({"ms": 5}))));
                sent += 1;
            }
            let Some(tag) = tags.pop_front() else { break };
            match c.wait_response(tag, Some(WAIT)) {
                Ok(_) => ok += 1,
                Err(ClientError::Remote(e)) if e.errnum.name() == "EHOSTUNREACH" => unreachable += 1,
                // The restarted rank joins before its modules start (RFC 7 §5.2).
                Err(ClientError::Remote(e)) if e.errnum.name() == "ENOSYS" => unreachable += 1,
                Err(e) => panic!("request {tag} to rank 2: {e}"),
            }
            count.fetch_add(1, Ordering::Relaxed);
        }
        (sent, ok, unreachable)
    });
    let mut root = inst.client(0);
    for _ in 0..4 {
        // Kill it mid-load: once 20 more answers have come since the last time.
        let from = answered.load(Ordering::Relaxed);
        assert!(wait_until(|| answered.load(Ordering::Relaxed) >= from + 20), "the load stalled");
        inst.kill(2);
        // Restart it once rank 0 has seen it go.
        let seen = wait_until(|| {
            let tree = json(&rpc_at(&mut root, 0, Flags::default(), "overlay.status", json!({})).expect("status"));
            all_states(&tree).contains(&(2, "lost".to_string()))
        });
        assert!(seen, "rank 0 never saw rank 2 lost");
        inst.restart(2);
        inst.wait_full();
    }
    stop.store(true, Ordering::Relaxed);
    let (sent, ok, unreachable) = load.join().expect("the load thread");
    assert_eq!(ok + unreachable, sent, "every request was answered");
    assert!(ok > 0 && unreachable > 0, "{ok} answered, {unreachable} unreachable: the kills did not land mid-load");
}

#[test]
fn a_broker_displaced_by_another_of_its_rank_notices_without_sending_and_connects_again() {
    let inst = Instance::start(3, 2, "");
    let site = inst.site.display().to_string();
    // A second rank 1 on the same site file: libzmq gives its connection the first one's
    // place (ZMQ_ROUTER_HANDOVER), and rank 0 stops reading the first one's. Its ZeroMQ
    // heartbeats still pass, so only rank 0's silence can tell it.
    let twin = switchboard_tests::Broker::start_site_args(&["--config", &site, "--rank", "1"], None);
    assert!(twin.wait_log("joined the instance through rank 0"), "the twin's log:\n{}", twin.log());
    let displaced = |n: usize| inst.broker(0).log().matches("rank 1 is lost (it connected again)").count() >= n;
    assert!(wait_until(|| displaced(1)), "rank 0's log:\n{}", inst.broker(0).log());
    // Nothing is sent: the first rank 1 notices the silence, connects again, and takes its
    // place back.
    assert!(
        inst.broker(1).wait_log("another broker of rank 1 may have taken its place"),
        "the first rank 1's log:\n{}",
        inst.broker(1).log()
    );
    assert!(wait_until(|| displaced(2)), "rank 0's log:\n{}", inst.broker(0).log());
    assert!(inst.broker(1).log().matches("joined the instance through rank 0").count() >= 2);
    // Whichever holds the place now, a request from either is answered: served, or refused
    // at once with EHOSTUNREACH when its link is found lost; never left waiting.
    for b in [inst.broker(1), &twin] {
        let mut c = b.client();
        let r = rpc_at(&mut c, 0, Flags::default(), "broker.info", json!({}));
        match r {
            Ok(m) => assert_eq!(json(&m)["rank"], 0),
            Err(ClientError::Remote(_)) => assert_eq!(errno_of(&r), "EHOSTUNREACH", "{}", errtext(&r)),
            Err(e) => panic!("a request from a rank 1 broker was left waiting: {e}"),
        }
    }
}

#[test]
fn a_subscription_from_another_rank_is_refused_as_subscriptions_stay_local() {
    let inst = Instance::start(2, 2, "");
    let mut c = inst.client(1);
    let r = rpc_at(&mut c, 0, Flags::default(), "event.subscribe", json!({"topic": "t."}));
    assert_eq!(errno_of(&r), "EINVAL");
    assert!(errtext(&r).contains("subscriptions do not cross links"), "{}", errtext(&r));
    // On its own broker it subscribes.
    rpc_at(&mut c, 1, Flags::default(), "event.subscribe", json!({"topic": "t."})).expect("subscribed");
}
