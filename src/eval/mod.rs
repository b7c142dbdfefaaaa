//! Sample quality, measured with no downloads: the Fréchet distance between
//! sample and real-image features of a digit classifier this engine trained
//! (the "Fréchet LeNet distance" practice for MNIST), the real-vs-real floor
//! at the same N for scale, the fraction of samples the classifier is sure
//! of, and the class histogram with its KL divergence from uniform (mode
//! collapse shows there). The paper's bits/dim is in [`crate::nll`].
//!
//! The feature network is a [`FeatureExtractor`], so another one (InceptionV3
//! for standard FID on RGB data) can be added without touching the metrics.

pub mod classifier;

use anyhow::{bail, ensure, Context, Result};
use nalgebra::{DMatrix, DVector, SymmetricEigen};
use serde::Serialize;

use crate::gpu::Gpu;

/// Host-side images (N, C, R, R) in [-1, 1].
#[derive(Clone, Debug)]
pub struct Images {
    pub channels: usize,
    pub resolution: usize,
    pub pixels: Vec<f32>,
}

impl Images {
    pub fn len(&self) -> usize {
        self.pixels.len() / (self.channels * self.resolution * self.resolution).max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn from_dataset(data: &crate::data::Dataset) -> Images {
        Images { channels: data.channels, resolution: data.resolution, pixels: data.pixels().to_vec() }
    }

    /// Images `indices`, in that order.
    /// The PNGs directly in `dir`, as grey images: all must be the same
    /// square size, 28x28 or 32x32, and grey (what `ddpm sample
    /// --individual` writes), so a stray grid or an RGB sample is an error,
    /// not a score.
    pub fn from_png_folder(dir: &std::path::Path) -> Result<Images> {
        let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading sample folder {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
            .collect();
        files.sort();
        let first = files.first().with_context(|| format!("no PNG files in {}", dir.display()))?;
        let (size, _) = image::image_dimensions(first).with_context(|| format!("reading {}", first.display()))?;
        let mut pixels = Vec::new();
        for file in &files {
            let img = image::ImageReader::open(file)?
                .with_guessed_format()?
                .decode()
                .with_context(|| format!("cannot decode {}", file.display()))?;
            let (w, h) = (img.width(), img.height());
            if w != h || w != size || !(w == 28 || w == 32) {
                bail!(
                    "{} is {w}x{h}: samples must all be 28x28 or all 32x32 (the first is {size}x{size})",
                    file.display()
                );
            }
            if img.color().has_color() {
                bail!("{} is in colour: the digit classifier scores grey images", file.display());
            }
            pixels.extend(img.to_luma8().pixels().map(|p| p.0[0] as f32 / 127.5 - 1.0));
        }
        Ok(Images { channels: 1, resolution: size as usize, pixels })
    }

    pub fn select(&self, indices: &[usize]) -> Images {
        let per = self.channels * self.resolution * self.resolution;
        let pixels = indices.iter().flat_map(|&i| self.pixels[i * per..(i + 1) * per].iter().copied()).collect();
        Images { channels: self.channels, resolution: self.resolution, pixels }
    }
}

/// What a feature network gives for N images.
#[derive(Clone, Debug)]
pub struct Extracted {
    /// (N, dim)
    pub features: Vec<f32>,
    pub dim: usize,
    /// (N, classes) class probabilities, when the network is a classifier.
    pub probs: Option<Vec<f64>>,
    pub classes: usize,
}

/// A network whose activations describe images (the digit classifier here;
/// InceptionV3 for RGB data would be another).
pub trait FeatureExtractor {
    fn name(&self) -> &str;
    /// Error (naming why) unless it takes images of this shape.
    fn accepts(&self, channels: usize, resolution: usize) -> Result<()>;
    fn extract(&self, gpu: &Gpu, images: &Images) -> Result<Extracted>;
}

/// Mean and covariance (unbiased) of a set of feature vectors, in f64.
#[derive(Clone, Debug)]
pub struct FeatureStats {
    pub count: usize,
    pub mean: DVector<f64>,
    pub cov: DMatrix<f64>,
}

impl FeatureStats {
    /// From `features` (N, dim) row-major.
    pub fn new(features: &[f32], dim: usize) -> Result<FeatureStats> {
        let n = features.len() / dim.max(1);
        ensure!(n >= 2 && features.len() == n * dim, "feature statistics need at least 2 vectors of {dim}, got {n}");
        // The eigensolver has no iteration limit: NaN would never converge.
        ensure!(features.iter().all(|v| v.is_finite()), "feature statistics: non-finite features");
        let rows = DMatrix::from_row_iterator(n, dim, features.iter().map(|&v| v as f64));
        let mean = rows.row_mean().transpose();
        let centred = DMatrix::from_fn(n, dim, |i, j| rows[(i, j)] - mean[j]);
        let cov = centred.transpose() * &centred / (n - 1) as f64;
        Ok(FeatureStats { count: n, mean, cov })
    }
}

/// Fréchet distance between the Gaussians fitted to two feature sets:
/// |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)).
///
/// tr((S_a S_b)^(1/2)) is computed as the sum of the square roots of the
/// eigenvalues of the symmetric S_a^(1/2) S_b S_a^(1/2) (same spectrum),
/// which needs only symmetric eigendecompositions and stays real.
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> f64 {
    let sqrt_a = symmetric_sqrt(&a.cov);
    let middle = &sqrt_a * &b.cov * &sqrt_a;
    let middle = (&middle + middle.transpose()) * 0.5;
    let trace_sqrt: f64 = SymmetricEigen::new(middle).eigenvalues.iter().map(|&l| l.max(0.0).sqrt()).sum();
    let diff = &a.mean - &b.mean;
    (diff.dot(&diff) + a.cov.trace() + b.cov.trace() - 2.0 * trace_sqrt).max(0.0)
}

/// The square root of a symmetric positive semi-definite matrix (negative
/// eigenvalues from rounding are taken as zero).
fn symmetric_sqrt(m: &DMatrix<f64>) -> DMatrix<f64> {
    let eigen = SymmetricEigen::new((m + m.transpose()) * 0.5);
    let roots = DVector::from_iterator(eigen.eigenvalues.len(), eigen.eigenvalues.iter().map(|&l| l.max(0.0).sqrt()));
    &eigen.eigenvectors * DMatrix::from_diagonal(&roots) * eigen.eigenvectors.transpose()
}

/// How the classifier reads a set: the fraction assigned with probability
/// at least `CONFIDENT`, the histogram of most likely classes, and its KL
/// divergence from uniform (0 for balanced classes, ln K for one class).
#[derive(Clone, Debug, Serialize)]
pub struct ClassReport {
    pub confident_fraction: f64,
    pub class_histogram: Vec<usize>,
    pub class_kl: f64,
}

pub const CONFIDENT: f64 = 0.9;

pub fn class_report(probs: &[f64], classes: usize) -> ClassReport {
    let mut histogram = vec![0usize; classes];
    let mut confident = 0;
    for p in probs.chunks_exact(classes) {
        let best = classifier::argmax(p);
        histogram[best] += 1;
        confident += usize::from(p[best] >= CONFIDENT);
    }
    let n = probs.len() / classes;
    let kl = histogram
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let q = c as f64 / n as f64;
            q * (q * classes as f64).ln()
        })
        .sum();
    ClassReport { confident_fraction: confident as f64 / n.max(1) as f64, class_histogram: histogram, class_kl: kl }
}

/// The metrics of one set of samples against real images (written as JSON
/// by `ddpm eval --json`, with `bits_per_dim` when the NLL is computed).
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub samples: usize,
    pub extractor: String,
    /// Fréchet distance between sample and real features.
    pub frechet: f64,
    /// The same between two disjoint real sets of the same size: the best a
    /// perfect model could expect at this N.
    pub frechet_floor: f64,
    pub confident_fraction: f64,
    pub class_kl: f64,
    pub class_histogram: Vec<usize>,
    /// The confident fraction of the real reference set, for scale.
    pub real_confident_fraction: f64,
}

/// Score `samples` against `real` images with `extractor`. Needs at least
/// 2N real images: N as the reference, N more for the floor. `seed` picks
/// the real subsets.
pub fn evaluate(
    gpu: &Gpu,
    extractor: &dyn FeatureExtractor,
    samples: &Images,
    real: &Images,
    seed: u64,
) -> Result<EvalReport> {
    let n = samples.len();
    ensure!(n >= 2, "evaluation needs at least 2 samples, got {n}");
    ensure!(
        samples.pixels.iter().all(|v| v.is_finite()),
        "the samples hold NaN or infinite values (a diverged model?)"
    );
    extractor.accepts(samples.channels, samples.resolution)?;
    ensure!(
        real.len() >= 2 * n,
        "evaluating {n} samples needs {} real images (N for the reference, N for the floor); there are {}",
        2 * n,
        real.len()
    );
    let mut order: Vec<usize> = (0..real.len()).collect();
    {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed ^ 0x05EE_DF1D));
    }
    let reference = extractor.extract(gpu, &real.select(&order[..n]))?;
    let second = extractor.extract(gpu, &real.select(&order[n..2 * n]))?;
    let generated = extractor.extract(gpu, samples)?;
    let stats = |e: &Extracted| FeatureStats::new(&e.features, e.dim);
    let (reference_stats, generated_stats) = (stats(&reference)?, stats(&generated)?);
    let classes = match (&generated.probs, &reference.probs) {
        (Some(p), Some(r)) => Some((class_report(p, generated.classes), class_report(r, reference.classes))),
        _ => None,
    };
    let (class, real_class) = classes.unzip();
    Ok(EvalReport {
        samples: n,
        extractor: extractor.name().to_string(),
        frechet: frechet_distance(&generated_stats, &reference_stats),
        frechet_floor: frechet_distance(&stats(&second)?, &reference_stats),
        confident_fraction: class.as_ref().map_or(f64::NAN, |c| c.confident_fraction),
        class_kl: class.as_ref().map_or(f64::NAN, |c| c.class_kl),
        class_histogram: class.map(|c| c.class_histogram).unwrap_or_default(),
        real_confident_fraction: real_class.map_or(f64::NAN, |c| c.confident_fraction),
    })
}
