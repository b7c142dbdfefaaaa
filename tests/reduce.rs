//! Sum and mean over chosen axes against the CPU twin, and bit-exact
//! determinism.

mod common;

use common::{assert_close, each_path, rng, uniform};
use ddpm_wgpu::ops::reduce::{self, cpu};

const CASES: &[(&[usize], &[usize])] = &[
    (&[1], &[0]),
    (&[7], &[0]),
    (&[5, 7], &[1]),
    (&[5, 7], &[0]),
    (&[3, 6, 5, 7], &[0, 2, 3]),
    (&[3, 6, 5, 7], &[1, 2, 3]),
    (&[3, 6, 5, 7], &[1, 3]),
    (&[3, 6, 5, 7], &[0, 1, 2, 3]),
    (&[2, 64, 16, 16], &[0, 2, 3]),
    (&[4, 3, 1000], &[2]),
    (&[4, 3, 2], &[]),
    // Many outputs, few terms: one invocation per output.
    (&[32, 4099], &[0]),
    (&[3, 5, 2000], &[0, 1]),
    (&[2000, 7], &[1]),
];

#[test]
fn sum_and_mean_over_axes() {
    let mut r = rng();
    for &(shape, axes) in CASES {
        let n: usize = shape.iter().product();
        let x = uniform(&mut r, n);
        let count: usize = axes.iter().map(|&a| shape[a]).product();
        // f32 partial sums of `count` values in [-1, 1).
        let atol = 1e-6 * (count as f64).sqrt().max(1.0);
        each_path(|gpu, path| {
            let t = gpu.upload(shape, &x).unwrap();
            let s = reduce::sum(gpu, &t, axes).unwrap();
            assert_close(
                &format!("sum {shape:?} over {axes:?} on {path:?}"),
                &gpu.read(&s).unwrap(),
                &cpu::sum(&x, shape, axes),
                atol,
                1e-5,
            );
            let m = reduce::mean(gpu, &t, axes).unwrap();
            assert_close(
                &format!("mean {shape:?} over {axes:?} on {path:?}"),
                &gpu.read(&m).unwrap(),
                &cpu::mean(&x, shape, axes),
                atol,
                1e-5,
            );
            let kept: Vec<usize> = (0..shape.len()).filter(|d| !axes.contains(d)).map(|d| shape[d]).collect();
            assert_eq!(s.shape(), if kept.is_empty() { &[1][..] } else { &kept[..] });
        });
    }
}

#[test]
fn reductions_are_bit_exact_across_runs() {
    let mut r = rng();
    let shape = [3, 64, 17, 19];
    let x: Vec<f32> = uniform(&mut r, shape.iter().product()).iter().map(|v| v * 1e3).collect();
    let (_turn, gpu) = common::gpu();
    let t = gpu.upload(&shape, &x).unwrap();
    let first = gpu.read(&reduce::sum(&gpu, &t, &[0, 2, 3]).unwrap()).unwrap();
    for _ in 0..5 {
        let again = gpu.read(&reduce::sum(&gpu, &t, &[0, 2, 3]).unwrap()).unwrap();
        assert!(first.iter().zip(&again).all(|(a, b)| a.to_bits() == b.to_bits()), "sum changed between runs");
    }
}

#[test]
fn bad_axes_are_errors() {
    let (_turn, gpu) = common::gpu();
    let t = gpu.zeros(&[2, 3]).unwrap();
    assert!(reduce::sum(&gpu, &t, &[2]).unwrap_err().to_string().contains("axis 2"));
    let t5 = gpu.zeros(&[1, 1, 1, 1, 2]).unwrap();
    assert!(reduce::sum(&gpu, &t5, &[0]).is_err());
}
