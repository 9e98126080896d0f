//! End-to-end: `balancer run --log-format json` (here through `BALANCER_LOG_FORMAT`, as a
//! unit's `Environment=` would set it): every line of the agent's log is one JSON object,
//! and what an operator follows (a backend's health transition, a reload applied, a reload
//! refused, a weight change) is there at info or above with its fields.

use std::time::{Duration, Instant};

use balancer_tests::{default_config, Running, DEFAULT_TIMEOUT};

/// The agent's log lines, each parsed (a line that is not JSON fails the test).
fn lines(run: &Running) -> Vec<serde_json::Value> {
    run.agent
        .log()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

/// The first line whose fields include all of `fields`, waiting for it.
fn wait_line(run: &Running, fields: &[(&str, serde_json::Value)]) -> serde_json::Value {
    let deadline = Instant::now() + DEFAULT_TIMEOUT;
    loop {
        let found = lines(run)
            .into_iter()
            .find(|l| fields.iter().all(|(k, v)| &l["fields"][k] == v));
        if let Some(line) = found {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {fields:?}; the log:\n{}",
            run.agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn json_logs_carry_transitions_reloads_and_errors_with_fields() {
    // Set before the agent starts (its environment is this process's); this test binary
    // runs no other test.
    std::env::set_var("BALANCER_LOG_FORMAT", "json");
    let mut run = Running::start_with(2, |topo| {
        let config = default_config(topo, "maglev");
        let check = r#"check = { type = "tcp", interval = "200ms", timeout = "150ms", rise = 1, fall = 1 }"#;
        config.replacen(
            "name = \"web\"\nbackends = [",
            &format!("name = \"web\"\n{check}\nbackends = ["),
            1,
        )
    });
    let web1 = run.topo.backend_http(1).to_string();
    let all = lines(&run);
    assert!(!all.is_empty(), "an empty log");
    for line in &all {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(line[key].is_string(), "no {key}: {line}");
        }
    }

    // A health transition: level info, with pool, backend, from and to.
    run.servers.stop(1);
    let down = wait_line(
        &run,
        &[
            ("event", "health".into()),
            ("backend", web1.clone().into()),
            ("to", "DOWN".into()),
        ],
    );
    assert_eq!(down["level"], "INFO", "{down}");
    assert_eq!(down["fields"]["pool"], "web", "{down}");
    assert_eq!(down["fields"]["from"], "UP", "{down}");
    assert!(down["fields"]["reason"].is_string(), "{down}");

    // A weight change from the CLI.
    let web2 = run.topo.backend_http(2).to_string();
    run.agent
        .cli_ok(&["backend", "weight", "web", &web2, "3"])
        .unwrap();
    let weight = wait_line(&run, &[("event", "weight".into()), ("to", 3.into())]);
    assert_eq!(weight["fields"]["backend"], web2.as_str(), "{weight}");

    // A reload applied, then one refused: an error, with why.
    run.agent.cli_ok(&["reload"]).unwrap();
    let applied = wait_line(&run, &[("event", "reload".into()), ("ok", true.into())]);
    assert_eq!(applied["level"], "INFO", "{applied}");
    std::fs::write(run.agent.config_path(), "[agent\n").unwrap();
    let refused = run.agent.cli(&["reload"]);
    assert!(!refused.success(), "a broken file was reloaded: {refused}");
    let error = wait_line(&run, &[("event", "reload".into()), ("ok", false.into())]);
    assert_eq!(error["level"], "ERROR", "{error}");
    assert!(
        error["fields"]["error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{error}"
    );
}
