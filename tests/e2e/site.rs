//! Site files through the real `switchboard` binary (RFC 4): dependency order at start and
//! its reverse at stop, refusals that name the cycle, the missing module or the line and
//! key, the search path, and rc scripts with the broker's address.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::json;
use switchboard_tests::{bin, list, module, output_within, python_path, rpc, script, wait_until, Broker, WAIT};

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Run the broker on `file` and expect it to refuse to start; returns its stderr.
fn refused(file: &Path) -> String {
    let socket = file.with_extension("sock");
    let child = Command::new(bin("switchboard"))
        .args(["--config", file.to_str().unwrap(), "--listen", socket.to_str().unwrap()])
        .env("PATH", python_path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A broker that starts after all runs until killed: fail, do not hang.
    let out = output_within(child, WAIT);
    assert!(out.status.code().is_some_and(|c| c != 0), "the broker started on {}", file.display());
    assert!(!socket.exists(), "a refused start leaves no socket behind");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn modules_start_in_dependency_order_and_stop_in_reverse() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("order.log");
    let order = script("order.py");
    // File order is not start order: app requires db, web comes after app.
    let site = write(
        dir.path(),
        "site.toml",
        &format!(
            r#"
[[module]]
name = "web"
path = "{order}"
after = ["app"]
config = {{ log = "{log}" }}

[[module]]
name = "app"
path = "{order}"
requires = ["db"]
config = {{ log = "{log}" }}

[[module]]
name = "db"
path = "{order}"
config = {{ log = "{log}" }}
"#,
            order = order.display(),
            log = log.display()
        ),
    );
    let mut b = Broker::start_site(&site);
    let lines = || std::fs::read_to_string(&log).unwrap_or_default().lines().map(String::from).collect::<Vec<_>>();
    assert_eq!(lines(), ["start db", "start app", "start web"]);
    let names: Vec<String> = list(&mut b.client()).iter().map(|m| m["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["db", "app", "web"], "listed in start order");
    assert!(b.terminate().success());
    assert_eq!(lines()[3..], ["stop web", "stop app", "stop db"]);
}

#[test]
fn a_dependency_cycle_is_refused_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let echo = module("echo");
    let site = write(
        dir.path(),
        "cycle.toml",
        &format!(
            "[[module]]\nname = \"a\"\npath = \"{e}\"\nrequires = [\"b\"]\n\n[[module]]\nname = \"b\"\npath = \"{e}\"\nafter = [\"c\"]\n\n[[module]]\nname = \"c\"\npath = \"{e}\"\nrequires = [\"a\"]\n",
            e = echo.display()
        ),
    );
    let err = refused(&site);
    assert!(err.contains("dependency cycle: a -> b -> c -> a"), "{err}");
    assert!(err.contains("'a' on line 1") && err.contains("'c' on line 11"), "{err}");
}

#[test]
fn a_missing_dependency_is_refused_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let site = write(
        dir.path(),
        "missing.toml",
        &format!("[[module]]\nname = \"app\"\npath = \"{}\"\nrequires = [\"kvs\"]\n", module("echo").display()),
    );
    let err = refused(&site);
    assert!(err.contains("missing.toml:4:13:"), "{err}");
    assert!(err.contains("'app' requires 'kvs', which is not in this file"), "{err}");
}

#[test]
fn a_config_error_names_the_line_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let echo = module("echo").display().to_string();
    for (text, want) in [
        (
            format!(
                "[[module]]\npath = \"{echo}\"\n\n[[module]]\npath = \"{echo}\"\nname = \"e2\"\nrestart = \"always\"\n"
            ),
            ":7:11: unknown variant `always`, expected `never` or `on-failure`",
        ),
        (
            format!("[broker]\nsearch_paths = [\"x\"]\n[[module]]\npath = \"{echo}\"\n"),
            ":2:1: unknown field `search_paths`",
        ),
        (format!("[[module]]\npath = \"{echo}\"\nmax_restarts = -1\n"), ":3:16:"),
        (format!("[[module]]\npath = \"{echo}\"\nname = \"has.dot\"\n"), ":3:8: key `name`: invalid name 'has.dot'"),
    ] {
        let site = write(dir.path(), "bad.toml", &text);
        let err = refused(&site);
        assert!(err.contains("bad.toml") && err.contains(want), "{want} not in {err}");
    }
}

#[test]
fn a_kind_specific_option_on_the_wrong_kind_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let site = write(
        dir.path(),
        "kind.toml",
        &format!("[[module]]\npath = \"{}\"\nmemory_mb = 8\n", module("echo").display()),
    );
    let err = refused(&site);
    assert!(err.contains("is a native module: memory_mb does not apply to it"), "{err}");
}

#[test]
fn bare_names_are_found_on_the_search_path() {
    let dir = tempfile::tempdir().unwrap();
    let target = module("echo").parent().unwrap().to_path_buf();
    let site = write(
        dir.path(),
        "site.toml",
        &format!("[broker]\nsearch_path = [\"{}\"]\n\n[[module]]\npath = \"kvs\"\n", target.display()),
    );
    let b = Broker::start_site(&site);
    let mut c = b.client();
    rpc(&mut c, "kvs.put", json!({"key": "k", "value": 1})).unwrap();
    // modctl load NAME uses the same search path.
    let out = b.modctl_ok(&["load", "echo"]);
    assert!(out.contains("loaded echo (native"), "{out}");
    rpc(&mut c, "echo.x", json!({})).unwrap();
    let err = String::from_utf8_lossy(&b.modctl(&["load", "nosuchmod"]).stderr).into_owned();
    assert!(err.contains("ENOENT") && err.contains("no module 'nosuchmod' on the search path"), "{err}");
}

#[test]
fn rc_scripts_run_with_the_broker_address_and_a_failing_start_stops_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rc.out");
    write(dir.path(), "start.sh", &format!("modctl list > {}\necho started >> {}\n", out.display(), out.display()));
    write(dir.path(), "stop.sh", &format!("echo \"stopping $SWITCHBOARD_URI\" >> {}\n", out.display()));
    let site = write(
        dir.path(),
        "site.toml",
        &format!(
            "[broker.rc]\nstart = \"start.sh\"\nstop = \"stop.sh\"\n\n[[module]]\npath = \"{}\"\n",
            module("echo").display()
        ),
    );
    let mut b = Broker::start_site(&site);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("echo") && text.contains("running") && text.contains("started"), "{text}");
    assert!(b.terminate().success());
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains(&format!("stopping local://{}", b.socket.display())), "{text}");

    // A start script that fails stops the broker with a failing status...
    write(dir.path(), "start.sh", "exit 7\n");
    let err = refused(&site);
    assert!(err.contains("start.sh failed (exit status: 7)") && err.contains("stopping"), "{err}");
    // ...unless the site says to go on.
    let lenient = write(
        dir.path(),
        "lenient.toml",
        &format!(
            "[broker.rc]\nstart = \"start.sh\"\non_start_failure = \"continue\"\n\n[[module]]\npath = \"{}\"\n",
            module("echo").display()
        ),
    );
    let b = Broker::start_site(&lenient);
    assert!(wait_until(|| b.log().contains("start.sh failed")));
    rpc(&mut b.client(), "echo.x", json!({})).unwrap();
}

#[test]
fn a_stop_while_the_start_script_runs_ends_the_script_and_what_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("sleeper.pid");
    write(dir.path(), "start.sh", &format!("sleep 600 >/dev/null 2>&1 &\necho $! > {}\nwait\n", pidfile.display()));
    let site = write(
        dir.path(),
        "site.toml",
        &format!("[broker]\nlisten = \"{}\"\n\n[broker.rc]\nstart = \"start.sh\"\n", dir.path().join("sock").display()),
    );
    let broker = Command::new(bin("switchboard"))
        .arg("--config")
        .arg(&site)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the broker");
    let sleeper = || std::fs::read_to_string(&pidfile).ok().and_then(|p| p.trim().parse::<i32>().ok());
    assert!(wait_until(|| sleeper().is_some()), "the start script did not start its child");
    let pid = sleeper().unwrap_or_default();
    switchboard_tests::signal(broker.id(), switchboard_tests::Signal::TERM);
    let out = output_within(broker, WAIT);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {log}", out.status);
    assert!(log.contains("start.sh was interrupted"), "{log}");
    // Gone, or a zombie waiting for whoever inherited it: not running either way.
    let running = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
    };
    assert!(wait_until(|| !running()), "the script's child {pid} outlived the stop");
}
