//! `modctl`: a thin client over the broker's management protocol (RFC 3), on one broker or,
//! with `--rank`, on several ranks of an instance at once (RFC 7 §7). Arguments are parsed in
//! `args`, each command lives in `commands`, and every failure ends here as one line on
//! stderr and a non-zero exit status (with `--rank`, after a line per failed rank). The
//! commands that need no broker (`completions`, `man`: `generate`) run without connecting.

mod args;
mod commands;
mod generate;
mod json;
mod prometheus;
mod table;

use std::process::ExitCode;

use clap::Parser;
use switchboard_client::{Client, ClientError};
use switchboard_protocol::uri;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {source}")]
    Broker { what: String, source: ClientError },
    /// Some of the ranks of `--rank` failed (each was reported as it was seen).
    #[error("{what}: failed on {} {failed} ({count} of {asked})", if *.count == 1 { "rank" } else { "ranks" })]
    Ranks { what: String, failed: switchboard_protocol::ranks::RankSet, count: usize, asked: usize },
    /// `rpc --timeout MS` passed with no response.
    #[error("{what}: no response within {ms} ms (--timeout {ms})")]
    Timeout { what: String, ms: u64 },
    /// Standard output (or a file modctl writes) refused what modctl wrote.
    #[error("cannot write {what}: {source}")]
    Output { what: String, source: std::io::Error },
}

/// Attach what modctl was doing to a client error.
pub trait Context<T> {
    fn doing(self, what: impl Into<String>) -> Result<T, CliError>;
}

impl<T> Context<T> for Result<T, ClientError> {
    fn doing(self, what: impl Into<String>) -> Result<T, CliError> {
        self.map_err(|source| CliError::Broker { what: what.into(), source })
    }
}

/// `bytes` on standard output. A reader that went away (`| head`) is not an error: modctl
/// stops writing.
pub fn print_out(bytes: &[u8]) -> Result<(), CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CliError::Output { what: "standard output".into(), source: e })
        }
        _ => Ok(()),
    }
}

fn connect(cli_uri: Option<&str>) -> Result<Client, CliError> {
    let path = cli_uri.map_or_else(uri::resolve, uri::parse);
    Client::connect(&path).doing("connect")
}

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let result = if cli.command.needs_broker() {
        connect(cli.uri.as_deref()).and_then(|mut client| commands::run(&mut client, cli.command, cli.rank.as_ref()))
    } else {
        commands::local(cli.command, cli.rank.as_ref())
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("modctl: {e}");
            ExitCode::FAILURE
        }
    }
}
