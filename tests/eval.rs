//! `ddpm eval`'s metrics: the Fréchet distance against closed forms, then
//! the shipped digit classifier on real digits, and the whole evaluation on
//! sets whose quality is known: real digits (near the floor), the same
//! digits degraded by more and more noise or blur (monotonically worse),
//! Gaussian noise images (far worse), and one class only (class KL = ln 10).

mod common;

use ddpm_wgpu::data::{mnist_labels, Dataset};
use ddpm_wgpu::eval::classifier::DigitClassifier;
use ddpm_wgpu::eval::{class_report, evaluate, frechet_distance, FeatureStats, Images};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

fn gaussian_features(r: &mut impl Rng, n: usize, dim: usize, mean: f64, scale: &[f64]) -> Vec<f32> {
    (0..n * dim).map(|i| (mean + scale[i % dim] * Distribution::<f64>::sample(&StandardNormal, r)) as f32).collect()
}

#[test]
fn frechet_distance_matches_closed_forms() {
    let mut r = common::rng();
    let dim = 6;
    let a = gaussian_features(&mut r, 400, dim, 0.0, &[1.0, 2.0, 0.5, 1.0, 3.0, 1.0]);
    let sa = FeatureStats::new(&a, dim).unwrap();
    let self_distance = frechet_distance(&sa, &sa);
    assert!(self_distance.abs() < 1e-9, "a set against itself: {self_distance}");

    // Diagonal covariances: |mu_a - mu_b|^2 + sum (sqrt(var_a) - sqrt(var_b))^2.
    let diag = |v: &[f64], m: f64| FeatureStats {
        count: 2,
        mean: nalgebra::DVector::from_element(v.len(), m),
        cov: nalgebra::DMatrix::from_diagonal(&nalgebra::DVector::from_row_slice(v)),
    };
    let (va, vb) = ([1.0, 4.0, 0.25], [9.0, 1.0, 0.25]);
    let want = 3.0 * 0.5f64.powi(2) + (1.0f64 - 3.0).powi(2) + (2.0f64 - 1.0).powi(2);
    let got = frechet_distance(&diag(&va, 0.0), &diag(&vb, 0.5));
    assert!((got - want).abs() < 1e-9, "diagonal: got {got}, want {want}");

    // Invariant under a rotation of both sets (non-diagonal covariances).
    let rotation = nalgebra::Rotation3::from_euler_angles(0.3, -1.1, 0.7).into_inner();
    let rotate = |s: &FeatureStats| {
        let m = nalgebra::DMatrix::from_iterator(3, 3, rotation.iter().copied());
        FeatureStats { count: 2, mean: &m * &s.mean, cov: &m * &s.cov * m.transpose() }
    };
    let rotated = frechet_distance(&rotate(&diag(&va, 0.0)), &rotate(&diag(&vb, 0.5)));
    assert!((rotated - want).abs() < 1e-9, "rotated: got {rotated}, want {want}");

    // Covariances that do not commute: for 2x2, tr sqrt(AB) = sqrt(tr(AB) + 2 sqrt(det(AB))).
    let a = nalgebra::DMatrix::<f64>::from_row_slice(2, 2, &[2.0, 0.7, 0.7, 1.0]);
    let b = nalgebra::DMatrix::<f64>::from_row_slice(2, 2, &[1.0, -0.4, -0.4, 3.0]);
    assert!((&a * &b - &b * &a).norm() > 0.1);
    let ab = &a * &b;
    let trace_sqrt = (ab.trace() + 2.0 * ab.determinant().sqrt()).sqrt();
    let want = a.trace() + b.trace() - 2.0 * trace_sqrt;
    let stats = |cov| FeatureStats { count: 2, mean: nalgebra::DVector::zeros(2), cov };
    let got = frechet_distance(&stats(a), &stats(b));
    assert!((got - want).abs() < 1e-9, "non-commuting: got {got}, want {want}");
}

#[test]
fn class_report_reads_balanced_and_collapsed_sets() {
    let onehot = |c: usize| (0..10).map(|k| if k == c { 0.95 } else { 0.05 / 9.0 }).collect::<Vec<f64>>();
    let balanced: Vec<f64> = (0..100).flat_map(|i| onehot(i % 10)).collect();
    let report = class_report(&balanced, 10);
    assert!(report.class_kl.abs() < 1e-12 && report.confident_fraction == 1.0, "{report:?}");
    assert_eq!(report.class_histogram, vec![10; 10]);
    let collapsed: Vec<f64> = (0..50).flat_map(|_| onehot(3)).collect();
    let report = class_report(&collapsed, 10);
    assert!((report.class_kl - 10f64.ln()).abs() < 1e-12, "{report:?}");
    let unsure: Vec<f64> = vec![0.1; 10 * 20];
    assert_eq!(class_report(&unsure, 10).confident_fraction, 0.0);
}

fn digits() -> (Images, Vec<usize>) {
    let data = Dataset::mnist(28, None).unwrap();
    (Images::from_dataset(&data), mnist_labels())
}

#[test]
fn shipped_classifier_reads_real_digits() {
    let (_turn, gpu) = common::gpu();
    let classifier = DigitClassifier::shipped(&gpu).unwrap();
    let (images, labels) = digits();
    // The 1,000 digits held out of its training (the atlas's first 1,000: 100 of each).
    let held_out: Vec<usize> = (0..1000).collect();
    let set = images.select(&held_out);
    let accuracy = classifier.accuracy(&gpu, &set.pixels, &labels[..1000]).unwrap();
    eprintln!("shipped classifier: {:.2}% of 1000 held-out digits", 100.0 * accuracy);
    assert!(accuracy >= 0.97, "held-out accuracy {accuracy}");
}

/// Add Gaussian noise of `sigma` (clamped to [-1, 1]) and blur with a 3x3
/// box `blur` times.
fn degrade(images: &Images, sigma: f32, blur: usize, r: &mut impl Rng) -> Images {
    let s = images.resolution;
    let mut pixels = images.pixels.clone();
    for img in pixels.chunks_exact_mut(s * s) {
        for _ in 0..blur {
            let src = img.to_vec();
            for y in 0..s {
                for x in 0..s {
                    let (mut sum, mut n) = (0.0, 0.0);
                    for (dy, dx) in (-1i32..=1).flat_map(|a| (-1i32..=1).map(move |b| (a, b))) {
                        let (yy, xx) = (y as i32 + dy, x as i32 + dx);
                        if (0..s as i32).contains(&yy) && (0..s as i32).contains(&xx) {
                            sum += src[yy as usize * s + xx as usize];
                            n += 1.0;
                        }
                    }
                    img[y * s + x] = sum / n;
                }
            }
        }
        for v in img.iter_mut() {
            let z: f32 = StandardNormal.sample(r);
            *v = (*v + sigma * z).clamp(-1.0, 1.0);
        }
    }
    Images { pixels, ..images.clone() }
}

#[test]
fn evaluation_orders_sets_by_quality() {
    let (_turn, gpu) = common::gpu();
    let mut r = common::rng();
    let classifier = DigitClassifier::shipped(&gpu).unwrap();
    let (images, labels) = digits();
    let n = 300;
    // Held-out digits (30 of each class) the reference sets, drawn from the
    // classifier's training tiles, cannot contain.
    let real = images.select(&(1000..10000).collect::<Vec<_>>());
    let fresh = images.select(&(0..n).collect::<Vec<_>>());

    let clean = evaluate(&gpu, &classifier, &fresh, &real, 0).unwrap();
    eprintln!("real digits: {clean:?}");
    assert!(clean.frechet < 3.0 * clean.frechet_floor, "real digits vs floor: {clean:?}");
    assert!(clean.confident_fraction > 0.9 && clean.class_kl < 0.05, "{clean:?}");

    let mut previous = clean.frechet;
    for sigma in [0.2, 0.4, 0.8] {
        let report = evaluate(&gpu, &classifier, &degrade(&fresh, sigma, 0, &mut r), &real, 0).unwrap();
        eprintln!("noise {sigma}: frechet {:.3}", report.frechet);
        assert!(report.frechet > previous, "noise {sigma}: {} not above {previous}", report.frechet);
        previous = report.frechet;
    }
    let mut previous = clean.frechet;
    for blur in [1, 2, 4] {
        let report = evaluate(&gpu, &classifier, &degrade(&fresh, 0.0, blur, &mut r), &real, 0).unwrap();
        eprintln!("blur x{blur}: frechet {:.3}", report.frechet);
        assert!(report.frechet > previous, "blur {blur}: {} not above {previous}", report.frechet);
        previous = report.frechet;
    }

    let gaussian = (0..n * 784).map(|_| Distribution::<f32>::sample(&StandardNormal, &mut r).clamp(-1.0, 1.0));
    let noise = Images { pixels: gaussian.collect(), ..fresh.clone() };
    let report = evaluate(&gpu, &classifier, &noise, &real, 0).unwrap();
    eprintln!("Gaussian noise: {report:?}");
    assert!(report.frechet > 20.0 * clean.frechet, "noise {} vs real {}", report.frechet, clean.frechet);

    let sevens: Vec<usize> = (1000..10000).filter(|&i| labels[i] == 7).take(n).collect();
    let report = evaluate(&gpu, &classifier, &images.select(&sevens), &real, 0).unwrap();
    eprintln!("only sevens: {report:?}");
    assert!((report.class_kl - 10f64.ln()).abs() < 0.1, "one class: {report:?}");
    assert!(report.frechet > 5.0 * clean.frechet, "one class {} vs real {}", report.frechet, clean.frechet);
}

#[test]
fn evaluation_refuses_too_few_real_images() {
    let (_turn, gpu) = common::gpu();
    let classifier = DigitClassifier::shipped(&gpu).unwrap();
    let (images, _) = digits();
    let err = evaluate(&gpu, &classifier, &images.select(&[0, 1, 2]), &images.select(&[3, 4, 5, 6, 7]), 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs 6 real images"), "{err}");
}
