//! The site file's checks, one error each: what the operator reads must name the line and key.

use std::path::Path;

use super::*;

fn parse(text: &str) -> Result<Site, String> {
    Site::parse(Path::new("/srv/sb/site.toml"), text).map_err(|e| e.to_string())
}

#[test]
fn a_full_file_parses() {
    let site = parse(
        r#"
[broker]
listen = "run/b.sock"
search_path = ["mods"]
log = "debug"
[broker.rc]
start = "rc/start.sh"
on_start_failure = "continue"

[[module]]
path = "/m/libkvs.so"
restart = "on-failure"
max_restarts = 3
restart_delay_ms = 50

[[module]]
name = "app"
path = "/m/app.py"
requires = ["kvs"]
env = { MODE = "fast" }
grace_ms = 200
config = { a = 1 }

[[module]]
name = "off"
path = "/m/x.wasm"
enabled = false
memory_mb = 8
dirs = ["data:/data:rw"]
"#,
    )
    .unwrap();
    assert_eq!(site.listen.as_deref(), Some(Path::new("/srv/sb/run/b.sock")));
    assert_eq!(site.rc_start.as_deref(), Some(Path::new("/srv/sb/rc/start.sh")));
    assert_eq!(site.on_start_failure, OnStartFailure::Continue);
    assert_eq!(site.log.as_deref(), Some("debug"));
    let names: Vec<_> = site.modules.iter().map(|m| m.spec.request.name.clone().unwrap()).collect();
    assert_eq!(names, ["kvs", "app", "off"]);
    assert_eq!(site.modules[0].line, 10);
    assert!(matches!(site.modules[0].spec.restart, RestartPolicy::OnFailure { max: 3, .. }));
    assert_eq!(site.modules[1].spec.request.env, vec![("MODE".to_string(), "fast".to_string())]);
    assert_eq!(&site.modules[1].spec.request.config[..], &[0x81, 0xa1, b'a', 0x01]);
    let off = &site.modules[2];
    assert!(!off.enabled);
    assert_eq!(off.spec.request.sandbox.memory, Some(8 << 20));
    assert_eq!(off.spec.request.sandbox.dirs[0].guest, "/data");
    assert!(off.spec.request.sandbox.dirs[0].writable);
    assert_eq!(site.wanted().len(), 2);
}

#[test]
fn an_unknown_key_names_its_line() {
    let err =
        parse("[[module]]\npath = \"/m/a.so\"\n\n[[module]]\npath = \"/m/b.so\"\ncolour = \"red\"\n").unwrap_err();
    assert!(err.starts_with("/srv/sb/site.toml:6:1: unknown field `colour`"), "{err}");
}

#[test]
fn a_wrong_type_names_its_line() {
    let err = parse("[[module]]\npath = \"/m/a.so\"\nargs = \"-v\"\n").unwrap_err();
    assert!(err.starts_with("/srv/sb/site.toml:3:"), "{err}");
    let err = parse("[[module]]\npath = \"/m/a.so\"\nrestart = \"always\"\n").unwrap_err();
    assert!(err.contains(":3:") && err.contains("on-failure"), "{err}");
}

#[test]
fn a_missing_requirement_is_named() {
    let err = parse("[[module]]\nname = \"app\"\npath = \"/m/a.so\"\nrequires = [\"kvs\"]\n").unwrap_err();
    assert!(err.contains(":4:") && err.contains("'app' requires 'kvs', which is not in this file"), "{err}");
    let err = parse(
        "[[module]]\nname = \"app\"\npath = \"/m/a.so\"\nrequires = [\"kvs\"]\n[[module]]\nname = \"kvs\"\npath = \"/m/k.so\"\nenabled = false\n",
    )
    .unwrap_err();
    assert!(err.contains("which is disabled (line 5)"), "{err}");
}

#[test]
fn a_cycle_is_named_with_its_lines() {
    let err = parse(
        "[[module]]\nname = \"a\"\npath = \"/m/a.so\"\nrequires = [\"b\"]\n[[module]]\nname = \"b\"\npath = \"/m/b.so\"\nafter = [\"a\"]\n",
    )
    .unwrap_err();
    assert!(err.contains("dependency cycle: a -> b -> a"), "{err}");
    assert!(err.contains("'a' on line 1") && err.contains("'b' on line 5"), "{err}");
}

#[test]
fn duplicate_names_and_bad_names_are_refused() {
    let err = parse("[[module]]\npath = \"/m/libk.so\"\n[[module]]\npath = \"/n/k.wasm\"\n").unwrap_err();
    assert!(err.contains(":4:") && err.contains("'k' is already on line 1"), "{err}");
    let err = parse("[[module]]\nname = \"a.b\"\npath = \"/m/a.so\"\n").unwrap_err();
    assert!(err.contains(":2:") && err.contains("key `name`"), "{err}");
}

#[test]
fn a_bare_name_not_on_the_search_path_is_refused() {
    let err = parse("[broker]\nsearch_path = [\"/nonexistent-sb\"]\n[[module]]\npath = \"kvs\"\n").unwrap_err();
    assert!(err.contains(":4:") && err.contains("no module 'kvs' on the search path (/nonexistent-sb)"), "{err}");
}
