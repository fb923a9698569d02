//! `echo` as a process module: the same actor as `libecho.so`, run as a child process.

fn main() -> std::process::ExitCode {
    echo::switchboard_process_main()
}
