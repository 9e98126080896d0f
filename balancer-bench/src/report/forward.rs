//! Section 5 of the report: the forwarder-bound bench (forwarded pps, ns per packet on the
//! forwarding CPU and its busy share, per path and working set; new flows per second) and
//! the balancer's ratios to the kernel's forwarding and to nftables.

use std::fmt::Write as _;

use super::{figures, rate, ratio, Results};
use crate::forward::{Cell, Forward, Path, BACKENDS, FLOWS, FORWARD_CPU, PORT_RANGE, SENDER_CPU};

pub fn section(md: &mut String, r: &Results) {
    let _ = writeln!(md, "## 5. Forwarder-bound: what one CPU forwards\n");
    let Some(f) = figures(md, &r.forward) else {
        return;
    };
    method(md, f);
    pps_table(md, f);
    ns_table(md, f);
    ratios(md, f);
    new_flows(md, f);
}

fn method(md: &mut String, f: &Forward) {
    let _ = writeln!(
        md,
        "An `AF_PACKET` socket with `PACKET_QDISC_BYPASS` in a client namespace sends prebuilt \
         frames (UDP, 18 bytes of payload, to the VIP) with `sendmmsg` from a thread pinned to \
         CPU {SENDER_CPU}, as fast as it can. The forwarder's ingress veth runs its NAPI as a \
         thread (`threaded` = 1) pinned to CPU {FORWARD_CPU}: that CPU receives, forwards \
         through the path under test and transmits. A sink namespace counts and drops every \
         frame with an XDP program on the egress veth's peer (it runs on CPU {FORWARD_CPU} \
         too, alike for every path). Flows differ in the client's address and port; a \
         stateful path first gets every flow once at a paced rate, so the windows see \
         established flows. Each figure: forwarded frames per second at the sink over a \
         {:.0} s window after a short settle, {} round(s), the paths in turn within each \
         round; median (min-max) over the rounds. The balancer: {BACKENDS} Maglev backends, \
         `nat.port_range = \"{PORT_RANGE}\"`, nothing pinned (each round starts with empty \
         tables). nftables: DNAT by `numgen` to the same backends, masquerade; the kernel's \
         conntrack limit is {} entries (global), so larger working sets churn its table. \
         Kernel forwarding: a route to the VIP's subnet via the first backend.\n",
        f.plan.window.as_secs_f64(),
        f.plan.rounds,
        f.conntrack_max.map_or("?".into(), |n| n.to_string()),
    );
}

fn flows_label(n: u32) -> String {
    if n == 1 {
        "1 flow".into()
    } else {
        format!("{} flows", rate(f64::from(n)))
    }
}

fn header(md: &mut String, first: &str) {
    let cols: Vec<String> = FLOWS.iter().map(|&n| flows_label(n)).collect();
    let _ = writeln!(
        md,
        "| {first} | {} |\n|---|{}",
        cols.join(" | "),
        "---|".repeat(cols.len())
    );
}

/// One row over the working sets: `cell` formatted by `f`, `-` where not measured.
fn row(md: &mut String, label: &str, fw: &Forward, path: Path, f: impl Fn(&Cell) -> String) {
    let cells: Vec<String> = FLOWS
        .iter()
        .map(|&n| fw.cell(path, Some(n)).map_or("-".into(), &f))
        .collect();
    let _ = writeln!(md, "| {label} | {} |", cells.join(" | "));
}

fn pps_table(md: &mut String, f: &Forward) {
    let _ = writeln!(md, "### Forwarded packets per second\n");
    header(md, "path");
    for path in Path::ALL {
        row(md, path.name(), f, path, |c| {
            let s = c.pps();
            format!("{} ({}-{})", rate(s.p50), rate(s.min), rate(s.max))
        });
    }
    // veth pushes back on a sender that outruns the receiver (the socket waits), so what
    // the sender offered tracks what was forwarded; the busy share says who is the limit.
    let unsaturated: Vec<String> = f
        .cells
        .iter()
        .filter(|c| c.busy().p50 < SATURATED)
        .map(|c| format!("{} ({:.0}% busy)", label(c), c.busy().p50 * 100.0))
        .collect();
    if unsaturated.is_empty() {
        let _ = writeln!(
            md,
            "\nThe forwarding CPU was at least {:.0}% busy in every window (medians): it, not \
             the sender, sets these rates.\n",
            SATURATED * 100.0
        );
    } else {
        let _ = writeln!(
            md,
            "\n**Not forwarder-bound** (CPU {FORWARD_CPU} under {:.0}% busy, so the figure is \
             a floor): {}.\n",
            SATURATED * 100.0,
            unsaturated.join("; ")
        );
    }
}

/// The forwarding CPU's busy share from which it, not the sender, is the bottleneck.
const SATURATED: f64 = 0.9;

fn label(c: &Cell) -> String {
    match c.flows {
        Some(n) => format!("{}, {}", c.path.name(), flows_label(n)),
        None => format!("{}, new flows", c.path.name()),
    }
}

fn ns_table(md: &mut String, f: &Forward) {
    let _ = writeln!(
        md,
        "### ns per packet on the forwarding CPU (its busy share)\n\n\
         CPU {FORWARD_CPU}'s busy time (/proc/stat) over the window divided by the packets \
         forwarded; near 100% busy, the CPU is the bottleneck.\n"
    );
    header(md, "path");
    for path in Path::ALL {
        row(md, path.name(), f, path, |c| {
            format!(
                "{:.0} ns ({:.0}%)",
                c.ns_per_packet().p50,
                c.busy().p50 * 100.0
            )
        });
    }
    md.push('\n');
}

fn pps(f: &Forward, path: Path, flows: Option<u32>) -> Option<f64> {
    f.cell(path, flows).map(|c| c.pps().p50)
}

fn ratios(md: &mut String, f: &Forward) {
    let _ = writeln!(md, "### The balancer's ratios (medians of forwarded pps)\n");
    header(md, "ratio");
    for balancer in [Path::BalancerSkb, Path::BalancerDriver] {
        for other in [Path::Kernel, Path::Nftables] {
            let cells: Vec<String> = FLOWS
                .iter()
                .map(|&n| ratio(pps(f, balancer, Some(n)), pps(f, other, Some(n))))
                .collect();
            let _ = writeln!(
                md,
                "| {} / {} | {} |",
                balancer.name(),
                other.name(),
                cells.join(" | ")
            );
        }
    }
    md.push('\n');
}

fn new_flows(md: &mut String, f: &Forward) {
    let _ = writeln!(
        md,
        "### New flows\n\n\
         A stream of TCP SYNs, each of a flow never seen (distinct client address and port), \
         after the UDP windows (the balancer's connection table holds the largest working \
         set: new flows evict). Forwarded SYNs per second = new flows per second on one \
         CPU.\n\n\
         | path | new flows/s, median (min-max) | ns per new flow | CPU busy | balancer / nftables |\n\
         |---|---|---|---|---|"
    );
    let nft = pps(f, Path::Nftables, None);
    for path in [Path::BalancerSkb, Path::BalancerDriver, Path::Nftables] {
        let Some(c) = f.cell(path, None) else {
            continue;
        };
        let s = c.pps();
        let vs = if path == Path::Nftables {
            "-".into()
        } else {
            ratio(Some(s.p50), nft)
        };
        let _ = writeln!(
            md,
            "| {} | {} ({}-{}) | {:.0} ns | {:.0}% | {vs} |",
            path.name(),
            rate(s.p50),
            rate(s.min),
            rate(s.max),
            c.ns_per_packet().p50,
            c.busy().p50 * 100.0
        );
    }
    md.push('\n');
}
