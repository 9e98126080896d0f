//! End-to-end: the telemetry listener of an agent in the namespace topology: `/metrics`
//! counters move under traffic, `/status.json` is `balancer status --json`, `/stats` lists
//! the backends and turns a failed one `down`, basic authentication and the admin drain.

use std::time::{Duration, Instant};

use balancer_tests::{default_config, Running, Topology, DEFAULT_TIMEOUT};

const LISTEN: &str = "127.0.0.1:9901";
const AUTH: &str = "ops:s3cret";

/// The default configuration with a fast HTTP check on pool "web" and telemetry on, with
/// authentication and admin mode.
fn config(topo: &Topology) -> String {
    let config = default_config(topo, "maglev");
    let marker = "name = \"web\"\nbackends = [";
    assert!(
        config.contains(marker),
        "unexpected default config:\n{config}"
    );
    let check = r#"check = { type = "http", path = "/", interval = "200ms", timeout = "150ms", rise = 2, fall = 2 }"#;
    let config = config.replacen(marker, &format!("name = \"web\"\n{check}\nbackends = ["), 1);
    format!(
        "{config}\n[telemetry]\nlisten = \"{LISTEN}\"\nadmin = true\nrefresh = \"1s\"\n\
         auth = {{ user = \"ops\", password = \"s3cret\" }}\n"
    )
}

/// `curl` in the lb namespace: (HTTP status, body).
fn curl(run: &Running, path: &str, extra: &[&str]) -> (u16, String) {
    let url = format!("http://{LISTEN}{path}");
    let mut args = vec!["curl", "-sS", "-m", "5", "-w", "\n%{http_code}"];
    args.extend_from_slice(extra);
    args.push(&url);
    let out = run
        .topo
        .lb()
        .run(&args)
        .unwrap_or_else(|e| panic!("curl {url}: {e:#}"));
    let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
    (
        code.parse()
            .unwrap_or_else(|_| panic!("curl {url}: no status in {out:?}")),
        body.to_owned(),
    )
}

fn get(run: &Running, path: &str) -> String {
    let (code, body) = curl(run, path, &["-u", AUTH]);
    assert_eq!(code, 200, "GET {path}: {body}");
    body
}

/// The value of the sample `prefix` (name and labels as written) in `/metrics`.
fn metric(run: &Running, prefix: &str) -> f64 {
    let text = get(run, "/metrics");
    let line = text
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in /metrics:\n{text}"));
    line.rsplit_once(' ').unwrap().1.parse().unwrap()
}

/// `status` without the fields that change between two reads (ages, latencies, counters).
fn without_timing(mut status: serde_json::Value) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for key in ["since_change_secs", "last_check", "counters", "global"] {
                    map.remove(key);
                }
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut status);
    status
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEFAULT_TIMEOUT;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn metrics_status_page_auth_and_admin() {
    let mut run = Running::start_with(3, config);
    let web1 = run.topo.backend_http(1).to_string();
    let flows = "balancer_vip_flows_total{vip=\"web\",pool=\"web\"}";
    wait_for("the backends' first checks", || {
        get(&run, "/status.json")
            .matches("\"state\": \"active\"")
            .count()
            >= 6
    });

    // Counters move under traffic.
    let before = metric(&run, flows);
    let tally = run
        .client
        .http_get_many(Topology::vip_http(), 20, DEFAULT_TIMEOUT);
    assert!(tally.failures.is_empty(), "{tally}");
    let after = metric(&run, flows);
    assert!(after >= before + 20.0, "{flows}: {before} -> {after}");
    let client_packets = format!(
        "balancer_backend_packets_total{{pool=\"web\",backend=\"{web1}\",direction=\"client\"}}"
    );
    assert!(metric(&run, &client_packets) > 0.0);

    // /status.json is `balancer status --json`, timing aside.
    let served: serde_json::Value = serde_json::from_str(&get(&run, "/status.json")).unwrap();
    assert_eq!(
        without_timing(served),
        without_timing(run.agent.status_json())
    );

    // Without the password: 401 with a challenge, on every path.
    for path in ["/metrics", "/status.json", "/stats"] {
        let (code, _) = curl(&run, path, &[]);
        assert_eq!(code, 401, "{path} without auth");
    }
    let (code, _) = curl(&run, "/stats", &["-u", "ops:wrong"]);
    assert_eq!(code, 401, "a wrong password");

    // The page lists every backend with its state; a killed one turns down (red).
    let page = get(&run, "/stats");
    for i in 1..=3 {
        let row = format!(
            "data-backend=\"{}\" data-state=\"active\"",
            run.topo.backend_http(i)
        );
        assert!(page.contains(&row), "{row} not on the page:\n{page}");
    }
    run.servers.stop(1);
    let down_row = format!("data-backend=\"{web1}\" data-state=\"down\"");
    wait_for("backend 1 down on the page", || {
        get(&run, "/stats").contains(&down_row)
    });
    let transitions =
        format!("balancer_backend_health_transitions_total{{pool=\"web\",backend=\"{web1}\"}}");
    assert!(metric(&run, &transitions) >= 1.0);

    // The admin drain: refused without auth, applied with it (as `backend weight` would).
    let web2 = run.topo.backend_http(2).to_string();
    let form = format!("pool=web&backend={web2}&action=drain");
    let (code, _) = curl(&run, "/stats/action", &["-d", &form]);
    assert_eq!(code, 401, "an admin action without auth");
    let (code, body) = curl(&run, "/stats/action", &["-u", AUTH, "-d", &form]);
    assert_eq!(code, 303, "the admin drain: {body}");
    let drained = format!("data-backend=\"{web2}\" data-state=\"drained\"");
    assert!(get(&run, "/stats").contains(&drained));
    let weight = format!("balancer_backend_weight{{pool=\"web\",backend=\"{web2}\"}}");
    assert_eq!(metric(&run, &weight).to_string(), "0");
}
