//! `modctl` as an operator uses it: JSON in and out, one-line errors with a non-zero exit
//! status, a helpful message when no broker runs, event streaming.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::json;
use switchboard_tests::{bin, module, Broker, WAIT};

#[test]
fn rpc_takes_json_and_prints_json() {
    let b = Broker::start();
    b.load(&module("kvs"), None, &[]);
    b.modctl_ok(&["rpc", "kvs.put", r#"{"key": "k", "value": {"a": [1, 2.5, null, "s"]}}"#]);
    let out = b.modctl_ok(&["rpc", "kvs.get", r#"{"key": "k"}"#]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v, json!({"a": [1, 2.5, null, "s"]}));
}

#[test]
fn errors_are_one_line_on_stderr_with_a_failing_status() {
    let b = Broker::start();
    for args in [
        vec!["rpc", "nosuch.x"],
        vec!["rpc", "broker.ping", "{not json"],
        vec!["remove", "ghost"],
        vec!["load", "/no/such/file.so"],
    ] {
        let out = b.modctl(&args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("modctl: "), "{err}");
        assert!(out.stdout.is_empty());
    }
    let err = String::from_utf8_lossy(&b.modctl(&["rpc", "nosuch.x"]).stderr).into_owned();
    assert!(err.contains("ENOSYS") && err.contains("nosuch"), "{err}");
}

#[test]
fn without_a_broker_modctl_says_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    let out =
        Command::new(bin("modctl")).arg("list").env("SWITCHBOARD_URI", dir.path().join("none.sock")).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no broker is listening") && err.contains("start one with `switchboard`"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1);
}

#[test]
fn event_sub_streams_what_event_pub_publishes() {
    let b = Broker::start();
    let mut sub = Command::new(bin("modctl"))
        .args(["event", "sub", "weather.", "--count", "2"])
        .env("SWITCHBOARD_URI", b.socket.display().to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    // Publish until the subscriber is in place and has seen both events.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let got: Vec<String> = lines.by_ref().take(2).map_while(Result::ok).collect();
        let _ = tx.send(got);
    });
    let mut got = None;
    for i in 0..200 {
        b.modctl_ok(&["event", "pub", "weather.rain", &format!(r#"{{"mm": {i}}}"#)]);
        b.modctl_ok(&["event", "pub", "other.topic"]);
        if let Ok(g) = rx.recv_timeout(std::time::Duration::from_millis(50)) {
            got = Some(g);
            break;
        }
    }
    let got = got.or_else(|| rx.recv_timeout(WAIT).ok()).expect("the subscriber printed events");
    assert_eq!(got.len(), 2);
    for line in &got {
        assert!(line.starts_with("weather.rain {\"mm\":"), "{line}");
    }
    assert!(sub.wait().unwrap().success());
}
