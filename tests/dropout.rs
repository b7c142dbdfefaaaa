//! Dropout against its CPU twin (the same Philox mask, bit for bit), the
//! rate it drops at, masks keyed by the sample's global index (the same in a
//! batch of 1 or 4), its backward against finite differences, and the UNet
//! in training mode: dropout where diffusers has it, none in eval mode.

mod common;

use common::{check_gradients, each_path, rng, uniform};
use ddpm_wgpu::ops::ddpm::NoiseKey;
use ddpm_wgpu::ops::dropout::{cpu, dropout, DropoutKey};
use rand::Rng;

fn key(seed: u64, step: u32, first_sample: u32, layer: u32) -> DropoutKey {
    DropoutKey { noise: NoiseKey { seed, step, first_sample }, layer }
}

#[test]
fn dropout_matches_its_cpu_twin_at_any_shape() {
    let mut r = rng();
    for shape in [&[1usize, 7][..], &[3, 5, 7], &[4, 16, 9, 9], &[2, 64, 8, 8], &[5, 3, 1, 1]] {
        let n: usize = shape.iter().product();
        let x = uniform(&mut r, n);
        let k = key(r.random(), r.random(), r.random_range(0..1000), r.random_range(0..20));
        for rate in [0.1f32, 0.5, 0.9] {
            each_path(|gpu, path| {
                let got = gpu.read(&dropout(gpu, &gpu.upload(shape, &x).unwrap(), rate, k).unwrap()).unwrap();
                let want = cpu::dropout(&x, shape[0], rate, k);
                // Same mask, same f32 product: exact.
                let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{shape:?} rate {rate} on {path:?}: {got:?} vs {want:?}");
            });
        }
    }
}

#[test]
fn the_mask_drops_at_the_rate_and_depends_on_the_sample_step_and_layer_only() {
    let (_turn, gpu) = common::gpu();
    let (batch, dim) = (4, 10_003);
    let ones = gpu.upload(&[batch, dim], &vec![1.0; batch * dim]).unwrap();
    for rate in [0.1f32, 0.3] {
        let got = gpu.read(&dropout(&gpu, &ones, rate, key(9, 3, 0, 2)).unwrap()).unwrap();
        let dropped = got.iter().filter(|&&v| v == 0.0).count() as f64 / got.len() as f64;
        let sigma = (rate as f64 * (1.0 - rate as f64) / got.len() as f64).sqrt();
        assert!((dropped - rate as f64).abs() < 5.0 * sigma, "rate {rate}: dropped {dropped}");
        let kept = 1.0 / (1.0 - rate);
        assert!(got.iter().all(|&v| v == 0.0 || v == kept), "rate {rate}: values other than 0 and {kept}");
        // Sample 2 alone (global index 2) gets row 2's mask of the batch of 4.
        let one = gpu.upload(&[1, dim], &vec![1.0; dim]).unwrap();
        let alone = gpu.read(&dropout(&gpu, &one, rate, key(9, 3, 2, 2)).unwrap()).unwrap();
        assert_eq!(alone, got[2 * dim..3 * dim], "rate {rate}: sample 2's mask depends on its batch");
        // Another layer, step or seed draws another mask.
        for other in [key(9, 3, 0, 3), key(9, 4, 0, 2), key(10, 3, 0, 2)] {
            let again = gpu.read(&dropout(&gpu, &ones, rate, other).unwrap()).unwrap();
            let differ = again.iter().zip(&got).filter(|(a, b)| a != b).count();
            assert!(differ > got.len() / 20, "{other:?}: only {differ} elements differ");
        }
    }
}

#[test]
fn dropout_backward_matches_finite_differences() {
    let (_turn, gpu) = common::gpu();
    let mut r = rng();
    let shape = [3usize, 5, 6, 7];
    let n: usize = shape.iter().product();
    let (x, w) = (uniform(&mut r, n), uniform(&mut r, n));
    let k = key(r.random(), 11, 4, 1);
    let target = gpu.upload(&shape, &w).unwrap();
    check_gradients(&gpu, "dropout", &[(&shape, x)], 64, 1e-2, (1e-4, 1e-3), |tape, v| {
        let y = tape.dropout(&v[0], 0.3, k)?;
        let target = tape.input(target.clone());
        tape.mse_loss(&y, &target)
    });
}
