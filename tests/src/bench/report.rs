//! The results as a table on stdout, a JSON file and a PNG bar chart.
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;
use serde::Serialize;

use crate::bench::stats::Summary;

/// One data path metric as reported.
pub struct Metric {
    pub key: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
    pub higher_is_better: bool,
}

pub const METRICS: &[Metric] = &[
    Metric { key: "tcp1_gbps", label: "TCP 1 stream", unit: "Gbit/s", higher_is_better: true },
    Metric { key: "tcp8_gbps", label: "TCP 8 streams", unit: "Gbit/s", higher_is_better: true },
    Metric { key: "udp64_kpps", label: "UDP 64 B delivered", unit: "kpps", higher_is_better: true },
    Metric { key: "udp64_kpps_per_cpu", label: "UDP 64 B per sender core", unit: "kpps/CPU-s", higher_is_better: true },
    // Request/response with blocking sockets (each one-way trip wakes a
    // sleeping receiver) and with spinning ones (no wake-up on the path).
    Metric { key: "rr_p50_us", label: "UDP req/resp p50, blocking", unit: "µs", higher_is_better: false },
    Metric { key: "rr_p99_us", label: "UDP req/resp p99, blocking", unit: "µs", higher_is_better: false },
    Metric { key: "rr_spin_p50_us", label: "UDP req/resp p50, spinning", unit: "µs", higher_is_better: false },
    Metric { key: "rr_spin_p99_us", label: "UDP req/resp p99, spinning", unit: "µs", higher_is_better: false },
    // Kernel CPU (system + softirq + irq of all CPUs, /proc/stat: both
    // nodes share this machine) per Gbit received.
    Metric { key: "tcp1_cpu_ms_per_gbit", label: "kernel CPU, TCP 1 stream", unit: "ms/Gbit", higher_is_better: false },
    Metric { key: "tcp8_cpu_ms_per_gbit", label: "kernel CPU, TCP 8 streams", unit: "ms/Gbit", higher_is_better: false },
];

#[derive(Clone, Debug, Serialize)]
pub struct ModeSummary {
    pub mode: String,
    pub description: String,
    pub metrics: BTreeMap<String, Summary>,
}

impl ModeSummary {
    pub fn median(&self, key: &str) -> f64 {
        self.metrics.get(key).map(|s| s.median).unwrap_or(f64::NAN)
    }
}

fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// `median (min–max)`.
pub fn cell(s: Option<&Summary>) -> String {
    match s {
        Some(s) if !s.is_empty() => {
            if s.values.len() > 1 {
                format!("{} ({}–{})", fmt(s.median), fmt(s.min), fmt(s.max))
            } else {
                fmt(s.median)
            }
        }
        _ => "-".into(),
    }
}

/// The data path table in Markdown (it reads well on a terminal too).
pub fn datapath_table(modes: &[ModeSummary]) -> String {
    let mut out = String::from("| metric |");
    for m in modes {
        out.push_str(&format!(" {} |", m.mode));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(modes.len()));
    out.push('\n');
    for metric in METRICS {
        out.push_str(&format!("| {} ({}{}) |", metric.label, metric.unit, if metric.higher_is_better { ", higher is better" } else { ", lower is better" }));
        for m in modes {
            out.push_str(&format!(" {} |", cell(m.metrics.get(metric.key))));
        }
        out.push('\n');
    }
    out
}

/// `a / b` of the medians of `key`.
pub fn ratio(modes: &[ModeSummary], a: &str, b: &str, key: &str) -> Option<f64> {
    let find = |name: &str| modes.iter().find(|m| m.mode == name);
    let (x, y) = (find(a)?.median(key), find(b)?.median(key));
    (x.is_finite() && y.is_finite() && y != 0.0).then_some(x / y)
}

/// The ratio `a / b` within each repetition (every repetition runs each
/// mode once, back to back), summarised: less sensitive than the ratio of
/// medians to background load that changes between repetitions.
pub fn paired_ratio(modes: &[ModeSummary], a: &str, b: &str, key: &str) -> Option<Summary> {
    let find = |name: &str| modes.iter().find(|m| m.mode == name).and_then(|m| m.metrics.get(key));
    let (x, y) = (find(a)?, find(b)?);
    let r: Vec<f64> = x.values.iter().zip(&y.values).filter(|(_, d)| **d != 0.0).map(|(n, d)| n / d).collect();
    (!r.is_empty()).then(|| Summary::of(&r))
}

/// The modes the agent's IPv4 modes are compared with (those present in a run).
pub const RATIO_BASES: [&str; 3] = ["flannel", "flannel-nocsum", "host-gw"];

/// (ours, base): every agent mode against the kernel modes of its family.
pub fn ratio_pairs() -> Vec<(&'static str, &'static str)> {
    let mut pairs = Vec::new();
    for ours in ["overlay", "overlay-dr", "overlay-xdp", "overlay-xdp-generic"] {
        pairs.extend(RATIO_BASES.iter().map(|&base| (ours, base)));
    }
    pairs.extend([("overlay6", "flannel6"), ("overlay6", "host-gw6")]);
    pairs
}

/// Ratios of each agent mode against flannel and host-gw, per metric.
pub fn ratio_table(modes: &[ModeSummary]) -> String {
    let ran = |name: &str| modes.iter().any(|m| m.mode == name);
    let pairs: Vec<_> = ratio_pairs().into_iter().filter(|(a, b)| ran(a) && ran(b)).collect();
    if pairs.is_empty() {
        return String::new();
    }
    let mut out = String::from("| metric |");
    for (a, b) in &pairs {
        out.push_str(&format!(" {a} / {b} |"));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(pairs.len()));
    out.push('\n');
    for metric in METRICS {
        out.push_str(&format!("| {} |", metric.label));
        for (a, b) in &pairs {
            out.push_str(&match (ratio(modes, a, b, metric.key), paired_ratio(modes, a, b, metric.key)) {
                (Some(r), Some(p)) if p.values.len() > 1 => {
                    format!(" {r:.2}× (paired {:.2}×, {:.2}–{:.2}) |", p.median, p.min, p.max)
                }
                (Some(r), _) => format!(" {r:.2}× |"),
                _ => " - |".into(),
            });
        }
        out.push('\n');
    }
    out
}

const MODE_COLORS: [RGBColor; 6] = [
    RGBColor(0x8c, 0x8c, 0x8c), // host-gw
    RGBColor(0xe0, 0x8a, 0x2c), // flannel
    RGBColor(0x2c, 0x6f, 0xbb), // overlay
    RGBColor(0x4f, 0xa8, 0x5a), // overlay-dr
    RGBColor(0xf2, 0xc0, 0x7e), // flannel-nocsum
    RGBColor(0x7a, 0x4f, 0xa8), // overlay-xdp
];

fn mode_color(name: &str) -> RGBColor {
    match name {
        "host-gw" | "host-gw6" => MODE_COLORS[0],
        "flannel" | "flannel6" => MODE_COLORS[1],
        "overlay" | "overlay6" => MODE_COLORS[2],
        "flannel-nocsum" => MODE_COLORS[4],
        "overlay-xdp" | "overlay-xdp-generic" => MODE_COLORS[5],
        _ => MODE_COLORS[3],
    }
}

/// Fonts for the chart's text: plotters draws text with ab_glyph from a TTF
/// file (Debian's fonts-dejavu-core), no fontconfig needed.
pub const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

fn register_fonts() -> Result<()> {
    let path = FONT_CANDIDATES
        .iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| anyhow!("no TTF font found (apt-get install fonts-dejavu-core); looked for {FONT_CANDIDATES:?}"))?;
    let bytes: &'static [u8] = Box::leak(std::fs::read(path)?.into_boxed_slice());
    for style in [FontStyle::Normal, FontStyle::Bold] {
        plotters::style::register_font("sans-serif", style, bytes).map_err(|_| anyhow!("{path}: not a usable font"))?;
    }
    Ok(())
}

/// One panel per metric, one bar per mode (the median) with a min–max
/// whisker and the median written above it.
pub fn chart(path: &Path, title: &str, subtitle: &str, modes: &[ModeSummary]) -> Result<()> {
    register_fonts()?;
    let (w, h) = (2000u32, 980u32);
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (top, body) = root.split_vertically(96);
    top.draw(&Text::new(title, (20, 12), ("sans-serif", 30).into_font().style(FontStyle::Bold)))
        .map_err(|e| anyhow!("{e}"))?;
    top.draw(&Text::new(subtitle, (20, 50), ("sans-serif", 17).into_font().color(&RGBColor(80, 80, 80))))
        .map_err(|e| anyhow!("{e}"))?;
    let note = "Bars: median of the repetitions, whiskers: min–max. CPU: system+softirq+irq time of all CPUs (/proc/stat) \
                per Gbit during the TCP runs. Per sender core: datagrams delivered per CPU-second of the sending thread (whole path). \
                Req/resp: blocking sockets, or both ends spinning on non-blocking recv (no wake-ups).";
    top.draw(&Text::new(note, (20, 70), ("sans-serif", 15).into_font().color(&RGBColor(100, 100, 100))))
        .map_err(|e| anyhow!("{e}"))?;
    // Legend in the title strip.
    let mut x = w as i32 - 190 * modes.len() as i32;
    for m in modes {
        let c = mode_color(&m.mode);
        top.draw(&Rectangle::new([(x, 20), (x + 22, 40)], c.filled())).map_err(|e| anyhow!("{e}"))?;
        top.draw(&Text::new(m.mode.clone(), (x + 30, 20), ("sans-serif", 20).into_font())).map_err(|e| anyhow!("{e}"))?;
        x += 190;
    }
    let panels = body.split_evenly((2, METRICS.len().div_ceil(2)));
    for (panel, metric) in panels.iter().zip(METRICS) {
        draw_panel(panel, metric, modes).with_context(|| format!("panel {}", metric.key))?;
    }
    root.present().map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, plotters::coord::Shift>, metric: &Metric, modes: &[ModeSummary]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let vals: Vec<(String, Summary)> = modes
        .iter()
        .filter_map(|m| m.metrics.get(metric.key).map(|s| (m.mode.clone(), s.clone())))
        .filter(|(_, s)| !s.is_empty())
        .collect();
    let ymax = vals.iter().map(|(_, s)| s.max).fold(0.0f64, f64::max).max(1e-9) * 1.22;
    let caption = format!("{} ({}){}", metric.label, metric.unit, if metric.higher_is_better { " ↑" } else { " ↓" });
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 22).into_font().style(FontStyle::Bold))
        .margin(12)
        .x_label_area_size(34)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..vals.len().max(1) as f64, 0f64..ymax)
        .map_err(|e| anyhow!("{e}"))?;
    let names: Vec<String> = vals.iter().map(|(n, _)| n.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(vals.len().max(1) * 2 + 1)
        .x_label_formatter(&|x| {
            let i = (*x - 0.5).round();
            if (*x - 0.5 - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
                names[i as usize].clone()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| fmt(*y))
        .label_style(("sans-serif", 16).into_font())
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, (name, s)) in vals.iter().enumerate() {
        let x0 = i as f64 + 0.15;
        let x1 = i as f64 + 0.85;
        let c = mode_color(name);
        chart.draw_series(std::iter::once(Rectangle::new([(x0, 0.0), (x1, s.median)], c.filled()))).map_err(|e| anyhow!("{e}"))?;
        let xm = i as f64 + 0.5;
        if s.values.len() > 1 {
            let black = BLACK.stroke_width(2);
            chart
                .draw_series([
                    PathElement::new(vec![(xm, s.min), (xm, s.max)], black),
                    PathElement::new(vec![(xm - 0.1, s.min), (xm + 0.1, s.min)], black),
                    PathElement::new(vec![(xm - 0.1, s.max), (xm + 0.1, s.max)], black),
                ])
                .map_err(|e| anyhow!("{e}"))?;
        }
        let label_y = s.max.max(s.median) + ymax * 0.02;
        chart
            .draw_series(std::iter::once(Text::new(
                fmt(s.median),
                (i as f64 + 0.3, label_y + ymax * 0.06),
                ("sans-serif", 18).into_font().style(FontStyle::Bold),
            )))
            .map_err(|e| anyhow!("{e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modes() -> Vec<ModeSummary> {
        ["host-gw", "flannel", "overlay"]
            .iter()
            .enumerate()
            .map(|(i, name)| ModeSummary {
                mode: name.to_string(),
                description: String::new(),
                metrics: METRICS.iter().map(|m| (m.key.to_string(), Summary::of(&[1.0 + i as f64, 2.0 + i as f64]))).collect(),
            })
            .collect()
    }

    #[test]
    fn tables_and_ratios() {
        let m = modes();
        assert_eq!(ratio(&m, "overlay", "flannel", "tcp1_gbps"), Some(3.5 / 2.5));
        assert_eq!(ratio(&m, "overlay-dr", "flannel", "tcp1_gbps"), None);
        let t = datapath_table(&m);
        assert!(t.contains("| TCP 1 stream (Gbit/s, higher is better) | 1.50 (1.00–2.00) | 2.50 (2.00–3.00) |"), "{t}");
        let r = ratio_table(&m);
        assert!(r.contains("overlay / flannel") && r.contains("1.40× (paired 1.42×, 1.33–1.50)"), "{r}");
    }

    #[test]
    fn chart_renders() {
        assert!(
            FONT_CANDIDATES.iter().any(|p| Path::new(p).exists()),
            "no TTF font installed (Debian package fonts-dejavu-core; `cargo xtask setup` installs it); looked for {FONT_CANDIDATES:?}"
        );
        let dir = std::env::temp_dir().join(format!("overlay-bench-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let png = dir.join("c.png");
        chart(&png, "title", "subtitle", &modes()).unwrap();
        assert!(std::fs::metadata(&png).unwrap().len() > 10_000);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
