//! The loss curve as an SVG image: training loss (raw and a moving average) and evaluation loss
//! against the step, with nicely rounded axes, a legend and the final values.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

use std::fmt::Write as _;
use std::path::Path;

use crate::error::{Error, Result};

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 450.0;
/// The plot area inside the image.
const LEFT: f64 = 72.0;
const RIGHT: f64 = WIDTH - 24.0;
const TOP: f64 = 60.0;
const BOTTOM: f64 = HEIGHT - 56.0;

const TRAIN_RAW: &str = "#9ecae1";
const TRAIN_AVG: &str = "#08519c";
const EVAL: &str = "#e6550d";
const GRID: &str = "#e5e5e5";
const AXIS: &str = "#444444";
const FONT: &str = "DejaVu Sans, Helvetica, Arial, sans-serif";

/// Tick marks of one axis.
#[derive(Clone, Debug, PartialEq)]
pub struct Ticks {
    /// 1, 2 or 5 times a power of ten.
    pub step: f64,
    /// The tick values, multiples of `step`, inside the axis range.
    pub values: Vec<f64>,
}

impl Ticks {
    /// The tick labels, all written with the step's precision.
    pub fn labels(&self) -> Vec<String> {
        self.values
            .iter()
            .map(|&v| format_tick(v, self.step))
            .collect()
    }
}

/// Ticks inside `[lo, hi]` at 1, 2 or 5 × 10^k (never finer than `min_step`), about 5 or 6 of
/// them: counts of 5 or 6 are taken when some step gives one, else the count closest to it.
pub fn nice_ticks(lo: f64, hi: f64, min_step: f64) -> Ticks {
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
    let span = hi - lo;
    if !span.is_finite() || span <= 0.0 || !lo.is_finite() {
        let step = if min_step > 0.0 { min_step } else { 1.0 };
        let v = if lo.is_finite() { lo } else { 0.0 };
        return Ticks {
            step,
            values: vec![v],
        };
    }
    let top = span.log10().floor() as i32;
    let mut best: Option<(f64, usize, f64)> = None; // (score, count, step)
    for e in (top - 2)..=(top + 1) {
        for m in [1.0, 2.0, 5.0] {
            let step = m * 10f64.powi(e);
            if step < min_step {
                continue;
            }
            let count = tick_range(lo, hi, step).map_or(0, |(a, b)| (b - a + 1) as usize);
            if count < 2 {
                continue;
            }
            let score = if (5..=6).contains(&count) {
                0.0
            } else {
                (count as f64 - 5.5).abs()
            };
            // On a tie, the larger step (fewer labels) wins: candidates come smallest first.
            if best.is_none_or(|(s, _, _)| score <= s) {
                best = Some((score, count, step));
            }
        }
    }
    let step = best.map_or_else(|| min_step.max(span), |(_, _, s)| s);
    let values = match tick_range(lo, hi, step) {
        Some((a, b)) => (a..=b).map(|k| k as f64 * step).collect(),
        None => vec![lo],
    };
    Ticks { step, values }
}

/// The first and last multiples of `step` (as multipliers) inside `[lo, hi]`.
fn tick_range(lo: f64, hi: f64, step: f64) -> Option<(i64, i64)> {
    let a = (lo / step - 1e-9).ceil();
    let b = (hi / step + 1e-9).floor();
    if !(a.is_finite() && b.is_finite()) || b < a || b - a > 1000.0 {
        return None;
    }
    Some((a as i64, b as i64))
}

/// A tick value with as many decimals as its step needs.
fn format_tick(v: f64, step: f64) -> String {
    let v = if v == 0.0 { 0.0 } else { v }; // no "-0"
    if v.abs() >= 1e7 || step < 1e-4 {
        if v == 0.0 {
            return "0".into();
        }
        let s = format!("{v:.2e}");
        // 2.50e-5 -> 2.5e-5, 1.00e7 -> 1e7.
        match s.split_once('e') {
            Some((mant, exp)) => {
                let mant = mant.trim_end_matches('0').trim_end_matches('.');
                format!("{mant}e{exp}")
            }
            None => s,
        }
    } else {
        let decimals = (-(step.log10() + 1e-9).floor()).max(0.0) as usize;
        format!("{v:.decimals$}")
    }
}

/// A value with 4 significant digits (`1.235`, `0.01235`, `123.4`).
fn format_value(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if v.abs() >= 1e7 || v.abs() < 1e-4 {
        return format!("{v:.3e}");
    }
    let decimals = (3.0 - v.abs().log10().floor()).clamp(0.0, 8.0) as usize;
    format!("{v:.decimals$}")
}

/// Text for XML: `& < > " '` escaped, characters XML 1.0 forbids dropped.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(' '),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

/// The finite points, in step order.
fn finite(points: &[(usize, f32)]) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> = points
        .iter()
        .filter(|(_, l)| l.is_finite())
        .map(|&(s, l)| (s as f64, f64::from(l)))
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// The moving-average window for `n` points: about 2% of them, at least 1.
pub fn smoothing_window(n: usize) -> usize {
    ((n as f64 * 0.02).round() as usize).max(1)
}

/// Trailing moving average over `window` points (fewer at the start).
fn moving_average(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(points.len());
    let mut sum = 0.0;
    for (i, &(x, y)) in points.iter().enumerate() {
        sum += y;
        if i >= window {
            if let Some(&(_, old)) = points.get(i - window) {
                sum -= old;
            }
        }
        out.push((x, sum / (i + 1).min(window) as f64));
    }
    out
}

/// Maps data to image coordinates.
struct Frame {
    x: (f64, f64),
    y: (f64, f64),
}

impl Frame {
    fn px(&self, x: f64) -> f64 {
        LEFT + (x - self.x.0) / (self.x.1 - self.x.0) * (RIGHT - LEFT)
    }
    fn py(&self, y: f64) -> f64 {
        BOTTOM - (y - self.y.0) / (self.y.1 - self.y.0) * (BOTTOM - TOP)
    }
    fn points(&self, pts: &[(f64, f64)]) -> String {
        let mut s = String::with_capacity(pts.len() * 14);
        for (i, &(x, y)) in pts.iter().enumerate() {
            if i > 0 {
                s.push(' ');
            }
            let _ = write!(s, "{:.1},{:.1}", self.px(x), self.py(y));
        }
        s
    }
}

/// The SVG of the loss curve (about 800×450): `train` and `eval` are (step, loss) points;
/// non-finite losses are left out.
pub fn loss_curve_svg(train: &[(usize, f32)], eval: &[(usize, f32)], title: &str) -> String {
    let train_pts = finite(train);
    let eval_pts = finite(eval);
    let mut s = String::new();
    let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="{FONT}">"#
    );
    let _ = writeln!(
        s,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r##"<text class="title" x="{LEFT}" y="26" font-size="16" font-weight="bold" fill="#222222">{}</text>"##,
        escape(title)
    );
    if train_pts.is_empty() && eval_pts.is_empty() {
        let _ = writeln!(
            s,
            r##"<text class="no-data" x="{}" y="{}" font-size="18" fill="#888888" text-anchor="middle">no data</text>"##,
            WIDTH / 2.0,
            HEIGHT / 2.0
        );
        s.push_str("</svg>\n");
        return s;
    }

    // Ranges: the steps as they are, the losses with 5% room above and below.
    let all = || train_pts.iter().chain(eval_pts.iter());
    let (mut x0, mut x1) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
        (a.min(p.0), b.max(p.0))
    });
    let (y_min, y_max) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
        (a.min(p.1), b.max(p.1))
    });
    if x1 <= x0 {
        x0 = (x0 - 1.0).max(0.0);
        x1 = x0 + 2.0;
    }
    let (mut y0, mut y1) = if y_max > y_min {
        let pad = (y_max - y_min) * 0.05;
        (y_min - pad, y_max + pad)
    } else {
        let pad = (y_min.abs() * 0.1).max(0.1);
        (y_min - pad, y_max + pad)
    };
    if y_min >= 0.0 && y0 < 0.0 {
        y0 = 0.0;
    }
    if !(y1 - y0).is_finite() || y1 <= y0 {
        // Losses near f64's limits: fall back to a plain range.
        y0 = y_min.max(-1e300);
        y1 = y0 + 1.0;
    }
    let frame = Frame {
        x: (x0, x1),
        y: (y0, y1),
    };
    let xt = nice_ticks(x0, x1, 1.0);
    let yt = nice_ticks(y0, y1, 0.0);

    // Grid and tick labels.
    let _ = writeln!(s, r#"<g class="grid" stroke="{GRID}" stroke-width="1">"#);
    for &v in &xt.values {
        let x = frame.px(v);
        let _ = writeln!(
            s,
            r#"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{BOTTOM}"/>"#
        );
    }
    for &v in &yt.values {
        let y = frame.py(v);
        let _ = writeln!(
            s,
            r#"<line x1="{LEFT}" y1="{y:.1}" x2="{RIGHT}" y2="{y:.1}"/>"#
        );
    }
    s.push_str("</g>\n");
    let _ = writeln!(
        s,
        r#"<g font-size="12" fill="{AXIS}" stroke="none" text-anchor="middle">"#
    );
    for (v, label) in xt.values.iter().zip(xt.labels()) {
        let _ = writeln!(
            s,
            r#"<text class="xtick" x="{:.1}" y="{}">{}</text>"#,
            frame.px(*v),
            BOTTOM + 18.0,
            escape(&label)
        );
    }
    s.push_str("</g>\n");
    let _ = writeln!(
        s,
        r#"<g font-size="12" fill="{AXIS}" stroke="none" text-anchor="end">"#
    );
    for (v, label) in yt.values.iter().zip(yt.labels()) {
        let _ = writeln!(
            s,
            r#"<text class="ytick" x="{}" y="{:.1}">{}</text>"#,
            LEFT - 8.0,
            frame.py(*v) + 4.0,
            escape(&label)
        );
    }
    s.push_str("</g>\n");

    // Axes and their names.
    let _ = writeln!(
        s,
        r#"<path class="axes" d="M{LEFT},{TOP} V{BOTTOM} H{RIGHT}" fill="none" stroke="{AXIS}" stroke-width="1"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text class="xlabel" x="{:.1}" y="{}" font-size="13" fill="{AXIS}" text-anchor="middle">step</text>"#,
        (LEFT + RIGHT) / 2.0,
        HEIGHT - 14.0
    );
    let _ = writeln!(
        s,
        r#"<text class="ylabel" x="18" y="{:.1}" font-size="13" fill="{AXIS}" text-anchor="middle" transform="rotate(-90 18 {:.1})">loss</text>"#,
        (TOP + BOTTOM) / 2.0,
        (TOP + BOTTOM) / 2.0
    );

    // The curves.
    let window = smoothing_window(train_pts.len());
    if !train_pts.is_empty() {
        let _ = writeln!(
            s,
            r#"<polyline class="train-raw" points="{}" fill="none" stroke="{TRAIN_RAW}" stroke-width="1"/>"#,
            frame.points(&train_pts)
        );
        let _ = writeln!(
            s,
            r#"<polyline class="train-avg" points="{}" fill="none" stroke="{TRAIN_AVG}" stroke-width="2" stroke-linejoin="round"/>"#,
            frame.points(&moving_average(&train_pts, window))
        );
    }
    if !eval_pts.is_empty() {
        let _ = writeln!(
            s,
            r#"<polyline class="eval" points="{}" fill="none" stroke="{EVAL}" stroke-width="1.5"/>"#,
            frame.points(&eval_pts)
        );
        let _ = writeln!(
            s,
            r#"<g class="eval-markers" fill="{EVAL}" stroke="white" stroke-width="1">"#
        );
        for &(x, y) in &eval_pts {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5"/>"#,
                frame.px(x),
                frame.py(y)
            );
        }
        s.push_str("</g>\n");
    }

    // Legend, in the top right corner of the plot, where loss curves seldom go.
    let mut entries: Vec<(String, &str, f64, bool)> = Vec::new();
    if !train_pts.is_empty() {
        entries.push(("train loss".into(), TRAIN_RAW, 1.0, false));
        let avg = if window == 1 {
            "train loss (no smoothing: too few points)".to_string()
        } else {
            format!("train loss, moving average of {window}")
        };
        entries.push((avg, TRAIN_AVG, 2.0, false));
    }
    if !eval_pts.is_empty() {
        entries.push(("eval loss".into(), EVAL, 1.5, true));
    }
    let longest = entries
        .iter()
        .map(|e| e.0.chars().count())
        .max()
        .unwrap_or(0);
    let lw = 44.0 + longest as f64 * 6.6;
    let lh = 8.0 + entries.len() as f64 * 18.0;
    let lx = RIGHT - 10.0 - lw;
    let ly = TOP + 10.0;
    let _ = writeln!(s, r##"<g class="legend" font-size="12" fill="#222222">"##);
    let _ = writeln!(
        s,
        r##"<rect x="{lx:.1}" y="{ly:.1}" width="{lw:.1}" height="{lh:.1}" fill="white" fill-opacity="0.85" stroke="#cccccc"/>"##
    );
    for (i, (name, color, width, marker)) in entries.iter().enumerate() {
        let y = ly + 16.0 + i as f64 * 18.0;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="{width}"/>"#,
            lx + 8.0,
            y - 4.0,
            lx + 32.0,
            y - 4.0
        );
        if *marker {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{color}" stroke="white"/>"#,
                lx + 20.0,
                y - 4.0
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{y:.1}">{}</text>"#,
            lx + 38.0,
            escape(name)
        );
    }
    s.push_str("</g>\n");

    // The final values, in the top right corner of the image.
    let mut last = Vec::new();
    if let Some(&(_, l)) = train_pts.last() {
        last.push(format!("final train loss {}", format_value(l)));
    }
    if let Some(&(_, l)) = eval_pts.last() {
        last.push(format!("eval loss {}", format_value(l)));
    }
    let _ = writeln!(
        s,
        r#"<text class="final" x="{RIGHT}" y="46" font-size="12" fill="{AXIS}" text-anchor="end">{}</text>"#,
        escape(&last.join(", "))
    );
    s.push_str("</svg>\n");
    s
}

/// Writes [`loss_curve_svg`] to `path`, through a temporary file in the same folder renamed
/// into place, so that a reader never sees half an image.
pub fn write_loss_curve(
    path: &Path,
    train: &[(usize, f32)],
    eval: &[(usize, f32)],
    title: &str,
) -> Result<()> {
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let name = path.file_name().ok_or_else(|| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a file path",
        ))
    })?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let svg = loss_curve_svg(train, eval, title);
    let written = std::fs::write(&tmp, svg).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Well-formedness: balanced, properly nested tags; quoted attributes; no raw `<` or stray
    /// `&` in text or attribute values. Returns the number of elements.
    fn check_xml(s: &str) -> usize {
        let mut stack: Vec<String> = Vec::new();
        let mut elements = 0;
        let mut rest = s;
        let check_text = |t: &str| {
            let mut parts = t.split('&');
            parts.next();
            for p in parts {
                assert!(
                    ["amp;", "lt;", "gt;", "quot;", "apos;"]
                        .iter()
                        .any(|e| p.starts_with(e)),
                    "stray & in {t:?}"
                );
            }
        };
        let mut seen_root = false;
        while let Some(start) = rest.find('<') {
            let text = &rest[..start];
            if stack.is_empty() {
                assert!(text.trim().is_empty(), "text outside the root: {text:?}");
            }
            check_text(text);
            let end = rest[start..].find('>').expect("unclosed tag") + start;
            let tag = &rest[start + 1..end];
            rest = &rest[end + 1..];
            if let Some(pi) = tag.strip_prefix('?') {
                assert!(pi.ends_with('?') && !seen_root, "bad declaration {tag:?}");
                continue;
            }
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(
                    stack.pop().as_deref(),
                    Some(name.trim()),
                    "mismatched close"
                );
                continue;
            }
            let self_closing = tag.ends_with('/');
            let body = tag.trim_end_matches('/');
            let name_end = body.find(char::is_whitespace).unwrap_or(body.len());
            let name = &body[..name_end];
            assert!(
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
                "bad name {name:?}"
            );
            // Attributes: name="value" pairs.
            let mut attrs = body[name_end..].trim();
            while !attrs.is_empty() {
                let eq = attrs.find("=\"").expect("attribute without a quoted value");
                let aname = attrs[..eq].trim();
                assert!(!aname.is_empty() && !aname.contains(char::is_whitespace));
                let vend = attrs[eq + 2..].find('"').expect("unclosed value") + eq + 2;
                let value = &attrs[eq + 2..vend];
                assert!(!value.contains('<'));
                check_text(value);
                attrs = attrs[vend + 1..].trim_start();
            }
            if stack.is_empty() {
                assert!(!seen_root, "two root elements");
                seen_root = true;
            }
            elements += 1;
            if !self_closing {
                stack.push(name.to_string());
            }
        }
        assert!(rest.trim().is_empty());
        assert!(stack.is_empty(), "unclosed {stack:?}");
        assert!(seen_root);
        elements
    }

    /// The `points` of the polyline of `class`.
    fn polyline(svg: &str, class: &str) -> Vec<(f64, f64)> {
        let key = format!("<polyline class=\"{class}\" points=\"");
        let start = svg.find(&key).expect("polyline") + key.len();
        let end = svg[start..].find('"').unwrap() + start;
        svg[start..end]
            .split(' ')
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect()
    }

    /// The texts of the `<text class="{class}" …>` elements.
    fn texts(svg: &str, class: &str) -> Vec<String> {
        let key = format!("<text class=\"{class}\"");
        svg.match_indices(&key)
            .map(|(i, _)| {
                let open = svg[i..].find('>').unwrap() + i + 1;
                let close = svg[open..].find("</text>").unwrap() + open;
                svg[open..close].to_string()
            })
            .collect()
    }

    fn is_nice_step(step: f64) -> bool {
        let e = step.log10().floor();
        let m = step / 10f64.powf(e);
        [1.0, 2.0, 5.0, 10.0].iter().any(|n| (m - n).abs() < 1e-9)
    }

    #[test]
    fn ticks_are_nice_numbers() {
        let t = nice_ticks(0.0, 1000.0, 1.0);
        assert_eq!(t.step, 200.0);
        assert_eq!(t.labels(), ["0", "200", "400", "600", "800", "1000"]);
        let t = nice_ticks(1.098, 4.002, 0.0);
        assert_eq!(t.step, 0.5);
        assert_eq!(t.labels(), ["1.5", "2.0", "2.5", "3.0", "3.5", "4.0"]);
        let t = nice_ticks(0.0213, 0.0487, 0.0);
        assert_eq!(t.step, 0.005);
        assert_eq!(t.labels(), ["0.025", "0.030", "0.035", "0.040", "0.045"]);
        // Steps are integers: never a step of 0.5 between steps 1 and 3.
        let t = nice_ticks(1.0, 3.0, 1.0);
        assert_eq!(t.step, 1.0);
        assert_eq!(t.labels(), ["1", "2", "3"]);
        let t = nice_ticks(0.0, 2.0e-5, 0.0);
        assert_eq!(t.labels(), ["0", "5e-6", "1e-5", "1.5e-5", "2e-5"]);
        for (lo, hi) in [
            (0.0, 13.0),
            (3.0, 77.0),
            (0.1, 0.3),
            (2.5, 2.9),
            (1.0, 123_456.0),
            (7.7, 10.4),
        ] {
            let t = nice_ticks(lo, hi, 0.0);
            assert!(is_nice_step(t.step), "{lo}..{hi}: step {}", t.step);
            assert!(
                (4..=7).contains(&t.values.len()),
                "{lo}..{hi}: {:?}",
                t.values
            );
            for v in &t.values {
                assert!(*v >= lo - 1e-9 && *v <= hi + 1e-9, "{v} outside {lo}..{hi}");
                let k = v / t.step;
                assert!(
                    (k - k.round()).abs() < 1e-6,
                    "{v} not a multiple of {}",
                    t.step
                );
            }
        }
    }

    #[test]
    fn curves_skip_nan_and_count_their_points() {
        let mut train: Vec<(usize, f32)> = (1..=100).map(|s| (s, 3.0 - s as f32 * 0.01)).collect();
        train[10].1 = f32::NAN;
        train[20].1 = f32::INFINITY;
        train[30].1 = f32::NEG_INFINITY;
        let eval = vec![(25, 2.9), (50, f32::NAN), (75, 2.4), (100, 2.2)];
        let svg = loss_curve_svg(&train, &eval, "SmolLM <LoRA> & \"r=8\"");
        assert!(check_xml(&svg) > 20);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        let raw = polyline(&svg, "train-raw");
        let avg = polyline(&svg, "train-avg");
        assert_eq!(raw.len(), 97);
        assert_eq!(avg.len(), 97);
        assert_eq!(polyline(&svg, "eval").len(), 3);
        assert_eq!(svg.matches("<circle ").count(), 3 + 1); // markers + legend sample
                                                            // Trailing moving average of 2 points: the first point is the raw one, the second
                                                            // lies halfway between the first two.
        assert_eq!(smoothing_window(97), 2);
        assert_eq!(avg[0], raw[0]);
        assert!((avg[1].1 - (raw[0].1 + raw[1].1) / 2.0).abs() <= 0.1);
        // Every point inside the plot area.
        for (x, y) in raw.iter().chain(&avg) {
            assert!(
                (LEFT..=RIGHT).contains(x) && (TOP..=BOTTOM).contains(y),
                "{x},{y}"
            );
        }
        assert_eq!(
            texts(&svg, "title"),
            ["SmolLM &lt;LoRA&gt; &amp; &quot;r=8&quot;"]
        );
        assert_eq!(texts(&svg, "xtick"), ["20", "40", "60", "80", "100"]);
        // Losses 2.0..2.99, padded by 5%: 1.95..3.04.
        assert_eq!(
            texts(&svg, "ytick"),
            ["2.0", "2.2", "2.4", "2.6", "2.8", "3.0"]
        );
        assert_eq!(texts(&svg, "xlabel"), ["step"]);
        assert_eq!(texts(&svg, "ylabel"), ["loss"]);
        assert_eq!(
            texts(&svg, "final"),
            ["final train loss 2.000, eval loss 2.200"]
        );
        assert!(svg.contains(">train loss, moving average of 2</text>"));
        assert!(svg.contains(">eval loss</text>"));
    }

    #[test]
    fn empty_or_all_nan_input_says_no_data() {
        for (train, eval) in [
            (vec![], vec![]),
            (vec![(1, f32::NAN), (2, f32::INFINITY)], vec![(1, f32::NAN)]),
        ] {
            let svg = loss_curve_svg(&train, &eval, "run\u{1}");
            assert_eq!(check_xml(&svg), 4);
            assert_eq!(texts(&svg, "no-data"), ["no data"]);
            assert_eq!(texts(&svg, "title"), ["run"]);
            assert!(!svg.contains("<polyline"));
        }
    }

    #[test]
    fn a_single_point_or_only_eval_still_draws() {
        let svg = loss_curve_svg(&[(0, 2.5)], &[], "one");
        check_xml(&svg);
        assert_eq!(polyline(&svg, "train-raw").len(), 1);
        assert_eq!(texts(&svg, "final"), ["final train loss 2.500"]);
        assert!(!texts(&svg, "xtick").is_empty() && !texts(&svg, "ytick").is_empty());
        let svg = loss_curve_svg(&[], &[(10, 1.0), (20, 0.5)], "eval only");
        check_xml(&svg);
        assert!(!svg.contains("train-raw"));
        assert_eq!(polyline(&svg, "eval").len(), 2);
        assert_eq!(texts(&svg, "final"), ["eval loss 0.5000"]);
        assert_eq!(texts(&svg, "xtick"), ["10", "12", "14", "16", "18", "20"]);
    }

    #[test]
    fn write_loss_curve_renames_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.svg");
        let train = [(1, 2.0), (2, 1.5)];
        write_loss_curve(&path, &train, &[], "t").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            loss_curve_svg(&train, &[], "t")
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["loss.svg"]);
        let r = write_loss_curve(&dir.path().join("missing/loss.svg"), &train, &[], "t");
        assert!(matches!(r, Err(Error::Io { .. })));
    }
}
