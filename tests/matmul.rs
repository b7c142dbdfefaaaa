//! matmul against its CPU twin on every kernel path, at shapes that are and
//! are not multiples of the tile, with transposes, batches, shared operands,
//! alpha/beta and bias.

mod common;

use common::{assert_close, each_path, rng, uniform};
use ddpm_wgpu::ops::matmul::{self, cpu, Gemm};

/// f32 sums of K products against an f64 reference.
fn tolerance(k: usize) -> (f64, f64) {
    (1e-5 * (k as f64).sqrt().max(1.0), 1e-4)
}

fn check(g: Gemm, with_bias: bool) {
    let mut r = rng();
    let a_len = g.m * g.k * if g.shared_a { 1 } else { g.batch };
    let b_len = g.k * g.n * if g.shared_b { 1 } else { g.batch };
    let a = uniform(&mut r, a_len);
    let b = uniform(&mut r, b_len);
    let c0 = uniform(&mut r, g.batch * g.m * g.n);
    let bias = uniform(&mut r, g.n);
    let mut want = c0.clone();
    cpu::gemm(&g, &mut want, &a, &b, with_bias.then_some(&bias[..]));
    each_path(|gpu, path| {
        let ta = gpu.upload(&[a_len], &a).unwrap();
        let tb = gpu.upload(&[b_len], &b).unwrap();
        let tc = gpu.upload(&[c0.len()], &c0).unwrap();
        let tbias = gpu.upload(&[g.n], &bias).unwrap();
        matmul::gemm(gpu, &g, &tc, &ta, &tb, with_bias.then_some(&tbias)).unwrap();
        let got = gpu.read(&tc).unwrap();
        let (atol, rtol) = tolerance(g.k);
        assert_close(&format!("{g:?} bias={with_bias} on {path:?}"), &got, &want, atol, rtol);
    });
}

#[test]
fn odd_and_aligned_shapes_with_all_transposes() {
    for (m, n, k) in [(1, 1, 1), (7, 13, 5), (129, 65, 33), (64, 64, 64), (33, 130, 20), (8, 256, 12), (5, 4, 3)] {
        for t in 0..4 {
            let g = Gemm { trans_a: t & 1 != 0, trans_b: t & 2 != 0, ..Gemm::new(m, n, k) };
            check(g, false);
        }
    }
}

#[test]
fn batched_shared_alpha_beta_bias() {
    let base = Gemm::new(17, 36, 24);
    check(Gemm { batch: 3, ..base }, false);
    check(Gemm { batch: 3, shared_b: true, trans_b: true, ..base }, true);
    check(Gemm { batch: 2, shared_a: true, trans_a: true, alpha: 0.5, beta: 1.0, ..Gemm::new(20, 12, 9) }, false);
    check(Gemm { alpha: -2.0, beta: 0.25, ..Gemm::new(64, 128, 16) }, true);
    check(Gemm { batch: 4, alpha: 0.125, ..Gemm::new(16, 16, 32) }, true);
}

#[test]
fn tensor_level_matmul_checks_shapes() {
    let (_turn, gpu) = common::gpu();
    let a = gpu.upload(&[3, 4], &[1.0; 12]).unwrap();
    let b = gpu.upload(&[5, 2], &[1.0; 10]).unwrap();
    let err = matmul::matmul(&gpu, &a, &b, false, false).unwrap_err().to_string();
    assert!(err.contains("inner dimensions"), "{err}");
    let bt = gpu.upload(&[2, 4], &[0.5; 8]).unwrap();
    let c = matmul::matmul(&gpu, &a, &bt, false, true).unwrap();
    assert_eq!(c.shape(), &[3, 2]);
    assert_close("ones", &gpu.read(&c).unwrap(), &[2.0; 6], 0.0, 0.0);
}
