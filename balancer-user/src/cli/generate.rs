//! What is generated from the clap definitions: shell completions (`balancer completions`)
//! and the man pages (`balancer man DIR`), which `cargo xtask package` installs.

use std::io;
use std::path::{Path, PathBuf};

use clap::CommandFactory as _;

use super::Cli;

/// The completion script of `shell` for `balancer`.
pub fn completions(shell: clap_complete::Shell) -> String {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "balancer", &mut out);
    String::from_utf8(out).expect("clap_complete writes UTF-8")
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
        }
    }
}
