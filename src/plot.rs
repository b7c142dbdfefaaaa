//! `loss.png`: what a training run has logged, drawn with `plotters` into an
//! RGB buffer and encoded with `image`.
//!
//! Up to three panels stacked on one shared step axis, each with its legend in
//! a column on the right:
//! - "Training loss": every step's loss as a light line and its exponential
//!   moving average as a strong one, log y;
//! - "Loss by timestep decile": the smoothed loss of each tenth of [0, T),
//!   one colour per decile from violet (t near 0) to red (t near T), log y;
//! - "Sample quality" (only once there are evaluations): the Fréchet distance
//!   on log y with the real-vs-real floor dashed, and the confident fraction
//!   on a secondary 0..1 axis.
//!
//! Values that are NaN, infinite or not positive are skipped (they cannot sit
//! on a log axis); an empty panel still draws its axes and says why it is empty.
//!
//! Text uses DejaVu Sans, embedded (`assets/fonts/`), so the plot looks the
//! same on a machine with no fonts installed. plotters draws the tick labels
//! with it; titles, axis names and legends are laid out here with `ab_glyph`
//! after plotters is done, because plotters 0.3.7's `ab_glyph` renderer drops
//! each glyph's left side bearing, which squeezes spaces and spreads "fi" in
//! words (plotters issue #576); digits do not show it.

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, ScaleFont};
use anyhow::{anyhow, Context, Result};
use image::RgbImage;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, KeyPointWeight, Ranged};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

/// What a training run has logged so far, for `loss.png`.
#[derive(Clone, Debug, Default)]
pub struct TrainingCurves {
    /// (step, loss) of every step.
    pub loss: Vec<(u64, f32)>,
    /// (step, mean loss of that step's samples whose timestep falls in decile d of [0, T)); NaN where the step had no sample in that decile.
    pub decile_loss: Vec<(u64, [f32; 10])>,
    /// Sample-quality evaluations during training.
    pub eval: Vec<EvalPoint>,
}

/// One sample-quality evaluation: the Fréchet distance between generated and
/// real features, the same distance between two sets of real images (what a
/// perfect model would score), and the fraction of samples a classifier is
/// confident about.
#[derive(Clone, Copy, Debug)]
pub struct EvalPoint {
    pub step: u64,
    pub frechet: f64,
    pub frechet_floor: f64,
    pub confident_fraction: f64,
}

/// The family every plotters text style names; the embedded font is registered under it.
const FONT: &str = "sans-serif";
const FONT_BYTES: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");

const WIDTH: u32 = 900;
/// Height of the loss and decile panels.
const PANEL_H: u32 = 320;
/// Height of the sample-quality panel.
const EVAL_H: u32 = 260;
/// Width of the legend column right of every panel.
const LEGEND_W: u32 = 190;
/// Width of the secondary axis's ticks and name right of a plot.
const RIGHT_AXIS_W: u32 = 60;

const RAW_LOSS: RGBColor = RGBColor(160, 190, 230);
const SMOOTHED_LOSS: RGBColor = RGBColor(20, 70, 170);
const FRECHET: RGBColor = RGBColor(190, 30, 45);
const FLOOR: RGBColor = RGBColor(100, 100, 100);
const CONFIDENT: RGBColor = RGBColor(20, 140, 70);
const GRID_BOLD: RGBColor = RGBColor(215, 215, 215);
const GRID_LIGHT: RGBColor = RGBColor(240, 240, 240);
const INK: RGBColor = RGBColor(40, 40, 40);
const NOTE: RGBColor = RGBColor(120, 120, 120);

const CAPTION_PX: f32 = 19.0;
const LABEL_PX: f32 = 15.0;
const SMALL_PX: f32 = 13.0;

/// Register the embedded font with plotters, once per process.
fn register_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES).is_ok());
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the embedded font assets/fonts/DejaVuSans.ttf could not be parsed"))
    }
}

/// Draw the curves to a PNG at `path` (atomically).
pub fn training_plot(path: &Path, curves: &TrainingCurves) -> Result<()> {
    register_font()?;
    let mut heights = vec![PANEL_H, PANEL_H];
    if !curves.eval.is_empty() {
        heights.push(EVAL_H);
    }
    let height: u32 = heights.iter().sum();
    let mut buffer = vec![255u8; (WIDTH * height * 3) as usize];
    let mut labels = Vec::new();
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let steps = step_range(curves);
        let mut rest = root.clone();
        let mut panels = Vec::new();
        for &h in &heights {
            let (panel, below) = rest.split_vertically(h);
            panels.push(panel);
            rest = below;
        }
        loss_panel(&panels[0], steps.clone(), &curves.loss, &mut labels)?;
        decile_panel(&panels[1], steps.clone(), &curves.decile_loss, &mut labels)?;
        if let Some(panel) = panels.get(2) {
            eval_panel(panel, steps, &curves.eval, &mut labels)?;
        }
        root.present().map_err(plot_error)?;
    }
    let mut img = RgbImage::from_raw(WIDTH, height, buffer).context("the plot buffer has the wrong size")?;
    let font = FontRef::try_from_slice(FONT_BYTES).context("parsing the embedded font")?;
    for label in &labels {
        label.draw(&mut img, &font);
    }
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)?;
    crate::unet::params::write_atomically(path, &bytes)
}

/// plotters' drawing errors are generic over the backend; convert them in one place.
fn plot_error<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow!("drawing the training plot: {e}")
}

/// A line of text placed in image pixels, drawn over the finished plot.
struct Label {
    text: String,
    /// The anchor point, in pixels of the whole image.
    at: (i32, i32),
    px: f32,
    colour: RGBColor,
    /// Where `at` falls in the text's box, as fractions of its width and
    /// height: (0, 0.5) is the middle of the left edge.
    anchor: (f32, f32),
    /// Rotated 90 degrees anticlockwise (reads bottom to top), for y axes.
    vertical: bool,
}

impl Label {
    fn new(text: impl Into<String>, at: (i32, i32), px: f32, anchor: (f32, f32)) -> Label {
        Label { text: text.into(), at, px, colour: INK, anchor, vertical: false }
    }

    fn colour(self, colour: RGBColor) -> Label {
        Label { colour, ..self }
    }

    fn vertical(self) -> Label {
        Label { vertical: true, ..self }
    }

    /// Lay the text out on one baseline (advances and kerning in fractional
    /// pixels, each glyph at its own bounds) and blend its coverage into `img`.
    fn draw(&self, img: &mut RgbImage, font: &FontRef<'_>) {
        let scaled = font.as_scaled(self.px);
        let (mut pen, mut prev) = (0.0f32, None);
        let mut glyphs = Vec::new();
        for c in self.text.chars() {
            let id = scaled.glyph_id(c);
            if let Some(prev) = prev {
                pen += scaled.kern(prev, id);
            }
            glyphs.push(id.with_scale_and_position(self.px, ab_glyph::point(pen, scaled.ascent())));
            pen += scaled.h_advance(id);
            prev = Some(id);
        }
        let height = scaled.ascent() - scaled.descent();
        let (ox, oy) = ((pen * self.anchor.0).round() as i32, (height * self.anchor.1).round() as i32);
        let [r, g, b] = [self.colour.0, self.colour.1, self.colour.2].map(f32::from);
        for glyph in glyphs {
            let Some(outline) = font.outline_glyph(glyph) else { continue };
            let bounds = outline.px_bounds();
            outline.draw(|gx, gy, coverage| {
                // (u, v): the pixel in the unrotated text box, anchor at the origin.
                let (u, v) = (bounds.min.x as i32 + gx as i32 - ox, bounds.min.y as i32 + gy as i32 - oy);
                let (x, y) =
                    if self.vertical { (self.at.0 + v, self.at.1 - u) } else { (self.at.0 + u, self.at.1 + v) };
                if x < 0 || y < 0 || x >= img.width() as i32 || y >= img.height() as i32 {
                    return;
                }
                let c = coverage.clamp(0.0, 1.0);
                let p = img.get_pixel_mut(x as u32, y as u32);
                for (channel, ink) in p.0.iter_mut().zip([r, g, b]) {
                    *channel = (f32::from(*channel) * (1.0 - c) + ink * c).round() as u8;
                }
            });
        }
    }
}

/// A value that can sit on a log axis.
fn plottable(v: f64) -> bool {
    v.is_finite() && v > 0.0
}

/// The step axis shared by every panel: first to last step of anything logged.
fn step_range(curves: &TrainingCurves) -> StepAxis {
    let steps = curves
        .loss
        .iter()
        .map(|p| p.0)
        .chain(curves.decile_loss.iter().map(|p| p.0))
        .chain(curves.eval.iter().map(|e| e.step));
    let (lo, hi) = steps.fold((u64::MAX, 0), |(lo, hi), s| (lo.min(s), hi.max(s)));
    if lo > hi {
        StepAxis { lo: 0, hi: 100 }
    } else if lo == hi {
        let hi = lo.saturating_add(1);
        StepAxis { lo: hi.saturating_sub(2), hi }
    } else {
        StepAxis { lo, hi }
    }
}

/// A log-axis range holding every plottable value, padded by 5% of its decades
/// on each side and at least half a decade tall (so at least two ticks); `None` when nothing is plottable.
fn log_range(values: impl Iterator<Item = f64>) -> Option<LogAxis> {
    let (lo, hi) = values.filter(|&v| plottable(v)).fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return None;
    }
    let (lo, hi) = (lo.log10(), hi.log10());
    let centre = (lo + hi) / 2.0;
    let half = ((hi - lo) / 2.0 * 1.1).max(0.25);
    Some(LogAxis { lo: 10f64.powf(centre - half), hi: 10f64.powf(centre + half) })
}

/// The step axis: exact for any u64 (plotters' own u64 axis maps through f64
/// before subtracting the start, so 2,000 steps near 1.8e19 fall on one pixel
/// column) with ticks at round steps (every 1, 2 or 5 x 10^k).
#[derive(Clone)]
struct StepAxis {
    lo: u64,
    hi: u64,
}

impl StepAxis {
    /// Multiples of the smallest round spacing that gives at most `max` ticks.
    fn ticks(&self, max: usize) -> Vec<u64> {
        let span = self.hi - self.lo;
        let wanted = span / max.max(1) as u64 + 1;
        let mut round = (0..20).flat_map(|power| [1u64, 2, 5].map(|m| m.saturating_mul(10u64.saturating_pow(power))));
        let spacing = round.find(|&c| c >= wanted).unwrap_or(u64::MAX);
        let first = self.lo.div_ceil(spacing).saturating_mul(spacing);
        std::iter::successors(Some(first), |t| t.checked_add(spacing)).take_while(|&t| t <= self.hi).collect()
    }
}

impl Ranged for StepAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = u64;

    fn map(&self, value: &u64, limit: (i32, i32)) -> i32 {
        let t = value.saturating_sub(self.lo) as f64 / (self.hi - self.lo) as f64;
        limit.0 + (f64::from(limit.1 - limit.0) * t).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<u64> {
        self.ticks(hint.max_num_points())
    }

    fn range(&self) -> Range<u64> {
        self.lo..self.hi
    }
}

/// A log-scale value axis with the ticks people read off a loss plot: the
/// densest of 1, 2, 3, 4, 5, 6, 8 x 10^k, or 1, 2, 5 x 10^k (0.02, 0.05, 0.1,
/// ...), or 1, 3 x 10^k that fits, else every decade or every few decades, with a light grid line at each 1..9 x 10^k. (plotters'
/// own log axis labels only the decades, so a curve from 0.02 to 1 gets two
/// labels.)
#[derive(Clone)]
struct LogAxis {
    lo: f64,
    hi: f64,
}

impl LogAxis {
    /// Every m x 10^k in [lo, hi] for m in `mantissas`, for each `every`-th k.
    fn ticks(&self, mantissas: &[f64], every: i32) -> Vec<f64> {
        let (first, last) = (self.lo.log10().floor() as i32, self.hi.log10().ceil() as i32);
        let decades = (first..=last).filter(|k| k.rem_euclid(every) == 0);
        let ticks = decades.flat_map(|k| mantissas.iter().map(move |m| m * 10f64.powi(k)));
        // A hair of slack so a range ending on a tick keeps it.
        ticks.filter(|&v| v >= self.lo * (1.0 - 1e-9) && v <= self.hi * (1.0 + 1e-9)).collect()
    }
}

impl Ranged for LogAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let (lo, hi) = (self.lo.log10(), self.hi.log10());
        let t = (value.max(f64::MIN_POSITIVE).log10() - lo) / (hi - lo);
        limit.0 + (f64::from(limit.1 - limit.0) * t).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        let max = hint.max_num_points().max(2);
        let all: Vec<f64> = (1..10).map(f64::from).collect();
        if matches!(hint.weight(), KeyPointWeight::Any) {
            let light = self.ticks(&all, 1);
            return if light.len() <= max { light } else { self.ticks(&[1.0], 1) };
        }
        // No 7 or 9: near the top of a decade those labels would touch.
        let dense = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0];
        let candidates = [self.ticks(&dense, 1), self.ticks(&[1.0, 2.0, 5.0], 1), self.ticks(&[1.0, 3.0], 1)];
        if let Some(fits) = candidates.into_iter().find(|t| t.len() <= max) {
            return fits;
        }
        (1..).map(|every| self.ticks(&[1.0], every)).find(|t| t.len() <= max).unwrap_or_default()
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

/// Bias-corrected exponential moving average over `points` with a span of
/// `span` points: s_k = b s_{k-1} + (1 - b) x_k with b = 1 - 1/span, shown as
/// s_k / (1 - b^k) so the first points are not pulled towards zero.
fn ema(points: &[(u64, f64)], span: usize) -> Vec<(u64, f64)> {
    let b = 1.0 - 1.0 / span.max(1) as f64;
    let (mut s, mut weight) = (0.0, 0.0);
    points
        .iter()
        .map(|&(step, v)| {
            s = b * s + (1.0 - b) * v;
            weight = b * weight + (1.0 - b);
            (step, s / weight)
        })
        .collect()
}

/// The smoothing span for `n` points: about 1/25 of the curve, 1 to 200 points.
fn span_for(n: usize) -> usize {
    (n / 25).clamp(1, 200)
}

/// A tick label for a step, exact and short: 950, 9999, 12k, 12.5k, 1.205M, 2G.
fn step_label(step: u64) -> String {
    if step >= 10_000 {
        for (unit, suffix) in [(1_000_000_000u64, "G"), (1_000_000, "M"), (1_000, "k")] {
            if step >= unit && step.is_multiple_of(unit / 1000) {
                let (whole, thousandths) = (step / unit, step % unit / (unit / 1000));
                if thousandths == 0 {
                    return format!("{whole}{suffix}");
                }
                return format!("{whole}.{}{suffix}", format!("{thousandths:03}").trim_end_matches('0'));
            }
        }
    }
    step.to_string()
}

/// A value with about three significant digits and no trailing zeros: 0.025, 1.5, 300, 1e-5.
fn value_label(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 || !a.is_finite() {
        return format!("{v}");
    }
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.0e}");
    }
    let decimals = (2 - a.log10().floor() as i32).clamp(0, 6) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// The colour of decile `d` of 10: violet (t near 0) through blue, green and
/// olive to red (t near T), all dark enough to read on white.
fn decile_colour(d: usize) -> RGBColor {
    let hue = (1.0 - d as f64 / 9.0) * 270.0 / 360.0;
    let lightness = if (40.0..80.0).contains(&(hue * 360.0)) { 0.38 } else { 0.45 };
    let (r, g, b) = HSLColor(hue, 0.85, lightness).rgb();
    RGBColor(r, g, b)
}

/// The style of tick labels (the only text plotters draws).
fn tick_font() -> TextStyle<'static> {
    (FONT, SMALL_PX as f64).into_font().color(&INK)
}

/// How a legend entry's sample is drawn.
enum Swatch {
    Line(RGBColor),
    Dashed(RGBColor),
}

type Area<'b> = DrawingArea<BitMapBackend<'b>, Shift>;

/// The pixel rectangle (absolute) of a chart's plotting area.
struct PlotBox {
    x: Range<i32>,
    y: Range<i32>,
}

impl PlotBox {
    fn of<X: Ranged, Y: Ranged>(area: &DrawingArea<BitMapBackend<'_>, Cartesian2d<X, Y>>) -> PlotBox {
        let (x, y) = area.get_pixel_range();
        PlotBox { x, y }
    }

    fn centre(&self) -> (i32, i32) {
        ((self.x.start + self.x.end) / 2, (self.y.start + self.y.end) / 2)
    }
}

/// A panel's chart builder: room on top for the title, left and bottom for
/// ticks and axis names, and right for a secondary axis (kept on every panel so
/// their step axes line up, empty where the panel has none).
fn builder<'a, 'b>(area: &'a Area<'b>, secondary_axis: bool) -> ChartBuilder<'a, 'b, BitMapBackend<'b>> {
    let mut b = ChartBuilder::on(area);
    b.margin(8).margin_top(36).x_label_area_size(44).y_label_area_size(70);
    if secondary_axis {
        b.right_y_label_area_size(RIGHT_AXIS_W);
    } else {
        b.margin_right(8 + RIGHT_AXIS_W);
    }
    b
}

/// The panel's title above its plot, the step axis's name below, the y axis's
/// name at the left and, if given, a secondary axis's name at the right.
fn titles(
    labels: &mut Vec<Label>,
    plot: &PlotBox,
    panel: &Area<'_>,
    title: &str,
    y_desc: &str,
    right: Option<(&str, RGBColor)>,
) {
    let (cx, cy) = plot.centre();
    labels.push(Label::new(title, (cx, panel.get_base_pixel().1 + 20), CAPTION_PX, (0.5, 0.5)));
    labels.push(Label::new("step", (cx, plot.y.end + 34), LABEL_PX, (0.5, 0.5)));
    labels.push(Label::new(y_desc, (plot.x.start - 56, cy), LABEL_PX, (0.5, 0.5)).vertical());
    if let Some((desc, colour)) = right {
        labels.push(Label::new(desc, (plot.x.end + 46, cy), LABEL_PX, (0.5, 0.5)).vertical().colour(colour));
    }
}

/// A legend in `area` (the legend column) level with the plot's top.
fn legend(
    area: &Area<'_>,
    plot: &PlotBox,
    labels: &mut Vec<Label>,
    title: Option<&str>,
    entries: &[(Swatch, String, Option<&str>)],
) -> Result<()> {
    let (base_x, base_y) = area.get_base_pixel();
    let (x, mut y) = (8, plot.y.start - base_y + 8);
    if let Some(title) = title {
        labels.push(Label::new(title, (base_x + x, base_y + y), SMALL_PX, (0.0, 0.5)));
        y += 20;
    }
    for (swatch, text, note) in entries {
        match swatch {
            Swatch::Line(colour) => {
                area.draw(&PathElement::new(vec![(x, y), (x + 26, y)], colour.stroke_width(3))).map_err(plot_error)?
            }
            Swatch::Dashed(colour) => {
                for k in 0..3 {
                    let x0 = x + k * 10;
                    area.draw(&PathElement::new(vec![(x0, y), (x0 + 6, y)], colour.stroke_width(2)))
                        .map_err(plot_error)?;
                }
            }
        }
        labels.push(Label::new(text.as_str(), (base_x + x + 34, base_y + y), SMALL_PX, (0.0, 0.5)));
        y += 19;
        if let Some(note) = note {
            labels.push(Label::new(*note, (base_x + x + 34, base_y + y - 3), SMALL_PX - 1.0, (0.0, 0.5)).colour(NOTE));
            y += 17;
        }
    }
    Ok(())
}

/// Say why a plot is empty, in its middle.
fn note(labels: &mut Vec<Label>, plot: &PlotBox, text: &str) {
    labels.push(Label::new(text, plot.centre(), LABEL_PX, (0.5, 0.5)).colour(NOTE));
}

type LogChart<'a, 'b> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<StepAxis, LogAxis>>;

/// Grid, ticks and tick labels of a (step, log value) chart.
fn mesh(chart: &mut LogChart<'_, '_>, y_labels: usize) -> Result<()> {
    chart
        .configure_mesh()
        .x_label_formatter(&|s| step_label(*s))
        .y_label_formatter(&|v| value_label(*v))
        .x_labels(10)
        .y_labels(y_labels)
        .bold_line_style(GRID_BOLD)
        .light_line_style(GRID_LIGHT)
        .label_style(tick_font())
        .draw()
        .map_err(plot_error)
}

fn loss_panel(panel: &Area<'_>, steps: StepAxis, loss: &[(u64, f32)], labels: &mut Vec<Label>) -> Result<()> {
    let (chart_area, legend_area) = panel.split_horizontally(WIDTH - LEGEND_W);
    let raw: Vec<(u64, f64)> = loss.iter().map(|&(s, v)| (s, v as f64)).filter(|p| plottable(p.1)).collect();
    let span = span_for(raw.len());
    let smoothed = ema(&raw, span);
    let y = log_range(raw.iter().map(|p| p.1)).unwrap_or(LogAxis { lo: 0.01, hi: 1.0 });
    let mut chart = builder(&chart_area, false).build_cartesian_2d(steps, y).map_err(plot_error)?;
    mesh(&mut chart, 8)?;
    let plot = PlotBox::of(chart.plotting_area());
    let title = match smoothed.last() {
        Some(&(step, v)) => format!("Training loss: {} (smoothed) at step {step}", value_label(v)),
        None => "Training loss".to_string(),
    };
    titles(labels, &plot, panel, &title, "loss (log scale)", None);
    if raw.is_empty() {
        note(labels, &plot, "no losses logged yet");
    } else {
        chart.draw_series(LineSeries::new(raw.iter().copied(), RAW_LOSS.stroke_width(1))).map_err(plot_error)?;
        if raw.len() <= 50 {
            // Few points: mark each one, so a single step still shows.
            chart.draw_series(raw.iter().map(|&p| Circle::new(p, 3, RAW_LOSS.filled()))).map_err(plot_error)?;
        }
        chart
            .draw_series(LineSeries::new(smoothed.iter().copied(), SMOOTHED_LOSS.stroke_width(2)))
            .map_err(plot_error)?;
    }
    let entries = [
        (Swatch::Line(RAW_LOSS), "loss of each step".to_string(), None),
        (Swatch::Line(SMOOTHED_LOSS), format!("smoothed ({span} step{})", if span == 1 { "" } else { "s" }), None),
    ];
    legend(&legend_area, &plot, labels, None, &entries)
}

fn decile_panel(
    panel: &Area<'_>,
    steps: StepAxis,
    deciles: &[(u64, [f32; 10])],
    labels: &mut Vec<Label>,
) -> Result<()> {
    let (chart_area, legend_area) = panel.split_horizontally(WIDTH - LEGEND_W);
    // Each decile's loss is a mean over the few samples of the batch that fell
    // in it, so it is noisier than the step's loss: smooth each on its own.
    let lines: Vec<Vec<(u64, f64)>> = (0..10)
        .map(|d| {
            let raw: Vec<(u64, f64)> =
                deciles.iter().map(|(s, v)| (*s, v[d] as f64)).filter(|p| plottable(p.1)).collect();
            ema(&raw, span_for(raw.len()).max(5))
        })
        .collect();
    let y = log_range(lines.iter().flatten().map(|p| p.1)).unwrap_or(LogAxis { lo: 0.01, hi: 1.0 });
    let mut chart = builder(&chart_area, false).build_cartesian_2d(steps, y).map_err(plot_error)?;
    mesh(&mut chart, 8)?;
    let plot = PlotBox::of(chart.plotting_area());
    titles(labels, &plot, panel, "Loss by timestep decile (smoothed)", "loss (log scale)", None);
    if lines.iter().all(|l| l.is_empty()) {
        note(labels, &plot, "no per-timestep losses logged");
    }
    for (d, line) in lines.iter().enumerate() {
        let colour = decile_colour(d);
        chart.draw_series(LineSeries::new(line.iter().copied(), colour.stroke_width(2))).map_err(plot_error)?;
        if line.len() == 1 {
            chart.draw_series(line.iter().map(|&p| Circle::new(p, 3, colour.filled()))).map_err(plot_error)?;
        }
    }
    let entries: Vec<(Swatch, String, Option<&str>)> =
        (0..10).map(|d| (Swatch::Line(decile_colour(d)), format!("{}–{}% of T", d * 10, d * 10 + 10), None)).collect();
    legend(&legend_area, &plot, labels, Some("timestep t in"), &entries)
}

fn eval_panel(panel: &Area<'_>, steps: StepAxis, eval: &[EvalPoint], labels: &mut Vec<Label>) -> Result<()> {
    let (chart_area, legend_area) = panel.split_horizontally(WIDTH - LEGEND_W);
    let frechet: Vec<(u64, f64)> = eval.iter().map(|e| (e.step, e.frechet)).filter(|p| plottable(p.1)).collect();
    let floor: Vec<(u64, f64)> = eval.iter().map(|e| (e.step, e.frechet_floor)).filter(|p| plottable(p.1)).collect();
    let confident: Vec<(u64, f64)> = eval
        .iter()
        .filter(|e| e.confident_fraction.is_finite())
        .map(|e| (e.step, e.confident_fraction.clamp(0.0, 1.0)))
        .collect();
    let y = log_range(frechet.iter().chain(&floor).map(|p| p.1)).unwrap_or(LogAxis { lo: 1.0, hi: 100.0 });
    let mut chart = builder(&chart_area, true)
        .build_cartesian_2d(steps.clone(), y)
        .map_err(plot_error)?
        .set_secondary_coord(steps.clone(), 0.0..1.0);
    mesh(&mut chart, 6)?;
    chart
        .configure_secondary_axes()
        .y_label_formatter(&|v| format!("{v:.1}"))
        .y_labels(6)
        .label_style(tick_font().color(&CONFIDENT))
        .draw()
        .map_err(plot_error)?;
    let plot = PlotBox::of(chart.plotting_area());
    let title = match frechet.last() {
        Some(&(step, v)) => format!("Sample quality: Fréchet distance {} at step {step}", value_label(v)),
        None => "Sample quality".to_string(),
    };
    titles(labels, &plot, panel, &title, "Fréchet distance (log)", Some(("confident fraction", CONFIDENT)));
    if frechet.is_empty() && confident.is_empty() {
        note(labels, &plot, "no evaluation has a finite value");
    }
    // The floor is a reference level, not a trend: carry it flat to both ends.
    if let (Some(first), Some(last)) = (floor.first(), floor.last()) {
        let flat = std::iter::once((steps.lo, first.1)).chain(floor.iter().copied()).chain([(steps.hi, last.1)]);
        chart.draw_series(DashedLineSeries::new(flat, 8, 6, FLOOR.stroke_width(2))).map_err(plot_error)?;
    }
    chart.draw_series(LineSeries::new(frechet.iter().copied(), FRECHET.stroke_width(2))).map_err(plot_error)?;
    chart.draw_series(frechet.iter().map(|&p| Circle::new(p, 3, FRECHET.filled()))).map_err(plot_error)?;
    chart
        .draw_secondary_series(LineSeries::new(confident.iter().copied(), CONFIDENT.stroke_width(2)))
        .map_err(plot_error)?;
    chart
        .draw_secondary_series(confident.iter().map(|&p| TriangleMarker::new(p, 4, CONFIDENT.filled())))
        .map_err(plot_error)?;
    let entries = [
        (Swatch::Line(FRECHET), "Fréchet distance".to_string(), None),
        (Swatch::Dashed(FLOOR), "real-vs-real floor".to_string(), None),
        (Swatch::Line(CONFIDENT), "confident fraction".to_string(), Some("(right axis)")),
    ];
    legend(&legend_area, &plot, labels, None, &entries)
}

/// Read the curves back from a metrics.csv (for --resume); missing/garbled file or columns -> whatever parses (never panics).
///
/// Columns are found by their header names: `step`, `loss`, `loss_t0` ..
/// `loss_t9`, `frechet`, `frechet_floor`, `confident_fraction`; any may be
/// absent (older files have only `step,loss,lr,grad_norm,images_per_second`)
/// and any cell may be empty. A line whose step does not parse is skipped; a
/// step gets a decile row when at least one decile cell parses (the others are
/// NaN) and an evaluation when its Fréchet distance or confident fraction does.
pub fn read_curves(metrics_csv: &Path) -> TrainingCurves {
    let mut curves = TrainingCurves::default();
    let Ok(text) = std::fs::read_to_string(metrics_csv) else { return curves };
    let mut lines = text.lines();
    let Some(header) = lines.next() else { return curves };
    let names: Vec<&str> = header.split(',').map(str::trim).collect();
    let column = |name: &str| names.iter().position(|n| *n == name);
    let Some(step_col) = column("step") else { return curves };
    let loss_col = column("loss");
    let decile_cols: [Option<usize>; 10] = std::array::from_fn(|d| column(&format!("loss_t{d}")));
    let (frechet_col, floor_col, confident_col) =
        (column("frechet"), column("frechet_floor"), column("confident_fraction"));
    for line in lines {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let cell = |col: Option<usize>| -> Option<f64> { cells.get(col?)?.parse().ok() };
        let Some(step) = cells.get(step_col).and_then(|c| c.parse::<u64>().ok()) else { continue };
        if let Some(loss) = cell(loss_col) {
            curves.loss.push((step, loss as f32));
        }
        let deciles = decile_cols.map(|c| cell(c).map(|v| v as f32));
        if deciles.iter().any(Option::is_some) {
            curves.decile_loss.push((step, deciles.map(|v| v.unwrap_or(f32::NAN))));
        }
        let (frechet, floor, confident) = (cell(frechet_col), cell(floor_col), cell(confident_col));
        if frechet.is_some() || confident.is_some() {
            curves.eval.push(EvalPoint {
                step,
                frechet: frechet.unwrap_or(f64::NAN),
                frechet_floor: floor.unwrap_or(f64::NAN),
                confident_fraction: confident.unwrap_or(f64::NAN),
            });
        }
    }
    curves
}

#[cfg(test)]
mod tests {
    use plotters::coord::ranged1d::{BoldPoints, LightPoints};

    use super::*;

    #[test]
    fn step_labels_are_exact_and_short() {
        let labels: Vec<String> =
            [0, 950, 9_999, 10_000, 12_500, 12_345, 1_205_000, 2_000_000_000, u64::MAX].map(step_label).to_vec();
        let want =
            ["0", "950", "9999", "10k", "12.5k", "12.345k", "1.205M", "2G", "18446744073709551.615k"].map(String::from);
        assert_eq!(labels, want);
    }

    #[test]
    fn axes_tick_at_round_values() {
        let labels = |axis: &LogAxis, max: usize| -> Vec<String> {
            axis.key_points(BoldPoints(max)).into_iter().map(value_label).collect()
        };
        // A loss from 0.29 to 1.07 (under one decade) gets the dense mantissas.
        assert_eq!(labels(&LogAxis { lo: 0.29, hi: 1.07 }, 8), ["0.3", "0.4", "0.5", "0.6", "0.8", "1"]);
        // 0.02 to 1.1: 1, 2, 5 x 10^k.
        assert_eq!(labels(&LogAxis { lo: 0.019, hi: 1.1 }, 8), ["0.02", "0.05", "0.1", "0.2", "0.5", "1"]);
        // Four decades: 1, 3 x 10^k when 10 fit, every decade when 8 do, every other one when 3 do.
        let wide = LogAxis { lo: 0.0009, hi: 11.0 };
        assert_eq!(labels(&wide, 10), ["0.001", "0.003", "0.01", "0.03", "0.1", "0.3", "1", "3", "10"]);
        assert_eq!(labels(&wide, 8), ["0.001", "0.01", "0.1", "1", "10"]);
        assert_eq!(labels(&wide, 3), ["0.01", "1"]);
        // The light grid: every 1..9 x 10^k.
        assert_eq!(LogAxis { lo: 0.29, hi: 1.07 }.key_points(LightPoints::new(8, 80)).len(), 8);
        // Steps: round multiples, exact next to u64::MAX.
        assert_eq!(
            StepAxis { lo: 1, hi: 900 }.key_points(BoldPoints(10)),
            (1..=9).map(|k| k * 100).collect::<Vec<u64>>()
        );
        let top = StepAxis { lo: u64::MAX - 2_000, hi: u64::MAX };
        let ticks = top.key_points(BoldPoints(10));
        assert!(ticks.len() >= 4 && ticks.iter().all(|t| t % 500 == 0 && *t >= top.lo), "{ticks:?}");
        assert_eq!(top.map(&top.lo, (0, 1000)), 0);
        assert_eq!(top.map(&(top.lo + 1_000), (0, 1000)), 500);
    }

    #[test]
    fn moving_average_is_unbiased_from_the_first_point() {
        let flat: Vec<(u64, f64)> = (0..10).map(|s| (s, 0.5)).collect();
        assert!(ema(&flat, 5).iter().all(|p| (p.1 - 0.5).abs() < 1e-12), "a constant stays constant");
        let step: Vec<(u64, f64)> = (0..200).map(|s| (s, if s < 100 { 1.0 } else { 0.0 })).collect();
        let smoothed = ema(&step, 10);
        assert!(smoothed[100].1 > 0.85 && smoothed[199].1 < 1e-3, "{:?} {:?}", smoothed[100], smoothed[199]);
    }
}
