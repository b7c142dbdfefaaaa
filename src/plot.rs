//! A loss-curve PNG, drawn with no plotting library: log-scale loss against
//! step, light grid lines at powers of ten, and the step and loss ranges
//! written with a tiny built-in digit font.

use std::path::Path;

use anyhow::Result;
use image::{Rgb, RgbImage};

const W: u32 = 640;
const H: u32 = 360;
const MARGIN: u32 = 40;

/// 3x5 bitmaps of `0-9`, `.`, `e`, `-` (one row per `u8`, 3 low bits).
fn glyph(c: char) -> Option<[u8; 5]> {
    Some(match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        'e' => [0, 7, 7, 4, 7],
        '-' => [0, 0, 7, 0, 0],
        _ => return None,
    })
}

/// Write `text` with its top-left corner at (x, y), 2x scaled.
fn text(img: &mut RgbImage, x: u32, y: u32, s: &str) {
    for (i, c) in s.chars().enumerate() {
        let Some(rows) = glyph(c) else { continue };
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..3 {
                if bits >> (2 - col) & 1 == 1 {
                    for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                        let (px, py) = (x + i as u32 * 8 + col * 2 + dx, y + r as u32 * 2 + dy);
                        if px < W && py < H {
                            img.put_pixel(px, py, Rgb([40, 40, 40]));
                        }
                    }
                }
            }
        }
    }
}

/// Plot `points` (step, loss) to a PNG at `path`, written atomically.
pub fn loss_curve(path: &Path, points: &[(u64, f32)]) -> Result<()> {
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let points: Vec<(u64, f32)> = points.iter().copied().filter(|p| p.1 > 0.0 && p.1.is_finite()).collect();
    if let (Some(first), Some(last)) = (points.first(), points.last()) {
        let (lo, hi) = points.iter().fold((f32::MAX, f32::MIN), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
        let (ylo, yhi) = ((lo.log10()).floor(), (hi.log10()).ceil().max(lo.log10().floor() + 1.0));
        let (x0, x1) = (first.0 as f32, (last.0 as f32).max(first.0 as f32 + 1.0));
        let (pw, ph) = ((W - 2 * MARGIN) as f32, (H - 2 * MARGIN) as f32);
        let to_px = |s: f32, l: f32| {
            let x = MARGIN as f32 + (s - x0) / (x1 - x0) * pw;
            let y = MARGIN as f32 + (yhi - l.log10()) / (yhi - ylo) * ph;
            (x, y)
        };
        // Grid lines at each power of ten.
        for decade in ylo as i32..=yhi as i32 {
            let y = to_px(x0, 10f32.powi(decade)).1 as u32;
            for x in MARGIN..W - MARGIN {
                img.put_pixel(x, y.min(H - 1), Rgb([225, 225, 225]));
            }
            text(&mut img, 2, y.saturating_sub(5), &format!("1e{decade}"));
        }
        // Smoothed curve (running mean over ~1% of the points) in blue.
        let window = (points.len() / 100).max(1);
        let mut prev: Option<(f32, f32)> = None;
        for (i, p) in points.iter().enumerate() {
            let from = i.saturating_sub(window);
            let mean = points[from..=i].iter().map(|q| q.1).sum::<f32>() / (i - from + 1) as f32;
            let (x, y) = to_px(p.0 as f32, mean);
            if let Some((px, py)) = prev {
                let steps = ((x - px).abs().max((y - py).abs()) as usize).max(1);
                for k in 0..=steps {
                    let t = k as f32 / steps as f32;
                    let (xx, yy) = ((px + (x - px) * t) as u32, (py + (y - py) * t) as u32);
                    if xx < W && yy < H {
                        img.put_pixel(xx, yy, Rgb([30, 90, 200]));
                    }
                }
            }
            prev = Some((x, y));
        }
        text(&mut img, MARGIN, H - MARGIN + 10, &first.0.to_string());
        let last_label = last.0.to_string();
        text(&mut img, W - MARGIN - 8 * last_label.len() as u32, H - MARGIN + 10, &last_label);
        text(&mut img, W / 2 - 40, 12, &format!("{:.4}", points.last().unwrap().1));
    }
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)?;
    crate::unet::params::write_atomically(path, &bytes)
}
