//! Sampling: sample i does not depend on how many samples were asked for,
//! seeds reproduce, and the last DDPM step adds no noise.

mod common;

use common::assert_close;
use ddpm_wgpu::sample::{sample, SampleRequest, Sampler};
use ddpm_wgpu::schedule::SchedulerConfig;
use ddpm_wgpu::unet::{ParamStore, UNet, UNetConfig};

#[test]
fn samples_do_not_depend_on_batch_size_and_seeds_reproduce() {
    let (_turn, gpu) = common::gpu();
    let config = UNetConfig::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tiny_unet_28.json"
    )))
    .unwrap();
    let unet = UNet::new(&config).unwrap();
    // Random non-zero weights so the model's output matters.
    let mut flat = unet.table.init(5);
    for (i, v) in flat.iter_mut().enumerate() {
        *v += 0.02 * ((i * 7919 % 200) as f32 / 100.0 - 1.0);
    }
    let weights = ParamStore::upload(&gpu, unet.table.clone(), &flat).unwrap();
    let scheduler = SchedulerConfig { num_train_timesteps: 8, ..SchedulerConfig::default() };
    for sampler in [Sampler::Ddpm, Sampler::Ddim { steps: 4, eta: 1.0 }] {
        let run = |count: usize, seed: u64| {
            let request = SampleRequest { count, resolution: 28, sampler, seed, keep_every: None };
            sample(&gpu, &unet, &weights, &scheduler, &request, &mut |_, _| {}).unwrap().0
        };
        let few = run(2, 11);
        let many = run(5, 11);
        let per = 28 * 28;
        assert_close(&format!("{sampler:?}: first 2 of 5 vs 2"), &many[..2 * per], &few, 1e-5, 1e-4);
        assert_eq!(run(2, 11), few, "{sampler:?}: same seed, same samples");
        let other = run(2, 12);
        let differing = few.iter().zip(&other).filter(|(a, b)| a != b).count();
        assert!(differing > per, "{sampler:?}: another seed must give other samples");
        assert!(few.iter().all(|v| (-1.0..=1.0).contains(v)));
    }
}
