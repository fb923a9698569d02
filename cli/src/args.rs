//! Where `modctl` parses its arguments: the command line, and nothing else (`--rank` sets are
//! parsed by `switchboard_protocol::ranks`). Shell completions and man pages are generated
//! from these definitions (`generate`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use switchboard_protocol::ranks::RankSet;

#[derive(Parser, Debug)]
#[command(
    name = "modctl",
    version,
    about = "Drive a Switchboard broker",
    long_about = "Drive a Switchboard broker: load, list and remove modules, call services, publish and \
                  watch events, on one broker or on ranks of an instance (RFC 3 §6). Errors are one line on \
                  standard error and exit status 1; command-line errors exit with status 2.",
    propagate_version = true
)]
pub struct Cli {
    /// Broker socket (default: SWITCHBOARD_URI, else the per-user default path).
    #[arg(long, global = true)]
    pub uri: Option<String>,
    /// Run on the brokers of these ranks (`3`, `1-7,9` or `all`), through the broker modctl
    /// connects to, all at once, reporting per rank (RFC 7 §7): load, remove, reload, list,
    /// stats, info, apply, config reload, rpc (also --stream), ping; overlay status takes one
    /// rank.
    #[arg(long, global = true, value_name = "RANKS")]
    pub rank: Option<RankSet>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Load a module and start it. A PATH that is a plain module name (no `/`, no `.`) is
    /// looked up on the broker's search path (`kvs` finds kvs.so, libkvs.so, kvs.wasm or an
    /// executable kvs); anything else is a file.
    Load {
        path: PathBuf,
        /// Instance name (default: the module's own name).
        #[arg(long)]
        name: Option<String>,
        /// Configuration table for the module, as a JSON object.
        #[arg(long)]
        config: Option<String>,
        /// Process modules: milliseconds the child has to say hello (default 10000).
        #[arg(long, value_name = "MS")]
        hello_timeout: Option<u64>,
        /// WASM modules: memory cap in MiB (default 64).
        #[arg(long, value_name = "MIB")]
        memory_mb: Option<u64>,
        /// WASM modules: CPU milliseconds one call may take (default 1000).
        #[arg(long, value_name = "MS")]
        cpu_ms: Option<u64>,
        /// WASM modules: grant a directory, `HOST[:GUEST][:rw]` (read-only unless `:rw`).
        #[arg(long = "dir", value_name = "GRANT")]
        dirs: Vec<String>,
        /// Native modules: run the library in a host process of its own, so that a crash fails
        /// only this module (it is then supervised like a process module).
        #[arg(long)]
        isolated: bool,
        /// With --rank: if the load fails on any rank, remove it again from the ranks where it
        /// was loaded (all or nothing).
        #[arg(long)]
        rollback: bool,
        /// Arguments handed to the module.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Stop a module and unload it.
    Remove {
        name: String,
        /// Milliseconds the module has to finalize (default: the broker's, 5000).
        #[arg(long)]
        grace: Option<u64>,
        /// Remove it even if running modules require it.
        #[arg(long)]
        force: bool,
        /// A module NAME that is not loaded is not an error (with --rank, on each rank that
        /// has none: `rank N: NAME was not loaded`).
        #[arg(long)]
        missing_ok: bool,
    },
    /// Replace a module with a new instance of its file; requests that arrive meanwhile wait
    /// for the new instance.
    Reload { name: String },
    /// Bring the broker to what a site file says: load, remove, reload what differs.
    Apply {
        file: PathBuf,
        /// Print the plan, change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// The broker's site file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// A module's counters: messages, errors, queue, restarts, memory or CPU.
    Stats {
        name: String,
        #[command(flatten)]
        output: Output,
    },
    /// Print the messages to and from modules as they pass, until interrupted. Names need
    /// not be loaded yet; none: every module.
    Trace {
        names: Vec<String>,
        /// Only topics matching this glob (`*`, `?`).
        #[arg(long)]
        topic: Option<String>,
        /// Only these types: request,response,event,control.
        #[arg(long = "type", value_delimiter = ',')]
        types: Vec<String>,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// List loaded modules.
    List {
        #[command(flatten)]
        output: Output,
    },
    /// The methods a service's module declares (its `SERVICE.methods`): name, who may call
    /// it, what it does.
    Methods {
        service: String,
        #[arg(long)]
        json: bool,
    },
    /// Describe a module file without starting it.
    Info {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Time round trips to a service's `ping` method (default: the broker).
    Ping {
        #[arg(default_value = "broker")]
        service: String,
        /// Number of pings.
        #[arg(long, short, default_value_t = 1)]
        count: u32,
    },
    /// Call TOPIC with a JSON payload (default `{}`) and print the JSON response.
    Rpc {
        topic: String,
        json: Option<String>,
        /// Give up when no response came within this many milliseconds (with --stream: of
        /// the request or of the previous response).
        #[arg(long, value_name = "MS")]
        timeout: Option<u64>,
        /// A streaming request (RFC 1 §8.7): print each response as one line of JSON until
        /// ENODATA ends the stream.
        #[arg(long)]
        stream: bool,
    },
    /// Publish or watch events.
    Event {
        #[command(subcommand)]
        command: EventCommand,
    },
    /// The tree of brokers of the instance (RFC 7).
    Overlay {
        #[command(subcommand)]
        command: OverlayCommand,
    },
    /// Print a completion script for SHELL on standard output (no broker needed), e.g.
    /// `modctl completions bash > /usr/share/bash-completion/completions/modctl`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the modctl(1) man page (roff) on standard output, or with --dir write it and a
    /// page per command (modctl-load.1, modctl-config-reload.1, ...) into DIR (no broker
    /// needed).
    Man {
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

impl Command {
    /// False for the commands that only print what modctl knows itself.
    pub fn needs_broker(&self) -> bool {
        !matches!(self, Command::Completions { .. } | Command::Man { .. })
    }
}

/// How `list` and `stats` print what they get.
#[derive(Args, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Output {
    /// text (a table for list, KEY: VALUE lines for stats; `table` is the same), json, or
    /// prometheus (text exposition format, for a node exporter's textfile collector).
    #[arg(long, value_enum, value_name = "FORMAT")]
    format: Option<Format>,
    /// The same as --format json.
    #[arg(long, conflicts_with = "format")]
    json: bool,
}

impl Output {
    pub fn format(self) -> Format {
        match (self.format, self.json) {
            (Some(f), _) => f,
            (None, true) => Format::Json,
            (None, false) => Format::Text,
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// What a person reads.
    #[value(alias = "table")]
    Text,
    /// The response as JSON.
    Json,
    /// Prometheus text exposition format (version 0.0.4).
    Prometheus,
}

#[derive(Subcommand, Debug)]
pub enum OverlayCommand {
    /// Draw the tree below this broker (with --rank N: below rank N): each rank with its
    /// host and state (full, partial, lost, offline).
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum EventCommand {
    /// Publish an event with a JSON payload (default `{}`).
    Pub { topic: String, json: Option<String> },
    /// Print events whose topic starts with any of TOPICS until interrupted.
    Sub {
        #[arg(required = true)]
        topics: Vec<String>,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Re-read the site file the broker was started with and apply it (as SIGHUP does).
    Reload {
        /// Print the plan, change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("modctl").chain(args.iter().copied()))
    }

    #[test]
    fn rank_is_a_set_before_or_after_the_command() {
        let cli = parse(&["--rank", "9,1-7", "list"]).expect("parses");
        assert_eq!(cli.rank.map(|r| r.to_string()), Some("1-7,9".to_string()));
        let cli = parse(&["list", "--rank", "all", "--json"]).expect("parses");
        assert_eq!(cli.rank, Some(RankSet::All));
        assert!(matches!(cli.command, Command::List { output } if output.format() == Format::Json));
        let cli = parse(&["overlay", "status", "--rank", "3"]).expect("parses");
        assert!(matches!(cli.command, Command::Overlay { command: OverlayCommand::Status { json: false } }));
        assert_eq!(cli.rank.map(|r| r.to_string()), Some("3".to_string()));
        // A load's own arguments start at its first argument: a later --rank is one of them.
        let cli = parse(&["load", "./m.so", "x", "--rank", "3"]).expect("parses");
        assert!(cli.rank.is_none());
        assert!(matches!(cli.command, Command::Load { ref args, .. } if args == &["x", "--rank", "3"]));
    }

    #[test]
    fn format_takes_text_table_json_prometheus_and_json_is_its_alias() {
        let format = |args: &[&str]| match parse(args).expect("parses").command {
            Command::List { output } | Command::Stats { output, .. } => output.format(),
            other => panic!("{other:?}"),
        };
        assert_eq!(format(&["list"]), Format::Text);
        assert_eq!(format(&["list", "--format", "table"]), Format::Text);
        assert_eq!(format(&["list", "--format", "text"]), Format::Text);
        assert_eq!(format(&["list", "--json"]), Format::Json);
        assert_eq!(format(&["stats", "kvs", "--format", "json"]), Format::Json);
        assert_eq!(format(&["stats", "kvs", "--format", "prometheus"]), Format::Prometheus);
        let e = parse(&["list", "--json", "--format", "prometheus"]).map(|_| ()).expect_err("both");
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
        let e = parse(&["list", "--format", "xml"]).map(|_| ()).expect_err("xml");
        assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue);
    }

    #[test]
    fn the_existing_rpc_lines_parse_and_stream_is_a_flag() {
        let cli = parse(&["rpc", "kvs.get", r#"{"key":"a"}"#, "--timeout", "500"]).expect("parses");
        assert!(
            matches!(cli.command, Command::Rpc { ref topic, json: Some(_), timeout: Some(500), stream: false } if topic == "kvs.get")
        );
        let cli = parse(&["rpc", "--stream", "faulty.stream", r#"{"n":3}"#]).expect("parses");
        assert!(matches!(cli.command, Command::Rpc { stream: true, timeout: None, .. }));
    }

    #[test]
    fn a_bad_rank_set_is_a_usage_error_saying_what_is_wrong() {
        for (set, why) in [
            ("x", "'x' is not a rank"),
            ("5-2", "'5-2' runs backwards"),
            ("", "an empty rank set"),
            ("4294967294", "are reserved"),
        ] {
            let e = parse(&["--rank", set, "list"]).map(|_| ()).expect_err(set);
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{set}");
            assert!(e.to_string().contains(why), "{set}: {e}");
        }
    }
}
