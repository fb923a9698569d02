//! `cargo bench -p switchboard-bench`: the same run as `./target/release/sbbench`
//! (`cargo bench -p switchboard-bench -- --quick` for a short one).

fn main() {
    std::process::exit(switchboard_bench::main());
}
