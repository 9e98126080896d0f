//! `results/bench.png`: horizontal bar panels of the run's figures (XDP cost per packet, end
//! to end against direct, Maglev builds, CLI latency, map memory), with the targets drawn in.

use std::path::Path;

use anyhow::{Context as _, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::{mib, ok, rate, short_case, Results};
use crate::e2e::{Metric, Peer};
use crate::maglev::PAPER;

const FONT_PATHS: [(&str, FontStyle); 2] = [
    (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        FontStyle::Normal,
    ),
    (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
        FontStyle::Bold,
    ),
];

/// Registers `DejaVu` Sans (Debian's fonts-dejavu-core) as "sans-serif" for the chart.
fn register_fonts() -> Result<()> {
    for (path, style) in FONT_PATHS {
        let bytes = std::fs::read(path).with_context(|| {
            format!("reading {path} (install fonts-dejavu-core; `cargo xtask bench` does)")
        })?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", style, bytes)
            .map_err(|_| anyhow::anyhow!("{path} is not a usable font"))?;
    }
    Ok(())
}

/// One bar of a horizontal bar panel.
struct Bar {
    label: String,
    value: f64,
    /// A whisker (e.g. p10-p90).
    range: Option<(f64, f64)>,
    color: RGBColor,
    note: String,
}

struct Panel {
    title: String,
    unit: &'static str,
    bars: Vec<Bar>,
    /// A vertical line: (value, label).
    target: Option<(f64, String)>,
}

const BLUE: RGBColor = RGBColor(0x2b, 0x6c, 0xb0);
const GREEN: RGBColor = RGBColor(0x2f, 0x85, 0x5a);
const GREY: RGBColor = RGBColor(0x8a, 0x8f, 0x98);
const ORANGE: RGBColor = RGBColor(0xdd, 0x6b, 0x20);
const PURPLE: RGBColor = RGBColor(0x6b, 0x46, 0xc1);
const CYAN: RGBColor = RGBColor(0x0b, 0x8a, 0x9e);
const RED: RGBColor = RGBColor(0xc5, 0x30, 0x30);

fn peer_color(p: Peer) -> RGBColor {
    match p {
        Peer::Direct => GREY,
        Peer::DirectXdpPass => GREEN,
        Peer::Balancer => BLUE,
        Peer::BalancerGeneric => CYAN,
        Peer::Nftables => ORANGE,
        Peer::Haproxy => PURPLE,
    }
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

#[expect(
    clippy::many_single_char_names,
    reason = "x, y, w, h: plot coordinates"
)]
fn draw_panel(area: &Area<'_>, panel: &Panel) -> Result<()> {
    let (w, h) = area.dim_in_pixel();
    let (w, h) = (w as i32, h as i32);
    let title = ("sans-serif", 22).into_font().style(FontStyle::Bold);
    let text = ("sans-serif", 15).into_font();
    let small = ("sans-serif", 13).into_font();
    area.draw_text(&panel.title, &title.color(&BLACK), (12, 8))?;
    if panel.bars.is_empty() {
        area.draw_text("not measured", &text.color(&RED), (12, 48))?;
        return Ok(());
    }
    let mut label_w = 0;
    for b in &panel.bars {
        label_w = label_w.max(area.estimate_text_size(&b.label, &text.color(&BLACK))?.0 as i32);
    }
    let label_w = label_w + 12;
    let left = label_w + 10;
    let right = w - 130;
    let top = 46;
    let bottom = h - 34;
    let max = panel
        .bars
        .iter()
        .map(|b| b.range.map_or(b.value, |r| r.1.max(b.value)))
        .chain(panel.target.as_ref().map(|t| t.0))
        .fold(0.0f64, f64::max)
        * 1.08;
    let max = if max > 0.0 { max } else { 1.0 };
    let x = |v: f64| left + ((v / max) * f64::from(right - left)) as i32;
    let n = panel.bars.len() as i32;
    let slot = (bottom - top) / n;
    let bar_h = (slot * 7 / 10).max(4);
    // Axis and scale.
    area.draw(&PathElement::new(
        vec![(left, top - 4), (left, bottom)],
        BLACK.stroke_width(1),
    ))?;
    area.draw_text(
        &format!("0 .. {} {}", fmt_axis(max), panel.unit),
        &small.color(&GREY),
        (left, bottom + 8),
    )?;
    for (i, b) in panel.bars.iter().enumerate() {
        let y0 = top + i as i32 * slot + (slot - bar_h) / 2;
        let y1 = y0 + bar_h;
        area.draw(&Rectangle::new(
            [(left, y0), (x(b.value).max(left + 1), y1)],
            b.color.filled(),
        ))?;
        if let Some((lo, hi)) = b.range {
            let ym = i32::midpoint(y0, y1);
            area.draw(&PathElement::new(
                vec![(x(lo), ym), (x(hi), ym)],
                BLACK.stroke_width(2),
            ))?;
            for v in [lo, hi] {
                area.draw(&PathElement::new(
                    vec![(x(v), ym - 5), (x(v), ym + 5)],
                    BLACK.stroke_width(2),
                ))?;
            }
        }
        let label_y = i32::midpoint(y0, y1) - 8;
        let (tw, _) = area.estimate_text_size(&b.label, &text.color(&BLACK))?;
        area.draw_text(
            &b.label,
            &text.color(&BLACK),
            (label_w - tw as i32, label_y),
        )?;
        let end = b.range.map_or(b.value, |r| r.1.max(b.value));
        area.draw_text(&b.note, &text.color(&BLACK), (x(end) + 6, label_y))?;
    }
    if let Some((v, label)) = &panel.target {
        let tx = x(*v);
        let mut y = top - 6;
        while y < bottom {
            area.draw(&PathElement::new(
                vec![(tx, y), (tx, (y + 6).min(bottom))],
                RED.stroke_width(2),
            ))?;
            y += 10;
        }
        area.draw_text(label, &small.color(&RED), (tx + 4, top - 20))?;
    }
    Ok(())
}

fn fmt_axis(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn xdp_panel(r: &Results) -> Panel {
    let mut bars = Vec::new();
    let mut target = None;
    if let Some(pp) = ok(&r.per_packet) {
        let mut push = |label: String, net: f64, color| {
            bars.push(Bar {
                label,
                value: net,
                range: None,
                color,
                note: format!("{net:.0} ns"),
            });
        };
        let m = &pp.replayed;
        for c in &m.cases {
            push(format!("{} (burst)", short_case(c.name)), m.net(c), BLUE);
        }
        if let Some(c) = pp.single.case("TCP SYN") {
            push(
                format!("{} (alone)", short_case(c.name)),
                pp.single.net(c),
                GREEN,
            );
        }
        if let Some(f) = ok(&r.full_table) {
            push(
                format!("{} (alone)", short_case(f.syn.name)),
                f.net(),
                GREEN,
            );
        }
        target = Some((100.0, "target: 100 ns (established TCP)".to_string()));
    }
    Panel {
        title: "XDP cost per packet, net of the empty program (BPF_PROG_TEST_RUN, median)".into(),
        unit: "ns",
        bars,
        target,
    }
}

fn e2e_panel(r: &Results) -> Panel {
    let mut bars = Vec::new();
    if let Some(e) = ok(&r.e2e) {
        for m in Metric::ALL {
            let Some(d) = e.best(Peer::Direct, m) else {
                continue;
            };
            for peer in Peer::ALL {
                if let Some(v) = e.best(peer, m) {
                    bars.push(Bar {
                        label: format!("{} {}", m.short(), peer.short()),
                        value: v / d,
                        range: None,
                        color: peer_color(peer),
                        note: format!("{:.2}x ({}/s)", v / d, rate(v)),
                    });
                }
            }
        }
    }
    Panel {
        title: "End to end, relative to direct (best round)".into(),
        unit: "x direct",
        bars,
        target: None,
    }
}

fn ring_panel(r: &Results) -> Panel {
    let mut bars = Vec::new();
    let mut title = "Maglev ring build (median, min-max)".to_string();
    if let Some(rings) = ok(&r.rings) {
        for b in rings {
            if b.m > 100_000 {
                // Ten times the others: it would flatten them; its figure goes in the title.
                title = format!("Maglev build, median (M={}: {:.1} ms)", b.m, b.ms.p50);
                continue;
            }
            let (kind, color) = match b.kind {
                "fresh" => ("", BLUE),
                PAPER => (", paper", GREY),
                k if k.contains("adding") => (", +1 rebuild", GREEN),
                _ => (", -1 rebuild", GREEN),
            };
            bars.push(Bar {
                label: format!("M={} n={}{kind}", b.m, b.backends),
                value: b.ms.p50,
                range: Some((b.ms.min, b.ms.max)),
                color,
                note: format!("{:.2} ms", b.ms.p50),
            });
        }
    }
    Panel {
        title,
        unit: "ms",
        bars,
        target: Some((1.0, "target: M=65537 n=1000 < 1 ms".into())),
    }
}

fn control_panel(r: &Results) -> Panel {
    let mut bars = Vec::new();
    if let Some(c) = ok(&r.e2e).and_then(|e| e.cli.as_ref()) {
        for (label, s, color) in [
            ("CLI backend list", &c.list, GREY),
            ("CLI backend add", &c.add, BLUE),
            ("CLI backend del", &c.del, BLUE),
        ] {
            bars.push(Bar {
                label: label.into(),
                value: s.p50,
                range: Some((s.p10, s.p90)),
                color,
                note: format!("{:.1} ms", s.p50),
            });
        }
    }
    Panel {
        title: "CLI change to map (wall time, median, p10-p90)".into(),
        unit: "ms",
        bars,
        target: Some((10.0, "target: add < 10 ms".into())),
    }
}

fn memory_panel(r: &Results) -> Panel {
    let mut bars = Vec::new();
    if let Some(mems) = ok(&r.memory) {
        for m in mems {
            let flows = m.entries / 1_000_000;
            let conns = m.flow_tables();
            bars.push(Bar {
                label: format!("{flows}M flows: CONNS + NAT"),
                value: conns as f64 / (1u64 << 20) as f64,
                range: None,
                color: BLUE,
                note: mib(conns),
            });
            bars.push(Bar {
                label: format!("{flows}M flows: all maps"),
                value: m.total() as f64 / (1u64 << 20) as f64,
                range: None,
                color: PURPLE,
                note: mib(m.total()),
            });
        }
    }
    Panel {
        title: "Kernel memory of the maps (memlock)".into(),
        unit: "MiB",
        bars,
        target: None,
    }
}

/// Draws `results/bench.png`.
pub fn chart(r: &Results, path: &Path) -> Result<()> {
    register_fonts()?;
    let root = BitMapBackend::new(path, (1600, 1250)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = ("sans-serif", 28).into_font().style(FontStyle::Bold);
    root.draw_text(
        &format!(
            "balancer benchmark - {} - kernel {}",
            r.env.date, r.env.kernel
        ),
        &title.color(&BLACK),
        (20, 14),
    )?;
    let body = root.margin(60, 10, 10, 10);
    let (top, rest) = body.split_vertically(560);
    let (top_left, top_right) = top.split_horizontally(800);
    let bottom = rest.split_evenly((1, 3));
    draw_panel(&top_left, &xdp_panel(r))?;
    draw_panel(&top_right, &e2e_panel(r))?;
    draw_panel(&bottom[0], &ring_panel(r))?;
    draw_panel(&bottom[1], &control_panel(r))?;
    draw_panel(&bottom[2], &memory_panel(r))?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
