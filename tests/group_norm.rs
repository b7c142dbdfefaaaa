//! group_norm (and the fused group_norm_silu): the CPU backward against
//! finite differences, then every GPU forward and backward against the CPU
//! twin on every kernel path, at odd and aligned shapes, small and large
//! groups, and batches that leave part of the last workgroup idle.

mod common;
mod gradcheck;

use common::{assert_close, each_path, rng, uniform};
use ddpm_wgpu::ops::group_norm::{cpu, GroupNorm};
use gradcheck::{assert_grad_close, numeric_grad, to_f32, to_f64, weighted_sum};

const EPS: f32 = 1e-5;

fn gn(groups: usize, fuse_silu: bool) -> GroupNorm {
    GroupNorm { groups, eps: EPS, fuse_silu }
}

#[test]
fn cpu_backward_matches_finite_differences() {
    let mut r = rng();
    for &(batch, channels, hw, groups) in &[(2, 4, 3, 2), (1, 6, 2, 3)] {
        for fuse_silu in [false, true] {
            let op = gn(groups, fuse_silu);
            let x = to_f64(&uniform(&mut r, batch * channels * hw));
            let gamma = to_f64(&uniform(&mut r, channels));
            let beta = to_f64(&uniform(&mut r, channels));
            let w = to_f64(&uniform(&mut r, x.len()));
            let grads = cpu::backward(&op, &w, &x, &gamma, &beta, batch, hw);
            let loss = |x: &[f64], gamma: &[f64], beta: &[f64]| {
                weighted_sum(&w, &cpu::forward(&op, x, gamma, beta, batch, hw).y)
            };
            let what = format!("{op:?} ({batch}, {channels}, {hw})");
            assert_grad_close(&format!("{what} dx"), &grads.dx, &numeric_grad(&x, |x| loss(x, &gamma, &beta)));
            assert_grad_close(&format!("{what} dgamma"), &grads.dgamma, &numeric_grad(&gamma, |g| loss(&x, g, &beta)));
            assert_grad_close(&format!("{what} dbeta"), &grads.dbeta, &numeric_grad(&beta, |b| loss(&x, &gamma, b)));
        }
    }
}

/// GPU forward and backward against the CPU twin. `offset` shifts the
/// inputs away from zero, which breaks a naive E[x^2] - E[x]^2 variance.
fn check(shape: [usize; 4], groups: usize, fuse_silu: bool, offset: f32) {
    let op = gn(groups, fuse_silu);
    let [batch, channels, h, w] = shape;
    let hw = h * w;
    let mut r = rng();
    let x: Vec<f32> = uniform(&mut r, batch * channels * hw).iter().map(|v| v + offset).collect();
    let gamma = uniform(&mut r, channels);
    let beta = uniform(&mut r, channels);
    let dy = uniform(&mut r, x.len());
    let want = cpu::forward(&op, &to_f64(&x), &to_f64(&gamma), &to_f64(&beta), batch, hw);
    let stats: Vec<f64> = want.mean.iter().zip(&want.rstd).flat_map(|(m, s)| [*m, *s]).collect();
    let grads = cpu::backward(&op, &to_f64(&dy), &to_f64(&x), &to_f64(&gamma), &to_f64(&beta), batch, hw);
    // Inputs near `offset` carry an absolute rounding error of offset * f32
    // epsilon, which normalising scales up by rstd (~1.7 for uniform data).
    let atol = 1e-5 + 4.0 * offset as f64 * f32::EPSILON as f64;
    // Per-channel parameter gradients sum batch * hw terms.
    let param_atol = atol * ((batch * hw) as f64).sqrt();
    each_path(|gpu, path| {
        let what = format!("{op:?} {shape:?} offset {offset} on {path:?}");
        let tx = gpu.upload(&shape, &x).unwrap();
        let tgamma = gpu.upload(&[channels], &gamma).unwrap();
        let tbeta = gpu.upload(&[channels], &beta).unwrap();
        let tdy = gpu.upload(&shape, &dy).unwrap();
        let (y, tstats) = op.forward(gpu, &tx, &tgamma, &tbeta).unwrap();
        assert_close(&format!("{what}: y"), &gpu.read(&y).unwrap(), &to_f32(&want.y), atol, 1e-4);
        assert_close(&format!("{what}: stats"), &gpu.read(&tstats).unwrap(), &to_f32(&stats), 1e-5, 1e-4);
        let g = op.backward(gpu, &tdy, &tx, &tgamma, &tbeta, &tstats).unwrap();
        assert_close(&format!("{what}: dx"), &gpu.read(&g.dx).unwrap(), &to_f32(&grads.dx), atol, 1e-4);
        assert_close(
            &format!("{what}: dgamma"),
            &gpu.read(&g.dgamma).unwrap(),
            &to_f32(&grads.dgamma),
            param_atol,
            1e-4,
        );
        assert_close(&format!("{what}: dbeta"), &gpu.read(&g.dbeta).unwrap(), &to_f32(&grads.dbeta), param_atol, 1e-4);
    });
}

#[test]
fn odd_maps_and_few_groups() {
    for fuse_silu in [false, true] {
        check([2, 6, 5, 7], 2, fuse_silu, 0.0);
        check([3, 6, 5, 7], 3, fuse_silu, 0.0);
        check([1, 6, 5, 7], 6, fuse_silu, 0.0);
    }
}

#[test]
fn aligned_maps() {
    for fuse_silu in [false, true] {
        check([2, 8, 4, 4], 4, fuse_silu, 0.0);
        check([3, 64, 8, 8], 32, fuse_silu, 0.0);
    }
}

#[test]
fn large_groups() {
    for fuse_silu in [false, true] {
        // 8192-element groups (vec4 items) and 900-element groups (float items).
        check([1, 8, 32, 32], 1, fuse_silu, 0.0);
        check([2, 4, 15, 15], 1, fuse_silu, 0.0);
    }
}

#[test]
fn variance_is_stable_for_offset_inputs() {
    check([2, 8, 16, 16], 2, false, 100.0);
}

#[test]
fn groups_must_divide_channels() {
    let (_turn, gpu) = common::gpu();
    let x = gpu.zeros(&[1, 6, 2, 2]).unwrap();
    let gamma = gpu.zeros(&[6]).unwrap();
    let err = gn(4, false).forward(&gpu, &x, &gamma, &gamma).err().unwrap().to_string();
    assert!(err.contains("4 groups do not divide the 6 channels"), "{err}");
}
