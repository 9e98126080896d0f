//! `balancer run`: the agent. [`run`] builds the subsystems (host settings, the data
//! plane, the balancer, the health checker, the control server, signals, link events) and
//! then runs one loop over one [`Event`] enum ([`events`]), whose handler is the only writer
//! of the maps; an interface that goes and comes back gets the program again ([`links`]).
//! On SIGINT/SIGTERM it detaches cleanly (or leaves the data plane running, with
//! `keep_attached`); SIGHUP and `balancer reload` read the file again and apply what
//! changed (`reload`: the plan; `live`: applying it).

mod control_server;
mod discovered;
mod events;
mod flowsync;
mod host;
mod links;
mod live;
mod reload;
mod signals;

use std::{
    io::Write as _,
    ops::ControlFlow,
    path::{Path, PathBuf},
};

use anyhow::Context;
use tokio::sync::mpsc;

pub use events::{Agent, Event};
pub use live::{state_path, Live};

use crate::{
    config::{self, Forwarding, VipMode, XdpMode},
    dataplane::{
        links::Links,
        loader::{self, Program},
        FakeMaps,
    },
    health::{Checker, HealthEvent},
    l7,
    lb::Balancer,
    telemetry,
    vrrp::{self, Vrrp},
};

/// How long a stopping agent waits for its VRRP instances to resign and remove their
/// addresses.
const VRRP_STOP_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

pub struct RunOptions {
    pub config: PathBuf,
    pub socket: Option<PathBuf>,
    pub xdp_mode: Option<XdpMode>,
}

pub async fn run(options: RunOptions) -> anyhow::Result<()> {
    // First: without privileges, every later step fails for that reason.
    loader::check_privileges("balancer run")?;
    let (config, text) = config::load_with_text(&options.config)?;
    // What only the host can tell, before anything is loaded or attached.
    vrrp::check_host(&config.vrrp)?;
    loader::check_interfaces(&config.agent)?;
    let socket_path = options
        .socket
        .unwrap_or_else(|| config.agent.control_socket.clone());
    let mode = options.xdp_mode.unwrap_or(config.agent.xdp_mode);
    host::raise_open_files_limit();

    let pins = loader::open_pins(&config.agent)?;
    if let Some(pins) = &pins {
        pins.release_other_links(&config.agent.interfaces);
    }
    loader::check_free(&config.agent.interfaces, pins.as_ref())?;
    // Before the program is attached: no change after that goes unseen.
    let link_events = links::subscribe()?;
    let (mut program, logger) = Program::load(pins.as_ref())?;
    if let Some(logger) = logger {
        tokio::spawn(loader::forward_logs(logger));
    }
    let maps = program.maps()?;
    // The file, with the runtime changes the previous agent kept merged in.
    let live = Live::start(&options.config, text, config, &state_path(&socket_path));
    let config = live.running().clone();
    let mut lb = Balancer::from_config(maps, &config).context("applying the configuration")?;
    let keep = config.agent.keep_attached;
    let pin_dir = pins.as_ref().map(|p| p.dir().to_path_buf());
    // `accept_local` is put back when the data plane is dropped, after the program is
    // detached (with kept links, it is left on).
    let accept_local = host::AcceptLocal::new(
        &config.agent.interfaces,
        pin_dir.as_deref(),
        keep && pins.is_some(),
    );
    if config
        .vips
        .iter()
        .any(|v| v.mode == VipMode::L4 && v.address.is_ipv6())
    {
        host::enable_ipv6_forwarding(&config.agent.interfaces);
    }
    let tunnel_mtu = config
        .vips
        .iter()
        .any(|v| v.forwarding == Forwarding::Tunnel)
        .then_some(config.tunnel.mtu);
    let data_plane = links::DataPlane::new(program, accept_local, pins, (mode, keep), tunnel_mtu);
    let links = match Links::start(
        Box::new(data_plane),
        &config.agent.interfaces,
        config.agent.wait_for_interfaces,
    ) {
        Ok(links) => links,
        Err(e) => {
            // The previous program may still run (a kept link), and the next agent needs
            // the generations as they were.
            lb.restore_vip_gens();
            return Err(e);
        }
    };
    if let Err(e) = lb.clear_other_vip_gens() {
        log::warn!(
            "clearing the previous agent's VIP generations: {e}; flows of its VIPs that this \
             one has not got may be forwarded on"
        );
    }
    let (events_tx, mut events) = mpsc::channel::<Event>(64);
    control_server::start(&socket_path, events_tx.clone())?;
    if let Some(telemetry) = &config.telemetry {
        telemetry::start(telemetry, control_events(events_tx.clone())).await?;
    }
    log::info!(
        "serving {} VIP(s); control socket {}",
        config.vips.len(),
        socket_path.display()
    );
    // The checker's results come on a channel of their own (it is a library that knows
    // nothing of the agent's events) and become events here.
    let (health_tx, mut health) = mpsc::channel::<HealthEvent>(1024);
    let http = l7::Frontend::start(&config).await?;
    let vrrp = start_vrrp(&config)?;
    // What flow sync's peers send comes on a channel of its own too.
    let (sync_tx, mut sync_rx) = mpsc::channel(1024);
    let sync = config
        .sync
        .as_ref()
        .map(|s| flowsync::SyncNode::start(s, sync_tx))
        .transpose()?;
    let mut agent = Agent::new(lb, Checker::new(health_tx), vrrp, http)
        .with_links(links)
        .with_config(live)
        .with_events(events_tx.clone())
        .with_sync(sync);
    // Discovered sets too come on a channel of their own.
    let (discovery_tx, mut discoveries) = mpsc::channel(64);
    agent.start_discovery(&config, discovery_tx);
    tokio::spawn(links::watch(link_events, events_tx.clone()));
    signals::start(events_tx)?;
    // Attached (or waiting for interfaces, as configured) and serving: `Type=notify`.
    crate::systemd::notify(crate::systemd::READY);
    let mut tick = tokio::time::interval(events::SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let syncing = config.sync.is_some();
    let mut sync_tick = tokio::time::interval(
        config
            .sync
            .as_ref()
            .map_or(events::SAMPLE_EVERY, |s| s.interval),
    );
    sync_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            Some(event) = events.recv() => event,
            _ = tick.tick() => Event::Tick,
            _ = sync_tick.tick(), if syncing => Event::SyncTick,
            Some(delivery) = sync_rx.recv() => Event::Sync(delivery),
            Some(result) = health.recv() => Event::Health(result),
            Some(update) = discoveries.recv() => {
                Event::Discovery(discovered::newest_sets(update, &mut discoveries))
            }
            else => break,
        };
        if agent.handle(event).await == ControlFlow::Break(()) {
            break;
        }
    }
    crate::systemd::notify(crate::systemd::STOPPING);
    let _ = std::fs::remove_file(&socket_path);
    // (Without keep_attached no link is pinned now: links taken over were unpinned at
    // once, see `Pins::take_over`.)
    if let (true, Some(dir)) = (keep, &pin_dir) {
        log::info!(
            "leaving XDP attached: the data plane forwards with this configuration until \
             the next agent takes over (remove {} to detach it)",
            dir.display()
        );
        // (`accept_local` stays on: the data plane still needs it.)
    }
    // Stopping drops the program, which detaches it from every interface whose link is
    // not pinned.
    drop(agent.stop(VRRP_STOP_LIMIT).await);
    log::info!("stopped");
    Ok(())
}

/// `balancer check-config`: the checks `run` makes of a configuration before it changes
/// anything (the file, against this host's addresses, the balancer built from it in
/// memory, that the interfaces exist, and, as root, the VRRP host requirements), without
/// loading or attaching anything. Returns what to say of a file that passes.
pub fn check_config(path: &Path) -> anyhow::Result<&'static str> {
    let host = config::Host::read().context("listing this host's addresses")?;
    let (config, warnings) = config::load_on(path, Some(&host))?;
    for warning in warnings {
        // What may be intended does not fail the check; nothing to do if stderr is gone.
        let _ = writeln!(std::io::stderr(), "warning: {warning}");
    }
    Balancer::from_config(FakeMaps::default(), &config).context("applying the configuration")?;
    loader::check_interfaces(&config.agent)?;
    if config.vrrp.is_empty() {
        return Ok("configuration OK");
    }
    if !loader::is_root() {
        return Ok("configuration OK (VRRP host requirements not checked: that needs root)");
    }
    vrrp::check_host(&config.vrrp)?;
    Ok("configuration OK")
}

/// A channel whose requests become [`Event::Control`]s on `events` (the telemetry server
/// does not know the agent's events).
fn control_events(events: mpsc::Sender<Event>) -> telemetry::Ask {
    let (ask, mut asked) = mpsc::channel(8);
    tokio::spawn(async move {
        while let Some((request, reply)) = asked.recv().await {
            if events
                .send(Event::Control { request, reply })
                .await
                .is_err()
            {
                return;
            }
        }
    });
    ask
}

/// Starts the configured VRRP instances, once the data plane is attached (so that a Master
/// serves at once); `None` without any. (The agent tells `data_plane` tracks whether the
/// program is attached everywhere.)
fn start_vrrp(config: &config::Config) -> anyhow::Result<Option<Vrrp>> {
    if config.vrrp.is_empty() {
        return Ok(None);
    }
    let vrrp = Vrrp::start(config.vrrp.clone(), &config.vrrp_sync_groups)?;
    log::info!("VRRP: {} instance(s) started", config.vrrp.len());
    Ok(Some(vrrp))
}
