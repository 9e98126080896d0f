//! `balancer decap`, run on a backend of a tunnel VIP: attaches, re-addresses, shows or
//! detaches the decapsulation program ([`crate::dataplane::decap`]). It needs no agent.

use std::{net::Ipv4Addr, path::PathBuf};

use balancer_common::GUE_DEFAULT_PORT;
use clap::{Args, Subcommand};

use super::Words;
use crate::{
    config::XdpMode,
    dataplane::decap::{self, DecapSpec, DEFAULT_DECAP_PIN_DIR},
};

/// `balancer decap --interface IF --address A` attaches (the same as `decap attach`).
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct DecapArgs {
    #[command(subcommand)]
    pub action: Option<DecapAction>,
    #[command(flatten)]
    pub attach: AttachArgs,
}

#[derive(Debug, Subcommand)]
pub enum DecapAction {
    /// Attach the program to an interface and leave it there (pinned); run again to change
    /// the addresses or the GUE port it accepts.
    Attach(AttachArgs),
    /// Detach the program from an interface.
    Detach {
        /// Interface it is attached to.
        #[arg(long)]
        interface: String,
        #[command(flatten)]
        pins: PinDir,
    },
    /// The attached programs: the outer addresses they accept and what they did.
    Status {
        /// Only this interface's.
        #[arg(long)]
        interface: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        pins: PinDir,
    },
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Interface the balancer's tunnelled packets arrive on.
    #[arg(long, required = true)]
    pub interface: Option<String>,
    /// Outer destination to decapsulate: this backend's address, as the balancer's pool
    /// names it (repeat for several). Tunnel packets to other addresses pass untouched.
    #[arg(long = "address", value_name = "ADDRESS", required = true)]
    pub addresses: Vec<Ipv4Addr>,
    /// UDP port of GUE (the balancer's `tunnel.gue_port`); 0: IPIP only.
    #[arg(long, default_value_t = GUE_DEFAULT_PORT)]
    pub gue_port: u16,
    /// XDP attach mode.
    #[arg(long, default_value = "auto", value_parser = Words::<XdpMode>::new(&["driver", "skb", "auto"]))]
    pub xdp_mode: XdpMode,
    #[command(flatten)]
    pub pins: PinDir,
}

#[derive(Debug, Args)]
pub struct PinDir {
    /// Directory on a bpf filesystem for the pins (one directory per interface).
    #[arg(long, default_value = DEFAULT_DECAP_PIN_DIR)]
    pub pin_dir: PathBuf,
}

/// Runs `balancer decap` and returns what to print.
///
/// # Errors
/// What went wrong, naming the interface, address or pin concerned.
pub fn run(args: DecapArgs) -> anyhow::Result<String> {
    match args.action.unwrap_or(DecapAction::Attach(args.attach)) {
        DecapAction::Attach(a) => {
            let spec = DecapSpec {
                interface: a.interface.unwrap_or_default(),
                addresses: a.addresses,
                gue_port: a.gue_port,
                mode: a.xdp_mode,
            };
            decap::attach(&spec, &a.pins.pin_dir)
        }
        DecapAction::Detach { interface, pins } => decap::detach(&interface, &pins.pin_dir),
        DecapAction::Status {
            interface,
            json,
            pins,
        } => {
            let statuses = decap::status(&pins.pin_dir, interface.as_deref())?;
            Ok(if json {
                serde_json::to_string_pretty(&statuses)?
            } else {
                decap::render(&statuses)
            })
        }
    }
}
