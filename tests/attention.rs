//! Attention core: the CPU backward against finite differences, then the
//! GPU forward, backward and the row softmax pieces against the CPU twin on
//! every kernel path, with one and several heads and token counts that are
//! not multiples of 4 or 8.

mod common;
mod gradcheck;

use common::{assert_close, each_path, rng, uniform};
use ddpm_wgpu::ops::attention::{self, cpu};
use gradcheck::{assert_grad_close, numeric_grad, to_f32, to_f64, weighted_sum};

#[test]
fn cpu_backward_matches_finite_differences() {
    let mut r = rng();
    let (bh, t, d, scale) = (2, 3, 2, 0.7);
    let [q, k, v, w] = [0; 4].map(|_| to_f64(&uniform(&mut r, bh * t * d)));
    let (dq, dk, dv) = cpu::backward(&w, &q, &k, &v, bh, t, d, scale);
    let loss = |q: &[f64], k: &[f64], v: &[f64]| weighted_sum(&w, &cpu::forward(q, k, v, bh, t, d, scale).0);
    assert_grad_close("dq", &dq, &numeric_grad(&q, |q| loss(q, &k, &v)));
    assert_grad_close("dk", &dk, &numeric_grad(&k, |k| loss(&q, k, &v)));
    assert_grad_close("dv", &dv, &numeric_grad(&v, |v| loss(&q, &k, v)));
}

/// `shape` is (batch.., tokens, head_dim).
fn check(shape: &[usize]) {
    let n = shape.len();
    let (t, d) = (shape[n - 2], shape[n - 1]);
    let bh: usize = shape[..n - 2].iter().product();
    let scale = 1.0 / (d as f32).sqrt();
    let mut r = rng();
    // Scores of a few units, so the softmax is neither flat nor one-hot.
    let [q, k, v, d_out] = [0; 4].map(|_| uniform(&mut r, bh * t * d).iter().map(|x| 2.0 * x).collect::<Vec<f32>>());
    let (q64, k64, v64) = (to_f64(&q), to_f64(&k), to_f64(&v));
    let (out, probs) = cpu::forward(&q64, &k64, &v64, bh, t, d, scale as f64);
    let (dq, dk, dv) = cpu::backward(&to_f64(&d_out), &q64, &k64, &v64, bh, t, d, scale as f64);
    // Sums over T (or d) terms of products of O(1) values.
    let atol = 1e-5 * (t.max(d) as f64).sqrt();
    each_path(|gpu, path| {
        let what = format!("attention {shape:?} on {path:?}");
        let [tq, tk, tv, tdo] = [&q, &k, &v, &d_out].map(|x| gpu.upload(shape, x).unwrap());
        let (tout, tprobs) = attention::attention_forward(gpu, &tq, &tk, &tv, scale).unwrap();
        assert_eq!(tout.shape(), shape);
        assert_close(&format!("{what}: probs"), &gpu.read(&tprobs).unwrap(), &to_f32(&probs), 1e-6, 1e-4);
        assert_close(&format!("{what}: out"), &gpu.read(&tout).unwrap(), &to_f32(&out), atol, 1e-4);
        let g = attention::attention_backward(gpu, &tdo, &tq, &tk, &tv, &tprobs, scale).unwrap();
        assert_close(&format!("{what}: dq"), &gpu.read(&g.dq).unwrap(), &to_f32(&dq), atol, 1e-4);
        assert_close(&format!("{what}: dk"), &gpu.read(&g.dk).unwrap(), &to_f32(&dk), atol, 1e-4);
        assert_close(&format!("{what}: dv"), &gpu.read(&g.dv).unwrap(), &to_f32(&dv), atol, 1e-4);
    });
}

#[test]
fn one_head_odd_and_aligned_token_counts() {
    check(&[1, 5, 3]);
    check(&[3, 7, 8]);
    check(&[2, 16, 16]);
    check(&[1, 35, 12]);
}

#[test]
fn several_heads() {
    check(&[2, 3, 10, 8]);
    check(&[1, 4, 33, 5]);
}

#[test]
fn rows_longer_than_the_register_block() {
    // 75 vec4 items and 70 float items per row, past the 64 kept in registers.
    check(&[1, 300, 4]);
    check(&[2, 70, 6]);
}

#[test]
fn softmax_rows_and_backward_in_place() {
    let mut r = rng();
    for (rows, cols) in [(1, 1), (9, 13), (17, 256), (3, 4)] {
        let scores: Vec<f32> = uniform(&mut r, rows * cols).iter().map(|x| 20.0 * x).collect();
        let dp = uniform(&mut r, rows * cols);
        let probs = cpu::softmax_rows(&to_f64(&scores), cols);
        let ds = cpu::softmax_rows_backward(&to_f64(&dp), &probs, cols);
        each_path(|gpu, path| {
            let what = format!("softmax ({rows}, {cols}) on {path:?}");
            let t = gpu.upload(&[rows, cols], &scores).unwrap();
            attention::softmax_rows_in_place(gpu, &t).unwrap();
            assert_close(&format!("{what}: P"), &gpu.read(&t).unwrap(), &to_f32(&probs), 1e-7, 1e-4);
            let tdp = gpu.upload(&[rows, cols], &dp).unwrap();
            attention::softmax_rows_backward_in_place(gpu, &tdp, &t).unwrap();
            assert_close(&format!("{what}: dS"), &gpu.read(&tdp).unwrap(), &to_f32(&ds), 1e-6, 1e-4);
        });
    }
}

#[test]
fn shapes_are_checked() {
    let (_turn, gpu) = common::gpu();
    let q = gpu.zeros(&[2, 4, 8]).unwrap();
    let k = gpu.zeros(&[2, 5, 8]).unwrap();
    let err = attention::attention_forward(&gpu, &q, &k, &q, 1.0).err().unwrap().to_string();
    assert!(err.contains("must share one shape"), "{err}");
}
