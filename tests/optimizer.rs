//! Adam/AdamW (with and without clipping), the gradient norm and the EMA
//! against their CPU twins over several steps.

mod common;

use common::{assert_close, each_path, rng, uniform};
use ddpm_wgpu::ops::optimizer::{self, cpu, Adam};

#[test]
fn adam_and_adamw_follow_the_reference_over_steps() {
    let mut r = rng();
    let configs = [
        Adam::default(),
        Adam { weight_decay: 0.1, ..Adam::default() },
        Adam { weight_decay: 0.01, decoupled: true, max_grad_norm: 1.0, ..Adam::default() },
        Adam { beta1: 0.5, beta2: 0.9, eps: 1e-6, max_grad_norm: 100.0, ..Adam::default() },
    ];
    for n in [1, 7, 64, 1000, 4099] {
        let p0 = uniform(&mut r, n);
        let grads: Vec<Vec<f32>> = (0..4).map(|_| uniform(&mut r, n).iter().map(|g| g * 3.0).collect()).collect();
        for cfg in &configs {
            let (mut p, mut m, mut v) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
            for (step, g) in grads.iter().enumerate() {
                cpu::adam_step(cfg, step as u64 + 1, 1e-2, &mut p, &mut m, &mut v, g);
            }
            each_path(|gpu, path| {
                let tp = gpu.upload(&[n], &p0).unwrap();
                let (tm, tv) = (gpu.zeros(&[n]).unwrap(), gpu.zeros(&[n]).unwrap());
                for (step, g) in grads.iter().enumerate() {
                    let tg = gpu.upload(&[n], g).unwrap();
                    let norm_sq = optimizer::grad_norm_sq(gpu, &tg).unwrap();
                    optimizer::adam_step(gpu, cfg, step as u64 + 1, 1e-2, &tp, &tm, &tv, &tg, &norm_sq).unwrap();
                }
                let what = |t: &str| format!("{t} n={n} {cfg:?} on {path:?}");
                assert_close(&what("params"), &gpu.read(&tp).unwrap(), &p, 1e-6, 1e-5);
                assert_close(&what("m"), &gpu.read(&tm).unwrap(), &m, 1e-6, 1e-5);
                assert_close(&what("v"), &gpu.read(&tv).unwrap(), &v, 1e-6, 1e-5);
            });
        }
    }
}

#[test]
fn gradient_norm_is_exact_enough_and_deterministic() {
    let mut r = rng();
    for n in [1, 5, 4096, 70_001, 300_000] {
        let g = uniform(&mut r, n);
        let want = cpu::grad_norm_sq(&g);
        each_path(|gpu, path| {
            let t = gpu.upload(&[n], &g).unwrap();
            let a = gpu.read(&optimizer::grad_norm_sq(gpu, &t).unwrap()).unwrap();
            let b = gpu.read(&optimizer::grad_norm_sq(gpu, &t).unwrap()).unwrap();
            assert_close(&format!("norm^2 n={n} on {path:?}"), &a, &[want as f32], 0.0, 1e-5);
            assert_eq!(a[0].to_bits(), b[0].to_bits(), "norm changed between runs");
        });
    }
}

#[test]
fn ema_follows_the_reference() {
    let mut r = rng();
    let n = 1027;
    let (e0, p) = (uniform(&mut r, n), uniform(&mut r, n));
    let mut want = e0.clone();
    cpu::ema_update(&mut want, &p, 0.999);
    cpu::ema_update(&mut want, &p, 0.9);
    each_path(|gpu, path| {
        let (te, tp) = (gpu.upload(&[n], &e0).unwrap(), gpu.upload(&[n], &p).unwrap());
        optimizer::ema_update(gpu, &te, &tp, 0.999).unwrap();
        optimizer::ema_update(gpu, &te, &tp, 0.9).unwrap();
        assert_close(&format!("ema on {path:?}"), &gpu.read(&te).unwrap(), &want, 1e-6, 1e-5);
    });
}

#[test]
fn buffers_larger_than_one_chunk_are_updated_everywhere() {
    let mut r = rng();
    let n = optimizer::CHUNK_ELEMS + 100;
    let p0 = uniform(&mut r, n);
    let g = uniform(&mut r, n);
    let cfg = Adam { max_grad_norm: 10.0, ..Adam::default() };
    let (mut p, mut m, mut v) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
    cpu::adam_step(&cfg, 1, 1e-3, &mut p, &mut m, &mut v, &g);
    let mut ema = p0.clone();
    cpu::ema_update(&mut ema, &p, 0.5);
    let (_turn, gpu) = common::gpu();
    let tp = gpu.upload(&[n], &p0).unwrap();
    let te = gpu.upload(&[n], &p0).unwrap();
    let (tm, tv) = (gpu.zeros(&[n]).unwrap(), gpu.zeros(&[n]).unwrap());
    let tg = gpu.upload(&[n], &g).unwrap();
    let norm_sq = optimizer::grad_norm_sq(&gpu, &tg).unwrap();
    assert_close("norm^2 over two chunks", &gpu.read(&norm_sq).unwrap(), &[cpu::grad_norm_sq(&g) as f32], 0.0, 1e-5);
    optimizer::adam_step(&gpu, &cfg, 1, 1e-3, &tp, &tm, &tv, &tg, &norm_sq).unwrap();
    optimizer::ema_update(&gpu, &te, &tp, 0.5).unwrap();
    assert_close("params over two chunks", &gpu.read(&tp).unwrap(), &p, 1e-6, 1e-5);
    assert_close("ema over two chunks", &gpu.read(&te).unwrap(), &ema, 1e-6, 1e-5);
}
