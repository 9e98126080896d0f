//! `balancer`: the agent (`balancer run`) and the CLI that talks to it.
use std::{path::PathBuf, process::ExitCode};

use balancer::{
    agent::{self, RunOptions},
    cli::{self, Cli, Command},
    config::DEFAULT_CONTROL_SOCKET,
};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config, xdp_mode } => {
            env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
                .init();
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
        command => {
            let socket = cli
                .socket
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET));
            cli::client(&socket, command)
                .map(|out| println!("{out}"))
                .map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
