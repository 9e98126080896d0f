//! `balancer config dump`: the running configuration as TOML that `run --config` and
//! `check-config` accept. Pools, backends and VIPs that run as the file says are the
//! file's own tables (comments aside), so every setting the file spelled is kept as
//! spelled; what the CLI added or changed is written out (the CLI gives only a VIP's
//! L4 settings, a backend's address and weight, and a pool's name).

use std::net::SocketAddr;

use toml::{Table, Value};

use super::{BackendConfig, Config, VipConfig};

/// What the dump starts with.
const HEADER: &str = "# The running configuration, as `balancer config dump` wrote it.\n";

/// The running configuration `running` as TOML; `file_text` is the file `file` was loaded
/// from.
///
/// # Errors
/// The file's text is no longer TOML (it was when it was loaded), or a value cannot be
/// written.
pub fn dump(file_text: &str, file: &Config, running: &Config) -> Result<String, String> {
    let mut table: Table = toml::from_str(file_text).map_err(|e| e.to_string())?;
    let raw_pools = take_array(&mut table, "pool");
    let raw_vips = take_array(&mut table, "vip");
    let mut pools = Vec::new();
    for pool in &running.pools {
        let raw = find_named(&raw_pools, &pool.name);
        let mut out = raw.cloned().unwrap_or_else(|| named(&pool.name));
        let raw_backends = raw
            .and_then(|t| t.get("backends"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let file_pool = file.pool(&pool.name);
        let backends: Vec<Value> = pool
            .backends
            .iter()
            .map(|b| {
                let from_file = file_pool.and_then(|p| {
                    p.backends
                        .iter()
                        .find(|f| f.socket_addr() == b.socket_addr())
                });
                let raw = raw_backends
                    .iter()
                    .filter_map(Value::as_table)
                    .find(|t| raw_addr(t) == Some(b.socket_addr()));
                match (from_file, raw) {
                    // (Of a backend in the file, the CLI changes only the weight.)
                    (Some(f), Some(raw)) => {
                        let mut raw = raw.clone();
                        if f.weight != b.weight {
                            raw.insert("weight".into(), Value::Integer(b.weight.into()));
                        }
                        Value::Table(raw)
                    }
                    _ => Value::Table(backend_table(b)),
                }
            })
            .collect();
        out.remove("backends");
        if !backends.is_empty() {
            out.insert("backends".into(), Value::Array(backends));
        }
        pools.push(Value::Table(out));
    }
    let vips: Vec<Value> = running
        .vips
        .iter()
        .map(|v| {
            let same = file.vips.iter().any(|f| f == v);
            match find_named(&raw_vips, &v.name) {
                Some(raw) if same => Value::Table(raw.clone()),
                _ => Value::Table(vip_table(v)),
            }
        })
        .collect();
    if !pools.is_empty() {
        table.insert("pool".into(), Value::Array(pools));
    }
    if !vips.is_empty() {
        table.insert("vip".into(), Value::Array(vips));
    }
    let text = toml::to_string(&table).map_err(|e| e.to_string())?;
    Ok(format!("{HEADER}{text}"))
}

/// Removes `key`'s array of tables from `table`.
fn take_array(table: &mut Table, key: &str) -> Vec<Table> {
    match table.remove(key) {
        Some(Value::Array(items)) => items
            .into_iter()
            .filter_map(|v| match v {
                Value::Table(t) => Some(t),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn find_named<'a>(tables: &'a [Table], name: &str) -> Option<&'a Table> {
    tables
        .iter()
        .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
}

fn named(name: &str) -> Table {
    let mut t = Table::new();
    t.insert("name".into(), Value::String(name.to_owned()));
    t
}

/// A backend entry's address and port as written.
fn raw_addr(t: &Table) -> Option<SocketAddr> {
    let address = t.get("address")?.as_str()?.parse().ok()?;
    let port = u16::try_from(t.get("port")?.as_integer()?).ok()?;
    Some(SocketAddr::new(address, port))
}

/// A backend the CLI added: its pool's check applies, as the file's omitted `check` says.
fn backend_table(b: &BackendConfig) -> Table {
    let mut t = Table::new();
    t.insert("address".into(), Value::String(b.address.to_string()));
    t.insert("port".into(), Value::Integer(b.port.into()));
    t.insert("weight".into(), Value::Integer(b.weight.into()));
    t
}

/// A VIP the CLI added (always L4: the control protocol carries no rules).
fn vip_table(v: &VipConfig) -> Table {
    let mut t = named(&v.name);
    let mut put = |key: &str, value: Value| t.insert(key.to_owned(), value);
    put("address", Value::String(v.address.to_string()));
    put("port", Value::Integer(v.port.into()));
    put("protocol", Value::String(v.protocol.to_string()));
    put("scheduler", Value::String(v.scheduler.to_string()));
    put("ring_size", Value::Integer(v.ring_size.into()));
    put("pool", Value::String(v.pool.clone()));
    put("on_all_down", Value::String(v.on_all_down.to_string()));
    put("forwarding", Value::String(v.forwarding.to_string()));
    if v.forwarding == super::Forwarding::Tunnel {
        put("encapsulation", Value::String(v.encapsulation.to_string()));
    }
    put("mode", Value::String(v.mode.to_string()));
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        parse, testing::ORIGIN, AllDownPolicy, CheckConfig, DownPolicy, PoolBalance, PoolConfig,
        Protocol, Scheduler, VipMode,
    };

    const FILE: &str = r#"# a comment the dump drops
[agent]
interfaces = ["lbc0"]

[timeouts]
tcp = "10m"

[[pool]]
name = "web"
check = { type = "tcp", interval = "1s" }
backends = [
  { address = "10.0.2.11", port = 80, weight = 2, check = { port = 8080 } },
  { address = "10.0.2.12", port = 80 },
]

[[vip]]
name = "web"
address = "10.0.100.1"
port = 80
protocol = "tcp"
pool = "web"
"#;

    #[test]
    fn a_dump_loads_as_what_runs_and_dumps_again_the_same() {
        let file = parse(FILE, ORIGIN).unwrap();
        // What CLI commands make of it: a weight, a backend deleted and one added, a VIP
        // added with a pool of its own.
        let mut running = file.clone();
        let web = &mut running.pools[0];
        web.backends[0].weight = 5;
        web.backends.remove(1);
        let added = BackendConfig {
            address: "10.0.2.13".parse().unwrap(),
            port: 80,
            weight: 3,
            ..web.backends[0].clone()
        };
        web.backends.push(BackendConfig {
            check: web.check.clone(),
            ..added
        });
        running.pools.push(PoolConfig {
            name: "dns".into(),
            backends: vec![BackendConfig {
                address: "10.0.2.21".parse().unwrap(),
                port: 53,
                weight: 1,
                check: CheckConfig::default(),
                cookie: None,
                maxconn: 0,
            }],
            check: CheckConfig::default(),
            on_backend_down: DownPolicy::default(),
            balance: PoolBalance::default(),
            discovery: None,
        });
        running.vips.push(VipConfig {
            name: "dns".into(),
            address: "10.0.100.2".parse().unwrap(),
            port: 53,
            protocol: Protocol::Udp,
            scheduler: Scheduler::RoundRobin,
            ring_size: 251,
            pool: "dns".into(),
            on_all_down: AllDownPolicy::Pass,
            forwarding: crate::config::Forwarding::Nat,
            encapsulation: crate::config::Encapsulation::Ipip,
            mode: VipMode::L4,
            rules: Vec::new(),
        });
        let text = dump(FILE, &file, &running).unwrap();
        let loaded = parse(&text, ORIGIN).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(loaded, running, "{text}");
        // The file's own spelling is kept (the backend's check override).
        assert!(text.contains("port = 8080"), "{text}");
        assert_eq!(dump(&text, &loaded, &loaded).unwrap(), text);
        // Nothing changed: the file's tables, as TOML writes them.
        let same = dump(FILE, &file, &file).unwrap();
        assert_eq!(parse(&same, ORIGIN).unwrap(), file);
    }
}
