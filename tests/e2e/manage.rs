//! Module management on a running broker (RFC 3): apply and its plan, reload without losing
//! a request, lifecycle events, config-update, removal of a required module, restarts with
//! backoff, stats and trace.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use switchboard_protocol::{Message, MsgType};
use switchboard_tests::{
    bin, errno_of, errtext, json, list, module, payload, row, rpc, script, wait_until, wasm_module, Broker, WAIT,
};

/// The time of day of a log line (`2026-11-22T03:31:29.238132Z ...`), in seconds.
fn seconds_of_day(line: &str) -> f64 {
    let time = line.split_whitespace().next().and_then(|t| t.split_once('T')).map(|(_, t)| t.trim_end_matches('Z'));
    let parts: Vec<f64> = time.unwrap_or_default().split(':').filter_map(|p| p.parse().ok()).collect();
    assert_eq!(parts.len(), 3, "no time in {line:?}");
    parts[0] * 3600.0 + parts[1] * 60.0 + parts[2]
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

fn entry(name: &str, path: &Path, extra: &str) -> String {
    format!("[[module]]\nname = \"{name}\"\npath = \"{}\"\n{extra}\n", path.display())
}

/// Subscribe a client to `module.lifecycle.` events.
fn watcher(b: &Broker) -> switchboard_client::Client {
    let mut w = b.client();
    rpc(&mut w, "event.subscribe", json!({"topic": "module.lifecycle."})).unwrap();
    w
}

/// The next lifecycle event as (name, event, reason).
fn next_event(w: &mut switchboard_client::Client) -> (String, String, String) {
    loop {
        let m = w.recv_timeout(Some(WAIT)).expect("a lifecycle event");
        if m.kind == MsgType::Event {
            let v = json(&m);
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            return (s("name"), s("event"), s("reason"));
        }
    }
}

#[test]
fn apply_loads_removes_reloads_and_reconfigures_exactly_what_changed_and_is_idempotent() {
    let b = Broker::start();
    let dir = b.dir.path().to_path_buf();
    let site = dir.join("site.toml");
    let hb = entry("heartbeat", &module("heartbeat"), "config = { period = 10.0 }");
    write(
        &site,
        &format!(
            "{}{}{}{}",
            entry("echo", &module("echo"), ""),
            entry("kvs", &module("kvs"), ""),
            hb,
            entry("faulty", &module("faulty"), "")
        ),
    );
    let out = b.modctl_ok(&["apply", site.to_str().unwrap()]);
    assert_eq!(out.matches("load ").count(), 4, "{out}");
    let mut c = b.client();
    let before = row(&mut c, "echo").unwrap();
    rpc(&mut c, "echo.x", json!({})).unwrap();

    // Second apply: nothing to do.
    let out = b.modctl_ok(&["apply", site.to_str().unwrap()]);
    assert!(out.starts_with("nothing to do: 4 modules as"), "{out}");

    // kvs leaves, faulty gets new args, heartbeat a new config, echo2 is new, echo stays.
    write(
        &site,
        &format!(
            "{}{}{}{}",
            entry("echo", &module("echo"), ""),
            entry("heartbeat", &module("heartbeat"), "config = { period = 0.05 }"),
            entry("faulty", &module("faulty"), "args = [\"-v\"]"),
            entry("echo2", &module("echo"), "")
        ),
    );
    let plan = b.modctl_ok(&["apply", "--dry-run", "--json", site.to_str().unwrap()]);
    let plan: serde_json::Value = serde_json::from_str(&plan).unwrap();
    let steps: Vec<String> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{} {}", s["action"].as_str().unwrap(), s["name"].as_str().unwrap()))
        .collect();
    assert_eq!(steps, ["remove kvs", "configure heartbeat", "reload faulty", "load echo2"]);
    assert_eq!(plan["unchanged"], json!(["echo"]));
    // A dry run changed nothing.
    assert!(row(&mut c, "kvs").is_some());

    let out = b.modctl_ok(&["apply", site.to_str().unwrap()]);
    assert!(out.contains("config-update accepted"), "{out}");
    let names: Vec<String> = list(&mut c).iter().map(|m| m["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["echo", "heartbeat", "faulty", "echo2"]);
    // echo was not touched: same instance, its counters kept.
    let after = row(&mut c, "echo").unwrap();
    assert!(after["msgs_in"].as_u64() >= before["msgs_in"].as_u64());
    assert!(after["msgs_in"].as_u64().unwrap() >= 1);
    // heartbeat took the new period in place.
    let stats = json(&rpc(&mut c, "heartbeat.stats", json!({})).unwrap());
    assert_eq!(stats["period_ms"], 50);
    rpc(&mut c, "echo2.x", json!({})).unwrap();
    let out = b.modctl_ok(&["apply", site.to_str().unwrap()]);
    assert!(out.starts_with("nothing to do"), "{out}");
}

#[test]
fn reload_under_continuous_load_fails_no_request_and_tells_subscribers() {
    // A process module (the hand-over takes a whole process exit and start), a native one
    // and a WASM component.
    for (path, kind) in [(bin("echo"), "process"), (module("echo"), "native"), (wasm_module("echo"), "wasm")] {
        reload_under_load(&path, kind);
    }
}

fn reload_under_load(path: &Path, kind: &str) {
    let b = Broker::start();
    b.load(path, Some("e"), &[]);
    let mut w = watcher(&b);
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (stop, mut c) = (stop.clone(), b.client());
        clients.push(std::thread::spawn(move || {
            let (mut sent, mut failed) = (0u32, Vec::new());
            let mut tag = 1u32;
            while !stop.load(Ordering::Relaxed) {
                // A few in flight at a time.
                let tags: Vec<u32> = (0..4).map(|i| tag + i).collect();
                tag += 4;
                for &t in &tags {
                    let mut req = Message::request("e.x", payload(json!({"n": t})));
                    req.matchtag = t;
                    c.send(&req).unwrap();
                }
                for &t in &tags {
                    sent += 1;
                    match c.wait_response(t, Some(WAIT)) {
                        Ok(r) if json(&r) == json!({"n": t}) => {}
                        other => failed.push(format!("{t}: {other:?}")),
                    }
                }
            }
            (sent, failed)
        }));
    }
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..3 {
        let out = b.modctl_ok(&["reload", "e"]);
        assert!(out.starts_with(&format!("reloaded e ({kind}")), "{out}");
        assert_eq!(next_event(&mut w), ("e".into(), "reloaded".into(), String::new()));
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        let (sent, failed) = c.join().unwrap();
        assert!(
            failed.is_empty(),
            "{kind}: {} of {sent} requests failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
        total += sent;
    }
    assert!(total > 100, "{kind}: only {total} requests were sent");
    let r = row(&mut b.client(), "e").unwrap();
    assert_eq!(r["state"], "running");
}

#[test]
fn reload_of_a_broken_file_changes_nothing() {
    let b = Broker::start();
    let copy = b.dir.path().join("libmine.so");
    std::fs::copy(module("echo"), &copy).unwrap();
    b.load(&copy, Some("mine"), &[]);
    let digest = row(&mut b.client(), "mine").unwrap()["digest"].clone();
    std::fs::write(&copy, b"not a module any more").unwrap();
    let out = b.modctl(&["reload", "mine"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("reload mine") && err.contains("libmine.so"), "{err}");
    let mut c = b.client();
    assert_eq!(row(&mut c, "mine").unwrap()["digest"], digest);
    rpc(&mut c, "mine.x", json!({})).unwrap();
}

#[test]
fn removing_a_required_module_is_refused_unless_forced() {
    let b = Broker::start();
    let site = b.dir.path().join("site.toml");
    write(
        &site,
        &format!("{}{}", entry("kvs", &module("kvs"), ""), entry("app", &module("echo"), "requires = [\"kvs\"]")),
    );
    b.modctl_ok(&["apply", site.to_str().unwrap()]);
    let out = b.modctl(&["remove", "kvs"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("EBUSY") && err.contains("module 'kvs' is required by 'app'"), "{err}");
    assert!(row(&mut b.client(), "kvs").is_some());
    b.modctl_ok(&["remove", "kvs", "--force"]);
    assert!(row(&mut b.client(), "kvs").is_none());
    // app, which required it, keeps running; loading it anew by hand needs kvs first.
    assert_eq!(row(&mut b.client(), "app").unwrap()["state"], "running");
}

#[test]
fn a_crashing_module_is_restarted_with_backoff_then_given_up_on() {
    let b = Broker::start_python();
    let mut w = watcher(&b);
    let site = b.dir.path().join("site.toml");
    write(
        &site,
        &entry(
            "crasher",
            &script("crash_later.py"),
            "restart = \"on-failure\"\nmax_restarts = 2\nrestart_delay_ms = 300\nrestart_max_delay_ms = 1000",
        ),
    );
    b.modctl_ok(&["apply", site.to_str().unwrap()]);
    assert_eq!(next_event(&mut w).1, "loaded");
    let mut seen = Vec::new();
    loop {
        let (name, event, reason) = next_event(&mut w);
        assert_eq!(name, "crasher");
        if event == "failed" {
            assert!(reason.contains("status 3"), "{reason}");
        }
        seen.push(event.clone());
        if event == "gave-up" {
            break;
        }
    }
    assert_eq!(seen, ["failed", "restarted", "failed", "restarted", "failed", "gave-up"]);
    // The delay doubles: by the broker's own clock (its log), at least 300 ms between the
    // first failure and the first restart, then at least 600 ms.
    let log = b.log();
    let times = |needle: &str| -> Vec<f64> {
        log.lines().filter(|l| l.contains(needle) && l.contains("crasher")).map(seconds_of_day).collect()
    };
    let (failed, restarting) = (times("module failed"), times("restarting module"));
    assert_eq!((failed.len(), restarting.len()), (3, 2), "{log}");
    assert!(restarting[0] - failed[0] >= 0.3 && restarting[1] - failed[1] >= 0.6, "{failed:?} {restarting:?}");
    let r = row(&mut b.client(), "crasher").unwrap();
    assert_eq!(r["state"], "failed");
    assert_eq!(r["restarts"], 2);
    assert!(r["last_failure"].as_str().unwrap().contains('3'), "{r}");
    let table = b.modctl_ok(&["list"]);
    assert!(table.contains("RESTARTS"), "{table}");
    // Its requesters are not left waiting: the service is gone.
    assert_eq!(errno_of(&rpc(&mut b.client(), "crasher.x", json!({}))), "ENOSYS");
}

#[test]
fn trace_shows_the_messages_of_a_module_loaded_after_it_began() {
    let b = Broker::start();
    let mut trace = Command::new(bin("modctl"))
        .args(["trace", "late", "--count", "2", "--json"])
        .env("SWITCHBOARD_URI", b.socket.display().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the trace runs.
    let mut err = BufReader::new(trace.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "tracing late");
    b.load(&module("echo"), Some("late"), &[]);
    b.load(&module("kvs"), None, &[]);
    let mut c = b.client();
    rpc(&mut c, "kvs.put", json!({"key": "k", "value": 1})).unwrap();
    rpc(&mut c, "late.hello", json!({"a": 1})).unwrap();
    let out = switchboard_tests::output_within(trace, WAIT);
    assert!(out.status.success());
    let records: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(
        (&records[0]["module"], &records[0]["dir"], &records[0]["type"], &records[0]["topic"]),
        (&json!("late"), &json!("in"), &json!("request"), &json!("late.hello"))
    );
    assert_eq!(records[0]["payload"], json!({"a": 1}));
    assert_eq!((&records[1]["dir"], &records[1]["type"]), (&json!("out"), &json!("response")));
    // The topic and type filters: only requests whose topic matches.
    let mut filtered = Command::new(bin("modctl"))
        .args(["trace", "--topic", "kvs.g*", "--type", "request", "--count", "1", "--json"])
        .env("SWITCHBOARD_URI", b.socket.display().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(filtered.stderr.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "tracing every module");
    rpc(&mut c, "kvs.put", json!({"key": "k", "value": 2})).unwrap();
    rpc(&mut c, "late.get", json!({})).unwrap();
    rpc(&mut c, "kvs.get", json!({"key": "k"})).unwrap();
    let out = switchboard_tests::output_within(filtered, WAIT);
    let only: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!((&only["module"], &only["type"], &only["topic"]), (&json!("kvs"), &json!("request"), &json!("kvs.get")));
    // An unknown type is refused.
    let mut c2 = b.client();
    let mut req = Message::request("module.trace", payload(json!({"names": [], "types": ["telepathy"]})));
    req.flags = req.flags.with(switchboard_protocol::Flags::STREAMING);
    req.matchtag = 9;
    c2.send(&req).unwrap();
    let r = c2.wait_response(9, Some(WAIT));
    assert!(errtext(&r).contains("unknown message type 'telepathy'"), "{r:?}");
}

#[test]
fn stats_count_messages_errors_and_process_resources() {
    let b = Broker::start();
    b.load(&bin("echo"), Some("pecho"), &[]);
    b.load(&module("kvs"), None, &[]);
    let mut c = b.client();
    for _ in 0..3 {
        rpc(&mut c, "pecho.x", json!({})).unwrap();
    }
    assert_eq!(errno_of(&rpc(&mut c, "kvs.get", json!({"key": "absent"}))), "ENOENT");
    let s: serde_json::Value = serde_json::from_str(&b.modctl_ok(&["stats", "pecho", "--json"])).unwrap();
    assert_eq!(s["msgs_in"], 3);
    assert_eq!(s["msgs_out"], 3);
    assert_eq!(s["errors"], 0);
    assert!(s["rss_bytes"].as_u64().unwrap() > 0 && s["cpu_ms"].is_u64() && s["pid"].is_u64(), "{s}");
    let k: serde_json::Value = serde_json::from_str(&b.modctl_ok(&["stats", "kvs", "--json"])).unwrap();
    assert_eq!(k["errors"], 1);
    assert!(k["last_error"].as_str().unwrap().contains("ENOENT"), "{k}");
    let text = b.modctl_ok(&["stats", "kvs"]);
    assert!(text.contains("errors:") && text.contains("last error:"), "{text}");
    assert!(k["last_error"].as_str().unwrap().starts_with("kvs.get: ENOENT: "), "{k}");
    // A WASM module reports its linear memory.
    b.load(&wasm_module("echo"), Some("wecho"), &[]);
    rpc(&mut c, "wecho.x", json!({})).unwrap();
    let w: serde_json::Value = serde_json::from_str(&b.modctl_ok(&["stats", "wecho", "--json"])).unwrap();
    let mem = w["memory_bytes"].as_u64().unwrap_or(0);
    assert!((64 * 1024..=64 << 20).contains(&mem), "{w}");
}

#[test]
fn config_reload_and_sighup_apply_the_site_file() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site.toml");
    write(&site, &entry("echo", &module("echo"), ""));
    let b = Broker::start_site(&site);
    write(&site, &format!("{}{}", entry("echo", &module("echo"), ""), entry("kvs", &module("kvs"), "")));
    let out = b.modctl_ok(&["config", "reload"]);
    assert!(out.contains("load      kvs"), "{out}");
    assert!(row(&mut b.client(), "kvs").is_some());
    // A setting only a restart applies is reported, not applied.
    write(
        &site,
        &format!(
            "[broker]\ngrace_ms = 100\n{}{}",
            entry("echo", &module("echo"), ""),
            entry("kvs", &module("kvs"), "")
        ),
    );
    let out = b.modctl_ok(&["config", "reload", "--dry-run"]);
    assert!(out.contains("note: grace_ms changed; only a broker restart applies that"), "{out}");
    write(&site, &entry("kvs", &module("kvs"), ""));
    switchboard_tests::signal(b.pid(), switchboard_tests::Signal::HUP);
    assert!(wait_until(|| row(&mut b.client(), "echo").is_none()), "SIGHUP did not apply the file");
    assert!(b.wait_log("site file applied"));
}

#[test]
fn a_python_module_takes_a_config_update_in_place_or_refuses_it() {
    let b = Broker::start_python();
    let site = b.dir.path().join("site.toml");
    let with = |config: &str| entry("conf", &script("configurable.py"), &format!("config = {config}"));
    write(&site, &with("{ level = 1 }"));
    b.modctl_ok(&["apply", site.to_str().unwrap()]);
    let mut c = b.client();
    let pid = row(&mut c, "conf").unwrap()["pid"].clone();
    write(&site, &with("{ level = 2 }"));
    let out = b.modctl_ok(&["apply", site.to_str().unwrap()]);
    assert!(out.contains("configure conf") && out.contains("config-update accepted"), "{out}");
    assert_eq!(json(&rpc(&mut c, "conf.get", json!({})).unwrap()), json!({"level": 2}));
    assert_eq!(row(&mut c, "conf").unwrap()["pid"], pid, "the same process took it");
    // A refused update is reported and the old table stays.
    write(&site, &with("{ level = 3, refuse = true }"));
    let out = b.modctl(&["apply", site.to_str().unwrap()]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("EINVAL: refusing this config"), "{text}");
    assert_eq!(json(&rpc(&mut c, "conf.get", json!({})).unwrap()), json!({"level": 2}));
}
