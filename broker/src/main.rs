//! `switchboard`: the broker daemon. Parses its arguments, starts a `Broker`, and removes
//! every module in reverse order on SIGINT or SIGTERM. Everything else is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use switchboard::{Broker, Config};

#[derive(Parser, Debug)]
#[command(name = "switchboard", version, about = "Switchboard message broker")]
struct Args {
    /// Configuration file (TOML): socket, guests, modules to load at start.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Socket path to listen on (overrides the configuration and the default path).
    #[arg(long)]
    listen: Option<PathBuf>,
    /// Let other local users connect as guests.
    #[arg(long)]
    allow_guests: bool,
    /// Largest frame accepted from a client, in bytes.
    #[arg(long)]
    max_frame: Option<usize>,
    /// Log filter, e.g. `info`, `debug`, `switchboard=trace` (also SWITCHBOARD_LOG).
    #[arg(long, env = "SWITCHBOARD_LOG", default_value = "info")]
    log: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut builder = Broker::builder();
    if let Some(path) = &args.config {
        match Config::load(path) {
            Ok(c) => builder = builder.config(&c),
            Err(e) => {
                eprintln!("switchboard: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(l) = args.listen {
        builder = builder.listen(l);
    }
    if args.allow_guests {
        builder = builder.allow_guests(true);
    }
    if let Some(m) = args.max_frame {
        builder = builder.max_frame(m);
    }
    let mut signals =
        match signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM]) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("switchboard: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
    let broker = match builder.start() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("switchboard: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(uri = %broker.uri(), modules = broker.list().len(), "switchboard ready");
    // Tell whoever started us that we are listening (tests and scripts wait for this line).
    println!("{}", broker.uri());
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "shutting down");
    }
    broker.shutdown();
    ExitCode::SUCCESS
}
