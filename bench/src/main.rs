//! `sbbench`: see the crate documentation of `switchboard_bench`.

fn main() {
    std::process::exit(switchboard_bench::main());
}
