//! `switchboard-native-host`: runs one native module library (`.so`) for a broker, in a
//! process of its own, so that a crash in the library fails only that module (`modctl load
//! --isolated`, a site file's `isolated = true`; RFC 5 §9). The broker starts it as a
//! process module with the library's path as its one argument; everything it does is
//! `switchboard_loaders::native::isolated::serve`, the in-broker native loader's own code.
//! It must not grow logic of its own: not started by a broker, it says what it is and exits.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(library), None) = (args.next(), args.next()) else {
        eprintln!(
            "usage: switchboard-native-host LIBRARY.so\n\
             It runs a native module for a Switchboard broker, which starts it (modctl load --isolated)."
        );
        return ExitCode::from(2);
    };
    match switchboard_loaders::native::isolated::serve(&PathBuf::from(library)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: switchboard-native-host: {e}");
            ExitCode::from(2)
        }
    }
}
