//! `balancer`: the agent (`balancer run`) and the CLI that talks to it.
use std::{
    io::{ErrorKind, Write},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::Context;
use balancer::{
    agent::{self, RunOptions},
    cli::{self, Cli, Command},
    config::DEFAULT_CONTROL_SOCKET,
    logging::{self, LogFormat},
};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            config,
            xdp_mode,
            log_format,
        } => {
            logging::init(log_format);
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| {
                    rt.block_on(agent::run(RunOptions {
                        config,
                        socket: cli.socket,
                        xdp_mode,
                    }))
                })
        }
        Command::CheckConfig { config } => agent::check_config(&config).and_then(print),
        Command::Register(args) => {
            logging::init(LogFormat::Text);
            (*args)
                .registration()
                .map_err(anyhow::Error::msg)
                .and_then(|reg| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(anyhow::Error::from)
                        .and_then(|rt| rt.block_on(balancer::discovery::register::run(reg)))
                })
        }
        Command::Decap(args) => {
            logging::init(LogFormat::Text);
            cli::decap::run(*args).and_then(|out| print(&out))
        }
        Command::Completions { shell } => print(cli::completions(shell).trim_end()),
        Command::Man { dir } => cli::man_pages(&dir)
            .with_context(|| format!("writing the man pages into {}", dir.display()))
            .and_then(|written| print(&format!("{} man pages written", written.len()))),
        command => {
            let socket = cli
                .socket
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET));
            cli::client(&socket, command, cli.timeout)
                .map_err(anyhow::Error::from)
                .and_then(|out| print(&out))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Nothing is left to do if even stderr is gone.
            let _ = writeln!(std::io::stderr(), "error: {}", message(&e));
            ExitCode::FAILURE
        }
    }
}

/// Prints `out` and a newline. A reader that has gone (`balancer status | head -1`) is not
/// an error: the command did what it was asked (a change was applied), and exit status 0
/// keeps scripts under `set -o pipefail` from retrying a change that was made. (Rust
/// ignores SIGPIPE, so the closed pipe is an `EPIPE` here rather than the end of the
/// process.)
fn print(out: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{out}").and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
        result => result.context("writing to stdout"),
    }
}

/// The error and its causes on one line, each cause once: a library error whose message
/// already shows its source (aya's "failed to create map `X`", the OS error) would
/// otherwise repeat it.
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain().map(ToString::to_string) {
        if out.contains(&cause) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&cause);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("failed to create map `EVICTION_SEQ`: {0}")]
    struct SaysItsSource(#[source] std::io::Error);

    #[test]
    fn each_cause_is_said_once() {
        let os = std::io::Error::from_raw_os_error(libc::EPERM);
        let e = anyhow::Error::from(SaysItsSource(os)).context("loading the XDP object");
        assert_eq!(
            message(&e),
            "loading the XDP object: failed to create map `EVICTION_SEQ`: Operation not \
             permitted (os error 1)"
        );
        let plain = anyhow::anyhow!("no cause").context("outer");
        assert_eq!(message(&plain), "outer: no cause");
    }
}
