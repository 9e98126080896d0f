//! What is generated from the clap definitions: shell completions (`balancer completions`)
//! and the man pages (`balancer man DIR`), which `cargo xtask package` installs.

use std::io;
use std::path::{Path, PathBuf};

use clap::CommandFactory as _;

use super::Cli;

/// The completion script of `shell` for `balancer`.
pub fn completions(shell: clap_complete::Shell) -> String {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut visible_command(), "balancer", &mut out);
    String::from_utf8(out).expect("clap_complete writes UTF-8")
}

/// `balancer` without its hidden subcommands (`man`, for the package build): `clap_complete`
/// offers every subcommand, hidden or not, and clap cannot remove one, so this is the
/// command built again from its arguments and visible subcommands. (Only the top level
/// has hidden subcommands; a test keeps it so.)
fn visible_command() -> clap::Command {
    let full = Cli::command();
    let mut command = clap::Command::new("balancer")
        .version(env!("CARGO_PKG_VERSION"))
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
        .subcommand_required(full.is_subcommand_required_set())
        .arg_required_else_help(full.is_arg_required_else_help_set());
    if let Some(about) = full.get_about() {
        command = command.about(about.clone());
    }
    command
}

/// The man pages, section 8 (a daemon and its administration tool): balancer(8), and one
/// per subcommand (balancer-run(8), balancer-backend-drain(8), ...) as balancer(8) lists
/// them, written into `dir`. Returns the files written.
pub fn man_pages(dir: &Path) -> io::Result<Vec<PathBuf>> {
    fn write(command: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> io::Result<()> {
        for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
            write(sub.clone(), dir, written)?;
        }
        written.push(
            clap_mangen::Man::new(command)
                .section("8")
                .generate_to(dir)?,
        );
        Ok(())
    }
    let mut command = Cli::command().disable_help_subcommand(true);
    // (Gives each subcommand its display name, `balancer-backend-drain`.)
    command.build();
    let mut written = Vec::new();
    write(command, dir, &mut written)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_man_pages_cover_every_command_and_the_completions_name_them() {
        let dir = std::env::temp_dir().join(format!("balancer-man-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let written = man_pages(&dir).unwrap();
        let page = |name: &str| {
            std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        let top = page("balancer.8");
        assert!(top.contains(".TH balancer 8"), "{top}");
        assert!(top.contains("balancer\\-run(8)"), "{top}");
        assert!(page("balancer-run.8").contains("\\-\\-log\\-format"));
        assert!(page("balancer-backend-drain.8").contains(".SH SYNOPSIS"));
        assert!(
            !dir.join("balancer-man.8").exists(),
            "the hidden command has no page"
        );
        assert!(!dir.join("balancer-help.8").exists());
        assert!(written.len() > 20, "{written:?}");
        std::fs::remove_dir_all(&dir).unwrap();
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh] {
            let script = completions(shell);
            for word in ["run", "backend", "reload", "completions", "--log-format"] {
                assert!(script.contains(word), "{shell}: no {word}");
            }
            // Neither offered (bash: `balancer__subcmd__man`, zsh: `(man)` and
            // `'man:Write the man pages...'`) nor under `help`.
            for word in ["subcmd__man", "(man)", "'man:"] {
                assert!(
                    !script.contains(word),
                    "{shell} offers the hidden man: {word}"
                );
            }
        }
    }

    /// The hidden subcommands below the top level, as `parent child`.
    fn hidden_below(c: &clap::Command) -> Vec<String> {
        c.get_subcommands()
            .flat_map(|s| {
                s.get_subcommands()
                    .filter(|t| t.is_hide_set())
                    .map(|t| format!("{} {}", s.get_name(), t.get_name()))
                    .chain(hidden_below(s))
            })
            .collect()
    }

    #[test]
    fn the_completions_offer_what_the_command_line_takes_but_man() {
        let full = Cli::command();
        let visible = visible_command();
        let names = |c: &clap::Command| -> Vec<String> {
            c.get_subcommands()
                .map(|s| s.get_name().to_owned())
                .collect()
        };
        let mut expected = names(&full);
        expected.retain(|n| n != "man");
        assert_eq!(names(&visible), expected);
        let ids = |c: &clap::Command| -> Vec<String> {
            c.get_arguments().map(|a| a.get_id().to_string()).collect()
        };
        assert_eq!(ids(&visible), ids(&full));
        assert_eq!(visible.get_about(), full.get_about());
        assert_eq!(visible.get_version(), full.get_version());
        // Hidden subcommands only at the top level, where `visible_command` drops them.
        assert_eq!(hidden_below(&full), Vec::<String>::new());
    }
}
