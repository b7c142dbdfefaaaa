//! A tiny UNet learns: on 16 fixed 16x16 images with fixed noise and
//! timesteps, the L_simple loss falls at least 10x within a few hundred
//! Adam steps. Exercises forward, backward, gradient collection into the
//! flat buffer, clipping, Adam and the buffer pool (no allocation after the
//! first steps) together.

mod common;

use ddpm_wgpu::ops::ddpm::{self, DdpmTables, NoiseKey};
use ddpm_wgpu::ops::optimizer::{self, Adam};
use ddpm_wgpu::schedule::{Schedule, SchedulerConfig};
use ddpm_wgpu::tape::Tape;
use ddpm_wgpu::unet::params::view_of;
use ddpm_wgpu::unet::{ParamStore, ParamVars, UNet, UNetConfig};

#[test]
fn tiny_unet_overfits_fixed_batch() {
    let (_turn, gpu) = common::gpu();
    let config = UNetConfig::from_json(
        r#"{"sample_size": 16, "in_channels": 1, "out_channels": 1, "block_out_channels": [16, 32],
            "layers_per_block": 1, "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
            "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 8, "attention_head_dim": 8}"#,
    )
    .unwrap();
    let unet = UNet::new(&config).unwrap();
    let table = unet.table.clone();
    let store =
        ParamStore::upload(&gpu, table.clone(), &table.init(0, ddpm_wgpu::unet::layout::InitScheme::Ddpm)).unwrap();
    let n = table.flat_len;
    let (grads, m, v) = (gpu.zeros(&[n]).unwrap(), gpu.zeros(&[n]).unwrap(), gpu.zeros(&[n]).unwrap());

    // 16 fixed images: the shipped digits, shrunk to 16x16 by 2x2 averaging of their centre.
    let digits = ddpm_wgpu::data::Dataset::mnist(32, Some(16)).unwrap();
    let mut x0 = Vec::new();
    for i in 0..16 {
        let s = digits.sample(i);
        for y in 0..16 {
            for x in 0..16 {
                let at = |dy: usize, dx: usize| s[(2 * y + dy) * 32 + 2 * x + dx];
                x0.push((at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1)) / 4.0);
            }
        }
    }
    let x0 = gpu.upload(&[16, 1, 16, 16], &x0).unwrap();
    let tables = DdpmTables::new(&gpu, &Schedule::new(SchedulerConfig::default()).unwrap()).unwrap();
    let t = ddpm::timesteps(&gpu, &(0..16).map(|i| 20 + i * 61).collect::<Vec<_>>()).unwrap();
    let (xt, eps) = ddpm::q_sample(&gpu, &tables, &x0, &t, NoiseKey { seed: 3, step: 0, first_sample: 0 }).unwrap();

    let adam = Adam { max_grad_norm: 1.0, ..Adam::default() };
    let mut losses = Vec::new();
    let mut allocations_after_first_step = 0;
    for step in 1..=300u64 {
        let mut tape = Tape::new(&gpu);
        let p = ParamVars::new(&mut tape, &store, true).unwrap();
        let x = tape.input(xt.clone());
        let target = tape.input(eps.clone());
        let pred = unet.forward(&mut tape, &p, &x, &t, None).unwrap();
        let loss = tape.mse_loss(&pred, &target).unwrap();
        let g = tape.backward(&loss).unwrap();
        for (name, var) in p.iter() {
            let slot = view_of(&table, &grads, name).unwrap();
            gpu.copy(g.get(var).expect("every parameter gets a gradient"), &slot).unwrap();
        }
        let norm_sq = optimizer::grad_norm_sq(&gpu, &grads).unwrap();
        optimizer::adam_step(&gpu, &adam, step, 3e-3, &store.flat, &m, &v, &grads, &norm_sq).unwrap();
        if step == 1 || step % 50 == 0 {
            losses.push(gpu.read(&loss.value).unwrap()[0]);
        }
        if step == 2 {
            allocations_after_first_step = gpu.pool_stats().allocations;
        }
    }
    assert_eq!(
        gpu.pool_stats().allocations,
        allocations_after_first_step,
        "steady-state training must allocate nothing"
    );
    eprintln!("losses every 50 steps: {losses:?}");
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(losses.last().unwrap() * 10.0 < losses[0], "the loss must fall at least 10x: {losses:?}");
}
