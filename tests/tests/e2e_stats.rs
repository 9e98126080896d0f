//! End-to-end: the telemetry listener of an agent in the namespace topology: `/metrics`
//! counters move under traffic, `/status.json` is `balancer status --json`, `/stats` lists
//! the backends and turns a failed one `down`, basic authentication and the admin drain;
//! then the page as headless Chromium renders it (inside the lb namespace), screenshot
//! included.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use balancer_tests::util::TempDir;
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

/// `status` without the fields that change between two reads (ages, latencies, counters,
/// the active flows of a census taken in between).
fn without_timing(mut status: serde_json::Value) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for key in [
                    "since_change_secs",
                    "last_check",
                    "counters",
                    "global",
                    "active_flows",
                    "flow_census",
                ] {
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

/// Headless Chromium in the lb namespace, with a profile of its own.
struct Browser {
    profile: TempDir,
}

impl Browser {
    /// Chromium's arguments: root needs `--no-sandbox`; the profile is a fresh directory,
    /// so nothing is shared with another run.
    fn args(&self) -> Vec<String> {
        vec![
            "timeout".into(),
            "60".into(),
            "chromium".into(),
            "--headless".into(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--no-first-run".into(),
            format!("--user-data-dir={}", self.profile.path().display()),
            "--window-size=1400,900".into(),
        ]
    }

    /// The page's URL with the credentials in it (Chromium answers the 401 challenge with
    /// them, as a person typing them into its dialog would).
    fn url() -> String {
        format!("http://{AUTH}@{LISTEN}/stats")
    }

    /// The DOM Chromium rendered from `/stats`.
    fn dump_dom(&self, run: &Running) -> String {
        let mut args = self.args();
        args.extend(["--dump-dom".into(), Self::url()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let dom = run
            .topo
            .lb()
            .run(&args)
            .unwrap_or_else(|e| panic!("chromium --dump-dom: {e:#}"));
        assert!(
            dom.contains("<table"),
            "no table in the rendered page:\n{dom}"
        );
        dom
    }

    fn screenshot(&self, run: &Running, to: &Path) {
        let mut args = self.args();
        args.extend([format!("--screenshot={}", to.display()), Self::url()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run.topo
            .lb()
            .run(&args)
            .unwrap_or_else(|e| panic!("chromium --screenshot: {e:#}"));
        let png = std::fs::read(to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
        assert!(png.starts_with(b"\x89PNG"), "{} is not a PNG", to.display());
    }
}

/// A backend's row in the rendered DOM: its opening tag and its cells' text.
fn row(dom: &str, backend: &str) -> (String, Vec<String>) {
    let marker = format!("data-backend=\"{backend}\"");
    let at = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no row for {backend} in the rendered page:\n{dom}"));
    let start = dom[..at].rfind("<tr").expect("the row's <tr>");
    let end = at + dom[at..].find("</tr>").expect("the row's </tr>");
    let html = &dom[start..end];
    let tag = html[..html.find('>').unwrap()].to_owned();
    let cells = html
        .split("<td")
        .skip(1)
        .map(|cell| text_of(&cell[cell.find('>').unwrap() + 1..]))
        .collect();
    (tag, cells)
}

/// The text of an HTML fragment: tags dropped, whitespace collapsed.
fn text_of(html: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An attribute's value in a tag as Chromium serializes it (`name="value"`).
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    Some(&tag[at..at + tag[at..].find('"')?])
}

/// The form whose button is `action` in `backend`'s row, as a browser would submit it on a
/// click: (its action, its fields URL-encoded).
fn form(dom: &str, backend: &str, action: &str) -> (String, String) {
    let at = dom.find(&format!("data-backend=\"{backend}\"")).unwrap();
    let row = &dom[at..at + dom[at..].find("</tr>").unwrap()];
    let button = format!("value=\"{action}\"");
    let form = row
        .split("<form")
        .skip(1)
        .map(|f| &f[..f.find("</form>").unwrap()])
        .find(|f| f.contains(&button))
        .unwrap_or_else(|| panic!("no {action} form for {backend}:\n{row}"));
    let target = attr(form, "action").expect("the form's action").to_owned();
    assert_eq!(attr(form, "method"), Some("post"), "{form}");
    let mut fields = Vec::new();
    for tag in form.split('<').skip(1) {
        let tag = format!(" {}", &tag[..tag.find('>').unwrap_or(tag.len())]);
        let submits = tag.starts_with(" button") && tag.contains(&button);
        let hidden = tag.starts_with(" input") && attr(&tag, "type") == Some("hidden");
        if submits || hidden {
            let (name, value) = (attr(&tag, "name").unwrap(), attr(&tag, "value").unwrap());
            fields.push(format!("{}={}", urlencode(name), urlencode(value)));
        }
    }
    (target, fields.join("&"))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// Where the screenshot goes: `target/results/` of the workspace.
fn results_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/results");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir.canonicalize().unwrap()
}

#[test]
fn the_stats_page_in_a_real_browser() {
    assert!(
        std::process::Command::new("chromium")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "chromium is missing: `cargo xtask setup` installs it (Debian package chromium)"
    );
    let mut run = Running::start_with(3, config);
    let browser = Browser {
        profile: TempDir::new("balancer-chromium").unwrap(),
    };
    let [web1, web2, web3] = [1, 2, 3].map(|i| run.topo.backend_http(i).to_string());
    wait_for("the backends' first checks", || {
        get(&run, "/status.json")
            .matches("\"state\": \"active\"")
            .count()
            >= 6
    });

    // Every backend is listed, active (green); its flow counter moves under traffic.
    let dom = browser.dump_dom(&run);
    for backend in [&web1, &web2, &web3] {
        let (tag, cells) = row(&dom, backend);
        assert_eq!(attr(&tag, "data-state"), Some("active"), "{tag}");
        assert_eq!(cells[1], "active", "{backend}: {cells:?}");
    }
    let flows = |dom: &str| -> u64 {
        [&web1, &web2, &web3]
            .iter()
            .map(|b| {
                let cells = row(dom, b).1;
                cells[4]
                    .parse::<u64>()
                    .unwrap_or_else(|_| panic!("flows cell {:?} of {b}", cells[4]))
            })
            .sum()
    };
    let before = flows(&dom);
    let tally = run
        .client
        .http_get_many(Topology::vip_http(), 30, DEFAULT_TIMEOUT);
    assert!(tally.failures.is_empty(), "{tally}");
    let after = flows(&browser.dump_dom(&run));
    assert!(
        after >= before + 30,
        "flows on the page: {before} -> {after}"
    );

    // A backend that goes down turns red: its row and its state badge take the class the
    // page's style paints red.
    run.servers.stop(1);
    wait_for("backend 1 down on the page", || {
        get(&run, "/stats").contains(&format!("data-backend=\"{web1}\" data-state=\"down\""))
    });
    let dom = browser.dump_dom(&run);
    let (tag, cells) = row(&dom, &web1);
    assert_eq!(attr(&tag, "class"), Some("down"), "{tag}");
    assert_eq!(cells[1], "down", "{cells:?}");
    assert!(
        dom.contains("<span class=\"state down\">down</span>")
            && dom.contains(
                ".state.down,.state.FAULT,.state.missing,.state.failed{background:#c62828}"
            )
            && dom.contains("tr.down td{background:#fdecea}"),
        "the down badge is not painted red:\n{dom}"
    );

    // The admin drain, through the page: the form Chromium rendered for backend 2, posted
    // as a click on its button would post it (same fields, the page's Origin).
    let (action, fields) = form(&dom, &web2, "drain");
    assert_eq!(action, "/stats/action");
    let origin = format!("Origin: http://{LISTEN}");
    let (code, body) = curl(&run, &action, &["-u", AUTH, "-H", &origin, "-d", &fields]);
    assert_eq!(code, 303, "the page's drain form ({fields}): {body}");
    let dom = browser.dump_dom(&run);
    let (tag, cells) = row(&dom, &web2);
    assert_eq!(attr(&tag, "data-state"), Some("drained"), "{tag}");
    assert_eq!(cells[3], "0", "weight of the drained backend: {cells:?}");
    // The drained backend offers "enable" now, with the weight it had.
    let (_, enable) = form(&dom, &web2, "enable");
    assert!(
        enable.contains("action=enable") && enable.contains("weight="),
        "{enable}"
    );

    let shot = results_dir().join("stats.png");
    browser.screenshot(&run, &shot);
    println!("screenshot of the stats page: {}", shot.display());
}
