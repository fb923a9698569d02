//! `modctl completions SHELL` and `modctl man [--dir DIR]`: shell completion scripts and man
//! pages generated from the clap definitions in `args`, so they cannot drift from the
//! command line they describe. Neither needs a broker.
//!
//! They are commands of the binary, not a build step, because that is what packagers run:
//! the built binary at package time (`modctl completions bash > ...`, Homebrew's
//! `generate_completions_from_executable`, a Debian rule), where files left by a build script
//! would sit in a hashed `target/*/build/` folder that `cargo install` does not install.

use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::args::Cli;
use crate::CliError;

/// The completion script for `shell`, for the command named `modctl`.
pub fn completions(shell: Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "modctl", &mut out);
    out
}

/// modctl(1) as roff.
pub fn man_page() -> Result<Vec<u8>, CliError> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut out)
        .map_err(|e| CliError::Output { what: "man page".into(), source: e })?;
    Ok(out)
}

/// modctl.1 and a page per command and subcommand (`modctl-load.1`, `modctl-config-reload.1`,
/// ...) in `dir`, which must exist; files of those names are replaced. The paths written.
pub fn man_pages(dir: &Path) -> Result<Vec<String>, CliError> {
    if !dir.is_dir() {
        return Err(CliError::Usage(format!("man --dir {}: not a directory (create it first)", dir.display())));
    }
    clap_mangen::generate_to(Cli::command(), dir)
        .map_err(|e| CliError::Output { what: format!("man pages in {}", dir.display()), source: e })?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    page_names(&cmd, &mut pages);
    Ok(pages.into_iter().map(|p| dir.join(p).display().to_string()).collect())
}

/// The file name of `cmd`'s page and of each of its visible subcommands', as
/// `clap_mangen::generate_to` names them (`modctl-config-reload.1`).
fn page_names(cmd: &clap::Command, out: &mut Vec<String>) {
    out.push(format!("{}.1", cmd.get_display_name().unwrap_or_else(|| cmd.get_name())));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        page_names(sub, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_a_script_that_names_the_commands_and_options() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish, Shell::Elvish, Shell::PowerShell] {
            let script = String::from_utf8(completions(shell)).expect("UTF-8");
            assert!(!script.is_empty(), "{shell}");
            for word in ["modctl", "load", "rpc", "completions", "--stream", "--format", "prometheus", "--rank"] {
                assert!(script.contains(word), "{shell}: no {word}");
            }
        }
        // bash: a function registered for the command.
        let bash = String::from_utf8(completions(Shell::Bash)).expect("UTF-8");
        assert!(bash.contains("complete -F _modctl"), "{bash}");
        let fish = String::from_utf8(completions(Shell::Fish)).expect("UTF-8");
        assert!(fish.contains("complete -c modctl"), "{fish}");
        let zsh = String::from_utf8(completions(Shell::Zsh)).expect("UTF-8");
        assert!(zsh.starts_with("#compdef modctl"), "{zsh}");
    }

    #[test]
    fn the_man_page_is_roff_with_every_command_and_a_page_each_in_a_directory() {
        let page = String::from_utf8(man_page().expect("renders")).expect("UTF-8");
        assert!(page.contains(".TH modctl 1"), "{page}");
        for command in ["load", "remove", "list", "stats", "rpc", "completions", "man"] {
            assert!(page.contains(command), "no {command}");
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        let pages = man_pages(dir).expect("written");
        let names: Vec<&str> = pages.iter().filter_map(|p| p.rsplit('/').next()).collect();
        for page in &pages {
            assert!(Path::new(page).is_file(), "{page} listed, not written");
        }
        assert_eq!(names.len(), std::fs::read_dir(dir).expect("ls").count(), "{names:?}");
        for want in ["modctl.1", "modctl-load.1", "modctl-rpc.1", "modctl-config-reload.1", "modctl-event-sub.1"] {
            assert!(names.contains(&want), "{names:?}");
        }
        let rpc = std::fs::read_to_string(dir.join("modctl-rpc.1")).expect("read");
        assert!(rpc.contains("stream") && rpc.contains("timeout"), "{rpc}");
        let e = man_pages(Path::new("/no/such/dir")).expect_err("no dir");
        assert!(e.to_string().contains("not a directory"), "{e}");
    }
}
