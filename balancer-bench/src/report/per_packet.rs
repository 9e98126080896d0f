//! Section 1 of the report: the XDP program's cost per packet (in bursts and one run at a
//! time, net of the empty program) and the perf profile of a test run.

use std::fmt::Write as _;

use super::{figures, ns, rate, ratio, Results};
use crate::perf;
use crate::xdp::{
    CaseResult, Measured, Plan, MANY_FLOWS, MANY_FLOWS_PORT_RANGE, MEASURE_CPU, N_BACKENDS,
};

pub fn section(md: &mut String, r: &Results) {
    let _ = writeln!(
        md,
        "## 1. XDP program cost per packet (BPF_PROG_TEST_RUN)\n"
    );
    let Some(pp) = figures(md, &r.per_packet) else {
        return;
    };
    let _ = writeln!(
        md,
        "A TCP VIP and a UDP VIP of {N_BACKENDS} Maglev backends each, SNAT, every FIB lookup \
         answered; test runs from a thread pinned to CPU {MEASURE_CPU}, cases interleaved round \
         by round after an uncounted warm-up. The floor is the 2-instruction program `r0 = \
         XDP_PASS; exit`, first in every round. Net of floor: per round, the case's median \
         minus the floor's median of that round; then the median over the rounds. A test run \
         without live frames ends at the verdict: `XDP_REDIRECT` is returned, not carried \
         out, so the redirect and the transmit on the egress device are not in these \
         figures (the forwarder-bound section has them).\n"
    );
    let _ = writeln!(
        md,
        "### Bursts: {} runs per test run (the target's measure)\n\n\
         A sample is the kernel's mean over the {} runs of one test run, each behind the replay \
         wrapper that restores the frame first; the floor runs behind the same wrapper. {} \
         rounds x {} test runs per case. SYNs are not replayed (from its second run on, a \
         replayed SYN's flow exists): see one run per test run.\n",
        pp.repeat, pp.repeat, pp.replay_plan.rounds, pp.replay_plan.runs
    );
    table(md, &pp.replayed);
    let _ = writeln!(
        md,
        "\n### One run per test run\n\n\
         A sample is one test run with `repeat = 1` and the original frame: a packet that \
         arrives alone. {} rounds x {} runs per case.\n",
        pp.plan.rounds, pp.plan.runs
    );
    table(md, &pp.single);
    many_flows(md, &pp.many, pp.plan);
    let p = &pp.program;
    let _ = writeln!(
        md,
        "\nThe loaded program: {} translated (xlated) instructions, {} bytes of JIT code, {} \
         instructions processed by the verifier.\n",
        p.xlated_insns.map_or("?".into(), |n| n.to_string()),
        p.jited_bytes,
        p.verified_insns.map_or("?".into(), |n| n.to_string())
    );
    profile(md, r);
}

/// One table of cases measured one way, the floor first.
fn table(md: &mut String, m: &Measured) {
    let _ = writeln!(
        md,
        "| case | verdict | ns/packet median (p10-p90) | round medians | net of floor (median of rounds) |\n\
         |---|---|---|---|---|"
    );
    let row = |md: &mut String, c: &CaseResult, net: Option<f64>| {
        let rounds: Vec<String> = c.round_medians.iter().map(|m| format!("{m:.0}")).collect();
        let bad = if c.unexpected > 0 {
            format!(" ({} other verdicts)", c.unexpected)
        } else {
            String::new()
        };
        let _ = writeln!(
            md,
            "| {} | {}{bad} | {} | {} | {} |",
            c.name,
            c.verdict,
            ns(&c.summary),
            rounds.join(", "),
            net.map_or("-".into(), |n| format!("{n:.0} ns"))
        );
    };
    row(md, &m.floor, None);
    for c in &m.cases {
        row(md, c, Some(m.net(c)));
    }
}

/// The many-flow table, and each working set's net cost against one flow's.
fn many_flows(md: &mut String, m: &Measured, plan: Plan) {
    let sets: Vec<String> = MANY_FLOWS.iter().map(|&n| rate(f64::from(n))).collect();
    let _ = writeln!(
        md,
        "\n### Many flows\n\n\
         Established UDP flows, one datagram each per test run, the flows of working sets of \
         {} in a random order (each established by its first datagram beforehand), against \
         one flow of the same program. A hot flow stays in this CPU's flow cache and the CPU \
         caches; many flows miss them and look up the connection table (CONNS and NAT sized \
         for all of them, `nat.port_range = \"{MANY_FLOWS_PORT_RANGE}\"` so that every flow \
         has its SNAT port). One run per test run: {} rounds x {} runs per case.\n",
        sets.join(" and "),
        plan.rounds,
        plan.runs
    );
    table(md, m);
    let one = m.case("UDP established, 1 flow").map(|c| m.net(c));
    md.push('\n');
    for c in m.cases.iter().filter(|c| c.name.contains("flows")) {
        let _ = writeln!(
            md,
            "- {}: {} x the net cost of one flow",
            c.name,
            ratio(Some(m.net(c)), one)
        );
    }
}

fn profile(md: &mut String, r: &Results) {
    let Some(p) = &r.profile else {
        return;
    };
    let _ = writeln!(
        md,
        "### Where the time of an established-TCP test run goes (perf)\n"
    );
    let p = match p {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(md, "not profiled: {e}\n");
            return;
        }
    };
    let _ = writeln!(
        md,
        "`perf record -p <bench>` while the bench ran {} test runs of the established-TCP \
         case back to back: {:.0} ns of wall time per `BPF_PROG_TEST_RUN` syscall, of which \
         the kernel timed {:.0} ns (median) as the program's run. Self time by symbol (share of \
         all samples; the ns column is that share of the wall time per run):\n",
        p.runs, p.wall_ns_per_run, p.duration_median
    );
    let _ = writeln!(
        md,
        "| symbol | category | share | ns per run |\n|---|---|---|---|"
    );
    for x in &p.top {
        let _ = writeln!(
            md,
            "| `{}` | {} | {:.1}% | {:.0} |",
            x.symbol,
            perf::test_run_category(&x.symbol),
            x.percent,
            x.percent / 100.0 * p.wall_ns_per_run
        );
    }
    md.push('\n');
    let _ = writeln!(md, "By category (of the symbols above):\n");
    for (cat, pct) in perf::by_category(&p.top, perf::test_run_category) {
        let _ = writeln!(
            md,
            "- {cat}: {pct:.1}%, {:.0} ns per run",
            pct / 100.0 * p.wall_ns_per_run
        );
    }
    md.push('\n');
}
