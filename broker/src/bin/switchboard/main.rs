//! `switchboard`: the broker daemon. Parses its arguments, reads the site file, starts a
//! `Broker` on a runtime of its own, runs the rc scripts, re-applies the site file on SIGHUP,
//! and on SIGINT or SIGTERM removes every module in reverse order. Signals are received on
//! the runtime and handed to the main thread, which does the work they ask for. Everything
//! else is in the library. `switchboard completions SHELL` and `switchboard man` print a
//! shell completion script and the man page generated from the argument definitions below.

// Unsafe code here: sets a malloc parameter (`mallopt`) before any thread starts.
#![allow(unsafe_code)]

mod test_size;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use switchboard::overlay::Certificate;
use switchboard::site::{run_script, OnStartFailure, RcError};
use switchboard::{Broker, Site};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc::UnboundedReceiver;

#[derive(Parser, Debug)]
#[command(name = "switchboard", version, about = "Switchboard message broker", args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Site file (TOML, RFC 4): socket, search path, modules and their order, rc scripts.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Socket path to listen on (overrides the site file and the default path).
    #[arg(long)]
    listen: Option<PathBuf>,
    /// Let other local users connect as guests.
    #[arg(long)]
    allow_guests: bool,
    /// Largest frame accepted from a client, in bytes.
    #[arg(long)]
    max_frame: Option<usize>,
    /// Output queued for all clients together and not yet sent, in MiB, before the client
    /// with the most is disconnected (default 256).
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    max_output_mb: Option<u64>,
    /// Log filter, e.g. `info`, `debug`, `switchboard=trace` (also SWITCHBOARD_LOG; default:
    /// the site file's `log`, else `info`).
    #[arg(long, env = "SWITCHBOARD_LOG")]
    log: Option<String>,
    /// This broker's rank in the site file's `[overlay]` (default: the rank of the host entry
    /// naming this machine).
    #[arg(long, value_name = "N")]
    rank: Option<u32>,
    /// Start an instance of N brokers on this machine (loopback TCP, a fresh certificate),
    /// each with the site file's modules for its rank; print rank 0's address once every
    /// rank is up; stop them all on Ctrl-C (RFC 7 §2.3).
    #[arg(long, value_name = "N", conflicts_with_all = ["rank", "listen", "overlay_site"])]
    test_size: Option<u32>,
    /// The fanout of the `--test-size` tree (default 2).
    #[arg(long, value_name = "K", requires = "test_size")]
    fanout: Option<u32>,
    /// Join the instance this file's `[overlay]` table describes (what `--test-size` gives
    /// each rank).
    #[arg(long, value_name = "FILE", hide = true)]
    overlay_site: Option<PathBuf>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Write a new instance certificate (CURVE key pair) to PATH, mode 0600 (RFC 7 §2.1).
    Keygen {
        /// Where to write it; an existing file is not replaced.
        path: PathBuf,
    },
    /// Print a completion script for SHELL on standard output, e.g. `switchboard completions
    /// bash > /usr/share/bash-completion/completions/switchboard`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the switchboard(1) man page (roff) on standard output, or with --dir write it
    /// and a page per subcommand (switchboard-keygen.1, ...) into DIR.
    Man {
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// `switchboard completions SHELL` and `switchboard man [--dir DIR]`: generated from `Args`,
/// so they cannot drift from the command line. Commands of the binary rather than a build
/// step because packagers run the built binary to get them (as `modctl completions` and
/// `modctl man`).
fn generate(command: &Command) -> ExitCode {
    use std::io::Write;
    let mut out = Vec::new();
    let written = match command {
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Args::command(), "switchboard", &mut out);
            Ok(())
        }
        Command::Man { dir: None } => clap_mangen::Man::new(Args::command()).render(&mut out),
        Command::Man { dir: Some(dir) } if !dir.is_dir() => {
            eprintln!("switchboard man: --dir {}: not a directory (create it first)", dir.display());
            return ExitCode::FAILURE;
        }
        Command::Man { dir: Some(dir) } => clap_mangen::generate_to(Args::command(), dir).map(|()| {
            let cmd = Args::command();
            let subcommands = cmd.get_subcommands().filter(|c| !c.is_hide_set());
            let pages = std::iter::once("switchboard.1".to_string())
                .chain(subcommands.map(|c| format!("switchboard-{}.1", c.get_name())));
            for page in pages {
                out.extend_from_slice(format!("{}\n", dir.join(page).display()).as_bytes());
            }
        }),
        Command::Keygen { .. } => Ok(()),
    };
    let printed = written.and_then(|()| {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&out).and_then(|()| stdout.flush())
    });
    match printed {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("switchboard: {e}");
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    }
}

/// `switchboard keygen PATH`.
fn keygen(path: &std::path::Path) -> ExitCode {
    let written = Certificate::generate().and_then(|c| c.write(path, &switchboard::overlay::hostname()));
    match written {
        Ok(()) => {
            println!("{}: written; copy it to every broker of the instance, mode 0600", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchboard keygen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// glibc malloc arenas for the whole process (broker, native modules, wasmtime), unless the
/// user chose with `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES`. glibc's own limit is 8 per CPU, and
/// every short-lived module thread may leave its arena behind, partly resident: module churn
/// grew the broker by 3.6 MiB on 2 CPUs before levelling; with 2 it stays flat, and the message
/// path is no slower (docs/benchmarks.md, "Module churn").
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn bound_malloc_arenas() {
    const MALLOC_ARENAS: i32 = 2;
    let tuned = std::env::var_os("GLIBC_TUNABLES").is_some_and(|t| t.to_string_lossy().contains("arena_max"));
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() && !tuned {
        // SAFETY: mallopt only sets a malloc parameter; this runs first in main, before any
        // thread of ours exists.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) };
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn bound_malloc_arenas() {}

/// The signals the broker acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    /// SIGINT or SIGTERM: stop.
    Stop(&'static str),
    /// SIGHUP: apply the site file again.
    Hangup,
}

/// Receive SIGINT, SIGTERM and SIGHUP on the runtime from now on, for the main thread.
fn watch_signals(runtime: &tokio::runtime::Runtime) -> std::io::Result<UnboundedReceiver<Signal>> {
    let _entered = runtime.enter();
    let (mut int, mut term, mut hup) =
        (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?, signal(SignalKind::hangup())?);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    runtime.spawn(async move {
        loop {
            let sig = tokio::select! {
                _ = int.recv() => Signal::Stop("SIGINT"),
                _ = term.recv() => Signal::Stop("SIGTERM"),
                _ = hup.recv() => Signal::Hangup,
            };
            if tx.send(sig).is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

fn main() -> ExitCode {
    bound_malloc_arenas();
    let args = Args::parse();
    // clap does not check `requires` here (args_conflicts_with_subcommands): say it ourselves.
    if args.fanout.is_some() && args.test_size.is_none() {
        Args::command()
            .error(clap::error::ErrorKind::MissingRequiredArgument, "--fanout K is the fanout of a --test-size N tree")
            .exit();
    }
    match &args.command {
        Some(Command::Keygen { path }) => return keygen(path),
        Some(command) => return generate(command),
        None => {}
    }
    let site = match args.config.as_deref().map(Site::load).transpose() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchboard: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(size) = args.test_size {
        // The instance's [overlay] table is --test-size's own (RFC 7 §2.3).
        if let Some(Site { overlay: Some(_), path, .. }) = &site {
            eprintln!(
                "switchboard: {}: --test-size makes the instance's [overlay] table itself: give it a site file \
                 without one",
                path.display()
            );
            return ExitCode::FAILURE;
        }
        let fanout = args.fanout.unwrap_or(2);
        return test_size::run(test_size::TestSize { size, fanout, config: args.config, log: args.log });
    }
    let filter = args.log.clone().or_else(|| site.as_ref().and_then(|s| s.log.clone())).unwrap_or("info".into());
    let env_filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("switchboard: log filter '{filter}' is not valid ({e}); logging at info");
        "info".into()
    });
    tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    switchboard::runtime::raise_fd_limit();
    let mut builder = Broker::builder();
    if let Some(site) = &site {
        builder = builder.site(site);
    }
    if let Some(file) = &args.overlay_site {
        match Site::load(file) {
            Ok(Site { overlay: Some(table), .. }) => builder = builder.overlay(file, table),
            Ok(_) => {
                eprintln!("switchboard: {}: no [overlay] table", file.display());
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("switchboard: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(rank) = args.rank {
        builder = builder.rank(rank);
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
    if let Some(mb) = args.max_output_mb {
        builder = builder.max_output(usize::try_from(mb).unwrap_or(usize::MAX).saturating_mul(1 << 20));
    }
    let runtime = match switchboard::runtime::build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchboard: cannot start the I/O runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut signals = match watch_signals(&runtime) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchboard: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    builder = builder.runtime(runtime.handle().clone());
    let broker = match builder.start() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("switchboard: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(uri = %broker.uri(), modules = broker.list().len(), "switchboard ready");
    if let Some(script) = site.as_ref().and_then(|s| s.rc_start.as_deref()) {
        // SIGINT or SIGTERM while it runs stops it and the broker.
        let told_to_stop = async { while let Some(Signal::Hangup) = signals.recv().await {} };
        if let Err(e) = runtime.block_on(run_script(script, &broker.uri(), told_to_stop)) {
            if matches!(e, RcError::Interrupted { .. }) {
                tracing::info!("{e}");
                broker.shutdown();
                return ExitCode::SUCCESS;
            }
            if site.as_ref().is_some_and(|s| s.on_start_failure == OnStartFailure::Continue) {
                tracing::error!("{e} (on_start_failure = \"continue\": the broker keeps running)");
            } else {
                eprintln!(
                    "switchboard: {e}; stopping (set on_start_failure = \"continue\" in [broker.rc] to keep running)"
                );
                broker.shutdown();
                return ExitCode::FAILURE;
            }
        }
    }
    // Tell whoever started us that we are up (tests and scripts wait for this line).
    println!("{}", broker.uri());
    while let Some(sig) = signals.blocking_recv() {
        if let Signal::Stop(name) = sig {
            tracing::info!(signal = name, "shutting down");
            break;
        }
        match broker.apply(None, false) {
            Ok(report) => {
                let changed = report.steps.len();
                let failed = report.steps.iter().filter(|s| !s.ok).count();
                tracing::info!(path = %report.path, changed, failed, unchanged = report.unchanged.len(), "SIGHUP: site file applied");
                for s in report.steps.iter().filter(|s| !s.ok) {
                    tracing::error!(module = %s.name, action = %s.action, "{}", s.outcome.as_deref().unwrap_or(""));
                }
            }
            Err(e) => tracing::error!("SIGHUP: the site file was not applied: {}", e.text),
        }
    }
    if let Some(script) = site.as_ref().and_then(|s| s.rc_stop.as_deref()) {
        if let Err(e) = runtime.block_on(run_script(script, &broker.uri(), std::future::pending())) {
            tracing::error!("{e}");
        }
    }
    broker.shutdown();
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    ExitCode::SUCCESS
}
