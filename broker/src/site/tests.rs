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
    assert_eq!(site.wanted(0).expect("wanted").len(), 2);
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

/// A site file in a temporary folder with a certificate of `mode` beside it; the text's
/// `CERT` is replaced by the certificate's name.
fn overlay_site(text: &str, mode: u32) -> (tempfile::TempDir, Result<Site, String>) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = dir.path().join("instance.cert");
    crate::overlay::Certificate::generate().and_then(|c| c.write(&cert, "node0")).expect("write the certificate");
    std::fs::set_permissions(&cert, std::fs::Permissions::from_mode(mode)).expect("chmod");
    let path = dir.path().join("site.toml");
    let result = Site::parse(&path, &text.replace("CERT", "instance.cert")).map_err(|e| e.to_string());
    (dir, result)
}

const SIX_HOSTS: &str = r#"
[overlay]
curve_cert = "CERT"
default_port = 9000
hosts = [
  { host = "node0" },
  { host = "node1", bind = "tcp://10.0.0.1:%p" },
  { host = "node2.example.org" },
  { host = "node3", connect = "tcp://10.0.0.3:9001" },
  { host = "node4" },
  { host = "node5" },
]

[[module]]
path = "/m/libkvs.so"
ranks = "0"

[[module]]
path = "/m/libecho.so"
ranks = "1-3,5"
"#;

#[test]
fn an_overlay_table_fills_in_its_defaults_and_finds_this_broker() {
    let (_dir, site) = overlay_site(SIX_HOSTS, 0o600);
    let site = site.expect("a good overlay table");
    let o = site.overlay.as_ref().expect("the overlay");
    assert_eq!((o.size(), o.fanout), (6, 2));
    // Ranks 0-2 have children (binary tree of 6): they bind; 3-5 do not.
    assert_eq!(o.hosts[0].bind.as_deref(), Some("tcp://*:9000"));
    assert_eq!(o.hosts[1].bind.as_deref(), Some("tcp://10.0.0.1:9000"));
    assert_eq!(o.hosts[3].bind, None);
    assert_eq!(o.hosts[2].connect, "tcp://node2.example.org:9000");
    assert_eq!(o.hosts[3].connect, "tcp://10.0.0.3:9001");
    assert_eq!(o.rank_of("node2", None), Ok(2));
    assert_eq!(o.rank_of("NODE4.cluster", None), Ok(4));
    assert_eq!(o.rank_of("elsewhere", Some(5)), Ok(5));
    assert!(o.rank_of("elsewhere", None).expect_err("not listed").contains("give the broker --rank N"));
    assert!(o
        .rank_of("node0", Some(6))
        .expect_err("beyond")
        .contains("rank 6 is out of range: the instance has 6 brokers"));
    assert_eq!(site.modules[1].ranks.to_string(), "1-3,5");
    // Rank 0 runs kvs only.
    let names: Vec<_> = site.wanted(0).expect("wanted").into_iter().filter_map(|s| s.request.name).collect();
    assert_eq!(names, ["kvs"]);
}

#[test]
fn in_an_instance_a_bare_name_not_on_the_search_path_is_refused_only_where_the_module_runs() {
    let text = SIX_HOSTS.replace("path = \"/m/libkvs.so\"", "path = \"nosuch-kvs\"");
    let text = format!("[broker]\nsearch_path = [\"/nonexistent-sb\"]\n{text}");
    let (_dir, site) = overlay_site(&text, 0o600);
    let site = site.expect("the file is good: the module is looked for only where it runs");
    // Rank 0 runs it: the error names the line of its `path`.
    let err = site.wanted(0).expect_err("not installed here").to_string();
    assert!(err.contains("site.toml:17:8: key `path`: no module 'nosuch-kvs' on the search path"), "{err}");
    // Rank 1 does not, and starts its own.
    let names: Vec<_> = site.wanted(1).expect("wanted").into_iter().filter_map(|s| s.request.name).collect();
    assert_eq!(names, ["echo"]);
}

#[test]
fn overlay_mistakes_name_their_line_and_key() {
    let cases: &[(&str, u32, &str)] = &[
        (&SIX_HOSTS.replace("default_port = 9000", "default_port = 9000\nports = 1"), 0o600, "unknown field `ports`"),
        (
            &SIX_HOSTS.replace("ranks = \"1-3,5\"", "ranks = \"1-3,6\""),
            0o600,
            "key `ranks`: rank 6 is out of range: the instance has 6 brokers",
        ),
        (&SIX_HOSTS.replace("ranks = \"0\"", "ranks = \"3-1\""), 0o600, "key `ranks`: '3-1' runs backwards"),
        (
            &SIX_HOSTS
                .replace("{ host = \"node1\", bind = \"tcp://10.0.0.1:%p\" }", "{ host = \"node1\", bind = \"\" }"),
            0o600,
            "key `hosts`: rank 1 has children but no bind address",
        ),
        (SIX_HOSTS, 0o644, "is readable by others (mode 0644); chmod 600 it"),
        (&SIX_HOSTS.replace("default_port = 9000", "fanout = 0"), 0o600, "key `fanout`: it must be at least 1"),
        (
            &SIX_HOSTS.replace("default_port = 9000", "default_port = 70000"),
            0o600,
            "key `default_port`: 70000 is not a port from 1 to 65535",
        ),
        ("[overlay]\ncurve_cert = \"CERT\"\nhosts = []\n", 0o600, "key `hosts`: no hosts"),
        (
            "[overlay]\ncurve_cert = \"missing.cert\"\nhosts = [{ host = \"a\" }]\n",
            0o600,
            "key `curve_cert`: cannot read",
        ),
        ("[overlay]\ncurve_cert = \"site.toml\"\nhosts = [{ host = \"a\" }]\n", 0o600, "key `curve_cert`: "),
        (
            "[[module]]\npath = \"/m/libkvs.so\"\nranks = \"1\"\n",
            0o600,
            "key `ranks`: rank 1 is out of range: the instance has 1 brokers",
        ),
    ];
    for (text, mode, want) in cases {
        let (_dir, site) = overlay_site(text, *mode);
        let err = site.expect_err(want);
        assert!(err.contains(want), "wanted {want:?}, got {err:?}");
        assert!(err.contains("site.toml:"), "no file and line: {err}");
    }
}
