//! Section 3 of the report: Maglev ring builds, CLI change to map, the health checks' CPU,
//! the cost of a metrics scrape, the maps' memory, and new flows with a full connection table.

use std::fmt::Write as _;

use balancer_common::map_names;

use super::{figures, mib, ns, rate, Results};
use crate::e2e::CliTimes;

/// Ring slots of the VIP the CLI changes (the end-to-end topology's default ring).
const RING_SLOTS: f64 = 65_537.0;

pub fn section(md: &mut String, r: &Results) {
    let _ = writeln!(md, "## 3. Scale and control plane\n");
    rings(md, r);
    cli(md, r);
    health(md, r);
    scrape(md, r);
    memory(md, r);
    full_table(md, r);
}

fn rings(md: &mut String, r: &Results) {
    let _ = writeln!(md, "### Maglev ring build (`balancer::ring::maglev`)\n");
    let Some(rings) = figures(md, &r.rings) else {
        return;
    };
    let _ = writeln!(
        md,
        "| M | backends | build | median ms | min-max ms | builds |\n|---|---|---|---|---|---|"
    );
    for b in rings {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.3} | {:.3}-{:.3} | {} |",
            b.m, b.backends, b.kind, b.ms.p50, b.ms.min, b.ms.max, b.ms.n
        );
    }
    md.push('\n');
}

fn cli(md: &mut String, r: &Results) {
    let _ = writeln!(md, "### CLI change to map\n");
    let Some(e) = figures(md, &r.e2e) else {
        return;
    };
    let Some(c) = &e.cli else {
        let why = e.cli_error.as_deref().unwrap_or("unknown");
        let _ = writeln!(md, "not measured: {why}\n");
        return;
    };
    let _ = writeln!(
        md,
        "Wall time of the `balancer` CLI process, spawn to exit, against an agent of the \
         end-to-end topology (pool \"web\", {} backends at first; each add a new address). \
         After every add the bench looked the backend up in the agent's BACKENDS map: it was \
         there {}/{} times when the CLI returned.\n",
        c.pool_before, c.add_in_map, c.adds
    );
    let _ = writeln!(
        md,
        "| command | median ms | p10-p90 ms | runs |\n|---|---|---|---|\n\
         | `backend list web` (read-only round trip) | {} |\n\
         | `backend add web 10.0.2.x:80` | {} |\n\
         | `backend del web 10.0.2.x:80` | {} |\n",
        cli_row(&c.list),
        cli_row(&c.add),
        cli_row(&c.del)
    );
    slot_write(md, c);
}

fn cli_row(s: &crate::stats::Summary) -> String {
    format!("{:.2} | {:.2}-{:.2} | {}", s.p50, s.p10, s.p90, s.n)
}

fn slot_write(md: &mut String, c: &CliTimes) {
    let Some(us) = c.slot_write_us else {
        return;
    };
    let flags = match c.ring_mmapable {
        Some(true) => "RING has `BPF_F_MMAPABLE` in its map flags. ",
        Some(false) => "RING does not have `BPF_F_MMAPABLE` in its map flags. ",
        None => "",
    };
    let _ = writeln!(
        md,
        "{flags}One ring element (two slots) written by syscall (`BPF_MAP_UPDATE_ELEM`) took \
         {us:.2} µs from this process: a quarter of the {RING_SLOTS} slots written that way \
         would take {:.0} ms.\n",
        us * RING_SLOTS / 2.0 / 4.0 / 1e3
    );
}

fn health(md: &mut String, r: &Results) {
    let _ = writeln!(md, "### Health checks: CPU of the agent\n");
    let Some(h) = figures(md, &r.health) else {
        return;
    };
    let _ = writeln!(
        md,
        "The agent (release build) checks {} backends with `type = \"tcp\"` every {:.0} s; the \
         agent and the backends' listener are pinned to CPUs of their own, with their packets \
         steered there. Measured over {:.1} s after a 2 s warm-up.\n",
        h.backends, h.interval_secs, h.window_secs
    );
    let _ = writeln!(
        md,
        "| figure | value |\n|---|---|\n\
         | checks/s (SYN-ACKs the backends sent) | {:.0} |\n\
         | backends up with a passing last check at the end | {} of {} |\n\
         | agent process CPU (user + system, /proc/PID/stat) | {:.2}% of one core (user {:.2}, system {:.2}) |\n\
         | agent's CPU busy (wall time not idle, all contexts; /proc/stat idle) | {:.2}% ({:.2}% idle baseline before the agent started: {:.2}% net) |\n",
        h.checks_per_sec,
        h.up,
        h.backends,
        h.agent_pct,
        h.agent_user_pct,
        h.agent_sys_pct,
        h.cpu_busy_pct,
        h.cpu_idle_busy_pct,
        h.cpu_net_pct()
    );
}

fn memory(md: &mut String, r: &Results) {
    let _ = writeln!(md, "### Map memory\n");
    let Some(mems) = figures(md, &r.memory) else {
        return;
    };
    let _ = writeln!(
        md,
        "CONNS and NAT sized with `EbpfLoader::map_max_entries`; `memlock:` of each map's \
         fdinfo.\n\n\
         | CONNS and NAT entries | CONNS | NAT | all maps | bytes per flow (CONNS + NAT) | load time |\n\
         |---|---|---|---|---|---|"
    );
    for m in mems {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.0} | {:.2} s |",
            m.entries,
            mib(m.get(map_names::CONNS)),
            mib(m.get(map_names::NAT)),
            mib(m.total()),
            m.bytes_per_flow(),
            m.load_time.as_secs_f64()
        );
    }
    if let Some(m) = mems.first() {
        let others: Vec<String> = m
            .by_map
            .iter()
            .filter(|(k, _)| ![map_names::CONNS, map_names::NAT].contains(&k.as_str()))
            .map(|(k, v)| format!("{k} {}", mib(*v)))
            .collect();
        let _ = writeln!(md, "\nThe other maps: {}.\n", others.join(", "));
    }
}

fn full_table(md: &mut String, r: &Results) {
    let _ = writeln!(md, "### New flows with a full connection table\n");
    let Some(f) = figures(md, &r.full_table) else {
        return;
    };
    let net = f.net();
    let _ = writeln!(
        md,
        "CONNS and NAT sized to {} entries, filled first with {} SYNs of fresh tuples ({:.2} \
         s), then SYNs of further fresh tuples, each a new flow in a full table. One run per \
         test run, as in section 1.\n\n\
         | case | ns/packet median (p10-p90) | net of floor | new flows/s on one CPU |\n\
         |---|---|---|---|\n\
         | {} | {} | {net:.0} ns | {} (by the median incl. harness), {} (net) |\n\
         | {} | {} | - | - |\n",
        f.entries,
        f.filled_with,
        f.fill_time.as_secs_f64(),
        f.syn.name,
        ns(&f.syn.summary),
        rate(1e9 / f.syn.summary.p50),
        rate(1e9 / net.max(1.0)),
        f.floor.name,
        ns(&f.floor.summary)
    );
    if f.syn.unexpected > 0 {
        let _ = writeln!(
            md,
            "{} of those SYNs got another verdict than XDP_REDIRECT.\n",
            f.syn.unexpected
        );
    }
}

fn scrape(md: &mut String, r: &Results) {
    let _ = writeln!(md, "### Metrics scrape (`/metrics`)\n");
    let Some(s) = figures(md, &r.scrape) else {
        return;
    };
    let _ = writeln!(
        md,
        "The agent (release build) with {} VIPs ({} of them in HTTP mode) \
         and {} backends serves `/metrics` ({} series, {:.0} KiB); {} scrapes one \
         after another, each on a new connection, timed from connect to the last byte. The \
         per-packet cost of an established TCP packet (`BPF_PROG_TEST_RUN`, one run per test \
         run, its own CPU) was measured in rounds alternating between no scrape and back to \
         back scrapes.\n",
        s.vips,
        s.http_vips,
        s.backends,
        s.series,
        s.bytes as f64 / 1024.0,
        s.ms.n
    );
    let _ = writeln!(
        md,
        "| figure | value |\n|---|---|\n\
         | scrape, median (p10-p90) | {:.2} ms ({:.2}-{:.2}) |\n\
         | scrape, p99 / max | {:.2} / {:.2} ms |\n\
         | agent CPU per scrape (user + system) | {:.2} ms |\n\
         | established TCP packet, no scrape: median (p10-p90) ns | {} |\n\
         | established TCP packet, scrapes running: median (p10-p90) ns | {} |\n",
        s.ms.p50,
        s.ms.p10,
        s.ms.p90,
        s.p99_ms,
        s.ms.max,
        s.agent_cpu_ms,
        ns(&s.packet_quiet),
        ns(&s.packet_scraping)
    );
}
