//! bench/results.png: bars of median req/s per scenario, drawn on a small canvas with a 3×5 font.

use crate::png::png;
use crate::scenarios::Scenario;

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Canvas {
        Canvas {
            w,
            h,
            px: vec![255; w * h * 3],
        }
    }

    fn rect(&mut self, x: usize, y: usize, w: usize, h: usize, rgb: [u8; 3]) {
        for yy in y..(y + h).min(self.h) {
            for xx in x..(x + w).min(self.w) {
                let i = (yy * self.w + xx) * 3;
                self.px[i..i + 3].copy_from_slice(&rgb);
            }
        }
    }

    /// Tiny 3×5 glyphs, `scale` pixels per dot; digits, A–G, '-', '.'.
    fn text(&mut self, x: usize, y: usize, scale: usize, s: &str, rgb: [u8; 3]) {
        for (n, ch) in s.chars().enumerate() {
            let rows = glyph(ch);
            for (r, bits) in rows.iter().enumerate() {
                for c in 0..3 {
                    if bits & (0b100 >> c) != 0 {
                        let gx = x + n * 4 * scale + c * scale;
                        self.rect(gx, y + r * scale, scale, scale, rgb);
                    }
                }
            }
        }
    }

    fn text_width(s: &str, scale: usize) -> usize {
        (s.chars().count() * 4).saturating_sub(1) * scale
    }
}

fn glyph(ch: char) -> [u8; 5] {
    match ch {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b001, 0b001, 0b001],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        'A' => [0b010, 0b101, 0b111, 0b101, 0b101],
        'B' => [0b110, 0b101, 0b110, 0b101, 0b110],
        'C' => [0b011, 0b100, 0b100, 0b100, 0b011],
        'D' => [0b110, 0b101, 0b101, 0b101, 0b110],
        'E' => [0b111, 0b100, 0b110, 0b100, 0b111],
        'F' => [0b111, 0b100, 0b110, 0b100, 0b100],
        'G' => [0b011, 0b100, 0b101, 0b101, 0b011],
        'H' => [0b101, 0b101, 0b111, 0b101, 0b101],
        '-' => [0b000, 0b000, 0b111, 0b000, 0b000],
        '.' => [0b000, 0b000, 0b000, 0b000, 0b010],
        _ => [0; 5],
    }
}

/// Bars of median req/s per scenario, (a)…(h), a missing one as an empty slot; value above each bar,
/// letter below, a grid line per step with its value on the left.
pub fn chart(scenarios: &[Scenario]) -> Vec<u8> {
    let (w, h) = (720usize, 400usize);
    let (left, right, top, bottom) = (70usize, 20usize, 30usize, 40usize);
    let mut c = Canvas::new(w, h);
    let slots = ["(a)", "(b)", "(c)", "(d)", "(e)", "(f)", "(g)", "(h)"];
    let value = |key: &str| {
        scenarios
            .iter()
            .find(|s| s.key == key && s.ok())
            .map(Scenario::median_rps)
    };
    let max = slots.iter().filter_map(|k| value(k)).fold(1.0, f64::max);
    // A grid step of 1, 2 or 5 × 10^n, about five lines.
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    // Headroom above the tallest bar for its label.
    let top_value = (max * 1.08 / step).ceil() * step;
    let plot_h = h - top - bottom;
    let y_of = |v: f64| top + plot_h - ((v / top_value) * plot_h as f64).round() as usize;
    let mut g = 0.0;
    while g <= top_value + step / 2.0 {
        let y = y_of(g);
        c.rect(left, y, w - left - right, 1, [220, 220, 220]);
        let label = format!("{g:.0}");
        c.text(
            left.saturating_sub(Canvas::text_width(&label, 2) + 8),
            y.saturating_sub(5),
            2,
            &label,
            [90, 90, 90],
        );
        g += step;
    }
    c.rect(left, top, 1, plot_h + 1, [60, 60, 60]);
    c.rect(left, top + plot_h, w - left - right, 1, [60, 60, 60]);
    let colors = [
        [70, 110, 180],
        [90, 140, 210],
        [120, 170, 230],
        [130, 130, 130],
        [60, 160, 90],
        [200, 200, 200],
        [220, 130, 50],
        [160, 120, 200],
    ];
    let slot_w = (w - left - right) / slots.len();
    let bar_w = slot_w * 3 / 5;
    for (i, key) in slots.iter().enumerate() {
        let x = left + i * slot_w + (slot_w - bar_w) / 2;
        let letter = key[1..2].to_ascii_uppercase();
        c.text(
            x + (bar_w - Canvas::text_width(&letter, 3)) / 2,
            top + plot_h + 10,
            3,
            &letter,
            [40, 40, 40],
        );
        match value(key) {
            Some(v) => {
                let y = y_of(v);
                c.rect(x, y, bar_w, top + plot_h - y, colors[i]);
                let label = format!("{v:.0}");
                c.text(
                    (x + bar_w / 2).saturating_sub(Canvas::text_width(&label, 2) / 2),
                    y.saturating_sub(14),
                    2,
                    &label,
                    [40, 40, 40],
                );
            }
            None => {
                // Not measured: a dash on the axis.
                let label = "-";
                c.text(
                    (x + bar_w / 2).saturating_sub(Canvas::text_width(label, 3) / 2),
                    top + plot_h - 20,
                    3,
                    label,
                    [150, 150, 150],
                );
            }
        }
    }
    png(c.w, c.h, &c.px)
}
