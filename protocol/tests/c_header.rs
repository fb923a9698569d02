//! Checks `include/switchboard.h`'s error numbers (RFC 2 §3.7): the `SWITCHBOARD_E*` defines
//! name exactly the errnos of RFC 1 §4's table (`proto::errno`), with the same values, and
//! those values are `<errno.h>`'s (checked by the system C compiler).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use switchboard_protocol::Errno;

fn header() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("include/switchboard.h")
}

/// `(name without the prefix, value)` of every `#define SWITCHBOARD_E<NAME> <value>`.
fn defines() -> Vec<(String, u32)> {
    let text = std::fs::read_to_string(header()).expect("read switchboard.h");
    text.lines()
        .filter_map(|l| l.strip_prefix("#define SWITCHBOARD_E"))
        .map(|rest| {
            let mut words = rest.split_whitespace();
            let name = format!("E{}", words.next().expect("a name"));
            let value = words.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{name}: not a number"));
            (name, value)
        })
        .collect()
}

#[test]
fn the_header_names_every_errno_of_the_table_with_its_value() {
    let defined = defines();
    assert!(defined.len() >= 18, "{defined:?}");
    for (name, value) in &defined {
        assert_eq!(&Errno(*value).name(), name, "SWITCHBOARD_{name} = {value} is not RFC 1 §4's");
    }
    // Every number the table names is defined.
    for n in 0..4096 {
        let name = Errno(n).name();
        if name != format!("E{n}") {
            assert!(defined.contains(&(name.clone(), n)), "switchboard.h lacks SWITCHBOARD_{name} ({n})");
        }
    }
}

#[test]
fn the_header_values_are_linux_errno_values() {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let mut program = String::from("#include <errno.h>\n#include \"switchboard.h\"\n");
    for (name, _) in defines() {
        program.push_str(&format!("_Static_assert(SWITCHBOARD_{name} == {name}, \"SWITCHBOARD_{name}\");\n"));
    }
    // The host functions' return codes are the same numbers.
    for name in ["EINVAL", "ECONNRESET", "ETIMEDOUT"] {
        program.push_str(&format!("_Static_assert(SB_{name} == SWITCHBOARD_{name}, \"SB_{name}\");\n"));
    }
    let mut child = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-fsyntax-only", "-x", "c", "-I"])
        .arg(header().parent().unwrap())
        .arg("-")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run the C compiler {cc}: {e}"));
    child.stdin.take().unwrap().write_all(program.as_bytes()).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "switchboard.h's error numbers differ from <errno.h>'s:\n{program}");
}
