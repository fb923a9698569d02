//! `modctl` as an operator uses it: JSON in and out, one-line errors with a non-zero exit
//! status, a helpful message when no broker runs, event streaming; `--rank` and `overlay
//! status` on a standalone broker (rank 0 of 1: ranks 0 and `all` work, any other rank fails
//! on its own line with EHOSTUNREACH). Several brokers are in overlay.rs. Also `rpc --stream`
//! and `--timeout` against the `faulty` module, `list` and `stats --format prometheus` read
//! back by a checker of the exposition format (and the checker's own test), and the
//! completion scripts and man pages of modctl and switchboard, made without a broker.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::json;
use switchboard_tests::{bin, json, module, row, rpc, Broker, WAIT};

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
    // What is not loaded is not an error when the operator says so.
    assert_eq!(b.modctl_ok(&["remove", "ghost", "--missing-ok"]), "");
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
        // Gone now: an error, unless a missing module is fine.
        let out = b.modctl(&["--rank", set, "remove", &name]);
        assert!(!out.status.success() && stderr(&out).contains("ENOENT: no module named"), "{}", stderr(&out));
        let out = b.modctl_ok(&["--rank", set, "remove", &name, "--missing-ok"]);
        assert_eq!(out, format!("rank 0: {name} was not loaded\n"));
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
        // Nothing on stdout: no rank answered (list prints not even its header).
        assert_eq!(stdout(&out), "", "{all:?}");
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
    for (set, why) in [
        ("x", "'x' is not a rank"),
        ("7-1", "'7-1' runs backwards"),
        ("", "an empty rank set"),
        // NODEID_ANY and NODEID_UPSTREAM: sent as a nodeid they would reach another broker.
        ("4294967295", "'4294967295' is not a rank: 4294967294 (NODEID_UPSTREAM) and 4294967295 (NODEID_ANY)"),
        ("0-4294967294", "'4294967294' is not a rank"),
    ] {
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

#[test]
fn rpc_stream_prints_each_response_as_a_line_until_enodata() {
    let b = Broker::start();
    b.load(&module("faulty"), None, &[]);
    let out = b.modctl_ok(&["rpc", "--stream", "faulty.stream", r#"{"n": 5}"#]);
    let lines: Vec<serde_json::Value> =
        out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect();
    assert_eq!(lines, (0..5).map(|i| json!({"seq": i})).collect::<Vec<_>>(), "{out}");
    // An empty stream: nothing printed, status 0.
    assert_eq!(b.modctl_ok(&["rpc", "faulty.stream", r#"{"n": 0}"#, "--stream"]), "");
    // A handler that answers once ends the stream after its one response (the Rust helper
    // sends ENODATA for it).
    assert_eq!(b.modctl_ok(&["rpc", "--stream", "faulty.whoami"]), "{\"args\":[],\"name\":\"faulty\"}\n");
    // Any other error ends it with status 1 and one line, as rpc's errors are.
    let out = b.modctl(&["rpc", "--stream", "faulty.stream", r#"{"x": 1}"#]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "modctl: faulty.stream: EPROTO: want {n}\n");
    // Without --stream, the request is not streaming: the handler refuses it.
    let out = b.modctl(&["rpc", "faulty.stream", r#"{"n": 2}"#]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("EPROTO: stream needs a streaming request"), "{}", stderr(&out));
    // With --rank: `rank N: JSON` per response; a rank that fails does so on its own line.
    let out = b.modctl_ok(&["--rank", "0", "rpc", "--stream", "faulty.stream", r#"{"n": 3}"#]);
    assert_eq!(out, "rank 0: {\"seq\":0}\nrank 0: {\"seq\":1}\nrank 0: {\"seq\":2}\n");
    let out = b.modctl(&["--rank", "0,3", "rpc", "--stream", "faulty.stream", r#"{"n": 2}"#]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "rank 0: {\"seq\":0}\nrank 0: {\"seq\":1}\n");
    let err = stderr(&out);
    assert!(err.starts_with("modctl: rank 3: faulty.stream: EHOSTUNREACH: no broker of rank 3"), "{err}");
    assert!(err.ends_with("modctl: faulty.stream: failed on rank 3 (1 of 2)\n"), "{err}");
}

#[test]
fn rpc_stream_stops_quietly_when_its_reader_goes_away() {
    let b = Broker::start();
    b.load(&module("faulty"), None, &[]);
    // `| head -2` on a long stream: modctl ends with status 0 once head has gone.
    let script = "\"$0\" rpc --stream faulty.stream '{\"n\": 1000000}' | head -2; exit \"${PIPESTATUS[0]}\"";
    let child = Command::new("bash")
        .args(["-c", script])
        .arg(bin("modctl"))
        .env("SWITCHBOARD_URI", b.socket.display().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash");
    let out = switchboard_tests::output_within(child, WAIT);
    assert_eq!(stdout(&out), "{\"seq\":0}\n{\"seq\":1}\n");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
}

#[test]
fn rpc_timeout_gives_up_on_a_handler_that_never_answers() {
    let b = Broker::start();
    b.load(&module("faulty"), None, &[]);
    for args in
        [vec!["rpc", "faulty.ignore", "--timeout", "300"], vec!["rpc", "--stream", "faulty.ignore", "--timeout", "300"]]
    {
        let start = std::time::Instant::now();
        let out = b.modctl(&args);
        let took = start.elapsed();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(stderr(&out), "modctl: faulty.ignore: no response within 300 ms (--timeout 300)\n", "{args:?}");
        assert!(stdout(&out).is_empty());
        assert!(took >= std::time::Duration::from_millis(300), "{args:?}: gave up after {took:?}");
        assert!(took < std::time::Duration::from_secs(5), "{args:?}: took {took:?}");
    }
    // A stream that goes quiet: what came is printed, then the timeout ends it.
    let out = b.modctl(&["--rank", "0", "rpc", "--stream", "faulty.ignore", "--timeout", "200"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "modctl: rank 0: faulty.ignore: no response within 200 ms (--timeout 200)\n\
         modctl: faulty.ignore: failed on rank 0 (1 of 1)\n"
    );
    let out = b.modctl(&["--rank", "0", "rpc", "faulty.ignore", "--timeout", "200"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("modctl: rank 0: faulty.ignore: no response within 200 ms"), "{}", stderr(&out));
    // A timeout long enough changes nothing.
    assert_eq!(b.modctl_ok(&["rpc", "faulty.whoami", "--timeout", "20000"]).lines().next(), Some("{"));
}

/// One sample of a Prometheus exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: std::collections::BTreeMap<String, String>,
    value: f64,
}

fn metric_name_ok(name: &str) -> bool {
    let mut c = name.chars();
    c.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parse `text` as the Prometheus text exposition format (version 0.0.4) and check what a
/// textfile collector needs: valid names, at most one HELP and one TYPE per family and the
/// TYPE before its samples, each family's lines together, counters named `_total`, escapes
/// only `\\`, `\"` and `\n` in label values (`\\` and `\n` in help), no timestamps, no series
/// twice, a line feed at the end. The samples, label values unescaped.
fn check_exposition(text: &str) -> Result<Vec<Sample>, String> {
    use std::collections::{BTreeMap, HashMap, HashSet};
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the last line does not end with a line feed".into());
    }
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps: HashSet<String> = HashSet::new();
    let mut done: HashSet<String> = HashSet::new(); // families whose group has ended
    let mut current: Option<String> = None;
    let mut series: HashSet<String> = HashSet::new();
    let mut samples = Vec::new();
    let mut enter = |name: &str, current: &mut Option<String>| -> Result<(), String> {
        if current.as_deref() != Some(name) {
            if done.contains(name) {
                return Err(format!("{name}: its lines are not together"));
            }
            if let Some(c) = current.take() {
                done.insert(c);
            }
            *current = Some(name.to_string());
        }
        Ok(())
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').ok_or(format!("{line}: no help text"))?;
            if !metric_name_ok(name) || !helps.insert(name.to_string()) {
                return Err(format!("{line}: bad name or a second HELP"));
            }
            let mut chars = help.chars();
            while let Some(c) = chars.next() {
                if c == '\\' && !matches!(chars.next(), Some('\\' | 'n')) {
                    return Err(format!("{line}: bad escape in help"));
                }
            }
            enter(name, &mut current)?;
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or(format!("{line}: no type"))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(format!("{line}: unknown type"));
            }
            if types.insert(name.to_string(), kind.to_string()).is_some() {
                return Err(format!("{line}: a second TYPE"));
            }
            if samples.iter().any(|s: &Sample| s.name == name) {
                return Err(format!("{line}: TYPE after a sample"));
            }
            if kind == "counter" && !name.ends_with("_total") {
                return Err(format!("{line}: a counter whose name does not end in _total"));
            }
            enter(name, &mut current)?;
        } else if line.starts_with('#') || line.trim().is_empty() {
            continue;
        } else {
            let name_end = line.find(['{', ' ']).ok_or(format!("{line}: no value"))?;
            let name = &line[..name_end];
            if !metric_name_ok(name) {
                return Err(format!("{line}: bad metric name"));
            }
            enter(name, &mut current)?;
            let mut labels = BTreeMap::new();
            let mut rest = &line[name_end..];
            if let Some(body) = rest.strip_prefix('{') {
                let mut chars = body.char_indices().peekable();
                loop {
                    match chars.peek() {
                        Some((i, '}')) => {
                            rest = &body[i + 1..];
                            break;
                        }
                        None => return Err(format!("{line}: labels not closed")),
                        _ => {}
                    }
                    let mut label = String::new();
                    for (_, c) in chars.by_ref() {
                        if c == '=' {
                            break;
                        }
                        label.push(c);
                    }
                    let ok = label.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    if !ok || chars.next().map(|(_, c)| c) != Some('"') {
                        return Err(format!("{line}: bad label {label:?}"));
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next().map(|(_, c)| c) {
                            Some('"') => break,
                            Some('\\') => match chars.next().map(|(_, c)| c) {
                                Some('\\') => value.push('\\'),
                                Some('"') => value.push('"'),
                                Some('n') => value.push('\n'),
                                other => return Err(format!("{line}: bad escape \\{other:?}")),
                            },
                            Some('\n') | None => return Err(format!("{line}: label value not closed")),
                            Some(c) => value.push(c),
                        }
                    }
                    if labels.insert(label.clone(), value).is_some() {
                        return Err(format!("{line}: label {label} twice"));
                    }
                    if let Some((_, ',')) = chars.peek() {
                        chars.next();
                    }
                }
            }
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let [value] = fields[..] else {
                return Err(format!("{line}: want one value and no timestamp, got {fields:?}"));
            };
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                "NaN" => f64::NAN,
                v => v.parse().map_err(|e| format!("{line}: value: {e}"))?,
            };
            if !series.insert(format!("{name}{labels:?}")) {
                return Err(format!("{line}: the same series twice"));
            }
            samples.push(Sample { name: name.to_string(), labels, value });
        }
    }
    Ok(samples)
}

#[test]
fn the_exposition_checker_refuses_what_the_format_forbids() {
    let good =
        "# HELP a_total A \\\\ b\\n.\n# TYPE a_total counter\na_total{m=\"x\\\"y\\\\z\\nw\",k=\"\"} 3\na_total 1.5\n";
    let s = check_exposition(good).expect("valid");
    assert_eq!(s[0].labels["m"], "x\"y\\z\nw");
    assert_eq!(s[1].value, 1.5);
    for bad in [
        "a 1",                                   // no final line feed
        "# TYPE a counter\na 1\n",               // a counter without _total
        "# TYPE a gauge\n# TYPE a gauge\na 1\n", // two TYPEs
        "a 1\n# TYPE a gauge\n",                 // TYPE after a sample
        "a 1\nb 1\na{x=\"1\"} 2\n",              // a family split
        "a{x=\"\\t\"} 1\n",                      // a bad escape
        "a{x=\"1} 1\n",                          // an open value
        "a{1x=\"1\"} 1\n",                       // a bad label name
        "a 1 1700000000\n",                      // a timestamp
        "a{x=\"1\"} 1\na{x=\"1\"} 2\n",          // a series twice
        "# HELP a x\\y\na 1\n",                  // a bad escape in help
    ] {
        assert!(check_exposition(bad).is_err(), "{bad:?} passed");
    }
}

#[test]
fn list_and_stats_print_prometheus_text_a_checker_parses_back() {
    let b = Broker::start();
    b.load(&module("kvs"), None, &[]);
    // A path with a quote and a backslash in it, for the escaping.
    let odd = b.dir.path().join("we\"ird\\dir");
    std::fs::create_dir_all(&odd).expect("mkdir");
    std::fs::copy(module("echo"), odd.join("libecho.so")).expect("copy");
    b.load(&odd.join("libecho.so"), Some("odd"), &[]);
    b.modctl_ok(&["rpc", "kvs.put", r#"{"key": "k", "value": 1}"#]);
    assert!(!b.modctl(&["rpc", "kvs.get", r#"{"key": "none"}"#]).status.success());

    let text = b.modctl_ok(&["list", "--format", "prometheus"]);
    let samples = check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let find = |s: &[Sample], name: &str, module: &str| -> Option<f64> {
        s.iter().find(|x| x.name == name && x.labels.get("module").map(String::as_str) == Some(module)).map(|x| x.value)
    };
    let info =
        samples.iter().find(|s| s.name == "switchboard_module_info" && s.labels["module"] == "odd").expect("info");
    assert_eq!(info.labels["path"], odd.join("libecho.so").display().to_string(), "{text}");
    assert_eq!(info.labels["kind"], "native");
    // Its two requests at least (it also gets messages of its own, such as event acks).
    assert!(find(&samples, "switchboard_module_messages_in_total", "kvs").is_some_and(|n| n >= 2.0), "{text}");
    let running = samples
        .iter()
        .filter(|s| s.name == "switchboard_module_state" && s.labels["module"] == "kvs")
        .map(|s| (s.labels["state"].as_str(), s.value))
        .collect::<Vec<_>>();
    assert_eq!(running, [("init", 0.0), ("running", 1.0), ("finalizing", 0.0), ("exited", 0.0), ("failed", 0.0)]);
    assert!(samples.iter().all(|s| s.name.starts_with("switchboard_") && !s.labels.contains_key("rank")));
    assert!(text.contains("# TYPE switchboard_module_restarts_total counter\n"), "{text}");

    let text = b.modctl_ok(&["stats", "kvs", "--format", "prometheus"]);
    let samples = check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(find(&samples, "switchboard_module_errors_total", "kvs"), Some(1.0), "{text}");
    assert!(find(&samples, "switchboard_module_uptime_seconds", "kvs").is_some_and(|s| s > 0.0), "{text}");

    // With --rank: a rank label on every module sample, and whether each rank answered.
    let out = b.modctl(&["--rank", "0,3", "list", "--format", "prometheus"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let samples = check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(samples.iter().filter(|s| s.name != "switchboard_rank_up").all(|s| s.labels["rank"] == "0"), "{text}");
    let up: Vec<(&str, f64)> = samples
        .iter()
        .filter(|s| s.name == "switchboard_rank_up")
        .map(|s| (s.labels["rank"].as_str(), s.value))
        .collect();
    assert_eq!(up, [("0", 1.0), ("3", 0.0)]);
    assert!(stderr(&out).starts_with("modctl: rank 3: list: EHOSTUNREACH"), "{}", stderr(&out));
    let text = b.modctl_ok(&["--rank", "all", "stats", "odd", "--format", "prometheus"]);
    check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(text.contains("switchboard_module_messages_in_total{rank=\"0\",module=\"odd\",kind=\"native\"} 0\n"));

    // --json is --format json; both at once is a command-line error; table is text.
    let without_idle = |args: &[&str]| {
        let mut v: serde_json::Value = serde_json::from_str(&b.modctl_ok(args)).expect("JSON");
        v.as_array_mut().into_iter().flatten().filter_map(|m| m.as_object_mut()).for_each(|m| {
            m.remove("idle_ms");
        });
        v
    };
    assert_eq!(without_idle(&["list", "--json"]), without_idle(&["list", "--format", "json"]));
    assert!(b.modctl_ok(&["list", "--format", "table"]).starts_with("NAME "));
    assert!(b.modctl_ok(&["stats", "kvs", "--format", "text"]).starts_with("name:         kvs\n"));
    assert_eq!(b.modctl(&["list", "--json", "--format", "prometheus"]).status.code(), Some(2));
}

#[test]
fn completions_and_man_pages_need_no_broker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nowhere = dir.path().join("none.sock");
    let run = |program: &str, args: &[&str]| {
        let out = Command::new(bin(program)).args(args).env("SWITCHBOARD_URI", &nowhere).output().expect(program);
        assert!(out.status.success(), "{program} {args:?}: {}", stderr(&out));
        stdout(&out)
    };
    for program in ["modctl", "switchboard"] {
        for shell in ["bash", "zsh", "fish"] {
            let script = run(program, &["completions", shell]);
            assert!(script.contains(program) && script.lines().count() > 10, "{program} {shell}:\n{script}");
        }
        let page = run(program, &["man"]);
        assert!(page.contains(&format!(".TH {program} 1")), "{page}");
        let pages = dir.path().join(program);
        std::fs::create_dir_all(&pages).expect("mkdir");
        let written = run(program, &["man", "--dir", &pages.display().to_string()]);
        assert!(written.lines().count() > 1, "{written}");
        for page in written.lines() {
            let text = std::fs::read_to_string(page).unwrap_or_else(|e| panic!("{page}: {e}"));
            assert!(text.contains(".TH "), "{page}");
        }
    }
    assert!(run("modctl", &["completions", "bash"]).contains("--stream"));
    assert!(run("switchboard", &["completions", "zsh"]).contains("keygen"));
    // An unknown shell is the parser's error; --rank is refused.
    let out = Command::new(bin("modctl")).args(["completions", "tcsh"]).output().expect("modctl");
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(bin("modctl")).args(["--rank", "0", "completions", "bash"]).output().expect("modctl");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("modctl: --rank does not apply to completions"), "{}", stderr(&out));
    // The broker's own command lines are unchanged: a subcommand and broker options conflict.
    let out = Command::new(bin("switchboard")).args(["--listen", "/x", "completions", "bash"]).output().expect("sb");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn stream_and_prometheus_with_rank_all_in_an_instance_of_three_brokers() {
    let faulty = format!("[[module]]\npath = \"{}\"\nranks = \"all\"\n", module("faulty").display());
    let inst = switchboard_tests::instance::Instance::start(3, 2, &faulty);
    // From a leaf: each rank's stream crosses the tree, lines interleave, each rank in order.
    let out = inst.broker(2).modctl_ok(&["--rank", "all", "rpc", "--stream", "faulty.stream", r#"{"n": 3}"#]);
    for rank in 0..3 {
        let mine: Vec<&str> = out.lines().filter(|l| l.starts_with(&format!("rank {rank}: "))).collect();
        let want: Vec<String> = (0..3).map(|i| format!("rank {rank}: {{\"seq\":{i}}}")).collect();
        assert_eq!(mine, want, "{out}");
    }
    assert_eq!(out.lines().count(), 9, "{out}");
    let text = inst.broker(0).modctl_ok(&["--rank", "all", "list", "--format", "prometheus"]);
    let samples = check_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let mut ranks: Vec<&str> = samples
        .iter()
        .filter(|s| s.name == "switchboard_module_info" && s.labels["module"] == "faulty")
        .map(|s| s.labels["rank"].as_str())
        .collect();
    ranks.sort_unstable();
    assert_eq!(ranks, ["0", "1", "2"], "{text}");
    assert_eq!(samples.iter().filter(|s| s.name == "switchboard_rank_up" && s.value == 1.0).count(), 3, "{text}");
}

#[test]
fn methods_lists_what_a_module_declares_in_rust_and_in_python() {
    let b = Broker::start_python();
    b.load(&module("kvs"), None, &[]);
    b.load(&module("echo"), None, &[]);
    b.load(&switchboard_tests::script("caller.py"), None, &[]);
    let out = b.modctl_ok(&["methods", "kvs"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("METHOD") && lines[0].contains("CALLERS") && lines[0].contains("DESCRIPTION"));
    assert!(lines[1].starts_with("kvs.delete") && lines[2].starts_with("kvs.get"), "in name order: {out}");
    // Then, after a blank line, the events it declares.
    assert_eq!(
        lines[5..],
        ["", "EVENT        DESCRIPTION", "kvs.changed  a key was put or deleted: `{key, op}`, op `put` or `delete`"],
        "{out}"
    );
    assert!(lines[2].contains("owner") && lines[2].contains("the value of `key`; ENOENT if there is none"), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&b.modctl_ok(&["methods", "kvs", "--json"])).expect("--json is JSON");
    assert_eq!(
        json["methods"][1],
        json!({"name": "get", "guest": false, "doc": "the value of `key`; ENOENT if there is none"})
    );
    assert_eq!(json["otherwise"], json!(false));
    assert_eq!(json["events"][0]["name"], json!("kvs.changed"));
    // A catch-all module says so.
    let echo = b.modctl_ok(&["methods", "echo"]);
    assert!(echo.contains("(and any other method: echo has a catch-all handler)"), "{echo}");
    // A Python module's decorators declare the same, the doc from the docstring's first line.
    let py = b.modctl_ok(&["methods", "caller"]);
    let rank = py.lines().find(|l| l.starts_with("caller.rank")).unwrap_or_default();
    assert!(rank.contains("anyone") && rank.contains("This broker's rank"), "{py}");
    assert!(py.lines().any(|l| l.starts_with("caller.call") && l.contains("owner")), "{py}");
    // No such service: the broker's error, status 1.
    let out = b.modctl(&["methods", "nosuch"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ENOSYS"));
}

/// The page of the bundled modules' methods and events, made from what their files declare
/// (`module.info`, read without running them).
fn methods_page(b: &Broker) -> String {
    let mut page = String::from(
        "# The bundled modules' methods and events\n\n\
         Made from the modules' own declarations (`.doc(...)` and `.event(...)` in their method\n\
         tables, read from the files by `modctl info --json`, RFC 3 §3.11) by the test\n\
         `the_bundled_modules_methods_page_is_what_they_declare` in `tests/e2e/modctl.rs`, which\n\
         fails when this page and the modules disagree. Do not edit it by hand: change the\n\
         declarations, then run\n\
         `SWITCHBOARD_BLESS=1 cargo test -p switchboard-tests --test modctl bundled`.\n\n\
         Every module also answers the conventions of RFC 3 §5.1: `ping`, `disconnect`,\n\
         `config-update` and `methods`.\n",
    );
    for service in ["echo", "heartbeat", "kvs"] {
        let info: serde_json::Value =
            serde_json::from_str(&b.modctl_ok(&["info", "--json", module(service).to_str().unwrap()]))
                .expect("info --json");
        let declared = &info["declares"];
        page.push_str(&format!("\n## {service}\n\n"));
        let methods = declared["methods"].as_array().cloned().unwrap_or_default();
        if !methods.is_empty() {
            page.push_str("| method | callers | what it does |\n|---|---|---|\n");
            for m in methods {
                let who = if m["guest"] == json!(true) { "anyone" } else { "owner" };
                let doc = m["doc"].as_str().unwrap_or("").replace('|', "\\|");
                page.push_str(&format!("| `{service}.{}` | {who} | {doc} |\n", m["name"].as_str().unwrap_or("")));
            }
        }
        match (declared["otherwise"] == json!(true), page.ends_with("|\n")) {
            (true, true) => {
                page.push_str(&format!("\nAny other method of `{service}` goes to its catch-all handler.\n"))
            }
            (true, false) => page
                .push_str(&format!("`{service}` declares no methods: every method goes to its catch-all handler.\n")),
            (false, _) => {}
        }
        let events = declared["events"].as_array().cloned().unwrap_or_default();
        if events.is_empty() {
            page.push_str(&format!("\n`{service}` publishes no events.\n"));
        } else {
            page.push_str("\n| event | when, and its payload |\n|---|---|\n");
            for e in events {
                let doc = e["doc"].as_str().unwrap_or("").replace('|', "\\|");
                page.push_str(&format!("| `{}` | {doc} |\n", e["name"].as_str().unwrap_or("")));
            }
        }
    }
    page
}

#[test]
fn the_bundled_modules_methods_page_is_what_they_declare() {
    let b = Broker::start();
    let page = methods_page(&b);
    let path = switchboard_tests::repo_root().join("docs/modules.md");
    if std::env::var_os("SWITCHBOARD_BLESS").is_some() {
        std::fs::write(&path, &page).expect("write docs/modules.md");
    }
    let written = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(written, page, "docs/modules.md is not what the modules declare; regenerate it (see its header)");
    // What the files declare is what the running modules answer to SERVICE.methods.
    let mut c = b.client();
    for m in ["echo", "heartbeat", "kvs"] {
        b.load(&module(m), None, &[]);
        let declared = row(&mut c, m).expect("listed")["declares"].clone();
        assert_eq!(json(&rpc(&mut c, &format!("{m}.methods"), json!({})).unwrap()), declared, "{m}");
    }
}
