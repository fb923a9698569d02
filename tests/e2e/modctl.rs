//! `modctl` as an operator uses it: JSON in and out, one-line errors with a non-zero exit
//! status, a helpful message when no broker runs, event streaming; `--rank` and `overlay
//! status` on a standalone broker (rank 0 of 1: ranks 0 and `all` work, any other rank fails
//! on its own line with EHOSTUNREACH). Several brokers are in overlay.rs.

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

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn rank_0_and_all_run_on_the_standalone_broker_and_report_per_rank() {
    let b = Broker::start();
    let echo = module("echo").display().to_string();
    for set in ["0", "all"] {
        let name = format!("e{set}");
        let out = b.modctl_ok(&["--rank", set, "load", &echo, "--name", &name]);
        assert_eq!(out, format!("rank 0: loaded {name} (native, services: {name})\n"));
        let out = b.modctl_ok(&["--rank", set, "list"]);
        let mut lines = out.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
        assert_eq!(header[..3], ["RANK", "NAME", "KIND"], "{out}");
        assert!(lines.any(|l| l.split_whitespace().take(3).eq(["0", name.as_str(), "native"])), "{out}");
        let out = b.modctl_ok(&["--rank", set, "list", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        assert_eq!(v.as_array().map(Vec::len), Some(1), "{out}");
        assert_eq!(v[0]["rank"], json!(0));
        assert!(v[0]["modules"].as_array().expect("modules").iter().any(|m| m["name"] == json!(name)), "{out}");
        let out = b.modctl_ok(&["--rank", set, "stats", &name]);
        assert!(out.starts_with(&format!("rank 0:\n  name:         {name}\n  kind:         native\n")), "{out}");
        let out = b.modctl_ok(&["--rank", set, "stats", &name, "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        assert_eq!((&v[0]["rank"], &v[0]["stats"]["name"]), (&json!(0), &json!(name)), "{out}");
        let out = b.modctl_ok(&["--rank", set, "info", &echo]);
        assert!(out.starts_with("rank 0:\n  name:     echo\n  kind:     native\n"), "{out}");
        let out = b.modctl_ok(&["--rank", set, "reload", &name]);
        assert!(out.starts_with(&format!("rank 0: reloaded {name} (native, digest ")), "{out}");
        let out = b.modctl_ok(&["--rank", set, "rpc", &format!("{name}.ping"), r#"{"x": [1, "y"]}"#]);
        assert_eq!(out, "rank 0: {\"x\":[1,\"y\"]}\n");
        let out = b.modctl_ok(&["--rank", set, "ping", "--count", "2"]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[1].starts_with("rank 0: broker.ping: seq=1 time="), "{out}");
        assert_eq!(b.modctl_ok(&["--rank", set, "remove", &name]), format!("rank 0: removed {name}\n"));
    }
    // Without --rank nothing changes: no RANK column, no rank prefix.
    assert!(b.modctl_ok(&["list"]).starts_with("NAME "));
    assert_eq!(b.modctl_ok(&["load", &echo, "--name", "plain"]), "loaded plain (native, services: plain)\n");
}

#[test]
fn a_rank_the_broker_does_not_have_fails_on_its_own_line_with_ehostunreach() {
    let b = Broker::start();
    let echo = module("echo").display().to_string();
    b.load(&module("echo"), Some("there"), &[]);
    for args in [
        vec!["load", echo.as_str()],
        vec!["remove", "there"],
        vec!["reload", "there"],
        vec!["list"],
        vec!["stats", "there"],
        vec!["info", echo.as_str()],
        vec!["rpc", "there.ping"],
        vec!["ping"],
    ] {
        let mut all = vec!["--rank", "3"];
        all.extend(&args);
        let out = b.modctl(&all);
        assert_eq!(out.status.code(), Some(1), "{all:?}");
        let err = stderr(&out);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{all:?}: {err}");
        assert!(lines[0].starts_with("modctl: rank 3: "), "{all:?}: {err}");
        assert!(lines[0].contains(": EHOSTUNREACH: no broker of rank 3"), "{all:?}: {err}");
        assert!(lines[1].starts_with("modctl: ") && lines[1].ends_with(": failed on rank 3 (1 of 1)"), "{err}");
        // Nothing for rank 3 on stdout (list prints its header).
        assert!(!stdout(&out).contains("rank 3"), "{all:?}");
    }
    // The ranks that answer are served and not rolled back; the exit status says some failed.
    let out = b.modctl(&["--rank", "0,3,5-6", "load", &echo, "--name", "half"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "rank 0: loaded half (native, services: half)\n");
    let err = stderr(&out);
    for r in [3, 5, 6] {
        assert!(err.contains(&format!("modctl: rank {r}: load {echo}: EHOSTUNREACH")), "{err}");
    }
    assert!(err.trim_end().ends_with(&format!("modctl: load {echo}: failed on ranks 3,5-6 (3 of 4)")), "{err}");
    assert!(b.modctl_ok(&["list"]).contains("half"));
    // JSON says which rank failed and why, besides stderr.
    let out = b.modctl(&["--rank", "0,3", "list", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(v[0]["rank"], json!(0));
    assert!(v[0]["modules"].as_array().is_some_and(|m| m.len() == 2), "{v}");
    assert_eq!(v[1]["rank"], json!(3));
    assert!(v[1]["error"].as_str().is_some_and(|e| e.starts_with("EHOSTUNREACH: ")), "{v}");
}

#[test]
fn overlay_status_of_a_standalone_broker_is_one_full_rank() {
    let b = Broker::start();
    let out = b.modctl_ok(&["overlay", "status"]);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with("0 ") && out.ends_with(": full\n"), "{out}");
    assert_eq!(b.modctl_ok(&["--rank", "0", "overlay", "status"]), out);
    assert_eq!(b.modctl_ok(&["--rank", "all", "overlay", "status"]), out);
    let v: serde_json::Value = serde_json::from_str(&b.modctl_ok(&["overlay", "status", "--json"])).expect("JSON");
    assert_eq!((&v["rank"], &v["state"], &v["children"]), (&json!(0), &json!("full"), &json!([])), "{v}");
    let out = b.modctl(&["--rank", "3", "overlay", "status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("EHOSTUNREACH: no broker of rank 3"), "{}", stderr(&out));
    let out = b.modctl(&["--rank", "0-1", "overlay", "status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("modctl: overlay status takes one rank"), "{}", stderr(&out));
}

#[test]
fn rank_is_refused_where_it_does_not_apply_and_a_bad_set_by_the_parser() {
    let b = Broker::start();
    for args in [vec!["trace"], vec!["event", "pub", "x"], vec!["event", "sub", "x"]] {
        let mut all = vec!["--rank", "all"];
        all.extend(&args);
        let out = b.modctl(&all);
        assert_eq!(out.status.code(), Some(1), "{all:?}");
        assert!(stderr(&out).starts_with("modctl: --rank does not apply to "), "{}", stderr(&out));
    }
    for (set, why) in [("x", "'x' is not a rank"), ("7-1", "'7-1' runs backwards"), ("", "an empty rank set")] {
        let out = b.modctl(&["--rank", set, "list"]);
        assert_eq!(out.status.code(), Some(2), "--rank {set:?}");
        assert!(stderr(&out).contains(why), "{}", stderr(&out));
    }
    let out = b.modctl(&["--rank", "0-4000000000", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("names 4000000001 ranks"), "{}", stderr(&out));
}

#[test]
fn apply_with_rank_reports_each_ranks_plan() {
    let b = Broker::start();
    let site = b.dir.path().join("site.toml");
    let echo = module("echo").display().to_string();
    std::fs::write(&site, format!("[[module]]\nname = \"here\"\npath = \"{echo}\"\nranks = \"0\"\n")).expect("write");
    let s = site.display().to_string();
    let out = b.modctl_ok(&["--rank", "all", "apply", &s, "--dry-run"]);
    assert!(out.starts_with(&format!("rank 0:\n  plan for {s} (dry run, would change nothing):\n  ")), "{out}");
    assert!(out.contains("load      here"), "{out}");
    // Rank 0 applies; rank 3 fails on its own line and makes the status 1.
    let out = b.modctl(&["--rank", "0,3", "apply", &s]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).starts_with(&format!("rank 0:\n  applying {s}:\n")), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.starts_with(&format!("modctl: rank 3: apply {s}: EHOSTUNREACH: ")), "{err}");
    assert!(err.trim_end().ends_with(&format!("modctl: apply {s}: failed on rank 3 (1 of 2)")), "{err}");
    assert!(b.modctl_ok(&["list"]).contains("here"));
    let v: serde_json::Value =
        serde_json::from_str(&b.modctl_ok(&["--rank", "0", "apply", &s, "--json"])).expect("JSON");
    assert_eq!((&v[0]["rank"], &v[0]["report"]["unchanged"]), (&json!(0), &json!(["here"])), "{v}");
}
