//! Checks `include/switchboard.h` against the Rust side: its error numbers (RFC 2 §3.7), the
//! `SWITCHBOARD_E*` defines naming exactly the errnos of RFC 1 §4's table (`proto::errno`),
//! with the same values, which are `<errno.h>`'s; and the layout of the module table and its
//! declarations (RFC 2 §3.1), which must be `abi.rs`'s. The system C compiler checks both.

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

/// Whether the system C compiler takes `program` (C11, every warning an error), with
/// `switchboard.h` on the include path.
fn compile(program: &str) -> std::process::ExitStatus {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let mut child = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-fsyntax-only", "-x", "c", "-I"])
        .arg(header().parent().unwrap())
        .arg("-")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run the C compiler {cc}: {e}"));
    child.stdin.take().unwrap().write_all(program.as_bytes()).unwrap();
    child.wait().unwrap()
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
    let mut program = String::from("#include <errno.h>\n#include \"switchboard.h\"\n");
    for (name, _) in defines() {
        program.push_str(&format!("_Static_assert(SWITCHBOARD_{name} == {name}, \"SWITCHBOARD_{name}\");\n"));
    }
    // The host functions' return codes are the same numbers.
    for name in ["EINVAL", "ECONNRESET", "ETIMEDOUT"] {
        program.push_str(&format!("_Static_assert(SB_{name} == SWITCHBOARD_{name}, \"SB_{name}\");\n"));
    }
    let status = compile(&program);
    assert!(status.success(), "switchboard.h's error numbers differ from <errno.h>'s:\n{program}");
}

/// The module table and its declaration arrays (RFC 2 §3.1) have the same layout in C as in
/// `abi.rs`, field by field, and version 1's first table is the 24 bytes older modules give.
#[test]
fn the_header_tables_have_the_rust_layout() {
    use std::mem::{offset_of, size_of};
    use switchboard_protocol::abi::{SbEvent, SbMethod, SbModule, SB_MODULE_SIZE_V1_0};
    let mut program = String::from("#include <stddef.h>\n#include \"switchboard.h\"\n");
    let mut check = |what: String, value: usize| {
        program.push_str(&format!("_Static_assert({what} == {value}, \"{what} is {value} in abi.rs\");\n"));
    };
    check("sizeof(sb_module)".into(), size_of::<SbModule>());
    for (field, offset) in [
        ("abi_version", offset_of!(SbModule, abi_version)),
        ("size", offset_of!(SbModule, size)),
        ("name", offset_of!(SbModule, name)),
        ("main", offset_of!(SbModule, main)),
        ("methods", offset_of!(SbModule, methods)),
        ("nmethods", offset_of!(SbModule, nmethods)),
        ("events", offset_of!(SbModule, events)),
        ("nevents", offset_of!(SbModule, nevents)),
        ("flags", offset_of!(SbModule, flags)),
        ("reserved", offset_of!(SbModule, reserved)),
    ] {
        check(format!("offsetof(sb_module, {field})"), offset);
    }
    check("sizeof(sb_method)".into(), size_of::<SbMethod>());
    for (field, offset) in [
        ("name", offset_of!(SbMethod, name)),
        ("doc", offset_of!(SbMethod, doc)),
        ("flags", offset_of!(SbMethod, flags)),
    ] {
        check(format!("offsetof(sb_method, {field})"), offset);
    }
    check("sizeof(sb_event)".into(), size_of::<SbEvent>());
    check("offsetof(sb_event, doc)".into(), offset_of!(SbEvent, doc));
    // Version 1's first table ends where `main` does.
    check("offsetof(sb_module, methods)".into(), SB_MODULE_SIZE_V1_0 as usize);
    check("SB_METHOD_GUEST".into(), switchboard_protocol::abi::SB_METHOD_GUEST as usize);
    check("SB_MODULE_OTHERWISE".into(), switchboard_protocol::abi::SB_MODULE_OTHERWISE as usize);
    check("SB_ROLE_OWNER".into(), switchboard_protocol::ROLE_OWNER as usize);
    check("SB_ROLE_USER".into(), switchboard_protocol::ROLE_USER as usize);
    let status = compile(&program);
    assert!(status.success(), "switchboard.h's tables differ from abi.rs's:\n{program}");
}
