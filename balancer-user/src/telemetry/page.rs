//! `/stats`: one self-contained HTML page (inline CSS, no script, nothing loaded from
//! elsewhere) that reloads itself: per VIP its pool's backends with their state in colour,
//! time since the change, weight, flows (total and current), rates, bytes and check; HTTP
//! VIPs; VRRP instances; interfaces. In admin mode each backend has forms that post to
//! `/stats/action`.

use std::fmt::Write as _;
use std::time::Duration;

use super::rates::{backend_key, http_key, vip_key, Rate, Rates};
use crate::api::{ActiveFlows, BackendStatus, PoolStatus, Status};

/// How the page is drawn.
pub struct PageOptions {
    pub refresh: Duration,
    pub admin: bool,
}

/// The badges' colours are scoped to `.state`: a row's class is its state too, and only a
/// down row is tinted (pale red), so that the page stays readable.
const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1em 2em;color:#222}\
h1{font-size:1.3em}h2{font-size:1.1em;margin:1.4em 0 .4em}\
table{border-collapse:collapse;margin-bottom:.5em}\
th,td{padding:3px 9px;border-bottom:1px solid #ddd;text-align:right}\
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}\
.state{font-weight:bold;color:#fff;border-radius:3px;padding:1px 6px}\
.state.active,.state.up,.state.MASTER,.state.attached{background:#2e7d32}\
.state.down,.state.FAULT,.state.missing,.state.failed{background:#c62828}\
.state.drained,.state.BACKUP{background:#1565c0}.state.unchecked,.state.INIT,.state.waiting{background:#757575}\
tr.down td{background:#fdecea}form{display:inline;margin:0}input[type=number]{width:4.5em}\
.muted{color:#777}";

/// HTML-escapes `text` into `out`.
fn escape(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    escape(&mut out, text);
    out
}

/// `1.2 k`, `3.4 M`: counts and bytes as a person reads them.
#[expect(clippy::cast_precision_loss, reason = "shown rounded")]
fn human(n: u64) -> String {
    scaled(n as f64)
}

fn scaled(v: f64) -> String {
    const UNITS: [&str; 5] = ["", " k", " M", " G", " T"];
    let mut v = v;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 && v.fract() == 0.0 {
        format!("{v}")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

/// `42s`, `5m12s`, `3h04m`, `2d03h`.
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "whole seconds of a non-negative age"
)]
fn age(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// Current (active) flows: `-` before the agent's first census.
fn current(flows: Option<ActiveFlows>) -> String {
    flows.map_or_else(|| "-".to_owned(), |f| human(f.total))
}

fn rate_cells(out: &mut String, rate: Option<Rate>) {
    match rate {
        Some(r) => {
            let _ = write!(
                out,
                "<td>{}/s</td><td>{}/s</td><td>{}B/s</td>",
                scaled(r.flows),
                scaled(r.packets),
                scaled(r.bytes)
            );
        }
        None => out.push_str("<td class=muted>-</td><td class=muted>-</td><td class=muted>-</td>"),
    }
}

/// The page for `status`.
#[must_use]
pub fn render(status: &Status, rates: &Rates, options: &PageOptions) -> String {
    let mut out = String::with_capacity(4096 + 600 * status.pools.len());
    let _ = write!(
        out,
        "<!DOCTYPE html><html><head><meta charset=utf-8>\
         <meta http-equiv=refresh content={}><title>balancer stats</title>\
         <style>{STYLE}</style></head><body><h1>balancer {}</h1><p class=muted>",
        options.refresh.as_secs().max(1),
        env!("CARGO_PKG_VERSION")
    );
    if let Some(config) = &status.config {
        let _ = write!(
            out,
            "configuration {} (generation {})",
            esc(&config.path),
            config.generation
        );
        if let Some(reload) = &config.last_reload {
            let _ = write!(
                out,
                "; last reload {} at {}: {}",
                if reload.ok { "applied" } else { "refused" },
                esc(&reload.at),
                esc(&reload.message)
            );
        }
        out.push_str(". ");
    }
    match rates.span() {
        Some(span) if span >= Duration::from_millis(100) => {
            let _ = write!(out, "Rates over the last {}.", age(span.as_secs_f64()));
        }
        _ => out.push_str("Rates appear at the next refresh."),
    }
    // Current flows are the agent's last count of the connection table.
    if let Some(age_secs) = status.flow_census.as_ref().and_then(|c| c.age_secs) {
        let _ = write!(out, " Current flows counted {} ago.", age(age_secs));
    }
    out.push_str("</p>");
    l4_vips(&mut out, status, rates, options);
    http_vips(&mut out, status, rates);
    vrrp(&mut out, status);
    interfaces(&mut out, status);
    data_plane(&mut out, status);
    out.push_str("</body></html>\n");
    out
}

fn l4_vips(out: &mut String, status: &Status, rates: &Rates, options: &PageOptions) {
    for vip in &status.vips {
        let c = &vip.config;
        if c.mode == crate::config::VipMode::Http {
            continue;
        }
        let _ = write!(
            out,
            "<h2 id=\"vip-{name}\">VIP {name} <span class=muted>{} {} &rarr; pool {}, \
             {} active backend(s), {} current flows, {} flows, {}B in, {}B out</span></h2>",
            c.socket_addr(),
            c.protocol,
            esc(&c.pool),
            vip.active_backends,
            current(vip.active_flows),
            human(vip.counters.new_flows),
            human(vip.counters.bytes),
            human(vip.counters.reply_bytes),
            name = esc(&c.name),
        );
        out.push_str("<table><tr><th></th><th>flows</th><th>packets</th><th>bytes</th></tr>");
        out.push_str("<tr><td>rate</td>");
        rate_cells(out, rates.rate(&vip_key(&c.name)));
        out.push_str("</tr></table>");
        if let Some(pool) = status.pools.iter().find(|p| p.name == c.pool) {
            backends(out, pool, rates, options);
        }
    }
}

fn backends(out: &mut String, pool: &PoolStatus, rates: &Rates, options: &PageOptions) {
    out.push_str(
        "<table class=backends><tr><th>backend</th><th>state</th><th>since</th>\
         <th>weight</th><th>flows</th><th>current</th><th>flows/s</th><th>packets/s</th><th>bytes/s</th>\
         <th>bytes in</th><th>bytes out</th><th>check</th><th>latency</th><th>last check</th>",
    );
    if options.admin {
        out.push_str("<th>admin</th>");
    }
    out.push_str("</tr>");
    for b in &pool.backends {
        backend_row(out, &pool.name, b, rates, options);
    }
    out.push_str("</table>");
}

fn backend_row(
    out: &mut String,
    pool: &str,
    b: &BackendStatus,
    rates: &Rates,
    options: &PageOptions,
) {
    let addr = b.socket_addr().to_string();
    let key = backend_key(pool, &addr);
    let _ = write!(
        out,
        "<tr class=\"{state}\" data-backend=\"{addr}\" data-state=\"{state}\"><td>{addr}</td>\
         <td><span class=\"state {state}\">{state}</span></td><td title=\"{reason}\">{}</td>\
         <td>{}</td><td>{}</td><td>{}</td>",
        age(b.since_change_secs),
        b.weight,
        human(b.counters.new_flows),
        current(b.active_flows),
        state = esc(&b.state),
        reason = esc(&b.change_reason),
    );
    rate_cells(out, rates.rate(&key));
    let _ = write!(
        out,
        "<td>{}B</td><td>{}B</td><td>{}</td>",
        human(b.counters.bytes),
        human(b.counters.reply_bytes),
        esc(&b.check)
    );
    match &b.last_check {
        Some(check) => {
            let _ = write!(
                out,
                "<td>{:.1} ms</td><td><span class=\"state {}\">{}</span> {}</td>",
                check.latency_ms,
                if check.ok { "up" } else { "down" },
                if check.ok { "ok" } else { "failed" },
                esc(&check.reason)
            );
        }
        None => out.push_str("<td class=muted>-</td><td class=muted>-</td>"),
    }
    if options.admin {
        admin_forms(out, pool, &addr, b.weight, rates.last_weight(&key));
    }
    out.push_str("</tr>");
}

/// Drain or enable, and set the weight; each a form posting to `/stats/action`.
fn admin_forms(out: &mut String, pool: &str, addr: &str, weight: u32, last: Option<u32>) {
    let hidden = format!(
        "<input type=hidden name=pool value=\"{}\"><input type=hidden name=backend value=\"{addr}\">",
        esc(pool)
    );
    out.push_str("<td>");
    if weight > 0 {
        let _ = write!(
            out,
            "<form method=post action=/stats/action>{hidden}\
             <button name=action value=drain>drain</button></form> "
        );
    } else {
        let _ = write!(
            out,
            "<form method=post action=/stats/action>{hidden}\
             <input type=hidden name=weight value={}>\
             <button name=action value=enable>enable</button></form> ",
            last.unwrap_or(1)
        );
    }
    let _ = write!(
        out,
        "<form method=post action=/stats/action>{hidden}\
         <input type=number name=weight min=0 max={} value={weight}>\
         <button name=action value=weight>set weight</button></form></td>",
        crate::config::MAX_WEIGHT
    );
}

fn http_vips(out: &mut String, status: &Status, rates: &Rates) {
    for h in &status.http {
        let _ = write!(
            out,
            "<h2>HTTP VIP {} <span class=muted>{} &mdash; {} requests ({} active, {} queued), \
             {} retries, {}B in, {}B out</span></h2><table><tr><th>responses</th>",
            esc(&h.name),
            h.listen,
            human(h.requests),
            h.active_requests,
            h.queued,
            h.retries,
            human(h.bytes_in),
            human(h.bytes_out),
        );
        for class in h.responses.keys() {
            let _ = write!(out, "<th>{}</th>", esc(class));
        }
        out.push_str("<th>requests/s</th></tr><tr><td>count</td>");
        for n in h.responses.values() {
            let _ = write!(out, "<td>{}</td>", human(*n));
        }
        match rates.rate(&http_key(&h.name)) {
            Some(r) => {
                let _ = write!(out, "<td>{}/s</td>", scaled(r.flows));
            }
            None => out.push_str("<td class=muted>-</td>"),
        }
        out.push_str(
            "</tr></table><table><tr><th>backend</th><th>requests</th><th>active</th>\
             <th>errors</th></tr>",
        );
        for b in &h.backends {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                b.address,
                human(b.requests),
                b.active,
                human(b.errors)
            );
        }
        out.push_str("</table>");
    }
}

fn vrrp(out: &mut String, status: &Status) {
    if status.vrrp.is_empty() {
        return;
    }
    out.push_str(
        "<h2>VRRP</h2><table><tr><th>instance</th><th>state</th><th>since</th>\
         <th>interface</th><th>VRID</th><th>priority</th><th>master</th><th>adverts \
         sent</th><th>received</th><th>errors</th><th>reason</th></tr>",
    );
    for i in &status.vrrp {
        let master = i.master.map(|m| m.to_string()).unwrap_or_default();
        let errors: u64 = i.errors.values().sum();
        let _ = write!(
            out,
            "<tr><td>{}</td><td><span class=\"state {state}\">{state}</span></td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{} ({})</td><td>{master}</td><td>{}</td><td>{}</td>\
             <td>{errors}</td><td>{}</td></tr>",
            esc(&i.name),
            age(i.since_change_secs),
            esc(&i.interface),
            i.vrid,
            i.effective_priority,
            i.priority,
            human(i.adverts_sent),
            human(i.adverts_received),
            esc(&i.reason),
            state = esc(&i.state),
        );
    }
    out.push_str("</table>");
}

fn interfaces(out: &mut String, status: &Status) {
    out.push_str(
        "<h2>Interfaces</h2><table><tr><th>interface</th><th>state</th><th>since</th>\
         <th>mode</th><th>error</th></tr>",
    );
    for i in &status.interfaces {
        let _ = write!(
            out,
            "<tr><td>{}</td><td><span class=\"state {state}\">{state}</span></td><td>{}</td>\
             <td>{}</td><td>{}</td></tr>",
            esc(&i.name),
            age(i.since_change_secs),
            esc(i.mode.as_deref().unwrap_or("")),
            esc(i.error.as_deref().unwrap_or("")),
            state = i.state.as_str(),
        );
    }
    out.push_str("</table>");
}

fn data_plane(out: &mut String, status: &Status) {
    out.push_str("<h2>Data plane</h2><table><tr><th>counter</th><th>packets</th></tr>");
    for (name, n) in status.global.iter().filter(|(_, n)| **n > 0) {
        let _ = write!(out, "<tr><td>{}</td><td>{}</td></tr>", esc(name), human(*n));
    }
    out.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{age, render, scaled, PageOptions};
    use crate::telemetry::metrics::tests::status;
    use crate::telemetry::rates::Rates;

    fn options(admin: bool) -> PageOptions {
        PageOptions {
            refresh: Duration::from_secs(5),
            admin,
        }
    }

    #[test]
    fn backends_are_listed_with_their_state_and_forms_only_in_admin_mode() {
        let mut s = status(1, 3);
        s.pools[0].backends[0].change_reason = "<script>".into();
        let mut rates = Rates::new(Duration::from_secs(10));
        rates.record(Instant::now(), &s);
        let page = render(&s, &rates, &options(false));
        assert!(page.contains("<meta http-equiv=refresh content=5>"));
        for (addr, state) in [
            ("10.0.0.0:80", "active"),
            ("10.0.0.1:80", "drained"),
            ("10.0.0.2:80", "down"),
        ] {
            let row = format!("data-backend=\"{addr}\" data-state=\"{state}\"");
            assert!(page.contains(&row), "{row} not in {page}");
        }
        assert!(!page.contains("<script>") && page.contains("&lt;script&gt;"));
        assert!(!page.contains("<form"));
        // Nothing the page loads leaves the machine.
        assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("src="));
        let admin = render(&s, &rates, &options(true));
        assert!(admin.contains("value=drain") && admin.contains("value=enable"));
        assert!(admin.contains("action=/stats/action"));
    }

    #[test]
    fn current_flows_are_the_last_census() {
        let mut s = status(1, 3);
        let rates = Rates::new(Duration::from_secs(10));
        // A backend's cells: address, state, since, weight, flows, current, ...
        let current = |page: &str, addr: &str| -> String {
            let at = page.find(&format!("data-backend=\"{addr}\"")).unwrap();
            let row = &page[at..at + page[at..].find("</tr>").unwrap()];
            let cell = row.split("<td").nth(6).unwrap();
            cell[cell.find('>').unwrap() + 1..cell.find("</td>").unwrap()].to_owned()
        };
        let page = render(&s, &rates, &options(false));
        assert!(page.contains("<th>flows</th><th>current</th>"));
        assert_eq!(current(&page, "10.0.0.1:80"), "2");
        assert!(page.contains("10 current flows"), "{page}");
        assert!(page.contains("Current flows counted 2s ago."), "{page}");
        s.pools[0].backends[1].active_flows = None;
        s.flow_census = None;
        let page = render(&s, &rates, &options(false));
        assert_eq!(
            current(&page, "10.0.0.1:80"),
            "-",
            "before the first census"
        );
        assert!(!page.contains("Current flows counted"));
    }

    #[test]
    fn numbers_read_as_a_person_reads_them() {
        assert_eq!(
            [scaled(0.0), scaled(999.0), scaled(1500.0), scaled(2.5e9)],
            ["0", "999", "1.5 k", "2.5 G"].map(String::from)
        );
        assert_eq!(
            [
                age(5.2),
                age(312.0),
                age(3.0 * 3600.0 + 240.0),
                age(2.0 * 86_400.0)
            ],
            ["5s", "5m12s", "3h04m", "2d00h"].map(String::from)
        );
    }
}
