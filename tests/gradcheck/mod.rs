//! Central finite differences in f64, to check the CPU twins' backward
//! passes before the GPU kernels are checked against those twins.
#![allow(dead_code)]

/// Step for central differences of functions of O(1) inputs in f64.
const STEP: f64 = 1e-5;

/// d f / d x[i] for every i, by central differences.
pub fn numeric_grad(x: &[f64], f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut probe = x.to_vec();
    (0..x.len())
        .map(|i| {
            probe[i] = x[i] + STEP;
            let up = f(&probe);
            probe[i] = x[i] - STEP;
            let down = f(&probe);
            probe[i] = x[i];
            (up - down) / (2.0 * STEP)
        })
        .collect()
}

/// `sum(w * y)`: a scalar loss whose gradient with respect to `y` is `w`.
pub fn weighted_sum(w: &[f64], y: &[f64]) -> f64 {
    assert_eq!(w.len(), y.len());
    w.iter().zip(y).map(|(a, b)| a * b).sum()
}

#[track_caller]
pub fn assert_grad_close(what: &str, analytic: &[f64], numeric: &[f64]) {
    assert_eq!(analytic.len(), numeric.len(), "{what}: lengths differ");
    for (i, (a, n)) in analytic.iter().zip(numeric).enumerate() {
        assert!((a - n).abs() <= 1e-6 + 1e-5 * n.abs(), "{what}[{i}]: analytic {a} vs finite differences {n}");
    }
}

pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

pub fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}
