//! `modctl`: a thin client over the broker's management protocol (RFC 3), on one broker or,
//! with `--rank`, on several ranks of an instance at once (RFC 7 §7). Arguments are parsed in
//! `args`, each command lives in `commands`, and every failure ends here as one line on
//! stderr and a non-zero exit status (with `--rank`, after a line per failed rank).

mod args;
mod commands;
mod json;
mod table;

use std::process::ExitCode;

use clap::Parser;
use switchboard_module_api::{uri, Client, ClientError};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {source}")]
    Broker { what: String, source: ClientError },
    /// Some of the ranks of `--rank` failed (each was reported as it was seen).
    #[error("{what}: failed on {} {failed} ({count} of {asked})", if *.count == 1 { "rank" } else { "ranks" })]
    Ranks { what: String, failed: switchboard_module_api::ranks::RankSet, count: usize, asked: usize },
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

fn connect(cli_uri: Option<&str>) -> Result<Client, CliError> {
    let path = cli_uri.map_or_else(uri::resolve, uri::parse);
    Client::connect(&path).doing("connect")
}

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    let result =
        connect(cli.uri.as_deref()).and_then(|mut client| commands::run(&mut client, cli.command, cli.rank.as_ref()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("modctl: {e}");
            ExitCode::FAILURE
        }
    }
}
