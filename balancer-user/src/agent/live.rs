//! The running configuration and how a reload reaches the agent's subsystems: the file is
//! read and checked whole, merged with what the CLI changed, tried on a balancer in
//! memory, and only then applied step by step through the balancer (the maps), the health
//! checks, the HTTP proxy and VRRP ([`reload`] computes the plan).
//!
//! Runtime state outlives the agent like HAProxy's `server-state-file`: after each change
//! the agent writes the file as it loaded it and the running configuration to a state
//! file beside its control socket (atomically), and the next agent merges its file with
//! it as a reload would ([`Live::start`]).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use super::{
    events::Agent,
    reload::{self, Step},
};
use crate::{
    api::{ConfigStatus, ReloadStatus, Request, Status},
    config::{self, Config, VipMode},
    dataplane::{FakeMaps, Maps},
    lb::{settings, Balancer, BalancerError},
    vrrp,
};

/// What the state file holds: the configuration file as it was loaded, and what ran.
#[derive(serde::Serialize, serde::Deserialize)]
struct State {
    file: String,
    running: String,
}

/// Where the agent with control socket `socket` keeps its runtime state.
#[must_use]
pub fn state_path(socket: &Path) -> PathBuf {
    with_suffix(socket, ".state")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The configuration the agent runs, and the file it comes from.
pub struct Live {
    path: PathBuf,
    /// The state file (`None`: runtime changes are not kept across restarts).
    state: Option<PathBuf>,
    /// The file's text as last loaded (for `config dump`).
    text: String,
    /// The file as last loaded.
    file: Config,
    /// What runs: the file with the CLI's changes over it.
    running: Config,
    generation: u64,
    last: Option<ReloadStatus>,
}

impl Live {
    /// The agent's configuration at start: `config`, loaded from `text` at `path`.
    #[must_use]
    pub fn new(path: &Path, text: String, config: Config) -> Self {
        Live {
            path: path.to_path_buf(),
            state: None,
            text,
            running: config.clone(),
            file: config,
            generation: 1,
            last: None,
        }
    }

    /// [`Live::new`], with the runtime changes of the previous agent kept in `state` put
    /// back: the state's file and what ran then are merged with `config` as a reload would
    /// merge them (the file wins for what it changed since). A state that cannot be read
    /// or applied is left aside with a warning.
    #[must_use]
    pub fn start(path: &Path, text: String, config: Config, state: &Path) -> Self {
        let mut live = Live::new(path, text, config);
        live.state = Some(state.to_path_buf());
        match live.restore(state) {
            Ok(None) => {}
            Ok(Some(running)) => {
                live.running = running;
                log::info!(
                    "runtime changes of the previous agent restored from {}",
                    state.display()
                );
            }
            Err(e) => log::warn!(
                "runtime state {} not restored ({e}): running the file as it is",
                state.display()
            ),
        }
        live
    }

    /// What runs when the state at `state` is merged with the file; `None` without one.
    fn restore(&self, state: &Path) -> Result<Option<Config>, String> {
        let json = match std::fs::read_to_string(state) {
            Ok(json) => json,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let saved: State = serde_json::from_str(&json).map_err(|e| e.to_string())?;
        let origin = state.display().to_string();
        let base = config::parse(&saved.file, &origin).map_err(|e| e.to_string())?;
        let ran = config::parse(&saved.running, &origin).map_err(|e| e.to_string())?;
        let (target, replaced) = reload::merge(&base, &self.file, &ran);
        reload::check_pools(&target, &ran)?;
        Balancer::from_config(FakeMaps::default(), &target).map_err(|e| e.to_string())?;
        for line in &replaced {
            log::warn!("restoring runtime changes: {line}");
        }
        Ok(Some(target))
    }

    /// What runs.
    #[must_use]
    pub fn running(&self) -> &Config {
        &self.running
    }

    /// Writes the state file (a temporary file renamed over it); a failure is logged.
    pub fn save(&self) {
        let Some(path) = &self.state else {
            return;
        };
        let write = || -> Result<(), String> {
            let state = State {
                file: self.text.clone(),
                running: self.dump()?,
            };
            let json = serde_json::to_string(&state).map_err(|e| e.to_string())?;
            let tmp = with_suffix(path, ".tmp");
            std::fs::write(&tmp, json).map_err(|e| format!("{}: {e}", tmp.display()))?;
            std::fs::rename(&tmp, path).map_err(|e| e.to_string())
        };
        if let Err(e) = write() {
            log::warn!(
                "runtime state {}: {e} (runtime changes will not outlive the agent)",
                path.display()
            );
        }
    }

    /// What `status` shows of it.
    #[must_use]
    pub fn status(&self) -> ConfigStatus {
        ConfigStatus {
            path: self.path.display().to_string(),
            generation: self.generation,
            last_reload: self.last.clone(),
            dump: None,
        }
    }

    /// The running configuration as TOML.
    ///
    /// # Errors
    /// See [`config::dump`].
    pub fn dump(&self) -> Result<String, String> {
        config::dump(&self.text, &self.file, &self.running)
    }

    /// Records a control request the balancer carried out.
    pub fn record(&mut self, request: &Request) {
        reload::record(&mut self.running, request);
    }

    /// The HTTP VIP one of whose rules uses pool `pool`, if any.
    #[must_use]
    pub fn rule_using(&self, pool: &str) -> Option<String> {
        self.running
            .vips
            .iter()
            .find(|v| v.rules.iter().any(|r| r.pool == pool))
            .map(|v| v.name.clone())
    }

    /// Says in `status` where each VIP, pool and backend comes from.
    pub fn set_sources(&self, status: &mut Status) {
        let (file, running) = (&self.file, &self.running);
        for vip in &mut status.vips {
            vip.source = reload::vip_source(file, running, &vip.config.name);
        }
        for pool in &mut status.pools {
            pool.source = reload::pool_source(file, running, &pool.name);
            for b in &mut pool.backends {
                let addr = b.socket_addr();
                b.source = reload::backend_source(file, running, &pool.name, addr);
            }
        }
    }
}

/// The current time as RFC 3339.
fn now() -> String {
    humantime_serde::re::humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl<M: Maps> Agent<M> {
    /// `balancer reload` and SIGHUP: reads the file again and applies what changed. The
    /// summary, or why nothing (or, when a step failed, only part) was applied; either is
    /// logged and kept for `status`.
    pub(super) async fn reload(&mut self) -> Result<String, String> {
        crate::systemd::notify(&crate::systemd::reloading());
        let result = self.try_reload().await;
        crate::systemd::notify(crate::systemd::READY);
        match &result {
            Ok(summary) => log::info!(
                event = "reload",
                ok = true,
                summary = summary.as_str();
                "reload: {summary}"
            ),
            Err(e) => {
                log::error!(event = "reload", ok = false, error = e.as_str(); "reload refused: {e}");
            }
        }
        if let Some(live) = &mut self.live {
            live.last = Some(ReloadStatus {
                at: now(),
                ok: result.is_ok(),
                message: match &result {
                    Ok(s) | Err(s) => s.clone(),
                },
            });
        }
        result
    }

    async fn try_reload(&mut self) -> Result<String, String> {
        let Some(live) = &self.live else {
            return Err("the agent runs without a configuration file".to_owned());
        };
        // Checked against the host as at start, the addresses the agent added itself
        // (its VRRP instances', its HTTP VIPs') not counting as the host's own.
        let host = self.host();
        let (new, text, warnings) =
            config::load_with_text_on(&live.path, host.as_ref()).map_err(|e| e.to_string())?;
        for warning in warnings {
            log::warn!("reload: {warning}");
        }
        reload::check_live(&live.file, &new)?;
        let (target, replaced) = reload::merge(&live.file, &new, &live.running);
        reload::check_pools(&target, &live.running)?;
        // Everything the balancer checks, on a balancer in memory, before anything changes.
        Balancer::from_config(FakeMaps::default(), &target).map_err(|e| {
            format!("the new configuration (with the CLI's changes kept) is refused: {e}")
        })?;
        let plan = reload::plan(&live.running, &target);
        if plan.vrrp {
            vrrp::check_host(&target.vrrp).map_err(|e| format!("{e:#}"))?;
        }
        for line in &replaced {
            log::warn!("reload: {line}");
        }
        // Before the steps: a pool an HTTP VIP no longer uses may go.
        self.lb.set_http_vips(
            target
                .vips
                .iter()
                .filter(|v| v.mode == VipMode::Http)
                .map(|v| (v.name.clone(), v.pool.clone()))
                .collect::<BTreeMap<_, _>>(),
        );
        let total = plan.steps.len();
        for (done, step) in plan.steps.iter().enumerate() {
            if let Err(e) = apply(&mut self.lb, step) {
                self.sync_all();
                if let Some(live) = &self.live {
                    live.save();
                }
                return Err(format!(
                    "{step}: {e}; {done} of {total} changes were applied before it, the rest \
                     not (`balancer config dump` shows what runs)"
                ));
            }
            let live = self.live.as_mut().expect("checked above");
            reload::apply_to_config(&mut live.running, step);
        }
        if plan.http {
            self.reconfigure_http(&target).await?;
        }
        if plan.vrrp {
            self.restart_vrrp(&target).await?;
        }
        let live = self.live.as_mut().expect("checked above");
        live.running = target;
        live.file = new;
        live.text = text;
        if !plan.is_empty() {
            live.generation += 1;
        }
        live.save();
        let running = live.running.clone();
        self.sync_watchers(&running);
        self.sync_all();
        Ok(plan.to_string())
    }

    /// Starts, stops or reconfigures the HTTP proxy for `target`.
    async fn reconfigure_http(&mut self, target: &Config) -> Result<(), String> {
        let lb = &self.lb;
        let result = match &mut self.http {
            Some(http) => {
                let usable = |pool: &str| lb.usable_backends_of(pool).unwrap_or_default();
                http.reconfigure(target, usable).await
            }
            None => crate::l7::Frontend::start(target).await.map(|started| {
                self.http = started;
            }),
        };
        result.map_err(|e| format!("the HTTP proxy: {e:#} (the L4 changes were applied)"))
    }

    /// Restarts the VRRP instances with `target`'s (the service runs them all at once):
    /// Masters resign first, as when the agent stops.
    async fn restart_vrrp(&mut self, target: &Config) -> Result<(), String> {
        if let Some(old) = self.vrrp.take() {
            old.shutdown(super::VRRP_STOP_LIMIT).await;
        }
        let started = super::start_vrrp(target).map_err(|e| {
            format!("VRRP: {e:#} (the other changes were applied; VRRP is stopped)")
        })?;
        self.set_vrrp(started);
        Ok(())
    }
}

/// Applies one step of a plan to the balancer.
fn apply<M: Maps>(lb: &mut Balancer<M>, step: &Step) -> Result<(), BalancerError> {
    match step {
        Step::Settings {
            timeouts,
            nat,
            tunnel,
        } => lb.set_settings(&settings(timeouts, nat, tunnel)),
        Step::AddPool(pool) | Step::ChangePool(pool) => lb.reconfigure_pool(pool),
        Step::DelVip(vip) => lb.del_vip(&vip.name),
        Step::DelBackend { pool, addr } => lb.del_backend(pool, *addr),
        Step::AddBackend { pool, backend } => lb.add_configured_backend(pool, backend),
        Step::ChangeBackend {
            pool,
            backend,
            weight,
            check,
        } => {
            let addr = backend.socket_addr();
            if *weight {
                lb.set_weight(pool, addr, backend.weight)?;
            }
            if *check {
                lb.set_check(pool, addr, backend.check.clone())?;
            }
            Ok(())
        }
        Step::ChangeVip(vip) => lb.update_vip(vip.clone()),
        Step::AddVip(vip) => lb.add_vip(vip.clone()),
        Step::DelPool(name) => lb.del_pool(name),
    }
}

#[cfg(test)]
mod tests {
    use std::ops::ControlFlow;

    use balancer_common::VipMeta;
    use tokio::sync::{mpsc, oneshot};

    use super::*;
    use crate::{
        agent::Event,
        api::{Response, Source},
        health::Checker,
    };

    const FILE: &str = r#"[agent]
interfaces = ["lbc0"]
[nat]
source_address = "10.0.2.1"
[[pool]]
name = "web"
backends = [{ address = "10.0.2.11", port = 80 }]
[[vip]]
name = "web"
address = "10.0.100.1"
port = 80
protocol = "tcp"
pool = "web"
[[vip]]
name = "old"
address = "10.0.100.2"
port = 80
protocol = "tcp"
pool = "web"
"#;

    /// An agent on fake maps running `FILE`, written at a path of its own.
    fn agent(name: &str) -> (Agent<FakeMaps>, PathBuf) {
        let path =
            std::env::temp_dir().join(format!("balancer-live-{name}-{}.toml", std::process::id()));
        std::fs::write(&path, FILE).unwrap();
        let (config, text, _) = config::load_with_text_on(&path, Some(&this_host())).unwrap();
        let lb = Balancer::from_config(FakeMaps::default(), &config).unwrap();
        let (events, _) = mpsc::channel(1);
        let mut agent = Agent::new(lb, Checker::new(events), None, None)
            .with_config(Live::new(&path, text, config));
        agent.read_host = || Ok(this_host());
        (agent, path)
    }

    /// A host that has `FILE`'s SNAT source address.
    fn this_host() -> config::Host {
        config::Host {
            local: vec![("eth0".into(), std::net::Ipv4Addr::new(10, 0, 2, 1).into())],
            ..config::Host::default()
        }
    }

    async fn ask(agent: &mut Agent<FakeMaps>, request: Request) -> Response {
        let (reply, mut answer) = oneshot::channel();
        let flow = agent.handle(Event::Control { request, reply }).await;
        assert_eq!(flow, ControlFlow::Continue(()));
        answer.try_recv().expect("answered at once")
    }

    fn meta(agent: &Agent<FakeMaps>, vip: &str) -> Option<VipMeta> {
        let addr = match vip {
            "web" => [10, 0, 100, 1],
            "old" => [10, 0, 100, 2],
            _ => [10, 0, 100, 3],
        };
        agent
            .lb
            .maps()
            .vips
            .iter()
            .find(|(k, _)| k.addr() == std::net::IpAddr::from(addr))
            .map(|(_, m)| *m)
    }

    #[tokio::test]
    async fn a_reload_applies_the_differences_and_unchanged_vips_keep_their_generation() {
        let (mut agent, path) = agent("apply");
        let web = meta(&agent, "web").unwrap();
        let added = ask(
            &mut agent,
            Request::BackendAdd {
                target: "web".into(),
                address: "10.0.2.13:80".parse().unwrap(),
                weight: 1,
            },
        )
        .await;
        assert!(added.ok, "{added:?}");
        let new = FILE
            .replace(
                "port = 80 }]",
                "port = 80, weight = 2 }, { address = \"10.0.2.12\", port = 80 }]",
            )
            .replace(
                "name = \"old\"\naddress = \"10.0.100.2\"",
                "name = \"new\"\naddress = \"10.0.100.3\"",
            );
        std::fs::write(&path, new).unwrap();
        let answer = ask(&mut agent, Request::Reload).await;
        let status = answer.status.expect("a reload answers with the status");
        let config = status.config.unwrap();
        let last = config.last_reload.unwrap();
        assert!(last.ok);
        assert_eq!(
            last.message,
            "1 VIP added, 1 removed, 1 backend added, 1 changed"
        );
        assert_eq!(config.generation, 2);
        // The unchanged VIP kept its id and generation: its flows carry on.
        let after = meta(&agent, "web").unwrap();
        assert_eq!(
            (after.vip_id, after.generation),
            (web.vip_id, web.generation)
        );
        assert!(meta(&agent, "old").is_none());
        assert!(meta(&agent, "new").is_some());
        // The CLI's backend stays, and says so.
        let pool = &status.pools[0];
        let sources: Vec<(String, u32, Source)> = pool
            .backends
            .iter()
            .map(|b| (b.socket_addr().to_string(), b.weight, b.source))
            .collect();
        assert_eq!(
            sources,
            [
                ("10.0.2.11:80".into(), 2, Source::File),
                ("10.0.2.13:80".into(), 1, Source::Cli),
                ("10.0.2.12:80".into(), 1, Source::File),
            ]
        );
        // The same file again: nothing to do.
        let again = ask(&mut agent, Request::Reload).await.status.unwrap();
        let config = again.config.unwrap();
        assert_eq!(config.last_reload.unwrap().message, "no change");
        assert_eq!(config.generation, 2);
        // The dump is what runs, loadable.
        let dump = ask(&mut agent, Request::ConfigDump).await;
        let text = dump.status.unwrap().config.unwrap().dump.unwrap();
        let loaded = config::parse(&text, "dump").unwrap();
        assert_eq!(loaded.pools[0].backends.len(), 3, "{text}");
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn runtime_changes_outlive_the_agent_and_the_file_wins_where_it_changed() {
        let (mut agent, path) = agent("state");
        let state = path.with_extension("state");
        let _ = std::fs::remove_file(&state);
        let text = std::fs::read_to_string(&path).unwrap();
        let config = config::parse(&text, "x").unwrap();
        agent.live = Some(Live::start(&path, text.clone(), config.clone(), &state));
        for request in [
            Request::BackendAdd {
                target: "web".into(),
                address: "10.0.2.13:80".parse().unwrap(),
                weight: 4,
            },
            Request::BackendWeight {
                target: "web".into(),
                address: "10.0.2.11:80".parse().unwrap(),
                weight: 7,
            },
        ] {
            assert!(ask(&mut agent, request).await.ok);
        }
        // The next agent's file changes 10.0.2.11 itself: its weight is the file's.
        let next = FILE.replace("port = 80 }]", "port = 80, weight = 2 }]");
        let next_config = config::parse(&next, "x").unwrap();
        let live = Live::start(&path, next, next_config, &state);
        let backends: Vec<(String, u32)> = live.running().pools[0]
            .backends
            .iter()
            .map(|b| (b.socket_addr().to_string(), b.weight))
            .collect();
        assert_eq!(
            backends,
            [("10.0.2.11:80".into(), 2), ("10.0.2.13:80".into(), 4)]
        );
        // A state that cannot be read is left aside: the file runs.
        std::fs::write(&state, "{").unwrap();
        let live = Live::start(&path, text, config.clone(), &state);
        assert_eq!(live.running(), &config);
        let _ = std::fs::remove_file(&state);
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn an_invalid_file_or_a_restart_only_change_is_refused_and_changes_nothing() {
        let (mut agent, path) = agent("refuse");
        let before = ask(&mut agent, Request::Status).await.status.unwrap();
        std::fs::write(
            &path,
            FILE.replace("port = 80\nprotocol", "port = 80000\nprotocol"),
        )
        .unwrap();
        let refused = ask(&mut agent, Request::Reload).await;
        assert!(!refused.ok);
        let error = refused.error.unwrap();
        assert_eq!(
            error,
            format!(
                "{}:11:8: vip[0] (\"web\").port: port 80000 is out of range 1..=65535",
                path.display()
            )
        );
        std::fs::write(&path, FILE.replace("[\"lbc0\"]", "[\"lbc1\"]")).unwrap();
        let refused = ask(&mut agent, Request::Reload).await;
        assert!(
            refused
                .error
                .as_deref()
                .unwrap()
                .starts_with("interfaces: changing the attached interfaces needs a restart"),
            "{refused:?}"
        );
        // A SIGHUP with a bad file is logged and kept, the agent runs on.
        std::fs::write(&path, "[agent\n").unwrap();
        assert_eq!(
            agent.handle(Event::Reload { signal: "SIGHUP" }).await,
            ControlFlow::Continue(())
        );
        let after = ask(&mut agent, Request::Status).await.status.unwrap();
        let config = after.config.clone().unwrap();
        let last = config.last_reload.unwrap();
        assert!(!last.ok);
        assert!(
            last.message.starts_with(&format!("{}:1:", path.display())),
            "{}",
            last.message
        );
        assert_eq!(config.generation, 1);
        assert_eq!(after.vips, before.vips);
        // (All but the time since the last health change.)
        let backends = |s: &Status| -> Vec<(String, u32, String)> {
            s.pools
                .iter()
                .flat_map(|p| &p.backends)
                .map(|b| (b.socket_addr().to_string(), b.weight, b.state.clone()))
                .collect()
        };
        assert_eq!(backends(&after), backends(&before));
        let _ = std::fs::remove_file(&path);
    }
}
