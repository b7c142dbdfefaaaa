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

/// With the exact noise predictor for data that is a single image x*,
/// eps(x_t) = (x_t - sqrt(abar_t) x*) / sqrt(1 - abar_t), both samplers must
/// end at x*: this checks the whole sampling chain (tables, indexing, the
/// last step) independently of any trained model.
#[test]
fn samplers_recover_the_data_point_with_the_exact_noise_predictor() {
    use ddpm_wgpu::ops::elementwise as ew;
    use ddpm_wgpu::sample::sample_with;
    use ddpm_wgpu::schedule::Schedule;
    let (_turn, gpu) = common::gpu();
    let mut r = common::rng();
    let (count, res) = (3, 8);
    let star: Vec<f32> = common::uniform(&mut r, res * res).iter().map(|v| v * 0.9).collect();
    let star_batch: Vec<f32> = (0..count).flat_map(|_| star.clone()).collect();
    let star_t = gpu.upload(&[count, 1, res, res], &star_batch).unwrap();
    for scheduler in [SchedulerConfig::default(), SchedulerConfig { clip_sample: false, ..SchedulerConfig::default() }]
    {
        let schedule = Schedule::new(scheduler.clone()).unwrap();
        for sampler in [Sampler::Ddpm, Sampler::Ddim { steps: 50, eta: 0.0 }, Sampler::Ddim { steps: 20, eta: 1.0 }] {
            let mut exact = |x: &ddpm_wgpu::Tensor, _t: &ddpm_wgpu::Tensor, i: usize| {
                let centred = ew::axpy(&gpu, x, -schedule.sqrt_alphas_cumprod[i] as f32, &star_t)?;
                ew::scale(&gpu, &centred, 1.0 / schedule.sqrt_one_minus_alphas_cumprod[i] as f32)
            };
            let request = SampleRequest { count, resolution: res, sampler, seed: 4, keep_every: None };
            let (out, _) = sample_with(&gpu, &mut exact, 1, &scheduler, &request, &mut |_, _| {}).unwrap();
            assert_close(&format!("{sampler:?} clip={}", scheduler.clip_sample), &out, &star_batch, 2e-3, 1e-3);
        }
    }
}
