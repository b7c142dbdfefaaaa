//! `loss.png`: the training plot is a real, readable picture for every input
//! (synthetic runs, empty, one point, NaN and huge steps), and metrics.csv is
//! read back by column name, old format, new format and garbage alike.

use std::path::{Path, PathBuf};

use ddpm_wgpu::plot::{read_curves, training_plot, EvalPoint, TrainingCurves};
use image::RgbImage;
use rand::{rngs::StdRng, Rng, SeedableRng};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ddpm-plot-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The colours `src/plot.rs` draws its main lines in.
const SMOOTHED_LOSS: [u8; 3] = [20, 70, 170];
const RAW_LOSS: [u8; 3] = [160, 190, 230];
const FRECHET: [u8; 3] = [190, 30, 45];
const CONFIDENT: [u8; 3] = [20, 140, 70];

/// A run of `steps` steps whose loss falls from ~1 to ~0.03 with noise,
/// deciles that fall in order (t near 0 hardest) with gaps, and an evaluation
/// every 100 steps.
fn synthetic(steps: u64) -> TrainingCurves {
    let mut rng = StdRng::seed_from_u64(7);
    let mut curves = TrainingCurves::default();
    for step in 1..=steps {
        let base = 0.03 + 0.9 * (-(step as f32) / 60.0).exp();
        let noise = |rng: &mut StdRng| (rng.random::<f32>() - 0.5) * 0.6 + 1.0;
        curves.loss.push((step, base * noise(&mut rng)));
        let deciles = std::array::from_fn(|d| {
            if rng.random::<f32>() < 0.2 {
                f32::NAN
            } else {
                base * (3.0 - 0.28 * d as f32) * noise(&mut rng)
            }
        });
        curves.decile_loss.push((step, deciles));
        if step % 100 == 0 {
            let k = step as f64 / steps as f64;
            curves.eval.push(EvalPoint {
                step,
                frechet: 200.0 * (-4.0 * k).exp() + 10.0,
                frechet_floor: 5.0,
                confident_fraction: 0.1 + 0.7 * k,
            });
        }
    }
    curves
}

fn render(dir: &Path, name: &str, curves: &TrainingCurves) -> RgbImage {
    let path = dir.join(name);
    training_plot(&path, curves).unwrap();
    if let Ok(keep) = std::env::var("PLOT_SAMPLE_DIR") {
        // To look at: PLOT_SAMPLE_DIR=/some/dir cargo test --release --test plot
        let test = dir.file_name().unwrap().to_string_lossy().split('-').nth(2).unwrap().to_string();
        std::fs::copy(&path, Path::new(&keep).join(format!("{test}-{name}"))).unwrap();
    }
    assert!(!dir.join(Path::new(name).with_extension("tmp")).exists(), "the temporary file must be renamed");
    image::open(&path).unwrap().to_rgb8()
}

/// Pixels of `img` in rows `rows` that are exactly `colour`.
fn count(img: &RgbImage, rows: std::ops::Range<u32>, colour: [u8; 3]) -> usize {
    img.enumerate_pixels().filter(|(_, y, p)| rows.contains(y) && p.0 == colour).count()
}

/// Distinct colours in `img`.
fn colours(img: &RgbImage) -> usize {
    let mut seen: Vec<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    seen.sort_unstable();
    seen.dedup();
    seen.len()
}

#[test]
fn three_panels_draw_every_line_in_its_panel() {
    let dir = temp_dir("three");
    let img = render(&dir, "loss.png", &synthetic(900));
    assert_eq!((img.width(), img.height()), (900, 900));
    assert!(colours(&img) > 50, "a plot with text and ten decile colours, got {} colours", colours(&img));
    // Panels are 320, 320 and 260 pixels tall; each line lies in its own panel.
    let smoothed = count(&img, 0..320, SMOOTHED_LOSS);
    assert!(smoothed > 500, "the smoothed loss line: {smoothed} pixels");
    assert!(count(&img, 0..320, RAW_LOSS) > 500, "the raw loss line");
    assert_eq!(count(&img, 320..900, SMOOTHED_LOSS), 0, "the smoothed loss belongs to the first panel only");
    assert!(count(&img, 640..900, FRECHET) > 100, "the Fréchet line");
    assert!(count(&img, 640..900, CONFIDENT) > 100, "the confident-fraction line");
    assert_eq!(count(&img, 0..640, FRECHET), 0, "the Fréchet line belongs to the last panel only");
    // The decile panel has ten line colours besides grey text and grid.
    let decile_colours = {
        let mut seen: Vec<[u8; 3]> = img
            .enumerate_pixels()
            .filter(|(x, y, p)| {
                (330..630).contains(y) && *x < 700 && {
                    let [r, g, b] = p.0.map(i32::from);
                    (r - g).abs().max((g - b).abs()).max((r - b).abs()) > 80
                }
            })
            .map(|(_, _, p)| p.0)
            .collect();
        seen.sort_unstable();
        seen.dedup();
        seen.len()
    };
    assert!(decile_colours >= 10, "ten decile lines, got {decile_colours} saturated colours");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn smoothed_loss_follows_the_falling_curve() {
    // The smoothed line starts high (top of the plot) and ends low: its
    // leftmost pixels sit well above its rightmost ones.
    let dir = temp_dir("falling");
    let mut curves = synthetic(900);
    curves.eval.clear();
    let img = render(&dir, "loss.png", &curves);
    assert_eq!((img.width(), img.height()), (900, 640), "two panels without evaluations");
    let line: Vec<(u32, u32)> = img
        .enumerate_pixels()
        .filter(|(x, y, p)| *x < 700 && *y < 320 && p.0 == SMOOTHED_LOSS)
        .map(|(x, y, _)| (x, y))
        .collect();
    let (min_x, max_x) = (line.iter().map(|p| p.0).min().unwrap(), line.iter().map(|p| p.0).max().unwrap());
    let mean_y = |x0: u32, x1: u32| {
        let ys: Vec<u32> = line.iter().filter(|p| (x0..x1).contains(&p.0)).map(|p| p.1).collect();
        ys.iter().sum::<u32>() as f64 / ys.len() as f64
    };
    let (left, right) = (mean_y(min_x, min_x + 20), mean_y(max_x - 20, max_x + 1));
    assert!(left + 100.0 < right, "smoothed loss should fall: left y {left}, right y {right}");
    assert!(max_x - min_x > 500, "the line spans the step axis: x {min_x}..{max_x}");
    assert_eq!(count(&img, 0..640, FRECHET), 0, "no evaluation panel");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn empty_and_degenerate_curves_still_draw() {
    let dir = temp_dir("degenerate");
    // Nothing logged: axes and notes, no panic.
    let empty = render(&dir, "empty.png", &TrainingCurves::default());
    assert_eq!((empty.width(), empty.height()), (900, 640));
    let dark = empty.pixels().filter(|p| p.0.iter().all(|&c| c < 100)).count();
    assert!(dark > 1000, "axes, labels and a note are drawn: {dark} dark pixels");

    // One point: its marker shows.
    let one = TrainingCurves { loss: vec![(5, 0.5)], ..Default::default() };
    let img = render(&dir, "one.png", &one);
    assert!(count(&img, 0..320, RAW_LOSS) > 10, "the single point is marked");

    // NaN, infinities, zero and negatives are skipped; finite ones still draw.
    let nasty = TrainingCurves {
        loss: vec![(0, f32::NAN), (1, f32::INFINITY), (2, 0.0), (3, -1.0), (4, 0.2), (5, 0.1), (6, f32::NEG_INFINITY)],
        decile_loss: vec![(1, [f32::NAN; 10]), (2, [0.0; 10])],
        eval: vec![EvalPoint { step: 3, frechet: f64::NAN, frechet_floor: -1.0, confident_fraction: f64::INFINITY }],
    };
    let img = render(&dir, "nasty.png", &nasty);
    assert_eq!((img.width(), img.height()), (900, 900));
    assert!(count(&img, 0..320, SMOOTHED_LOSS) > 10, "the two finite losses are drawn");

    // Huge step counts, up to u64::MAX.
    let start = u64::MAX - 2_000;
    let huge = TrainingCurves {
        loss: (0..2_000).map(|i| (start + i, 1.0 / (1.0 + i as f32))).collect(),
        eval: vec![EvalPoint { step: u64::MAX, frechet: 3.0, frechet_floor: 1.0, confident_fraction: 0.5 }],
        ..Default::default()
    };
    let img = render(&dir, "huge.png", &huge);
    assert!(count(&img, 0..320, SMOOTHED_LOSS) > 100);
    let big = TrainingCurves { loss: (0..50).map(|i| (i * 40_000_000_000, 0.5)).collect(), ..Default::default() };
    let img = render(&dir, "big.png", &big);
    assert!(count(&img, 0..320, SMOOTHED_LOSS) > 100, "a flat loss over 2e12 steps");
    std::fs::remove_dir_all(&dir).unwrap();
}

// What the writer (train::append_metrics) puts at the top.
const HEADER: &str = ddpm_wgpu::train::METRICS_HEADER;

#[test]
fn curves_round_trip_through_a_new_metrics_csv() {
    let dir = temp_dir("csv-new");
    let path = dir.join("metrics.csv");
    let text = format!(
        "{HEADER}\n\
         1,0.9,0.001,1.5,30.0,0.8,0.7,,0.5,0.4,0.3,0.2,0.1,0.05,0.01,,,,\n\
         2,0.8,0.001,1.4,31.0,,,,,,,,,,,,,,\n\
         3,0.7,0.001,1.3,32.0,0.6,0.6,0.6,0.6,0.6,0.6,0.6,0.6,0.6,0.6,42.5,3.25,0.75,0.1\n"
    );
    std::fs::write(&path, text).unwrap();
    let c = read_curves(&path);
    assert_eq!(c.loss, vec![(1, 0.9), (2, 0.8), (3, 0.7)]);
    assert_eq!(c.decile_loss.len(), 2, "step 2 has no decile cells: {:?}", c.decile_loss);
    let (step, d) = c.decile_loss[0];
    assert_eq!(step, 1);
    assert!(d[2].is_nan(), "an empty decile cell reads as NaN");
    assert_eq!([d[0], d[1], d[3], d[9]], [0.8, 0.7, 0.5, 0.01]);
    assert_eq!(c.decile_loss[1], (3, [0.6; 10]));
    assert_eq!(c.eval.len(), 1);
    let e = c.eval[0];
    assert_eq!((e.step, e.frechet, e.frechet_floor, e.confident_fraction), (3, 42.5, 3.25, 0.75));
    // What was read draws.
    let img = render(&dir, "loss.png", &c);
    assert_eq!(img.height(), 900);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn old_metrics_csv_and_garbage_read_what_parses() {
    let dir = temp_dir("csv-old");
    let path = dir.join("metrics.csv");
    std::fs::write(&path, "step,loss,lr,grad_norm,images_per_second\n1,0.5,0.001,1,10\n2,0.25,0.001,1,10\n").unwrap();
    let c = read_curves(&path);
    assert_eq!(c.loss, vec![(1, 0.5), (2, 0.25)]);
    assert!(c.decile_loss.is_empty() && c.eval.is_empty());

    // Columns in another order, CRLF line ends, blank, garbage, short and truncated lines.
    let text = "lr,loss,step,frechet\r\n\
                0.1,0.5,1,9.5\r\n\
                \r\n\
                garbage line with no commas\r\n\
                0.1,not-a-number,2,\r\n\
                0.1,0.125,x3,1\r\n\
                0.1,0.0625\r\n\
                ,,,,,,,,,,,,\r\n\
                0.1,0.03125,5,2.5,extra,cells\r\n\
                0.1,0.02";
    std::fs::write(&path, text).unwrap();
    let c = read_curves(&path);
    assert_eq!(c.loss, vec![(1, 0.5), (5, 0.03125)]);
    let evals: Vec<(u64, f64)> = c.eval.iter().map(|e| (e.step, e.frechet)).collect();
    assert_eq!(evals, vec![(1, 9.5), (5, 2.5)]);
    assert!(c.eval.iter().all(|e| e.frechet_floor.is_nan() && e.confident_fraction.is_nan()));

    // A missing file, an empty file and a header with no step column read as nothing.
    for text in [None, Some(""), Some("loss,lr\n0.5,0.1\n"), Some("\u{0}\u{1}binary")] {
        if let Some(text) = text {
            std::fs::write(&path, text).unwrap();
        } else {
            let _ = std::fs::remove_file(&path);
        }
        let c = read_curves(&path);
        assert!(c.loss.is_empty() && c.decile_loss.is_empty() && c.eval.is_empty(), "{text:?} gave {c:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
