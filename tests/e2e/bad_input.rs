//! Bad input, each case against a real broker: it gets a clear error, changes nothing, and
//! the broker keeps serving everyone else.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use serde_json::json;
use switchboard_protocol::{encode_frame, Message, MsgType};
use switchboard_tests::{c_module, errno_of, errtext, json, list, module, payload, row, rpc, wait_until, Broker, WAIT};

/// Load `path` (as `name`), expect `errno` and an error text holding every one of
/// `needles`, and check that nothing changed: the module list is as it was.
fn refused(b: &Broker, path: &std::path::Path, name: Option<&str>, errno: &str, needles: &[&str]) {
    let mut c = b.client();
    let modules = |c: &mut switchboard_client::Client| -> Vec<String> {
        list(c).iter().map(|m| format!("{} {} {}", m["name"], m["state"], m["services"])).collect()
    };
    let before = modules(&mut c);
    let mut body = json!({"path": path.display().to_string()});
    if let Some(name) = name {
        body["name"] = json!(name);
    }
    let r = rpc(&mut c, "module.load", body);
    assert_eq!(errno_of(&r), errno, "{path:?}: {}", errtext(&r));
    let text = errtext(&r);
    for needle in needles {
        assert!(text.contains(needle), "{needle:?} not in {text:?}");
    }
    assert_eq!(modules(&mut c), before, "a refused load changed the module list");
}

#[test]
fn a_missing_file_is_enoent_and_changes_nothing() {
    let b = Broker::start();
    refused(
        &b,
        std::path::Path::new("/nonexistent/libmod.so"),
        None,
        "ENOENT",
        &["/nonexistent/libmod.so", "no such file"],
    );
}

#[test]
fn files_that_are_not_modules_are_refused_by_name() {
    let b = Broker::start();
    let dir = b.dir.path();
    let random = dir.join("random.so");
    std::fs::write(&random, (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect::<Vec<u8>>())
        .unwrap();
    let text = dir.join("notes.so");
    std::fs::write(&text, "just some text\n").unwrap();
    let empty = dir.join("empty.so");
    std::fs::write(&empty, "").unwrap();
    for (path, why) in [(&random, "unknown data"), (&text, "text file"), (&empty, "empty")] {
        refused(&b, path, None, "ENOEXEC", &["is not a module", why]);
    }
    refused(&b, dir, None, "ENOEXEC", &["directory"]);
}

#[test]
fn a_shared_object_without_the_entry_symbol_is_refused() {
    let b = Broker::start();
    refused(&b, &c_module("noentry", b.dir.path()), None, "ENOEXEC", &["switchboard_module_entry"]);
}

#[test]
fn an_abi_version_mismatch_names_both_versions() {
    let b = Broker::start();
    refused(&b, &c_module("badabi", b.dir.path()), None, "ENOEXEC", &["ABI version 2", "speaks version 1"]);
}

#[test]
fn duplicate_names_and_taken_services_are_eexist() {
    let b = Broker::start();
    b.load(&module("echo"), None, &[]);
    refused(&b, &module("echo"), None, "EEXIST", &["'echo' is already loaded"]);
    // A service a client registered cannot be taken by a module.
    let mut provider = b.client();
    rpc(&mut provider, "service.add", json!({"service": "taken"})).unwrap();
    refused(&b, &module("echo"), Some("taken"), "EEXIST", &["service 'taken' is already provided by client"]);
    refused(&b, &module("echo"), Some("module"), "EEXIST", &["the broker itself"]);
    refused(&b, &module("echo"), Some("bad.name"), "EINVAL", &["bad.name"]);
    // One echo, still serving.
    rpc(&mut b.client(), "echo.x", json!({})).unwrap();
}

#[test]
fn a_module_that_panics_fails_alone_and_its_requesters_get_errors() {
    let b = Broker::start();
    b.load(&module("faulty"), None, &[]);
    b.load(&module("echo"), None, &[]);
    let mut c = b.client();
    // The panicking request and two queued behind it: all three get error responses.
    for (tag, topic) in [(1, "faulty.panic"), (2, "faulty.whoami"), (3, "faulty.whoami")] {
        let mut req = Message::request(topic, payload(json!({})));
        req.matchtag = tag;
        c.queue(&req);
    }
    c.flush().unwrap();
    let mut errs = Vec::new();
    for _ in 0..3 {
        let r = c.recv_timeout(Some(WAIT)).unwrap();
        assert_eq!(r.kind, MsgType::Response);
        errs.push((r.matchtag, r.errnum, r.errstr.unwrap_or_default()));
    }
    errs.sort();
    for (i, (tag, errnum, text)) in errs.iter().enumerate() {
        assert_eq!(*tag, i as u32 + 1);
        assert_eq!(*errnum, 113, "EHOSTUNREACH: {text}");
        assert!(text.contains("module 'faulty' failed") && text.contains("told to panic"), "{text}");
    }
    let r = row(&mut c, "faulty").expect("listed");
    assert_eq!(r["state"], "failed");
    assert!(r["reason"].as_str().unwrap().contains("told to panic"));
    // Its service is gone; everyone else is served.
    assert_eq!(errno_of(&rpc(&mut c, "faulty.whoami", json!({}))), "ENOSYS");
    rpc(&mut c, "echo.x", json!({})).unwrap();
    // The dead instance can be replaced by a new load under its name.
    b.load(&module("faulty"), None, &[]);
    assert_eq!(json(&rpc(&mut c, "faulty.whoami", json!({})).unwrap())["name"], "faulty");
}

#[test]
fn a_module_whose_init_fails_fails_the_load() {
    let b = Broker::start();
    let out = b.modctl(&["load", module("faulty").to_str().unwrap(), "fail-init"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("failed to start") && err.contains("told to fail in init"), "{err}");
    assert!(list(&mut b.client()).is_empty());
}

fn raw_connect(b: &Broker) -> UnixStream {
    let s = UnixStream::connect(&b.socket).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

fn read_frame(s: &mut UnixStream) -> Option<Message> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    switchboard_protocol::decode_frame(body.into()).ok()
}

#[test]
fn a_malformed_frame_gets_eproto_and_the_connection_keeps_working() {
    let b = Broker::start();
    let mut s = raw_connect(&b);
    // Well framed, garbage inside: length 6, header length 2, two bytes that are not a header.
    s.write_all(&[0, 0, 0, 6, 0, 0, 0, 2, 0xc1, 0xc1]).unwrap();
    let err = read_frame(&mut s).expect("an error response");
    assert_eq!((err.kind, err.errnum, err.matchtag), (MsgType::Response, 71, 0));
    assert!(err.errstr.unwrap().contains("malformed"));
    // Header length past the frame's end.
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 99]).unwrap();
    assert_eq!(read_frame(&mut s).unwrap().errnum, 71);
    let mut ping = Message::request("broker.ping", payload(json!({"ok": 1})));
    ping.matchtag = 4;
    s.write_all(&encode_frame(&ping)).unwrap();
    let r = read_frame(&mut s).unwrap();
    assert_eq!((r.matchtag, r.errnum), (4, 0));
}

#[test]
fn an_oversized_frame_gets_eproto_then_disconnect_and_others_are_unaffected() {
    let b = Broker::start_with(&["--max-frame", "4096"]);
    let mut bystander = b.client();
    let mut s = raw_connect(&b);
    s.write_all(&(1u32 << 20).to_be_bytes()).unwrap();
    let err = read_frame(&mut s).expect("an error before the disconnect");
    assert_eq!(err.errnum, 71);
    assert!(err.errstr.unwrap().contains("exceeds the limit of 4096"));
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap_or(0), 0, "the broker closed the connection");
    // A frame just under the limit is fine for a well-behaved client.
    let big = "x".repeat(3000);
    let r = rpc(&mut bystander, "broker.ping", json!({"big": big})).unwrap();
    assert_eq!(json(&r)["big"].as_str().unwrap().len(), 3000);
}

#[test]
fn modules_a_client_used_hear_of_its_disconnect() {
    let b = Broker::start();
    b.load(&module("faulty"), None, &[]);
    let mut leaver = b.client();
    // A request still in flight when it leaves.
    rpc(&mut leaver, "faulty.whoami", json!({})).unwrap();
    let mut req = Message::request("faulty.sleep", payload(json!({"ms": 200})));
    req.matchtag = 99;
    leaver.send(&req).unwrap();
    drop(leaver);
    let mut c = b.client();
    assert!(wait_until(|| json(&rpc(&mut c, "faulty.disconnects", json!({})).unwrap()) == json!(1)));
    // The broker is fine and the module owes nothing: its answer to the departed client was dropped.
    assert!(wait_until(|| row(&mut c, "faulty").unwrap()["queue"] == 0));
    b.modctl_ok(&["remove", "faulty"]);
}

#[test]
fn guests_are_refused_unless_allowed() {
    if !switchboard_tests::running_as_root() {
        eprintln!("skipped: needs root to connect as another uid");
        return;
    }
    for allow in [false, true] {
        let b = if allow { Broker::start_with(&["--allow-guests"]) } else { Broker::start() };
        // The temporary directory is the owner's; let the guest reach the socket.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(b.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        // `modctl` run as the unprivileged user nobody.
        let as_guest = |args: &[&str]| {
            std::process::Command::new(switchboard_tests::bin("modctl"))
                .args(args)
                .env("SWITCHBOARD_URI", b.socket.display().to_string())
                .uid(65534)
                .gid(65534)
                .output()
                .unwrap()
        };
        let out = as_guest(&["rpc", "broker.ping"]);
        let err = String::from_utf8_lossy(&out.stderr);
        if allow {
            assert!(out.status.success(), "{err}");
            // A guest may ping, but not manage modules.
            let out = as_guest(&["list"]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success() && err.contains("EPERM"), "{err}");
        } else {
            assert!(!out.status.success());
            assert!(err.contains("refused") && err.contains("EPERM") && err.contains("does not allow guests"), "{err}");
        }
        // The owner is unaffected.
        rpc(&mut b.client(), "broker.ping", json!({})).unwrap();
    }
}

#[test]
fn a_client_that_stops_reading_is_cut_off_without_stalling_others() {
    let b = Broker::start();
    b.load(&module("echo"), None, &[]);
    let mut hog = raw_connect(&b);
    let big = payload(json!({"fill": "y".repeat(60_000)}));
    let mut c = b.client();
    // Send far more than the broker buffers for one client (64 MiB) without reading.
    let mut frame = Vec::new();
    for i in 0..100 {
        let mut m = Message::request("echo.x", big.clone());
        m.matchtag = i;
        frame.extend_from_slice(&encode_frame(&m));
    }
    hog.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut sent = 0;
    while sent < 1500 {
        if hog.write_all(&frame).is_err() {
            break;
        }
        sent += 100;
        // Meanwhile others are served.
        rpc(&mut c, "echo.ping", json!({})).unwrap();
    }
    assert!(b.wait_log("not reading its messages"), "the hog was never disconnected");
    rpc(&mut c, "echo.x", json!({"still": "fine"})).unwrap();
}

#[test]
fn a_module_table_with_a_null_main_is_refused() {
    let b = Broker::start();
    refused(&b, &c_module("nullmain", b.dir.path()), None, "ENOEXEC", &["main function is NULL"]);
    rpc(&mut b.client(), "broker.ping", json!({})).unwrap();
}

#[test]
fn a_client_cannot_forge_responses_to_other_endpoints() {
    let b = Broker::start();
    let mut victim = b.client();
    // The victim has a request outstanding (so it is waiting for *a* response).
    let mut forger = raw_connect(&b);
    for hop in 1..=64u64 {
        let mut fake = Message::request("broker.ping", payload(json!({"forged": true})))
            .response(payload(json!({"forged": true})));
        fake.route.push(hop);
        fake.matchtag = 1;
        forger.write_all(&encode_frame(&fake)).unwrap();
    }
    // The forger is still served; the victim got nothing.
    let mut ping = Message::request("broker.ping", payload(json!({})));
    ping.matchtag = 2;
    forger.write_all(&encode_frame(&ping)).unwrap();
    assert_eq!(read_frame(&mut forger).unwrap().matchtag, 2);
    assert!(victim.recv_timeout(Some(Duration::from_millis(300))).is_err(), "a forged response was delivered");
    rpc(&mut victim, "broker.ping", json!({})).unwrap();
}

#[test]
fn a_client_service_that_disconnects_fails_the_requests_it_held() {
    let b = Broker::start();
    let mut provider = b.client();
    rpc(&mut provider, "service.add", json!({"service": "flaky"})).unwrap();
    let mut caller = b.client();
    let mut req = Message::request("flaky.work", payload(json!({})));
    req.matchtag = 8;
    caller.send(&req).unwrap();
    let got = provider.recv_timeout(Some(WAIT)).unwrap();
    assert_eq!(got.topic, "flaky.work");
    drop(provider);
    let r = caller.wait_response(8, Some(WAIT));
    assert_eq!(errno_of(&r), "EHOSTUNREACH");
    assert!(errtext(&r).contains("disconnected before answering flaky.work"), "{}", errtext(&r));
}

#[test]
fn a_request_with_a_route_too_deep_is_eproto() {
    let b = Broker::start();
    let mut c = b.client();
    let mut req = Message::request("broker.ping", payload(json!({})));
    req.matchtag = 3;
    req.route = (0..64u64).collect();
    c.send(&req).unwrap();
    let r = c.wait_response(3, Some(WAIT));
    assert_eq!(errno_of(&r), "EPROTO");
}

#[test]
fn rewriting_a_loaded_library_in_place_does_not_touch_the_running_module() {
    let b = Broker::start();
    let lib = b.dir.path().join("libswap.so");
    std::fs::copy(module("echo"), &lib).unwrap();
    b.load(&lib, Some("first"), &[]);
    // Overwrite the very file (same inode) with another module's bytes.
    std::fs::write(&lib, std::fs::read(module("kvs")).unwrap()).unwrap();
    let mut c = b.client();
    assert_eq!(json(&rpc(&mut c, "first.x", json!({"still": "echo"})).unwrap()), json!({"still": "echo"}));
    // Loading the file now loads what it holds now.
    b.load(&lib, Some("second"), &[]);
    assert_eq!(json(&rpc(&mut c, "second.list", json!({})).unwrap()), json!({"keys": []}));
    assert_eq!(json(&rpc(&mut c, "first.list", json!({})).unwrap()), json!({}));
}

#[test]
fn the_broker_will_not_replace_a_file_that_is_not_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("important.txt");
    std::fs::write(&file, "keep me").unwrap();
    let out = std::process::Command::new(switchboard_tests::bin("switchboard"))
        .args(["--listen", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a socket"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}
