//! Command line: `balancer run` starts the agent; every other command talks to it over the
//! control socket and prints the result.
pub mod decap;
mod generate;
mod register;
mod render;

use std::{
    ffi::OsStr,
    fmt::Display,
    io::IsTerminal,
    marker::PhantomData,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use clap::{
    builder::{PossibleValue, TypedValueParser},
    Args, Parser, Subcommand,
};
pub use generate::{completions, man_pages};
pub use register::RegisterArgs;
use render::{
    render_backends, render_pools, render_reload, render_status, render_vips, render_vrrp,
    trim_lines,
};

use crate::{
    api::{
        client::{self, ClientError},
        Request, Status,
    },
    config::{
        self, AllDownPolicy, Encapsulation, Forwarding, Protocol, Scheduler, VipConfig, XdpMode,
        MAX_WEIGHT,
    },
    logging::LogFormat,
};

#[derive(Debug, Parser)]
#[command(
    name = "balancer",
    version,
    about = "XDP layer-4 load balancer: agent and CLI"
)]
pub struct Cli {
    /// Control socket of the agent [default: the config's `agent.control_socket` for `run`,
    /// else /run/balancer/balancer.sock]
    #[arg(long, global = true, env = "BALANCER_SOCKET")]
    pub socket: Option<PathBuf>,
    /// How long a CLI command waits for the agent's answer, in seconds
    #[arg(long, global = true, value_name = "SECONDS", default_value = "10", value_parser = parse_timeout)]
    pub timeout: Duration,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: load and attach the XDP program and serve the control socket.
    Run {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
        /// XDP attach mode; overrides the config's `agent.xdp_mode`.
        #[arg(long, value_parser = Words::<XdpMode>::new(&["driver", "skb", "auto"]))]
        xdp_mode: Option<XdpMode>,
        /// Log lines as text for people, or as one JSON object each for log shippers
        /// (`RUST_LOG` filters either way).
        #[arg(long, value_enum, env = "BALANCER_LOG_FORMAT", default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Check a configuration file as `run` would, without running anything: prints
    /// "configuration OK" or the first error (`file:line:column`), exits 0 or 1. It checks
    /// that the interfaces exist (unless `agent.wait_for_interfaces`), and as root what else
    /// only the host can tell (VRRP interfaces and addresses).
    CheckConfig {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Add, delete or list virtual IPs.
    #[command(subcommand)]
    Vip(VipCommand),
    /// Add, delete, drain or list the backends of a pool.
    #[command(subcommand)]
    Backend(BackendCommand),
    /// Add, delete or list pools.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// VRRP instances: state, priority, the Master, adverts and errors.
    #[command(subcommand)]
    Vrrp(VrrpCommand),
    /// VIPs, backends, weights and counters, and VRRP instances.
    Status {
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Read the agent's configuration file again and apply what changed (as SIGHUP does):
    /// prints a summary, or the error (`file:line:column`) and exits 1 with nothing changed.
    Reload,
    /// The agent's running configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The secretary beside a backend: keeps its key under an etcd prefix alive with a
    /// lease while its health check passes; revokes it when the check fails and on exit.
    Register(Box<RegisterArgs>),
    /// On a backend of a tunnel VIP (`forwarding = "tunnel"`): attach the XDP program that
    /// decapsulates the balancer's IPIP and GUE packets (no tunnel device needed), and
    /// leave it attached: `balancer decap --interface eth0 --address 10.0.2.11`. Also
    /// `decap status` and `decap detach --interface eth0`.
    Decap(Box<decap::DecapArgs>),
    /// Print a completion script for a shell, e.g. `balancer completions bash >
    /// /etc/bash_completion.d/balancer` (the package installs bash's and zsh's).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (roff, section 8) into a directory, as the package installs
    /// them.
    #[command(hide = true)]
    Man { dir: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the running configuration (the file with the CLI's changes) as TOML that
    /// `run --config` and `check-config` accept.
    Dump,
}

#[derive(Debug, Subcommand)]
pub enum VrrpCommand {
    /// List the VRRP instances.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum VipCommand {
    /// Add a VIP: `vip add web 10.0.100.1:80/tcp --pool web`.
    Add {
        name: String,
        /// ADDRESS:PORT/PROTOCOL, e.g. 10.0.100.1:80/tcp
        #[arg(value_parser = parse_vip_spec)]
        spec: VipSpec,
        /// Backend pool (created empty if it does not exist).
        #[arg(long)]
        pool: String,
        /// How new flows are spread over the pool: Maglev consistent hashing, or weighted
        /// round-robin (also spelled rr).
        #[arg(long, default_value = "maglev", value_parser = Words::<Scheduler>::new(&["maglev", "round-robin"]))]
        scheduler: Scheduler,
        /// Maglev ring size (a prime <= 65537).
        #[arg(long, default_value_t = config::DEFAULT_RING_SIZE)]
        ring_size: u32,
        /// What new flows get when no backend is up: drop or pass (to the local stack).
        #[arg(long, default_value = "drop", value_parser = Words::<AllDownPolicy>::new(&["drop", "pass"]))]
        on_all_down: AllDownPolicy,
        /// How packets reach a backend: full NAT, direct server return (the backends, on
        /// a link of the balancer, hold the VIP and answer clients themselves), or a
        /// tunnel (the same, with backends anywhere; needs `[tunnel] source` in the file).
        #[arg(long, default_value = "nat", value_parser = Words::<Forwarding>::new(&["nat", "dsr", "tunnel"]))]
        forwarding: Forwarding,
        /// A tunnel VIP's encapsulation: ipip or gue.
        #[arg(long, default_value = "ipip", value_parser = Words::<Encapsulation>::new(&["ipip", "gue"]))]
        encapsulation: Encapsulation,
    },
    /// Delete a VIP by name.
    Del { name: String },
    /// List VIPs.
    List,
}

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Add an empty pool (backends added to it later have no health check).
    Add { name: String },
    /// Delete a pool that no VIP uses, with its backends (their established flows are
    /// not moved).
    Del { name: String },
    /// List pools: backends, those taking new flows, the VIPs using each.
    List,
}

#[derive(Debug, Args)]
pub struct BackendRef {
    /// Pool name, or the name of a VIP (meaning its pool).
    pub pool: String,
    /// Backend ADDRESS:PORT, e.g. 10.0.2.11:80 (IPv6 in brackets)
    #[arg(value_parser = parse_backend_addr)]
    pub address: SocketAddr,
}

#[derive(Debug, Subcommand)]
pub enum BackendCommand {
    /// Add a backend to a pool.
    Add {
        #[command(flatten)]
        backend: BackendRef,
        /// Weight, 0..=10000 (0 = drained).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=MAX_WEIGHT as i64))]
        weight: u32,
    },
    /// Remove a backend: no new flows; established flows are not moved elsewhere.
    Del {
        #[command(flatten)]
        backend: BackendRef,
    },
    /// Drain a backend (weight 0): no new flows, established flows continue.
    Drain {
        #[command(flatten)]
        backend: BackendRef,
    },
    /// Set a backend's weight (0 drains it).
    Weight {
        #[command(flatten)]
        backend: BackendRef,
        #[arg(value_parser = clap::value_parser!(u32).range(0..=MAX_WEIGHT as i64))]
        weight: u32,
    },
    /// List backends (of one pool or VIP, or of all pools).
    List { pool: Option<String> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipSpec {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

fn parse_vip_spec(s: &str) -> Result<VipSpec, String> {
    let (addr, protocol) = s.split_once('/').ok_or_else(|| {
        format!(
            "{s:?} is not ADDRESS:PORT/PROTOCOL (e.g. 10.0.100.1:80/tcp or \
                 [2001:db8::1]:80/tcp)"
        )
    })?;
    let addr: SocketAddr = addr.parse().map_err(|_| {
        format!("{addr:?} is not an ADDRESS:PORT (IPv6 in brackets: [2001:db8::1]:80)")
    })?;
    if addr.port() == 0 {
        return Err("port 0 is not a valid VIP port".into());
    }
    let protocol = protocol.parse::<Protocol>().map_err(|e| e.to_string())?;
    Ok(VipSpec {
        address: addr.ip(),
        port: addr.port(),
        protocol,
    })
}

fn parse_backend_addr(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = s.parse().map_err(|_| {
        format!("{s:?} is not an ADDRESS:PORT (e.g. 10.0.2.11:80 or [2001:db8::11]:80)")
    })?;
    config::check_backend_address(addr).map_err(|e| format!("{s:?}: {e}"))?;
    Ok(addr)
}

/// One of the configuration's words for `T`, parsed as the configuration file parses it
/// (any case, aliases too), with `words` listed in `--help`.
#[derive(Clone)]
struct Words<T> {
    words: &'static [&'static str],
    parses: PhantomData<fn() -> T>,
}

impl<T> Words<T> {
    const fn new(words: &'static [&'static str]) -> Self {
        Words {
            words,
            parses: PhantomData,
        }
    }
}

impl<T> TypedValueParser for Words<T>
where
    T: FromStr + Clone + Send + Sync + 'static,
    T::Err: Display,
{
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let invalid = |message: String| {
            clap::Error::raw(clap::error::ErrorKind::InvalidValue, message + "\n").with_cmd(cmd)
        };
        let text = value
            .to_str()
            .ok_or_else(|| invalid(format!("{} is not UTF-8", value.display())))?;
        text.parse().map_err(|e: T::Err| invalid(e.to_string()))
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(self.words.iter().copied().map(PossibleValue::new)))
    }
}

/// A positive number of seconds (`10`, `0.5`).
fn parse_timeout(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .filter(|secs| secs.is_finite() && *secs > 0.0)
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| format!("{s:?} is not a positive number of seconds"))
}

/// Turns the agent's status after a request into what the CLI prints.
type Render = Box<dyn Fn(&Status) -> String>;

/// What a runtime change prints: `done`, and how long the change lasts.
fn changed(done: String) -> Render {
    Box::new(move |_| format!("{done}\n{RUNTIME_CHANGE}"))
}

/// Said after each runtime change.
const RUNTIME_CHANGE: &str = "(a runtime change: kept across reloads and restarts of the \
    agent until the file changes the same object; `balancer config dump` prints the \
    configuration with it)";

/// Runs a client command against the agent, waiting at most `timeout` for its answer,
/// and returns what to print.
pub fn client(socket: &Path, command: Command, timeout: Duration) -> Result<String, ClientError> {
    let (request, render): (Request, Render) = match command {
        Command::Run { .. }
        | Command::CheckConfig { .. }
        | Command::Register(_)
        | Command::Decap(_)
        | Command::Completions { .. }
        | Command::Man { .. } => {
            unreachable!(
                "run, check-config, register, decap, completions and man are not client commands"
            )
        }
        Command::Status { json: true } => (
            Request::Status,
            Box::new(|s| serde_json::to_string_pretty(s).expect("status serializes")),
        ),
        Command::Status { json: false } => {
            let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            (Request::Status, Box::new(move |s| render_status(s, color)))
        }
        Command::Reload => (Request::Reload, Box::new(render_reload)),
        Command::Pool(PoolCommand::List) => (Request::Status, Box::new(render_pools)),
        Command::Pool(PoolCommand::Add { name }) => {
            let done = format!("pool {name} added");
            (Request::PoolAdd { name }, changed(done))
        }
        Command::Pool(PoolCommand::Del { name }) => {
            let done = format!("pool {name} deleted");
            (Request::PoolDel { name }, changed(done))
        }
        Command::Config(ConfigCommand::Dump) => {
            let status = client::request(socket, &Request::ConfigDump, timeout)?;
            // As TOML: not trimmed, ends with its own newline (printed with one more).
            let dump = status.config.and_then(|c| c.dump).unwrap_or_default();
            return Ok(dump.trim_end().to_owned());
        }
        Command::Vip(VipCommand::List) => (Request::Status, Box::new(render_vips)),
        Command::Vrrp(VrrpCommand::List { json: true }) => (
            Request::Status,
            Box::new(|s| serde_json::to_string_pretty(&s.vrrp).expect("status serializes")),
        ),
        Command::Vrrp(VrrpCommand::List { json: false }) => {
            (Request::Status, Box::new(render_vrrp))
        }
        Command::Vip(VipCommand::Add {
            name,
            spec,
            pool,
            scheduler,
            ring_size,
            on_all_down,
            forwarding,
            encapsulation,
        }) => {
            let done = format!(
                "vip {name} added: {}/{} -> pool {pool}",
                SocketAddr::new(spec.address, spec.port),
                spec.protocol
            );
            let vip = VipConfig {
                name,
                address: spec.address,
                port: spec.port,
                protocol: spec.protocol,
                scheduler,
                ring_size,
                pool,
                on_all_down,
                forwarding,
                encapsulation,
                mode: config::VipMode::L4,
                rules: Vec::new(),
            };
            (Request::VipAdd { vip }, changed(done))
        }
        Command::Vip(VipCommand::Del { name }) => {
            let done = format!("vip {name} deleted");
            (Request::VipDel { name }, changed(done))
        }
        Command::Backend(BackendCommand::Add { backend, weight }) => {
            let done = format!(
                "backend {} added to {} (weight {weight})",
                backend.address, backend.pool
            );
            (
                Request::BackendAdd {
                    target: backend.pool,
                    address: backend.address,
                    weight,
                },
                changed(done),
            )
        }
        Command::Backend(BackendCommand::Del { backend }) => {
            let done = format!("backend {} deleted from {}", backend.address, backend.pool);
            (
                Request::BackendDel {
                    target: backend.pool,
                    address: backend.address,
                },
                changed(done),
            )
        }
        Command::Backend(BackendCommand::Drain { backend }) => {
            let done = format!(
                "backend {} in {} drained (weight 0)",
                backend.address, backend.pool
            );
            (
                Request::BackendWeight {
                    target: backend.pool,
                    address: backend.address,
                    weight: 0,
                },
                changed(done),
            )
        }
        Command::Backend(BackendCommand::Weight { backend, weight }) => {
            let done = format!(
                "backend {} in {}: weight {weight}",
                backend.address, backend.pool
            );
            (
                Request::BackendWeight {
                    target: backend.pool,
                    address: backend.address,
                    weight,
                },
                changed(done),
            )
        }
        Command::Backend(BackendCommand::List { pool }) => {
            let status = client::request(socket, &Request::Status, timeout)?;
            return render_backends(&status, pool.as_deref()).map(|t| trim_lines(&t));
        }
    };
    let status = client::request(socket, &request, timeout)?;
    Ok(trim_lines(&render(&status)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("balancer").chain(args.iter().copied()))
    }

    fn error_of(args: &[&str]) -> String {
        parse(args).expect_err("must be refused").to_string()
    }

    /// `vip add w 10.0.100.1:80/tcp --pool p`, then `extra`.
    fn vip_add_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["vip", "add", "w", "10.0.100.1:80/tcp", "--pool", "p"];
        args.extend_from_slice(extra);
        args
    }

    #[test]
    fn vrrp_list_shows_state_priorities_master_and_errors() {
        use crate::api::{Status, VrrpStatus};
        let instance = VrrpStatus {
            name: "vi_1".into(),
            interface: "eth0".into(),
            vrid: 51,
            version: 3,
            state: "BACKUP".into(),
            priority: 150,
            effective_priority: 90,
            source: "10.0.1.11".parse().unwrap(),
            master: Some("10.0.1.12".parse().unwrap()),
            since_change_secs: 75.0,
            reason: "track vip web down".into(),
            adverts_sent: 3,
            adverts_received: 70,
            became_master: 1,
            errors: [("bad_ttl".to_owned(), 2)].into(),
            checksums: [("pseudo_header".to_owned(), 70)].into(),
            sync_group: None,
            addresses: vec!["10.0.1.100/24".into()],
        };
        let status = Status {
            vrrp: vec![instance],
            ..Status::default()
        };
        let text = render_vrrp(&status);
        let row = text.lines().nth(1).unwrap();
        for part in [
            "vi_1",
            "eth0",
            "51",
            "BACKUP",
            "90/150",
            "10.0.1.12",
            "1m15s",
            "3/70",
            "track vip web down",
        ] {
            assert!(row.contains(part), "{part:?} in {row:?}");
        }
        assert!(text.contains("vi_1: 2 bad_ttl"), "{text}");
        assert!(text.contains("vi_1: 70 pseudo_header"), "{text}");
        assert!(render_status(&status, false).contains("\nVRRP\n"));
        assert_eq!(render_vrrp(&Status::default()), "no VRRP instances");
        let cli = parse(&["vrrp", "list", "--json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Vrrp(VrrpCommand::List { json: true })
        ));
    }

    #[test]
    fn vip_add_parses_address_port_protocol() {
        let cli = parse(&["vip", "add", "web", "10.0.100.1:80/tcp", "--pool", "web"]).unwrap();
        let Command::Vip(VipCommand::Add {
            spec,
            scheduler,
            ring_size,
            ..
        }) = cli.command
        else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(spec.address, std::net::Ipv4Addr::new(10, 0, 100, 1));
        assert_eq!(spec.port, 80);
        assert_eq!(spec.protocol, Protocol::Tcp);
        assert_eq!(scheduler, Scheduler::Maglev);
        assert_eq!(ring_size, 65537);
        let spec = parse_vip_spec("[fd00:100::1]:443/udp").unwrap();
        assert_eq!(spec.address, "fd00:100::1".parse::<IpAddr>().unwrap());
        assert_eq!((spec.port, spec.protocol), (443, Protocol::Udp));
        assert!(parse_vip_spec("fd00:100::1:443/udp")
            .unwrap_err()
            .contains("IPv6 in brackets"));
    }

    #[test]
    fn vip_spec_errors_name_the_bad_part() {
        assert!(
            error_of(&["vip", "add", "w", "10.0.100.1:80", "--pool", "p"])
                .contains("ADDRESS:PORT/PROTOCOL")
        );
        assert!(
            error_of(&["vip", "add", "w", "10.0.100.300:80/tcp", "--pool", "p"])
                .contains("10.0.100.300:80")
        );
        assert!(
            error_of(&["vip", "add", "w", "10.0.100.1:80/sctp", "--pool", "p"]).contains("sctp")
        );
        assert!(
            error_of(&["vip", "add", "w", "10.0.100.1:0/tcp", "--pool", "p"]).contains("port 0")
        );
        assert!(error_of(&["vip", "add", "w", "10.0.100.1:80/tcp"]).contains("--pool"));
    }

    #[test]
    fn backend_errors_name_the_bad_value() {
        assert!(error_of(&["backend", "add", "web", "notanaddress"]).contains("notanaddress"));
        assert!(error_of(&["backend", "add", "web", "10.0.2.11"]).contains("10.0.2.11"));
        assert!(
            error_of(&["backend", "add", "web", "10.0.2.11:80", "--weight", "10001"])
                .contains("10001")
        );
        assert!(
            error_of(&["backend", "add", "web", "10.0.2.11:80", "--weight", "-1"]).contains("-1")
        );
        assert!(error_of(&["backend", "drain", "web"]).contains("ADDRESS"));
        // The same check as the configuration file's and the agent's.
        assert!(error_of(&["backend", "add", "web", "10.0.2.11:0"]).contains("port 0"));
        assert!(error_of(&["backend", "add", "web", "0.0.0.0:80"]).contains("unspecified"));
        assert!(error_of(&["backend", "add", "web", "[fe80::1]:80"]).contains("link-local"));
        assert_eq!(
            parse_backend_addr("[fd00:2::11]:80").unwrap().to_string(),
            "[fd00:2::11]:80"
        );
        assert!(error_of(&["backend", "del", "web", "224.0.0.1:80"]).contains("multicast"));
        assert!(error_of(&vip_add_args(&["--scheduler", "random"])).contains("random"));
        assert!(error_of(&["run"]).contains("--config"));
        assert!(error_of(&["run", "--config", "x", "--xdp-mode", "hw"]).contains("hw"));
    }

    #[test]
    fn backend_commands_parse() {
        let cli = parse(&["backend", "add", "web", "10.0.2.11:80", "--weight", "5"]).unwrap();
        let Command::Backend(BackendCommand::Add { backend, weight }) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(backend.pool, "web");
        assert_eq!(backend.address, "10.0.2.11:80".parse().unwrap());
        assert_eq!(weight, 5);
        let cli = parse(&[
            "--socket",
            "/tmp/s",
            "backend",
            "drain",
            "web",
            "10.0.2.11:80",
        ])
        .unwrap();
        assert_eq!(cli.socket, Some(PathBuf::from("/tmp/s")));
        assert!(matches!(
            cli.command,
            Command::Backend(BackendCommand::Drain { .. })
        ));
    }

    #[test]
    fn agent_not_running_is_a_clear_error() {
        let err = client(
            Path::new("/nonexistent/balancer.sock"),
            Command::Status { json: false },
            Duration::from_secs(10),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/balancer.sock"), "{err}");
        assert!(err.contains("balancer run"), "{err}");
    }

    #[test]
    fn help_lists_the_words_a_choice_takes() {
        let mut cli = <Cli as clap::CommandFactory>::command();
        let vip_add = cli
            .find_subcommand_mut("vip")
            .and_then(|vip| vip.find_subcommand_mut("add"))
            .unwrap();
        let help = vip_add.render_long_help().to_string();
        assert!(
            help.contains("maglev") && help.contains("round-robin"),
            "{help}"
        );
        assert!(help.contains("drop") && help.contains("pass"), "{help}");
        // Parsed as the configuration file parses them: any case, aliases too.
        for (word, scheduler) in [
            ("maglev", Scheduler::Maglev),
            ("round-robin", Scheduler::RoundRobin),
            ("RR", Scheduler::RoundRobin),
        ] {
            let cli = parse(&vip_add_args(&["--scheduler", word])).unwrap();
            let Command::Vip(VipCommand::Add { scheduler: got, .. }) = cli.command else {
                panic!("parsed as {:?}", cli.command);
            };
            assert_eq!(got, scheduler, "{word}");
        }
        let cli = parse(&["run", "-c", "x", "--xdp-mode", "SKB"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Run {
                xdp_mode: Some(XdpMode::Skb),
                ..
            }
        ));
    }

    #[test]
    fn timeout_is_a_positive_number_of_seconds() {
        assert_eq!(parse(&["status"]).unwrap().timeout, Duration::from_secs(10));
        let cli = parse(&["--timeout", "0.5", "status"]).unwrap();
        assert_eq!(cli.timeout, Duration::from_millis(500));
        for bad in ["0", "-1", "soon", "inf", "NaN"] {
            let arg = format!("--timeout={bad}");
            assert!(error_of(&[&arg, "status"]).contains("seconds"), "{bad}");
        }
    }
}
